//! The admin listener (loopback by default).
//!
//! - `GET /status`: every balancer and member ([`crate::status::StatusReport`]; `lb status`).
//! - `GET /health`: kernel-sourced member health ([`crate::status::HealthReport`]; `lb health`).
//! - `GET /server-status` (`?auto`): Apache's status page and its machine format.
//! - `GET /metrics`: Prometheus text format.
//! - `POST /heartbeat`: a mod_heartbeat body (`v=1&ready=N&busy=M[&port=P]`) from a member, for
//!   the heartbeat method; the sender's address identifies it, as with the UDP datagrams.
//! - `GET /balancer-manager`: the page (tables, live charts, edit forms).
//! - `POST /balancer-manager`: a live edit with Apache's balancer-manager form parameters
//!   ([`crate::edit`]); the balancer's nonce and a same-origin Origin/Referer are required.
//! - `POST /reload`: re-read the config file (`lb reload`); 200 with what changed, or 422 with
//!   every error `lb check` would print (the old config keeps serving).
//!
//! Admin connections are plain HTTP/1.1 with a head-read timeout, so an idle or slow client
//! cannot hold one open. Who may use them ([`Access`], from `[admin]`): a client outside
//! `allow` gets 403; one not on loopback needs `Authorization: Bearer TOKEN`, else 401.
use crate::config::{AdminConfig, IpNet};
use crate::shutdown::stopped;
use crate::state::Shared;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The longest wait for a request head, and for a reload to be answered.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest heartbeat body accepted.
const MAX_HEARTBEAT: usize = 1024;

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
    r
}

fn json<T: serde::Serialize>(v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(v) {
        Ok(v) => reply(StatusCode::OK, "application/json", v),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
    }
}

const INDEX: &str = "lb admin\n  GET /balancer-manager  the balancer-manager page (POST: a live edit)\n  GET /status      balancers and members (JSON)\n  GET /health      kernel-sourced member health (JSON)\n  GET /server-status  Apache's status page (?auto: its machine format)\n  GET /metrics     Prometheus metrics\n  POST /heartbeat  v=1&ready=N&busy=M[&port=P] from a member\n  POST /reload     re-read the config file\n";

/// Send the runtime a request (`what` for messages) through `to`, made around the answer channel;
/// its answer, or the response that says it was refused or not answered.
async fn ask_runtime<T>(
    to: &tokio::sync::mpsc::Sender<T>,
    request: impl FnOnce(crate::state::ReloadRequest) -> T,
    what: &str,
) -> Result<String, Response<Full<Bytes>>> {
    let (answer, rx) = tokio::sync::oneshot::channel();
    if to.send(request(answer)).await.is_err() {
        return Err(reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "lb is shutting down\n"));
    }
    match tokio::time::timeout(ADMIN_TIMEOUT, rx).await {
        Ok(Ok(Ok(done))) => Ok(done),
        Ok(Ok(Err(refused))) => Err(reply(StatusCode::UNPROCESSABLE_ENTITY, "text/plain", refused)),
        _ => Err(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("the {what} was not answered\n"),
        )),
    }
}

async fn reload(shared: &Shared) -> Response<Full<Bytes>> {
    match ask_runtime(&shared.reload, |answer| answer, "reload").await {
        Ok(done) => reply(StatusCode::OK, "text/plain", done),
        Err(r) => r,
    }
}

/// Who may use the admin listener.
#[derive(Debug, Clone)]
pub struct Access {
    token: Option<String>,
    allow: Vec<IpNet>,
}

impl Default for Access {
    fn default() -> Access {
        Access { token: None, allow: crate::config::admin_loopback() }
    }
}

impl From<AdminConfig> for Access {
    fn from(a: AdminConfig) -> Access {
        Access { token: a.token, allow: a.allow }
    }
}

impl Access {
    /// The refusal for this request, if it is refused.
    fn refuse<B>(&self, req: &Request<B>, peer: SocketAddr) -> Option<Response<Full<Bytes>>> {
        let ip = peer.ip();
        if !self.allow.iter().any(|n| n.contains(ip)) {
            let msg = format!("{ip} may not use lb's admin API ([admin] allow)\n");
            return Some(reply(StatusCode::FORBIDDEN, "text/plain", msg));
        }
        let loopback = ip.is_loopback() || ip.to_canonical().is_loopback();
        let token = self.token.as_deref().filter(|_| !loopback)?;
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent.is_some_and(|s| same(s.as_bytes(), token.as_bytes())) {
            return None;
        }
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "lb's admin API needs Authorization: Bearer TOKEN from this address (lb … --token)\n",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"lb admin\""),
        );
        Some(r)
    }
}

/// Compare without an early exit, so the time taken does not tell how much of a guess matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The balancer-manager page: it reads `/status` and `/health` every second and posts edits to
/// `/balancer-manager`, all on this origin.
const MANAGER_PAGE: &str = include_str!("status/manager.html");

/// Largest balancer-manager form accepted.
const MAX_FORM: usize = 16 * 1024;

