//! A request head, read line by line as it arrives and refused at the first ambiguity.
//!
//! Accepted: `METHOD SP target SP HTTP/1.x` CRLF, then `name: value` CRLF lines, then CRLF;
//! exactly what hyper's parser also accepts, so hyper never answers a head lb let through with
//! its own empty-bodied error. Refused with 400 unless said otherwise: bare LF or bare CR, obs-fold,
//! whitespace before a colon, control bytes, a target with spaces or outside RFC 3986, an
//! unknown version (505), a missing or repeated Host in HTTP/1.1, Content-Length with
//! Transfer-Encoding, repeated or malformed Content-Length, any Transfer-Encoding but one exact
//! `chunked` (501 for real codings lb cannot forward), CONNECT (405), and the limits: request line
//! (414), header line size, count and head size (431), a declared body over the limit (413).
use super::{ByteSet, Limits, Rejection, is_tchar, is_token, shown};
use http::StatusCode;

/// How the body after a head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// A complete, accepted request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Its length in bytes, final CRLF included.
    pub len: usize,
    pub framing: Framing,
    /// The connection becomes a byte stream if the member agrees (`Connection: upgrade` with
    /// `Upgrade`, in HTTP/1.1: an HTTP/1.0 request's `Upgrade` is ignored, RFC 9110 §7.8).
    pub upgrade: bool,
}

/// Reads one request head; feed it the bytes received so far, from the head's first byte.
#[derive(Debug, Default)]
pub struct HeadParser {
    /// Bytes already read as complete lines.
    done: usize,
    /// How far the current partial line has been searched for its LF.
    searched: usize,
    request: Option<RequestLine>,
    fields: usize,
    hosts: u32,
    content_length: Option<u64>,
    chunked: bool,
    upgrade_header: bool,
    connection_upgrade: bool,
}

#[derive(Debug)]
struct RequestLine {
    http11: bool,
}

impl HeadParser {
    /// The method and target of the request line, for logs, when `buf` holds one.
    pub fn request_line(buf: &[u8]) -> (String, String) {
        let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
        let mut parts = line.split(|&b| b == b' ');
        let mut part = |max: usize| {
            let p = parts.next().unwrap_or_default();
            String::from_utf8_lossy(&p[..p.len().min(max)]).trim_end_matches('\r').to_owned()
        };
        (part(32), part(256))
    }

    /// Whether nothing of a head has been read.
    pub fn is_fresh(&self) -> bool {
        self.done == 0 && self.searched == 0
    }

    /// Read on in `buf` (the head so far): `Ok(None)` wants more bytes.
    pub fn feed(&mut self, buf: &[u8], lim: &Limits) -> Result<Option<Head>, Rejection> {
        loop {
            let Some(lf) = memchr::memchr(b'\n', &buf[self.searched..]) else {
                self.searched = buf.len();
                self.check_partial(buf.len() - self.done, buf.len(), lim)?;
                return Ok(None);
            };
            let end = self.searched + lf;
            let start = self.done;
            self.done = end + 1;
            self.searched = self.done;
            if end == start || buf[end - 1] != b'\r' {
                return Err(Rejection::bad("a line ends in a bare LF (lines end in CRLF)"));
            }
            let line = &buf[start..end - 1];
            self.check_partial(line.len(), self.done, lim)?;
            if self.request.is_none() {
                // RFC 9112 §2.2: empty lines before the request line are ignored.
                if !line.is_empty() {
                    self.request = Some(request_line(line, lim)?);
                }
            } else if line.is_empty() {
                return self.finish().map(Some);
            } else {
                self.fields += 1;
                if self.fields > lim.fields {
                    return Err(Rejection::new(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        format!("more than {} header lines (limit_request_fields)", lim.fields),
                    ));
                }
                self.field(line, lim)?;
            }
        }
    }

