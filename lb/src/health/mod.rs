//! Member health: the control loop that turns kernel telemetry, request outcomes and active
//! probes into ejections.
//!
//! Every [`STEP`] (sampling the kernel every telemetry interval), and whenever a probe answers,
//! each member's [`watch::Watch`] weighs what is new as [`evidence`] (relative to the traffic
//! that produced it) → [`ejection::Tracker::step`] → the transition is applied to the member
//! (flag E with the reason, or back in rotation) → the [`probe`]s the state asks for start: a
//! quick burst when a member turns suspect or waits to return, one now and then while lb opens
//! no connection to it. The data path only reads member flags, so it never waits for this loop;
//! a request waiting on a member that gets ejected is woken
//! ([`crate::balancer::vitals::Vitals::ejected`]).
mod act;
mod checks;
pub mod ejection;
pub mod evidence;
pub mod hcheck;
pub mod probe;
mod run;
pub mod watch;

pub use run::run;

use crate::balancer::{Balancer, Member, MemberId, flags, now_ms};
use crate::config::Scheme;
use crate::telemetry::Snapshot;
use ejection::{Input, Reason, State};
use probe::{ProbeKind, ProbeResult};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use watch::Watch;

/// Added to srtt and to the median before they are compared for the latency weight, so that
/// microsecond jitter between equal members (loopback, one rack) does not tilt the balance.
pub const LATENCY_NOISE_US: f64 = 100.0;
/// A burst starts with three probes at once, then one every [`BURST_GAP`], at most
/// [`BURST_IN_FLIGHT`] at once (so at most about 20 probes a second, for at most
/// [`ejection::SUSPECT_FOR`]).
pub const BURST_GAP: Duration = Duration::from_millis(50);
pub const BURST_IN_FLIGHT: u32 = 4;
/// `OPTIONS *` requests per probe of an `http://` member, in a burst and otherwise, each on
/// its own connection: more packets per probe, so that loss shows sooner.
pub const BURST_TRAIN: u32 = 4;
pub const IDLE_TRAIN: u32 = 3;
/// A probe may take this many times the member's healthy srtt per connection (at least
/// `probe_timeout` in all): two round trips (connect, answer) with room to spare.
pub const PROBE_TIMEOUT_RTTS: f64 = 8.0;
/// The health loop steps at least this often, whatever the telemetry interval.
pub const STEP: Duration = Duration::from_millis(100);
/// Evidence from which a member counts as showing symptoms, when deciding whether most of a
/// balancer shows them at once (a lone SYN retransmit or failed probe is about 3 to 4).
pub const SYMPTOM: f64 = 1.0;
/// How close in time symptoms on several members count as shared.
pub const LOAD_WINDOW: Duration = Duration::from_secs(5);
/// Once most of a balancer has shown symptoms this long (see [`LOAD_WINDOW`]), its suspect
/// members are probed one at a time, once per [`LOADED_GAP`], instead of in bursts: the
/// verdict is load either way, and bursts (20 a second per member, over and over, since the
/// symptom lasts) only add to the members' load. A short shared symptom still gets bursts, so
/// that a lone noisy member is cleared quickly and a really sick one found.
pub const LASTING_LOAD: Duration = Duration::from_secs(5);
pub const LOADED_GAP: Duration = Duration::from_millis(500);
/// After a stall or latency drift raised a suspicion, the same cause raises none for this long.
pub const QUIET: Duration = Duration::from_secs(5);

/// How long a probe of `kind` may take on a path of `rtt_us`: per connection, the round trips
/// with room to spare and the time its request may spend waiting for acknowledgements.
fn probe_time(kind: &ProbeKind, rtt_us: f64) -> Duration {
    let rtts = Duration::from_secs_f64(PROBE_TIMEOUT_RTTS * rtt_us / 1e6);
    match kind {
        ProbeKind::Connect => rtts,
        ProbeKind::Http { requests, ack_wait, .. } => {
            (rtts + probe::ACK_BUDGET + *ack_wait) * *requests
        }
    }
}

/// A probe or health check the control loop should start.
#[derive(Debug, Clone)]
pub struct ProbeOrder {
    pub id: MemberId,
    pub addr: SocketAddr,
    pub what: What,
}

#[derive(Debug, Clone)]
pub enum What {
    /// A confirmation or idle probe.
    Probe { kind: ProbeKind, timeout: Duration },
    /// An active health check (`hcmethod`).
    Check(checks::CheckOrder),
}

