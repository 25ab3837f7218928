//! A client's HTTP/1 connection as hyper reads it: each request head is read whole and checked
//! ([`strict`](super::strict)) before hyper sees a byte of it, each body is followed to its end,
//! and the client's pace is held to Apache's `RequestReadTimeout`.
//!
//! Why here, below hyper: hyper answers its own parse errors with an empty body, accepts some
//! ambiguous framing, and has one timer for both the keep-alive wait and a slow head. A refused
//! head never reaches hyper: the guard hands it a stand-in request instead, which the proxy
//! answers with the refusal (status and reason), so pipelined answers stay in order. A body
//! refused midway (a bad chunk, over `limit_request_body`, too slow) reaches hyper as a read
//! error carrying the [`Rejection`], which the proxy turns into that status.
//!
//! Timers: the keep-alive wait runs only while no response is in flight ([`Shared`] counts
//! answers), a head's time runs from its first byte, a body's time counts only while lb waits
//! for the client (not while a slow member holds the body back). One `Sleep` per connection is
//! re-armed lazily: a wake-up before the deadline re-checks, so a busy connection does not
//! touch the timer wheel per request.
mod h2;

use super::clock::Clock;
use super::h2watch::{Frames, Watch};
use super::strict::chunked::Chunked;
use super::strict::head::{Framing, HeadParser};
use super::strict::{Limits, Rejection};
use crate::config::ReadTimeouts;
use bytes::{Buf, BytesMut};
use http::StatusCode;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio::time::Instant;

/// What a guarded connection shares with the requests it carries.
#[derive(Debug, Default)]
pub struct Shared {
    /// The refused head: which request it was (1-based) and why.
    rejected: OnceLock<(u64, Rejection)>,
    /// Responses whose bodies have ended or been dropped.
    answered: AtomicU64,
    /// The last request (1-based) that asked to upgrade the connection; 0 for none.
    upgrade_asked: AtomicU64,
    /// That request got an answer other than `101 Switching Protocols`: the connection stays
    /// HTTP/1.1, and the guard reads heads again.
    upgrade_refused: AtomicBool,
}

impl Shared {
    /// The refusal that request number `n` on this connection stands in for.
    pub fn rejection(&self, n: u64) -> Option<&Rejection> {
        self.rejected.get().filter(|(i, _)| *i == n).map(|(_, r)| r)
    }
    /// A response on this connection has ended.
    pub fn answered(&self) {
        self.answered.fetch_add(1, Relaxed);
    }
    /// Request number `n` has been answered with `status`: if it asked to upgrade and the
    /// answer is not `101`, the guard goes back to reading heads.
    pub fn upgrade_answered(&self, n: u64, status: StatusCode) {
        if status != StatusCode::SWITCHING_PROTOCOLS && self.upgrade_asked.load(Relaxed) == n {
            self.upgrade_refused.store(true, Relaxed);
        }
    }
}

/// What hyper reads in place of a refused head; the proxy answers it with the refusal.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nhost: lb\r\nconnection: close\r\n\r\n";
/// The HTTP/2 connection preface: an h2c client by prior knowledge, passed through untouched.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A listener's rules for its clients.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub limits: Limits,
    pub timeouts: ReadTimeouts,
    /// Apache `KeepAliveTimeout`: the wait for the next request.
    pub keepalive: Duration,
    /// Apache `Timeout` (the listener's `timeout`): the time a head has from its first byte
    /// when `request_read_timeout` gives heads none.
    pub head: Duration,
}

enum Phase {
    /// The first bytes of a cleartext connection: HTTP/1 or the h2 preface.
    Sniff,
    Head(HeadParser),
    Length(u64),
    Chunked(Chunked),
    /// A connection asked to upgrade: bytes pass untouched, until the answer turns out not to
    /// be `101` ([`Shared::upgrade_answered`]): then heads are read again.
    Stream,
    /// HTTP/2: bytes pass untouched, control frames are rationed.
    H2(Box<Watch>),
    /// A body was refused: the next read fails with this (bytes before it go first).
    Failing(Rejection),
    /// After a refusal or a timeout: nothing more is read.
    Closed {
        eof: bool,
    },
    /// HTTP/2 flood: GOAWAY sent and the write side shut; the client's bytes are read and
    /// dropped (closing on unread bytes would reset the connection and could destroy the
    /// GOAWAY before the client reads it) until it closes or `until`, then hyper is told.
    Draining {
        until: Instant,
        shut: bool,
    },
}

/// A client stream that hyper reads through.
pub struct Guarded<S> {
    inner: S,
    /// Who the client is, for the log.
    client: std::net::SocketAddr,
    rules: Rules,
    phase: Phase,
    /// The part of a head that has arrived, while it is incomplete.
    held: BytesMut,
    /// Accepted bytes hyper has not taken yet.
    ready: BytesMut,
    shared: std::sync::Arc<Shared>,
    /// HTTP/2: where hyper's writes stand between frames (a GOAWAY goes in between).
    out: Frames,
    /// HTTP/2: hyper has sent a GOAWAY; its shutdown then drains the client first.
    goaway_out: bool,
    /// Heads handed to hyper.
    heads: u64,
    clock: Clock,
    idle_since: Option<Instant>,
    head_since: Option<Instant>,
    /// Body: bytes received, time spent waiting for the client, and the current wait's start.
    body_bytes: u64,
    body_waited: Duration,
    body_wait: Option<Instant>,
}

