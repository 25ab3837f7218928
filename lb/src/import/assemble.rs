//! From what the walk found to lb's shape: one listener per `Listen`, served by the first
//! `<VirtualHost>` on that address (Apache's default server for it) merged over the main server;
//! balancers with their parameters resolved (`ProxySet`, `hctemplate`, `hcexpr`), the scope's
//! `ProxyTimeout`/`Timeout` and `SSLProxy*` settings, and the routing cookie recipe.
use super::params::{self, Keys, Mapped, V, set};
use super::translate::{Found, RawBalancer};
use super::{At, Note};

/// lb's config, ready to emit.
#[derive(Debug, Default)]
pub struct Model {
    pub admin_allow: Vec<String>,
    pub graceful: Option<V>,
    pub access_log: Option<String>,
    pub heartbeat: Option<String>,
    pub persist: bool,
    pub listeners: Vec<Listener>,
    pub balancers: Vec<Balancer>,
}

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub bind: String,
    pub at: At,
    pub keys: Keys,
    pub tls: Option<Tls>,
    pub routes: Vec<Route>,
}

#[derive(Debug)]
pub struct Tls {
    pub cert: String,
    pub key: String,
    pub chain: Option<String>,
}

#[derive(Debug)]
pub struct Route {
    pub path: String,
    pub to: String,
    pub reverse: bool,
    pub preserve_host: bool,
    pub at: At,
}

#[derive(Debug)]
pub struct Balancer {
    pub name: String,
    pub at: At,
    pub keys: Keys,
    pub tls: Keys,
    pub cookie: Keys,
    pub members: Vec<Member>,
}

#[derive(Debug)]
pub struct Member {
    pub url: String,
    pub at: At,
    pub keys: Keys,
}

pub(super) struct Assembler<'a> {
    pub(super) f: &'a Found,
    pub(super) notes: &'a mut Vec<Note>,
    pub(super) model: Model,
    /// Where the `Set-Cookie` recipes that found their balancer were written.
    pub(super) recipes_used: Vec<At>,
}

pub fn assemble(f: &Found, notes: &mut Vec<Note>) -> Model {
    let mut a = Assembler { f, notes, model: Model::default(), recipes_used: Vec::new() };
    for b in &f.balancers {
        let bal = a.balancer(b);
        a.model.balancers.push(bal);
    }
    a.listeners();
    let scopes = std::iter::once(&f.server).chain(&f.vhosts);
    for (name, _, at) in scopes.flat_map(|s| &s.cookies) {
        if !a.recipes_used.contains(at) {
            let why =
                "no balancer routed here has this cookie as its stickysession; not translated";
            a.note(at, format!("Header … Set-Cookie {name}=…"), why);
        }
    }
    a.model.admin_allow = admin_allow(&f.admin_allow);
    a.model.graceful = f.graceful.clone();
    a.model.access_log = f.access_log.as_ref().map(|(p, _, _)| p.clone());
    a.model.heartbeat = f.heartbeat.clone();
    a.model.persist = f.persist;
    a.model
}

