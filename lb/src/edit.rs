//! Live edits, as Apache's balancer-manager makes them: a member's load factor, lbset, route,
//! redirect and status flags; a balancer's method, timeout, maxattempts, nofailover and sticky
//! session; a new member in a `growth` slot (it starts disabled). The parameters are Apache's
//! own form names (`b`, `w`, `nonce`, `w_lf`, `w_ls`, `w_wr`, `w_rr`, `w_status_X`, the health
//! check's `w_hm`, `w_hi`, `w_hp`, `w_hf`, `w_hu`, and `b_lbm`, `b_tmo`, `b_max`, `b_sforce`,
//! `b_ss`, `b_wyes` + `b_nwrkr`), so scripts written for Apache keep working.
//!
//! An edit makes a new config from the running one and hands it to the runtime like a reload:
//! kept members stay the same members (counters, health, pool), and the change takes effect on
//! the next pick. Every edit needs the balancer's nonce (shown in the status report), as in
//! Apache, so that a page on another site cannot make a browser change anything.
use crate::config::flags::{self, StatusFlags};
use crate::config::{
    Config, MemberConfig, Sticky, check_route, parse_lbmethod, parse_lbset, parse_loadfactor,
    parse_member_url,
};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("no balancer {0:?}")]
    NoBalancer(String),
    #[error("balancer {balancer:?} has no member {member:?}")]
    NoMember { balancer: String, member: String },
    #[error("the nonce is missing or wrong for balancer {0:?} (read it from the status report)")]
    Nonce(String),
    #[error("{param}: {why}")]
    Value { param: &'static str, why: String },
    #[error("nothing to change: name a parameter")]
    Nothing,
}

/// The balancer's nonce: random, made once per balancer name per process.
pub fn nonce(balancer: &str) -> String {
    static NONCES: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let mut map = NONCES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    map.entry(balancer.to_owned()).or_insert_with(random_hex).clone()
}

fn random_hex() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok();
    if !ok {
        // No /dev/urandom: std's per-process random hash keys still make it unguessable.
        use std::hash::{BuildHasher, Hasher};
        for chunk in b.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(chunk.as_ptr() as u64);
            chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parse an `application/x-www-form-urlencoded` body or query.
pub fn form(text: &str) -> HashMap<String, String> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn value<T: std::str::FromStr>(
    p: &HashMap<String, String>,
    key: &'static str,
) -> Result<Option<T>, EditError> {
    match p.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| EditError::Value { param: key, why: format!("{v:?} is not valid") }),
    }
}

