//! The walk over Apache's directives. Each server scope (the main server, each
//! `<VirtualHost>`) collects what lb needs; `<Proxy balancer://…>` sections and `BalancerMember`s
//! are gathered raw, because their parameters may name a `ProxyHCExpr` or `ProxyHCTemplate`
//! written later. [`super::assemble`] turns it all into listeners and balancers.
use super::params::{self, Keys, V, set};
use super::read::Directive;
use super::reasons::reason;
use super::{At, Note};
use std::collections::HashMap;
use std::path::Path;

/// What a server scope (the main server or one `<VirtualHost>`) says.
#[derive(Debug, Default, Clone)]
pub struct Scope {
    pub at: Option<At>,
    /// `<VirtualHost>` addresses as written (`*:80`, `_default_:443`, `10.0.0.1:80`).
    pub addrs: Vec<String>,
    pub server_name: Option<String>,
    pub passes: Vec<Pass>,
    /// `ProxyPassReverse PATH URL`.
    pub reverses: Vec<(String, String, At)>,
    pub preserve_host: Option<bool>,
    pub ssl_engine: Option<(bool, At)>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub chain: Option<String>,
    /// `SSLProxy*`: lb's `[balancer.NAME.tls]` keys.
    pub proxy_tls: Keys,
    /// Listener keys (`Timeout`, `KeepAlive*`, `Limit*`, …).
    pub keys: Keys,
    /// `ProxyTimeout`, else `Timeout`: every member's default `timeout` in Apache.
    pub proxy_timeout: Option<V>,
    pub timeout: Option<V>,
    /// `Header … Set-Cookie` routing recipes: cookie name, lb's sticky_cookie keys.
    pub cookies: Vec<(String, Keys, At)>,
}

/// `ProxyPass PATH TARGET [key=value…]`.
#[derive(Debug, Clone)]
pub struct Pass {
    pub path: String,
    pub target: String,
    pub params: Vec<String>,
    pub at: At,
}

/// `<Proxy balancer://NAME>` and the `BalancerMember`/`ProxySet` lines for it, unresolved.
#[derive(Debug, Clone)]
pub struct RawBalancer {
    pub name: String,
    pub at: At,
    pub params: Vec<(String, At)>,
    pub members: Vec<(String, Vec<String>, At)>,
}

/// `Listen [IP:]PORT [PROTOCOL]`.
#[derive(Debug, Clone)]
pub struct Listen {
    pub ip: Option<String>,
    pub port: u16,
    pub at: At,
}

/// Everything the walk found.
#[derive(Debug, Default)]
pub struct Found {
    pub server: Scope,
    pub vhosts: Vec<Scope>,
    pub listens: Vec<Listen>,
    pub balancers: Vec<RawBalancer>,
    /// `ProxySet URL …` on a member URL, applied to that member wherever it is.
    pub member_sets: Vec<(String, Vec<String>, At)>,
    pub exprs: HashMap<String, String>,
    pub templates: HashMap<String, Vec<String>>,
    pub admin_allow: Vec<String>,
    pub access_log: Option<(String, String, At)>,
    pub heartbeat: Option<String>,
    /// `BalancerPersist On`: live edits kept in a state file.
    pub persist: bool,
    pub graceful: Option<V>,
    pub growth: Option<V>,
}

/// The whole walk: the main server's directives (and the `<VirtualHost>`s in them), then
/// [`super::assemble`].
pub fn translate(tree: &[Directive], root: &Path, notes: &mut Vec<Note>) -> super::assemble::Model {
    let mut w = Walker { root, notes, found: Found::default() };
    w.server(tree);
    let found = w.found;
    super::assemble::assemble(&found, notes)
}

pub struct Walker<'a> {
    pub root: &'a Path,
    pub notes: &'a mut Vec<Note>,
    pub found: Found,
}

/// Where a directive sits.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Ctx<'p> {
    Server,
    VHost,
    Location(&'p str),
}

