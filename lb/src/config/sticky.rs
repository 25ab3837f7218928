//! Validation of sticky sessions: Apache's `stickysession`, `stickysessionsep`,
//! `scolonpathdelim`, and lb's own routing cookie `[balancer.NAME.sticky_cookie]`.
use super::model::{RoutingCookie, Sticky};
use super::raw::{RawBalancer, RawStickyCookie};
use super::{KeyPath, Validator};
use std::time::Duration;

/// Apache's limit on a `stickysession` name (`PROXY_BALANCER_MAX_STICKY_SIZE`, less the NUL).
const MAX_NAME: usize = 63;

/// A cookie or URL parameter name: visible ASCII, none of the bytes that end or split one.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME
        && n.bytes().all(|b| b.is_ascii_graphic() && !b"=;,|\"\\".contains(&b))
}

impl Validator<'_> {
    pub(super) fn sticky(&mut self, path: &KeyPath, b: &RawBalancer) -> Option<Sticky> {
        let Some(names) = &b.stickysession else {
            for (key, set) in [
                ("stickysessionsep", b.stickysessionsep.is_some()),
                ("scolonpathdelim", b.scolonpathdelim.is_some()),
                ("sticky_cookie", b.sticky_cookie.is_some()),
            ] {
                if set {
                    self.err(
                        &path.key(key),
                        format!("{key} needs stickysession = \"NAME\" (the cookie lb reads)"),
                    );
                }
            }
            return None;
        };
        let key = path.key("stickysession");
        let (cookie, param) = match names.split_once('|') {
            Some((c, p)) => (c, p),
            None => (names.as_str(), names.as_str()),
        };
        for n in [cookie, param] {
            if !valid_name(n) {
                self.err(
                    &key,
                    format!(
                        "{n:?} is not a cookie or parameter name: 1..={MAX_NAME} visible ASCII \
                         characters without = ; , | \" \\ (the form is NAME or COOKIE|param)"
                    ),
                );
            }
        }
        let separator = match b.stickysessionsep.as_deref() {
            None => Some(b'.'),
            Some(s) if s.eq_ignore_ascii_case("off") => None,
            Some(s) if s.len() == 1 && s.as_bytes()[0].is_ascii_graphic() => Some(s.as_bytes()[0]),
            Some(s) => {
                self.err(
                    &path.key("stickysessionsep"),
                    format!(
                        "stickysessionsep {s:?} must be a single visible character, or \"Off\""
                    ),
                );
                Some(b'.')
            }
        };
        let set_cookie = b
            .sticky_cookie
            .as_ref()
            .map(|c| self.routing_cookie(&path.key("sticky_cookie"), c, cookie));
        Some(Sticky {
            cookie: cookie.to_owned(),
            param: param.to_owned(),
            separator,
            scolon: b.scolonpathdelim.unwrap_or(false),
            set_cookie,
        })
    }

    fn routing_cookie(&mut self, path: &KeyPath, c: &RawStickyCookie, read: &str) -> RoutingCookie {
        let name = c.name.clone().unwrap_or_else(|| read.to_owned());
        if name != read {
            self.err(
                &path.key("name"),
                format!(
                    "the routing cookie {name:?} is not the cookie lb reads ({read:?}, from \
                     stickysession): leave name out, or name the same cookie"
                ),
            );
        }
        let path_value = c.path.clone().unwrap_or_else(|| "/".to_owned());
        if !path_value.starts_with('/')
            || !path_value.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        {
            self.err(
                &path.key("path"),
                format!("path {path_value:?} must start with / and hold no ; , or spaces"),
            );
        }
        if let Some(d) = &c.domain
            && (d.is_empty() || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)))
        {
            self.err(&path.key("domain"), format!("domain {d:?} is not a host name"));
        }
        let secure = c.secure.unwrap_or(false);
        let samesite = match c.samesite.as_deref() {
            None => Some("Lax".to_owned()),
            Some(s) if s.eq_ignore_ascii_case("off") => None,
            Some(s) => match s.to_ascii_lowercase().as_str() {
                "strict" => Some("Strict".to_owned()),
                "lax" => Some("Lax".to_owned()),
                "none" if secure => Some("None".to_owned()),
                "none" => {
                    self.err(
                        &path.key("samesite"),
                        "samesite = \"None\" needs secure = true (browsers drop the cookie otherwise)",
                    );
                    None
                }
                _ => {
                    self.err(
                        &path.key("samesite"),
                        format!(
                            "samesite {s:?}: expected \"Strict\", \"Lax\", \"None\" or \"Off\""
                        ),
                    );
                    None
                }
            },
        };
        let max_age = c
            .max_age
            .is_some()
            .then(|| self.duration(&path.key("max_age"), &c.max_age, Duration::ZERO));
        RoutingCookie {
            name,
            path: path_value,
            domain: c.domain.clone(),
            secure,
            httponly: c.httponly.unwrap_or(true),
            samesite,
            max_age,
        }
    }
}
