//! Failover, error states and the status codes lb answers when members fail.
use lb_tests::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

#[tokio::test]
async fn member_killed_under_load_fails_no_get_and_comes_back() {
    let ms = vec![Member::start("m0").await, Member::start("m1").await, Member::start("m2").await];
    let body =
        members(&[(&ms[0].url(), ""), (&ms[1].url(), "retry = \"500ms\""), (&ms[2].url(), "")]);
    let lb = Lb::start(&config(&format!("{APACHE_RETRY_ONLY}{body}"))).await;
    let killed = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    // Bounded load: 4 workers × 150 keep-alive GETs.
    for _ in 0..4 {
        let url = lb.url("/");
        let killed = Arc::clone(&killed);
        workers.spawn(async move {
            let c = client();
            let (mut ok, mut after_kill_m1) = (0, 0);
            for _ in 0..150 {
                let r = send(&c, http::Request::get(&url).body(full("")).unwrap())
                    .await
                    .expect("transport");
                assert_eq!(r.status, 200, "a GET failed: {}", r.text());
                ok += 1;
                if killed.load(Relaxed) && r.member() == "m1" {
                    after_kill_m1 += 1;
                }
            }
            (ok, after_kill_m1)
        });
    }
    let mut ms = ms;
    // Kill m1 once traffic is flowing.
    let flowing = eventually(Duration::from_secs(10), || async {
        (ms[1].hits.load(Relaxed) > 20).then_some(())
    })
    .await;
    assert!(flowing.is_some());
    ms[1].kill().await;
    killed.store(true, Relaxed);
    let mut total = 0;
    while let Some(r) = workers.join_next().await {
        let (ok, _) = r.expect("worker panicked (a GET failed)");
        total += ok;
    }
    assert_eq!(total, 600);
    let st = lb.member("b", 1).await;
    assert_eq!(st["status"], "E", "{st}");

    // Back after its retry time.
    ms[1].restart().await;
    let before = ms[1].hits.load(Relaxed);
    let back = eventually(Duration::from_secs(5), || async {
        let _ = get(&lb.url("/")).await;
        (ms[1].hits.load(Relaxed) > before).then_some(())
    })
    .await;
    assert!(back.is_some(), "killed member never returned");
    assert_eq!(lb.member("b", 1).await["status"], "Ok");
    lb.stop().await;
}

#[tokio::test]
async fn post_fails_over_when_nothing_was_sent() {
    let dead = dead_port().await;
    let b = Member::start("b").await;
    let lb = Lb::start(&config(&members(&[(&format!("http://{dead}"), ""), (&b.url(), "")]))).await;
    let req = http::Request::post(lb.url("/upload")).body(full("hello")).unwrap();
    let r = send(&client(), req).await.unwrap();
    assert_eq!((r.status, r.text().as_str(), r.member().as_str()), (200, "5", "b"));
    lb.stop().await;
}

#[tokio::test]
async fn post_is_not_replayed_after_it_was_sent_but_get_is() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let lb = Lb::start(&config(&members(&[(&a.url(), ""), (&b.url(), "")]))).await;
    // a closes the connection after reading the request: for a POST that is a 502, no retry.
    let r = send(&client(), http::Request::post(lb.url("/close")).body(full("x")).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("not retried"), "{}", r.text());
    assert_eq!(b.hits.load(Relaxed), 0, "the POST must not reach a second member");
    // A GET is idempotent: the same failure fails over (and /close closes on b too, so both fail).
    let r = get(&lb.url("/close")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("attempt"), "{}", r.text());
    assert!(b.hits.load(Relaxed) >= 1, "the GET should have been tried on b");
    lb.stop().await;
}

#[tokio::test]
async fn no_usable_member_is_503_with_a_reason() {
    let (d1, d2) = (dead_port().await, dead_port().await);
    let body = format!(
        "forcerecovery = false\n{}",
        members(&[(&format!("http://{d1}"), ""), (&format!("http://{d2}"), "")])
    );
    let lb = Lb::start(&config(&body)).await;
    let r = get(&lb.url("/")).await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("connect"), "{}", r.text());
    // Both are now in error: the next request is refused at once and says why.
    let r = get(&lb.url("/")).await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("no usable member") && r.text().contains("2 E"), "{}", r.text());
    lb.stop().await;
}

#[tokio::test]
async fn maxattempts_zero_means_no_failover() {
    let dead = dead_port().await;
    let b = Member::start("b").await;
    let body =
        format!("maxattempts = 0\n{}", members(&[(&format!("http://{dead}"), ""), (&b.url(), "")]));
    let lb = Lb::start(&config(&body)).await;
    assert_eq!(get(&lb.url("/")).await.status, 503);
    assert_eq!(get(&lb.url("/")).await.member(), "b");
    lb.stop().await;
}

#[tokio::test]
async fn forcerecovery_clears_error_when_all_members_fail() {
    let mut a = Member::start("a").await;
    let body = format!("{APACHE_RETRY_ONLY}{}", members(&[(&a.url(), "retry = 3600")]));
    let lb = Lb::start(&config(&body)).await;
    a.kill().await;
    assert_eq!(get(&lb.url("/")).await.status, 503);
    assert_eq!(lb.member("b", 0).await["status"], "E");
    a.restart().await;
    // Retry is an hour away, but with every member in error, forcerecovery tries again.
    let r = get(&lb.url("/")).await;
    assert_eq!((r.status, r.member().as_str()), (200, "a"));
    lb.stop().await;
}

