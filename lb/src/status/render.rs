//! `lb status` and `lb health` as text: Apache balancer-manager style tables, each member
//! followed by the notes that explain it.
use super::{HealthReport, MemberHealth, StatusReport};
use crate::balancer::note::CheckNote;

/// "health check GET11 /hc 2s ago: status 503 (accepted: 200-399); 2 failed in a row, 9 sent".
pub(super) fn check_line(c: &CheckNote) -> String {
    let streak = if c.fails > 0 {
        format!("{} failed in a row, ", c.fails)
    } else if c.passes > 0 {
        format!("{} passed in a row, ", c.passes)
    } else {
        String::new()
    };
    format!(
        "health check {} {:.1}s ago: {}; {streak}{} sent, {} failed",
        c.method,
        c.age_ms as f64 / 1000.0,
        c.detail,
        c.sent,
        c.failed
    )
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
                let lines: Vec<String> = m
                    .last_error
                    .as_ref()
                    .map(|e| format!("last error {}s ago: {}", e.age_ms / 1000, e.message))
                    .into_iter()
                    .chain(m.check.as_ref().map(check_line))
                    .collect();
                (!lines.is_empty()).then(|| lines.join("\n"))
            })
            .collect();
        out.push_str(&render_columns(&header, &rows, &notes));
        out.push('\n');
    }
    out
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
    if let Some(c) = &m.check {
        lines.push(check_line(c));
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
