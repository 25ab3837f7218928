//! ProxyPass routing and ProxyPassReverse mapping.
//!
//! A request goes to the route with the longest matching path prefix; as in Apache's
//! `alias_match`, a prefix matches only at a segment boundary (`/app` matches `/app` and `/app/x`,
//! not `/apple`). The rest of the path is appended to the target path, which is appended to the
//! member URL's path.
use super::body::RequestBody;
use crate::balancer::{Balancer, Member, MemberId};
use crate::config::{HttpPolicy, MemberUrl};
use crate::telemetry::Telemetry;
use crate::upstream::pool::Pool;
use http::HeaderValue;
use std::collections::HashMap;
use std::sync::Arc;

/// What the HTTP side keeps per member: its connection pool and `Host` value.
pub struct MemberConn {
    pub pool: Arc<Pool<RequestBody>>,
    pub host: HeaderValue,
}

/// A balancer as the HTTP side sees it: its members' pools (by member identity, so they survive
/// a reload with the member) and Apache's HTTP-only policy.
pub struct Upstream {
    pub name: Arc<str>,
    pub balancer: Arc<Balancer>,
    pub policy: HttpPolicy,
    conns: HashMap<MemberId, MemberConn>,
}

impl Upstream {
    /// Pools for `balancer`'s members, taken from `previous` where the member (and its TLS
    /// settings) is the same. `tls` gives an https member's connector.
    pub fn new(
        balancer: Arc<Balancer>,
        policy: HttpPolicy,
        telemetry: &Arc<Telemetry>,
        previous: Option<&Upstream>,
        tls: impl Fn(&MemberUrl) -> Option<crate::tls::Upstream>,
    ) -> Upstream {
        let mut conns = HashMap::new();
        for m in &balancer.members {
            let tls = tls(&m.url);
            let pool = match previous.and_then(|p| p.conns.get(&m.id)) {
                Some(c) if c.pool.tls_matches(tls.as_ref()) => Arc::clone(&c.pool),
                _ => Pool::new(Arc::clone(m), Arc::clone(telemetry), tls),
            };
            let host = HeaderValue::from_str(&m.url.authority())
                .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
            conns.insert(m.id, MemberConn { pool, host });
        }
        Upstream { name: Arc::from(balancer.name()), balancer, policy, conns }
    }

    /// Let go of idle member connections nobody needed ([`Pool::purge`]); how many.
    pub fn purge_idle(&self) -> usize {
        self.conns.values().map(|c| c.pool.purge()).sum()
    }

    /// The pool and Host value of a member of this balancer.
    pub fn conn(&self, member: &Member) -> Option<&MemberConn> {
        self.conns.get(&member.id)
    }
}

pub struct Route {
    pub prefix: String,
    /// Path from the `to` URL (`balancer://name/PATH`), prepended to the rest of the request path.
    pub target_path: String,
    pub upstream: Arc<Upstream>,
    pub reverse: Option<ReverseMap>,
    pub preserve_host: bool,
}

pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> RouteTable {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        RouteTable { routes }
    }

    /// The route for `path` and the part of the path after its prefix.
    pub fn find<'p>(&self, path: &'p str) -> Option<(&Route, &'p str)> {
        self.routes.iter().find_map(|r| prefix_match(&r.prefix, path).map(|rest| (r, rest)))
    }
}

/// Apache `alias_match` semantics without slash folding: the prefix must end at a segment boundary.
pub fn prefix_match<'p>(prefix: &str, path: &'p str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    if prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// Rewrites member URLs in `Location`, `Content-Location` and `URI` back to the public path.
pub struct ReverseMap {
    /// Member base URL + target path, e.g. `http://127.0.0.1:9001/app/`.
    member_prefixes: Vec<String>,
    public_prefix: String,
}

impl ReverseMap {
    pub fn new(balancer: &Balancer, target_path: &str, public_prefix: &str) -> ReverseMap {
        let member_prefixes =
            balancer.members.iter().map(|m| format!("{}{}", m.base(), target_path)).collect();
        ReverseMap { member_prefixes, public_prefix: public_prefix.to_owned() }
    }

    /// The rewritten value, absolute on the client's `Host` when there is one (as Apache's
    /// `ap_construct_url` does), or None when the value names no member.
    pub fn rewrite(
        &self,
        value: &HeaderValue,
        host: Option<&str>,
        scheme: &str,
    ) -> Option<HeaderValue> {
        let v = value.to_str().ok()?;
        let rest = self.member_prefixes.iter().find_map(|p| v.strip_prefix(p.as_str()))?;
        let path = format!("{}{}", self.public_prefix, rest);
        let out = match host {
            Some(h) => format!("{scheme}://{h}{path}"),
            None => path,
        };
        HeaderValue::from_str(&out).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_at_segment_boundaries() {
        assert_eq!(prefix_match("/app", "/app"), Some(""));
        assert_eq!(prefix_match("/app", "/app/x"), Some("/x"));
        assert_eq!(prefix_match("/app", "/apple"), None);
        assert_eq!(prefix_match("/app/", "/app/x"), Some("x"));
        assert_eq!(prefix_match("/app/", "/app"), None);
        assert_eq!(prefix_match("/", "/anything"), Some("anything"));
    }
}
