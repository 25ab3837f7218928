//! The load generators: wrk for HTTP/1.1 (plain and TLS, and HTTP over an L4 proxy), h2load for
//! h2c and h2, each pinned to the load CPU; their output parsed into one [`Run`].
use anyhow::{Context, Result, bail};
use std::process::Command;
use std::time::Duration;

/// What one load run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    pub rps: f64,
    pub requests: f64,
    /// Latency percentiles (wrk); h2load gives the mean only, as `p50_ms`, and no p99.
    pub p50_ms: f64,
    pub p99_ms: Option<f64>,
    pub errors: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Wrk,
    H2load,
}

fn parse_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// Load `url` from CPU `cpu` for `time` with `conns` connections.
pub fn run(tool: Tool, url: &str, cpu: &str, time: Duration, conns: u32) -> Result<Run> {
    let secs = time.as_secs().max(1);
    let mut c = Command::new("taskset");
    c.args(["-c", cpu]);
    match tool {
        Tool::Wrk => {
            c.args(["wrk", "-t1", &format!("-c{conns}"), &format!("-d{secs}s"), "--latency"])
        }
        // 10 streams per connection, as browsers and h2 clients use them.
        Tool::H2load => {
            c.args(["h2load", "-t1", &format!("-c{conns}"), "-m10", "-D", &secs.to_string()])
        }
    };
    let out = c.arg(url).output().with_context(|| format!("run {tool:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{tool:?} {url} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    match tool {
        Tool::Wrk => wrk(&text, secs),
        Tool::H2load => h2load(&text),
    }
    .with_context(|| format!("{tool:?} output for {url}:\n{text}"))
}

fn wrk(text: &str, secs: u64) -> Result<Run> {
    let field = |prefix: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    let rps: f64 =
        field("Requests/sec:").and_then(|v| v.parse().ok()).context("no Requests/sec")?;
    Ok(Run {
        rps,
        requests: rps * secs as f64,
        p50_ms: field("50%").and_then(|v| parse_ms(&v)).unwrap_or(f64::NAN),
        p99_ms: field("99%").and_then(|v| parse_ms(&v)),
        errors: text.contains("Non-2xx") || text.contains("Socket errors"),
    })
}

/// "finished in 10.00s, 51234.50 req/s, 7.24MB/s", "requests: … 0 failed, 0 errored",
/// "time for request:   251us  45.12ms  1.93ms …" (min, max, mean, sd).
pub fn h2load(text: &str) -> Result<Run> {
    let finished = text.lines().find(|l| l.starts_with("finished in")).context("no summary")?;
    let rps = finished
        .split(", ")
        .find_map(|p| p.strip_suffix(" req/s"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("no req/s")?;
    let counts = text.lines().find(|l| l.trim_start().starts_with("requests:")).unwrap_or("");
    let number = |what: &str| {
        counts.split(", ").find_map(|p| {
            let p = p.trim().trim_start_matches("requests:").trim();
            p.strip_suffix(what).and_then(|n| n.trim().parse::<f64>().ok())
        })
    };
    let mean = text
        .lines()
        .find(|l| l.trim_start().starts_with("time for request:"))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(parse_ms)
        .unwrap_or(f64::NAN);
    let bad = number("failed").unwrap_or(0.0) + number("errored").unwrap_or(0.0);
    Ok(Run {
        rps,
        requests: number("succeeded").unwrap_or(0.0),
        p50_ms: mean,
        p99_ms: None,
        errors: bad > 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_tools() {
        let w = "Running 10s test @ http://x/\n  Latency Distribution\n     50%  412.00us\n     99%    1.20ms\n  100000 requests in 10.00s\nRequests/sec:  10000.50\n";
        let r = wrk(w, 10).unwrap();
        assert_eq!((r.rps, r.p99_ms, r.errors), (10000.5, Some(1.2), false));
        assert!((r.p50_ms - 0.412).abs() < 1e-9, "{}", r.p50_ms);
        let h = "finished in 10.00s, 51234.50 req/s, 7.24MB/s\nrequests: 512345 total, 512345 started, 512345 done, 512345 succeeded, 0 failed, 0 errored, 0 timeout\n                     min         max         mean         sd        +/- sd\ntime for request:      251us     45.12ms      1.93ms       1.00ms    85.00%\n";
        let r = h2load(h).unwrap();
        assert_eq!((r.rps, r.requests, r.p50_ms, r.errors), (51234.5, 512345.0, 1.93, false));
    }
}
