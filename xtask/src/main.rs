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
                "usage: cargo xtask <task>\n\n  setup  install the eBPF toolchain (nightly rust-src, bpf-linker); quick when done\n  build-ebpf  setup, then build the eBPF object (lb's build script does the same and embeds it)\n  test   setup, fmt check, clippy, build, run every test (what CI runs)\n  demo   build lb and start `lb demo` (args are passed on)\n  bench  lb vs direct-to-member with wrk [--duration SECS] [--connections N] [--rounds N] [--variants http,tcp,tcp-1m,tls]"
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
    // The ejection tests inject packet loss with nftables; the TLS tests run curl; the netns
    // tests need ip and tc.
    ensure_tool("nft", "nftables")?;
    ensure_tool("curl", "curl")?;
    ensure_tool("ip", "iproute2")?;
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

/// One path a benchmark variant measures.
struct Route {
    label: String,
    url: String,
    /// The path the ratio is taken against (None: this is a baseline).
    baseline: Option<usize>,
}

/// A member process for the benchmark.
fn bench_member(
    lb: &Path,
    cpu: &str,
    size: usize,
    tls: Option<(&Path, &Path)>,
) -> Result<(Guard, u16)> {
    let port = free_port()?;
    let mut c = Command::new("taskset");
    c.args(["-c", cpu]).arg(lb);
    c.args(["member", "--bind", &format!("127.0.0.1:{port}"), "--body-size", &size.to_string()]);
    if let Some((cert, key)) = tls {
        c.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let g = Guard(
        c.env("RUST_LOG", "warn,rustls=error")
            .stdout(Stdio::null())
            .spawn()
            .context("start bench member")?,
    );
    wait_port(port)?;
    Ok((g, port))
}

/// Start `lb run` on `cpu` with this config; returns it once `port` accepts.
fn bench_lb(lb: &Path, cpu: &str, cfg: &Path, port: u16) -> Result<Guard> {
    let g = Guard(
        Command::new("taskset")
            .args(["-c", cpu])
            .arg(lb)
            .args(["run", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "warn,rustls=error")
            .spawn()
            .context("start lb")?,
    );
    wait_port(port)?;
    Ok(g)
}

const VARIANTS: &[&str] = &["http", "tcp", "tcp-1m", "tls"];

fn bench(args: &[String]) -> Result<()> {
    let mut secs = 10u64;
    let mut conns = 50u32;
    let mut rounds = 3u32;
    let mut variants: Vec<String> = VARIANTS.iter().map(|v| v.to_string()).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--duration" => secs = it.next().context("--duration SECS")?.parse()?,
            "--connections" => conns = it.next().context("--connections N")?.parse()?,
            "--rounds" => rounds = it.next().context("--rounds N")?.parse()?,
            "--variants" => {
                variants =
                    it.next().context("--variants a,b")?.split(',').map(str::to_owned).collect();
                if let Some(v) = variants.iter().find(|v| !VARIANTS.contains(&v.as_str())) {
                    bail!("unknown variant {v}: expected some of {VARIANTS:?}");
                }
            }
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
    let dir = std::env::temp_dir().join(format!("lb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // A self-signed certificate for the TLS variant, made now.
    let cert = rcgen::generate_simple_self_signed(vec!["bench.test".to_owned()])?;
    let (cert_path, key_path) = (dir.join("bench.pem"), dir.join("bench.key"));
    std::fs::write(&cert_path, cert.cert.pem())?;
    std::fs::write(&key_path, cert.signing_key.serialize_pem())?;

    let mut guards = Vec::new();
    let (g, m100) = bench_member(&lb, load_cpu, 100, None)?;
    guards.push(g);
    let (g, m1m) = bench_member(&lb, load_cpu, 1024 * 1024, None)?;
    guards.push(g);
    let (g, mtls) = bench_member(&lb, load_cpu, 100, Some((&cert_path, &key_path)))?;
    guards.push(g);

    // One lb process with telemetry off holds every listener; a second one with eBPF holds the
    // HTTP listener. Both run on the proxy CPU; only one path carries load at a time.
    let mut cfg = String::from("[admin]\nbind = \"127.0.0.1:0\"\n[telemetry]\nsource = \"off\"\n");
    let mut listener = |name: &str, extra: &str| -> Result<u16> {
        let port = free_port()?;
        cfg.push_str(&format!(
            "\n[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\naccess_log = false\nmax_keepalive_requests = 0\n{extra}\n"
        ));
        Ok(port)
    };
    let http_pp = |b: &str| {
        format!("  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"balancer://{b}/\"\n")
    };
    let p_http = listener("http", &http_pp("h100"))?;
    let p_tcp = listener("tcp", "protocol = \"tcp\"\nbalancer = \"t100\"\nsplice = true")?;
    let p_tcp_buf = listener("tcp-buf", "protocol = \"tcp\"\nbalancer = \"t100\"\nsplice = false")?;
    let p_1m = listener("tcp-1m", "protocol = \"tcp\"\nbalancer = \"t1m\"\nsplice = true")?;
    let p_1m_buf =
        listener("tcp-1m-buf", "protocol = \"tcp\"\nbalancer = \"t1m\"\nsplice = false")?;
    let tls_block = format!(
        "  [[listener.tls]]\n  cert = \"{}\"\n  key = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    );
    let p_tls = listener("tls", &format!("{tls_block}{}", http_pp("h100")))?;
    cfg.push_str(&format!(
        "\n[balancer.h100]\n[[balancer.h100.member]]\nurl = \"http://127.0.0.1:{m100}\"\n[balancer.t100]\n[[balancer.t100.member]]\nurl = \"tcp://127.0.0.1:{m100}\"\n[balancer.t1m]\n[[balancer.t1m.member]]\nurl = \"tcp://127.0.0.1:{m1m}\"\n"
    ));
    let off_cfg = dir.join("bench-off.toml");
    std::fs::write(&off_cfg, &cfg)?;
    guards.push(bench_lb(&lb, proxy_cpu, &off_cfg, p_tls)?);
    let p_ebpf = free_port()?;
    let ebpf_cfg = dir.join("bench-ebpf.toml");
    std::fs::write(
        &ebpf_cfg,
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n[telemetry]\nsource = \"ebpf\"\n[[listener]]\nname = \"http\"\nbind = \"127.0.0.1:{p_ebpf}\"\naccess_log = false\nmax_keepalive_requests = 0\n{}\n[balancer.h100]\n[[balancer.h100.member]]\nurl = \"http://127.0.0.1:{m100}\"\n",
            http_pp("h100")
        ),
    )?;
    let ebpf = variants.iter().any(|v| v == "http");
    if ebpf {
        guards.push(bench_lb(&lb, proxy_cpu, &ebpf_cfg, p_ebpf)?);
    }

    let url = |scheme: &str, port: u16| format!("{scheme}://127.0.0.1:{port}/");
    for v in &variants {
        let (paths, c): (Vec<Route>, u32) = match v.as_str() {
            "http" => (
                vec![
                    Route { label: "direct".into(), url: url("http", m100), baseline: None },
                    Route {
                        label: "lb http (off)".into(),
                        url: url("http", p_http),
                        baseline: Some(0),
                    },
                    Route {
                        label: "lb http (ebpf)".into(),
                        url: url("http", p_ebpf),
                        baseline: Some(0),
                    },
                ],
                conns,
            ),
            "tcp" => (
                vec![
                    Route { label: "direct".into(), url: url("http", m100), baseline: None },
                    Route {
                        label: "lb tcp splice".into(),
                        url: url("http", p_tcp),
                        baseline: Some(0),
                    },
                    Route {
                        label: "lb tcp buffered".into(),
                        url: url("http", p_tcp_buf),
                        baseline: Some(0),
                    },
                ],
                conns,
            ),
            "tcp-1m" => (
                vec![
                    Route { label: "direct".into(), url: url("http", m1m), baseline: None },
                    Route {
                        label: "lb tcp splice".into(),
                        url: url("http", p_1m),
                        baseline: Some(0),
                    },
                    Route {
                        label: "lb tcp buffered".into(),
                        url: url("http", p_1m_buf),
                        baseline: Some(0),
                    },
                ],
                conns.min(8),
            ),
            _ => (
                vec![
                    Route { label: "direct tcp".into(), url: url("http", m100), baseline: None },
                    Route { label: "direct tls".into(), url: url("https", mtls), baseline: None },
                    Route {
                        label: "lb tls→http".into(),
                        url: url("https", p_tls),
                        baseline: Some(1),
                    },
                ],
                conns,
            ),
        };
        println!(
            "\n== {v}: HTTP/1.1 keep-alive, {} responses, {c} connections, {secs} s per run, {rounds} rounds",
            if v == "tcp-1m" { "1 MiB" } else { "100-byte" }
        );
        println!(
            "lb pinned to CPU {proxy_cpu}; wrk and members pinned to CPU {load_cpu}; access log off"
        );
        for p in &paths {
            wrk(&p.url, load_cpu, 2, c)?;
        }
        println!(
            "{:<6} {:<18} {:>10} {:>9} {:>9} {:>12}",
            "round", "path", "rps", "p50 ms", "p99 ms", "ratio"
        );
        // rps[path][round]
        let mut all: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        for round in 1..=rounds {
            for (i, p) in paths.iter().enumerate() {
                let r = wrk(&p.url, load_cpu, secs, c)?;
                let ratio = match p.baseline {
                    None => "baseline".to_owned(),
                    Some(b) => format!("{:.3}", r.rps / all[b][round as usize - 1]),
                };
                println!(
                    "{round:<6} {:<18} {:>10.0} {:>9.3} {:>9.3} {:>12}",
                    p.label, r.rps, r.p50_ms, r.p99_ms, ratio
                );
                all[i].push(r.rps);
            }
        }
        for (i, p) in paths.iter().enumerate() {
            let Some(b) = p.baseline else { continue };
            // Every baseline before this path's own (direct TCP and direct TLS for tls).
            for base in (0..paths.len()).filter(|&j| j <= b && paths[j].baseline.is_none()) {
                let r: Vec<f64> = all[i].iter().zip(&all[base]).map(|(x, d)| x / d).collect();
                let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = r.iter().copied().fold(0.0, f64::max);
                let mean = r.iter().sum::<f64>() / r.len().max(1) as f64;
                println!(
                    "  {:<18} ratio to {}: mean {mean:.3}, range {lo:.3}–{hi:.3} over {} rounds",
                    p.label,
                    paths[base].label,
                    r.len()
                );
            }
        }
    }
    drop(guards);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
