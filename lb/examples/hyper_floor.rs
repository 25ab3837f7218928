//! The floor under lb's HTTP data path, for `cargo xtask bench --cost`: the least a proxy built
//! on hyper and tokio does per request, and nothing more. hyper's server (HTTP/1.1 and h2c on
//! one port, as lb's), a current-thread runtime, and per member a stack of idle hyper HTTP/1.1
//! client connections, taken round robin and driven from the request's task, as lb drives them.
//! No routing, header rewriting, strict parsing, access log, telemetry, health, timeouts or
//! failover: what lb costs beyond this is what those cost. An HTTP/2 request gets only what
//! an HTTP/1.1 member needs to take it: version 1.1, an origin-form target and a Host.
//!
//! `hyper_floor LISTEN MEMBER...` (addresses as `IP:PORT`).
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One member connection: the handle requests go through, and what carries them.
struct Conn {
    sender: SendRequest<Incoming>,
    /// None once the connection has closed.
    driver: Option<Driver>,
}

/// Let a connection do what it can; `None` once it has closed.
fn drive(driver: &mut Option<Driver>, cx: &mut Context<'_>) {
    if let Some(d) = driver.as_mut()
        && d.as_mut().poll(cx).is_ready()
    {
        *driver = None;
    }
}

struct Members {
    addrs: Vec<SocketAddr>,
    idle: Vec<Mutex<Vec<Conn>>>,
    next: AtomicUsize,
}

/// A response body that drives its member connection and hands it back at the end.
struct Relay {
    body: Incoming,
    conn: Option<Conn>,
    members: Arc<Members>,
    member: usize,
}

impl Body for Relay {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(c) = this.conn.as_mut() {
            drive(&mut c.driver, cx);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        let ended = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            _ => false,
        };
        if ended
            && let Some(c) = this.conn.take()
            && c.driver.is_some()
            && let Ok(mut idle) = this.members.idle[this.member].lock()
        {
            idle.push(c);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

async fn open(addr: SocketAddr) -> Result<Conn, Error> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(128 * 1024)
        .handshake(TokioIo::new(stream))
        .await?;
    Ok(Conn { sender, driver: Some(Box::pin(conn)) })
}

async fn forward(req: Request<Incoming>, members: Arc<Members>) -> Result<Response<Relay>, Error> {
    let req = if req.version() == Version::HTTP_2 { to_http11(req)? } else { req };
    let member = members.next.fetch_add(1, Relaxed) % members.addrs.len();
    let idle = members.idle[member].lock().ok().and_then(|mut idle| idle.pop());
    let mut conn = match idle {
        Some(c) => c,
        None => open(members.addrs[member]).await?,
    };
    let answer = {
        let Conn { sender, driver } = &mut conn;
        let mut send = std::pin::pin!(sender.send_request(req));
        poll_fn(|cx| {
            drive(driver, cx);
            send.as_mut().poll(cx)
        })
        .await?
    };
    let (parts, body) = answer.into_parts();
    Ok(Response::from_parts(parts, Relay { body, conn: Some(conn), members, member }))
}

/// An HTTP/2 request as an HTTP/1.1 member takes it.
fn to_http11(req: Request<Incoming>) -> Result<Request<Incoming>, Error> {
    let (mut parts, body) = req.into_parts();
    if !parts.headers.contains_key(header::HOST)
        && let Some(a) = parts.uri.authority()
    {
        parts.headers.insert(header::HOST, HeaderValue::from_str(a.as_str())?);
    }
    if let Some(pq) = parts.uri.path_and_query() {
        parts.uri = Uri::from(pq.clone());
    }
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hyper_floor LISTEN MEMBER...";
    let listen: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let addrs = args.map(|a| a.parse()).collect::<Result<Vec<SocketAddr>, _>>()?;
    if addrs.is_empty() {
        return Err(usage.into());
    }
    let members = Arc::new(Members {
        idle: addrs.iter().map(|_| Mutex::new(Vec::new())).collect(),
        addrs,
        next: AtomicUsize::new(0),
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let members = Arc::clone(&members);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req| forward(req, Arc::clone(&members)));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
