//! The status report: every balancer and member as Apache's balancer-manager shows them.
//!
//! One serde type serves both ends: the admin API serializes it, `lb status` deserializes it and
//! renders the table (`render`).
pub mod counters;
pub mod metrics;
mod render;
pub mod server_status;

use crate::balancer::note::CheckNote;
use crate::balancer::{Balancer, now_ms};
pub use render::{render_health, render_table};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub balancers: Vec<BalancerStatus>,
    /// Access log lines written, and dropped because the log could not keep up.
    #[serde(default)]
    pub access_log: AccessLogStatus,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AccessLogStatus {
    pub written: u64,
    pub dropped: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BalancerStatus {
    pub name: String,
    /// What a balancer-manager edit of this balancer must carry (Apache's `nonce`).
    #[serde(default)]
    pub nonce: String,
    /// True for the one-member balancer behind a plain `http://` ProxyPass.
    pub implicit: bool,
    pub lbmethod: String,
    pub maxattempts: u32,
    #[serde(default)]
    pub nofailover: bool,
    pub timeout_ms: u64,
    pub forcerecovery: bool,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member's identity: the same across reloads while its balancer and URL are.
    #[serde(default)]
    pub id: u64,
    pub url: String,
    pub route: Option<String>,
    pub redirect: Option<String>,
    pub lbset: u32,
    pub loadfactor: f64,
    /// Flag letters (`IN DSEHRC`) or "Ok".
    pub status: String,
    pub usable: bool,
    pub elected: u64,
    pub busy: u64,
    pub lbstatus: i64,
    /// Bytes sent to the member (Apache "To").
    pub bytes_sent: u64,
    /// Bytes read from the member (Apache "From").
    pub bytes_received: u64,
    /// Times E was cleared by the retry timer or forced recovery.
    pub retries: u64,
    pub last_error: Option<ErrorStatus>,
    /// The last active health check (`hcmethod`), when the member has them.
    #[serde(default)]
    pub check: Option<CheckNote>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorStatus {
    pub message: String,
    pub age_ms: u64,
}

pub fn report(balancers: &[Arc<Balancer>]) -> StatusReport {
    let now = now_ms();
    let (written, dropped) = crate::accesslog::counts();
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        access_log: AccessLogStatus { written, dropped },
        balancers: balancers
            .iter()
            .map(|b| BalancerStatus {
                name: b.name().to_owned(),
                nonce: crate::edit::nonce(b.name()),
                implicit: b.implicit,
                lbmethod: b.method().as_str().to_owned(),
                maxattempts: b.settings.maxattempts,
                nofailover: b.settings.nofailover,
                timeout_ms: b.settings.timeout.as_millis() as u64,
                forcerecovery: b.settings.forcerecovery,
                members: b
                    .members
                    .iter()
                    .map(|m| MemberStatus {
                        id: m.id.0,
                        url: m.url.to_string(),
                        route: m.config().route.clone(),
                        redirect: m.config().redirect.clone(),
                        lbset: m.lbset(),
                        loadfactor: m.lbfactor() as f64 / 100.0,
                        status: m.flags().letters(),
                        usable: m.usable(),
                        elected: m.elected(),
                        busy: m.busy(),
                        lbstatus: m.lbstatus(),
                        bytes_sent: m.transferred(),
                        bytes_received: m.read(),
                        retries: m.retries(),
                        last_error: m.last_error().map(|e| ErrorStatus {
                            message: e.message.clone(),
                            age_ms: now.saturating_sub(e.at_ms),
                        }),
                        check: check_note(m, now),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The member's last health check, with its age now.
fn check_note(m: &crate::balancer::Member, now: u64) -> Option<CheckNote> {
    let mut c = m.health_note()?.check.clone()?;
    c.age_ms = now.saturating_sub(c.at_ms);
    Some(c)
}

/// `GET /health` and `lb health`: per member, what the kernel sees and what lb makes of it.
#[derive(Debug, Serialize, Deserialize)]
pub struct HealthReport {
    /// `ebpf` or `off`.
    pub source: String,
    /// Why that source is active.
    pub why: String,
    pub interval_ms: u64,
    pub balancers: Vec<BalancerHealth>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BalancerHealth {
    pub name: String,
    pub lbmethod: String,
    pub members: Vec<MemberHealth>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MemberHealth {
    pub url: String,
    /// The resolved address lb connects to (None before the first connection).
    pub endpoint: Option<String>,
    /// `healthy`; `ejected` or `probation` (kernel-driven ejection); `sick` (would be ejected,
    /// but the balancer is at its ejection limit: panic mode); `unusable` (D, S, E or C for
    /// another reason).
    pub state: String,
    /// Why the member is not healthy (its last error), when it is not.
    pub reason: Option<String>,
    /// Flag letters, as in `lb status`.
    pub status: String,
    /// Requests in flight to the member.
    pub in_flight: u64,
    /// The bybusyness score: (in-flight + 1) × max(1, srtt / balancer median srtt).
    pub busyness: f64,
    /// Ready capacity from heartbeats, when any arrive.
    pub heartbeat_ready: Option<u64>,
    /// Where the kernel figures come from: `ebpf`, or `off` when none are measured.
    pub source: String,
    /// Kernel figures for the member's endpoint (None when the source is off or the member has
    /// not been connected to yet).
    pub kernel: Option<crate::telemetry::EndpointHealth>,
    /// The evidence behind the state: score against the ejection level, per-signal samples and
    /// bad ones, srtt baseline and peers, stall, probes.
    pub evidence: Option<crate::balancer::note::Evidence>,
    /// The last active health check (`hcmethod`), when the member has them.
    #[serde(default)]
    pub check: Option<CheckNote>,
}

pub fn health(
    balancers: &[Arc<Balancer>],
    telemetry: &crate::telemetry::Telemetry,
) -> HealthReport {
    let snap = telemetry.snapshot();
    HealthReport {
        source: telemetry.source.as_str().to_owned(),
        why: telemetry.why.clone(),
        interval_ms: telemetry.interval.as_millis() as u64,
        balancers: balancers
            .iter()
            .map(|b| BalancerHealth {
                name: b.name().to_owned(),
                lbmethod: b.method().as_str().to_owned(),
                members: b
                    .members
                    .iter()
                    .map(|m| {
                        let usable = m.usable();
                        let kernel = m.endpoint().and_then(|e| snap.endpoints.get(&e).cloned());
                        let note = m.health_note();
                        let (state, reason) = match note.as_deref() {
                            Some(n) if n.state != "healthy" => {
                                (n.state.to_owned(), n.reason.clone())
                            }
                            _ if usable => ("healthy".to_owned(), None),
                            _ => (
                                "unusable".to_owned(),
                                Some(m.last_error().map_or_else(
                                    || format!("status {}", m.flags().letters()),
                                    |e| e.message.clone(),
                                )),
                            ),
                        };
                        MemberHealth {
                            url: m.url.to_string(),
                            endpoint: m.endpoint().map(|e| e.to_string()),
                            state,
                            reason,
                            status: m.flags().letters(),
                            in_flight: m.busy(),
                            busyness: m.busyness(),
                            heartbeat_ready: heartbeat_ready(b, m),
                            source: telemetry.source.as_str().to_owned(),
                            kernel,
                            evidence: note.as_deref().and_then(|n| n.evidence.clone()),
                            check: check_note(m, now_ms()),
                        }
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Heartbeat balancers: the ready figure picking uses (a heartbeat, or the agentless estimate);
/// others: the member's heartbeat when one has arrived.
fn heartbeat_ready(b: &Balancer, m: &crate::balancer::Member) -> Option<u64> {
    use crate::balancer::heartbeat;
    let now = std::time::Instant::now();
    if b.method() == crate::config::LbMethod::Heartbeat {
        return Some(heartbeat::ready(m, &b.heartbeats, now));
    }
    m.endpoint().and_then(|e| b.heartbeats.record(e, now)).map(|r| r.ready)
}
