//! Reading an Apache configuration as httpd does: logical lines (a trailing `\` continues), quoted
//! arguments, `<Section>` nesting, `Include`/`IncludeOptional` with wildcards (relative to
//! `ServerRoot`), `Define` and `${VAR}`, and `<IfModule>`/`<IfDefine>` decided by what was loaded
//! or defined so far. The result is one tree with every directive's file and line, and nothing of
//! Apache's syntax left to interpret.
use super::{At, ImportError, Note};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One directive or section, arguments unquoted and variables substituted.
#[derive(Debug, Clone)]
pub struct Directive {
    /// As written (`ProxyPass`); compare with [`Directive::is`].
    pub name: String,
    pub args: Vec<String>,
    pub at: At,
    /// The directives inside a `<Section>`; `None` for a plain directive.
    pub body: Option<Vec<Directive>>,
}

impl Directive {
    /// Apache's directive names are case-insensitive.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    pub fn arg(&self, i: usize) -> Option<&str> {
        self.args.get(i).map(String::as_str)
    }
}

/// How deep includes may nest before lb assumes a loop (httpd stops at 128).
const MAX_DEPTH: usize = 64;

/// Reads the main file and everything it includes.
pub struct Reader {
    root: PathBuf,
    /// Off for text given directly (the fuzz target): an include is then reported, not read.
    follow_includes: bool,
    defines: HashMap<String, String>,
    modules: HashSet<String>,
    pub notes: Vec<Note>,
}

impl Reader {
    pub fn new(main: &Path) -> Reader {
        let root = main.parent().map(Path::to_path_buf).unwrap_or_default();
        Reader {
            root,
            follow_includes: true,
            defines: HashMap::new(),
            modules: HashSet::new(),
            notes: Vec::new(),
        }
    }

    /// One file's text, includes reported instead of read.
    pub fn text(&mut self, text: &str, name: &Path) -> Result<Vec<Directive>, ImportError> {
        self.follow_includes = false;
        let raw = parse(text, &Arc::new(name.to_owned()))?;
        self.resolve(raw, 0)
    }

    /// `ServerRoot`: where relative paths point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The whole configuration, includes spliced in and conditionals decided.
    pub fn read(&mut self, main: &Path) -> Result<Vec<Directive>, ImportError> {
        self.file(main, 0)
    }

    fn file(&mut self, path: &Path, depth: usize) -> Result<Vec<Directive>, ImportError> {
        if depth > MAX_DEPTH {
            return Err(ImportError::IncludeDepth { path: path.to_owned() });
        }
        let text = std::fs::read_to_string(path)
            .map_err(|source| ImportError::Read { path: path.to_owned(), source })?;
        let file = Arc::new(path.to_owned());
        let raw = parse(&text, &file)?;
        self.resolve(raw, depth)
    }

    /// Walk one file's tree in order: substitute variables, follow includes, keep the branches
    /// of conditionals that hold.
    fn resolve(
        &mut self,
        raw: Vec<Directive>,
        depth: usize,
    ) -> Result<Vec<Directive>, ImportError> {
        let mut out = Vec::new();
        for mut d in raw {
            d.args = d.args.iter().map(|a| self.substitute(a, &d.at)).collect();
            if d.is("Include") || d.is("IncludeOptional") {
                if !self.follow_includes {
                    self.notes.push(Note::of(&d, "not followed: only this file's text was given"));
                    continue;
                }
                let optional = d.is("IncludeOptional");
                let Some(pattern) = d.arg(0) else {
                    return Err(d.at.syntax("Include needs a file or pattern"));
                };
                let full = self.root.join(pattern);
                let files = super::glob::expand(&full);
                if files.is_empty() && !optional {
                    return Err(d.at.syntax(format!(
                        "Include {pattern}: no file matches (IncludeOptional allows that)"
                    )));
                }
                for f in files {
                    out.extend(self.file(&f, depth + 1)?);
                }
                continue;
            }
            if d.is("ServerRoot") {
                if let Some(r) = d.arg(0) {
                    self.root = PathBuf::from(r);
                }
                continue;
            }
            if d.is("Define") {
                if let Some(name) = d.arg(0) {
                    let value = d.arg(1).unwrap_or("").to_owned();
                    self.defines.insert(name.to_owned(), value);
                }
                continue;
            }
            if d.is("UnDefine") {
                if let Some(name) = d.arg(0) {
                    self.defines.remove(name);
                }
                continue;
            }
            if d.is("LoadModule") {
                if let Some(name) = d.arg(0) {
                    self.modules.insert(name.to_ascii_lowercase());
                }
                self.notes.push(Note::of(
                    &d,
                    "lb is one binary with every feature built in; there are no modules to load",
                ));
                continue;
            }
            if d.is("IfModule") || d.is("IfDefine") {
                let arg = d.arg(0).unwrap_or("");
                let (negate, name) = match arg.strip_prefix('!') {
                    Some(n) => (true, n),
                    None => (false, arg),
                };
                let holds = if d.is("IfModule") {
                    self.modules.contains(&module_id(name))
                } else {
                    self.defines.contains_key(name)
                };
                if holds != negate {
                    let body = d.body.take().unwrap_or_default();
                    out.extend(self.resolve(body, depth)?);
                } else if d.body.as_ref().is_some_and(|b| !b.is_empty()) {
                    let why = match (d.is("IfModule"), negate) {
                        (true, false) => format!(
                            "not read: {name} is not loaded by this configuration (on Debian, a2enmod loads it)"
                        ),
                        (true, true) => format!("not read: {name} is loaded"),
                        (false, false) => format!("not read: {name} is not defined"),
                        (false, true) => format!("not read: {name} is defined"),
                    };
                    self.notes.push(Note::of(&d, why));
                }
                continue;
            }
            if let Some(body) = d.body.take() {
                d.body = Some(self.resolve(body, depth)?);
            }
            out.push(d);
        }
        Ok(out)
    }

