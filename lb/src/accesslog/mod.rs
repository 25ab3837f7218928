//! The access log: one line per HTTP request and per TCP connection, written by a thread of its
//! own, so that a slow disk, a full disk or a stalled terminal never stalls traffic.
//!
//! The data path hands over the record it already holds: a push onto a lock-free queue bounded
//! by a count, with no formatting, no lock, no system call and no wake-up (a channel that woke
//! the writer for every line cost a futex call per request). The queue grows in blocks of 31
//! lines and gives them back as the writer empties it: a preallocated ring of the default 16,384
//! lines wrote every slot at start and kept 384 KiB resident for good, idle or not. The writer thread wakes every
//! [`TICK`], formats what is queued ([`format`]: Apache's combined format extended with lb's
//! fields, or JSON lines) and writes it in one go. When the queue is full the line is dropped
//! and counted (`access_log.dropped` in `lb status --json`, and a warning at most once a
//! second); so are lines a write error loses. [`flush`] at shutdown writes what is left.
//!
//! One log per process: `[access_log]` names where it goes (stdout or a file) and its format,
//! fixed at start; each listener's `access_log = true|false` decides whether it logs.
mod format;
pub use format::utc;

use crate::config::{AccessLogConfig, AccessLogFormat};
use crossbeam_queue::SegQueue;
use http::{Method, StatusCode, Version};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// How often the writer looks for lines.
pub const TICK: Duration = Duration::from_millis(25);

/// The BALANCER_* values of one attempt, beside the balancer's and the member's names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values {
    /// BALANCER_SESSION_STICKY and BALANCER_SESSION_ROUTE, when the request carried a session.
    pub session_sticky: Option<String>,
    pub session_route: Option<String>,
    /// BALANCER_WORKER_ROUTE and BALANCER_ROUTE_CHANGED.
    pub worker_route: Option<String>,
    pub route_changed: bool,
}

/// One HTTP request, as the access log shows it.
pub struct HttpRecord {
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub method: Method,
    /// The request target, Referer and User-Agent.
    pub text: RequestText,
    pub version: Version,
    pub status: StatusCode,
    pub balancer: Option<Arc<str>>,
    /// The member of the last attempt (its name is written by the log's thread).
    pub member: Option<Arc<crate::balancer::Member>>,
    pub attempts: u32,
    pub balancer_values: Values,
    /// When the request arrived.
    pub at: SystemTime,
    pub start: Instant,
    /// Time to the response head.
    pub head_us: u64,
    /// Filled in when the response ends.
    pub total_us: u64,
    pub bytes: u64,
    /// False when the client went away before the body ended.
    pub complete: bool,
}

/// The request target (path and query), Referer and User-Agent, copied out of the request into
/// one small allocation. Shared references would be cheaper to take, but they point into hyper's
/// read buffer and would keep that whole buffer (8 KiB and more) alive until the writer has run:
/// at 50,000 requests a second that held about 10 MiB.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestText {
    bytes: Box<[u8]>,
    /// Where each part ends in `bytes`; None: the request had none.
    ends: [Option<u32>; 3],
}

impl RequestText {
    pub fn new(target: Option<&str>, referer: Option<&[u8]>, user_agent: Option<&[u8]>) -> Self {
        let parts = [target.map(str::as_bytes), referer, user_agent];
        let mut bytes = Vec::with_capacity(parts.iter().flatten().map(|p| p.len()).sum());
        let mut ends = [None; 3];
        for (end, part) in ends.iter_mut().zip(parts) {
            if let Some(p) = part {
                bytes.extend_from_slice(p);
                *end = u32::try_from(bytes.len()).ok();
            }
        }
        RequestText { bytes: bytes.into_boxed_slice(), ends }
    }

    fn part(&self, i: usize) -> Option<&[u8]> {
        let end = self.ends[i]? as usize;
        let start = self.ends[..i].iter().rev().flatten().next().map_or(0, |&e| e as usize);
        self.bytes.get(start..end)
    }

    pub fn target(&self) -> Option<&str> {
        self.part(0).and_then(|t| std::str::from_utf8(t).ok())
    }

    pub fn referer(&self) -> Option<&[u8]> {
        self.part(1)
    }

    pub fn user_agent(&self) -> Option<&[u8]> {
        self.part(2)
    }
}

/// One TCP connection.
pub struct TcpRecord {
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub balancer: Arc<str>,
    pub member: String,
    pub to_member: u64,
    pub to_client: u64,
    pub at: SystemTime,
    pub total_ms: u64,
    pub outcome: String,
}

pub enum Entry {
    Http(Box<HttpRecord>),
    Tcp(Box<TcpRecord>),
}

impl HttpRecord {
    /// Hand the line over once the response has ended (`complete`) or been abandoned.
    pub fn emit(mut self: Box<Self>, bytes: u64, complete: bool) {
        self.total_us = self.start.elapsed().as_micros() as u64;
        self.bytes = bytes;
        self.complete = complete;
        emit(Entry::Http(self));
    }
}

/// The process's access log.
pub struct AccessLog {
    queue: SegQueue<Entry>,
    /// Lines in the queue, and the most it may hold (`[access_log] buffer`).
    queued: AtomicUsize,
    capacity: usize,
    written: AtomicU64,
    dropped: AtomicU64,
    warned_at: AtomicU64,
    closing: AtomicBool,
    writer: Mutex<Option<JoinHandle<()>>>,
}

static LOG: OnceLock<Arc<AccessLog>> = OnceLock::new();

