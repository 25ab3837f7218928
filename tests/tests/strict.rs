//! Hostile and malformed requests, sent as raw bytes: each is refused with the status RFC 9110/
//! 9112 and Apache's limits call for, with a body saying why, and never reaches a member; bodies
//! that go bad midway get a 4xx (never 502) and do not poison the member's connection; slow
//! clients are cut off by `request_read_timeout` without delaying anyone else.
use lb_tests::*;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status code of a raw HTTP answer, and its body.
fn status_and_body(answer: &str) -> (u16, String) {
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// lb in front of one member, with `listener_extra` lines on the listener.
async fn setup(listener_extra: &str) -> (Member, Lb) {
    let m = Member::start("m").await;
    let cfg = config(&members(&[(&m.url(), "")]))
        .replace("access_log = false\n", &format!("access_log = false\n{listener_extra}\n"));
    let lb = Lb::start(&cfg).await;
    (m, lb)
}

const H: &str = "Host: x\r\n";

#[tokio::test]
async fn every_malformed_head_is_refused_with_its_status_and_never_reaches_a_member() {
    let (m, lb) = setup("limit_request_line = 200\nlimit_request_field_size = 300\nlimit_request_fields = 20\nlimit_request_body = 1000").await;
    let post = |h: &str| format!("POST /upload HTTP/1.1\r\n{H}{h}\r\n");
    let many = (0..21).map(|i| format!("X-{i}: v\r\n")).collect::<String>();
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "CL with TE",
            post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + "0\r\n\r\n",
            400,
        ),
        ("repeated CL", post("Content-Length: 1\r\nContent-Length: 1\r\n") + "a", 400),
        ("differing CL", post("Content-Length: 1\r\nContent-Length: 2\r\n") + "ab", 400),
        ("CL list", post("Content-Length: 1, 1\r\n") + "a", 400),
        ("CL sign", post("Content-Length: +1\r\n") + "a", 400),
        ("CL hex", post("Content-Length: 0x1\r\n") + "a", 400),
        ("TE identity", post("Transfer-Encoding: identity\r\n"), 400),
        ("TE case", post("Transfer-Encoding: Chunked\r\n") + "0\r\n\r\n", 400),
        ("TE not last", post("Transfer-Encoding: chunked, identity\r\n") + "0\r\n\r\n", 400),
        ("TE comma", post("Transfer-Encoding: ,chunked\r\n") + "0\r\n\r\n", 400),
        ("TE twice", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), 400),
        ("TE space colon", post("Transfer-Encoding : chunked\r\n") + "0\r\n\r\n", 400),
        ("TE vertical tab", post("Transfer-Encoding:\x0bchunked\r\n") + "0\r\n\r\n", 400),
        ("TE coding lb cannot pass", post("Transfer-Encoding: gzip, chunked\r\n"), 501),
        (
            "TE in HTTP/1.0",
            "POST /upload HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        ("no Host", "GET / HTTP/1.1\r\n\r\n".into(), 400),
        ("two Hosts", format!("GET / HTTP/1.1\r\n{H}{H}\r\n"), 400),
        ("Host with a path", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n".into(), 400),
        ("Host with userinfo space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n".into(), 400),
        ("space before colon", format!("GET / HTTP/1.1\r\n{H}X-A : 1\r\n\r\n"), 400),
        ("NUL in value", format!("GET / HTTP/1.1\r\n{H}X-A: a\0b\r\n\r\n"), 400),
        ("bare CR in value", format!("GET / HTTP/1.1\r\n{H}X-A: a\rb\r\n\r\n"), 400),
        ("control byte in name", format!("GET / HTTP/1.1\r\n{H}X-\x01A: 1\r\n\r\n"), 400),
        ("DEL in value", format!("GET / HTTP/1.1\r\n{H}X-A: a\x7fb\r\n\r\n"), 400),
        ("obs-fold", format!("GET / HTTP/1.1\r\n{H}X-A: a\r\n b\r\n\r\n"), 400),
        ("bare LF", "GET / HTTP/1.1\nHost: x\n\n".into(), 400),
        ("space in target", format!("GET /a b HTTP/1.1\r\n{H}\r\n"), 400),
        ("double space", format!("GET  / HTTP/1.1\r\n{H}\r\n"), 400),
        ("fragment in target", format!("GET /a#b HTTP/1.1\r\n{H}\r\n"), 400),
        ("bad percent", format!("GET /%zz HTTP/1.1\r\n{H}\r\n"), 400),
        ("non-ASCII target", format!("GET /\u{e9} HTTP/1.1\r\n{H}\r\n"), 400),
        ("asterisk for GET", format!("GET * HTTP/1.1\r\n{H}\r\n"), 400),
        ("relative target", format!("GET a HTTP/1.1\r\n{H}\r\n"), 400),
        ("HTTP/0.9", "GET /\r\n\r\n".into(), 400),
        ("HTTP/2.0 line", format!("GET / HTTP/2.0\r\n{H}\r\n"), 505),
        ("HTTP/1.2", format!("GET / HTTP/1.2\r\n{H}\r\n"), 505),
        ("version junk", format!("GET / HTTP/1.1x\r\n{H}\r\n"), 400),
        ("lowercase version", format!("GET / http/1.1\r\n{H}\r\n"), 400),
        ("CONNECT", format!("CONNECT x:443 HTTP/1.1\r\n{H}\r\n"), 405),
        ("method not a token", format!("G(T / HTTP/1.1\r\n{H}\r\n"), 400),
        ("no colon", format!("GET / HTTP/1.1\r\n{H}NoColon\r\n\r\n"), 400),
        ("request line over limit", format!("GET /{} HTTP/1.1\r\n{H}\r\n", "a".repeat(200)), 414),
        (
            "header line over limit",
            format!("GET / HTTP/1.1\r\n{H}X-A: {}\r\n\r\n", "a".repeat(300)),
            431,
        ),
        ("too many headers", format!("GET / HTTP/1.1\r\n{H}{many}\r\n"), 431),
        ("declared body over limit", post("Content-Length: 1001\r\n"), 413),
    ];
    for (what, req, want) in &cases {
        let answer = raw(lb.addr, req.as_bytes()).await;
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, *want, "{what}: {answer:?}");
        assert!(body.starts_with(&format!("{want} ")) && body.len() > 20, "{what}: body {body:?}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{what}: {answer:?}");
    }
    assert_eq!(m.hits.load(Relaxed), 0, "a refused request reached the member");
    // What the rules allow still goes through.
    let fine: Vec<(&str, String)> = vec![
        ("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n".into()),
        ("absolute form", format!("GET http://x/ HTTP/1.1\r\n{H}Connection: close\r\n\r\n")),
        (
            "OWS around values",
            format!(
                "POST /upload HTTP/1.1\r\n{H}Transfer-Encoding: \tchunked \r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            ),
        ),
        (
            "chunk extensions",
            format!(
                "POST /upload HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3;a=b;c=\"d e\"\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
            ),
        ),
        ("empty lines first", format!("\r\nGET / HTTP/1.1\r\n{H}Connection: close\r\n\r\n")),
        (
            "obs-text in a value",
            format!("GET / HTTP/1.1\r\n{H}X-A: caf\u{e9}\r\nConnection: close\r\n\r\n"),
        ),
    ];
    for (what, req) in &fine {
        let answer = raw(lb.addr, req.as_bytes()).await;
        assert_eq!(status_and_body(&answer).0, 200, "{what}: {answer:?}");
    }
    assert_eq!(m.hits.load(Relaxed), fine.len() as u64);
    lb.stop().await;
}

