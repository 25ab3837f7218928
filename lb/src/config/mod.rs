//! Configuration: TOML text → validated, typed [`Config`].
//!
//! Loading has two stages. [`raw`] deserializes the file as written (unknown keys are errors);
//! validation checks meaning — addresses, ranges, references between listeners and balancers,
//! certificate files — and collects *every* problem, each located by [`error::Locator`] at file,
//! line, column and key. One module per concern:
//!
//! | module | what |
//! |---|---|
//! | [`model`] | the validated types everything downstream consumes |
//! | [`raw`] | the file as written (serde) |
//! | this module | loading, the validator's core, `[admin]`, `[server]`, `[telemetry]`, `[heartbeat]` |
//! | [`listener`] | `[[listener]]`, its `proxy_pass`, `tls` and `sni` |
//! | [`balancer`] | `[balancer.NAME]`, its members, ejection and upstream TLS |
//! | `sticky` | sticky sessions and the routing cookie |
//! | `hcheck` | active health checks (`hcmethod` …) |
//! | [`units`] | durations and member URLs |
//! | [`tls`] | reading and checking certificates and keys |
//! | [`flags`] | Apache's member status flags |
//! | [`error`] | the one error type, and how an error finds its line |
//!
//! Defaults follow Apache httpd; where lb deliberately differs the README's config reference says
//! so. This layer depends on no other part of lb.
mod admin;
pub mod balancer;
pub mod error;
pub mod flags;
mod hcheck;
pub mod limits;
pub mod listener;
pub mod model;
pub mod raw;
pub mod sticky;
pub mod tls;
pub mod units;

pub use admin::loopback as admin_loopback;
pub use error::{ConfigError, Diagnostic, KeyPath};
pub use hcheck::method as parse_hcmethod;
pub use limits::{Limits, ReadTimeout, ReadTimeouts};
pub use model::*;
pub use units::{
    check_hcuri, check_route, parse_duration, parse_lbmethod, parse_lbset, parse_loadfactor,
    parse_member_url,
};

use error::Locator;
use raw::{RawConfig, RawDuration};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, path)
    }

    /// Validate config text; `file` names it in diagnostics.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let loc = Locator::new(text);
        let toml_error = |e: toml::de::Error| {
            let (line, column, key) = match e.span() {
                Some(s) => {
                    let (l, c) = loc.line_col(s.start);
                    (l, c, loc.key_at(s.start).to_string())
                }
                None => (0, 0, String::new()),
            };
            let message = e.message().trim().to_owned();
            Diagnostic { file: file.to_owned(), line, column, key, message }
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::Invalid(vec![toml_error(e)]))?;
        let mut unknown: Vec<KeyPath> = Vec::new();
        let raw: Result<RawConfig, _> =
            serde_ignored::deserialize(de, |path| unknown.push(ignored_path(&path)));
        let unknown_errors = |v: &mut Validator| {
            for path in &unknown {
                let key = path.0.last().map_or(String::new(), |s| match s {
                    error::Seg::Key(k) => k.clone(),
                    error::Seg::Index(i) => i.to_string(),
                });
                let d = loc.key_diagnostic(file, path, format!("unknown key `{key}`"));
                v.errors.push(d);
            }
        };
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut v = Validator { loc: &loc, file, base, errors: Vec::new() };
        let cfg = match raw {
            Ok(raw) => Some(v.config(raw)),
            Err(e) => {
                v.errors.push(toml_error(e));
                None
            }
        };
        unknown_errors(&mut v);
        v.errors.sort_by_key(|d| (d.line, d.column));
        match cfg {
            Some(cfg) if v.errors.is_empty() => Ok(cfg),
            _ => Err(ConfigError::Invalid(v.errors)),
        }
    }
}

pub(crate) struct Validator<'a> {
    loc: &'a Locator<'a>,
    file: &'a Path,
    /// Relative certificate paths are relative to the config file's folder.
    base: PathBuf,
    errors: Vec<Diagnostic>,
}

/// Where a member's key comes from: its own table, else its balancer's (the default for every
/// member, as Apache's `ProxySet`).
pub(crate) struct Inherit<'p> {
    pub member: &'p KeyPath,
    pub balancer: &'p KeyPath,
}

impl Inherit<'_> {
    /// The member's value of `key` when it set one, else the balancer's; and the key path an
    /// error about it names.
    pub fn get<'a, T>(
        &self,
        key: &str,
        mine: &'a Option<T>,
        theirs: &'a Option<T>,
    ) -> (KeyPath, &'a Option<T>) {
        if mine.is_some() || theirs.is_none() {
            (self.member.key(key), mine)
        } else {
            (self.balancer.key(key), theirs)
        }
    }
}

