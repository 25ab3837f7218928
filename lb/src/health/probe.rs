//! Active probes: a quick look at one member, off the request path.
//!
//! A TCP connect for `tcp://` and `https://` members; for `http://` members the connect plus
//! `OPTIONS * HTTP/1.1`, where any complete status line is a pass (a stopped process still
//! completes TCP handshakes from its listen backlog, but answers nothing). Probe connections are
//! not registered with telemetry and not counted as traffic.
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    Connect,
    /// `OPTIONS *` with this Host.
    Http {
        authority: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub ok: bool,
    /// SYN to established, when the connect completed.
    pub connect: Option<Duration>,
    /// "ok in 0.2 ms", "timed out after 250 ms", "connect: refused".
    pub detail: String,
}

/// Probe `addr`; the whole probe must finish within `timeout`.
pub async fn probe(addr: SocketAddr, kind: &ProbeKind, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    let mut connect = None;
    let run = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        connect = Some(start.elapsed());
        if let ProbeKind::Http { authority } = kind {
            http_options(&mut s, authority).await?;
        }
        Ok::<(), String>(())
    };
    let outcome = tokio::time::timeout(timeout, run).await;
    let took = start.elapsed();
    match outcome {
        Ok(Ok(())) => ProbeResult {
            ok: true,
            connect,
            detail: format!("ok in {:.1} ms", took.as_secs_f64() * 1e3),
        },
        Ok(Err(e)) => ProbeResult { ok: false, connect, detail: e },
        Err(_) => ProbeResult {
            ok: false,
            connect,
            detail: match connect {
                None => format!("connect timed out after {} ms", timeout.as_millis()),
                Some(_) => format!("no answer within {} ms", timeout.as_millis()),
            },
        },
    }
}

/// Send `OPTIONS *` and read until a status line ends.
async fn http_options(s: &mut TcpStream, authority: &str) -> Result<(), String> {
    let req = format!(
        "OPTIONS * HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: lb-probe\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 256];
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed without an answer".to_owned());
        }
        have += n;
        if let Some(end) = buf[..have].iter().position(|b| *b == b'\n') {
            return if buf[..end].starts_with(b"HTTP/1.") {
                Ok(())
            } else {
                Err("answered something that is not HTTP".to_owned())
            };
        }
        if have == buf.len() {
            return Err("status line too long".to_owned());
        }
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
        let http = ProbeKind::Http { authority: addr.to_string() };
        let r = probe(addr, &http, t).await;
        assert!(!r.ok && r.detail.contains("no answer"), "{r:?}");
        // Answers a status line: passes, whatever the status.
        // (The earlier probes' connections wait in the backlog first; they carry nothing.)
        let server = tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = [0u8; 512];
                if matches!(s.read(&mut b).await, Ok(n) if n > 0) {
                    let _ = s.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n").await;
                }
            }
        });
        let r = probe(addr, &http, t).await;
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
