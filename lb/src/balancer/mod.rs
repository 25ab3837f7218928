//! The balancer: which member serves the next request or connection.
//!
//! It knows no protocol. The protocol layer (HTTP or TCP) hands it a [`PickContext`] and gets
//! back a [`Pick`] holding an [`InFlight`] guard; it reports how the request or connection went
//! with [`Member::report`] and counts bytes on the member.
//!
//! Picking follows Apache's mod_proxy_balancer: forced recovery when every member is in error,
//! the shared candidate loop in [`method`], and the method's arithmetic on the members' atomics.
//! Nothing here takes a lock.
pub mod heartbeat;
pub mod member;
pub mod method;
pub mod note;
pub mod vitals;

pub use crate::config::flags;
use crate::config::{BalancerConfig, EjectionPolicy, LbMethod};
pub use member::{HealthNote, InFlight, Member, MemberId, Outcome, SlotsExhausted, now_ms};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What the protocol layer knows about the request when it asks for a member.
#[derive(Debug, Default, Clone)]
pub struct PickContext {
    pub client: Option<SocketAddr>,
    /// Members already tried for this request: a retry never goes back to them.
    pub tried: Vec<MemberId>,
}

/// A picked member, counted in flight until dropped.
#[derive(Debug)]
pub struct Pick {
    pub guard: InFlight,
}

impl Pick {
    pub fn member(&self) -> &Arc<Member> {
        self.guard.member()
    }
}

/// A balancer's own settings: Apache's balancer parameters that do not depend on the protocol.
#[derive(Debug, Clone)]
pub struct Settings {
    pub lbmethod: LbMethod,
    /// Extra attempts after the first.
    pub maxattempts: u32,
    pub nofailover: bool,
    /// How long to wait for a usable member (0 = don't wait).
    pub timeout: Duration,
    pub forcerecovery: bool,
    pub growth: u32,
    pub ejection: EjectionPolicy,
}

impl From<&BalancerConfig> for Settings {
    fn from(c: &BalancerConfig) -> Settings {
        Settings {
            lbmethod: c.lbmethod,
            maxattempts: c.maxattempts,
            nofailover: c.nofailover,
            timeout: c.timeout,
            forcerecovery: c.forcerecovery,
            growth: c.growth,
            ejection: c.ejection.clone(),
        }
    }
}

