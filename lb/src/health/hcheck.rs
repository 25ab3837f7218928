//! Active health checks (Apache's mod_proxy_hcheck): one check of one member, off the request
//! path, on a connection of its own that is not registered with telemetry nor counted as
//! traffic.
//!
//! `TCP` connects (and completes the TLS handshake for `https://` members); the HTTP methods
//! send one request carrying only `Host` (HTTP/1.0, or HTTP/1.1 for the `11` forms) to the
//! member's path plus `hcuri`, and pass when the status is accepted and, for GET, the body holds
//! what `hcbody`/`hcbody_regex` ask for. What the results do to the member is the health state
//! machine's business ([`super::ejection::Tracker::checked`]).
use super::ejection::{State, Tracker, Transition};
use crate::config::{BodyMatch, HealthCheck, MemberUrl};
use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Health-check results in a row. Apache counts passes and failures cumulatively (a failure
/// does not reset the passes); lb counts them in a row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    pub passes: u32,
    pub fails: u32,
}

impl Tracker {
    /// A health check came back (`ok`, with `detail`). `flagged_c` and `flagged_e`: the member
    /// has C, E. Returns the transition: `hcfails` failures in a row set C (once); while the
    /// member has C or E, or is ejected, `hcpasses` passes in a row clear them, and an ejected
    /// member returns, on probation (a passing check outweighs the ejection's remaining time).
    pub fn checked(
        &mut self,
        hc: &HealthCheck,
        ok: bool,
        detail: &str,
        flagged_c: bool,
        flagged_e: bool,
        now: Instant,
    ) -> Option<Transition> {
        let ejected = self.is_ejected();
        let s = &mut self.checks;
        if ok {
            // Passes count towards clearing only while there is something to clear.
            let out = flagged_c || flagged_e || ejected;
            s.passes = if out { s.passes + 1 } else { 0 };
            s.fails = 0;
            if out && s.passes >= hc.passes {
                s.passes = 0;
                let returned = ejected;
                if returned {
                    self.state = State::Probation { since: now };
                }
                return Some(Transition::CheckPassed { returned });
            }
        } else {
            s.fails += 1;
            s.passes = 0;
            if !flagged_c && s.fails >= hc.fails {
                return Some(Transition::CheckFailed(detail.to_owned()));
            }
        }
        None
    }
}

/// The body of a GET check is read up to this much; matching looks at that part only.
const BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub ok: bool,
    pub took: Duration,
    /// "200 in 1.2 ms", "status 503 (accepted: 200-399)", "connect: Connection refused".
    pub detail: String,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Check the member at `addr` (its URL `url`), within `hc.timeout`.
pub async fn check(
    url: &MemberUrl,
    addr: SocketAddr,
    hc: &HealthCheck,
    tls: Option<&crate::tls::Upstream>,
) -> CheckResult {
    let start = Instant::now();
    let run = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => exchange(tcp, url, hc).await,
            Some(t) => {
                let s = t
                    .connector
                    .connect(t.server_name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                exchange(s, url, hc).await
            }
        }
    };
    let outcome = tokio::time::timeout(hc.timeout, run).await;
    let took = start.elapsed();
    match outcome {
        Ok(Ok(what)) => CheckResult { ok: true, took, detail: format!("{what} in {}", ms(took)) },
        Ok(Err(detail)) => CheckResult { ok: false, took, detail },
        Err(_) => {
            CheckResult { ok: false, took, detail: format!("no answer within {}", ms(hc.timeout)) }
        }
    }
}

