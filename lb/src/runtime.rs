//! Wiring and life cycle: validated config → live balancers, routes and listeners; bind; run;
//! reload; shut down.
//!
//! [`Lb::build`] makes the live objects ([`crate::routing::Routing`]), [`Lb::bind`] binds every socket (so a
//! caller learns the real ports of `:0` binds before traffic starts), [`Bound::run`] serves until
//! the shutdown future resolves. A reload ([`Handle::reload`], SIGHUP, `POST /reload`) builds a
//! new `Routing` that keeps every member whose balancer and URL are unchanged (same `Member`,
//! counters, health and pool), binds what is new, then swaps: the balancer set and each
//! listener's service slot are `ArcSwap`s the data path reads, so no request or stream is cut.
use crate::balancer::heartbeat::Heartbeats;
use crate::config::{Config, ListenerConfig};
use crate::routing::{BuildError, Routing, Service};
use crate::shutdown::stopped;
use crate::state::{ReloadRequest, Shared};
use crate::telemetry::{Telemetry, TelemetryError};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

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
    #[error(transparent)]
    Build(#[from] BuildError),
}

pub struct Lb {
    config: Config,
    shared: Arc<Shared>,
    routing: Routing,
    /// The listeners' services, until `run` starts them.
    services: Vec<Service>,
    reload_rx: mpsc::Receiver<ReloadRequest>,
    apply_tx: mpsc::Sender<(Box<Config>, ReloadRequest)>,
    apply_rx: mpsc::Receiver<(Box<Config>, ReloadRequest)>,
    /// The file a reload re-reads (None: reloads take a `Config` through [`Handle::reload`]).
    config_path: Option<std::path::PathBuf>,
}

/// Asks a running lb to reload.
#[derive(Clone)]
pub struct Handle {
    apply: mpsc::Sender<(Box<Config>, ReloadRequest)>,
    file: mpsc::Sender<ReloadRequest>,
    shared: Arc<Shared>,
}

impl Handle {
    /// The bound address of each running listener, by name (as of the last start or reload).
    pub fn listeners(&self) -> HashMap<String, SocketAddr> {
        self.shared.listeners.load().iter().cloned().collect()
    }

    /// Apply this config (validated already); the answer says what changed or why not.
    pub async fn reload(&self, cfg: Config) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.apply.send((Box::new(cfg), tx)).await.map_err(|_| "lb has stopped".to_owned())?;
        rx.await.map_err(|_| "lb has stopped".to_owned())?
    }

    /// Re-read the config file lb was started with.
    pub async fn reload_file(&self) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.file.send(tx).await.map_err(|_| "lb has stopped".to_owned())?;
        rx.await.map_err(|_| "lb has stopped".to_owned())?
    }
}

/// Everything bound, nothing served yet.
pub struct Bound {
    lb: Lb,
    sockets: Vec<TcpListener>,
    admin: Option<TcpListener>,
    heartbeat: Option<tokio::net::UdpSocket>,
}

/// The admin listener's backlog (Apache's `ListenBacklog` default).
const ADMIN_BACKLOG: u32 = 511;

fn bind(name: &str, addr: SocketAddr, backlog: u32) -> Result<TcpListener, RunError> {
    crate::conn::listen(addr, backlog).map_err(|source| RunError::Bind {
        name: name.to_owned(),
        addr,
        source,
    })
}

impl Lb {
    pub fn build(cfg: &Config) -> Result<Lb, RunError> {
        crate::status::counters::started();
        let telemetry = Telemetry::start(&cfg.telemetry).map_err(RunError::Telemetry)?;
        let heartbeats = Arc::new(Heartbeats::default());
        let none = crate::dns::Answers::new();
        let (routing, services) = Routing::build(cfg, None, &telemetry, &heartbeats, &none)?;
        let (reload_tx, reload_rx) = mpsc::channel(4);
        let (apply_tx, apply_rx) = mpsc::channel(4);
        let shared = Arc::new(Shared {
            balancers: Arc::new(ArcSwap::from_pointee(routing.balancers.clone())),
            telemetry,
            heartbeats,
            reload: reload_tx,
            listeners: ArcSwap::default(),
            config: ArcSwap::from_pointee(cfg.clone()),
            apply: apply_tx.clone(),
        });
        Ok(Lb {
            config: cfg.clone(),
            shared,
            routing,
            services,
            reload_rx,
            apply_tx,
            apply_rx,
            config_path: None,
        })
    }

