//! Apache's `ping` for HTTP members: a request with a body asks for `100 Continue` first. A
//! member that never answers gets E and the POST, body intact, goes to another member; one that
//! answers 100 gets the body; one that answers the final status at once still works.
use lb_tests::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A member that reads requests and answers `reply` after the head, or never (None). It counts
/// the bytes it received after the request head (body bytes) and the heads it saw.
struct Raw {
    addr: SocketAddr,
    body_bytes: Arc<AtomicU64>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn raw(reply: Option<&'static str>) -> Raw {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let body_bytes = Arc::new(AtomicU64::new(0));
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (b, h) = (body_bytes.clone(), heads.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (b, h) = (b.clone(), h.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 16384];
                let mut answered = false;
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        if !answered {
                            h.lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&seen[..end]).into_owned());
                            b.fetch_add((seen.len() - end - 4) as u64, Relaxed);
                            answered = true;
                            if let Some(r) = reply {
                                let _ = s.write_all(r.as_bytes()).await;
                            }
                        } else {
                            b.fetch_add(n as u64, Relaxed);
                        }
                    }
                }
            });
        }
    });
    Raw { addr, body_bytes, heads, _task: task }
}

async fn post(lb: &Lb, path: &str, body: Vec<u8>) -> Reply {
    let req = http::Request::post(lb.url(path)).body(full(body)).unwrap();
    send(&client(), req).await.expect("POST through lb")
}

#[tokio::test]
async fn a_member_that_never_answers_100_gets_e_and_the_post_goes_elsewhere_intact() {
    let silent = raw(None).await;
    let b = Member::start("b").await;
    let ping = Duration::from_millis(300);
    let cfg = config(&format!(
        "ping = \"{}ms\"\n{}{APACHE_RETRY_ONLY_TAIL}",
        ping.as_millis(),
        members(&[(&format!("http://{}", silent.addr), ""), (&b.url(), "")])
    ));
    let lb = Lb::start(&cfg).await;
    let body = vec![b'x'; 100_000];
    let t = Instant::now();
    // byrequests starts with the first member: the silent one.
    let r = post(&lb, "/upload", body.clone()).await;
    let took = t.elapsed();
    assert_eq!((r.status, r.member(), r.text()), (200, "b".to_owned(), body.len().to_string()));
    assert!(took >= ping && took < ping * 10, "answered after {took:?} with ping {ping:?}");
    let head =
        silent.heads.lock().unwrap().first().cloned().expect("the silent member saw the request");
    assert!(head.to_ascii_lowercase().contains("expect: 100-continue"), "{head}");
    assert_eq!(silent.body_bytes.load(Relaxed), 0, "the body went to the silent member");
    let m = lb.member("b", 0).await;
    assert!(m["status"].as_str().unwrap_or("").contains('E'), "{m}");
    assert!(m["last_error"]["message"].as_str().unwrap_or("").contains("100 Continue"), "{m}");
    // Requests without a body are not held up.
    assert_eq!(get(&lb.url("/")).await.status, 200);
    lb.stop().await;
}

#[tokio::test]
async fn a_member_that_answers_100_gets_the_body_and_one_that_answers_at_once_works() {
    let b = Member::start("b").await;
    let cfg = config(&format!("ping = 1\n{}", members(&[(&b.url(), "")])));
    let lb = Lb::start(&cfg).await;
    // The test member (hyper) answers 100 Continue when its handler reads the body.
    for size in [1, 70_000] {
        let t = Instant::now();
        let r = post(&lb, "/upload", vec![b'y'; size]).await;
        assert_eq!((r.status, r.text()), (200, size.to_string()));
        // Sent on the member's 100, not after the ping time ran out.
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
    }
    lb.stop().await;

    let eager =
        raw(Some("HTTP/1.1 201 Created\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndone"))
            .await;
    let cfg = config(&format!("ping = 1\n{}", members(&[(&format!("http://{}", eager.addr), "")])));
    let lb = Lb::start(&cfg).await;
    let t = Instant::now();
    let r = post(&lb, "/", vec![b'z'; 5000]).await;
    assert_eq!((r.status, r.text()), (201, "done".to_owned()));
    assert!(t.elapsed() < Duration::from_secs(1), "waited for a 100 that was not needed");
    let m = lb.member("b", 0).await;
    assert!(!m["status"].as_str().unwrap_or("").contains('E'), "{m}");
    lb.stop().await;
}

/// Apache's retry semantics only: no probes or ejection in these tests.
const APACHE_RETRY_ONLY_TAIL: &str = "\n[balancer.b.ejection]\nenabled = false\n";
