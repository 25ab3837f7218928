//! What a step's transition does: flags on the member, a log line carrying the evidence, and
//! the note operators read in `lb health`.
use super::ejection::{self, State, Transition};
use super::watch::Watch;
use crate::balancer::{Balancer, HealthNote, Member, flags, now_ms};

/// Act on a transition: flags on the member, and a log line with the evidence.
pub(super) fn apply(
    b: &Balancer,
    m: &Member,
    w: &mut Watch,
    transition: &Option<Transition>,
    budget: usize,
    symptomatic: usize,
) {
    let Some(t) = transition else { return };
    let (balancer, member) = (b.name(), &m.url);
    let probes = &w.probes;
    match t {
        Transition::Ejected { reason, for_, count } => {
            let until = now_ms() + for_.as_millis() as u64;
            m.eject(until, format!("ejected for {for_:?} (ejection #{count}): {reason}"));
            tracing::warn!(
                %balancer, %member, reason = %reason, score = w.evidence.score(),
                probes_sent = probes.sent, probes_failed = probes.failed,
                last_probe = probes.last.as_deref().unwrap_or("-"),
                srtt_baseline_us = w.baseline_srtt.unwrap_or(0.0).round(),
                srtt_peers_us = w.peers_srtt.unwrap_or(0.0).round(),
                ejection_s = for_.as_secs_f64(), count, "member ejected"
            );
        }
        Transition::Recovering => {
            m.hold_ejection();
            tracing::info!(%balancer, %member, "ejection time over: probing before the member returns");
        }
        Transition::Probation => {
            m.end_ejection();
            w.evidence.clear();
            tracing::info!(%balancer, %member, probes_sent = probes.sent, "probes passed: member back in rotation, on probation");
        }
        Transition::Healthy => tracing::info!(%balancer, %member, "member healthy again"),
        Transition::Suspected(why) => {
            tracing::debug!(%balancer, %member, why = %why, "member suspect: probing")
        }
        Transition::Cleared => {
            // Probes passed and the evidence is all but gone: what raised the suspicion was
            // noise (a CPU hiccup on lb's host, one lost packet), not a symptom this member
            // shares with its peers. Left in place, it would keep the member counted as
            // symptomatic for `LOAD_WINDOW`, and hold back the ejection of a member that is
            // really sick as "load".
            if w.evidence.score() < super::SYMPTOM {
                w.last_symptom = None;
            }
            tracing::debug!(%balancer, %member, "suspicion cleared")
        }
        Transition::Withheld(reason) if m.health_note().is_none_or(|n| n.state != "sick") => {
            tracing::warn!(
                %balancer, %member, reason = %reason,
                "member is sick but the balancer already has {budget} member(s) ejected: panic mode, kept in rotation"
            );
        }
        Transition::Loaded(reason) if m.health_note().is_none_or(|n| n.state != "loaded") => {
            tracing::warn!(
                %balancer, %member, reason = %reason,
                "{symptomatic} of {} members show symptoms at once: load, not a sick member; kept in rotation",
                b.members.len()
            );
        }
        _ => {}
    }
}

/// Act on a health check's transition: flag C set or cleared (with E, and the ejection when
/// there is one), and a log line.
pub(super) fn check(b: &Balancer, m: &Member, w: &mut Watch, transition: &Option<Transition>) {
    let (balancer, member) = (b.name(), &m.url);
    let last = w.check_note.as_ref().map_or("-", |n| n.method.as_str());
    match transition {
        Some(Transition::CheckFailed(detail)) => {
            m.set_flags(flags::HC_FAIL);
            m.note_error(now_ms(), format!("health check failed: {detail}"));
            tracing::warn!(%balancer, %member, check = %last, %detail, "health check failed: flag C set, no traffic");
        }
        Some(Transition::CheckPassed { returned }) => {
            m.clear_flags(flags::HC_FAIL | flags::IN_ERROR);
            if *returned {
                m.end_ejection();
                w.evidence.clear();
            }
            tracing::info!(%balancer, %member, check = %last, ejection_ended = returned, "health checks pass: C and E cleared, back in rotation");
        }
        _ => {}
    }
}

pub(super) fn note(w: &Watch, transition: &Option<Transition>, stalled_ms: u64) -> HealthNote {
    let (state, reason) = match (&w.tracker.state, transition) {
        (_, Some(Transition::Withheld(r))) => {
            ("sick", Some(format!("{r} (not ejected: ejection limit reached, panic mode)")))
        }
        (_, Some(Transition::Loaded(r))) => (
            "loaded",
            Some(format!("{r} (not ejected: most of the balancer shows the same symptoms)")),
        ),
        (State::Healthy, _) => ("healthy", None),
        (State::Suspect { why, .. }, _) => ("suspect", Some(why.clone())),
        (State::Ejected { reason, .. }, _) => ("ejected", Some(reason.to_string())),
        (State::Recovering { reason, passes }, _) => (
            "recovering",
            Some(format!("{reason}; {passes} of {} probes passed", ejection::RETURN_PASSES)),
        ),
        (State::Probation { .. }, _) => ("probation", None),
    };
    HealthNote { state, reason, evidence: Some(w.report(stalled_ms)), check: w.check_note.clone() }
}
