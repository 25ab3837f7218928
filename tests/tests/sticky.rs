//! Sticky sessions as Apache has them (`stickysession`, `route`, `redirect`, `nofailover`,
//! `scolonpathdelim`) and lb's routing cookie, over HTTP/1.1, h2c and HTTPS, with curl's cookie
//! jar as the client.
use lb_tests::certs::Pki;
use lb_tests::process::LbProcess;
use lb_tests::*;
use std::time::Duration;

/// Three members routed node1..node3 (`extra[i]` added to member i), behind balancer b with
/// `balancer` keys.
async fn three(balancer: &str, extra: [&str; 3]) -> (Vec<Member>, String) {
    let ms = vec![Member::start("m1").await, Member::start("m2").await, Member::start("m3").await];
    let urls: Vec<String> = ms.iter().map(|m| m.url()).collect();
    let lines: Vec<String> =
        (0..3).map(|i| format!("route = \"node{}\"\n{}", i + 1, extra[i])).collect();
    let body = format!(
        "{balancer}\n{}",
        members(&[(&urls[0], &lines[0]), (&urls[1], &lines[1]), (&urls[2], &lines[2])])
    );
    (ms, config(&body))
}

async fn get_with(lb: &Lb, path: &str, cookie: Option<&str>) -> Reply {
    let mut req = http::Request::get(lb.url(path));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    send(&client(), req.body(full("")).unwrap()).await.expect("request through lb")
}

#[tokio::test]
async fn a_tomcat_session_always_lands_on_its_route() {
    let (_ms, cfg) = three("stickysession = \"JSESSIONID|jsessionid\"", ["", "", ""]).await;
    let lb = Lb::start(&cfg).await;
    for _ in 0..9 {
        let r = get_with(&lb, "/", Some("JSESSIONID=8A1B2C3D4E.node2")).await;
        assert_eq!((r.status, r.member()), (200, "m2".to_owned()));
    }
    // The URL parameter, in the query and as a path parameter.
    for path in
        ["/x?jsessionid=abc.node3", "/x?a=1&jsessionid=abc.node3", "/x;jsessionid=abc.node3"]
    {
        assert_eq!(
            get_with(&lb, path, Some("JSESSIONID=abc.node1")).await.member(),
            "m3",
            "{path}"
        );
    }
    // Without scolonpathdelim a `;` does not end the value: the route is "node3;v=2", which no
    // member has, so these are balanced over the members.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(get_with(&lb, "/x;jsessionid=abc.node3;v=2", None).await.member());
    }
    assert!(seen.len() >= 2, "{seen:?}");
    lb.stop().await;

    let (_ms, cfg) =
        three("stickysession = \"JSESSIONID|jsessionid\"\nscolonpathdelim = true", ["", "", ""])
            .await;
    let lb = Lb::start(&cfg).await;
    for _ in 0..3 {
        assert_eq!(get_with(&lb, "/x;jsessionid=abc.node3;v=2", None).await.member(), "m3");
    }
    // Malformed or over-long sessions are ignored: balanced, never an error.
    let long = format!("JSESSIONID={}.node1", "a".repeat(8000));
    for c in ["JSESSIONID=", "JSESSIONID=.", "JSESSIONID", "JSESSIONID=abc.node9", &long] {
        assert_eq!(get_with(&lb, "/", Some(c)).await.status, 200, "{c}");
    }
    lb.stop().await;
}

/// Apache's arithmetic, written out: a routed request adds every usable member's factor to its
/// lbstatus and takes the total from the routed one; a balanced one does the same for the
/// member with the highest lbstatus (the first on a tie).
fn model(factors: &[i64], requests: &[Option<usize>]) -> Vec<usize> {
    let mut status = vec![0i64; factors.len()];
    let total: i64 = factors.iter().sum();
    let mut out = Vec::new();
    for r in requests {
        for (s, f) in status.iter_mut().zip(factors) {
            *s += f;
        }
        let winner = r.unwrap_or_else(|| {
            (0..status.len()).fold(0, |best, i| if status[i] > status[best] { i } else { best })
        });
        status[winner] -= total;
        out.push(winner);
    }
    out
}

