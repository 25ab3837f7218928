//! The lb binary as an operator runs it: `lb reload` and SIGHUP re-read the config file, an
//! invalid file is refused with `lb check`'s own errors, SIGTERM lets in-flight work finish.
use lb_tests::*;
use std::process::Command;
use std::time::Duration;

fn config_text(member: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[server]\ngraceful_shutdown_timeout = \"5s\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\naccess_log = false\n  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"balancer://b/\"\n[balancer.b]\n[[balancer.b.member]]\nurl = \"{member}\"\n"
    )
}

fn lb_cmd(args: &[&str]) -> std::process::Output {
    Command::new(lb_bin()).args(args).output().expect("run lb")
}

/// GET `url` in a task of its own, returned once member `m` has the request.
async fn in_flight(m: &Member, url: String) -> tokio::task::JoinHandle<Reply> {
    let before = m.hits.load(std::sync::atomic::Ordering::Relaxed);
    let slow = tokio::spawn(async move { get(&url).await });
    let started = eventually(Duration::from_secs(5), || async {
        (m.hits.load(std::sync::atomic::Ordering::Relaxed) > before).then_some(())
    })
    .await;
    assert!(started.is_some(), "{} never got the request", m.url());
    slow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_sighup_and_sigterm_on_the_binary() {
    let (a, b) = (Member::start("a").await, Member::start("b").await);
    let dir = std::env::temp_dir().join(format!("lb-signals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lb.toml");
    std::fs::write(&file, config_text(&a.url())).unwrap();
    let mut lb = lb_tests::process::LbProcess::start(&file);
    let pid = lb.pid.clone();
    let (web, admin) = (lb.addr("listening (http)"), lb.addr("admin listening"));
    let url = format!("http://{web}/");
    assert_eq!(get(&url).await.member(), "a");

    // `lb reload`: a replaced member.
    std::fs::write(&file, config_text(&b.url())).unwrap();
    let admin_s = admin.to_string();
    let out = tokio::task::spawn_blocking(move || lb_cmd(&["reload", "--admin", &admin_s]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("members: 1 added, 1 removed"));
    assert_eq!(get(&url).await.member(), "b");

    // An invalid file: refused with exactly what `lb check` prints; b keeps serving.
    let bad = config_text(&b.url())
        .replace("access_log = false", "access_log = false\nacess_log = 1")
        + "loadfactor = 500\n";
    std::fs::write(&file, bad).unwrap();
    let (admin_s, file_s) = (admin.to_string(), file.display().to_string());
    let (reload, check) = tokio::task::spawn_blocking(move || {
        (lb_cmd(&["reload", "--admin", &admin_s]), lb_cmd(&["check", "--config", &file_s]))
    })
    .await
    .unwrap();
    assert_eq!(reload.status.code(), Some(1));
    let (refused, checked) =
        (String::from_utf8_lossy(&reload.stderr), String::from_utf8_lossy(&check.stderr));
    assert_eq!(checked.lines().last(), Some("2 error(s)"), "{checked}");
    assert!(refused.ends_with(checked.as_ref()), "reload said:\n{refused}\ncheck said:\n{checked}");
    assert_eq!(get(&url).await.member(), "b");

    // SIGHUP: back to a.
    std::fs::write(&file, config_text(&a.url())).unwrap();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let back = eventually(Duration::from_secs(10), || async {
        (get(&url).await.member() == "a").then_some(())
    })
    .await;
    assert!(back.is_some(), "SIGHUP did not reload");

    // SIGTERM with a request in flight: it completes, then lb exits 0.
    let slow = in_flight(&a, format!("http://{web}/sleep/600")).await;
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let r = slow.await.unwrap();
    assert_eq!((r.status, r.member()), (200, "a".to_owned()));
    let status = tokio::task::spawn_blocking(move || {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = lb.guard.0.try_wait().unwrap() {
                return Some(s);
            }
            if std::time::Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(status.map(|s| s.code()), Some(Some(0)), "lb did not exit 0 after SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM closes every listener at once, while connections already open finish: a second
/// listener refuses new clients while the first still drains a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_listener_while_requests_drain() {
    let m = Member::start("m").await;
    let dir = std::env::temp_dir().join(format!("lb-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lb.toml");
    let second = "[[listener]]\nname = \"second\"\nbind = \"127.0.0.1:0\"\naccess_log = false\n  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"balancer://b/\"\n";
    let text = config_text(&m.url()).replace("[balancer.b]\n", &format!("{second}[balancer.b]\n"));
    std::fs::write(&file, text).unwrap();
    let lb = lb_tests::process::LbProcess::start(&file);
    let web = lb.addr("listening (http)");
    let other = lb
        .line(&["listening (http)", "listener=second", "addr="], Duration::from_secs(20))
        .and_then(|l| {
            l.split_whitespace().find_map(|w| w.strip_prefix("addr=")).and_then(|a| a.parse().ok())
        })
        .expect("the second listener's address");
    assert_ne!(web, other);
    assert_eq!(get(&format!("http://{other}/")).await.member(), "m");
    // A request in flight on the first listener, then SIGTERM.
    let slow = in_flight(&m, format!("http://{web}/sleep/3000")).await;
    assert!(Command::new("kill").args(["-TERM", &lb.pid]).status().unwrap().success());
    let refused = eventually(Duration::from_secs(2), || async {
        let c = tokio::net::TcpStream::connect(other).await;
        matches!(c, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused).then_some(())
    })
    .await;
    assert!(!slow.is_finished(), "the slow request ended before the check");
    assert!(refused.is_some(), "the second listener still accepts while the first drains");
    let r = slow.await.unwrap();
    assert_eq!((r.status, r.member()), (200, "m".to_owned()));
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}
