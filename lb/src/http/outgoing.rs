//! What every attempt of one request shares: the rewritten target, the client's Host, whether
//! and how the request may be replayed on another member, the sticky session; and how a request
//! is pointed at the member picked for an attempt.
use super::body::RequestBody;
use super::route::{MemberConn, Route};
use super::sticky::{self, Session};
use crate::balancer::Member;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri};
use std::sync::Arc;

/// What every attempt of one request shares.
pub(super) struct Outgoing<'a> {
    /// Path and query after the member's own path prefix.
    pub path_and_query: String,
    pub client_host: Option<HeaderValue>,
    pub route: &'a Route,
    /// The client's scheme, for ProxyPassReverse.
    pub scheme: &'static str,
    /// Method and headers to rebuild the request for another attempt, when replay is safe.
    pub replay: Option<(Method, HeaderMap)>,
    /// The sticky session the request carries.
    pub session: Option<Session>,
}

impl Outgoing<'_> {
    /// Point `req` at `member` (reached through `conn`).
    pub(super) fn retarget(
        &self,
        req: &mut Request<RequestBody>,
        member: &Arc<Member>,
        conn: &MemberConn,
    ) -> Result<(), String> {
        let mp = &member.url.path;
        let uri = if mp.is_empty() {
            Uri::try_from(self.path_and_query.as_str())
        } else {
            Uri::try_from(format!("{mp}{}", self.path_and_query))
        };
        *req.uri_mut() = uri.map_err(|e| format!("cannot form the member URI: {e}"))?;
        let host = match (&self.client_host, self.route.preserve_host) {
            (Some(h), true) => h.clone(),
            _ => conn.host.clone(),
        };
        req.headers_mut().insert(header::HOST, host);
        if self.route.upstream.policy.balancer_headers {
            self.balancer_headers(req.headers_mut(), member);
        }
        req.body_mut().count_for(member);
        Ok(())
    }

    /// The BALANCER_* values as `X-Balancer-*` request headers (replacing any the client sent).
    fn balancer_headers(&self, h: &mut HeaderMap, member: &Member) {
        let upstream = &self.route.upstream;
        let v = sticky::values(upstream.policy.sticky.as_ref(), self.session.as_ref(), member);
        let values = [
            ("x-balancer-name", Some(format!("balancer://{}", upstream.name))),
            ("x-balancer-worker-name", Some(member.name())),
            ("x-balancer-worker-route", v.worker_route),
            ("x-balancer-session-sticky", v.session_sticky),
            ("x-balancer-session-route", v.session_route),
            ("x-balancer-route-changed", v.route_changed.then(|| "1".to_owned())),
        ];
        for (name, value) in values {
            h.remove(name);
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                h.insert(name, v);
            }
        }
    }

    pub(super) fn rebuild(
        &self,
        member: &Arc<Member>,
        conn: &MemberConn,
    ) -> Option<Request<RequestBody>> {
        let (method, headers) = self.replay.as_ref()?;
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = method.clone();
        *req.headers_mut() = headers.clone();
        self.retarget(&mut req, member, conn).ok()?;
        Some(req)
    }
}

pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(super) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
