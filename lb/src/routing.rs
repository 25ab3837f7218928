//! Everything the data path reads, built from one config: balancers (members kept from the
//! previous build when their balancer and URL are unchanged), the HTTP view of each balancer
//! (pools by member identity), and one service per listener. The runtime swaps it in whole.
use crate::balancer::Balancer;
use crate::balancer::heartbeat::Heartbeats;
use crate::config::{
    BalancerConfig, Config, EjectionPolicy, HttpPolicy, LbMethod, MemberUrl, Protocol, Scheme,
    Target,
};
use crate::http::proxy::HttpProxy;
use crate::http::route::{ReverseMap, Route, RouteTable, Upstream};
use crate::http::server::HttpService;
use crate::tcp::TcpService;
use crate::telemetry::Telemetry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Why a config that validated cannot be put to work (TLS setup).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("balancer {balancer:?}: {source}")]
    UpstreamTls {
        balancer: String,
        #[source]
        source: crate::tls::TlsError,
    },
    #[error("listener {listener:?}: {source}")]
    ListenerTls {
        listener: String,
        #[source]
        source: crate::tls::TlsError,
    },
}

/// What one listener serves.
pub enum Service {
    Http(Arc<HttpService>),
    Tcp(Arc<TcpService>),
}

/// What a later build carries over: the balancers (members by identity) and their HTTP views
/// (pools by member).
pub struct Routing {
    pub balancers: Vec<Arc<Balancer>>,
    /// The HTTP view of each balancer an HTTP route uses, by balancer name.
    pub upstreams: HashMap<String, Arc<Upstream>>,
}