/// The part after the connection: nothing for TCP, else one request and its answer. Returns
/// what passed ("connected", "200").
async fn exchange<S>(stream: S, url: &MemberUrl, hc: &HealthCheck) -> Result<String, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some((method, http11)) = hc.method.http() else {
        return Ok("connected".to_owned());
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(conn);
    let path = format!("{}{}", url.path, hc.uri);
    let req = Request::builder()
        .method(method)
        .uri(if path.is_empty() { "/" } else { path.as_str() })
        .version(if http11 { Version::HTTP_11 } else { Version::HTTP_10 })
        .header(http::header::HOST, url.authority())
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status().as_u16();
        if !hc.status.iter().any(|(a, b)| (*a..=*b).contains(&status)) {
            let accepted: Vec<String> = hc
                .status
                .iter()
                .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
                .collect();
            return Err(format!("status {status} (accepted: {})", accepted.join(",")));
        }
        if let Some(want) = &hc.body {
            let mut body = resp.into_body();
            let mut seen = Vec::new();
            while seen.len() < BODY_LIMIT {
                match body.frame().await {
                    None => break,
                    Some(Err(e)) => return Err(format!("body: {e}")),
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            seen.extend_from_slice(d);
                        }
                    }
                }
            }
            let text = String::from_utf8_lossy(&seen[..seen.len().min(BODY_LIMIT)]);
            let found = match want {
                BodyMatch::Contains(s) => text.contains(s.as_str()),
                BodyMatch::Regex(re) => re.is_match(&text),
            };
            if !found {
                return Err(match want {
                    BodyMatch::Contains(s) => format!("status {status}, but the body lacks {s:?}"),
                    BodyMatch::Regex(re) => {
                        format!("status {status}, but the body does not match /{}/", re.as_str())
                    }
                });
            }
        }
        Ok(status.to_string())
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HcMethod, parse_member_url};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn hc(method: HcMethod, body: Option<BodyMatch>) -> HealthCheck {
        HealthCheck {
            method,
            uri: "/hc".into(),
            interval: Duration::from_secs(1),
            passes: 1,
            fails: 1,
            timeout: Duration::from_secs(2),
            status: vec![(200, 399)],
            body,
        }
    }

    /// A member that answers every request with `answer`, and reports the request heads it got.
    async fn member(
        answer: &'static str,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut b = vec![0u8; 4096];
                let n = s.read(&mut b).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&b[..n]).into_owned());
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        (addr, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn checks_set_and_clear_c_in_a_row() {
        let p = super::super::ejection::Policy::default();
        let mut h = hc(HcMethod::Tcp, None);
        (h.passes, h.fails) = (2, 3);
        let now = Instant::now();
        let mut t = Tracker::new(now);
        // Failures in a row set C once; a pass in between starts the count again.
        assert_eq!(t.checked(&h, false, "x", false, false, now), None);
        assert_eq!(t.checked(&h, false, "x", false, false, now), None);
        assert_eq!(t.checked(&h, true, "ok", false, false, now), None);
        assert_eq!(t.checked(&h, false, "x", false, false, now), None);
        assert_eq!(t.checked(&h, false, "x", false, false, now), None);
        assert_eq!(
            t.checked(&h, false, "503", false, false, now),
            Some(Transition::CheckFailed("503".into()))
        );
        assert_eq!(t.checked(&h, false, "503", true, false, now), None);
        // Passes in a row clear it; a failure in between starts them again.
        assert_eq!(t.checked(&h, true, "ok", true, false, now), None);
        assert_eq!(t.checked(&h, false, "x", true, false, now), None);
        assert_eq!(t.checked(&h, true, "ok", true, false, now), None);
        assert_eq!(
            t.checked(&h, true, "ok", true, false, now),
            Some(Transition::CheckPassed { returned: false })
        );
        // Passes on a member with nothing to clear change nothing.
        assert_eq!(t.checked(&h, true, "ok", false, false, now), None);
        assert_eq!(t.checked(&h, true, "ok", false, false, now), None);
        // An ejected member that passes returns at once, on probation.
        let sick = super::super::ejection::Input {
            sick: Some(super::super::ejection::Reason::RequestErrors(5)),
            may_eject: true,
            ..Default::default()
        };
        t.step(&p, now, sick);
        assert!(t.is_ejected());
        assert_eq!(t.checked(&h, true, "ok", false, true, now), None);
        assert_eq!(
            t.checked(&h, true, "ok", false, true, now),
            Some(Transition::CheckPassed { returned: true })
        );
        assert!(matches!(t.state, State::Probation { .. }));
    }

    #[tokio::test]
    async fn statuses_bodies_and_the_request_sent() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nstatus=up";
        let (addr, mut heads) = member(ok).await;
        let url = parse_member_url(&format!("http://{addr}/app")).unwrap();
        let r = check(&url, addr, &hc(HcMethod::Get, None), None).await;
        assert!(r.ok && r.detail.starts_with("200 in"), "{r:?}");
        let head = heads.recv().await.unwrap();
        assert!(head.starts_with("GET /app/hc HTTP/1.0\r\n"), "{head}");
        assert!(head.to_ascii_lowercase().contains(&format!("host: {addr}")), "{head}");
        let r = check(&url, addr, &hc(HcMethod::Head11, None), None).await;
        assert!(r.ok, "{r:?}");
        assert!(heads.recv().await.unwrap().starts_with("HEAD /app/hc HTTP/1.1\r\n"));
        let contains = hc(HcMethod::Get11, Some(BodyMatch::Contains("status=up".into())));
        assert!(check(&url, addr, &contains, None).await.ok);
        let re = regex::Regex::new("^status=(down|maint)$").unwrap();
        let r = check(&url, addr, &hc(HcMethod::Get11, Some(BodyMatch::Regex(re))), None).await;
        assert!(!r.ok && r.detail.contains("does not match"), "{r:?}");

        let (addr, _h) = member("HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n").await;
        let url = parse_member_url(&format!("http://{addr}")).unwrap();
        let r = check(&url, addr, &hc(HcMethod::Options, None), None).await;
        assert_eq!((r.ok, r.detail.as_str()), (false, "status 503 (accepted: 200-399)"));
        // TCP only connects: the 503 does not matter.
        assert!(check(&url, addr, &hc(HcMethod::Tcp, None), None).await.ok);
        // A closed port fails at once, with the reason.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let r = check(&url, closed, &hc(HcMethod::Tcp, None), None).await;
        assert!(!r.ok && r.detail.starts_with("connect:"), "{r:?}");
    }
}
