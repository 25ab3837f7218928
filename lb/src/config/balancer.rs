//! Validation of `[balancer.NAME]`: method, Apache's balancer and member parameters, the
//! `[balancer.NAME.ejection]` policy and TLS towards `https://` members.
use super::flags::StatusFlags;
use super::model::{
    BalancerConfig, EjectionPolicy, HttpPolicy, LbMethod, MemberConfig, ProxyVersion, Scheme,
};
use super::raw::{RawBalancer, RawEjection, RawMember, RawNumber, RawStatusList, RawUpstreamTls};
use super::tls::UpstreamTls;
use super::{
    KeyPath, Validator, check_route, parse_lbmethod, parse_lbset, parse_loadfactor,
    parse_member_url,
};
use std::sync::Arc;
use std::time::Duration;

impl Validator<'_> {
    pub(super) fn balancer(
        &mut self,
        path: &KeyPath,
        name: &str,
        b: &RawBalancer,
    ) -> BalancerConfig {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.err(
                path,
                format!("balancer name {name:?} may hold only letters, digits, '-', '_' and '.'"),
            );
        }
        let lbmethod = parse_lbmethod(b.lbmethod.as_deref().unwrap_or("byrequests"))
            .unwrap_or_else(|m| {
                self.err(&path.key("lbmethod"), m);
                LbMethod::ByRequests
            });
        let sticky = self.sticky(path, b);
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
            if let Some(mut c) = self.member(&mp, m, b.tls.as_ref()) {
                c.hcheck = self.hcheck(&mp, m, path, b, c.url.scheme);
                c.ping = self.ping(&mp, m, path, b, c.url.scheme);
                let m = c;
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
            forcerecovery: b.forcerecovery.unwrap_or(true),
            growth: b.growth.unwrap_or(0),
            ejection: self.ejection(&path.key("ejection"), b.ejection.as_ref()),
            http: HttpPolicy {
                failonstatus,
                failontimeout: b.failontimeout.unwrap_or(false),
                sticky,
                balancer_headers: b.balancer_headers.unwrap_or(false),
            },
            members,
        }
    }

    fn ejection(&mut self, path: &KeyPath, raw: Option<&RawEjection>) -> EjectionPolicy {
        let mut p = EjectionPolicy::default();
        let Some(r) = raw else { return p };
        let num = |n: RawNumber| match n {
            RawNumber::Int(i) => i as f64,
            RawNumber::Float(f) => f,
        };
        p.enabled = r.enabled.unwrap_or(true);
        for (key, set) in [
            ("max_retransmits_per_s", r.max_retransmits_per_s.is_some()),
            ("max_failed_connects", r.max_failed_connects.is_some()),
            ("max_rto", r.max_rto.is_some()),
        ] {
            if set {
                self.err(
                    &path.key(key),
                    "no longer used: lb now weighs retransmits, SYN retransmits, failed connects \
                     and failed requests against the traffic that produced them, and confirms \
                     with probes (remove the key; see [balancer.NAME.ejection] in the README)",
                );
            }
        }
        if let Some(v) = r.latency_factor.map(num) {
            if v >= 1.0 {
                p.latency_factor = v
            } else {
                self.err(&path.key("latency_factor"), "must be at least 1")
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
        p.probe_interval =
            self.duration(&path.key("probe_interval"), &r.probe_interval, p.probe_interval);
        p.probe_timeout =
            self.duration(&path.key("probe_timeout"), &r.probe_timeout, p.probe_timeout);
        p.stall_after = self.duration(&path.key("stall_after"), &r.stall_after, p.stall_after);
        if !p.probe_interval.is_zero() && p.probe_interval < Duration::from_millis(100) {
            self.err(&path.key("probe_interval"), "must be 0 (off) or at least 100ms");
        }
        if p.probe_timeout < Duration::from_millis(10) || p.probe_timeout > Duration::from_secs(10)
        {
            self.err(&path.key("probe_timeout"), "must be between 10ms and 10s");
        }
        if p.stall_after < Duration::from_millis(50) {
            self.err(&path.key("stall_after"), "must be at least 50ms");
        }
        if p.base_time.is_zero() {
            self.err(&path.key("base_time"), "must be above 0");
        }
        if p.max_time < p.base_time {
            self.err(&path.key("max_time"), "must be at least base_time");
        }
        p
    }

    fn member(
        &mut self,
        path: &KeyPath,
        m: &RawMember,
        balancer_tls: Option<&RawUpstreamTls>,
    ) -> Option<MemberConfig> {
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
            match parse_loadfactor(f) {
                Ok(lf) => c.lbfactor = lf,
                Err(e) => self.err(&path.key("loadfactor"), e),
            }
        }
        if let Some(s) = m.lbset {
            match parse_lbset(s) {
                Ok(n) => c.lbset = n,
                Err(e) => self.err(&path.key("lbset"), e),
            }
        }
        if let Some(s) = &m.status {
            match StatusFlags::default().apply(s) {
                Ok(f) => c.status = f,
                Err(e) => self.err(&path.key("status"), e),
            }
        }
        for (key, v) in [("route", &m.route), ("redirect", &m.redirect)] {
            if let Some(Err(e)) = v.as_deref().map(|v| check_route(key, v)) {
                self.err(&path.key(key), e);
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
        c.send_proxy = match m.send_proxy.as_deref() {
            None | Some("off") => None,
            Some("v1") => Some(ProxyVersion::V1),
            Some("v2") => Some(ProxyVersion::V2),
            Some(other) => {
                self.err(
                    &path.key("send_proxy"),
                    format!("unknown PROXY protocol version {other:?}: expected \"v1\", \"v2\" or \"off\""),
                );
                None
            }
        };
        if c.send_proxy.is_some() && c.url.scheme != Scheme::Tcp {
            self.err(&path.key("send_proxy"), "send_proxy applies to tcp:// members (layer 4)");
        }
        match (c.url.scheme, &m.tls) {
            (Scheme::Https, _) => c.tls = self.upstream_tls(path, balancer_tls, m.tls.as_ref()),
            (_, Some(_)) => self.err(&path.key("tls"), "tls applies to https:// members"),
            _ => {}
        }
        Some(c)
    }

    /// Apache's `ping` (seconds, 0 = off), the member's or else its balancer's.
    fn ping(
        &mut self,
        path: &KeyPath,
        m: &RawMember,
        bpath: &KeyPath,
        b: &RawBalancer,
        scheme: Scheme,
    ) -> Option<Duration> {
        let inherit = super::Inherit { member: path, balancer: bpath };
        let (at, raw) = inherit.get("ping", &m.ping, &b.ping);
        let d = self.duration(&at, raw, Duration::ZERO);
        if d.is_zero() {
            return None;
        }
        if scheme == Scheme::Tcp {
            self.err(&at, "ping applies to http:// and https:// members (Expect: 100-continue)");
            return None;
        }
        Some(d)
    }

    /// The balancer's `[balancer.NAME.tls]` with the member's own `tls` keys over it.
    fn upstream_tls(
        &mut self,
        path: &KeyPath,
        balancer: Option<&RawUpstreamTls>,
        member: Option<&RawUpstreamTls>,
    ) -> Option<Arc<UpstreamTls>> {
        let b = balancer.cloned().unwrap_or_default();
        let m = member.cloned().unwrap_or_default();
        // Where a key is wrong, name the table it came from.
        let bp = path.0.iter().take(2).cloned().collect::<Vec<_>>();
        let bp = KeyPath(bp).key("tls");
        let mp = path.key("tls");
        let pick = |mv: Option<String>, bv: Option<String>, key: &str| match mv {
            Some(v) => Some((v, mp.key(key))),
            None => bv.map(|v| (v, bp.key(key))),
        };
        let ca = pick(m.ca, b.ca, "ca").and_then(|(v, p)| {
            super::tls::load_certs(&self.file_path(&v)).map_err(|e| self.err(&p, e)).ok()
        });
        let server_name = m.server_name.or(b.server_name);
        if let Some(n) = &server_name
            && rustls_pki_types::ServerName::try_from(n.as_str()).is_err()
        {
            self.err(&mp.key("server_name"), format!("{n:?} is not a DNS name or IP address"));
        }
        let cert = pick(m.client_cert, b.client_cert, "client_cert");
        let key = pick(m.client_key, b.client_key, "client_key");
        let client = match (cert, key) {
            (None, None) => None,
            (Some((c, cp)), Some((k, kp))) => {
                super::tls::certified_key(&self.file_path(&c), &self.file_path(&k))
                    .map_err(|e| match e {
                        super::tls::PairError::Cert(m) | super::tls::PairError::Chain(m) => {
                            self.err(&cp, m)
                        }
                        super::tls::PairError::Key(m) => self.err(&kp, m),
                    })
                    .ok()
            }
            (Some((_, p)), None) | (None, Some((_, p))) => {
                self.err(&p, "client_cert and client_key go together (mTLS)");
                None
            }
        };
        let insecure = m.insecure.or(b.insecure).unwrap_or(false);
        Some(Arc::new(UpstreamTls { ca, server_name, client, insecure }))
    }
}
