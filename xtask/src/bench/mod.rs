//! `cargo xtask bench`: lb side by side with HAProxy and nginx, in the same run.
//!
//! Three nginx members serve static files on the load CPU; each proxy (HAProxy, nginx, lb, one
//! worker or thread each) runs pinned to the proxy CPU; wrk (HTTP/1.1, TLS, L4) or h2load (h2c,
//! h2) loads from the load CPU. Per variant every path — direct to a member, then each proxy —
//! runs `reps` times in an order that rotates each rep; the table gives medians, the ratio of
//! each proxy's rps to direct-to-member rps of the same rep (median and range), the proxy's
//! user and system CPU per request, and its resident memory idle, at peak and after the load.
//! It refuses to run on a busy machine. The report names the kernel's TCP congestion control,
//! which `--congestion` sets for the run alone. Tables go to `target/bench/`. The lb measured is
//! the build to ship, `cargo xtask dist` (see `pgo`), unless `--lb-bin` names another.
mod congestion;
mod cost;
mod load;
mod peers;
pub mod pgo;
mod procstat;

use crate::{cargo, root, run};
use anyhow::{Context, Result, bail};
use load::Tool;
use peers::{LbVariant, Ports, Proxy};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::time::{Duration, Instant};

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_port(port: u16, within: Duration) -> Result<()> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on port {port} after {within:?}")
}

/// The proxy CPU and the load CPU (members and load generators).
fn cpus() -> (&'static str, &'static str) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 { ("0", "1") } else { ("0", "0") }
}

/// What every proxy measured (or trained) stands on: a scratch directory, a certificate made
/// for the run, the files the members serve, and the three members. Dropping it stops the
/// members and removes the directory.
struct Stage {
    dir: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    /// Certificate and key in one file, as HAProxy takes them.
    pem: std::path::PathBuf,
    /// The members' ports.
    members: Vec<u16>,
    _guards: Vec<crate::Guard>,
}

