//! `Include` patterns as httpd expands them: a wildcard (`*`, `?`, `[…]`) in any path
//! component, or a directory (every file under it), sorted by name.
use std::path::{Path, PathBuf};

/// The files a pattern names, sorted as httpd reads them: a wildcard in any component, or a
/// directory (every file under it).
pub fn expand(pattern: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut bases = vec![PathBuf::new()];
    for comp in pattern.components() {
        let part = comp.as_os_str().to_string_lossy();
        if !part.contains(['*', '?', '[']) {
            for b in &mut bases {
                b.push(comp);
            }
            continue;
        }
        let mut next = Vec::new();
        for b in &bases {
            let Ok(entries) = std::fs::read_dir(b) else { continue };
            let mut names: Vec<String> =
                entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            next.extend(names.iter().filter(|n| wildcard(&part, n)).map(|n| b.join(n)));
        }
        bases = next;
    }
    for b in bases {
        files_under(&b, &mut found);
    }
    found
}

fn files_under(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_file() {
        out.push(p.to_owned());
    } else if let Ok(entries) = std::fs::read_dir(p) {
        let mut v: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        v.sort();
        for e in v {
            files_under(&e, out);
        }
    }
}

/// fnmatch for one path component: `*`, `?` and `[...]` (leading dots are not special, as in
/// httpd's `apr_fnmatch` with no flags).
fn wildcard(p: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (p.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = si;
        } else if pi < p.len() && (p[pi] == '?' || class_or_char(&p, pi, s[si]).is_some()) {
            pi = if p[pi] == '[' { class_or_char(&p, pi, s[si]).unwrap_or(pi + 1) } else { pi + 1 };
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// If `p[i]` matches `c` (a literal or a `[...]` class), where the pattern continues.
fn class_or_char(p: &[char], i: usize, c: char) -> Option<usize> {
    if p[i] != '[' {
        return (p[i] == c).then_some(i + 1);
    }
    let close = p[i + 1..].iter().position(|&x| x == ']')? + i + 1;
    let set = &p[i + 1..close];
    let (neg, set) = match set.first() {
        Some('!' | '^') => (true, &set[1..]),
        _ => (false, set),
    };
    let mut hit = false;
    let mut k = 0;
    while k < set.len() {
        if k + 2 < set.len() && set[k + 1] == '-' {
            hit |= set[k] <= c && c <= set[k + 2];
            k += 3;
        } else {
            hit |= set[k] == c;
            k += 1;
        }
    }
    (hit != neg).then_some(close + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_fnmatch() {
        assert!(wildcard("*.conf", "000-default.conf"));
        assert!(!wildcard("*.conf", "x.load"));
        assert!(wildcard("*.load", "proxy.load"));
        assert!(wildcard("a?c", "abc"));
        assert!(wildcard("[0-9]*", "9x"));
        assert!(!wildcard("[!0-9]*", "9x"));
        assert!(wildcard("*", ""));
    }
}
