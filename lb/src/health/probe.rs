//! Active probes: a quick look at one member, off the request path.
//!
//! A TCP connect for `tcp://` and `https://` members; for `http://` members the connect plus
//! one or a few `OPTIONS * HTTP/1.1` on it, where any complete answer is a pass (a stopped
//! process still completes TCP handshakes from its listen backlog, but answers nothing).
//!
//! A probe is also a sample of the path's packet loss, and at low traffic probes are most of
//! the samples there are. So a probe's request, padded to a few hundred bytes, is written a
//! small chunk at a time without Nagle, each chunk a packet; and the connection advertises the
//! smallest MSS ([`PROBE_MSS`]), so that across a real network the member's answer travels as
//! several segments too (on loopback the kernel passes a whole answer as one packet). Each
//! packet is one more chance to see a loss, for the same work on the member. It fails when its connection had to retransmit
//! (our packets were lost) or received a segment after a gap (the member's were): on a lossy
//! path such a loss is usually repaired within the timeout and would pass unseen.
//! Probe connections are not registered with telemetry and not counted as traffic.
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// The MSS probe connections advertise: Linux's minimum (`TCP_MIN_MSS`), so about 76 bytes
/// of payload per segment once TCP timestamps are on.
pub const PROBE_MSS: u32 = 88;
/// A probe request is padded to about this size (a `User-Agent` a few segments long), so that
/// a loss towards the member shows as often as one from it.
const PROBE_REQUEST_BYTES: usize = 320;
/// Written this many bytes at a time, each write its own segment.
const PROBE_CHUNK: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    Connect,
    /// `OPTIONS *` with this Host, this many times on one connection.
    Http {
        authority: String,
        requests: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub ok: bool,
    /// SYN to established, when the connect completed.
    pub connect: Option<Duration>,
    /// The whole probe.
    pub took: Duration,
    /// `OPTIONS *` answers it waited for (0 for a connect probe).
    pub requests: u32,
    /// It ran out of time (rather than failing outright).
    pub timed_out: bool,
    /// "ok in 0.2 ms", "timed out after 250 ms", "connect: refused".
    pub detail: String,
}

impl ProbeResult {
    /// Time per `OPTIONS *` answer, after the connect (HTTP probes that completed).
    pub fn per_answer(&self) -> Option<Duration> {
        let c = self.connect?;
        (self.ok && self.requests > 0).then(|| self.took.saturating_sub(c) / self.requests)
    }
}

/// Probe `addr`; the whole probe must finish within `timeout`.
pub async fn probe(addr: SocketAddr, kind: &ProbeKind, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    let mut connect = None;
    let run = async {
        let mut s = connect_small(addr).await.map_err(|e| format!("connect: {e}"))?;
        connect = Some(start.elapsed());
        if let ProbeKind::Http { authority, requests } = kind {
            for i in 1..=*requests {
                http_options(&mut s, authority, i == *requests).await?;
            }
        }
        match crate::telemetry::tcp_info::losses(&s) {
            Ok(l) if l.retransmits > 0 => {
                Err(format!("lost packets: {} retransmit(s)", l.retransmits))
            }
            Ok(l) if l.out_of_order > 0 => Err(format!(
                "lost packets: {} segment(s) from the member after a gap",
                l.out_of_order
            )),
            _ => Ok(()),
        }
    };
    let outcome = tokio::time::timeout(timeout, run).await;
    let took = start.elapsed();
    let requests = match kind {
        ProbeKind::Connect => 0,
        ProbeKind::Http { requests, .. } => *requests,
    };
    let result =
        |ok, timed_out, detail| ProbeResult { ok, connect, took, requests, timed_out, detail };
    match outcome {
        Ok(Ok(())) => result(true, false, format!("ok in {:.1} ms", took.as_secs_f64() * 1e3)),
        Ok(Err(e)) => result(false, false, e),
        Err(_) => result(
            false,
            true,
            match connect {
                None => format!("connect timed out after {} ms", timeout.as_millis()),
                Some(_) => format!("no answer within {} ms", timeout.as_millis()),
            },
        ),
    }
}