    /// Reloads (SIGHUP, `lb reload`) re-read this file.
    pub fn with_config_path(mut self, path: std::path::PathBuf) -> Lb {
        self.config_path = Some(path);
        self
    }

    pub async fn bind(self) -> Result<Bound, RunError> {
        let mut sockets = Vec::new();
        for l in &self.config.listeners {
            sockets.push(bind(&l.name, l.bind, l.backlog)?);
        }
        let admin = match &self.config.admin {
            None => None,
            Some(a) => Some(bind("admin", a.bind, ADMIN_BACKLOG)?),
        };
        let heartbeat =
            match self.config.heartbeat_listen {
                None => None,
                Some(addr) => {
                    Some(tokio::net::UdpSocket::bind(addr).await.map_err(|source| {
                        RunError::Bind { name: "heartbeat".into(), addr, source }
                    })?)
                }
            };
        let bound = Bound { lb: self, sockets, admin, heartbeat };
        bound.lb.shared.listeners.store(Arc::new(bound.listener_addrs()));
        Ok(bound)
    }
}

/// A listener being served.
struct Running {
    cfg: ListenerConfig,
    addr: SocketAddr,
    slot: RunningSlot,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The listening socket, shared with the task, for a reload that changes its backlog. Dropped
    /// when the listener stops, so that the socket closes when the task lets go of it.
    socket: Option<socket2::Socket>,
}

enum RunningSlot {
    Http(crate::http::server::Slot),
    Tcp(crate::tcp::Slot),
}

fn start(cfg: &ListenerConfig, socket: TcpListener, service: Service, grace: Duration) -> Running {
    let addr = socket.local_addr().unwrap_or(cfg.bind);
    let shared_socket = socket2::SockRef::from(&socket).try_clone().ok();
    let (stop, rx) = watch::channel(false);
    let name: Arc<str> = Arc::from(cfg.name.as_str());
    let tls = if cfg.tls.is_empty() { "" } else { "+tls" };
    tracing::info!(listener = %cfg.name, %addr, "listening ({}{tls})", cfg.protocol.as_str());
    let (slot, task) = match service {
        Service::Http(s) => {
            let slot = Arc::new(ArcSwap::new(s));
            let task = tokio::spawn(crate::http::server::serve(
                socket,
                name,
                Arc::clone(&slot),
                rx,
                grace,
            ));
            (RunningSlot::Http(slot), task)
        }
        Service::Tcp(s) => {
            let slot = Arc::new(ArcSwap::new(s));
            let task = tokio::spawn(crate::tcp::serve(socket, name, Arc::clone(&slot), rx, grace));
            (RunningSlot::Tcp(slot), task)
        }
    };
    Running { cfg: cfg.clone(), addr, slot, stop, task, socket: shared_socket }
}

/// Store `service` into a running listener's slot; false when the kinds differ.
fn swap(slot: &RunningSlot, service: Service) -> bool {
    match (slot, service) {
        (RunningSlot::Http(slot), Service::Http(s)) => slot.store(s),
        (RunningSlot::Tcp(slot), Service::Tcp(s)) => slot.store(s),
        _ => return false,
    }
    true
}

