//! What lb does to requests and responses on the way through.
use bytes::Bytes;
use http_body_util::BodyExt;
use lb_tests::*;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn listener_config(routes: &str, balancer: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\naccess_log = false\n{routes}\n{balancer}\n"
    )
}

#[tokio::test]
async fn proxy_pass_reverse_rewrites_location_headers() {
    let m = Member::start("m").await;
    let cfg = listener_config(
        "[[listener.proxy_pass]]\npath = \"/app/\"\nto = \"balancer://b/\"\nreverse = true\n",
        &format!("[balancer.b]\n{}", members(&[(&m.url(), "")])),
    );
    let lb = Lb::start(&cfg).await;
    let r = get(&lb.url("/app/redirect")).await;
    assert_eq!(r.status, 302);
    let host = lb.addr.to_string();
    assert_eq!(r.headers["location"], format!("http://{host}/app/target?x=1"));
    assert_eq!(r.headers["content-location"], format!("http://{host}/app/here"));
    // Only the ProxyPassReverse headers are rewritten.
    assert_eq!(r.headers["x-other"], format!("{}/untouched", m.url()));
    lb.stop().await;
}

#[tokio::test]
async fn longest_prefix_wins_and_paths_are_joined() {
    let a = Member::start("a").await;
    let b = Member::start("b").await;
    let direct = Member::start("direct").await;
    let cfg = listener_config(
        &format!(
            "[[listener.proxy_pass]]\npath = \"/\"\nto = \"balancer://one/\"\n\
             [[listener.proxy_pass]]\npath = \"/api\"\nto = \"balancer://two/v2\"\n\
             [[listener.proxy_pass]]\npath = \"/raw/\"\nto = \"{}/base/\"\n",
            direct.url()
        ),
        &format!(
            "[balancer.one]\n[[balancer.one.member]]\nurl = \"{}\"\n[balancer.two]\n[[balancer.two.member]]\nurl = \"{}/root\"\n",
            a.url(),
            b.url()
        ),
    );
    let lb = Lb::start(&cfg).await;
    let first_line = |r: &Reply| r.text().lines().next().unwrap_or("").to_owned();
    let r = get(&lb.url("/api/x/headers?id=7")).await;
    assert_eq!(
        (r.member(), first_line(&r)),
        ("b".into(), "GET /root/v2/x/headers?id=7 HTTP/1.1".into())
    );
    let r = get(&lb.url("/apiary/headers")).await;
    assert_eq!(r.member(), "a", "/api must not match /apiary");
    let r = get(&lb.url("/raw/headers")).await;
    assert_eq!(
        (r.member(), first_line(&r)),
        ("direct".into(), "GET /base/headers HTTP/1.1".into())
    );
    let r = get(&lb.url("/headers")).await;
    assert_eq!((r.member(), first_line(&r)), ("a".into(), "GET /headers HTTP/1.1".into()));
    let r = get(&lb.url("/api/headers")).await;
    assert_eq!(first_line(&r), "GET /root/v2/headers HTTP/1.1");
    lb.stop().await;
}