impl Walker<'_> {
    pub(super) fn note(&mut self, d: &Directive, why: impl Into<String>) {
        self.notes.push(Note::of(d, why));
    }

    /// An absolute path, as httpd resolves a relative one against `ServerRoot`.
    pub fn path(&self, p: &str) -> String {
        self.root.join(p).to_string_lossy().into_owned()
    }

    pub fn server(&mut self, dirs: &[Directive]) {
        let mut sc = Scope::default();
        self.walk(dirs, &mut sc, Ctx::Server);
        self.found.server = sc;
    }

    fn walk(&mut self, dirs: &[Directive], sc: &mut Scope, ctx: Ctx) {
        for d in dirs {
            self.one(d, sc, ctx);
        }
    }

    pub(super) fn one(&mut self, d: &Directive, sc: &mut Scope, ctx: Ctx) {
        let name = d.name.to_ascii_lowercase();
        let arg0 = d.arg(0).unwrap_or("");
        match name.as_str() {
            "listen" if ctx == Ctx::Server => match listen(arg0) {
                Some((ip, port)) => {
                    self.found.listens.push(Listen { ip, port, at: d.at.clone() });
                    if d.arg(1).is_some() {
                        self.note(d, "the protocol argument is not needed: a listener with [[listener.tls]] speaks TLS");
                    }
                }
                None => self.note(d, "not an [IP:]port address"),
            },
            "virtualhost" if ctx == Ctx::Server => {
                let mut v = Scope { at: Some(d.at.clone()), addrs: d.args.clone(), ..Scope::default() };
                self.walk(d.body.as_deref().unwrap_or_default(), &mut v, Ctx::VHost);
                self.found.vhosts.push(v);
            }
            "proxy" => match arg0.strip_prefix("balancer://") {
                Some(b) => self.proxy(d, b.trim_end_matches('/')),
                None => self.note(d, "access control on proxied URLs: lb has no per-URL rules (it is a reverse proxy only)"),
            },
            "balancermember" => match arg0.strip_prefix("balancer://") {
                Some(b) => {
                    let b = self.balancer(b.trim_end_matches('/'), &d.at);
                    let url = d.arg(1).unwrap_or("").to_owned();
                    b.members.push((url, d.args.iter().skip(2).cloned().collect(), d.at.clone()));
                }
                None => self.note(d, "outside <Proxy balancer://…> a BalancerMember must name its balancer first"),
            },
            "proxyset" => match arg0.strip_prefix("balancer://") {
                Some(b) => {
                    let b = self.balancer(b.trim_end_matches('/'), &d.at);
                    b.params.extend(d.args.iter().skip(1).map(|a| (a.clone(), d.at.clone())));
                }
                None if arg0.contains("://") => {
                    let rest = d.args.iter().skip(1).cloned().collect();
                    self.found.member_sets.push((arg0.to_owned(), rest, d.at.clone()));
                }
                None => self.note(d, "ProxySet outside <Proxy> must name a balancer:// or member URL"),
            },
            "proxypass" => {
                let (path, rest) = match ctx {
                    Ctx::Location(p) => (p.to_owned(), &d.args[..]),
                    _ => (arg0.to_owned(), d.args.get(1..).unwrap_or_default()),
                };
                match rest.first().map(String::as_str) {
                    Some("!") => self.note(d, "an exclusion: lb has no exclusion rule; requests under this path go to the route of a shorter prefix"),
                    Some(t) => {
                        let params = rest[1..].to_vec();
                        sc.passes.push(Pass { path, target: t.to_owned(), params, at: d.at.clone() });
                    }
                    None => self.note(d, "ProxyPass without a target"),
                }
            }
            "proxypassreverse" => {
                let (path, url) = match ctx {
                    Ctx::Location(p) => (p.to_owned(), arg0),
                    _ => (arg0.to_owned(), d.arg(1).unwrap_or("")),
                };
                sc.reverses.push((path, url.to_owned(), d.at.clone()));
            }
            "proxypreservehost" => sc.preserve_host = Some(arg0.eq_ignore_ascii_case("on")),
            "proxyrequests" if arg0.eq_ignore_ascii_case("off") => {}
            "proxyrequests" => self.note(d, "lb is a reverse proxy only, never a forward proxy"),
            "proxytimeout" => self.time(d, |sc, v| sc.proxy_timeout = Some(v), sc),
            "timeout" => self.time(d, |sc, v| {
                set(&mut sc.keys, "timeout", v.clone());
                sc.timeout = Some(v);
            }, sc),
            "keepalive" => set(&mut sc.keys, "keepalive", V::Bool(arg0.eq_ignore_ascii_case("on"))),
            "keepalivetimeout" => self.time(d, |sc, v| set(&mut sc.keys, "keepalive_timeout", v), sc),
            "maxkeepaliverequests" => self.int(d, "max_keepalive_requests", sc),
            "limitrequestline" => self.int(d, "limit_request_line", sc),
            "limitrequestfieldsize" => self.int(d, "limit_request_field_size", sc),
            "limitrequestfields" => self.int(d, "limit_request_fields", sc),
            "limitrequestbody" => self.int(d, "limit_request_body", sc),
            "maxrequestworkers" | "maxclients" => self.int(d, "max_connections", sc),
            "listenbacklog" => self.int(d, "backlog", sc),
            "requestreadtimeout" => set(&mut sc.keys, "request_read_timeout", V::Str(d.args.join(" "))),
            "gracefulshutdowntimeout" => match params::duration(arg0) {
                Ok(v) => self.found.graceful = Some(v),
                Err(e) => self.note(d, e),
            },
            "sslengine" => sc.ssl_engine = Some((arg0.eq_ignore_ascii_case("on"), d.at.clone())),
            "sslcertificatefile" => sc.cert = Some(self.path(arg0)),
            "sslcertificatekeyfile" => sc.key = Some(self.path(arg0)),
            "sslcertificatechainfile" => sc.chain = Some(self.path(arg0)),
            "sslproxyengine" => {}
            "sslproxycacertificatefile" => set(&mut sc.proxy_tls, "ca", V::Str(self.path(arg0))),
            "sslproxyverify" if arg0.eq_ignore_ascii_case("none") || arg0.eq_ignore_ascii_case("optional_no_ca") => {
                set(&mut sc.proxy_tls, "insecure", V::Bool(true));
            }
            "sslproxyverify" => {}
            "sslproxymachinecertificatefile" => {
                let p = self.path(arg0);
                set(&mut sc.proxy_tls, "client_cert", V::Str(p.clone()));
                set(&mut sc.proxy_tls, "client_key", V::Str(p));
            }
            "sslproxycheckpeername" | "sslproxycheckpeercn" if arg0.eq_ignore_ascii_case("on") => {}
            "sslproxycheckpeername" | "sslproxycheckpeercn" => self.note(d, "lb always checks a member's name unless verification is off (insecure = true); set the name to expect with server_name"),
            n if n.starts_with("sslproxy") => self.note(d, "lb's member TLS is rustls with its defaults (TLS 1.2 and 1.3); this setting has no equivalent"),
            n if n.starts_with("ssl") => self.note(d, "lb terminates TLS with rustls: TLS 1.2 and 1.3, safe cipher suites, tickets and resumption built in; this setting has no equivalent"),
            "header" => self.header(d, sc),
            "location" => self.location(d, sc),
            "servername" => sc.server_name = Some(arg0.to_owned()),
            "serveralias" => {}
            "customlog" | "transferlog" => self.custom_log(d),
            "balancerpersist" if arg0.eq_ignore_ascii_case("on") => self.found.persist = true,
            "balancerpersist" => {}
            "heartbeatlisten" => self.found.heartbeat = Some(arg0.to_owned()),
            "balancergrowth" => match params::balancer("growth", arg0) {
                Ok(params::Mapped::Key(_, v)) => self.found.growth = Some(v),
                _ => self.note(d, "not a number"),
            },
            "proxyhcexpr" => {
                let expr = d.args.get(1..).unwrap_or_default().join(" ");
                self.found.exprs.insert(arg0.to_owned(), expr);
            }
            "proxyhctemplate" => {
                let rest = d.args.get(1..).unwrap_or_default().to_vec();
                self.found.templates.insert(arg0.to_owned(), rest);
            }
            _ => {
                let why = reason(&name);
                self.note(d, why);
            }
        }
    }

    fn time(&mut self, d: &Directive, set: impl FnOnce(&mut Scope, V), sc: &mut Scope) {
        match params::duration(d.arg(0).unwrap_or("")) {
            Ok(v) => set(sc, v),
            Err(e) => self.note(d, e),
        }
    }

    fn int(&mut self, d: &Directive, key: &'static str, sc: &mut Scope) {
        match d.arg(0).unwrap_or("").parse::<i64>() {
            Ok(n) => set(&mut sc.keys, key, V::Int(n)),
            Err(_) => self.note(d, "not a whole number"),
        }
    }

    pub(super) fn balancer(&mut self, name: &str, at: &At) -> &mut RawBalancer {
        let name = name.to_ascii_lowercase();
        let i = match self.found.balancers.iter().position(|b| b.name == name) {
            Some(i) => i,
            None => {
                let b =
                    RawBalancer { name, at: at.clone(), params: Vec::new(), members: Vec::new() };
                self.found.balancers.push(b);
                self.found.balancers.len() - 1
            }
        };
        &mut self.found.balancers[i]
    }
}

/// `Listen` argument: `80`, `10.0.0.1:80`, `[::1]:80`.
fn listen(a: &str) -> Option<(Option<String>, u16)> {
    if let Ok(p) = a.parse() {
        return Some((None, p));
    }
    let (ip, port) = a.rsplit_once(':')?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let _: std::net::IpAddr = ip.parse().ok()?;
    Some((Some(ip.to_owned()), port.parse().ok()?))
}
