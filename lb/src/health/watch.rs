//! One member as the health monitor follows it from step to step: the counters it saw last
//! time (so each step weighs only what is new), its evidence, its probes and its state.
use super::ejection::Tracker;
use super::evidence::{Accumulator, Signal};
use super::probe::ProbeResult;
use crate::balancer::note::{CheckNote, Evidence, ProbeStats};
use crate::config::tls::UpstreamTls;
use crate::telemetry::EndpointHealth;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Cumulative counts, as of the last step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    segments: u64,
    retransmits: u64,
    syn_retransmits: u64,
    connects: u64,
    connect_failed: u64,
    answered: u64,
    failed: u64,
    rtt_samples: u64,
    resets: u64,
}

impl Counters {
    fn read(k: Option<&EndpointHealth>, (answered, failed): (u64, u64)) -> Counters {
        Counters {
            segments: k.map_or(0, |k| k.data_segs_out),
            retransmits: k.map_or(0, |k| k.retransmits),
            syn_retransmits: k.map_or(0, |k| k.syn_retransmits),
            connects: k.map_or(0, |k| k.connects),
            connect_failed: k.map_or(0, |k| k.connect_failed),
            answered,
            failed,
            rtt_samples: k.map_or(0, |k| k.rtt_samples),
            resets: k.map_or(0, |k| k.resets),
        }
    }

    fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            segments: self.segments.saturating_sub(earlier.segments),
            retransmits: self.retransmits.saturating_sub(earlier.retransmits),
            syn_retransmits: self.syn_retransmits.saturating_sub(earlier.syn_retransmits),
            connects: self.connects.saturating_sub(earlier.connects),
            connect_failed: self.connect_failed.saturating_sub(earlier.connect_failed),
            answered: self.answered.saturating_sub(earlier.answered),
            failed: self.failed.saturating_sub(earlier.failed),
            rtt_samples: self.rtt_samples.saturating_sub(earlier.rtt_samples),
            resets: self.resets.saturating_sub(earlier.resets),
        }
    }
}

/// Move a baseline `weight` of the way to `x` (or start it at `x`).
fn ewma(baseline: &mut Option<f64>, x: f64, weight: f64) {
    *baseline = Some(baseline.map_or(x, |b| b + weight * (x - b)));
}

/// What one step brought.
#[derive(Debug, Default)]
pub struct Observed {
    /// The new bad outcomes, in words, when there were any.
    pub news: Option<String>,
    /// Probe results since the last step, oldest first.
    pub probes: Vec<bool>,
    /// The kernel took new RTT samples: its srtt is current.
    pub fresh_rtt: bool,
}

pub struct Watch {
    pub tracker: Tracker,
    pub evidence: Accumulator,
    prev: Option<Counters>,
    last_step: Instant,
    /// Last time lb opened a connection to the member: without one for a while, only a probe
    /// says whether it still accepts connections (pooled requests can hide a SYN black hole).
    pub last_connect: Instant,
    /// Last time its evidence showed symptoms (see `super::SYMPTOM`).
    pub last_symptom: Option<Instant>,
    /// Last time the member answered anything (a request or a probe).
    pub last_answer: Option<Instant>,
    pub last_probe: Option<Instant>,
    /// Since when most of its balancer has shown symptoms, without a break (None: not now).
    pub loaded_since: Option<Instant>,
    pub in_flight: u32,
    pub probes: ProbeStats,
    pending: Vec<bool>,
    /// The member's own srtt while it was healthy (EWMA), and its balancer's median now.
    pub baseline_srtt: Option<f64>,
    pub peers_srtt: Option<f64>,
    /// Connect time of the member's passing probes while it was healthy (EWMA, µs): the
    /// reference for a slow probe when the kernel has no srtt for it (no traffic).
    pub probe_baseline_us: Option<f64>,
    /// Time per `OPTIONS *` answer of its passing probes while healthy (EWMA, µs).
    pub answer_baseline_us: Option<f64>,
    /// Chunks acknowledged late per passing probe while healthy (EWMA).
    pub late_acks_baseline: Option<f64>,
    ack_samples: u32,
    /// Stalls and latency drift raise no new suspicion before this (a slow but healthy member
    /// is not probed over and over).
    pub quiet_until: Instant,
    /// Active health checks: when the next one is due, whether one is running, the last one.
    pub check_due: Option<Instant>,
    pub check_running: bool,
    pub check_note: Option<CheckNote>,
    /// The TLS connector for checks of an `https://` member, and the settings it was made from.
    pub check_tls: Option<(Arc<UpstreamTls>, crate::tls::Upstream)>,
}

impl Watch {
    pub fn new(now: Instant) -> Watch {
        Watch {
            tracker: Tracker::new(now),
            evidence: Accumulator::default(),
            prev: None,
            last_step: now,
            last_connect: now,
            last_answer: None,
            last_symptom: None,
            last_probe: None,
            loaded_since: None,
            in_flight: 0,
            probes: ProbeStats::default(),
            pending: Vec::new(),
            baseline_srtt: None,
            peers_srtt: None,
            probe_baseline_us: None,
            answer_baseline_us: None,
            late_acks_baseline: None,
            ack_samples: 0,
            quiet_until: now,
            check_due: None,
            check_running: false,
            check_note: None,
            check_tls: None,
        }
    }

