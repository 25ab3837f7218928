//! Evidence that a member is sick, weighed against how much traffic produced it.
//!
//! Each signal is a count of trials and of bad outcomes among them: data segments and their
//! retransmits, connects and their SYN retransmits, connects and the failed ones, requests and
//! the failed ones, probes and the failed ones. A sequential probability ratio test (Wald's SPRT,
//! in its CUSUM form: never below 0) weighs each signal: a bad outcome adds ln(p1/p0), a good one
//! adds ln((1−p1)/(1−p0)), where p0 is the bad share of a healthy member and p1 that of a sick
//! one. So the decision needs a few bad outcomes when there were few trials, and many when there
//! were many: one retransmit among ten segments is news, ten among ten thousand are not.
//!
//! Each signal keeps its own score and the member's evidence is their sum: independent bad news
//! adds up (a SYN retransmit and a failed probe), but good news on one signal never cancels bad
//! news on another (requests that succeed slowly say nothing against a 5 % retransmit rate).
//! Evidence also fades with time (half-life [`HALF_LIFE`]), so old, isolated events never add up.
//!
//! Pure: no clock, no I/O; unit-tested below.
use crate::balancer::note::{Evidence, Tally};
use std::time::Duration;

/// The score that ejects: ln(1000), a false-alarm odds of about 1 in 1000 per episode.
pub const EJECT_AT: f64 = 6.907_755;

/// How fast old evidence fades.
pub const HALF_LIFE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Retransmitted data segments among data segments sent.
    Segments,
    /// Retransmitted SYNs among connects (on a sub-millisecond path even one is news).
    Syn,
    /// Failed connects among connects.
    Connects,
    /// Failed requests (connect or exchange errors) among requests.
    Requests,
    /// Failed confirmation probes among probes.
    Probes,
}

const SIGNALS: [Signal; 5] =
    [Signal::Segments, Signal::Syn, Signal::Connects, Signal::Requests, Signal::Probes];

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Segments => "segments",
            Signal::Syn => "syn",
            Signal::Connects => "connects",
            Signal::Requests => "requests",
            Signal::Probes => "probes",
        }
    }

    /// (p0, p1): the bad share of a healthy member and of a sick one.
    fn rates(self) -> (f64, f64) {
        match self {
            // Loss worth ejecting for starts at a few percent.
            Signal::Segments => (0.01, 0.05),
            Signal::Syn | Signal::Connects | Signal::Requests => (0.01, 0.2),
            // A healthy member fails a probe (connect and answer within the probe timeout)
            // almost never; a sick one often.
            Signal::Probes => (0.005, 0.3),
        }
    }

    /// Score added by one bad and by one good outcome.
    pub fn weights(self) -> (f64, f64) {
        let (p0, p1) = self.rates();
        ((p1 / p0).ln(), ((1.0 - p1) / (1.0 - p0)).ln())
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One member's evidence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accumulator {
    /// Score per signal (each a CUSUM, never below 0).
    scores: [f64; 5],
    /// Samples and bad ones per signal since its score last left 0 (the current episode).
    tallies: [(u64, u64); 5],
}

impl Accumulator {
    /// The evidence against the member: the sum of the signals' scores.
    pub fn score(&self) -> f64 {
        self.scores.iter().sum()
    }

    /// Add `trials` outcomes of `signal`, `bad` of them bad (`bad` above `trials` counts as
    /// that many trials, all bad). Returns the change in score.
    pub fn add(&mut self, signal: Signal, trials: u64, bad: u64) -> f64 {
        let trials = trials.max(bad);
        if trials == 0 {
            return 0.0;
        }
        let (up, down) = signal.weights();
        let i = signal.index();
        let before = self.scores[i];
        self.scores[i] = (before + bad as f64 * up + (trials - bad) as f64 * down).max(0.0);
        if self.scores[i] == 0.0 {
            self.tallies[i] = (0, 0);
        } else {
            self.tallies[i].0 += trials;
            self.tallies[i].1 += bad;
        }
        self.scores[i] - before
    }

    /// Let `dt` of time fade the evidence.
    pub fn fade(&mut self, dt: Duration) {
        let f = 0.5f64.powf(dt.as_secs_f64() / HALF_LIFE.as_secs_f64());
        for (score, tally) in self.scores.iter_mut().zip(self.tallies.iter_mut()) {
            *score *= f;
            if *score < 0.01 {
                *score = 0.0;
                *tally = (0, 0);
            }
        }
    }

    pub fn sick(&self) -> bool {
        self.score() >= EJECT_AT
    }

    pub fn clear(&mut self) {
        *self = Accumulator::default();
    }

