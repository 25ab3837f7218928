//! Member health: the control loop that turns kernel telemetry and request outcomes into
//! ejections.
//!
//! Every telemetry interval: sample the kernel counters (telemetry) → build each member's
//! [`ejection::Signals`] → [`ejection::verdict`] → step the member's [`ejection::Tracker`] →
//! apply the transition to the member (flag E with the reason, or back in rotation). The data
//! path only ever reads member flags, so it never waits for this loop.
pub mod ejection;

use crate::balancer::{Balancer, HealthNote, MemberId, now_ms};
use crate::telemetry::{Snapshot, Telemetry};
use arc_swap::ArcSwap;
use ejection::{Signals, State, Tracker, Transition};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

/// Added to srtt and to the median before they are compared for the latency weight, so that
/// microsecond jitter between equal members (loopback, one rack) does not tilt the balance.
pub const LATENCY_NOISE_US: f64 = 100.0;

/// Ejection trackers for every member of every balancer, by member identity: a member kept
/// across a reload keeps its tracker.
#[derive(Default)]
pub struct Monitor {
    trackers: HashMap<MemberId, Tracker>,
}

/// Lower median (robust with two members: one sick member cannot drag it up).
fn lower_median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[(v.len() - 1) / 2])
}

impl Monitor {
    pub fn evaluate(&mut self, balancers: &[Arc<Balancer>], snap: &Snapshot, now: Instant) {
        // Forget members no balancer holds any more.
        let live: std::collections::HashSet<MemberId> =
            balancers.iter().flat_map(|b| b.members.iter().map(|m| m.id)).collect();
        self.trackers.retain(|id, _| live.contains(id));
        for b in balancers {
            let policy = &b.settings.ejection;
            let kernel: Vec<_> = b
                .members
                .iter()
                .map(|m| m.endpoint().and_then(|e| snap.endpoints.get(&e)))
                .collect();
            let median =
                lower_median(kernel.iter().filter_map(|k| k.and_then(|k| k.srtt_us)).collect());
            let budget = policy.max_ejected(b.members.len());
            let mut ejected = b
                .members
                .iter()
                .filter(|m| self.trackers.get(&m.id).is_some_and(Tracker::is_ejected))
                .count();
            for (m, k) in b.members.iter().zip(&kernel) {
                let weight = match (k.and_then(|k| k.srtt_us), median) {
                    (Some(srtt), Some(med)) => (srtt + LATENCY_NOISE_US) / (med + LATENCY_NOISE_US),
                    _ => 1.0,
                };
                m.set_latency_weight(weight);
                let t = self.trackers.entry(m.id).or_insert_with(|| Tracker::new(now));
                let signals = Signals {
                    retransmits_per_s: k.map_or(0.0, |k| k.retransmits_per_s),
                    failed_connects: k.map_or(0, |k| k.connect_failed_recent),
                    rto: k.map_or(0, |k| k.rto_recent),
                    srtt_us: k.and_then(|k| k.srtt_us),
                    median_srtt_us: median,
                    consecutive_errors: m.consecutive_errors(),
                };
                let sick = ejection::verdict(policy, &signals);
                let transition = t.step(policy, now, sick, ejected < budget);
                match &transition {
                    Some(Transition::Ejected { reason, for_, count }) => {
                        ejected += 1;
                        let until = now_ms() + for_.as_millis() as u64;
                        m.eject(
                            until,
                            format!("ejected for {for_:?} (ejection #{count}): {reason}"),
                        );
                        tracing::warn!(
                            balancer = %b.name(), member = %m.url, reason = %reason,
                            ejection_s = for_.as_secs_f64(), count, "member ejected"
                        );
                    }
                    Some(Transition::Probation) => {
                        m.end_ejection();
                        tracing::info!(balancer = %b.name(), member = %m.url, "ejection over: member on probation");
                    }
                    Some(Transition::Healthy) => {
                        tracing::info!(balancer = %b.name(), member = %m.url, "member healthy again");
                    }
                    Some(Transition::Withheld(reason))
                        if m.health_note().is_none_or(|n| n.state != "sick") =>
                    {
                        tracing::warn!(
                            balancer = %b.name(), member = %m.url, reason = %reason,
                            "member is sick but the balancer already has {budget} member(s) ejected: panic mode, kept in rotation"
                        );
                    }
                    _ => {}
                }
                let note = match (&t.state, &transition) {
                    (_, Some(Transition::Withheld(r))) => HealthNote {
                        state: "sick",
                        reason: Some(format!(
                            "{r} (not ejected: ejection limit reached, panic mode)"
                        )),
                    },
                    (State::Healthy, _) => HealthNote { state: "healthy", reason: None },
                    (State::Ejected { reason, .. }, _) => {
                        HealthNote { state: "ejected", reason: Some(reason.to_string()) }
                    }
                    (State::Probation { .. }, _) => HealthNote { state: "probation", reason: None },
                };
                m.set_health_note(note);
            }
        }
    }
}

