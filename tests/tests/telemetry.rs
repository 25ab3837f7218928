//! Real eBPF telemetry (these tests need root / CAP_BPF; CI runs them as root and they must not
//! be skipped: `source = "ebpf"` makes lb refuse to start rather than run without it).
use lb_tests::*;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

fn telemetry_config(body: &str) -> String {
    config(body).replacen(
        "[[listener]]",
        "[telemetry]\nsource = \"ebpf\"\ninterval = \"50ms\"\n\n[[listener]]",
        1,
    )
}

async fn health(lb: &Lb) -> serde_json::Value {
    let r = get(&format!("http://{}/health", lb.admin)).await;
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).expect("health json")
}

#[tokio::test]
async fn ebpf_counts_each_members_connections_and_nothing_else() {
    let ms = [Member::start("a").await, Member::start("b").await, Member::start("c").await];
    let dead = dead_port().await;
    let body = members(&[
        (&ms[0].url(), "disablereuse = true"),
        (&ms[1].url(), "disablereuse = true"),
        (&ms[2].url(), "disablereuse = true"),
        (&format!("http://{dead}"), ""),
    ]);
    let lb = Lb::start(&telemetry_config(&body)).await;
    // Connections to a member that do not come from lb must not be counted.
    let mut direct = Vec::new();
    for _ in 0..5 {
        direct.push(tokio::net::TcpStream::connect(ms[0].addr).await.unwrap());
    }
    for _ in 0..30 {
        let r = get(&lb.url("/")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    drop(direct);
    let through_lb = |i: usize| ms[i].conns.load(Relaxed) - if i == 0 { 5 } else { 0 };
    // Poll until the sampler has seen every connection and every close.
    let settled = eventually(Duration::from_secs(10), || async {
        let h = health(&lb).await;
        let m = h["balancers"][0]["members"].as_array().unwrap().clone();
        let ok = (0..3).all(|i| {
            let k = &m[i]["kernel"];
            k["connects"].as_u64() == Some(through_lb(i)) && k["live"].as_u64() == Some(0)
        }) && m[3]["kernel"]["connect_failed"].as_u64().unwrap_or(0) >= 1;
        ok.then_some(h)
    })
    .await;
    let h = match settled {
        Some(h) => h,
        None => {
            panic!("kernel counters never matched the connections made:\n{:#}", health(&lb).await)
        }
    };
    assert_eq!(h["source"], "ebpf");
    let m = h["balancers"][0]["members"].as_array().unwrap();
    let total: u64 = (0..3).map(|i| m[i]["kernel"]["connects"].as_u64().unwrap()).sum();
    assert_eq!(total, 30, "one connection per request (disablereuse)");
    for (i, member) in m.iter().enumerate().take(3) {
        let k = &member["kernel"];
        assert_eq!(k["established"], k["connects"], "member {i}: {k}");
        assert_eq!(k["connect_failed"], 0, "member {i}: {k}");
        assert_eq!(k["retransmits"], 0, "clean loopback member {i} retransmitted: {k}");
        assert!(k["connect_p50_us"].as_u64().is_some() && k["srtt_us"].as_f64().is_some(), "{k}");
        assert_eq!(member["source"], "ebpf");
    }
    // The closed port: the SYN was answered by a reset, the connect failed, nothing established.
    let k = &m[3]["kernel"];
    assert!(k["connects"].as_u64().unwrap() >= 1, "{k}");
    assert_eq!(k["established"], 0, "{k}");
    assert!(k["resets"].as_u64().unwrap() >= 1, "{k}");
    // Out of rotation: in error from the failed request, and ejected once the sampler sees it.
    assert!(matches!(m[3]["state"].as_str(), Some("unusable" | "ejected")), "{}", m[3]);
    assert_eq!(m[3]["status"], "E");
    lb.stop().await;
}

#[tokio::test]
async fn lb_health_cli_reports_the_ebpf_source() {
    let m = Member::start("m").await;
    let lb = Lb::start(&telemetry_config(&members(&[(&m.url(), "")]))).await;
    assert_eq!(get(&lb.url("/")).await.status, 200);
    let admin = lb.admin.to_string();
    let seen = eventually(Duration::from_secs(10), || {
        let admin = admin.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(lb_bin())
                    .args(["health", "--admin", &admin, "--json"])
                    .output()
            })
            .await
            .ok()?
            .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["balancers"][0]["members"][0]["kernel"]["established"] == 1).then_some(v)
        }
    })
    .await
    .expect("lb health --json never showed the connection");
    assert_eq!(seen["source"], "ebpf");
    assert_eq!(seen["balancers"][0]["members"][0]["source"], "ebpf");
    let admin = lb.admin.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(lb_bin()).args(["health", "--admin", &admin]).output()
    })
    .await
    .unwrap()
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("telemetry source: ebpf"), "{table}");
    for col in [
        "Connect p50/p99",
        "SRTT",
        "Retrans/s",
        "Failed",
        "In-flight",
        "Busyness",
        "Ready",
        "Source",
    ] {
        assert!(table.contains(col), "{col} missing:\n{table}");
    }
    lb.stop().await;
}

#[tokio::test]
async fn telemetry_off_says_so() {
    let m = Member::start("m").await;
    let cfg = config(&members(&[(&m.url(), "")])).replacen(
        "[[listener]]",
        "[telemetry]\nsource = \"off\"\n\n[[listener]]",
        1,
    );
    let lb = Lb::start(&cfg).await;
    assert_eq!(get(&lb.url("/")).await.status, 200);
    let h = health(&lb).await;
    assert_eq!(h["source"], "off");
    assert_eq!(h["why"], "turned off in the config");
    assert!(h["balancers"][0]["members"][0]["kernel"].is_null());
    lb.stop().await;
}
