//! The processes a benchmark run compares, configured as production users would: three nginx
//! members serving static files; HAProxy and nginx as proxies with one worker (thread), no access
//! log and keep-alive to the members; lb with its default configuration (access log on,
//! telemetry on), and lb variants reported beside it.
use super::{free_port, wait_port};
use crate::Guard;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The ports a proxy listens on, one per way in.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// HTTP/1.1 and (where the proxy takes both on one port) h2c.
    pub http: u16,
    pub h2c: u16,
    /// TLS, offering h2 and http/1.1.
    pub tls: u16,
    /// Layer 4 (TCP) to the members.
    pub l4: u16,
}

impl Ports {
    fn new(one_port_for_h2c: bool) -> Result<Ports> {
        let http = free_port()?;
        Ok(Ports {
            http,
            h2c: if one_port_for_h2c { http } else { free_port()? },
            tls: free_port()?,
            l4: free_port()?,
        })
    }
}

/// A running proxy: its name, ports and process.
pub struct Proxy {
    pub name: String,
    pub ports: Ports,
    pub guard: Guard,
}

impl Proxy {
    pub fn pid(&self) -> u32 {
        self.guard.0.id()
    }
}

/// The files members serve: /100.bin, /64k.bin, /1m.bin.
pub fn www(dir: &Path) -> Result<PathBuf> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    for (name, size) in [("100.bin", 100), ("64k.bin", 64 * 1024), ("1m.bin", 1024 * 1024)] {
        std::fs::write(www.join(name), vec![b'x'; size])?;
    }
    Ok(www)
}

/// nginx's temp paths and pid under `dir`, so that it needs nothing of the system's.
fn nginx_common(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\ndaemon off;\nmaster_process on;\npid {d}/{name}.pid;\nerror_log {d}/{name}.err warn;\n"
    )
}

fn nginx_http_common(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  keepalive_requests 1000000;\n  keepalive_timeout 75s;\n"
    )
}

/// `program args` on `cpu`, under `wrap` (valgrind …) when it is not empty.
fn spawn(cpu: &str, wrap: &[&str], program: &str, args: &[&str], log: &Path) -> Result<Guard> {
    let err = std::fs::File::create(log)?;
    let child = Command::new("taskset")
        .args(["-c", cpu])
        .args(wrap)
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .with_context(|| format!("start {program}"))?;
    Ok(Guard(child))
}

/// Three nginx members on `cpu`; returns their guards and ports.
pub fn members(dir: &Path, www: &Path, cpu: &str) -> Result<(Vec<Guard>, Vec<u16>)> {
    std::fs::create_dir_all(dir.join("tmp"))?;
    let (mut guards, mut ports) = (Vec::new(), Vec::new());
    for i in 1..=3 {
        let port = free_port()?;
        let name = format!("member{i}");
        let cfg = format!(
            "{}events {{ worker_connections 8192; }}\nhttp {{\n{}  sendfile on;\n  tcp_nopush on;\n  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    root {};\n    location / {{ }}\n  }}\n}}\n",
            nginx_common(dir, &name),
            nginx_http_common(dir),
            www.display()
        );
        let file = dir.join(format!("{name}.conf"));
        std::fs::write(&file, cfg)?;
        let f = file.display().to_string();
        guards.push(spawn(cpu, &[], "nginx", &["-c", &f], &dir.join(format!("{name}.out")))?);
        wait_port(port, Duration::from_secs(15))?;
        ports.push(port);
    }
    Ok((guards, ports))
}

