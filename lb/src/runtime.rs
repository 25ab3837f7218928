//! Wiring: validated config → balancers, pools and listeners; bind; run until shutdown.
//!
//! [`Lb::build`] makes the live objects, [`Lb::bind`] binds every socket (so a caller learns the
//! real ports of `:0` binds before traffic starts), [`Bound::run`] serves until the shutdown
//! future resolves. The balancer set sits behind an `ArcSwap` so a reload can swap it whole.
use crate::balancer::Balancer;
use crate::balancer::heartbeat::Heartbeats;
use crate::config::{BalancerConfig, Config, LbMethod, ListenerConfig, Target};
use crate::http::proxy::HttpProxy;
use crate::http::route::{ReverseMap, Route, RouteTable, Upstream};
use crate::telemetry::{Telemetry, TelemetryError};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// State shared with the control plane (admin API).
pub struct Shared {
    pub balancers: ArcSwap<Vec<Arc<Balancer>>>,
    pub telemetry: Arc<Telemetry>,
    pub heartbeats: Arc<Heartbeats>,
}

pub struct Lb {
    shared: Arc<Shared>,
    listeners: Vec<(ListenerConfig, Arc<HttpProxy>)>,
    admin: Option<SocketAddr>,
    heartbeat: Option<SocketAddr>,
}

/// Everything bound, nothing served yet.
pub struct Bound {
    lb: Lb,
    sockets: Vec<TcpListener>,
    admin: Option<TcpListener>,
    heartbeat: Option<tokio::net::UdpSocket>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot bind listener {name:?} on {addr}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel telemetry was required (source = \"ebpf\") but cannot start")]
    Telemetry(#[source] TelemetryError),
}

impl Lb {
    pub fn build(cfg: &Config) -> Result<Lb, RunError> {
        let telemetry = Telemetry::start(&cfg.telemetry).map_err(RunError::Telemetry)?;
        let heartbeats = Arc::new(Heartbeats::default());
        let mut balancers: Vec<Arc<Balancer>> = Vec::new();
        let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
        for b in &cfg.balancers {
            let bal = Arc::new(Balancer::new(b.clone(), false, Arc::clone(&heartbeats)));
            upstreams.insert(b.name.clone(), Arc::new(Upstream::new(Arc::clone(&bal), &telemetry)));
            balancers.push(bal);
        }
        let mut listeners = Vec::new();
        for l in &cfg.listeners {
            let mut routes = Vec::new();
            for r in &l.routes {
                let (upstream, target_path) = match &r.target {
                    Target::Balancer { name, path } => match upstreams.get(name) {
                        Some(u) => (Arc::clone(u), path.clone()),
                        // Validation guarantees the balancer exists.
                        None => continue,
                    },
                    Target::Url { url, path } => {
                        let key = format!("url:{}", url.base());
                        let u = upstreams
                            .entry(key.clone())
                            .or_insert_with(|| {
                                let beats = Arc::clone(&heartbeats);
                                let bal = Arc::new(Balancer::new(
                                    implicit_balancer(key, url),
                                    true,
                                    beats,
                                ));
                                balancers.push(Arc::clone(&bal));
                                Arc::new(Upstream::new(bal, &telemetry))
                            })
                            .clone();
                        (u, path.clone())
                    }
                };
                let reverse =
                    r.reverse.then(|| ReverseMap::new(&upstream.balancer, &target_path, &r.path));
                routes.push(Route {
                    prefix: r.path.clone(),
                    target_path,
                    upstream,
                    reverse,
                    preserve_host: r.preserve_host,
                });
            }
            let proxy = HttpProxy {
                name: Arc::from(l.name.as_str()),
                routes: RouteTable::new(routes),
                access_log: l.access_log,
                keepalive: l.keepalive,
                max_keepalive_requests: l.max_keepalive_requests,
            };
            listeners.push((l.clone(), Arc::new(proxy)));
        }
        Ok(Lb {
            shared: Arc::new(Shared {
                balancers: ArcSwap::from_pointee(balancers),
                telemetry,
                heartbeats,
            }),
            listeners,
            admin: cfg.admin.as_ref().map(|a| a.bind),
            heartbeat: cfg.heartbeat_listen,
        })
    }

