//! The probe against real sockets: members started by each test on port 0.
use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Connections to or from `port` in TIME_WAIT (IPv4).
fn time_wait(port: u16) -> usize {
    let port = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "06" && (f[1].ends_with(&port) || f[2].ends_with(&port))
        })
        .count()
}

/// A member's side of one connection: `answer` to each request head, until the probe closes.
async fn answer_heads(mut s: tokio::net::TcpStream, answer: &[u8]) {
    let (mut b, mut head) = ([0u8; 512], Vec::new());
    while let Ok(n @ 1..) = s.read(&mut b).await {
        head.extend_from_slice(&b[..n]);
        if head.ends_with(b"\r\n\r\n") {
            head.clear();
            let _ = s.write_all(answer).await;
        }
    }
}

#[test]
fn padded_request() {
    let r = options_request("127.0.0.1:8080");
    assert_eq!(r.len(), PROBE_REQUEST_BYTES);
    assert!(r.starts_with("OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"), "{r}");
    assert!(r.contains("\r\nConnection: close\r\n") && r.ends_with(")\r\n\r\n"), "{r}");
    let long = "h".repeat(PROBE_REQUEST_BYTES);
    let r = options_request(&long);
    assert!(r.ends_with("User-Agent: lb-probe\r\n\r\n") && r.contains("close"), "{r}");
}

#[tokio::test]
async fn the_member_sends_small_segments_to_a_probe() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (r, accepted) =
        tokio::join!(probe(addr, &ProbeKind::Connect, Duration::from_secs(5)), l.accept());
    assert!(r.ok, "{r:?}");
    let (s, _) = accepted.unwrap();
    // The member's send MSS follows what the probe advertised (less TCP options).
    let mss = socket2::SockRef::from(&s).tcp_mss().unwrap();
    assert!(mss <= PROBE_MSS, "member sends segments of {mss} bytes");
}

/// nginx answers `OPTIONS *` with a 400 as soon as it has read the request line, then reads
/// and drops the rest of the request before it closes (lingering close). Once a connection
/// has sent data, the member's kernel delays its acknowledgements: chunks sent after the
/// answer would be acknowledged late and read as lost packets. The probe stops sending when
/// the answer has come, and the member is healthy.
#[tokio::test]
async fn a_member_that_answers_after_the_request_line_is_healthy() {
    use std::io::{Read, Write};
    // On a thread of its own, so that it answers while the probe is still sending.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let (mut b, mut head) = ([0u8; 512], Vec::new());
            while !head.windows(2).any(|w| w == b"\r\n") {
                match s.read(&mut b) {
                    Ok(n @ 1..) => head.extend_from_slice(&b[..n]),
                    _ => break,
                }
            }
            let answer =
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            let _ = s.write_all(answer);
            let _ = s.shutdown(std::net::Shutdown::Write);
            while let Ok(1..) = s.read(&mut b) {}
        }
    });
    for ack_wait in [ACK_WAIT, ACK_WAIT_PROMPT] {
        let kind = ProbeKind::Http { authority: addr.to_string(), requests: 3, ack_wait };
        let r = probe(addr, &kind, Duration::from_secs(2)).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.late_acks, Some(0), "{r:?}");
    }
}

/// Under load lb's event loop comes back to a probe late: the time from the connect call to
/// the probe seeing the connection established is then lb's, not the member's. A task that
/// holds the probe's thread for 20 ms while the handshake completes stands in for that load
/// (a current-thread runtime, as lb pinned to one core runs); the probe's connect time is
/// still the handshake's.
#[tokio::test(flavor = "current_thread")]
async fn a_busy_event_loop_does_not_slow_the_probes_connect() {
    const HOLD: Duration = Duration::from_millis(20);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // Runs once the probe has sent its SYN and waits: the runtime polls the test's own
    // future first, then the tasks it spawned.
    let busy = tokio::spawn(async {
        let t = std::time::Instant::now();
        while t.elapsed() < HOLD {
            std::hint::spin_loop();
        }
    });
    let r = probe(addr, &ProbeKind::Connect, Duration::from_secs(5)).await;
    busy.await.unwrap();
    assert!(r.ok, "{r:?}");
    // The loop was held inside the probe, so lb's clock alone would say 20 ms or more.
    assert!(r.took >= HOLD, "the busy task did not run inside the probe: {r:?}");
    let connect = r.connect.unwrap();
    assert!(connect < Duration::from_millis(5), "{r:?}");
    drop(l);
}