enum Scan {
    /// The first `n` bytes go to hyper; the rest, if any, is the start of a head to hold.
    Passed(usize),
    /// The first `n` bytes go to hyper; then the refusal.
    Rejected(usize, Rejection),
}

impl<S> Guarded<S> {
    /// `client`: the client's address, for the log. `h2`: the connection is HTTP/2 (ALPN),
    /// passed through; else h2's preface is looked for first.
    pub fn new(
        inner: S,
        client: std::net::SocketAddr,
        rules: Rules,
        shared: std::sync::Arc<Shared>,
        h2: bool,
    ) -> Guarded<S> {
        Guarded {
            inner,
            client,
            rules,
            phase: if h2 { Phase::H2(Box::default()) } else { Phase::Sniff },
            held: BytesMut::new(),
            ready: BytesMut::new(),
            shared,
            out: Frames::default(),
            goaway_out: false,
            heads: 0,
            clock: Clock::default(),
            idle_since: None,
            head_since: None,
            body_bytes: 0,
            body_waited: Duration::ZERO,
            body_wait: None,
        }
    }

    /// Follow the framing through `data`, which starts where the last scan stopped (a held
    /// head is passed whole, from its first byte).
    fn scan(&mut self, data: &[u8]) -> Scan {
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            match &mut self.phase {
                Phase::Sniff => {
                    if rest.starts_with(PREFACE) {
                        self.phase = Phase::H2(Box::default());
                    } else if PREFACE.starts_with(rest) {
                        return Scan::Passed(pos);
                    } else {
                        self.phase = Phase::Head(HeadParser::default());
                    }
                }
                Phase::Head(p) => match p.feed(rest, &self.rules.limits) {
                    Ok(None) => return Scan::Passed(pos),
                    Ok(Some(head)) => {
                        pos += head.len;
                        self.heads += 1;
                        self.head_since = None;
                        (self.body_bytes, self.body_waited, self.body_wait) =
                            (0, Duration::ZERO, None);
                        if head.upgrade {
                            self.shared.upgrade_asked.store(self.heads, Relaxed);
                        }
                        // An upgrade takes effect after the request's body, if it has one.
                        self.phase = match head.framing {
                            Framing::Empty => self.after_message(),
                            Framing::Length(n) => Phase::Length(n),
                            Framing::Chunked => Phase::Chunked(Chunked::default()),
                        };
                    }
                    Err(r) => return Scan::Rejected(pos, r),
                },
                Phase::Length(left) => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(rest.len());
                    *left -= n as u64;
                    pos += n;
                    if *left == 0 {
                        self.phase = self.after_message();
                    }
                }
                Phase::Chunked(c) => match c.feed(rest, &self.rules.limits) {
                    Ok(Some(n)) => {
                        pos += n;
                        self.phase = self.after_message();
                    }
                    Ok(None) => pos = data.len(),
                    Err(r) => return Scan::Rejected(pos, r),
                },
                Phase::Stream => pos = data.len(),
                Phase::H2(w) => {
                    w.read(rest);
                    pos = data.len();
                }
                Phase::Failing(_) | Phase::Closed { .. } | Phase::Draining { .. } => {
                    return Scan::Passed(pos);
                }
            }
        }
        Scan::Passed(pos)
    }

    /// What follows a whole request: the upgraded stream if it asked to upgrade (it is the
    /// last head handed on), else the next head.
    fn after_message(&self) -> Phase {
        if self.shared.upgrade_asked.load(Relaxed) == self.heads {
            Phase::Stream
        } else {
            Phase::Head(HeadParser::default())
        }
    }

    fn in_body(&self) -> bool {
        matches!(self.phase, Phase::Length(_) | Phase::Chunked(_))
    }

    /// Refuse: a head gets the stand-in request (answered with `r`); a body, a read error
    /// once hyper has taken the bytes before it.
    fn refuse(&mut self, r: Rejection) {
        self.held.clear();
        if self.in_body() {
            self.phase = Phase::Failing(r);
            return;
        }
        self.phase = Phase::Closed { eof: false };
        tracing::debug!(status = %r.status, reason = %r.reason, "request head refused");
        let _ = self.shared.rejected.set((self.heads + 1, r));
        self.ready.extend_from_slice(STAND_IN);
    }

    /// Bytes arrived: stop the idle clock, account a body's wait.
    fn arrived(&mut self, n: usize) {
        self.idle_since = None;
        if self.in_body() {
            self.body_bytes += n as u64;
            if let Some(since) = self.body_wait.take() {
                self.body_waited += since.elapsed();
            }
        }
    }

    /// The client has nothing for us now: is a deadline past?
    fn on_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let t = self.rules.timeouts;
        // Which wait this is: where its start is kept, how long it may last, what ends it.
        // Most waits have no deadline of lb's own (a stream, a response in flight, a body
        // without a rule), and the clock is read only for those that have one.
        let (since, allowed, what) = match &self.phase {
            Phase::Stream | Phase::H2(_) | Phase::Failing(_) | Phase::Draining { .. } => {
                return Poll::Pending;
            }
            Phase::Closed { .. } => (&mut self.idle_since, self.rules.keepalive, Expiry::Close),
            Phase::Sniff | Phase::Head(_) if self.held.is_empty() => {
                // A response still in flight: hyper only watches for the client hanging up.
                if self.shared.answered.load(Relaxed) < self.heads {
                    return Poll::Pending;
                }
                let wait = match (self.heads, t.header) {
                    (0, Some(h)) => h.initial,
                    _ => self.rules.keepalive,
                };
                (&mut self.idle_since, wait, Expiry::Close)
            }
            Phase::Sniff | Phase::Head(_) => {
                let allowed =
                    t.header.map_or(self.rules.head, |r| r.allowed(self.held.len() as u64));
                (&mut self.head_since, allowed, Expiry::Head)
            }
            Phase::Length(_) | Phase::Chunked(_) => {
                let Some(rule) = t.body else { return Poll::Pending };
                let left = rule.allowed(self.body_bytes).saturating_sub(self.body_waited);
                (&mut self.body_wait, left, Expiry::Body)
            }
        };
        let now = Instant::now();
        let deadline = *since.get_or_insert(now) + allowed;
        if !self.clock.passed(deadline, now, cx) {
            return Poll::Pending;
        }
        match what {
            Expiry::Close => {
                self.phase = Phase::Closed { eof: true };
                Poll::Ready(Ok(()))
            }
            Expiry::Head | Expiry::Body => {
                let part = if matches!(what, Expiry::Head) { "head" } else { "body" };
                let r = Rejection::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the request {part} did not arrive in time (request_read_timeout)"),
                );
                // The caller hands on the stand-in, or the failure.
                self.refuse(r);
                Poll::Ready(Ok(()))
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Expiry {
    Close,
    Head,
    Body,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            match this.phase {
                Phase::Stream if this.shared.upgrade_refused.swap(false, Relaxed) => {
                    this.phase = Phase::Head(HeadParser::default());
                }
                Phase::Stream if this.held.is_empty() => {
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                Phase::H2(ref w) if w.flooded.is_some() => return this.end_flood(cx),
                Phase::Draining { .. } => return this.drain(cx),
                Phase::H2(ref mut w) if this.held.is_empty() => {
                    let before = buf.filled().len();
                    let r = Pin::new(&mut this.inner).poll_read(cx, buf);
                    w.read(&buf.filled()[before..]);
                    if w.flooded.is_some() {
                        buf.set_filled(before);
                        return this.end_flood(cx);
                    }
                    return r;
                }
                Phase::Failing(_) => {
                    let Phase::Failing(r) =
                        std::mem::replace(&mut this.phase, Phase::Closed { eof: false })
                    else {
                        continue;
                    };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, r)));
                }
                Phase::Closed { eof: true } => return Poll::Ready(Ok(())),
                Phase::Closed { eof: false } => {
                    return match this.on_pending(cx) {
                        Poll::Ready(Ok(())) if this.ready.is_empty() => Poll::Ready(Ok(())),
                        _ => Poll::Pending,
                    };
                }
                _ => {}
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Pending => match this.on_pending(cx) {
                    Poll::Ready(Ok(())) if !this.ready.is_empty() => continue,
                    Poll::Ready(Ok(())) if matches!(this.phase, Phase::Failing(_)) => continue,
                    other => return other,
                },
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let after = buf.filled().len();
            if after == before {
                // The client closed; a partial head it leaves is dropped.
                return Poll::Ready(Ok(()));
            }
            this.arrived(after - before);
            let scan = if this.held.is_empty() {
                let scan = this.scan(&buf.filled()[before..after]);
                let passed = match &scan {
                    Scan::Passed(n) | Scan::Rejected(n, _) => *n,
                };
                if let Scan::Passed(n) = scan {
                    this.held.extend_from_slice(&buf.filled()[before + n..after]);
                }
                buf.set_filled(before + passed);
                scan
            } else {
                this.held.extend_from_slice(&buf.filled()[before..after]);
                buf.set_filled(before);
                let held = std::mem::take(&mut this.held);
                let scan = this.scan(&held);
                let passed = match &scan {
                    Scan::Passed(n) | Scan::Rejected(n, _) => *n,
                };
                let mut held = held;
                this.ready.extend_from_slice(&held.split_to(passed));
                if matches!(scan, Scan::Passed(_)) {
                    this.held = held;
                }
                scan
            };
            if let Scan::Rejected(_, r) = scan {
                this.refuse(r);
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}
