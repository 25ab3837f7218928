//! What happens on a client connection before any protocol: the PROXY protocol header a proxy in
//! front of lb sends ([`proxy_protocol`]), the SNI of a ClientHello for passthrough ([`sni`]),
//! and the stream that hands on what was read while looking ([`prefixed`]). Both listener kinds
//! (HTTP and TCP) start here.
pub mod prefixed;
pub mod proxy_protocol;
pub mod sni;

use bytes::BytesMut;
use prefixed::Prefixed;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A listening socket on `addr` with `backlog` (the kernel's queue of connections not yet
/// accepted). tokio's own `bind` asks for 128: a burst of new clients larger than that, while
/// lb is busy, overflows the queue, and the kernel drops their handshakes; they wait out SYN
/// retransmissions (a second and more) before lb sees them.
pub fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As tokio's `bind`: a restarted lb binds again while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog_arg(backlog))?;
    TcpListener::from_std(socket.into())
}

/// Change a listening socket's backlog in place (Linux applies a second `listen(2)`).
pub fn relisten(socket: &socket2::Socket, backlog: u32) -> std::io::Result<()> {
    socket.listen(backlog_arg(backlog))
}

fn backlog_arg(backlog: u32) -> i32 {
    i32::try_from(backlog).unwrap_or(i32::MAX)
}

/// Accept the next connection on `listener` (called `name` in the log), with TCP_NODELAY. An
/// accept error (out of descriptors, …) is logged and retried after a short back-off, never spun
/// on. Cancel-safe, for use in `select!`.
pub async fn accept(listener: &TcpListener, name: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A listener's `max_connections`: connections open at once. At the limit the listener stops
/// accepting (new connections wait in the kernel's backlog, as HAProxy's `maxconn` does)
/// until one closes; nobody is refused and nothing already open is slowed down.
#[derive(Debug, Default)]
pub struct Admission {
    open: AtomicUsize,
    freed: Notify,
}

/// One open connection; dropping it makes room.
pub struct Ticket(Arc<Admission>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.freed.notify_one();
    }
}

impl Admission {
    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// Wait until fewer than `max` connections are open.
    pub async fn room(&self, max: usize, listener: &str) {
        let mut warned = false;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.open() < max {
                return;
            }
            if !warned {
                tracing::warn!(
                    listener,
                    max,
                    "max_connections reached; accepting again when one closes"
                );
                warned = true;
            }
            freed.await;
        }
    }

    /// Count a connection in.
    pub fn enter(self: &Arc<Self>) -> Ticket {
        self.open.fetch_add(1, Relaxed);
        Ticket(Arc::clone(self))
    }
}

/// The longest wait for a PROXY header or a ClientHello.
pub const PRELUDE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PreludeError {
    #[error(transparent)]
    Proxy(#[from] proxy_protocol::ProxyHeaderError),
    #[error(transparent)]
    NotHello(#[from] sni::NotHello),
    #[error("the client sent nothing usable within {0:?}")]
    Timeout(Duration),
    #[error("the client closed the connection first")]
    Closed,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A client connection as it arrives, with what lb has read of it so far.
pub struct Incoming {
    pub stream: TcpStream,
    pub read: BytesMut,
    /// The client: the TCP peer, or the source its PROXY header names.
    pub client: SocketAddr,
    /// The PROXY header's destination, when it named one.
    dest: Option<SocketAddr>,
}

impl Incoming {
    pub fn new(stream: TcpStream, peer: SocketAddr) -> Incoming {
        Incoming { stream, read: BytesMut::new(), client: peer, dest: None }
    }

    /// The address the client connected to: the PROXY header's destination, or this socket's
    /// own address (asked of the kernel only when wanted).
    pub fn local(&self) -> SocketAddr {
        self.dest.or_else(|| self.stream.local_addr().ok()).unwrap_or(self.client)
    }

    /// Read more, within `deadline`.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<(), PreludeError> {
        self.read.reserve(4096);
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.read)).await {
            Err(_) => Err(PreludeError::Timeout(PRELUDE_TIMEOUT)),
            Ok(Ok(0)) => Err(PreludeError::Closed),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Read and strip a PROXY protocol header (v1 or v2); the client becomes its source.
    pub async fn accept_proxy(&mut self) -> Result<(), PreludeError> {
        let deadline = tokio::time::Instant::now() + PRELUDE_TIMEOUT;
        loop {
            match proxy_protocol::parse(&self.read)? {
                proxy_protocol::Parsed::Incomplete => self.fill(deadline).await?,
                proxy_protocol::Parsed::Header { len, source, dest } => {
                    let _ = self.read.split_to(len);
                    self.client = source.unwrap_or(self.client);
                    self.dest = dest.or(self.dest);
                    return Ok(());
                }
            }
        }
    }

    /// Read the ClientHello's SNI host name (the bytes stay to be forwarded).
    pub async fn server_name(&mut self) -> Result<Option<String>, PreludeError> {
        let deadline = tokio::time::Instant::now() + PRELUDE_TIMEOUT;
        loop {
            match sni::server_name(&self.read)? {
                sni::Hello::Incomplete => self.fill(deadline).await?,
                sni::Hello::Complete(name) => return Ok(name),
            }
        }
    }

    /// The stream, with what was read and not consumed in front.
    pub fn into_stream(self) -> Prefixed<TcpStream> {
        Prefixed::new(self.read, self.stream)
    }
}
