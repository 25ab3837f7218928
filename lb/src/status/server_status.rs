//! Apache's `/server-status` for lb: the page an operator reads, and its `?auto` machine format
//! that existing Apache monitoring scripts parse (`Total Accesses`, `Total kBytes`, `Uptime`,
//! `ReqPerSec`, `BusyWorkers`, `IdleWorkers`, `Scoreboard`, `ConnsTotal`, …).
//!
//! lb has no worker processes: a "busy worker" is a request in flight and an "idle worker" an
//! open client connection waiting for its next request, so scripts that watch those see load.
use super::counters;
use super::{HealthReport, StatusReport};
use std::fmt::Write;
use std::time::SystemTime;

/// Totals over every listener.
pub struct Totals {
    pub accesses: u64,
    pub bytes: u64,
    pub duration_us: u64,
    pub busy: u64,
    pub open: u64,
    pub uptime_s: u64,
    pub restarted: SystemTime,
}

pub fn totals() -> Totals {
    use std::sync::atomic::Ordering::Relaxed;
    let (since, restarted) = counters::started();
    let mut t = Totals {
        accesses: 0,
        bytes: 0,
        duration_us: 0,
        busy: 0,
        open: 0,
        uptime_s: since.elapsed().as_secs(),
        restarted,
    };
    for (_, s) in counters::all() {
        t.accesses += s.requests_total.load(Relaxed);
        t.bytes += s.bytes_out.load(Relaxed);
        t.duration_us += s.duration_us.load(Relaxed);
        t.busy += s.in_flight.load(Relaxed);
        t.open += s.connections_open.load(Relaxed);
    }
    t
}

fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    crate::accesslog::utc(secs)
}

fn uptime_text(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(d, "day"), (h, "hour"), (m, "minute"), (sec, "second")] {
        if n > 0 || (unit == "second" && out.is_empty()) {
            let _ = write!(
                out,
                "{}{n} {unit}{}",
                if out.is_empty() { "" } else { " " },
                if n == 1 { "" } else { "s" }
            );
        }
    }
    out
}

