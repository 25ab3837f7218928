//! Active probes: a quick look at one member, off the request path.
//!
//! A TCP connect for `tcp://` and `https://` members; for `http://` members one or a few
//! connections one after the other, each carrying one `OPTIONS * HTTP/1.1`, where any answer
//! is a pass (a stopped process still completes TCP handshakes from its listen backlog, but
//! answers nothing). A probe closes its connections with a reset, so it leaves no TIME_WAIT.
//!
//! A probe is also a sample of the path's packet loss, and at low traffic probes are most of
//! the samples there are. So each probe packet is made to count:
//! - its request is padded to a kilobyte and written a small chunk at a time without Nagle,
//!   each chunk a packet, and each chunk waits for the member's acknowledgement (at most
//!   [`ACK_WAIT_PROMPT`] for a member known to acknowledge at once, else [`ACK_WAIT`]) before
//!   the next goes. A fresh Linux connection acknowledges its first segments at once, so each
//!   chunk also draws a packet from the member, at no cost to its application. Without the
//!   wait a lost acknowledgement is covered by the next one and passes unseen; with it, it
//!   shows as a chunk acknowledged late ([`ProbeResult::late_acks`]), which the monitor holds against the member's usual count
//!   (some members delay one acknowledgement per connection as a rule; after a late one a
//!   connection stops waiting, so that costs at most [`ACK_WAIT`] per connection). Where lb's
//!   own timer wakes late, its host is busy and the connection stops waiting without judging.
//!   This is why each request gets a fresh connection: a connection that has answered once
//!   acknowledges late. For the same reason a probe stops sending once the member has
//!   answered, even before the request's end (nginx answers `OPTIONS *` with a 400 as soon as
//!   it has the request line): such a member's probes sample loss on fewer packets.
//! - the connection advertises the smallest MSS ([`PROBE_MSS`]), so that across a real
//!   network the member's answer travels as several segments too (on loopback the kernel
//!   passes a whole answer as one packet).
//!
//! A probe fails when a connection had to retransmit (our packets were lost) or received a
//! segment after a gap (the member's were): on a lossy path such a loss is usually repaired
//! within the timeout and would pass unseen. Probe connections are not registered with
//! telemetry and not counted as traffic.
//!
//! Its two timings are the kernel's where it has them: the connect is the handshake's round trip
//! as TCP measured it, and an answer ends at the kernel's arrival stamp on the segment that
//! completed its head. lb's own clock also counts the time lb took to come back to the probe,
//! which under load is lb's, not the member's. The acknowledgement waits are lb's clock; each
//! probe also says how long lb's thread waited for a CPU while it ran
//! ([`ProbeResult::starved`], from the kernel's scheduler statistics), and the monitor judges
//! no timing of a probe that was mostly lb's waiting.
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// The MSS probe connections advertise: Linux's minimum (`TCP_MIN_MSS`), so about 76 bytes
/// of payload per segment once TCP timestamps are on.
pub const PROBE_MSS: u32 = 88;
/// A probe request is padded to this size (a long `User-Agent`): 16 chunks, as many as a fresh
/// Linux connection acknowledges at once (`TCP_MAX_QUICKACKS`).
const PROBE_REQUEST_BYTES: usize = 1024;
/// Written this many bytes at a time, each write its own segment.
const PROBE_CHUNK: usize = 64;
/// How long a chunk waits for its acknowledgement before the next goes anyway (and the chunk
/// counts as acknowledged late), for a member not known to acknowledge at once: well below
/// Linux's delayed ACK (40 ms), so a member that delays acknowledgements costs little.
pub const ACK_WAIT: Duration = Duration::from_millis(5);
/// The same for a member whose healthy probes had no late chunk: long enough that a busy host
/// (lb's or the member's softirq work waiting for a CPU) does not read as a lost packet.
pub const ACK_WAIT_PROMPT: Duration = Duration::from_millis(30);
/// lb's own poll woke this much later than asked: its host is too busy to judge the member's
/// timing, and the connection stops waiting without counting anything late.
pub const HOST_BUSY: Duration = Duration::from_millis(5);
/// A connection waits for acknowledgements for at most this long in all: on a path with a
/// longer round trip the rest of the request goes without waiting.
pub const ACK_BUDGET: Duration = Duration::from_millis(10);
/// How often it looks whether the acknowledgement came (on loopback it has, at once).
const ACK_POLL: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    Connect,
    /// `OPTIONS *` with this Host, this many times, each on a connection of its own; each
    /// chunk waits up to `ack_wait` for its acknowledgement.
    Http {
        authority: String,
        requests: u32,
        ack_wait: Duration,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub ok: bool,
    /// SYN to established as the kernel timed it (see [`handshake_time`]), the quickest of its
    /// connects (one slow handshake on a busy host says little; a slow path slows them all);
    /// `None` when it ended in a connect.
    pub connect: Option<Duration>,
    /// The whole probe.
    pub took: Duration,
    /// `OPTIONS *` answers it waited for (0 for a connect probe).
    pub requests: u32,
    /// Time from each request's last chunk to its answer, summed (zero for a connect probe).
    pub answers: Duration,
    /// It ran out of time (rather than failing outright).
    pub timed_out: bool,
    /// Chunks of its requests the member did not acknowledge within the probe's `ack_wait`
    /// (`None` for a connect probe).
    pub late_acks: Option<u32>,
    /// How long lb's probing thread waited for a CPU while the probe ran (zero where the kernel
    /// does not say, or the probe moved between threads): lb's host was busy, not the member.
    pub starved: Duration,
    /// "ok in 0.2 ms", "timed out after 250 ms", "connect: refused".
    pub detail: String,
}

