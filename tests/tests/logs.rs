//! The access log as an operator reads it: Apache's combined format extended with lb's fields,
//! or JSON lines, in a file or on stdout; a log that cannot keep up drops lines and counts them
//! instead of stalling traffic. lb's own log as JSON with `--log-format json`.
use lb_tests::process::LbProcess;
use lb_tests::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn write_config(tag: &str, text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("lb-logs-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("lb.toml");
    std::fs::write(&file, text).expect("config");
    (dir, file)
}

/// A config with the access log on, `[access_log]` holding `access`.
fn logged(member: &str, access: &str) -> String {
    format!("[access_log]\n{access}\n\n{}", config(&members(&[(member, "")])))
        .replace("access_log = false\n", "")
}

async fn get_with(url: &str) -> Reply {
    let req = http::Request::get(url)
        .header("referer", "http://ref.example/page")
        .header("user-agent", "lb-test/1.0 (\"quoted\")")
        .body(full(""))
        .expect("request");
    send(&client(), req).await.expect("answer")
}

fn first_line(path: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(path).ok()?.lines().next().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_carry_what_apache_logs_and_lbs_fields() {
    let m = Member::start("m").await;
    let (dir, _) = write_config("c", "");
    let log = dir.join("access.log");
    let (_, file) =
        write_config("c", &logged(&m.url(), &format!("path = {:?}", log.display().to_string())));
    let lb = LbProcess::start(&file);
    let web = lb.addr("listening (http)");
    let r = get_with(&format!("http://{web}/headers?x=1")).await;
    assert_eq!(r.status, 200);
    let line =
        eventually(Duration::from_secs(10), || async { first_line(&log) }).await.expect("a line");
    let today = Command::new("date").args(["-u", "+%d/%b/%Y"]).output().expect("date").stdout;
    let today = String::from_utf8_lossy(&today).trim().to_owned();
    let want_start = format!("127.0.0.1 - - [{today}:");
    assert!(line.starts_with(&want_start), "{line}");
    let want = format!(
        "\"GET /headers?x=1 HTTP/1.1\" 200 {} \"http://ref.example/page\" \"lb-test/1.0 (\\\"quoted\\\")\"",
        r.body.len()
    );
    assert!(line.contains(&want), "{line}\nwants {want}");
    for field in [
        "listener=web".to_owned(),
        "balancer=b".to_owned(),
        format!("member={}", m.url()),
        "attempts=1".to_owned(),
        "route=-".to_owned(),
        "complete=1".to_owned(),
    ] {
        assert!(line.contains(&field), "{line} lacks {field}");
    }
    drop(lb);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_have_the_same_fields() {
    let m = Member::start("m").await;
    let (dir, _) = write_config("j", "");
    let log = dir.join("access.json");
    let access = format!("path = {:?}\nformat = \"json\"", log.display().to_string());
    let (_, file) = write_config("j", &logged(&m.url(), &access));
    let lb = LbProcess::start(&file);
    let web = lb.addr("listening (http)");
    let r = get_with(&format!("http://{web}/status/404")).await;
    assert_eq!(r.status, 404);
    let line =
        eventually(Duration::from_secs(10), || async { first_line(&log) }).await.expect("a line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["target"], "/status/404");
    assert_eq!(v["status"], 404);
    assert_eq!(v["bytes"], r.body.len() as u64);
    assert_eq!(v["user_agent"], "lb-test/1.0 (\"quoted\")");
    assert_eq!(v["member"], m.url());
    assert_eq!(v["attempts"], 1);
    assert!(v["total_us"].as_u64().is_some_and(|t| t >= v["head_us"].as_u64().unwrap_or(u64::MAX)));
    drop(lb);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_drops_and_counts_lines_and_never_stalls_traffic() {
    let m = Member::start("m").await;
    // The access log goes to stdout, a pipe nobody reads: it fills after a few hundred lines.
    let (dir, file) = write_config("s", &logged(&m.url(), "buffer = 100"));
    let mut cmd = Command::new(lb_bin());
    cmd.args(["run", "--config"]).arg(&file).stdout(Stdio::piped());
    let lb = LbProcess::spawn(cmd);
    let (web, admin) = (lb.addr("listening (http)"), lb.addr("admin listening"));
    const REQUESTS: u64 = 3000;
    let c = client();
    for i in 0..REQUESTS {
        let req = http::Request::get(format!("http://{web}/")).body(full("")).expect("request");
        let r = tokio::time::timeout(Duration::from_secs(10), send(&c, req))
            .await
            .unwrap_or_else(|_| panic!("request {i} stalled"))
            .expect("answer");
        assert_eq!(r.status, 200);
    }
    let status = get(&format!("http://{admin}/status")).await;
    let v: serde_json::Value = serde_json::from_slice(&status.body).expect("status JSON");
    let (written, dropped) = (
        v["access_log"]["written"].as_u64().unwrap_or(0),
        v["access_log"]["dropped"].as_u64().unwrap_or(0),
    );
    assert!(dropped > 0, "lines were dropped: {}", v["access_log"]);
    // Every line is written, dropped, or still on its way: at most the queue (100 lines) and
    // the batch the writer is blocked on (at most 60 KiB, a few hundred lines).
    let accounted = written + dropped;
    assert!(accounted <= REQUESTS && accounted + 100 + 400 >= REQUESTS, "{}", v["access_log"]);
    assert!(
        lb.line(&["access log lines dropped"], Duration::from_secs(5)).is_some(),
        "and said so"
    );
    drop(lb);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_makes_lbs_own_log_json() {
    let m = Member::start("m").await;
    let (dir, file) = write_config("own", &config(&members(&[(&m.url(), "")])));
    let mut cmd = Command::new(lb_bin());
    cmd.args(["--log-format", "json", "run", "--config"]).arg(&file);
    let lb = LbProcess::spawn(cmd);
    let line = lb.line(&["listening (http)"], Duration::from_secs(20)).expect("the listening line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(v["level"], "INFO");
    assert!(v["fields"]["addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{v}");
    drop(lb);
    let _ = std::fs::remove_dir_all(dir);
}

/// lb's own lines about one client name it, the client a PROXY header names included: they
/// carry no per-connection context otherwise (it is kept at debug level, where it costs nothing
/// under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_about_a_client_name_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = Member::start("m").await;
    let text = config(&members(&[(&m.url(), "")]))
        .replace("access_log = false\n", "access_log = false\naccept_proxy = true\n");
    let (dir, file) = write_config("client", &text);
    let mut lb = LbProcess::start(&file);
    let web = lb.addr("listening (http)");

    // No PROXY header: the connection is closed, and the line names its TCP peer.
    let mut s = tokio::net::TcpStream::connect(web).await.expect("connect");
    let peer = s.local_addr().expect("local address");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    let want = format!("client={peer}");
    let line = lb.line(&["bad or missing PROXY protocol header", &want], Duration::from_secs(10));
    assert!(line.is_some(), "no line names {peer}; {}", lb.report(20));

    // A refused request (a space in a field name) from the client a PROXY header names.
    let mut s = tokio::net::TcpStream::connect(web).await.expect("connect");
    s.write_all(b"PROXY TCP4 203.0.113.9 192.0.2.1 5555 80\r\nGET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let line = lb.line(&["request refused", "client=203.0.113.9:5555"], Duration::from_secs(10));
    assert!(line.is_some(), "no line names 203.0.113.9:5555; {}", lb.report(20));
    drop(lb);
    let _ = std::fs::remove_dir_all(dir);
}
