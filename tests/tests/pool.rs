//! Member connection pools: keep-alive reuse and Apache's max / acquire / ttl / disablereuse.
use lb_tests::*;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

async fn sequential(lb: &Lb, path: &str, n: usize) {
    let c = client();
    for _ in 0..n {
        let r = send(&c, http::Request::get(lb.url(path)).body(full("")).unwrap()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test]
async fn keepalive_connections_are_reused() {
    let m = Member::start("m").await;
    let lb = Lb::start(&config(&members(&[(&m.url(), "")]))).await;
    sequential(&lb, "/", 20).await;
    assert_eq!(m.hits.load(Relaxed), 20);
    assert_eq!(
        m.conns.load(Relaxed),
        1,
        "20 sequential requests should share one member connection"
    );
    lb.stop().await;
}

#[tokio::test]
async fn disablereuse_opens_a_connection_per_request() {
    let m = Member::start("m").await;
    let lb = Lb::start(&config(&members(&[(&m.url(), "disablereuse = true")]))).await;
    sequential(&lb, "/", 5).await;
    assert_eq!(m.conns.load(Relaxed), 5);
    lb.stop().await;
}

#[tokio::test]
async fn ttl_retires_idle_connections() {
    let m = Member::start("m").await;
    let lb = Lb::start(&config(&members(&[(&m.url(), "ttl = \"200ms\"")]))).await;
    sequential(&lb, "/", 3).await;
    assert_eq!(m.conns.load(Relaxed), 1, "within the ttl the connection is reused");
    // Once the connection has been idle for longer than its ttl, the next request opens a new
    // one. (Waiting out the ttl is the behaviour under test, so this waits longer than it.)
    let mut renewed = None;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sequential(&lb, "/", 1).await;
        if m.conns.load(Relaxed) >= 2 {
            renewed = Some(());
            break;
        }
    }
    assert!(renewed.is_some(), "the pooled connection was never retired");
    lb.stop().await;
}

#[tokio::test]
async fn max_and_acquire_bound_connections_in_use() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let body = members(&[(&a.url(), "max = 1\nacquire = \"100ms\""), (&b.url(), "")]);
    let lb = Lb::start(&config(&format!("lbmethod = \"bybusyness\"\n{body}"))).await;
    // Hold a's only connection with a slow request.
    let slow_url = lb.url("/sleep/1500");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    let held = eventually(Duration::from_secs(5), || async {
        (lb.member("b", 0).await["busy"].as_u64() == Some(1)).then_some(())
    })
    .await;
    assert!(held.is_some());
    // Concurrent requests cannot get a connection to a within `acquire`; they go to b, and a
    // is not put in error for being busy.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = lb.url("/");
        tasks.spawn(async move { get(&url).await });
    }
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(slow.await.unwrap().member(), "a");
    assert_eq!(a.conns.load(Relaxed), 1, "max = 1 allows one connection to a");
    assert_eq!(lb.member("b", 0).await["status"], "Ok");
    lb.stop().await;

    // With a single member, an exhausted pool is a 503 that says so.
    let lb = Lb::start(&config(&members(&[(&a.url(), "max = 1\nacquire = \"100ms\"")]))).await;
    let slow_url = lb.url("/sleep/1500");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    let held = eventually(Duration::from_secs(5), || async {
        (lb.member("b", 0).await["busy"].as_u64() == Some(1)).then_some(())
    })
    .await;
    assert!(held.is_some());
    let r = get(&lb.url("/")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("no free connection") && r.text().contains("max = 1"),
        "{}",
        r.text()
    );
    assert_eq!(slow.await.unwrap().status, 200);
    lb.stop().await;
}

#[tokio::test]
async fn ipv6_listener_and_member() {
    let m = Member::start_v6("v6").await;
    let cfg = config(&members(&[(&m.url(), "")])).replacen(
        "name = \"web\"\nbind = \"127.0.0.1:0\"",
        "name = \"web\"\nbind = \"[::1]:0\"",
        1,
    );
    let lb = Lb::start(&cfg).await;
    assert!(lb.addr.is_ipv6());
    let r = get(&lb.url("/headers")).await;
    assert_eq!((r.status, r.member().as_str()), (200, "v6"));
    assert!(r.text().to_lowercase().contains("x-forwarded-for: ::1\n"), "{}", r.text());
    assert!(r.text().contains(&format!("host: {}", m.addr)), "{}", r.text());
    lb.stop().await;
}