    pub async fn bind(self) -> Result<Bound, RunError> {
        let mut sockets = Vec::new();
        for (l, _) in &self.listeners {
            let s = TcpListener::bind(l.bind).await.map_err(|source| RunError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            })?;
            sockets.push(s);
        }
        let admin = match self.admin {
            None => None,
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| RunError::Bind {
                name: "admin".into(),
                addr,
                source,
            })?),
        };
        let heartbeat =
            match self.heartbeat {
                None => None,
                Some(addr) => {
                    Some(tokio::net::UdpSocket::bind(addr).await.map_err(|source| {
                        RunError::Bind { name: "heartbeat".into(), addr, source }
                    })?)
                }
            };
        Ok(Bound { lb: self, sockets, admin, heartbeat })
    }
}

fn implicit_balancer(name: String, url: &crate::config::MemberUrl) -> BalancerConfig {
    BalancerConfig {
        name,
        lbmethod: LbMethod::ByRequests,
        maxattempts: 0,
        nofailover: false,
        timeout: Duration::ZERO,
        failonstatus: Vec::new(),
        failontimeout: false,
        forcerecovery: true,
        growth: 0,
        ejection: crate::health::ejection::Policy::default(),
        members: vec![crate::config::MemberConfig::for_url(url.clone())],
    }
}

impl Bound {
    /// The bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        let i = self.lb.listeners.iter().position(|(l, _)| l.name == name)?;
        self.sockets.get(i)?.local_addr().ok()
    }

    pub fn heartbeat_addr(&self) -> Option<SocketAddr> {
        self.heartbeat.as_ref()?.local_addr().ok()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref()?.local_addr().ok()
    }

    /// Serve until `shutdown` resolves; then stop accepting and let open requests finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let (tx, rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for ((cfg, proxy), socket) in self.lb.listeners.into_iter().zip(self.sockets) {
            if let Ok(a) = socket.local_addr() {
                tracing::info!(listener = %cfg.name, addr = %a, "listening (http)");
            }
            tasks.spawn(crate::http::server::serve(socket, cfg, proxy, rx.clone()));
        }
        if let Some(admin) = self.admin {
            if let Ok(a) = admin.local_addr() {
                tracing::info!(addr = %a, "admin listening");
            }
            tasks.spawn(crate::admin::serve(admin, Arc::clone(&self.lb.shared), rx.clone()));
        }
        if let Some(sock) = self.heartbeat {
            if let Ok(a) = sock.local_addr() {
                tracing::info!(addr = %a, "heartbeat listening (udp)");
            }
            let beats = Arc::clone(&self.lb.shared.heartbeats);
            tasks.spawn(heartbeat_listener(sock, beats, crate::http::server::stopped(rx.clone())));
        }
        let telemetry = Arc::clone(&self.lb.shared.telemetry);
        tasks.spawn(telemetry.pump_logs(crate::http::server::stopped(rx.clone())));
        tasks.spawn(crate::health::run(
            Arc::clone(&self.lb.shared),
            crate::http::server::stopped(rx.clone()),
        ));
        shutdown.await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
        while tasks.join_next().await.is_some() {}
    }
}

/// Receive mod_heartbeat datagrams until `stop`.
async fn heartbeat_listener(
    sock: tokio::net::UdpSocket,
    beats: Arc<Heartbeats>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let body = String::from_utf8_lossy(&buf[..n]);
                if let Err(e) = beats.receive(from.ip(), &body, std::time::Instant::now()) {
                    tracing::debug!(%from, error = %e, "ignored a heartbeat datagram");
                }
            }
            _ = &mut stop => break,
        }
    }
}
