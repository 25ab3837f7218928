//! Loading lb's eBPF object and talking to its maps.
//!
//! Which sockets are measured: lb registers each upstream socket's `SO_COOKIE` in the `SOCKETS`
//! map before it calls `connect()`. Cookies name exactly lb's own member connections whatever
//! the cgroup layout (a systemd unit, a container, an in-process test harness), they are never
//! reused (unlike kernel socket addresses), and a socket that is not registered costs the kernel
//! side one lookup. The sock_ops program is attached to lb's own cgroup v2 with "allow multiple",
//! so several lb processes (and other programs) coexist.
use super::TelemetryError;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuHashMap, PerCpuValues};
use aya::programs::{BtfTracePoint, CgroupAttachMode, SockOps};
use aya::{Btf, Ebpf, EbpfLoader};
use lb_common::{EndpointKey, EndpointStats, SockInfo};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Mutex;

#[cfg(lb_ebpf)]
static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT")));
#[cfg(not(lb_ebpf))]
static OBJECT: Option<&[u8]> = None;

/// Why the binary has no eBPF object, when it has none.
pub fn missing_reason() -> Option<&'static str> {
    option_env!("LB_EBPF_MISSING")
}

struct Maps {
    sockets: BpfHashMap<MapData, u64, SockInfo>,
    stats: PerCpuHashMap<MapData, EndpointKey, EndpointStats>,
    known: HashSet<EndpointKey>,
}

/// The loaded, attached programs and their maps.
pub struct Kernel {
    // Kept alive: dropping it detaches the programs.
    _ebpf: Ebpf,
    /// Taken by registration (a map update per new member connection, never per request) and by
    /// the sampler (once per interval).
    maps: Mutex<Maps>,
    pub cgroup: PathBuf,
    logger: Mutex<Option<aya_log::EbpfLogger<&'static dyn log::Log>>>,
}

/// The cgroup v2 directory this process is in.
fn own_cgroup2() -> Result<PathBuf, TelemetryError> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").map_err(TelemetryError::Cgroup)?;
    let rel = cg.lines().find_map(|l| l.strip_prefix("0::")).ok_or_else(|| {
        TelemetryError::NoCgroup2("no cgroup v2 entry in /proc/self/cgroup".into())
    })?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(TelemetryError::Cgroup)?;
    let mount = mounts
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2").then(|| pre.split_whitespace().nth(4))?
        })
        .ok_or_else(|| TelemetryError::NoCgroup2("cgroup2 is not mounted".into()))?;
    Ok(PathBuf::from(mount).join(rel.trim_start_matches('/')))
}