/// Health of every member of every balancer, by member identity: a member kept across a
/// reload keeps its evidence and state.
#[derive(Default)]
pub struct Monitor {
    watches: HashMap<MemberId, Watch>,
}

/// Member `id` and its balancer (a probe or check may come back after a reload removed it).
fn member(balancers: &[Arc<Balancer>], id: MemberId) -> Option<(&Arc<Balancer>, &Arc<Member>)> {
    balancers.iter().find_map(|b| b.members.iter().find(|m| m.id == id).map(|m| (b, m)))
}

/// Lower median (robust with two members: one sick member cannot drag it up).
fn lower_median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[(v.len() - 1) / 2])
}

/// What one member brings to a step, before the balancer-wide view (loaded or not) is known.
struct Step {
    sick: Option<Reason>,
    suspect: Option<String>,
    probes: Vec<bool>,
    stalled_ms: u64,
    calm: bool,
}

impl Monitor {
    /// One step over every balancer; returns the probes to start.
    pub fn evaluate(
        &mut self,
        balancers: &[Arc<Balancer>],
        snap: &Snapshot,
        now: Instant,
    ) -> Vec<ProbeOrder> {
        // Forget members no balancer holds any more.
        let live: std::collections::HashSet<MemberId> =
            balancers.iter().flat_map(|b| b.members.iter().map(|m| m.id)).collect();
        self.watches.retain(|id, _| live.contains(id));
        let mut orders = Vec::new();
        for b in balancers {
            self.evaluate_balancer(b, snap, now, &mut orders);
        }
        orders
    }

