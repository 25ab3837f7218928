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
    // (Test members count only connections that carried a request: the direct ones carried none.)
    let through_lb = |i: usize| ms[i].conns.load(Relaxed);
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
        assert!(k["connect_p50_us"].as_u64() > Some(0) && k["srtt_us"].as_f64() > Some(0.0), "{k}");
        assert_eq!(member["source"], "ebpf");
    }
    // The closed port: the SYN was answered by a reset, the connect failed, nothing established.
    let k = &m[3]["kernel"];
    assert!(k["connects"].as_u64().unwrap() >= 1, "{k}");
    assert_eq!(k["established"], 0, "{k}");
    assert!(k["resets"].as_u64().unwrap() >= 1, "{k}");
    // Out of rotation: in error from the failed request (and suspect, or ejected, as its probes
    // fail).
    assert_ne!(m[3]["state"], "healthy", "{}", m[3]);
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

fn tcp_info_config(body: &str) -> String {
    config(body).replacen(
        "[[listener]]",
        "[telemetry]\nsource = \"tcp_info\"\ninterval = \"100ms\"\n\n[[listener]]",
        1,
    )
}

/// Where BPF is not used, TCP_INFO of lb's own member connections feeds the same snapshot.
#[tokio::test]
async fn tcp_info_feeds_the_same_snapshot() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    // No idle probes: a probe's 16 packets see the loss sooner than the traffic does, and once
    // probes had ejected b (in one CI run, before any of the traffic's segments to b was
    // lost), no traffic went to b for its retransmits to show. Without them the suspicion
    // comes from the traffic's own retransmits, and probes only confirm it.
    let body = format!(
        "[balancer.b.ejection]\nbase_time = \"1s\"\nprobe_interval = \"0s\"\n{}",
        members(&[(&a.url(), ""), (&b.url(), "")])
    );
    let lb = Lb::start(&tcp_info_config(&body)).await;
    for _ in 0..20 {
        assert_eq!(get(&lb.url("/")).await.status, 200);
    }
    let h = eventually(Duration::from_secs(5), || async {
        let h = health(&lb).await;
        let ready = (0..2).all(|i| {
            let k = &h["balancers"][0]["members"][i]["kernel"];
            k["srtt_us"].as_f64().is_some() && k["connect_p50_us"].as_u64().is_some()
        });
        ready.then_some(h)
    })
    .await
    .expect("TCP_INFO never filled the snapshot");
    assert_eq!(h["source"], "tcp_info");
    assert!(h["why"].as_str().unwrap().contains("TCP_INFO"), "{}", h["why"]);
    for i in 0..2 {
        let m = &h["balancers"][0]["members"][i];
        let k = &m["kernel"];
        assert_eq!(m["source"], "tcp_info");
        // Each request came through lb on a new connection (get() opens one per call to lb, but
        // lb pools its member connections): at least one connect per member, all established.
        assert!(k["connects"].as_u64().unwrap() >= 1, "{k}");
        assert_eq!(k["connects"], k["established"], "{k}");
        assert_eq!(k["retransmits"], 0, "{k}");
    }

    // 20% loss towards b: its retransmits rise in the TCP_INFO figures, a's stay at 0, and b is
    // ejected.
    let nft = Nft::new(&[format!("tcp dport {} numgen random mod 100 < 20 drop", b.addr.port())]);
    let ejected = eventually(Duration::from_secs(15), || async {
        // Concurrent load, as a member under loss sees in production.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let url = lb.url("/");
            set.spawn(async move {
                let c = client();
                for _ in 0..10 {
                    let req = http::Request::get(&url).body(full("")).unwrap();
                    assert_eq!(send(&c, req).await.unwrap().status, 200);
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("a GET failed");
        }
        let h = health(&lb).await;
        (h["balancers"][0]["members"][1]["state"] == "ejected").then_some(h)
    })
    .await
    .expect("lossy member never ejected on TCP_INFO figures");
    // TCP_INFO counts retransmits at each sample: they show by the next one, if the probes
    // decided first.
    let counted = eventually(Duration::from_secs(5), || async {
        let h = health(&lb).await;
        (h["balancers"][0]["members"][1]["kernel"]["retransmits"].as_u64() > Some(0)).then_some(h)
    })
    .await
    .unwrap_or(ejected);
    drop(nft);
    let m = &counted["balancers"][0]["members"];
    assert!(m[1]["kernel"]["retransmits"].as_u64().unwrap() > 0, "{}", m[1]);
    assert_eq!(m[0]["kernel"]["retransmits"], 0, "{}", m[0]);
    lb.stop().await;
}

#[tokio::test]
async fn tcp_info_counts_failed_connects_and_ejects() {
    let dead = dead_port().await;
    let b = Member::start("b").await;
    let lb =
        Lb::start(&tcp_info_config(&members(&[(&format!("http://{dead}"), ""), (&b.url(), "")])))
            .await;
    assert_eq!(get(&lb.url("/")).await.status, 200);
    let h = eventually(Duration::from_secs(5), || async {
        let h = health(&lb).await;
        (h["balancers"][0]["members"][0]["state"] == "ejected").then_some(h)
    })
    .await
    .expect("closed port never ejected with the TCP_INFO source");
    let k = &h["balancers"][0]["members"][0]["kernel"];
    assert!(k["connect_failed"].as_u64().unwrap() >= 1, "{k}");
    assert_eq!(k["established"], 0, "{k}");
    lb.stop().await;
}

/// aya-log: a warning logged by the eBPF program (a failed member connect) reaches lb's log.
#[tokio::test]
async fn ebpf_warnings_reach_lbs_log() {
    use std::io::{BufRead, BufReader};
    let dead = dead_port().await;
    let b = Member::start("b").await;
    let admin = free_port();
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("lb-ayalog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    let cfg = telemetry_config(&members(&[(&format!("http://{dead}"), ""), (&b.url(), "")]))
        .replacen("bind = \"127.0.0.1:0\"", &format!("bind = \"127.0.0.1:{admin}\""), 1)
        .replacen("bind = \"127.0.0.1:0\"", &format!("bind = \"127.0.0.1:{port}\""), 1);
    std::fs::write(&path, cfg).unwrap();
    let mut child = std::process::Command::new(lb_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn lb");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let up = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;
    assert!(up.is_some(), "lb did not start");
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.status, 200);
    let wanted = format!("connect to member port {} failed", dead.port());
    let mut seen = Vec::new();
    let found = eventually(Duration::from_secs(5), || {
        while let Ok(l) = rx.try_recv() {
            seen.push(l);
        }
        let hit = seen.iter().any(|l| l.contains(&wanted));
        async move { hit.then_some(()) }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(found.is_some(), "eBPF warning {wanted:?} not in lb's log:\n{}", seen.join("\n"));
}

/// Without BPF privilege (lb run as `nobody`), lb falls back to TCP_INFO and says why, once.
#[tokio::test]
async fn without_bpf_privilege_lb_falls_back_to_tcp_info_and_says_why() {
    let m = Member::start("m").await;
    let (admin, port) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("lb-nopriv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    let cfg = config(&members(&[(&m.url(), "")]))
        .replacen("bind = \"127.0.0.1:0\"", &format!("bind = \"127.0.0.1:{admin}\""), 1)
        .replacen("bind = \"127.0.0.1:0\"", &format!("bind = \"127.0.0.1:{port}\""), 1);
    std::fs::write(&path, cfg).unwrap();
    let log = dir.join("stderr");
    let child = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(lb_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn lb as nobody");
    let _child = ChildGuard(child);
    let up = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;
    assert!(
        up.is_some(),
        "lb did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.status, 200);
    let r = get(&format!("http://127.0.0.1:{admin}/health")).await;
    let h: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(h["source"], "tcp_info", "{h}");
    assert!(h["why"].as_str().unwrap().contains("not permitted"), "{}", h["why"]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("kernel telemetry:").count(), 1, "said once:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// IPv6 member endpoints are measured like IPv4 ones.
#[tokio::test]
async fn ebpf_counts_ipv6_member_connections() {
    let m = Member::start_v6("v6").await;
    let lb = Lb::start(&telemetry_config(&members(&[(&m.url(), "disablereuse = true")]))).await;
    for _ in 0..4 {
        assert_eq!(get(&lb.url("/")).await.status, 200);
    }
    let h = eventually(Duration::from_secs(5), || async {
        let h = health(&lb).await;
        let k = &h["balancers"][0]["members"][0]["kernel"];
        (k["connects"].as_u64() == Some(4) && k["established"].as_u64() == Some(4)).then_some(h)
    })
    .await;
    let h = match h {
        Some(h) => h,
        None => panic!("IPv6 connections not counted:\n{:#}", health(&lb).await),
    };
    assert_eq!(h["balancers"][0]["members"][0]["endpoint"], m.addr.to_string());
    lb.stop().await;
}

/// Wait until every member's kernel `connects` equals the connections it accepted and none is
/// open; returns the members' health.
async fn settled_counts(lb: &Lb, want: &[u64]) -> Vec<serde_json::Value> {
    let settled = eventually(Duration::from_secs(10), || async {
        let h = health(lb).await;
        let m = h["balancers"][0]["members"].as_array().unwrap().clone();
        let ok = want.iter().enumerate().all(|(i, n)| {
            m[i]["kernel"]["connects"].as_u64() == Some(*n) && m[i]["kernel"]["live"] == 0
        });
        ok.then_some(m)
    })
    .await;
    match settled {
        Some(m) => m,
        None => panic!("kernel counts never matched {want:?}:\n{:#}", health(lb).await),
    }
}

#[tokio::test]
async fn ebpf_attributes_tcp_and_tls_member_connections_per_member() {
    use lb_tests::l4::{Mode, TcpMember, connect, tcp_config};
    let (a, b) = (
        TcpMember::start("a", Mode::Echo, false).await,
        TcpMember::start("b", Mode::Echo, false).await,
    );
    let body = members(&[(&a.url(), ""), (&b.url(), "")]) + NO_IDLE_PROBES;
    let cfg = tcp_config("", &body).replacen(
        "[[listener]]",
        "[telemetry]\nsource = \"ebpf\"\ninterval = \"50ms\"\n\n[[listener]]",
        1,
    );
    let lb = Lb::start(&cfg).await;
    for _ in 0..7 {
        let (s, _) = connect(lb.addr).await;
        drop(s);
    }
    let (na, nb) = (a.conns.load(Relaxed), b.conns.load(Relaxed));
    assert_eq!((na + nb, na.min(nb)), (7, 3));
    let m = settled_counts(&lb, &[na, nb]).await;
    for k in m.iter().map(|x| &x["kernel"]) {
        assert_eq!(k["established"], k["connects"], "{k}");
        assert!(k["srtt_us"].as_f64() > Some(0.0), "{k}");
    }
    lb.stop().await;

    // https members: one TLS connection per request.
    let pki = lb_tests::certs::Pki::new("ebpf-tls");
    let leaf = pki.leaf("member", &["member.test"]);
    let s = Member::start_tls("secure", pki.server(&leaf, false)).await;
    let body = format!(
        "[balancer.b.tls]\nca = \"{}\"\nserver_name = \"member.test\"\n{}",
        pki.ca_path().display(),
        members(&[(&s.url(), "disablereuse = true")])
    );
    let lb = Lb::start(&telemetry_config(&body)).await;
    for _ in 0..5 {
        assert_eq!(get(&lb.url("/")).await.status, 200);
    }
    assert_eq!(s.tls_ok.load(Relaxed), 5);
    settled_counts(&lb, &[5]).await;
}
