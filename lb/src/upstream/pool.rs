//! Pooled keep-alive HTTP/1.1 connections to one member, cleartext or TLS.
//!
//! Idle connections sit in a bounded stack, newest on top ([`super::idle`]). A [`Lease`] is one
//! checked-out connection; the protocol layer hands it back with [`Lease::release`] once the
//! response body has been read to its end, and simply drops it otherwise (the connection then
//! closes). A connection has no task of its own: whoever holds the lease drives it
//! ([`Lease::send`], [`Lease::poll_driver`] from the response body), so a request and its member
//! connection run in one task, with no wakeup between tasks for the request, its response head
//! or each piece of its body. With `max` set, the member's connection slots bound the leases out
//! at once and `acquire` bounds the wait for one.
//! A pool belongs to one member identity and survives reloads with it. Every [`PURGE_EVERY`] the
//! control loop closes half of the idle connections no checkout needed since the last time, so
//! that a pool grown by a burst shrinks back, and the buffers its connections hold go with it.
use super::UpstreamError;
use super::connect::connect;
use super::idle::IdleStack;
use crate::balancer::Member;
use crate::telemetry::Telemetry;
use hyper::body::Body;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

/// Idle connections kept per member when `max` is not set.
const DEFAULT_IDLE: usize = 512;
/// How often idle connections that nobody needed are let go, half of them each time (HAProxy's
/// `pool-purge-delay`): after a burst of load the pool shrinks back within a few periods, and
/// with it the memory each connection holds.
pub const PURGE_EVERY: Duration = Duration::from_secs(5);

/// What moves a connection's bytes: hyper's HTTP/1.1 client state machine (upgrades included).
/// It ends when the connection closes.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One connection: the handle requests go through and the state machine that carries them.
struct Conn<B> {
    sender: SendRequest<B>,
    /// None once the connection has closed.
    driver: Option<Driver>,
}

impl<B> Conn<B> {
    /// Let the connection do what it can (send, receive, notice a close) and register the
    /// caller's task for more; whether it is still open.
    fn poll_driver(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(d) = self.driver.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            // The member closed the connection, or it failed; requests on it see why.
            self.driver = None;
        }
        self.driver.is_some()
    }
}

struct Idle<B> {
    conn: Conn<B>,
    since: Instant,
}

pub struct Pool<B> {
    member: Arc<Member>,
    telemetry: Arc<Telemetry>,
    /// For an `https://` member: how to wrap a new connection in TLS.
    tls: Option<crate::tls::Upstream>,
    idle: IdleStack<Idle<B>>,
    /// The fewest idle connections left by a checkout since the last purge (`usize::MAX`:
    /// no checkout): that many sat unused through the whole period.
    spare: AtomicUsize,
}

/// One checked-out connection.
pub struct Lease<B> {
    conn: Conn<B>,
    /// Whether the connection had served a request before (a failure on it may be a stale
    /// keep-alive race rather than a member fault).
    pub reused: bool,
    pool: Arc<Pool<B>>,
    _permit: Option<OwnedSemaphorePermit>,
    /// The connection must not be reused (its request body was never sent in full).
    spent: bool,
}

impl<B> Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(
        member: Arc<Member>,
        telemetry: Arc<Telemetry>,
        tls: Option<crate::tls::Upstream>,
    ) -> Arc<Pool<B>> {
        let idle_cap = member.config().max.map_or(DEFAULT_IDLE, |m| m as usize).max(1);
        Arc::new(Pool {
            idle: IdleStack::new(idle_cap),
            member,
            telemetry,
            tls,
            spare: AtomicUsize::new(usize::MAX),
        })
    }

    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// Check out a connection: a live idle one if there is one, else a new one.
    /// `fresh` skips the idle stack (used to retry after a stale keep-alive connection failed).
    pub async fn checkout(self: &Arc<Self>, fresh: bool) -> Result<Lease<B>, UpstreamError> {
        let permit =
            self.member.acquire_slot().await.map_err(|e| UpstreamError::PoolExhausted {
                addr: self.member.url.authority(),
                max: e.max,
                waited: e.waited,
            })?;
        let ttl = self.member.config().ttl;
        if !fresh {
            while let Some((idle, left)) = self.idle.pop_newest() {
                if ttl.is_some_and(|ttl| idle.since.elapsed() > ttl) {
                    continue;
                }
                let mut conn = idle.conn;
                // Nothing drove the connection while it sat idle: let it catch up (the end of
                // its last response, a close by the member). Ready at once either way.
                let ready = poll_fn(|cx| {
                    let open = conn.poll_driver(cx);
                    match conn.sender.poll_ready(cx) {
                        Poll::Ready(r) => Poll::Ready(r.is_ok() && open),
                        Poll::Pending if !open => Poll::Ready(false),
                        Poll::Pending => Poll::Pending,
                    }
                });
                if !ready.await {
                    continue;
                }
                self.spare.fetch_min(left, Relaxed);
                return Ok(Lease {
                    conn,
                    reused: true,
                    pool: Arc::clone(self),
                    _permit: permit,
                    spent: false,
                });
            }
        }
        self.spare.store(0, Relaxed);
        // Boxed: opening a connection (connect, TLS handshake) is a large future that most
        // checkouts, served from the idle stack, never run; inline, every request's future
        // carried its size.
        let conn = crate::memory::boxed(|| self.open()).await?;
        Ok(Lease { conn, reused: false, pool: Arc::clone(self), _permit: permit, spent: false })
    }

    async fn open(&self) -> Result<Conn<B>, UpstreamError> {
        let stream = connect(&self.member, &self.telemetry).await?;
        let addr = self.member.url.authority();
        match &self.tls {
            None => handshake(TokioIo::new(stream), addr).await,
            Some(tls) => {
                let wait = self.member.config().connectiontimeout;
                let shake = tls.connector.connect(tls.server_name.clone(), stream);
                let stream = match tokio::time::timeout(wait, shake).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(source)) => return Err(UpstreamError::Tls { addr, source }),
                    Err(_) => {
                        let source = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no TLS handshake within connectiontimeout {wait:?}"),
                        );
                        return Err(UpstreamError::Tls { addr, source });
                    }
                };
                handshake(TokioIo::new(stream), addr).await
            }
        }
    }
}