impl Kernel {
    pub fn load() -> Result<Kernel, TelemetryError> {
        let object = OBJECT.ok_or_else(|| {
            TelemetryError::NotBuilt(missing_reason().unwrap_or("unknown reason").to_owned())
        })?;
        // The kernel's BTF, parsed, takes about 9 MiB for a moment. The loader parses its own
        // copy (no constructor skips that) and frees it with itself; ours, which the tracepoint
        // needs, is parsed only after that, so that startup's peak holds one copy, not two.
        let mut ebpf = EbpfLoader::new().load(object).map_err(|e| match Btf::from_sys_fs() {
            Err(b) => TelemetryError::Load(format!("kernel BTF: {b}")),
            Ok(_) => TelemetryError::Load(crate::errors::chain(&e)),
        })?;
        let btf =
            Btf::from_sys_fs().map_err(|e| TelemetryError::Load(format!("kernel BTF: {e}")))?;
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
        let cgroup = own_cgroup2()?;
        let cg = std::fs::File::open(&cgroup)
            .map_err(|e| TelemetryError::Load(format!("open {}: {e}", cgroup.display())))?;
        {
            let prog: &mut SockOps = ebpf
                .program_mut("lb_sockops")
                .ok_or_else(|| TelemetryError::Load("no lb_sockops program".into()))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| TelemetryError::Load(e.to_string()))?;
            prog.load().map_err(|e| {
                TelemetryError::Load(format!("sock_ops: {}", crate::errors::chain(&e)))
            })?;
            // Attached through a bpf_link (kernel >= 5.7), which always coexists with other
            // programs on the cgroup; links take no attach flags, so the mode stays Single.
            prog.attach(cg.as_fd(), CgroupAttachMode::Single).map_err(|e| {
                TelemetryError::Load(format!("attach sock_ops: {}", crate::errors::chain(&e)))
            })?;
        }
        {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut("lb_receive_reset")
                .ok_or_else(|| TelemetryError::Load("no lb_receive_reset program".into()))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| TelemetryError::Load(e.to_string()))?;
            prog.load("tcp_receive_reset", &btf).map_err(|e| {
                TelemetryError::Load(format!(
                    "tp_btf tcp_receive_reset: {}",
                    crate::errors::chain(&e)
                ))
            })?;
            prog.attach().map_err(|e| {
                TelemetryError::Load(format!("attach tp_btf: {}", crate::errors::chain(&e)))
            })?;
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name).ok_or_else(|| TelemetryError::Load(format!("no {name} map")))
        };
        let sockets = BpfHashMap::try_from(take(&mut ebpf, lb_common::SOCKETS_MAP)?)
            .map_err(|e| TelemetryError::Load(e.to_string()))?;
        let stats = PerCpuHashMap::try_from(take(&mut ebpf, lb_common::STATS_MAP)?)
            .map_err(|e| TelemetryError::Load(e.to_string()))?;
        Ok(Kernel {
            _ebpf: ebpf,
            maps: Mutex::new(Maps { sockets, stats, known: HashSet::new() }),
            cgroup,
            logger: Mutex::new(logger),
        })
    }

    /// Register a socket (before `connect()`) as a connection to `endpoint`.
    pub fn register(&self, socket: &impl AsFd, endpoint: SocketAddr) -> Result<(), TelemetryError> {
        let cookie = socket2::SockRef::from(socket).cookie().map_err(TelemetryError::Cookie)?;
        let key = EndpointKey::from(endpoint);
        let mut maps = self.maps.lock().map_err(|_| TelemetryError::Poisoned)?;
        if !maps.known.contains(&key) {
            ensure_endpoint(&mut maps.stats, key)?;
            maps.known.insert(key);
        }
        let info = SockInfo { endpoint: key, ..SockInfo::default() };
        maps.sockets.insert(cookie, info, 0).map_err(|e| TelemetryError::Map(e.to_string()))
    }

    /// Counters of every registered endpoint, summed over CPUs.
    pub fn read_all(&self) -> Vec<(EndpointKey, EndpointStats)> {
        let Ok(maps) = self.maps.lock() else { return Vec::new() };
        maps.known
            .iter()
            .filter_map(|key| {
                let values = maps.stats.get(key, 0).ok()?;
                let mut sum = EndpointStats::ZERO;
                for v in values.iter() {
                    add(&mut sum, v);
                }
                Some((*key, sum))
            })
            .collect()
    }
}

/// The kernel side only adds to existing entries: create a zeroed one on every CPU.
fn ensure_endpoint(
    stats: &mut PerCpuHashMap<MapData, EndpointKey, EndpointStats>,
    key: EndpointKey,
) -> Result<(), TelemetryError> {
    if stats.get(&key, 0).is_ok() {
        return Ok(());
    }
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| TelemetryError::Map(e.to_string()))?;
    let zero = PerCpuValues::try_from(vec![EndpointStats::ZERO; cpus])
        .map_err(|e| TelemetryError::Map(e.to_string()))?;
    stats.insert(key, zero, 0).map_err(|e| TelemetryError::Map(e.to_string()))
}

fn add(a: &mut EndpointStats, b: &EndpointStats) {
    a.connects += b.connects;
    a.established += b.established;
    a.connect_failed += b.connect_failed;
    a.closed += b.closed;
    a.data_segs_out += b.data_segs_out;
    a.retransmits += b.retransmits;
    a.syn_retransmits += b.syn_retransmits;
    a.rto += b.rto;
    a.resets += b.resets;
    a.connect_lat_sum_us += b.connect_lat_sum_us;
    for (x, y) in a.connect_lat_hist.iter_mut().zip(b.connect_lat_hist.iter()) {
        *x += y;
    }
    a.rtt_samples += b.rtt_samples;
    a.srtt_sum_us += b.srtt_sum_us;
    a.mrtt_sum_us += b.mrtt_sum_us;
    a.mrtt_sq_sum = a.mrtt_sq_sum.saturating_add(b.mrtt_sq_sum);
    if b.last_sample_ns > a.last_sample_ns {
        a.last_sample_ns = b.last_sample_ns;
        a.srtt_last_us = b.srtt_last_us;
    }
}

impl Kernel {
    /// A descriptor that turns readable when the eBPF side has logged something.
    pub fn log_fd(&self) -> Option<std::os::fd::OwnedFd> {
        let logger = self.logger.lock().ok()?;
        logger.as_ref()?.as_fd().try_clone_to_owned().ok()
    }

    /// Drain pending log records from the eBPF side into `log` (and so into tracing).
    pub fn flush_logs(&self) {
        if let Ok(mut l) = self.logger.lock()
            && let Some(l) = l.as_mut()
        {
            l.flush();
        }
    }
}
