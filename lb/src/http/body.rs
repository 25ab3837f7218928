//! Body types that carry a request to a member and a response back, streaming and counted.
//!
//! Bodies are never buffered: each frame is passed on as it arrives, so memory stays bounded by
//! hyper's buffers whatever the body size. Counting happens as frames pass (Apache's `transferred`
//! and `read`, which drive `bytraffic`). The response body owns the member's in-flight guard and
//! the pooled connection lease, so `busy` drops and the connection returns to its pool exactly
//! when the response has been read to its end.
use super::clock::Clock;
use super::strict::Rejection;
use crate::accesslog::HttpRecord as AccessRecord;
use crate::balancer::{InFlight, Member};
use crate::upstream::pool::Lease;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Instant;

/// The client's request body failed (malformed, over a limit, too slow, or cut short); the
/// client gets the rejection's status, and the member is not blamed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientBodyError(pub Rejection);

impl ClientBodyError {
    fn new(e: hyper::Error) -> ClientBodyError {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cur {
            if let Some(r) = c
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|i| i.downcast_ref::<Rejection>())
            {
                return ClientBodyError(r.clone());
            }
            cur = c.source();
        }
        ClientBodyError(Rejection::bad(format!("the request body could not be read: {e}")))
    }

    /// The client's fault behind `e`, if that is what `e` is.
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Rejection> {
        let mut cur = Some(e);
        while let Some(c) = cur {
            if let Some(ClientBodyError(r)) = c.downcast_ref::<ClientBodyError>() {
                return Some(r);
            }
            cur = c.source();
        }
        None
    }
}

/// A client request body on its way to a member.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    member: Option<Arc<Member>>,
    /// `ping`: the body waits here until the member answers `100 Continue`.
    gate: Option<Arc<Gate>>,
}

impl RequestBody {
    pub fn new(inner: Incoming) -> RequestBody {
        RequestBody { inner: Some(inner), member: None, gate: None }
    }
    pub fn empty() -> RequestBody {
        RequestBody { inner: None, member: None, gate: None }
    }
    /// Hold the body back behind a gate that opens on `100 Continue`.
    pub fn gated(&mut self) -> Option<Arc<Gate>> {
        let inner = self.inner.take()?;
        let gate = Arc::new(Gate::new(inner));
        self.gate = Some(Arc::clone(&gate));
        Some(gate)
    }

    /// The member whose `transferred` counter the body's bytes are added to.
    pub fn count_for(&mut self, member: &Arc<Member>) {
        self.member = Some(Arc::clone(member));
    }
}

/// The body was taken back from a gate that never opened: the connection must not go on.
#[derive(Debug, thiserror::Error)]
#[error("request body withdrawn: the member sent no 100 Continue in time")]
pub struct Withdrawn;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(gate) = &this.gate {
            match ready!(gate.poll_open(cx)) {
                Some(inner) => {
                    this.inner = Some(inner);
                    this.gate = None;
                }
                None => return Poll::Ready(Some(Err(Box::new(Withdrawn)))),
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx))
            .map(|r| r.map_err(|e| Box::new(ClientBodyError::new(e)) as Self::Error));
        if let (Some(Ok(f)), Some(m)) = (&frame, &this.member)
            && let Some(d) = f.data_ref()
        {
            m.add_transferred(d.len() as u64);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.gate.is_none() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.gate, &self.inner) {
            (Some(g), _) => g.size,
            (None, Some(i)) => i.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

/// Where a request body waits for the member's `100 Continue` (Apache's `ping`). The proxy
/// either opens it (the body is sent) or takes the body back (it was not: another member may
/// have it). Only requests to members with `ping` have a gate; its lock is taken when hyper
/// polls the body (once it is woken) and when the proxy withdraws it, never contended for long.
#[derive(Debug)]
pub struct Gate {
    body: std::sync::Mutex<Option<Incoming>>,
    open: std::sync::atomic::AtomicBool,
    waker: futures_util::task::AtomicWaker,
    /// The body's size, as it was when the gate closed.
    size: SizeHint,
    /// Wakes the proxy when the member's `100 Continue` arrives.
    pub continued: tokio::sync::Notify,
}

impl Gate {
    fn new(inner: Incoming) -> Gate {
        Gate {
            size: inner.size_hint(),
            body: std::sync::Mutex::new(Some(inner)),
            open: std::sync::atomic::AtomicBool::new(false),
            waker: futures_util::task::AtomicWaker::new(),
            continued: tokio::sync::Notify::new(),
        }
    }

    /// The member said `100 Continue`: let the body go.
    pub fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::Release);
        self.waker.wake();
        self.continued.notify_one();
    }

    pub fn is_open(&self) -> bool {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Take the body back for another member, unless it has already gone out; the request on
    /// this connection then fails (the connection is not to be used again).
    pub fn withdraw(&self) -> Option<Incoming> {
        let body = self.body.lock().ok()?.take()?;
        self.waker.wake();
        Some(body)
    }

    /// Ready with the body once open; ready with None once withdrawn (the body is gone while
    /// the gate is shut).
    fn poll_open(&self, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        self.waker.register(cx.waker());
        let Ok(mut body) = self.body.lock() else { return Poll::Ready(None) };
        if body.is_none() {
            Poll::Ready(None)
        } else if self.is_open() {
            Poll::Ready(body.take())
        } else {
            Poll::Pending
        }
    }
}

