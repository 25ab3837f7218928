//! TLS: termination on HTTP and TCP listeners (certificate by SNI, ALPN, TLS 1.2 and 1.3) and
//! TLS to https:// members (verification, SNI, mTLS). Certificates are made at test time.
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb_tests::certs::{Leaf, Pki, provider};
use lb_tests::{Lb, Member, lb_bin};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;

const TLS13: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// An HTTP listener "web" with TLS blocks for `certs`, `/` → balancer b with `members`.
fn tls_config(certs: &[&Leaf], balancer_body: &str) -> String {
    let mut tls = String::new();
    for c in certs {
        tls.push_str(&format!(
            "\n  [[listener.tls]]\n  cert = \"{}\"\n  key = \"{}\"\n",
            c.cert.display(),
            c.key.display()
        ));
    }
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\naccess_log = false\n{tls}\n  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"balancer://b/\"\n\n[balancer.b]\n{balancer_body}\n"
    )
}

struct Answer {
    status: u16,
    body: String,
    version: http::Version,
    /// Full, or resumed from an earlier session.
    handshake: Option<rustls::HandshakeKind>,
}

/// GET `path` over TLS with SNI `name`, speaking whatever ALPN chose.
async fn get_tls(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    name: &str,
    path: &str,
) -> Result<Answer, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let sn = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let tls = connector.connect(sn, tcp).await.map_err(|e| format!("handshake: {e}"))?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let handshake = tls.get_ref().1.handshake_kind();
    let req = http::Request::get(path).header("host", name).body(Empty::<Bytes>::new()).unwrap();
    let resp = if h2 {
        let (mut s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        s.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        s.send_request(req).await.map_err(|e| e.to_string())?
    };
    let (status, version) = (resp.status().as_u16(), resp.version());
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer { status, body: String::from_utf8_lossy(&body).into_owned(), version, handshake })
}

/// Accepts any server certificate and remembers the one it was shown.
#[derive(Debug, Default)]
struct Recorder(Mutex<Option<CertificateDer<'static>>>);

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate lb presents for SNI `name` (None: no SNI at all).
async fn served_cert(addr: SocketAddr, name: Option<&str>) -> CertificateDer<'static> {
    let rec = Arc::new(Recorder::default());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(rec.clone())
        .with_no_client_auth();
    // An IP address as the name sends no SNI.
    cfg.enable_sni = name.is_some();
    let sn = ServerName::try_from(name.unwrap_or("127.0.0.1").to_owned()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let _tls =
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(sn, tcp).await.expect("handshake");
    rec.0.lock().unwrap().clone().expect("a certificate was shown")
}

#[tokio::test]
async fn sni_picks_each_certificate_and_unknown_names_get_the_first() {
    let pki = Pki::new("sni");
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["*.b.test"]);
    let m = Member::start("m1").await;
    let lb = Lb::start(&tls_config(&[&a, &b], &lb_tests::members(&[(&m.url(), "")]))).await;
    assert_eq!(served_cert(lb.addr, Some("a.test")).await, a.der);
    assert_eq!(served_cert(lb.addr, Some("x.b.test")).await, b.der);
    assert_eq!(served_cert(lb.addr, Some("unknown.test")).await, a.der);
    assert_eq!(served_cert(lb.addr, None).await, a.der);
}

#[tokio::test]
async fn rustls_clients_with_tls13_tls12_h2_and_http11_are_served() {
    let pki = Pki::new("versions");
    let a = pki.leaf("a", &["a.test"]);
    let m = Member::start("m1").await;
    let lb = Lb::start(&tls_config(&[&a], &lb_tests::members(&[(&m.url(), "")]))).await;
    for (versions, alpn, want) in [
        (TLS13, &[b"h2".as_slice(), b"http/1.1"][..], http::Version::HTTP_2),
        (TLS13, &[b"http/1.1".as_slice()][..], http::Version::HTTP_11),
        (TLS12, &[b"h2".as_slice()][..], http::Version::HTTP_2),
        (TLS12, &[][..], http::Version::HTTP_11),
    ] {
        let c = pki.client(alpn, versions, None);
        let r = get_tls(lb.addr, &c, "a.test", "/headers").await.expect("answer over TLS");
        assert_eq!((r.status, r.version), (200, want), "{}", r.body);
        // The member still gets pooled HTTP/1.1, told the client came over https.
        assert!(r.body.starts_with("GET /headers HTTP/1.1"), "{}", r.body);
        assert!(r.body.contains("x-forwarded-proto: https"), "{}", r.body);
    }
}