#[tokio::test]
async fn routed_requests_consume_quota_as_in_apache() {
    // Routed to node3 now and then, balanced otherwise.
    let requests: Vec<Option<usize>> = [2, 9, 9, 2, 2, 9, 9, 9, 0, 9, 9, 9, 9, 2, 9, 9]
        .iter()
        .map(|&i| (i < 9).then_some(i))
        .collect();
    let factors = [1, 2, 1];
    let expected: Vec<String> =
        model(&[100, 200, 100], &requests).iter().map(|i| format!("m{}", i + 1)).collect();
    for method in ["byrequests", "bybusyness"] {
        let weights = factors.map(|f| format!("loadfactor = {f}"));
        let (_ms, cfg) = three(
            &format!("lbmethod = \"{method}\"\nstickysession = \"ROUTEID\""),
            [&weights[0], &weights[1], &weights[2]],
        )
        .await;
        // bybusyness breaks ties on in-flight counts with lbstatus; telemetry off keeps its
        // latency weighting out of it.
        let cfg = cfg.replacen("[[listener]]", "[telemetry]\nsource = \"off\"\n\n[[listener]]", 1);
        let lb = Lb::start(&cfg).await;
        let mut got = Vec::new();
        for r in &requests {
            // The previous answer has been read; wait until lb has also counted it as ended,
            // so that bybusyness sees no request in flight.
            let idle = eventually(Duration::from_secs(5), || async {
                let s = lb.status().await;
                let busy = s["balancers"][0]["members"]
                    .as_array()
                    .map(|ms| ms.iter().all(|m| m["busy"].as_u64() == Some(0)));
                (busy == Some(true)).then_some(())
            })
            .await;
            assert!(idle.is_some(), "a request stayed in flight");
            let cookie = r.map(|i| format!("ROUTEID=.node{}", i + 1));
            got.push(get_with(&lb, "/", cookie.as_deref()).await.member());
        }
        assert_eq!(got, expected, "{method}");
        lb.stop().await;
    }
}

#[tokio::test]
async fn a_routes_member_out_goes_to_its_redirect_or_503_with_nofailover() {
    let (mut ms, cfg) =
        three("stickysession = \"ROUTEID\"", ["redirect = \"node2\"", "", "status = \"+H\""]).await;
    let lb = Lb::start(&cfg).await;
    ms[0].kill().await;
    // node1's member is gone: the request fails over to its redirect, node2.
    for _ in 0..3 {
        let r = get_with(&lb, "/", Some("ROUTEID=.node1")).await;
        assert_eq!((r.status, r.member()), (200, "m2".to_owned()));
    }
    // A hot standby is reached through its route.
    assert_eq!(get_with(&lb, "/", Some("ROUTEID=.node3")).await.member(), "m3");
    lb.stop().await;

    let (mut ms, cfg) = three("stickysession = \"ROUTEID\"\nnofailover = true", ["", "", ""]).await;
    let lb = Lb::start(&cfg).await;
    ms[1].kill().await;
    let r = get_with(&lb, "/", Some("ROUTEID=.node2")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("nofailover"), "{}", r.text());
    // Sessions for other routes, and requests without one, are served.
    assert_eq!(get_with(&lb, "/", Some("ROUTEID=.node3")).await.member(), "m3");
    assert_eq!(get_with(&lb, "/", None).await.status, 200);
    lb.stop().await;
}

/// One request with curl and a cookie jar file; returns (member, the Set-Cookie it got).
async fn curl(jar: &std::path::Path, args: &[&str], url: &str) -> (String, Option<String>) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-b"])
        .arg(jar)
        .arg("-c")
        .arg(jar)
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("run curl (cargo xtask test installs it)");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let header = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    (header("x-member").unwrap_or_default(), header("set-cookie"))
}

