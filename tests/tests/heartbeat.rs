//! The heartbeat method: mod_heartbeat datagrams (UDP) and POSTs shift the distribution as the
//! spec's weighted-random-by-ready rule says; without heartbeats lb estimates ready capacity.
use lb_tests::*;
use std::time::Duration;

fn hb_config(body: &str) -> String {
    config(&format!("lbmethod = \"heartbeat\"\n{body}")).replacen(
        "[[listener]]",
        "[heartbeat]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]",
        1,
    )
}

/// Spec: pick uniform in [0, openslots], walk ranges [c, c + ready], the later member wins a
/// shared boundary. The first member's share of picks:
fn first_share(ready_a: u64, ready_b: u64) -> f64 {
    let open = ready_a + ready_b;
    // a wins picks 0..ready_a-1; pick ready_a is the shared boundary, won by b.
    ready_a as f64 / (open + 1) as f64
}

/// Apache's rule for a record's ready figure.
fn effective(ready: u64, busy: u64) -> u64 {
    if busy == 0 && ready > 0 { ready / 4 } else { ready }
}

async fn share_of(lb: &Lb, name: &str, n: usize) -> f64 {
    let c = client();
    let mut hits = 0;
    for _ in 0..n {
        let r = send(&c, http::Request::get(lb.url("/")).body(full("")).unwrap()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        hits += usize::from(r.member() == name);
    }
    hits as f64 / n as f64
}

async fn udp_beat(to: std::net::SocketAddr, body: &str) {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(body.as_bytes(), to).await.unwrap();
}

/// Wait until lb has taken the beats in (the health report shows the ready figure).
async fn until_ready(lb: &Lb, i: usize, ready: u64) {
    let seen = eventually(Duration::from_secs(5), || async {
        let r = get(&format!("http://{}/health", lb.admin)).await;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        (v["balancers"][0]["members"][i]["heartbeat_ready"].as_u64() == Some(ready)).then_some(())
    })
    .await;
    assert!(seen.is_some(), "heartbeat for member {i} not taken in");
}

fn assert_near(got: f64, want: f64, n: usize, what: &str) {
    // Four standard deviations of a binomial share.
    let tol = 4.0 * (want * (1.0 - want) / n as f64).sqrt() + 0.01;
    assert!((got - want).abs() <= tol, "{what}: share {got:.3}, expected {want:.3} ± {tol:.3}");
}

#[tokio::test]
async fn udp_heartbeats_shift_the_distribution() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let lb = Lb::start(&hb_config(&members(&[(&a.url(), ""), (&b.url(), "")]))).await;
    let hb = lb.heartbeat.expect("heartbeat listener");
    let n = 400;
    udp_beat(hb, &format!("v=1&ready=90&busy=10&port={}", a.addr.port())).await;
    udp_beat(hb, &format!("v=1&ready=10&busy=10&port={}&extra=ignored", b.addr.port())).await;
    until_ready(&lb, 0, 90).await;
    until_ready(&lb, 1, 10).await;
    assert_near(share_of(&lb, "a", n).await, first_share(90, 10), n, "a with ready 90 vs 10");
    // The members report the opposite: the distribution follows.
    udp_beat(hb, &format!("v=1&ready=10&busy=10&port={}", a.addr.port())).await;
    udp_beat(hb, &format!("v=1&ready=90&busy=10&port={}", b.addr.port())).await;
    until_ready(&lb, 0, 10).await;
    assert_near(share_of(&lb, "a", n).await, first_share(10, 90), n, "a with ready 10 vs 90");
    // busy = 0: a server that just started counts a quarter of its ready slots.
    udp_beat(hb, &format!("v=1&ready=80&busy=0&port={}", a.addr.port())).await;
    udp_beat(hb, &format!("v=1&ready=20&busy=5&port={}", b.addr.port())).await;
    until_ready(&lb, 0, effective(80, 0)).await;
    until_ready(&lb, 1, 20).await;
    assert_near(
        share_of(&lb, "a", n).await,
        first_share(effective(80, 0), 20),
        n,
        "busy=0 quarter rule",
    );
    lb.stop().await;
}

#[tokio::test]
async fn heartbeats_by_http_post_count_the_same() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let lb = Lb::start(&hb_config(&members(&[(&a.url(), ""), (&b.url(), "")]))).await;
    let c = client();
    for (m, ready) in [(&a, 95), (&b, 5)] {
        let body = format!("v=1&ready={ready}&busy=3&port={}", m.addr.port());
        let req =
            http::Request::post(format!("http://{}/heartbeat", lb.admin)).body(full(body)).unwrap();
        assert_eq!(send(&c, req).await.unwrap().status, 204);
    }
    let bad = http::Request::post(format!("http://{}/heartbeat", lb.admin))
        .body(full("v=9&ready=1&busy=1"))
        .unwrap();
    let r = send(&c, bad).await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("version"), "{}", r.text());
    let n = 400;
    assert_near(share_of(&lb, "a", n).await, first_share(95, 5), n, "a with ready 95 vs 5");
    lb.stop().await;
}

#[tokio::test]
async fn without_heartbeats_ready_is_estimated_not_refused() {
    // Apache answers 503 when no member has a heartbeat; lb estimates ready capacity instead
    // (100 per unit of loadfactor, shrunk by kernel latency, minus in-flight).
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let cfg = hb_config(&members(&[(&a.url(), "loadfactor = 3"), (&b.url(), "")])).replacen(
        "[[listener]]",
        "[telemetry]\nsource = \"off\"\n\n[[listener]]",
        1,
    );
    let lb = Lb::start(&cfg).await;
    let n = 400;
    // Without telemetry every latency weight is 1, so ready is 300 and 100.
    assert_near(share_of(&lb, "a", n).await, first_share(300, 100), n, "estimated 300 vs 100");
    lb.stop().await;
}