/// The admin listener's allow list: Apache's `Require ip` networks, plus loopback so that the
/// lb CLI on the same machine keeps working.
fn admin_allow(nets: &[String]) -> Vec<String> {
    if nets.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<String> = vec!["127.0.0.0/8".into(), "::1".into()];
    for n in nets {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

impl Assembler<'_> {
    pub(super) fn note(&mut self, at: &At, directive: String, why: impl Into<String>) {
        self.notes.push(Note { at: at.clone(), directive, why: why.into() });
    }

    pub(super) fn balancer(&mut self, b: &RawBalancer) -> Balancer {
        let mut out = Balancer {
            name: b.name.clone(),
            at: b.at.clone(),
            keys: Vec::new(),
            tls: Vec::new(),
            cookie: Vec::new(),
            members: Vec::new(),
        };
        if let Some(g) = &self.f.growth {
            set(&mut out.keys, "growth", g.clone());
        }
        let mut member_defaults = Vec::new();
        for (p, at) in &b.params {
            self.balancer_param(p, at, &mut out.keys, &mut member_defaults);
        }
        for (url, ps, at) in &b.members {
            if let Some(m) = self.member(url, ps, at, &member_defaults) {
                out.members.push(m);
            }
        }
        if out.members.is_empty() {
            let why = "this balancer has no member lb can use; it is left out";
            self.note(&b.at, format!("<Proxy balancer://{}>", b.name), why);
        }
        out
    }

    /// A `ProxySet`/`ProxyPass` parameter on a balancer: the balancer's own keys, and member
    /// keys (`ProxySet balancer://x hcmethod=TCP`) as a default for every member.
    pub(super) fn balancer_param(
        &mut self,
        p: &str,
        at: &At,
        keys: &mut Keys,
        member_defaults: &mut Vec<String>,
    ) {
        let Some((k, v)) = params::split(p) else {
            self.note(at, p.to_owned(), "not key=value");
            return;
        };
        if !params::is_balancer_key(&k) {
            member_defaults.push(p.to_owned());
            return;
        }
        match params::balancer(&k, v) {
            Ok(Mapped::Key(key, v)) => set(keys, key, v),
            Ok(Mapped::Default) => {}
            Err(why) => self.note(at, p.to_owned(), why),
        }
    }

    fn member(&mut self, url: &str, ps: &[String], at: &At, defaults: &[String]) -> Option<Member> {
        let url = self.member_url(url, at, &format!("BalancerMember {url}"))?;
        let url = url.as_str();
        let mut keys = Vec::new();
        let sets = self.f.member_sets.iter().filter(|(u, _, _)| same_url(u, url));
        let later: Vec<(String, At)> =
            sets.flat_map(|(_, ps, a)| ps.iter().map(|p| (p.clone(), a.clone()))).collect();
        let mut all: Vec<(String, At)> = defaults.iter().map(|p| (p.clone(), at.clone())).collect();
        all.extend(ps.iter().map(|p| (p.clone(), at.clone())));
        all.extend(later);
        // A template's keys come first, so the member's own override them.
        let templates: Vec<(String, At)> = all
            .iter()
            .filter_map(|(p, a)| match params::split(p) {
                Some((k, v)) if k == "hctemplate" => Some((v.to_owned(), a.clone())),
                _ => None,
            })
            .collect();
        let mut expanded = Vec::new();
        for (name, a) in templates {
            match self.f.templates.get(&name) {
                Some(t) => expanded.extend(t.iter().map(|p| (p.clone(), a.clone()))),
                None => {
                    self.note(&a, format!("hctemplate={name}"), "no ProxyHCTemplate of that name")
                }
            }
        }
        expanded.extend(all);
        for (p, a) in &expanded {
            self.member_param(p, a, &mut keys);
        }
        Some(Member { url: url.to_owned(), at: at.clone(), keys })
    }

    /// A member URL as lb writes it: `http(s)://` as is; `ws(s)://` (mod_proxy_wstunnel) and
    /// `h2c://`/`h2://` (mod_proxy_http2) as `http(s)://`, with a note; anything else (ajp,
    /// fcgi, unix sockets) reported and left out.
    pub(super) fn member_url(&mut self, url: &str, at: &At, label: &str) -> Option<String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            self.note(at, label.to_owned(), "not a URL; left out");
            return None;
        };
        let (to, why) = match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => return Some(url.to_owned()),
            "ws" => {
                ("http", "written as http://: lb passes WebSocket upgrades through to HTTP members")
            }
            "wss" => (
                "https",
                "written as https://: lb passes WebSocket upgrades through to HTTPS members",
            ),
            "h2c" => ("http", "written as http://: lb speaks HTTP/1.1 to members"),
            "h2" => ("https", "written as https://: lb speaks HTTP/1.1 (over TLS) to members"),
            s => {
                let why = format!(
                    "{s}:// members: lb speaks HTTP and HTTPS to members (and TCP on tcp listeners); left out"
                );
                self.note(at, label.to_owned(), why);
                return None;
            }
        };
        self.note(at, label.to_owned(), why);
        Some(format!("{to}://{rest}"))
    }

    pub(super) fn member_param(&mut self, p: &str, at: &At, keys: &mut Keys) {
        let Some((k, v)) = params::split(p) else {
            self.note(at, p.to_owned(), "not key=value");
            return;
        };
        if k == "hctemplate" {
            return;
        }
        if k == "hcexpr" {
            let Some(expr) = self.f.exprs.get(v) else {
                self.note(at, p.to_owned(), "no ProxyHCExpr of that name");
                return;
            };
            match params::hcexpr(expr) {
                Ok(kv) => kv.into_iter().for_each(|(k, v)| set(keys, k, v)),
                Err(why) => self.note(at, format!("{p} ({expr})"), why),
            }
            return;
        }
        match params::member(&k, v) {
            Ok(Mapped::Key(key, v)) => set(keys, key, v),
            Ok(Mapped::Default) => {}
            Err(why) => self.note(at, p.to_owned(), why),
        }
    }
}

/// Two spellings of one URL (a trailing slash, the scheme's case).
pub(super) fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/').eq_ignore_ascii_case(b.trim_end_matches('/'))
}