impl Stage {
    fn new(tag: &str, load_cpu: &str) -> Result<Stage> {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let cert = rcgen::generate_simple_self_signed(vec!["bench.test".to_owned()])?;
        let (cert_path, key, pem) =
            (dir.join("cert.pem"), dir.join("key.pem"), dir.join("both.pem"));
        std::fs::write(&cert_path, cert.cert.pem())?;
        std::fs::write(&key, cert.signing_key.serialize_pem())?;
        std::fs::write(&pem, format!("{}{}", cert.cert.pem(), cert.signing_key.serialize_pem()))?;
        let www = peers::www(&dir)?;
        let (guards, members) = peers::members(&dir, &www, load_cpu)?;
        Ok(Stage { dir, cert: cert_path, key, pem, members, _guards: guards })
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One row group of the table: what is loaded, how, and through which port of a proxy.
struct Variant {
    name: &'static str,
    what: &'static str,
    tool: Tool,
    path: &'static str,
    tls: bool,
    port: fn(&Ports) -> u16,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "http-100",
        what: "HTTP/1.1 100 B keep-alive",
        tool: Tool::Wrk,
        path: "/100.bin",
        tls: false,
        port: |p| p.http,
    },
    Variant {
        name: "http-64k",
        what: "HTTP/1.1 64 KiB",
        tool: Tool::Wrk,
        path: "/64k.bin",
        tls: false,
        port: |p| p.http,
    },
    Variant {
        name: "http-1m",
        what: "HTTP/1.1 1 MiB",
        tool: Tool::Wrk,
        path: "/1m.bin",
        tls: false,
        port: |p| p.http,
    },
    Variant {
        name: "h2c",
        what: "h2c → HTTP/1.1, 100 B",
        tool: Tool::H2load,
        path: "/100.bin",
        tls: false,
        port: |p| p.h2c,
    },
    Variant {
        name: "tls",
        what: "TLS 1.3 termination, 100 B",
        tool: Tool::Wrk,
        path: "/100.bin",
        tls: true,
        port: |p| p.tls,
    },
    Variant {
        name: "h2",
        what: "h2 over TLS → HTTP/1.1, 100 B",
        tool: Tool::H2load,
        path: "/100.bin",
        tls: true,
        port: |p| p.tls,
    },
    Variant {
        name: "l4-100",
        what: "L4 TCP, 100 B",
        tool: Tool::Wrk,
        path: "/100.bin",
        tls: false,
        port: |p| p.l4,
    },
    Variant {
        name: "l4-1m",
        what: "L4 TCP, 1 MiB",
        tool: Tool::Wrk,
        path: "/1m.bin",
        tls: false,
        port: |p| p.l4,
    },
];

struct Options {
    time: Duration,
    conns: u32,
    reps: usize,
    variants: Vec<&'static Variant>,
    /// Also measure lb with the access log off and with telemetry off.
    extras: bool,
    /// Measure instructions, cache misses and system calls per request instead, lb's beside
    /// HAProxy's and a bare hyper proxy's (see `cost`).
    cost: bool,
    /// An lb binary to measure instead of building one (to compare two builds).
    lb_bin: Option<std::path::PathBuf>,
    /// The TCP congestion control for the run (None: the kernel's default).
    congestion: Option<String>,
}

fn options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        time: Duration::from_secs(10),
        conns: 50,
        reps: 3,
        variants: VARIANTS.iter().collect(),
        extras: true,
        cost: false,
        lb_bin: None,
        congestion: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--duration" => {
                o.time = Duration::from_secs(it.next().context("--duration SECS")?.parse()?)
            }
            "--connections" => o.conns = it.next().context("--connections N")?.parse()?,
            "--reps" | "--rounds" => o.reps = it.next().context("--reps N")?.parse()?,
            "--no-extras" => o.extras = false,
            "--cost" => o.cost = true,
            "--lb-bin" => o.lb_bin = Some(it.next().context("--lb-bin PATH")?.into()),
            "--congestion" => {
                o.congestion = Some(it.next().context("--congestion ALGORITHM")?.clone())
            }
            "--variants" => {
                let names = it.next().context("--variants a,b")?;
                o.variants = names
                    .split(',')
                    .map(|n| {
                        VARIANTS.iter().find(|v| v.name == n).with_context(|| {
                            let all: Vec<&str> = VARIANTS.iter().map(|v| v.name).collect();
                            format!("unknown variant {n}: expected some of {}", all.join(","))
                        })
                    })
                    .collect::<Result<_>>()?;
            }
            "--help" | "-h" => {
                let all: Vec<&str> = VARIANTS.iter().map(|v| v.name).collect();
                println!(
                    "cargo xtask bench [--duration SECS] [--connections N] [--reps N] \
                     [--variants {}] [--no-extras] [--cost] [--lb-bin PATH] \
                     [--congestion ALGORITHM]",
                    all.join(",")
                );
                std::process::exit(0);
            }
            other => bail!("unknown bench option {other} (see --help)"),
        }
    }
    if o.reps < 1 {
        bail!("--reps must be at least 1");
    }
    Ok(o)
}

fn install() -> Result<()> {
    for (tool, package) in [
        ("wrk", "wrk"),
        ("h2load", "nghttp2-client"),
        ("taskset", "util-linux"),
        ("haproxy", "haproxy"),
        ("nginx", "nginx"),
    ] {
        crate::ensure_tool(tool, package)?;
    }
    if !std::path::Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists() {
        let mut c = std::process::Command::new("apt-get");
        c.args(["install", "-y", "-qq", "libnginx-mod-stream"]);
        run(c)?;
    }
    Ok(())
}

/// What one path measured in one rep.
#[derive(Clone, Copy, Default)]
struct Sample {
    run: load::Run,
    usr_us: f64,
    sys_us: f64,
}

/// Everything measured of one path in one variant.
#[derive(Default)]
struct Series {
    samples: Vec<Sample>,
    rss_idle: f64,
    rss_peak: f64,
    rss_after: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// A path: direct to the first member, or through a proxy.
struct Path<'a> {
    label: String,
    proxy: Option<&'a Proxy>,
}