#[tokio::test]
async fn curl_gets_an_answer_over_tls_with_h2() {
    let pki = Pki::new("curl");
    let a = pki.leaf("a", &["a.test"]);
    let m = Member::start("m1").await;
    let lb = Lb::start(&tls_config(&[&a], &lb_tests::members(&[(&m.url(), "")]))).await;
    let port = lb.addr.port();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(pki.ca_path())
        .args(["--resolve", &format!("a.test:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code} %{http_version}", &format!("https://a.test:{port}/hello")])
        .output()
        .await
        .expect("run curl (cargo xtask test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.ends_with("\n200 2"), "{text}");
    assert!(text.starts_with("m1"), "{text}");
}

#[tokio::test]
async fn a_failed_handshake_harms_no_other_connection() {
    let pki = Pki::new("garbage");
    let a = pki.leaf("a", &["a.test"]);
    let m = Member::start("m1").await;
    let lb = Lb::start(&tls_config(&[&a], &lb_tests::members(&[(&m.url(), "")]))).await;
    let c = pki.client(&[b"http/1.1"], TLS13, None);
    // An open TLS connection, a plaintext client on the TLS port, a client that does not trust
    // lb's CA: the first connection keeps working.
    let tcp = TcpStream::connect(lb.addr).await.unwrap();
    let tls = c.connect(ServerName::try_from("a.test").unwrap(), tcp).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let plain = lb_tests::raw(lb.addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(!plain.contains("m1"), "plaintext got through: {plain}");
    let other = Pki::new("other");
    let stranger = other.client(&[b"http/1.1"], TLS13, None);
    assert!(get_tls(lb.addr, &stranger, "a.test", "/").await.is_err());
    let req = http::Request::get("/").header("host", "a.test").body(Empty::<Bytes>::new()).unwrap();
    let resp = s.send_request(req).await.expect("the first connection still serves");
    assert_eq!(resp.status(), 200);
}

/// A balancer b with one https member at `url`, with `tls` lines in `[balancer.b.tls]`.
fn upstream_config(url: &str, tls: &str) -> String {
    lb_tests::config(&format!(
        "[balancer.b.ejection]\nenabled = false\n[balancer.b.tls]\n{tls}\n[[balancer.b.member]]\nurl = \"{url}\"\n"
    ))
}

#[tokio::test]
async fn an_https_member_is_refused_without_its_ca_and_served_with_it() {
    let pki = Pki::new("upstream");
    let leaf = pki.leaf("member", &["member.test"]);
    let m = Member::start_tls("secure", pki.server(&leaf, false)).await;
    let url = format!("https://{}", m.addr);
    // The system's roots do not know the test CA.
    let lb = Lb::start(&upstream_config(&url, "server_name = \"member.test\"")).await;
    let r = lb_tests::get(&lb.url("/")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("TLS handshake"), "{}", r.text());
    lb.stop().await;
    let ca = format!("ca = \"{}\"\nserver_name = \"member.test\"", pki.ca_path().display());
    let lb = Lb::start(&upstream_config(&url, &ca)).await;
    for _ in 0..3 {
        let r = lb_tests::get(&lb.url("/")).await;
        assert_eq!((r.status, r.member()), (200, "secure".to_owned()), "{}", r.text());
    }
    // Pooled: one TLS connection served all three.
    assert_eq!(m.tls_ok.load(std::sync::atomic::Ordering::Relaxed), 1);
    // The wrong name fails verification.
    lb.stop().await;
    let wrong = format!("ca = \"{}\"\nserver_name = \"other.test\"", pki.ca_path().display());
    let lb = Lb::start(&upstream_config(&url, &wrong)).await;
    assert_eq!(lb_tests::get(&lb.url("/")).await.status, 503);
}

#[tokio::test]
async fn an_mtls_member_accepts_lb_only_with_the_client_certificate() {
    let pki = Pki::new("mtls");
    let leaf = pki.leaf("member", &["member.test"]);
    let client = pki.leaf("lb", &["lb.test"]);
    let m = Member::start_tls("mutual", pki.server(&leaf, true)).await;
    let url = format!("https://{}", m.addr);
    let base = format!("ca = \"{}\"\nserver_name = \"member.test\"", pki.ca_path().display());
    let lb = Lb::start(&upstream_config(&url, &base)).await;
    // TLS 1.3 refuses the missing certificate after the handshake: 502 (or 503 if earlier).
    let r = lb_tests::get(&lb.url("/")).await;
    assert!(r.status == 502 || r.status == 503, "{} {}", r.status, r.text());
    assert_eq!(m.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
    lb.stop().await;
    let with_cert = format!(
        "{base}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        client.cert.display(),
        client.key.display()
    );
    let lb = Lb::start(&upstream_config(&url, &with_cert)).await;
    let r = lb_tests::get(&lb.url("/")).await;
    assert_eq!((r.status, r.member()), (200, "mutual".to_owned()), "{}", r.text());
}

#[tokio::test]
async fn a_tcp_listener_terminates_tls_and_passes_plain_tcp() {
    use lb_tests::l4::{Mode, TcpMember, read_line, tcp_config};
    let pki = Pki::new("tcp-tls");
    let a = pki.leaf("a", &["a.test"]);
    let m = TcpMember::start("plain", Mode::Echo, false).await;
    let extra = format!(
        "\n  [[listener.tls]]\n  cert = \"{}\"\n  key = \"{}\"\n",
        a.cert.display(),
        a.key.display()
    );
    let lb = Lb::start(&tcp_config(&extra, &lb_tests::members(&[(&m.url(), "")]))).await;
    let c = pki.client(&[], TLS12, None);
    let tcp = TcpStream::connect(lb.addr).await.unwrap();
    let mut tls = c.connect(ServerName::try_from("a.test").unwrap(), tcp).await.unwrap();
    assert_eq!(read_line(&mut tls).await, "plain");
    tokio::io::AsyncWriteExt::write_all(&mut tls, b"through tls\n").await.unwrap();
    assert_eq!(read_line(&mut tls).await, "through tls");
}

#[tokio::test]
async fn sni_passthrough_routes_by_server_name_without_terminating() {
    use lb_tests::l4::{read_line, tls_member};
    let pki = Pki::new("passthrough");
    let (a, b, d) =
        (pki.leaf("a", &["a.test"]), pki.leaf("b", &["*.b.test"]), pki.leaf("d", &["*.d.test"]));
    let (ma, _ta) = tls_member("a", pki.server(&a, false)).await;
    let (mb, _tb) = tls_member("b", pki.server(&b, false)).await;
    let (md, _td) = tls_member("d", pki.server(&d, false)).await;
    let cfg = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listener]]\nname = \"pass\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\nbalancer = \"d\"\n  [[listener.sni]]\n  server_name = \"a.test\"\n  balancer = \"a\"\n  [[listener.sni]]\n  server_name = \"*.b.test\"\n  balancer = \"b\"\n[balancer.a]\n[[balancer.a.member]]\nurl = \"tcp://{ma}\"\n[balancer.b]\n[[balancer.b.member]]\nurl = \"tcp://{mb}\"\n[balancer.d]\n[[balancer.d.member]]\nurl = \"tcp://{md}\"\n"
    );
    let lb = Lb::start(&cfg).await;
    let c = pki.client(&[], TLS13, None);
    for (name, want) in [("a.test", "a"), ("x.b.test", "b"), ("other.d.test", "d")] {
        let tcp = TcpStream::connect(lb.addr).await.unwrap();
        // The handshake verifies the member's own certificate: TLS is end to end.
        let mut tls =
            c.connect(ServerName::try_from(name.to_owned()).unwrap(), tcp).await.expect(name);
        assert_eq!(read_line(&mut tls).await, want, "{name}");
    }
}

#[test]
fn lb_check_names_a_missing_or_mismatched_certificate_file() {
    let pki = Pki::new("check");
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test"]);
    let missing = pki.dir.join("missing.pem");
    let cfg = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n  [[listener.tls]]\n  cert = \"{}\"\n  key = \"{}\"\n  [[listener.tls]]\n  cert = \"{}\"\n  key = \"{}\"\n  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"http://127.0.0.1:1/\"\n",
        missing.display(),
        a.key.display(),
        a.cert.display(),
        b.key.display(),
    );
    let path = pki.dir.join("lb.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = std::process::Command::new(lb_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].contains("key `listener[0].tls[0].cert`") && lines[0].contains("missing.pem"),
        "{err}"
    );
    assert!(
        lines[1].contains("key `listener[0].tls[1].key`")
            && lines[1].contains("b.key")
            && lines[1].contains("a.pem"),
        "{err}"
    );
    assert_eq!(lines[2], "2 error(s)");
}

