//! Configuration: TOML text → validated, typed [`Config`].
//!
//! Loading has two stages. [`raw`] deserializes the file as written (unknown keys are errors);
//! [`validate`] checks meaning — addresses, ranges, references between listeners and balancers —
//! and collects *every* problem, each located by [`error::Locator`] at file, line, column and key.
//! Everything downstream (balancers, pools, listeners) consumes only the validated types.
//!
//! Defaults follow Apache httpd; where lb deliberately differs the README's config reference says
//! so (connect timeout, keep-alive request limit).
pub mod error;
pub mod raw;

pub use error::{ConfigError, Diagnostic, KeyPath};

use crate::balancer::flags::StatusFlags;
use crate::telemetry::{SourceChoice, TelemetryConfig};
use error::Locator;
use raw::{RawConfig, RawDuration, RawNumber, RawStatusList};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The default admin address (loopback only: the admin API can change live state later).
pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9090";

#[derive(Debug, Clone)]
pub struct Config {
    pub admin: Option<AdminConfig>,
    pub telemetry: TelemetryConfig,
    /// Apache `HeartbeatListen`: UDP address for mod_heartbeat datagrams.
    pub heartbeat_listen: Option<SocketAddr>,
    pub listeners: Vec<ListenerConfig>,
    pub balancers: Vec<BalancerConfig>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    /// Apache `Timeout`: the longest wait for a client's request head.
    pub timeout: Duration,
    pub keepalive: bool,
    /// Apache `KeepAliveTimeout`: idle time allowed between requests on one connection.
    pub keepalive_timeout: Duration,
    /// Apache `MaxKeepAliveRequests`; 0 = unlimited.
    pub max_keepalive_requests: u64,
    /// Largest request head (request line + headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    pub access_log: bool,
    pub routes: Vec<ProxyPassConfig>,
}

/// Apache `ProxyPass` (+ `ProxyPassReverse` when `reverse`).
#[derive(Debug, Clone)]
pub struct ProxyPassConfig {
    pub path: String,
    pub target: Target,
    pub reverse: bool,
    pub preserve_host: bool,
}

#[derive(Debug, Clone)]
pub enum Target {
    /// `balancer://name/path`
    Balancer { name: String, path: String },
    /// A plain `http://host:port/path`: a balancer of one implicit member (whose URL has no
    /// path; `path` is the target path, kept exactly as written).
    Url { url: MemberUrl, path: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbMethod {
    ByRequests,
    ByTraffic,
    ByBusyness,
    Heartbeat,
}

impl LbMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LbMethod::ByRequests => "byrequests",
            LbMethod::ByTraffic => "bytraffic",
            LbMethod::ByBusyness => "bybusyness",
            LbMethod::Heartbeat => "heartbeat",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BalancerConfig {
    pub name: String,
    pub lbmethod: LbMethod,
    /// Extra attempts after the first; Apache's default is members − 1.
    pub maxattempts: u32,
    pub nofailover: bool,
    /// How long to wait for a usable member before 503 (0 = don't wait).
    pub timeout: Duration,
    pub failonstatus: Vec<u16>,
    pub failontimeout: bool,
    pub forcerecovery: bool,
    pub growth: u32,
    /// When kernel signals and request errors eject a member.
    pub ejection: crate::health::ejection::Policy,
    pub members: Vec<MemberConfig>,
}

/// A member's URL. Only `http` today; `https` arrives with upstream TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberUrl {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for the root).
    pub path: String,
}

impl MemberUrl {
    /// `host:port` as sent in a Host header (bracketed for IPv6).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
    /// The URL as written back in status output and reverse mapping.
    pub fn base(&self) -> String {
        format!("http://{}{}", self.authority(), self.path)
    }
}

impl std::fmt::Display for MemberUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base())
    }
}

#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub url: MemberUrl,
    /// Apache `loadfactor` ×100 (1 → 100; two decimals kept).
    pub lbfactor: u32,
    pub lbset: u32,
    pub route: Option<String>,
    pub redirect: Option<String>,
    pub status: StatusFlags,
    /// How long a member in error waits before it is retried (0 = always retry).
    pub retry: Duration,
    pub connectiontimeout: Duration,
    /// Socket I/O timeout: the longest wait for the member's response head.
    pub timeout: Duration,
    /// Most requests in flight (= connections in use) to the member; None = unlimited.
    pub max: Option<u32>,
    /// Idle pooled connections older than this are closed instead of reused.
    pub ttl: Option<Duration>,
    /// Longest wait for a free connection slot when `max` is reached (None = wait `timeout`).
    pub acquire: Option<Duration>,
    pub disablereuse: bool,
    pub keepalive: bool,
}

