//! The status report: every balancer and member as Apache's balancer-manager shows them.
//!
//! One serde type serves both ends: the admin API serializes it, `lb status` deserializes it and
//! renders the table.
use crate::balancer::{Balancer, now_ms};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub balancers: Vec<BalancerStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BalancerStatus {
    pub name: String,
    /// True for the one-member balancer behind a plain `http://` ProxyPass.
    pub implicit: bool,
    pub lbmethod: String,
    pub maxattempts: u32,
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
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorStatus {
    pub message: String,
    pub age_ms: u64,
}

pub fn report(balancers: &[Arc<Balancer>]) -> StatusReport {
    let now = now_ms();
    StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        balancers: balancers
            .iter()
            .map(|b| BalancerStatus {
                name: b.name().to_owned(),
                implicit: b.implicit,
                lbmethod: b.method().as_str().to_owned(),
                maxattempts: b.settings.maxattempts,
                timeout_ms: b.settings.timeout.as_millis() as u64,
                forcerecovery: b.settings.forcerecovery,
                members: b
                    .members
                    .iter()
                    .map(|m| MemberStatus {
                        id: m.id.0,
                        url: m.url.base(),
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
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n}") } else { format!("{v:.1}{}", UNITS[i]) }
}

/// Left-aligned columns under `header`, each row followed by its note (if any) on a line of its
/// own.
fn render_columns<const N: usize>(
    header: &[&str; N],
    rows: &[[String; N]],
    notes: &[Option<String>],
) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from("  ");
        for (c, w) in cells.zip(&widths) {
            s.push_str(&format!("{c:<w$}  ", w = *w));
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for (row, note) in rows.iter().zip(notes.iter().chain(std::iter::repeat(&None))) {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
        if let Some(n) = note {
            out.push_str(&format!("      {}\n", n.replace('\n', "\n      ")));
        }
    }
    out
}

/// Apache balancer-manager style table.
pub fn render_table(r: &StatusReport) -> String {
    let mut out = String::new();
    for b in &r.balancers {
        out.push_str(&format!(
            "balancer://{}  lbmethod={}  maxattempts={}  timeout={}ms  forcerecovery={}{}\n",
            b.name,
            b.lbmethod,
            b.maxattempts,
            b.timeout_ms,
            if b.forcerecovery { "on" } else { "off" },
            if b.implicit { "  (implicit)" } else { "" },
        ));
        let header = [
            "Worker URL",
            "Route",
            "RouteRedir",
            "Factor",
            "Set",
            "Status",
            "Elected",
            "Busy",
            "Load",
            "To",
            "From",
        ];
        let rows: Vec<[String; 11]> = b
            .members
            .iter()
            .map(|m| {
                [
                    m.url.clone(),
                    m.route.clone().unwrap_or_default(),
                    m.redirect.clone().unwrap_or_default(),
                    format!("{:.2}", m.loadfactor),
                    m.lbset.to_string(),
                    m.status.clone(),
                    m.elected.to_string(),
                    m.busy.to_string(),
                    m.lbstatus.to_string(),
                    human_bytes(m.bytes_sent),
                    human_bytes(m.bytes_received),
                ]
            })
            .collect();
        let notes: Vec<Option<String>> = b
            .members
            .iter()
            .map(|m| {
                m.last_error
                    .as_ref()
                    .map(|e| format!("last error {}s ago: {}", e.age_ms / 1000, e.message))
            })
            .collect();
        out.push_str(&render_columns(&header, &rows, &notes));
        out.push('\n');
    }
    out
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
                            url: m.url.base(),
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

fn fmt_us(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(us) if us >= 1000.0 => format!("{:.1}ms", us / 1000.0),
        Some(us) => format!("{us:.0}us"),
    }
}

/// The `lb health` table.
pub fn render_health(r: &HealthReport) -> String {
    let mut out = format!("telemetry source: {} ({})\n\n", r.source, r.why);
    for b in &r.balancers {
        out.push_str(&format!("balancer://{}  lbmethod={}\n", b.name, b.lbmethod));
        let header = [
            "Member",
            "State",
            "Connect p50/p99",
            "SRTT",
            "Retrans/s",
            "Failed",
            "In-flight",
            "Busyness",
            "Ready",
            "Evidence",
            "Probes",
            "Source",
        ];
        let rows: Vec<[String; 12]> = b
            .members
            .iter()
            .map(|m| {
                let k = m.kernel.as_ref();
                [
                    m.url.clone(),
                    m.state.clone(),
                    k.map_or("-".into(), |k| {
                        format!(
                            "{}/{}",
                            fmt_us(k.connect_p50_us.map(|v| v as f64)),
                            fmt_us(k.connect_p99_us.map(|v| v as f64))
                        )
                    }),
                    fmt_us(k.and_then(|k| k.srtt_us)),
                    k.map_or("-".into(), |k| format!("{:.1}", k.retransmits_per_s)),
                    k.map_or("-".into(), |k| k.connect_failed.to_string()),
                    m.in_flight.to_string(),
                    format!("{:.2}", m.busyness),
                    m.heartbeat_ready.map_or("-".into(), |v| v.to_string()),
                    m.evidence
                        .as_ref()
                        .map_or("-".into(), |e| format!("{:.1}/{:.1}", e.score, e.threshold)),
                    m.evidence.as_ref().map_or("-".into(), |e| {
                        format!("{} sent, {} failed", e.probes.sent, e.probes.failed)
                    }),
                    m.source.clone(),
                ]
            })
            .collect();
        let notes: Vec<Option<String>> = b.members.iter().map(health_notes).collect();
        out.push_str(&render_columns(&header, &rows, &notes));
        out.push('\n');
    }
    out
}

/// The lines under a member in `lb health`: why, and on what evidence.
fn health_notes(m: &MemberHealth) -> Option<String> {
    let mut lines = Vec::new();
    if let Some(r) = &m.reason {
        lines.push(format!("reason: {r}"));
    }
    if let Some(e) = &m.evidence {
        let mut parts: Vec<String> = e
            .signals
            .iter()
            .map(|t| format!("{} {} bad of {}", t.signal, t.bad, t.samples))
            .collect();
        if e.stalled_ms > 0 {
            parts.push(format!("waiting {} ms with no answer", e.stalled_ms));
        }
        if let Some(b) = e.baseline_srtt_us {
            parts.push(format!(
                "srtt baseline {} (balancer median {})",
                fmt_us(Some(b)),
                fmt_us(e.peers_srtt_us)
            ));
        }
        if let Some(p) = &e.probes.last {
            parts.push(format!("last probe: {p}"));
        }
        if e.score > 0.0 || m.state != "healthy" {
            lines.push(format!("evidence: {}", parts.join("; ")));
        }
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}
