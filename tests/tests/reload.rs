//! Reload: a new config applied while HTTP, HTTPS and TCP traffic flows, with nothing dropped.
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use lb_tests::certs::Pki;
use lb_tests::l4::{Mode, TcpMember, read_line};
use lb_tests::{Lb, Member, eventually, parse_config};
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Setup<'a> {
    http: Vec<(String, f64)>,
    tcp: Vec<(String, f64)>,
    cert: &'a lb_tests::certs::Leaf,
}

fn config(s: &Setup) -> String {
    let mut c = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n
[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\naccess_log = false\n  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"balancer://app/\"\n
[[listener]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\naccess_log = false\n  [[listener.tls]]\n  cert = \"{}\"\n  key = \"{}\"\n  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"balancer://app/\"\n
[[listener]]\nname = \"tcp\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nbalancer = \"streams\"\naccess_log = false\n
[balancer.app]\n",
        s.cert.cert.display(),
        s.cert.key.display()
    );
    for (url, w) in &s.http {
        c.push_str(&format!("[[balancer.app.member]]\nurl = \"{url}\"\nloadfactor = {w}\n"));
    }
    c.push_str("[balancer.streams]\n");
    for (url, w) in &s.tcp {
        c.push_str(&format!("[[balancer.streams.member]]\nurl = \"{url}\"\nloadfactor = {w}\n"));
    }
    c
}

/// Requests sent, and failures, by one load loop.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

const ROUNDS: u64 = 5000;
const LIMIT: Duration = Duration::from_secs(30);

/// GETs over one keep-alive connection at a time (a new one every 25 requests), until `stop`
/// or ROUNDS.
async fn http_load(
    addr: std::net::SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    stop: Arc<AtomicBool>,
    t: Arc<Tally>,
) {
    let end = Instant::now() + LIMIT;
    let mut n = 0;
    while n < ROUNDS && Instant::now() < end && !stop.load(Relaxed) {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let io: Box<dyn lb_tests::l4::Io> = match &tls {
            None => Box::new(tcp),
            Some(c) => Box::new(
                c.connect(ServerName::try_from("a.test").unwrap(), tcp).await.expect("tls"),
            ),
        };
        let (mut s, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(io)).await.expect("h1");
        tokio::spawn(conn);
        for _ in 0..25 {
            n += 1;
            let req = http::Request::get("/")
                .header("host", "a.test")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let ok = match s.send_request(req).await {
                Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                Err(_) => false,
            };
            let c = if ok { &t.ok } else { &t.failed };
            c.fetch_add(1, Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_keeps_member_state() {
    let pki = Pki::new("reload");
    let cert = pki.leaf("site", &["a.test"]);
    let (h1, h2, h3) =
        (Member::start("h1").await, Member::start("h2").await, Member::start("h3").await);
    let t1 = TcpMember::start("t1", Mode::Echo, false).await;
    let t2 = TcpMember::start("t2", Mode::Echo, false).await;
    let before = Setup {
        http: vec![(h1.url(), 1.0), (h2.url(), 1.0)],
        tcp: vec![(t1.url(), 1.0)],
        cert: &cert,
    };
    let lb = Lb::start(&config(&before)).await;
    let (web, secure, tcp) = (lb.listener("web"), lb.listener("secure"), lb.listener("tcp"));
    let old_der = cert.der.clone();
    let tls = pki.client(&[b"http/1.1"], &[&rustls::version::TLS13], None);
    // Open streams that live across the reload.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let (s, name) = lb_tests::l4::connect(tcp).await;
        assert_eq!(name, "t1");
        streams.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (plain, over_tls) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..2 {
        load.spawn(http_load(web, None, stop.clone(), plain.clone()));
        load.spawn(http_load(secure, Some(tls.clone()), stop.clone(), over_tls.clone()));
    }
    let started = eventually(Duration::from_secs(10), || async {
        (plain.ok.load(Relaxed) > 50 && over_tls.ok.load(Relaxed) > 50).then_some(())
    })
    .await;
    assert!(started.is_some(), "load did not start");
    let h2_before = lb.member("app", 1).await;
    // A new certificate for the same name, in the same files; h1 out, h3 in, h2 weighted 3;
    // t2 added to the TCP balancer.
    let rotated = pki.leaf("site", &["a.test"]);
    let after = Setup {
        http: vec![(h2.url(), 3.0), (h3.url(), 1.0)],
        tcp: vec![(t1.url(), 1.0), (t2.url(), 1.0)],
        cert: &rotated,
    };
    let summary = lb.handle.reload(parse_config(&config(&after))).await.expect("reload applied");
    assert!(summary.contains("members: 2 added, 1 removed"), "{summary}");
    let h1_at_reload = h1.hits.load(Relaxed);
    let at_reload = (plain.ok.load(Relaxed), over_tls.ok.load(Relaxed));
    // Keep the load on a while after the reload, then stop it.
    let flowing = eventually(Duration::from_secs(10), || async {
        let more = plain.ok.load(Relaxed) > at_reload.0 + 100
            && over_tls.ok.load(Relaxed) > at_reload.1 + 100;
        (more && h3.hits.load(Relaxed) > 20).then_some(())
    })
    .await;
    assert!(flowing.is_some(), "the load did not go on through the added member after the reload");
    // New TCP connections reach the new member too; the old streams still echo.
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(lb_tests::l4::connect(tcp).await.1);
    }
    assert!(names.contains(&"t2".to_owned()), "{names:?}");
    for s in &mut streams {
        s.write_all(b"across the reload\n").await.unwrap();
        assert_eq!(read_line(s).await, "across the reload");
    }
    stop.store(true, Relaxed);
    while load.join_next().await.is_some() {}
    assert_eq!(plain.failed.load(Relaxed), 0, "plain HTTP requests failed");
    assert_eq!(over_tls.failed.load(Relaxed), 0, "HTTPS requests failed");
    // h1 took at most its in-flight requests after the reload.
    assert!(h1.hits.load(Relaxed) <= h1_at_reload + 4, "the removed member still gets traffic");
    // The kept member is the same member: same id, its counters went on.
    let h2_after = lb.member("app", 0).await;
    assert_eq!(h2_after["url"], h2_before["url"]);
    assert_eq!(h2_after["id"], h2_before["id"], "{h2_after}");
    assert!(h2_after["elected"].as_u64() > h2_before["elected"].as_u64());
    assert_eq!(h2_after["loadfactor"], 3.0);
    // New TLS connections get the rotated certificate.
    let tcp_conn = TcpStream::connect(secure).await.unwrap();
    let tls_conn = tls.connect(ServerName::try_from("a.test").unwrap(), tcp_conn).await.unwrap();
    let shown = tls_conn.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(shown, rotated.der);
    assert_ne!(shown, old_der);
}

#[tokio::test]
async fn a_reload_that_cannot_bind_changes_nothing() {
    let m = Member::start("m1").await;
    let lb = Lb::start(&lb_tests::config(&lb_tests::members(&[(&m.url(), "")]))).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let mut cfg = lb_tests::config(&lb_tests::members(&[(&m.url(), "loadfactor = 7")]));
    cfg.push_str(&format!(
        "\n[[listener]]\nname = \"extra\"\nbind = \"{busy}\"\n  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"balancer://b/\"\n"
    ));
    let err = lb.handle.reload(parse_config(&cfg)).await.unwrap_err();
    assert!(err.contains("extra") && err.contains(&busy.to_string()), "{err}");
    assert_eq!(lb.member("b", 0).await["loadfactor"], 1.0, "nothing was applied");
    assert_eq!(lb_tests::get(&lb.url("/")).await.status, 200);
}

#[tokio::test]
async fn listeners_are_added_removed_and_rebound() {
    let m = Member::start("m1").await;
    let listener = |name: &str, bind: &str| {
        format!(
            "\n[[listener]]\nname = \"{name}\"\nbind = \"{bind}\"\naccess_log = false\n  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"balancer://b/\"\n"
        )
    };
    let base = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[balancer.b]\n[[balancer.b.member]]\nurl = \"{}\"\n",
        m.url()
    );
    let lb = Lb::start(&format!(
        "{base}{}{}",
        listener("a", "127.0.0.1:0"),
        listener("b", "127.0.0.1:0")
    ))
    .await;
    let (a_old, b_old) = (lb.listener("a"), lb.listener("b"));
    // A request in flight on the old socket of `a` across the reload.
    let mut open = TcpStream::connect(a_old).await.unwrap();
    open.write_all(b"GET /sleep/300 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let moved_to: std::net::SocketAddr =
        format!("127.0.0.1:{}", lb_tests::free_port()).parse().unwrap();
    let next =
        format!("{base}{}{}", listener("a", &moved_to.to_string()), listener("c", "127.0.0.1:0"));
    let summary = lb.handle.reload(parse_config(&next)).await.expect("reload");
    assert!(summary.contains("0 kept, 2 started, 2 stopped"), "{summary}");
    let now = lb.handle.listeners();
    assert_eq!(now.get("a"), Some(&moved_to));
    assert!(now.contains_key("c") && !now.contains_key("b"), "{now:?}");
    assert_eq!(lb_tests::get(&format!("http://{moved_to}/")).await.member(), "m1");
    assert_eq!(lb_tests::get(&format!("http://{}/", now["c"])).await.member(), "m1");
    // The removed and the moved-away sockets take no new connections.
    for gone in [a_old, b_old] {
        let refused = eventually(Duration::from_secs(5), || async {
            TcpStream::connect(gone).await.is_err().then_some(())
        })
        .await;
        assert!(refused.is_some(), "{gone} still accepts");
    }
    // The request in flight during the reload got its answer.
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut open, &mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}
