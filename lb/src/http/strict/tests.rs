//! The parsers fed whole and byte by byte must agree; what they accept, hyper's own parsing
//! (httparse, `http::Uri`) accepts too.
use super::chunked::Chunked;
use super::head::{Framing, HeadParser};
use super::*;

fn whole(bytes: &[u8]) -> Result<Option<head::Head>, Rejection> {
    HeadParser::default().feed(bytes, &Limits::default())
}

/// Feed a growing buffer one byte at a time, as a slow client would.
fn dribbled(bytes: &[u8]) -> Result<Option<head::Head>, Rejection> {
    let mut p = HeadParser::default();
    for i in 1..=bytes.len() {
        if let Some(h) = p.feed(&bytes[..i], &Limits::default())? {
            return Ok(Some(h));
        }
    }
    Ok(None)
}

#[test]
fn heads_parse_the_same_whole_and_dribbled() {
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /x?y=1 HTTP/1.1\r\nHost: a:80\r\nContent-Length: 12\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    ];
    for c in cases {
        assert_eq!(whole(c), dribbled(c), "{}", String::from_utf8_lossy(c));
    }
    let h = whole(cases[1]).unwrap().unwrap();
    assert_eq!((h.len, h.framing, h.upgrade), (cases[1].len(), Framing::Length(12), false));
    assert_eq!(whole(cases[2]).unwrap().unwrap().framing, Framing::Chunked);
    assert!(whole(cases[3]).unwrap().unwrap().upgrade);
    assert_eq!(whole(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap(), None, "incomplete");
}

#[test]
fn whatever_the_head_parser_accepts_httparse_and_http_accept() {
    let mut targets: Vec<String> = (0x21u8..0x7f).map(|b| format!("/a{}b", b as char)).collect();
    targets.push("http://h:1/p?q".into());
    for t in targets {
        let req = format!("GET {t} HTTP/1.1\r\nHost: h\r\n\r\n");
        if whole(req.as_bytes()).is_ok_and(|h| h.is_some()) {
            let mut headers = [httparse::EMPTY_HEADER; 4];
            let mut r = httparse::Request::new(&mut headers);
            assert!(r.parse(req.as_bytes()).is_ok_and(|s| s.is_complete()), "{t}");
            assert!(t.parse::<http::Uri>().is_ok(), "{t}");
        }
    }
}

fn chunked(body: &[u8], lim: &Limits) -> Result<Option<usize>, Rejection> {
    Chunked::default().feed(body, lim)
}

#[test]
fn chunked_bodies_end_where_they_end_fed_in_any_pieces() {
    let body = b"4;x=\"a\\\"b\"\r\nabcd\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\nGET";
    let end = body.len() - 3;
    assert_eq!(chunked(body, &Limits::default()), Ok(Some(end)));
    for split in 1..end {
        let mut c = Chunked::default();
        assert_eq!(c.feed(&body[..split], &Limits::default()), Ok(None), "split {split}");
        assert_eq!(c.feed(&body[split..], &Limits::default()), Ok(Some(end - split)));
    }
}

#[test]
fn malformed_chunks_are_refused_and_the_size_limit_holds() {
    for bad in [
        &b"x\r\n"[..],
        b"4 \r\n",
        b" 4\r\n",
        b"4\n",
        b"4;\r\n",
        b"4;a=\r\n",
        b"4;a b\r\n",
        b"4\r\nabcdX\r\n",
        b"0\r\nNoColon\r\n\r\n",
        b"0\r\n\r\r",
        b"00000000000000001\r\n",
    ] {
        let r = chunked(bad, &Limits::default());
        assert!(
            r.as_ref().is_err_and(|e| e.status == 400),
            "{:?}: {r:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let lim = Limits { body: 5, ..Limits::default() };
    assert_eq!(chunked(b"3\r\nabc\r\n3\r\n", &lim).unwrap_err().status, 413);
}

/// The byte tables hold exactly the sets the RFCs name, written out here as ranges.
#[test]
fn byte_tables_are_the_rfc_sets() {
    let alnum = |b: u8| matches!(b, b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z');
    for b in 0..=255u8 {
        // RFC 9110 §5.6.2.
        let tchar = alnum(b) || b"!#$%&'*+-.^_`|~".contains(&b);
        assert_eq!(is_tchar(b), tchar, "tchar {b:#04x}");
        // RFC 9110 §5.5: field-vchar (VCHAR / obs-text), SP and HTAB.
        let value = b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80;
        let line = [b"GET / HTTP/1.1\r\nHost: a\r\nX-V: a".as_slice(), &[b], b"a\r\n\r\n"].concat();
        let accepted = whole(&line).is_ok();
        assert_eq!(accepted, value, "value byte {b:#04x}");
    }
}