impl Validator<'_> {
    pub(crate) fn err(&mut self, path: &KeyPath, msg: impl Into<String>) {
        let d = self.loc.diagnostic(self.file, path, msg.into());
        self.errors.push(d);
    }

    pub(crate) fn duration(
        &mut self,
        path: &KeyPath,
        raw: &Option<RawDuration>,
        default: Duration,
    ) -> Duration {
        match raw {
            None => default,
            Some(r) => parse_duration(r).unwrap_or_else(|m| {
                self.err(path, m);
                default
            }),
        }
    }

    pub(crate) fn addr(&mut self, path: &KeyPath, text: &str) -> Option<SocketAddr> {
        text.parse::<SocketAddr>()
            .map_err(|_| self.err(path, format!("{text:?} is not an IP:port address")))
            .ok()
    }

    /// A file named in the config, relative to the config file's folder.
    pub(crate) fn file_path(&self, text: &str) -> PathBuf {
        self.base.join(text)
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let root = KeyPath::default();
        let admin = self.admin(&root.key("admin"), raw.admin.as_ref());
        let balancers: Vec<BalancerConfig> = raw
            .balancer
            .iter()
            .map(|(name, b)| self.balancer(&root.key("balancer").key(name), name, b))
            .collect();
        let listeners = self.listeners(&root, &raw.listener, &balancers);
        let telemetry = self.telemetry(&root.key("telemetry"), raw.telemetry.as_ref());
        let heartbeat_listen = raw
            .heartbeat
            .as_ref()
            .and_then(|h| h.listen.as_ref())
            .and_then(|l| self.addr(&root.key("heartbeat").key("listen"), l));
        let graceful_shutdown_timeout = self.duration(
            &root.key("server").key("graceful_shutdown_timeout"),
            &raw.server.as_ref().and_then(|s| s.graceful_shutdown_timeout.clone()),
            Duration::from_secs(10),
        );
        let access_log = self.access_log(&root.key("access_log"), raw.access_log.as_ref());
        let resolver = self.resolver(&root.key("resolver"), raw.resolver.as_ref());
        Config {
            admin,
            telemetry,
            heartbeat_listen,
            graceful_shutdown_timeout,
            access_log,
            resolver,
            listeners,
            balancers,
        }
    }

    fn resolver(&mut self, path: &KeyPath, raw: Option<&raw::RawResolver>) -> ResolverConfig {
        let d = ResolverConfig::default();
        let Some(r) = raw else { return d };
        let mut nameservers = Vec::new();
        for (i, n) in r.nameservers.iter().flatten().enumerate() {
            // A bare IP means port 53.
            let text = match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, 53).to_string(),
                Err(_) => n.clone(),
            };
            nameservers.extend(self.addr(&path.key("nameservers").index(i), &text));
        }
        let min_ttl = self.duration(&path.key("min_ttl"), &r.min_ttl, d.min_ttl);
        let max_ttl = self.duration(&path.key("max_ttl"), &r.max_ttl, d.max_ttl);
        if min_ttl < Duration::from_millis(100) {
            self.err(&path.key("min_ttl"), "at least 100ms (lb would ask without pause)");
        }
        if max_ttl < min_ttl {
            self.err(&path.key("max_ttl"), "must not be shorter than min_ttl");
        }
        ResolverConfig { nameservers, min_ttl, max_ttl }
    }

    fn access_log(&mut self, path: &KeyPath, raw: Option<&raw::RawAccessLog>) -> AccessLogConfig {
        let mut cfg = AccessLogConfig::default();
        let Some(a) = raw else { return cfg };
        cfg.path = match a.path.as_deref() {
            None | Some("stdout") | Some("-") => None,
            Some("") => {
                self.err(&path.key("path"), "path is empty: name a file, or \"stdout\"");
                None
            }
            Some(p) => Some(self.file_path(p)),
        };
        match a.buffer {
            None => {}
            Some(n @ 1..=1_000_000) => cfg.buffer = n as usize,
            Some(n) => self.err(&path.key("buffer"), format!("{n} is out of range 1..=1000000")),
        }
        match a.format.as_deref() {
            None | Some("combined") => {}
            Some("json") => cfg.format = AccessLogFormat::Json,
            Some(other) => self.err(
                &path.key("format"),
                format!("unknown access log format {other:?}: expected \"combined\" or \"json\""),
            ),
        }
        cfg
    }

    fn telemetry(&mut self, tp: &KeyPath, raw: Option<&raw::RawTelemetry>) -> TelemetryConfig {
        let mut telemetry = TelemetryConfig::default();
        let Some(t) = raw else { return telemetry };
        match t.source.as_deref() {
            None | Some("auto") => {}
            Some("ebpf") => telemetry.source = SourceChoice::Ebpf,
            Some("off") => telemetry.source = SourceChoice::Off,
            Some("tcp_info") => telemetry.source = SourceChoice::TcpInfo,
            Some(other) => self.err(
                &tp.key("source"),
                format!(
                    "unknown telemetry source {other:?}: expected \"auto\", \"ebpf\", \"tcp_info\" or \"off\""
                ),
            ),
        }
        let interval = self.duration(&tp.key("interval"), &t.interval, telemetry.interval);
        if interval < Duration::from_millis(10) || interval > Duration::from_secs(60) {
            self.err(&tp.key("interval"), "telemetry interval must be between 10ms and 60s");
        } else {
            telemetry.interval = interval;
        }
        telemetry
    }
}

