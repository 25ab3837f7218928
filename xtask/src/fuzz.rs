//! `cargo xtask fuzz [--seconds N] [TARGET…]`: every cargo-fuzz target in `fuzz/` (libFuzzer,
//! nightly, address sanitizer), each for N seconds (default 60), starting from the committed
//! seeds in `fuzz/corpus/<target>/`. New inputs go to `fuzz/corpus-run/` (not committed);
//! a crash or a leak stops the run and names the input under `fuzz/artifacts/`.
//!
//! Limits make unbounded allocation a failure: 256 MiB for one allocation, 1 GiB in all.
use super::{root, run};
use anyhow::{Context, Result, bail};
use std::process::{Command, Stdio};

/// The pinned cargo-fuzz release.
const CARGO_FUZZ: &str = "0.13.1";

fn nightly_cargo() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"])
        .current_dir(root().join("fuzz"))
        // lb's build script would build the eBPF object with the sanitizer's flags.
        .env("LB_NO_EBPF", "1")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTFLAGS");
    c
}

fn ensure_cargo_fuzz() -> Result<()> {
    let ok = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::piped())
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ)
        });
    if ok {
        return Ok(());
    }
    let mut c = Command::new("cargo");
    c.args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    run(c)
}

/// The targets, from `fuzz/Cargo.toml`.
fn targets() -> Result<Vec<String>> {
    let manifest =
        std::fs::read_to_string(root().join("fuzz/Cargo.toml")).context("read fuzz/Cargo.toml")?;
    let names = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "lb-fuzz")
        .map(str::to_owned)
        .collect();
    Ok(names)
}

pub fn fuzz(args: &[String]) -> Result<()> {
    let mut seconds = 60u64;
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = it.next().context("--seconds N")?.parse()?,
            "--help" | "-h" => {
                println!(
                    "cargo xtask fuzz [--seconds N] [TARGET...]  targets: {}",
                    targets()?.join(", ")
                );
                return Ok(());
            }
            t => only.push(t.to_owned()),
        }
    }
    super::setup()?;
    ensure_cargo_fuzz()?;
    let all = targets()?;
    if let Some(t) = only.iter().find(|t| !all.contains(t)) {
        bail!("unknown fuzz target {t}: expected some of {}", all.join(", "));
    }
    let chosen: Vec<&String> = all.iter().filter(|t| only.is_empty() || only.contains(t)).collect();
    for t in chosen {
        let seeds = root().join("fuzz/corpus").join(t);
        let scratch = root().join("fuzz/corpus-run").join(t);
        std::fs::create_dir_all(&scratch)?;
        let mut c = nightly_cargo();
        c.args(["fuzz", "run", t])
            .arg(&scratch)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args([
                "-rss_limit_mb=1024",
                "-malloc_limit_mb=256",
                "-timeout=10",
                "-print_final_stats=1",
            ]);
        run(c).with_context(|| {
            format!("fuzz target {t} failed (the input is under fuzz/artifacts/{t}/)")
        })?;
    }
    Ok(())
}
