//! The `lb` command: daemon (`run`, `demo`) and CLI (`check`, `reload`, `status`, `health`).
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use lb::config::{Config, ConfigError, DEFAULT_ADMIN_BIND};
use lb::runtime::Lb;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "lb", version, about = "A load balancer with Apache mod_proxy_balancer semantics")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// lb's own log lines (stderr): `text`, or `json` (one object per line).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Set a member's load factor, lbset, route, redirect or status flags (next pick on).
    Set {
        /// The balancer's name (`[balancer.NAME]`).
        balancer: String,
        /// The member's URL.
        url: String,
        #[arg(long)]
        loadfactor: Option<f64>,
        #[arg(long)]
        lbset: Option<u32>,
        /// The route (empty clears it).
        #[arg(long)]
        route: Option<String>,
        /// The redirect route (empty clears it).
        #[arg(long)]
        redirect: Option<String>,
        /// Apache's status syntax over the flags I N D S H R: `+D` disables, `-D` enables.
        #[arg(long, allow_hyphen_values = true)]
        status: Option<String>,
        /// Health check method: NONE, TCP, OPTIONS, HEAD, GET, OPTIONS11, HEAD11, GET11.
        #[arg(long)]
        hcmethod: Option<String>,
        /// Seconds between health checks.
        #[arg(long)]
        hcinterval: Option<f64>,
        #[arg(long)]
        hcpasses: Option<u32>,
        #[arg(long)]
        hcfails: Option<u32>,
        #[arg(long)]
        hcuri: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Add a member in one of the balancer's `growth` slots; it starts disabled (D).
    Add {
        balancer: String,
        url: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum BalancerCmd {
    /// Set a balancer's lbmethod, timeout, maxattempts, nofailover or stickysession.
    Set {
        balancer: String,
        #[arg(long)]
        lbmethod: Option<String>,
        /// Seconds to wait for a usable member.
        #[arg(long)]
        timeout: Option<f64>,
        #[arg(long)]
        maxattempts: Option<u32>,
        #[arg(long)]
        nofailover: Option<bool>,
        /// `NAME` or `COOKIE|param`; empty turns sticky sessions off.
        #[arg(long)]
        stickysession: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How to reach the running lb's admin API.
#[derive(clap::Args)]
struct AdminArgs {
    /// Admin address of the running lb.
    #[arg(long, default_value = DEFAULT_ADMIN_BIND)]
    admin: String,
    /// The admin token (`[admin] token`), needed when the admin address is not loopback.
    #[arg(long, env = "LB_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the balancer with a config file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file; print every error with file, line, column and key.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Make the running lb re-read its config file (like SIGHUP); prints what changed, or every
    /// error `lb check` would print (the running config then stays).
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show every balancer and member, like Apache's balancer-manager.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the raw JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Show kernel-sourced member health: connect latency, RTT, retransmits, failed connects.
    Health {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the raw JSON report.
        #[arg(long)]
        json: bool,
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Translate an Apache httpd configuration (mod_proxy_balancer) into lb's TOML: the config
    /// on stdout (or -o FILE), and every directive that has no lb equivalent, with file, line and
    /// why, on stderr. The result is checked as `lb check` would.
    #[command(name = "import-apache")]
    ImportApache {
        /// The main Apache file (httpd.conf, /etc/apache2/apache2.conf); includes are followed.
        file: PathBuf,
        /// Write the config here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Only report: print what is not translated and whether lb accepts the result.
        #[arg(long, conflicts_with = "output")]
        check: bool,
    },
    /// Print a shell completion script: `lb completions bash > /etc/bash_completion.d/lb`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Start three demo members on loopback and a balancer in front of them.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
        #[arg(long, default_value = DEFAULT_ADMIN_BIND)]
        admin: String,
    },
    /// Change a member of the running lb, as Apache's balancer-manager does.
    Member {
        #[command(subcommand)]
        action: MemberCmd,
    },
    /// Change a balancer of the running lb, as Apache's balancer-manager does.
    Balancer {
        #[command(subcommand)]
        action: BalancerCmd,
    },
    /// Run one demo member (used by the tests, as a process of its own).
    #[command(name = "demo-member", hide = true)]
    DemoMember {
        #[arg(long)]
        bind: String,
        #[arg(long, default_value = "member")]
        name: String,
        /// Answer every request with this many bytes.
        #[arg(long)]
        body_size: Option<usize>,
    },
}

fn main() -> ExitCode {
    lb::memory::one_arena();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rustls warns about peers' protocol quirks (an IP address sent as SNI, …) once per
        // handshake; lb logs failed handshakes itself, so those stay quiet unless asked for.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(ansi).init();
    }
    // One CPU (e.g. pinned with taskset): a current-thread runtime avoids work-stealing overhead
    // and cross-thread wakeups between a request and its pooled member connection.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Run { config } => {
            let cfg = lb::runtime::with_state(load_or_report(&config)?);
            run(&cfg, &config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { config } => match Config::load(&config) {
            Ok(cfg) => {
                let members: usize = cfg.balancers.iter().map(|b| b.members.len()).sum();
                println!(
                    "{}: ok ({} listener(s), {} balancer(s), {} member(s))",
                    config.display(),
                    cfg.listeners.len(),
                    cfg.balancers.len(),
                    members
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                print_config_error(&e);
                Ok(ExitCode::FAILURE)
            }
        },
        Cmd::ImportApache { file, output, check } => import_apache(&file, output.as_deref(), check),
        Cmd::Health { admin, json, watch: true } => watch_health(&admin, json).await,
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lb", &mut script);
            // A closed pipe (`lb completions bash | head`) is not an error worth a message.
            let _ = std::io::stdout().write_all(&script);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Health { admin, json, watch: false } => {
            let body = fetch(&admin, "/health").await?;
            let text = if json {
                body
            } else {
                let report: lb::status::HealthReport = serde_json::from_str(&body)
                    .context("admin answered something that is not a health report")?;
                lb::status::render_health(&report)
            };
            print!("{text}");
            if json {
                println!();
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Reload { admin } => match request(&admin, hyper::Method::POST, "/reload").await? {
            (status, body) if status.is_success() => {
                println!("{}", body.trim_end());
                Ok(ExitCode::SUCCESS)
            }
            (_, body) => {
                eprint!("reload refused; the running config stays:\n{body}");
                Ok(ExitCode::FAILURE)
            }
        },
        Cmd::Status { admin, json } => {
            let body = fetch(&admin, "/status").await?;
            if json {
                println!("{body}");
            } else {
                let report: lb::status::StatusReport = serde_json::from_str(&body)
                    .context("admin answered something that is not a status report")?;
                print!("{}", lb::status::render_table(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo { bind, admin } => {
            demo(&bind, &admin).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Member { action } => edit_member(action).await,
        Cmd::Balancer {
            action:
                BalancerCmd::Set {
                    balancer,
                    lbmethod,
                    timeout,
                    maxattempts,
                    nofailover,
                    stickysession,
                    admin,
                },
        } => {
            let mut p: Vec<(String, String)> = vec![];
            p.extend(lbmethod.map(|v| ("b_lbm".into(), v)));
            p.extend(timeout.map(|v| ("b_tmo".into(), v.to_string())));
            p.extend(maxattempts.map(|v| ("b_max".into(), v.to_string())));
            p.extend(nofailover.map(|v| ("b_sforce".into(), u8::from(v).to_string())));
            p.extend(stickysession.map(|v| ("b_ss".into(), v)));
            post_edit(&admin, &balancer, p).await
        }
        Cmd::DemoMember { bind, name, body_size } => {
            let listener = tokio::net::TcpListener::bind(&bind)
                .await
                .with_context(|| format!("bind {bind}"))?;
            println!("listening on {}", listener.local_addr()?);
            let body = body_size.map(|n| Bytes::from(vec![b'x'; n]));
            lb::demo::serve_member(
                listener,
                lb::demo::MemberReply { name: Arc::from(name.as_str()), body },
            )
            .await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `lb import-apache`: translate, report, check, write.
fn import_apache(file: &Path, output: Option<&Path>, check: bool) -> Result<ExitCode> {
    let import = lb::import::import_apache(file)?;
    if !import.notes.is_empty() {
        eprintln!("lb import-apache: {} item(s) not translated as written:", import.notes.len());
        for n in &import.notes {
            eprintln!("  {n}");
        }
    }
    let checked_as = match output {
        Some(o) => o.to_owned(),
        None => file.parent().unwrap_or(Path::new(".")).join("lb.toml"),
    };
    let verdict = Config::parse(&import.toml, &checked_as);
    if !check {
        match output {
            Some(o) => {
                std::fs::write(o, &import.toml)
                    .with_context(|| format!("writing {}", o.display()))?;
                eprintln!("lb import-apache: wrote {}", o.display());
            }
            None => print!("{}", import.toml),
        }
    }
    match verdict {
        Ok(cfg) => {
            let members: usize = cfg.balancers.iter().map(|b| b.members.len()).sum();
            eprintln!(
                "lb import-apache: lb accepts the result ({} listener(s), {} balancer(s), {} member(s))",
                cfg.listeners.len(),
                cfg.balancers.len(),
                members
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("lb import-apache: lb refuses the result as it stands:");
            print_config_error(&e);
            Ok(ExitCode::FAILURE)
        }
    }
}

fn print_config_error(e: &ConfigError) {
    eprint!("{}", e.report());
}

fn load_or_report(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|e| {
        print_config_error(&e);
        anyhow::anyhow!("config {} is not valid", path.display())
    })
}

async fn run(cfg: &Config, path: &Path) -> Result<()> {
    lb::sys::prepare(cfg);
    lb::accesslog::init(&cfg.access_log).with_context(|| {
        let to = cfg.access_log.path.as_ref().map_or("stdout".into(), |p| p.display().to_string());
        format!("cannot open the access log {to}")
    })?;
    let bound = Lb::build(cfg)?.with_config_path(path.to_owned()).bind().await?;
    lb::memory::drop_startup_pages();
    // SIGHUP re-reads the config file, like `lb reload`.
    let handle = bound.handle();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config file");
            // The runtime logs the outcome.
            let _ = handle.reload_file().await;
        }
    });
    bound.run(shutdown_signal()).await;
    lb::accesslog::flush();
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn demo(bind: &str, admin: &str) -> Result<()> {
    let mut ports = Vec::new();
    for i in 1..=3 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        ports.push(l.local_addr()?.port());
        let reply = lb::demo::MemberReply { name: Arc::from(format!("m{i}").as_str()), body: None };
        tokio::spawn(lb::demo::serve_member(l, reply));
    }
    let text = lb::demo::config_text(bind, admin, &ports);
    let cfg = Config::parse(&text, Path::new("<demo>")).map_err(|e| anyhow::anyhow!("{e}"))?;
    lb::sys::prepare(&cfg);
    lb::accesslog::init(&cfg.access_log)?;
    let bound = match Lb::build(&cfg)?.bind().await {
        Ok(b) => b,
        Err(e) => {
            bail!("{e}\n(pick free addresses with --bind and --admin, e.g. --bind 127.0.0.1:8081)")
        }
    };
    let addr = bound.listener_addr("demo").context("demo listener")?;
    let admin_addr = bound.admin_addr().context("admin listener")?;
    println!("lb demo: three members (m1, m2, m3 with loadfactor 2) behind balancer://demo\n");
    println!("config in use:\n{text}");
    println!("try:");
    println!(
        "  for i in $(seq 8); do curl -s http://{addr}/hello; done   # byrequests: m3 gets 2 of every 4"
    );
    println!(
        "  lb status --admin {admin_addr}                                # or: cargo run -q -p lb -- status --admin {admin_addr}"
    );
    println!("  curl -s http://{admin_addr}/status                            # the same as JSON");
    println!(
        "  lb health --admin {admin_addr}                                # kernel-sourced member health (srtt, retransmits, ejection)"
    );
    println!("Ctrl-C stops the demo.\n");
    bound.run(shutdown_signal()).await;
    Ok(())
}

/// `lb health --watch`: the table redrawn every second on the alternate screen, until `q` or
/// Ctrl-C; the terminal is put back as it was.
async fn watch_health(admin: &AdminArgs, json: bool) -> Result<ExitCode> {
    let keys = lb::term::RawKeys::enable();
    let (tx, mut quit) = tokio::sync::mpsc::channel::<()>(1);
    if keys.is_some() {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut b = [0u8; 1];
            while let Ok(1) = std::io::stdin().read(&mut b) {
                if matches!(b[0], b'q' | b'Q') {
                    let _ = tx.blocking_send(());
                    return;
                }
            }
        });
    }
    let screen = lb::term::Screen::enter();
    loop {
        let text = match fetch(admin, "/health").await {
            Ok(body) if json => body,
            Ok(body) => match serde_json::from_str::<lb::status::HealthReport>(&body) {
                Ok(r) => lb::status::render_health(&r),
                Err(e) => format!("admin answered something that is not a health report: {e}\n"),
            },
            Err(e) => format!("{e:#}\n"),
        };
        screen.draw(&format!("{text}\n(refreshing every second; q or Ctrl-C quits)\n"));
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = quit.recv() => break,
        }
    }
    drop(screen);
    drop(keys);
    Ok(ExitCode::SUCCESS)
}

async fn edit_member(action: MemberCmd) -> Result<ExitCode> {
    match action {
        MemberCmd::Set {
            balancer,
            url,
            loadfactor,
            lbset,
            route,
            redirect,
            status,
            hcmethod,
            hcinterval,
            hcpasses,
            hcfails,
            hcuri,
            admin,
        } => {
            let mut p: Vec<(String, String)> = vec![("w".into(), url)];
            p.extend(hcmethod.map(|v| ("w_hm".into(), v)));
            p.extend(hcinterval.map(|v| ("w_hi".into(), v.to_string())));
            p.extend(hcpasses.map(|v| ("w_hp".into(), v.to_string())));
            p.extend(hcfails.map(|v| ("w_hf".into(), v.to_string())));
            p.extend(hcuri.map(|v| ("w_hu".into(), v)));
            p.extend(loadfactor.map(|v| ("w_lf".into(), v.to_string())));
            p.extend(lbset.map(|v| ("w_ls".into(), v.to_string())));
            p.extend(route.map(|v| ("w_wr".into(), v)));
            p.extend(redirect.map(|v| ("w_rr".into(), v)));
            if let Some(spec) = status {
                let mut set = true;
                for c in spec.chars() {
                    match c.to_ascii_uppercase() {
                        '+' => set = true,
                        '-' => set = false,
                        f if lb::config::flags::LETTERS
                            .iter()
                            .any(|(l, bit)| *l == f && bit & lb::config::flags::OPERATOR != 0) =>
                        {
                            p.push((format!("w_status_{f}"), if set { "1" } else { "0" }.into()));
                        }
                        other => {
                            bail!("--status {spec:?}: {other:?} is not one of + - I N D S H R")
                        }
                    }
                }
            }
            post_edit(&admin, &balancer, p).await
        }
        MemberCmd::Add { balancer, url, admin } => {
            post_edit(
                &admin,
                &balancer,
                vec![("b_wyes".into(), "1".into()), ("b_nwrkr".into(), url)],
            )
            .await
        }
    }
}

/// Post a balancer-manager edit for `balancer`, with its nonce from the status report.
async fn post_edit(
    admin: &AdminArgs,
    balancer: &str,
    params: Vec<(String, String)>,
) -> Result<ExitCode> {
    let status: lb::status::StatusReport = serde_json::from_str(&fetch(admin, "/status").await?)
        .context("admin answered something that is not a status report")?;
    let Some(b) = status.balancers.iter().find(|b| b.name == balancer) else {
        let names: Vec<&str> = status.balancers.iter().map(|b| b.name.as_str()).collect();
        bail!("no balancer {balancer:?} (there are: {})", names.join(", "));
    };
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|c| match c {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (c as char).to_string()
                }
                _ => format!("%{c:02X}"),
            })
            .collect()
    };
    let mut body = format!("b={}&nonce={}", enc(balancer), enc(&b.nonce));
    for (k, v) in &params {
        body.push_str(&format!("&{k}={}", enc(v)));
    }
    let (code, text) =
        request_body(admin, hyper::Method::POST, "/balancer-manager", Some(body)).await?;
    if code.is_success() {
        println!("{}", text.trim_end());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{}", text.trim_end());
        Ok(ExitCode::from(1))
    }
}

/// One request to the admin listener: its status and body.
async fn request(
    to: &AdminArgs,
    method: hyper::Method,
    path: &str,
) -> Result<(hyper::StatusCode, String)> {
    request_body(to, method, path, None).await
}

/// The same with a form body.
async fn request_body(
    to: &AdminArgs,
    method: hyper::Method,
    path: &str,
    form: Option<String>,
) -> Result<(hyper::StatusCode, String)> {
    let admin = to.admin.as_str();
    let stream = tokio::net::TcpStream::connect(admin).await.with_context(|| {
        format!("cannot reach lb's admin listener at {admin} (is lb running? see --admin)")
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::builder().method(method).uri(path).header("host", admin);
    let req = match &to.token {
        Some(t) => req.header("authorization", format!("Bearer {t}")),
        None => req,
    };
    let req = match form {
        Some(f) => req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(Bytes::from(f)).boxed())?,
        None => req.body(Empty::<Bytes>::new().boxed())?,
    };
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn fetch(admin: &AdminArgs, path: &str) -> Result<String> {
    let (status, body) = request(admin, hyper::Method::GET, path).await?;
    if !status.is_success() {
        bail!("admin answered {status}: {body}");
    }
    Ok(body)
}
