//! Sticky sessions, the HTTP half: the session route a request carries, parsed exactly as
//! Apache's `get_path_param`, `get_cookie_param` and `find_session_route` do; the BALANCER_*
//! values; and lb's own routing cookie.
//!
//! Everything works on bytes: a malformed, non-UTF-8 or over-long cookie or parameter yields no
//! route (the request is balanced normally), never an error.
use crate::balancer::Member;
use crate::config::{RoutingCookie, Sticky};
use http::header::{self, HeaderMap, HeaderValue};

/// A session value longer than this is ignored.
const MAX_SESSION: usize = 4096;

/// The session a request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// It came from the URL parameter (else from the cookie): BALANCER_SESSION_STICKY names
    /// the one used.
    pub from_url: bool,
    /// BALANCER_SESSION_ROUTE: the value after its first separator.
    pub route: Box<[u8]>,
}

impl Session {
    pub fn sticky<'a>(&self, s: &'a Sticky) -> &'a str {
        if self.from_url { &s.param } else { &s.cookie }
    }
}

/// C's `isspace`, which Apache's cookie parser uses.
fn c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..].windows(needle.len()).position(|w| w == needle).map(|i| from + i)
}

/// Apache's `get_path_param`: the first `NAME=` anywhere in the URL; its value, after any
/// leading delimiters, up to the next `?` or `&` (and `;` with `scolonpathdelim`).
fn path_param<'a>(url: &'a [u8], name: &[u8], scolon: bool) -> Option<&'a [u8]> {
    let delims: &[u8] = if scolon { b";?&" } else { b"?&" };
    let mut from = 0;
    while let Some(at) = find(url, name, from) {
        let after = at + name.len();
        if url.get(after) == Some(&b'=') && after + 1 < url.len() {
            let v = &url[after + 1..];
            let start = v.iter().position(|b| !delims.contains(b))?;
            let v = &v[start..];
            let end = v.iter().position(|b| delims.contains(b)).unwrap_or(v.len());
            return Some(&v[..end]);
        }
        from = at + 1;
    }
    None
}

/// Apache's `get_cookie_param`: `NAME` at the start of the header or after `;`, `,` or
/// white space, then optional white space and `=`; the value ends at `;` or `,`.
fn cookie_param<'a>(cookies: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    while let Some(at) = find(cookies, name, from) {
        let starts = at == 0 || matches!(cookies[at - 1], b';' | b',') || c_space(cookies[at - 1]);
        if starts {
            let mut p = at + name.len();
            while p < cookies.len() && c_space(cookies[p]) {
                p += 1;
            }
            if cookies.get(p) == Some(&b'=') && p + 1 < cookies.len() {
                let v = &cookies[p + 1..];
                let end = v.iter().position(|b| *b == b';' || *b == b',').unwrap_or(v.len());
                return Some(&v[..end]);
            }
        }
        from = at + 1;
    }
    None
}

/// The session route of a request: in the URL (`target`: path and query as received) first,
/// then in its `Cookie` headers. A value found in the URL is used even when it holds no route
/// (Apache does not look at the cookie then).
pub fn session(s: &Sticky, target: &[u8], headers: &HeaderMap) -> Option<Session> {
    let joined;
    let (value, from_url) = match path_param(target, s.param.as_bytes(), s.scolon) {
        Some(v) => (v, true),
        None => {
            let mut cookies = headers.get_all(header::COOKIE).iter();
            let first = cookies.next()?.as_bytes();
            let all = match cookies.next() {
                None => first,
                Some(second) => {
                    // HTTP/2 sends one `cookie` field per cookie; read them as one header.
                    let mut v = [first, second.as_bytes()].join(&b"; "[..]);
                    for c in cookies {
                        v.extend_from_slice(b"; ");
                        v.extend_from_slice(c.as_bytes());
                    }
                    joined = v;
                    &joined[..]
                }
            };
            (cookie_param(all, s.cookie.as_bytes())?, false)
        }
    };
    if value.len() > MAX_SESSION {
        return None;
    }
    let route = match s.separator {
        Some(sep) => &value[value.iter().position(|b| *b == sep)? + 1..],
        None => value,
    };
    (!route.is_empty()).then(|| Session { from_url, route: Box::from(route) })
}

pub use crate::accesslog::Values;

/// The values for `member`, picked for a request carrying `session` (under `sticky`).
pub fn values(sticky: Option<&Sticky>, session: Option<&Session>, member: &Member) -> Values {
    let worker_route = member.config().route.clone();
    let carried = session.zip(sticky);
    Values {
        session_sticky: carried.map(|(s, st)| s.sticky(st).to_owned()),
        session_route: carried.map(|(s, _)| String::from_utf8_lossy(&s.route).into_owned()),
        route_changed: route_changed(session, worker_route.as_deref()),
        worker_route,
    }
}

/// BALANCER_ROUTE_CHANGED: the member has a route, and the session did not carry it.
pub fn route_changed(session: Option<&Session>, member_route: Option<&str>) -> bool {
    member_route.is_some_and(|r| session.is_none_or(|s| &*s.route != r.as_bytes()))
}