pub fn bench(args: &[String]) -> Result<()> {
    let o = options(args)?;
    install()?;
    // The binary to ship, unless another is named.
    let lb_bin = match o.lb_bin.clone() {
        Some(b) => b,
        None => pgo::dist(&[])?,
    };
    procstat::quiet(0.15)?;
    // Before any socket of the run exists; put back when this function returns.
    let congestion = congestion::Congestion::set(o.congestion.as_deref())?;
    let (proxy_cpu, load_cpu) = cpus();
    let stage = Stage::new("lb-bench", load_cpu)?;
    let (dir, cert_path, key_path, pem, ports) =
        (&stage.dir, &stage.cert, &stage.key, &stage.pem, &stage.members);
    if o.cost {
        let mut build = cargo();
        build.args(["build", "--release", "-q", "-p", "lb", "--example", "hyper_floor"]);
        run(build)?;
        let floor_bin = root().join("target/release/examples/hyper_floor");
        let s = cost::Setup {
            dir,
            lb_bin: &lb_bin,
            floor_bin: &floor_bin,
            pem,
            members: ports,
            cert: cert_path,
            key: key_path,
            proxy_cpu,
            load_cpu,
        };
        return cost::cost(&o.variants, &s);
    }
    let lb = |v| peers::lb(dir, &lb_bin, proxy_cpu, ports, cert_path, key_path, v, &[]);
    let mut proxies = vec![
        peers::haproxy(dir, proxy_cpu, ports, pem, &[])?,
        peers::nginx(dir, proxy_cpu, ports, cert_path, key_path)?,
        lb(LbVariant::Default)?,
    ];
    if o.extras {
        for v in [LbVariant::NoAccessLog, LbVariant::NoTelemetry] {
            proxies.push(lb(v)?);
        }
    }
    let mut paths = vec![Path { label: "direct".into(), proxy: None }];
    paths.extend(proxies.iter().map(|p| Path { label: p.name.clone(), proxy: Some(p) }));

    let started = std::time::SystemTime::now();
    let mut report = format!(
        "# lb vs HAProxy vs nginx\n\n{} reps × {} s, {} connections; proxies pinned to CPU {proxy_cpu}, members and load on CPU {load_cpu}. Ratio: the proxy's rps ÷ direct-to-member rps of the same rep (median, and range over reps). CPU: the proxy's user / system time per request. RSS: before the variant's first load (idle) / peak during it / 2 s after it. lb: {}.\n",
        o.reps,
        o.time.as_secs(),
        o.conns,
        lb_bin.display()
    );
    let _ = writeln!(
        report,
        "\nMachine: {}, kernel {}. {}.",
        cpu_model(),
        kernel(),
        congestion.describe()
    );
    for v in &o.variants {
        let series = measure(v, &paths, ports, &o, load_cpu)?;
        let table = render(v, &paths, &series);
        print!("{table}");
        report.push_str(&table);
    }
    let out_dir = root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let stamp = started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let file = out_dir.join(format!("bench-{stamp}.md"));
    std::fs::write(&file, &report)?;
    println!("\ntables written to {}", file.display());
    drop(proxies);
    Ok(())
}

fn url(v: &Variant, port: u16) -> String {
    format!("{}://127.0.0.1:{port}{}", if v.tls { "https" } else { "http" }, v.path)
}

