//! The monitor's side of active health checks: when each member's next check is due (its
//! `hcinterval`, jittered so that members do not check in step), never more than one running
//! per member, and what a result does through the one health state machine
//! ([`super::ejection::Tracker::checked`]).
use super::hcheck::CheckResult;
use super::probe::ProbeResult;
use super::watch::Watch;
use super::{Monitor, ProbeOrder, What, act};
use crate::balancer::note::CheckNote;
use crate::balancer::{Balancer, Member, MemberId, flags, now_ms};
use crate::config::{HealthCheck, MemberUrl, Scheme};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

/// What came back from a task the loop started.
pub enum Done {
    Probe(ProbeResult),
    Check(CheckResult),
}

/// A health check to run.
#[derive(Clone)]
pub struct CheckOrder {
    pub url: MemberUrl,
    pub hc: Arc<HealthCheck>,
    pub tls: Option<crate::tls::Upstream>,
}

impl std::fmt::Debug for CheckOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckOrder").field("url", &self.url.base()).field("hc", &self.hc).finish()
    }
}

/// A number in [0, 1) from `id` and `n` (splitmix64): the same member spreads its checks the
/// same way, different members differently.
fn spread(id: MemberId, n: u64) -> f64 {
    let mut z = id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n.wrapping_add(0x6a09_e667_f3bc_c909);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// "GET11 /health", "TCP".
fn describe(hc: &HealthCheck, url: &MemberUrl) -> String {
    match hc.method.http() {
        None if url.scheme == Scheme::Https => "TCP (TLS handshake)".to_owned(),
        None => "TCP".to_owned(),
        Some((m, v11)) => {
            let path = format!("{}{}", url.path, hc.uri);
            let path = if path.is_empty() { "/" } else { path.as_str() };
            format!("{m}{} {path}", if v11 { "11" } else { "" })
        }
    }
}

/// The check to start for member `m` now, if one is due. The first comes at a random point
/// of the first interval; the next one interval (±10 %) after each start.
pub(super) fn due(m: &Member, w: &mut Watch, addr: SocketAddr, now: Instant) -> Option<ProbeOrder> {
    let config = m.config();
    let hc = config.hcheck.as_ref()?;
    if w.check_running || m.flags().contains(flags::DISABLED | flags::STOPPED) {
        return None;
    }
    let sent = w.check_note.as_ref().map_or(0, |n| n.sent);
    let first = *w.check_due.get_or_insert_with(|| now + hc.interval.mul_f64(spread(m.id, 0)));
    if now < first {
        return None;
    }
    w.check_due = Some(now + hc.interval.mul_f64(0.9 + 0.2 * spread(m.id, sent + 1)));
    w.check_running = true;
    let tls = match (&config.tls, &w.check_tls) {
        (None, _) => None,
        (Some(t), Some((made_from, c))) if Arc::ptr_eq(t, made_from) => Some(c.clone()),
        (Some(t), _) => match crate::tls::Upstream::new(&m.url, t) {
            Ok(c) => {
                w.check_tls = Some((Arc::clone(t), c.clone()));
                Some(c)
            }
            Err(e) => {
                tracing::warn!(member = %m.url, error = %e, "no TLS connector for the health check");
                w.check_running = false;
                return None;
            }
        },
    };
    let order = CheckOrder { url: m.url.clone(), hc: Arc::clone(hc), tls };
    Some(ProbeOrder { id: m.id, addr, what: What::Check(order) })
}

impl Monitor {
    /// A health check of member `id` came back.
    pub fn checked(&mut self, balancers: &[Arc<Balancer>], id: MemberId, r: CheckResult) {
        let Some((b, m)) = super::member(balancers, id) else { return };
        let Some(w) = self.watches.get_mut(&id) else { return };
        w.check_running = false;
        let config = m.config();
        let Some(hc) = config.hcheck.as_ref() else { return };
        let f = m.flags();
        let (c, e) = (f.contains(flags::HC_FAIL), f.contains(flags::IN_ERROR));
        let t = w.tracker.checked(hc, r.ok, &r.detail, c, e, Instant::now());
        let note = w.check_note.get_or_insert_with(CheckNote::default);
        note.method = describe(hc, &m.url);
        note.ok = r.ok;
        note.latency_ms = r.took.as_secs_f64() * 1e3;
        note.at_ms = now_ms();
        note.sent += 1;
        note.failed += u64::from(!r.ok);
        note.passes = w.tracker.checks.passes;
        note.fails = w.tracker.checks.fails;
        note.detail = r.detail;
        act::check(b, m, w, &t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_uniform_enough_and_differs_by_member() {
        let xs: Vec<f64> = (0..1000).map(|n| spread(MemberId(7), n)).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((0.45..0.55).contains(&mean), "{mean}");
        assert_ne!(spread(MemberId(1), 0), spread(MemberId(2), 0));
    }
}
