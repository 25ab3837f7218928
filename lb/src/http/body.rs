//! Body types that carry a request to a member and a response back, streaming and counted.
//!
//! Bodies are never buffered: each frame is passed on as it arrives, so memory stays bounded by
//! hyper's buffers whatever the body size. Counting happens as frames pass (Apache's `transferred`
//! and `read`, which drive `bytraffic`). The response body owns the member's in-flight guard and
//! the pooled connection lease, so `busy` drops and the connection returns to its pool exactly
//! when the response has been read to its end.
use super::access::AccessRecord;
use crate::balancer::{InFlight, Member};
use crate::upstream::pool::Lease;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

/// A client request body on its way to a member.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    member: Option<Arc<Member>>,
}

impl RequestBody {
    pub fn new(inner: Incoming) -> RequestBody {
        RequestBody { inner: Some(inner), member: None }
    }
    pub fn empty() -> RequestBody {
        RequestBody { inner: None, member: None }
    }
    /// The member whose `transferred` counter the body's bytes are added to.
    pub fn count_for(&mut self, member: &Arc<Member>) {
        self.member = Some(Arc::clone(member));
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        if let (Some(Ok(f)), Some(m)) = (&frame, &this.member)
            && let Some(d) = f.data_ref()
        {
            m.add_transferred(d.len() as u64);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
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
}

impl UpstreamBody {
    pub fn new(
        inner: Incoming,
        lease: Lease<RequestBody>,
        guard: InFlight,
        access: Option<Box<AccessRecord>>,
    ) -> UpstreamBody {
        UpstreamBody { inner, lease: Some(lease), guard, access, bytes: 0, done: false }
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
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut *self {
            ResponseBody::Local(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ResponseBody::Upstream(u) => {
                let frame = ready!(Pin::new(&mut u.inner).poll_frame(cx));
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
                Poll::Ready(frame)
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
