//! Validation of `[[listener]]`: binds, protocol, `proxy_pass` (HTTP), `balancer` and `sni`
//! (TCP), `tls` certificates and `accept_proxy`.
use super::model::{
    BalancerConfig, ListenerConfig, Protocol, ProxyPassConfig, Scheme, SniRoute, Target,
};
use super::raw::{RawListener, RawProxyPass};
use super::{KeyPath, Validator, parse_member_url};
use std::time::Duration;

/// `max_connections` when not set: well under the NOFILE limit lb raises itself to.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The largest `backlog` a listener may ask for (the kernel caps it lower, at
/// `net.core.somaxconn`).
pub const MAX_BACKLOG: u64 = 65_535;

/// What member schemes a listener of `protocol` can forward to.
fn scheme_fits(protocol: Protocol, scheme: Scheme) -> bool {
    match protocol {
        Protocol::Http => matches!(scheme, Scheme::Http | Scheme::Https),
        Protocol::Tcp => scheme == Scheme::Tcp,
    }
}

impl Validator<'_> {
    pub(super) fn listeners(
        &mut self,
        root: &KeyPath,
        raw: &[RawListener],
        balancers: &[BalancerConfig],
    ) -> Vec<ListenerConfig> {
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        for (i, l) in raw.iter().enumerate() {
            let path = root.key("listener").index(i);
            let Some(l) = self.listener(&path, l, balancers) else { continue };
            if listeners.iter().any(|x| x.name == l.name) {
                self.err(&path.key("name"), format!("listener name {:?} is used twice", l.name));
            }
            if listeners.iter().any(|x| x.bind == l.bind && l.bind.port() != 0) {
                self.err(
                    &path.key("bind"),
                    format!("address {} is bound by another listener", l.bind),
                );
            }
            listeners.push(l);
        }
        if raw.is_empty() {
            self.err(root, "no [[listener]] is configured: lb would serve nothing");
        }
        listeners
    }

    /// The balancer `name` for a listener of `protocol`, checked to exist and to hold members
    /// that listener can reach.
    fn balancer_ref(
        &mut self,
        path: &KeyPath,
        name: &str,
        protocol: Protocol,
        balancers: &[BalancerConfig],
    ) -> bool {
        let Some(b) = balancers.iter().find(|b| b.name == name) else {
            self.err(path, format!("balancer {name:?} is not defined (no [balancer.{name}])"));
            return false;
        };
        if let Some(m) = b.members.iter().find(|m| !scheme_fits(protocol, m.url.scheme)) {
            let want = match protocol {
                Protocol::Http => "http:// or https://",
                Protocol::Tcp => "tcp://",
            };
            self.err(
                path,
                format!(
                    "balancer {name:?} has member {} but a {} listener needs {want} members",
                    m.url,
                    protocol.as_str()
                ),
            );
            return false;
        }
        true
    }

    fn listener(
        &mut self,
        path: &KeyPath,
        l: &RawListener,
        balancers: &[BalancerConfig],
    ) -> Option<ListenerConfig> {
        let bind = self.addr(&path.key("bind"), &l.bind);
        let protocol = match l.protocol.as_deref().unwrap_or("http") {
            "http" => Protocol::Http,
            "tcp" => Protocol::Tcp,
            other => {
                self.err(
                    &path.key("protocol"),
                    format!("unknown protocol {other:?}: expected \"http\" or \"tcp\""),
                );
                Protocol::Http
            }
        };
        let default_timeout = match protocol {
            Protocol::Http => Duration::from_secs(60),
            Protocol::Tcp => Duration::from_secs(300),
        };
        let timeout = self.duration(&path.key("timeout"), &l.timeout, default_timeout);
        let keepalive_timeout = self.duration(
            &path.key("keepalive_timeout"),
            &l.keepalive_timeout,
            Duration::from_secs(5),
        );
        let (limits, read_timeouts) = self.request_limits(path, l);
        let max_connections = match l.max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n @ 1..=1_000_000) => n as usize,
            Some(n) => {
                self.err(&path.key("max_connections"), format!("{n} is out of range 1..=1000000"));
                DEFAULT_MAX_CONNECTIONS
            }
        };
        let backlog = match l.backlog {
            // As HAProxy does: room in the queue for as many as may be open at once.
            None => max_connections.min(MAX_BACKLOG as usize) as u32,
            Some(n @ 1..=MAX_BACKLOG) => n as u32,
            Some(n) => {
                self.err(&path.key("backlog"), format!("{n} is out of range 1..={MAX_BACKLOG}"));
                1
            }
        };
        let mut tls = Vec::new();
        for (i, t) in l.tls.iter().enumerate() {
            let tp = path.key("tls").index(i);
            let (cert, key) = (self.file_path(&t.cert), self.file_path(&t.key));
            let chain = t.chain.as_ref().map(|c| self.file_path(c));
            match super::tls::certified_key_with_chain(&cert, chain.as_deref(), &key) {
                Ok(k) => tls
                    .push(std::sync::Arc::new(super::tls::ServerCert { cert_path: cert, key: k })),
                Err(super::tls::PairError::Cert(m)) => self.err(&tp.key("cert"), m),
                Err(super::tls::PairError::Chain(m)) => self.err(&tp.key("chain"), m),
                Err(super::tls::PairError::Key(m)) => self.err(&tp.key("key"), m),
            }
        }
        let mut routes = Vec::new();
        let mut sni = Vec::new();
        let mut balancer = None;
        match protocol {
            Protocol::Http => {
                for (key, set) in [
                    ("balancer", l.balancer.is_some()),
                    ("sni", !l.sni.is_empty()),
                    ("splice", l.splice.is_some()),
                ] {
                    if set {
                        self.err(&path.key(key), format!("{key} is for protocol = \"tcp\" listeners; HTTP listeners route with [[listener.proxy_pass]]"));
                    }
                }
                for (i, p) in l.proxy_pass.iter().enumerate() {
                    let pp = path.key("proxy_pass").index(i);
                    if let Some(r) = self.proxy_pass(&pp, p, &routes, balancers) {
                        routes.push(r);
                    }
                }
                if l.proxy_pass.is_empty() {
                    self.err(
                        &path.key("name"),
                        format!("listener {:?} has no [[listener.proxy_pass]]", l.name),
                    );
                }
            }
            Protocol::Tcp => {
                if !l.proxy_pass.is_empty() {
                    self.err(
                        &path.key("proxy_pass"),
                        "proxy_pass is for HTTP listeners; a tcp listener names its `balancer`",
                    );
                }
                if let Some(b) = &l.balancer
                    && self.balancer_ref(&path.key("balancer"), b, protocol, balancers)
                {
                    balancer = Some(b.clone());
                }
                for (i, s) in l.sni.iter().enumerate() {
                    let sp = path.key("sni").index(i);
                    let name = s.server_name.to_ascii_lowercase();
                    let label_ok = |x: &str| {
                        !x.is_empty()
                            && x.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                    };
                    let ok = match name.strip_prefix("*.") {
                        Some(rest) => label_ok(rest),
                        None => label_ok(&name),
                    };
                    if !ok {
                        self.err(
                            &sp.key("server_name"),
                            format!(
                                "{:?} is not a host name (a leading \"*.\" is allowed)",
                                s.server_name
                            ),
                        );
                        continue;
                    }
                    if self.balancer_ref(&sp.key("balancer"), &s.balancer, protocol, balancers) {
                        sni.push(SniRoute { server_name: name, balancer: s.balancer.clone() });
                    }
                }
                if !l.sni.is_empty() && !l.tls.is_empty() {
                    self.err(&path.key("sni"), "sni routes pass TLS through untouched; they cannot be combined with [[listener.tls]], which terminates it");
                }
                if l.balancer.is_none() && l.sni.is_empty() {
                    self.err(
                        &path.key("name"),
                        format!("tcp listener {:?} needs `balancer = \"NAME\"`", l.name),
                    );
                }
            }
        }
        Some(ListenerConfig {
            name: l.name.clone(),
            bind: bind?,
            protocol,
            timeout,
            keepalive: l.keepalive.unwrap_or(true),
            keepalive_timeout,
            max_keepalive_requests: l.max_keepalive_requests.unwrap_or(1000),
            limits,
            read_timeouts,
            max_connections,
            backlog,
            access_log: l.access_log.unwrap_or(true),
            accept_proxy: l.accept_proxy.unwrap_or(false),
            splice: l.splice.unwrap_or(true),
            tls,
            routes,
            balancer,
            sni,
        })
    }

    fn proxy_pass(
        &mut self,
        pp: &KeyPath,
        p: &RawProxyPass,
        routes: &[ProxyPassConfig],
        balancers: &[BalancerConfig],
    ) -> Option<ProxyPassConfig> {
        if !p.path.starts_with('/') {
            self.err(&pp.key("path"), format!("path {:?} must start with '/'", p.path));
            return None;
        }
        if routes.iter().any(|r| r.path == p.path) {
            self.err(&pp.key("path"), format!("path {:?} is mapped twice", p.path));
            return None;
        }
        let target = if let Some(rest) = p.to.strip_prefix("balancer://") {
            let (name, bpath) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            if !self.balancer_ref(&pp.key("to"), name, Protocol::Http, balancers) {
                return None;
            }
            Target::Balancer { name: name.to_owned(), path: bpath.to_owned() }
        } else {
            match parse_member_url(&p.to) {
                Ok(mut url) if scheme_fits(Protocol::Http, url.scheme) => {
                    // Keep the path as written: "/backend/" + "x" must give "/backend/x".
                    let after_scheme = p.to.split_once("://").map_or("", |(_, r)| r);
                    let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]).to_owned();
                    url.path.clear();
                    Target::Url { url, path }
                }
                Ok(url) => {
                    self.err(
                        &pp.key("to"),
                        format!("{url}: proxy_pass goes to http:// or https://"),
                    );
                    return None;
                }
                Err(m) => {
                    self.err(&pp.key("to"), m);
                    return None;
                }
            }
        };
        Some(ProxyPassConfig {
            path: p.path.clone(),
            target,
            reverse: p.reverse,
            preserve_host: p.preserve_host,
        })
    }
}
