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
pub mod sticky;
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
    /// The session's route (sticky sessions), as the client sent it.
    pub route: Option<Box<[u8]>>,
}

/// A picked member, counted in flight until dropped.
#[derive(Debug)]
pub struct Pick {
    pub guard: InFlight,
    /// Chosen by the session's route rather than by the method.
    pub routed: bool,
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

    /// Pick a member now, or None when no member is usable. A session route picks its member
    /// (or its redirect) when usable; else, unless `nofailover` forbids it, the method picks.
    pub fn pick(&self, ctx: &PickContext) -> Option<Pick> {
        let now = now_ms();
        self.force_recovery(now);
        if let Some(route) = ctx.route.as_deref() {
            if let Some(m) = sticky::find(&self.members, route, now, &ctx.tried) {
                sticky::settle(&self.members, m);
                m.note_elected();
                return Some(Pick { guard: m.begin(), routed: true });
            }
            if sticky::refused(&self.members, self.settings.nofailover, ctx) {
                return None;
            }
        }
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
        Some(Pick { guard, routed: false })
    }

    /// Pick a member, waiting up to the balancer `timeout` for one to become usable (Apache polls
    /// in timeout/100 steps).
    pub async fn pick_wait(&self, ctx: &PickContext) -> Option<Pick> {
        if let Some(p) = self.pick(ctx) {
            return Some(p);
        }
        let timeout = self.settings.timeout;
        // As in Apache, a session refused by `nofailover` gets its 503 at once.
        if timeout.is_zero() || self.refuses(ctx) {
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

    /// The request's session route belongs to a member that cannot take it, and `nofailover`
    /// forbids another.
    pub fn refuses(&self, ctx: &PickContext) -> bool {
        sticky::refused(&self.members, self.settings.nofailover, ctx)
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
mod tests;
