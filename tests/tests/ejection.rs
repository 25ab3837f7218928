//! Kernel-signal ejection with real faults on loopback: packet loss (nftables `numgen`), a SYN
//! black hole, a closed port. Needs root, CAP_BPF and nftables; CI runs it as root.
use lb_tests::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

fn ejecting_config(body: &str) -> String {
    config(&format!("[balancer.b.ejection]\nbase_time = \"1s\"\nprobation = \"1s\"\n{body}"))
        .replacen(
            "[[listener]]",
            "[telemetry]\nsource = \"ebpf\"\ninterval = \"100ms\"\n\n[[listener]]",
            1,
        )
}

async fn member_health(lb: &Lb, i: usize) -> serde_json::Value {
    let r = get(&format!("http://{}/health", lb.admin)).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("health json");
    v["balancers"][0]["members"][i].clone()
}

/// Bounded load: `workers` clients sending GETs until `stop` (at most `cap` each); every answer
/// must be a 200.
fn load(
    lb: &Lb,
    workers: usize,
    cap: usize,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (url, stop, ok) = (lb.url("/"), Arc::clone(&stop), Arc::clone(&ok));
        set.spawn(async move {
            let c = client();
            for _ in 0..cap {
                if stop.load(Relaxed) {
                    break;
                }
                let r = send(&c, http::Request::get(&url).body(full("")).unwrap())
                    .await
                    .expect("transport");
                assert_eq!(r.status, 200, "a GET failed: {}", r.text());
                ok.fetch_add(1, Relaxed);
            }
        });
    }
    set
}

#[tokio::test]
async fn lossy_member_is_ejected_fast_while_the_others_stay_clean() {
    let ms = [Member::start("a").await, Member::start("b").await, Member::start("c").await];
    let body = members(&[(&ms[0].url(), ""), (&ms[1].url(), ""), (&ms[2].url(), "")]);
    let lb = Lb::start(&ejecting_config(&body)).await;
    let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let mut workers = load(&lb, 6, 3000, Arc::clone(&stop), Arc::clone(&ok));
    // Load is flowing to every member before the fault.
    let flowing = eventually(Duration::from_secs(10), || async {
        ms.iter().all(|m| m.hits.load(Relaxed) > 50).then_some(())
    })
    .await;
    assert!(flowing.is_some());
    let port = ms[2].addr.port();
    let nft = Nft::new(&[format!("tcp dport {port} numgen random mod 100 < 20 drop")]);
    let fault = Instant::now();
    let ejected = eventually(Duration::from_secs(2), || async {
        let h = member_health(&lb, 2).await;
        (h["state"] == "ejected").then_some(h)
    })
    .await;
    let took = fault.elapsed();
    eprintln!("20% loss → ejected after {took:?}");
    let h = ejected.unwrap_or_else(|| panic!("not ejected within 2 s of sustained load"));
    let reason = h["reason"].as_str().unwrap_or("");
    assert!(["retransmit", "srtt", "probes failed"].iter().any(|w| reason.contains(w)), "{h}");
    assert_eq!(h["status"], "E", "{h}");
    // The kernel side saw the loss (it may be sampled just after the probes decided).
    let seen = eventually(Duration::from_secs(5), || async {
        (member_health(&lb, 2).await["kernel"]["retransmits"].as_u64() > Some(0)).then_some(())
    })
    .await;
    assert!(seen.is_some(), "no retransmit counted: {}", member_health(&lb, 2).await);
    // Keep the load on the others for a while after the ejection: still no GET may fail.
    let after = ok.load(Relaxed);
    let more = eventually(Duration::from_secs(10), || async {
        (ok.load(Relaxed) >= after + 300).then_some(())
    })
    .await;
    assert!(more.is_some(), "load stalled after the ejection");
    stop.store(true, Relaxed);
    while let Some(r) = workers.join_next().await {
        r.expect("a client GET failed");
    }
    drop(nft);
    for i in 0..2 {
        let h = member_health(&lb, i).await;
        assert_eq!(h["kernel"]["retransmits"], 0, "clean member {i} charged with retransmits: {h}");
        assert_eq!(h["state"], "healthy", "{h}");
    }
    lb.stop().await;
}

/// Keep GETs flowing (each must succeed, failed over to the healthy member) until member 0 is
/// ejected; its health entry then.
async fn until_first_ejected(lb: &Lb, what: &str) -> serde_json::Value {
    eventually(Duration::from_secs(10), || async {
        assert_eq!(get(&lb.url("/")).await.status, 200);
        let h = member_health(lb, 0).await;
        (h["state"] == "ejected").then_some(h)
    })
    .await
    .unwrap_or_else(|| panic!("{what} member never ejected"))
}

