//! The `key=value` parameters of `BalancerMember`, `ProxySet` and `ProxyPass`, and
//! `ProxyHCExpr` expressions, as lb keys. Each either maps to a key, is already lb's behaviour, or
//! comes back with the reason lb has no equivalent.

/// A TOML value to emit.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Str(String),
    Int(i64),
    Num(f64),
    Bool(bool),
}

/// lb keys and their values, in the order written.
pub type Keys = Vec<(&'static str, V)>;

/// Set `key`, replacing an earlier value (a later directive wins, as in Apache).
pub fn set(keys: &mut Keys, key: &'static str, v: V) {
    keys.retain(|(k, _)| *k != key);
    keys.push((key, v));
}

/// What became of one parameter.
pub enum Mapped {
    Key(&'static str, V),
    /// Already what lb does; nothing to write.
    Default,
}

/// `key=value` with the key lowercased (Apache's keys are case-insensitive).
pub fn split(arg: &str) -> Option<(String, &str)> {
    let (k, v) = arg.split_once('=')?;
    Some((k.to_ascii_lowercase(), v))
}

/// Whether a parameter belongs to the balancer (else to a member).
pub fn is_balancer_key(key: &str) -> bool {
    matches!(
        key,
        "lbmethod"
            | "maxattempts"
            | "nofailover"
            | "stickysession"
            | "stickysessionsep"
            | "scolonpathdelim"
            | "failonstatus"
            | "failontimeout"
            | "forcerecovery"
            | "growth"
            | "nonce"
    ) || key == "timeout"
}

/// A balancer parameter (`ProxySet balancer://…`, or `ProxyPass` to a balancer).
pub fn balancer(key: &str, value: &str) -> Result<Mapped, String> {
    let k = |name: &'static str, v: V| Ok(Mapped::Key(name, v));
    match key {
        "lbmethod" => k("lbmethod", V::Str(value.to_ascii_lowercase())),
        "maxattempts" => k("maxattempts", int(value)?),
        "nofailover" => k("nofailover", on_off(value)?),
        "stickysession" => k("stickysession", V::Str(value.into())),
        "stickysessionsep" => k("stickysessionsep", V::Str(value.into())),
        "scolonpathdelim" => k("scolonpathdelim", on_off(value)?),
        "timeout" => k("timeout", duration(value)?),
        "failonstatus" => k("failonstatus", V::Str(value.into())),
        "failontimeout" => k("failontimeout", on_off(value)?),
        "forcerecovery" => k("forcerecovery", on_off(value)?),
        "growth" => k("growth", int(value)?),
        "nonce" => Err("lb makes a fresh nonce per balancer at every start; the \
                        balancer-manager page and the CLI use it"
            .into()),
        _ => Err("not a balancer parameter".into()),
    }
}

/// A member parameter (`BalancerMember`, `ProxySet` on a member URL, `ProxyPass` to a URL).
/// `hcexpr` and `hctemplate` need the tables of their directives; the caller handles them.
pub fn member(key: &str, value: &str) -> Result<Mapped, String> {
    let k = |name: &'static str, v: V| Ok(Mapped::Key(name, v));
    match key {
        "loadfactor" => k("loadfactor", number(value)?),
        "lbset" => k("lbset", int(value)?),
        "route" => k("route", V::Str(value.into())),
        "redirect" => k("redirect", V::Str(value.into())),
        "status" => k("status", V::Str(value.into())),
        "retry" => k("retry", duration(value)?),
        "connectiontimeout" => k("connectiontimeout", duration(value)?),
        "timeout" => k("timeout", duration(value)?),
        "ttl" => k("ttl", duration(value)?),
        // Apache's acquire is in milliseconds.
        "acquire" => match int(value)? {
            V::Int(ms) => k("acquire", V::Str(format!("{ms}ms"))),
            _ => Err("not a number of milliseconds".into()),
        },
        "max" => k("max", int(value)?),
        "disablereuse" => k("disablereuse", on_off(value)?),
        "enablereuse" => match on_off(value)? {
            V::Bool(false) => k("disablereuse", V::Bool(true)),
            _ => Ok(Mapped::Default),
        },
        "keepalive" => k("keepalive", on_off(value)?),
        "ping" => k("ping", duration(value)?),
        "hcmethod" => k("hcmethod", V::Str(value.to_ascii_uppercase())),
        "hcinterval" => k("hcinterval", duration(value)?),
        "hcpasses" => k("hcpasses", int(value)?),
        "hcfails" => k("hcfails", int(value)?),
        "hcuri" => k("hcuri", V::Str(value.into())),
        "min" | "smax" => Err("lb keeps no minimum of pooled connections; idle ones close \
                               after ttl"
            .into()),
        "flushpackets" | "flushwait" => {
            Err("lb forwards response bytes as they arrive; there is nothing to flush".into())
        }
        "iobuffersize" | "receivebuffersize" | "responsefieldsize" => {
            Err("lb sizes its own buffers (responsefieldsize: member heads are bounded)".into())
        }
        "addressttl" => {
            Err("lb re-resolves a member's name at its record's TTL ([resolver] min_ttl/max_ttl)"
                .into())
        }
        "secret" => Err("an AJP parameter; lb speaks HTTP to members".into()),
        "upgrade" | "mapping" => Err("no lb equivalent".into()),
        _ => Err("not a BalancerMember parameter lb knows".into()),
    }
}

fn on_off(v: &str) -> Result<V, String> {
    match v.to_ascii_lowercase().as_str() {
        "on" => Ok(V::Bool(true)),
        "off" => Ok(V::Bool(false)),
        _ => Err(format!("{v:?} is not On or Off")),
    }
}

fn int(v: &str) -> Result<V, String> {
    v.parse::<i64>().map(V::Int).map_err(|_| format!("{v:?} is not a whole number"))
}

fn number(v: &str) -> Result<V, String> {
    if let Ok(i) = v.parse::<i64>() {
        return Ok(V::Int(i));
    }
    v.parse::<f64>().map(V::Num).map_err(|_| format!("{v:?} is not a number"))
}

/// Apache's times: seconds, or with a unit suffix (`ms`, `s`, `mi`, `h` as in
/// `ap_timeout_parameter_parse`).
pub fn duration(v: &str) -> Result<V, String> {
    if let Ok(i) = v.parse::<i64>() {
        return Ok(V::Int(i));
    }
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: i64 = n.parse().map_err(|_| format!("{v:?} is not a time"))?;
    match unit.to_ascii_lowercase().as_str() {
        "ms" => Ok(V::Str(format!("{n}ms"))),
        "s" => Ok(V::Int(n)),
        "mi" => Ok(V::Str(format!("{n}m"))),
        "h" => Ok(V::Str(format!("{n}h"))),
        _ => Err(format!("{v:?} is not a time")),
    }
}

/// A `ProxyHCExpr` expression as lb's `hcstatus`/`hcbody_regex` keys. Understood: conditions on
/// `%{REQUEST_STATUS}` (`=~ /^[2-4]/`, `=~ /^2/`, `== 200`, `-eq 200`) and
/// `hc('body') =~ /text/`, joined with `&&`.
pub fn hcexpr(expr: &str) -> Result<Keys, String> {
    let e = expr.trim();
    let e = e.strip_prefix('{').and_then(|x| x.strip_suffix('}')).unwrap_or(e).trim();
    let mut out = Vec::new();
    for part in e.split("&&") {
        let p = part.trim();
        let p = p.strip_prefix('(').and_then(|x| x.strip_suffix(')')).unwrap_or(p).trim();
        if let Some(rest) = p.strip_prefix("%{REQUEST_STATUS}") {
            out.push(("hcstatus", V::Str(status_condition(rest.trim())?)));
        } else if let Some(rest) =
            p.strip_prefix("hc('body')").or_else(|| p.strip_prefix("hc(\"body\")"))
        {
            let rest = rest.trim();
            let Some(re) = rest.strip_prefix("=~") else {
                return Err(format!(
                    "{p:?}: lb's hcbody_regex passes when the body matches; it has no negation"
                ));
            };
            out.push(("hcbody_regex", V::Str(slashed(re.trim())?.to_owned())));
        } else {
            return Err(format!("{p:?}: lb checks the status and the body only"));
        }
    }
    Ok(out)
}

fn slashed(s: &str) -> Result<&str, String> {
    s.strip_prefix('/')
        .and_then(|x| x.strip_suffix('/'))
        .ok_or_else(|| format!("{s:?} is not a /regex/"))
}

/// `=~ /^[234]/` → "200-499"; `=~ /^2/` → "200-299"; `== 200` → "200".
fn status_condition(c: &str) -> Result<String, String> {
    for op in ["==", "-eq"] {
        if let Some(n) = c.strip_prefix(op) {
            let n = n.trim().trim_matches(['\'', '"']);
            return n.parse::<u16>().map(|n| n.to_string()).map_err(|_| format!("{c:?}"));
        }
    }
    let re = c.strip_prefix("=~").ok_or_else(|| format!("{c:?}: unsupported comparison"))?;
    let re = slashed(re.trim())?;
    let body = re.strip_prefix('^').ok_or_else(|| format!("/{re}/: anchor it with ^"))?;
    let digits: Vec<u8> = match body.strip_prefix('[').and_then(|b| b.strip_suffix(']')) {
        Some(set) => {
            let s = set.as_bytes();
            let mut d = Vec::new();
            let mut i = 0;
            while i < s.len() {
                if i + 2 < s.len() && s[i + 1] == b'-' {
                    d.extend(s[i]..=s[i + 2]);
                    i += 3;
                } else {
                    d.push(s[i]);
                    i += 1;
                }
            }
            d
        }
        None => body.as_bytes().to_vec(),
    };
    if digits.is_empty() || !digits.iter().all(|d| (b'1'..=b'5').contains(d)) {
        return Err(format!("/{re}/: only a first status digit (or a set of them) maps"));
    }
    let mut ranges: Vec<String> = Vec::new();
    let mut sorted = digits;
    sorted.sort_unstable();
    sorted.dedup();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            end += 1;
            i += 1;
        }
        ranges.push(format!("{}00-{}99", char::from(start), char::from(end)));
        i += 1;
    }
    Ok(ranges.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcexpr_maps_status_and_body_conditions() {
        let s = |e: &str| hcexpr(e).unwrap();
        assert_eq!(s("{%{REQUEST_STATUS} =~ /^[234]/}"), [("hcstatus", V::Str("200-499".into()))]);
        assert_eq!(
            s("{%{REQUEST_STATUS} =~ /^[25]/}"),
            [("hcstatus", V::Str("200-299,500-599".into()))]
        );
        assert_eq!(s("%{REQUEST_STATUS} == 204"), [("hcstatus", V::Str("204".into()))]);
        assert_eq!(
            s("{hc('body') =~ /Online/ && %{REQUEST_STATUS} =~ /^2/}"),
            [("hcbody_regex", V::Str("Online".into())), ("hcstatus", V::Str("200-299".into()))]
        );
        assert!(hcexpr("{hc('body') !~ /Under maintenance/}").unwrap_err().contains("negation"));
        assert!(hcexpr("{%{REQUEST_STATUS} =~ /^(2|3)/}").is_err());
        assert!(hcexpr("{%{TIME_HOUR} -lt 5}").is_err());
    }

    #[test]
    fn times_keep_their_units() {
        assert_eq!(duration("30").unwrap(), V::Int(30));
        assert_eq!(duration("500ms").unwrap(), V::Str("500ms".into()));
        assert_eq!(duration("2mi").unwrap(), V::Str("2m".into()));
        assert!(duration("soon").is_err());
        assert!(
            matches!(member("acquire", "250"), Ok(Mapped::Key("acquire", V::Str(s))) if s == "250ms")
        );
        assert!(matches!(
            member("enablereuse", "Off"),
            Ok(Mapped::Key("disablereuse", V::Bool(true)))
        ));
        assert!(member("smax", "5").is_err());
        assert!(matches!(
            balancer("nofailover", "On"),
            Ok(Mapped::Key("nofailover", V::Bool(true)))
        ));
        assert!(balancer("nofailover", "maybe").is_err());
    }
}
