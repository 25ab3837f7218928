//! Validation of active health checks: Apache's `hcmethod`, `hcinterval`, `hcpasses`,
//! `hcfails`, `hcuri`, and lb's `hctimeout` and `hcexpr` equivalents (`hcstatus`, `hcbody`,
//! `hcbody_regex`). A member's key wins over its balancer's, which is the default for every
//! member.
use super::model::{BodyMatch, HcMethod, HealthCheck, Scheme};
use super::raw::{RawBalancer, RawDuration, RawMember, RawStatusList};
use super::{Inherit, KeyPath, Validator};
use std::sync::Arc;
use std::time::Duration;

/// The health-check keys of one level (a member or its balancer).
struct Keys<'a> {
    method: &'a Option<String>,
    interval: &'a Option<RawDuration>,
    passes: &'a Option<u32>,
    fails: &'a Option<u32>,
    uri: &'a Option<String>,
    timeout: &'a Option<RawDuration>,
    status: &'a Option<RawStatusList>,
    body: &'a Option<String>,
    body_regex: &'a Option<String>,
}

impl Keys<'_> {
    /// Keys set here other than `hcmethod`.
    fn others(&self) -> Vec<&'static str> {
        [
            ("hcinterval", self.interval.is_some()),
            ("hcpasses", self.passes.is_some()),
            ("hcfails", self.fails.is_some()),
            ("hcuri", self.uri.is_some()),
            ("hctimeout", self.timeout.is_some()),
            ("hcstatus", self.status.is_some()),
            ("hcbody", self.body.is_some()),
            ("hcbody_regex", self.body_regex.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
}

macro_rules! keys {
    ($r:expr) => {
        Keys {
            method: &$r.hcmethod,
            interval: &$r.hcinterval,
            passes: &$r.hcpasses,
            fails: &$r.hcfails,
            uri: &$r.hcuri,
            timeout: &$r.hctimeout,
            status: &$r.hcstatus,
            body: &$r.hcbody,
            body_regex: &$r.hcbody_regex,
        }
    };
}

/// `hcmethod`: Some(None) for `NONE`, None when unknown.
pub fn method(s: &str) -> Option<Option<HcMethod>> {
    Some(Some(match s.to_ascii_uppercase().as_str() {
        "NONE" => return Some(None),
        "TCP" => HcMethod::Tcp,
        "OPTIONS" => HcMethod::Options,
        "HEAD" => HcMethod::Head,
        "GET" => HcMethod::Get,
        "OPTIONS11" => HcMethod::Options11,
        "HEAD11" => HcMethod::Head11,
        "GET11" => HcMethod::Get11,
        _ => return None,
    }))
}

/// "200-399,404" or [200, 204]: inclusive ranges of statuses.
fn statuses(raw: &RawStatusList) -> Result<Vec<(u16, u16)>, String> {
    let code = |c: i64| {
        u16::try_from(c)
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("{c} is not an HTTP status code (100..=599)"))
    };
    let mut out = Vec::new();
    match raw {
        RawStatusList::List(v) => {
            for c in v {
                let c = code(*c)?;
                out.push((c, c));
            }
        }
        RawStatusList::Text(t) => {
            for part in t.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                let num = |x: &str| {
                    x.trim()
                        .parse::<i64>()
                        .map_err(|_| format!("{part:?} is not a status or range"))
                };
                let (a, b) = (code(num(a)?)?, code(num(b)?)?);
                if a > b {
                    return Err(format!("range {part:?} runs backwards"));
                }
                out.push((a, b));
            }
        }
    }
    if out.is_empty() {
        return Err("no status given".into());
    }
    Ok(out)
}

