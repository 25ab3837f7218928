//! The server name of a TLS ClientHello, whole and cut short.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for end in [data.len(), data.len() / 2, 5.min(data.len())] {
        let _ = lb::conn::sni::server_name(&data[..end]);
    }
});
