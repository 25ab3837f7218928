//! The methods distribute exactly as Apache's arithmetic says (spec: byrequests, bytraffic,
//! bybusyness). Expected sequences are computed here from the spec, not recorded from lb.
use lb_tests::*;
use std::time::Duration;

/// Spec, bytraffic: score = read/lbfactor + sent/lbfactor (integer division), lowest wins.
fn apache_bytraffic(sizes: &[u64], factor: u64, n: usize) -> Vec<usize> {
    let mut read = vec![0u64; sizes.len()];
    (0..n)
        .map(|_| {
            let (mut best, mut min) = (None::<usize>, 0u64);
            for (i, r) in read.iter().enumerate() {
                let t = r / factor;
                if best.is_none() || t < min {
                    best = Some(i);
                    min = t;
                }
            }
            let b = best.expect("a member");
            read[b] += sizes[b];
            b
        })
        .collect()
}

async fn sequence(lb: &Lb, n: usize) -> Vec<String> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let req = http::Request::get(lb.url("/")).body(full("")).unwrap();
        let r = send(&c, req).await.expect("request through lb");
        assert_eq!(r.status, 200, "{}", r.text());
        out.push(r.member());
    }
    out
}

#[tokio::test]
async fn byrequests_weights_1_1_1_2_match_apache() {
    let ms = [
        Member::start("a").await,
        Member::start("b").await,
        Member::start("c").await,
        Member::start("d").await,
    ];
    let weights = [1, 1, 1, 2];
    let body = members(&[
        (&ms[0].url(), "loadfactor = 1"),
        (&ms[1].url(), "loadfactor = 1"),
        (&ms[2].url(), "loadfactor = 1"),
        (&ms[3].url(), "loadfactor = 2"),
    ]);
    let lb = Lb::start(&config(&format!("lbmethod = \"byrequests\"\n{body}"))).await;
    let factors: Vec<i64> = weights.iter().map(|w| w * 100).collect();
    let expected: Vec<String> = apache_byrequests(&factors, &[true; 4], 25)
        .into_iter()
        .map(|i| ms[i].name.clone())
        .collect();
    assert_eq!(sequence(&lb, 25).await, expected);
    // d gets 2 of every 5.
    assert_eq!(expected.iter().filter(|m| *m == "d").count(), 10);
    lb.stop().await;
}

#[tokio::test]
async fn byrequests_four_equal_with_one_disabled_match_apache() {
    let ms = [
        Member::start("a").await,
        Member::start("b").await,
        Member::start("c").await,
        Member::start("d").await,
    ];
    let body = members(&[
        (&ms[0].url(), ""),
        (&ms[1].url(), "status = \"D\""),
        (&ms[2].url(), ""),
        (&ms[3].url(), ""),
    ]);
    let lb = Lb::start(&config(&body)).await;
    let expected: Vec<String> = apache_byrequests(&[100; 4], &[true, false, true, true], 12)
        .into_iter()
        .map(|i| ms[i].name.clone())
        .collect();
    assert_eq!(expected[..6], ["a", "c", "d", "a", "c", "d"]);
    assert_eq!(sequence(&lb, 12).await, expected);
    assert_eq!(ms[1].hits.load(std::sync::atomic::Ordering::Relaxed), 0);
    lb.stop().await;
}

#[tokio::test]
async fn bytraffic_follows_bytes_read_from_members() {
    let sizes = [3000u64, 1000, 500];
    let ms = [
        Member::start_with("big", Some(sizes[0] as usize)).await,
        Member::start_with("mid", Some(sizes[1] as usize)).await,
        Member::start_with("small", Some(sizes[2] as usize)).await,
    ];
    let body = members(&[(&ms[0].url(), ""), (&ms[1].url(), ""), (&ms[2].url(), "")]);
    let lb = Lb::start(&config(&format!("lbmethod = \"bytraffic\"\n{body}"))).await;
    let expected: Vec<String> =
        apache_bytraffic(&sizes, 100, 40).into_iter().map(|i| ms[i].name.clone()).collect();
    let got = sequence(&lb, 40).await;
    assert_eq!(got, expected);
    // Fewer requests go to the member that sends more bytes.
    let count = |n: &str| got.iter().filter(|m| *m == n).count();
    assert!(count("big") < count("mid") && count("mid") < count("small"), "{got:?}");
    let st = lb.member("b", 0).await;
    assert_eq!(st["bytes_received"].as_u64().unwrap(), count("big") as u64 * sizes[0]);
    lb.stop().await;
}

#[tokio::test]
async fn bybusyness_sends_less_to_the_slow_member() {
    let fast = Member::start("fast").await;
    let slow = Member::start_slow("slow", Duration::from_millis(100)).await;
    let body = members(&[(&slow.url(), ""), (&fast.url(), "")]);
    let lb = Lb::start(&config(&format!("lbmethod = \"bybusyness\"\n{body}"))).await;
    // Eight clients take requests from one shared count, so all eight stay
    // busy until the last few: the method is judged under steady concurrency,
    // not in a tail where one client alone alternates between two idle members.
    let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(120));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let url = lb.url("/");
        let left = left.clone();
        tasks.spawn(async move {
            let c = client();
            let mut names = Vec::new();
            while left
                .fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |n| n.checked_sub(1),
                )
                .is_ok()
            {
                let r = send(&c, http::Request::get(&url).body(full("")).unwrap())
                    .await
                    .expect("request");
                assert_eq!(r.status, 200);
                names.push(r.member());
            }
            names
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("worker"));
    }
    let slow_n = all.iter().filter(|m| *m == "slow").count();
    let fast_n = all.len() - slow_n;
    assert_eq!(all.len(), 120);
    // byrequests would split 60/60; bybusyness keeps the slow member to a small share.
    assert!(slow_n * 4 <= all.len() && fast_n >= 3 * slow_n, "slow {slow_n}, fast {fast_n}");
    // Every request ended, so nothing is counted busy any more.
    let idle = eventually(Duration::from_secs(5), || async {
        let s = lb.status().await;
        let busy: u64 = s["balancers"][0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["busy"].as_u64().unwrap())
            .sum();
        (busy == 0).then_some(())
    })
    .await;
    assert!(idle.is_some(), "busy never returned to 0");
    lb.stop().await;
}