impl Bound {
    /// The bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs().into_iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    /// Every listener's name and bound address, in config order.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        let names = self.lb.config.listeners.iter().map(|l| l.name.clone());
        names.zip(self.sockets.iter().filter_map(|s| s.local_addr().ok())).collect()
    }

    pub fn heartbeat_addr(&self) -> Option<SocketAddr> {
        self.heartbeat.as_ref()?.local_addr().ok()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref()?.local_addr().ok()
    }

    pub fn handle(&self) -> Handle {
        Handle {
            apply: self.lb.apply_tx.clone(),
            file: self.lb.shared.reload.clone(),
            shared: Arc::clone(&self.lb.shared),
        }
    }

    /// Serve until `shutdown` resolves; then stop accepting and let open work finish within
    /// `[server] graceful_shutdown_timeout`.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let Bound { lb, sockets, admin, heartbeat } = self;
        let Lb {
            mut config,
            shared,
            mut routing,
            services,
            mut reload_rx,
            apply_tx,
            mut apply_rx,
            config_path,
        } = lb;
        drop(apply_tx);
        let grace = config.graceful_shutdown_timeout;
        let publish = |running: &[Running]| {
            let v = running.iter().map(|r| (r.cfg.name.clone(), r.addr)).collect();
            shared.listeners.store(Arc::new(v));
        };
        let (tx, rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut running: Vec<Running> = Vec::new();
        for ((cfg, socket), service) in config.listeners.iter().zip(sockets).zip(services) {
            running.push(start(cfg, socket, service, grace));
        }
        publish(&running);
        if let Some(admin) = admin {
            if let Ok(a) = admin.local_addr() {
                tracing::info!(addr = %a, "admin listening");
            }
            let access = config.admin.clone().map(crate::admin::Access::from).unwrap_or_default();
            tasks.spawn(crate::admin::serve(admin, Arc::clone(&shared), access, rx.clone()));
        }
        if let Some(sock) = heartbeat {
            if let Ok(a) = sock.local_addr() {
                tracing::info!(addr = %a, "heartbeat listening (udp)");
            }
            let beats = Arc::clone(&shared.heartbeats);
            tasks.spawn(heartbeat_listener(sock, beats, stopped(rx.clone())));
        }
        let telemetry = Arc::clone(&shared.telemetry);
        tasks.spawn(telemetry.pump_logs(stopped(rx.clone())));
        tasks.spawn(crate::health::run(
            Arc::clone(&shared.balancers),
            Arc::clone(&shared.telemetry),
            stopped(rx.clone()),
        ));
        // Members named by DNS: the resolver task publishes answers, the loop below rebuilds.
        let (names_tx, names_rx) = watch::channel(crate::dns::names(&config));
        let (answers_tx, mut answers_rx) = watch::channel(crate::dns::Answers::new());
        // Without a resolver the sender stays here, so the loop never sees the channel close.
        let mut _no_resolver = None;
        match crate::dns::resolver(&config.resolver) {
            Ok(r) => {
                let ttl = (config.resolver.min_ttl, config.resolver.max_ttl);
                let stop = stopped(rx.clone());
                tasks.spawn(crate::dns::watch(r, ttl, names_rx, answers_tx, stop));
            }
            Err(e) => {
                tracing::warn!("{e}; members named by DNS use the system resolver at each connect");
                _no_resolver = Some((names_rx, answers_tx));
            }
        }
        let mut answers = crate::dns::Answers::new();
        let mut draining: Vec<JoinHandle<()>> = Vec::new();
        let mut purge = tokio::time::interval(crate::upstream::pool::PURGE_EVERY);
        purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            // A reload (with someone waiting for its answer), or new DNS answers (the running
            // config again, members re-expanded).
            let (next, answer) = tokio::select! {
                _ = &mut shutdown => break,
                _ = purge.tick() => {
                    let closed: usize = routing.upstreams.values().map(|u| u.purge_idle()).sum();
                    if closed > 0 {
                        tracing::debug!(closed, "idle member connections nobody needed closed");
                    }
                    continue;
                }
                Some((cfg, answer)) = apply_rx.recv() => (Ok(*cfg), Some(answer)),
                Some(answer) = reload_rx.recv() => {
                    let next = match &config_path {
                        Some(p) => Config::load(p).map(with_state).map_err(|e| e.report()),
                        None => Err("lb was started without a config file".to_owned()),
                    };
                    (next, Some(answer))
                }
                Ok(()) = answers_rx.changed() => {
                    answers = answers_rx.borrow_and_update().clone();
                    (Ok(config.clone()), None)
                }
            };
            let result = match next {
                Ok(next) => {
                    let r =
                        apply(&next, &shared, &mut routing, &mut running, &mut draining, &answers)
                            .await
                            .map(|summary| summary + &needs_restart(&config, &next));
                    if r.is_ok() {
                        publish(&running);
                        names_tx.send_if_modified(|n| {
                            let fresh = crate::dns::names(&next);
                            let changed = *n != fresh;
                            *n = fresh;
                            changed
                        });
                        shared.config.store(Arc::new(next.clone()));
                        config = next;
                    }
                    r
                }
                Err(e) => Err(e),
            };
            match (&result, &answer) {
                (Ok(summary), Some(_)) => tracing::info!("reloaded: {summary}"),
                (Ok(summary), None) => tracing::info!("members follow DNS: {summary}"),
                (Err(e), _) => tracing::error!("reload refused; the running config stays:\n{e}"),
            }
            if let Some(answer) = answer {
                let _ = answer.send(result);
            }
            draining.retain(|t| !t.is_finished());
        }
        tracing::info!("shutting down: no new connections; open ones get {grace:?} to finish");
        let _ = tx.send(true);
        for r in &mut running {
            // Every listener at once: its socket closes once its task lets go of it too.
            r.socket = None;
            let _ = r.stop.send(true);
        }
        for r in running {
            let _ = r.task.await;
        }
        for t in draining {
            let _ = t.await;
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Apply a validated config to the running listeners. Either everything is applied, or (a
/// socket cannot be bound, a TLS setup fails) nothing is.
async fn apply(
    next: &Config,
    shared: &Shared,
    routing: &mut Routing,
    running: &mut Vec<Running>,
    draining: &mut Vec<JoinHandle<()>>,
    answers: &crate::dns::Answers,
) -> Result<String, String> {
    // Bind every new or moved listener before changing anything (a build that fails does so
    // before it touches a member).
    let mut fresh: HashMap<String, TcpListener> = HashMap::new();
    for l in &next.listeners {
        let keep = running
            .iter()
            .any(|r| r.cfg.name == l.name && r.cfg.bind == l.bind && r.cfg.protocol == l.protocol);
        if !keep {
            let socket = bind(&l.name, l.bind, l.backlog).map_err(|e| crate::errors::chain(&e))?;
            fresh.insert(l.name.clone(), socket);
        }
    }
    let (built, services) =
        Routing::build(next, Some(routing), &shared.telemetry, &shared.heartbeats, answers)
            .map_err(|e| crate::errors::chain(&e))?;
    let ids = |r: &Routing| -> Vec<_> {
        r.balancers.iter().flat_map(|b| b.members.iter().map(|m| m.id)).collect()
    };
    let (old_ids, new_ids) = (ids(routing), ids(&built));
    let added_members = new_ids.iter().filter(|i| !old_ids.contains(i)).count();
    let removed_members = old_ids.iter().filter(|i| !new_ids.contains(i)).count();
    shared.balancers.store(Arc::new(built.balancers.clone()));
    let grace = next.graceful_shutdown_timeout;
    let mut old: Vec<Running> = std::mem::take(running);
    let (mut kept, mut started) = (0, 0);
    for (l, service) in next.listeners.iter().zip(services) {
        if let Some(socket) = fresh.remove(&l.name) {
            running.push(start(l, socket, service, grace));
            started += 1;
        } else if let Some(i) = old.iter().position(|r| r.cfg.name == l.name) {
            let mut r = old.remove(i);
            // Same address and protocol: swap what it serves, keep the socket and connections.
            if swap(&r.slot, service) {
                if r.cfg.backlog != l.backlog
                    && let Some(socket) = &r.socket
                    && let Err(e) = crate::conn::relisten(socket, l.backlog)
                {
                    tracing::warn!(listener = %l.name, error = %e, "could not change the backlog");
                }
                r.cfg = l.clone();
                running.push(r);
                kept += 1;
            } else {
                // Cannot happen (a protocol change rebinds); never leave it running unstopped.
                tracing::error!(listener = %l.name, "listener kind changed without a rebind; stopping it");
                old.push(r);
            }
        }
    }
    let stopped = old.len();
    for r in old {
        tracing::info!(listener = %r.cfg.name, addr = %r.addr, "listener removed or moved: no new connections; open ones drain");
        let _ = r.stop.send(true);
        draining.push(r.task);
    }
    *routing = built;
    Ok(format!(
        "{} listener(s): {kept} kept, {started} started, {stopped} stopped; {} balancer(s); members: {added_members} added, {removed_members} removed",
        next.listeners.len(),
        next.balancers.len()
    ))
}

/// The config with the live edits of `[admin] state_file` made again (at start and at each
/// reload of the file); an edit that no longer applies is logged and skipped.
pub fn with_state(cfg: Config) -> Config {
    let (cfg, warnings) = crate::persist::replay(cfg);
    for w in warnings {
        tracing::warn!("state file: {w}");
    }
    cfg
}

/// What a reload does not apply, when it changed: said in the reload's answer.
fn needs_restart(running: &Config, next: &Config) -> String {
    let mut keys = Vec::new();
    let admin = |c: &Config| c.admin.as_ref().map(|a| (a.bind, a.token.clone(), a.allow.clone()));
    if admin(running) != admin(next) {
        keys.push("[admin]");
    }
    if running.heartbeat_listen != next.heartbeat_listen {
        keys.push("[heartbeat]");
    }
    if running.resolver != next.resolver {
        keys.push("[resolver]");
    }
    let (a, b) = (&running.telemetry, &next.telemetry);
    if a.source != b.source || a.interval != b.interval {
        keys.push("[telemetry]");
    }
    if running.graceful_shutdown_timeout != next.graceful_shutdown_timeout {
        keys.push("[server] (for listeners already running)");
    }
    if keys.is_empty() {
        String::new()
    } else {
        format!("; not applied until a restart: {}", keys.join(", "))
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
