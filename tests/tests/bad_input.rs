//! Bad input gets a clear error: config errors name file, line, column and key; malformed
//! requests get the right 4xx.
use lb_tests::*;
use std::process::Command;

const GOOD: &str = r#"[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "web"
bind = "127.0.0.1:0"

  [[listener.proxy_pass]]
  path = "/"
  to = "balancer://mycluster/"

[balancer.mycluster]
lbmethod = "byrequests"

  [[balancer.mycluster.member]]
  url = "http://127.0.0.1:9001"
  loadfactor = 1
  route = "server1"
"#;

/// Run `lb check` on `text`; returns (exit code, stderr+stdout).
fn check(text: &str) -> (i32, String, String) {
    let dir =
        std::env::temp_dir().join(format!("lb-check-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(lb_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run lb check");
    let _ = std::fs::remove_dir_all(&dir);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text, path.display().to_string())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle in config") + 1
}

/// Assert `lb check` fails and names `file:line:col` and `key` for the line holding `needle`.
fn assert_error(text: &str, needle: &str, key: &str, message_part: &str) {
    let (code, out, file) = check(text);
    assert_eq!(code, 1, "lb check should fail:\n{out}");
    let line = line_of(text, needle);
    let wanted = format!("{file}:{line}:");
    let hit = out.lines().find(|l| l.starts_with(&wanted) && l.contains(&format!("key `{key}`")));
    let hit = hit.unwrap_or_else(|| panic!("no `{wanted}… key `{key}`` line in:\n{out}"));
    assert!(hit.contains(message_part), "{hit:?} should mention {message_part:?}");
}

#[test]
fn good_config_checks_ok() {
    let (code, out, _) = check(GOOD);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (1 listener(s), 1 balancer(s), 1 member(s))"), "{out}");
}

#[test]
fn every_config_error_class_is_located() {
    // Unknown key.
    assert_error(
        &GOOD.replace("lbmethod", "lbmethd"),
        "lbmethd",
        "balancer.mycluster.lbmethd",
        "unknown key `lbmethd`",
    );
    // Wrong type.
    assert_error(
        &GOOD.replace("loadfactor = 1", "loadfactor = \"high\""),
        "loadfactor",
        "balancer.mycluster.member[0].loadfactor",
        "a number",
    );
    // Out of range.
    assert_error(
        &GOOD.replace("loadfactor = 1", "loadfactor = 250"),
        "loadfactor",
        "balancer.mycluster.member[0].loadfactor",
        "1..=100",
    );
    // Bad duration.
    assert_error(
        &GOOD.replace("route = \"server1\"", "retry = \"5 parsecs\""),
        "retry",
        "balancer.mycluster.member[0].retry",
        "parsecs",
    );
    // Bad status flag.
    assert_error(
        &GOOD.replace("route = \"server1\"", "status = \"+X\""),
        "status",
        "balancer.mycluster.member[0].status",
        "unknown status flag",
    );
    // Undefined balancer.
    assert_error(
        &GOOD.replace("balancer://mycluster/", "balancer://nosuch/"),
        "nosuch",
        "listener[0].proxy_pass[0].to",
        "not defined",
    );
    // Bad address.
    assert_error(
        &GOOD.replace("bind = \"127.0.0.1:0\"\n\n  [[", "bind = \"nowhere\"\n\n  [["),
        "nowhere",
        "listener[0].bind",
        "not an IP:port",
    );
    // Unknown method.
    assert_error(
        &GOOD.replace("\"byrequests\"", "\"roundrobin\""),
        "roundrobin",
        "balancer.mycluster.lbmethod",
        "unknown lbmethod",
    );
    // Bad member URL.
    assert_error(
        &GOOD.replace("http://127.0.0.1:9001", "ftp://127.0.0.1:9001"),
        "ftp://",
        "balancer.mycluster.member[0].url",
        "unsupported scheme",
    );
    // Missing required key: the error points into the table that lacks it.
    let (code, out, _) = check(&GOOD.replace("  url = \"http://127.0.0.1:9001\"\n", ""));
    assert_eq!(code, 1);
    assert!(out.contains("missing field `url`"), "{out}");
    assert!(out.contains("key `balancer.mycluster.member"), "{out}");
}

#[test]
fn every_unknown_key_is_reported_in_one_run() {
    let text = GOOD
        .replace("lbmethod = \"byrequests\"", "lbmethod = \"byrequests\"\nmaxatempts = 2")
        .replace("  route = \"server1\"", "  route = \"server1\"\n  weight = 3")
        .replace("[admin]\n", "[admin]\nport = 1\n");
    let (code, out, file) = check(&text);
    assert_eq!(code, 1, "{out}");
    for (needle, key) in [
        ("maxatempts", "balancer.mycluster.maxatempts"),
        ("weight", "balancer.mycluster.member[0].weight"),
        ("port = 1", "admin.port"),
    ] {
        let line = line_of(&text, needle);
        let wanted = format!("{file}:{line}:");
        assert!(
            out.lines().any(|l| l.starts_with(&wanted) && l.contains(&format!("key `{key}`"))),
            "{key} at line {line} missing:\n{out}"
        );
    }
    assert!(out.contains("3 error(s)"), "{out}");
}

#[test]
fn syntax_error_names_line_and_column() {
    let text = GOOD.replace("lbmethod = \"byrequests\"", "lbmethod = \"byrequests");
    let (code, out, file) = check(&text);
    assert_eq!(code, 1, "{out}");
    let line = line_of(&text, "lbmethod");
    assert!(out.contains(&format!("{file}:{line}:")), "{out}");
}

#[test]
fn all_semantic_errors_are_reported_at_once() {
    let text = GOOD
        .replace("loadfactor = 1", "loadfactor = 0")
        .replace("route = \"server1\"", "lbset = 100\n  retry = -1");
    let (code, out, _) = check(&text);
    assert_eq!(code, 1);
    for key in ["member[0].loadfactor", "member[0].lbset", "member[0].retry"] {
        assert!(out.contains(key), "{key} missing from:\n{out}");
    }
    assert!(out.contains("3 error(s)"), "{out}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = Command::new(lb_bin())
        .args(["check", "--config", "/nonexistent/lb.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/lb.toml") && err.contains("No such file"), "{err}");
}

#[tokio::test]
async fn malformed_requests_get_4xx() {
    let m = Member::start("m").await;
    let lb = Lb::start(&config(&members(&[(&m.url(), "")]))).await;
    let bad_line = raw(lb.addr, b"GARBAGE\r\n\r\n").await;
    assert!(bad_line.starts_with("HTTP/1.1 400"), "{bad_line}");
    let bad_header = raw(lb.addr, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n").await;
    assert!(bad_header.starts_with("HTTP/1.1 400"), "{bad_header}");
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let too_big = raw(lb.addr, huge.as_bytes()).await;
    assert!(too_big.starts_with("HTTP/1.1 431"), "{too_big}");
    assert_eq!(
        m.hits.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing malformed reaches a member"
    );
    lb.stop().await;
}

#[tokio::test]
async fn unmapped_path_is_404_with_a_reason() {
    let m = Member::start("m").await;
    let cfg = config(&members(&[(&m.url(), "")])).replace("path = \"/\"", "path = \"/app\"");
    let lb = Lb::start(&cfg).await;
    let r = get(&lb.url("/other")).await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no proxy_pass path matches /other"), "{}", r.text());
    lb.stop().await;
}