    fn evaluate_balancer(
        &mut self,
        b: &Balancer,
        snap: &Snapshot,
        now: Instant,
        orders: &mut Vec<ProbeOrder>,
    ) {
        let policy = &b.settings.ejection;
        let kernel: Vec<_> =
            b.members.iter().map(|m| m.endpoint().and_then(|e| snap.endpoints.get(&e))).collect();
        let median =
            lower_median(kernel.iter().filter_map(|k| k.and_then(|k| k.srtt_us)).collect());
        let mut steps = Vec::with_capacity(b.members.len());
        for (m, k) in b.members.iter().zip(&kernel) {
            let srtt = k.and_then(|k| k.srtt_us);
            let weight = match (srtt, median) {
                (Some(s), Some(med)) => (s + LATENCY_NOISE_US) / (med + LATENCY_NOISE_US),
                _ => 1.0,
            };
            m.set_latency_weight(weight);
            let w = self.watches.entry(m.id).or_insert_with(|| Watch::new(now));
            w.peers_srtt = median;
            let seen = w.observe(now, *k, m.vitals.outcomes());
            let stalled_ms = m.vitals.stalled_ms(now_ms());
            let mut suspect = seen.news;
            let srtt = srtt.filter(|_| seen.fresh_rtt);
            let drift = match (srtt, w.baseline_srtt) {
                (Some(s), Some(base)) => policy.latency_outlier(s, base),
                _ => false,
            };
            if suspect.is_none() && now >= w.quiet_until {
                if stalled_ms >= policy.stall_after.as_millis() as u64 {
                    suspect = Some(format!("requests waiting {stalled_ms} ms with no answer"));
                    w.quiet_until = now + QUIET;
                } else if drift {
                    suspect = Some(format!(
                        "srtt {:.1} ms against its own {:.3} ms",
                        srtt.unwrap_or(0.0) / 1000.0,
                        w.baseline_srtt.unwrap_or(0.0) / 1000.0
                    ));
                    w.quiet_until = now + QUIET;
                }
            }
            if matches!(w.tracker.state, State::Healthy) && w.evidence.score() == 0.0 && !drift {
                w.learn_baseline(srtt);
            }
            let sick = if !policy.enabled {
                None
            } else if w.evidence.sick() {
                Some(Reason::Evidence { summary: w.evidence.summary(), score: w.evidence.score() })
            } else if let (Some(s), Some(med)) = (srtt, median)
                && policy.latency_outlier(s, med)
            {
                Some(Reason::Latency { srtt_us: s, median_us: med })
            } else if policy.consecutive_errors > 0
                && m.consecutive_errors() >= policy.consecutive_errors
            {
                Some(Reason::RequestErrors(m.consecutive_errors()))
            } else {
                None
            };
            if !policy.enabled {
                suspect = None;
            }
            let calm = w.evidence.score() < SYMPTOM;
            if sick.is_some() || w.evidence.score() >= SYMPTOM {
                w.last_symptom = Some(now);
            }
            steps.push(Step { sick, suspect, probes: seen.probes, stalled_ms, calm });
        }
        // Symptoms most of the balancer shares within a few seconds, while its members still
        // answer, are load, not a sick member. (Under overload each member's evidence comes and
        // goes as its queue fills and drains, so "at once" means within LOAD_WINDOW. Members
        // that answer nothing at all are dead, loaded or not.)
        let symptomatic = b
            .members
            .iter()
            .filter(|m| {
                let w = &self.watches[&m.id];
                !w.tracker.is_ejected()
                    && w.answering(now, LOAD_WINDOW)
                    && w.last_symptom.is_some_and(|t| now.duration_since(t) <= LOAD_WINDOW)
            })
            .count();
        let loaded = symptomatic >= 2 && symptomatic * 2 > b.members.len();
        let budget = policy.max_ejected(b.members.len());
        let mut ejected =
            b.members.iter().filter(|m| self.watches[&m.id].tracker.is_ejected()).count();
        for (m, step) in b.members.iter().zip(steps) {
            let Some(w) = self.watches.get_mut(&m.id) else { continue };
            w.loaded_since = if loaded { Some(w.loaded_since.unwrap_or(now)) } else { None };
            let input = Input {
                sick: step.sick,
                suspect: step.suspect,
                probes: step.probes,
                calm: step.calm,
                loaded,
                may_eject: ejected < budget,
            };
            let was_out = w.tracker.is_ejected();
            let transition = w.tracker.step(policy, now, input);
            if !was_out && w.tracker.is_ejected() {
                ejected += 1;
            }
            act::apply(b, m, w, &transition, budget, symptomatic);
            m.set_health_note(act::note(w, &transition, step.stalled_ms));
            let Some(addr) = m.endpoint() else { continue };
            if let Some(o) = checks::due(m, w, addr, now) {
                orders.push(o);
            }
            if !policy.enabled || m.flags().contains(flags::DISABLED | flags::STOPPED) {
                continue;
            }
            let lasting = w.loaded_since.is_some_and(|t| now.duration_since(t) >= LASTING_LOAD);
            let (gap, at_once) =
                if lasting { (LOADED_GAP, 1) } else { (BURST_GAP, BURST_IN_FLIGHT) };
            let n = w.wants_probes(now, gap, policy.probe_interval, at_once);
            if n == 0 {
                continue;
            }
            // A burst sends trains: more packets per probe, so loss shows sooner.
            let requests = if w.tracker.probing() { BURST_TRAIN } else { IDLE_TRAIN };
            let kind = match m.url.scheme {
                Scheme::Http => ProbeKind::Http {
                    authority: m.url.authority(),
                    requests,
                    // A member known to acknowledge at once gets the long wait: only a lost
                    // packet, not a busy host, keeps it from acknowledging in time.
                    ack_wait: if w.late_acks_baseline.is_some_and(|u| u < 0.5) {
                        probe::ACK_WAIT_PROMPT
                    } else {
                        probe::ACK_WAIT
                    },
                },
                Scheme::Https | Scheme::Tcp => ProbeKind::Connect,
            };
            let rtt = w.baseline_srtt.or(median).unwrap_or(0.0);
            let timeout = policy.probe_timeout.max(probe_time(&kind, rtt));
            w.in_flight += n;
            w.last_probe = Some(now);
            for _ in 0..n {
                let what = What::Probe { kind: kind.clone(), timeout };
                orders.push(ProbeOrder { id: m.id, addr, what });
            }
        }
    }

