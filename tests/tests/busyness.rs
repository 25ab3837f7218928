//! bybusyness weighted by kernel latency: a member behind queueing delay (tc tbf on a veth pair
//! in a test namespace) gets measurably fewer requests than Apache's plain count gives it.
use lb_tests::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Share of `n` requests (from `workers` concurrent clients) that the slow member answered.
async fn slow_share(lb: &Lb, workers: usize, n: u64) -> f64 {
    let (slow, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (url, slow, done) = (lb.url("/"), Arc::clone(&slow), Arc::clone(&done));
        set.spawn(async move {
            let c = client();
            while done.fetch_add(1, Relaxed) < n {
                let r = send(&c, http::Request::get(&url).body(full("")).unwrap())
                    .await
                    .expect("transport");
                assert_eq!(r.status, 200, "{}", r.text());
                if r.member() == "slow" {
                    slow.fetch_add(1, Relaxed);
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("worker");
    }
    slow.load(Relaxed) as f64 / n as f64
}

#[tokio::test]
async fn bybusyness_avoids_the_member_with_queueing_delay() {
    let ns = Netns::create();
    // 4 Mbit/s out of the namespace, queueing up to 300 ms.
    ns.tbf("4mbit", "16kb", "300ms");
    let (child, slow_addr) = ns.member("slow", 16 * 1024);
    let _slow = ChildGuard(child);
    let fast = Member::start_with("fast", Some(16 * 1024)).await;
    // Cross traffic that does not go through lb fills the slow member's queue, as a congested
    // path would: lb's in-flight counts cannot see it, the kernel's RTT can.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut cross = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (url, stop) = (format!("http://{slow_addr}/"), Arc::clone(&stop));
        cross.spawn(async move {
            let c = client();
            for _ in 0..2000 {
                if stop.load(Relaxed) {
                    break;
                }
                let _ = send(&c, http::Request::get(&url).body(full("")).unwrap()).await;
            }
        });
    }
    // Ejection off: this test is about the methods' arithmetic, not about ejecting.
    let body = |method: &str| {
        format!(
            "lbmethod = \"{method}\"\n[balancer.b.ejection]\nenabled = false\n{}",
            members(&[(&format!("http://{slow_addr}"), ""), (&fast.url(), "")])
        )
    };
    let mut shares = Vec::new();
    for (method, source) in [("bybusyness", "off"), ("bybusyness", "ebpf"), ("heartbeat", "ebpf")] {
        let cfg = config(&body(method)).replacen(
            "[[listener]]",
            &format!("[telemetry]\nsource = \"{source}\"\ninterval = \"50ms\"\n\n[[listener]]"),
            1,
        );
        let lb = Lb::start(&cfg).await;
        // One request at a time: in-flight is 0 at every pick, so Apache's bybusyness falls back
        // to its byrequests score and alternates.
        slow_share(&lb, 1, 6).await;
        let share = slow_share(&lb, 1, 30).await;
        eprintln!(
            "{method}, telemetry {source}: slow member answered {:.1}% of requests",
            share * 100.0
        );
        shares.push(share);
        lb.stop().await;
    }
    stop.store(true, Relaxed);
    while cross.join_next().await.is_some() {}
    let (apache, weighted, heartbeat) = (shares[0], shares[1], shares[2]);
    // Agentless heartbeat: ready capacity estimated from the kernel (100 / latency weight).
    assert!(
        heartbeat < 0.25,
        "heartbeat estimate sent {:.1}% to the slow member",
        heartbeat * 100.0
    );
    assert!(apache >= 0.4, "plain counting should alternate, gave {:.1}%", apache * 100.0);
    assert!(
        weighted <= apache * 0.5,
        "kernel-weighted bybusyness sent {:.1}% to the slow member, plain Apache counting {:.1}%",
        weighted * 100.0,
        apache * 100.0
    );
}
