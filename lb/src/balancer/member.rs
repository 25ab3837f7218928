//! A balancer member: its settings plus live state in atomics.
//!
//! Everything the data path touches per request — flags, `lbstatus`, `busy`, byte counters,
//! `elected`, `loadfactor`, `lbset` — is an atomic, so picking and accounting never lock. A member
//! has a stable [`MemberId`]: a reload (or a live edit) that keeps the member's balancer and URL
//! keeps the same `Member`, with its counters and health, and only swaps its settings.
use super::flags::{self, StatusFlags};
use crate::config::{MemberConfig, MemberUrl};
use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A member's identity for its whole life, across reloads; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct MemberId(pub u64);

impl MemberId {
    fn next() -> MemberId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        MemberId(NEXT.fetch_add(1, Relaxed))
    }
}

pub use super::note::HealthNote;

/// How one request or connection went, as the protocol layer reports it.
#[derive(Debug)]
pub enum Outcome {
    /// The member answered (HTTP) or accepted the connection (TCP).
    Success,
    /// The member could not be reached or broke the exchange: E (unless `I`), and one more error
    /// in a row for ejection.
    Failed(String),
    /// A failure the protocol's policy does not turn into E (a timeout without
    /// `failontimeout`): noted, and one more error in a row.
    SoftFailed(String),
    /// Busy, not broken (no free connection slot): noted only.
    Busy(String),
}

/// No free connection slot within the wait (`max` reached).
#[derive(Debug, thiserror::Error)]
#[error("no free connection within {waited:?} (max = {max})")]
pub struct SlotsExhausted {
    pub max: u32,
    pub waited: Duration,
}

/// Monotonic milliseconds since the process's clock origin; all member timestamps use it.
pub fn now_ms() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    origin.elapsed().as_millis() as u64 + 1
}

/// The last error seen on a member, for the status page.
#[derive(Debug, Clone)]
pub struct LastError {
    pub at_ms: u64,
    pub message: String,
}

#[derive(Debug)]
pub struct Member {
    pub id: MemberId,
    /// The URL, part of the member's identity (with its balancer).
    pub url: MemberUrl,
    /// `url.base()`, made once: the access log writes it on every line.
    base: Box<str>,
    settings: ArcSwap<MemberConfig>,
    /// Apache `loadfactor` ×100 and `lbset`: live-editable, read on every pick.
    lbfactor: AtomicU32,
    lbset: AtomicU32,
    /// Connection slots when `max` is set.
    slots: ArcSwapOption<Semaphore>,
    status: AtomicU32,
    /// When E was last set (`now_ms`).
    error_time_ms: AtomicU64,
    /// Apache's running score for byrequests/bybusyness.
    lbstatus: AtomicI64,
    /// Requests in flight (L7) / open connections (L4).
    busy: AtomicU64,
    /// Times picked.
    elected: AtomicU64,
    /// Bytes sent to the member (Apache `transferred`).
    transferred: AtomicU64,
    /// Bytes read from the member (Apache `read`).
    read: AtomicU64,
    /// How many times E was cleared by the retry timer or forced recovery.
    retries: AtomicU64,
    last_error: ArcSwapOption<LastError>,
    /// The address connections go to (set when first resolved); telemetry is keyed by it.
    endpoint: std::sync::OnceLock<std::net::SocketAddr>,
    /// While `now_ms` is below this, the member is ejected: the retry timer leaves E alone.
    ejected_until_ms: AtomicU64,
    /// Requests failed in a row (reset by any answered request).
    consecutive_errors: AtomicU32,
    health: ArcSwapOption<HealthNote>,
    /// bybusyness latency weight (f64 bits): max(1, (srtt + 100 µs) / (balancer median srtt +
    /// 100 µs)), set by the health monitor; 1.0 without telemetry.
    latency_weight: AtomicU64,
    /// What requests tell the health monitor (answers, failures, stalls, ejection wake-ups).
    pub vitals: super::vitals::Vitals,
}

impl Member {
    pub fn new(config: MemberConfig) -> Member {
        // An IP-literal member knows its endpoint before the first connection.
        let endpoint = std::sync::OnceLock::new();
        if let Ok(ip) = config.url.host.parse::<std::net::IpAddr>() {
            let _ = endpoint.set(std::net::SocketAddr::new(ip, config.url.port));
        }
        Member {
            id: MemberId::next(),
            url: config.url.clone(),
            base: config.url.base().into(),
            lbfactor: AtomicU32::new(config.lbfactor),
            lbset: AtomicU32::new(config.lbset),
            slots: ArcSwapOption::new(config.max.map(|m| Arc::new(Semaphore::new(m as usize)))),
            status: AtomicU32::new(config.status.0),
            settings: ArcSwap::from_pointee(config),
            error_time_ms: AtomicU64::new(0),
            lbstatus: AtomicI64::new(0),
            busy: AtomicU64::new(0),
            elected: AtomicU64::new(0),
            transferred: AtomicU64::new(0),
            read: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            last_error: ArcSwapOption::empty(),
            endpoint,
            ejected_until_ms: AtomicU64::new(0),
            consecutive_errors: AtomicU32::new(0),
            health: ArcSwapOption::empty(),
            latency_weight: AtomicU64::new(1.0f64.to_bits()),
            vitals: Default::default(),
        }
    }

