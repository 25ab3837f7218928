//! A chunked body, fed whole and in pieces: the same end, or the same refusal status.
#![no_main]
use lb::http::strict::{Limits, chunked::Chunked};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lim = Limits { body: 1 << 20, ..Limits::default() };
    let whole = Chunked::default().feed(data, &lim);
    let mut c = Chunked::default();
    let mut at = 0;
    let mut pieces = Ok(None);
    for piece in data.chunks(5) {
        pieces = c.feed(piece, &lim).map(|o| o.map(|n| at + n));
        at += piece.len();
        if !matches!(pieces, Ok(None)) {
            break;
        }
    }
    assert_eq!(whole.map_err(|e| e.status), pieces.map_err(|e| e.status));
});
