//! `cargo xtask bench --cost`: what one request costs lb, in figures that do not move with the
//! machine's noise. Throughput on this machine varies by ±15 % between runs, which hides any
//! change worth a few per cent; instructions and system calls per request do not vary.
//!
//! Per variant, lb (the build `bench` measures, default configuration) serves a fixed number of
//! requests (h2load, 50 connections) twice: once under callgrind, whose counters are zeroed
//! after a warm-up and dumped after the load (user-space instructions per request: lb's own
//! code, hyper, rustls, the allocator; and, from callgrind's cache simulation, first-level cache
//! misses for instructions and for data), and once under `strace -c` (system calls per
//! request, by name). HAProxy serves the same requests under callgrind beside it, and so does
//! lb's example `hyper_floor` (hyper's server and client and nothing of lb's) where it can
//! (HTTP/1.1 and h2c): the floor is what a proxy built on hyper cannot go under, and lb's
//! distance above it is what lb's own work costs. Tables go to `target/bench/cost-<time>.md`.
use super::peers::{self, LbVariant, Proxy};
use super::{Variant, url};
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Requests measured per variant (after a warm-up, see [`warm_up`]): fewer for large bodies,
/// which callgrind slows the most.
fn requests(v: &Variant) -> u64 {
    match v.path {
        "/1m.bin" => 500,
        "/64k.bin" => 2_000,
        _ => 20_000,
    }
}

/// Per request, from callgrind: instructions, and first-level cache misses (simulated) for
/// instructions and for data (reads and writes).
#[derive(Clone, Copy)]
struct Counts {
    instructions: f64,
    i1_misses: f64,
    d1_misses: f64,
}

impl Counts {
    fn cell(c: Option<Counts>) -> String {
        c.map_or("—".to_owned(), |c| {
            format!("{:.0} ({:.0} / {:.0})", c.instructions, c.i1_misses, c.d1_misses)
        })
    }
}

/// What one variant cost.
struct Cost {
    lb: Counts,
    haproxy: Counts,
    floor: Option<Counts>,
    /// lb's system calls per request, most frequent first.
    syscalls: Vec<(String, f64)>,
}

/// h2load for exactly `n` requests over 50 connections (10 streams each for h2), on `cpu`.
fn load(v: &Variant, url: &str, cpu: &str, n: u64) -> Result<()> {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu, "h2load", "-n", &n.to_string(), "-c", "50"]);
    match v.tool {
        super::load::Tool::H2load => c.args(["-m", "10"]),
        super::load::Tool::Wrk => c.arg("--h1"),
    };
    let out = c.arg(url).stderr(Stdio::null()).output().context("run h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match super::load::h2load(&text) {
        Ok(r) if r.requests == n as f64 && !r.errors => Ok(()),
        _ => bail!("h2load did not complete {n} requests on {url}:\n{text}"),
    }
}

/// Requests before measuring: a tenth, and at least one per connection (h2load's minimum).
fn warm_up(v: &Variant) -> u64 {
    (requests(v) / 10).max(50)
}

fn callgrind_control(arg: &str, pid: u32) -> Result<()> {
    let st = Command::new("callgrind_control")
        .args([arg, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("run callgrind_control")?;
    if !st.success() {
        bail!("callgrind_control {arg} {pid} failed");
    }
    Ok(())
}

/// Per-request counts of `proxy` run under callgrind, its counters zeroed after the warm-up.
fn counts(dir: &Path, proxy: &Proxy, v: &Variant, cpu: &str) -> Result<Counts> {
    let pid = proxy.pid();
    let u = url(v, (v.port)(&proxy.ports));
    load(v, &u, cpu, warm_up(v))?;
    callgrind_control("-z", pid)?;
    load(v, &u, cpu, requests(v))?;
    callgrind_control("-d", pid)?;
    // The dump is the newest callgrind file of this pid: `cg.out.<pid>.<n>`.
    let prefix = format!("cg.out.{pid}.");
    let mut dumps: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dumps.sort();
    let (_, last) = dumps.last().context("callgrind wrote no dump")?;
    let text = std::fs::read_to_string(last)?;
    let events: Vec<&str> = text
        .lines()
        .find_map(|l| l.strip_prefix("events:"))
        .context("no events in the callgrind dump")?
        .split_whitespace()
        .collect();
    let totals: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .context("no totals in the callgrind dump")?
        .split_whitespace()
        .map(|t| t.parse::<f64>())
        .collect::<Result<_, _>>()
        .context("totals in the callgrind dump")?;
    // Events missing at the end of the line are zero.
    let event = |name: &str| {
        events
            .iter()
            .position(|e| *e == name)
            .map_or(0.0, |i| totals.get(i).copied().unwrap_or(0.0))
    };
    let n = requests(v) as f64;
    Ok(Counts {
        instructions: event("Ir") / n,
        i1_misses: event("I1mr") / n,
        d1_misses: (event("D1mr") + event("D1mw")) / n,
    })
}

/// System calls per request: `strace -c -f` attached to a plain lb for the load.
fn syscalls(dir: &Path, lb: &Proxy, v: &Variant, cpu: &str) -> Result<Vec<(String, f64)>> {
    let u = url(v, (v.port)(&lb.ports));
    load(v, &u, cpu, warm_up(v))?;
    let out = dir.join(format!("strace-{}.txt", v.name));
    let mut strace = Command::new("strace")
        .args(["-c", "-f", "-o"])
        .arg(&out)
        .args(["-p", &lb.pid().to_string()])
        .stderr(Stdio::null())
        .spawn()
        .context("run strace")?;
    // strace reports on attaching; give it a moment to attach to every thread.
    std::thread::sleep(Duration::from_millis(500));
    let r = load(v, &u, cpu, requests(v));
    let _ = Command::new("kill").args(["-INT", &strace.id().to_string()]).status();
    strace.wait()?;
    r?;
    let text = std::fs::read_to_string(&out)?;
    let mut calls: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // % time, seconds, usecs/call, calls, [errors,] syscall
            let calls: f64 = f.get(3)?.parse().ok()?;
            let name = (*f.last()?).to_owned();
            (name != "total").then(|| (name, calls / requests(v) as f64))
        })
        .collect();
    calls.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(calls)
}

