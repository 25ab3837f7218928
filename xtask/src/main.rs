//! Project tasks: `cargo xtask test | demo | bench`.
//!
//! `test` is what CI runs (the README's test command): formatting, lints, build, every test.
//! `demo` builds lb and starts its built-in demo. `bench` measures lb against direct-to-member
//! traffic on loopback with wrk, proxy and load pinned to different CPUs.
use anyhow::{Context, Result, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args.split_first().map_or(("help", &[][..]), |(c, r)| (c.as_str(), r));
    // `cargo xtask demo -- --bind ...`: the separator is for us, not for the task.
    let rest = rest.strip_prefix(&["--".to_owned()]).unwrap_or(rest);
    match cmd {
        "setup" => setup(),
        "build-ebpf" => build_ebpf(),
        "test" => test(rest),
        "demo" => demo(rest),
        "bench" => bench(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n  setup  install the eBPF toolchain (nightly rust-src, bpf-linker); quick when done\n  build-ebpf  setup, then build the eBPF object (lb's build script does the same and embeds it)\n  test   setup, fmt check, clippy, build, run every test (what CI runs)\n  demo   build lb and start `lb demo` (args are passed on)\n  bench  lb vs direct-to-member with wrk [--duration SECS] [--connections N]"
            );
            if cmd == "help" { Ok(()) } else { bail!("unknown task {cmd:?}") }
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut c: Command) -> Result<()> {
    eprintln!("+ {c:?}");
    let status = c.status().with_context(|| format!("cannot run {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

/// What the eBPF build needs, installed idempotently: nightly's rust-src, and bpf-linker built
/// against the nightly toolchain's own libLLVM (Debian's LLVM is too old), in CARGO_HOME/bin,
/// rebuilt when nightly changes.
fn setup() -> Result<()> {
    const BPF_LINKER: &str = "0.13.0";
    let started = Instant::now();
    let nightly = |args: &[&str]| -> Result<String> {
        let out = Command::new("rustc")
            .arg("+nightly")
            .args(args)
            .output()
            .context("run rustc +nightly")?;
        if !out.status.success() {
            bail!("rustc +nightly {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let sysroot = PathBuf::from(nightly(&["--print", "sysroot"])?);
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        let mut c = Command::new("rustup");
        c.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
        run(c)?;
    }
    let version = nightly(&["-vV"])?;
    let field = |name: &str| {
        version.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned())
    };
    let commit = field("commit-hash:").context("nightly commit hash")?;
    let llvm_major = field("LLVM version:")
        .and_then(|v| v.split('.').next().map(str::to_owned))
        .context("nightly LLVM version")?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let linker = cargo_home.join("bin/bpf-linker");
    let stamp = cargo_home.join("bin/.bpf-linker.lb-stamp");
    let want = format!("bpf-linker {BPF_LINKER} for nightly {commit}");
    let have = std::fs::read_to_string(&stamp).unwrap_or_default();
    let works = Command::new(&linker).arg("--version").output().is_ok_and(|o| o.status.success());
    if have.trim() == want && works {
        eprintln!("eBPF toolchain ready ({want}) in {:.1?}", started.elapsed());
        return Ok(());
    }
    // bpf-linker links libLLVM from LLVM_PREFIX/lib; the nightly sysroot ships it under a
    // versioned name. The prefix keeps both names so the RUNPATH bpf-linker embeds resolves.
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .context("no libLLVM.so.* in the nightly sysroot")?;
    let prefix = cargo_home.join("lb-llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    let file_name = lib.file_name().context("libLLVM name")?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), file_name] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)?;
    }
    let mut c = cargo();
    c.args(["install", "bpf-linker", "--version", BPF_LINKER, "--locked", "--force"])
        .args(["--no-default-features", "--features", &format!("llvm-{llvm_major}"), "--root"])
        .arg(&cargo_home)
        .env("LLVM_PREFIX", &prefix);
    run(c)?;
    std::fs::write(&stamp, &want)?;
    eprintln!("installed {want} in {:.1?}", started.elapsed());
    Ok(())
}

/// Build lb-ebpf for the bpfel target. lb/build.rs runs the same command (and embeds the result),
/// so a plain `cargo build` never uses a stale object; this task is for working on the eBPF
/// side alone.
fn build_ebpf() -> Result<()> {
    setup()?;
    let target_dir = root().join("target/ebpf");
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "build", "-p", "lb-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(root())
        .env("RUSTFLAGS", "-Cdebuginfo=2 -Clink-arg=--btf")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    run(c)?;
    println!("{}", target_dir.join("bpfel-unknown-none/release/lb-ebpf").display());
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    setup()?;
    // The ejection tests inject packet loss with nftables.
    ensure_tool("nft", "nftables")?;
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run(fmt)?;
    let mut clippy = cargo();
    clippy.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
    run(clippy)?;
    let mut build = cargo();
    build.args(["build", "-p", "lb"]);
    run(build)?;
    let mut t = cargo();
    t.arg("test").args(extra).env("LB_BIN", root().join("target/debug/lb"));
    run_tests(t)
}

/// Run a `cargo test` command, echoing its output, and close with one summary line
/// (`N passed, M failed`) over every test binary it ran.
fn run_tests(mut c: Command) -> Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("+ {c:?}");
    let mut child =
        c.stdout(Stdio::piped()).spawn().with_context(|| format!("cannot run {c:?}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split(';') {
                    let mut words = part.split_whitespace().rev();
                    let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                        continue;
                    };
                    let n: u64 = n.parse().unwrap_or(0);
                    match kind {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    println!("\n{passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

fn demo(extra: &[String]) -> Result<()> {
    // Without the eBPF toolchain the demo still runs (telemetry off, said at startup).
    if let Err(e) = setup() {
        eprintln!("eBPF toolchain setup failed ({e:#}); the demo runs without kernel telemetry");
    }
    let mut build = cargo();
    build.args(["build", "-q", "-p", "lb"]);
    run(build)?;
    let mut c = Command::new(root().join("target/debug/lb"));
    c.arg("demo").args(extra);
    run(c)
}

/// A process killed when dropped.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(port: u16) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on port {port} after 15 s")
}

fn ensure_tool(tool: &str, package: &str) -> Result<()> {
    if Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()?
        .success()
    {
        return Ok(());
    }
    eprintln!("{tool} not found: installing Debian package {package}");
    let mut c = Command::new("apt-get");
    c.args(["install", "-y", "-qq", package]);
    if run(c).is_err() {
        let mut up = Command::new("apt-get");
        up.args(["update", "-qq"]);
        run(up)?;
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "-qq", package]);
        run(c)?;
    }
    Ok(())
}

struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn parse_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

fn wrk(url: &str, cpu: &str, secs: u64, conns: u32) -> Result<WrkResult> {
    let out = Command::new("taskset")
        .args([
            "-c",
            cpu,
            "wrk",
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            url,
        ])
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .context("wrk printed no Requests/sec")?;
    let p50 = field("50%").and_then(|v| parse_ms(&v)).unwrap_or(f64::NAN);
    let p99 = field("99%").and_then(|v| parse_ms(&v)).unwrap_or(f64::NAN);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("wrk reported errors:\n{text}");
    }
    Ok(WrkResult { rps, p50_ms: p50, p99_ms: p99 })
}

fn bench(args: &[String]) -> Result<()> {
    let mut secs = 10u64;
    let mut conns = 50u32;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--duration" => secs = it.next().context("--duration SECS")?.parse()?,
            "--connections" => conns = it.next().context("--connections N")?.parse()?,
            other => bail!("unknown bench option {other}"),
        }
    }
    ensure_tool("wrk", "wrk")?;
    ensure_tool("taskset", "util-linux")?;
    let mut build = cargo();
    build.args(["build", "--release", "-q", "-p", "lb"]);
    run(build)?;
    let lb = root().join("target/release/lb");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (proxy_cpu, load_cpu) = if cpus >= 2 { ("0", "1") } else { ("0", "0") };

    let member_port = free_port()?;
    let _member = Guard(
        Command::new("taskset")
            .args(["-c", load_cpu])
            .arg(&lb)
            .args(["member", "--bind", &format!("127.0.0.1:{member_port}"), "--body-size", "100"])
            .env("RUST_LOG", "warn")
            .spawn()
            .context("start bench member")?,
    );
    wait_port(member_port)?;
    let dir = std::env::temp_dir().join(format!("lb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Two lb processes on CPU 0, one with kernel telemetry off and one with eBPF; only one carries
    // load at a time.
    let mut lbs = Vec::new();
    for source in ["off", "ebpf"] {
        let (lb_port, admin_port) = (free_port()?, free_port()?);
        let cfg = dir.join(format!("bench-{source}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[admin]\nbind = \"127.0.0.1:{admin_port}\"\n\n[telemetry]\nsource = \"{source}\"\n\n[[listener]]\nname = \"bench\"\nbind = \"127.0.0.1:{lb_port}\"\naccess_log = false\nmax_keepalive_requests = 0\n\n  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"balancer://bench/\"\n\n[balancer.bench]\n  [[balancer.bench.member]]\n  url = \"http://127.0.0.1:{member_port}\"\n"
            ),
        )?;
        let guard = Guard(
            Command::new("taskset")
                .args(["-c", proxy_cpu])
                .arg(&lb)
                .args(["run", "--config"])
                .arg(&cfg)
                .env("RUST_LOG", "warn")
                .spawn()
                .context("start lb")?,
        );
        wait_port(lb_port)?;
        lbs.push((source, lb_port, guard));
    }

    println!("HTTP/1.1 keep-alive, 100-byte responses, {conns} connections, {secs} s per run");
    println!(
        "lb pinned to CPU {proxy_cpu}; wrk and the member pinned to CPU {load_cpu}; access log off\n"
    );
    let direct_url = format!("http://127.0.0.1:{member_port}/");
    // Warm up every path, then alternate so drift hits all alike.
    wrk(&direct_url, load_cpu, 2, conns)?;
    for (_, port, _) in &lbs {
        wrk(&format!("http://127.0.0.1:{port}/"), load_cpu, 2, conns)?;
    }
    println!(
        "{:<6} {:<14} {:>10} {:>9} {:>9} {:>8}",
        "round", "path", "rps", "p50 ms", "p99 ms", "ratio"
    );
    for round in 1..=2 {
        let d = wrk(&direct_url, load_cpu, secs, conns)?;
        println!(
            "{round:<6} {:<14} {:>10.0} {:>9.3} {:>9.3} {:>8}",
            "direct", d.rps, d.p50_ms, d.p99_ms, "1.000"
        );
        for (source, port, _) in &lbs {
            let p = wrk(&format!("http://127.0.0.1:{port}/"), load_cpu, secs, conns)?;
            println!(
                "{round:<6} {:<14} {:>10.0} {:>9.3} {:>9.3} {:>8.3}",
                format!("lb ({source})"),
                p.rps,
                p.p50_ms,
                p.p99_ms,
                p.rps / d.rps
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