#[tokio::test]
async fn a_refused_request_in_a_pipeline_is_answered_in_order() {
    let (m, lb) = setup("").await;
    let req = format!(
        "GET /a HTTP/1.1\r\n{H}\r\nGET /b HTTP/1.1\r\n{H}X-A : 1\r\n\r\nGET /c HTTP/1.1\r\n{H}\r\n"
    );
    let answer = raw(lb.addr, req.as_bytes()).await;
    let first = answer.find("HTTP/1.1 200").expect("the first request answered");
    let second = answer.find("HTTP/1.1 400").expect("the second refused");
    assert!(first < second, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "nothing after the refusal: {answer}");
    assert_eq!(m.hits.load(Relaxed), 1);
    lb.stop().await;
}

/// What lb sends until it closes the connection (waiting at most 10 s), as text.
async fn until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Send a chunked upload whose body goes bad after `good` chunks; the answer.
async fn broken_upload(lb: &Lb, good: usize, bad: &str) -> String {
    let mut s = TcpStream::connect(lb.addr).await.expect("connect");
    let head = format!("POST /upload HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    for _ in 0..good {
        s.write_all(b"4\r\nabcd\r\n").await.expect("write chunk");
    }
    s.write_all(bad.as_bytes()).await.expect("write bad chunk");
    until_closed(&mut s).await
}

