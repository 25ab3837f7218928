//! Members named by DNS (`http://app.internal:8080`), followed as their records change: each
//! name is resolved again when its record's TTL runs out (within `[resolver] min_ttl..max_ttl`),
//! and every address it has becomes a member of its own, with its own identity, counters and
//! kernel health. That is how a balancer follows a Kubernetes headless service or a DNS-managed
//! pool without a reload.
//!
//! The control path only: [`watch`] publishes the answers, and the runtime rebuilds the routing
//! with them ([`expand`]), keeping every member whose address stayed, as a reload does. Until
//! lb's resolver has answered for a name, its member connects through the system resolver.
use crate::config::{BalancerConfig, Config, MemberConfig, ResolverConfig};
use hickory_resolver::config::{NameServerConfig, ResolverConfig as Servers, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Every name's addresses, sorted. An empty list: the name has no address now.
pub type Answers = BTreeMap<String, Vec<IpAddr>>;

/// How long to wait before asking again after a failed lookup (a timeout, a SERVFAIL).
const RETRY: Duration = Duration::from_secs(5);

/// The host names (not IP literals) that members are named by.
pub fn names(cfg: &Config) -> BTreeSet<String> {
    cfg.balancers
        .iter()
        .flat_map(|b| &b.members)
        .map(|m| &m.url.host)
        .filter(|h| h.parse::<IpAddr>().is_err())
        .cloned()
        .collect()
}

/// One member per address for every member whose name has addresses; a member whose name has
/// none (or no answer yet) stays as written.
pub fn expand(b: &mut BalancerConfig, answers: &Answers) {
    let mut out: Vec<MemberConfig> = Vec::with_capacity(b.members.len());
    for m in b.members.drain(..) {
        match answers.get(&m.url.host) {
            Some(ips) if !ips.is_empty() && m.url.pin.is_none() => {
                for ip in ips {
                    let mut one = m.clone();
                    one.url.pin = Some(*ip);
                    // A route names one member: the first address keeps it.
                    if out.iter().any(|o| o.route.is_some() && o.route == one.route) {
                        one.route = None;
                    }
                    out.push(one);
                }
            }
            _ => out.push(m),
        }
    }
    b.members = out;
}

/// Why lb's own resolver could not be set up (the system resolver is used instead).
#[derive(Debug, thiserror::Error)]
#[error("DNS resolver: {0}")]
pub struct DnsError(#[from] ResolveError);

/// The resolver `[resolver]` describes.
pub fn resolver(cfg: &ResolverConfig) -> Result<TokioResolver, DnsError> {
    let mut builder = if cfg.nameservers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let mut servers = Servers::new();
        for a in &cfg.nameservers {
            servers.add_name_server(NameServerConfig::new(*a, Protocol::Udp));
            servers.add_name_server(NameServerConfig::new(*a, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(servers, TokioConnectionProvider::default())
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    // lb asks again exactly when a record expires; a cache would answer that question with
    // the record that just expired.
    opts.cache_size = 0;
    Ok(builder.build())
}

/// Resolve every name in `names` when its TTL runs out and publish the answers on `out` when
/// they change. A name that fails to resolve keeps its last answer; a name with no address
/// (NXDOMAIN, no A/AAAA records) gets an empty one.
pub async fn watch(
    resolver: TokioResolver,
    ttl: (Duration, Duration),
    mut names: watch::Receiver<BTreeSet<String>>,
    out: watch::Sender<Answers>,
    stop: impl Future<Output = ()>,
) {
    let (min_ttl, max_ttl) = ttl;
    let mut answers = Answers::new();
    let mut due: HashMap<String, Instant> = HashMap::new();
    tokio::pin!(stop);
    loop {
        let wanted = names.borrow_and_update().clone();
        let mut changed = false;
        let before = answers.len();
        answers.retain(|n, _| wanted.contains(n));
        due.retain(|n, _| wanted.contains(n));
        changed |= answers.len() != before;
        for name in &wanted {
            let now = Instant::now();
            if due.get(name).is_some_and(|d| *d > now) {
                continue;
            }
            let (ips, next) = match resolver.lookup_ip(name.as_str()).await {
                Ok(l) => {
                    let mut ips: Vec<IpAddr> = l.iter().collect();
                    ips.sort_unstable();
                    ips.dedup();
                    let valid =
                        l.valid_until().saturating_duration_since(std::time::Instant::now());
                    (Some(ips), valid.clamp(min_ttl, max_ttl))
                }
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    (Some(Vec::new()), min_ttl.max(RETRY).min(max_ttl))
                }
                Err(e) => {
                    tracing::warn!(name = %name, error = %e, "DNS lookup failed; the last answer stays");
                    (None, RETRY.min(max_ttl).max(min_ttl))
                }
            };
            due.insert(name.clone(), now + next);
            if let Some(ips) = ips
                && answers.get(name) != Some(&ips)
            {
                tracing::info!(name = %name, addresses = ?ips, "DNS answer changed");
                answers.insert(name.clone(), ips);
                changed = true;
            }
        }
        if changed {
            out.send_replace(answers.clone());
        }
        let next = due.values().min().copied();
        tokio::select! {
            _ = &mut stop => return,
            r = names.changed() => if r.is_err() { return },
            _ = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(urls: &[&str]) -> BalancerConfig {
        let text = urls.iter().enumerate().fold(String::new(), |s, (i, u)| {
            s + &format!("[[balancer.b.member]]\nurl = \"{u}\"\nroute = \"r{i}\"\n")
        });
        let cfg = Config::parse(
            &format!("[[listener]]\nname = \"w\"\nbind = \"127.0.0.1:0\"\n[[listener.proxy_pass]]\npath = \"/\"\nto = \"balancer://b/\"\n{text}"),
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        cfg.balancers[0].clone()
    }

    #[test]
    fn each_address_of_a_name_is_a_member_and_ips_stay_as_written() {
        let mut b = balancer(&["http://app.test:8080", "http://10.0.0.9:80"]);
        let ips: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        let answers = Answers::from([("app.test".to_owned(), ips.clone())]);
        expand(&mut b, &answers);
        let urls: Vec<String> = b.members.iter().map(|m| m.url.to_string()).collect();
        assert_eq!(
            urls,
            [
                "http://app.test:8080 (10.0.0.1)",
                "http://app.test:8080 (10.0.0.2)",
                "http://10.0.0.9:80"
            ]
        );
        // The Host header and TLS name stay the name.
        assert_eq!(b.members[1].url.authority(), "app.test:8080");
        // The route stays with the first address only.
        let routes: Vec<_> = b.members.iter().map(|m| m.route.clone()).collect();
        assert_eq!(routes, [Some("r0".into()), None, Some("r1".into())]);
    }

    #[test]
    fn a_name_without_addresses_keeps_its_member_as_written() {
        let mut b = balancer(&["http://gone.test:8080"]);
        expand(&mut b, &Answers::from([("gone.test".to_owned(), Vec::new())]));
        assert_eq!(b.members.len(), 1);
        assert_eq!(b.members[0].url.pin, None);
    }
}
