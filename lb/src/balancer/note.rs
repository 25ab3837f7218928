//! What the health monitor tells operators about a member: its state, why, and the evidence
//! behind it. Plain data, set by `health` and read by `status` (`lb health`, `/health`).
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct HealthNote {
    /// `healthy`, `suspect` (being probed), `ejected`, `recovering` (ejected, probed before it
    /// returns), `probation`, `sick` (kept in rotation: the ejection limit is reached) or
    /// `loaded` (kept: most of its balancer shows the same symptoms).
    pub state: &'static str,
    pub reason: Option<String>,
    pub evidence: Option<Evidence>,
    /// The active health check (`hcmethod`), when the member has one and it has run.
    pub check: Option<CheckNote>,
}

/// The last active health check of a member, and its counts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CheckNote {
    /// `hcmethod` and what it asks for: "GET11 /health", "TCP".
    pub method: String,
    pub ok: bool,
    /// "200 in 1.2 ms", "status 503 (accepted: 200-399)", "connect: Connection refused".
    pub detail: String,
    pub latency_ms: f64,
    /// When it ran (`now_ms` clock); the report gives its age.
    #[serde(skip)]
    pub at_ms: u64,
    #[serde(default)]
    pub age_ms: u64,
    /// Results in a row: passes, failures (one of them is 0).
    pub passes: u32,
    pub fails: u32,
    pub sent: u64,
    pub failed: u64,
}

/// The evidence behind a member's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Evidence {
    /// Log-likelihood ratio "sick" against "healthy" over the current episode (0 = nothing
    /// suspicious), and the score that ejects.
    pub score: f64,
    pub threshold: f64,
    /// Per signal over the current episode: samples and bad ones.
    pub signals: Vec<Tally>,
    /// The member's own smoothed RTT when it was last healthy, and its balancer's median now.
    pub baseline_srtt_us: Option<f64>,
    pub peers_srtt_us: Option<f64>,
    /// Requests waiting on the member with no answer for this long, ms.
    pub stalled_ms: u64,
    pub probes: ProbeStats,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Tally {
    /// `segments` (retransmits per data segment), `syn` (SYN retransmits per connect),
    /// `connects` (failed per connect), `requests` (failed per request), `probes`.
    pub signal: String,
    pub samples: u64,
    pub bad: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProbeStats {
    pub sent: u64,
    pub failed: u64,
    /// The last probe's result: "ok in 0.2 ms", "timed out after 250 ms", "refused".
    pub last: Option<String>,
    /// How many chunks of a probe the member usually acknowledges late (learnt from its
    /// healthy probes; 0 for most members): a probe fails on more than twice that.
    #[serde(default)]
    pub late_chunks_usual: Option<f64>,
}
