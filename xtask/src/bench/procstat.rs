//! What the proxies cost: CPU time (user and system) and resident memory of a process and its
//! children, from /proc; and whether the machine is quiet enough to measure at all.
use anyhow::{Result, bail};
use std::time::Duration;

/// Clock ticks per second for /proc/PID/stat (`getconf CLK_TCK`; 100 on Linux).
const TICKS: f64 = 100.0;

/// The process and its children (nginx: the master and its worker).
pub fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    out.extend(crate::children(pid));
    out
}

/// (user, system) CPU seconds used so far by `pids`.
pub fn cpu(pids: &[u32]) -> (f64, f64) {
    let mut t = (0.0, 0.0);
    for p in pids {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 of what follows ')'.
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        t.0 += num(11) / TICKS;
        t.1 += num(12) / TICKS;
    }
    t
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident memory now, MiB.
pub fn rss_mib(pids: &[u32]) -> f64 {
    pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum::<u64>() as f64 / 1024.0
}

/// Peak resident memory since the last [`reset_peak`], MiB.
pub fn peak_mib(pids: &[u32]) -> f64 {
    pids.iter().map(|p| status_kib(*p, "VmHWM:")).sum::<u64>() as f64 / 1024.0
}

/// Start a new peak (`clear_refs` 5 resets VmHWM).
pub fn reset_peak(pids: &[u32]) {
    for p in pids {
        let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
    }
}

fn cpu_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (v.iter().sum(), idle)
}

/// Refuse to measure on a busy machine: more than `max` of the CPU in use over a second.
pub fn quiet(max: f64) -> Result<()> {
    let (t0, i0) = cpu_jiffies();
    std::thread::sleep(Duration::from_secs(1));
    let (t1, i1) = cpu_jiffies();
    let busy = 1.0 - (i1 - i0) as f64 / (t1 - t0).max(1) as f64;
    if busy > max {
        bail!(
            "the machine is busy: {:.0} % of its CPU was in use over the last second (the limit is \
             {:.0} %); benchmarks on a busy machine measure the other work. Stop it and run again.",
            busy * 100.0,
            max * 100.0
        );
    }
    Ok(())
}
