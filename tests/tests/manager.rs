//! Live edits, as Apache's balancer-manager makes them, through `lb member set|add` and
//! `lb balancer set` and the same form parameters Apache's page posts: they take effect on the
//! next pick without a restart, and an edit without the balancer's nonce, or from another
//! site's page, changes nothing.
use lb_tests::*;
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;

async fn lb_cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || Command::new(lb_bin()).args(&args).output().expect("lb"))
        .await
        .expect("join")
}

fn args(list: &[&str], admin: std::net::SocketAddr) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.extend(["--admin".into(), admin.to_string()]);
    v
}

/// Send `n` GETs; how many each member answered.
async fn spread(lb: &Lb, n: usize) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for _ in 0..n {
        *seen.entry(get(&lb.url("/")).await.member()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn disabling_a_member_stops_its_traffic_and_a_weight_change_moves_the_split() {
    let (a, b) = (Member::start("a").await, Member::start("b").await);
    let body = format!("lbmethod = \"byrequests\"\n{}", members(&[(&a.url(), ""), (&b.url(), "")]));
    let lb = Lb::start(&config(&body)).await;
    let ok = lb_cli(args(&["member", "set", "b", &b.url(), "--status", "+D"], lb.admin)).await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(lb.member("b", 1).await["status"], "D");
    let before = b.hits.load(Relaxed);
    assert_eq!(spread(&lb, 10).await.get("a"), Some(&10), "all to a while b is disabled");
    assert_eq!(b.hits.load(Relaxed), before, "nothing reaches b");
    // Back, with three times a's weight: byrequests gives exactly 3 of every 4 to b.
    let ok = lb_cli(args(
        &["member", "set", "b", &b.url(), "--status", "-D", "--loadfactor", "3"],
        lb.admin,
    ))
    .await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let s = spread(&lb, 40).await;
    assert_eq!((s.get("a"), s.get("b")), (Some(&10), Some(&30)), "{s:?}");
    assert_eq!(lb.member("b", 1).await["loadfactor"], 3.0);
    // Two members cannot share a route, live as in the file.
    let ok = lb_cli(args(&["member", "set", "b", &a.url(), "--route", "r1"], lb.admin)).await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let dup = lb_cli(args(&["member", "set", "b", &b.url(), "--route", "r1"], lb.admin)).await;
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("used by another member"),
        "{}",
        String::from_utf8_lossy(&dup.stderr)
    );
    assert!(lb.member("b", 1).await["route"].is_null(), "b keeps no route");
    lb.stop().await;
}

#[tokio::test]
async fn balancer_settings_change_live_and_growth_slots_take_new_members() {
    let (a, c) = (Member::start("a").await, Member::start("c").await);
    let body = format!("growth = 1\n{}", members(&[(&a.url(), "")]));
    let lb = Lb::start(&config(&body)).await;
    let ok = lb_cli(args(
        &["balancer", "set", "b", "--lbmethod", "bybusyness", "--maxattempts", "0"],
        lb.admin,
    ))
    .await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let st = lb.status().await;
    assert_eq!(st["balancers"][0]["lbmethod"], "bybusyness");
    assert_eq!(st["balancers"][0]["maxattempts"], 0);
    // A new member in the growth slot starts disabled, then takes traffic once enabled.
    let ok = lb_cli(args(&["member", "add", "b", &c.url()], lb.admin)).await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(lb.member("b", 1).await["status"], "D");
    let ok = lb_cli(args(&["member", "set", "b", &c.url(), "--status", "-D"], lb.admin)).await;
    assert!(ok.status.success());
    let seen = eventually(std::time::Duration::from_secs(5), || async {
        (get(&lb.url("/")).await.member() == "c").then_some(())
    })
    .await;
    assert!(seen.is_some(), "the added member serves");
    // No slot left.
    let d = Member::start("d").await;
    let refused = lb_cli(args(&["member", "add", "b", &d.url()], lb.admin)).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("growth"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    lb.stop().await;
}

#[tokio::test]
async fn a_health_check_set_live_starts_checking() {
    let a = Member::start("a").await;
    let lb = Lb::start(&config(&members(&[(&a.url(), "")]))).await;
    assert!(lb.member("b", 0).await["check"].is_null(), "no check configured");
    let set = [
        "member",
        "set",
        "b",
        &a.url(),
        "--hcmethod",
        "GET",
        "--hcinterval",
        "0.2",
        "--hcuri",
        "/health",
    ];
    let ok = lb_cli(args(&set, lb.admin)).await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let checked = eventually(std::time::Duration::from_secs(10), || async {
        let c = lb.member("b", 0).await["check"].clone();
        (!c.is_null()).then_some(c)
    })
    .await;
    assert!(checked.is_some(), "the member is now checked");
    // The file's rules hold for live edits too: an hcuri must start with /.
    let bad = lb_cli(args(&["member", "set", "b", &a.url(), "--hcuri", "health"], lb.admin)).await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("must start with /"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // An unknown method is refused with the reason.
    let bad = lb_cli(args(&["member", "set", "b", &a.url(), "--hcmethod", "PING"], lb.admin)).await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("w_hm"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    lb.stop().await;
}

#[tokio::test]
async fn an_edit_needs_the_nonce_and_a_same_origin_page() {
    let a = Member::start("a").await;
    let lb = Lb::start(&config(&members(&[(&a.url(), "")]))).await;
    let nonce = lb.status().await["balancers"][0]["nonce"].as_str().expect("nonce").to_owned();
    assert_eq!(nonce.len(), 32);
    let w = a.url();
    let post = |body: String, extra: &str| {
        format!(
            "POST /balancer-manager HTTP/1.1\r\nHost: {}\r\n{extra}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            lb.admin,
            body.len()
        )
    };
    let disable = |nonce: &str| format!("b=b&w={w}&nonce={nonce}&w_status_D=1");
    // Apache's own form parameters work, with the nonce and from the admin's own page.
    let cases = [
        (disable("wrong"), String::new(), "403"),
        (format!("b=b&w={w}&w_status_D=1"), String::new(), "403"),
        (disable(&nonce), "Origin: http://evil.example\r\n".to_owned(), "403"),
        (disable(&nonce), "Referer: http://evil.example/page\r\n".to_owned(), "403"),
    ];
    for (body, extra, want) in &cases {
        let answer = raw(lb.admin, post(body.clone(), extra).as_bytes()).await;
        assert!(answer.starts_with(&format!("HTTP/1.1 {want}")), "{body} {extra}: {answer}");
        assert_eq!(lb.member("b", 0).await["status"], "Ok", "nothing changed");
    }
    let own = format!("Origin: http://{}\r\n", lb.admin);
    let answer = raw(lb.admin, post(disable(&nonce), &own).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(lb.member("b", 0).await["status"], "D");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_a_click_disables_a_member_and_a_new_weight_moves_the_split() {
    let (a, b) = (Member::start("a").await, Member::start("b").await);
    // No idle probes: this test is about the page. While Chromium starts on the host's two
    // cores, probes of an idle member (served by this test process) can fail, and CI runs saw
    // b ejected ("DE" where the page should show "D"). lb's probes on a starved host are
    // tested in ejection.rs and health's unit tests.
    let body = format!(
        "lbmethod = \"byrequests\"\n{}{NO_IDLE_PROBES}",
        members(&[(&a.url(), ""), (&b.url(), "")])
    );
    let lb = Lb::start(&config(&body)).await;
    let browser = lb_tests::webdriver::Browser::start().await;
    browser.goto(&format!("http://{}/balancer-manager", lb.admin)).await;
    let form = format!("form[data-member=\"{}\"]", b.url());
    let status_cell = format!("tr[data-member=\"{}\"] td.status", b.url());
    // Disable b by clicking its D box and Apply.
    let d = browser.find(&format!("{form} input[name=\"w_status_D\"]")).await;
    browser.set_checked(&d, true).await;
    browser.click(&browser.find(&format!("{form} button[type=\"submit\"]")).await).await;
    let shown = eventually(std::time::Duration::from_secs(10), || async {
        let cell = browser.find(&status_cell).await;
        (browser.text(&cell).await == "D").then_some(())
    })
    .await;
    if shown.is_none() {
        let msg = browser.text(&browser.find("#msg").await).await;
        panic!("the page shows b disabled; its message: {msg:?}; lb: {}", lb.member("b", 1).await);
    }
    assert_eq!(lb.member("b", 1).await["status"], "D");
    let before = b.hits.load(Relaxed);
    assert_eq!(spread(&lb, 10).await.get("a"), Some(&10));
    assert_eq!(b.hits.load(Relaxed), before, "no traffic reaches b");
    // Enable it again with three times a's weight.
    let lf = browser.find(&format!("{form} input[name=\"w_lf\"]")).await;
    browser.retype(&lf, "3").await;
    browser.set_checked(&d, false).await;
    browser.click(&browser.find(&format!("{form} button[type=\"submit\"]")).await).await;
    let back = eventually(std::time::Duration::from_secs(10), || async {
        let m = lb.member("b", 1).await;
        (m["status"] == "Ok" && m["loadfactor"] == 3.0).then_some(())
    })
    .await;
    assert!(back.is_some(), "b enabled with loadfactor 3: {}", lb.member("b", 1).await);
    let s = spread(&lb, 40).await;
    assert_eq!((s.get("a"), s.get("b")), (Some(&10), Some(&30)), "{s:?}");
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/artifacts/balancer-manager.png");
    browser.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000), "a screenshot of the page");
    browser.close().await;
    lb.stop().await;
}
