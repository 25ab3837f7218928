//! `lb import-apache` on a multi-file Debian-layout Apache configuration written here: the
//! command's output, report and exit status; the translated config run by lb against members
//! started here. The byrequests sequence expected is the spec's arithmetic over the loadfactors
//! written in the Apache config, and the addresses are the ones its `Listen` lines name.
use lb_tests::certs::{Pki, provider};
use lb_tests::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Site {
    dir: PathBuf,
    http: u16,
    https: u16,
    gnutls: u16,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

/// /etc/apache2 as Debian lays it out: apache2.conf including mods-enabled, ports.conf,
/// conf-enabled and sites-enabled; a plain site and an SSL site (under `<IfModule mod_ssl.c>`)
/// on one balancer with loadfactors 1, 2, 3.
fn debian_site(members: &[String; 3], pki: &Pki, leaf: &lb_tests::certs::Leaf) -> Site {
    let dir = std::env::temp_dir().join(format!("lb-import-debian-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Apache configs name fixed ports: free ones are written into the config.
    let (http, https, gnutls) = (free_port(), free_port(), free_port());
    write(
        &dir,
        "apache2.conf",
        "# Debian's main file (abridged)\n\
         DefaultRuntimeDir ${APACHE_RUN_DIR}\n\
         PidFile ${APACHE_PID_FILE}\n\
         Timeout 300\n\
         KeepAlive On\n\
         MaxKeepAliveRequests 100\n\
         KeepAliveTimeout 5\n\
         User www-data\n\
         HostnameLookups Off\n\
         ErrorLog /var/log/apache2/error.log\n\
         LogLevel warn\n\
         IncludeOptional mods-enabled/*.load\n\
         IncludeOptional mods-enabled/*.conf\n\
         Include ports.conf\n\
         <Directory />\n\
         \tOptions FollowSymLinks\n\
         \tAllowOverride None\n\
         \tRequire all denied\n\
         </Directory>\n\
         LogFormat \"%h %l %u %t \\\"%r\\\" %>s %O\" common\n\
         IncludeOptional conf-enabled/*.conf\n\
         IncludeOptional sites-enabled/*.conf\n\
         ListenBacklog 1024\n",
    );
    for m in ["proxy", "proxy_http", "proxy_balancer", "lbmethod_byrequests", "ssl", "status"] {
        write(
            &dir,
            &format!("mods-enabled/{m}.load"),
            &format!("LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so\n"),
        );
    }
    write(
        &dir,
        "mods-enabled/status.conf",
        "<IfModule mod_status.c>\n\t<Location /server-status>\n\t\tSetHandler server-status\n\t\tRequire local\n\t\tRequire ip 192.0.2.0/24\n\t</Location>\n</IfModule>\n",
    );
    write(
        &dir,
        "ports.conf",
        &format!(
            "Listen 127.0.0.1:{http}\n\n<IfModule ssl_module>\n\tListen 127.0.0.1:{https}\n</IfModule>\n\n<IfModule mod_gnutls.c>\n\tListen 127.0.0.1:{gnutls}\n</IfModule>\n"
        ),
    );
    write(
        &dir,
        "conf-enabled/security.conf",
        "ServerTokens Prod\nServerSignature Off\nTraceEnable Off\n",
    );
    write(
        &dir,
        "conf-enabled/balancer.conf",
        &format!(
            "<Proxy \"balancer://app\">\n\
             \tBalancerMember \"{}\" loadfactor=1\n\
             \tBalancerMember \"{}\" loadfactor=2\n\
             \tBalancerMember \"{}\" loadfactor=3 smax=4\n\
             \tProxySet lbmethod=byrequests\n\
             </Proxy>\n",
            members[0], members[1], members[2]
        ),
    );
    write(
        &dir,
        "sites-enabled/000-default.conf",
        &format!(
            "<VirtualHost *:{http}>\n\
             \tServerName www.example.test\n\
             \tProxyPreserveHost On\n\
             \tProxyPass \"/\" \"balancer://app/\"\n\
             \tProxyPassReverse \"/\" \"balancer://app/\"\n\
             \tCustomLog ${{APACHE_LOG_DIR}}/access.log combined\n\
             </VirtualHost>\n"
        ),
    );
    write(
        &dir,
        "sites-enabled/default-ssl.conf",
        &format!(
            "<IfModule mod_ssl.c>\n\
             <VirtualHost _default_:{https}>\n\
             \tSSLEngine on\n\
             \tSSLCertificateFile {}\n\
             \tSSLCertificateKeyFile {}\n\
             \tSSLCertificateChainFile {}\n\
             \tSSLProtocol all -SSLv3\n\
             \t<Location \"/\">\n\
             \t\tProxyPass \"balancer://app/\"\n\
             \t\tProxyPassReverse \"balancer://app/\"\n\
             \t</Location>\n\
             </VirtualHost>\n\
             </IfModule>\n",
            leaf.cert.display(),
            leaf.key.display(),
            pki.ca_path().display()
        ),
    );
    Site { dir, http, https, gnutls }
}

fn import(args: &[&str], log_dir: &Path) -> (i32, String, String) {
    let out = Command::new(lb_bin())
        .arg("import-apache")
        .args(args)
        .env("APACHE_LOG_DIR", log_dir)
        .output()
        .expect("run lb import-apache");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The report line for `what` at `file:line`, if any.
fn reported<'a>(
    stderr: &'a str,
    dir: &Path,
    file: &str,
    line: usize,
    what: &str,
) -> Option<&'a str> {
    let at = format!("{}:{line}: {what}", dir.join(file).display());
    stderr.lines().find(|l| l.trim_start().starts_with(&at))
}

#[tokio::test]
async fn a_debian_layout_translates_reports_and_serves_the_same_byrequests_sequence() {
    let ms = [Member::start("one").await, Member::start("two").await, Member::start("three").await];
    let urls = [ms[0].url(), ms[1].url(), ms[2].url()];
    let pki = Pki::new("import");
    let leaf = pki.leaf("site", &["www.example.test"]);
    let site = debian_site(&urls, &pki, &leaf);
    let main = site.dir.join("apache2.conf");
    let logs = site.dir.join("log");

    let (code, toml_text, report) = import(&[main.to_str().expect("path")], &logs);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("lb accepts the result"), "{report}");

    // Every directive without an lb equivalent is reported with its file and line.
    for (file, line, what) in [
        ("apache2.conf", 2, "DefaultRuntimeDir"),
        ("apache2.conf", 3, "PidFile"),
        ("apache2.conf", 8, "User www-data"),
        ("apache2.conf", 9, "HostnameLookups"),
        ("apache2.conf", 10, "ErrorLog"),
        ("apache2.conf", 11, "LogLevel"),
        ("apache2.conf", 15, "Directory"),
        ("apache2.conf", 20, "LogFormat"),
        ("mods-enabled/proxy.load", 1, "LoadModule proxy_module"),
        ("mods-enabled/ssl.load", 1, "LoadModule ssl_module"),
        ("mods-enabled/status.conf", 2, "Location /server-status"),
        ("conf-enabled/security.conf", 1, "ServerTokens Prod"),
        ("conf-enabled/security.conf", 2, "ServerSignature Off"),
        ("conf-enabled/security.conf", 3, "TraceEnable Off"),
        ("conf-enabled/balancer.conf", 4, "smax=4"),
        ("sites-enabled/default-ssl.conf", 7, "SSLProtocol"),
        ("ports.conf", 7, "IfModule mod_gnutls.c"),
    ] {
        let l = reported(&report, &site.dir, file, line, what)
            .unwrap_or_else(|| panic!("{file}:{line} ({what}) not reported:\n{report}"));
        assert!(l.len() > what.len() + 20, "a reason is given: {l}");
    }
    // mod_gnutls is not loaded: its Listen is not taken.
    assert!(!toml_text.contains(&site.gnutls.to_string()), "{toml_text}");

    let v: toml::Value = toml::from_str(&toml_text).expect("toml");
    let listeners = v["listener"].as_array().expect("listeners");
    let binds: Vec<&str> = listeners.iter().map(|l| l["bind"].as_str().expect("bind")).collect();
    let (plain, tls) = (format!("127.0.0.1:{}", site.http), format!("127.0.0.1:{}", site.https));
    assert_eq!(binds, [plain.as_str(), tls.as_str()], "lb listens where Apache listened");
    let web = &listeners[0];
    assert_eq!(web["timeout"].as_integer(), Some(300));
    assert_eq!(web["keepalive_timeout"].as_integer(), Some(5));
    assert_eq!(web["max_keepalive_requests"].as_integer(), Some(100));
    assert_eq!(web["backlog"].as_integer(), Some(1024));
    assert_eq!(web["proxy_pass"][0]["preserve_host"].as_bool(), Some(true));
    assert_eq!(
        v["access_log"]["path"].as_str(),
        Some(logs.join("access.log").to_str().expect("path"))
    );
    let allow = v["admin"]["allow"].as_array().expect("allow");
    assert!(allow.iter().any(|a| a.as_str() == Some("192.0.2.0/24")), "{allow:?}");

    // --check: the same report, nothing on stdout; -o writes the file.
    let (code, out, check_report) = import(&["--check", main.to_str().expect("path")], &logs);
    assert_eq!((code, out.as_str()), (0, ""), "{check_report}");
    assert_eq!(check_report, report);
    let written = site.dir.join("lb.toml");
    let (code, out, _) =
        import(&["-o", written.to_str().expect("path"), main.to_str().expect("path")], &logs);
    assert_eq!((code, out.as_str()), (0, ""));
    assert_eq!(std::fs::read_to_string(&written).expect("written"), toml_text);

    // Run it. The admin listener moves to a free port for the test (several lbs run at once);
    // nothing else changes.
    let config = toml_text.replacen("[admin]\n", "[admin]\nbind = \"127.0.0.1:0\"\n", 1);
    let lb = Lb::start(&config).await;
    assert_eq!(lb.listener(web["name"].as_str().expect("name")).to_string(), plain);
    let c = client();
    let mut seen = Vec::new();
    for _ in 0..12 {
        let r = send(&c, http::Request::get(format!("http://{plain}/")).body(full("")).unwrap())
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        seen.push(r.member());
    }
    let names = ["one", "two", "three"];
    let expected: Vec<String> =
        apache_byrequests(&[1, 2, 3], &[true; 3], 12).iter().map(|&i| names[i].into()).collect();
    assert_eq!(seen, expected);

    // The SSL site: the certificate with the chain file's certificate after it.
    let connector = pki.client(&[b"http/1.1"], &[&rustls::version::TLS13], None);
    let addr: SocketAddr = tls.parse().expect("addr");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect tls");
    let name = rustls_pki_types::ServerName::try_from("www.example.test").expect("name");
    let stream = connector.connect(name, tcp).await.expect("handshake");
    let chain = stream.get_ref().1.peer_certificates().expect("certificates").to_vec();
    assert_eq!(chain, [leaf.der.clone(), pki.ca_der()]);
    let _ = provider();
    lb.stop().await;
}

#[tokio::test]
async fn a_broken_config_names_file_and_line_and_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("lb-import-broken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write(&dir, "httpd.conf", "Listen 8080\nInclude extra/*.conf\n");
    write(&dir, "extra/a.conf", "<Proxy balancer://x>\n  BalancerMember http://127.0.0.1:1\n");
    let main = dir.join("httpd.conf");
    let out = dir.join("lb.toml");
    let (code, stdout, stderr) =
        import(&["-o", out.to_str().expect("path"), main.to_str().expect("path")], &dir);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    let at = format!("{}:1", dir.join("extra/a.conf").display());
    assert!(stderr.contains(&at) && stderr.contains("never closed"), "{stderr}");
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
