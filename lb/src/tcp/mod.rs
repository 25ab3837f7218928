//! Layer 4: TCP listeners that balance whole connections.
//!
//! Per connection: an optional PROXY header from the client ([`crate::conn`]); then either TLS
//! termination (plain TCP to members), SNI passthrough (the ClientHello's server name picks the
//! balancer, TLS stays end to end), or neither; then the balancer picks a member with the same
//! methods, flags, lbsets and ejection as HTTP (busy = open connections), a refused or timed-out
//! connect fails over within `maxattempts`, an optional PROXY header goes to the member, and
//! [`relay`] moves bytes both ways with half-close and an idle timeout.
pub mod relay;
pub mod splice;

use crate::balancer::{Balancer, Outcome, Pick, PickContext};
use crate::config::{ListenerConfig, ProxyVersion};
use crate::conn::prefixed::Prefixed;
use crate::conn::{Admission, Incoming as ClientConn, proxy_protocol, sni};
use crate::shutdown::stopped;
use crate::telemetry::Telemetry;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

/// What a TCP listener serves; swapped whole by a reload.
pub struct TcpService {
    pub name: Arc<str>,
    /// For connections no SNI route claims.
    pub default: Option<Arc<Balancer>>,
    /// SNI passthrough routes, in config order.
    pub sni: Vec<(String, Arc<Balancer>)>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub accept_proxy: bool,
    /// Relay plain TCP with [`splice`] (zero copy for bulk) instead of the buffered copy.
    pub splice: bool,
    pub idle: Duration,
    pub access_log: bool,
    pub telemetry: Arc<Telemetry>,
    pub max_connections: usize,
    pub stats: Arc<crate::status::counters::ListenerStats>,
}

pub type Slot = Arc<ArcSwap<TcpService>>;

impl TcpService {
    /// `balancer(name)` finds the live balancer of that name; `tls` terminates TLS.
    pub fn new(
        cfg: &ListenerConfig,
        balancer: impl Fn(&str) -> Option<Arc<Balancer>>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        telemetry: Arc<Telemetry>,
    ) -> TcpService {
        TcpService {
            name: Arc::from(cfg.name.as_str()),
            default: cfg.balancer.as_deref().and_then(&balancer),
            sni: cfg
                .sni
                .iter()
                .filter_map(|r| Some((r.server_name.clone(), balancer(&r.balancer)?)))
                .collect(),
            tls,
            accept_proxy: cfg.accept_proxy,
            splice: cfg.splice,
            idle: cfg.timeout,
            access_log: cfg.access_log,
            telemetry,
            max_connections: cfg.max_connections,
            stats: crate::status::counters::listener(&cfg.name),
        }
    }
}