/// Start the access log as `cfg` says; the first call wins (the destination is fixed at start).
pub fn init(cfg: &AccessLogConfig) -> std::io::Result<()> {
    if LOG.get().is_some() {
        return Ok(());
    }
    let out: Box<dyn Write + Send> = match cfg.path.as_deref() {
        None => Box::new(std::io::stdout()),
        Some(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
    };
    let _ = LOG.set(start(out, cfg.format, cfg.buffer));
    Ok(())
}

fn start(out: Box<dyn Write + Send>, fmt: AccessLogFormat, queue: usize) -> Arc<AccessLog> {
    let log = Arc::new(AccessLog {
        queue: SegQueue::new(),
        queued: AtomicUsize::new(0),
        capacity: queue.max(1),
        written: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        warned_at: AtomicU64::new(0),
        closing: AtomicBool::new(false),
        writer: Mutex::new(None),
    });
    let w = Arc::clone(&log);
    let spawned = std::thread::Builder::new()
        .name("lb-access-log".into())
        .spawn(move || writer(&w, out, fmt));
    match spawned {
        Ok(h) => *log.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(h),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the access log writer; access log lines are dropped")
        }
    }
    log
}

/// Write what is queued and stop the writer (at shutdown).
pub fn flush() {
    let Some(log) = LOG.get() else { return };
    log.closing.store(true, Relaxed);
    let handle = log.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(h) = handle {
        let _ = h.join();
    }
}

/// The access log (stdout, combined format, when nothing started it).
fn log() -> &'static Arc<AccessLog> {
    LOG.get_or_init(|| {
        let d = AccessLogConfig::default();
        start(Box::new(std::io::stdout()), d.format, d.buffer)
    })
}

/// Hand a line to the writer; never waits.
pub fn emit(e: Entry) {
    log().offer(e);
}

/// Lines written and dropped since start.
pub fn counts() -> (u64, u64) {
    LOG.get().map_or((0, 0), |l| (l.written.load(Relaxed), l.dropped.load(Relaxed)))
}

impl AccessLog {
    /// Queue a line, or drop and count it when the queue is full.
    fn offer(&self, e: Entry) {
        if self.queued.fetch_add(1, Relaxed) >= self.capacity {
            self.queued.fetch_sub(1, Relaxed);
            self.lost(1);
            return;
        }
        self.queue.push(e);
    }

    fn take(&self) -> Option<Entry> {
        let e = self.queue.pop()?;
        self.queued.fetch_sub(1, Relaxed);
        Some(e)
    }

    fn lost(&self, n: u64) {
        let total = self.dropped.fetch_add(n, Relaxed) + n;
        let now = crate::balancer::now_ms();
        let last = self.warned_at.load(Relaxed);
        if now >= last + 1000
            && self.warned_at.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
        {
            tracing::warn!(dropped = total, "access log lines dropped: the log cannot keep up");
        }
    }
}

fn writer(log: &AccessLog, mut out: Box<dyn Write + Send>, fmt: AccessLogFormat) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut lines = 0u64;
    loop {
        let closing = log.closing.load(Relaxed);
        while let Some(e) = log.take() {
            format::line(&mut buf, &e, fmt);
            lines += 1;
            if buf.len() >= 60 * 1024 {
                write(log, &mut out, &mut buf, &mut lines);
            }
        }
        if lines > 0 {
            write(log, &mut out, &mut buf, &mut lines);
        }
        if closing {
            return;
        }
        std::thread::sleep(TICK);
    }
}

fn write(log: &AccessLog, out: &mut Box<dyn Write + Send>, buf: &mut Vec<u8>, lines: &mut u64) {
    match out.write_all(buf).and_then(|()| out.flush()) {
        Ok(()) => {
            log.written.fetch_add(*lines, Relaxed);
        }
        Err(_) => log.lost(*lines),
    }
    buf.clear();
    *lines = 0;
}

#[cfg(test)]
mod tests {
    use super::{AccessLog, Entry, RequestText, TcpRecord};
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

    fn line() -> Entry {
        Entry::Tcp(Box::new(TcpRecord {
            listener: "l4".into(),
            client: "127.0.0.1:1".parse().unwrap(),
            balancer: "b".into(),
            member: "tcp://127.0.0.1:2".into(),
            to_member: 0,
            to_client: 0,
            at: std::time::SystemTime::now(),
            total_ms: 0,
            outcome: "closed".into(),
        }))
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_takes_again_once_emptied() {
        let log = AccessLog {
            queue: Default::default(),
            queued: AtomicUsize::new(0),
            capacity: 3,
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            writer: Default::default(),
        };
        for _ in 0..5 {
            log.offer(line());
        }
        assert_eq!((log.queue.len(), log.dropped.load(Relaxed)), (3, 2));
        assert!(log.take().is_some());
        log.offer(line());
        log.offer(line());
        assert_eq!((log.queue.len(), log.dropped.load(Relaxed)), (3, 3));
        while log.take().is_some() {}
        assert_eq!(log.queued.load(Relaxed), 0);
    }

    #[test]
    fn request_text_gives_back_each_part_it_was_given() {
        let t = RequestText::new(Some("/a?b=1"), None, Some(b"curl/8"));
        assert_eq!(
            (t.target(), t.referer(), t.user_agent()),
            (Some("/a?b=1"), None, Some(&b"curl/8"[..]))
        );
        let t = RequestText::new(None, Some(b"https://r/"), Some(b""));
        assert_eq!(
            (t.target(), t.referer(), t.user_agent()),
            (None, Some(&b"https://r/"[..]), Some(&b""[..]))
        );
        let t = RequestText::default();
        assert_eq!((t.target(), t.referer(), t.user_agent()), (None, None, None));
    }
}