/// nginx as the proxy: HTTP (h1, h2c and TLS with h2) and a stream (L4) server.
pub fn nginx(dir: &Path, cpu: &str, members: &[u16], cert: &Path, key: &Path) -> Result<Proxy> {
    let ports = Ports::new(false)?;
    let mut up = String::new();
    let mut stream_up = String::new();
    for p in members {
        let _ = writeln!(up, "    server 127.0.0.1:{p};");
        let _ = writeln!(stream_up, "    server 127.0.0.1:{p};");
    }
    let stream_module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    let load = if stream_module.exists() {
        format!("load_module {};\n", stream_module.display())
    } else {
        String::new()
    };
    let cfg = format!(
        "{load}{}events {{ worker_connections 16384; }}\nhttp {{\n{}  upstream members {{\n{up}    keepalive 256;\n  }}\n  server {{\n    listen 127.0.0.1:{} backlog=4096;\n    listen 127.0.0.1:{} http2 backlog=4096;\n    listen 127.0.0.1:{} ssl http2 backlog=4096;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.3;\n    location / {{\n      proxy_pass http://members;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\nstream {{\n  upstream smembers {{\n{stream_up}  }}\n  server {{\n    listen 127.0.0.1:{} backlog=4096;\n    proxy_pass smembers;\n  }}\n}}\n",
        nginx_common(dir, "proxy-nginx"),
        nginx_http_common(dir),
        ports.http,
        ports.h2c,
        ports.tls,
        cert.display(),
        key.display(),
        ports.l4,
    );
    let file = dir.join("proxy-nginx.conf");
    std::fs::write(&file, cfg)?;
    let f = file.display().to_string();
    let guard = spawn(cpu, &[], "nginx", &["-c", &f], &dir.join("proxy-nginx.out"))?;
    for p in [ports.http, ports.h2c, ports.tls, ports.l4] {
        wait_port(p, Duration::from_secs(15))?;
    }
    Ok(Proxy { name: "nginx".into(), ports, guard })
}

/// HAProxy: one thread, keep-alive and connection reuse towards members, no log. `wrap` runs it
/// under another program (valgrind).
pub fn haproxy(dir: &Path, cpu: &str, members: &[u16], pem: &Path, wrap: &[&str]) -> Result<Proxy> {
    let ports = Ports::new(false)?;
    let mut servers = String::new();
    for (i, p) in members.iter().enumerate() {
        let _ = writeln!(servers, "  server m{i} 127.0.0.1:{p}");
    }
    let pem = pem.display();
    let cfg = format!(
        "global\n  nbthread 1\n  maxconn 8000\n\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 75s\n  timeout server 75s\n  option http-keep-alive\n  http-reuse always\n\nfrontend web\n  bind 127.0.0.1:{}\n  bind 127.0.0.1:{} proto h2\n  bind 127.0.0.1:{} ssl crt {pem} alpn h2,http/1.1 ssl-min-ver TLSv1.3\n  default_backend members\n\nbackend members\n  balance roundrobin\n{servers}\nlisten l4\n  mode tcp\n  bind 127.0.0.1:{}\n  balance roundrobin\n{servers}",
        ports.http, ports.h2c, ports.tls, ports.l4
    );
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, cfg)?;
    let f = file.display().to_string();
    let guard = spawn(cpu, wrap, "haproxy", &["-db", "-f", &f], &dir.join("haproxy.out"))?;
    for p in [ports.http, ports.h2c, ports.tls, ports.l4] {
        wait_port(p, Duration::from_secs(if wrap.is_empty() { 15 } else { 60 }))?;
    }
    Ok(Proxy { name: "haproxy".into(), ports, guard })
}

/// lb's example `hyper_floor` (hyper's server and client with nothing of lb's): HTTP/1.1 and
/// h2c on one port to the members. It has no TLS and no L4: those ports are 0.
pub fn floor(dir: &Path, bin: &Path, cpu: &str, members: &[u16], wrap: &[&str]) -> Result<Proxy> {
    let http = free_port()?;
    let listen = format!("127.0.0.1:{http}");
    let members: Vec<String> = members.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut args = vec![listen.as_str()];
    args.extend(members.iter().map(String::as_str));
    let bin = bin.display().to_string();
    let guard = spawn(cpu, wrap, &bin, &args, &dir.join("floor.out"))?;
    wait_port(http, Duration::from_secs(if wrap.is_empty() { 15 } else { 60 }))?;
    Ok(Proxy { name: "hyper floor".into(), ports: floor_ports(http), guard })
}