    /// `${NAME}` from `Define`, else from the environment (Debian's `envvars`); an unknown one
    /// stays as written and is reported.
    fn substitute(&mut self, arg: &str, at: &At) -> String {
        let mut out = String::with_capacity(arg.len());
        let mut rest = arg;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                return out;
            };
            let name = &after[..end];
            match self.defines.get(name).cloned().or_else(|| std::env::var(name).ok()) {
                Some(v) => out.push_str(&v),
                None => {
                    out.push_str(&rest[start..start + 3 + end]);
                    self.notes.push(Note {
                        at: at.clone(),
                        directive: format!("${{{name}}}"),
                        why: "not defined (Define) nor in the environment; left as written".into(),
                    });
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// `mod_ssl.c` and `ssl_module` name the same module.
fn module_id(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    match n.strip_prefix("mod_").and_then(|m| m.strip_suffix(".c")) {
        Some(m) => format!("{m}_module"),
        None => n,
    }
}

/// One file's text to a tree of directives.
pub fn parse(text: &str, file: &Arc<PathBuf>) -> Result<Vec<Directive>, ImportError> {
    // Sections still open: (name, args, where, children so far).
    let mut stack: Vec<(String, Vec<String>, At, Vec<Directive>)> = Vec::new();
    let mut top = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, first)) = lines.next() {
        let at = At { file: Arc::clone(file), line: n + 1 };
        let mut line = first.trim_end().to_owned();
        while line.ends_with('\\') {
            line.pop();
            match lines.next() {
                Some((_, more)) => line.push_str(more.trim_end()),
                None => break,
            }
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(close) = line.strip_prefix("</") {
            let name = close.trim_end_matches('>').trim();
            let Some((open, args, oat, body)) = stack.pop() else {
                return Err(at.syntax(format!("</{name}> closes no open section")));
            };
            if !open.eq_ignore_ascii_case(name) {
                return Err(
                    at.syntax(format!("</{name}> closes <{open}> opened at line {}", oat.line))
                );
            }
            let d = Directive { name: open, args, at: oat, body: Some(body) };
            match stack.last_mut() {
                Some(parent) => parent.3.push(d),
                None => top.push(d),
            }
            continue;
        }
        if let Some(open) = line.strip_prefix('<') {
            let Some(inner) = open.strip_suffix('>') else {
                return Err(at.syntax(format!("<{open} has no closing '>'")));
            };
            let mut words = tokens(inner).map_err(|m| at.syntax(m))?;
            if words.is_empty() {
                return Err(at.syntax("an empty <> section"));
            }
            let name = words.remove(0);
            stack.push((name, words, at, Vec::new()));
            continue;
        }
        let mut words = tokens(line).map_err(|m| at.syntax(m))?;
        let name = words.remove(0);
        let d = Directive { name, args: words, at, body: None };
        match stack.last_mut() {
            Some(parent) => parent.3.push(d),
            None => top.push(d),
        }
    }
    if let Some((open, _, at, _)) = stack.pop() {
        return Err(at.syntax(format!("<{open}> is never closed")));
    }
    Ok(top)
}

/// Split a line into arguments: whitespace separates, `"…"` and `'…'` group (a backslash escapes
/// the quote inside), as httpd's `ap_getword_conf`.
fn tokens(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        let mut word = String::new();
        if c == '"' || c == '\'' {
            chars.next();
            let mut closed = false;
            while let Some(x) = chars.next() {
                if x == '\\' && chars.peek().is_some_and(|&n| n == c || n == '\\') {
                    word.extend(chars.next());
                } else if x == c {
                    closed = true;
                    break;
                } else {
                    word.push(x);
                }
            }
            if !closed {
                return Err(format!("unterminated {c}quote{c}"));
            }
        } else {
            while let Some(&x) = chars.peek() {
                if x.is_whitespace() {
                    break;
                }
                word.push(x);
                chars.next();
            }
        }
        out.push(word);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<PathBuf> {
        Arc::new(PathBuf::from("t.conf"))
    }

    #[test]
    fn quotes_continuations_and_sections() {
        let text = "# c\nProxyPass \"/a b\" 'http://x/' \\\n  retry=0\n<Proxy \"balancer://c\">\n  BalancerMember http://m:1 route=1\n</proxy>\n";
        let d = parse(text, &file()).unwrap();
        assert_eq!(d[0].args, ["/a b", "http://x/", "retry=0"]);
        assert_eq!(d[0].at.line, 2);
        assert!(d[1].is("proxy"));
        assert_eq!(d[1].args, ["balancer://c"]);
        let body = d[1].body.as_ref().unwrap();
        assert_eq!((body[0].name.as_str(), body[0].at.line), ("BalancerMember", 5));
    }

    #[test]
    fn unbalanced_sections_name_the_line() {
        let e = parse("<Proxy x>\n", &file()).unwrap_err().to_string();
        assert!(e.contains("t.conf:1") && e.contains("never closed"), "{e}");
        let e = parse("<Proxy x>\n</Location>\n", &file()).unwrap_err().to_string();
        assert!(e.contains("t.conf:2") && e.contains("opened at line 1"), "{e}");
        let e = parse("ProxyPass \"/x\n", &file()).unwrap_err().to_string();
        assert!(e.contains("unterminated"), "{e}");
    }

    #[test]
    fn module_names_in_both_spellings() {
        assert_eq!(module_id("mod_ssl.c"), "ssl_module");
        assert_eq!(module_id("SSL_module"), "ssl_module");
    }
}
