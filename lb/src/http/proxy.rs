//! One request's way through lb: route → pick → pooled exchange → response, with failover.
//!
//! Failover follows Apache's rules, made safe: a member that cannot be reached (resolve, connect,
//! handshake failure — nothing of the request sent) is put in error (E) and the request goes to
//! another member while attempts ≤ `maxattempts`. A failure after the request was sent marks the
//! member E and is retried on another member only when the request can be replayed (an idempotent
//! method with no body). A stale pooled keep-alive connection is retried once on a fresh connection
//! to the same member without blaming it. Statuses: no usable member 503, member timeout 504,
//! a broken or garbled exchange 502; each body says what happened.
use super::body::{ClientBodyError, RequestBody, ResponseBody, UpstreamBody};
use super::exchange::{Failed, exchange};
use super::guard::Shared;
use super::headers;
use super::outgoing::{Outgoing, is_idempotent, lossy, member_target};
use super::route::{Route, RouteTable};
use super::sticky;
use super::strict::Rejection;
use crate::accesslog::HttpRecord as AccessRecord;
use crate::balancer::{Outcome, Pick, PickContext};
use crate::upstream::UpstreamError;
use crate::upstream::pool::Lease;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// The HTTP side of one listener.
pub struct HttpProxy {
    pub name: Arc<str>,
    pub routes: RouteTable,
    pub access_log: bool,
    pub keepalive: bool,
    pub max_keepalive_requests: u64,
}

/// Per downstream connection.
pub struct ConnState {
    /// The client: the TCP peer, or the source a PROXY protocol header named.
    pub peer: SocketAddr,
    /// The peer's IP as an `X-Forwarded-For` value.
    client_ip: HeaderValue,
    /// "https" when the connection came over TLS, else "http".
    scheme: &'static str,
    requests: AtomicU64,
    /// What the connection's guard refused.
    pub shared: Arc<Shared>,
}

impl ConnState {
    pub fn new(peer: SocketAddr, tls: bool, shared: Arc<Shared>) -> ConnState {
        ConnState {
            peer,
            client_ip: headers::client_value(peer.ip()),
            scheme: if tls { "https" } else { "http" },
            requests: AtomicU64::new(0),
            shared,
        }
    }
}

/// Marks a response after which the client connection closes: lb refused the request.
#[derive(Clone, Copy)]
struct CloseAfter;

