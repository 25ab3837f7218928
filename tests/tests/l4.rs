//! Layer 4: TCP listeners balancing whole connections to tcp:// members. The relay tests run
//! with splice(2) and with the buffered copy.
use lb_tests::l4::{Fnv, Mode, Noise, TcpMember, connect, read_line, tcp_config};
use lb_tests::{Lb, dead_port, eventually, members};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_each_way_arrive_intact_and_are_counted() {
    for splice in [true, false] {
        let relay = format!("splice = {splice}");
        let m = TcpMember::start("m1", Mode::Echo, false).await;
        let lb = Lb::start(&tcp_config(&relay, &members(&[(&m.url(), "")]))).await;
        let (s, name) = connect(lb.addr).await;
        assert_eq!(name, "m1");
        let total = 100 * MIB;
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            let (mut noise, mut hash, mut buf) =
                (Noise(0x9e37_79b9_7f4a_7c15), Fnv::default(), vec![0u8; 256 * 1024]);
            let mut sent = 0;
            while sent < total {
                noise.fill(&mut buf);
                wr.write_all(&buf).await.expect("write through lb");
                hash.update(&buf);
                sent += buf.len();
            }
            wr.shutdown().await.expect("half-close");
            hash.0
        });
        let (mut hash, mut got, mut buf) = (Fnv::default(), 0usize, vec![0u8; 256 * 1024]);
        loop {
            let n = rd.read(&mut buf).await.expect("read through lb");
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            got += n;
        }
        let sent_hash = writer.await.expect("writer");
        assert_eq!(got, total, "every byte came back");
        assert_eq!(hash.0, sent_hash, "and unchanged");
        // Bytes are counted per member both ways: the stream out, and the stream back plus greeting.
        let want_read = (total + "m1\n".len()) as u64;
        let counted = eventually(Duration::from_secs(5), || async {
            let s = lb.member("b", 0).await;
            (s["bytes_sent"] == total as u64 && s["bytes_received"] == want_read).then_some(s)
        })
        .await;
        assert!(counted.is_some(), "{}", lb.member("b", 0).await);
    }
}

#[tokio::test]
async fn the_client_half_closes_and_the_answer_still_arrives() {
    for splice in [true, false] {
        let relay = format!("splice = {splice}");
        let m = TcpMember::start("m1", Mode::AnswerAtEof, false).await;
        let lb = Lb::start(&tcp_config(&relay, &members(&[(&m.url(), "")]))).await;
        let (mut s, _) = connect(lb.addr).await;
        s.write_all(&vec![7u8; 5000]).await.unwrap();
        s.shutdown().await.unwrap();
        // The member answers only after it saw the client's FIN: the other way stayed open.
        assert_eq!(read_line(&mut s).await, "got 5000");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}

#[tokio::test]
async fn the_member_half_closes_and_the_client_can_still_send() {
    for splice in [true, false] {
        let relay = format!("splice = {splice}");
        let m = TcpMember::start("m1", Mode::CloseFirst, false).await;
        let lb = Lb::start(&tcp_config(&relay, &members(&[(&m.url(), "")]))).await;
        let (mut s, _) = connect(lb.addr).await;
        let mut rest = Vec::new();
        // The member's FIN reaches the client...
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty());
        // ...and the client's bytes still reach the member.
        s.write_all(&vec![1u8; 3 * MIB]).await.unwrap();
        s.shutdown().await.unwrap();
        let got = eventually(Duration::from_secs(5), || async {
            m.received.lock().unwrap().first().copied()
        })
        .await;
        assert_eq!(got, Some(3 * MIB as u64));
    }
}

#[tokio::test]
async fn a_member_dying_mid_stream_closes_only_its_clients() {
    for splice in [true, false] {
        let relay = format!("splice = {splice}");
        let mut a = TcpMember::start("a", Mode::Echo, false).await;
        let b = TcpMember::start("b", Mode::Echo, false).await;
        let lb = Lb::start(&tcp_config(&relay, &members(&[(&a.url(), ""), (&b.url(), "")]))).await;
        let (mut s1, n1) = connect(lb.addr).await;
        let (mut s2, n2) = connect(lb.addr).await;
        assert_eq!((n1.as_str(), n2.as_str()), ("a", "b"), "byrequests alternates");
        a.kill().await;
        let mut buf = [0u8; 16];
        let ended = tokio::time::timeout(Duration::from_secs(5), s1.read(&mut buf)).await;
        assert!(
            matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
            "client of the dead member closed: {ended:?}"
        );
        s2.write_all(b"still here\n").await.unwrap();
        assert_eq!(read_line(&mut s2).await, "still here");
    }
}

