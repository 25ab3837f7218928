//! Traffic counters per listener, for `/server-status` and `/metrics`: connections, requests,
//! bytes to clients, time spent. Kept by listener name, so a reload that keeps a listener keeps
//! its counts; the data path only adds to atomics it already holds.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

#[derive(Debug, Default)]
pub struct ListenerStats {
    pub connections_total: AtomicU64,
    pub connections_open: AtomicU64,
    /// HTTP requests answered or being answered; TCP connections that ended.
    pub requests_total: AtomicU64,
    pub in_flight: AtomicU64,
    /// Response body bytes sent to clients (TCP: bytes to clients).
    pub bytes_out: AtomicU64,
    /// Time from request to the end of its answer, summed (TCP: connection lifetimes).
    pub duration_us: AtomicU64,
}

/// One open connection; dropping it closes it in the counts.
pub struct Open(Arc<ListenerStats>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
    }
}

/// One request in flight; [`Request::done`] counts its bytes and time.
pub struct Request {
    stats: Arc<ListenerStats>,
    start: Instant,
    pub bytes: u64,
}

impl Drop for Request {
    fn drop(&mut self) {
        let s = &self.stats;
        s.in_flight.fetch_sub(1, Relaxed);
        s.bytes_out.fetch_add(self.bytes, Relaxed);
        s.duration_us.fetch_add(self.start.elapsed().as_micros() as u64, Relaxed);
    }
}

impl ListenerStats {
    pub fn opened(self: &Arc<Self>) -> Open {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_open.fetch_add(1, Relaxed);
        Open(Arc::clone(self))
    }

    pub fn request(self: &Arc<Self>) -> Request {
        self.requests_total.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        Request { stats: Arc::clone(self), start: Instant::now(), bytes: 0 }
    }

    /// A TCP connection's traffic, counted when it ends (as one access).
    pub fn stream_done(&self, bytes_out: u64, duration_us: u64) {
        self.requests_total.fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(bytes_out, Relaxed);
        self.duration_us.fetch_add(duration_us, Relaxed);
    }
}

fn registry() -> &'static Mutex<BTreeMap<String, Arc<ListenerStats>>> {
    static R: OnceLock<Mutex<BTreeMap<String, Arc<ListenerStats>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The counters of listener `name` (made on first use; the control path calls this).
pub fn listener(name: &str) -> Arc<ListenerStats> {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    Arc::clone(r.entry(name.to_owned()).or_default())
}

/// Every listener's counters, by name.
pub fn all() -> Vec<(String, Arc<ListenerStats>)> {
    let r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect()
}

/// When this process started serving (the first call fixes it).
pub fn started() -> (Instant, SystemTime) {
    static S: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    *S.get_or_init(|| (Instant::now(), SystemTime::now()))
}
