//! A sticky session read from an arbitrary URL and Cookie header.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (target, cookie) = data.split_at(data.iter().position(|&b| b == 0).unwrap_or(data.len()));
    for (separator, scolon) in [(Some(b'.'), false), (None, true)] {
        let s = lb::config::Sticky {
            cookie: "JSESSIONID".into(),
            param: "jsessionid".into(),
            separator,
            scolon,
            set_cookie: None,
        };
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_bytes(cookie.get(1..).unwrap_or_default()) {
            headers.insert(http::header::COOKIE, v);
        }
        let _ = lb::http::sticky::session(&s, target, &headers);
    }
});