impl ProbeResult {
    /// Time per `OPTIONS *` answer, once sent (HTTP probes that completed).
    pub fn per_answer(&self) -> Option<Duration> {
        (self.ok && self.requests > 0).then(|| self.answers / self.requests)
    }
}

/// Probe `addr`; the whole probe must finish within `timeout`.
pub async fn probe(addr: SocketAddr, kind: &ProbeKind, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    let waited = run_delay();
    let requests = match kind {
        ProbeKind::Connect => 0,
        ProbeKind::Http { requests, .. } => *requests,
    };
    let (mut connect, mut quickest, mut answers, mut late_acks) =
        (None, None, Duration::ZERO, None);
    let run = async {
        // A connect probe is one connection; an HTTP probe one per request.
        for _ in 0..requests.max(1) {
            let t = Instant::now();
            connect = None;
            let mut s = connect_small(addr).await.map_err(|e| format!("connect: {e}"))?;
            let took = handshake_time(&s, t.elapsed());
            quickest = Some(quickest.map_or(took, |q: Duration| q.min(took)));
            connect = quickest;
            if let ProbeKind::Http { authority, ack_wait, .. } = kind {
                let (late, answer) = http_options(&mut s, authority, *ack_wait).await?;
                late_acks = Some(late_acks.unwrap_or(0) + late);
                answers += answer;
            }
            lost_packets(&s)?;
        }
        Ok::<(), String>(())
    };
    let outcome = tokio::time::timeout(timeout, run).await;
    let took = start.elapsed();
    let starved = match (waited, run_delay()) {
        (Some((t0, w0)), Some((t1, w1))) if t0 == t1 => w1.saturating_sub(w0),
        _ => Duration::ZERO,
    };
    let result = |ok, timed_out, detail| ProbeResult {
        ok,
        connect,
        took,
        requests,
        answers,
        timed_out,
        late_acks,
        starved,
        detail,
    };
    match outcome {
        Ok(Ok(())) => result(true, false, format!("ok in {:.1} ms", took.as_secs_f64() * 1e3)),
        Ok(Err(e)) => result(false, false, e),
        Err(_) => result(
            false,
            true,
            match connect {
                None => format!("connect timed out after {} ms", timeout.as_millis()),
                Some(_) => format!("no answer within {} ms", timeout.as_millis()),
            },
        ),
    }
}

