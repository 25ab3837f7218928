//! The validated configuration: what every other module consumes.
//!
//! These types carry meaning, not syntax: durations are `Duration`s, addresses are parsed, member
//! URLs are split, certificates are loaded and checked. They are plain data with no behaviour, so
//! the config layer depends on nothing else in lb, and everything else may depend on it.
use super::flags::StatusFlags;
use super::tls::{ServerCert, UpstreamTls};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The default admin address (loopback only: the admin API can change live state).
pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9090";

#[derive(Debug, Clone)]
pub struct Config {
    pub admin: Option<AdminConfig>,
    pub telemetry: TelemetryConfig,
    /// Apache `HeartbeatListen`: UDP address for mod_heartbeat datagrams.
    pub heartbeat_listen: Option<SocketAddr>,
    /// Apache `GracefulShutdownTimeout`: how long open work may finish after SIGTERM/SIGINT.
    pub graceful_shutdown_timeout: Duration,
    pub access_log: AccessLogConfig,
    pub resolver: ResolverConfig,
    pub listeners: Vec<ListenerConfig>,
    pub balancers: Vec<BalancerConfig>,
}

/// `[resolver]`: members named by DNS are re-resolved at their record's TTL, within these
/// bounds, and each address becomes a member of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Name servers to ask; empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// A record's TTL is raised to this (a TTL of 0 would ask without pause).
    pub min_ttl: Duration,
    /// …and lowered to this (a long TTL would hide a change for that long).
    pub max_ttl: Duration,
}

impl Default for ResolverConfig {
    fn default() -> ResolverConfig {
        ResolverConfig {
            nameservers: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
        }
    }
}

/// `[access_log]`: one log per process (each listener's `access_log` turns its lines on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// A file to append to; None: stdout.
    pub path: Option<std::path::PathBuf>,
    pub format: AccessLogFormat,
    /// Lines waiting for the writer at most; beyond, lines are dropped and counted.
    pub buffer: usize,
}

impl Default for AccessLogConfig {
    fn default() -> AccessLogConfig {
        AccessLogConfig { path: None, format: AccessLogFormat::Combined, buffer: 16 * 1024 }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// Apache's combined format, extended with lb's fields.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// Clients not on loopback must send `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
    /// Source networks admitted at all (Apache's `Require ip`).
    pub allow: Vec<IpNet>,
    /// Where live edits are kept, to be made again at start and reload (Apache's
    /// `BalancerPersist`); None: live edits last until the next start or reload.
    pub state_file: Option<std::path::PathBuf>,
}

/// A network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

/// `[telemetry] source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceChoice {
    /// eBPF when it loads, else the TCP_INFO fallback (said at startup).
    Auto,
    /// eBPF or refuse to start.
    Ebpf,
    /// TCP_INFO of lb's member connections (what auto falls back to).
    TcpInfo,
    Off,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub source: SourceChoice,
    pub interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { source: SourceChoice::Auto, interval: Duration::from_millis(100) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    /// HTTP: the longest wait for a client's request head (Apache `Timeout`).
    /// TCP: the longest time a connection may pass no byte either way.
    pub timeout: Duration,
    pub keepalive: bool,
    /// Apache `KeepAliveTimeout`: idle time allowed between requests on one connection.
    pub keepalive_timeout: Duration,
    /// Apache `MaxKeepAliveRequests`; 0 = unlimited.
    pub max_keepalive_requests: u64,
    /// What a request may hold (line, header lines, head, body).
    pub limits: super::Limits,
    /// How long a client may take over a request head or body, and a TLS handshake.
    pub read_timeouts: super::ReadTimeouts,
    /// Client connections open at once; at the limit, accepting pauses.
    pub max_connections: usize,
    /// The kernel's queue of connections not yet accepted (`listen(2)`'s backlog; the kernel
    /// caps it at `net.core.somaxconn`).
    pub backlog: u32,
    pub access_log: bool,
    /// Read a PROXY protocol (v1 or v2) header before anything else on each connection.
    pub accept_proxy: bool,
    /// TCP: move a direction to splice(2) (zero copy) once it carries bulk; false: always copy.
    pub splice: bool,
    /// Certificates to terminate TLS with, chosen by SNI; the first is the default. Empty:
    /// cleartext.
    pub tls: Vec<Arc<ServerCert>>,
    /// HTTP: ProxyPass routes.
    pub routes: Vec<ProxyPassConfig>,
    /// TCP: the balancer for connections no SNI route claims.
    pub balancer: Option<String>,
    /// TCP without TLS termination: route by the ClientHello's SNI.
    pub sni: Vec<SniRoute>,
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

/// `[[listener.sni]]`: TLS passthrough by server name.
#[derive(Debug, Clone)]
pub struct SniRoute {
    /// Lower-case; `*.example.com` matches one label in front of `example.com`.
    pub server_name: String,
    pub balancer: String,
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
    /// How long to wait for a usable member before giving up (0 = don't wait).
    pub timeout: Duration,
    pub forcerecovery: bool,
    pub growth: u32,
    /// When kernel signals and request errors eject a member.
    pub ejection: EjectionPolicy,
    /// Policy only the HTTP side applies; the balancer itself never reads it.
    pub http: HttpPolicy,
    pub members: Vec<MemberConfig>,
}

/// Apache's HTTP-only balancer parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpPolicy {
    /// Member statuses that put the member in error (E).
    pub failonstatus: Vec<u16>,
    /// A member timeout also puts it in E.
    pub failontimeout: bool,
    /// Sticky sessions (`stickysession`), when set.
    pub sticky: Option<Sticky>,
    /// Send the BALANCER_* values to members as `X-Balancer-*` request headers.
    pub balancer_headers: bool,
}

/// Apache's `stickysession`, `stickysessionsep` and `scolonpathdelim`, and lb's own routing
/// cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    /// The cookie that carries the session (`stickysession=COOKIE|param`, or the one name).
    pub cookie: String,
    /// The URL parameter that carries it.
    pub param: String,
    /// The route starts after the first of these in the session value; None (`Off`): the
    /// whole value is the route.
    pub separator: Option<u8>,
    /// `;` also ends a URL parameter's value (`scolonpathdelim`).
    pub scolon: bool,
    /// The cookie lb sets when a response comes from a member whose route the client did not
    /// send.
    pub set_cookie: Option<RoutingCookie>,
}

