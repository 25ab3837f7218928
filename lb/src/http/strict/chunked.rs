//! A chunked request body, followed byte by byte as it streams through (RFC 9112 §7.1).
//!
//! lb does not buffer bodies; it watches their framing as they pass so that it knows where the
//! body ends (the next request starts there) and refuses one that is malformed midway: a chunk
//! size that is not 1–16 hex digits, whitespace where the grammar has none, extensions that are
//! not `;name[=token|"quoted"]` or longer than 4 KiB, data not followed by CRLF, malformed or too
//! many trailers. The body's total size is held to `limit_request_body` (413).
use super::{Limits, Rejection, is_tchar, shown};

/// Longest chunk-size line with its extensions.
const MAX_SIZE_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    /// Whitespace after the size: only `;` may follow.
    AfterSize,
    ExtBeforeName,
    ExtName,
    ExtAfterName,
    ExtBeforeValue,
    ExtValue,
    ExtAfterValue,
    ExtQuoted,
    ExtQuotedPair,
    /// Just after a quoted value's closing quote.
    ExtQuotedEnd,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

impl State {
    fn in_size_line(self) -> bool {
        use State::*;
        matches!(
            self,
            Size | AfterSize
                | ExtBeforeName
                | ExtName
                | ExtAfterName
                | ExtBeforeValue
                | ExtValue
                | ExtAfterValue
                | ExtQuoted
                | ExtQuotedPair
                | ExtQuotedEnd
        )
    }
}

/// Where a chunked body stands.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    /// The chunk size being read, then the data bytes left in the chunk.
    size: u64,
    digits: u8,
    /// Bytes of the current size or trailer line.
    line: usize,
    total: u64,
    trailers: usize,
}

impl Default for Chunked {
    fn default() -> Chunked {
        Chunked { state: State::Size, size: 0, digits: 0, line: 0, total: 0, trailers: 0 }
    }
}

impl Chunked {
    /// Read on through `data`: `Ok(Some(n))` when the body ended after its first `n` bytes.
    pub fn feed(&mut self, data: &[u8], lim: &Limits) -> Result<Option<usize>, Rejection> {
        let mut i = 0;
        while i < data.len() {
            if self.state == State::Data {
                let n = (data.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                self.size -= n as u64;
                i += n;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            self.step(b, lim)?;
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn step(&mut self, b: u8, lim: &Limits) -> Result<(), Rejection> {
        use State::*;
        let bad = |what: &str| Err(Rejection::bad(format!("{what} (byte {})", shown(b))));
        if self.state.in_size_line() {
            self.line += 1;
            if self.line > MAX_SIZE_LINE {
                return Err(Rejection::bad("a chunk-size line is longer than 4096 bytes"));
            }
        }
        let ws = matches!(b, b' ' | b'\t');
        self.state = match (self.state, b) {
            (Size, b) if b.is_ascii_hexdigit() => {
                if self.digits == 16 {
                    return Err(Rejection::bad("a chunk size has more than 16 hex digits"));
                }
                self.digits += 1;
                self.size = self.size << 4 | u64::from((b as char).to_digit(16).unwrap_or(0));
                Size
            }
            (Size, _) if self.digits == 0 => return bad("a chunk size is not a hex number"),
            (Size, b'\r') => SizeLf,
            (Size | AfterSize, b';') => ExtBeforeName,
            (Size | AfterSize, _) if ws => AfterSize,
            (Size | AfterSize, _) => {
                return bad("a chunk size is followed by something other than ; or CRLF");
            }
            (ExtBeforeName, _) if ws => ExtBeforeName,
            (ExtBeforeName | ExtName, b) if is_tchar(b) => ExtName,
            (ExtName | ExtAfterName, b'=') => ExtBeforeValue,
            (ExtName | ExtValue, b'\r') => SizeLf,
            (ExtName | ExtAfterName | ExtValue | ExtAfterValue, b';') => ExtBeforeName,
            (ExtName | ExtAfterName, _) if ws => ExtAfterName,
            (ExtBeforeValue, _) if ws => ExtBeforeValue,
            (ExtBeforeValue, b'"') => ExtQuoted,
            (ExtBeforeValue | ExtValue, b) if is_tchar(b) => ExtValue,
            (ExtValue | ExtAfterValue, _) if ws => ExtAfterValue,
            (ExtQuoted, b'"') => ExtQuotedEnd,
            (ExtQuotedEnd, b'\r') => SizeLf,
            (ExtQuotedEnd, b';') => ExtBeforeName,
            (ExtQuotedEnd, _) if ws => ExtAfterValue,
            (ExtQuoted, b'\\') => ExtQuotedPair,
            (ExtQuoted | ExtQuotedPair, b) if ws || (0x21..=0x7e).contains(&b) || b >= 0x80 => {
                ExtQuoted
            }
            (
                ExtBeforeName | ExtName | ExtAfterName | ExtBeforeValue | ExtValue | ExtAfterValue
                | ExtQuoted | ExtQuotedPair | ExtQuotedEnd,
                _,
            ) => return bad("a chunk extension is malformed"),
            (SizeLf, b'\n') => {
                self.line = 0;
                self.digits = 0;
                if self.size == 0 {
                    TrailerStart
                } else {
                    self.total = self.total.saturating_add(self.size);
                    if lim.body > 0 && self.total > lim.body {
                        return Err(Rejection::body_too_large(lim.body));
                    }
                    Data
                }
            }
            (SizeLf, _) => return bad("a chunk-size line ends in a bare CR"),
            (DataCr, b'\r') => DataLf,
            (DataCr, _) => {
                return bad("chunk data is longer than its size, or not followed by CRLF");
            }
            (DataLf, b'\n') => Size,
            (DataLf, _) => return bad("chunk data is followed by a bare CR"),
            (TrailerStart, b'\r') => EndLf,
            (TrailerStart, b) if is_tchar(b) => {
                self.trailers += 1;
                self.line = 1;
                if self.trailers > lim.fields {
                    return Err(Rejection::bad(format!(
                        "more than {} trailer lines (limit_request_fields)",
                        lim.fields
                    )));
                }
                TrailerName
            }
            (TrailerStart, _) => return bad("a trailer line does not start with a field name"),
            (TrailerName, b) if is_tchar(b) => TrailerName,
            (TrailerName, b':') => TrailerValue,
            (TrailerName, _) => return bad("a trailer field name is malformed"),
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, b) if b == b'\t' || (b >= b' ' && b != 0x7f) => TrailerValue,
            (TrailerValue, _) => return bad("a trailer field value holds a control byte"),
            (TrailerLf, b'\n') => TrailerStart,
            (TrailerLf, _) => return bad("a trailer line ends in a bare CR"),
            (EndLf, b'\n') => Done,
            (EndLf, _) => return bad("the last chunk is not followed by CRLF"),
            (Data | Done, _) => return bad("bytes after the end of a chunked body"),
        };
        if matches!(self.state, TrailerName | TrailerValue) {
            self.line += 1;
            if self.line > lim.field_size {
                return Err(Rejection::new(
                    http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("a trailer line is longer than {} bytes", lim.field_size),
                ));
            }
        }
        Ok(())
    }
}
