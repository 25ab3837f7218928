//! The translated model as lb's TOML, in the README's order, each table headed by the Apache
//! file and line it came from. Strings are written as TOML basic strings with every character
//! that needs it escaped, so any path or route comes through exactly.
use super::At;
use super::assemble::Model;
use super::params::V;
use std::fmt::Write;
use std::path::Path;

fn value(v: &V) -> String {
    match v {
        V::Str(s) => {
            let mut o = String::with_capacity(s.len() + 2);
            o.push('"');
            for c in s.chars() {
                match c {
                    '"' => o.push_str("\\\""),
                    '\\' => o.push_str("\\\\"),
                    '\n' => o.push_str("\\n"),
                    '\t' => o.push_str("\\t"),
                    c if c.is_control() => {
                        let _ = write!(o, "\\u{:04X}", u32::from(c));
                    }
                    c => o.push(c),
                }
            }
            o.push('"');
            o
        }
        V::Int(i) => i.to_string(),
        V::Num(f) if f.fract() == 0.0 && f.is_finite() => format!("{f:.1}"),
        V::Num(f) => f.to_string(),
        V::Bool(b) => b.to_string(),
    }
}

fn string(s: &str) -> String {
    value(&V::Str(s.to_owned()))
}

/// A table key: bare when TOML allows it, else quoted.
fn key(k: &str) -> String {
    if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        k.to_owned()
    } else {
        string(k)
    }
}

fn from(out: &mut String, indent: &str, at: &At) {
    let _ = writeln!(out, "{indent}# from {at}");
}

fn keys(out: &mut String, indent: &str, kv: &[(&'static str, V)]) {
    for (k, v) in kv {
        let _ = writeln!(out, "{indent}{k} = {}", value(v));
    }
}

pub fn emit(m: &Model, main: &Path) -> String {
    let mut o = String::new();
    let _ =
        writeln!(o, "# lb configuration translated from {} by `lb import-apache`.", main.display());
    let _ = writeln!(o, "# What could not be translated was reported with its file and line.\n");
    if !m.admin_allow.is_empty() || m.persist {
        let _ = writeln!(o, "[admin]");
        if !m.admin_allow.is_empty() {
            let nets: Vec<String> = m.admin_allow.iter().map(|n| string(n)).collect();
            let _ = writeln!(o, "allow = [{}]", nets.join(", "));
        }
        if m.persist {
            let _ = writeln!(o, "state_file = \"lb.state\"");
        }
        let _ = writeln!(o);
    }
    if let Some(g) = &m.graceful {
        let _ = writeln!(o, "[server]\ngraceful_shutdown_timeout = {}\n", value(g));
    }
    if let Some(p) = &m.access_log {
        let _ = writeln!(o, "[access_log]\npath = {}\nformat = \"combined\"\n", string(p));
    }
    if let Some(h) = &m.heartbeat {
        let _ = writeln!(o, "[heartbeat]\nlisten = {}\n", string(h));
    }
    for l in &m.listeners {
        from(&mut o, "", &l.at);
        let _ = writeln!(o, "[[listener]]\nname = {}\nbind = {}", string(&l.name), string(&l.bind));
        keys(&mut o, "", &l.keys);
        if let Some(t) = &l.tls {
            let _ = writeln!(
                o,
                "\n  [[listener.tls]]\n  cert = {}\n  key = {}",
                string(&t.cert),
                string(&t.key)
            );
            if let Some(c) = &t.chain {
                let _ = writeln!(o, "  chain = {}", string(c));
            }
        }
        for r in &l.routes {
            let _ = writeln!(o);
            from(&mut o, "  ", &r.at);
            let _ = writeln!(
                o,
                "  [[listener.proxy_pass]]\n  path = {}\n  to = {}",
                string(&r.path),
                string(&r.to)
            );
            if r.reverse {
                let _ = writeln!(o, "  reverse = true");
            }
            if r.preserve_host {
                let _ = writeln!(o, "  preserve_host = true");
            }
        }
        let _ = writeln!(o);
    }
    for b in m.balancers.iter().filter(|b| !b.members.is_empty()) {
        let name = key(&b.name);
        from(&mut o, "", &b.at);
        let _ = writeln!(o, "[balancer.{name}]");
        keys(&mut o, "", &b.keys);
        if !b.tls.is_empty() {
            let _ = writeln!(o, "\n[balancer.{name}.tls]");
            keys(&mut o, "", &b.tls);
        }
        if !b.cookie.is_empty() {
            let _ = writeln!(o, "\n[balancer.{name}.sticky_cookie]");
            keys(&mut o, "", &b.cookie);
        }
        for mem in &b.members {
            let _ = writeln!(o);
            from(&mut o, "  ", &mem.at);
            let _ = writeln!(o, "  [[balancer.{name}.member]]\n  url = {}", string(&mem.url));
            keys(&mut o, "  ", &mem.keys);
        }
        let _ = writeln!(o);
    }
    o
}