impl MemberConfig {
    /// A member with every setting at its default.
    pub fn for_url(url: MemberUrl) -> MemberConfig {
        MemberConfig {
            url,
            lbfactor: 100,
            lbset: 0,
            route: None,
            redirect: None,
            status: StatusFlags::default(),
            retry: Duration::from_secs(60),
            connectiontimeout: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            max: None,
            ttl: None,
            acquire: None,
            disablereuse: false,
            keepalive: false,
        }
    }
}

/// Parse a duration: plain integer/float seconds (Apache), or "250ms", "5s", "2m", "1h".
pub fn parse_duration(raw: &RawDuration) -> Result<Duration, String> {
    let secs = |f: f64| {
        if f.is_finite() && f >= 0.0 {
            Ok(Duration::from_secs_f64(f))
        } else {
            Err(format!("duration must be a non-negative number of seconds, got {f}"))
        }
    };
    match raw {
        RawDuration::Seconds(s) if *s >= 0 => Ok(Duration::from_secs(*s as u64)),
        RawDuration::Seconds(s) => Err(format!("duration must not be negative, got {s}")),
        RawDuration::FractionalSeconds(f) => secs(*f),
        RawDuration::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let n: f64 = num.parse().map_err(|_| {
                format!(
                    "invalid duration {t:?}: expected e.g. 30, \"250ms\", \"5s\", \"2m\", \"1h\""
                )
            })?;
            let scale = match unit.trim() {
                "" | "s" => 1.0,
                "ms" => 0.001,
                "us" => 0.000_001,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                other => {
                    return Err(format!(
                        "unknown duration unit {other:?} in {t:?} (use ms, s, m, h)"
                    ));
                }
            };
            secs(n * scale)
        }
    }
}

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
        let mut v = Validator { loc: &loc, file, errors: Vec::new() };
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