/// The control loop: sample telemetry and evaluate the current balancers' health every interval
/// until `stop`.
pub async fn run(
    balancers: Arc<ArcSwap<Vec<Arc<Balancer>>>>,
    telemetry: Arc<Telemetry>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut monitor = Monitor::default();
    let mut tick = tokio::time::interval(telemetry.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                let snap = telemetry.sample(now.into_std());
                monitor.evaluate(&balancers.load(), &snap, now);
            }
            _ = &mut stop => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::Outcome;
    use crate::config::{BalancerConfig, LbMethod, MemberConfig, parse_member_url};
    use std::time::Duration;

    fn config(ports: &[u16]) -> BalancerConfig {
        BalancerConfig {
            name: "b".into(),
            lbmethod: LbMethod::ByRequests,
            maxattempts: 1,
            nofailover: false,
            timeout: Duration::ZERO,
            forcerecovery: true,
            growth: 0,
            ejection: Default::default(),
            http: Default::default(),
            members: ports
                .iter()
                .map(|p| {
                    MemberConfig::for_url(
                        parse_member_url(&format!("http://127.0.0.1:{p}")).unwrap(),
                    )
                })
                .collect(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_survives_a_rebuild_that_keeps_the_member() {
        let heartbeats = Arc::new(crate::balancer::heartbeat::Heartbeats::default());
        let old = Arc::new(Balancer::new(&config(&[1, 2, 3]), false, Arc::clone(&heartbeats)));
        let mut monitor = Monitor::default();
        let snap = Snapshot::default();
        for _ in 0..5 {
            old.members[0].report(Outcome::Failed("refused".into()));
        }
        monitor.evaluate(std::slice::from_ref(&old), &snap, Instant::now());
        assert_eq!(old.members[0].health_note().unwrap().state, "ejected");
        // Member 1 stays (same URL), member 3 goes, member 4 is new.
        let new = Arc::new(Balancer::rebuild(&config(&[1, 2, 4]), false, heartbeats, Some(&old)));
        tokio::time::advance(Duration::from_secs(1)).await;
        monitor.evaluate(std::slice::from_ref(&new), &snap, Instant::now());
        assert_eq!(new.members[0].health_note().unwrap().state, "ejected", "still ejected");
        assert!(!new.members[0].usable());
        assert_eq!(new.members[2].health_note().unwrap().state, "healthy");
        assert_eq!(monitor.trackers.len(), 3, "the removed member's tracker is gone");
        // The ejection ends on its own schedule (base_time 5 s), not reset by the rebuild.
        tokio::time::advance(Duration::from_secs(5)).await;
        monitor.evaluate(std::slice::from_ref(&new), &snap, Instant::now());
        assert_eq!(new.members[0].health_note().unwrap().state, "probation");
        assert!(new.members[0].usable());
    }
}
