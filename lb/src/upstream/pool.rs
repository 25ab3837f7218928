//! Pooled keep-alive HTTP/1.1 connections to one member.
//!
//! Idle connections sit in a lock-free bounded queue. A [`Lease`] is one checked-out connection;
//! the protocol layer hands it back with [`Lease::release`] once the response body has been read
//! to its end, and simply drops it otherwise (the connection then closes). With `max` set, a
//! semaphore bounds the leases out at once and `acquire` bounds the wait for one.
use super::UpstreamError;
use super::connect::connect;
use crate::balancer::Member;
use crate::telemetry::Telemetry;
use crossbeam_queue::ArrayQueue;
use hyper::body::Body;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Idle connections kept per member when `max` is not set.
const DEFAULT_IDLE: usize = 512;

struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

pub struct Pool<B> {
    member: Arc<Member>,
    telemetry: Arc<Telemetry>,
    idle: ArrayQueue<Idle<B>>,
    slots: Option<Arc<Semaphore>>,
}

/// One checked-out connection.
pub struct Lease<B> {
    pub sender: SendRequest<B>,
    /// Whether the connection had served a request before (a failure on it may be a stale
    /// keep-alive race rather than a member fault).
    pub reused: bool,
    pool: Arc<Pool<B>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<B> Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(member: Arc<Member>, telemetry: Arc<Telemetry>) -> Arc<Pool<B>> {
        let max = member.config.max;
        let idle_cap = max.map_or(DEFAULT_IDLE, |m| m as usize).max(1);
        Arc::new(Pool {
            idle: ArrayQueue::new(idle_cap),
            slots: max.map(|m| Arc::new(Semaphore::new(m as usize))),
            member,
            telemetry,
        })
    }

    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// Check out a connection: a live idle one if there is one, else a new one.
    /// `fresh` skips the idle queue (used to retry after a stale keep-alive connection failed).
    pub async fn checkout(self: &Arc<Self>, fresh: bool) -> Result<Lease<B>, UpstreamError> {
        let cfg = &self.member.config;
        let permit = match &self.slots {
            None => None,
            Some(sem) => {
                let wait = cfg.acquire.unwrap_or(cfg.timeout);
                match tokio::time::timeout(wait, sem.clone().acquire_owned()).await {
                    Ok(Ok(p)) => Some(p),
                    _ => {
                        return Err(UpstreamError::PoolExhausted {
                            addr: cfg.url.authority(),
                            max: cfg.max.unwrap_or(0),
                            waited: wait,
                        });
                    }
                }
            }
        };
        if !fresh {
            while let Some(idle) = self.idle.pop() {
                if cfg.ttl.is_some_and(|ttl| idle.since.elapsed() > ttl) || idle.sender.is_closed()
                {
                    continue;
                }
                let mut sender = idle.sender;
                // A connection whose last response just ended may not have been marked ready yet
                // by its driver task; waiting resolves at once either way.
                if !sender.is_ready() && sender.ready().await.is_err() {
                    continue;
                }
                return Ok(Lease { sender, reused: true, pool: Arc::clone(self), _permit: permit });
            }
        }
        let sender = self.open().await?;
        Ok(Lease { sender, reused: false, pool: Arc::clone(self), _permit: permit })
    }

    async fn open(&self) -> Result<SendRequest<B>, UpstreamError> {
        let cfg = &self.member.config;
        let stream = connect(&self.member, &self.telemetry).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr: cfg.url.authority(), source })?;
        tokio::spawn(async move {
            // The connection ends when the member closes it or the last sender is dropped;
            // either is normal, and request-level errors are reported through the sender.
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }
}

impl<B> Lease<B> {
    /// Return the connection to the pool for reuse (its response must have been read to the end).
    pub fn release(self) {
        if self.pool.member.config.disablereuse || self.sender.is_closed() {
            return;
        }
        // A full queue drops the connection, which closes it.
        let _ = self.pool.idle.push(Idle { sender: self.sender, since: Instant::now() });
    }

    /// How long the caller should wait for the response head.
    pub fn response_timeout(&self) -> Duration {
        self.pool.member.config.timeout
    }
}
