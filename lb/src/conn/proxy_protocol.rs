//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a proxy in front of lb sends to
//! say who the client is, and the header lb sends to members with `send_proxy`.
//!
//! [`parse`] is pure: it takes the bytes read so far and says whether they hold a whole header,
//! need more, or are not a PROXY header at all, so it can be tested and fuzzed on its own.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
const SIG_V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included.
const MAX_V1: usize = 107;
/// The longest v2 header lb accepts (addresses plus TLVs).
pub const MAX_V2: usize = 16 + 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet to decide.
    Incomplete,
    /// A whole header of `len` bytes. `source`/`dest` are None for `LOCAL` (v2) and `UNKNOWN`
    /// (v1): the connection's own addresses stand.
    Header { len: usize, source: Option<SocketAddr>, dest: Option<SocketAddr> },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header (the connection did not start with one)")]
    Missing,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
}

/// Parse a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let n = buf.len().min(SIG_V2.len());
    if buf[..n] == SIG_V2[..n] {
        return if n < SIG_V2.len() { Ok(Parsed::Incomplete) } else { parse_v2(buf) };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Ok(Parsed::Incomplete) } else { parse_v1(buf) };
    }
    Err(ProxyHeaderError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let Some(end) = buf.windows(2).take(MAX_V1 - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_V1 {
            Err(ProxyHeaderError::V1("no CRLF within 107 bytes"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| ProxyHeaderError::V1("not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match parts.as_slice() {
        ["UNKNOWN", ..] => Ok(Parsed::Header { len, source: None, dest: None }),
        [fam @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
                let ip: IpAddr = s.parse().map_err(|_| ProxyHeaderError::V1("bad address"))?;
                match (*fam, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(ProxyHeaderError::V1("address does not match the family")),
                }
            };
            let port = |s: &str| -> Result<u16, ProxyHeaderError> {
                if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ProxyHeaderError::V1("bad port"));
                }
                s.parse().map_err(|_| ProxyHeaderError::V1("bad port"))
            };
            Ok(Parsed::Header {
                len,
                source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
                dest: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
            })
        }
        _ => Err(ProxyHeaderError::V1("expected TCP4, TCP6 or UNKNOWN and four fields")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::V2("version is not 2"));
    }
    let body = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if 16 + body > MAX_V2 {
        return Err(ProxyHeaderError::V2("header longer than lb accepts"));
    }
    if buf.len() < 16 + body {
        return Ok(Parsed::Incomplete);
    }
    let len = 16 + body;
    let a = &buf[16..len];
    match ver_cmd & 0x0f {
        0 => return Ok(Parsed::Header { len, source: None, dest: None }), // LOCAL
        1 => {}
        _ => return Err(ProxyHeaderError::V2("command is neither LOCAL nor PROXY")),
    }
    let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    match buf[13] {
        0x11 | 0x12 if a.len() >= 12 => {
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            Ok(Parsed::Header {
                len,
                source: Some(SocketAddr::new(ip(0), port(8))),
                dest: Some(SocketAddr::new(ip(4), port(10))),
            })
        }
        0x21 | 0x22 if a.len() >= 36 => {
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            Ok(Parsed::Header {
                len,
                source: Some(SocketAddr::new(ip(0), port(32))),
                dest: Some(SocketAddr::new(ip(16), port(34))),
            })
        }
        0x11 | 0x12 | 0x21 | 0x22 => Err(ProxyHeaderError::V2("address block too short")),
        // UNSPEC or UNIX: keep the connection's own addresses.
        _ => Ok(Parsed::Header { len, source: None, dest: None }),
    }
}

/// A v1 header for a connection from `src` to `dst`.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!("PROXY {fam} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port()).into_bytes()
}

/// A v2 header (PROXY command, TCP) for a connection from `src` to `dst`.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let mut out = SIG_V2.to_vec();
    out.push(0x21);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// Both addresses in one family (an IPv4 client on an IPv6 listener is shown IPv4-mapped).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let map = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() { (src, dst) } else { (map(src), map(dst)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_round_trips_and_needs_its_crlf() {
        let h = encode_v1(sa("192.0.2.1:5000"), sa("198.51.100.2:443"));
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 443\r\n");
        let mut buf = h.clone();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let parsed = parse(&buf).unwrap();
        assert_eq!(
            parsed,
            Parsed::Header {
                len: h.len(),
                source: Some(sa("192.0.2.1:5000")),
                dest: Some(sa("198.51.100.2:443"))
            }
        );
        assert_eq!(parse(&h[..h.len() - 1]).unwrap(), Parsed::Incomplete);
        assert_eq!(parse(b"PRO").unwrap(), Parsed::Incomplete);
        let six = encode_v1(sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2"));
        assert!(
            matches!(parse(&six).unwrap(), Parsed::Header { source: Some(s), .. } if s == sa("[2001:db8::1]:1"))
        );
    }

    #[test]
    fn v1_garbage_is_refused() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
        assert!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n").is_err());
        assert!(parse(b"PROXY TCP4 ::1 5.6.7.8 1 1\r\n").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4\r\n").is_err());
        assert!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(20)).is_err());
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nrest").unwrap(),
            Parsed::Header { len: 15, source: None, dest: None }
        );
    }

    #[test]
    fn v2_round_trips_for_both_families() {
        for (s, d) in [
            (sa("192.0.2.1:5000"), sa("198.51.100.2:443")),
            (sa("[2001:db8::1]:5000"), sa("[2001:db8::2]:443")),
        ] {
            let h = encode_v2(s, d);
            assert_eq!(
                parse(&h).unwrap(),
                Parsed::Header { len: h.len(), source: Some(s), dest: Some(d) }
            );
            for cut in 0..h.len() {
                assert_eq!(parse(&h[..cut]).unwrap(), Parsed::Incomplete, "cut at {cut}");
            }
        }
        let mut local = SIG_V2.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap(), Parsed::Header { len: 16, source: None, dest: None });
        let mut bad = SIG_V2.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0, 12]);
        assert!(parse(&bad).is_err());
    }
}