/// `/server-status?auto`.
pub fn auto() -> String {
    let t = totals();
    let up = t.uptime_s.max(1) as f64;
    let per_req = |v: u64| if t.accesses == 0 { 0.0 } else { v as f64 / t.accesses as f64 };
    let idle = t.open.saturating_sub(t.busy);
    let mut s = String::new();
    let _ = writeln!(s, "ServerVersion: lb/{}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(s, "ServerMPM: event");
    let _ = writeln!(s, "CurrentTime: {}", http_date(SystemTime::now()));
    let _ = writeln!(s, "RestartTime: {}", http_date(t.restarted));
    let _ = writeln!(s, "ServerUptimeSeconds: {}", t.uptime_s);
    let _ = writeln!(s, "ServerUptime: {}", uptime_text(t.uptime_s));
    let _ = writeln!(s, "Total Accesses: {}", t.accesses);
    let _ = writeln!(s, "Total kBytes: {}", t.bytes / 1024);
    let _ = writeln!(s, "Total Duration: {}", t.duration_us / 1000);
    let _ = writeln!(s, "Uptime: {}", t.uptime_s);
    let _ = writeln!(s, "ReqPerSec: {:.6}", t.accesses as f64 / up);
    let _ = writeln!(s, "BytesPerSec: {:.6}", t.bytes as f64 / up);
    let _ = writeln!(s, "BytesPerReq: {:.6}", per_req(t.bytes));
    let _ = writeln!(s, "DurationPerReq: {:.6}", per_req(t.duration_us) / 1000.0);
    let _ = writeln!(s, "BusyWorkers: {}", t.busy);
    let _ = writeln!(s, "IdleWorkers: {idle}");
    let _ = writeln!(s, "Processes: 1");
    let _ = writeln!(s, "Stopping: 0");
    let _ = writeln!(s, "ConnsTotal: {}", t.open);
    let _ = writeln!(s, "ConnsAsyncWriting: 0");
    let _ = writeln!(s, "ConnsAsyncKeepAlive: {idle}");
    let _ = writeln!(s, "ConnsAsyncClosing: 0");
    let _ = writeln!(s, "Scoreboard: {}", scoreboard(t.busy, idle));
    s
}

/// One `W` per request in flight, one `_` per idle connection (at most 4096 characters).
fn scoreboard(busy: u64, idle: u64) -> String {
    let busy = busy.min(4096) as usize;
    let idle = (idle as usize).min(4096 - busy);
    let mut s = "W".repeat(busy);
    s.push_str(&"_".repeat(idle));
    if s.is_empty() {
        s.push('.');
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `/server-status`: the page.
pub fn html(status: &StatusReport, health: &HealthReport) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let t = totals();
    let up = t.uptime_s.max(1) as f64;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>lb server status</title>\
         <style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}}</style></head><body>\n\
         <h1>lb Server Status</h1>\n<dl>\
         <dt>Server Version: lb/{}</dt><dt>Current Time: {}</dt><dt>Restart Time: {}</dt>\
         <dt>Server uptime: {}</dt>\
         <dt>Total accesses: {} - Total Traffic: {} kB - Total Duration: {} ms</dt>\
         <dt>{:.3} requests/sec - {:.1} B/second - {:.1} B/request</dt>\
         <dt>{} requests currently being processed, {} idle connections</dt></dl>\n",
        env!("CARGO_PKG_VERSION"),
        http_date(SystemTime::now()),
        http_date(t.restarted),
        uptime_text(t.uptime_s),
        t.accesses,
        t.bytes / 1024,
        t.duration_us / 1000,
        t.accesses as f64 / up,
        t.bytes as f64 / up,
        if t.accesses == 0 { 0.0 } else { t.bytes as f64 / t.accesses as f64 },
        t.busy,
        t.open.saturating_sub(t.busy),
    );
    let _ = write!(
        h,
        "<pre>{}</pre>\n<h2>Listeners</h2>\n<table><tr><th>listener</th><th>connections open</th><th>connections</th><th>requests</th><th>in flight</th><th>kB sent</th><th>ms per request</th></tr>\n",
        scoreboard(t.busy, t.open.saturating_sub(t.busy))
    );
    for (name, s) in counters::all() {
        let req = s.requests_total.load(Relaxed);
        let ms =
            if req == 0 { 0.0 } else { s.duration_us.load(Relaxed) as f64 / req as f64 / 1000.0 };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{ms:.2}</td></tr>",
            esc(&name),
            s.connections_open.load(Relaxed),
            s.connections_total.load(Relaxed),
            req,
            s.in_flight.load(Relaxed),
            s.bytes_out.load(Relaxed) / 1024,
        );
    }
    h.push_str("</table>\n<h2>Members</h2>\n<table><tr><th>balancer</th><th>member</th><th>route</th><th>status</th><th>health</th><th>elected</th><th>busy</th><th>sent</th><th>received</th><th>srtt</th><th>connect p99</th><th>last error</th></tr>\n");
    for b in &status.balancers {
        let hb = health.balancers.iter().find(|x| x.name == b.name);
        for m in &b.members {
            let mh = hb.and_then(|hb| hb.members.iter().find(|x| x.url == m.url));
            let k = mh.and_then(|x| x.kernel.as_ref());
            let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.2} ms", v / 1000.0));
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&b.name),
                esc(&m.url),
                esc(m.route.as_deref().unwrap_or("")),
                esc(&m.status),
                esc(mh.map_or("-", |x| x.state.as_str())),
                m.elected,
                m.busy,
                m.bytes_sent,
                m.bytes_received,
                us(k.and_then(|k| k.srtt_us)),
                us(k.and_then(|k| k.connect_p99_us).map(|v| v as f64)),
                esc(m.last_error.as_ref().map_or("", |e| e.message.as_str())),
            );
        }
    }
    h.push_str("</table>\n</body></html>\n");
    h
}
