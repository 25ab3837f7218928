//! Builds `lb-ebpf` (nightly, `bpfel-unknown-none`, bpf-linker) so that lb embeds an eBPF object
//! made from the current sources, never a stale one.
//!
//! Where the eBPF toolchain is missing (`cargo xtask setup` installs it) or `LB_NO_EBPF` is set,
//! lb still builds: the object is left out and lb says at startup why kernel telemetry is off.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(lb_ebpf)");
    println!("cargo:rerun-if-env-changed=LB_NO_EBPF");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
    for p in ["lb-ebpf/src", "lb-ebpf/Cargo.toml", "lb-common/src", "lb-common/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    match build(&root) {
        Ok(obj) => {
            println!("cargo:rustc-cfg=lb_ebpf");
            println!("cargo:rustc-env=LB_EBPF_OBJECT={}", obj.display());
        }
        Err(reason) => {
            println!("cargo:warning=lb is built without its eBPF object: {reason}");
            println!("cargo:rustc-env=LB_EBPF_MISSING={reason}");
        }
    }
}

/// The same nightly build as `cargo xtask build-ebpf`.
fn build(root: &Path) -> Result<PathBuf, String> {
    if std::env::var_os("LB_NO_EBPF").is_some() {
        return Err("LB_NO_EBPF was set at build time".into());
    }
    let target_dir = root.join("target").join("ebpf");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "-p", "lb-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(root)
        .env("RUSTFLAGS", "-Cdebuginfo=2 -Clink-arg=--btf");
    // The outer build's settings must not leak into the nested nightly build.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    // bpf-linker is installed by `cargo xtask setup` into CARGO_HOME/bin.
    if let Some(home) = std::env::var_os("CARGO_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into_os_string())
    }) {
        let bin = PathBuf::from(home).join("bin");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin];
        paths.extend(std::env::split_paths(&path));
        if let Ok(p) = std::env::join_paths(paths) {
            cmd.env("PATH", p);
        }
    }
    let out =
        cmd.output().map_err(|e| format!("cannot run rustup ({e}); run `cargo xtask setup`"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or_else(|| err.lines().last().unwrap_or("unknown error"));
        return Err(format!("eBPF build failed ({line}); run `cargo xtask setup`"));
    }
    let obj = target_dir.join("bpfel-unknown-none/release/lb-ebpf");
    if !obj.exists() {
        return Err(format!("eBPF build produced no {}", obj.display()));
    }
    // Embed a copy from OUT_DIR so a later nested build cannot change what this build embeds.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let copy = out_dir.join("lb-ebpf.o");
    std::fs::copy(&obj, &copy).map_err(|e| format!("copy eBPF object: {e}"))?;
    Ok(copy)
}
