//! Kernel telemetry: what the kernel sees of lb's own connections to each member.
//!
//! Control path: eBPF maps ([`ebpf`]) → this sampler, every `interval` → one [`Snapshot`]
//! (rates, EWMAs, connect-latency percentiles per member endpoint) published behind an
//! `ArcSwap`, which the data path and the admin API read without locking.
//!
//! The source is chosen once at startup and said once in the log: `ebpf` when lb's object is
//! built in and loads (root / CAP_BPF, BTF, cgroup v2), else the TCP_INFO fallback, with the
//! reason (`off` only when the config says so).
pub mod ebpf;
pub mod tcp_info;

use arc_swap::ArcSwap;
use lb_common::{EndpointKey, EndpointStats, LAT_BUCKETS};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("lb was built without its eBPF object: {0}")]
    NotBuilt(String),
    #[error("cannot read this process's cgroup")]
    Cgroup(#[source] std::io::Error),
    #[error("no cgroup v2 to attach to: {0}")]
    NoCgroup2(String),
    #[error("cannot load or attach the eBPF programs: {0}")]
    Load(String),
    #[error("cannot read a socket cookie")]
    Cookie(#[source] std::io::Error),
    #[error("eBPF map update failed: {0}")]
    Map(String),
    #[error("telemetry state poisoned by an earlier panic")]
    Poisoned,
}

pub use crate::config::{SourceChoice, TelemetryConfig};

/// Per-endpoint health as the sampler last computed it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndpointHealth {
    pub connects: u64,
    pub established: u64,
    pub connect_failed: u64,
    /// Established connections now open.
    pub live: u64,
    /// Data segments sent: the trials retransmits are a share of.
    pub data_segs_out: u64,
    pub retransmits: u64,
    pub syn_retransmits: u64,
    pub rto: u64,
    pub resets: u64,
    /// Rates over the last second (the sampler's rate window).
    pub retransmits_per_s: f64,
    pub connect_failed_per_s: f64,
    pub rto_per_s: f64,
    /// Failed connects and RTOs within the last second.
    pub connect_failed_recent: u64,
    pub rto_recent: u64,
    /// Connect latency (SYN → ESTABLISHED) over the last 10 s, µs.
    pub connect_p50_us: Option<u64>,
    pub connect_p99_us: Option<u64>,
    /// Smoothed RTT: an EWMA of the kernel's srtt that jumps up to a slower sample at once and
    /// decays slowly (peak-EWMA), µs.
    pub srtt_us: Option<f64>,
    /// RTT samples taken so far (each new one means `srtt_us` is current).
    pub rtt_samples: u64,
    /// Standard deviation of the RTT samples of the last interval that had any, µs.
    pub rttvar_us: Option<f64>,
}

/// Everything the sampler knows, by member endpoint.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub endpoints: HashMap<SocketAddr, EndpointHealth>,
}

/// Where telemetry comes from, for logs and `lb health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Ebpf,
    TcpInfo,
    Off,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ebpf => "ebpf",
            Source::TcpInfo => "tcp_info",
            Source::Off => "off",
        }
    }
}

pub struct Telemetry {
    pub source: Source,
    /// Why this source (and not another) is active.
    pub why: String,
    pub interval: Duration,
    kernel: Option<ebpf::Kernel>,
    tcp_info: Option<Arc<tcp_info::TcpInfoSource>>,
    sampler: std::sync::Mutex<Sampler>,
    snapshot: ArcSwap<Snapshot>,
}

