//! Access log lines. `combined`: Apache's combined format (`%h %l %u %t "%r" %>s %b
//! "%{Referer}i" "%{User-Agent}i"`, time in UTC) followed by lb's fields as `key=value`:
//! listener, balancer, member, attempts, the BALANCER_* values, time to the response head and in
//! all (µs), and whether the answer was sent whole. `json`: one object per line with the same
//! fields under their names. TCP connections get their own shape in both.
use super::{Entry, HttpRecord, TcpRecord};
use crate::config::AccessLogFormat;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn line(buf: &mut Vec<u8>, e: &Entry, fmt: AccessLogFormat) {
    match (e, fmt) {
        (Entry::Http(r), AccessLogFormat::Combined) => http_combined(buf, r),
        (Entry::Http(r), AccessLogFormat::Json) => http_json(buf, r),
        (Entry::Tcp(r), AccessLogFormat::Combined) => tcp_combined(buf, r),
        (Entry::Tcp(r), AccessLogFormat::Json) => tcp_json(buf, r),
    }
    buf.push(b'\n');
}

/// A UTC time as (year, month name, day, hour, minute, second).
fn parts(secs: u64) -> (i64, &'static str, u32, u64, u64, u64) {
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    let month = MONTHS[(m as usize).saturating_sub(1).min(11)];
    (y, month, d, rem / 3600, rem / 60 % 60, rem % 60)
}

/// `%t`: `[26/Nov/2026:13:58:55 +0000]`. The text of the last second is kept: a busy log
/// writes thousands of lines with the same one.
fn clf_time(buf: &mut Vec<u8>, at: SystemTime) {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, Vec<u8>)> = const {
            std::cell::RefCell::new((u64::MAX, Vec::new()))
        };
    }
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST.with_borrow_mut(|(last, text)| {
        if *last != secs {
            let (y, mon, d, h, m, s) = parts(secs);
            text.clear();
            let _ = write!(text, "[{d:02}/{mon}/{y}:{h:02}:{m:02}:{s:02} +0000]");
            *last = secs;
        }
        buf.extend_from_slice(text);
    });
}