pub struct Balancer {
    name: String,
    pub settings: Settings,
    /// Config order; ties go to the first.
    pub members: Vec<Arc<Member>>,
    /// True for the implicit one-member balancer behind a plain `http://` ProxyPass.
    pub implicit: bool,
    /// Heartbeat records (shared by every balancer), for the heartbeat method.
    pub heartbeats: Arc<heartbeat::Heartbeats>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Balancer {
    pub fn new(
        config: &BalancerConfig,
        implicit: bool,
        heartbeats: Arc<heartbeat::Heartbeats>,
    ) -> Balancer {
        Self::rebuild(config, implicit, heartbeats, None)
    }

    /// A balancer for `config` that keeps every member of `previous` whose URL is unchanged
    /// (same `Member`: counters, health, pool), updating its settings. New members start fresh;
    /// members left out are no longer picked and drain as their requests end. As in Apache, a
    /// changed load factor resets every `lbstatus` to the member's load factor.
    pub fn rebuild(
        config: &BalancerConfig,
        implicit: bool,
        heartbeats: Arc<heartbeat::Heartbeats>,
        previous: Option<&Balancer>,
    ) -> Balancer {
        let mut reweighted = false;
        let members: Vec<Arc<Member>> = config
            .members
            .iter()
            .map(|m| match previous.and_then(|p| p.members.iter().find(|x| x.url == m.url)) {
                Some(kept) => {
                    reweighted |= kept.update(m.clone());
                    Arc::clone(kept)
                }
                None => Arc::new(Member::new(m.clone())),
            })
            .collect();
        if reweighted {
            for m in &members {
                m.set_lbstatus(m.lbfactor());
            }
        }
        Balancer {
            name: config.name.clone(),
            settings: Settings::from(config),
            members,
            implicit,
            heartbeats,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn method(&self) -> LbMethod {
        self.settings.lbmethod
    }

    pub fn member(&self, id: MemberId) -> Option<&Arc<Member>> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Pick a member now, or None when no member is usable.
    pub fn pick(&self, ctx: &PickContext) -> Option<Pick> {
        let now = now_ms();
        self.force_recovery(now);
        let mut acc = method::Acc::default();
        let method = self.method();
        let winner = if method == LbMethod::Heartbeat {
            let t = std::time::Instant::now();
            heartbeat::pick(&self.members, &self.heartbeats, &ctx.tried, now, t)?
        } else {
            method::best_member(method, &self.members, now, &ctx.tried, &mut acc)?
        };
        method::settle(method, winner, &acc);
        winner.note_elected();
        let guard = winner.begin();
        tracing::debug!(
            balancer = %self.name(),
            method = method.as_str(),
            member = %winner.url,
            lbstatus = winner.lbstatus(),
            busy = winner.busy(),
            total = acc.total,
            client = ?ctx.client,
            "picked member"
        );
        Some(Pick { guard })
    }

    /// Pick a member, waiting up to the balancer `timeout` for one to become usable (Apache polls
    /// in timeout/100 steps).
    pub async fn pick_wait(&self, ctx: &PickContext) -> Option<Pick> {
        if let Some(p) = self.pick(ctx) {
            return Some(p);
        }
        let timeout = self.settings.timeout;
        if timeout.is_zero() {
            return None;
        }
        let step = (timeout / 100).max(Duration::from_millis(1));
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(step).await;
            if let Some(p) = self.pick(ctx) {
                return Some(p);
            }
        }
        None
    }

    /// Apache's `force_recovery`: when every member is in error (E), and `forcerecovery` is on,
    /// clear E on all of them rather than fail every request. Returns true when it did.
    fn force_recovery(&self, now: u64) -> bool {
        let all_in_error = self.members.iter().all(|m| {
            if !m.flags().contains(flags::IN_ERROR) {
                return false;
            }
            m.retry_check(now);
            m.flags().contains(flags::IN_ERROR)
        });
        if all_in_error && self.settings.forcerecovery && !self.members.is_empty() {
            tracing::warn!(balancer = %self.name(), "every member is in error: forcing recovery of all");
            for m in &self.members {
                m.force_recover();
            }
            return true;
        }
        false
    }

    /// One line on why nothing could be picked, for the 503 body and the log.
    pub fn unavailable_reason(&self) -> String {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for m in &self.members {
            *counts.entry(m.flags().letters()).or_default() += 1;
        }
        let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        format!(
            "no usable member in balancer \"{}\" ({} members by status: {})",
            self.name(),
            self.members.len(),
            parts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MemberConfig, parse_member_url};
    use flags::StatusFlags;

    fn member(port: u16, factor: u32, status: &str) -> MemberConfig {
        MemberConfig {
            url: parse_member_url(&format!("http://127.0.0.1:{port}")).unwrap(),
            lbfactor: factor * 100,
            lbset: 0,
            route: None,
            redirect: None,
            status: StatusFlags::default().apply(status).unwrap(),
            ..MemberConfig::for_url(parse_member_url(&format!("http://127.0.0.1:{port}")).unwrap())
        }
    }

    fn balancer(method: LbMethod, members: Vec<MemberConfig>) -> Balancer {
        Balancer::new(&config(method, members), false, Arc::default())
    }

    fn config(method: LbMethod, members: Vec<MemberConfig>) -> BalancerConfig {
        BalancerConfig {
            name: "t".into(),
            lbmethod: method,
            maxattempts: 1,
            nofailover: false,
            timeout: Duration::ZERO,
            forcerecovery: true,
            growth: 0,
            ejection: EjectionPolicy::default(),
            http: Default::default(),
            members,
        }
    }

    /// Position in config order of the member picked.
    fn pos(b: &Balancer, p: &Pick) -> usize {
        b.members.iter().position(|m| m.id == p.member().id).unwrap()
    }

    fn seq(b: &Balancer, n: usize) -> Vec<usize> {
        (0..n).map(|_| pos(b, &b.pick(&PickContext::default()).unwrap())).collect()
    }

    #[test]
    fn byrequests_weights_1_1_1_2() {
        let b = balancer(
            LbMethod::ByRequests,
            vec![member(1, 1, ""), member(2, 1, ""), member(3, 1, ""), member(4, 2, "")],
        );
        // Worked by hand from Apache's arithmetic: d a b c d, repeating.
        assert_eq!(seq(&b, 10), vec![3, 0, 1, 2, 3, 3, 0, 1, 2, 3]);
    }

    #[test]
    fn byrequests_skips_disabled() {
        let b = balancer(
            LbMethod::ByRequests,
            vec![member(1, 1, ""), member(2, 1, "D"), member(3, 1, ""), member(4, 1, "")],
        );
        assert_eq!(seq(&b, 6), vec![0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn bybusyness_prefers_fewest_in_flight() {
        let b = balancer(LbMethod::ByBusyness, vec![member(1, 1, ""), member(2, 1, "")]);
        let first = b.pick(&PickContext::default()).unwrap();
        assert_eq!(pos(&b, &first), 0);
        // While member 0 is busy, member 1 wins every time.
        let second = b.pick(&PickContext::default()).unwrap();
        assert_eq!(pos(&b, &second), 1);
        drop(second);
        assert_eq!(pos(&b, &b.pick(&PickContext::default()).unwrap()), 1);
    }

    #[test]
    fn standby_only_when_nothing_else_and_spare_replaces_unusable() {
        let b = balancer(
            LbMethod::ByRequests,
            vec![member(1, 1, ""), member(2, 1, "H"), member(3, 1, "R")],
        );
        assert!(seq(&b, 4).iter().all(|&i| i == 0));
        b.members[0].mark_error(now_ms(), "down".into());
        // The spare stands in for the one unusable plain member before the standby is used.
        assert_eq!(seq(&b, 2), vec![2, 2]);
        b.members[2].set_flags(flags::DISABLED);
        assert_eq!(seq(&b, 2), vec![1, 1]);
    }

    #[test]
    fn a_retry_skips_members_already_tried() {
        let b = balancer(
            LbMethod::ByRequests,
            vec![member(1, 1, ""), member(2, 1, ""), member(3, 1, "R")],
        );
        let ids: Vec<MemberId> = b.members.iter().map(|m| m.id).collect();
        let ctx = PickContext { client: None, tried: vec![ids[0]] };
        // Member 0 was tried: member 1 is picked, and the spare stands in for member 0.
        let picks: Vec<usize> = (0..4).map(|_| pos(&b, &b.pick(&ctx).unwrap())).collect();
        assert!(!picks.contains(&0), "{picks:?}");
        assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
        let ctx = PickContext { client: None, tried: ids };
        assert!(b.pick(&ctx).is_none());
    }

    #[test]
    fn force_recovery_clears_all_errors() {
        let b = balancer(LbMethod::ByRequests, vec![member(1, 1, ""), member(2, 1, "")]);
        for m in &b.members {
            m.mark_error(now_ms(), "down".into());
        }
        assert!(b.pick(&PickContext::default()).is_some());
        assert!(b.members.iter().all(|m| m.usable()));
    }

    #[test]
    fn retry_timer_returns_member() {
        let mut cfg = member(1, 1, "");
        cfg.retry = Duration::ZERO;
        let m = Member::new(cfg);
        m.mark_error(now_ms(), "x".into());
        assert!(!m.usable());
        m.retry_check(now_ms());
        assert!(m.usable());
        let mut cfg = member(1, 1, "I");
        cfg.retry = Duration::from_secs(60);
        let m = Member::new(cfg);
        assert!(!m.mark_error(now_ms(), "x".into()));
        assert!(m.usable());
    }

    #[test]
    fn a_rebuild_keeps_unchanged_members_and_their_state() {
        let old = balancer(LbMethod::ByRequests, vec![member(1, 1, ""), member(2, 1, "")]);
        let kept = Arc::clone(&old.members[0]);
        for _ in 0..3 {
            drop(old.pick(&PickContext::default()));
        }
        let elected = kept.elected();
        assert!(elected >= 1);
        kept.mark_error(now_ms(), "down".into());
        // Member 1 keeps its URL with a new weight and the H flag; member 2 goes; member 3 is new.
        let new_cfg = config(LbMethod::ByRequests, vec![member(3, 1, ""), member(1, 3, "+H")]);
        let new = Balancer::rebuild(&new_cfg, false, Arc::default(), Some(&old));
        assert_eq!(new.members[1].id, kept.id);
        assert!(Arc::ptr_eq(&new.members[1], &kept));
        assert_eq!(kept.elected(), elected, "counters survive");
        assert!(kept.flags().contains(flags::IN_ERROR), "live E survives");
        assert!(kept.flags().contains(flags::HOT_STANDBY), "configured flags follow the file");
        assert_eq!(kept.lbfactor(), 300);
        assert_ne!(new.members[0].id, old.members[1].id);
        // A weight changed: every lbstatus restarts at the member's own load factor (Apache).
        assert_eq!(new.members[0].lbstatus(), 100);
        assert_eq!(kept.lbstatus(), 300);
    }

    #[test]
    fn ejection_spends_the_errors_in_a_row() {
        let m = Member::new(member(1, 1, ""));
        for _ in 0..5 {
            m.report(Outcome::Failed("refused".into()));
        }
        assert_eq!(m.consecutive_errors(), 5);
        m.eject(now_ms() + 1000, "5 errors".into());
        assert_eq!(m.consecutive_errors(), 0);
    }
}
