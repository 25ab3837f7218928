//! Active probes: a quick look at one member, off the request path.
//!
//! A TCP connect for `tcp://` and `https://` members; for `http://` members the connect plus
//! one or a few `OPTIONS * HTTP/1.1` on it, where any complete answer is a pass (a stopped
//! process still completes TCP handshakes from its listen backlog, but answers nothing). Any
//! probe also fails when its connection had to retransmit (`TCP_INFO`): on a lossy path a lost
//! packet is often recovered within the timeout by a tail-loss probe, and would pass unseen.
//! Probe connections are not registered with telemetry and not counted as traffic.
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

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
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        connect = Some(start.elapsed());
        if let ProbeKind::Http { authority, requests } = kind {
            for i in 1..=*requests {
                http_options(&mut s, authority, i == *requests).await?;
            }
        }
        match crate::telemetry::tcp_info::retransmits(&s) {
            Ok(0) | Err(_) => Ok(()),
            Ok(n) => Err(format!("lost packets: {n} retransmit(s)")),
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

/// Send `OPTIONS *` and read the whole answer (head, and a Content-Length body), so that the
/// connection can carry the next one; `last` asks the member to close.
async fn http_options(s: &mut TcpStream, authority: &str, last: bool) -> Result<(), String> {
    let connection = if last { "close" } else { "keep-alive" };
    let req = format!(
        "OPTIONS * HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: lb-probe\r\nConnection: {connection}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
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