/// `[balancer.NAME.sticky_cookie]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingCookie {
    pub name: String,
    pub path: String,
    pub domain: Option<String>,
    pub secure: bool,
    pub httponly: bool,
    pub samesite: Option<String>,
    /// None: a session cookie.
    pub max_age: Option<Duration>,
}

/// When a member is sick, and what ejection costs it. `[balancer.NAME.ejection]` in the config;
/// `health::ejection` gives it behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct EjectionPolicy {
    pub enabled: bool,
    /// A member with no traffic for this long is probed (zero: never probe idle members).
    pub probe_interval: Duration,
    /// A probe that has not finished within this (or, if longer, per probe connection 8 × the
    /// member's srtt plus 10 ms and one acknowledgement wait) fails.
    pub probe_timeout: Duration,
    /// Requests waiting this long on a member that answers nothing make it suspect.
    pub stall_after: Duration,
    /// srtt this many times the balancer's median srtt ejects (with `latency_floor`).
    pub latency_factor: f64,
    /// ...but only when srtt is also at least this.
    pub latency_floor: Duration,
    /// Requests failed in a row (connect or exchange errors) that eject.
    pub consecutive_errors: u32,
    /// First ejection time; the n-th ejection lasts n × base, up to `max_time`.
    pub base_time: Duration,
    pub max_time: Duration,
    /// How long a returning member must stay clean before it is healthy again.
    pub probation: Duration,
    /// At most this share of a balancer's members is ejected at once (at least one when the
    /// balancer has two or more). Beyond it the balancer is in panic mode and balances across
    /// all members instead.
    pub max_ejected_percent: u32,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        EjectionPolicy {
            enabled: true,
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(100),
            stall_after: Duration::from_millis(300),
            latency_factor: 10.0,
            latency_floor: Duration::from_millis(2),
            consecutive_errors: 5,
            base_time: Duration::from_secs(2),
            max_time: Duration::from_secs(300),
            probation: Duration::from_secs(5),
            max_ejected_percent: 50,
        }
    }
}

/// How lb reaches a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
    Tcp,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Tcp => "tcp",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
            Scheme::Tcp => 0,
        }
    }
}