/// Where `cost` runs: the bench's directory, lb and floor binaries, members, certificate and
/// CPUs.
pub struct Setup<'a> {
    pub dir: &'a Path,
    pub lb_bin: &'a Path,
    pub floor_bin: &'a Path,
    /// Certificate and key in one file, for HAProxy.
    pub pem: &'a Path,
    pub members: &'a [u16],
    pub cert: &'a Path,
    pub key: &'a Path,
    pub proxy_cpu: &'a str,
    pub load_cpu: &'a str,
}

pub fn cost(variants: &[&'static Variant], s: &Setup) -> Result<()> {
    for (tool, package) in [("valgrind", "valgrind"), ("strace", "strace")] {
        crate::ensure_tool(tool, package)?;
    }
    let (dir, load_cpu) = (s.dir, s.load_cpu);
    let start = |wrap: &[&str]| {
        let d = LbVariant::Default;
        peers::lb(dir, s.lb_bin, s.proxy_cpu, s.members, s.cert, s.key, d, wrap)
    };
    let started = std::time::SystemTime::now();
    let mut costs = Vec::new();
    for v in variants {
        eprintln!("== {}: {}", v.name, v.what);
        let out = format!("--callgrind-out-file={}/cg.out.%p", dir.display());
        let wrap =
            ["valgrind", "--tool=callgrind", "--dump-instr=no", "--cache-sim=yes", out.as_str()];
        let lb = start(&wrap)?;
        let lb_counts = counts(dir, &lb, v, load_cpu)?;
        drop(lb);
        let lb = start(&[])?;
        let syscalls = syscalls(dir, &lb, v, load_cpu)?;
        drop(lb);
        let haproxy = peers::haproxy(dir, s.proxy_cpu, s.members, s.pem, &wrap)?;
        let haproxy_counts = counts(dir, &haproxy, v, load_cpu)?;
        drop(haproxy);
        // The floor speaks cleartext HTTP only: its TLS and L4 ports are 0.
        let floor = if (v.port)(&peers::floor_ports(1)) != 0 {
            let f = peers::floor(dir, s.floor_bin, s.proxy_cpu, s.members, &wrap)?;
            Some(counts(dir, &f, v, load_cpu)?)
        } else {
            None
        };
        eprintln!(
            "   instructions per request: lb {:.0}, HAProxy {:.0}, floor {}",
            lb_counts.instructions,
            haproxy_counts.instructions,
            floor.map_or("—".to_owned(), |f| format!("{:.0}", f.instructions))
        );
        costs.push((v, Cost { lb: lb_counts, haproxy: haproxy_counts, floor, syscalls }));
    }
    let mut t = String::from(
        "# What a request costs lb\n\n20,000 requests per variant (2,000 of 64 KiB, 500 of 1 MiB) after a warm-up of a tenth as many (at least 50) (h2load, 50 connections; 10 streams each for h2), lb's default configuration; HAProxy as in the bench; the hyper floor is lb's example `hyper_floor` (hyper's server and client, nothing of lb's; cleartext only). Per request: user-space instructions (first-level cache misses for instructions / for data, simulated), counted by callgrind; lb's system calls, counted by strace -c.\n\n| variant | lb | HAProxy | hyper floor | lb's system calls |\n|---|---|---|---|---|\n",
    );
    for (v, c) in &costs {
        let total: f64 = c.syscalls.iter().map(|s| s.1).sum();
        let top: Vec<String> =
            c.syscalls.iter().filter(|s| s.1 >= 0.05).map(|(n, k)| format!("{n} {k:.2}")).collect();
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {total:.2} ({}) |",
            v.what,
            Counts::cell(Some(c.lb)),
            Counts::cell(Some(c.haproxy)),
            Counts::cell(c.floor),
            top.join(", ")
        );
    }
    print!("\n{t}");
    let out_dir = crate::root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let stamp = started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let file = out_dir.join(format!("cost-{stamp}.md"));
    std::fs::write(&file, &t)?;
    println!("\ntable written to {}", file.display());
    Ok(())
}