#[tokio::test]
async fn a_refused_connect_fails_over() {
    let dead = dead_port().await;
    let live = TcpMember::start("live", Mode::Echo, false).await;
    let body = members(&[(&format!("tcp://{dead}"), ""), (&live.url(), "")]);
    let lb = Lb::start(&tcp_config("", &body)).await;
    for _ in 0..4 {
        let (_, name) = connect(lb.addr).await;
        assert_eq!(name, "live");
    }
    let d = lb.member("b", 0).await;
    assert!(d["status"].as_str().unwrap().contains('E'), "{d}");
    assert_eq!(d["elected"], 1, "tried once, then in error: {d}");
}

#[tokio::test]
async fn send_proxy_v1_and_v2_tell_the_member_who_the_client_is() {
    for v in ["v1", "v2"] {
        let m = TcpMember::start("m", Mode::Echo, true).await;
        let body = members(&[(&m.url(), &format!("send_proxy = \"{v}\""))]);
        let lb = Lb::start(&tcp_config("", &body)).await;
        let (s, name) = connect(lb.addr).await;
        assert_eq!(name, "m");
        let (client, local) = (s.local_addr().unwrap(), lb.addr);
        let want = if v == "v1" {
            format!(
                "PROXY TCP4 {} {} {} {}\r\n",
                client.ip(),
                local.ip(),
                client.port(),
                local.port()
            )
            .into_bytes()
        } else {
            let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            h.extend_from_slice(&[0x21, 0x11, 0, 12]);
            for ip in [client.ip(), local.ip()] {
                let std::net::IpAddr::V4(v4) = ip else { panic!("v4 loopback") };
                h.extend_from_slice(&v4.octets());
            }
            h.extend_from_slice(&client.port().to_be_bytes());
            h.extend_from_slice(&local.port().to_be_bytes());
            h
        };
        assert_eq!(m.headers.lock().unwrap().first(), Some(&want), "{v}");
    }
}

#[tokio::test]
async fn accept_proxy_takes_the_client_from_the_header_and_refuses_garbage() {
    for splice in [true, false] {
        let relay = format!("splice = {splice}");
        let m = TcpMember::start("m", Mode::Echo, true).await;
        let body = members(&[(&m.url(), "send_proxy = \"v1\"")]) + lb_tests::NO_IDLE_PROBES;
        let lb = Lb::start(&tcp_config(&format!("accept_proxy = true\n{relay}"), &body)).await;
        // A PROXY-speaking client (as HAProxy sends it): v1, then v2 with the same addresses.
        let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n".to_vec();
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 7, 192, 0, 2, 1]);
        v2.extend_from_slice(&4242u16.to_be_bytes());
        v2.extend_from_slice(&443u16.to_be_bytes());
        for header in [v1, v2] {
            let mut s = TcpStream::connect(lb.addr).await.unwrap();
            s.write_all(&header).await.unwrap();
            s.write_all(b"ping\n").await.unwrap();
            assert_eq!(read_line(&mut s).await, "m");
            assert_eq!(read_line(&mut s).await, "ping");
        }
        let want = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n".to_vec();
        assert_eq!(*m.headers.lock().unwrap(), vec![want.clone(), want]);
        // Garbage instead of a header: closed, and the member never sees it.
        let before = m.conns.load(std::sync::atomic::Ordering::Relaxed);
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?} {out:?}");
        assert_eq!(m.conns.load(std::sync::atomic::Ordering::Relaxed), before);
    }
}

#[tokio::test]
async fn a_full_member_is_skipped_without_being_marked_in_error() {
    let a = TcpMember::start("a", Mode::Echo, false).await;
    let b = TcpMember::start("b", Mode::Echo, false).await;
    // a is preferred (lbset 0) but takes one connection at a time; b stands by in lbset 1.
    let body = members(&[(&a.url(), "max = 1\nacquire = \"100ms\""), (&b.url(), "lbset = 1")]);
    let lb = Lb::start(&tcp_config("", &body)).await;
    let (_held, first) = connect(lb.addr).await;
    let (_second, second) = connect(lb.addr).await;
    assert_eq!((first.as_str(), second.as_str()), ("a", "b"));
    let s = lb.member("b", 0).await;
    assert_eq!(s["status"], "Ok", "busy is not broken: {s}");
    assert_eq!(s["busy"], 1, "{s}");
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_listener_timeout() {
    for splice in [true, false] {
        let m = TcpMember::start("m", Mode::Echo, false).await;
        let extra = format!("timeout = \"300ms\"\nsplice = {splice}");
        let lb = Lb::start(&tcp_config(&extra, &members(&[(&m.url(), "")]))).await;
        let (mut s, _) = connect(lb.addr).await;
        let started = std::time::Instant::now();
        // Traffic keeps it open...
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            s.write_all(b"tick\n").await.unwrap();
            assert_eq!(read_line(&mut s).await, "tick");
        }
        // ...silence closes it.
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
        assert!(started.elapsed() >= Duration::from_millis(600 + 300), "closed too early");
    }
}
