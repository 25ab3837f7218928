//! Members named by DNS follow their records: every address is a member of its own (own
//! identity, counters and kernel health), addresses that appear are added and those that go are
//! removed within the record's TTL, with no reload. A DNS server written for the test answers
//! with a 1 s TTL; the members listen on two loopback addresses with one port.
use lb_tests::dns::DnsServer;
use lb_tests::*;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Two members on one port, at 127.0.0.2 and 127.0.0.3.
async fn two_members() -> (Member, Member, u16) {
    for _ in 0..20 {
        let a = Member::start_at(SocketAddr::from((A, 0)), "a").await.expect("member a");
        let port = a.addr.port();
        if let Ok(b) = Member::start_at(SocketAddr::from((B, port)), "b").await {
            return (a, b, port);
        }
    }
    panic!("no port free on both loopback addresses");
}

/// The member URLs of balancer `b` in the status report.
async fn members(lb: &Lb) -> Vec<String> {
    let s = lb.status().await;
    let b = s["balancers"].as_array().expect("balancers").iter().find(|b| b["name"] == "b");
    b.expect("balancer b")["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["url"].as_str().expect("url").to_owned())
        .collect()
}

async fn member_id(lb: &Lb, url: &str) -> Option<u64> {
    let s = lb.status().await;
    s["balancers"][0]["members"]
        .as_array()?
        .iter()
        .find(|m| m["url"] == url)
        .and_then(|m| m["id"].as_u64())
}

/// Wait (bounded) until the members are `want`; how long it took.
async fn until_members(lb: &Lb, want: &[String]) -> Duration {
    let start = Instant::now();
    let got =
        eventually(Duration::from_secs(10), || async { (members(lb).await == want).then_some(()) })
            .await;
    assert!(got.is_some(), "members never became {want:?}: {:?}", members(lb).await);
    start.elapsed()
}

async fn names_seen(lb: &Lb, n: usize) -> Vec<String> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let r = send(&c, http::Request::get(lb.url("/")).body(full("")).unwrap())
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        out.push(r.member());
    }
    out
}

#[tokio::test]
async fn members_follow_the_dns_answers_one_member_per_address() {
    let dns = DnsServer::start(1).await;
    let (_a, _b, port) = two_members().await;
    dns.set("app.test", &[A]);
    let body = format!("\n[[balancer.b.member]]\nurl = \"http://app.test:{port}\"\n");
    let cfg = format!(
        "[resolver]\nnameservers = [\"{}\"]\n\n{}",
        dns.addr,
        config(&format!("lbmethod = \"byrequests\"\n{body}"))
    );
    let lb = Lb::start(&cfg).await;
    let (url_a, url_b) =
        (format!("http://app.test:{port} ({A})"), format!("http://app.test:{port} ({B})"));

    until_members(&lb, std::slice::from_ref(&url_a)).await;
    assert!(names_seen(&lb, 4).await.iter().all(|m| m == "a"));
    // The member still sends the name, not the address, as Host.
    let c = client();
    let r = send(&c, http::Request::get(lb.url("/headers")).body(full("")).unwrap())
        .await
        .expect("headers");
    assert!(r.text().contains(&format!("host: app.test:{port}")), "{}", r.text());
    let id_a = member_id(&lb, &url_a).await.expect("a's id");

    // A second address appears: a member of its own, the first one kept as it was.
    dns.set("app.test", &[A, B]);
    let took = until_members(&lb, &[url_a.clone(), url_b.clone()]).await;
    assert!(took < Duration::from_secs(3), "took {took:?} with a 1 s TTL");
    assert_eq!(member_id(&lb, &url_a).await, Some(id_a), "a kept its identity");
    let seen = names_seen(&lb, 6).await;
    assert!(seen.contains(&"a".into()) && seen.contains(&"b".into()), "{seen:?}");
    // Each has its own kernel health: its own endpoint.
    let h = get(&format!("http://{}/health", lb.admin)).await;
    let h: serde_json::Value = serde_json::from_slice(&h.body).expect("health json");
    let endpoints: Vec<String> = h["balancers"][0]["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["endpoint"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(endpoints, [format!("{A}:{port}"), format!("{B}:{port}")]);

    // The first address goes: its member goes, the other stays.
    dns.set("app.test", &[B]);
    let took = until_members(&lb, std::slice::from_ref(&url_b)).await;
    assert!(took < Duration::from_secs(3), "took {took:?} with a 1 s TTL");
    assert!(names_seen(&lb, 4).await.iter().all(|m| m == "b"));
    assert!(dns.queries.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    lb.stop().await;
}