/// The `Set-Cookie` value that routes the client to `route` from now on.
pub fn set_cookie(c: &RoutingCookie, separator: Option<u8>, route: &str) -> Option<HeaderValue> {
    let mut v = format!("{}=", c.name);
    if let Some(sep) = separator {
        v.push(char::from(sep));
    }
    v.push_str(route);
    v.push_str("; Path=");
    v.push_str(&c.path);
    if let Some(d) = &c.domain {
        v.push_str("; Domain=");
        v.push_str(d);
    }
    if let Some(age) = c.max_age {
        v.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    if c.secure {
        v.push_str("; Secure");
    }
    if c.httponly {
        v.push_str("; HttpOnly");
    }
    if let Some(s) = &c.samesite {
        v.push_str("; SameSite=");
        v.push_str(s);
    }
    HeaderValue::from_str(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticky(names: &str, scolon: bool) -> Sticky {
        let (cookie, param) = names.split_once('|').unwrap_or((names, names));
        Sticky {
            cookie: cookie.into(),
            param: param.into(),
            separator: Some(b'.'),
            scolon,
            set_cookie: None,
        }
    }

    fn cookies(v: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in v {
            h.append(header::COOKIE, HeaderValue::from_bytes(c).unwrap());
        }
        h
    }

    fn route(s: &Sticky, target: &str, h: &HeaderMap) -> Option<String> {
        session(s, target.as_bytes(), h).map(|x| String::from_utf8_lossy(&x.route).into_owned())
    }

    #[test]
    fn tomcat_cookie() {
        let s = sticky("JSESSIONID|jsessionid", false);
        let r = |c: &[u8]| route(&s, "/app", &cookies(&[c]));
        assert_eq!(r(b"JSESSIONID=abc123.node2"), Some("node2".into()));
        assert_eq!(r(b"x=1; JSESSIONID=abc.node2; y=2"), Some("node2".into()));
        assert_eq!(r(b"x=1,JSESSIONID=abc.node2,y=2"), Some("node2".into()));
        assert_eq!(r(b"JSESSIONID = abc.node2"), Some("node2".into()));
        // The first separator starts the route.
        assert_eq!(r(b"JSESSIONID=a.b.node2"), Some("b.node2".into()));
        // Not a cookie of that name: a longer name, or the name inside a value.
        assert_eq!(r(b"MYJSESSIONID=abc.node2"), None);
        assert_eq!(r(b"x=JSESSIONID=abc.node2"), None);
        // No separator, nothing after it, or no value: no route.
        assert_eq!(r(b"JSESSIONID=abc"), None);
        assert_eq!(r(b"JSESSIONID=abc."), None);
        assert_eq!(r(b"JSESSIONID=; other=x.y"), None);
        assert_eq!(r(b"JSESSIONID"), None);
        // Apache does not trim: a trailing space is part of the route.
        assert_eq!(r(b"JSESSIONID=abc.node2 ; x=1"), Some("node2 ".into()));
        // Bytes that are not UTF-8, and over-long values, are no error.
        assert_eq!(r(b"JSESSIONID=abc.n\xffde"), Some("n\u{fffd}de".into()));
        let long = format!("JSESSIONID={}.node2", "a".repeat(MAX_SESSION));
        assert_eq!(r(long.as_bytes()), None);
        // Several cookie fields (HTTP/2) read as one.
        assert_eq!(
            route(&s, "/", &cookies(&[b"a=1", b"JSESSIONID=x.node3"])),
            Some("node3".into())
        );
    }

    #[test]
    fn url_parameter_first_then_cookie() {
        let s = sticky("JSESSIONID|jsessionid", false);
        let c = cookies(&[b"JSESSIONID=abc.node1"]);
        assert_eq!(route(&s, "/app?jsessionid=abc.node3&x=1", &c), Some("node3".into()));
        assert_eq!(route(&s, "/app?x=1&jsessionid=abc.node3", &c), Some("node3".into()));
        // A parameter without a route hides the cookie, as in Apache.
        assert_eq!(route(&s, "/app?jsessionid=abc", &c), None);
        assert_eq!(route(&s, "/app?other=1", &c), Some("node1".into()));
        // Leading delimiters are skipped (apr_strtok).
        assert_eq!(route(&s, "/app?jsessionid=&x.node3", &HeaderMap::new()), Some("node3".into()));
    }

    #[test]
    fn semicolon_path_parameter() {
        let plain = sticky("JSESSIONID|jsessionid", false);
        let scolon = sticky("JSESSIONID|jsessionid", true);
        let h = HeaderMap::new();
        let target = "/app;jsessionid=abc.node2;x=y?q=1";
        // Without scolonpathdelim the value runs on to the `?`.
        assert_eq!(route(&plain, target, &h), Some("node2;x=y".into()));
        assert_eq!(route(&scolon, target, &h), Some("node2".into()));
        assert_eq!(route(&scolon, "/app;jsessionid=abc.node2", &h), Some("node2".into()));
    }

    #[test]
    fn separator_off_and_other() {
        let mut s = sticky("ROUTEID", false);
        s.separator = None;
        assert_eq!(route(&s, "/", &cookies(&[b"ROUTEID=node1"])), Some("node1".into()));
        s.separator = Some(b'!');
        assert_eq!(route(&s, "/", &cookies(&[b"ROUTEID=abc!node1"])), Some("node1".into()));
    }

    #[test]
    fn route_changes_and_the_cookie() {
        let sess = Session { from_url: false, route: Box::from(&b"node1"[..]) };
        assert!(!route_changed(Some(&sess), Some("node1")));
        assert!(route_changed(Some(&sess), Some("node2")));
        assert!(route_changed(None, Some("node2")));
        assert!(!route_changed(None, None));
        let c = RoutingCookie {
            name: "ROUTEID".into(),
            path: "/".into(),
            domain: Some("example.com".into()),
            secure: true,
            httponly: true,
            samesite: Some("Lax".into()),
            max_age: Some(std::time::Duration::from_secs(3600)),
        };
        assert_eq!(
            set_cookie(&c, Some(b'.'), "node2").unwrap(),
            "ROUTEID=.node2; Path=/; Domain=example.com; Max-Age=3600; Secure; HttpOnly; SameSite=Lax"
        );
    }
}