fn measure(
    v: &Variant,
    paths: &[Path],
    members: &[u16],
    o: &Options,
    load_cpu: &str,
) -> Result<Vec<Series>> {
    // Direct is plain HTTP/1.1 to the first member whatever the variant: the ratio says what the
    // proxy costs (or gains) against talking to a member directly.
    let direct = format!("http://127.0.0.1:{}{}", members[0], v.path);
    let target = |p: &Path| match p.proxy {
        None => (Tool::Wrk, direct.clone()),
        Some(proxy) => (v.tool, url(v, (v.port)(&proxy.ports))),
    };
    let pids = |p: &Path| p.proxy.map(|x| procstat::family(x.pid())).unwrap_or_default();
    let mut series: Vec<Series> = paths.iter().map(|_| Series::default()).collect();
    eprintln!("== {}: {} (warm-up)", v.name, v.what);
    for (i, p) in paths.iter().enumerate() {
        let ps = pids(p);
        series[i].rss_idle = procstat::rss_mib(&ps);
        procstat::reset_peak(&ps);
        let (tool, u) = target(p);
        load::run(tool, &u, load_cpu, Duration::from_secs(2), o.conns)?;
    }
    for rep in 0..o.reps {
        for k in 0..paths.len() {
            let i = (k + rep) % paths.len();
            let p = &paths[i];
            let (tool, u) = target(p);
            let ps = pids(p);
            let before = procstat::cpu(&ps);
            let r = load::run(tool, &u, load_cpu, o.time, o.conns)?;
            let after = procstat::cpu(&ps);
            let per = |a: f64, b: f64| (b - a) * 1e6 / r.requests.max(1.0);
            if r.errors {
                eprintln!("   {} reported errors (see the rps)", p.label);
            }
            eprintln!("   rep {} {:<22} {:>10.0} rps", rep + 1, p.label, r.rps);
            series[i].samples.push(Sample {
                run: r,
                usr_us: per(before.0, after.0),
                sys_us: per(before.1, after.1),
            });
        }
    }
    for (i, p) in paths.iter().enumerate() {
        let ps = pids(p);
        series[i].rss_peak = procstat::peak_mib(&ps);
    }
    std::thread::sleep(Duration::from_secs(2));
    for (i, p) in paths.iter().enumerate() {
        series[i].rss_after = procstat::rss_mib(&pids(p));
    }
    Ok(series)
}

fn render(v: &Variant, paths: &[Path], series: &[Series]) -> String {
    let mut t = format!(
        "\n## {}: {}\n\n| path | rps | ratio to direct | p50 ms | p99 ms | CPU µs/req usr / sys | RSS MiB idle / peak / after |\n|---|---|---|---|---|---|---|\n",
        v.name, v.what
    );
    let direct: Vec<f64> = series[0].samples.iter().map(|s| s.run.rps).collect();
    for (p, s) in paths.iter().zip(series) {
        let rps: Vec<f64> = s.samples.iter().map(|x| x.run.rps).collect();
        let ratios: Vec<f64> = rps.iter().zip(&direct).map(|(a, d)| a / d).collect();
        let ratio = if p.proxy.is_none() {
            "—".to_owned()
        } else {
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(0.0, f64::max);
            format!("{:.2} ({lo:.2}–{hi:.2})", median(ratios.clone()))
        };
        let p50 = median(s.samples.iter().map(|x| x.run.p50_ms).collect());
        let p99 = median(s.samples.iter().filter_map(|x| x.run.p99_ms).collect());
        let mean_only = v.tool == Tool::H2load && p.proxy.is_some();
        let (p50, p99) = if mean_only {
            (format!("{p50:.2} (mean)"), "—".to_owned())
        } else {
            (format!("{p50:.2}"), format!("{p99:.2}"))
        };
        let (cpu, rss) = match p.proxy {
            None => ("—".to_owned(), "—".to_owned()),
            Some(_) => (
                format!(
                    "{:.1} / {:.1}",
                    median(s.samples.iter().map(|x| x.usr_us).collect()),
                    median(s.samples.iter().map(|x| x.sys_us).collect())
                ),
                format!("{:.1} / {:.1} / {:.1}", s.rss_idle, s.rss_peak, s.rss_after),
            ),
        };
        let _ = writeln!(
            t,
            "| {} | {:.0} | {ratio} | {p50} | {p99} | {cpu} | {rss} |",
            p.label,
            median(rps)
        );
    }
    t
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()
}