struct Validator<'a> {
    loc: &'a Locator<'a>,
    file: &'a Path,
    errors: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn err(&mut self, path: &KeyPath, msg: impl Into<String>) {
        let d = self.loc.diagnostic(self.file, path, msg.into());
        self.errors.push(d);
    }

    fn duration(
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

    fn config(&mut self, raw: RawConfig) -> Config {
        let root = KeyPath::default();
        let admin = match &raw.admin {
            None => DEFAULT_ADMIN_BIND.parse().ok().map(|bind| AdminConfig { bind }),
            Some(a) => {
                let text = a.bind.as_deref().unwrap_or(DEFAULT_ADMIN_BIND);
                match text.parse::<SocketAddr>() {
                    Ok(bind) => Some(AdminConfig { bind }),
                    Err(_) => {
                        self.err(
                            &root.key("admin").key("bind"),
                            format!("{text:?} is not an IP:port address"),
                        );
                        None
                    }
                }
            }
        };
        let balancers: Vec<BalancerConfig> = raw
            .balancer
            .iter()
            .map(|(name, b)| self.balancer(&root.key("balancer").key(name), name, b))
            .collect();
        let mut listeners = Vec::new();
        for (i, l) in raw.listener.iter().enumerate() {
            let path = root.key("listener").index(i);
            if let Some(l) = self.listener(&path, l, &balancers) {
                if listeners.iter().any(|x: &ListenerConfig| x.name == l.name) {
                    self.err(
                        &path.key("name"),
                        format!("listener name {:?} is used twice", l.name),
                    );
                }
                if listeners.iter().any(|x: &ListenerConfig| x.bind == l.bind && l.bind.port() != 0)
                {
                    self.err(
                        &path.key("bind"),
                        format!("address {} is bound by another listener", l.bind),
                    );
                }
                listeners.push(l);
            }
        }
        if raw.listener.is_empty() {
            self.err(&root, "no [[listener]] is configured: lb would serve nothing");
        }
        let mut telemetry = TelemetryConfig::default();
        if let Some(t) = &raw.telemetry {
            let tp = root.key("telemetry");
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
        }
        let heartbeat_listen =
            raw.heartbeat.as_ref().and_then(|h| h.listen.as_ref()).and_then(|l| {
                l.parse::<SocketAddr>()
                    .map_err(|_| {
                        self.err(
                            &root.key("heartbeat").key("listen"),
                            format!("{l:?} is not an IP:port address"),
                        )
                    })
                    .ok()
            });
        Config { admin, telemetry, heartbeat_listen, listeners, balancers }
    }

    fn listener(
        &mut self,
        path: &KeyPath,
        l: &raw::RawListener,
        balancers: &[BalancerConfig],
    ) -> Option<ListenerConfig> {
        let bind = match l.bind.parse::<SocketAddr>() {
            Ok(b) => Some(b),
            Err(_) => {
                self.err(&path.key("bind"), format!("{:?} is not an IP:port address", l.bind));
                None
            }
        };
        let protocol = match l.protocol.as_deref().unwrap_or("http") {
            "http" => Protocol::Http,
            "tcp" => {
                self.err(
                    &path.key("protocol"),
                    "protocol \"tcp\" (layer 4) is not supported yet; use \"http\"",
                );
                Protocol::Http
            }
            other => {
                self.err(
                    &path.key("protocol"),
                    format!("unknown protocol {other:?}: expected \"http\""),
                );
                Protocol::Http
            }
        };
        let timeout = self.duration(&path.key("timeout"), &l.timeout, Duration::from_secs(60));
        let keepalive_timeout = self.duration(
            &path.key("keepalive_timeout"),
            &l.keepalive_timeout,
            Duration::from_secs(5),
        );
        let max_header_bytes = match l.limit_request_fields_size {
            None => 64 * 1024,
            Some(n) if (8192..=1024 * 1024).contains(&n) => n as usize,
            Some(n) => {
                self.err(
                    &path.key("limit_request_fields_size"),
                    format!(
                        "{n} is out of range: the request head limit must be 8192..=1048576 bytes"
                    ),
                );
                64 * 1024
            }
        };
        let mut routes = Vec::new();
        for (i, p) in l.proxy_pass.iter().enumerate() {
            let pp = path.key("proxy_pass").index(i);
            if !p.path.starts_with('/') {
                self.err(&pp.key("path"), format!("path {:?} must start with '/'", p.path));
                continue;
            }
            if routes.iter().any(|r: &ProxyPassConfig| r.path == p.path) {
                self.err(&pp.key("path"), format!("path {:?} is mapped twice", p.path));
                continue;
            }
            let target = if let Some(rest) = p.to.strip_prefix("balancer://") {
                let (name, bpath) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, ""),
                };
                if !balancers.iter().any(|b| b.name == name) {
                    self.err(
                        &pp.key("to"),
                        format!("balancer {name:?} is not defined (no [balancer.{name}])"),
                    );
                    continue;
                }
                Target::Balancer { name: name.to_owned(), path: bpath.to_owned() }
            } else {
                match parse_member_url(&p.to) {
                    Ok(mut url) => {
                        // Keep the path as written: "/backend/" + "x" must give "/backend/x".
                        let after_scheme = p.to.split_once("://").map_or("", |(_, r)| r);
                        let path =
                            after_scheme.find('/').map_or("", |i| &after_scheme[i..]).to_owned();
                        url.path.clear();
                        Target::Url { url, path }
                    }
                    Err(m) => {
                        self.err(&pp.key("to"), m);
                        continue;
                    }
                }
            };
            routes.push(ProxyPassConfig {
                path: p.path.clone(),
                target,
                reverse: p.reverse,
                preserve_host: p.preserve_host,
            });
        }
        if l.proxy_pass.is_empty() {
            self.err(
                &path.key("name"),
                format!("listener {:?} has no [[listener.proxy_pass]]", l.name),
            );
        }
        Some(ListenerConfig {
            name: l.name.clone(),
            bind: bind?,
            protocol,
            timeout,
            keepalive: l.keepalive.unwrap_or(true),
            keepalive_timeout,
            max_keepalive_requests: l.max_keepalive_requests.unwrap_or(1000),
            max_header_bytes,
            access_log: l.access_log.unwrap_or(true),
            routes,
        })
    }

    fn balancer(&mut self, path: &KeyPath, name: &str, b: &raw::RawBalancer) -> BalancerConfig {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.err(
                path,
                format!("balancer name {name:?} may hold only letters, digits, '-', '_' and '.'"),
            );
        }
        let lbmethod = match b.lbmethod.as_deref().unwrap_or("byrequests") {
            "byrequests" => LbMethod::ByRequests,
            "bytraffic" => LbMethod::ByTraffic,
            "bybusyness" => LbMethod::ByBusyness,
            "heartbeat" => LbMethod::Heartbeat,
            other => {
                self.err(
                    &path.key("lbmethod"),
                    format!(
                        "unknown lbmethod {other:?}: expected byrequests, bytraffic, bybusyness or heartbeat"
                    ),
                );
                LbMethod::ByRequests
            }
        };
        for (key, set) in [
            ("stickysession", b.stickysession.is_some()),
            ("stickysessionsep", b.stickysessionsep.is_some()),
            ("scolonpathdelim", b.scolonpathdelim.is_some()),
        ] {
            if set {
                self.err(
                    &path.key(key),
                    format!(
                        "{key} is not supported yet: sticky sessions arrive in a later release"
                    ),
                );
            }
        }
        let mut failonstatus = Vec::new();
        let codes: Vec<(i64, KeyPath)> = match &b.failonstatus {
            None => Vec::new(),
            Some(RawStatusList::List(v)) => {
                v.iter().enumerate().map(|(i, c)| (*c, path.key("failonstatus").index(i))).collect()
            }
            Some(RawStatusList::Text(t)) => {
                let mut out = Vec::new();
                for part in t.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    match part.parse::<i64>() {
                        Ok(c) => out.push((c, path.key("failonstatus"))),
                        Err(_) => self.err(
                            &path.key("failonstatus"),
                            format!("{part:?} is not a status code"),
                        ),
                    }
                }
                out
            }
        };
        for (c, p) in codes {
            if (100..=599).contains(&c) {
                failonstatus.push(c as u16);
            } else {
                self.err(&p, format!("{c} is not an HTTP status code (100..=599)"));
            }
        }
        let mut members: Vec<MemberConfig> = Vec::new();
        for (i, m) in b.member.iter().enumerate() {
            let mp = path.key("member").index(i);
            if let Some(m) = self.member(&mp, m) {
                if members.iter().any(|x| x.url == m.url) {
                    self.err(&mp.key("url"), format!("member {} is listed twice", m.url));
                }
                if let Some(r) = &m.route
                    && members.iter().any(|x| x.route.as_ref() == Some(r))
                {
                    self.err(&mp.key("route"), format!("route {r:?} is used by two members"));
                }
                members.push(m);
            }
        }
        if b.member.is_empty() {
            self.err(path, format!("balancer {name:?} has no [[balancer.{name}.member]]"));
        }
        let default_attempts = (b.member.len() as u32).saturating_sub(1);
        BalancerConfig {
            name: name.to_owned(),
            lbmethod,
            maxattempts: b.maxattempts.unwrap_or(default_attempts),
            nofailover: b.nofailover.unwrap_or(false),
            timeout: self.duration(&path.key("timeout"), &b.timeout, Duration::ZERO),
            failonstatus,
            failontimeout: b.failontimeout.unwrap_or(false),
            forcerecovery: b.forcerecovery.unwrap_or(true),
            growth: b.growth.unwrap_or(0),
            ejection: self.ejection(&path.key("ejection"), b.ejection.as_ref()),
            members,
        }
    }

    fn ejection(
        &mut self,
        path: &KeyPath,
        raw: Option<&raw::RawEjection>,
    ) -> crate::health::ejection::Policy {
        let mut p = crate::health::ejection::Policy::default();
        let Some(r) = raw else { return p };
        let num = |n: RawNumber| match n {
            RawNumber::Int(i) => i as f64,
            RawNumber::Float(f) => f,
        };
        p.enabled = r.enabled.unwrap_or(true);
        if let Some(v) = r.max_retransmits_per_s.map(num) {
            if v > 0.0 {
                p.max_retransmits_per_s = v
            } else {
                self.err(&path.key("max_retransmits_per_s"), "must be above 0")
            }
        }
        if let Some(v) = r.latency_factor.map(num) {
            if v >= 1.0 {
                p.latency_factor = v
            } else {
                self.err(&path.key("latency_factor"), "must be at least 1")
            }
        }
        if let Some(v) = r.max_failed_connects {
            if v >= 1 {
                p.max_failed_connects = v
            } else {
                self.err(&path.key("max_failed_connects"), "must be at least 1")
            }
        }
        if let Some(v) = r.max_rto {
            if v >= 1 {
                p.max_rto = v
            } else {
                self.err(&path.key("max_rto"), "must be at least 1")
            }
        }
        if let Some(v) = r.consecutive_errors {
            p.consecutive_errors = v;
        }
        match r.max_ejected_percent {
            Some(v) if v <= 100 => p.max_ejected_percent = v,
            Some(v) => self.err(
                &path.key("max_ejected_percent"),
                format!("{v} is not a percentage (0..=100)"),
            ),
            None => {}
        }
        p.latency_floor =
            self.duration(&path.key("latency_floor"), &r.latency_floor, p.latency_floor);
        p.base_time = self.duration(&path.key("base_time"), &r.base_time, p.base_time);
        p.max_time = self.duration(&path.key("max_time"), &r.max_time, p.max_time);
        p.probation = self.duration(&path.key("probation"), &r.probation, p.probation);
        if p.base_time.is_zero() {
            self.err(&path.key("base_time"), "must be above 0");
        }
        if p.max_time < p.base_time {
            self.err(&path.key("max_time"), "must be at least base_time");
        }
        p
    }

    fn member(&mut self, path: &KeyPath, m: &raw::RawMember) -> Option<MemberConfig> {
        let url = match parse_member_url(&m.url) {
            Ok(u) => Some(u),
            Err(msg) => {
                self.err(&path.key("url"), msg);
                None
            }
        };
        let mut c = MemberConfig::for_url(url?);
        if let Some(n) = m.loadfactor {
            let f = match n {
                RawNumber::Int(i) => i as f64,
                RawNumber::Float(f) => f,
            };
            if (1.0..=100.0).contains(&f) {
                c.lbfactor = (f * 100.0).round() as u32;
            } else {
                self.err(
                    &path.key("loadfactor"),
                    format!("loadfactor {f} is out of range 1..=100"),
                );
            }
        }
        match m.lbset {
            Some(s) if (0..=99).contains(&s) => c.lbset = s as u32,
            Some(s) => self.err(&path.key("lbset"), format!("lbset {s} is out of range 0..=99")),
            None => {}
        }
        if let Some(s) = &m.status {
            match StatusFlags::default().apply(s) {
                Ok(f) => c.status = f,
                Err(e) => self.err(&path.key("status"), e),
            }
        }
        for (key, v) in [("route", &m.route), ("redirect", &m.redirect)] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > 64 || !v.chars().all(|c| c.is_ascii_graphic()))
            {
                self.err(
                    &path.key(key),
                    format!("{key} {v:?} must be 1..=64 visible ASCII characters"),
                );
            }
        }
        c.route = m.route.clone();
        c.redirect = m.redirect.clone();
        match m.max {
            Some(0) => {
                self.err(&path.key("max"), "max must be at least 1 (leave it out for no limit)")
            }
            other => c.max = other,
        }
        c.retry = self.duration(&path.key("retry"), &m.retry, c.retry);
        c.connectiontimeout = self.duration(
            &path.key("connectiontimeout"),
            &m.connectiontimeout,
            c.connectiontimeout,
        );
        c.timeout = self.duration(&path.key("timeout"), &m.timeout, c.timeout);
        if m.ttl.is_some() {
            c.ttl = Some(self.duration(&path.key("ttl"), &m.ttl, Duration::ZERO));
        }
        if m.acquire.is_some() {
            c.acquire = Some(self.duration(&path.key("acquire"), &m.acquire, Duration::ZERO));
        }
        c.disablereuse = m.disablereuse.unwrap_or(false);
        c.keepalive = m.keepalive.unwrap_or(false);
        Some(c)
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

