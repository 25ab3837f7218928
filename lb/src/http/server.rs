//! Accept loop for an HTTP listener: HTTP/1.1 and HTTP/2 on one port, cleartext (h2c by prior
//! knowledge) or TLS (ALPN h2 / http/1.1), optionally behind a PROXY protocol header.
//!
//! Takes an already-bound listener and a shutdown signal (bind, then run). What it serves comes
//! from its [`Slot`]: every new connection, and every request, reads the current [`HttpService`],
//! so a reload that swaps the slot changes routing and certificates without closing a connection.
//! One tracing span per connection; connections finish their in-flight requests on shutdown.
use super::body::ResponseBody;
use super::proxy::{ConnState, HttpProxy};
use crate::config::ListenerConfig;
use crate::conn::Incoming as ClientConn;
use crate::shutdown::stopped;
use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

/// What an HTTP listener serves; swapped whole by a reload.
pub struct HttpService {
    pub proxy: HttpProxy,
    pub builder: auto::Builder<TokioExecutor>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub accept_proxy: bool,
    /// The longest wait for a TLS handshake.
    pub handshake_timeout: Duration,
}

pub type Slot = Arc<ArcSwap<HttpService>>;

impl HttpService {
    /// `tls`: the acceptor made from the listener's `[[tls]]` blocks (ALPN h2, http/1.1).
    pub fn new(
        cfg: &ListenerConfig,
        proxy: HttpProxy,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> HttpService {
        HttpService {
            proxy,
            builder: builder(cfg),
            tls,
            accept_proxy: cfg.accept_proxy,
            handshake_timeout: cfg.timeout.min(crate::conn::PRELUDE_TIMEOUT),
        }
    }
}

fn builder(cfg: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // hyper runs one timer for the idle wait before a request and the reading of its head:
    // it is the keep-alive timeout, never longer than the listener timeout.
    let head_timeout = cfg.keepalive_timeout.min(cfg.timeout).max(Duration::from_millis(100));
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(cfg.keepalive)
        .header_read_timeout(head_timeout)
        .max_buf_size(cfg.max_header_bytes);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes as u32)
        .keep_alive_interval(None);
    b
}

/// Serve `listener` until `shutdown` turns true; then let open connections finish within
/// `grace`.
pub async fn serve(
    listener: TcpListener,
    name: Arc<str>,
    slot: Slot,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            (stream, peer) = crate::conn::accept(&listener, &name) => {
                let span = tracing::info_span!("conn", listener = %name, peer = %peer);
                let task = connection(ClientConn::new(stream, peer), Arc::clone(&slot), graceful.watcher());
                tokio::spawn(task.instrument(span));
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = %name, "connections still open after {grace:?}; closing them");
    }
}

/// One client connection: PROXY header, TLS handshake, then HTTP until it closes.
async fn connection(mut conn: ClientConn, slot: Slot, watcher: Watcher) {
    let svc = slot.load_full();
    if svc.accept_proxy
        && let Err(e) = conn.accept_proxy().await
    {
        tracing::warn!(error = %e, "closing: bad or missing PROXY protocol header");
        return;
    }
    let client = conn.client;
    let stream = conn.into_stream();
    match &svc.tls {
        None => serve_http(stream, client, false, slot, &svc, watcher).await,
        Some(acceptor) => {
            let wait = svc.handshake_timeout;
            if let Some(tls) = crate::tls::accept(acceptor, stream, client, wait).await {
                serve_http(tls, client, true, slot, &svc, watcher).await;
            }
        }
    }
}

async fn serve_http<S>(
    stream: S,
    client: std::net::SocketAddr,
    tls: bool,
    slot: Slot,
    svc: &HttpService,
    watcher: Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new(client, tls));
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        // Each request reads the listener's current routes.
        let svc = slot.load_full();
        let state = Arc::clone(&state);
        async move {
            Ok::<hyper::Response<ResponseBody>, Infallible>(svc.proxy.handle(req, &state).await)
        }
    });
    let conn = svc.builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