impl Routing {
    /// Build from `cfg` (members named by DNS expanded by `answers`), keeping members, pools and
    /// balancer state of `prev` where unchanged;
    /// with it, one service per listener, in config order, for the runtime to start or swap in.
    pub fn build(
        cfg: &Config,
        prev: Option<&Routing>,
        telemetry: &Arc<Telemetry>,
        heartbeats: &Arc<Heartbeats>,
        answers: &crate::dns::Answers,
    ) -> Result<(Routing, Vec<Service>), BuildError> {
        let old_balancer = |name: &str| {
            prev.and_then(|p| p.balancers.iter().find(|b| b.name() == name)).map(|b| &**b)
        };
        // Every balancer: the configured ones, and one implicit balancer per plain `http://`
        // ProxyPass target.
        let mut configs: Vec<(BalancerConfig, bool)> =
            cfg.balancers.iter().map(|b| (b.clone(), false)).collect();
        for l in &cfg.listeners {
            for r in &l.routes {
                if let Target::Url { url, .. } = &r.target {
                    let name = implicit_name(url);
                    if configs.iter().all(|(b, _)| b.name != name) {
                        configs.push((implicit_balancer(name, url), true));
                    }
                }
            }
        }
        // A member named by DNS stands for each address its name has now.
        for (b, _) in &mut configs {
            crate::dns::expand(b, answers);
        }
        // Everything that can fail comes first, so a failed reload has touched nothing.
        let mut connectors: HashMap<(String, MemberUrl), crate::tls::Upstream> = HashMap::new();
        for (b, _) in &configs {
            for m in &b.members {
                if let (Scheme::Https, Some(t)) = (m.url.scheme, &m.tls) {
                    let c = crate::tls::Upstream::new(&m.url, t).map_err(|source| {
                        BuildError::UpstreamTls { balancer: b.name.clone(), source }
                    })?;
                    connectors.insert((b.name.clone(), m.url.clone()), c);
                }
            }
        }
        let mut acceptors = Vec::new();
        for l in &cfg.listeners {
            let alpn: &[&[u8]] = match l.protocol {
                Protocol::Http => &[b"h2", b"http/1.1"],
                Protocol::Tcp => &[],
            };
            let acceptor = if l.tls.is_empty() {
                None
            } else {
                Some(crate::tls::acceptor(&l.tls, alpn).map_err(|source| {
                    BuildError::ListenerTls { listener: l.name.clone(), source }
                })?)
            };
            acceptors.push(acceptor);
        }
        // From here on nothing fails: members are kept (and updated) or made.
        let mut balancers: Vec<Arc<Balancer>> = Vec::new();
        let mut policies: HashMap<String, HttpPolicy> = HashMap::new();
        for (b, implicit) in &configs {
            let bal =
                Balancer::rebuild(b, *implicit, Arc::clone(heartbeats), old_balancer(&b.name));
            balancers.push(Arc::new(bal));
            policies.insert(b.name.clone(), b.http.clone());
        }
        for b in &balancers {
            for m in &b.members {
                if m.config().tls.as_ref().is_some_and(|t| t.insecure) {
                    tracing::warn!(balancer = %b.name(), member = %m.url, "TLS verification of this member is OFF (insecure = true)");
                }
            }
        }
        let find = |name: &str| balancers.iter().find(|b| b.name() == name).cloned();
        let mut upstreams: HashMap<String, Arc<Upstream>> = HashMap::new();
        let mut services = Vec::new();
        for (l, acceptor) in cfg.listeners.iter().zip(acceptors) {
            let service = match l.protocol {
                Protocol::Http => {
                    let mut routes = Vec::new();
                    for r in &l.routes {
                        let (name, target_path) = match &r.target {
                            Target::Balancer { name, path } => (name.clone(), path.clone()),
                            Target::Url { url, path } => (implicit_name(url), path.clone()),
                        };
                        let Some(bal) = find(&name) else { continue };
                        let upstream = match upstreams.get(&name) {
                            Some(u) => Arc::clone(u),
                            None => {
                                let policy = policies.get(&name).cloned().unwrap_or_default();
                                let old = prev.and_then(|p| p.upstreams.get(&name)).map(|u| &**u);
                                let tls = |url: &MemberUrl| {
                                    connectors.get(&(name.clone(), url.clone())).cloned()
                                };
                                let u = Arc::new(Upstream::new(bal, policy, telemetry, old, tls));
                                upstreams.insert(name.clone(), Arc::clone(&u));
                                u
                            }
                        };
                        let reverse = r
                            .reverse
                            .then(|| ReverseMap::new(&upstream.balancer, &target_path, &r.path));
                        routes.push(Route {
                            prefix: r.path.clone(),
                            target_path,
                            upstream,
                            reverse,
                            preserve_host: r.preserve_host,
                        });
                    }
                    let proxy = HttpProxy {
                        name: Arc::from(l.name.as_str()),
                        routes: RouteTable::new(routes),
                        access_log: l.access_log,
                        keepalive: l.keepalive,
                        max_keepalive_requests: l.max_keepalive_requests,
                    };
                    Service::Http(Arc::new(HttpService::new(l, proxy, acceptor)))
                }
                Protocol::Tcp => Service::Tcp(Arc::new(TcpService::new(
                    l,
                    find,
                    acceptor,
                    Arc::clone(telemetry),
                ))),
            };
            services.push(service);
        }
        Ok((Routing { balancers, upstreams }, services))
    }
}

fn implicit_name(url: &MemberUrl) -> String {
    format!("url:{}", url.base())
}

fn implicit_balancer(name: String, url: &MemberUrl) -> BalancerConfig {
    let mut member = crate::config::MemberConfig::for_url(url.clone());
    if url.scheme == Scheme::Https {
        member.tls = Some(Arc::new(crate::config::tls::UpstreamTls {
            ca: None,
            server_name: None,
            client: None,
            insecure: false,
        }));
    }
    BalancerConfig {
        name,
        lbmethod: LbMethod::ByRequests,
        maxattempts: 0,
        nofailover: false,
        timeout: Duration::ZERO,
        forcerecovery: true,
        growth: 0,
        ejection: EjectionPolicy::default(),
        http: HttpPolicy::default(),
        members: vec![member],
    }
}
