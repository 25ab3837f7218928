//! Everything the data path reads, built from one config: balancers (members kept from the
//! previous build when their balancer and URL are unchanged), the HTTP view of each balancer
//! (pools by member identity), and one service per listener. The runtime swaps it in whole.
use crate::balancer::Balancer;
use crate::balancer::heartbeat::Heartbeats;
use crate::config::{
    BalancerConfig, Config, EjectionPolicy, HttpPolicy, LbMethod, Protocol, Target,
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

/// Everything the data path reads, built from one config.
pub struct Routing {
    pub balancers: Vec<Arc<Balancer>>,
    /// The HTTP view of each balancer an HTTP route uses (pools by member), by balancer name.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// One service per listener, in config order.
    pub services: Vec<Service>,
}

impl Routing {
    /// Build from `cfg`, keeping members, pools and balancer state of `prev` where unchanged.
    pub fn build(
        cfg: &Config,
        prev: Option<&Routing>,
        telemetry: &Arc<Telemetry>,
        heartbeats: &Arc<Heartbeats>,
    ) -> Result<Routing, BuildError> {
        let old_balancer = |name: &str| {
            prev.and_then(|p| p.balancers.iter().find(|b| b.name() == name)).map(|b| &**b)
        };
        let mut balancers: Vec<Arc<Balancer>> = Vec::new();
        let mut policies: HashMap<String, HttpPolicy> = HashMap::new();
        for b in &cfg.balancers {
            let bal = Balancer::rebuild(b, false, Arc::clone(heartbeats), old_balancer(&b.name));
            balancers.push(Arc::new(bal));
            policies.insert(b.name.clone(), b.http.clone());
        }
        // Plain `http://` ProxyPass targets: implicit one-member balancers.
        for l in &cfg.listeners {
            for r in &l.routes {
                if let Target::Url { url, .. } = &r.target {
                    let name = implicit_name(url);
                    if balancers.iter().all(|b| b.name() != name) {
                        let c = implicit_balancer(name.clone(), url);
                        let bal = Balancer::rebuild(
                            &c,
                            true,
                            Arc::clone(heartbeats),
                            old_balancer(&name),
                        );
                        balancers.push(Arc::new(bal));
                    }
                }
            }
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
        for l in &cfg.listeners {
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
                                let u = Upstream::new(bal, policy, telemetry, old).map_err(
                                    |source| BuildError::UpstreamTls {
                                        balancer: name.clone(),
                                        source,
                                    },
                                )?;
                                let u = Arc::new(u);
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
                    let svc = HttpService::new(l, proxy).map_err(|source| {
                        BuildError::ListenerTls { listener: l.name.clone(), source }
                    })?;
                    Service::Http(Arc::new(svc))
                }
                Protocol::Tcp => {
                    let svc =
                        TcpService::new(l, find, Arc::clone(telemetry)).map_err(|source| {
                            BuildError::ListenerTls { listener: l.name.clone(), source }
                        })?;
                    Service::Tcp(Arc::new(svc))
                }
            };
            services.push(service);
        }
        Ok(Routing { balancers, upstreams, services })
    }
}

fn implicit_name(url: &crate::config::MemberUrl) -> String {
    format!("url:{}", url.base())
}

fn implicit_balancer(name: String, url: &crate::config::MemberUrl) -> BalancerConfig {
    let mut member = crate::config::MemberConfig::for_url(url.clone());
    if url.scheme == crate::config::Scheme::Https {
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
