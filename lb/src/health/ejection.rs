//! The ejection state machine of one member: healthy → ejected → probation → healthy.
//!
//! Pure: [`Tracker::step`] takes the time and a verdict and returns the transition, so every path
//! is unit-tested with paused tokio time and no network. [`verdict`] turns signals (kernel
//! telemetry, request errors) into a reason to eject; a new signal source is a new [`Signals`]
//! field and a new [`Reason`], not a new state machine.
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// When a member is sick, and what ejection costs it (`[balancer.NAME.ejection]`).
pub use crate::config::EjectionPolicy as Policy;

impl Policy {
    /// How many of `members` may be ejected at once.
    pub fn max_ejected(&self, members: usize) -> usize {
        if members < 2 {
            return 0;
        }
        (members * self.max_ejected_percent as usize / 100).max(1)
    }

    /// Length of the `n`-th ejection (n ≥ 1).
    pub fn ejection_time(&self, n: u32) -> Duration {
        self.base_time.saturating_mul(n.max(1)).min(self.max_time)
    }
}

/// What the control loop knows about a member this tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    pub retransmits_per_s: f64,
    pub failed_connects: u64,
    pub rto: u64,
    pub srtt_us: Option<f64>,
    /// The balancer's median srtt (lower median).
    pub median_srtt_us: Option<f64>,
    pub consecutive_errors: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    FailedConnects(u64),
    Retransmits(f64),
    Rto(u64),
    Latency { srtt_us: f64, median_us: f64 },
    RequestErrors(u32),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::FailedConnects(n) => write!(f, "{n} failed connect(s) in the last second"),
            Reason::Retransmits(r) => write!(f, "{r:.1} retransmits/s"),
            Reason::Rto(n) => write!(f, "{n} retransmission timeout(s) in the last second"),
            Reason::Latency { srtt_us, median_us } => write!(
                f,
                "srtt {:.1} ms is {:.0}x the balancer median ({:.3} ms)",
                srtt_us / 1000.0,
                srtt_us / median_us.max(1.0),
                median_us / 1000.0
            ),
            Reason::RequestErrors(n) => write!(f, "{n} requests failed in a row"),
        }
    }
}