    /// "3 of 14 segments retransmitted, 2 of 2 probes failed" (signals with a bad outcome).
    pub fn summary(&self) -> String {
        let parts: Vec<String> = SIGNALS
            .iter()
            .filter(|s| self.tallies[s.index()].1 > 0)
            .map(|s| {
                let (n, bad) = self.tallies[s.index()];
                match s {
                    Signal::Segments => format!("{bad} of {n} data segments retransmitted"),
                    Signal::Syn => format!("{bad} SYN retransmit(s) over {n} connect(s)"),
                    Signal::Connects => format!("{bad} of {n} connects failed"),
                    Signal::Requests => format!("{bad} of {n} requests failed"),
                    Signal::Probes => format!("{bad} of {n} probes failed"),
                }
            })
            .collect();
        if parts.is_empty() { "no bad outcome".to_owned() } else { parts.join(", ") }
    }

    /// The operator's view (`lb health`); the caller fills in baselines, stalls and probes.
    pub fn report(&self) -> Evidence {
        Evidence {
            score: (self.score() * 100.0).round() / 100.0,
            threshold: (EJECT_AT * 100.0).round() / 100.0,
            signals: SIGNALS
                .iter()
                .filter(|s| self.tallies[s.index()].0 > 0)
                .map(|s| Tally {
                    signal: s.name().to_owned(),
                    samples: self.tallies[s.index()].0,
                    bad: self.tallies[s.index()].1,
                })
                .collect(),
            ..Evidence::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Segments needed to eject at a steady loss rate, adding `per_step` at a time.
    fn segments_to_eject(loss: f64, per_step: u64, cap: u64) -> Option<u64> {
        let mut a = Accumulator::default();
        let mut sent = 0;
        let mut owed = 0.0;
        while sent < cap {
            owed += loss * per_step as f64;
            let bad = owed.floor() as u64;
            owed -= bad as f64;
            a.add(Signal::Segments, per_step, bad);
            sent += per_step;
            if a.sick() {
                return Some(sent);
            }
        }
        None
    }

    #[test]
    fn few_samples_need_few_bad_ones_and_many_need_many() {
        // 20 % loss is found within about two dozen segments; 5 % within a few hundred.
        assert!(segments_to_eject(0.20, 5, 1_000).unwrap() <= 40);
        assert!(segments_to_eject(0.05, 20, 10_000).unwrap() <= 600);
        // Healthy figures never eject, however much traffic: 0.5 % over a million segments.
        assert_eq!(segments_to_eject(0.005, 1_000, 1_000_000), None);
        // Ten retransmits at once among ten thousand segments are noise, not sickness.
        let mut a = Accumulator::default();
        a.add(Signal::Segments, 10_000, 10);
        assert!(!a.sick());
        assert_eq!(a.score(), 0.0);
        // ...while five among ten are enough on their own.
        let mut a = Accumulator::default();
        a.add(Signal::Segments, 10, 5);
        assert!(a.sick(), "{}", a.score());
    }

    #[test]
    fn connect_and_probe_failures_weigh_more_than_a_segment() {
        let mut a = Accumulator::default();
        a.add(Signal::Probes, 1, 1);
        assert!(!a.sick(), "one failed probe only raises suspicion");
        a.add(Signal::Syn, 1, 1);
        assert!(a.sick(), "independent bad news adds up: {}", a.score());
        a.add(Signal::Probes, 1, 1);
        assert_eq!(a.summary(), "1 SYN retransmit(s) over 1 connect(s), 2 of 2 probes failed");
        let mut b = Accumulator::default();
        b.add(Signal::Probes, 2, 2);
        assert!(b.sick(), "two failed probes in a row are enough");
        // Good news on one signal does not cancel bad news on another.
        let mut a = Accumulator::default();
        a.add(Signal::Segments, 1000, 50);
        let bad = a.score();
        assert!(bad > 0.0);
        a.add(Signal::Requests, 10_000, 0);
        assert_eq!(a.score(), bad);
        // Passing probes clear the probes' own suspicion, and a cleared episode forgets its
        // tallies.
        let mut a = Accumulator::default();
        a.add(Signal::Probes, 1, 1);
        for _ in 0..20 {
            a.add(Signal::Probes, 1, 0);
        }
        assert_eq!(a.score(), 0.0);
        assert_eq!(a.report().signals, vec![]);
    }

    #[test]
    fn evidence_fades() {
        let mut a = Accumulator::default();
        a.add(Signal::Probes, 2, 2);
        let s = a.score();
        a.fade(HALF_LIFE);
        assert!((a.score() - s / 2.0).abs() < 1e-9);
        a.fade(HALF_LIFE * 20);
        assert_eq!(a, Accumulator::default());
    }

    #[test]
    fn more_bad_than_trials_counts_all_bad() {
        let mut a = Accumulator::default();
        a.add(Signal::Syn, 0, 3);
        assert_eq!(a.report().signals[0], Tally { signal: "syn".into(), samples: 3, bad: 3 });
        assert!(a.sick());
    }
}