    /// The kernel-latency weight bybusyness multiplies in-flight requests by (≥ 1).
    pub fn latency_weight(&self) -> f64 {
        f64::from_bits(self.latency_weight.load(Relaxed))
    }

    pub(crate) fn set_latency_weight(&self, w: f64) {
        let w = if w.is_finite() { w.max(1.0) } else { 1.0 };
        self.latency_weight.store(w.to_bits(), Relaxed);
    }

    /// lb's bybusyness score: (in-flight + 1) × latency weight. With telemetry off every weight
    /// is 1, and the order is Apache's plain in-flight count.
    pub fn busyness(&self) -> f64 {
        (self.busy() + 1) as f64 * self.latency_weight()
    }

    /// The member's current settings.
    pub fn config(&self) -> arc_swap::Guard<Arc<MemberConfig>> {
        self.settings.load()
    }

    /// Apply new settings to this member (reload or live edit; the URL is unchanged). The flags
    /// an operator sets (I N D S H R) follow the new config; E and C are live state and stay.
    /// Returns whether the load factor changed (Apache then resets every `lbstatus`).
    pub fn update(&self, config: MemberConfig) -> bool {
        let old = self.settings.load_full();
        if old.status != config.status {
            self.clear_flags(flags::OPERATOR & !config.status.0);
            self.set_flags(config.status.0 & flags::OPERATOR);
        }
        if old.max != config.max {
            self.slots.store(config.max.map(|m| Arc::new(Semaphore::new(m as usize))));
        }
        self.lbset.store(config.lbset, Relaxed);
        let reweighted = self.lbfactor.swap(config.lbfactor, Relaxed) != config.lbfactor;
        self.settings.store(Arc::new(config));
        reweighted
    }

    pub fn lbset(&self) -> u32 {
        self.lbset.load(Relaxed)
    }

    /// Wait up to `acquire` (default: the member `timeout`) for a connection slot when `max` is
    /// set; the permit frees the slot when dropped. None: no limit.
    pub async fn acquire_slot(&self) -> Result<Option<OwnedSemaphorePermit>, SlotsExhausted> {
        let Some(sem) = self.slots.load_full() else { return Ok(None) };
        let cfg = self.config();
        let wait = cfg.acquire.unwrap_or(cfg.timeout);
        match tokio::time::timeout(wait, sem.acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(SlotsExhausted { max: cfg.max.unwrap_or(0), waited: wait }),
        }
    }

    /// The protocol layer reports how a request or connection went.
    pub fn report(&self, outcome: Outcome) {
        match outcome {
            Outcome::Success => {
                self.vitals.count(true);
                self.record_success()
            }
            Outcome::Failed(msg) => {
                self.vitals.count(false);
                self.consecutive_errors.fetch_add(1, Relaxed);
                self.mark_error(now_ms(), msg);
            }
            Outcome::SoftFailed(msg) => {
                self.vitals.count(false);
                self.consecutive_errors.fetch_add(1, Relaxed);
                self.note_error(now_ms(), msg);
            }
            Outcome::Busy(msg) => self.note_error(now_ms(), msg),
        }
    }

    /// Eject: E until `until_ms` (the health monitor ends it), with the reason as last error.
    /// The errors in a row that led here are spent: a member back on probation starts at zero.
    pub fn eject(&self, until_ms: u64, reason: String) {
        let now = now_ms();
        self.consecutive_errors.store(0, Relaxed);
        self.ejected_until_ms.store(until_ms, Relaxed);
        self.note_error(now, reason);
        self.error_time_ms.store(now, Relaxed);
        self.set_flags(flags::IN_ERROR);
        self.vitals.wake_ejected();
    }

    /// Keep the member out (E) past its ejection time, until [`Member::end_ejection`]: it
    /// returns only once probes pass.
    pub fn hold_ejection(&self) {
        self.ejected_until_ms.store(u64::MAX, Relaxed);
        self.set_flags(flags::IN_ERROR);
    }

