//! Accept loop for an HTTP listener: HTTP/1.1 and HTTP/2 on one port, cleartext (h2c by prior
//! knowledge) or TLS (ALPN h2 / http/1.1), optionally behind a PROXY protocol header.
//!
//! Takes an already-bound listener and a shutdown signal (bind, then run). What it serves comes
//! from its [`Slot`]: every new connection, and every request, reads the current [`HttpService`],
//! so a reload that swaps the slot changes routing and certificates without closing a connection.
//! One tracing span per connection; connections finish their in-flight requests on shutdown.
use super::body::ResponseBody;
use super::guard::{Guarded, Rules, Shared};
use super::proxy::{ConnState, HttpProxy};
use crate::config::ListenerConfig;
use crate::conn::prefixed::Prefixed;
use crate::conn::{Admission, Incoming as ClientConn};
use crate::shutdown::stopped;
use crate::status::counters::{self, ListenerStats};
use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
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
    /// Limits and read timeouts for HTTP/1 clients.
    pub rules: Rules,
    pub max_connections: usize,
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
            handshake_timeout: cfg
                .read_timeouts
                .handshake
                .unwrap_or(cfg.timeout.min(crate::conn::PRELUDE_TIMEOUT)),
            max_connections: cfg.max_connections,
            rules: Rules {
                limits: cfg.limits,
                timeouts: cfg.read_timeouts,
                keepalive: cfg.keepalive_timeout,
                head: cfg.timeout,
            },
        }
    }
}

fn builder(cfg: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // The guard times the keep-alive wait and the head (RequestReadTimeout) of every HTTP/1
    // request, a refused upgrade's next ones included, so hyper's own timer for both is off:
    // it was a timer made and dropped for every request.
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(cfg.keepalive)
        .header_read_timeout(None)
        .max_headers(cfg.limits.fields)
        .max_buf_size(cfg.limits.head.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .max_header_list_size(cfg.limits.head as u32)
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
    let admission = Arc::new(Admission::default());
    let stats = counters::listener(&name);
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    loop {
        let max = slot.load().max_connections;
        tokio::select! {
            _ = admission.room(max, &name) => {}
            _ = &mut stop => break,
        }
        tokio::select! {
            (stream, peer) = crate::conn::accept(&listener, &name) => {
                // At debug level only: an enabled span is entered and left on every poll of
                // the connection, 2.4 times per request under load (by callgrind, 180
                // instructions and 33 first-level cache misses per request). Lines logged at
                // info and above name the client, listener or member themselves.
                let span = tracing::debug_span!("conn", listener = %name, peer = %peer);
                let (ticket, open) = (admission.enter(), stats.opened());
                let conn = ClientConn::new(stream, peer);
                let (slot, watcher, stats) = (Arc::clone(&slot), graceful.watcher(), Arc::clone(&stats));
                tokio::spawn(async move {
                    // Made here, inside the task: made outside and awaited in here, the
                    // connection's state would be laid out twice in the task (once as what the
                    // task holds, once as what it awaits), doubling what every open
                    // connection costs.
                    connection(conn, slot, watcher, stats).await;
                    drop((ticket, open));
                }.instrument(span));
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
async fn connection(mut conn: ClientConn, slot: Slot, watcher: Watcher, stats: Arc<ListenerStats>) {
    let svc = slot.load_full();
    if svc.accept_proxy
        && let Err(e) = conn.accept_proxy().await
    {
        tracing::warn!(client = %conn.client, error = %e, "closing: bad or missing PROXY protocol header");
        return;
    }
    let client = conn.client;
    let stream = conn.into_stream();
    match &svc.tls {
        None => serve_http(stream, client, None, slot, &svc, watcher, stats).await,
        // Boxed: a TLS connection's state (the handshake, then the TLS stream and hyper's
        // connection on it) is twice a cleartext one's; inline, every connection carried it.
        Some(acceptor) => {
            crate::memory::boxed(|| serve_tls(acceptor, stream, client, slot, &svc, watcher, stats))
                .await
        }
    }
}

/// The TLS handshake, then HTTP over it.
async fn serve_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: Prefixed<TcpStream>,
    client: SocketAddr,
    slot: Slot,
    svc: &HttpService,
    watcher: Watcher,
    stats: Arc<ListenerStats>,
) {
    let wait = svc.handshake_timeout;
    if let Some(tls) = crate::tls::accept(acceptor, stream, client, wait).await {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        serve_http(tls, client, Some(h2), slot, svc, watcher, stats).await;
    }
}

/// `alpn_h2`: None for cleartext, else whether TLS negotiated h2.
async fn serve_http<S>(
    stream: S,
    client: SocketAddr,
    alpn_h2: Option<bool>,
    slot: Slot,
    svc: &HttpService,
    watcher: Watcher,
    stats: Arc<ListenerStats>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(Shared::default());
    let h2 = alpn_h2 == Some(true);
    let stream = Guarded::new(stream, client, svc.rules, Arc::clone(&shared), h2);
    let state = Arc::new(ConnState::new(client, alpn_h2.is_some(), shared));
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        // Each request reads the listener's current routes.
        let svc = slot.load_full();
        let state = Arc::clone(&state);
        let counted = stats.request();
        async move {
            // The handler's state is large (routing, failover, the member exchange); boxed, it
            // is allocated once instead of copied each time hyper moves an h2 stream's future
            // (created, wrapped, spawned: several moves per request).
            let resp = crate::memory::boxed(|| svc.proxy.handle(req, &state)).await;
            let shared = Arc::clone(&state.shared);
            Ok::<_, Infallible>(resp.map(|body| Answer { body, shared, counted }))
        }
    });
    let conn = svc.builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A response body that tells the connection's guard when it is done (the keep-alive wait
/// starts then).
struct Answer {
    body: ResponseBody,
    shared: Arc<Shared>,
    /// The listener's counts: bytes as they pass, time when the answer ends.
    counted: counters::Request,
}

impl hyper::body::Body for Answer {
    type Data = bytes::Bytes;
    type Error = <ResponseBody as hyper::body::Body>::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let frame = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(f))) = &frame
            && let Some(d) = f.data_ref()
        {
            self.counted.bytes += d.len() as u64;
        }
        frame
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.shared.answered();
    }
}