/// Apply the edit in `p` to a copy of `running`: the new config and what changed.
pub fn apply(running: &Config, p: &HashMap<String, String>) -> Result<(Config, String), EditError> {
    let name = p.get("b").map(String::as_str).unwrap_or_default();
    let mut next = running.clone();
    let b = next
        .balancers
        .iter_mut()
        .find(|b| b.name == name)
        .ok_or_else(|| EditError::NoBalancer(name.to_owned()))?;
    if p.get("nonce") != Some(&nonce(name)) {
        return Err(EditError::Nonce(name.to_owned()));
    }
    let mut done = Vec::new();
    if let Some(w) = p.get("w").filter(|w| !w.is_empty()) {
        let m = b
            .members
            .iter_mut()
            .find(|m| m.url.base() == *w || m.url.to_string() == *w)
            .ok_or_else(|| EditError::NoMember { balancer: name.to_owned(), member: w.clone() })?;
        member(m, p, &mut done)?;
        let (url, route) = (m.url.clone(), m.route.clone());
        if let Some(r) = route
            && b.members.iter().any(|x| x.url != url && x.route.as_ref() == Some(&r))
        {
            let why = format!("route {r:?} is used by another member");
            return Err(EditError::Value { param: "w_wr", why });
        }
    }
    if let Some(m) = value::<String>(p, "b_lbm")? {
        b.lbmethod = parse_lbmethod(&m).map_err(|why| EditError::Value { param: "b_lbm", why })?;
        done.push(format!("lbmethod={m}"));
    }
    if let Some(t) = value::<f64>(p, "b_tmo")? {
        if !(0.0..=86_400.0).contains(&t) {
            return Err(EditError::Value {
                param: "b_tmo",
                why: "timeout must be 0..=86400 seconds".into(),
            });
        }
        b.timeout = Duration::from_secs_f64(t);
        done.push(format!("timeout={t}s"));
    }
    if let Some(n) = value::<u32>(p, "b_max")? {
        b.maxattempts = n;
        done.push(format!("maxattempts={n}"));
    }
    if let Some(v) = value::<u8>(p, "b_sforce")? {
        b.nofailover = v != 0;
        done.push(format!("nofailover={}", b.nofailover));
    }
    if let Some(ss) = p.get("b_ss") {
        b.http.sticky = sticky(ss.trim(), b.http.sticky.as_ref())?;
        done.push(format!("stickysession={:?}", ss.trim()));
    }
    if p.get("b_wyes").is_some_and(|v| v == "1") {
        let url = p.get("b_nwrkr").map(|u| u.trim()).unwrap_or_default();
        if b.growth == 0 {
            let why = "no growth slot left (set growth = N on the balancer)".into();
            return Err(EditError::Value { param: "b_nwrkr", why });
        }
        let parsed =
            parse_member_url(url).map_err(|why| EditError::Value { param: "b_nwrkr", why })?;
        if b.members.iter().any(|m| m.url == parsed) {
            return Err(EditError::Value {
                param: "b_nwrkr",
                why: format!("{url} is a member already"),
            });
        }
        let mut m = MemberConfig::for_url(parsed);
        m.status = StatusFlags(flags::DISABLED);
        b.members.push(m);
        b.growth -= 1;
        done.push(format!("added member {url} (disabled; enable it with w_status_D=0)"));
    }
    if done.is_empty() {
        return Err(EditError::Nothing);
    }
    Ok((next, format!("balancer {name}: {}", done.join(", "))))
}

fn member(
    m: &mut MemberConfig,
    p: &HashMap<String, String>,
    done: &mut Vec<String>,
) -> Result<(), EditError> {
    let url = m.url.base();
    if let Some(f) = value::<f64>(p, "w_lf")? {
        m.lbfactor = parse_loadfactor(f).map_err(|why| EditError::Value { param: "w_lf", why })?;
        done.push(format!("{url} loadfactor={f}"));
    }
    if let Some(n) = value::<i64>(p, "w_ls")? {
        m.lbset = parse_lbset(n).map_err(|why| EditError::Value { param: "w_ls", why })?;
        done.push(format!("{url} lbset={n}"));
    }
    for (param, key, field) in
        [("w_wr", "route", &mut m.route), ("w_rr", "redirect", &mut m.redirect)]
    {
        if let Some(v) = p.get(param).map(|v| v.trim()) {
            // Empty clears it.
            if !v.is_empty() {
                check_route(key, v).map_err(|why| EditError::Value { param, why })?;
            }
            *field = (!v.is_empty()).then(|| v.to_owned());
            done.push(format!("{url} {key}={v:?}"));
        }
    }
    hcheck(m, p, done)?;
    for (letter, bit) in flags::LETTERS.into_iter().filter(|(_, bit)| bit & flags::OPERATOR != 0) {
        let key = format!("w_status_{letter}");
        match p.get(&key).map(|v| v.trim()) {
            None | Some("") => {}
            Some("1") => {
                m.status = StatusFlags(m.status.0 | bit);
                done.push(format!("{url} +{letter}"));
            }
            Some("0") => {
                m.status = StatusFlags(m.status.0 & !bit);
                done.push(format!("{url} -{letter}"));
            }
            Some(v) => {
                let why = format!("{key}={v:?}: use 0 or 1");
                return Err(EditError::Value { param: "w_status_X", why });
            }
        }
    }
    Ok(())
}

