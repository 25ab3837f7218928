//! The examples of Apache's own mod_proxy, mod_proxy_balancer and mod_proxy_hcheck
//! documentation, each behind a `Listen` (the documentation shows fragments). Expected values are
//! the ones the Apache text states; every output must pass lb's own validation.
use super::*;
use crate::config::Config;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("lb-import-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// Import `conf` (written as httpd.conf), check that lb accepts the result, and return it parsed
/// as plain TOML with the notes.
fn import(tag: &str, conf: &str) -> (toml::Value, Vec<Note>, String) {
    let d = dir(tag);
    let main = d.0.join("httpd.conf");
    std::fs::write(&main, conf).unwrap();
    let out = import_apache(&main).unwrap();
    if let Err(e) = Config::parse(&out.toml, &d.0.join("lb.toml")) {
        panic!("lb refuses the translation: {e}\n{}", out.toml);
    }
    let v: toml::Value = toml::from_str(&out.toml).unwrap();
    (v, out.notes, out.toml)
}

fn noted<'a>(notes: &'a [Note], directive: &str) -> Option<&'a Note> {
    notes.iter().find(|n| n.directive.starts_with(directive))
}

#[test]
fn mod_proxy_balancer_example_with_reverse() {
    let (v, notes, _) = import(
        "basic",
        r#"Listen 127.0.0.1:8080
<Proxy "balancer://mycluster">
    BalancerMember "http://192.168.1.50:80"
    BalancerMember "http://192.168.1.51:80"
</Proxy>
ProxyPass        "/test" "balancer://mycluster"
ProxyPassReverse "/test" "balancer://mycluster"
"#,
    );
    let l = &v["listener"][0];
    assert_eq!(l["bind"].as_str(), Some("127.0.0.1:8080"));
    let r = &l["proxy_pass"][0];
    assert_eq!(r["path"].as_str(), Some("/test"));
    assert_eq!(r["to"].as_str(), Some("balancer://mycluster"));
    assert_eq!(r["reverse"].as_bool(), Some(true));
    let m = v["balancer"]["mycluster"]["member"].as_array().unwrap();
    let urls: Vec<_> = m.iter().map(|m| m["url"].as_str().unwrap()).collect();
    assert_eq!(urls, ["http://192.168.1.50:80", "http://192.168.1.51:80"]);
    // No CustomLog: Apache writes no access log, neither does the translation.
    assert_eq!(l["access_log"].as_bool(), Some(false));
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn sticky_route_cookie_recipe_becomes_the_built_in_cookie() {
    let (v, notes, _) = import(
        "sticky",
        r#"Listen 127.0.0.1:8080
Header add Set-Cookie "ROUTEID=.%{BALANCER_WORKER_ROUTE}e; path=/" env=BALANCER_ROUTE_CHANGED
<Proxy "balancer://mycluster">
    BalancerMember "http://192.168.1.50:80" route=1
    BalancerMember "http://192.168.1.51:80" route=2
    ProxySet stickysession=ROUTEID
</Proxy>
ProxyPass        "/test" "balancer://mycluster"
ProxyPassReverse "/test" "balancer://mycluster"
"#,
    );
    let b = &v["balancer"]["mycluster"];
    assert_eq!(b["stickysession"].as_str(), Some("ROUTEID"));
    assert_eq!(b["member"][0]["route"].as_str(), Some("1"));
    assert_eq!(b["member"][1]["route"].as_str(), Some("2"));
    let c = &b["sticky_cookie"];
    assert_eq!(c["name"].as_str(), Some("ROUTEID"));
    assert_eq!(c["path"].as_str(), Some("/"));
    // The recipe sets neither HttpOnly nor SameSite; the translation does not add them.
    assert_eq!(c["httponly"].as_bool(), Some(false));
    assert_eq!(c["samesite"].as_str(), Some("Off"));
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn hot_standby_weights_and_lbmethod() {
    let (v, notes, _) = import(
        "hot",
        r#"Listen 127.0.0.1:8080
<Proxy "balancer://hotcluster">
    BalancerMember "http://1.2.3.4:8009" loadfactor=1
    BalancerMember "http://1.2.3.5:8009" loadfactor=2.25
    # The server below is on hot standby
    BalancerMember "http://1.2.3.6:8009" status=+H
    ProxySet lbmethod=bytraffic
</Proxy>
ProxyPass "/examples" "balancer://hotcluster/examples"
"#,
    );
    let b = &v["balancer"]["hotcluster"];
    assert_eq!(b["lbmethod"].as_str(), Some("bytraffic"));
    assert_eq!(b["member"][0]["loadfactor"].as_integer(), Some(1));
    assert_eq!(b["member"][1]["loadfactor"].as_float(), Some(2.25));
    assert_eq!(b["member"][2]["status"].as_str(), Some("+H"));
    assert_eq!(
        v["listener"][0]["proxy_pass"][0]["to"].as_str(),
        Some("balancer://hotcluster/examples")
    );
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn mod_proxy_examples_balancer_params_and_a_plain_url_with_worker_params() {
    let (v, notes, _) = import(
        "proxy",
        r#"Listen 127.0.0.1:8080
ProxyPass "/special-area" "http://special.example.com" smax=5 max=10
ProxyPass "/" "balancer://mycluster/" stickysession=JSESSIONID|jsessionid nofailover=On
<Proxy "balancer://mycluster">
    BalancerMember "ajp://1.2.3.4:8009"
    BalancerMember "http://1.2.3.5:8009" loadfactor=20
    # Less powerful server, don't send as many requests there,
    BalancerMember "http://1.2.3.6:8009" loadfactor=5
</Proxy>
ProxyPass "/mirror/foo/i" "!"
ProxyPass "/ws" "ws://127.0.0.1:9001/ws"
ProxyPass "/fcgi" "fcgi://127.0.0.1:9000/"
"#,
    );
    let routes = v["listener"][0]["proxy_pass"].as_array().unwrap();
    // mod_proxy_wstunnel's ws:// is an HTTP member to lb (it passes upgrades through); fcgi is not.
    let ws = routes.iter().find(|r| r["path"].as_str() == Some("/ws")).expect("ws route");
    assert_eq!(ws["to"].as_str(), Some("http://127.0.0.1:9001/ws"));
    assert!(
        noted(&notes, "ProxyPass /ws ws://").is_some_and(|n| n.why.contains("WebSocket")),
        "{notes:?}"
    );
    assert!(!routes.iter().any(|r| r["path"].as_str() == Some("/fcgi")));
    assert_eq!(noted(&notes, "ProxyPass /fcgi").expect("fcgi reported").at.line, 12);
    let special = routes.iter().find(|r| r["path"].as_str() == Some("/special-area")).unwrap();
    let name = special["to"].as_str().unwrap().strip_prefix("balancer://").unwrap();
    let sb = &v["balancer"][name];
    assert_eq!(sb["member"][0]["url"].as_str(), Some("http://special.example.com"));
    assert_eq!(sb["member"][0]["max"].as_integer(), Some(10));
    let b = &v["balancer"]["mycluster"];
    assert_eq!(b["stickysession"].as_str(), Some("JSESSIONID|jsessionid"));
    assert_eq!(b["nofailover"].as_bool(), Some(true));
    let urls: Vec<_> =
        b["member"].as_array().unwrap().iter().map(|m| m["url"].as_str().unwrap()).collect();
    assert_eq!(urls, ["http://1.2.3.5:8009", "http://1.2.3.6:8009"]);
    let ajp = noted(&notes, "BalancerMember ajp://1.2.3.4:8009").expect("ajp member reported");
    assert_eq!(ajp.at.line, 5);
    assert_eq!(noted(&notes, "smax=5").expect("smax reported").at.line, 2);
    let excl = noted(&notes, "ProxyPass /mirror/foo/i !").expect("exclusion reported");
    assert_eq!(excl.at.line, 10);
}

#[test]
fn hcheck_example_expressions_and_templates() {
    let (v, notes, text) = import(
        "hc",
        r#"Listen 127.0.0.1:8080
ProxyHCExpr ok234 {%{REQUEST_STATUS} =~ /^[234]/}
ProxyHCExpr gdown {%{REQUEST_STATUS} =~ /^[5]/}
ProxyHCExpr in_maint {hc('body') !~ /Under maintenance/}
<Proxy balancer://foo>
  BalancerMember http://www.example.com/  hcmethod=GET hcexpr=in_maint hcuri=/status.php
  BalancerMember http://www2.example.com/ hcmethod=HEAD hcexpr=ok234 hcinterval=10
  BalancerMember http://www3.example.com/ hcmethod=TCP hcinterval=5 hcpasses=2 hcfails=3
  BalancerMember http://www4.example.com/
</Proxy>
ProxyPass "/" "balancer://foo"
ProxyPassReverse "/" "balancer://foo"

ProxyHCTemplate tcp5 hcmethod=tcp hcinterval=5
ProxyPass "/apps" "http://backend.example.com/" hctemplate=tcp5
"#,
    );
    let m = &v["balancer"]["foo"]["member"];
    assert_eq!(m[0]["hcmethod"].as_str(), Some("GET"));
    assert_eq!(m[0]["hcuri"].as_str(), Some("/status.php"));
    assert_eq!(m[1]["hcmethod"].as_str(), Some("HEAD"));
    assert_eq!(m[1]["hcstatus"].as_str(), Some("200-499"));
    assert_eq!(m[1]["hcinterval"].as_integer(), Some(10));
    assert_eq!(m[2]["hcpasses"].as_integer(), Some(2));
    assert_eq!(m[2]["hcfails"].as_integer(), Some(3));
    let n = noted(&notes, "hcexpr=in_maint").expect("the negated body test is reported");
    assert_eq!(n.at.line, 6);
    assert!(n.why.contains("negation"), "{n}");
    let apps = v["listener"][0]["proxy_pass"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"].as_str() == Some("/apps"))
        .unwrap()
        .clone();
    let name = apps["to"].as_str().unwrap().strip_prefix("balancer://").unwrap().to_owned();
    let t = &v["balancer"].get(name.trim_end_matches('/')).expect(&text)["member"][0];
    assert_eq!(t["hcmethod"].as_str(), Some("TCP"));
    assert_eq!(t["hcinterval"].as_integer(), Some(5));
}

#[test]
fn balancer_manager_location_and_unsupported_directives_are_reported() {
    let (v, notes, _) = import(
        "manager",
        r#"LoadModule proxy_module modules/mod_proxy.so
MaxRequestsPerChild 4000
Listen 127.0.0.1:8080
<Location "/balancer-manager">
    SetHandler balancer-manager
    Require host example.com
    Require ip 10.1.0.0/16
</Location>
<Proxy balancer://b>
  BalancerMember http://10.0.0.1:8080
</Proxy>
ProxyPass / balancer://b/
RewriteEngine On
BalancerPersist On
"#,
    );
    assert_eq!(v["admin"]["state_file"].as_str(), Some("lb.state"));
    let allow: Vec<_> =
        v["admin"]["allow"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(allow.contains(&"10.1.0.0/16") && allow.contains(&"127.0.0.0/8"), "{allow:?}");
    for (d, line) in [
        ("LoadModule proxy_module", 1),
        ("MaxRequestsPerChild 4000", 2),
        ("Location /balancer-manager", 4),
        ("Require host example.com", 6),
        ("RewriteEngine On", 13),
    ] {
        let n = noted(&notes, d).unwrap_or_else(|| panic!("{d} not reported: {notes:?}"));
        assert_eq!(n.at.line, line, "{n}");
        assert!(!n.why.is_empty());
    }
}

#[test]
fn syntax_errors_name_file_and_line() {
    let d = dir("syntax");
    let main = d.0.join("httpd.conf");
    std::fs::write(&main, "Listen 80\n<Proxy balancer://x>\nBalancerMember http://a\n").unwrap();
    let e = import_apache(&main).unwrap_err().to_string();
    assert!(e.contains("httpd.conf:2") && e.contains("never closed"), "{e}");
    std::fs::write(&main, "Include missing/*.conf\n").unwrap();
    let e = import_apache(&main).unwrap_err().to_string();
    assert!(e.contains("httpd.conf:1") && e.contains("no file matches"), "{e}");
    std::fs::write(&main, "Include httpd.conf\n").unwrap();
    let e = import_apache(&main).unwrap_err().to_string();
    assert!(e.contains("nest too deep"), "{e}");
}
