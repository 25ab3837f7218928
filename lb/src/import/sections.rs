//! The sections and recipes of the walk that need more than a key: `<Proxy balancer://…>`,
//! `<Location>` (routes, or the balancer-manager and server-status pages with their `Require`
//! lines), `CustomLog`, and the `Header … Set-Cookie` routing-cookie recipe.
use super::params::{Keys, V};
use super::read::Directive;
use super::reasons::reason;
use super::translate::{Ctx, Scope, Walker};

impl Walker<'_> {
    /// `<Proxy balancer://NAME>`: its members and `ProxySet`s.
    pub(super) fn proxy(&mut self, d: &Directive, name: &str) {
        self.balancer(name, &d.at);
        for x in d.body.as_deref().unwrap_or_default() {
            if x.is("BalancerMember") {
                let url = x.arg(0).unwrap_or("").to_owned();
                let rest = x.args.iter().skip(1).cloned().collect();
                self.balancer(name, &d.at).members.push((url, rest, x.at.clone()));
            } else if x.is("ProxySet") {
                let ps = x
                    .args
                    .iter()
                    .skip_while(|a| a.contains("://"))
                    .map(|a| (a.clone(), x.at.clone()));
                let ps: Vec<_> = ps.collect();
                self.balancer(name, &d.at).params.extend(ps);
            } else if x.is("Require") || x.is("Order") || x.is("Allow") || x.is("Deny") {
                self.note(x, "access control on the balancer: lb has no per-balancer access rules");
            } else {
                self.note(x, "not a balancer setting lb knows");
            }
        }
    }

    /// `Header add|set|always … Set-Cookie "ROUTEID=.%{BALANCER_WORKER_ROUTE}e; path=/"`: the
    /// recipe for a routing cookie, which lb sets itself (`sticky_cookie`).
    pub(super) fn header(&mut self, d: &Directive, sc: &mut Scope) {
        let words: Vec<&str> = d
            .args
            .iter()
            .map(String::as_str)
            .filter(|a| !a.eq_ignore_ascii_case("always") && !a.eq_ignore_ascii_case("onsuccess"))
            .collect();
        let recipe = match words.as_slice() {
            [action, h, value, ..]
                if (action.eq_ignore_ascii_case("add") || action.eq_ignore_ascii_case("set"))
                    && h.eq_ignore_ascii_case("set-cookie")
                    && value.contains("%{BALANCER_WORKER_ROUTE}e") =>
            {
                cookie_recipe(value)
            }
            _ => None,
        };
        match recipe {
            Some((name, keys)) => sc.cookies.push((name, keys, d.at.clone())),
            None => self.note(d, "lb rewrites no response headers besides ProxyPassReverse's; only the Set-Cookie routing recipe is translated (to sticky_cookie)"),
        }
    }

    /// `<Location PATH>`: ProxyPass inside it, or the balancer-manager / server-status pages.
    pub(super) fn location(&mut self, d: &Directive, sc: &mut Scope) {
        let path = d.arg(0).unwrap_or("/");
        let body = d.body.as_deref().unwrap_or_default();
        let handler = body
            .iter()
            .find(|x| x.is("SetHandler"))
            .and_then(|x| x.arg(0))
            .map(str::to_ascii_lowercase);
        if let Some(h @ ("balancer-manager" | "server-status")) = handler.as_deref() {
            let page = if h == "balancer-manager" { "/balancer-manager" } else { "/server-status" };
            self.note(d, format!("lb serves {page} on the admin listener ([admin] bind, loopback by default), not on this server's port"));
            self.access(body);
            return;
        }
        let ctx = Ctx::Location(path);
        for x in body {
            if x.is("ProxyPass")
                || x.is("ProxyPassReverse")
                || x.is("ProxyPreserveHost")
                || x.is("Header")
            {
                self.one(x, sc, ctx);
            } else if x.is("Require") || x.is("Order") || x.is("Allow") || x.is("Deny") {
                self.note(x, "lb has no per-path access rules on its public listeners");
            } else {
                self.note(x, reason(&x.name.to_ascii_lowercase()));
            }
        }
    }

    /// `Require` / `Allow from` lines of an admin page: the admin listener's `allow` list.
    pub(super) fn access(&mut self, body: &[Directive]) {
        for x in body {
            let words: Vec<&str> = x.args.iter().map(String::as_str).collect();
            if x.is("SetHandler") {
                continue;
            }
            if x.is("RequireAny") || x.is("RequireAll") {
                self.access(x.body.as_deref().unwrap_or_default());
                continue;
            }
            match (x.name.to_ascii_lowercase().as_str(), words.as_slice()) {
                ("require", ["ip", nets @ ..]) | ("allow", ["from", nets @ ..]) => {
                    for n in nets {
                        self.found.admin_allow.push((*n).to_owned());
                    }
                }
                ("require", ["local"]) => {
                    self.found.admin_allow.extend(["127.0.0.0/8".to_owned(), "::1".to_owned()]);
                }
                ("order", _) | ("deny", ["from", "all"]) => {}
                ("require", ["host", ..]) => self.note(x, "lb admits admin clients by address only (allow); reverse DNS names have no equivalent"),
                ("require", ["all", "granted"]) => self.note(x, "lb admits loopback only unless [admin] allow lists networks (and a non-loopback admin bind needs a token)"),
                _ => self.note(x, "not an address rule lb can translate"),
            }
        }
    }

    pub(super) fn custom_log(&mut self, d: &Directive) {
        let target = d.arg(0).unwrap_or("");
        if target.starts_with('|') {
            self.note(
                d,
                "piped logs: lb writes the access log to stdout or a file; pipe stdout instead",
            );
            return;
        }
        if target.contains("${") {
            self.note(d, "the path names an undefined variable; the access log stays on stdout");
            return;
        }
        if let Some((_, _, first)) = &self.found.access_log {
            let why = format!("lb has one access log; the one at {first} is kept");
            self.note(d, why);
            return;
        }
        let format = d.arg(1).unwrap_or("common");
        if !format.eq_ignore_ascii_case("combined") {
            self.note(
                d,
                "lb writes Apache's combined format (with lb's fields) or JSON; combined is used",
            );
        }
        self.found.access_log = Some((self.path(target), "combined".into(), d.at.clone()));
    }
}

/// The recipe's cookie name and attributes as lb's sticky_cookie keys.
pub(super) fn cookie_recipe(value: &str) -> Option<(String, Keys)> {
    let mut parts = value.split(';').map(str::trim);
    let (name, _) = parts.next()?.split_once('=')?;
    let mut keys = Vec::new();
    let (mut httponly, mut samesite) = (false, None);
    for p in parts {
        let (k, v) = p.split_once('=').map_or((p, ""), |(k, v)| (k.trim(), v.trim()));
        match k.to_ascii_lowercase().as_str() {
            "path" => keys.push(("path", V::Str(v.into()))),
            "domain" => keys.push(("domain", V::Str(v.into()))),
            "secure" => keys.push(("secure", V::Bool(true))),
            "httponly" => httponly = true,
            "samesite" => samesite = Some(v.to_owned()),
            "max-age" => keys.push(("max_age", v.parse().map(V::Int).ok()?)),
            _ => return None,
        }
    }
    keys.push(("httponly", V::Bool(httponly)));
    keys.push(("samesite", V::Str(samesite.unwrap_or_else(|| "Off".into()))));
    Some((name.trim().to_owned(), keys))
}
