//! Faults and traffic for the ejection tests: a member that stops accepting with its backlog
//! full, a member process to SIGSTOP, bulk downloads to congest a shaped link, and bounded client
//! traffic of the four shapes the fault matrix uses.
use crate::{ChildGuard, client, full, lb_bin, send};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// An HTTP member with a small listen backlog that can freeze: it stops accepting, stops
/// answering the connections it has, and its accept queue fills, so new SYNs are dropped.
pub struct Freezable {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    frozen: watch::Sender<bool>,
    backlog: i32,
    fillers: JoinSet<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn until_thawed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|frozen| !frozen).await;
}

impl Freezable {
    pub async fn start(name: &str, backlog: i32) -> Freezable {
        Self::start_pacing(name, backlog, Duration::ZERO).await
    }

    /// A small member: it accepts at most one connection per `accept_every`, so a burst of
    /// connects overflows its backlog.
    pub async fn start_pacing(name: &str, backlog: i32, accept_every: Duration) -> Freezable {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
        s.listen(backlog).expect("listen");
        s.set_nonblocking(true).expect("nonblocking");
        let listener = TcpListener::from_std(s.into()).expect("listener");
        let addr = listener.local_addr().expect("addr");
        let (frozen, rx) = watch::channel(false);
        let hits = Arc::new(AtomicU64::new(0));
        let (h, name) = (Arc::clone(&hits), Arc::<str>::from(name));
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            let mut accept_rx = rx.clone();
            loop {
                until_thawed(&mut accept_rx).await;
                tokio::select! {
                    Ok((stream, _)) = listener.accept() => {
                        if !accept_every.is_zero() {
                            // Pacing the accept loop is the behaviour under test.
                            tokio::time::sleep(accept_every).await;
                        }
                        let (h, name, rx) = (Arc::clone(&h), Arc::clone(&name), rx.clone());
                        conns.spawn(async move {
                            let svc = service_fn(move |req: Request<Incoming>| {
                                let (h, name, mut rx) = (Arc::clone(&h), Arc::clone(&name), rx.clone());
                                async move {
                                    until_thawed(&mut rx).await;
                                    if !crate::is_probe(&req) {
                                        h.fetch_add(1, Relaxed);
                                    }
                                    Ok::<_, std::convert::Infallible>(Response::new(full(name.to_string())))
                                }
                            });
                            let b = hyper::server::conn::http1::Builder::new();
                            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
                        });
                    }
                    _ = accept_rx.changed() => {}
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Freezable { addr, hits, frozen, backlog, fillers: JoinSet::new(), task }
    }

    /// Stop accepting and answering, and fill the accept queue so that new SYNs are dropped.
    pub fn freeze(&mut self) {
        self.frozen.send_replace(true);
        for _ in 0..self.backlog + 4 {
            let addr = self.addr;
            self.fillers.spawn(async move {
                if let Ok(Ok(s)) = tokio::time::timeout(
                    Duration::from_secs(30),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                {
                    std::future::pending::<()>().await;
                    drop(s);
                }
            });
        }
    }

    pub fn thaw(&mut self) {
        self.fillers.abort_all();
        self.frozen.send_replace(false);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Freezable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `lb member` as a process of its own on 127.0.0.1:0, to stop with SIGSTOP.
pub struct Process {
    pub child: ChildGuard,
    pub addr: SocketAddr,
}

impl Process {
    pub fn start(name: &str) -> Process {
        let mut cmd = std::process::Command::new(lb_bin());
        cmd.args(["demo-member", "--bind", "127.0.0.1:0", "--name", name]);
        let (child, addr) = crate::spawn_member(cmd);
        Process { child: ChildGuard(child), addr }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.0.id().to_string();
        let ok = std::process::Command::new("kill").args([sig, &pid]).status().expect("kill");
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// SIGSTOP, and wait until every thread of the process has stopped: a signal is delivered
    /// to each thread as it next runs, which on a busy host can be after the next request.
    pub fn stop(&self) {
        self.signal("-STOP");
        let tasks = format!("/proc/{}/task", self.child.0.id());
        let stopped = || {
            std::fs::read_dir(&tasks).is_ok_and(|d| {
                d.filter_map(Result::ok).all(|t| {
                    std::fs::read_to_string(t.path().join("stat"))
                        .ok()
                        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                        .unwrap_or(true)
                })
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !stopped() {
            assert!(std::time::Instant::now() < deadline, "{tasks}: not stopped after 5 s");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A stopped process must run again to die of SIGKILL's cleanup in order.
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.child.0.id().to_string()])
            .status();
    }
}

/// Downloads from `url` on `n` connections until dropped: fills a shaped link.
pub struct Bulk {
    /// Dropping the set aborts the downloads.
    _downloads: JoinSet<()>,
}

impl Bulk {
    pub fn start(url: &str, n: usize, deadline: Duration) -> Bulk {
        let mut set = JoinSet::new();
        let until = Instant::now() + deadline;
        for _ in 0..n {
            let url = url.to_owned();
            set.spawn(async move {
                let c = client();
                while Instant::now() < until {
                    let req = Request::get(&url).body(full(Bytes::new())).expect("request");
                    let _ = tokio::time::timeout(Duration::from_secs(10), send(&c, req)).await;
                }
            });
        }
        Bulk { _downloads: set }
    }
}

/// How clients use lb in a matrix cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// No requests at all.
    Idle,
    /// One GET a second, each on a new client connection.
    OnePerSecond,
    /// GETs back to back, each on a new client connection.
    Sequential,
    /// 50 clients, each looping GETs on its own keep-alive connection.
    KeepAlive50,
}

impl Traffic {
    pub const ALL: [Traffic; 4] =
        [Traffic::Idle, Traffic::OnePerSecond, Traffic::Sequential, Traffic::KeepAlive50];

    pub fn name(self) -> &'static str {
        match self {
            Traffic::Idle => "idle",
            Traffic::OnePerSecond => "1 req/s",
            Traffic::Sequential => "sequential, new connections",
            Traffic::KeepAlive50 => "50 keep-alive clients",
        }
    }
}

/// Running client traffic; counts answers and failures (anything but a 200, or a transport
/// error, or a GET taking longer than 10 s).
pub struct Load {
    pub ok: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub errors: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    set: JoinSet<()>,
}

impl Load {
    /// Start `t` against `url`, for at most `limit` (and 200,000 requests per client).
    pub fn start(t: Traffic, url: &str, limit: Duration) -> Load {
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut set = JoinSet::new();
        let until = Instant::now() + limit;
        let (clients, pace, keepalive) = match t {
            Traffic::Idle => (0, None, false),
            Traffic::OnePerSecond => (1, Some(Duration::from_secs(1)), false),
            Traffic::Sequential => (1, None, false),
            Traffic::KeepAlive50 => (50, None, true),
        };
        for _ in 0..clients {
            let (url, ok, failed, errors, stop) =
                (url.to_owned(), ok.clone(), failed.clone(), errors.clone(), stop.clone());
            set.spawn(async move {
                let shared = client();
                for _ in 0..200_000 {
                    if stop.load(Relaxed) || Instant::now() >= until {
                        break;
                    }
                    let started = Instant::now();
                    let c = if keepalive { shared.clone() } else { client() };
                    let req = Request::get(&url).body(full(Bytes::new())).expect("request");
                    match tokio::time::timeout(Duration::from_secs(10), send(&c, req)).await {
                        Ok(Ok(r)) if r.status == 200 => {
                            ok.fetch_add(1, Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Relaxed);
                            let what = match other {
                                Ok(Ok(r)) => format!("{}: {}", r.status, r.text()),
                                Ok(Err(e)) => e,
                                Err(_) => "no answer within 10 s".to_owned(),
                            };
                            errors.lock().expect("errors").push(what);
                        }
                    }
                    if let Some(p) = pace {
                        // Pacing, not synchronisation: the next request of a 1 req/s client.
                        tokio::time::sleep(p.saturating_sub(started.elapsed())).await;
                    }
                }
            });
        }
        Load { ok, failed, errors, stop, set }
    }

    pub async fn stop(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Relaxed);
        while self.set.join_next().await.is_some() {}
        let errors = std::mem::take(&mut *self.errors.lock().expect("errors"));
        (self.ok.load(Relaxed), self.failed.load(Relaxed), errors)
    }
}
