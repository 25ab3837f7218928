//! Test harness: real member servers, lb started on port 0, and small clients.
//!
//! Members are real HTTP servers on 127.0.0.1:0 whose behaviour is chosen by the request path:
//!
//! | path | answer |
//! |---|---|
//! | `/sleep/MS` | waits MS ms, then the member name |
//! | `/bytes/N` | N bytes, streamed in 64 KiB chunks (chunked encoding) |
//! | `/upload` | reads the whole request body, answers its length |
//! | `/headers` | the request line and headers as received |
//! | `/redirect` | 302 with `Location`/`Content-Location` on the member's own URL |
//! | `/status/CODE` | that status |
//! | `/close` | closes the connection without answering |
//! | `/ws` | `101 Switching Protocols`, then echoes bytes |
//! | anything else | the member name, or `size` bytes when the member has one |
//!
//! Every answer carries `x-member: NAME`, and `x-client-port: PORT`: the client port of the
//! connection the request came on, which tells lb's member connections apart. A member can be
//! killed (listener and every open connection closed at once) and started again on the same
//! port.
pub mod certs;
pub mod dns;
pub mod faults;
pub mod l4;
pub mod nginx;
pub mod process;
pub mod webdriver;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub type TestBody = BoxBody<Bytes, Infallible>;

/// A body of `n` bytes of `b'a'`, generated as it is sent (never held in memory whole).
pub struct Generated {
    remaining: u64,
    chunk: Bytes,
}

impl Generated {
    pub fn new(n: u64) -> Generated {
        Generated { remaining: n, chunk: Bytes::from(vec![b'a'; 64 * 1024]) }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}

/// Like [`Generated`] but with no known length, so it goes out chunked.
pub struct Unsized(pub Generated);

impl Body for Unsized {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

/// A member server started by a test.
pub struct Member {
    pub name: String,
    pub addr: SocketAddr,
    size: Option<usize>,
    delay: Duration,
    /// Requests answered since start (all incarnations).
    pub hits: Arc<AtomicU64>,
    /// Connections that carried a request (not a health probe) since start (all incarnations).
    pub conns: Arc<AtomicU64>,
    /// Of those, the ones open now.
    pub open: Arc<AtomicU64>,
    /// lb's health probes (`OPTIONS *`) answered since start; not in `hits`.
    pub probes: Arc<AtomicU64>,
    /// TLS handshakes that completed (https members).
    pub tls_ok: Arc<AtomicU64>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Member {
    /// Start a member on 127.0.0.1:0.
    pub async fn start(name: &str) -> Member {
        Self::start_with(name, None).await
    }

    /// Start a member whose default answer is `size` bytes.
    pub async fn start_with(name: &str, size: Option<usize>) -> Member {
        Self::start_full(name, size, Duration::ZERO).await
    }

    /// Start a member that waits `delay` before each default answer.
    pub async fn start_slow(name: &str, delay: Duration) -> Member {
        Self::start_full(name, None, delay).await
    }

    async fn start_full(name: &str, size: Option<usize>, delay: Duration) -> Member {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind member");
        Self::start_on(listener, name, size, delay).await
    }

    /// Start a member on this address (its port may be 0).
    pub async fn start_at(addr: SocketAddr, name: &str) -> std::io::Result<Member> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::start_on(listener, name, None, Duration::ZERO).await)
    }

    /// Start a member on an IPv6 loopback port.
    pub async fn start_v6(name: &str) -> Member {
        let listener = TcpListener::bind("[::1]:0").await.expect("bind member on ::1");
        Self::start_on(listener, name, None, Duration::ZERO).await
    }

    async fn start_on(
        listener: TcpListener,
        name: &str,
        size: Option<usize>,
        delay: Duration,
    ) -> Member {
        let addr = listener.local_addr().expect("member addr");
        let (hits, conns) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut m = Member {
            name: name.to_owned(),
            addr,
            size,
            delay,
            hits,
            conns,
            open: Arc::default(),
            probes: Arc::default(),
            tls_ok: Arc::default(),
            tls: None,
            task: None,
        };
        m.serve(listener);
        m
    }

