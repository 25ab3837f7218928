//! `cargo xtask dist`: the lb binary to ship, built with profile-guided optimisation.
//!
//! A request through lb runs code from hyper, h2, tokio, rustls and lb itself, and callgrind
//! shows lb losing as much time to instruction-cache misses as to the instructions beyond
//! HAProxy's. Without a profile rustc does not know which paths are hot, so it cannot lay them
//! out together or inline where the calls are frequent. So lb is built once with counters
//! (`-Cprofile-generate`) and run under the bench's traffic, then built again from what the
//! counters saw (`-Cprofile-use`). The traffic is HTTP/1.1 with small and large answers, h2c,
//! TLS, h2 and L4 TCP, sent to three nginx members, with lb in its default configuration.
//! The result is `target/dist/lb`, and `cargo xtask bench` measures it unless given `--lb-bin`.
//! Code the training never runs (failing members, sticky routes, the admin pages) is laid out
//! as cold code. It behaves the same; only the hot path is arranged for speed.
use super::{Stage, VARIANTS, cpus, load, peers, url};
use crate::{cargo, root, run};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Build `target/dist/lb`; its path. `--seconds N`: how long each kind of traffic trains it.
pub fn dist(args: &[String]) -> Result<PathBuf> {
    let secs = match args {
        [] => 5,
        [flag, n] if flag == "--seconds" => n.parse().context("--seconds N")?,
        _ => bail!("usage: cargo xtask dist [--seconds N]"),
    };
    super::install()?;
    let profdata = llvm_profdata()?;
    let out = root().join("target/dist");
    let profiles = out.join("profiles");
    let instrumented =
        build(&out.join("gen"), &format!("-Cprofile-generate={}", profiles.display()))?;
    // The build scripts and proc macros built with counters wrote profiles too; only lb's count.
    let _ = std::fs::remove_dir_all(&profiles);
    train(&instrumented, Duration::from_secs(secs))?;
    let raw: Vec<PathBuf> = std::fs::read_dir(&profiles)
        .with_context(|| format!("no profiles in {}", profiles.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "profraw"))
        .collect();
    if raw.is_empty() {
        bail!("the instrumented lb wrote no profile into {}", profiles.display());
    }
    let merged = out.join("lb.profdata");
    let mut m = Command::new(&profdata);
    m.arg("merge").arg("-o").arg(&merged).args(&raw);
    run(m)?;
    let optimised = build(&out.join("use"), &format!("-Cprofile-use={}", merged.display()))?;
    let shipped = out.join("lb");
    std::fs::copy(&optimised, &shipped)
        .with_context(|| format!("copy {} to {}", optimised.display(), shipped.display()))?;
    eprintln!("lb built with profile-guided optimisation: {}", shipped.display());
    Ok(shipped)
}

/// llvm-profdata of the toolchain that builds lb (rustup's `llvm-tools` component, which
/// matches rustc's LLVM; Debian's does not).
fn llvm_profdata() -> Result<PathBuf> {
    let mut add = Command::new("rustup");
    add.args(["component", "add", "llvm-tools"]);
    run(add)?;
    let text = |args: &[&str]| -> Result<String> {
        let out = Command::new("rustc").args(args).output().context("run rustc")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let sysroot = text(&["--print", "sysroot"])?;
    let verbose = text(&["-vV"])?;
    let host =
        verbose.lines().find_map(|l| l.strip_prefix("host: ")).context("rustc -vV: no host")?;
    let tool = Path::new(sysroot.trim()).join("lib/rustlib").join(host).join("bin/llvm-profdata");
    if !tool.exists() {
        bail!("{} is missing after `rustup component add llvm-tools`", tool.display());
    }
    Ok(tool)
}

/// A release build of lb into `dir` with one more rustc flag; the binary's path. The eBPF
/// object is built by lb's build script, which keeps these flags out of it.
fn build(dir: &Path, flag: &str) -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "--release", "-q", "-p", "lb"])
        .env("CARGO_TARGET_DIR", dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flag);
    run(c)?;
    Ok(dir.join("release/lb"))
}

/// Run the instrumented lb under each of the bench's variants for `each`, then stop it the way
/// an operator does (SIGTERM), so that it writes its profile as it exits.
fn train(bin: &Path, each: Duration) -> Result<()> {
    let (proxy_cpu, load_cpu) = cpus();
    let stage = Stage::new("lb-train", load_cpu)?;
    let (members, cert, key) = (&stage.members, &stage.cert, &stage.key);
    let variant = peers::LbVariant::Default;
    let mut lb = peers::lb(&stage.dir, bin, proxy_cpu, members, cert, key, variant, &[])?;
    for v in VARIANTS {
        let r = load::run(v.tool, &url(v, (v.port)(&lb.ports)), load_cpu, each, 50)?;
        eprintln!("   trained on {}: {:.0} requests", v.name, r.requests);
    }
    let pid = lb.pid().to_string();
    let mut term = Command::new("kill");
    term.args(["-TERM", &pid]);
    run(term)?;
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if lb.guard.0.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the instrumented lb did not exit within 30 s of SIGTERM, so it wrote no profile")
}

#[cfg(test)]
mod tests {
    #[test]
    fn arguments_are_checked_before_anything_is_built() {
        for bad in [&["--seconds"][..], &["--seconds", "x"], &["--fast"]] {
            let args: Vec<String> = bad.iter().map(|a| (*a).to_owned()).collect();
            let err = super::dist(&args).expect_err("refused");
            let text = format!("{err:#}");
            assert!(text.contains("--seconds N"), "{bad:?}: {text}");
        }
    }
}