/// A member's URL: `http://`, `https://` or `tcp://`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for the root); always "" for `tcp://`.
    pub path: String,
    /// For a member named by DNS: the one address of the name this member stands for (each
    /// address is a member of its own). Part of the identity; None for a member as written.
    pub pin: Option<std::net::IpAddr>,
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
        format!("{}://{}{}", self.scheme.as_str(), self.authority(), self.path)
    }
}

impl std::fmt::Display for MemberUrl {
    /// The URL, and for a member standing for one address of a DNS name, that address:
    /// `http://app.internal:8080 (10.0.0.7)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.base())?;
        match self.pin {
            Some(ip) => write!(f, " ({ip})"),
            None => Ok(()),
        }
    }
}

/// PROXY protocol version sent to a member (`send_proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
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
    /// Apache's socket I/O timeout: HTTP waits this long for a response head.
    pub timeout: Duration,
    /// Most connections in use at once to the member; None = unlimited.
    pub max: Option<u32>,
    /// Idle pooled connections older than this are closed instead of reused.
    pub ttl: Option<Duration>,
    /// Longest wait for a free connection slot when `max` is reached (None = wait `timeout`).
    pub acquire: Option<Duration>,
    pub disablereuse: bool,
    pub keepalive: bool,
    /// Write a PROXY protocol header on each new layer-4 connection to the member.
    pub send_proxy: Option<ProxyVersion>,
    /// TLS settings for an `https://` member (the balancer's, with the member's overrides).
    pub tls: Option<Arc<UpstreamTls>>,
    /// Active health checks (`hcmethod` and friends), when configured.
    pub hcheck: Option<Arc<HealthCheck>>,
    /// Apache's `ping`: a request with a body asks the member for `100 Continue` first and
    /// waits this long for it (None: off).
    pub ping: Option<Duration>,
}

/// Apache's `hcmethod`: a TCP connect (a TLS handshake for `https://` members), or an HTTP
/// request, HTTP/1.0 or (the `11` forms) HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HcMethod {
    Tcp,
    Options,
    Head,
    Get,
    Options11,
    Head11,
    Get11,
}

impl HcMethod {
    /// The HTTP method and whether the request is HTTP/1.1 (None for TCP).
    pub fn http(self) -> Option<(&'static str, bool)> {
        match self {
            HcMethod::Tcp => None,
            HcMethod::Options => Some(("OPTIONS", false)),
            HcMethod::Head => Some(("HEAD", false)),
            HcMethod::Get => Some(("GET", false)),
            HcMethod::Options11 => Some(("OPTIONS", true)),
            HcMethod::Head11 => Some(("HEAD", true)),
            HcMethod::Get11 => Some(("GET", true)),
        }
    }
}

/// What a health check's answer body must hold.
#[derive(Debug, Clone)]
pub enum BodyMatch {
    Contains(String),
    Regex(regex::Regex),
}

/// A member's active health check (mod_proxy_hcheck).
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub method: HcMethod,
    /// Appended to the member URL's path.
    pub uri: String,
    pub interval: Duration,
    /// Passes in a row that clear C (and E); failures in a row that set C.
    pub passes: u32,
    pub fails: u32,
    pub timeout: Duration,
    /// Accepted statuses, as inclusive ranges.
    pub status: Vec<(u16, u16)>,
    pub body: Option<BodyMatch>,
}

impl HealthCheck {
    /// `hcinterval`, `hctimeout` and `hcstatus` when not set (passes and fails: 1).
    pub const INTERVAL: Duration = Duration::from_secs(30);
    pub const TIMEOUT: Duration = Duration::from_secs(5);
    pub const STATUS: [(u16, u16); 1] = [(200, 399)];

    /// A check by `method` with every other setting at its default.
    pub fn new(method: HcMethod) -> HealthCheck {
        HealthCheck {
            method,
            uri: String::new(),
            interval: HealthCheck::INTERVAL,
            passes: 1,
            fails: 1,
            timeout: HealthCheck::TIMEOUT,
            status: HealthCheck::STATUS.to_vec(),
            body: None,
        }
    }
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
            send_proxy: None,
            hcheck: None,
            ping: None,
            tls: None,
        }
    }
}