#[tokio::test]
async fn a_body_that_goes_bad_midway_gets_a_4xx_and_its_member_connection_is_dropped() {
    let (m, lb) = setup("limit_request_body = 100").await;
    let cases = [
        (2, "zz\r\nab\r\n0\r\n\r\n", 400),
        (2, "4 \r\nabcd\r\n0\r\n\r\n", 400),
        (1, "4;a=\"b\r\nabcd\r\n0\r\n\r\n", 400),
        (1, "4\r\nabcdEXTRA\r\n0\r\n\r\n", 400),
        (1, "11111111111111111\r\n", 400),
        (3, "60\r\n", 413),
    ];
    for (i, (good, bad, want)) in cases.iter().enumerate() {
        let answer = broken_upload(&lb, *good, bad).await;
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, *want, "{bad:?}: {answer}");
        assert!(body.len() > 20, "{bad:?}: a body says why: {body:?}");
        // The member never answered the broken upload, and its connection was not reused.
        let ok = get(&lb.url("/")).await;
        assert_eq!(ok.status, 200);
        // Each broken upload took the one idle connection (or a new one), which was then
        // closed: the GET after it needed a new one.
        assert_eq!(m.conns.load(Relaxed), i as u64 + 2, "{bad:?}: a connection was reused");
    }
    let member = lb.member("b", 0).await;
    assert_eq!(
        member["status"], "Ok",
        "a client's broken body is not the member's fault: {member}"
    );
    lb.stop().await;
}

#[tokio::test]
async fn slow_heads_are_cut_off_without_delaying_other_clients() {
    let (m, lb) =
        setup("request_read_timeout = \"header=1-2,MinRate=500 body=1,MinRate=500\"").await;
    // Two hundred clients that send part of a head and stop.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(lb.addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("write");
        slow.push(s);
    }
    let r = get(&lb.url("/")).await;
    assert_eq!(r.status, 200, "a normal request is served meanwhile");
    // ... before any slow head's time was up: none of them has an answer yet.
    for s in &slow {
        let mut b = [0u8; 1];
        let e = s.try_read(&mut b).expect_err("no answer to a slow head yet");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }
    // Each slow client gets 408 with a reason once its head time is up.
    for mut s in slow {
        let answer = until_closed(&mut s).await;
        let (status, body) = status_and_body(&answer);
        assert_eq!(status, 408, "{answer}");
        assert!(body.contains("request_read_timeout"), "{body}");
    }
    // A body that stalls midway gets 408 too.
    let mut s = TcpStream::connect(lb.addr).await.expect("connect");
    s.write_all(format!("POST /upload HTTP/1.1\r\n{H}Content-Length: 10\r\n\r\nabc").as_bytes())
        .await
        .expect("write");
    let answer = until_closed(&mut s).await;
    assert_eq!(status_and_body(&answer).0, 408, "{answer}");
    assert_eq!(m.hits.load(Relaxed), 2, "the normal request, and the stalled upload's head");
    lb.stop().await;
}

