//! The ejection state machine of one member.
//!
//! Pure: [`Tracker::step`] takes the time and an [`Input`] (enough evidence to eject, something
//! suspicious, probe results) and returns the transition, so every path is unit-tested with
//! paused tokio time and no network. Every signal source — kernel telemetry, request outcomes,
//! stalls, probes — reaches it through [`super::evidence`] and [`Input`]; none has a state
//! machine of its own.
//!
//! ```text
//! healthy ─suspicious─▶ suspect (probed) ─sick─▶ ejected ─time─▶ recovering (probed, still out)
//!   ▲ ▲ ◀─ cleared ────────┘                       ▲ ◀─ a probe fails ─┘ │ 3 probes pass
//!   │ └─ time ─ probation (back in rotation) ◀──────────────────────────┘
//!   (healthy, suspect and probation members that turn sick are ejected)
//! ```
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

    /// `us` is a latency outlier against `reference_us`: at least `latency_factor` times it,
    /// and at least `latency_floor` (loopback jitter is not sickness). The one rule for srtt
    /// against the balancer median or the member's own baseline, and for slow probes.
    pub fn latency_outlier(&self, us: f64, reference_us: f64) -> bool {
        us >= self.latency_floor.as_micros() as f64 && us >= self.latency_factor * reference_us
    }
}

/// Probes in a row that must pass before an ejected member returns, or to clear a suspicion.
pub const RETURN_PASSES: u32 = 3;
/// How long a suspicion may stay undecided before it is dropped.
pub const SUSPECT_FOR: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// The evidence score crossed the ejection level: what it is made of, and the score.
    Evidence {
        summary: String,
        score: f64,
    },
    Latency {
        srtt_us: f64,
        median_us: f64,
    },
    RequestErrors(u32),
    /// A probe failed while the member was waiting to return.
    ProbeFailed(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Evidence { summary, score } => write!(f, "{summary} (evidence {score:.1})"),
            Reason::Latency { srtt_us, median_us } => write!(
                f,
                "srtt {:.1} ms is {:.0}x the balancer median ({:.3} ms)",
                srtt_us / 1000.0,
                srtt_us / median_us.max(1.0),
                median_us / 1000.0
            ),
            Reason::RequestErrors(n) => write!(f, "{n} requests failed in a row"),
            Reason::ProbeFailed(d) => write!(f, "a probe before its return failed: {d}"),
        }
    }
}

