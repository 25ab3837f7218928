//! Stage one of config loading: the TOML file exactly as written.
//!
//! These structs mirror the file's shape; they hold no meaning yet. Unknown keys are errors, but
//! they are collected (with `serde_ignored`) rather than refused by `deny_unknown_fields`, so that
//! `lb check` reports every one of them, not only the first.
//! The validation modules ([`super::listener`], [`super::balancer`]) turn them into the typed [`super::Config`], reporting every semantic error
//! with the key path it came from. Key names follow Apache's parameter names wherever Apache has
//! one, so that translating an Apache config is a mapping, not an interpretation.
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Deserialize, Default)]
pub struct RawConfig {
    pub admin: Option<RawAdmin>,
    pub telemetry: Option<RawTelemetry>,
    pub heartbeat: Option<RawHeartbeat>,
    pub server: Option<RawServer>,
    pub access_log: Option<RawAccessLog>,
    pub resolver: Option<RawResolver>,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub balancer: BTreeMap<String, RawBalancer>,
}

#[derive(Debug, Deserialize)]
pub struct RawAdmin {
    pub bind: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub allow: Option<Vec<String>>,
    pub state_file: Option<String>,
}

/// `[access_log]`: where the access log goes and in what format.
#[derive(Debug, Deserialize)]
pub struct RawAccessLog {
    pub path: Option<String>,
    pub format: Option<String>,
    pub buffer: Option<u64>,
}

/// `[resolver]`: how members named by DNS are resolved.
#[derive(Debug, Deserialize)]
pub struct RawResolver {
    pub nameservers: Option<Vec<String>>,
    pub min_ttl: Option<RawDuration>,
    pub max_ttl: Option<RawDuration>,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Deserialize)]
