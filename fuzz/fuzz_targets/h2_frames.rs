//! HTTP/2 frame headers walked through arbitrary bytes, with the flood rations.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut w = lb::http::h2watch::Watch::default();
    for piece in data.chunks(3) {
        w.read(piece);
    }
    let _ = w.goaway();
});
