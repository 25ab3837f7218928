//! The shared candidate loop: lbset tiers and the H, N, R, E flags (spec "Candidate loop").
use lb_tests::*;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

async fn counts(lb: &Lb, n: usize) -> HashMap<String, usize> {
    let c = client();
    let mut m = HashMap::new();
    for _ in 0..n {
        let r = send(&c, http::Request::get(lb.url("/")).body(full("")).unwrap())
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        *m.entry(r.member()).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn lower_lbset_is_used_until_it_is_unusable() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let dead = dead_port().await;
    let body = members(&[(&a.url(), "lbset = 0"), (&b.url(), "lbset = 1")]);
    let lb = Lb::start(&config(&body)).await;
    assert_eq!(counts(&lb, 6).await, HashMap::from([("a".to_string(), 6)]));
    lb.stop().await;

    // Set 0 holds only a dead member: once it is in error, set 1 serves.
    let body = members(&[(&format!("http://{dead}"), "lbset = 0"), (&b.url(), "lbset = 1")]);
    let lb = Lb::start(&config(&body)).await;
    assert_eq!(counts(&lb, 5).await, HashMap::from([("b".to_string(), 5)]));
    assert_eq!(lb.member("b", 0).await["status"], "E");
    lb.stop().await;
}

#[tokio::test]
async fn hot_standby_only_when_nothing_else_is_usable() {
    let a = Member::start("a").await;
    let h = Member::start("h").await;
    let body = members(&[(&a.url(), ""), (&h.url(), "status = \"+H\"")]);
    let lb = Lb::start(&config(&body)).await;
    assert_eq!(counts(&lb, 5).await, HashMap::from([("a".to_string(), 5)]));
    lb.stop().await;

    let mut a = a;
    a.kill().await;
    let lb = Lb::start(&config(&body)).await;
    // The first request fails over from a (now E) to the standby; the rest go straight there.
    assert_eq!(counts(&lb, 5).await, HashMap::from([("h".to_string(), 5)]));
    assert_eq!(lb.member("b", 0).await["status"], "E");
    lb.stop().await;
}

#[tokio::test]
async fn drained_member_gets_no_new_requests() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let body = members(&[(&a.url(), "status = \"N\""), (&b.url(), "")]);
    let lb = Lb::start(&config(&body)).await;
    assert_eq!(counts(&lb, 6).await, HashMap::from([("b".to_string(), 6)]));
    assert_eq!(a.hits.load(Relaxed), 0);
    lb.stop().await;
}

#[tokio::test]
async fn hot_spare_stands_in_for_an_unusable_member() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let r = Member::start("r").await;
    let body = members(&[(&a.url(), ""), (&b.url(), ""), (&r.url(), "status = \"R\"")]);
    let lb = Lb::start(&config(&body)).await;
    let c = counts(&lb, 6).await;
    assert_eq!(c, HashMap::from([("a".to_string(), 3), ("b".to_string(), 3)]));
    lb.stop().await;

    let mut a = a;
    a.kill().await;
    let lb = Lb::start(&config(&body)).await;
    let c = counts(&lb, 9).await;
    // a is in error; the spare takes its share beside b.
    assert_eq!(c.get("a"), None);
    assert!(
        c.get("r").copied().unwrap_or(0) >= 4 && c.get("b").copied().unwrap_or(0) >= 4,
        "{c:?}"
    );
    lb.stop().await;
}

#[tokio::test]
async fn member_in_error_returns_after_retry() {
    let mut a = Member::start("a").await;
    let b = Member::start("b").await;
    let body = members(&[(&a.url(), "retry = \"300ms\""), (&b.url(), "")]);
    let lb = Lb::start(&config(&format!("{APACHE_RETRY_ONLY}{body}"))).await;
    a.kill().await;
    // Requests keep succeeding: the dead member is put in error and skipped.
    let c = counts(&lb, 4).await;
    assert_eq!(c, HashMap::from([("b".to_string(), 4)]));
    let st = lb.member("b", 0).await;
    assert_eq!(st["status"], "E");
    assert!(st["last_error"]["message"].as_str().unwrap().contains("connect"), "{st}");

    a.restart().await;
    let back = eventually(Duration::from_secs(5), || async {
        let r = get(&lb.url("/")).await;
        (r.member() == "a").then_some(())
    })
    .await;
    assert!(back.is_some(), "member a never came back after its retry time");
    let st = lb.member("b", 0).await;
    assert_eq!(st["status"], "Ok");
    assert!(st["retries"].as_u64().unwrap() >= 1);
    lb.stop().await;
}