/// This thread, and how long it has waited for a CPU so far (the second field of
/// `/proc/thread-self/schedstat`: time runnable but not running, in nanoseconds).
fn run_delay() -> Option<(std::thread::ThreadId, Duration)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((std::thread::current().id(), Duration::from_nanos(ns)))
}

/// How long `s`'s handshake took: the kernel's own timing of it where it has one, else
/// `measured`, lb's clock from the connect call to the task seeing it done. lb's clock also
/// counts the time its event loop took to come back to the probe, which under load is lb's
/// own (4–5 ms against a handshake of 0.1 ms, with lb's core saturated by h2c load): judged as
/// the member's, over 90 % of probes failed as "slow", every member was held `loaded`, and
/// bursts of probes ran for as long as the load did. A fresh connection's first round-trip
/// sample is its SYN to SYN-ACK, taken by the kernel as the SYN-ACK arrives. When a SYN was
/// retransmitted the kernel takes no sample from it (and the probe fails on the retransmission
/// anyway).
fn handshake_time(s: &TcpStream, measured: Duration) -> Duration {
    match losses(s) {
        Ok(l) if l.retransmits == 0 && l.rtt_us > 0 => {
            measured.min(Duration::from_micros(u64::from(l.rtt_us)))
        }
        _ => measured,
    }
}

/// Whether the probe connection `s` had to repair a loss: it retransmitted (our packets were
/// lost) or received a segment after a gap (the member's were).
fn lost_packets(s: &TcpStream) -> Result<(), String> {
    match crate::telemetry::tcp_info::losses(s) {
        Ok(l) if l.retransmits > 0 => Err(format!("lost packets: {} retransmit(s)", l.retransmits)),
        Ok(l) if l.out_of_order > 0 => {
            Err(format!("lost packets: {} segment(s) from the member after a gap", l.out_of_order))
        }
        _ => Ok(()),
    }
}

/// Connect with the probe MSS (a plain connect where the option is refused).
async fn connect_small(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_tcp_mss(PROBE_MSS);
    // Closed with a reset (linger zero: nothing blocks on drop), so a probe leaves no
    // TIME_WAIT behind, on either side.
    sock.set_linger(Some(Duration::ZERO))?;
    let s = socket.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// `OPTIONS *` for `authority`, padded to about [`PROBE_REQUEST_BYTES`], asking the member to
/// close.
fn options_request(authority: &str) -> String {
    let mut req = format!(
        "OPTIONS * HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nUser-Agent: lb-probe"
    );
    if req.len() + 4 < PROBE_REQUEST_BYTES {
        req.push_str(" (");
        req.extend(std::iter::repeat_n('.', PROBE_REQUEST_BYTES - req.len() - 5));
        req.push(')');
    }
    req.push_str("\r\n\r\n");
    req
}

/// Send `OPTIONS *`, a chunk at a time, each acknowledged before the next, and read the head
/// of the answer; returns how many chunks were acknowledged late, and how long the answer took
/// once the request was sent.
async fn http_options(
    s: &mut TcpStream,
    authority: &str,
    ack_wait: Duration,
) -> Result<(u32, Duration), String> {
    // One packet per chunk (no Nagle): a loopback or offloading NIC would otherwise carry
    // the whole request as one packet, whatever the MSS.
    let req = options_request(authority);
    // The answer's arrival as the kernel timed it (see `answer_time`); where the kernel refuses
    // the stamps, reads carry none and lb's clock counts.
    let _ = crate::telemetry::tcp_info::stamp_arrivals(s);
    let chunks = req.as_bytes().chunks(PROBE_CHUNK);
    let last = chunks.len() - 1;
    let (start, mut late, mut waiting) = (Instant::now(), 0, true);
    for (i, chunk) in chunks.enumerate() {
        // The member answered before the request's end (nginx answers `OPTIONS *` with a 400
        // once it has the request line, then closes): the rest is not needed. A connection
        // that has sent data delays its acknowledgements, so from here they say nothing
        // about lost packets.
        if i > 0 && losses(s)?.received > 0 {
            break;
        }
        s.write_all(chunk).await.map_err(|e| format!("send: {e}"))?;
        // The last chunk is acknowledged by the answer. After a late one the rest go without
        // waiting: a receiver that delays one acknowledgement may delay the next ones too.
        if waiting && i < last && start.elapsed() < ACK_BUDGET {
            match acked(s, ack_wait).await? {
                Ack::InTime => {}
                Ack::Answered => break,
                Ack::Late => (late, waiting) = (late + 1, false),
                Ack::HostBusy => waiting = false,
            }
        }
    }
    let (sent, sent_at) = (Instant::now(), std::time::SystemTime::now());
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let mut arrived = None;
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if buf.len() > 16 * 1024 {
            return Err("answer head too long".to_owned());
        }
        let (n, at) = read_timed(s, &mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed without an answer".to_owned());
        }
        arrived = at.or(arrived);
        buf.extend_from_slice(&chunk[..n]);
    }
    if !buf.starts_with(b"HTTP/1.") {
        return Err("answered something that is not HTTP".to_owned());
    }
    Ok((late, answer_time(sent.elapsed(), sent_at, arrived)))
}

