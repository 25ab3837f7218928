//! The admin listener (loopback by default): a JSON view of every balancer and member.
//!
//! `GET /status` returns [`crate::status::StatusReport`]; `lb status` reads it. Live changes
//! (balancer-manager) will be added here.
use crate::http::server::stopped;
use crate::runtime::Shared;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
    r
}

fn route(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => {
            let report = crate::status::report(&shared.balancers.load());
            match serde_json::to_vec_pretty(&report) {
                Ok(v) => reply(StatusCode::OK, "application/json", v),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
            }
        }
        (&Method::GET, "/health") => {
            let report = crate::status::health(&shared.balancers.load(), &shared.telemetry);
            match serde_json::to_vec_pretty(&report) {
                Ok(v) => reply(StatusCode::OK, "application/json", v),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
            }
        }
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/plain",
            "lb admin\n  GET /status  balancers and members (JSON)\n  GET /health  kernel-sourced member health (JSON)\n",
        ),
        (_, "/status" | "/" | "/health") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n")
        }
        (_, p) => reply(StatusCode::NOT_FOUND, "text/plain", format!("no admin endpoint {p}\n")),
    }
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let stop = stopped(shutdown);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let r = route(&shared, &req);
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = &mut stop => break,
        }
    }
}