impl Telemetry {
    /// Choose and start the source; says once in the log which one is active and why.
    pub fn start(cfg: &TelemetryConfig) -> Result<Arc<Telemetry>, TelemetryError> {
        let tcp_info_why = |e: &TelemetryError| {
            format!(
                "TCP_INFO of lb's member connections, because the eBPF programs are unavailable: {}",
                crate::errors::chain(e)
            )
        };
        let (kernel, source, why) = match cfg.source {
            SourceChoice::Off => (None, Source::Off, "turned off in the config".to_owned()),
            SourceChoice::TcpInfo => (
                None,
                Source::TcpInfo,
                "TCP_INFO of lb's member connections (source = \"tcp_info\" in the config)"
                    .to_owned(),
            ),
            SourceChoice::Ebpf | SourceChoice::Auto => match ebpf::Kernel::load() {
                Ok(k) => {
                    let why = format!(
                        "sock_ops on cgroup {} and tp_btf/tcp_receive_reset loaded",
                        k.cgroup.display()
                    );
                    (Some(k), Source::Ebpf, why)
                }
                Err(e) if cfg.source == SourceChoice::Ebpf => return Err(e),
                Err(e) => (None, Source::TcpInfo, tcp_info_why(&e)),
            },
        };
        let tcp_info = (source == Source::TcpInfo).then(Arc::default);
        // Loading parsed the kernel's BTF (tens of MiB, now freed): hand that memory back to the
        // OS instead of keeping it in the allocator for the life of the process.
        // SAFETY: malloc_trim only releases free heap memory; it takes no pointers.
        unsafe {
            libc::malloc_trim(0);
        }
        match source {
            Source::Ebpf => tracing::info!(source = "ebpf", "kernel telemetry: {why}"),
            Source::TcpInfo => tracing::warn!(source = "tcp_info", "kernel telemetry: {why}"),
            Source::Off => tracing::warn!(source = "off", "kernel telemetry is off: {why}"),
        }
        Ok(Arc::new(Telemetry {
            source,
            why,
            interval: cfg.interval,
            kernel,
            tcp_info,
            sampler: std::sync::Mutex::new(Sampler::default()),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
        }))
    }

