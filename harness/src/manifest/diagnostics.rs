//! What is wrong with a manifest and where: problems, their file:line:column rendering, and
//! the help texts for errors the TOML parser reports.

use std::collections::BTreeSet;
use std::fmt;

use super::raw::{SERVICE_KEYS, STACK_KEYS};
use crate::model::names::closest;

/// One thing wrong with a manifest.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Byte range in the file, when known.
    pub span: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: String,
}

impl Problem {
    pub(super) fn at(
        span: std::ops::Range<usize>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Problem {
            span: Some((span.start, span.end)),
            message: message.into(),
            help: help.into(),
        }
    }
}

/// A manifest that cannot be used, with every problem found in it.
#[derive(Debug, Clone)]
pub struct ManifestError {
    /// The manifest's path as given.
    pub file: String,
    /// Everything wrong, in file order.
    pub problems: Vec<Problem>,
    /// The manifest's text, to quote the lines problems point at.
    pub(super) source: String,
}

impl std::error::Error for ManifestError {}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "error: {}", p.message)?;
            match p.span {
                Some((start, end)) => {
                    let (line, col) = line_col(&self.source, start);
                    writeln!(f, "  --> {}:{}:{}", self.file, line, col)?;
                    let text = self.source.lines().nth(line - 1).unwrap_or("");
                    let width = line.to_string().len();
                    let span_len = end
                        .saturating_sub(start)
                        .clamp(1, text.len().saturating_sub(col - 1).max(1));
                    writeln!(f, "{:width$} |", "")?;
                    writeln!(f, "{line} | {text}")?;
                    writeln!(
                        f,
                        "{:width$} | {}{}",
                        "",
                        " ".repeat(col - 1),
                        "^".repeat(span_len)
                    )?;
                }
                None => writeln!(f, "  --> {}", self.file)?,
            }
            write!(f, "  = help: {}", p.help)?;
        }
        Ok(())
    }
}

/// A warning on one line: `what (file:line:column); help`.
pub(super) fn one_line(file: &str, source: &str, p: &Problem) -> String {
    match p.span {
        Some((start, _)) => {
            let (line, col) = line_col(source, start);
            format!("{} ({file}:{line}:{col}); {}", p.message, p.help)
        }
        None => format!("{} ({file}); {}", p.message, p.help),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

/// The problem a TOML syntax or shape error stands for, with help for the usual mistakes.
pub(super) fn toml_problem(e: &toml::de::Error) -> Problem {
    let message = e.message().trim().to_string();
    let help = if let Some(field) = between(&message, "unknown field `", "`") {
        match closest(
            field,
            SERVICE_KEYS
                .iter()
                .copied()
                .chain(STACK_KEYS.iter().copied()),
        ) {
            Some(s) => format!("did you mean `{s}`? remove or rename the key"),
            None => "remove the key; the manifest format is described in the README".into(),
        }
    } else if message.contains("unknown variant `service_healthy`") {
        "did you mean \"ready\"? docker compose's `service_healthy` is the harness's `ready`: the dependency's probe passed".into()
    } else if message.contains("unknown variant `service_started`") {
        "did you mean \"started\"? docker compose's `service_started` is the harness's `started`: the dependency's process or container is running".into()
    } else if message.contains("unknown variant") {
        "use one of the values listed above".into()
    } else if message.contains("duplicate key") {
        "each service (and each key) may appear only once: rename or merge the duplicate".into()
    } else if message.contains("expected a list of service names") {
        "write `depends-on = [\"postgres\"]` or `depends-on = { postgres = \"ready\" }`".into()
    } else if message.contains("missing field `kind`") {
        "add `kind = \"postgres\" | \"redis\" | \"rabbitmq\" | \"service\"` to the service".into()
    } else if message.contains("invalid type") {
        "check the value's type against the manifest format in the README".into()
    } else {
        "fix the TOML syntax at this position".into()
    };
    Problem {
        span: e.span().map(|s| (s.start, s.end)),
        message,
        help,
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

/// Names for a help text, comma-separated; `(none)` when there are none.
pub(super) fn join<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.into_iter().collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

/// Help for `name`, which is not one of the services `names`: the service it is closest to,
/// or `fallback` followed by the list.
pub(super) fn unknown_service_help(name: &str, names: &BTreeSet<&str>, fallback: &str) -> String {
    let list = join(names.iter().copied());
    match closest(name, names.iter().copied()) {
        Some(s) => format!("did you mean `{s}`? the services are: {list}"),
        None => format!("{fallback}: {list}"),
    }
}