/// The health check: `w_hm` (method, `NONE` removes it), `w_hi` (interval, seconds),
/// `w_hp` / `w_hf` (passes / fails in a row), `w_hu` (URI). A member without a check gets one
/// with the defaults when a method is given.
fn hcheck(
    m: &mut MemberConfig,
    p: &HashMap<String, String>,
    done: &mut Vec<String>,
) -> Result<(), EditError> {
    use crate::config::{HcMethod, HealthCheck, Scheme};
    let url = m.url.base();
    if let Some(name) = value::<String>(p, "w_hm")? {
        match crate::config::parse_hcmethod(&name) {
            None => {
                let why =
                    format!("{name:?}: NONE, TCP, OPTIONS, HEAD, GET, OPTIONS11, HEAD11 or GET11");
                return Err(EditError::Value { param: "w_hm", why });
            }
            Some(None) => m.hcheck = None,
            Some(Some(method)) => {
                if m.url.scheme == Scheme::Tcp && method != HcMethod::Tcp {
                    return Err(EditError::Value {
                        param: "w_hm",
                        why: "a tcp:// member is checked with TCP".into(),
                    });
                }
                let mut hc =
                    m.hcheck.as_deref().cloned().unwrap_or_else(|| HealthCheck::new(method));
                hc.method = method;
                m.hcheck = Some(std::sync::Arc::new(hc));
            }
        }
        done.push(format!("{url} hcmethod={name}"));
    }
    let interval = value::<f64>(p, "w_hi")?;
    let passes = value::<u32>(p, "w_hp")?;
    let fails = value::<u32>(p, "w_hf")?;
    let uri = p.get("w_hu").map(|u| u.trim().to_owned()).filter(|u| !u.is_empty());
    if interval.is_none() && passes.is_none() && fails.is_none() && uri.is_none() {
        return Ok(());
    }
    let Some(hc) = m.hcheck.as_deref() else {
        let why = format!("{url} has no health check: set w_hm first");
        return Err(EditError::Value { param: "w_hm", why });
    };
    let mut hc = hc.clone();
    if let Some(i) = interval {
        if !(0.1..=86_400.0).contains(&i) {
            return Err(EditError::Value {
                param: "w_hi",
                why: "hcinterval must be 0.1..=86400 seconds".into(),
            });
        }
        hc.interval = Duration::from_secs_f64(i);
        done.push(format!("{url} hcinterval={i}s"));
    }
    for (v, field, param) in [(passes, &mut hc.passes, "w_hp"), (fails, &mut hc.fails, "w_hf")] {
        if let Some(n) = v {
            if n == 0 {
                return Err(EditError::Value { param, why: "must be at least 1".into() });
            }
            *field = n;
            done.push(format!("{url} {param}={n}"));
        }
    }
    if let Some(u) = uri {
        crate::config::check_hcuri(&u).map_err(|why| EditError::Value { param: "w_hu", why })?;
        hc.uri = u;
        done.push(format!("{url} hcuri={:?}", hc.uri));
    }
    m.hcheck = Some(std::sync::Arc::new(hc));
    Ok(())
}

/// `b_ss`: `NAME` or `COOKIE|param`; empty turns sticky sessions off.
fn sticky(ss: &str, now: Option<&Sticky>) -> Result<Option<Sticky>, EditError> {
    if ss.is_empty() {
        return Ok(None);
    }
    let (cookie, param) = ss.split_once('|').unwrap_or((ss, ss));
    if !crate::config::sticky::valid_name(cookie) || !crate::config::sticky::valid_name(param) {
        return Err(EditError::Value {
            param: "b_ss",
            why: format!("{ss:?} is not NAME or COOKIE|param"),
        });
    }
    Ok(Some(Sticky {
        cookie: cookie.to_owned(),
        param: param.to_owned(),
        separator: now.map_or(Some(b'.'), |s| s.separator),
        scolon: now.is_some_and(|s| s.scolon),
        set_cookie: now.and_then(|s| s.set_cookie.clone()),
    }))
}
