//! The `heartbeat` method: weighted random by each member's ready capacity.
//!
//! Ready capacity comes from Apache mod_heartbeat datagrams (`v=1&ready=N&busy=M`, optionally
//! `&port=P`; unknown keys ignored), received on `[heartbeat] listen` over UDP or by
//! `POST /heartbeat` on the admin listener, and kept per source IP and port. A member without a
//! fresh record (seen in the last 10 s) gets an agentless estimate from kernel telemetry instead:
//! `ready = round(100 × loadfactor / latency weight) − in-flight`, where the latency weight is the
//! one bybusyness uses (1 without telemetry). Apache answers 503 there; lb does not need an agent.
//!
//! Picking follows Apache's `find_best_hb`: usable members only; a record with `busy == 0` counts
//! `ready / 4` (a server that just started should not be flooded); a uniform pick in
//! `[0, openslots]`; the member whose range `[c, c + ready]` holds the pick wins, the later one at
//! a shared boundary. Like Apache, the method ignores lbset, H, R and N.
use super::member::Member;
use arc_swap::ArcSwap;
use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A record older than this is ignored (Apache's LBM_HEARTBEAT_MAX_LASTSEEN).
pub const MAX_AGE: Duration = Duration::from_secs(10);
/// Nominal ready slots of a member of loadfactor 1 in the agentless estimate.
const AGENTLESS_SLOTS: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub ready: u64,
    pub busy: u64,
    pub seen: Instant,
}

/// Heartbeat records by source (IP, port; port None when the datagram named none).
#[derive(Default)]
pub struct Heartbeats {
    write: Mutex<HashMap<(IpAddr, Option<u16>), Record>>,
    read: ArcSwap<HashMap<(IpAddr, Option<u16>), Record>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeartbeatError {
    #[error("not a heartbeat: {0}")]
    Malformed(String),
    #[error("unsupported heartbeat version {0:?} (expected v=1)")]
    Version(String),
}

/// Parse `v=1&ready=N&busy=M[&port=P]`; unknown keys are ignored.
pub fn parse(body: &str) -> Result<(u64, u64, Option<u16>), HeartbeatError> {
    let (mut v, mut ready, mut busy, mut port) = (None, None, None, None);
    for pair in body.trim().split('&') {
        let Some((k, val)) = pair.split_once('=') else { continue };
        let num = |s: &str| {
            s.trim().parse::<u64>().map_err(|_| HeartbeatError::Malformed(format!("{k}={s}")))
        };
        match k.trim() {
            "v" => v = Some(val.trim().to_owned()),
            "ready" => ready = Some(num(val)?),
            "busy" => busy = Some(num(val)?),
            "port" => {
                port = Some(
                    u16::try_from(num(val)?)
                        .map_err(|_| HeartbeatError::Malformed(format!("port={val}")))?,
                )
            }
            _ => {}
        }
    }
    match v.as_deref() {
        Some("1") => {}
        Some(other) => return Err(HeartbeatError::Version(other.to_owned())),
        None => return Err(HeartbeatError::Malformed("no v= key".into())),
    }
    match (ready, busy) {
        (Some(r), Some(b)) => Ok((r, b, port)),
        _ => Err(HeartbeatError::Malformed("ready= and busy= are required".into())),
    }
}

impl Heartbeats {
    /// Record a heartbeat body from `source` (the datagram's or POST's sender).
    pub fn receive(&self, source: IpAddr, body: &str, now: Instant) -> Result<(), HeartbeatError> {
        let (ready, busy, port) = parse(body)?;
        let source = source.to_canonical();
        if let Ok(mut w) = self.write.lock() {
            w.insert((source, port), Record { ready, busy, seen: now });
            w.retain(|_, r| now.duration_since(r.seen) < MAX_AGE * 6);
            self.read.store(Arc::new(w.clone()));
        }
        Ok(())
    }