/// A response body: streamed from a member, or made by lb itself (errors, 404).
// The upstream variant is the common case; boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum ResponseBody {
    Local(Option<Bytes>),
    Upstream(UpstreamBody),
}

impl ResponseBody {
    pub fn text(s: String) -> ResponseBody {
        ResponseBody::Local(Some(Bytes::from(s)))
    }
    pub fn empty() -> ResponseBody {
        ResponseBody::Local(None)
    }
}

/// A member's response body in flight to the client.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease<RequestBody>>,
    guard: InFlight,
    access: Option<Box<AccessRecord>>,
    bytes: u64,
    done: bool,
    /// Copy small pieces out of the member connection's read buffer (an HTTP/2 client's; see
    /// [`crate::http::headers::unshare_values`]): a 100-byte piece waiting in the client's send
    /// queue would otherwise keep the whole buffer from the connection's next read.
    unshare: bool,
    /// The member's `timeout`, as the longest wait between two pieces of the body.
    idle: Duration,
    /// When the member was first found with nothing more to send since its last piece (None:
    /// it sent one since; the clock is read only once the body waits).
    waiting_since: Option<Instant>,
    clock: Clock,
}

/// A member stopped sending a response body midway.
#[derive(Debug, thiserror::Error)]
#[error("the member sent nothing of the response body for {0:?} (timeout)")]
pub struct BodyStalled(Duration);

impl UpstreamBody {
    pub fn new(
        inner: Incoming,
        lease: Lease<RequestBody>,
        guard: InFlight,
        access: Option<Box<AccessRecord>>,
        unshare: bool,
    ) -> UpstreamBody {
        let idle = lease.response_timeout();
        UpstreamBody {
            inner,
            lease: Some(lease),
            guard,
            access,
            bytes: 0,
            done: false,
            unshare,
            idle,
            waiting_since: None,
            clock: Clock::default(),
        }
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            if let Some(l) = self.lease.take() {
                l.release();
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut *self {
            ResponseBody::Local(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Upstream(u) => {
                // The member connection is driven from here: it reads what the body is waiting
                // for (and finishes sending the request body, if the member answered early).
                let mut polled = Pin::new(&mut u.inner).poll_frame(cx);
                if polled.is_pending()
                    && let Some(l) = u.lease.as_mut()
                {
                    l.poll_driver(cx);
                    polled = Pin::new(&mut u.inner).poll_frame(cx);
                }
                let Poll::Ready(frame) = polled else {
                    // A member that stalls midway: the client's answer is cut off (it sees an
                    // incomplete message, never a silently short one) and the connection to
                    // the member is closed.
                    let now = Instant::now();
                    let since = *u.waiting_since.get_or_insert(now);
                    if !u.clock.passed(since + u.idle, now, cx) {
                        return Poll::Pending;
                    }
                    let e = BodyStalled(u.idle);
                    u.guard.member().note_error(crate::balancer::now_ms(), e.to_string());
                    u.lease = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                };
                u.waiting_since = None;
                let frame = match frame {
                    Some(Ok(f)) if u.unshare => Some(Ok(unshared(f))),
                    other => other,
                };
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            u.bytes += d.len() as u64;
                            u.guard.member().add_read(d.len() as u64);
                        }
                        if u.inner.is_end_stream() {
                            u.finish();
                        }
                    }
                    None => u.finish(),
                    Some(Err(e)) => {
                        let m = u.guard.member();
                        m.note_error(
                            crate::balancer::now_ms(),
                            format!("response body broken: {e}"),
                        );
                        // The connection is not reusable; dropping the lease closes it.
                        u.lease = None;
                    }
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Local(b) => b.is_none(),
            ResponseBody::Upstream(u) => u.done || u.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Local(b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::Upstream(u) => u.inner.size_hint(),
        }
    }
}

/// Pieces under this size are copied out of the member connection's read buffer for an HTTP/2
/// client; larger ones are most of a buffer anyway, and are passed on as they are.
const UNSHARE_BELOW: usize = 16 * 1024;

fn unshared(f: Frame<Bytes>) -> Frame<Bytes> {
    match f.into_data() {
        Ok(d) if d.len() < UNSHARE_BELOW => Frame::data(Bytes::copy_from_slice(&d)),
        Ok(d) => Frame::data(d),
        Err(f) => f,
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body with nothing to read (204, 304, HEAD) may never be polled.
        if self.inner.is_end_stream() {
            self.finish();
        }
        if let Some(a) = self.access.take() {
            a.emit(self.bytes, self.done);
        }
    }
}
