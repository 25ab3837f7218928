//! Raw TCP members for layer-4 tests: each connection gets a greeting line (`NAME\n`), then its
//! bytes echoed back until it half-closes. A member can also expect a PROXY header first (kept
//! for the test to read), or half-close its own side first.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A client stream, plain or TLS.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Greet, then echo until the client half-closes, then half-close too.
    Echo,
    /// Greet, half-close at once, then count what the client still sends until it closes.
    CloseFirst,
    /// Greet, read until the client half-closes, then answer `got N\n` and close.
    AnswerAtEof,
}

pub struct TcpMember {
    pub name: String,
    pub addr: SocketAddr,
    pub conns: Arc<AtomicU64>,
    /// CloseFirst: bytes received after the member half-closed, per connection.
    pub received: Arc<Mutex<Vec<u64>>>,
    /// PROXY headers received, raw, when the member expects them.
    pub headers: Arc<Mutex<Vec<Vec<u8>>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Read exactly one PROXY header (v1 up to CRLF, v2 by its length field) and return it raw.
async fn read_proxy_header(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = vec![0u8; 16];
    s.read_exact(&mut head[..6]).await?;
    if &head[..6] == b"PROXY " {
        let mut line = head[..6].to_vec();
        while !line.ends_with(b"\r\n") {
            line.push(s.read_u8().await?);
        }
        return Ok(line);
    }
    s.read_exact(&mut head[6..16]).await?;
    let len = u16::from_be_bytes([head[14], head[15]]) as usize;
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).await?;
    head.extend_from_slice(&rest);
    Ok(head)
}

impl TcpMember {
    pub async fn start(name: &str, mode: Mode, expect_proxy: bool) -> TcpMember {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp member");
        let addr = l.local_addr().expect("addr");
        let conns = Arc::new(AtomicU64::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let (c, r, h, greeting) =
            (conns.clone(), received.clone(), headers.clone(), format!("{name}\n"));
        let task = tokio::spawn(async move {
            let mut set = JoinSet::new();
            loop {
                tokio::select! {
                    Ok((mut s, _)) = l.accept() => {
                        c.fetch_add(1, Ordering::Relaxed);
                        let (r, h, greeting) = (r.clone(), h.clone(), greeting.clone());
                        set.spawn(async move {
                            if expect_proxy {
                                match read_proxy_header(&mut s).await {
                                    Ok(hd) => h.lock().expect("headers").push(hd),
                                    Err(_) => return,
                                }
                            }
                            if s.write_all(greeting.as_bytes()).await.is_err() {
                                return;
                            }
                            match mode {
                                Mode::Echo => {
                                    let (mut rd, mut wr) = s.split();
                                    let _ = tokio::io::copy(&mut rd, &mut wr).await;
                                    let _ = wr.shutdown().await;
                                }
                                Mode::AnswerAtEof => {
                                    let mut n = 0u64;
                                    let mut buf = [0u8; 16 * 1024];
                                    while let Ok(k @ 1..) = s.read(&mut buf).await {
                                        n += k as u64;
                                    }
                                    let _ = s.write_all(format!("got {n}\n").as_bytes()).await;
                                    let _ = s.shutdown().await;
                                }
                                Mode::CloseFirst => {
                                    let _ = s.shutdown().await;
                                    let mut n = 0u64;
                                    let mut buf = [0u8; 16 * 1024];
                                    while let Ok(k @ 1..) = s.read(&mut buf).await {
                                        n += k as u64;
                                    }
                                    r.lock().expect("received").push(n);
                                }
                            }
                        });
                    }
                    Some(_) = set.join_next(), if !set.is_empty() => {}
                }
            }
        });
        TcpMember { name: name.to_owned(), addr, conns, received, headers, task: Some(task) }
    }

    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Close the listener and every open connection now.
    pub async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for TcpMember {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Connect to `addr` and read the member's greeting line: which member got the connection.
pub async fn connect(addr: SocketAddr) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect to lb");
    let name = read_line(&mut s).await;
    (s, name)
}

/// One `\n`-terminated line (without it).
pub async fn read_line<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut line = Vec::new();
    loop {
        let b = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_u8())
            .await
            .expect("greeting in time")
            .expect("greeting byte");
        if b == b'\n' {
            return String::from_utf8_lossy(&line).into_owned();
        }
        line.push(b);
    }
}

/// A config with TCP listener "tcp" on port 0 to `balancer://b` (tcp members from `body`).
pub fn tcp_config(listener_extra: &str, balancer_body: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nbalancer = \"b\"\n{listener_extra}\n\n[balancer.b]\n{balancer_body}\n"
    )
}

/// A TLS member: terminates TLS with `config`, then greets with its name and echoes.
pub async fn tls_member(
    name: &str,
    config: Arc<rustls::ServerConfig>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind tls member");
    let addr = l.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let greeting = format!("{name}\n");
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, greeting) = (acceptor.clone(), greeting.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else { return };
                if tls.write_all(greeting.as_bytes()).await.is_err() {
                    return;
                }
                let (mut rd, mut wr) = tokio::io::split(tls);
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// 64-bit FNV-1a, to compare streams without keeping them.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), `n` at a time.
pub struct Noise(pub u64);

impl Noise {
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}