    /// Limits that hold for a line still arriving: `line` bytes of it, `total` of the head.
    fn check_partial(&self, line: usize, total: usize, lim: &Limits) -> Result<(), Rejection> {
        if total > lim.head {
            return Err(Rejection::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("the request head is larger than {} bytes (limit_request_head)", lim.head),
            ));
        }
        if self.request.is_none() && line > lim.line {
            return Err(Rejection::new(
                StatusCode::URI_TOO_LONG,
                format!("the request line is longer than {} bytes (limit_request_line)", lim.line),
            ));
        }
        if self.request.is_some() && line > lim.field_size {
            return Err(Rejection::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "a header line is longer than {} bytes (limit_request_field_size)",
                    lim.field_size
                ),
            ));
        }
        Ok(())
    }

    fn field(&mut self, line: &[u8], lim: &Limits) -> Result<(), Rejection> {
        if matches!(line[0], b' ' | b'\t') {
            return Err(Rejection::bad("obs-fold: a header line starts with whitespace"));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(Rejection::bad(format!(
                "header line {:?} has no colon",
                String::from_utf8_lossy(&line[..line.len().min(64)])
            )));
        };
        let name = &line[..colon];
        if let Some(&b) = name.iter().find(|&&b| !is_tchar(b)) {
            let what = if matches!(b, b' ' | b'\t') {
                "whitespace between a header name and its colon".to_owned()
            } else {
                format!("byte {} in a header name", shown(b))
            };
            return Err(Rejection::bad(what));
        }
        if name.is_empty() {
            return Err(Rejection::bad("a header line has an empty name"));
        }
        let value = trim_ows(&line[colon + 1..]);
        if let Some(&b) = value.iter().find(|&&b| !VALUE.has(b)) {
            return Err(Rejection::bad(format!(
                "byte {} in the value of header {}",
                shown(b),
                String::from_utf8_lossy(name)
            )));
        }
        if name.eq_ignore_ascii_case(b"host") {
            self.hosts += 1;
            if !value.iter().all(|&b| is_host_byte(b)) {
                return Err(Rejection::bad(format!(
                    "Host {:?} is not a host[:port]",
                    String::from_utf8_lossy(value)
                )));
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if self.content_length.is_some() {
                return Err(Rejection::bad("more than one Content-Length header"));
            }
            let n =
                (!value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit))
                    .then(|| value.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')));
            let Some(n) = n else {
                return Err(Rejection::bad(format!(
                    "Content-Length {:?} is not a number of bytes",
                    String::from_utf8_lossy(value)
                )));
            };
            if lim.body > 0 && n > lim.body {
                return Err(Rejection::body_too_large(lim.body));
            }
            self.content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if self.chunked {
                return Err(Rejection::bad("more than one Transfer-Encoding header"));
            }
            transfer_encoding(value)?;
            self.chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.connection_upgrade |=
                value.split(|&b| b == b',').any(|t| trim_ows(t).eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade_header = true;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Head, Rejection> {
        let http11 = self.request.as_ref().is_some_and(|r| r.http11);
        if http11 && self.hosts == 0 {
            return Err(Rejection::bad("an HTTP/1.1 request needs a Host header"));
        }
        if self.hosts > 1 {
            return Err(Rejection::bad("more than one Host header"));
        }
        let framing = match (self.chunked, self.content_length) {
            (true, Some(_)) => {
                return Err(Rejection::bad("both Content-Length and Transfer-Encoding"));
            }
            (true, None) if !http11 => {
                return Err(Rejection::bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            (true, None) => Framing::Chunked,
            (false, Some(0) | None) => Framing::Empty,
            (false, Some(n)) => Framing::Length(n),
        };
        Ok(Head {
            len: self.done,
            framing,
            upgrade: http11 && self.upgrade_header && self.connection_upgrade,
        })
    }
}

fn request_line(line: &[u8], lim: &Limits) -> Result<RequestLine, Rejection> {
    if line.len() > lim.line {
        return Err(Rejection::new(
            StatusCode::URI_TOO_LONG,
            format!("the request line is longer than {} bytes (limit_request_line)", lim.line),
        ));
    }
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::bad(
            "the request line is not METHOD SP target SP HTTP-version (single spaces)",
        ));
    };
    if !is_token(method) {
        return Err(Rejection::bad("the request method is not a token"));
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            return Err(Rejection::new(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                format!(
                    "HTTP/{}.{} is not supported: lb speaks HTTP/1.0, 1.1 and 2",
                    *a as char, *b as char
                ),
            ));
        }
        _ => return Err(Rejection::bad("the request line's version is not HTTP/1.x")),
    };
    if method == b"CONNECT" {
        return Err(Rejection::new(StatusCode::METHOD_NOT_ALLOWED, "lb does not tunnel CONNECT"));
    }
    check_target(method, target)?;
    Ok(RequestLine { http11 })
}

/// The request target: origin form (`/path?query`), absolute form (`http://host/path`), or `*`
/// for OPTIONS; RFC 3986 characters only, `%` followed by two hex digits.
fn check_target(method: &[u8], t: &[u8]) -> Result<(), Rejection> {
    for (i, &b) in t.iter().enumerate() {
        if !is_uri_byte(b) {
            return Err(Rejection::bad(format!("byte {} in the request target", shown(b))));
        }
        if b == b'%' && !t.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
            return Err(Rejection::bad(
                "a % in the request target is not followed by two hex digits",
            ));
        }
    }
    match t {
        [b'/', ..] => Ok(()),
        b"*" if method == b"OPTIONS" => Ok(()),
        _ => match http::Uri::try_from(t) {
            Ok(u)
                if u.authority().is_some() && matches!(u.scheme_str(), Some("http" | "https")) =>
            {
                Ok(())
            }
            _ => Err(Rejection::bad(
                "the request target is not /path, an absolute http(s) URL, or * for OPTIONS",
            )),
        },
    }
}

/// RFC 3986 characters (unreserved, reserved but `#`, and `%`).
static URI: ByteSet = ByteSet::alnum_and(b"-._~:/?[]@!$&'()*+,;=%");

fn is_uri_byte(b: u8) -> bool {
    URI.has(b)
}

/// The bytes of `host[:port]`: a reg-name, an IPv4 address or an IP literal in brackets.
static HOST: ByteSet = ByteSet::alnum_and(b"-._~!$&'()*+,;=%:[]");

fn is_host_byte(b: u8) -> bool {
    HOST.has(b)
}

/// The bytes of a header value: tab, visible ASCII and space, and obs-text (0x80 and up); no
/// other control byte, no DEL.
static VALUE: ByteSet = {
    let mut t = [true; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b == 0x09;
        b += 1;
    }
    t[0x7f] = false;
    ByteSet(t)
};

/// A Transfer-Encoding value lb forwards: exactly `chunked`. A list of real codings ending in
/// `chunked` is valid HTTP that lb cannot pass on unchanged (501); anything else is refused.
fn transfer_encoding(v: &[u8]) -> Result<(), Rejection> {
    if v == b"chunked" {
        return Ok(());
    }
    let codings: Vec<&[u8]> = v.split(|&b| b == b',').map(trim_ows).collect();
    let shown = String::from_utf8_lossy(v);
    if codings.len() > 1
        && codings.iter().all(|c| is_token(c))
        && codings.last() == Some(&&b"chunked"[..])
    {
        return Err(Rejection::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("Transfer-Encoding {shown:?}: lb forwards only \"chunked\""),
        ));
    }
    Err(Rejection::bad(format!("Transfer-Encoding {shown:?} is not exactly \"chunked\"")))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}