#[tokio::test]
async fn member_timeout_is_504_and_failontimeout_marks_error() {
    let slow = Member::start_slow("slow", Duration::from_secs(3)).await;
    let body =
        format!("failontimeout = true\n{}", members(&[(&slow.url(), "timeout = \"200ms\"")]));
    let lb = Lb::start(&config(&body)).await;
    let r = get(&lb.url("/")).await;
    assert_eq!(r.status, 504);
    assert!(r.text().contains("no response head within"), "{}", r.text());
    assert_eq!(lb.member("b", 0).await["status"], "E");
    lb.stop().await;
}

#[tokio::test]
async fn a_get_that_times_out_is_tried_on_another_member_and_a_post_is_not() {
    let slow = Member::start_slow("slow", Duration::from_secs(3)).await;
    let fast = Member::start("fast").await;
    let body = format!(
        "lbmethod = \"byrequests\"\n{APACHE_RETRY_ONLY}{}",
        members(&[(&slow.url(), "timeout = \"200ms\""), (&fast.url(), "")])
    );
    let lb = Lb::start(&config(&body)).await;
    // byrequests picks the first member first: the slow one.
    let r = get(&lb.url("/")).await;
    assert_eq!((r.status, r.member()), (200, "fast".to_owned()), "{}", r.text());
    assert_eq!(slow.hits.load(Relaxed), 1, "the slow one had it first");
    let lb2 = Lb::start(&config(&body)).await;
    let req = http::Request::post(lb2.url("/")).body(full("x")).expect("request");
    let r = send(&client(), req).await.expect("answer");
    assert_eq!(r.status, 504, "a POST is not replayed: {}", r.text());
    lb.stop().await;
    lb2.stop().await;
}

#[tokio::test]
async fn a_member_that_stalls_midway_is_cut_off_at_its_timeout() {
    // A member that sends the head and 10 of 100 bytes, then nothing.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let _member = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
                let _ = s.write_all(head).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let body = format!(
        "{APACHE_RETRY_ONLY}{}",
        members(&[(&format!("http://{addr}"), "timeout = \"300ms\"")])
    );
    let lb = Lb::start(&config(&body)).await;
    let req = http::Request::get(lb.url("/")).body(full("")).expect("request");
    let got = tokio::time::timeout(Duration::from_secs(10), send(&client(), req))
        .await
        .expect("not left hanging for the member's 30 s");
    let Err(e) = got else { panic!("the client must see an incomplete answer, not a short one") };
    assert!(e.contains("Incomplete") || e.contains("Body"), "{e}");
    let m = lb.member("b", 0).await;
    assert!(m.to_string().contains("response body"), "the member's error says why: {m}");
    lb.stop().await;
}

#[tokio::test]
async fn a_member_that_resets_midway_cuts_the_answer_off_visibly() {
    // A member that sends the head and 10 of 100 bytes, then resets the connection.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let _member = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
            let _ = s.write_all(head).await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    let body = format!("{APACHE_RETRY_ONLY}{}", members(&[(&format!("http://{addr}"), "")]));
    let lb = Lb::start(&config(&body)).await;
    let req = http::Request::get(lb.url("/")).body(full("")).expect("request");
    let got = tokio::time::timeout(Duration::from_secs(10), send(&client(), req))
        .await
        .expect("an answer in time");
    let Err(e) = got else { panic!("the client must see an incomplete answer, not a short one") };
    assert!(e.contains("Incomplete") || e.contains("Body"), "{e}");
    lb.stop().await;
}

#[tokio::test]
async fn garbage_from_a_member_is_502() {
    let (addr, _t) = raw_member(b"this is not HTTP\r\n\r\n").await;
    let lb = Lb::start(&config(&members(&[(&format!("http://{addr}"), "")]))).await;
    let r = get(&lb.url("/")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().to_lowercase().contains("invalid") || r.text().contains("parse"),
        "{}",
        r.text()
    );
    lb.stop().await;
}

#[tokio::test]
async fn failonstatus_marks_the_member_in_error() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let body = format!("failonstatus = [503]\n{}", members(&[(&a.url(), ""), (&b.url(), "")]));
    let lb = Lb::start(&config(&body)).await;
    let r = get(&lb.url("/status/503")).await;
    assert_eq!((r.status, r.member().as_str()), (503, "a"));
    assert_eq!(lb.member("b", 0).await["status"], "E");
    // A 500 is not in the list: b answers it and stays Ok.
    let r = get(&lb.url("/status/500")).await;
    assert_eq!((r.status, r.member().as_str()), (500, "b"));
    assert_eq!(lb.member("b", 1).await["status"], "Ok");
    lb.stop().await;
}

#[tokio::test]
async fn balancer_timeout_waits_for_a_usable_member() {
    let mut a = Member::start("a").await;
    let body = format!(
        "timeout = \"3s\"\nforcerecovery = false\n{APACHE_RETRY_ONLY}{}",
        members(&[(&a.url(), "retry = \"400ms\"")])
    );
    let lb = Lb::start(&config(&body)).await;
    a.kill().await;
    assert_eq!(get(&lb.url("/")).await.status, 503);
    a.restart().await;
    // Now in E for 400 ms: the balancer timeout keeps polling instead of answering 503.
    let r = get(&lb.url("/")).await;
    assert_eq!((r.status, r.member().as_str()), (200, "a"), "{}", r.text());
    lb.stop().await;
}
