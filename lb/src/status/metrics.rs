//! `/metrics`: Prometheus text exposition (format 0.0.4). Names follow Prometheus conventions:
//! an `lb_` prefix, base units (seconds, bytes), `_total` on counters, one HELP and one TYPE per
//! family. Per listener: connections, requests, bytes, time. Per member (labels `balancer`,
//! `member`): Apache's counters (elected, busy, bytes each way), whether it is usable, its
//! ejection, and the kernel's view of its connections (srtt, connect latency, retransmits,
//! failed connects). And the runtime's live tasks, which come back down after a load: nothing
//! leaks.
use super::{HealthReport, StatusReport, counters};
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, v: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
        }
    }
}

pub fn render(status: &StatusReport, health: &HealthReport) -> String {
    let mut o = Out(String::with_capacity(8192));
    o.family("lb_build_info", "gauge", "lb's version, as a label; always 1.");
    o.sample("lb_build_info", &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1.0);
    let (since, _) = counters::started();
    o.family("lb_uptime_seconds", "gauge", "Time since lb started.");
    o.sample("lb_uptime_seconds", "", since.elapsed().as_secs_f64());

    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        o.family(
            "lb_runtime_tasks_alive",
            "gauge",
            "Tasks alive in lb's runtime (connections, requests, pools, health).",
        );
        o.sample("lb_runtime_tasks_alive", "", rt.metrics().num_alive_tasks() as f64);
    }

    let listeners = counters::all();
    type Get = fn(&counters::ListenerStats) -> u64;
    let per_listener: [(&str, &str, &str, Get, f64); 6] = [
        (
            "lb_listener_connections_total",
            "counter",
            "Client connections accepted.",
            |s| s.connections_total.load(Relaxed),
            1.0,
        ),
        (
            "lb_listener_connections_open",
            "gauge",
            "Client connections open now.",
            |s| s.connections_open.load(Relaxed),
            1.0,
        ),
        (
            "lb_listener_requests_total",
            "counter",
            "Requests (HTTP) or connections (TCP) served.",
            |s| s.requests_total.load(Relaxed),
            1.0,
        ),
        (
            "lb_listener_requests_in_flight",
            "gauge",
            "HTTP requests being answered now.",
            |s| s.in_flight.load(Relaxed),
            1.0,
        ),
        (
            "lb_listener_sent_bytes_total",
            "counter",
            "Response body bytes sent to clients (TCP: all bytes to clients).",
            |s| s.bytes_out.load(Relaxed),
            1.0,
        ),
        (
            "lb_listener_request_duration_seconds_total",
            "counter",
            "Time from request to the end of its answer, summed.",
            |s| s.duration_us.load(Relaxed),
            1e-6,
        ),
    ];
    for (name, kind, help, get, scale) in per_listener {
        o.family(name, kind, help);
        for (l, s) in &listeners {
            o.sample(name, &format!("listener=\"{}\"", label(l)), get(s) as f64 * scale);
        }
    }

    let (written, dropped) = crate::accesslog::counts();
    o.family("lb_access_log_lines_total", "counter", "Access log lines by outcome.");
    o.sample("lb_access_log_lines_total", "outcome=\"written\"", written as f64);
    o.sample("lb_access_log_lines_total", "outcome=\"dropped\"", dropped as f64);

    let members: Vec<_> =
        status.balancers.iter().flat_map(|b| b.members.iter().map(move |m| (b, m))).collect();
    let labels = |b: &str, m: &str| format!("balancer=\"{}\",member=\"{}\"", label(b), label(m));
    type MemberGet = fn(&super::MemberStatus) -> f64;
    let per_member: [(&str, &str, &str, MemberGet); 6] = [
        (
            "lb_member_up",
            "gauge",
            "1 when the member can take traffic (no I, D, E, S, C flag).",
            |m| f64::from(u8::from(m.usable)),
        ),
        (
            "lb_member_elected_total",
            "counter",
            "Times the member was picked (Apache's elected).",
            |m| m.elected as f64,
        ),
        ("lb_member_busy", "gauge", "Requests in flight on the member (Apache's busy).", |m| {
            m.busy as f64
        }),
        ("lb_member_sent_bytes_total", "counter", "Bytes sent to the member (Apache's To).", |m| {
            m.bytes_sent as f64
        }),
        (
            "lb_member_received_bytes_total",
            "counter",
            "Bytes read from the member (Apache's From).",
            |m| m.bytes_received as f64,
        ),
        ("lb_member_load_factor", "gauge", "The member's loadfactor.", |m| m.loadfactor),
    ];
    for (name, kind, help, get) in per_member {
        o.family(name, kind, help);
        for (b, m) in &members {
            o.sample(name, &labels(&b.name, &m.url), get(m));
        }
    }

    let kernel: Vec<_> =
        health.balancers.iter().flat_map(|b| b.members.iter().map(move |m| (b, m))).collect();
    o.family(
        "lb_member_ejected",
        "gauge",
        "1 while lb holds the member out on kernel or request evidence.",
    );
    for (b, m) in &kernel {
        let ejected = m.state != "healthy" && m.state != "unusable";
        o.sample("lb_member_ejected", &labels(&b.name, &m.url), f64::from(u8::from(ejected)));
    }
    type KernelGet = fn(&crate::telemetry::EndpointHealth) -> Option<f64>;
    let per_kernel: [(&str, &str, &str, KernelGet); 6] = [
        (
            "lb_member_srtt_seconds",
            "gauge",
            "Smoothed round-trip time of lb's connections to the member, from the kernel.",
            |k| k.srtt_us.map(|v| v * 1e-6),
        ),
        ("lb_member_connect_p50_seconds", "gauge", "Median connect latency to the member.", |k| {
            k.connect_p50_us.map(|v| v as f64 * 1e-6)
        }),
        (
            "lb_member_connect_p99_seconds",
            "gauge",
            "99th percentile connect latency to the member.",
            |k| k.connect_p99_us.map(|v| v as f64 * 1e-6),
        ),
        (
            "lb_member_retransmits_total",
            "counter",
            "TCP segments lb retransmitted to the member.",
            |k| Some(k.retransmits as f64),
        ),
        (
            "lb_member_connect_failures_total",
            "counter",
            "Connects to the member that failed.",
            |k| Some(k.connect_failed as f64),
        ),
        (
            "lb_member_resets_total",
            "counter",
            "Connections to the member that ended in a reset.",
            |k| Some(k.resets as f64),
        ),
    ];
    for (name, kind, help, get) in per_kernel {
        o.family(name, kind, help);
        for (b, m) in &kernel {
            if let Some(v) = m.kernel.as_ref().and_then(get) {
                o.sample(name, &labels(&b.name, &m.url), v);
            }
        }
    }
    o.0
}