impl HttpProxy {
    /// Serve one request from a downstream connection.
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnState) -> Response<ResponseBody> {
        let n = conn.requests.fetch_add(1, Relaxed) + 1;
        let h1 = req.version() <= Version::HTTP_11;
        let mut resp = match conn.shared.rejection(n) {
            Some(r) => {
                let rec = self.record(conn.peer, None, Instant::now());
                self.refuse(conn.peer, rec, r)
            }
            None => self.forward(req, conn).await,
        };
        conn.shared.upgrade_answered(n, resp.status());
        let last = !self.keepalive
            || (self.max_keepalive_requests > 0 && n >= self.max_keepalive_requests)
            || resp.extensions().get::<CloseAfter>().is_some();
        if h1 && last && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    fn record(
        &self,
        peer: SocketAddr,
        req: Option<&Request<Incoming>>,
        start: Instant,
    ) -> Option<Box<AccessRecord>> {
        self.access_log.then(|| {
            let header = |h| req.and_then(|r| r.headers().get(h)).map(|v| v.as_bytes());
            Box::new(AccessRecord {
                listener: Arc::clone(&self.name),
                client: peer,
                method: req.map_or_else(
                    || Method::from_bytes(b"-").unwrap_or_default(),
                    |r| r.method().clone(),
                ),
                text: crate::accesslog::RequestText::new(
                    req.and_then(|r| r.uri().path_and_query()).map(|p| p.as_str()),
                    header(header::REFERER),
                    header(header::USER_AGENT),
                ),
                version: req.map_or(Version::HTTP_11, |r| r.version()),
                status: StatusCode::OK,
                balancer: None,
                member: None,
                attempts: 0,
                balancer_values: Default::default(),
                at: std::time::SystemTime::now(),
                start,
                head_us: 0,
                total_us: 0,
                bytes: 0,
                complete: false,
            })
        })
    }

    /// A response made by lb itself; its body says what happened.
    fn local(
        &self,
        mut rec: Option<Box<AccessRecord>>,
        status: StatusCode,
        msg: &str,
    ) -> Response<ResponseBody> {
        let body =
            format!("{} {}: {msg}\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
        if let Some(r) = rec.as_mut() {
            r.status = status;
            r.head_us = r.start.elapsed().as_micros() as u64;
        }
        if let Some(r) = rec {
            r.emit(body.len() as u64, true);
        }
        let mut resp = Response::new(ResponseBody::text(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    /// The answer to a request lb refused; the connection closes after it.
    fn refuse(
        &self,
        client: SocketAddr,
        rec: Option<Box<AccessRecord>>,
        r: &Rejection,
    ) -> Response<ResponseBody> {
        tracing::info!(%client, status = %r.status, reason = %r.reason, "request refused");
        let mut resp = self.local(rec, r.status, &r.reason);
        resp.extensions_mut().insert(CloseAfter);
        resp
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnState,
    ) -> Response<ResponseBody> {
        let peer = conn.peer;
        let start = Instant::now();
        let mut rec = self.record(peer, Some(&req), start);
        let Some((route, rest)) = self.routes.find(req.uri().path()) else {
            let msg = format!("no proxy_pass path matches {}", req.uri().path());
            return self.local(rec, StatusCode::NOT_FOUND, &msg);
        };
        let target = match member_target(&route.prefix, &route.target_path, rest, req.uri()) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("cannot form the member URI: {e}");
                return self.local(rec, StatusCode::BAD_GATEWAY, &msg);
            }
        };

        let session = route.upstream.policy.sticky.as_ref().and_then(|s| {
            let target = req.uri().path_and_query().map_or("", |p| p.as_str());
            sticky::session(s, target.as_bytes(), req.headers())
        });
        let version = req.version();
        let upgrade = headers::upgrade_request(version, req.headers());
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let client_host =
            parts.headers.get(header::HOST).cloned().or_else(|| {
                parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
        headers::strip_hop_by_hop(&mut parts.headers, upgrade.as_ref());
        headers::add_forwarded(
            &mut parts.headers,
            &conn.client_ip,
            client_host.as_ref(),
            conn.scheme,
        );
        headers::add_via(&mut parts.headers, version);
        parts.version = Version::HTTP_11;
        let replayable = upgrade.is_none() && is_idempotent(&parts.method) && body.is_end_stream();
        let out = Outgoing {
            target,
            client_host,
            route,
            scheme: conn.scheme,
            replay: replayable.then(|| (parts.method.clone(), parts.headers.clone())),
            session,
            multiplexed: version == Version::HTTP_2,
        };
        let mut pending = Some(Request::from_parts(parts, RequestBody::new(body)));

        let upstream = &route.upstream;
        let balancer = &upstream.balancer;
        if let Some(r) = rec.as_mut() {
            r.balancer = Some(Arc::clone(&upstream.name));
        }
        let mut ctx = PickContext {
            client: Some(peer),
            tried: Vec::new(),
            route: out.session.as_ref().map(|s| s.route.clone()),
        };
        let mut attempts = 0u32;
        let mut last: Option<(String, bool)> = None; // (error, whether the request had been sent)
        let mut timed_out = false;
        loop {
            let Some(pick) = balancer.pick_wait(&ctx).await else {
                let mut msg = balancer.unavailable_reason();
                if balancer.refuses(&ctx)
                    && let Some(s) = &out.session
                {
                    msg.push_str(&format!(
                        "; the session's route {:?} names a member that cannot take it, and \
                         nofailover is on",
                        lossy(&s.route)
                    ));
                }
                if let Some((e, _)) = &last {
                    msg.push_str("; last error: ");
                    msg.push_str(e);
                }
                return self.local(rec, StatusCode::SERVICE_UNAVAILABLE, &msg);
            };
            attempts += 1;
            let member = Arc::clone(pick.member());
            // The pick came from this upstream's own balancer, so its pool is there.
            let Some(conn) = upstream.conn(&member) else {
                let msg = format!("member {} has no connection pool", member.url);
                return self.local(rec, StatusCode::BAD_GATEWAY, &msg);
            };
            let req = match pending.take() {
                Some(mut r) => match out.retarget(&mut r, &member, conn) {
                    Ok(()) => r,
                    Err(e) => return self.local(rec, StatusCode::BAD_GATEWAY, &e),
                },
                None => match out.rebuild(&member, conn) {
                    Some(r) => r,
                    None => {
                        return self.local(
                            rec,
                            StatusCode::BAD_GATEWAY,
                            "request cannot be replayed",
                        );
                    }
                },
            };
            if let Some(r) = rec.as_mut() {
                r.member = Some(Arc::clone(&member));
                r.attempts = attempts;
                let sticky = upstream.policy.sticky.as_ref();
                r.balancer_values = sticky::values(sticky, out.session.as_ref(), &member);
            }
            // Pinned where it is made: awaited by value, rustc lays the exchange's state out
            // twice in this future (once as the call's result, once as the awaited future).
            match std::pin::pin!(exchange(&out, &member, conn, req)).await {
                Ok((resp, lease)) => {
                    member.report(Outcome::Success);
                    return self.respond(route, &out, resp, lease, pick, client_upgrade, rec);
                }
                Err(Failed { error, back }) => {
                    // The client's body failed: the client's fault, not the member's.
                    if let Some(r) = ClientBodyError::find(&error) {
                        return self.refuse(peer, rec, r);
                    }
                    let msg = format!("member {}: {error}", member.url);
                    match &error {
                        UpstreamError::ResponseTimeout { .. } => {
                            member.report(if upstream.policy.failontimeout {
                                Outcome::Failed(msg.clone())
                            } else {
                                Outcome::SoftFailed(msg.clone())
                            });
                            tracing::warn!(balancer = %balancer.name(), error = %msg, "member timed out");
                            // An idempotent request without a body is tried on another member,
                            // as nginx's `proxy_next_upstream timeout` does; others get 504.
                            if out.replay.is_none() || attempts > balancer.settings.maxattempts {
                                return self.local(rec, StatusCode::GATEWAY_TIMEOUT, &msg);
                            }
                            timed_out = true;
                        }
                        // A full connection pool means busy, not broken: fail over without E.
                        UpstreamError::PoolExhausted { .. } => {
                            member.report(Outcome::Busy(msg.clone()))
                        }
                        // Already out of rotation: nothing more to hold against it.
                        UpstreamError::Ejected { .. } => {
                            member.note_error(crate::balancer::now_ms(), msg.clone())
                        }
                        _ => member.report(Outcome::Failed(msg.clone())),
                    }
                    let sent = back.is_none();
                    tracing::warn!(
                        balancer = %balancer.name(), member = %member.url, attempt = attempts,
                        sent, error = %error, "member failed"
                    );
                    ctx.tried.push(member.id);
                    drop(pick);
                    if sent && out.replay.is_none() {
                        let m = format!("{msg} (after the request was sent; not retried)");
                        return self.local(rec, StatusCode::BAD_GATEWAY, &m);
                    }
                    last = Some((msg, sent));
                    pending = back;
                    if attempts > balancer.settings.maxattempts {
                        let (msg, sent) = last.unwrap_or_default();
                        let status = if timed_out {
                            StatusCode::GATEWAY_TIMEOUT
                        } else if sent {
                            StatusCode::BAD_GATEWAY
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        let m = format!("all {attempts} attempt(s) failed; last: {msg}");
                        return self.local(rec, status, &m);
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        route: &Route,
        out: &Outgoing<'_>,
        mut resp: Response<Incoming>,
        mut lease: Lease<RequestBody>,
        pick: Pick,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        mut rec: Option<Box<AccessRecord>>,
    ) -> Response<ResponseBody> {
        let member = Arc::clone(pick.member());
        let status = resp.status();
        if route.upstream.policy.failonstatus.contains(&status.as_u16()) {
            let msg = format!("member {} answered {status} (failonstatus)", member.url);
            member.mark_error(crate::balancer::now_ms(), msg);
        }
        if let Some(r) = rec.as_mut() {
            r.status = status;
            r.head_us = r.start.elapsed().as_micros() as u64;
        }
        if status == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_up) = client_upgrade
        {
            let member_up = hyper::upgrade::on(&mut resp);
            let (mut parts, _) = resp.into_parts();
            let proto = parts.headers.get(header::UPGRADE).cloned();
            headers::strip_hop_by_hop(&mut parts.headers, proto.as_ref());
            headers::add_via(&mut parts.headers, Version::HTTP_11);
            // hyper hands over the member's connection once its state machine has finished.
            lease.detach();
            tokio::spawn(tunnel(client_up, member_up, pick, lease));
            if let Some(r) = rec {
                r.emit(0, true);
            }
            return Response::from_parts(parts, ResponseBody::empty());
        }
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, None);
        // Before lb adds values of its own, which hold no member buffer.
        if out.multiplexed {
            headers::unshare_values(&mut parts.headers);
        }
        if let Some(rev) = &route.reverse {
            let host = out.client_host.as_ref().and_then(|h| h.to_str().ok());
            for name in
                [header::LOCATION, header::CONTENT_LOCATION, http::HeaderName::from_static("uri")]
            {
                if let Some(v) = parts.headers.get(&name)
                    && let Some(nv) = rev.rewrite(v, host, out.scheme)
                {
                    parts.headers.insert(name, nv);
                }
            }
        }
        headers::add_via(&mut parts.headers, parts.version);
        if let Some(s) = &route.upstream.policy.sticky
            && let Some(c) = &s.set_cookie
            && let Some(r) = member.config().route.as_deref()
            && sticky::route_changed(out.session.as_ref(), Some(r))
            && let Some(v) = sticky::set_cookie(c, s.separator, r)
        {
            parts.headers.append(header::SET_COOKIE, v);
        }
        let body = UpstreamBody::new(body, lease, pick.guard, rec, out.multiplexed);
        Response::from_parts(parts, ResponseBody::Upstream(body))
    }
}

/// Splice an upgraded client connection (WebSocket …) to the member's, byte for byte.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    member: hyper::upgrade::OnUpgrade,
    pick: Pick,
    lease: Lease<RequestBody>,
) {
    let m = Arc::clone(pick.member());
    match tokio::try_join!(client, member) {
        Ok((c, u)) => {
            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
            match tokio::io::copy_bidirectional(&mut c, &mut u).await {
                Ok((to_member, to_client)) => {
                    m.add_transferred(to_member);
                    m.add_read(to_client);
                }
                Err(e) => {
                    tracing::debug!(member = %m.url, error = %e, "upgraded connection ended")
                }
            }
        }
        Err(e) => tracing::debug!(member = %m.url, error = %e, "upgrade did not complete"),
    }
    drop(lease);
    drop(pick);
}