/// Whether a request that a browser may have sent came from lb's own pages: its `Origin`, or
/// else its `Referer`, must be this admin host (Apache checks the Referer the same way).
fn same_origin<B>(req: &Request<B>) -> bool {
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let origin = format!("http://{host}");
    if let Some(o) = req.headers().get(header::ORIGIN) {
        return o.to_str().is_ok_and(|o| o == origin);
    }
    if let Some(r) = req.headers().get(header::REFERER) {
        return r.to_str().is_ok_and(|r| r == origin || r.starts_with(&format!("{origin}/")));
    }
    true
}

/// `POST /balancer-manager`: a live edit with Apache's form parameters (see `crate::edit`).
async fn edit(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if !same_origin(&req) {
        let msg = "refused: the request came from another site (Origin/Referer)\n";
        return reply(StatusCode::FORBIDDEN, "text/plain", msg);
    }
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = match Limited::new(req.into_body(), MAX_FORM).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return reply(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", format!("form: {e}\n"));
        }
    };
    let mut params = crate::edit::form(&query);
    params.extend(crate::edit::form(&String::from_utf8_lossy(&body)));
    let running = shared.config.load_full();
    let (next, summary) = match crate::edit::apply(&running, &params) {
        Ok(x) => x,
        Err(e @ crate::edit::EditError::Nonce(_)) => {
            return reply(StatusCode::FORBIDDEN, "text/plain", format!("{e}\n"));
        }
        Err(e) => return reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    };
    match ask_runtime(&shared.apply, |answer| (Box::new(next), answer), "edit").await {
        Ok(_) => {
            tracing::info!(edit = %summary, "balancer-manager edit applied");
            let state = running.admin.as_ref().and_then(|a| a.state_file.as_deref());
            let saved = match state.map(|f| (f, crate::persist::record(f, &params))) {
                None | Some((_, Ok(()))) => String::new(),
                Some((f, Err(e))) => {
                    tracing::warn!(file = %f.display(), error = %e, "live edit not saved");
                    format!(" (not saved to {}: {e}; it lasts until restart)", f.display())
                }
            };
            reply(StatusCode::OK, "text/plain", format!("{summary}{saved}\n"))
        }
        Err(r) => r,
    }
}

async fn route(shared: &Shared, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/status") => json(&crate::status::report(&shared.balancers.load())),
        (Method::GET, "/health") => {
            json(&crate::status::health(&shared.balancers.load(), &shared.telemetry))
        }
        (Method::GET, "/") => reply(StatusCode::OK, "text/plain", INDEX),
        (Method::GET, "/server-status") => {
            if req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "auto")) {
                reply(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    crate::status::server_status::auto(),
                )
            } else {
                let b = shared.balancers.load();
                let page = crate::status::server_status::html(
                    &crate::status::report(&b),
                    &crate::status::health(&b, &shared.telemetry),
                );
                reply(StatusCode::OK, "text/html; charset=utf-8", page)
            }
        }
        (Method::GET, "/metrics") => {
            let b = shared.balancers.load();
            let text = crate::status::metrics::render(
                &crate::status::report(&b),
                &crate::status::health(&b, &shared.telemetry),
            );
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text)
        }
        (Method::POST, "/heartbeat") => {
            let body = match Limited::new(req.into_body(), MAX_HEARTBEAT).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "text/plain",
                        format!("heartbeat body: {e}\n"),
                    );
                }
            };
            let text = String::from_utf8_lossy(&body);
            match shared.heartbeats.receive(peer.ip(), &text, std::time::Instant::now()) {
                Ok(()) => reply(StatusCode::NO_CONTENT, "text/plain", Bytes::new()),
                Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
            }
        }
        (Method::POST, "/reload") => reload(shared).await,
        (Method::POST, "/balancer-manager") => edit(shared, req).await,
        (Method::GET, "/balancer-manager") => {
            let mut r = reply(StatusCode::OK, "text/html; charset=utf-8", MANAGER_PAGE);
            // The page only talks to its own origin.
            r.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:"),
            );
            r.headers_mut()
                .insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
            r
        }
        (_, "/status" | "/" | "/health" | "/server-status" | "/metrics") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n")
        }
        (_, "/heartbeat" | "/reload") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST\n")
        }
        (_, p) => reply(StatusCode::NOT_FOUND, "text/plain", format!("no admin endpoint {p}\n")),
    }
}

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    access: Access,
    shutdown: watch::Receiver<bool>,
) {
    let access = Arc::new(access);
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            (stream, peer) = crate::conn::accept(&listener, "admin") => {
                let (shared, access) = (Arc::clone(&shared), Arc::clone(&access));
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (shared, access) = (Arc::clone(&shared), Arc::clone(&access));
                        async move {
                            if let Some(refused) = access.refuse(&req, peer) {
                                return Ok::<_, Infallible>(refused);
                            }
                            Ok::<_, Infallible>(route(&shared, req, peer).await)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(ADMIN_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), svc);
                    // A request whose answer takes longer than this is cut (a reload waits at
                    // most ADMIN_TIMEOUT itself).
                    let _ = tokio::time::timeout(ADMIN_TIMEOUT * 6, conn).await;
                });
            }
            _ = &mut stop => break,
        }
    }
}
