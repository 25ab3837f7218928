//! Sticky sessions, the balancer's half: which member a session route names, and the quota a
//! routed request consumes (Apache's `find_route_worker` and the sticky branch of
//! `proxy_balancer_pre_request`).
//!
//! The route itself comes from the protocol layer (for HTTP a cookie or URL parameter, see
//! `http::sticky`); here it is bytes, compared byte for byte with the members' `route`.
use super::member::{Member, MemberId};
use super::{PickContext, flags};
use std::sync::Arc;

/// Redirects followed at most this deep. Apache follows them without a limit, and recurses
/// forever on a cycle of unusable members that redirect to each other.
const MAX_REDIRECTS: usize = 8;

/// Usable now (after Apache's retry check), and not already tried for this request.
fn usable(m: &Member, now: u64, exclude: &[MemberId]) -> bool {
    if !m.usable() {
        m.retry_check(now);
    }
    m.usable() && !exclude.contains(&m.id)
}

/// The member for `route`: the one whose `route` it is when usable, else the one its
/// `redirect` names (followed the same way); members that are not hot standbys (H) first, then
/// hot standbys. Drained members (N) are still reached through their route.
pub fn find<'a>(
    members: &'a [Arc<Member>],
    route: &[u8],
    now: u64,
    exclude: &[MemberId],
) -> Option<&'a Arc<Member>> {
    find_from(members, route, now, exclude, 0)
}

fn find_from<'a>(
    members: &'a [Arc<Member>],
    route: &[u8],
    now: u64,
    exclude: &[MemberId],
    depth: usize,
) -> Option<&'a Arc<Member>> {
    for standby in [false, true] {
        for m in members.iter().filter(|m| m.flags().contains(flags::HOT_STANDBY) == standby) {
            let config = m.config();
            if config.route.as_deref().map(str::as_bytes) != Some(route) {
                continue;
            }
            if usable(m, now, exclude) {
                return Some(m);
            }
            if let Some(redirect) = config.redirect.as_deref()
                && depth < MAX_REDIRECTS
                && let Some(r) = find_from(members, redirect.as_bytes(), now, exclude, depth + 1)
            {
                return Some(r);
            }
        }
    }
    None
}

/// Some member has this route (usable or not): with `nofailover`, its session must not go
/// elsewhere.
pub fn owned(members: &[Arc<Member>], route: &[u8]) -> bool {
    members.iter().any(|m| m.config().route.as_deref().map(str::as_bytes) == Some(route))
}

/// A routed request consumes quota as a balanced one does: every usable member gains its load
/// factor, and the routed member pays the total.
pub fn settle(members: &[Arc<Member>], routed: &Member) {
    let mut total = 0;
    for m in members.iter().filter(|m| m.usable()) {
        m.add_lbstatus(m.lbfactor());
        total += m.lbfactor();
    }
    routed.add_lbstatus(-total);
}

/// The request carries a route some member owns, and `nofailover` forbids going elsewhere.
pub fn refused(members: &[Arc<Member>], nofailover: bool, ctx: &PickContext) -> bool {
    nofailover && ctx.route.as_deref().is_some_and(|r| owned(members, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::now_ms;
    use crate::config::flags::StatusFlags;
    use crate::config::{MemberConfig, parse_member_url};

    fn member(port: u16, route: &str, redirect: Option<&str>, status: &str) -> Arc<Member> {
        let url = parse_member_url(&format!("http://127.0.0.1:{port}")).unwrap();
        let mut c = MemberConfig::for_url(url);
        c.route = Some(route.to_owned());
        c.redirect = redirect.map(str::to_owned);
        c.status = StatusFlags::default().apply(status).unwrap();
        Arc::new(Member::new(c))
    }

    fn port(m: Option<&Arc<Member>>) -> Option<u16> {
        m.map(|m| m.url.port)
    }

    #[test]
    fn route_redirect_standby_and_drain() {
        let ms = vec![
            member(1, "node1", Some("node2"), ""),
            member(2, "node2", None, "N"),
            member(3, "node3", None, "H"),
            member(4, "node4", Some("node1"), "D"),
        ];
        let now = now_ms();
        assert_eq!(port(find(&ms, b"node1", now, &[])), Some(1));
        // Drained members are reached through their route; hot standbys too.
        assert_eq!(port(find(&ms, b"node2", now, &[])), Some(2));
        assert_eq!(port(find(&ms, b"node3", now, &[])), Some(3));
        // Byte-exact: no prefix, case or trailing-space match.
        assert_eq!(port(find(&ms, b"node", now, &[])), None);
        assert_eq!(port(find(&ms, b"NODE1", now, &[])), None);
        assert_eq!(port(find(&ms, b"node1 ", now, &[])), None);
        // An unusable member's redirect is followed, through more than one hop.
        assert_eq!(port(find(&ms, b"node4", now, &[])), Some(1));
        ms[0].set_flags(flags::DISABLED);
        assert_eq!(port(find(&ms, b"node4", now, &[])), Some(2));
        // A member already tried counts as unusable.
        assert_eq!(port(find(&ms, b"node1", now, &[ms[1].id])), None);
        assert!(owned(&ms, b"node4") && !owned(&ms, b"node9"));
    }

    #[test]
    fn a_cycle_of_redirects_ends() {
        let ms = vec![member(1, "a", Some("b"), "D"), member(2, "b", Some("a"), "D")];
        assert_eq!(port(find(&ms, b"a", now_ms(), &[])), None);
    }

    #[test]
    fn routed_requests_pay_quota() {
        let ms =
            vec![member(1, "a", None, ""), member(2, "b", None, ""), member(3, "c", None, "D")];
        ms[1].set_lbstatus(0);
        settle(&ms, &ms[0]);
        // Usable members gain 100 each (c is disabled); a pays the 200.
        assert_eq!((ms[0].lbstatus(), ms[1].lbstatus(), ms[2].lbstatus()), (-100, 100, 0));
    }
}
