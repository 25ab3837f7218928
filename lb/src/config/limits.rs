//! What an HTTP listener allows a client: Apache's `LimitRequestLine`, `LimitRequestFieldSize`,
//! `LimitRequestFields`, `LimitRequestBody`, the head's total size, and `RequestReadTimeout`
//! (how long, and at what minimum rate, a client may take to send a head or a body).
//!
//! `request_read_timeout` takes Apache's own syntax, so a migrated config keeps its line as is:
//! `"header=20-40,MinRate=500 body=20,MinRate=500"` (the default). `header=0` or `body=0` turns
//! that timeout off.
use super::raw::RawListener;
use super::{KeyPath, Validator};
use std::time::Duration;

/// The sizes a request may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line in bytes (414 beyond).
    pub line: usize,
    /// Longest header line in bytes (431 beyond).
    pub field_size: usize,
    /// Most header lines (431 beyond).
    pub fields: usize,
    /// Largest head in bytes (431 beyond).
    pub head: usize,
    /// Largest body in bytes, 0 for no limit (413 beyond).
    pub body: u64,
}

impl Default for Limits {
    /// Apache's defaults: 8190-byte lines, 100 fields, a 1 GiB body; a 64 KiB head.
    fn default() -> Limits {
        Limits { line: 8190, field_size: 8190, fields: 100, head: 64 * 1024, body: 1 << 30 }
    }
}

/// One `RequestReadTimeout` rule: `initial` seconds, one more for every `min_rate` bytes
/// received (0: none), never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTimeout {
    pub initial: Duration,
    pub max: Option<Duration>,
    pub min_rate: u64,
}

impl ReadTimeout {
    /// The time allowed once `received` bytes have arrived.
    pub fn allowed(&self, received: u64) -> Duration {
        let extra = match self.min_rate {
            0 => Duration::ZERO,
            r => Duration::from_secs_f64(received as f64 / r as f64),
        };
        let t = self.initial.saturating_add(extra);
        self.max.map_or(t, |m| t.min(m))
    }
}

/// `RequestReadTimeout`: for request heads, bodies and the TLS handshake; None is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTimeouts {
    pub header: Option<ReadTimeout>,
    pub body: Option<ReadTimeout>,
    pub handshake: Option<Duration>,
}

impl Default for ReadTimeouts {
    /// Apache's default: `header=20-40,MinRate=500 body=20,MinRate=500`.
    fn default() -> ReadTimeouts {
        let secs = Duration::from_secs;
        ReadTimeouts {
            header: Some(ReadTimeout { initial: secs(20), max: Some(secs(40)), min_rate: 500 }),
            body: Some(ReadTimeout { initial: secs(20), max: None, min_rate: 500 }),
            handshake: None,
        }
    }
}

/// Parse Apache's `RequestReadTimeout` arguments; rules not named keep their defaults.
pub fn parse_read_timeouts(s: &str) -> Result<ReadTimeouts, String> {
    let mut t = ReadTimeouts::default();
    let secs = |v: &str| -> Result<u64, String> {
        v.parse::<u64>().map_err(|_| format!("{v:?} is not a whole number of seconds"))
    };
    for rule in s.split_whitespace() {
        let (kind, rest) = rule
            .split_once('=')
            .ok_or_else(|| format!("{rule:?}: expected TYPE=SECONDS[-MAX][,MinRate=BYTES]"))?;
        let (times, rate) = match rest.split_once(',') {
            Some((times, rate)) => {
                let r = rate
                    .strip_prefix("MinRate=")
                    .or_else(|| rate.strip_prefix("minrate="))
                    .ok_or_else(|| format!("{rule:?}: expected MinRate=BYTES after the comma"))?;
                let r =
                    r.parse::<u64>().map_err(|_| format!("{rule:?}: MinRate is not a number"))?;
                (times, r)
            }
            None => (rest, 0),
        };
        let (initial, max) = match times.split_once('-') {
            Some((a, b)) => (secs(a)?, Some(secs(b)?)),
            None => (secs(times)?, None),
        };
        if max.is_some_and(|m| m < initial) {
            return Err(format!("{rule:?}: the maximum is below the initial timeout"));
        }
        let rule_value = (initial > 0).then(|| ReadTimeout {
            initial: Duration::from_secs(initial),
            max: max.map(Duration::from_secs),
            min_rate: rate,
        });
        match kind.to_ascii_lowercase().as_str() {
            "header" => t.header = rule_value,
            "body" => t.body = rule_value,
            "handshake" => t.handshake = rule_value.map(|r| r.initial),
            other => {
                return Err(format!(
                    "unknown RequestReadTimeout type {other:?}: expected header, body or handshake"
                ));
            }
        }
    }
    Ok(t)
}

impl Validator<'_> {
    /// A listener's limits and read timeouts.
    pub(super) fn request_limits(
        &mut self,
        path: &KeyPath,
        l: &RawListener,
    ) -> (Limits, ReadTimeouts) {
        let d = Limits::default();
        let size = |me: &mut Self, key: &str, v: Option<u64>, def: u64, range: (u64, u64)| match v {
            None => def,
            Some(n) if (range.0..=range.1).contains(&n) => n,
            Some(n) => {
                me.err(&path.key(key), format!("{n} is out of range {}..={}", range.0, range.1));
                def
            }
        };
        let line =
            size(self, "limit_request_line", l.limit_request_line, d.line as u64, (64, 65536));
        let field_size = size(
            self,
            "limit_request_field_size",
            l.limit_request_field_size,
            d.field_size as u64,
            (64, 65536),
        );
        let fields = size(
            self,
            "limit_request_fields",
            l.limit_request_fields,
            d.fields as u64,
            (1, 10_000),
        );
        let head = size(
            self,
            "limit_request_fields_size",
            l.limit_request_fields_size,
            d.head as u64,
            (8192, 1024 * 1024),
        );
        let body = l.limit_request_body.unwrap_or(d.body);
        let limits = Limits {
            line: line as usize,
            field_size: field_size as usize,
            fields: fields as usize,
            head: head as usize,
            body,
        };
        let timeouts = match &l.request_read_timeout {
            None => ReadTimeouts::default(),
            Some(s) => parse_read_timeouts(s).unwrap_or_else(|m| {
                self.err(&path.key("request_read_timeout"), m);
                ReadTimeouts::default()
            }),
        };
        (limits, timeouts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apache_syntax_parses_and_defaults_fill_the_rest() {
        let t = parse_read_timeouts("header=10-30,MinRate=100").unwrap();
        let h = t.header.unwrap();
        assert_eq!(
            (h.initial, h.max, h.min_rate),
            (Duration::from_secs(10), Some(Duration::from_secs(30)), 100)
        );
        assert_eq!(t.body, ReadTimeouts::default().body);
        assert_eq!(h.allowed(0), Duration::from_secs(10));
        assert_eq!(h.allowed(500), Duration::from_secs(15));
        assert_eq!(h.allowed(1_000_000), Duration::from_secs(30));
        let off = parse_read_timeouts("header=0 body=0").unwrap();
        assert_eq!((off.header, off.body), (None, None));
        assert_eq!(
            parse_read_timeouts("handshake=5").unwrap().handshake,
            Some(Duration::from_secs(5))
        );
        for bad in ["header", "header=x", "header=20-10", "head=5", "body=5,Rate=3"] {
            assert!(parse_read_timeouts(bad).is_err(), "{bad}");
        }
    }
}