/// A number in decimal, without going through `core::fmt`.
fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// The client address (`%h`).
fn push_ip(buf: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                push_u64(buf, u64::from(o));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

/// A time for pages: `26-Nov-2026 13:58:55 UTC`.
pub fn utc(secs: u64) -> String {
    let (y, mon, d, h, m, s) = parts(secs);
    format!("{d:02}-{mon}-{y} {h:02}:{m:02}:{s:02} UTC")
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A value inside double quotes, with `"`, `\\` and control bytes escaped as Apache does.
fn quoted(buf: &mut Vec<u8>, v: &[u8]) {
    buf.push(b'"');
    escaped(buf, v);
    buf.push(b'"');
}

fn escaped(buf: &mut Vec<u8>, mut v: &[u8]) {
    // Runs of bytes that need no escape (all of most values) are copied whole.
    let plain = |b: u8| matches!(b, 0x20..=0x7e) && b != b'"' && b != b'\\';
    while let Some(i) = v.iter().position(|&b| !plain(b)) {
        buf.extend_from_slice(&v[..i]);
        match v[i] {
            b @ (b'"' | b'\\') => buf.extend_from_slice(&[b'\\', b]),
            b => {
                let _ = write!(buf, "\\x{b:02x}");
            }
        }
        v = &v[i + 1..];
    }
    buf.extend_from_slice(v);
}

fn or_dash(v: Option<&str>) -> &str {
    v.filter(|s| !s.is_empty()).unwrap_or("-")
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn target(r: &HttpRecord) -> &str {
    r.text.target().unwrap_or("-")
}

/// `key=value` with a dash for nothing.
fn field(buf: &mut Vec<u8>, key: &str, v: Option<&str>) {
    buf.push(b' ');
    buf.extend_from_slice(key.as_bytes());
    buf.push(b'=');
    buf.extend_from_slice(or_dash(v).as_bytes());
}

fn number(buf: &mut Vec<u8>, key: &str, n: u64) {
    buf.push(b' ');
    buf.extend_from_slice(key.as_bytes());
    buf.push(b'=');
    push_u64(buf, n);
}

fn http_combined(buf: &mut Vec<u8>, r: &HttpRecord) {
    push_ip(buf, r.client.ip());
    buf.extend_from_slice(b" - - ");
    clf_time(buf, r.at);
    // "%r": the request line, as one quoted value.
    buf.extend_from_slice(b" \"");
    escaped(buf, r.method.as_str().as_bytes());
    buf.push(b' ');
    escaped(buf, target(r).as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(version(r.version).as_bytes());
    buf.push(b'"');
    buf.push(b' ');
    push_u64(buf, u64::from(r.status.as_u16()));
    buf.push(b' ');
    if r.bytes == 0 {
        buf.push(b'-');
    } else {
        push_u64(buf, r.bytes);
    }
    buf.push(b' ');
    quoted(buf, r.text.referer().unwrap_or(b"-"));
    buf.push(b' ');
    quoted(buf, r.text.user_agent().unwrap_or(b"-"));
    let v = &r.balancer_values;
    field(buf, "listener", Some(&r.listener));
    field(buf, "balancer", r.balancer.as_deref());
    field(buf, "member", r.member.as_deref().map(|m| m.base()));
    number(buf, "attempts", u64::from(r.attempts));
    field(buf, "route", v.worker_route.as_deref());
    field(buf, "session_sticky", v.session_sticky.as_deref());
    field(buf, "session_route", v.session_route.as_deref());
    number(buf, "route_changed", u64::from(v.route_changed));
    number(buf, "head_us", r.head_us);
    number(buf, "total_us", r.total_us);
    number(buf, "complete", u64::from(r.complete));
}

fn http_json(buf: &mut Vec<u8>, r: &HttpRecord) {
    let text = |v: Option<&[u8]>| v.map(|v| String::from_utf8_lossy(v).into_owned());
    let v = &r.balancer_values;
    let secs = r.at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let obj = serde_json::json!({
        "time": secs,
        "type": "http",
        "listener": &*r.listener,
        "client": r.client.ip().to_string(),
        "method": r.method.as_str(),
        "target": target(r),
        "version": version(r.version),
        "status": r.status.as_u16(),
        "bytes": r.bytes,
        "referer": text(r.text.referer()),
        "user_agent": text(r.text.user_agent()),
        "balancer": r.balancer.as_deref(),
        "member": r.member.as_deref().map(|m| m.base()),
        "attempts": r.attempts,
        "route": v.worker_route,
        "session_sticky": v.session_sticky,
        "session_route": v.session_route,
        "route_changed": v.route_changed,
        "head_us": r.head_us,
        "total_us": r.total_us,
        "complete": r.complete,
    });
    let _ = serde_json::to_writer(&mut *buf, &obj);
}

fn tcp_combined(buf: &mut Vec<u8>, r: &TcpRecord) {
    let _ = write!(buf, "{} - - ", r.client.ip());
    clf_time(buf, r.at);
    let _ = write!(
        buf,
        " \"TCP\" - {} listener={} balancer={} member={} to_member={} total_ms={} outcome=",
        r.to_client, r.listener, r.balancer, r.member, r.to_member, r.total_ms
    );
    quoted(buf, r.outcome.as_bytes());
}

fn tcp_json(buf: &mut Vec<u8>, r: &TcpRecord) {
    let secs = r.at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let obj = serde_json::json!({
        "time": secs,
        "type": "tcp",
        "listener": &*r.listener,
        "client": r.client.ip().to_string(),
        "balancer": &*r.balancer,
        "member": r.member,
        "to_member": r.to_member,
        "to_client": r.to_client,
        "total_ms": r.total_ms,
        "outcome": r.outcome,
    });
    let _ = serde_json::to_writer(&mut *buf, &obj);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_the_calendar_s() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(20_418), (2025, 11, 26));
        assert_eq!(civil(11_016), (2000, 2, 29));
        let mut b = Vec::new();
        clf_time(&mut b, UNIX_EPOCH + std::time::Duration::from_secs(1_795_701_535));
        assert_eq!(String::from_utf8(b).unwrap(), "[26/Nov/2026:13:58:55 +0000]");
    }

    #[test]
    fn numbers_and_addresses_read_as_std_writes_them() {
        for n in [0, 7, 10, 99, 100, 65_535, 1_000_000_007, u64::MAX] {
            let mut b = Vec::new();
            push_u64(&mut b, n);
            assert_eq!(b, n.to_string().as_bytes());
        }
        for ip in ["0.0.0.0", "127.0.0.1", "255.255.255.255", "10.20.3.40", "::1", "2001:db8::7"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut b = Vec::new();
            push_ip(&mut b, ip);
            assert_eq!(b, ip.to_string().as_bytes());
        }
        // The kept second is the one asked for, also after a change.
        for secs in [1_700_000_000u64, 1_700_000_000, 1_700_000_001] {
            let at = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let mut b = Vec::new();
            clf_time(&mut b, at);
            let (y, mon, d, h, m, s) = parts(secs);
            let want = format!("[{d:02}/{mon}/{y}:{h:02}:{m:02}:{s:02} +0000]");
            assert_eq!(String::from_utf8(b).unwrap(), want);
        }
    }

    #[test]
    fn quoting_escapes_what_would_break_a_line() {
        let mut b = Vec::new();
        quoted(&mut b, b"a\"b\\c\nd\xff");
        assert_eq!(String::from_utf8(b).unwrap(), r#""a\"b\\c\x0ad\xff""#);
    }
}