    /// Start an https member on 127.0.0.1:0 with this TLS server config.
    pub async fn start_tls(name: &str, cfg: Arc<rustls::ServerConfig>) -> Member {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind member");
        let mut m = Self::start_on(listener, name, None, Duration::ZERO).await;
        // Restart with TLS on the same port.
        m.tls = Some(tokio_rustls::TlsAcceptor::from(cfg));
        m.restart().await;
        m
    }

    fn serve(&mut self, listener: TcpListener) {
        let name: Arc<str> = Arc::from(self.name.as_str());
        let size = self.size;
        let delay = self.delay;
        let hits = Arc::clone(&self.hits);
        let conns_seen = Arc::clone(&self.conns);
        let open = Arc::clone(&self.open);
        let probes = Arc::clone(&self.probes);
        let tls_ok = Arc::clone(&self.tls_ok);
        let tls = self.tls.clone();
        let addr = self.addr;
        self.task = Some(tokio::spawn(async move {
            // Connections live in this set: aborting the task closes every one of them.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    Ok((stream, client)) = listener.accept() => {
                        let (name, hits) = (Arc::clone(&name), Arc::clone(&hits));
                        let (tls, tls_ok) = (tls.clone(), Arc::clone(&tls_ok));
                        // Counted once it carries a request that is not a health probe.
                        let (seen, counted) = (Arc::clone(&conns_seen), Arc::new(AtomicBool::new(false)));
                        let probes = Arc::clone(&probes);
                        let (open, counted_at_end) = (Arc::clone(&open), Arc::clone(&counted));
                        conns.spawn(async move {
                            let open_at_end = Arc::clone(&open);
                            let svc = service_fn(move |req: Request<Incoming>| {
                                if is_probe(&req) {
                                    probes.fetch_add(1, Ordering::Relaxed);
                                } else if !counted.swap(true, Ordering::Relaxed) {
                                    seen.fetch_add(1, Ordering::Relaxed);
                                    open.fetch_add(1, Ordering::Relaxed);
                                }
                                let (name, hits) = (Arc::clone(&name), Arc::clone(&hits));
                                async move { answer(req, &name, size, delay, addr, client, &hits).await }
                            });
                            let b = hyper::server::conn::http1::Builder::new();
                            match tls {
                                None => {
                                    let _ = b.serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
                                }
                                Some(acceptor) => {
                                    let Ok(s) = acceptor.accept(stream).await else { return };
                                    tls_ok.fetch_add(1, Ordering::Relaxed);
                                    let _ = b.serve_connection(TokioIo::new(s), svc).with_upgrades().await;
                                }
                            }
                            if counted_at_end.load(Ordering::Relaxed) {
                                open_at_end.fetch_sub(1, Ordering::Relaxed);
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        }));
    }

    /// Close the listener and every open connection now.
    pub async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Start again on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        let listener = TcpListener::bind(self.addr).await.expect("rebind member port");
        self.serve(listener);
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// lb's health probe: `OPTIONS *`.
pub(crate) fn is_probe<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::OPTIONS && req.uri() == "*"
}

async fn answer(
    mut req: Request<Incoming>,
    name: &str,
    size: Option<usize>,
    delay: Duration,
    addr: SocketAddr,
    client: SocketAddr,
    hits: &AtomicU64,
) -> Result<Response<TestBody>, &'static str> {
    // lb's health probes (`OPTIONS *`) are not traffic: they are counted apart.
    if is_probe(&req) {
        return Ok(Response::new(full("")));
    }
    hits.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let mut status = StatusCode::OK;
    let mut extra: Vec<(&str, String)> = Vec::new();
    let body: TestBody = if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        full(name.to_owned())
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        Unsized(Generated::new(n.parse().unwrap_or(0))).boxed()
    } else if path.ends_with("/upload") {
        let mut total = 0u64;
        let mut body = req.into_body();
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => break,
            }
        }
        full(total.to_string())
    } else if path.ends_with("/headers") {
        let mut s = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (k, v) in req.headers() {
            s.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        full(s)
    } else if path == "/redirect" {
        status = StatusCode::FOUND;
        extra.push(("location", format!("http://{addr}/target?x=1")));
        extra.push(("content-location", format!("http://{addr}/here")));
        extra.push(("x-other", format!("http://{addr}/untouched")));
        full("moved")
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = StatusCode::from_u16(code.parse().unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        full(name.to_owned())
    } else if path == "/ws" {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        status = StatusCode::SWITCHING_PROTOCOLS;
        extra.push(("connection", "upgrade".into()));
        extra.push(("upgrade", "websocket".into()));
        full(Bytes::new())
    } else if path == "/close" {
        // A service error makes hyper close the connection without an answer.
        return Err("closing without an answer");
    } else {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match size {
            Some(n) => full(vec![b'x'; n]),
            None => full(name.to_owned()),
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert("x-member", name.parse().expect("member name header"));
    resp.headers_mut().insert("x-client-port", client.port().into());
    for (k, v) in extra {
        resp.headers_mut().insert(k, v.parse().expect("header value"));
    }
    Ok(resp)
}

/// A raw TCP "member" that answers every connection with `reply` and closes (garbage tests).
pub async fn raw_member(reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    raw_member_closing_after(reply, Duration::ZERO).await
}

/// A raw TCP "member" that answers every connection with `reply` and closes it `after` that
/// (as a keep-alive timeout would).
pub async fn raw_member_closing_after(
    reply: &'static [u8],
    after: Duration,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind raw member");
    let addr = l.local_addr().expect("addr");
    let t = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
                if !after.is_zero() {
                    tokio::time::sleep(after).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, t)
}

/// An address where nothing listens, for a member that refuses connections. The port stays
/// bound (without `listen`, without `SO_REUSEADDR`) for as long as the value lives, so a connect
/// to it is refused, and neither another test's bind nor the kernel's choice of a source port
/// can take it meanwhile. Keep it alive for the whole test.
pub struct DeadPort {
    addr: SocketAddr,
    _held: tokio::net::TcpSocket,
}

impl std::ops::Deref for DeadPort {
    type Target = SocketAddr;
    fn deref(&self) -> &SocketAddr {
        &self.addr
    }
}

impl std::fmt::Display for DeadPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// A port that refuses connections for as long as the returned value lives.
pub async fn dead_port() -> DeadPort {
    let held = tokio::net::TcpSocket::new_v4().expect("socket");
    held.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    DeadPort { addr: held.local_addr().expect("addr"), _held: held }
}

/// A port free now, for lb to bind later. It is taken below the kernel's ephemeral range
/// (`ip_local_port_range`): a port that bind(0) handed out and the test released could be taken
/// as the source port of any connection the parallel tests open before lb binds it; below that
/// range only an explicit bind can take it. Each call in a test process hands out another one,
/// and one that something else holds is skipped.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const FLOOR: u32 = 10_000;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = low.saturating_sub(FLOOR).max(1_000);
    // Test binaries run one after another, but spread their ports apart all the same.
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FLOOR + start.wrapping_add(n) % span).expect("port");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FLOOR}..{}", FLOOR + span)
}

/// lb running in this process.
pub struct Lb {
    /// The listener named "web", or else the first listener.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The `[heartbeat] listen` UDP address, when configured.
    pub heartbeat: Option<SocketAddr>,
    /// Reloads, and listener addresses after them.
    pub handle: lb::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Validate config text as if it were the file `test.toml` (relative paths resolve against the
/// current folder).
pub fn parse_config(config: &str) -> lb::config::Config {
    lb::config::Config::parse(config, std::path::Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("test config invalid: {e}"))
}

impl Lb {
    /// Start lb with this config text (its main listener named "web", or the first one).
    pub async fn start(config: &str) -> Lb {
        let cfg = parse_config(config);
        let bound = lb::runtime::Lb::build(&cfg)
            .unwrap_or_else(|e| panic!("lb cannot start: {e:?}"))
            .bind()
            .await
            .expect("bind lb");
        let listeners = bound.listener_addrs();
        let addr = listeners
            .iter()
            .find(|(n, _)| n == "web")
            .or(listeners.first())
            .map(|(_, a)| *a)
            .expect("a listener");
        let admin = bound.admin_addr().expect("admin");
        let heartbeat = bound.heartbeat_addr();
        let handle = bound.handle();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(bound.run(async move {
            let _ = rx.await;
        }));
        Lb { addr, admin, heartbeat, handle, stop: Some(tx), task: Some(task) }
    }

    /// The bound address of listener `name` now.
    pub fn listener(&self, name: &str) -> SocketAddr {
        *self.handle.listeners().get(name).unwrap_or_else(|| panic!("no listener {name}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn status(&self) -> serde_json::Value {
        let r = get(&format!("http://{}/status", self.admin)).await;
        assert_eq!(r.status, 200);
        serde_json::from_slice(&r.body).expect("status json")
    }

    /// Member `i` of balancer `b` in the status report.
    pub async fn member(&self, b: &str, i: usize) -> serde_json::Value {
        let s = self.status().await;
        let bal =
            s["balancers"].as_array().expect("balancers").iter().find(|x| x["name"] == b).cloned();
        bal.expect("balancer in status")["members"][i].clone()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A config with one listener "web" on port 0, admin on port 0, `/` → `balancer://b/`, and
/// balancer `b` holding `balancer_body` (its keys and `[[balancer.b.member]]` tables).
pub fn config(balancer_body: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\naccess_log = false\n\n  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"balancer://b/\"\n  reverse = true\n\n[balancer.b]\n{balancer_body}\n"
    )
}

/// Put at the start of a `config` body: turns off lb's kernel-driven ejection for balancer `b`,
/// for tests of Apache's own error/retry semantics (ejection would hold a failed member out for
/// its ejection time instead of its `retry`).
pub const APACHE_RETRY_ONLY: &str = "[balancer.b.ejection]\nenabled = false\n";

/// Put at the end of a `config` body: no idle probes to balancer `b`'s members, for tests that
/// count the connections lb opens (a raw TCP member cannot tell a connect probe from lb's
/// traffic).
pub const NO_IDLE_PROBES: &str = "\n[balancer.b.ejection]\nprobe_interval = \"0s\"\n";

/// `[[balancer.b.member]]` tables for these URLs, each with `extra` lines.
pub fn members(urls: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (url, extra) in urls {
        s.push_str(&format!("\n[[balancer.b.member]]\nurl = \"{url}\"\n{extra}\n"));
    }
    s
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn member(&self) -> String {
        self.headers.get("x-member").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    TestBody,
>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(c: &Client, req: Request<TestBody>) -> Result<Reply, String> {
    let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| format!("{e:?}"))?.to_bytes();
    Ok(Reply { status, headers, body })
}

/// GET on a fresh connection; panics on transport errors.
pub async fn get(url: &str) -> Reply {
    let req = Request::get(url).body(full(Bytes::new())).expect("request");
    send(&client(), req).await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Write raw bytes on a new connection and read the whole answer (until close or `limit`).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Poll `f` until it returns Some or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lb binary built next to the test executable (`cargo xtask test` builds it first).
pub fn lb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LB_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("lb");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p lb) or run cargo xtask test",
        bin.display()
    );
    bin
}

/// An nftables table of the test's own, deleted when dropped (also when the test panics).
/// Rules go in an `input` chain: a loopback packet dropped there was sent, so the sender sees
/// real loss and retransmits. (A drop in `output` is a local transmit error instead: TCP keeps the
/// segment unsent and counts no retransmission, which is not what a lossy network does.)
pub struct Nft {
    table: String,
}

impl Nft {
    /// Create the table with these rules (nft syntax, one per line).
    pub fn new(rules: &[String]) -> Nft {
        use std::sync::atomic::AtomicU32;
        static N: AtomicU32 = AtomicU32::new(0);
        let table = format!("lbtest_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let mut script = format!(
            "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n"
        );
        for r in rules {
            script.push_str(&format!("    {r}\n"));
        }
        script.push_str("  }\n}\n");
        let nft = Nft { table };
        nft.run(&script);
        nft
    }

    fn run(&self, script: &str) {
        use std::io::Write;
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run nft (cargo xtask test installs nftables)");
        child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("write nft script");
        let status = child.wait().expect("nft");
        assert!(status.success(), "nft failed on:\n{script}");
    }

    /// Remove every rule now (the table stays until drop).
    pub fn clear(&self) {
        self.run(&format!("flush chain inet {} input\n", self.table));
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

fn sh(args: &[&str]) {
    let status =
        std::process::Command::new(args[0]).args(&args[1..]).status().expect("run command");
    assert!(status.success(), "{args:?} failed");
}

/// A network namespace of the test's own, joined to this one by a veth pair (host side
/// `10.213.N.1/30`, namespace side `10.213.N.2/30`), removed when dropped.
pub struct Netns {
    pub name: String,
    host_if: String,
    ns_if: String,
    pub ns_ip: std::net::Ipv4Addr,
}

impl Netns {
    pub fn create() -> Netns {
        use std::sync::atomic::AtomicU32;
        static N: AtomicU32 = AtomicU32::new(0);
        let n = (std::process::id() % 200) * 4 + N.fetch_add(1, Ordering::Relaxed) % 4;
        let (a, b) = (n / 250 + 1, n % 250);
        let name = format!("lbt{}_{n}", std::process::id());
        let (host_if, ns_if) = (format!("lbh{n}"), format!("lbn{n}"));
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            ns_ip: std::net::Ipv4Addr::new(10, 213 + a as u8 - 1, b as u8, 2),
        };
        let host_ip = format!("10.{}.{b}.1/30", 213 + a - 1);
        let ns_ip = format!("{}/30", ns.ns_ip);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        sh(&["ip", "link", "set", &ns_if, "netns", &name]);
        sh(&["ip", "addr", "add", &host_ip, "dev", &host_if]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        sh(&["ip", "netns", "exec", &name, "ip", "addr", "add", &ns_ip, "dev", &ns_if]);
        sh(&["ip", "netns", "exec", &name, "ip", "link", "set", &ns_if, "up"]);
        sh(&["ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The host side of the veth pair (what the namespace reaches this one at).
    pub fn host_ip(&self) -> std::net::Ipv4Addr {
        let [a, b, c, _] = self.ns_ip.octets();
        std::net::Ipv4Addr::new(a, b, c, 1)
    }

    /// Shape traffic leaving the namespace (member → lb) with a token bucket: under load it
    /// queues, which is queueing delay on the member's path.
    pub fn tbf(&self, rate: &str, burst: &str, latency: &str) {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "tc",
            "qdisc",
            "add",
            "dev",
            &self.ns_if,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            burst,
            "latency",
            latency,
        ]);
    }

    /// Start `lb member` inside the namespace on port 0; returns the process and its address.
    pub fn member(&self, name: &str, body_size: usize) -> (std::process::Child, SocketAddr) {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(lb_bin())
            .args(["demo-member", "--bind", &format!("{}:0", self.ns_ip), "--name", name])
            .args(["--body-size", &body_size.to_string()]);
        spawn_member(cmd)
    }
}

/// Run an `lb member` command line and read the address it says it listens on.
pub fn spawn_member(mut cmd: std::process::Command) -> (std::process::Child, SocketAddr) {
    use std::io::BufRead;
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line).expect("member address");
    let addr = line.trim().trim_start_matches("listening on ").parse().expect("member address");
    (child, addr)
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::process::Command::new("ip").args(["link", "del", &self.host_if]).status();
    }
}

/// A child process killed (and reaped) when dropped, also when the test panics.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spec, byrequests: every usable candidate gets `lbstatus += lbfactor`, the highest wins
/// (first on ties), the winner pays the total.
pub fn apache_byrequests(factors: &[i64], usable: &[bool], n: usize) -> Vec<usize> {
    let mut lbstatus = vec![0i64; factors.len()];
    (0..n)
        .map(|_| {
            let (mut total, mut best) = (0, None::<usize>);
            for i in 0..factors.len() {
                if !usable[i] {
                    continue;
                }
                lbstatus[i] += factors[i];
                total += factors[i];
                if best.is_none_or(|b| lbstatus[i] > lbstatus[b]) {
                    best = Some(i);
                }
            }
            let b = best.expect("a usable member");
            lbstatus[b] -= total;
            b
        })
        .collect()
}
