//! `${VAR}` in compose files, as compose does it: from the environment, else from the `.env`
//! file beside the compose file. `$$` is a literal `$`.
//!
//! `${VAR}` and `$VAR`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset),
//! `${VAR:?message}` and `${VAR?message}` (an error), `${VAR:+other}` and `${VAR+other}` (set);
//! defaults may hold interpolations themselves.

use std::collections::BTreeMap;

/// Where variables come from: the environment first, then the `.env` file.
pub(super) struct Variables<'a> {
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) dotenv: BTreeMap<String, String>,
}

impl Variables<'_> {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.env)(name).or_else(|| self.dotenv.get(name).cloned())
    }
}

/// What interpolating a value found wrong: an error (`${VAR:?message}`, bad syntax), or the
/// names of variables that were not set and became empty (compose warns about those).
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub(super) unset: Vec<String>,
}

/// `text` with every interpolation replaced.
pub(super) fn interpolate(
    text: &str,
    vars: &Variables<'_>,
    outcome: &mut Outcome,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = closing_brace(r).ok_or_else(|| format!("`${{{r}` has no closing `}}`"))?;
            out.push_str(&braced(&r[..end], vars, outcome)?);
            rest = &r[end + 1..];
        } else {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if len == 0 {
                out.push('$');
            } else {
                out.push_str(&lookup(&rest[..len], vars, outcome));
                rest = &rest[len..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The end of `${…}`, nested braces counted.
fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn lookup(name: &str, vars: &Variables<'_>, outcome: &mut Outcome) -> String {
    vars.get(name).unwrap_or_else(|| {
        outcome.unset.push(name.to_string());
        String::new()
    })
}

fn braced(inner: &str, vars: &Variables<'_>, outcome: &mut Outcome) -> Result<String, String> {
    let name_len = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, op) = inner.split_at(name_len);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("`${{{inner}}}` does not name a variable"));
    }
    let value = vars.get(name);
    let (colon, op) = match op.strip_prefix(':') {
        Some(o) => (true, o),
        None => (false, op),
    };
    // With `:`, an empty value counts as unset.
    let set = value.as_deref().is_some_and(|v| !colon || !v.is_empty());
    let Some(kind) = op.chars().next() else {
        if colon {
            return Err(format!(
                "`${{{inner}}}` ends after `:`; write `${{{name}:-default}}`"
            ));
        }
        return Ok(lookup(name, vars, outcome));
    };
    let word = &op[kind.len_utf8()..];
    match kind {
        '-' if set => Ok(value.unwrap_or_default()),
        '-' => interpolate(word, vars, outcome),
        '+' if set => interpolate(word, vars, outcome),
        '+' => Ok(String::new()),
        '?' if set => Ok(value.unwrap_or_default()),
        '?' => Err(if word.is_empty() {
            format!("the variable `{name}` is required and not set")
        } else {
            format!("the variable `{name}` is required: {word}")
        }),
        _ => Err(format!(
            "`${{{inner}}}` is not an interpolation compose knows; use `${{{name}}}`, `${{{name}:-default}}` or `${{{name}:?message}}`"
        )),
    }
}

/// The `KEY=VALUE` lines of an `.env` (or `env_file`) file: `#` comments and blank lines
/// skipped, `export ` allowed, values in single quotes taken as written and in double quotes
/// with `\n` escapes. A line that is not an assignment is an error naming its number.
pub(super) fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            return Err((i + 1, format!("`{line}` is not `KEY=VALUE`")));
        };
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err((i + 1, format!("`{key}` is not a variable name")));
        }
        let value = value.trim();
        let value = if let Some(v) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            v.to_string()
        } else if let Some(v) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            v.replace("\\n", "\n").replace("\\\"", "\"")
        } else {
            // An unquoted value ends at ` #`.
            value
                .split(" #")
                .next()
                .unwrap_or("")
                .trim_end()
                .to_string()
        };
        out.push((key.to_string(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<(String, Vec<String>), String> {
        let env = |n: &str| match n {
            "SET" => Some("value".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let vars = Variables {
            env: &env,
            dotenv: BTreeMap::from([("FROM_FILE".to_string(), "file".to_string())]),
        };
        let mut outcome = Outcome::default();
        interpolate(text, &vars, &mut outcome).map(|s| (s, outcome.unset))
    }

    #[test]
    fn values_defaults_and_errors_follow_compose() {
        assert_eq!(run("a ${SET} $SET b").unwrap().0, "a value value b");
        assert_eq!(run("${FROM_FILE}").unwrap().0, "file");
        assert_eq!(run("${NOPE:-d}|${EMPTY:-d}|${EMPTY-d}").unwrap().0, "d|d|");
        assert_eq!(run("${NOPE:-${SET}}").unwrap().0, "value");
        assert_eq!(run("${SET:+alt}|${NOPE:+alt}").unwrap().0, "alt|");
        assert_eq!(run("$$SET costs $$5").unwrap().0, "$SET costs $5");
        assert_eq!(run("${NOPE}x").unwrap(), ("x".into(), vec!["NOPE".into()]));
        assert!(run("${NOPE:?give it}")
            .unwrap_err()
            .contains("required: give it"));
        assert!(run("${SET").unwrap_err().contains("no closing"));
        assert!(run("${SET/x/y}")
            .unwrap_err()
            .contains("not an interpolation"));
    }

    #[test]
    fn env_files_read_like_compose() {
        let vars = parse_env_file(
            "# comment\nexport A=1\nB='two words'\nC=\"line\\nnext\"\nD=plain # note\n\nE=\n",
        )
        .unwrap();
        assert_eq!(
            vars,
            [
                ("A", "1"),
                ("B", "two words"),
                ("C", "line\nnext"),
                ("D", "plain"),
                ("E", "")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(parse_env_file("A=1\noops\n").unwrap_err().0, 2);
    }
}
