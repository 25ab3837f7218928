//! `cargo xtask bench --cost`: what one request costs lb, in figures that do not move with the
//! machine's noise. Throughput on this machine varies by ±15 % between runs, which hides any
//! change worth a few per cent; instructions and system calls per request do not vary.
//!
//! Per variant, lb (release build, default configuration) serves a fixed number of requests
//! (h2load, 50 connections) twice: once under callgrind, whose counters are zeroed after a
//! warm-up and dumped after the load (user-space instructions per request: lb's own code,
//! hyper, rustls, the allocator), and once under `strace -c` (system calls per request, by
//! name). Tables go to `target/bench/cost-<time>.md`.
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

/// What one variant cost.
struct Cost {
    instructions: f64,
    /// System calls per request, most frequent first.
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
        .status()
        .context("run callgrind_control")?;
    if !st.success() {
        bail!("callgrind_control {arg} {pid} failed");
    }
    Ok(())
}

/// Instructions per request: lb under callgrind, counters zeroed after the warm-up.
fn instructions(dir: &Path, lb: &Proxy, v: &Variant, cpu: &str) -> Result<f64> {
    let pid = lb.pid();
    let u = url(v, (v.port)(&lb.ports));
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
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|t| t.trim().parse::<f64>().ok())
        .context("no totals in the callgrind dump")?;
    Ok(total / requests(v) as f64)
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

/// Where `cost` runs: the bench's directory, lb binary, members, certificate and CPUs.
pub struct Setup<'a> {
    pub dir: &'a Path,
    pub lb_bin: &'a Path,
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
        let wrap = ["valgrind", "--tool=callgrind", "--dump-instr=no", &out];
        let lb = start(&wrap)?;
        let instructions = instructions(dir, &lb, v, load_cpu)?;
        drop(lb);
        let lb = start(&[])?;
        let syscalls = syscalls(dir, &lb, v, load_cpu)?;
        drop(lb);
        eprintln!("   {instructions:.0} instructions per request");
        costs.push((v, Cost { instructions, syscalls }));
    }
    let mut t = String::from(
        "# What a request costs lb\n\n20,000 requests per variant (2,000 of 64 KiB, 500 of 1 MiB) after a warm-up of a tenth as many (at least 50) (h2load, 50 connections; 10 streams each for h2), lb's default configuration. Instructions: user space, counted by callgrind. System calls: counted by strace -c, per request.\n\n| variant | instructions / request | system calls / request |\n|---|---|---|\n",
    );
    for (v, c) in &costs {
        let total: f64 = c.syscalls.iter().map(|s| s.1).sum();
        let top: Vec<String> =
            c.syscalls.iter().filter(|s| s.1 >= 0.05).map(|(n, k)| format!("{n} {k:.2}")).collect();
        let what = v.what;
        let _ = writeln!(t, "| {what} | {:.0} | {total:.2} ({}) |", c.instructions, top.join(", "));
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
