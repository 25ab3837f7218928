//! What monitoring reads: Apache's `/server-status` page and its `?auto` format (the keys
//! Apache's own scripts parse), and Prometheus `/metrics`, against the lb binary (its counters
//! are its own) after traffic the test sent and counted itself.
use lb_tests::process::LbProcess;
use lb_tests::*;
use std::collections::HashMap;
use std::time::Duration;

fn start(tag: &str, member: &str) -> (LbProcess, String, String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("lb-status-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("lb.toml");
    std::fs::write(&file, config(&members(&[(member, "")]))).expect("config");
    let lb = LbProcess::start(&file);
    let web = format!("http://{}", lb.addr("listening (http)"));
    let admin = format!("http://{}", lb.addr("admin listening"));
    (lb, web, admin, dir)
}

fn auto_fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_status_counts_what_was_served() {
    let m = Member::start("member-one").await;
    let (lb, web, admin, dir) = start("ss", &m.url());
    let mut bytes = 0;
    for _ in 0..7 {
        let r = get(&format!("{web}/")).await;
        assert_eq!(r.status, 200);
        bytes += r.body.len();
    }
    // A slow request in flight is a busy worker.
    let slow = tokio::spawn(get_owned(format!("{web}/sleep/1500")));
    let busy = eventually(Duration::from_secs(5), || async {
        let f = auto_fields(&get(&format!("{admin}/server-status?auto")).await.text());
        (f.get("BusyWorkers").map(String::as_str) == Some("1")).then_some(f)
    })
    .await
    .expect("BusyWorkers: 1 while a request is in flight");
    assert!(busy["Scoreboard"].contains('W'), "{busy:?}");
    assert_eq!(slow.await.expect("slow request").status, 200);
    let f = eventually(Duration::from_secs(5), || async {
        let f = auto_fields(&get(&format!("{admin}/server-status?auto")).await.text());
        (f.get("BusyWorkers").map(String::as_str) == Some("0")).then_some(f)
    })
    .await
    .expect("BusyWorkers: 0 once it is answered");
    assert_eq!(f["Total Accesses"], "8");
    let bytes = bytes + "member-one".len();
    assert_eq!(f["BytesPerReq"].parse::<f64>().expect("a number"), bytes as f64 / 8.0);
    for key in [
        "ServerVersion",
        "Uptime",
        "ReqPerSec",
        "BytesPerSec",
        "IdleWorkers",
        "ConnsTotal",
        "Total kBytes",
        "ServerUptimeSeconds",
    ] {
        assert!(f.contains_key(key), "?auto lacks {key}: {f:?}");
    }
    let page = get(&format!("{admin}/server-status")).await;
    assert!(page.headers["content-type"].to_str().unwrap_or("").starts_with("text/html"));
    let html = page.text();
    assert!(html.contains("lb Server Status") && html.contains("Total accesses: 8"), "{html}");
    assert!(html.contains(&m.url()) && html.contains("<td>web</td>"), "{html}");
    drop(lb);
    let _ = std::fs::remove_dir_all(dir);
}

async fn get_owned(url: String) -> Reply {
    get(&url).await
}

/// Samples by name and label text, checking the exposition format on the way: every family
/// has one HELP and one TYPE before its samples, names are `lb_[a-z0-9_]+`, counters end in
/// `_total`.
fn parse_metrics(text: &str) -> HashMap<(String, String), f64> {
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped = std::collections::HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().expect("help name");
            assert!(helped.insert(name.to_owned()), "two HELPs for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let (name, kind) = (w.next().expect("type name"), w.next().expect("kind"));
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            assert!(typed.insert(name.to_owned(), kind.to_owned()).is_none(), "two TYPEs: {line}");
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').expect("name value");
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            assert!(
                name.starts_with("lb_")
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert!(
                typed.contains_key(name) && helped.contains(name),
                "{name} sampled before HELP/TYPE"
            );
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
            samples.insert((name.to_owned(), labels.to_owned()), v);
        }
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_with_the_counts() {
    let m = Member::start("m").await;
    let (lb, web, admin, dir) = start("metrics", &m.url());
    for _ in 0..5 {
        assert_eq!(get(&format!("{web}/")).await.status, 200);
    }
    let member = format!("balancer=\"b\",member=\"{}\"", m.url());
    // The kernel's view arrives with the telemetry sampler's next round.
    let samples = eventually(Duration::from_secs(10), || async {
        let r = get(&format!("{admin}/metrics")).await;
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap_or("")
                .starts_with("text/plain; version=0.0.4")
        );
        let s = parse_metrics(&r.text());
        s.contains_key(&("lb_member_srtt_seconds".to_owned(), member.clone())).then_some(s)
    })
    .await
    .expect("srtt of the member");
    // A Prometheus text-format parser reads it the same way.
    let text = get(&format!("{admin}/metrics")).await.text();
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    let requests = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "lb_listener_requests_total" && s.labels.get("listener") == Some("web")
        })
        .expect("lb_listener_requests_total{listener=\"web\"}");
    assert!(
        matches!(requests.value, prometheus_parse::Value::Counter(v) if v == 5.0),
        "{:?}",
        requests.value
    );
    let up = scrape.samples.iter().find(|s| s.metric == "lb_member_up").expect("lb_member_up");
    assert_eq!(
        (up.labels.get("balancer"), up.labels.get("member")),
        (Some("b"), Some(m.url().as_str()))
    );
    assert!(scrape.docs.contains_key("lb_member_srtt_seconds"), "HELP text read");
    let at = |n: &str, l: &str| samples.get(&(n.to_owned(), l.to_owned())).copied();
    assert_eq!(at("lb_listener_requests_total", "listener=\"web\""), Some(5.0));
    assert_eq!(at("lb_member_elected_total", &member), Some(5.0));
    assert_eq!(at("lb_member_up", &member), Some(1.0));
    assert_eq!(at("lb_member_ejected", &member), Some(0.0));
    assert_eq!(
        at("lb_listener_sent_bytes_total", "listener=\"web\""),
        Some(5.0 * "m".len() as f64)
    );
    let srtt = at("lb_member_srtt_seconds", &member).expect("srtt");
    assert!(srtt > 0.0 && srtt < 1.0, "a loopback srtt in seconds: {srtt}");
    drop(lb);
    let _ = std::fs::remove_dir_all(dir);
}
