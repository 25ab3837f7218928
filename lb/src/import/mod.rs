//! `lb import-apache`: an Apache httpd configuration (mod_proxy_balancer and friends) turned
//! into lb's TOML, and a report of every directive that has no lb equivalent, with its file,
//! line and why. lb's keys carry Apache's names, so this is a translation, not an
//! interpretation: what maps is mapped, what does not is said, nothing is dropped in silence.
//!
//! ```text
//! read       files, includes, Define/${VAR}, IfModule/IfDefine ─▶ one tree of directives
//! translate  server and <VirtualHost> scopes, directive by directive (reasons: why not)
//!   sections <Proxy>, <Location>, admin pages' Require, CustomLog, Set-Cookie recipes
//! assemble   scopes ─▶ listeners (one per Listen) and balancers; listeners: routes, vhosts
//!   params   BalancerMember / ProxySet / ProxyPass key=value, ProxyHCExpr, ProxyHCTemplate
//! emit       the model ─▶ TOML text (each table says where in Apache it came from)
//! ```
//! The emitted text is then validated as `lb check` would, so a translation that lb would refuse
//! is never handed over as if it were fine.
mod assemble;
mod emit;
mod glob;
mod listeners;
mod params;
mod read;
mod reasons;
mod sections;
mod translate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a directive was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    pub file: Arc<PathBuf>,
    pub line: usize,
}

impl At {
    fn syntax(&self, message: impl Into<String>) -> ImportError {
        ImportError::Syntax { file: (*self.file).clone(), line: self.line, message: message.into() }
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A directive (or a parameter of one) that was not translated, and why.
#[derive(Debug, Clone)]
pub struct Note {
    pub at: At,
    /// The directive, or `key=value` of one, as written (shortened).
    pub directive: String,
    pub why: String,
}

impl Note {
    fn of(d: &read::Directive, why: impl Into<String>) -> Note {
        let mut text = d.name.clone();
        for a in &d.args {
            text.push(' ');
            text.push_str(a);
        }
        if text.chars().count() > 72 {
            text = text.chars().take(69).collect::<String>() + "...";
        }
        Note { at: d.at.clone(), directive: text, why: why.into() }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}: {}", self.at, self.directive, self.why)
    }
}

/// Why an import produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {message}", file.display())]
    Syntax { file: PathBuf, line: usize, message: String },
    #[error("{}: includes nest too deep (an Include loop?)", path.display())]
    IncludeDepth { path: PathBuf },
}

/// The translation: lb's config text and what could not be carried over.
#[derive(Debug)]
pub struct Import {
    pub toml: String,
    pub notes: Vec<Note>,
}

/// Translate the Apache configuration whose main file is `main` (`httpd.conf`,
/// `/etc/apache2/apache2.conf`).
pub fn import_apache(main: &Path) -> Result<Import, ImportError> {
    let mut reader = read::Reader::new(main);
    let tree = reader.read(main)?;
    Ok(finish(reader, &tree, main))
}

/// Translate one file's text; its `Include`s are reported, not read (the fuzz target's entry).
pub fn import_apache_text(text: &str, name: &Path) -> Result<Import, ImportError> {
    let mut reader = read::Reader::new(name);
    let tree = reader.text(text, name)?;
    Ok(finish(reader, &tree, name))
}

fn finish(mut reader: read::Reader, tree: &[read::Directive], main: &Path) -> Import {
    let root = reader.root().to_owned();
    let mut notes = std::mem::take(&mut reader.notes);
    let model = translate::translate(tree, &root, &mut notes);
    let toml = emit::emit(&model, main);
    notes.sort_by(|a, b| (&a.at.file, a.at.line).cmp(&(&b.at.file, b.at.line)));
    Import { toml, notes }
}

#[cfg(test)]
mod tests;
