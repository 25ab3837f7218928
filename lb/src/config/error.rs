//! The one error type of the config layer, and how an error finds its place in the file.
//!
//! Validation records errors against a key path (`balancer.web.member[1].loadfactor`); this module
//! resolves that path in a span-keeping parse of the same text to a line and column, so every
//! message names the file, line, column and key an operator has to fix.
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use toml_edit::{Document, Item};

/// One segment of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A dotted key path into the config document, e.g. `balancer.web.member[1].loadfactor`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn key(&self, k: &str) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_owned()));
        KeyPath(v)
    }
    pub fn index(&self, i: usize) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no place in the text (a missing file section).
    pub line: usize,
    pub column: usize,
    /// The key path, or empty for a syntax error outside any key.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "key `{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The located problems (empty for a read error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            ConfigError::Read { .. } => &[],
        }
    }

    /// What `lb check` prints: one located line per problem, then the count.
    pub fn report(&self) -> String {
        match self {
            ConfigError::Invalid(diags) => {
                let mut s = String::new();
                for d in diags {
                    s.push_str(&d.to_string());
                    s.push('\n');
                }
                s.push_str(&format!("{} error(s)\n", diags.len()));
                s
            }
            other => format!("{other}\n"),
        }
    }
}

fn render(d: &[Diagnostic]) -> String {
    let mut s = format!("{} error(s) in config:", d.len());
    for x in d {
        s.push_str("\n  ");
        s.push_str(&x.to_string());
    }
    s
}

/// Text with a lazily built span index, to place diagnostics.
pub(crate) struct Locator<'a> {
    text: &'a str,
    doc: Option<Document<&'a str>>,
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Self {
        Self { text, doc: Document::parse(text).ok() }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, col)
    }

    /// Span of the value at `path`, or of the nearest ancestor that exists.
    pub fn span_of(&self, path: &KeyPath) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut item: &Item = doc.as_item();
        let mut best = None;
        for seg in &path.0 {
            let next = match seg {
                Seg::Key(k) => {
                    let tl = item.as_table_like()?;
                    let (key, value) = tl.get_key_value(k)?;
                    // Point at the key itself when the value has no span (tables).
                    best = value.span().or_else(|| key.span()).or(best);
                    value
                }
                Seg::Index(i) => {
                    let next = if let Some(aot) = item.as_array_of_tables() {
                        aot.get(*i).map(|t| (t.span(), None))
                    } else {
                        item.as_array().and_then(|a| a.get(*i)).map(|v| (v.span(), Some(v)))
                    };
                    match next {
                        Some((span, _)) => {
                            best = span.or(best);
                            // Re-enter through the generic Item index for nested lookups.
                            item.get(*i)?
                        }
                        None => return best,
                    }
                }
            };
            item = next;
        }
        best
    }

    /// Span of the last key of `path` itself (for "unknown key" errors), else of its value.
    pub fn key_span_of(&self, path: &KeyPath) -> Option<Range<usize>> {
        if let (Some(Seg::Key(k)), Some(doc)) = (path.0.last(), self.doc.as_ref()) {
            let parent = KeyPath(path.0[..path.0.len() - 1].to_vec());
            let mut item: &Item = doc.as_item();
            for seg in &parent.0 {
                item = match seg {
                    Seg::Key(k) => item.as_table_like().and_then(|t| t.get(k))?,
                    Seg::Index(i) => item.get(*i)?,
                };
            }
            if let Some(span) = item.as_table_like().and_then(|t| t.key(k)).and_then(|k| k.span()) {
                return Some(span);
            }
        }
        self.span_of(path)
    }

    /// The deepest key path whose key or value covers `offset` (to name the key of a parse error).
    pub fn key_at(&self, offset: usize) -> KeyPath {
        let mut path = KeyPath::default();
        if let Some(doc) = &self.doc {
            descend(doc.as_item(), offset, &mut path);
        }
        path
    }

    pub fn diagnostic(&self, file: &std::path::Path, path: &KeyPath, msg: String) -> Diagnostic {
        self.diagnostic_with(file, path, msg, self.span_of(path))
    }

    /// A diagnostic placed on the key itself rather than its value.
    pub fn key_diagnostic(
        &self,
        file: &std::path::Path,
        path: &KeyPath,
        msg: String,
    ) -> Diagnostic {
        self.diagnostic_with(file, path, msg, self.key_span_of(path))
    }

    fn diagnostic_with(
        &self,
        file: &std::path::Path,
        path: &KeyPath,
        msg: String,
        span: Option<Range<usize>>,
    ) -> Diagnostic {
        let (line, column) = span.map_or((0, 0), |s| self.line_col(s.start));
        Diagnostic { file: file.to_owned(), line, column, key: path.to_string(), message: msg }
    }
}

fn covers(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

fn descend(item: &Item, offset: usize, path: &mut KeyPath) {
    if let Some(tl) = item.as_table_like() {
        for (k, v) in tl.iter() {
            let key_span = tl.key(k).and_then(|key| key.span());
            let inside_value = covers(v.span(), offset);
            if covers(key_span, offset) || inside_value || contains_offset(v, offset) {
                path.0.push(Seg::Key(k.to_owned()));
                descend(v, offset, path);
                return;
            }
        }
    } else if let Some(aot) = item.as_array_of_tables() {
        for (i, t) in aot.iter().enumerate() {
            if covers(t.span(), offset) || table_contains(t, offset) {
                path.0.push(Seg::Index(i));
                descend(&Item::Table(t.clone()), offset, path);
                return;
            }
        }
    }
}

fn table_contains(t: &toml_edit::Table, offset: usize) -> bool {
    t.iter()
        .any(|(k, v)| covers(t.key(k).and_then(|x| x.span()), offset) || contains_offset(v, offset))
}

fn contains_offset(item: &Item, offset: usize) -> bool {
    if covers(item.span(), offset) {
        return true;
    }
    match item {
        Item::Table(t) => table_contains(t, offset),
        Item::ArrayOfTables(a) => {
            a.iter().any(|t| covers(t.span(), offset) || table_contains(t, offset))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_array_of_tables_value() {
        let text = "[balancer.a]\nlbmethod = \"byrequests\"\n\n[[balancer.a.member]]\nurl = \"x\"\n\n[[balancer.a.member]]\nurl = \"y\"\nloadfactor = 500\n";
        let loc = Locator::new(text);
        let p =
            KeyPath::default().key("balancer").key("a").key("member").index(1).key("loadfactor");
        let span = loc.span_of(&p).unwrap();
        assert_eq!(loc.line_col(span.start), (9, 14));
        assert_eq!(p.to_string(), "balancer.a.member[1].loadfactor");
    }

    #[test]
    fn names_the_key_under_an_offset() {
        let text = "[[listener]]\nname = \"w\"\nbogus = 1\n";
        let loc = Locator::new(text);
        let off = text.find("bogus").unwrap();
        assert_eq!(loc.key_at(off).to_string(), "listener[0].bogus");
    }
}
