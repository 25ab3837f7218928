//! Values with a unit or a syntax of their own: durations, member URLs, and the member and
//! balancer values a config file and a live edit (`crate::edit`) both set, checked by the same
//! rules.
//!
//! Each parser returns the message an operator should read; the caller attaches the file, line
//! and key.
use super::model::{MemberUrl, Scheme};
use super::raw::RawDuration;
use std::time::Duration;

/// Parse a duration: plain integer/float seconds (Apache), or "250ms", "5s", "2m", "1h".
pub fn parse_duration(raw: &RawDuration) -> Result<Duration, String> {
    let secs = |f: f64| {
        if f.is_finite() && f >= 0.0 {
            Ok(Duration::from_secs_f64(f))
        } else {
            Err(format!("duration must be a non-negative number of seconds, got {f}"))
        }
    };
    match raw {
        RawDuration::Seconds(s) if *s >= 0 => Ok(Duration::from_secs(*s as u64)),
        RawDuration::Seconds(s) => Err(format!("duration must not be negative, got {s}")),
        RawDuration::FractionalSeconds(f) => secs(*f),
        RawDuration::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let n: f64 = num.parse().map_err(|_| {
                format!(
                    "invalid duration {t:?}: expected e.g. 30, \"250ms\", \"5s\", \"2m\", \"1h\""
                )
            })?;
            let scale = match unit.trim() {
                "" | "s" => 1.0,
                "ms" => 0.001,
                "us" => 0.000_001,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                other => {
                    return Err(format!(
                        "unknown duration unit {other:?} in {t:?} (use ms, s, m, h)"
                    ));
                }
            };
            secs(n * scale)
        }
    }
}

/// Parse a member URL: `http://host[:port][/path]`, `https://host[:port][/path]` or
/// `tcp://host:port`.
pub fn parse_member_url(s: &str) -> Result<MemberUrl, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some("tcp") => Scheme::Tcp,
        Some(other) => {
            return Err(format!(
                "{s:?}: unsupported scheme {other:?}, expected http://, https:// or tcp://"
            ));
        }
        None => return Err(format!("{s:?} has no scheme: write http://host:port")),
    };
    let host = uri.host().ok_or_else(|| format!("{s:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    if uri.query().is_some() {
        return Err(format!("{s:?}: a member URL cannot carry a query string"));
    }
    let path = uri.path().trim_end_matches('/').to_owned();
    let port = match (uri.port_u16(), scheme) {
        (Some(p), _) => p,
        (None, Scheme::Tcp) => return Err(format!("{s:?}: a tcp:// member needs a port")),
        (None, s) => s.default_port(),
    };
    if scheme == Scheme::Tcp && !path.is_empty() {
        return Err(format!("{s:?}: a tcp:// member has no path"));
    }
    Ok(MemberUrl { scheme, host, port, path, pin: None })
}

/// `loadfactor` (1..=100, fractions allowed) as lb stores it: hundredths.
pub fn parse_loadfactor(f: f64) -> Result<u32, String> {
    if (1.0..=100.0).contains(&f) {
        Ok((f * 100.0).round() as u32)
    } else {
        Err(format!("loadfactor {f} is out of range 1..=100"))
    }
}

/// `lbset` (0..=99).
pub fn parse_lbset(n: i64) -> Result<u32, String> {
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= 99)
        .ok_or_else(|| format!("lbset {n} is out of range 0..=99"))
}

/// A `route` or `redirect` value: 1..=64 visible ASCII characters.
pub fn check_route(key: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 64 || !v.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!("{key} {v:?} must be 1..=64 visible ASCII characters"));
    }
    Ok(())
}

/// `lbmethod`.
pub fn parse_lbmethod(s: &str) -> Result<super::model::LbMethod, String> {
    use super::model::LbMethod;
    match s {
        "byrequests" => Ok(LbMethod::ByRequests),
        "bytraffic" => Ok(LbMethod::ByTraffic),
        "bybusyness" => Ok(LbMethod::ByBusyness),
        "heartbeat" => Ok(LbMethod::Heartbeat),
        other => Err(format!(
            "unknown lbmethod {other:?}: expected byrequests, bytraffic, bybusyness or heartbeat"
        )),
    }
}

/// `hcuri`: empty, or a path starting with `/` and holding no spaces.
pub fn check_hcuri(uri: &str) -> Result<(), String> {
    if !uri.is_empty() && (!uri.starts_with('/') || !uri.bytes().all(|c| c.is_ascii_graphic())) {
        return Err(format!("hcuri {uri:?} must start with / and hold no spaces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_apache_and_suffixed_forms() {
        assert_eq!(parse_duration(&RawDuration::Seconds(5)).unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration(&RawDuration::Text("250ms".into())).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration(&RawDuration::Text("2m".into())).unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(
            parse_duration(&RawDuration::FractionalSeconds(0.5)).unwrap(),
            Duration::from_millis(500)
        );
        assert!(parse_duration(&RawDuration::Text("5 parsecs".into())).is_err());
        assert!(parse_duration(&RawDuration::Seconds(-1)).is_err());
    }

    #[test]
    fn member_urls_by_scheme() {
        let u = parse_member_url("https://app.internal/base/").unwrap();
        assert_eq!((u.scheme, u.port, u.path.as_str()), (Scheme::Https, 443, "/base"));
        let u = parse_member_url("tcp://[::1]:5432").unwrap();
        assert_eq!((u.scheme, u.host.as_str(), u.port), (Scheme::Tcp, "::1", 5432));
        assert_eq!(u.base(), "tcp://[::1]:5432");
        assert!(parse_member_url("tcp://db").unwrap_err().contains("needs a port"));
        assert!(parse_member_url("tcp://db:1/x").unwrap_err().contains("no path"));
        assert!(parse_member_url("ftp://x").unwrap_err().contains("unsupported scheme"));
    }
}