    /// The fresh record for a member at `endpoint`: the one naming its port, else one naming
    /// no port from its IP.
    pub fn record(&self, endpoint: SocketAddr, now: Instant) -> Option<Record> {
        let map = self.read.load();
        let ip = endpoint.ip().to_canonical();
        let r = map.get(&(ip, Some(endpoint.port()))).or_else(|| map.get(&(ip, None)))?;
        (now.duration_since(r.seen) < MAX_AGE).then_some(*r)
    }
}

/// A member's ready capacity for picking: its heartbeat (Apache's `ready / 4` rule applied), or
/// the agentless estimate.
pub fn ready(m: &Member, beats: &Heartbeats, now: Instant) -> u64 {
    if let Some(r) = m.endpoint().and_then(|e| beats.record(e, now)) {
        return if r.busy == 0 && r.ready > 0 { r.ready / 4 } else { r.ready };
    }
    let slots = AGENTLESS_SLOTS * m.lbfactor() as f64 / 100.0 / m.latency_weight();
    (slots.round() as u64).saturating_sub(m.busy())
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let addr = &t as *const u64 as u64;
        (t ^ addr.rotate_left(29)) | 1
    });
}

/// Uniform in `[0, n]` (xorshift64*; picking needs spread, not cryptographic strength).
fn random_inclusive(n: u64) -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % (n + 1)
    })
}

/// Apache's walk over the candidates' ranges, with `pick` drawn in `[0, openslots]`.
pub fn pick_with<T: Copy>(candidates: &[(T, u64)], pick: u64) -> Option<T> {
    let mut c = 0u64;
    let mut chosen = None;
    for (m, ready) in candidates {
        if pick >= c && pick <= c + ready {
            chosen = Some(*m);
        }
        c += ready;
    }
    chosen
}

/// Pick a member by heartbeat at `now_ms` (for retry checks) and `now`.
pub fn pick<'a>(
    members: &'a [Arc<Member>],
    beats: &Heartbeats,
    exclude: &[super::MemberId],
    now_ms: u64,
    now: Instant,
) -> Option<&'a Arc<Member>> {
    let mut candidates = Vec::with_capacity(members.len());
    let mut open = 0u64;
    for m in members {
        if !m.usable() {
            m.retry_check(now_ms);
        }
        if !m.usable() || exclude.contains(&m.id) {
            continue;
        }
        let r = ready(m, beats, now);
        open += r;
        candidates.push((m, r));
    }
    if open == 0 {
        return None;
    }
    pick_with(&candidates, random_inclusive(open))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mod_heartbeat_bodies() {
        assert_eq!(parse("v=1&ready=75&busy=0"), Ok((75, 0, None)));
        assert_eq!(parse("v=1&ready=5&busy=3&port=8080&extra=x"), Ok((5, 3, Some(8080))));
        assert!(matches!(parse("v=2&ready=1&busy=1"), Err(HeartbeatError::Version(_))));
        assert!(parse("v=1&ready=x&busy=1").is_err());
        assert!(parse("ready=1&busy=1").is_err());
    }

    #[test]
    fn the_walk_is_apaches() {
        let c = [("a", 90), ("b", 10)];
        assert_eq!(pick_with(&c, 0), Some("a"));
        assert_eq!(pick_with(&c, 89), Some("a"));
        // The shared boundary goes to the later member, as Apache's `<=` test gives it.
        assert_eq!(pick_with(&c, 90), Some("b"));
        assert_eq!(pick_with(&c, 100), Some("b"));
        assert_eq!(random_inclusive(0), 0);
        let mut seen = [0u32; 9];
        for _ in 0..1000 {
            seen[random_inclusive(7).min(8) as usize] += 1;
        }
        // Every value of 0..=7 turns up in 1000 draws (a miss has odds below 1e-50), none above.
        assert!(seen[..8].iter().all(|&n| n > 0) && seen[8] == 0, "{seen:?}");
    }

    #[test]
    fn records_expire_and_match_port_then_ip() {
        let hb = Heartbeats::default();
        let t0 = Instant::now();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        hb.receive(ip, "v=1&ready=10&busy=1&port=9001", t0).unwrap();
        hb.receive(ip, "v=1&ready=20&busy=1", t0).unwrap();
        assert_eq!(hb.record("127.0.0.1:9001".parse().unwrap(), t0).unwrap().ready, 10);
        assert_eq!(hb.record("127.0.0.1:9002".parse().unwrap(), t0).unwrap().ready, 20);
        assert!(hb.record("127.0.0.1:9001".parse().unwrap(), t0 + MAX_AGE).is_none());
    }
}