    /// End an ejection: back in rotation (on probation).
    pub fn end_ejection(&self) {
        self.ejected_until_ms.store(0, Relaxed);
        self.clear_flags(flags::IN_ERROR);
    }

    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Relaxed)
    }

    pub fn consecutive_errors(&self) -> u32 {
        self.consecutive_errors.load(Relaxed)
    }

    fn record_success(&self) {
        if self.consecutive_errors.load(Relaxed) != 0 {
            self.consecutive_errors.store(0, Relaxed);
        }
    }

    pub fn health_note(&self) -> Option<Arc<HealthNote>> {
        self.health.load_full()
    }

    pub fn set_health_note(&self, note: HealthNote) {
        if self.health.load().as_deref() != Some(&note) {
            self.health.store(Some(Arc::new(note)));
        }
    }

    /// The resolved member address, once a connection has been attempted.
    pub fn endpoint(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.get().copied()
    }

    pub(crate) fn set_endpoint(&self, addr: std::net::SocketAddr) {
        let _ = self.endpoint.set(addr);
    }

    pub fn name(&self) -> String {
        self.base.to_string()
    }

    /// The URL as written back (`http://host:port/path`), without a DNS member's address.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn flags(&self) -> StatusFlags {
        StatusFlags(self.status.load(Relaxed))
    }
    pub fn usable(&self) -> bool {
        self.flags().usable()
    }
    pub fn set_flags(&self, f: u32) {
        self.status.fetch_or(f, Relaxed);
    }
    pub fn clear_flags(&self, f: u32) {
        self.status.fetch_and(!f, Relaxed);
    }

    pub fn lbfactor(&self) -> i64 {
        i64::from(self.lbfactor.load(Relaxed))
    }
    pub fn lbstatus(&self) -> i64 {
        self.lbstatus.load(Relaxed)
    }
    pub(crate) fn add_lbstatus(&self, d: i64) -> i64 {
        self.lbstatus.fetch_add(d, Relaxed) + d
    }
    pub fn set_lbstatus(&self, v: i64) {
        self.lbstatus.store(v, Relaxed);
    }

    pub fn busy(&self) -> u64 {
        self.busy.load(Relaxed)
    }
    pub fn elected(&self) -> u64 {
        self.elected.load(Relaxed)
    }
    pub(crate) fn note_elected(&self) {
        self.elected.fetch_add(1, Relaxed);
    }
    pub fn transferred(&self) -> u64 {
        self.transferred.load(Relaxed)
    }
    pub fn read(&self) -> u64 {
        self.read.load(Relaxed)
    }
    pub fn add_transferred(&self, n: u64) {
        self.transferred.fetch_add(n, Relaxed);
    }
    pub fn add_read(&self, n: u64) {
        self.read.fetch_add(n, Relaxed);
    }
    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }
    pub fn error_time_ms(&self) -> u64 {
        self.error_time_ms.load(Relaxed)
    }
    pub fn last_error(&self) -> Option<Arc<LastError>> {
        self.last_error.load_full()
    }

    /// Count one more request (or connection) in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.busy.fetch_add(1, Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Record an error; unless the member has `I`, put it in error state (E) as of `now`.
    /// Returns whether E was set.
    pub fn mark_error(&self, now: u64, message: String) -> bool {
        self.last_error.store(Some(Arc::new(LastError { at_ms: now, message })));
        if self.flags().contains(flags::IGNORE_ERRORS) {
            return false;
        }
        self.error_time_ms.store(now, Relaxed);
        self.set_flags(flags::IN_ERROR);
        true
    }

    /// Record an error for the status page without changing state (e.g. a client-side abort).
    pub fn note_error(&self, now: u64, message: String) {
        self.last_error.store(Some(Arc::new(LastError { at_ms: now, message })));
    }

    /// Apache's `ap_proxy_retry_worker`: clear E once `retry` has passed since the error (or at
    /// once with `I` or `retry = 0`). S, D and C are never cleared here.
    pub fn retry_check(&self, now: u64) {
        let f = self.flags();
        if !f.contains(flags::IN_ERROR) {
            return;
        }
        if now < self.ejected_until_ms() {
            return;
        }
        let retry = self.config().retry.as_millis() as u64;
        if f.contains(flags::IGNORE_ERRORS) || retry == 0 || now > self.error_time_ms() + retry {
            self.clear_flags(flags::IN_ERROR);
            self.retries.fetch_add(1, Relaxed);
        }
    }

    /// Forced recovery: clear E regardless of the retry timer.
    pub(crate) fn force_recover(&self) {
        self.ejected_until_ms.store(0, Relaxed);
        if self.flags().contains(flags::IN_ERROR) {
            self.clear_flags(flags::IN_ERROR);
            self.retries.fetch_add(1, Relaxed);
        }
    }
}

/// A request (or connection) in flight to a member; dropping it decrements `busy`.
#[derive(Debug)]
pub struct InFlight(Arc<Member>);

impl InFlight {
    pub fn member(&self) -> &Arc<Member> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Relaxed);
    }
}
