//! The guard's HTTP/2 side: a flooding client gets GOAWAY(ENHANCE_YOUR_CALM) written between
//! hyper's frames; after any GOAWAY the close lingers (write side shut, the client's last bytes
//! drained), because a close on unread bytes resets the connection and the client may then
//! never read the GOAWAY. Hyper's writes pass through here, their frames followed.
use super::{Guarded, Phase};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// GOAWAY's frame type.
const GOAWAY: u8 = 0x7;
/// How long a flooding HTTP/2 client's bytes are drained after its GOAWAY.
const DRAIN: Duration = Duration::from_secs(1);

impl<S: AsyncRead + AsyncWrite + Unpin> Guarded<S> {
    /// A client flooded control frames: GOAWAY (ENHANCE_YOUR_CALM) if hyper's writes stand
    /// between frames, then drain and close.
    pub(super) fn end_flood(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Phase::H2(w) = &self.phase else { return Poll::Ready(Ok(())) };
        let what = w.flooded.unwrap_or("control frames");
        tracing::warn!(client = %self.client, frames = what, "HTTP/2 client flooded control frames; closing");
        if self.out.at_boundary() {
            let goaway = w.goaway();
            let inner = Pin::new(&mut self.inner);
            if let Poll::Ready(Ok(n)) = inner.poll_write(cx, &goaway) {
                self.out.feed(&goaway[..n], |_| {});
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
        self.phase = Phase::Draining { until: Instant::now() + DRAIN, shut: false };
        self.drain(cx)
    }

    /// Read and drop until the client closes or the drain time is up; then fail hyper's read.
    pub(super) fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Phase::Draining { until, shut } = &mut self.phase else { return Poll::Ready(Ok(())) };
        let until = *until;
        if !*shut && Pin::new(&mut self.inner).poll_shutdown(cx).is_ready() {
            *shut = true;
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut b = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut b) {
                Poll::Ready(Ok(())) if !b.filled().is_empty() => continue,
                Poll::Pending if !self.clock.passed(until, Instant::now(), cx) => {
                    return Poll::Pending;
                }
                _ => break,
            }
        }
        self.phase = Phase::Closed { eof: true };
        Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "HTTP/2 flood")))
    }

    fn wrote(&mut self, bufs: &[io::IoSlice<'_>], mut n: usize) {
        let Phase::H2(w) = &mut self.phase else { return };
        for b in bufs {
            let k = b.len().min(n);
            let goaway = &mut self.goaway_out;
            self.out.feed(&b[..k], |f| {
                *goaway |= f.kind == GOAWAY;
                w.wrote(f.kind);
            });
            n -= k;
            if n == 0 {
                break;
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if matches!(self.phase, Phase::Draining { .. }) {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.wrote(&[io::IoSlice::new(buf)], n);
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if matches!(self.phase, Phase::Draining { .. }) {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.wrote(bufs, n);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    /// After an HTTP/2 GOAWAY, a lingering close: the client's last bytes are drained so that
    /// the close does not reset the connection before it has read the GOAWAY.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.goaway_out && matches!(this.phase, Phase::H2(_)) {
            this.phase = Phase::Draining { until: Instant::now() + DRAIN, shut: false };
        }
        if matches!(this.phase, Phase::Draining { .. }) {
            return this.drain(cx).map(|_| Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