    /// Register a member socket before `connect()` so the kernel side measures it.
    pub fn register(&self, socket: &impl AsFd, endpoint: SocketAddr) {
        if let Some(k) = &self.kernel
            && let Err(e) = k.register(socket, endpoint)
        {
            tracing::warn!(%endpoint, error = %e, "cannot register a member socket for telemetry");
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Read the kernel counters now and publish a new snapshot (the control loop calls this
    /// every `interval`). With no kernel source the snapshot stays empty.
    pub fn sample(&self, now: Instant) -> Arc<Snapshot> {
        let reads = match (&self.kernel, &self.tcp_info) {
            (Some(kernel), _) => Some(kernel.read_all()),
            (None, Some(t)) => Some(t.read_all(clock_ns())),
            (None, None) => None,
        };
        if let Some(reads) = reads
            && let Ok(mut sampler) = self.sampler.lock()
        {
            self.snapshot.store(Arc::new(sampler.update(now, &reads)));
        }
        self.snapshot.load_full()
    }

    /// The connect path tells the TCP_INFO source about connects it measures itself
    /// (the eBPF source sees them in the kernel).
    pub fn connect_started(&self, addr: SocketAddr) {
        if let Some(t) = &self.tcp_info {
            t.connect_started(addr);
        }
    }

    pub fn connect_failed(&self, addr: SocketAddr) {
        if let Some(t) = &self.tcp_info {
            t.connect_failed(addr);
        }
    }

    /// A member connection is up: with the TCP_INFO source, wrap it to be sampled.
    pub fn connected(
        &self,
        addr: SocketAddr,
        latency: Duration,
        stream: tokio::net::TcpStream,
    ) -> tcp_info::TrackedStream {
        let track = self
            .tcp_info
            .as_ref()
            .and_then(|t| t.connected(addr, latency, &stream).map(|slot| (slot, Arc::clone(t))));
        tcp_info::TrackedStream::new(stream, track)
    }

    /// Carry the eBPF programs' log lines into lb's log until `stop` resolves.
    pub async fn pump_logs(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let Some(kernel) = &self.kernel else {
            stop.await;
            return;
        };
        tokio::select! {
            _ = log_pump(kernel) => {}
            _ = stop => {}
        }
    }
}

/// Forward aya-log records from the kernel side (they reach `log`, which tracing picks up).
async fn log_pump(kernel: &ebpf::Kernel) {
    let Some(fd) = kernel.log_fd() else {
        return std::future::pending().await;
    };
    // SAFETY: `fd` is an OwnedFd, moved into the AsyncFd: it stays open and is the same
    // descriptor for the AsyncFd's whole life, and OwnedFd::as_raw_fd always returns it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    };
    let Ok(afd) = registered else {
        return std::future::pending().await;
    };
    loop {
        let Ok(mut guard) = afd.readable().await else { return std::future::pending().await };
        // Reading goes through the logger; the fd clone only tells us when to.
        kernel.flush_logs();
        guard.clear_ready();
    }
}

/// Monotonic nanoseconds (for the `last_sample_ns` the eBPF side stamps with its own clock).
fn clock_ns() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// How far back connect-latency percentiles look.
const LAT_WINDOW: Duration = Duration::from_secs(10);
/// How far back rates (retransmits/s, failed connects/s, RTOs/s) look.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// EWMA weight of a new srtt sample that is lower than the average (higher ones are taken as is),
/// per [`SRTT_DECAY_EVERY`] since the last sample: the decay is the same whatever the sampling
/// interval. An average with no sample for [`SRTT_STALE`] and three sampler updates is not decayed but
/// replaced: it describes a path as it was, not as it is (a member back from an ejection starts
/// afresh).
const SRTT_DECAY: f64 = 0.2;
const SRTT_DECAY_EVERY: Duration = Duration::from_millis(250);
const SRTT_STALE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct EndpointTrack {
    last: Option<(Instant, EndpointStats)>,
    /// (time, retransmits, connect_failed, rto) over the rate window.
    rates: VecDeque<(Instant, u64, u64, u64)>,
    hist: VecDeque<(Instant, [u64; LAT_BUCKETS])>,
    srtt: Option<f64>,
    srtt_at: Option<Instant>,
    /// Sampler updates since the last RTT sample.
    quiet_updates: u32,
    rttvar: Option<f64>,
}

/// Turns cumulative counters into rates, EWMAs and windowed percentiles.
#[derive(Default)]
pub struct Sampler {
    tracks: HashMap<EndpointKey, EndpointTrack>,
}

fn key_addr(k: &EndpointKey) -> SocketAddr {
    if k.family == lb_common::FAMILY_INET {
        let ip = std::net::Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]);
        SocketAddr::new(ip.into(), k.port)
    } else {
        SocketAddr::new(std::net::Ipv6Addr::from(k.addr).into(), k.port)
    }
}

/// The latency at quantile `q` of a log2-µs histogram, interpolated inside its bucket.
pub fn quantile(hist: &[u64; LAT_BUCKETS], q: f64) -> Option<u64> {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    let mut seen = 0u64;
    for (b, &c) in hist.iter().enumerate() {
        if c > 0 && seen + c >= rank {
            let lo = if b == 0 { 0.0 } else { (1u64 << (b - 1)) as f64 };
            let hi = (1u64 << b) as f64;
            let frac = (rank - seen) as f64 / c as f64;
            return Some((lo + (hi - lo) * frac).round() as u64);
        }
        seen += c;
    }
    None
}

impl Sampler {
    pub fn update(&mut self, now: Instant, reads: &[(EndpointKey, EndpointStats)]) -> Snapshot {
        let mut out = Snapshot::default();
        for (key, s) in reads {
            let t = self.tracks.entry(*key).or_insert_with(|| {
                // lb creates each endpoint's counters zeroed when it first connects to it, so
                // everything counted so far happened within the last rate window.
                let mut t = EndpointTrack::default();
                t.rates.push_back((now.checked_sub(RATE_WINDOW).unwrap_or(now), 0, 0, 0));
                t
            });
            let mut h = EndpointHealth {
                connects: s.connects,
                established: s.established,
                connect_failed: s.connect_failed,
                live: s.established.saturating_sub(s.closed),
                data_segs_out: s.data_segs_out,
                retransmits: s.retransmits,
                syn_retransmits: s.syn_retransmits,
                rto: s.rto,
                resets: s.resets,
                ..EndpointHealth::default()
            };
            t.rates.push_back((now, s.retransmits, s.connect_failed, s.rto));
            while t.rates.len() > 2 && now.duration_since(t.rates[1].0) >= RATE_WINDOW {
                t.rates.pop_front();
            }
            if let Some(&(then, retr, failed, rto)) = t.rates.front()
                && then < now
            {
                // Over at least one interval and at most about the rate window.
                let dt = now.duration_since(then).as_secs_f64().max(1e-3);
                h.retransmits_per_s = s.retransmits.saturating_sub(retr) as f64 / dt;
                h.connect_failed_recent = s.connect_failed.saturating_sub(failed);
                h.rto_recent = s.rto.saturating_sub(rto);
                h.connect_failed_per_s = h.connect_failed_recent as f64 / dt;
                h.rto_per_s = h.rto_recent as f64 / dt;
            }
            if let Some((then, prev)) = &t.last {
                let n = s.rtt_samples.saturating_sub(prev.rtt_samples);
                if n > 0 {
                    let mean_srtt =
                        s.srtt_sum_us.saturating_sub(prev.srtt_sum_us) as f64 / n as f64;
                    let fresh = t.quiet_updates < 3
                        || t.srtt_at.is_some_and(|at| now.duration_since(at) < SRTT_STALE);
                    t.srtt = Some(match t.srtt {
                        Some(old) if fresh && mean_srtt < old => {
                            let periods = now.duration_since(*then).as_secs_f64()
                                / SRTT_DECAY_EVERY.as_secs_f64();
                            let w = 1.0 - (1.0 - SRTT_DECAY).powf(periods);
                            old + w * (mean_srtt - old)
                        }
                        _ => mean_srtt,
                    });
                    t.srtt_at = Some(now);
                    t.quiet_updates = 0;
                } else {
                    t.quiet_updates = t.quiet_updates.saturating_add(1);
                    let m = s.mrtt_sum_us.saturating_sub(prev.mrtt_sum_us) as f64 / n as f64;
                    let sq = s.mrtt_sq_sum.saturating_sub(prev.mrtt_sq_sum) as f64 / n as f64;
                    t.rttvar = Some((sq - m * m).max(0.0).sqrt());
                }
            } else if s.rtt_samples > 0 {
                t.srtt = Some(s.srtt_sum_us as f64 / s.rtt_samples as f64);
                t.srtt_at = Some(now);
            }
            h.srtt_us = t.srtt;
            h.rtt_samples = s.rtt_samples;
            h.rttvar_us = t.rttvar;
            t.hist.push_back((now, s.connect_lat_hist));
            while t.hist.len() > 2 && now.duration_since(t.hist[1].0) >= LAT_WINDOW {
                t.hist.pop_front();
            }
            // Latencies within the window: the newest cumulative histogram minus the oldest kept.
            let oldest = if t.hist.len() > 1 && now.duration_since(t.hist[0].0) >= LAT_WINDOW {
                t.hist[0].1
            } else {
                [0; LAT_BUCKETS]
            };
            let mut win = [0u64; LAT_BUCKETS];
            for (i, w) in win.iter_mut().enumerate() {
                *w = s.connect_lat_hist[i].saturating_sub(oldest[i]);
            }
            h.connect_p50_us = quantile(&win, 0.50);
            h.connect_p99_us = quantile(&win, 0.99);
            t.last = Some((now, *s));
            out.endpoints.insert(key_addr(key), h);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_log2_buckets() {
        let mut h = [0u64; LAT_BUCKETS];
        assert_eq!(quantile(&h, 0.5), None);
        h[6] = 100; // 32..64 µs
        assert_eq!(quantile(&h, 0.5), Some(48));
        h[20] = 1; // one ~1 s outlier
        assert_eq!(quantile(&h, 0.99), Some(64));
        assert!(quantile(&h, 1.0).unwrap() > 500_000);
    }

    #[test]
    fn sampler_turns_counters_into_rates_and_a_peak_ewma() {
        let key = EndpointKey::v4([127, 0, 0, 1], 9);
        let mut s = Sampler::default();
        let t0 = Instant::now();
        let mut st = EndpointStats::ZERO;
        st.rtt_samples = 10;
        st.srtt_sum_us = 1000; // 100 µs
        s.update(t0, &[(key, st)]);
        st.retransmits = 20;
        st.rtt_samples = 20;
        st.srtt_sum_us = 1000 + 10 * 10_000; // a 10 ms interval: taken at once
        let snap = s.update(t0 + Duration::from_secs(2), &[(key, st)]);
        let h = &snap.endpoints[&"127.0.0.1:9".parse().unwrap()];
        assert!((h.retransmits_per_s - 10.0).abs() < 1e-9);
        assert_eq!(h.srtt_us, Some(10_000.0));
        st.rtt_samples = 30;
        st.srtt_sum_us += 10 * 100; // back to 100 µs: decays, not dropped
        let snap = s.update(t0 + Duration::from_secs(3), &[(key, st)]);
        let srtt = snap.endpoints[&"127.0.0.1:9".parse().unwrap()].srtt_us.unwrap();
        // One second later: four decay periods of 0.2 each.
        let w = 1.0 - 0.8f64.powi(4);
        assert!((srtt - (10_000.0 + w * (100.0 - 10_000.0))).abs() < 1e-6, "{srtt}");
        // Ten seconds without a sample: the old average is stale, the next samples replace it.
        for i in 4..7 {
            s.update(t0 + Duration::from_secs(i), &[(key, st)]);
        }
        st.rtt_samples = 40;
        st.srtt_sum_us += 10 * 100;
        let snap = s.update(t0 + Duration::from_secs(13), &[(key, st)]);
        assert_eq!(snap.endpoints[&"127.0.0.1:9".parse().unwrap()].srtt_us, Some(100.0));
    }
}