#[tokio::test]
async fn syn_black_hole_is_ejected_and_recovers() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    // a needs a new connection per request, so the black hole hits every request to it.
    let body = members(&[
        (&a.url(), "disablereuse = true\nconnectiontimeout = \"300ms\""),
        (&b.url(), ""),
    ]);
    let lb = Lb::start(&ejecting_config(&body)).await;
    let nft = Nft::new(&[format!("tcp dport {} tcp flags syn drop", a.addr.port())]);
    let fault = Instant::now();
    // Requests keep succeeding (failed over to b) while a's connects time out.
    let ejected = until_first_ejected(&lb, "black-holed").await;
    eprintln!("SYN black hole → ejected after {:?} (connectiontimeout 300 ms)", fault.elapsed());
    // What ejected it: failed connects, SYN retransmits, failed probes or requests, whichever
    // came first.
    let reason = ejected["reason"].as_str().unwrap();
    assert!(reason.contains("failed") || reason.contains("SYN retransmit"), "{ejected}");
    // The kernel side counts the aborted connects as failed (once lb gives up on them).
    let counted = eventually(Duration::from_secs(5), || async {
        let k = member_health(&lb, 0).await["kernel"].clone();
        (k["connect_failed"].as_u64() >= Some(1)).then_some(k)
    })
    .await
    .expect("no failed connect counted");
    assert!(counted["connect_failed"].as_u64() <= counted["connects"].as_u64(), "{counted}");
    // Fault removed: after its ejection and probation the member serves again.
    nft.clear();
    let before = a.hits.load(Relaxed);
    let back = eventually(Duration::from_secs(15), || async {
        assert_eq!(get(&lb.url("/")).await.status, 200);
        let h = member_health(&lb, 0).await;
        (a.hits.load(Relaxed) > before && h["state"] == "healthy").then_some(())
    })
    .await;
    assert!(back.is_some(), "member did not recover after the black hole was removed");
    lb.stop().await;
}