/// Serve `listener` until `shutdown` turns true; then let open connections run for up to
/// `grace` before closing them.
pub async fn serve(
    listener: TcpListener,
    name: Arc<str>,
    slot: Slot,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut conns = JoinSet::new();
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    let admission = Arc::new(Admission::default());
    let stats = crate::status::counters::listener(&name);
    loop {
        let max = slot.load().max_connections;
        tokio::select! {
            _ = admission.room(max, &name) => {}
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = &mut stop => break,
        }
        tokio::select! {
            (stream, peer) = crate::conn::accept(&listener, &name) => {
                let span = tracing::info_span!("conn", listener = %name, peer = %peer);
                let (ticket, open) = (admission.enter(), stats.opened());
                let (conn, svc) = (ClientConn::new(stream, peer), slot.load_full());
                conns.spawn(async move {
                    // Made inside the task, so that its state is laid out once in it (see
                    // `http::server::serve`).
                    connection(conn, svc).await;
                    drop((ticket, open));
                }.instrument(span));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = &mut stop => break,
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(listener = %name, open = conns.len(), "connections still open after {grace:?}; closing them");
        conns.abort_all();
    }
}

/// One client connection, start to end.
async fn connection(mut conn: ClientConn, svc: Arc<TcpService>) {
    if svc.accept_proxy
        && let Err(e) = conn.accept_proxy().await
    {
        tracing::warn!(error = %e, "closing: bad or missing PROXY protocol header");
        return;
    }
    let (client, local) = (conn.client, conn.local());
    if let Some(acceptor) = &svc.tls {
        // Boxed: the handshake's state is larger than all the rest of a connection's; inline,
        // every cleartext connection carried room for it.
        crate::memory::boxed(|| terminate(acceptor, conn, client, local, &svc)).await;
        return;
    }
    let balancer = if svc.sni.is_empty() {
        svc.default.clone()
    } else {
        match conn.server_name().await {
            Ok(name) => {
                let routed = name.as_deref().and_then(|n| {
                    svc.sni.iter().find(|(p, _)| sni::matches(p, n)).map(|(_, b)| Arc::clone(b))
                });
                tracing::debug!(sni = ?name, routed = routed.is_some(), "ClientHello read");
                routed.or_else(|| svc.default.clone())
            }
            Err(e) => {
                tracing::warn!(%client, error = %e, "closing: no TLS ClientHello to route by");
                return;
            }
        }
    };
    forward(Client::Plain(conn.into_stream()), client, local, balancer, &svc).await;
}

/// TLS termination, then the relay to a member of the default balancer.
async fn terminate(
    acceptor: &tokio_rustls::TlsAcceptor,
    conn: ClientConn,
    client: SocketAddr,
    local: SocketAddr,
    svc: &TcpService,
) {
    let wait = crate::conn::PRELUDE_TIMEOUT;
    if let Some(tls) = crate::tls::accept(acceptor, conn.into_stream(), client, wait).await {
        forward(Client::Tls(Box::new(tls)), client, local, svc.default.clone(), svc).await;
    }
}

/// The client side of a connection: plain TCP (with what lb read of it in front), or TLS that lb
/// terminated.
enum Client {
    Plain(Prefixed<TcpStream>),
    Tls(Box<tokio_rustls::server::TlsStream<Prefixed<TcpStream>>>),
}

/// Connect the client to a member of `balancer` and relay until done.
async fn forward(
    client_io: Client,
    client: SocketAddr,
    local: SocketAddr,
    balancer: Option<Arc<Balancer>>,
    svc: &TcpService,
) {
    let start = Instant::now();
    let Some(balancer) = balancer else {
        tracing::warn!(%client, "closing: no SNI route matches and the listener has no default balancer");
        return;
    };
    let (pick, mut upstream, _slot) = match connect(&balancer, client, &svc.telemetry).await {
        Ok(x) => x,
        Err(msg) => {
            tracing::warn!(%client, balancer = %balancer.name(), error = %msg, "closing: no member reachable");
            return;
        }
    };
    let member = Arc::clone(pick.member());
    if let Some(v) = member.config().send_proxy {
        let header = match v {
            ProxyVersion::V1 => proxy_protocol::encode_v1(client, local),
            ProxyVersion::V2 => proxy_protocol::encode_v2(client, local),
        };
        if let Err(e) = upstream.write_all(&header).await {
            member.report(Outcome::Failed(format!(
                "member {}: sending the PROXY header: {e}",
                member.url
            )));
            return;
        }
    }
    let m = Arc::clone(&member);
    let moved = relay::Moved::default();
    let result = match client_io {
        Client::Plain(p) if svc.splice => {
            // What lb read while looking for a header goes first; the rest moves in the kernel.
            let (read, tcp) = p.into_parts();
            match upstream.write_all(&read).await {
                Ok(()) => {
                    moved.to_member(&member, read.len() as u64);
                    splice::relay(&tcp, upstream.get_ref(), m, svc.idle, &moved).await
                }
                Err(e) => Err(relay::RelayError::Member(e)),
            }
        }
        Client::Plain(p) => relay::relay(p, upstream, m, svc.idle, &moved).await,
        Client::Tls(t) => relay::relay(t, upstream, m, svc.idle, &moved).await,
    };
    let outcome = match &result {
        Ok(()) => "closed".to_owned(),
        Err(e) => e.to_string(),
    };
    if let Err(relay::RelayError::Member(e)) = &result {
        member.note_error(
            crate::balancer::now_ms(),
            format!("member {} mid-stream: {e}", member.url),
        );
    }
    let elapsed = start.elapsed();
    let to_client = moved.to_client.load(std::sync::atomic::Ordering::Relaxed);
    svc.stats.stream_done(to_client, elapsed.as_micros() as u64);
    if svc.access_log {
        crate::accesslog::emit(crate::accesslog::Entry::Tcp(Box::new(
            crate::accesslog::TcpRecord {
                listener: Arc::clone(&svc.name),
                client,
                balancer: Arc::from(balancer.name()),
                member: member.url.to_string(),
                to_member: moved.to_member.load(std::sync::atomic::Ordering::Relaxed),
                to_client,
                at: std::time::SystemTime::now() - elapsed,
                total_ms: elapsed.as_millis() as u64,
                outcome,
            },
        )));
    }
    drop(pick);
}

/// Connect to `m`, giving up (to fail over) if it is ejected while the connect is pending.
async fn connect_unless_ejected(
    m: &crate::balancer::Member,
    telemetry: &Telemetry,
) -> Result<crate::telemetry::tcp_info::TrackedStream, crate::upstream::UpstreamError> {
    let _waiting = m.vitals.wait();
    tokio::select! {
        r = crate::upstream::connect::connect(m, telemetry) => r,
        _ = m.vitals.ejected() => {
            Err(crate::upstream::UpstreamError::Ejected { addr: m.url.authority() })
        }
    }
}

/// Pick and connect, failing over on connect errors within `maxattempts`. Returns the pick
/// (counted busy while held), the connection and its slot permit.
async fn connect(
    b: &Balancer,
    client: SocketAddr,
    telemetry: &Telemetry,
) -> Result<
    (Pick, crate::telemetry::tcp_info::TrackedStream, Option<tokio::sync::OwnedSemaphorePermit>),
    String,
> {
    let mut ctx = PickContext { client: Some(client), ..Default::default() };
    let mut attempts = 0u32;
    let mut last: Option<String> = None;
    loop {
        let Some(pick) = b.pick_wait(&ctx).await else {
            let mut msg = b.unavailable_reason();
            if let Some(e) = last {
                msg.push_str("; last error: ");
                msg.push_str(&e);
            }
            return Err(msg);
        };
        attempts += 1;
        let m = Arc::clone(pick.member());
        let result: Result<(), String> = match m.acquire_slot().await {
            Err(e) => {
                let msg = format!("member {}: {e}", m.url);
                m.report(Outcome::Busy(msg.clone()));
                Err(msg)
            }
            Ok(permit) => match connect_unless_ejected(&m, telemetry).await {
                Ok(stream) => {
                    m.report(Outcome::Success);
                    return Ok((pick, stream, permit));
                }
                Err(e) => {
                    let msg = format!("member {}: {e}", m.url);
                    match e {
                        // Already out of rotation: nothing more to hold against it.
                        crate::upstream::UpstreamError::Ejected { .. } => {
                            m.note_error(crate::balancer::now_ms(), msg.clone())
                        }
                        _ => m.report(Outcome::Failed(msg.clone())),
                    }
                    Err(msg)
                }
            },
        };
        if let Err(msg) = result {
            tracing::warn!(balancer = %b.name(), attempt = attempts, error = %msg, "member failed");
            ctx.tried.push(m.id);
            last = Some(msg);
        }
        if attempts > b.settings.maxattempts {
            return Err(format!(
                "all {attempts} attempt(s) failed; last: {}",
                last.unwrap_or_default()
            ));
        }
    }
}