/// The key path of a key `serde_ignored` reports.
fn ignored_path(p: &serde_ignored::Path) -> KeyPath {
    use serde_ignored::Path;
    match p {
        Path::Root => KeyPath::default(),
        Path::Seq { parent, index } => ignored_path(parent).index(*index),
        Path::Map { parent, key } => ignored_path(parent).key(key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.toml"))
    }

    const GOOD: &str = r#"
[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "web"
bind = "127.0.0.1:0"
timeout = "300s"

  [[listener.proxy_pass]]
  path = "/"
  to = "balancer://mycluster/"
  reverse = true

[balancer.mycluster]
lbmethod = "byrequests"
maxattempts = 2
failonstatus = "500, 503"

  [[balancer.mycluster.member]]
  url = "http://127.0.0.1:9001"
  loadfactor = 1.5
  route = "server1"
  status = "+H"

  [[balancer.mycluster.member]]
  url = "http://127.0.0.1:9002/base/"
  retry = 5
"#;

    #[test]
    fn accepts_the_contract_example() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listeners[0].timeout, Duration::from_secs(300));
        let b = &c.balancers[0];
        assert_eq!(b.maxattempts, 2);
        assert_eq!(b.http.failonstatus, vec![500, 503]);
        assert_eq!(b.members[0].lbfactor, 150);
        assert!(b.members[0].status.contains(crate::balancer::flags::HOT_STANDBY));
        assert_eq!(b.members[1].url.path, "/base");
        assert_eq!(b.members[1].retry, Duration::from_secs(5));
    }

    #[test]
    fn backlog_defaults_to_max_connections_and_is_range_checked() {
        let with = |extra: &str| {
            GOOD.replace("timeout = \"300s\"", &format!("timeout = \"300s\"\n{extra}"))
        };
        let c = parse(&with("max_connections = 70000")).unwrap();
        assert_eq!(c.listeners[0].backlog, 65_535);
        let c = parse(&with("max_connections = 300")).unwrap();
        assert_eq!(c.listeners[0].backlog, 300);
        assert_eq!(parse(&with("backlog = 2048")).unwrap().listeners[0].backlog, 2048);
        let text = with("backlog = 0");
        let e = parse(&text).unwrap_err();
        let d = &e.diagnostics()[0];
        assert_eq!(d.key, "listener[0].backlog");
        let line = text.lines().position(|l| l.starts_with("backlog")).unwrap() + 1;
        assert_eq!(d.line, line);
        assert!(d.message.contains("out of range 1..=65535"), "{}", d.message);
    }

    #[test]
    fn unknown_key_names_file_line_column_and_key() {
        let text = GOOD.replace("maxattempts = 2", "maxattempts = 2\nmaxatempts = 3");
        let e = parse(&text).unwrap_err();
        let d = &e.diagnostics()[0];
        assert_eq!(d.key, "balancer.mycluster.maxatempts");
        let line = text.lines().position(|l| l.starts_with("maxatempts")).unwrap() + 1;
        assert_eq!((d.line, d.column), (line, 1));
        assert!(d.message.contains("unknown key `maxatempts`"), "{}", d.message);
    }

    #[test]
    fn every_unknown_key_is_reported_with_the_semantic_errors() {
        let text = GOOD
            .replace("maxattempts = 2", "maxattempts = 2\nmaxatempts = 3")
            .replace("route = \"server1\"", "route = \"server1\"\n  weight = 5")
            .replace("loadfactor = 1.5", "loadfactor = 0");
        let e = parse(&text).unwrap_err();
        let keys: Vec<&str> = e.diagnostics().iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "balancer.mycluster.maxatempts",
                "balancer.mycluster.member[0].loadfactor",
                "balancer.mycluster.member[0].weight"
            ],
            "{e}"
        );
    }

    #[test]
    fn every_semantic_error_is_reported() {
        let text = GOOD
            .replace("loadfactor = 1.5", "loadfactor = 500")
            .replace("retry = 5", "retry = \"5 parsecs\"\n  lbset = 100")
            .replace("balancer://mycluster/", "balancer://nosuch/");
        let e = parse(&text).unwrap_err();
        let keys: Vec<&str> = e.diagnostics().iter().map(|d| d.key.as_str()).collect();
        assert!(keys.contains(&"balancer.mycluster.member[0].loadfactor"), "{keys:?}");
        assert!(keys.contains(&"balancer.mycluster.member[1].retry"), "{keys:?}");
        assert!(keys.contains(&"balancer.mycluster.member[1].lbset"), "{keys:?}");
        assert!(keys.contains(&"listener[0].proxy_pass[0].to"), "{keys:?}");
        assert!(e.diagnostics().iter().all(|d| d.line > 0), "{e}");
    }

    #[test]
    fn sticky_sessions_and_their_errors() {
        let text = GOOD.replace(
            "maxattempts = 2",
            "maxattempts = 2\nstickysession = \"JSESSIONID|jsessionid\"\nstickysessionsep = \"Off\"",
        ) + "[balancer.mycluster.sticky_cookie]\nsecure = true\nsamesite = \"none\"\n";
        let s = parse(&text).unwrap().balancers[0].http.sticky.clone().unwrap();
        assert_eq!(
            (s.cookie.as_str(), s.param.as_str(), s.separator),
            ("JSESSIONID", "jsessionid", None)
        );
        let c = s.set_cookie.unwrap();
        assert_eq!(
            (c.name.as_str(), c.samesite.as_deref(), c.httponly),
            ("JSESSIONID", Some("None"), true)
        );
        let bad = GOOD.replace(
            "maxattempts = 2",
            "maxattempts = 2\nstickysession = \"a=b\"\nstickysessionsep = \"::\"",
        ) + "[balancer.mycluster.sticky_cookie]\nname = \"other\"\nsamesite = \"none\"\n";
        let e = parse(&bad).unwrap_err();
        let keys: Vec<&str> = e.diagnostics().iter().map(|d| d.key.as_str()).collect();
        for k in
            ["stickysession", "stickysessionsep", "sticky_cookie.name", "sticky_cookie.samesite"]
        {
            assert!(keys.contains(&format!("balancer.mycluster.{k}").as_str()), "{k}: {e}");
        }
        let orphan = GOOD.replace("maxattempts = 2", "maxattempts = 2\nscolonpathdelim = true");
        let e = parse(&orphan).unwrap_err();
        assert!(e.to_string().contains("needs stickysession"), "{e}");
    }

    #[test]
    fn health_checks_and_their_errors() {
        let text = GOOD.replace(
            "maxattempts = 2",
            "maxattempts = 2\nhcmethod = \"get11\"\nhcinterval = \"5s\"\nhcuri = \"/hc\"",
        )
        .replace("retry = 5", "retry = 5\n  hcinterval = \"250ms\"\n  hcstatus = \"200-204, 404\"\n  hcbody = \"up\"");
        let c = parse(&text).unwrap();
        let (a, b) = (
            c.balancers[0].members[0].hcheck.clone().unwrap(),
            c.balancers[0].members[1].hcheck.clone().unwrap(),
        );
        assert_eq!(
            (a.method, a.interval, a.uri.as_str()),
            (HcMethod::Get11, Duration::from_secs(5), "/hc")
        );
        assert_eq!((a.passes, a.fails, a.status.clone()), (1, 1, vec![(200, 399)]));
        assert_eq!(
            (b.interval, b.status.clone()),
            (Duration::from_millis(250), vec![(200, 204), (404, 404)])
        );
        assert!(matches!(&b.body, Some(BodyMatch::Contains(s)) if s == "up"));
        let bad = GOOD
            .replace("maxattempts = 2", "maxattempts = 2\nhcmethod = \"HEAD\"\nhcbody = \"up\"")
            .replace(
                "retry = 5",
                "retry = 5\n  hcinterval = \"50ms\"\n  hcfails = 0\n  hcbody_regex = \"(\"",
            )
            .replace("route = \"server1\"", "route = \"server1\"\n  hcmethod = \"PING\"");
        let e = parse(&bad).unwrap_err();
        let keys: Vec<&str> = e.diagnostics().iter().map(|d| d.key.as_str()).collect();
        for k in [
            "member[0].hcmethod",
            "member[1].hcinterval",
            "member[1].hcfails",
            "member[1].hcbody_regex",
        ] {
            assert!(keys.contains(&format!("balancer.mycluster.{k}").as_str()), "{k}: {e}");
        }
        let ping = GOOD.replace("maxattempts = 2", "maxattempts = 2\nping = 0.5");
        let c = parse(&ping).unwrap();
        assert_eq!(c.balancers[0].members[1].ping, Some(Duration::from_millis(500)));
        let orphan = GOOD.replace("retry = 5", "retry = 5\n  hcinterval = 10");
        assert!(parse(&orphan).unwrap_err().to_string().contains("no effect without an hcmethod"));
    }
}
