//! Active health checks (mod_proxy_hcheck's `hcmethod`, `hcinterval`, `hcpasses`, `hcfails`,
//! `hcuri`, and lb's `hcstatus`/`hcbody`): flag C set and cleared by checks in a row, no
//! traffic to a member in C, checks at the configured pace, over TLS for https members, kept
//! across a reload.
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lb_tests::certs::Pki;
use lb_tests::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// A member whose `/hc` answers with a status the test sets; it counts checks and requests.
struct Checked {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    checks: Arc<AtomicU64>,
    hits: Arc<AtomicU64>,
    /// The most checks it was answering at once.
    most_at_once: Arc<AtomicU64>,
    _task: tokio::task::JoinHandle<()>,
}

impl Checked {
    async fn start() -> Checked {
        Self::start_slow(Duration::ZERO).await
    }

    /// A member that takes `delay` to answer each check.
    async fn start_slow(delay: Duration) -> Checked {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let status = Arc::new(AtomicU16::new(200));
        let (checks, hits) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (most, now) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, c, h) = (status.clone(), checks.clone(), hits.clone());
        let (most_t, now_t) = (most.clone(), now.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = l.accept().await else { return };
                let (s, c, h) = (s.clone(), c.clone(), h.clone());
                let (most, now) = (most_t.clone(), now_t.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (s, c, h) = (s.clone(), c.clone(), h.clone());
                        let (most, now) = (most.clone(), now.clone());
                        async move {
                            let mut resp = http::Response::new(Full::new(Bytes::from("ok")));
                            resp.headers_mut().insert("x-member", "checked".parse().unwrap());
                            if req.uri().path() == "/hc" {
                                c.fetch_add(1, Relaxed);
                                most.fetch_max(now.fetch_add(1, Relaxed) + 1, Relaxed);
                                tokio::time::sleep(delay).await;
                                now.fetch_sub(1, Relaxed);
                                *resp.status_mut() =
                                    http::StatusCode::from_u16(s.load(Relaxed)).unwrap();
                            } else if !(req.method() == http::Method::OPTIONS && req.uri() == "*") {
                                h.fetch_add(1, Relaxed);
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Checked { addr, status, checks, hits, most_at_once: most, _task: task }
    }
}

async fn member_status(lb: &Lb, i: usize) -> serde_json::Value {
    lb.status().await["balancers"][0]["members"][i].clone()
}

/// Wait until member `i`'s flags contain (or lack) C; returns the report then.
async fn until_c(lb: &Lb, i: usize, set: bool) -> serde_json::Value {
    let got = eventually(Duration::from_secs(10), || async {
        let m = member_status(lb, i).await;
        (m["status"].as_str().unwrap_or("").contains('C') == set).then_some(m)
    })
    .await;
    got.unwrap_or_else(|| panic!("C never {}", if set { "set" } else { "cleared" }))
}

#[tokio::test]
async fn failing_checks_set_c_and_stop_traffic_passing_ones_bring_it_back() {
    let a = Checked::start().await;
    let b = Member::start("b").await;
    let (fails, passes) = (3, 2);
    let hc = format!(
        "hcmethod = \"GET11\"\nhcuri = \"/hc\"\nhcinterval = \"100ms\"\nhcfails = {fails}\nhcpasses = {passes}"
    );
    let a_url = format!("http://{}", a.addr);
    let lb = Lb::start(&config(&members(&[(&a_url, &hc), (&b.url(), "")]))).await;
    // Checks pass and traffic reaches both members.
    let first = eventually(Duration::from_secs(5), || async {
        (a.checks.load(Relaxed) >= 2).then_some(())
    })
    .await;
    assert!(first.is_some(), "no health check reached the member");
    for _ in 0..4 {
        assert_eq!(get(&lb.url("/")).await.status, 200);
    }
    assert!(a.hits.load(Relaxed) > 0);
    let m = member_status(&lb, 0).await;
    assert_eq!(m["check"]["ok"], true, "{m}");
    assert_eq!(m["check"]["method"], "GET11 /hc", "{m}");

    // The check starts failing: C after `fails` checks in a row (one more may have been on its
    // way when the status changed), and no more traffic.
    a.status.store(503, Relaxed);
    let at_flip = a.checks.load(Relaxed);
    let m = until_c(&lb, 0, true).await;
    let took = a.checks.load(Relaxed) - at_flip;
    assert!((fails..=fails + 1).contains(&took), "C after {took} checks, hcfails = {fails}");
    assert!(m["check"]["detail"].as_str().unwrap_or("").contains("status 503"), "{m}");
    assert!(m["last_error"]["message"].as_str().unwrap_or("").contains("health check failed"));
    // `lb status` shows the check under the member.
    let report: lb::status::StatusReport = serde_json::from_value(lb.status().await).unwrap();
    let table = lb::status::render_table(&report);
    assert!(table.contains("health check GET11 /hc"), "{table}");
    assert!(
        table.contains(&format!("{fails} failed in a row")) || table.contains("failed in a row"),
        "{table}"
    );
    let hits = a.hits.load(Relaxed);
    for _ in 0..10 {
        let r = get(&lb.url("/")).await;
        assert_eq!((r.status, r.member()), (200, "b".to_owned()));
    }
    assert_eq!(a.hits.load(Relaxed), hits, "a member in C got traffic");

    // It recovers: C cleared after `passes` checks in a row, and traffic returns.
    a.status.store(200, Relaxed);
    let at_flip = a.checks.load(Relaxed);
    until_c(&lb, 0, false).await;
    let took = a.checks.load(Relaxed) - at_flip;
    assert!(
        (passes..=passes + 1).contains(&took),
        "C cleared after {took} checks, hcpasses = {passes}"
    );
    for _ in 0..4 {
        get(&lb.url("/")).await;
    }
    assert!(a.hits.load(Relaxed) > hits, "no traffic after the checks passed");
    lb.stop().await;
}

#[tokio::test]
async fn a_tcp_check_of_a_closed_port_sets_c() {
    let b = Member::start("b").await;
    let refusing = dead_port().await;
    let dead = format!("http://{refusing}");
    let hc = "hcmethod = \"TCP\"\nhcinterval = \"100ms\"";
    let body = format!("{}{NO_IDLE_PROBES}", members(&[(&dead, hc), (&b.url(), "")]));
    let lb = Lb::start(&config(&body)).await;
    let m = until_c(&lb, 0, true).await;
    assert_eq!(m["check"]["method"], "TCP", "{m}");
    assert!(m["check"]["detail"].as_str().unwrap_or("").starts_with("connect:"), "{m}");
    assert_eq!(get(&lb.url("/")).await.member(), "b");
    lb.stop().await;
}

#[tokio::test]
async fn checks_come_at_the_configured_interval() {
    let a = Checked::start().await;
    let interval = Duration::from_millis(300);
    let hc = format!(
        "hcmethod = \"HEAD\"\nhcuri = \"/hc\"\nhcinterval = \"{}ms\"",
        interval.as_millis()
    );
    let lb = Lb::start(&config(&members(&[(&format!("http://{}", a.addr), &hc)]))).await;
    let started = eventually(Duration::from_secs(5), || async {
        (a.checks.load(Relaxed) > 0).then(|| (a.checks.load(Relaxed), Instant::now()))
    })
    .await;
    let (c0, t0) = started.expect("no check");
    let window = Duration::from_secs(3);
    let _ = eventually(window * 2, || async { (t0.elapsed() >= window).then_some(()) }).await;
    let (n, took) = ((a.checks.load(Relaxed) - c0) as f64, t0.elapsed().as_secs_f64());
    // Each check comes 0.9–1.1 intervals after the last, at the next health step.
    let (shortest, longest) = (
        interval.as_secs_f64() * 0.9,
        interval.as_secs_f64() * 1.1 + lb::health::STEP.as_secs_f64(),
    );
    let (least, most) = ((took / longest).floor() - 1.0, (took / shortest).ceil() + 1.0);
    assert!(n >= least && n <= most, "{n} checks in {took:.2} s; expected {least}..={most}");
    assert_eq!(a.hits.load(Relaxed), 0, "checks counted as traffic");
    lb.stop().await;
}

#[tokio::test]
async fn an_https_member_is_checked_over_tls() {
    let pki = Pki::new("hcheck");
    let leaf = pki.leaf("member", &["member.test"]);
    let m = Member::start_tls("secure", pki.server(&leaf, false)).await;
    let tls = format!("ca = \"{}\"\nserver_name = \"member.test\"", pki.ca_path().display());
    let cfg = |method: &str| {
        config(&format!(
            "[balancer.b.ejection]\nenabled = false\n[balancer.b.tls]\n{tls}\n[[balancer.b.member]]\nurl = \"https://{}\"\nhcmethod = \"{method}\"\nhcinterval = \"100ms\"\n",
            m.addr
        ))
    };
    // TCP on an https member is a TLS handshake.
    let lb = Lb::start(&cfg("TCP")).await;
    let shakes = eventually(Duration::from_secs(5), || async {
        (m.tls_ok.load(Relaxed) >= 3).then_some(())
    })
    .await;
    assert!(shakes.is_some(), "no TLS handshakes from health checks");
    let s = member_status(&lb, 0).await;
    assert_eq!(s["check"]["method"], "TCP (TLS handshake)", "{s}");
    assert_eq!(s["check"]["ok"], true, "{s}");
    lb.stop().await;
    // GET11 over TLS: requests reach the member with no client traffic at all.
    let lb = Lb::start(&cfg("GET11")).await;
    let before = m.hits.load(Relaxed);
    let got = eventually(Duration::from_secs(5), || async {
        (m.hits.load(Relaxed) >= before + 3).then_some(())
    })
    .await;
    assert!(got.is_some(), "no GET checks over TLS");
    assert_eq!(member_status(&lb, 0).await["check"]["ok"], true);
    lb.stop().await;
}

#[tokio::test]
async fn health_check_state_survives_a_reload_that_keeps_the_member() {
    let a = Checked::start().await;
    let b = Member::start("b").await;
    let hc = "hcmethod = \"GET\"\nhcuri = \"/hc\"\nhcinterval = \"100ms\"\nhcpasses = 3";
    let body = members(&[(&format!("http://{}", a.addr), hc), (&b.url(), "")]);
    let lb = Lb::start(&config(&body)).await;
    a.status.store(500, Relaxed);
    let before = until_c(&lb, 0, true).await;
    let sent = before["check"]["sent"].as_u64().unwrap_or(0);
    lb.handle.reload(parse_config(&config(&format!("# reloaded\n{body}")))).await.expect("reload");
    let after = member_status(&lb, 0).await;
    assert!(after["status"].as_str().unwrap_or("").contains('C'), "C lost in the reload: {after}");
    assert_eq!(after["id"], before["id"]);
    // The checks go on from where they were, and still bring it back.
    a.status.store(200, Relaxed);
    let back = until_c(&lb, 0, false).await;
    assert!(back["check"]["sent"].as_u64().unwrap_or(0) > sent, "{back}");
    lb.stop().await;
}

#[tokio::test]
async fn a_slow_check_is_never_doubled() {
    // Each check takes longer than the interval: they run one after the other.
    let a = Checked::start_slow(Duration::from_millis(350)).await;
    let hc = "hcmethod = \"GET11\"\nhcuri = \"/hc\"\nhcinterval = \"100ms\"";
    let lb = Lb::start(&config(&members(&[(&format!("http://{}", a.addr), hc)]))).await;
    let enough = eventually(Duration::from_secs(10), || async {
        (a.checks.load(Relaxed) >= 4).then_some(())
    })
    .await;
    assert!(enough.is_some(), "checks stopped");
    assert_eq!(a.most_at_once.load(Relaxed), 1, "two checks of one member at once");
    lb.stop().await;
}

#[tokio::test]
async fn a_tcp_member_is_checked_with_a_connect() {
    use lb_tests::l4::{Mode, TcpMember, tcp_config};
    let up = TcpMember::start("up", Mode::Echo, false).await;
    let refusing = dead_port().await;
    let dead = format!("tcp://{refusing}");
    let hc = "hcmethod = \"TCP\"\nhcinterval = \"100ms\"";
    let body = format!(
        "[[balancer.b.member]]\nurl = \"{}\"\n{hc}\n[[balancer.b.member]]\nurl = \"{dead}\"\n{hc}\n",
        up.url()
    );
    let lb = Lb::start(&tcp_config("", &body)).await;
    let m = until_c(&lb, 1, true).await;
    assert!(m["check"]["detail"].as_str().unwrap_or("").starts_with("connect:"), "{m}");
    let ok = eventually(Duration::from_secs(5), || async {
        let m = member_status(&lb, 0).await;
        (m["check"]["ok"] == true && m["check"]["method"] == "TCP").then_some(())
    })
    .await;
    assert!(ok.is_some(), "{}", member_status(&lb, 0).await);
    lb.stop().await;
}