pub struct RawServer {
    pub graceful_shutdown_timeout: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
pub struct RawHeartbeat {
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawTelemetry {
    pub source: Option<String>,
    pub interval: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
pub struct RawListener {
    pub name: String,
    pub bind: String,
    pub protocol: Option<String>,
    pub timeout: Option<RawDuration>,
    pub keepalive: Option<bool>,
    pub keepalive_timeout: Option<RawDuration>,
    pub max_keepalive_requests: Option<u64>,
    pub limit_request_fields_size: Option<u64>,
    pub limit_request_line: Option<u64>,
    pub limit_request_field_size: Option<u64>,
    pub limit_request_fields: Option<u64>,
    pub limit_request_body: Option<u64>,
    pub request_read_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub backlog: Option<u64>,
    pub access_log: Option<bool>,
    pub accept_proxy: Option<bool>,
    pub splice: Option<bool>,
    pub balancer: Option<String>,
    #[serde(default)]
    pub proxy_pass: Vec<RawProxyPass>,
    #[serde(default)]
    pub tls: Vec<RawServerTls>,
    #[serde(default)]
    pub sni: Vec<RawSni>,
}

/// `[[listener.tls]]`: one certificate, chosen by SNI.
#[derive(Debug, Deserialize)]
pub struct RawServerTls {
    pub cert: String,
    pub key: String,
    /// Intermediate certificates kept apart from the leaf (Apache's `SSLCertificateChainFile`).
    pub chain: Option<String>,
}

/// `[[listener.sni]]`: TLS passthrough by server name (TCP listeners).
#[derive(Debug, Deserialize)]
pub struct RawSni {
    pub server_name: String,
    pub balancer: String,
}

/// `[balancer.NAME.tls]` and a member's `tls` override: TLS to `https://` members.
#[derive(Debug, Deserialize, Default, Clone)]
pub struct RawUpstreamTls {
    pub ca: Option<String>,
    pub server_name: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub insecure: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RawProxyPass {
    pub path: String,
    pub to: String,
    #[serde(default)]
    pub reverse: bool,
    #[serde(default)]
    pub preserve_host: bool,
}

#[derive(Debug, Deserialize)]
pub struct RawBalancer {
    pub lbmethod: Option<String>,
    pub maxattempts: Option<u32>,
    pub nofailover: Option<bool>,
    pub timeout: Option<RawDuration>,
    pub failonstatus: Option<RawStatusList>,
    pub failontimeout: Option<bool>,
    pub forcerecovery: Option<bool>,
    pub growth: Option<u32>,
    pub stickysession: Option<String>,
    pub stickysessionsep: Option<String>,
    pub scolonpathdelim: Option<bool>,
    pub sticky_cookie: Option<RawStickyCookie>,
    pub balancer_headers: Option<bool>,
    pub hcmethod: Option<String>,
    pub hcinterval: Option<RawDuration>,
    pub hcpasses: Option<u32>,
    pub hcfails: Option<u32>,
    pub hcuri: Option<String>,
    pub hctimeout: Option<RawDuration>,
    pub hcstatus: Option<RawStatusList>,
    pub hcbody: Option<String>,
    pub hcbody_regex: Option<String>,
    pub ping: Option<RawDuration>,
    pub ejection: Option<RawEjection>,
    pub tls: Option<RawUpstreamTls>,
    #[serde(default)]
    pub member: Vec<RawMember>,
}

/// `[balancer.NAME.sticky_cookie]`: the routing cookie lb sets itself.
#[derive(Debug, Deserialize)]
pub struct RawStickyCookie {
    pub name: Option<String>,
    pub path: Option<String>,
    pub domain: Option<String>,
    pub secure: Option<bool>,
    pub httponly: Option<bool>,
    pub samesite: Option<String>,
    pub max_age: Option<RawDuration>,
}

/// `[balancer.NAME.ejection]`: when kernel signals and request errors eject a member.
#[derive(Debug, Deserialize)]
pub struct RawEjection {
    pub enabled: Option<bool>,
    /// Replaced by evidence weighed against traffic; named only to say so.
    pub max_retransmits_per_s: Option<RawNumber>,
    pub max_failed_connects: Option<u64>,
    pub max_rto: Option<u64>,
    pub probe_interval: Option<RawDuration>,
    pub probe_timeout: Option<RawDuration>,
    pub stall_after: Option<RawDuration>,
    pub latency_factor: Option<RawNumber>,
    pub latency_floor: Option<RawDuration>,
    pub consecutive_errors: Option<u32>,
    pub base_time: Option<RawDuration>,
    pub max_time: Option<RawDuration>,
    pub probation: Option<RawDuration>,
    pub max_ejected_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct RawMember {
    pub url: String,
    pub loadfactor: Option<RawNumber>,
    pub lbset: Option<i64>,
    pub route: Option<String>,
    pub redirect: Option<String>,
    pub status: Option<String>,
    pub retry: Option<RawDuration>,
    pub connectiontimeout: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
    pub max: Option<u32>,
    pub ttl: Option<RawDuration>,
    pub acquire: Option<RawDuration>,
    pub disablereuse: Option<bool>,
    pub keepalive: Option<bool>,
    pub send_proxy: Option<String>,
    pub hcmethod: Option<String>,
    pub hcinterval: Option<RawDuration>,
    pub hcpasses: Option<u32>,
    pub hcfails: Option<u32>,
    pub hcuri: Option<String>,
    pub hctimeout: Option<RawDuration>,
    pub hcstatus: Option<RawStatusList>,
    pub hcbody: Option<String>,
    pub hcbody_regex: Option<String>,
    pub ping: Option<RawDuration>,
    pub tls: Option<RawUpstreamTls>,
}

/// Apache writes durations as plain seconds; lb also takes "250ms", "5s", "2m", "1h".
#[derive(Debug, Clone)]
pub enum RawDuration {
    Seconds(i64),
    FractionalSeconds(f64),
    Text(String),
}

/// A number written either as an integer or a float (`loadfactor = 1` or `1.5`).
#[derive(Debug, Clone, Copy)]
pub enum RawNumber {
    Int(i64),
    Float(f64),
}

/// `failonstatus = [500, 503]` or Apache's `failonstatus = "500,503"`.
#[derive(Debug, Clone)]
pub enum RawStatusList {
    List(Vec<i64>),
    Text(String),
}

// Hand-written visitors so a wrong type says what was expected (serde's untagged enums only say
// "did not match any variant").
macro_rules! visit_numbers {
    ($int:expr, $float:expr) => {
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok($int(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v).map($int).map_err(|_| E::custom("number too large"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok($float(v))
        }
    };
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration: seconds as a number, or a string like \"250ms\", \"5s\", \"2m\"",
                )
            }
            visit_numbers!(RawDuration::Seconds, RawDuration::FractionalSeconds);
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawNumber;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number (integer or decimal)")
            }
            visit_numbers!(RawNumber::Int, RawNumber::Float);
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawStatusList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawStatusList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "HTTP status codes: a list like [500, 503] or a string like \"500,503\"",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawStatusList, E> {
                Ok(RawStatusList::Text(v.to_owned()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawStatusList, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<i64>()? {
                    out.push(v);
                }
                Ok(RawStatusList::List(out))
            }
        }
        d.deserialize_any(V)
    }
}
