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
    /// Path and query after the member's own path prefix ([`member_target`]).
    pub target: Uri,
    pub client_host: Option<HeaderValue>,
    pub route: &'a Route,
    /// The client's scheme, for ProxyPassReverse.
    pub scheme: &'static str,
    /// Method and headers to rebuild the request for another attempt, when replay is safe.
    pub replay: Option<(Method, HeaderMap)>,
    /// The sticky session the request carries.
    pub session: Option<Session>,
    /// The client speaks HTTP/2: its answer waits in a send queue shared with other streams,
    /// so what it holds of the member connection's read buffer is copied out
    /// ([`super::headers::unshare_values`]).
    pub multiplexed: bool,
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
            Ok(self.target.clone())
        } else {
            Uri::try_from(format!("{mp}{}", self.target))
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

/// The path and query a request goes to members with (before a member's own path prefix):
/// the route's target path, then what follows the route's prefix in the client's path, then the
/// query. A route that maps its prefix onto itself (`/` to `balancer://b/`) sends the client's
/// own path and query, which costs no copy: the URI shares the bytes the client sent.
/// `rest` is what follows `prefix` in the client's path.
pub(super) fn member_target(
    prefix: &str,
    target_path: &str,
    rest: &str,
    client: &Uri,
) -> Result<Uri, http::uri::InvalidUri> {
    if prefix == target_path
        && target_path.starts_with('/')
        && let Some(pq) = client.path_and_query()
    {
        return Ok(Uri::from(pq.clone()));
    }
    let mut s = String::with_capacity(target_path.len() + rest.len() + 32);
    if !target_path.starts_with('/') && !rest.starts_with('/') {
        s.push('/');
    }
    s.push_str(target_path);
    s.push_str(rest);
    if let Some(q) = client.query() {
        s.push('?');
        s.push_str(q);
    }
    Uri::try_from(s)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::route::prefix_match;

    /// Whether or not the client's own bytes are reused, the target is the target path, the
    /// rest of the client's path, and its query.
    #[test]
    fn member_targets_join_target_path_rest_and_query() {
        let cases = [
            ("/", "/", "/a/b?x=1&y", "/a/b?x=1&y"),
            ("/", "/", "/", "/"),
            ("/", "/", "/%41b", "/%41b"),
            ("/app/", "/app/", "/app/x", "/app/x"),
            ("/app", "/", "/app/x?q", "//x?q"),
            ("/app/", "/", "/app/x?q", "/x?q"),
            ("/app", "/srv", "/app/x", "/srv/x"),
            ("/app", "", "/app", "/"),
            ("/", "/v1/", "/x", "/v1/x"),
        ];
        for (prefix, target_path, client, want) in cases {
            let uri: Uri = client.parse().expect("client URI");
            let rest = prefix_match(prefix, uri.path()).expect("route matches");
            let got = member_target(prefix, target_path, rest, &uri).expect("target");
            assert_eq!(got.to_string(), want, "{prefix} -> {target_path}: {client}");
        }
    }
}
