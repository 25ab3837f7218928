//! A PROXY protocol v1 or v2 header, whole and cut short.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for end in [data.len(), data.len() / 2, 16.min(data.len())] {
        let _ = lb::conn::proxy_protocol::parse(&data[..end]);
    }
});
