//! `[admin]`: where the admin listener binds and who may use it. Loopback by default; a
//! non-loopback bind needs a `token` (refused at start otherwise). `allow` lists the source
//! networks admitted at all (Apache's `Require ip`), loopback by default. A loopback client in
//! `allow` needs no token; any other needs `Authorization: Bearer TOKEN`.
use super::model::{AdminConfig, DEFAULT_ADMIN_BIND, IpNet};
use super::raw::RawAdmin;
use super::{KeyPath, Validator};
use std::net::IpAddr;

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V4(_), IpAddr::V6(a)) => {
                a.to_ipv4_mapped().is_some_and(|a| self.contains(IpAddr::V4(a)))
            }
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (full, rest) = ((prefix / 8) as usize, prefix % 8);
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

/// `IP` or `IP/prefix`.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr =
        ip.trim().parse().map_err(|_| format!("{s:?} is not an IP address or IP/prefix"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.trim().parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?}: the prefix must be 0..={max}")),
        },
    };
    Ok(IpNet { addr, prefix })
}

/// The loopback networks: the default `allow`.
pub fn loopback() -> Vec<IpNet> {
    vec![
        IpNet { addr: IpAddr::from([127, 0, 0, 0]), prefix: 8 },
        IpNet { addr: IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), prefix: 128 },
    ]
}

impl Validator<'_> {
    pub(super) fn admin(&mut self, path: &KeyPath, raw: Option<&RawAdmin>) -> Option<AdminConfig> {
        let text = raw.and_then(|a| a.bind.as_deref()).unwrap_or(DEFAULT_ADMIN_BIND);
        let bind = self.addr(&path.key("bind"), text)?;
        let mut token = raw.and_then(|a| a.token.clone());
        if let Some(file) = raw.and_then(|a| a.token_file.as_deref()) {
            if token.is_some() {
                self.err(&path.key("token_file"), "set token or token_file, not both");
            }
            match std::fs::read_to_string(self.file_path(file)) {
                Ok(t) => token = Some(t.trim().to_owned()),
                Err(e) => self.err(&path.key("token_file"), format!("cannot read {file:?}: {e}")),
            }
        }
        if let Some(t) = &token
            && (t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            let key = if raw.is_some_and(|a| a.token.is_some()) { "token" } else { "token_file" };
            self.err(
                &path.key(key),
                "the token must be at least 16 printable characters, no spaces",
            );
        }
        if !bind.ip().is_loopback() && token.is_none() {
            self.err(
                &path.key("bind"),
                format!("{bind} is not a loopback address: set `token` (or `token_file`) so that only operators can use the admin API"),
            );
        }
        let mut allow = Vec::new();
        match raw.and_then(|a| a.allow.as_ref()) {
            None => allow = loopback(),
            Some(list) => {
                for (i, s) in list.iter().enumerate() {
                    match parse_net(s) {
                        Ok(n) => allow.push(n),
                        Err(m) => self.err(&path.key("allow").index(i), m),
                    }
                }
            }
        }
        let state_file = raw.and_then(|a| a.state_file.as_deref()).map(|f| self.file_path(f));
        Some(AdminConfig { bind, token, allow, state_file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_hold_what_their_prefix_says() {
        let n = parse_net("10.1.2.0/23").unwrap();
        assert!(n.contains("10.1.3.255".parse().unwrap()));
        assert!(!n.contains("10.1.4.0".parse().unwrap()));
        assert!(parse_net("192.0.2.7").unwrap().contains("192.0.2.7".parse().unwrap()));
        assert!(parse_net("0.0.0.0/0").unwrap().contains("::ffff:8.8.8.8".parse().unwrap()));
        assert!(parse_net("2001:db8::/32").unwrap().contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(loopback().iter().any(|n| n.contains("::1".parse().unwrap())));
        for bad in ["10.0.0.0/33", "nope", "::1/129", "10.0.0.0/x"] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }
}