    /// A probe (started at `started`, in `now_ms` time) came back. Beyond its own verdict
    /// (no connect, no answer, lost packets), a probe fails when more of its chunks were
    /// acknowledged late than the member's usual (none, for most members), and as slow when
    /// its connect, or each answer, took `latency_factor` times the member's usual (and at least
    /// `latency_floor`).
    /// A probe that connected but was answered late, or not in time, while the member answered
    /// requests meanwhile passes: the application is busy, the member is not stopped.
    pub fn probed(
        &mut self,
        balancers: &[Arc<Balancer>],
        id: MemberId,
        started: u64,
        mut r: ProbeResult,
    ) {
        let Some((b, m)) = member(balancers, id) else { return };
        let policy = &b.settings.ejection;
        let busy = m.vitals.last_answer_ms() >= started;
        if r.timed_out && r.connect.is_some() && busy {
            r.ok = true;
            r.detail =
                format!("{} (but it answered requests meanwhile: busy, not stopped)", r.detail);
        }
        // lb's own thread spent most of the probe waiting for a CPU: its timings are the host's,
        // not the member's, and none is judged (late chunks, a slow connect or answer, a timeout
        // after connecting). What the kernel saw (a refused connect, a retransmission) counts
        // as ever. A probe that was mostly lb's waiting, not one lb waited a little in: a mildly
        // congested path slows a probe well beyond the few ms a loaded host takes from it.
        let host_busy = r.starved >= probe::HOST_BUSY && r.starved * 2 >= r.took;
        if host_busy {
            if r.timed_out && r.connect.is_some() {
                r.ok = true;
            }
            r.detail = format!(
                "{} (lb waited {:.1} ms of it for a CPU: its timings were not judged)",
                r.detail,
                r.starved.as_secs_f64() * 1e3
            );
        }
        let Some(w) = self.watches.get_mut(&id) else { return };
        let outlier =
            |took: Duration, base: f64| policy.latency_outlier(took.as_micros() as f64, base);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // The connect against the member's own healthy probes, else its balancer's srtt.
        let connect_ref = w.probe_baseline_us.or(w.peers_srtt);
        // More chunks acknowledged late than the member's usual (none, for most): a lost
        // packet, lb's chunk or the member's acknowledgement.
        let lost_ack = match (w.late_acks_baseline, r.late_acks) {
            (Some(usual), Some(late)) if f64::from(late) > 2.0 * usual + 0.5 => Some(format!(
                "lost packets: {late} chunk(s) acknowledged late (usually {usual:.1})"
            )),
            _ => None,
        };
        let failed_as = if host_busy {
            None
        } else {
            lost_ack.or(match (r.connect, connect_ref, r.per_answer(), w.answer_baseline_us) {
                (Some(c), Some(base), ..) if outlier(c, base) => Some(format!(
                    "slow: connected in {:.1} ms against {:.3} ms",
                    ms(c),
                    base / 1000.0
                )),
                (_, _, Some(per), Some(base)) if !busy && outlier(per, base) => Some(format!(
                    "slow: answered in {:.1} ms against its usual {:.3} ms",
                    ms(per),
                    base / 1000.0
                )),
                _ => None,
            })
        };
        w.probed(r, failed_as);
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
        assert_eq!(monitor.watches.len(), 3, "the removed member's watch is gone");
        // The ejection ends on its own schedule (base_time 2 s), not reset by the rebuild; then
        // the member is probed, and returns once three probes pass.
        tokio::time::advance(Duration::from_secs(1)).await;
        let orders = monitor.evaluate(std::slice::from_ref(&new), &snap, Instant::now());
        assert_eq!(new.members[0].health_note().unwrap().state, "recovering");
        assert!(!new.members[0].usable(), "still out until probes pass");
        assert!(orders.iter().any(|o| o.id == new.members[0].id), "{orders:?}");
        let pass = || ProbeResult {
            ok: true,
            connect: Some(Duration::from_micros(50)),
            took: Duration::from_micros(100),
            requests: 1,
            answers: Duration::from_micros(50),
            timed_out: false,
            late_acks: None,
            starved: Duration::ZERO,
            detail: "ok in 0.1 ms".into(),
        };
        for _ in 0..3 {
            monitor.probed(std::slice::from_ref(&new), new.members[0].id, now_ms(), pass());
        }
        monitor.evaluate(std::slice::from_ref(&new), &snap, Instant::now());
        assert_eq!(new.members[0].health_note().unwrap().state, "probation");
        assert!(new.members[0].usable());
    }

    fn probe(ok: bool) -> ProbeResult {
        ProbeResult {
            ok,
            connect: ok.then_some(Duration::from_micros(50)),
            took: Duration::from_micros(100),
            requests: 1,
            answers: Duration::from_micros(50),
            timed_out: !ok,
            late_acks: None,
            starved: Duration::ZERO,
            detail: if ok { "ok in 0.1 ms" } else { "timed out" }.into(),
        }
    }

    /// On loopback the default `probe_timeout` (100 ms) bounds a probe; across a longer path
    /// each of its connections gets its round trips and its acknowledgement budget.
    #[test]
    fn a_probe_has_time_for_each_of_its_connections() {
        let http =
            ProbeKind::Http { authority: "m".into(), requests: 3, ack_wait: probe::ACK_WAIT };
        assert!(probe_time(&http, 50.0) < Duration::from_millis(100));
        let secs = |kind: &ProbeKind| probe_time(kind, 20_000.0).as_secs_f64();
        assert!((secs(&http) - 3.0 * (0.16 + 0.01 + 0.005)).abs() < 1e-6, "{}", secs(&http));
        assert!((secs(&ProbeKind::Connect) - 0.16).abs() < 1e-6);
    }

