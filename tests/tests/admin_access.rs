//! Who may use the admin API: loopback by default; a non-loopback bind needs a token (refused at
//! start otherwise); `allow` admits source networks (403 outside); a client not on loopback
//! needs `Authorization: Bearer TOKEN` (401 without), which `lb status --token` sends. The
//! non-loopback client runs in a network namespace of the test's own.
use lb_tests::process::LbProcess;
use lb_tests::*;
use std::process::Command;

const TOKEN: &str = "s3cret-token-for-tests-0123456789";

fn write(tag: &str, text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("lb-admin-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("lb.toml");
    std::fs::write(&file, text).expect("config");
    (dir, file)
}

fn with_admin(member: &str, admin: &str) -> String {
    config(&members(&[(member, "")]))
        .replace("[admin]\nbind = \"127.0.0.1:0\"\n", &format!("[admin]\n{admin}\n"))
}

#[test]
fn a_non_loopback_admin_bind_needs_a_token() {
    let (dir, file) = write("check", &with_admin("http://127.0.0.1:9", "bind = \"0.0.0.0:0\""));
    let out =
        Command::new(lb_bin()).args(["check", "--config"]).arg(&file).output().expect("lb check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("key `admin.bind`") && err.contains("token"), "{err}");
    std::fs::write(
        &file,
        with_admin("http://127.0.0.1:9", &format!("bind = \"0.0.0.0:0\"\ntoken = \"{TOKEN}\"")),
    )
    .expect("config");
    let out =
        Command::new(lb_bin()).args(["check", "--config"]).arg(&file).output().expect("lb check");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_outside_allow_is_refused() {
    let m = Member::start("m").await;
    let (dir, file) =
        write("allow", &with_admin(&m.url(), "bind = \"127.0.0.1:0\"\nallow = [\"10.0.0.0/8\"]"));
    let lb = LbProcess::start(&file);
    let admin = lb.addr("admin listening");
    let r = get(&format!("http://{admin}/status")).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("127.0.0.1 may not use"), "{}", r.text());
    drop(lb);
    let _ = std::fs::remove_dir_all(dir);
}

fn in_ns(ns: &Netns, args: &[&str]) -> std::process::Output {
    Command::new("ip").args(["netns", "exec", &ns.name]).args(args).output().expect("ip netns exec")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_another_network_the_token_is_needed_and_lb_status_sends_it() {
    let m = Member::start("m").await;
    let ns = Netns::create();
    let admin_cfg = format!(
        "bind = \"0.0.0.0:0\"\ntoken = \"{TOKEN}\"\nallow = [\"127.0.0.0/8\", \"{}/32\"]",
        ns.ns_ip
    );
    let (dir, file) = write("token", &with_admin(&m.url(), &admin_cfg));
    let lb = LbProcess::start(&file);
    let port = lb.addr("admin listening").port();
    let remote = format!("{}:{port}", ns.host_ip());
    let url = format!("http://{remote}/status");
    let code = |args: &[&str]| {
        let mut a = vec!["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"];
        a.extend_from_slice(args);
        a.push(&url);
        String::from_utf8_lossy(&in_ns(&ns, &a).stdout).into_owned()
    };
    assert_eq!(code(&[]), "401", "no token from another network");
    assert_eq!(code(&["-H", "Authorization: Bearer wrong-token-wrong-token"]), "401");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(code(&["-H", &bearer]), "200");
    // Loopback needs no token.
    assert_eq!(get(&format!("http://127.0.0.1:{port}/status")).await.status, 200);
    // The CLI: --token (or LB_ADMIN_TOKEN) is sent; without it, a clear refusal.
    let bin = lb_bin().display().to_string();
    let ok = in_ns(&ns, &[&bin, "status", "--admin", &remote, "--token", TOKEN]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains(&m.url()));
    let refused = in_ns(&ns, &[&bin, "status", "--admin", &remote]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    drop(lb);
    let _ = std::fs::remove_dir_all(dir);
}
