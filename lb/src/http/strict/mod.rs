//! Strict HTTP/1.1 request framing (RFC 9110/9112), checked before hyper or a member sees a byte.
//!
//! Why it exists: a proxy that reads a request's framing differently from the member behind it
//! is how requests get smuggled, and hyper alone is lenient in places (a missing Host, odd
//! `Transfer-Encoding`, chunk extensions) and answers its own parse errors with an empty body.
//! [`head::HeadParser`] reads a request head line by line and [`chunked::Chunked`] follows a
//! chunked body; both refuse anything ambiguous with a [`Rejection`]: a status and a reason that
//! lb sends as the response body. Both are incremental, so a client that sends one byte at a time
//! costs one pass over its bytes, and both are pure (no I/O), so they are unit-tested and fuzzed
//! directly. `http::guard` runs them on a client connection.
pub mod chunked;
pub mod head;

use http::StatusCode;

pub use crate::config::Limits;

/// A request lb refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {reason}")]
pub struct Rejection {
    pub status: StatusCode,
    pub reason: String,
}

impl Rejection {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Rejection {
        Rejection { status, reason: reason.into() }
    }
    pub fn bad(reason: impl Into<String>) -> Rejection {
        Rejection::new(StatusCode::BAD_REQUEST, reason)
    }
    /// The status of a request whose body went over `limit_request_body`.
    pub fn body_too_large(limit: u64) -> Rejection {
        Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than limit_request_body ({limit} bytes)"),
        )
    }
}

/// A byte as text for an error message: itself when printable, else its hex code.
fn shown(b: u8) -> String {
    if b.is_ascii_graphic() { format!("{:?}", b as char) } else { format!("0x{b:02x}") }
}

/// A set of bytes as a table of 256 flags, built at compile time: asking whether a byte is in
/// it is one load. The parsers ask for every byte of every request head.
struct ByteSet([bool; 256]);

impl ByteSet {
    /// ASCII letters and digits, and `extra`.
    const fn alnum_and(extra: &[u8]) -> ByteSet {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            t[b] = (b as u8).is_ascii_alphanumeric();
            b += 1;
        }
        let mut i = 0;
        while i < extra.len() {
            t[extra[i] as usize] = true;
            i += 1;
        }
        ByteSet(t)
    }

    fn has(&self, b: u8) -> bool {
        self.0[b as usize]
    }
}

/// RFC 9110 `tchar`: the bytes of a token (method, header name, coding name).
static TCHAR: ByteSet = ByteSet::alnum_and(b"!#$%&'*+-.^_`|~");

fn is_tchar(b: u8) -> bool {
    TCHAR.has(b)
}

/// Whether `s` is a non-empty token.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

#[cfg(test)]
mod tests;