#[tokio::test]
async fn half_sent_handshakes_delay_no_one_and_are_closed_at_the_handshake_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new("slow");
    let a = pki.leaf("a", &["a.test"]);
    let m = Member::start("m1").await;
    let cfg = tls_config(&[&a], &lb_tests::members(&[(&m.url(), "")])).replace(
        "access_log = false\n",
        "access_log = false\nrequest_read_timeout = \"handshake=1\"\n",
    );
    let lb = Lb::start(&cfg).await;
    // Two hundred clients that send the first bytes of a ClientHello and stop.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(lb.addr).await.expect("connect");
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.expect("write");
        slow.push(s);
    }
    let c = pki.client(&[b"http/1.1"], TLS13, None);
    let r = get_tls(lb.addr, &c, "a.test", "/").await.expect("a normal client is served");
    assert_eq!((r.status, r.body.as_str()), (200, "m1"));
    for mut s in slow {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("closed at the handshake timeout");
        assert!(matches!(n, Ok(0) | Err(_)), "closed without an answer: {n:?}");
    }
    lb.stop().await;
}

/// A client that comes back resumes its TLS session (TLS 1.3 tickets, TLS 1.2 tickets), also
/// after a reload: the ticket keys are lb's, not one configuration's.
#[tokio::test]
async fn sessions_resume_also_after_a_reload() {
    use rustls::HandshakeKind::{Full, Resumed};
    // A request on each connection also reads the TLS 1.3 tickets lb sends after the handshake.
    async fn handshake(addr: SocketAddr, c: &tokio_rustls::TlsConnector) -> rustls::HandshakeKind {
        let r = get_tls(addr, c, "a.test", "/").await.expect("answer over TLS");
        assert_eq!(r.status, 200, "{}", r.body);
        r.handshake.expect("handshake done")
    }
    let pki = Pki::new("resume");
    let a = pki.leaf("a", &["a.test"]);
    let m = Member::start("m1").await;
    let cfg = tls_config(&[&a], &lb_tests::members(&[(&m.url(), "")]));
    let lb = Lb::start(&cfg).await;
    for (versions, name) in [(TLS13, "TLS 1.3"), (TLS12, "TLS 1.2")] {
        let c = pki.client(&[b"http/1.1"], versions, None);
        assert_eq!(handshake(lb.addr, &c).await, Full, "{name}: first connection");
        assert_eq!(handshake(lb.addr, &c).await, Resumed, "{name}: second connection");
        lb.handle.reload(lb_tests::parse_config(&cfg)).await.expect("reload");
        assert_eq!(handshake(lb.addr, &c).await, Resumed, "{name}: after a reload");
    }
}