#[tokio::test]
async fn the_routing_cookie_round_trips_through_a_cookie_jar_on_h1_h2c_and_https() {
    let pki = Pki::new("sticky");
    let leaf = pki.leaf("a", &["a.test"]);
    let (mut ms, cfg) = three(
        "stickysession = \"ROUTEID\"\n[balancer.b.sticky_cookie]\nmax_age = \"1h\"\n",
        ["", "", ""],
    )
    .await;
    let tls = format!(
        "[[listener]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\naccess_log = false\n  [[listener.tls]]\n  cert = \"{}\"\n  key = \"{}\"\n  [[listener.proxy_pass]]\n  path = \"/\"\n  to = \"balancer://b/\"\n\n[[listener]]",
        leaf.cert.display(),
        leaf.key.display()
    );
    let lb = Lb::start(&cfg.replacen("[[listener]]", &tls, 1)).await;
    let https = lb.listener("secure").port();
    let resolve = format!("a.test:{https}:127.0.0.1");
    let ca = pki.ca_path().display().to_string();
    let kinds: [(&str, Vec<&str>, String); 3] = [
        ("h1", vec!["--http1.1"], lb.url("/")),
        ("h2c", vec!["--http2-prior-knowledge"], lb.url("/")),
        (
            "https",
            vec!["--http2", "--cacert", &ca, "--resolve", &resolve],
            format!("https://a.test:{https}/"),
        ),
    ];
    let dir = std::env::temp_dir().join(format!("lb-sticky-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("jar folder");
    let mut killed = Vec::new();
    for (name, args, url) in &kinds {
        let jar = dir.join(format!("{name}.jar"));
        let _ = std::fs::remove_file(&jar);
        // No session yet: balanced, and told its route.
        let (first, cookie) = curl(&jar, args, url).await;
        let cookie = cookie.unwrap_or_else(|| panic!("{name}: no routing cookie"));
        let n = &first[1..];
        assert!(
            cookie.starts_with(&format!(
                "ROUTEID=.node{n}; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"
            )),
            "{name}: {cookie}"
        );
        // From then on the jar's cookie routes it; no cookie is set while the route holds.
        for _ in 0..4 {
            assert_eq!(curl(&jar, args, url).await, (first.clone(), None), "{name}");
        }
        // Its member goes away: another one answers, and the cookie follows it.
        let i = ms.iter().position(|m| m.name == first).expect("member");
        ms[i].kill().await;
        killed.push(i);
        let (next, cookie) = curl(&jar, args, url).await;
        assert_ne!(next, first, "{name}");
        let cookie = cookie.unwrap_or_else(|| panic!("{name}: no new routing cookie"));
        assert!(cookie.starts_with(&format!("ROUTEID=.node{}", &next[1..])), "{name}: {cookie}");
        assert_eq!(curl(&jar, args, url).await, (next, None), "{name}");
        for &k in &killed {
            ms[k].restart().await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    lb.stop().await;
}

#[tokio::test]
async fn balancer_values_reach_the_member_and_the_access_log_and_survive_a_reload() {
    let (ms, cfg) =
        three("stickysession = \"ROUTEID\"\nbalancer_headers = true", ["", "", ""]).await;
    let dir = std::env::temp_dir().join(format!("lb-sticky-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("config folder");
    let access = dir.join("access.log");
    let cfg = format!("[access_log]\npath = {:?}\n\n{cfg}", access.display().to_string())
        .replace("access_log = false", "access_log = true");
    let file = dir.join("lb.toml");
    std::fs::write(&file, &cfg).expect("write config");
    let lb = LbProcess::start(&file);
    let web = lb.addr("listening (http)");
    let url = format!("http://{web}/headers");
    let c = client();
    let ask = |cookie: &'static str| {
        let req = http::Request::get(&url)
            .header("cookie", cookie)
            .header("x-balancer-worker-route", "forged")
            .body(full(""))
            .unwrap();
        send(&c, req)
    };
    let r = ask("ROUTEID=.node2").await.expect("request");
    let t = r.text();
    assert_eq!(r.member(), "m2");
    for line in [
        "x-balancer-name: balancer://b",
        &format!("x-balancer-worker-name: {}", ms[1].url()),
        "x-balancer-worker-route: node2",
        "x-balancer-session-sticky: ROUTEID",
        "x-balancer-session-route: node2",
    ] {
        assert!(t.contains(line), "{line} not in {t}");
    }
    assert!(!t.contains("forged") && !t.contains("x-balancer-route-changed"), "{t}");
    let log = eventually(Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(&access).ok()?;
        text.lines().find(|l| l.contains(" route=node2 ")).map(str::to_owned)
    })
    .await;
    let log = log.expect("access log line with the BALANCER values");
    for field in ["session_sticky=ROUTEID", "session_route=node2", "route_changed=0"] {
        assert!(log.contains(field), "{field} not in {log}");
    }
    // A reload that leaves the members as they are keeps routing by the same routes.
    std::fs::write(&file, cfg.replace("[admin]", "# reloaded\n[admin]")).expect("rewrite config");
    let status = std::process::Command::new("kill").args(["-HUP", &lb.pid]).status();
    assert!(status.is_ok_and(|s| s.success()));
    assert!(lb.line(&["reloaded"], Duration::from_secs(10)).is_some(), "no reload in the log");
    for _ in 0..3 {
        let r = ask("ROUTEID=.node3").await.expect("request after reload");
        assert_eq!(r.member(), "m3");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