/// How long the member took to answer: from lb's clock just after the request's last chunk went
/// to the kernel's stamp on the segment that completed the answer's head, where there is one.
/// lb's clock alone says when lb got round to reading the answer, which under load is later:
/// with one balancer's members loading lb's core, an idle member of another balancer failed
/// most probes as "slow: answered in 3.9 ms against its usual 0.039 ms", and with no peer to
/// share the symptom it was found sick. An answer that came before the request's end (see
/// above) took no time.
fn answer_time(
    measured: Duration,
    sent_at: std::time::SystemTime,
    arrived: Option<std::time::SystemTime>,
) -> Duration {
    match arrived {
        Some(at) => at.duration_since(sent_at).unwrap_or(Duration::ZERO).min(measured),
        None => measured,
    }
}

/// Read what `s` has, with the kernel's stamp of its arrival.
async fn read_timed(
    s: &TcpStream,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<std::time::SystemTime>)> {
    loop {
        s.readable().await?;
        match s.try_io(tokio::io::Interest::READABLE, || {
            crate::telemetry::tcp_info::recv_timed(s, buf)
        }) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

enum Ack {
    InTime,
    Late,
    /// The member's answer came first: its acknowledgements are delayed from now on.
    Answered,
    /// lb's own timer was late: nothing to judge.
    HostBusy,
}

/// What the kernel knows of `s`'s packets.
fn losses(s: &TcpStream) -> Result<crate::telemetry::tcp_info::Losses, String> {
    crate::telemetry::tcp_info::losses(s).map_err(|e| format!("TCP_INFO: {e}"))
}

/// Whether the member acknowledged everything sent on `s` within `wait`.
async fn acked(s: &TcpStream, wait: Duration) -> Result<Ack, String> {
    let start = Instant::now();
    loop {
        let l = losses(s)?;
        if l.unacked == 0 {
            return Ok(Ack::InTime);
        }
        if l.received > 0 {
            return Ok(Ack::Answered);
        }
        if start.elapsed() >= wait {
            return Ok(Ack::Late);
        }
        let asleep = Instant::now();
        tokio::time::sleep(ACK_POLL).await;
        if asleep.elapsed() > ACK_POLL + HOST_BUSY {
            return Ok(Ack::HostBusy);
        }
    }
}

#[cfg(test)]
mod tests;
