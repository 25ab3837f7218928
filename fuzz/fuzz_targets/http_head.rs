//! A request head, fed whole and then as a slow client sends it: both must agree.
#![no_main]
use lb::http::strict::{Limits, head::HeadParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lim = Limits::default();
    let whole = HeadParser::default().feed(data, &lim);
    let mut p = HeadParser::default();
    let mut split = Ok(None);
    for end in (1..=data.len()).step_by(7).chain([data.len()]) {
        split = p.feed(&data[..end], &lim);
        if !matches!(split, Ok(None)) {
            break;
        }
    }
    assert_eq!(whole, split);
    let _ = HeadParser::request_line(data);
});
