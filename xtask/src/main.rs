//! Project tasks: `cargo xtask test | demo | bench | dist | fuzz`.
//!
//! `test` is what CI runs (the README's test command): formatting, lints, build, every test.
//! `demo` builds lb and starts its built-in demo. `bench` measures lb side by side with HAProxy
//! and nginx against direct-to-member traffic (see `bench`). `dist` builds the lb binary to ship,
//! with profile-guided optimisation (see `bench::pgo`). `fuzz` runs the cargo-fuzz targets
//! (see `fuzz`); `test` runs each of them briefly too.
mod bench;
mod fuzz;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

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
        "bench" => bench::bench(rest),
        "dist" => bench::pgo::dist(rest).map(|_| ()),
        "fuzz" => fuzz::fuzz(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\n  setup  install the eBPF toolchain (nightly rust-src, bpf-linker); quick when done\n  build-ebpf  setup, then build the eBPF object (lb's build script does the same and embeds it)\n  test   setup, fmt check, clippy, build, run every test (what CI runs)\n  demo   build lb and start `lb demo` (args are passed on)\n  bench  lb (the `dist` build), HAProxy and nginx side by side [--duration SECS] [--connections N] [--reps N] [--variants http-100,http-64k,http-1m,h2c,tls,h2,l4-100,l4-1m] [--no-extras] [--cost] [--lb-bin PATH] [--congestion ALGORITHM]\n  dist   the lb binary to ship, built with profile-guided optimisation from the bench's traffic: target/dist/lb [--seconds N]\n  fuzz   every fuzz target for N seconds [--seconds N] [TARGET...]"
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
    // Probes are tested against a real nginx member.
    ensure_tool("nginx", "nginx")?;
    // `lb health --watch` is tested in a real terminal, the balancer-manager page in Chromium.
    ensure_tool("tmux", "tmux")?;
    ensure_tool("chromium", "chromium")?;
    ensure_tool("chromedriver", "chromium-driver")?;
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
    run_tests(t)?;
    // Each fuzz target, briefly: a regression on a seed or a shallow crash fails the run.
    if extra.is_empty() {
        fuzz::fuzz(&["--seconds".to_owned(), FUZZ_SECONDS_IN_TEST.to_string()])?;
    }
    Ok(())
}

/// How long `cargo xtask test` runs each fuzz target.
const FUZZ_SECONDS_IN_TEST: u64 = 15;

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

/// A process killed when dropped, with its children (nginx's workers would outlive a killed
/// master).
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let children = children(self.0.id());
        let _ = self.0.kill();
        let _ = self.0.wait();
        for child in children {
            let _ = Command::new("kill").args(["-9", &child.to_string()]).status();
        }
    }
}

/// The child processes of `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|k| k.parse().ok())
        .collect()
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