/// The same for the answer: a task holds the probe's thread for 50 ms from just before the
/// member answers, so lb reads the answer 50 ms late; the probe's answer time is still the
/// member's. The member, on a thread of its own, says when it has the whole request, answers
/// once the busy task has started, and reports how long it took itself (on a busy host its
/// thread can wait for a CPU too: that delay is the member's, and the probe may count it).
#[tokio::test(flavor = "current_thread")]
async fn a_busy_event_loop_does_not_slow_the_probes_answer() {
    use std::io::{Read, Write};
    const HOLD: Duration = Duration::from_millis(50);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (have_request, request_in) = tokio::sync::oneshot::channel::<()>();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let (took_tx, took_rx) = std::sync::mpsc::channel::<Duration>();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let (mut b, mut head) = ([0u8; 512], Vec::new());
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(n @ 1..) => head.extend_from_slice(&b[..n]),
                _ => return,
            }
        }
        let t = std::time::Instant::now();
        let _ = have_request.send(());
        let _ = go_rx.recv();
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        let _ = took_tx.send(t.elapsed());
        while let Ok(1..) = s.read(&mut b) {}
    });
    let busy = tokio::spawn(async move {
        let _ = request_in.await;
        let _ = go.send(());
        let t = std::time::Instant::now();
        while t.elapsed() < HOLD {
            std::hint::spin_loop();
        }
    });
    let kind = ProbeKind::Http { authority: addr.to_string(), requests: 1, ack_wait: ACK_WAIT };
    let r = probe(addr, &kind, Duration::from_secs(5)).await;
    busy.await.unwrap();
    let member_took = took_rx.recv().unwrap();
    assert!(r.ok, "{r:?}");
    assert!(r.took >= HOLD, "the busy task did not run inside the probe: {r:?}");
    // What the member took, and a little for its reading of the request's last chunk.
    let allowed = member_took + Duration::from_millis(5);
    assert!(r.answers < allowed, "the member took {member_took:?}: {r:?}");
    assert!(allowed < HOLD, "the member itself took most of the hold: {member_took:?}");
}

#[tokio::test]
async fn connect_http_and_silent_members() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let t = Duration::from_millis(300);
    // Accepts but answers nothing: a connect probe passes, an HTTP probe does not.
    let r = probe(addr, &ProbeKind::Connect, t).await;
    assert!(r.ok && r.connect.is_some() && r.late_acks.is_none(), "{r:?}");
    let http = ProbeKind::Http { authority: addr.to_string(), requests: 1, ack_wait: ACK_WAIT };
    let r = probe(addr, &http, t).await;
    assert!(!r.ok && r.detail.contains("no answer"), "{r:?}");
    // Answers: passes, whatever the status; a train of three passes too, one connection
    // each. (The earlier probes' connections wait in the backlog first; they carry nothing.)
    let accepted = Arc::new(AtomicU32::new(0));
    let count = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            answer_heads(s, b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 2\r\n\r\nno")
                .await;
        }
    });
    let r = probe(addr, &http, t).await;
    assert!(r.ok, "{r:?}");
    // Loopback acknowledges each chunk at once.
    assert_eq!(r.late_acks, Some(0), "{r:?}");
    let before = accepted.load(Ordering::Relaxed);
    let train = ProbeKind::Http { authority: addr.to_string(), requests: 3, ack_wait: ACK_WAIT };
    let r = probe(addr, &train, t).await;
    assert!(r.ok && r.requests == 3, "{r:?}");
    assert_eq!(accepted.load(Ordering::Relaxed) - before, 3, "one connection per request");
    // Closed with resets: no connection of these probes waits in TIME_WAIT, on either side
    // (closing normally, the probe's side would, for a minute).
    assert_eq!(time_wait(addr.port()), 0);
    server.abort();
    // Nothing listening: refused at once. The port stays bound (without listening) through
    // the probe, so nothing else can take it meanwhile.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = held.local_addr().unwrap();
    let r = probe(closed, &ProbeKind::Connect, t).await;
    assert!(!r.ok && r.detail.starts_with("connect:"), "{r:?}");
}

/// The kernel's workqueue events, traced in a tracefs instance of the test's own (root), so
/// that the host's own tracing is left alone. Removed on drop.
struct WorkTrace(std::path::PathBuf);

impl WorkTrace {
    fn start() -> WorkTrace {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("lb-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let dir = std::path::Path::new("/sys/kernel/tracing/instances").join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("tracefs instance {dir:?}: {e}"));
        let t = WorkTrace(dir);
        std::fs::write(t.enable(), "1").unwrap();
        t
    }
    fn enable(&self) -> std::path::PathBuf {
        self.0.join("events/workqueue/workqueue_execute_start/enable")
    }
    fn read(&self) -> String {
        std::fs::read_to_string(self.0.join("trace")).unwrap()
    }
}

impl Drop for WorkTrace {
    fn drop(&mut self) {
        let _ = std::fs::write(self.enable(), "0");
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Probes ask the kernel for arrival stamps, but do not flip its host-wide switch for them
/// each time (see `tcp_info::stamp_arrivals`): each flip runs the kernel's `netstamp_clear`
/// work item, and 20 probes after the first run it at most twice (other processes on the host
/// may flip it too). A probe socket that asked on its own ran it about twice per probe.
#[tokio::test]
async fn probes_do_not_flip_the_kernels_timestamp_switch() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(answer_heads(s, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
        }
    });
    let http = ProbeKind::Http { authority: addr.to_string(), requests: 1, ack_wait: ACK_WAIT };
    let t = Duration::from_secs(2);
    // The first probe may turn the switch on: from then on lb holds it.
    assert!(probe(addr, &http, t).await.ok);
    let trace = WorkTrace::start();
    for _ in 0..20 {
        let r = probe(addr, &http, t).await;
        assert!(r.ok, "{r:?}");
    }
    let events = trace.read();
    let flips = events.matches("netstamp_clear").count();
    assert!(flips <= 2, "{flips} flips of the kernel's timestamp switch for 20 probes:\n{events}");
    server.abort();
}