    /// Three members that have each answered a probe, stepped once.
    fn answering_trio() -> (Arc<Balancer>, Monitor, Snapshot) {
        let heartbeats = Arc::new(crate::balancer::heartbeat::Heartbeats::default());
        let b = Arc::new(Balancer::new(&config(&[1, 2, 3]), false, heartbeats));
        let mut monitor = Monitor::default();
        let snap = Snapshot::default();
        monitor.evaluate(std::slice::from_ref(&b), &snap, Instant::now());
        for m in &b.members {
            monitor.probed(std::slice::from_ref(&b), m.id, now_ms(), probe(true));
        }
        monitor.evaluate(std::slice::from_ref(&b), &snap, Instant::now());
        (b, monitor, snap)
    }

    fn state(b: &Balancer, i: usize) -> &'static str {
        b.members[i].health_note().map_or("-", |n| n.state)
    }

    #[tokio::test(start_paused = true)]
    async fn symptoms_most_members_share_are_load_not_sickness() {
        let (b, mut monitor, snap) = answering_trio();
        let bs = std::slice::from_ref(&b);
        for i in [1, 2] {
            for _ in 0..2 {
                monitor.probed(bs, b.members[i].id, now_ms(), probe(false));
            }
        }
        tokio::time::advance(STEP).await;
        monitor.evaluate(bs, &snap, Instant::now());
        assert_eq!((state(&b, 1), state(&b, 2)), ("loaded", "loaded"));
        assert!(b.members.iter().all(|m| m.usable()), "nobody ejected");
    }

    /// Two members of three fail every probe for 12 s while still answering: load, so nobody
    /// is ejected. Their bursts run for the first [`LASTING_LOAD`]; from then on each is probed
    /// once per [`LOADED_GAP`] (a burst alone sends 20 a second).
    #[tokio::test(start_paused = true)]
    async fn a_lasting_shared_symptom_is_probed_slowly() {
        // The balancer counts as loaded from a step or two in, once the first probes failed.
        let late_from = LASTING_LOAD + 3 * STEP;
        let (b, mut monitor, snap) = answering_trio();
        let bs = std::slice::from_ref(&b);
        let start = Instant::now();
        let (mut early, mut late) = (0u32, 0u32);
        while start.elapsed() < Duration::from_secs(12) {
            for o in monitor.evaluate(bs, &snap, Instant::now()) {
                let i = b.members.iter().position(|m| m.id == o.id).unwrap();
                if i == 1 {
                    match start.elapsed() {
                        t if t < LASTING_LOAD => early += 1,
                        t if t >= late_from => late += 1,
                        _ => {}
                    }
                }
                // Each member still answers requests: what fails is the probes.
                b.members[i].vitals.count(true);
                monitor.probed(bs, o.id, now_ms(), probe(i == 0));
            }
            assert!(b.members.iter().all(|m| m.usable()), "ejected under a shared symptom");
            tokio::time::advance(STEP).await;
        }
        assert_eq!((state(&b, 1), state(&b, 2)), ("loaded", "loaded"));
        let late_secs = 12.0 - late_from.as_secs_f64();
        let allowed = (late_secs / LOADED_GAP.as_secs_f64()).ceil() as u32 + 1;
        assert!(late <= allowed, "{late} probes in the last {late_secs} s, allowed {allowed}");
        assert!(early > 2 * allowed, "no bursts at first: {early} probes in {LASTING_LOAD:?}");
    }

    /// A healthy member's lone failed probe (lb's host was busy for a moment) makes it suspect;
    /// passing probes clear it. From then on it no longer counts as sharing a symptom, so a
    /// really sick member is ejected at once instead of being held as "load" for the whole
    /// `LOAD_WINDOW`.
    #[tokio::test(start_paused = true)]
    async fn a_suspicion_probes_cleared_is_not_a_shared_symptom() {
        let (b, mut monitor, snap) = answering_trio();
        let bs = std::slice::from_ref(&b);
        let (noisy, sick) = (b.members[0].id, b.members[2].id);
        monitor.probed(bs, noisy, now_ms(), probe(false));
        for _ in 0..2 {
            monitor.probed(bs, sick, now_ms(), probe(false));
        }
        tokio::time::advance(STEP).await;
        monitor.evaluate(bs, &snap, Instant::now());
        assert_eq!(state(&b, 0), "suspect");
        assert_eq!(state(&b, 2), "loaded", "two of three show symptoms");
        let start = Instant::now();
        while state(&b, 2) != "ejected" {
            assert!(start.elapsed() < LOAD_WINDOW / 5, "still {}", state(&b, 2));
            monitor.probed(bs, noisy, now_ms(), probe(true));
            monitor.probed(bs, sick, now_ms(), probe(false));
            tokio::time::advance(BURST_GAP).await;
            monitor.evaluate(bs, &snap, Instant::now());
        }
        assert_eq!(state(&b, 0), "healthy", "its suspicion was cleared");
        assert!(!b.members[2].usable());
    }

    /// Chunks the member did not acknowledge in time fail a probe when they are more than its
    /// usual: any, for a member that acknowledges at once; for one that delays an
    /// acknowledgement per connection as a rule, more than twice that.
    #[tokio::test(start_paused = true)]
    async fn acknowledgements_late_beyond_the_usual_are_lost_packets() {
        let (b, mut monitor, _snap) = answering_trio();
        let bs = std::slice::from_ref(&b);
        let late = |n: u32| ProbeResult { late_acks: Some(n), ..probe(true) };
        let (prompt, delaying) = (b.members[0].id, b.members[1].id);
        for _ in 0..5 {
            monitor.probed(bs, prompt, now_ms(), late(0));
            monitor.probed(bs, delaying, now_ms(), late(3));
        }
        let failed = |m: &Monitor, id| m.watches[&id].probes.failed;
        assert_eq!((failed(&monitor, prompt), failed(&monitor, delaying)), (0, 0));
        monitor.probed(bs, prompt, now_ms(), late(1));
        monitor.probed(bs, delaying, now_ms(), late(4));
        assert_eq!((failed(&monitor, prompt), failed(&monitor, delaying)), (1, 0));
        let last = monitor.watches[&prompt].probes.last.clone().unwrap_or_default();
        assert!(last.contains("1 chunk(s) acknowledged late (usually 0.0)"), "{last}");
        monitor.probed(bs, delaying, now_ms(), late(7));
        assert_eq!(failed(&monitor, delaying), 1);
    }

    /// A probe that lb's own thread spent mostly waiting for a CPU judges no timing: late
    /// chunks, a slow connect, a timeout after connecting. A refused connect still fails it, and
    /// so does a slow probe of which lb waited only a little.
    #[tokio::test(start_paused = true)]
    async fn a_probe_that_waited_for_a_cpu_judges_no_timing() {
        let (b, mut monitor, _snap) = answering_trio();
        let bs = std::slice::from_ref(&b);
        let id = b.members[0].id;
        for _ in 0..5 {
            monitor.probed(bs, id, now_ms(), ProbeResult { late_acks: Some(0), ..probe(true) });
        }
        let failed = |m: &Monitor| m.watches[&id].probes.failed;
        // A 60 ms probe of which lb waited 40 ms for a CPU: its 40 ms connect and 3 late chunks
        // are the host's, and so is a timeout after connecting.
        let starved = Duration::from_millis(40);
        let took = Duration::from_millis(60);
        let slow = ProbeResult {
            connect: Some(Duration::from_millis(40)),
            late_acks: Some(3),
            took,
            starved,
            ..probe(true)
        };
        let stalled =
            ProbeResult { connect: Some(Duration::from_micros(50)), took, starved, ..probe(false) };
        monitor.probed(bs, id, now_ms(), slow.clone());
        monitor.probed(bs, id, now_ms(), stalled);
        assert_eq!(failed(&monitor), 0, "{:?}", monitor.watches[&id].probes.last);
        let last = monitor.watches[&id].probes.last.clone().unwrap_or_default();
        assert!(last.contains("for a CPU"), "{last}");
        let refused = ProbeResult { connect: None, timed_out: false, starved, ..probe(false) };
        monitor.probed(bs, id, now_ms(), refused);
        assert_eq!(failed(&monitor), 1);
        // lb waited 10 ms of the 60: the probe is judged, and fails.
        let little = ProbeResult { starved: Duration::from_millis(10), ..slow.clone() };
        monitor.probed(bs, id, now_ms(), little);
        assert_eq!(failed(&monitor), 2);
        // The same probe with lb on a CPU throughout fails.
        monitor.probed(bs, id, now_ms(), ProbeResult { starved: Duration::ZERO, ..slow });
        assert_eq!(failed(&monitor), 3);
    }
}