    /// Weigh what happened since the last step: kernel counters, request outcomes, probes.
    pub fn observe(
        &mut self,
        now: Instant,
        kernel: Option<&EndpointHealth>,
        outcomes: (u64, u64),
    ) -> Observed {
        self.evidence.fade(now.duration_since(self.last_step));
        self.last_step = now;
        let current = Counters::read(kernel, outcomes);
        // The first step only learns where the counters stand.
        let d = current.since(&self.prev.unwrap_or(current));
        self.prev = Some(current);
        let data_retransmits = d.retransmits.saturating_sub(d.syn_retransmits);
        let e = &mut self.evidence;
        e.add(Signal::Segments, d.segments, data_retransmits);
        e.add(Signal::Syn, d.connects, d.syn_retransmits);
        e.add(Signal::Connects, d.connects, d.connect_failed);
        e.add(Signal::Requests, d.answered + d.failed, d.failed);
        let probes = std::mem::take(&mut self.pending);
        let failed_probes = probes.iter().filter(|ok| !**ok).count() as u64;
        e.add(Signal::Probes, probes.len() as u64, failed_probes);
        if d.answered > 0 || probes.iter().any(|ok| *ok) {
            self.last_answer = Some(now);
        }
        if d.connects > d.connect_failed {
            self.last_connect = now;
        }
        let mut news = Vec::new();
        for (n, what) in [
            (data_retransmits, "retransmit(s)"),
            (d.syn_retransmits, "SYN retransmit(s)"),
            (d.connect_failed, "failed connect(s)"),
            (d.failed, "failed request(s)"),
            (failed_probes, "failed probe(s)"),
            // Not weighed (a member may close idle connections with a reset), but worth a look.
            (d.resets, "reset(s)"),
        ] {
            if n > 0 {
                news.push(format!("{n} {what}"));
            }
        }
        let news = (!news.is_empty()).then(|| news.join(", "));
        Observed { news, probes, fresh_rtt: d.rtt_samples > 0 }
    }

    /// Answered something (a request or a probe) within `within`: slow or lossy, not dead.
    pub fn answering(&self, now: Instant, within: Duration) -> bool {
        self.last_answer.is_some_and(|t| now.duration_since(t) <= within)
    }

    /// Learn the member's own healthy srtt.
    pub fn learn_baseline(&mut self, srtt: Option<f64>) {
        if let Some(s) = srtt {
            ewma(&mut self.baseline_srtt, s, 0.05);
        }
    }

    /// A probe came back; `failed_as` names why a completed probe still counts as failed (late
    /// acknowledgements, slowness).
    pub fn probed(&mut self, r: ProbeResult, failed_as: Option<String>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.probes.sent += 1;
        let ok = r.ok && failed_as.is_none();
        if !ok {
            self.probes.failed += 1;
        }
        if ok
            && matches!(self.tracker.state, super::ejection::State::Healthy)
            && let Some(c) = r.connect
        {
            ewma(&mut self.probe_baseline_us, c.as_secs_f64() * 1e6, 0.1);
            if let Some(per) = r.per_answer() {
                ewma(&mut self.answer_baseline_us, per.as_secs_f64() * 1e6, 0.1);
            }
            if let Some(late) = r.late_acks {
                // A plain mean over the first ten, so that one early late chunk does not linger
                // (a member lossy from the start would otherwise look like a late acknowledger).
                self.ack_samples += 1;
                let weight = (1.0 / f64::from(self.ack_samples)).max(0.1);
                ewma(&mut self.late_acks_baseline, f64::from(late), weight);
            }
        }
        self.probes.last = Some(failed_as.unwrap_or(r.detail));
        self.pending.push(ok);
    }

    /// How many probes to start now: while suspect or recovering a burst (three at once, then
    /// one every `gap`, at most `max_in_flight` at once, which also caps the three); else one
    /// per `idle_every` while lb opens no connection to the member.
    pub fn wants_probes(
        &self,
        now: Instant,
        gap: Duration,
        idle_every: Duration,
        max_in_flight: u32,
    ) -> u32 {
        let since_probe = self.last_probe.map(|t| now.duration_since(t));
        let due = |every: Duration| since_probe.is_none_or(|d| d >= every);
        if self.tracker.probing() {
            return match self.in_flight {
                0 if due(gap) => 3.min(max_in_flight),
                n if n < max_in_flight && due(gap) => 1,
                _ => 0,
            };
        }
        if self.tracker.is_ejected() || idle_every.is_zero() || self.in_flight > 0 {
            return 0;
        }
        u32::from(now.duration_since(self.last_connect) >= idle_every && due(idle_every))
    }

    pub fn report(&self, stalled_ms: u64) -> Evidence {
        Evidence {
            baseline_srtt_us: self.baseline_srtt.map(|v| v.round()),
            peers_srtt_us: self.peers_srtt.map(|v| v.round()),
            stalled_ms,
            probes: ProbeStats {
                late_chunks_usual: self.late_acks_baseline.map(|u| (u * 10.0).round() / 10.0),
                ..self.probes.clone()
            },
            ..self.evidence.report()
        }
    }
}