#[tokio::test]
async fn closed_port_is_ejected_and_recovers() {
    let mut a = Member::start("a").await;
    let b = Member::start("b").await;
    let lb = Lb::start(&ejecting_config(&members(&[(&a.url(), ""), (&b.url(), "")]))).await;
    a.kill().await;
    let fault = Instant::now();
    let ejected = until_first_ejected(&lb, "closed-port").await;
    eprintln!("closed port → ejected after {:?}", fault.elapsed());
    assert!(ejected["reason"].as_str().unwrap_or("").contains("failed"), "{ejected}");
    // The kernel side counted the refused connects and their resets (sampled every telemetry interval).
    let counted = eventually(Duration::from_secs(5), || async {
        let k = member_health(&lb, 0).await["kernel"].clone();
        (k["connect_failed"].as_u64() >= Some(1) && k["resets"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    assert!(counted.is_some(), "{}", member_health(&lb, 0).await);
    a.restart().await;
    let before = a.hits.load(Relaxed);
    let back = eventually(Duration::from_secs(15), || async {
        assert_eq!(get(&lb.url("/")).await.status, 200);
        (a.hits.load(Relaxed) > before).then_some(())
    })
    .await;
    assert!(back.is_some(), "member did not recover after it came back");
    lb.stop().await;
}

/// Never more than `max_ejected_percent` of a balancer ejected: with both members down, one is
/// ejected and the other is kept in rotation, marked sick (panic mode).
#[tokio::test]
async fn ejection_budget_keeps_the_rest_in_rotation() {
    let (d1, d2) = (dead_port().await, dead_port().await);
    let body = format!(
        "forcerecovery = false\n[balancer.b.ejection]\nbase_time = \"1s\"\n{}",
        members(&[(&format!("http://{d1}"), ""), (&format!("http://{d2}"), "")])
    );
    let cfg = config(&body).replacen(
        "[[listener]]",
        "[telemetry]\nsource = \"ebpf\"\ninterval = \"100ms\"\n\n[[listener]]",
        1,
    );
    let lb = Lb::start(&cfg).await;
    let states = eventually(Duration::from_secs(10), || async {
        assert_eq!(get(&lb.url("/")).await.status, 503);
        let s = [member_health(&lb, 0).await, member_health(&lb, 1).await];
        let st: Vec<String> =
            s.iter().map(|m| m["state"].as_str().unwrap_or("").to_owned()).collect();
        (st.contains(&"ejected".to_owned()) && st.contains(&"sick".to_owned())).then_some(s)
    })
    .await
    .expect("expected one ejected and one sick member");
    let sick = states.iter().find(|m| m["state"] == "sick").unwrap();
    assert!(sick["reason"].as_str().unwrap().contains("panic mode"), "{sick}");
    lb.stop().await;
}

/// A GET waiting on a member that stops answering (SIGSTOP) is sent to another member once the
/// member is ejected: a short delay, not a stall. A POST waiting on it is never replayed: it is
/// answered by that member once it runs again, and the other member never sees it.
#[tokio::test]
async fn a_stuck_get_moves_on_ejection_but_a_post_is_never_replayed() {
    use lb_tests::faults::Process;
    let c = Process::start("c");
    let a = Member::start("a").await;
    // byrequests with equal factors alternates c, a, c, a …
    let lb = Lb::start(&config(&members(&[(&c.url(), ""), (&a.url(), "")]))).await;
    assert_eq!(get(&lb.url("/")).await.member(), "c");
    assert_eq!(get(&lb.url("/")).await.member(), "a");
    c.stop();
    let post_url = lb.url("/order");
    let post = tokio::spawn(async move {
        let req = http::Request::post(&post_url).body(full("one order")).unwrap();
        send(&client(), req).await
    });
    let waiting = eventually(Duration::from_secs(5), || async {
        (member_health(&lb, 0).await["in_flight"] == 1).then_some(())
    })
    .await;
    if waiting.is_none() {
        let m = member_health(&lb, 0).await;
        let done = post.is_finished();
        let r = if done { Some(post.await.unwrap().map(|r| (r.status, r.member()))) } else { None };
        panic!("the POST never reached c: c is {m}; the POST got {r:?}");
    }
    assert_eq!(get(&lb.url("/")).await.member(), "a", "a's turn");
    // c's turn: this GET waits on the stopped member until it is ejected, then goes to a.
    let started = Instant::now();
    let r = get(&lb.url("/")).await;
    let took = started.elapsed();
    eprintln!("GET stuck on a stopped member answered by {} after {took:?}", r.member());
    assert_eq!((r.status, r.member()), (200, "a".to_owned()));
    assert!(took < Duration::from_secs(2), "stalled for {took:?}");
    assert_eq!(member_health(&lb, 0).await["state"], "ejected");
    if post.is_finished() {
        let r = post.await.unwrap().map(|r| (r.status, r.member(), r.text()));
        panic!("the POST must still wait on c, not be replayed or failed; it got {r:?}");
    }
    c.resume();
    let r = tokio::time::timeout(Duration::from_secs(10), post).await.expect("POST answered");
    let r = r.unwrap().expect("POST transport");
    assert_eq!((r.status, r.member()), (200, "c".to_owned()), "{}", r.text());
    // a answered its two GETs and the moved one; never the POST.
    assert_eq!(a.hits.load(Relaxed), 3);
    lb.stop().await;
}

/// The ejection log line and `lb health` carry the evidence: what was counted against the
/// member, the probes, and the score.
#[tokio::test]
async fn ejection_log_line_and_lb_health_show_the_evidence() {
    use lb_tests::process::LbProcess;
    let (a, dead) = (Member::start("a").await, dead_port().await);
    let dir = std::env::temp_dir().join(format!("lb-evidence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lb.toml");
    std::fs::write(&file, config(&members(&[(&a.url(), ""), (&format!("http://{dead}"), "")])))
        .unwrap();
    let lb = LbProcess::start(&file);
    let admin = lb.addr("admin listening");
    // Nothing but lb's own probes reaches the dead member: they fail, and it is ejected.
    let line = lb.line(&["member ejected"], Duration::from_secs(10)).expect("no ejection logged");
    for field in ["reason=", "score=", "probes_sent=", "probes_failed=", "last_probe="] {
        assert!(line.contains(field), "{field} missing from: {line}");
    }
    assert!(line.contains("probes failed"), "{line}");
    let out = std::process::Command::new(lb_bin())
        .args(["health", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("evidence: probes "), "{text}");
    assert!(text.contains("last probe: connect: Connection refused"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Probing adds a small, bounded load to a healthy member: one train of `IDLE_TRAIN`
/// `OPTIONS *` per `probe_interval` while lb sends it nothing (the health loop steps every
/// `STEP`, so a train may come up to one step late), none of it counted as traffic, and no
/// evidence against the member.
#[tokio::test]
async fn an_idle_healthy_member_is_probed_at_a_bounded_rate() {
    let (a, b) = (Member::start("a").await, Member::start("b").await);
    let cfg = config(&members(&[(&a.url(), ""), (&b.url(), "")]));
    let every = parse_config(&cfg).balancers[0].ejection.probe_interval;
    let train = f64::from(lb::health::IDLE_TRAIN);
    let lb = Lb::start(&cfg).await;
    let first = eventually(Duration::from_secs(5), || async {
        (a.probes.load(Relaxed) > 0).then(|| (a.probes.load(Relaxed), Instant::now()))
    })
    .await;
    let (p0, t0) = first.expect("the idle member was never probed");
    let window = Duration::from_secs(3);
    let _ = eventually(window * 2, || async { (t0.elapsed() >= window).then_some(()) }).await;
    let (n, took) = ((a.probes.load(Relaxed) - p0) as f64, t0.elapsed().as_secs_f64());
    let most = (took / every.as_secs_f64() + 1.0) * train;
    let least = (took / (every + lb::health::STEP).as_secs_f64() - 1.0) * train;
    assert!(n <= most, "{n} probe requests in {took:.2} s; at most {most:.0} allowed");
    assert!(n >= least, "{n} probe requests in {took:.2} s; at least {least:.0} expected");
    assert_eq!(a.hits.load(Relaxed), 0, "probes counted as requests");
    let m = member_health(&lb, 0).await;
    assert_eq!(m["state"], "healthy", "{m}");
    assert_eq!(m["evidence"]["probes"]["failed"], 0, "{m}");
    lb.stop().await;
}

/// Member 0's health entry once it has been probed ten times or more (one probe per
/// `probe_interval` while idle).
async fn probed_ten_times(lb: &Lb) -> serde_json::Value {
    let seen = eventually(Duration::from_secs(10), || async {
        let m = member_health(lb, 0).await;
        (m["evidence"]["probes"]["sent"].as_u64().unwrap_or(0) >= 10).then_some(m)
    })
    .await;
    seen.expect("the member was never probed ten times")
}

/// A real nginx member passes lb's probes. nginx answers `OPTIONS *` with a 400 as soon as it
/// has the request line; the probe's chunks after that answer were acknowledged late (a
/// connection that has sent data delays its acknowledgements), most probes of a healthy nginx
/// failed, and nginx members were held suspect and probed in bursts, or ejected.
#[tokio::test]
async fn a_real_nginx_member_passes_every_probe() {
    let nginx = lb_tests::nginx::Nginx::start("nginx");
    let other = Member::start("a").await;
    let lb = Lb::start(&config(&members(&[(&nginx.url(), ""), (&other.url(), "")]))).await;
    let answers = [get(&lb.url("/")).await.text(), get(&lb.url("/")).await.text()];
    assert!(answers.contains(&"nginx".to_owned()), "nginx serves through lb: {answers:?}");
    let m = probed_ten_times(&lb).await;
    // Every chunk a probe sent before nginx's answer was acknowledged in time: nginx gets the
    // prompt acknowledgement wait, and one late chunk is a loss. (nginx is a process of its
    // own: on a host whose CPUs are all busy, one probe in ten may time out.)
    assert_eq!(m["evidence"]["probes"]["late_chunks_usual"], 0.0, "{m}");
    assert!(m["evidence"]["probes"]["failed"].as_u64() <= Some(1), "{m}");
    assert_ne!(m["state"], "ejected", "{m}");
    lb.stop().await;
}

/// A member that answers `OPTIONS *` with a 400 and closes the connection, as nginx does, is
/// healthy: each probe request has a connection of its own. (When a probe's three requests
/// shared one connection, the second found it closed, every probe failed, and such a member
/// was marked sick.)
#[tokio::test]
async fn a_member_that_closes_after_refusing_options_star_stays_healthy() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let refusing = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut buf, mut head) = ([0u8; 4096], Vec::new());
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n @ 1..) => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbad";
                let _ = s.write_all(bad).await;
            });
        }
    });
    let other = Member::start("a").await;
    let lb =
        Lb::start(&config(&members(&[(&format!("http://{addr}"), ""), (&other.url(), "")]))).await;
    let m = probed_ten_times(&lb).await;
    assert_eq!(m["evidence"]["probes"]["failed"], 0, "{m}");
    assert_eq!(m["state"], "healthy", "{m}");
    lb.stop().await;
    refusing.abort();
}
