//! Load-balancing methods and Apache's shared candidate loop.
//!
//! The loop (Apache's `ap_proxy_balancer_get_best_worker`) decides *who may compete* — lbset
//! tiers, drain, retry timers, hot spares and hot standbys; the method's `is_best` only *ranks*
//! the candidates it is shown. Keeping the two apart lets kernel-sourced health (a
//! control-path input) change eligibility without touching any method's arithmetic.
use super::flags;
use super::member::{Member, MemberId};
use crate::config::LbMethod;
use std::sync::Arc;

/// State a method accumulates over one pass of the candidate loop.
#[derive(Debug, Default)]
pub struct Acc {
    /// Sum of the lbfactors of every candidate shown (byrequests/bybusyness).
    pub total: i64,
    /// Lowest traffic score seen so far (bytraffic).
    pub min_traffic: u64,
}

/// Apache's `is_best` callbacks. Called once per candidate, in loop order; returns whether
/// `cur` beats the best so far.
pub fn is_best(method: LbMethod, cur: &Member, best: Option<&Member>, acc: &mut Acc) -> bool {
    match method {
        LbMethod::ByRequests => {
            let s = cur.add_lbstatus(cur.lbfactor());
            acc.total += cur.lbfactor();
            best.is_none_or(|b| s > b.lbstatus())
        }
        LbMethod::ByBusyness => {
            let s = cur.add_lbstatus(cur.lbfactor());
            acc.total += cur.lbfactor();
            match best {
                None => true,
                Some(b) => {
                    // Apache compares in-flight counts; lb weights them by kernel latency
                    // (see Member::busyness), which keeps Apache's order when telemetry is off.
                    let (cb, bb) = (cur.busyness(), b.busyness());
                    cb < bb || (cb == bb && s > b.lbstatus())
                }
            }
        }
        // Heartbeat picks by weighted random (balancer::heartbeat), never through this loop.
        LbMethod::Heartbeat => best.is_none(),
        LbMethod::ByTraffic => {
            let f = cur.lbfactor().max(1) as u64;
            let traffic = cur.transferred() / f + cur.read() / f;
            if best.is_none() || traffic < acc.min_traffic {
                acc.min_traffic = traffic;
                true
            } else {
                false
            }
        }
    }
}

/// After a pick: the winner pays the pass's total (byrequests/bybusyness).
pub fn settle(method: LbMethod, winner: &Member, acc: &Acc) {
    match method {
        LbMethod::ByRequests | LbMethod::ByBusyness => {
            winner.add_lbstatus(-acc.total);
        }
        LbMethod::ByTraffic | LbMethod::Heartbeat => {}
    }
}

/// Apache's candidate loop over `members` (config order) at time `now` (ms, see `now_ms`).
/// Members in `exclude` (already tried for this request) count as unusable.
pub fn best_member<'a>(
    method: LbMethod,
    members: &'a [Arc<Member>],
    now: u64,
    exclude: &[MemberId],
    acc: &mut Acc,
) -> Option<&'a Arc<Member>> {
    let max_lbset = members.iter().map(|m| m.lbset()).max()?;
    let mut spares: Vec<&Arc<Member>> = Vec::new();
    let mut standbys: Vec<&Arc<Member>> = Vec::new();
    for lbset in 0..=max_lbset {
        spares.clear();
        standbys.clear();
        let mut best: Option<&Arc<Member>> = None;
        let mut unusable = 0usize;
        for m in members.iter().filter(|m| m.lbset() == lbset) {
            if m.flags().contains(flags::DRAIN) {
                continue;
            }
            if !m.usable() {
                m.retry_check(now);
            }
            let f = m.flags();
            let usable = f.usable() && !exclude.contains(&m.id);
            if f.contains(flags::HOT_SPARE) {
                if usable {
                    spares.push(m);
                }
            } else if f.contains(flags::HOT_STANDBY) {
                if usable {
                    standbys.push(m);
                }
            } else if usable {
                if is_best(method, m, best.map(|b| &**b), acc) {
                    best = Some(m);
                }
            } else {
                unusable += 1;
            }
        }
        // Spares stand in for unusable members, one for one.
        for m in spares.iter().take(unusable) {
            if is_best(method, m, best.map(|b| &**b), acc) {
                best = Some(m);
            }
        }
        if best.is_none() {
            for m in &standbys {
                if is_best(method, m, best.map(|b| &**b), acc) {
                    best = Some(m);
                }
            }
        }
        if best.is_some() {
            return best;
        }
    }
    None
}