/// Parse `http://host[:port][/path]` as a member URL.
pub fn parse_member_url(s: &str) -> Result<MemberUrl, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{s:?}: https members are not supported yet (upstream TLS arrives later)"
            ));
        }
        Some(other) => {
            return Err(format!("{s:?}: unsupported scheme {other:?}, expected http://"));
        }
        None => return Err(format!("{s:?} has no scheme: write http://host:port")),
    }
    let host = uri.host().ok_or_else(|| format!("{s:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    if uri.query().is_some() {
        return Err(format!("{s:?}: a member URL cannot carry a query string"));
    }
    let path = uri.path().trim_end_matches('/').to_owned();
    Ok(MemberUrl { host, port: uri.port_u16().unwrap_or(80), path })
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
        assert_eq!(b.failonstatus, vec![500, 503]);
        assert_eq!(b.members[0].lbfactor, 150);
        assert!(b.members[0].status.contains(crate::balancer::flags::HOT_STANDBY));
        assert_eq!(b.members[1].url.path, "/base");
        assert_eq!(b.members[1].retry, Duration::from_secs(5));
    }

    #[test]
    fn durations_take_apache_and_suffixed_forms() {
        assert_eq!(parse_duration(&RawDuration::Seconds(5)).unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration(&RawDuration::Text("250ms".into())).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration(&RawDuration::Text("2m".into())).unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(
            parse_duration(&RawDuration::FractionalSeconds(0.5)).unwrap(),
            Duration::from_millis(500)
        );
        assert!(parse_duration(&RawDuration::Text("5 parsecs".into())).is_err());
        assert!(parse_duration(&RawDuration::Seconds(-1)).is_err());
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
}
