//! Listeners: one per `Listen`, served by the first `<VirtualHost>` on its address (Apache's
//! default server for it) over the main server; its routes from `ProxyPass`, made explicit
//! balancers where a plain URL carries settings, with the scope's `ProxyTimeout`/`Timeout`,
//! `SSLProxy*` and routing-cookie recipe applied to the balancer each route names.
use super::assemble::{Assembler, Listener, Route, Tls, same_url};
use super::params::{Keys, V, set};
use super::translate::{Pass, RawBalancer, Scope};

impl Assembler<'_> {
    /// One listener per `Listen`.
    pub(super) fn listeners(&mut self) {
        let f = self.f;
        let mut used = vec![false; f.vhosts.len()];
        let mut names: Vec<String> = Vec::new();
        for (n, l) in f.listens.iter().enumerate() {
            // Two Listens on one port where either takes every address collide (httpd refuses
            // them too); so does the same address twice.
            let clash = f.listens[..n]
                .iter()
                .find(|e| e.port == l.port && (e.ip.is_none() || l.ip.is_none() || e.ip == l.ip));
            if let Some(e) = clash {
                let why = format!("overlaps the Listen at {}; only that one is translated", e.at);
                self.note(&l.at, format!("Listen {}", l.port), why);
                continue;
            }
            let matching: Vec<usize> = (0..f.vhosts.len())
                .filter(|&i| {
                    f.vhosts[i].addrs.iter().any(|a| vhost_matches(a, l.ip.as_deref(), l.port))
                })
                .collect();
            let vhost = matching.first().map(|&i| &f.vhosts[i]);
            for &i in &matching {
                used[i] = true;
            }
            for &i in matching.iter().skip(1) {
                let v = &f.vhosts[i];
                let first = vhost.and_then(|v| v.server_name.clone()).unwrap_or_default();
                let why = format!(
                    "a name-based virtual host on the same address as {first:?}: lb routes by path, not by Host, so only the first virtual host of an address is translated"
                );
                let at = v.at.clone().unwrap_or_else(|| l.at.clone());
                self.note(
                    &at,
                    format!(
                        "<VirtualHost {}> {}",
                        v.addrs.join(" "),
                        v.server_name.clone().unwrap_or_default()
                    ),
                    why,
                );
            }
            if let Some(listener) = self.listener(l, vhost, &mut names) {
                self.model.listeners.push(listener);
            }
        }
        for (i, v) in f.vhosts.iter().enumerate() {
            if let (false, Some(at)) = (used[i], &v.at) {
                self.note(
                    at,
                    format!("<VirtualHost {}>", v.addrs.join(" ")),
                    "no Listen covers this address; not translated",
                );
            }
        }
    }

    fn listener(
        &mut self,
        l: &super::translate::Listen,
        vhost: Option<&Scope>,
        names: &mut Vec<String>,
    ) -> Option<Listener> {
        let server = &self.f.server;
        let bind = match &l.ip {
            Some(ip) if ip.contains(':') => format!("[{ip}]:{}", l.port),
            Some(ip) => format!("{ip}:{}", l.port),
            None => format!("0.0.0.0:{}", l.port),
        };
        if l.ip.is_none() {
            self.note(&l.at, format!("Listen {}", l.port), "Apache listens on every IPv4 and IPv6 address; lb binds 0.0.0.0 (add a listener on [::] for IPv6)");
        }
        let mut keys = server.keys.clone();
        for (k, v) in vhost.map(|v| v.keys.clone()).unwrap_or_default() {
            set(&mut keys, k, v);
        }
        if self.f.access_log.is_none() {
            set(&mut keys, "access_log", V::Bool(false));
        }
        // A vhost's setting, else the main server's.
        let vs = |f: &dyn Fn(&Scope) -> Option<String>| vhost.and_then(f).or_else(|| f(server));
        let ssl_on = vhost
            .and_then(|v| v.ssl_engine.as_ref())
            .or(server.ssl_engine.as_ref())
            .is_some_and(|(on, _)| *on);
        let tls = if ssl_on {
            let cert = vs(&|s| s.cert.clone());
            let key = vs(&|s| s.key.clone()).or_else(|| cert.clone());
            let chain = vs(&|s| s.chain.clone());
            match cert {
                Some(cert) => Some(Tls { key: key.unwrap_or_else(|| cert.clone()), cert, chain }),
                None => {
                    self.note(
                        &l.at,
                        format!("Listen {bind}"),
                        "SSLEngine on without SSLCertificateFile; the listener is plain HTTP",
                    );
                    None
                }
            }
        } else {
            None
        };
        let at = vhost.and_then(|v| v.at.clone()).unwrap_or_else(|| l.at.clone());
        let routes = self.routes(vhost);
        if routes.is_empty() {
            self.note(&at, format!("Listen {bind}"), "no ProxyPass serves this address (Apache would serve files); lb only forwards, so no listener is made for it");
            return None;
        }
        let base = vhost.and_then(|v| v.server_name.clone()).unwrap_or_else(|| {
            format!("{}-{}", if tls.is_some() { "https" } else { "http" }, l.port)
        });
        let mut name: String = base
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
            .collect();
        let base_name = name.clone();
        let mut k = 1;
        while names.contains(&name) {
            k += 1;
            name = format!("{base_name}-{k}");
        }
        names.push(name.clone());
        Some(Listener { name, bind, at, keys, tls, routes })
    }

    /// The vhost's ProxyPass routes, then the main server's on paths the vhost does not map.
    fn routes(&mut self, vhost: Option<&Scope>) -> Vec<Route> {
        let server = &self.f.server;
        let mut passes: Vec<(&Pass, &Scope)> = Vec::new();
        for sc in vhost.into_iter().chain(std::iter::once(server)) {
            for p in &sc.passes {
                if !passes.iter().any(|(q, _)| q.path == p.path) {
                    passes.push((p, sc));
                }
            }
        }
        let mut out = Vec::new();
        for (p, sc) in passes {
            let preserve = sc.preserve_host.or(server.preserve_host).unwrap_or(false);
            let reverse = [sc, server].iter().any(|s| {
                s.reverses.iter().any(|(path, url, _)| path == &p.path && same_url(url, &p.target))
            });
            if let Some(to) = self.target(p, sc) {
                out.push(Route {
                    path: p.path.clone(),
                    to,
                    reverse,
                    preserve_host: preserve,
                    at: p.at.clone(),
                });
            }
        }
        out
    }

    /// A ProxyPass target as lb's `to`, with the scope's member defaults and recipes applied to
    /// the balancer it names (made explicit for a plain URL that carries settings).
    fn target(&mut self, p: &Pass, sc: &Scope) -> Option<String> {
        let server = &self.f.server;
        let timeout = sc
            .proxy_timeout
            .clone()
            .or(server.proxy_timeout.clone())
            .or(sc.timeout.clone())
            .or(server.timeout.clone());
        let tls: Keys = server.proxy_tls.iter().chain(&sc.proxy_tls).cloned().collect();
        let (name, path) = if let Some(rest) = p.target.strip_prefix("balancer://") {
            let (name, path) =
                rest.split_once('/').map_or((rest, String::new()), |(n, p)| (n, format!("/{p}")));
            (name.to_ascii_lowercase(), path)
        } else {
            let needs_balancer = !p.params.is_empty()
                || timeout.is_some()
                || (!tls.is_empty() && p.target.starts_with("https://"));
            if !needs_balancer {
                let label = format!("ProxyPass {} {}", p.path, p.target);
                return self.member_url(&p.target, &p.at, &label);
            }
            let (origin, path) = split_origin(&p.target);
            let name: String = origin
                .split_once("://")
                .map_or(origin, |(_, h)| h)
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            if !self.model.balancers.iter().any(|b| b.name == name) {
                let raw = RawBalancer {
                    name: name.clone(),
                    at: p.at.clone(),
                    params: Vec::new(),
                    members: vec![(origin.to_owned(), p.params.clone(), p.at.clone())],
                };
                let b = self.balancer(&raw);
                self.model.balancers.push(b);
            }
            (name, path.to_owned())
        };
        let Some(i) = self.model.balancers.iter().position(|b| b.name == name) else {
            self.note(
                &p.at,
                format!("ProxyPass {} {}", p.path, p.target),
                "no <Proxy balancer://…> of that name; route left out",
            );
            return None;
        };
        if self.model.balancers[i].members.is_empty() {
            return None;
        }
        if p.target.starts_with("balancer://") {
            // ProxyPass parameters on a balancer: its own keys, and member keys as a default
            // for members that do not set them.
            let mut keys = std::mem::take(&mut self.model.balancers[i].keys);
            let mut member_defaults = Vec::new();
            for prm in &p.params {
                self.balancer_param(prm, &p.at, &mut keys, &mut member_defaults);
            }
            let mut members = std::mem::take(&mut self.model.balancers[i].members);
            for m in &mut members {
                let mut extra = Vec::new();
                for prm in &member_defaults {
                    self.member_param(prm, &p.at, &mut extra);
                }
                for (k, v) in extra {
                    if !m.keys.iter().any(|(mk, _)| *mk == k) {
                        m.keys.push((k, v));
                    }
                }
            }
            let b = &mut self.model.balancers[i];
            b.keys = keys;
            b.members = members;
        }
        let b = &mut self.model.balancers[i];
        if let Some(t) = timeout {
            for m in &mut b.members {
                if !m.keys.iter().any(|(k, _)| *k == "timeout") {
                    m.keys.push(("timeout", t.clone()));
                }
            }
        }
        if b.members.iter().any(|m| m.url.starts_with("https://")) {
            for (k, v) in &tls {
                set(&mut b.tls, k, v.clone());
            }
        }
        let cookie_name = b.keys.iter().find_map(|(k, v)| match (k, v) {
            (&"stickysession", V::Str(s)) => Some(s.split('|').next().unwrap_or(s).to_owned()),
            _ => None,
        });
        for (cname, keys, at) in server.cookies.iter().chain(&sc.cookies) {
            if cookie_name.as_deref() == Some(cname.as_str()) {
                b.cookie = vec![("name", V::Str(cname.clone()))];
                b.cookie.extend(keys.iter().cloned());
                self.recipes_used.push(at.clone());
            }
        }
        Some(format!("balancer://{name}{path}"))
    }
}

/// `http://host:port/path` → (`http://host:port`, `/path`).
fn split_origin(url: &str) -> (&str, &str) {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(i) => url.split_at(after + i),
        None => (url, ""),
    }
}

/// Whether `<VirtualHost addr>` serves `Listen [ip:]port`.
fn vhost_matches(addr: &str, ip: Option<&str>, port: u16) -> bool {
    let (host, p) = match addr.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, p.parse::<u16>().ok()),
        _ => (addr, None),
    };
    if p.is_some_and(|p| p != port) {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match (host, ip) {
        ("*" | "_default_", _) | (_, None) => true,
        (h, Some(ip)) => h == ip || h.parse::<std::net::IpAddr>().is_err(),
    }
}