/// The most a member connection buffers of what the member sends: its response head must fit
/// (nginx allows 4–8 KiB by default, HAProxy 16 KiB), and bodies are read through it in pieces
/// of at most this size. hyper's default (about 400 KiB) let every connection carrying large
/// bodies hold buffers that size, and their chunks queued towards the client: lb's peak RSS
/// under 50 connections of 1 MiB bodies was 55 MiB. At 128 KiB it is 28 MiB, with throughput
/// within the run-to-run spread of the default; 64 KiB halved it (more, smaller reads and
/// writes: system time per request doubled).
pub const MEMBER_READ_BUF: usize = 128 * 1024;

/// The HTTP/1.1 client handshake on a connected stream (no I/O yet: hyper sends nothing first).
async fn handshake<B, T>(io: TokioIo<T>, addr: String) -> Result<Conn<B>, UpstreamError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(MEMBER_READ_BUF)
        .handshake(io)
        .await
        .map_err(|source| UpstreamError::Handshake { addr, source })?;
    Ok(Conn { sender, driver: Some(Box::pin(conn.with_upgrades())) })
}

impl<B> Pool<B> {
    /// Close half (rounded up) of the idle connections that sat unused since the last purge;
    /// how many were closed. Called every [`PURGE_EVERY`] by the control loop.
    pub fn purge(&self) -> usize {
        let unused = self.spare.swap(usize::MAX, Relaxed).min(self.idle.len());
        // The unused ones are the oldest, at the bottom (checkouts take from the top).
        let purged =
            (0..unused.div_ceil(2)).take_while(|_| self.idle.pop_oldest().is_some()).count();
        // Nothing drives an idle connection, so one the member closed would wait for a checkout
        // to notice: look at each once, outside the stack's lock, keeping those still open.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut taken = self.idle.take_all();
        taken.retain_mut(|idle| idle.conn.poll_driver(&mut cx));
        self.idle.restore(taken.into_iter());
        purged
    }

    /// Whether this pool was made for these member TLS settings (a reload that changes them
    /// gets a new pool).
    pub fn tls_matches(&self, tls: Option<&crate::tls::Upstream>) -> bool {
        match (&self.tls, tls) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same_as(b),
            _ => false,
        }
    }
}

impl<B> Lease<B> {
    /// Return the connection to the pool for reuse (its response must have been read to the end).
    pub fn release(self) {
        if self.spent || self.pool.member.config().disablereuse || self.conn.driver.is_none() {
            return;
        }
        // A full queue drops the connection, which closes it.
        let _ = self.pool.idle.push(Idle { conn: self.conn, since: Instant::now() });
    }

    /// Send a request and drive the connection until the member's response head arrives.
    pub async fn send(
        &mut self,
        req: http::Request<B>,
    ) -> Result<http::Response<hyper::body::Incoming>, TrySendError<http::Request<B>>>
    where
        B: Body + 'static,
    {
        let mut answer = std::pin::pin!(self.conn.sender.try_send_request(req));
        let conn = &mut self.conn;
        poll_fn(|cx| {
            // The connection first (it writes the request, reads the answer), then the answer.
            // When the connection ends, hyper fails the answer with the reason.
            conn.poll_driver(cx);
            answer.as_mut().poll(cx)
        })
        .await
    }

    /// Drive the connection from the task reading the response body; see [`Conn::poll_driver`].
    pub fn poll_driver(&mut self, cx: &mut Context<'_>) {
        self.conn.poll_driver(cx);
    }

    /// Let the connection run as its own task from now on (an upgraded connection, whose bytes
    /// hyper hands over only once its state machine has finished).
    pub fn detach(&mut self) {
        if let Some(d) = self.conn.driver.take() {
            tokio::spawn(d);
        }
    }

    /// Close the connection instead of returning it to the pool.
    pub fn spend(&mut self) {
        self.spent = true;
    }

    /// How long the caller should wait for the response head.
    pub fn response_timeout(&self) -> Duration {
        self.pool.member.config().timeout
    }
}