/// What the monitor knows about a member at one step.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Enough evidence to eject, and what it is.
    pub sick: Option<Reason>,
    /// Something new and suspicious happened (the first bad kernel event, a stall, a failed
    /// probe): probe the member.
    pub suspect: Option<String>,
    /// Probe results since the last step, oldest first (true = passed).
    pub probes: Vec<bool>,
    /// The evidence is all but gone: passing probes may clear a suspicion.
    pub calm: bool,
    /// Most of the balancer shows symptoms at once: loaded, not sick.
    pub loaded: bool,
    /// False when the balancer has no ejection budget left.
    pub may_eject: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Healthy,
    /// Something suspicious: being probed until sick, cleared by [`RETURN_PASSES`] passing
    /// probes in a row with the evidence calm again, or [`SUSPECT_FOR`] has passed.
    Suspect {
        since: Instant,
        why: String,
        passes: u32,
    },
    Ejected {
        until: Instant,
        reason: Reason,
    },
    /// The ejection time is over; still out of rotation until [`RETURN_PASSES`] probes pass.
    Recovering {
        passes: u32,
        reason: Reason,
    },
    Probation {
        since: Instant,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Suspected(String),
    Cleared,
    Ejected {
        reason: Reason,
        for_: Duration,
        count: u32,
    },
    /// Ejection time over: probing before the member returns.
    Recovering,
    /// Probes passed: back in rotation, on probation.
    Probation,
    Healthy,
    /// Sick, but the balancer already has as many members ejected as it may.
    Withheld(Reason),
    /// Sick, but so is most of the balancer: load, not a sick member.
    Loaded(Reason),
    /// `hcfails` health checks failed in a row: flag C.
    CheckFailed(String),
    /// `hcpasses` health checks passed in a row: C and E cleared; `returned` when the member
    /// was ejected and now returns, on probation.
    CheckPassed {
        returned: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Tracker {
    pub state: State,
    /// Ejections so far (they lengthen the next one); forgotten after `max_time` healthy.
    pub ejections: u32,
    healthy_since: Instant,
    /// Health-check results in a row (see `super::hcheck`).
    pub checks: super::hcheck::Streak,
}

impl Tracker {
    pub fn new(now: Instant) -> Tracker {
        Tracker {
            state: State::Healthy,
            ejections: 0,
            healthy_since: now,
            checks: Default::default(),
        }
    }

    /// Out of rotation (ejected, or waiting for probes to let it return).
    pub fn is_ejected(&self) -> bool {
        matches!(self.state, State::Ejected { .. } | State::Recovering { .. })
    }

    /// Wants probes now: suspect, or waiting to return.
    pub fn probing(&self) -> bool {
        matches!(self.state, State::Suspect { .. } | State::Recovering { .. })
    }

    fn eject(&mut self, p: &Policy, now: Instant, reason: Reason) -> Transition {
        self.ejections += 1;
        let for_ = p.ejection_time(self.ejections);
        self.state = State::Ejected { until: now + for_, reason: reason.clone() };
        Transition::Ejected { reason, for_, count: self.ejections }
    }

    /// Advance to `now` given this step's input.
    pub fn step(&mut self, p: &Policy, now: Instant, input: Input) -> Option<Transition> {
        match &self.state {
            State::Healthy | State::Suspect { .. } | State::Probation { .. }
                if input.sick.is_some() =>
            {
                let reason = input.sick?;
                if input.loaded {
                    return Some(Transition::Loaded(reason));
                }
                if !input.may_eject {
                    return Some(Transition::Withheld(reason));
                }
                Some(self.eject(p, now, reason))
            }
            State::Healthy => match input.suspect {
                Some(why) => {
                    self.state = State::Suspect { since: now, why: why.clone(), passes: 0 };
                    Some(Transition::Suspected(why))
                }
                None => {
                    if self.ejections > 0 && now.duration_since(self.healthy_since) >= p.max_time {
                        self.ejections = 0;
                    }
                    None
                }
            },
            State::Suspect { since, why, passes } => {
                let mut passes = *passes;
                for ok in &input.probes {
                    passes = if *ok { passes + 1 } else { 0 };
                }
                let cleared = passes >= RETURN_PASSES && input.calm;
                if cleared || now.duration_since(*since) >= SUSPECT_FOR {
                    self.state = State::Healthy;
                    Some(Transition::Cleared)
                } else {
                    self.state = State::Suspect { since: *since, why: why.clone(), passes };
                    None
                }
            }
            State::Ejected { until, reason } => {
                if now >= *until {
                    self.state = State::Recovering { passes: 0, reason: reason.clone() };
                    Some(Transition::Recovering)
                } else {
                    None
                }
            }
            State::Recovering { passes, reason } => {
                let (mut passes, reason) = (*passes, reason.clone());
                for ok in &input.probes {
                    if !ok {
                        let again = Reason::ProbeFailed(format!("earlier: {reason}"));
                        return Some(self.eject(p, now, again));
                    }
                    passes += 1;
                }
                if passes >= RETURN_PASSES {
                    self.state = State::Probation { since: now };
                    Some(Transition::Probation)
                } else {
                    self.state = State::Recovering { passes, reason };
                    None
                }
            }
            State::Probation { since } => {
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

    fn sick() -> Input {
        Input {
            sick: Some(Reason::Evidence {
                summary: "5 of 10 data segments retransmitted".into(),
                score: 7.8,
            }),
            may_eject: true,
            ..Input::default()
        }
    }
    fn quiet() -> Input {
        Input { may_eject: true, calm: true, ..Input::default() }
    }
    fn probes(r: &[bool]) -> Input {
        Input { probes: r.to_vec(), ..quiet() }
    }
    fn now() -> Instant {
        Instant::now()
    }
    /// Eject, wait out the first ejection, and let three probes pass: on probation.
    async fn eject_and_return(p: &Policy, t: &mut Tracker) {
        t.step(p, now(), sick());
        tokio::time::advance(p.base_time).await;
        t.step(p, now(), quiet());
        t.step(p, now(), probes(&[true, true, true]));
        assert!(matches!(t.state, State::Probation { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn eject_recover_by_probes_then_probation_then_healthy() {
        let p = Policy::default();
        let mut t = Tracker::new(now());
        assert_eq!(t.step(&p, now(), quiet()), None);
        let tr = t.step(&p, now(), sick());
        assert!(
            matches!(tr, Some(Transition::Ejected { count: 1, for_, .. }) if for_ == p.base_time)
        );
        // Still ejected until base_time has passed, whatever the signals say.
        tokio::time::advance(p.base_time - Duration::from_millis(1)).await;
        assert_eq!(t.step(&p, now(), quiet()), None);
        assert!(t.is_ejected());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(t.step(&p, now(), quiet()), Some(Transition::Recovering));
        assert!(t.is_ejected() && t.probing(), "out of rotation until probes pass");
        assert_eq!(t.step(&p, now(), probes(&[true, true])), None);
        assert_eq!(t.step(&p, now(), probes(&[true])), Some(Transition::Probation));
        assert!(!t.is_ejected());
        tokio::time::advance(p.probation).await;
        assert_eq!(t.step(&p, now(), quiet()), Some(Transition::Healthy));
        assert_eq!(t.state, State::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_before_the_return_ejects_again_for_longer() {
        let p = Policy::default();
        let mut t = Tracker::new(now());
        t.step(&p, now(), sick());
        tokio::time::advance(p.base_time).await;
        t.step(&p, now(), quiet());
        let tr = t.step(&p, now(), probes(&[true, false]));
        assert!(
            matches!(&tr, Some(Transition::Ejected { count: 2, for_, reason: Reason::ProbeFailed(_) }) if *for_ == p.base_time * 2),
            "{tr:?}"
        );
        // The growth is capped.
        assert_eq!(p.ejection_time(1000), p.max_time);
    }

    #[tokio::test(start_paused = true)]
    async fn relapse_on_probation_ejects_for_longer() {
        let p = Policy::default();
        let mut t = Tracker::new(now());
        eject_and_return(&p, &mut t).await;
        let tr = t.step(&p, now(), sick());
        assert!(matches!(tr, Some(Transition::Ejected { count: 2, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn suspicion_is_cleared_by_passing_probes_or_by_time() {
        let p = Policy::default();
        let mut t = Tracker::new(now());
        let s = Input { suspect: Some("1 SYN retransmit".into()), ..Input::default() };
        assert_eq!(
            t.step(&p, now(), s.clone()),
            Some(Transition::Suspected("1 SYN retransmit".into()))
        );
        assert!(t.probing());
        // Passes must come in a row: a failure in between starts the count again.
        assert_eq!(t.step(&p, now(), probes(&[true, true, false])), None);
        assert_eq!(t.step(&p, now(), probes(&[true, true])), None);
        // Three in a row, but the evidence is not calm yet: still suspect.
        assert_eq!(t.step(&p, now(), Input { calm: false, ..probes(&[true]) }), None);
        assert_eq!(t.step(&p, now(), probes(&[true])), Some(Transition::Cleared));
        // Undecided suspicion ends after SUSPECT_FOR.
        t.step(&p, now(), s);
        tokio::time::advance(SUSPECT_FOR).await;
        assert_eq!(t.step(&p, now(), Input { calm: false, ..quiet() }), Some(Transition::Cleared));
        // Sick while suspect: ejected.
        t.step(&p, now(), Input { suspect: Some("x".into()), ..Input::default() });
        assert!(matches!(t.step(&p, now(), sick()), Some(Transition::Ejected { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_count_is_forgotten_after_a_long_healthy_spell() {
        let p = Policy::default();
        let mut t = Tracker::new(now());
        eject_and_return(&p, &mut t).await;
        tokio::time::advance(p.probation).await;
        t.step(&p, now(), quiet());
        assert_eq!(t.ejections, 1);
        tokio::time::advance(p.max_time).await;
        t.step(&p, now(), quiet());
        assert_eq!(t.ejections, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_budget_or_a_loaded_balancer_means_kept_not_ejected() {
        let p = Policy::default();
        let mut t = Tracker::new(now());
        let tr = t.step(&p, now(), Input { may_eject: false, ..sick() });
        assert!(matches!(tr, Some(Transition::Withheld(_))));
        let tr = t.step(&p, now(), Input { loaded: true, ..sick() });
        assert!(matches!(tr, Some(Transition::Loaded(_))));
        assert_eq!(t.state, State::Healthy);
    }

    #[test]
    fn latency_outliers_need_the_factor_and_the_floor() {
        let p = Policy::default();
        // 40 ms against a 20 µs reference: far above, and above the 2 ms floor.
        assert!(p.latency_outlier(40_000.0, 20.0));
        // 200 µs is 10x a 20 µs reference but below the floor: loopback jitter, not sickness.
        assert!(!p.latency_outlier(200.0, 20.0));
        // 5 ms is above the floor but only 2.5x a 2 ms reference: merely slower.
        assert!(!p.latency_outlier(5_000.0, 2_000.0));
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