#[tokio::test]
async fn forwarded_headers_via_and_hop_by_hop() {
    let m = Member::start("m").await;
    let lb = Lb::start(&config(&members(&[(&m.url(), "")]))).await;
    let req = "GET /headers HTTP/1.1\r\nHost: public.example\r\nConnection: keep-alive, x-hop\r\nX-Hop: secret\r\n\
         Keep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\nX-Forwarded-For: 10.1.2.3\r\n\
         X-End-To-End: kept\r\nConnection: close\r\n\r\n";
    let resp = raw(lb.addr, req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let (resp_head, echoed) = resp.split_once("\r\n\r\n").expect("head and body");
    // `echoed` is what the member received.
    let lower = echoed.to_lowercase();
    assert!(lower.contains("x-forwarded-for: 10.1.2.3, 127.0.0.1\n"), "{resp}");
    assert!(lower.contains("x-forwarded-host: public.example\n"), "{resp}");
    assert!(lower.contains("x-forwarded-proto: http\n"), "{resp}");
    assert!(lower.contains("via: 1.1 lb\n"), "{resp}");
    assert!(lower.contains("x-end-to-end: kept\n"), "{resp}");
    assert!(lower.contains(&format!("host: {}\n", m.addr)), "member gets its own Host: {resp}");
    for gone in ["x-hop:", "keep-alive:", "proxy-authorization:", "te:", "connection:"] {
        assert!(!lower.contains(&format!("\n{gone}")), "{gone} reached the member: {resp}");
    }
    // The response carries Via too.
    assert!(resp_head.to_lowercase().contains("\r\nvia: 1.1 lb"), "{resp}");
    lb.stop().await;
}

#[tokio::test]
async fn preserve_host_passes_the_client_host() {
    let m = Member::start("m").await;
    let cfg = listener_config(
        "[[listener.proxy_pass]]\npath = \"/\"\nto = \"balancer://b/\"\npreserve_host = true\n",
        &format!("[balancer.b]\n{}", members(&[(&m.url(), "")])),
    );
    let lb = Lb::start(&cfg).await;
    let resp = raw(
        lb.addr,
        b"GET /headers HTTP/1.1\r\nHost: shop.example:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.to_lowercase().contains("\nhost: shop.example:8080\n"), "{resp}");
    lb.stop().await;
}

#[tokio::test]
async fn chunked_bodies_both_ways() {
    let m = Member::start("m").await;
    let lb = Lb::start(&config(&members(&[(&m.url(), "")]))).await;
    // A chunked upload (no length known) and a chunked download.
    let req = http::Request::post(lb.url("/upload"))
        .body(Unsized(Generated::new(300_000)).boxed())
        .unwrap();
    let r = send(&client(), req).await.unwrap();
    assert_eq!((r.status, r.text()), (200, "300000".to_owned()));
    let resp =
        raw(lb.addr, b"GET /bytes/70000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(
        resp.to_lowercase().contains("transfer-encoding: chunked"),
        "{}",
        &resp[..200.min(resp.len())]
    );
    let r = get(&lb.url("/bytes/70000")).await;
    assert_eq!(r.body.len(), 70000);
    lb.stop().await;
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let m = Member::start("m").await;
    let lb = Lb::start(&config(&members(&[(&m.url(), "")]))).await;
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n =
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await.unwrap().unwrap();
        assert_eq!(n, 1, "closed before the 101 head ended: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // Bytes now flow both ways through lb, unchanged.
    for msg in [&b"hello through lb"[..], &[0u8, 1, 2, 255, 254][..], &vec![7u8; 100_000][..]] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    lb.stop().await;
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let m = Member::start("m").await;
    let lb = Lb::start(&config(&members(&[(&m.url(), "")]))).await;
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    for _ in 0..3 {
        let r =
            send(&c, http::Request::get(lb.url("/headers")).body(full("")).unwrap()).await.unwrap();
        assert_eq!(r.status, 200);
        let t = r.text().to_lowercase();
        assert!(t.starts_with("get /headers http/1.1"), "{t}");
        assert!(t.contains("via: 2.0 lb"), "{t}");
        // The member's own header values reach an HTTP/2 client, copied out of the member
        // connection's buffer.
        assert_eq!(r.member(), "m");
        assert_eq!(r.headers["via"], "1.1 lb");
    }
    lb.stop().await;
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// 100 MiB up and 100 MiB down through a separate lb process, whose peak RSS must stay small:
/// bodies are streamed, never buffered.
#[tokio::test]
async fn hundred_mib_each_way_with_bounded_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let m = Member::start("m").await;
    let port = free_port();
    let admin = free_port();
    let dir = std::env::temp_dir().join(format!("lb-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    let cfg = config(&members(&[(&m.url(), "")]))
        .replace(
            "bind = \"127.0.0.1:0\"\n\n[[listener]]",
            &format!("bind = \"127.0.0.1:{admin}\"\n\n[[listener]]"),
        )
        .replacen(
            "name = \"web\"\nbind = \"127.0.0.1:0\"",
            &format!("name = \"web\"\nbind = \"127.0.0.1:{port}\""),
            1,
        );
    std::fs::write(&path, cfg).unwrap();
    let child = ChildGuard(
        Command::new(lb_bin())
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lb"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let up = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;
    assert!(up.is_some(), "lb did not start");
    let c = client();
    // A first request opens the member connection; then the baseline is taken.
    let first = send(&c, http::Request::get(format!("{base}/")).body(full("")).unwrap()).await;
    assert_eq!(first.unwrap().status, 200);
    let before = vm_hwm_kib(child.0.id());
    let req =
        http::Request::post(format!("{base}/upload")).body(Generated::new(SIZE).boxed()).unwrap();
    let r = send(&c, req).await.unwrap();
    assert_eq!(r.text(), SIZE.to_string());
    let resp = c
        .request(
            http::Request::get(format!("{base}/bytes/{SIZE}")).body(full(Bytes::new())).unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(f) = body.frame().await {
        got += f.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, SIZE);
    let hwm = vm_hwm_kib(child.0.id());
    eprintln!("lb peak RSS before: {before} KiB, after 2 x {SIZE} bytes: {hwm} KiB");
    // Streaming: moving 200 MiB raises lb's peak memory by a few buffers, not by the bodies.
    assert!(
        hwm < before + 16 * 1024,
        "lb peak RSS grew from {before} to {hwm} KiB while moving 2 x 100 MiB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