impl Validator<'_> {
    /// The health check of member `m` (at `path`) of balancer `b` (at `bpath`), if any.
    pub(super) fn hcheck(
        &mut self,
        path: &KeyPath,
        m: &RawMember,
        bpath: &KeyPath,
        b: &RawBalancer,
        scheme: Scheme,
    ) -> Option<Arc<HealthCheck>> {
        let (mine, theirs) = (keys!(m), keys!(b));
        // Each key from the member if set there, else from the balancer; errors name where.
        let at = Inherit { member: path, balancer: bpath };
        let (mpath, raw_method) = at.get("hcmethod", mine.method, theirs.method);
        let method = match raw_method.as_deref().map(|s| (s, method(s))) {
            None => None,
            Some((_, Some(m))) => m,
            Some((s, None)) => {
                self.err(
                    &mpath,
                    format!(
                        "unknown hcmethod {s:?}: expected TCP, OPTIONS, HEAD, GET, OPTIONS11, \
                         HEAD11, GET11 or NONE"
                    ),
                );
                return None;
            }
        };
        let Some(method) = method else {
            for (level, keys, at) in [(&mine, path, "member"), (&theirs, bpath, "balancer")] {
                for k in level.others() {
                    self.err(
                        &keys.key(k),
                        format!("{k} has no effect without an hcmethod (for this {at})"),
                    );
                }
            }
            return None;
        };
        if scheme == Scheme::Tcp && method != HcMethod::Tcp {
            self.err(&mpath, "tcp:// members are checked with hcmethod = \"TCP\"");
        }
        let (ipath, raw) = at.get("hcinterval", mine.interval, theirs.interval);
        let interval = self.duration(&ipath, raw, HealthCheck::INTERVAL);
        if interval < Duration::from_millis(100) {
            self.err(&ipath, "hcinterval must be at least 100ms");
        }
        let (tpath, raw) = at.get("hctimeout", mine.timeout, theirs.timeout);
        let timeout = self.duration(&tpath, raw, HealthCheck::TIMEOUT);
        if timeout.is_zero() {
            self.err(&tpath, "hctimeout must be above 0");
        }
        let mut count = |k: &'static str, here: &Option<u32>, there: &Option<u32>| {
            let (p, v) = at.get(k, here, there);
            let v = v.unwrap_or(1);
            if v == 0 {
                self.err(&p, format!("{k} must be at least 1"));
            }
            v.max(1)
        };
        let passes = count("hcpasses", mine.passes, theirs.passes);
        let fails = count("hcfails", mine.fails, theirs.fails);
        let (upath, uri) = at.get("hcuri", mine.uri, theirs.uri);
        let uri = uri.clone().unwrap_or_default();
        if let Err(e) = super::check_hcuri(&uri) {
            self.err(&upath, e);
        }
        let (spath, raw) = at.get("hcstatus", mine.status, theirs.status);
        let status = match raw {
            None => HealthCheck::STATUS.to_vec(),
            Some(raw) => statuses(raw).unwrap_or_else(|e| {
                self.err(&spath, e);
                HealthCheck::STATUS.to_vec()
            }),
        };
        let (body_path, body) = at.get("hcbody", mine.body, theirs.body);
        let (regex_path, regex) = at.get("hcbody_regex", mine.body_regex, theirs.body_regex);
        let body = match (body, regex) {
            (Some(_), Some(_)) => {
                self.err(&regex_path, "set hcbody or hcbody_regex, not both");
                None
            }
            (Some(s), None) => Some(BodyMatch::Contains(s.clone())),
            (None, Some(r)) => match regex::Regex::new(r) {
                Ok(re) => Some(BodyMatch::Regex(re)),
                Err(e) => {
                    self.err(&regex_path, format!("invalid regex: {e}"));
                    None
                }
            },
            (None, None) => None,
        };
        if body.is_some() && !matches!(method, HcMethod::Get | HcMethod::Get11) {
            let p = if regex.is_some() { &regex_path } else { &body_path };
            self.err(p, "a body can only be checked with hcmethod GET or GET11");
        }
        Some(Arc::new(HealthCheck { method, uri, interval, passes, fails, timeout, status, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists() {
        let t = |s: &str| statuses(&RawStatusList::Text(s.into()));
        assert_eq!(t("200-399, 404"), Ok(vec![(200, 399), (404, 404)]));
        assert!(
            t("399-200").is_err() && t("200-999").is_err() && t("ok").is_err() && t("").is_err()
        );
        assert_eq!(statuses(&RawStatusList::List(vec![204])), Ok(vec![(204, 204)]));
        assert_eq!(method("get11"), Some(Some(HcMethod::Get11)));
        assert_eq!(method("None"), Some(None));
        assert_eq!(method("POST"), None);
    }
}
