//! Live edits that outlast a restart or a reload (Apache's `BalancerPersist`): with
//! `[admin] state_file`, every balancer-manager edit that took effect is written to that file, and
//! at start and at each reload the file's edits are made again over the config file's values.
//!
//! The file holds the edits themselves, one change per line in the balancer-manager's own form
//! syntax (`b=app&w=http%3A%2F%2F10.0.0.1%3A80&w_lf=5`), so replaying it goes through the very
//! code that made them ([`crate::edit::apply`]). A later change to the same setting replaces the
//! line of the earlier one; a line that no longer applies (its member left the config file) is
//! skipped with a warning at each load, and stays in the file until an operator removes it.
use crate::config::Config;
use std::collections::HashMap;
use std::path::Path;

/// The parameters that say what an edit is about rather than what it changes.
const ADDRESS: [&str; 3] = ["b", "w", "nonce"];

/// One line per change: the balancer, the member (if any) and one changed parameter (adding a
/// member keeps `b_wyes` and `b_nwrkr` together).
fn changes(params: &HashMap<String, String>) -> Vec<Vec<(String, String)>> {
    let mut head = vec![("b".to_owned(), params.get("b").cloned().unwrap_or_default())];
    if let Some(w) = params.get("w").filter(|w| !w.is_empty()) {
        head.push(("w".to_owned(), w.clone()));
    }
    let mut keys: Vec<&String> = params.keys().filter(|k| !ADDRESS.contains(&k.as_str())).collect();
    keys.sort();
    let mut out = Vec::new();
    if params.get("b_wyes").is_some_and(|v| v == "1") {
        let url = params.get("b_nwrkr").cloned().unwrap_or_default();
        out.push(vec![
            ("b".to_owned(), head[0].1.clone()),
            ("b_wyes".to_owned(), "1".to_owned()),
            ("b_nwrkr".to_owned(), url),
        ]);
    }
    for k in keys {
        if k == "b_wyes" || k == "b_nwrkr" {
            continue;
        }
        // Balancer parameters do not belong to the member named with them.
        let mut line = if k.starts_with("b_") { head[..1].to_vec() } else { head.clone() };
        line.push((k.clone(), params[k].clone()));
        out.push(line);
    }
    out
}

fn encode(line: &[(String, String)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    line.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

/// What a line changes: everything but its value, so that a later value replaces it.
fn setting(line: &str) -> String {
    match line.rsplit_once('=') {
        Some((k, _)) if !line.contains("b_wyes=") => k.to_owned(),
        _ => line.to_owned(),
    }
}

/// Note an edit that took effect: its changes replace the file's lines for the same settings.
/// The file is replaced whole (written aside, then renamed), so a crash never leaves half of it.
pub fn record(path: &Path, params: &HashMap<String, String>) -> std::io::Result<()> {
    let mut lines: Vec<String> = match std::fs::read_to_string(path) {
        Ok(t) => {
            t.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    for change in changes(params) {
        let line = encode(&change);
        let key = setting(&line);
        match lines.iter().position(|l| setting(l) == key) {
            Some(i) => lines[i] = line,
            None => lines.push(line),
        }
    }
    let mut text = String::from(
        "# lb live edits (balancer-manager form syntax), made again at start and reload.\n",
    );
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// `cfg` with the state file's edits made again, and a warning for each one that no longer
/// applies. No state file, or none yet: `cfg` as it is.
pub fn replay(mut cfg: Config) -> (Config, Vec<String>) {
    let Some(path) = cfg.admin.as_ref().and_then(|a| a.state_file.clone()) else {
        return (cfg, Vec::new());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (cfg, Vec::new()),
        Err(e) => return (cfg, vec![format!("{}: {e}; no live edit made again", path.display())]),
    };
    let mut warnings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut p = crate::edit::form(line);
        let b = p.get("b").cloned().unwrap_or_default();
        p.insert("nonce".into(), crate::edit::nonce(&b));
        match crate::edit::apply(&cfg, &p) {
            Ok((next, _)) => cfg = next,
            Err(e) => warnings.push(format!("{}:{}: {e}; skipped", path.display(), n + 1)),
        }
    }
    (cfg, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(s: &str) -> HashMap<String, String> {
        crate::edit::form(s)
    }

    #[test]
    fn later_changes_replace_earlier_ones_and_members_are_kept_apart() {
        let dir = std::env::temp_dir().join(format!("lb-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("state");
        let _ = std::fs::remove_file(&f);
        record(&f, &params("b=app&w=http://a:1&nonce=x&w_lf=5&w_ls=1")).unwrap();
        record(&f, &params("b=app&w=http://b:1&nonce=x&w_lf=7")).unwrap();
        record(&f, &params("b=app&w=http://a:1&nonce=x&w_lf=2&b_lbm=bybusyness")).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "b=app&w=http%3A%2F%2Fa%3A1&w_lf=2",
                "b=app&w=http%3A%2F%2Fa%3A1&w_ls=1",
                "b=app&w=http%3A%2F%2Fb%3A1&w_lf=7",
                "b=app&b_lbm=bybusyness",
            ]
        );
        // Lines read back as the parameters they were made from.
        assert_eq!(crate::edit::form(lines[0]).get("w").map(String::as_str), Some("http://a:1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