/// Connect with the probe MSS (a plain connect where the option is refused).
async fn connect_small(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    let _ = socket2::SockRef::from(&socket).set_tcp_mss(PROBE_MSS);
    let s = socket.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// `OPTIONS *` for `authority`, padded to about [`PROBE_REQUEST_BYTES`].
fn options_request(authority: &str, last: bool) -> String {
    let connection = if last { "close" } else { "keep-alive" };
    let mut req = format!(
        "OPTIONS * HTTP/1.1\r\nHost: {authority}\r\nConnection: {connection}\r\nUser-Agent: lb-probe"
    );
    if req.len() + 4 < PROBE_REQUEST_BYTES {
        req.push_str(" (");
        req.extend(std::iter::repeat_n('.', PROBE_REQUEST_BYTES - req.len() - 5));
        req.push(')');
    }
    req.push_str("\r\n\r\n");
    req
}

/// Send `OPTIONS *` and read the whole answer (head, and a Content-Length body), so that the
/// connection can carry the next one; `last` asks the member to close.
async fn http_options(s: &mut TcpStream, authority: &str, last: bool) -> Result<(), String> {
    // One packet per chunk (no Nagle): a loopback or offloading NIC would otherwise carry
    // the whole request as one packet, whatever the MSS.
    let req = options_request(authority, last);
    for chunk in req.as_bytes().chunks(PROBE_CHUNK) {
        s.write_all(chunk).await.map_err(|e| format!("send: {e}"))?;
    }
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err("answer head too long".to_owned());
        }
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed without an answer".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if !buf.starts_with(b"HTTP/1.") {
        return Err("answered something that is not HTTP".to_owned());
    }
    if last {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(len) => {
            let mut have = buf.len() - head_end;
            while have < len {
                let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("closed in the middle of an answer".to_owned());
                }
                have += n;
            }
            Ok(())
        }
        // No length: the answer cannot be delimited on a kept connection.
        None => Err("answer to OPTIONS * without a Content-Length".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn padded_request() {
        let r = options_request("127.0.0.1:8080", false);
        assert_eq!(r.len(), PROBE_REQUEST_BYTES);
        assert!(r.starts_with("OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"), "{r}");
        assert!(r.contains("\r\nConnection: keep-alive\r\n") && r.ends_with(")\r\n\r\n"), "{r}");
        let long = "h".repeat(400);
        let r = options_request(&long, true);
        assert!(r.ends_with("User-Agent: lb-probe\r\n\r\n") && r.contains("close"), "{r}");
    }

    #[tokio::test]
    async fn the_member_sends_small_segments_to_a_probe() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (r, accepted) =
            tokio::join!(probe(addr, &ProbeKind::Connect, Duration::from_secs(5)), l.accept());
        assert!(r.ok, "{r:?}");
        let (s, _) = accepted.unwrap();
        // The member's send MSS follows what the probe advertised (less TCP options).
        let mss = socket2::SockRef::from(&s).tcp_mss().unwrap();
        assert!(mss <= PROBE_MSS, "member sends segments of {mss} bytes");
    }

    #[tokio::test]
    async fn connect_http_and_silent_members() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let t = Duration::from_millis(300);
        // Accepts but answers nothing: a connect probe passes, an HTTP probe does not.
        let r = probe(addr, &ProbeKind::Connect, t).await;
        assert!(r.ok && r.connect.is_some(), "{r:?}");
        let http = ProbeKind::Http { authority: addr.to_string(), requests: 1 };
        let r = probe(addr, &http, t).await;
        assert!(!r.ok && r.detail.contains("no answer"), "{r:?}");
        // Answers: passes, whatever the status; three on one connection pass too.
        // (The earlier probes' connections wait in the backlog first; they carry nothing.)
        let server = tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 512];
                while matches!(s.read(&mut b).await, Ok(n) if n > 0) {
                    let answer = b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 2\r\n\r\nno";
                    let _ = s.write_all(answer).await;
                }
            }
        });
        let r = probe(addr, &http, t).await;
        assert!(r.ok, "{r:?}");
        let train = ProbeKind::Http { authority: addr.to_string(), requests: 3 };
        let r = probe(addr, &train, t).await;
        assert!(r.ok, "{r:?}");
        server.abort();
        // Nothing listening: refused at once.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let r = probe(closed, &ProbeKind::Connect, t).await;
        assert!(!r.ok && r.detail.starts_with("connect:"), "{r:?}");
    }
}