/// The first reason in `s` to eject under `p`, if any.
pub fn verdict(p: &Policy, s: &Signals) -> Option<Reason> {
    if !p.enabled {
        return None;
    }
    if s.failed_connects >= p.max_failed_connects.max(1) {
        return Some(Reason::FailedConnects(s.failed_connects));
    }
    if s.rto >= p.max_rto.max(1) {
        return Some(Reason::Rto(s.rto));
    }
    if s.retransmits_per_s >= p.max_retransmits_per_s {
        return Some(Reason::Retransmits(s.retransmits_per_s));
    }
    if let (Some(srtt), Some(median)) = (s.srtt_us, s.median_srtt_us)
        && srtt >= p.latency_floor.as_micros() as f64
        && srtt >= p.latency_factor * median
    {
        return Some(Reason::Latency { srtt_us: srtt, median_us: median });
    }
    if p.consecutive_errors > 0 && s.consecutive_errors >= p.consecutive_errors {
        return Some(Reason::RequestErrors(s.consecutive_errors));
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Healthy,
    Ejected { until: Instant, reason: Reason },
    Probation { since: Instant },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Ejected {
        reason: Reason,
        for_: Duration,
        count: u32,
    },
    /// Ejection time over: back in rotation, on probation.
    Probation,
    Healthy,
    /// Sick, but the balancer already has as many members ejected as it may.
    Withheld(Reason),
}

#[derive(Debug, Clone)]
pub struct Tracker {
    pub state: State,
    /// Ejections so far (they lengthen the next one); forgotten after `max_time` healthy.
    pub ejections: u32,
    healthy_since: Instant,
}

impl Tracker {
    pub fn new(now: Instant) -> Tracker {
        Tracker { state: State::Healthy, ejections: 0, healthy_since: now }
    }

    pub fn is_ejected(&self) -> bool {
        matches!(self.state, State::Ejected { .. })
    }

    /// Advance to `now` given this tick's verdict. `may_eject` is false when the balancer has no
    /// ejection budget left.
    pub fn step(
        &mut self,
        p: &Policy,
        now: Instant,
        sick: Option<Reason>,
        may_eject: bool,
    ) -> Option<Transition> {
        match (&self.state, sick) {
            (State::Healthy, None) => {
                if self.ejections > 0 && now.duration_since(self.healthy_since) >= p.max_time {
                    self.ejections = 0;
                }
                None
            }
            (State::Healthy | State::Probation { .. }, Some(reason)) => {
                if !may_eject {
                    return Some(Transition::Withheld(reason));
                }
                self.ejections += 1;
                let for_ = p.ejection_time(self.ejections);
                self.state = State::Ejected { until: now + for_, reason: reason.clone() };
                Some(Transition::Ejected { reason, for_, count: self.ejections })
            }
            (State::Ejected { until, .. }, _) => {
                if now >= *until {
                    self.state = State::Probation { since: now };
                    Some(Transition::Probation)
                } else {
                    None
                }
            }
            (State::Probation { since }, None) => {
                if now.duration_since(*since) >= p.probation {
                    self.state = State::Healthy;
                    self.healthy_since = now;
                    Some(Transition::Healthy)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sick() -> Option<Reason> {
        Some(Reason::Retransmits(30.0))
    }

    #[tokio::test(start_paused = true)]
    async fn eject_probation_healthy() {
        let p = Policy::default();
        let mut t = Tracker::new(Instant::now());
        assert_eq!(t.step(&p, Instant::now(), None, true), None);
        let tr = t.step(&p, Instant::now(), sick(), true);
        assert_eq!(
            tr,
            Some(Transition::Ejected {
                reason: Reason::Retransmits(30.0),
                for_: p.base_time,
                count: 1
            })
        );
        // Still ejected until base_time has passed, whatever the signals say.
        tokio::time::advance(p.base_time - Duration::from_millis(1)).await;
        assert_eq!(t.step(&p, Instant::now(), None, true), None);
        assert!(t.is_ejected());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(t.step(&p, Instant::now(), None, true), Some(Transition::Probation));
        tokio::time::advance(p.probation).await;
        assert_eq!(t.step(&p, Instant::now(), None, true), Some(Transition::Healthy));
        assert_eq!(t.state, State::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn relapse_on_probation_ejects_for_longer() {
        let p = Policy::default();
        let mut t = Tracker::new(Instant::now());
        t.step(&p, Instant::now(), sick(), true);
        tokio::time::advance(p.base_time).await;
        t.step(&p, Instant::now(), None, true);
        assert!(matches!(t.state, State::Probation { .. }));
        let tr = t.step(&p, Instant::now(), sick(), true);
        assert!(
            matches!(tr, Some(Transition::Ejected { count: 2, for_, .. }) if for_ == p.base_time * 2)
        );
        // The growth is capped.
        assert_eq!(p.ejection_time(1000), p.max_time);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_count_is_forgotten_after_a_long_healthy_spell() {
        let p = Policy::default();
        let mut t = Tracker::new(Instant::now());
        t.step(&p, Instant::now(), sick(), true);
        tokio::time::advance(p.base_time).await;
        t.step(&p, Instant::now(), None, true);
        tokio::time::advance(p.probation).await;
        t.step(&p, Instant::now(), None, true);
        assert_eq!(t.ejections, 1);
        tokio::time::advance(p.max_time).await;
        t.step(&p, Instant::now(), None, true);
        assert_eq!(t.ejections, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_budget_means_withheld_not_ejected() {
        let p = Policy::default();
        let mut t = Tracker::new(Instant::now());
        assert_eq!(
            t.step(&p, Instant::now(), sick(), false),
            Some(Transition::Withheld(Reason::Retransmits(30.0)))
        );
        assert_eq!(t.state, State::Healthy);
    }

    #[test]
    fn verdicts() {
        let p = Policy::default();
        assert_eq!(verdict(&p, &Signals::default()), None);
        let s = Signals { failed_connects: 1, ..Signals::default() };
        assert_eq!(verdict(&p, &s), Some(Reason::FailedConnects(1)));
        // 40 ms against a 20 µs median: far above, and above the floor.
        let s =
            Signals { srtt_us: Some(40_000.0), median_srtt_us: Some(20.0), ..Signals::default() };
        assert!(matches!(verdict(&p, &s), Some(Reason::Latency { .. })));
        // 200 µs is 10x a 20 µs median but below the 2 ms floor: loopback jitter, not sickness.
        let s = Signals { srtt_us: Some(200.0), median_srtt_us: Some(20.0), ..Signals::default() };
        assert_eq!(verdict(&p, &s), None);
        let s = Signals { consecutive_errors: 5, ..Signals::default() };
        assert_eq!(verdict(&p, &s), Some(Reason::RequestErrors(5)));
        let off = Policy { enabled: false, ..Policy::default() };
        assert_eq!(verdict(&off, &Signals { failed_connects: 9, ..Signals::default() }), None);
    }

    #[test]
    fn ejection_budget() {
        let p = Policy::default();
        assert_eq!(p.max_ejected(1), 0);
        assert_eq!(p.max_ejected(2), 1);
        assert_eq!(p.max_ejected(3), 1);
        assert_eq!(p.max_ejected(4), 2);
    }
}