#[tokio::test]
async fn the_keepalive_wait_starts_when_the_answer_ends_not_before() {
    let (_m, lb) = setup("keepalive_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(lb.addr).await.expect("connect");
    // An answer that takes longer than the keep-alive timeout is not cut short.
    s.write_all(format!("GET /sleep/900 HTTP/1.1\r\n{H}\r\n").as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then the idle connection is closed quietly, at about the keep-alive timeout.
    let idle = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed in time")
        .expect("read");
    assert_eq!(n, 0, "closed without a word: {:?}", String::from_utf8_lossy(&buf[..n]));
    assert!(idle.elapsed() >= Duration::from_millis(250), "not before the timeout");
    lb.stop().await;
}

#[tokio::test]
async fn an_ambiguous_member_answer_is_a_502_and_never_forwarded() {
    let (addr, _t) = raw_member(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    let cfg = config(&format!("{}{NO_IDLE_PROBES}", members(&[(&format!("http://{addr}"), "")])));
    let lb = Lb::start(&cfg).await;
    let r = get(&lb.url("/")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("Content-Length"), "{}", r.text());
    lb.stop().await;
}

/// One answer on a kept-alive raw connection: its head and a body of its Content-Length.
async fn read_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:")?.trim().parse().ok()
                })
                .unwrap_or(0usize);
            if body.len() >= len {
                return text;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("no whole answer ({other:?}): {text:?}"),
        }
    }
}

/// A member that refuses an upgrade leaves an HTTP/1.1 connection: the heads that follow on it
/// are checked and timed like any other's.
#[tokio::test]
async fn after_a_refused_upgrade_heads_are_checked_and_timed_again() {
    let (m, lb) = setup("request_read_timeout = \"header=1\"").await;
    let upgrade =
        format!("GET /status/404 HTTP/1.1\r\n{H}Connection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    // A head lb refuses (hyper alone would take it): two Host headers.
    let mut s = TcpStream::connect(lb.addr).await.expect("connect");
    s.write_all(upgrade.as_bytes()).await.expect("write");
    let answer = read_answer(&mut s).await;
    assert_eq!(status_and_body(&answer).0, 404, "{answer}");
    s.write_all(b"GET /again HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n").await.expect("write");
    let answer = read_answer(&mut s).await;
    let (status, body) = status_and_body(&answer);
    assert_eq!(status, 400, "{answer}");
    assert!(body.contains("more than one Host header"), "{body}");
    assert_eq!(m.hits.load(Relaxed), 1, "only the upgrade request reached the member");
    // A head that stops midway gets 408 once its time (1 s) is up.
    let mut s = TcpStream::connect(lb.addr).await.expect("connect");
    s.write_all(upgrade.as_bytes()).await.expect("write");
    let answer = read_answer(&mut s).await;
    assert_eq!(status_and_body(&answer).0, 404, "{answer}");
    s.write_all(format!("GET / HTTP/1.1\r\n{H}X-Slow: ").as_bytes()).await.expect("write");
    let answer = until_closed(&mut s).await;
    assert_eq!(status_and_body(&answer).0, 408, "{answer}");
    lb.stop().await;
}

/// With no header time in `request_read_timeout`, a head still has the listener's `timeout`.
#[tokio::test]
async fn without_a_header_time_a_head_has_the_listener_timeout() {
    let (_m, lb) = setup("request_read_timeout = \"header=0\"\ntimeout = 1").await;
    let mut s = TcpStream::connect(lb.addr).await.expect("connect");
    s.write_all(format!("GET / HTTP/1.1\r\n{H}X-Slow: ").as_bytes()).await.expect("write");
    let started = Instant::now();
    let answer = until_closed(&mut s).await;
    assert_eq!(status_and_body(&answer).0, 408, "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the timeout");
    lb.stop().await;
}