/// The floor's ports: HTTP/1.1 and h2c on `http`; no TLS or L4 (0).
pub fn floor_ports(http: u16) -> Ports {
    Ports { http, h2c: http, tls: 0, l4: 0 }
}

/// Which lb to run: its defaults, or with one of them changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbVariant {
    Default,
    NoAccessLog,
    NoTelemetry,
}

impl LbVariant {
    pub fn name(self) -> &'static str {
        match self {
            LbVariant::Default => "lb",
            LbVariant::NoAccessLog => "lb (access log off)",
            LbVariant::NoTelemetry => "lb (telemetry off)",
        }
    }
}

/// lb with its default configuration (or `variant`): HTTP and h2c on one port, TLS with h2 and
/// http/1.1, and a TCP listener, each to the three members. The access log goes to a file.
/// `wrap` runs it under another program (valgrind).
#[allow(clippy::too_many_arguments)]
pub fn lb(
    dir: &Path,
    bin: &Path,
    cpu: &str,
    members: &[u16],
    cert: &Path,
    key: &Path,
    variant: LbVariant,
    wrap: &[&str],
) -> Result<Proxy> {
    let ports = Ports::new(true)?;
    let log = if variant == LbVariant::NoAccessLog { "access_log = false\n" } else { "" };
    let telemetry =
        if variant == LbVariant::NoTelemetry { "[telemetry]\nsource = \"off\"\n\n" } else { "" };
    let pp = "  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"balancer://members/\"\n";
    // The access log goes to a file, as in production.
    let access = dir.join(format!("{}-access.log", variant.name()));
    let mut cfg = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[access_log]\npath = {:?}\n\n{telemetry}[[listener]]\nname = \"http\"\nbind = \"127.0.0.1:{}\"\n{log}{pp}\n[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:{}\"\n{log}  [[listener.tls]]\n  cert = \"{}\"\n  key = \"{}\"\n{pp}\n[[listener]]\nname = \"l4\"\nbind = \"127.0.0.1:{}\"\nprotocol = \"tcp\"\nbalancer = \"tmembers\"\n{log}\n[balancer.members]\n",
        access.display().to_string(),
        ports.http,
        ports.tls,
        cert.display(),
        key.display(),
        ports.l4
    );
    for p in members {
        let _ = writeln!(cfg, "[[balancer.members.member]]\nurl = \"http://127.0.0.1:{p}\"");
    }
    cfg.push_str("[balancer.tmembers]\n");
    for p in members {
        let _ = writeln!(cfg, "[[balancer.tmembers.member]]\nurl = \"tcp://127.0.0.1:{p}\"");
    }
    let tag = match variant {
        LbVariant::Default => "lb",
        LbVariant::NoAccessLog => "lb-nolog",
        LbVariant::NoTelemetry => "lb-notelemetry",
    };
    let file = dir.join(format!("{tag}.toml"));
    std::fs::write(&file, cfg)?;
    let log = std::fs::File::create(dir.join(format!("{tag}.log")))?;
    let child = Command::new("taskset")
        .args(["-c", cpu])
        .args(wrap)
        .arg(bin)
        .args(["run", "--config"])
        .arg(&file)
        .env("RUST_LOG", "info,rustls=error")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("start lb")?;
    let guard = Guard(child);
    // Under valgrind lb takes a while to start (loading its eBPF programs most of all).
    let within = Duration::from_secs(if wrap.is_empty() { 15 } else { 120 });
    for p in [ports.http, ports.tls, ports.l4] {
        wait_port(p, within)?;
    }
    Ok(Proxy { name: variant.name().into(), ports, guard })
}