/// A pool grown by a burst shrinks back once the burst is over: every 5 s lb closes half of the
/// idle member connections that no request needed in the last 5 s.
#[tokio::test]
async fn idle_connections_nobody_needs_are_closed_half_at_a_time() {
    const BURST: u64 = 8;
    let m = Member::start("m").await;
    let lb = Lb::start(&config(&members(&[(&m.url(), "")]))).await;
    // Requests at once, each long enough that none can reuse another's connection.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let url = lb.url("/sleep/300");
        set.spawn(async move { get(&url).await.status });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.expect("request"), 200);
    }
    assert_eq!(m.open.load(Relaxed), BURST, "one member connection per request, kept idle");
    // The first purge after the burst closes half (at most one period passes with the burst
    // in it, then one with nothing), and later ones the rest.
    let halved = eventually(Duration::from_secs(12), || async {
        (m.open.load(Relaxed) <= BURST / 2).then_some(())
    })
    .await;
    assert!(halved.is_some(), "still {} idle member connections", m.open.load(Relaxed));
    assert!(m.open.load(Relaxed) > 0, "halved, not all closed at once");
    let drained =
        eventually(Duration::from_secs(25), || async { (m.open.load(Relaxed) == 0).then_some(()) })
            .await;
    assert!(drained.is_some(), "still {} idle member connections", m.open.load(Relaxed));
    lb.stop().await;
}

/// Sockets of this process connected to `port` that the peer has closed and this side has not
/// (CLOSE_WAIT, state 08 in /proc/net/tcp).
fn close_wait_to(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let remote = format!(":{port:04X}");
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2].ends_with(&remote) && f[3] == "08"
        })
        .count()
}

#[tokio::test]
async fn connections_the_member_closed_while_idle_are_let_go() {
    // A member that answers once per connection, offering keep-alive, and closes the connection
    // a moment later (its keep-alive timeout), when lb has put it back in its pool. Nothing
    // drives an idle pooled connection, so lb notices at its next look.
    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
    let (addr, _member) = raw_member_closing_after(reply, Duration::from_millis(300)).await;
    let lb = Lb::start(&config(&members(&[(&format!("http://{addr}"), "")]))).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = lb.url("/");
        set.spawn(async move { get(&url).await.status });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.expect("request"), 200);
    }
    let closed = eventually(Duration::from_secs(2), || async {
        (close_wait_to(addr.port()) > 0).then_some(())
    })
    .await;
    assert!(closed.is_some(), "the member's close never reached lb's pooled connections");
    // Within one purge period (5 s) and a margin, none is left half-closed.
    let gone = eventually(Duration::from_secs(8), || async {
        (close_wait_to(addr.port()) == 0).then_some(())
    })
    .await;
    assert!(gone.is_some(), "{} member connections left in CLOSE_WAIT", close_wait_to(addr.port()));
    lb.stop().await;
}

/// Idle member connections are reused newest first: once a burst has left several idle, one
/// request after another goes over the same connection (the one each hands back), and the
/// others stay unused, for the purge to close.
#[tokio::test]
async fn the_newest_idle_connection_is_reused_first() {
    let m = Member::start("m").await;
    let lb = Lb::start(&config(&members(&[(&m.url(), "")]))).await;
    let port = |r: &Reply| r.headers["x-client-port"].to_str().expect("port").to_owned();
    // Requests at once, each long enough that none can reuse another's connection.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let url = lb.url("/sleep/300");
        set.spawn(async move { get(&url).await });
    }
    let mut burst = std::collections::HashSet::new();
    while let Some(r) = set.join_next().await {
        burst.insert(port(&r.expect("request")));
    }
    assert_eq!(burst.len(), 3, "one member connection per request of the burst: {burst:?}");
    let c = client();
    let mut after = Vec::new();
    for _ in 0..6 {
        let r = send(&c, http::Request::get(lb.url("/")).body(full("")).unwrap()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        after.push(port(&r));
    }
    assert!(burst.contains(&after[0]), "{after:?} came over a connection of its own");
    assert!(after.iter().all(|p| *p == after[0]), "sequential requests took turns: {after:?}");
    lb.stop().await;
}
