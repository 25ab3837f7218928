//! Accept loop for an HTTP listener: HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on one port.
//!
//! Takes an already-bound listener and a shutdown signal (bind, then run). One tracing span per
//! connection; connections finish their in-flight requests on shutdown.
use super::body::ResponseBody;
use super::proxy::{ConnState, HttpProxy};
use crate::config::ListenerConfig;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

/// How long open connections get to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(10);

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

/// Resolves once the shutdown flag turns true (or its sender is gone).
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serve `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    cfg: ListenerConfig,
    proxy: Arc<HttpProxy>,
    shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(&cfg));
    let graceful = GracefulShutdown::new();
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: say so, back off briefly, go on.
                        tracing::warn!(listener = %cfg.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = Arc::new(ConnState::new(peer));
                let proxy = Arc::clone(&proxy);
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let proxy = Arc::clone(&proxy);
                    let state = Arc::clone(&state);
                    async move { Ok::<hyper::Response<ResponseBody>, Infallible>(proxy.handle(req, &state).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                let span = tracing::info_span!("conn", listener = %cfg.name, peer = %peer);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }.instrument(span));
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = %cfg.name, "connections still open after {DRAIN:?}; closing them");
    }
}
