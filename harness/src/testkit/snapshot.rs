//! Response snapshots with redaction presets, on insta.
//!
//! Volatile values are replaced by stable placeholders before a value is compared, so a
//! snapshot changes only when a response really does:
//!
//! | value | placeholder |
//! |---|---|
//! | UUIDs | `[uuid-1]`, `[uuid-2]`, … numbered by first appearance (equal ids stay equal) |
//! | RFC 3339 timestamps | `[timestamp]` |
//! | 32-hex trace ids, W3C `traceparent` values | `[trace-id]`, `[traceparent]` |
//! | integers under keys named `id` or ending in `_id` | `[id]` |
//!
//! Object keys are sorted. Snapshots are named explicitly (insta's automatic counters depend
//! on the order trials run in), written under the directory given to [`Snapshots::new`].
//! With `CI` set or `INSTA_UPDATE=no` nothing is written: a changed response fails with a
//! diff. Locally `cargo insta review` accepts or rejects the new snapshots.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

/// Replaces volatile values with placeholders and sorts object keys.
pub fn redact(value: &Value) -> Value {
    let mut uuids = BTreeMap::new();
    redact_in(value, None, &mut uuids)
}

fn redact_in(value: &Value, key: Option<&str>, uuids: &mut BTreeMap<String, usize>) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let mut out = Map::new();
            for (k, v) in entries {
                out.insert(k.clone(), redact_in(v, Some(k), uuids));
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| redact_in(v, key, uuids)).collect())
        }
        Value::String(s) => Value::String(redact_str(s, uuids)),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            let is_id = key.is_some_and(|k| k == "id" || k.ends_with("_id"));
            if is_id {
                Value::String("[id]".into())
            } else {
                value.clone()
            }
        }
        other => other.clone(),
    }
}

fn redact_str(s: &str, uuids: &mut BTreeMap<String, usize>) -> String {
    if is_uuid(s) {
        let next = uuids.len() + 1;
        let n = *uuids.entry(s.to_ascii_lowercase()).or_insert(next);
        return format!("[uuid-{n}]");
    }
    if is_timestamp(s) {
        return "[timestamp]".into();
    }
    if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return "[trace-id]".into();
    }
    let parts: Vec<&str> = s.split('-').collect();
    if parts.len() == 4 && parts[0] == "00" && parts[1].len() == 32 && parts[2].len() == 16 {
        return "[traceparent]".into();
    }
    // UUIDs inside longer text (messages such as "order 1f0c… was paid").
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = find_uuid(rest) {
        out.push_str(&rest[..pos]);
        out.push_str(&redact_str(&rest[pos..pos + 36], uuids));
        rest = &rest[pos + 36..];
    }
    out.push_str(rest);
    out
}

fn find_uuid(s: &str) -> Option<usize> {
    (0..s.len().saturating_sub(35))
        .find(|&i| s.is_char_boundary(i) && s.get(i..i + 36).is_some_and(is_uuid))
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn is_timestamp(s: &str) -> bool {
    // 2026-11-22T01:02:03[.fff][Z|+hh:mm]
    let b = s.as_bytes();
    b.len() >= 19
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b' ')
        && b[13] == b':'
        && b[16] == b':'
}

/// Snapshot assertions for one suite, stored in one directory.
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
}

impl Snapshots {
    /// Snapshots stored in `dir` (absolute, e.g. `concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots")`).
    pub fn new(dir: impl Into<PathBuf>) -> Snapshots {
        Snapshots { dir: dir.into() }
    }

    /// A snapshot name from a trial name and a label: `journeys::happy_path` + `order` →
    /// `journeys__happy_path__order`.
    pub fn name(trial: &str, label: &str) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        };
        format!("{}__{}", clean(&trial.replace("::", "__")), clean(label))
    }

    /// Asserts that `value`, redacted, matches the snapshot `name`; panics with a diff if not.
    pub fn assert_json(&self, name: &str, value: &Value) {
        let redacted = redact(value);
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path(&self.dir);
        settings.set_prepend_module_to_snapshot(false);
        settings.set_omit_expression(true);
        settings.bind(|| {
            insta::assert_json_snapshot!(name, redacted);
        });
    }

    /// Like [`Snapshots::assert_json`], but returns the mismatch as an error instead of panicking,
    /// and prints nothing: insta's diff is in the error.
    pub fn check_json(&self, name: &str, value: &Value) -> anyhow::Result<()> {
        let this = self.clone();
        let (owned_name, owned_value) = (name.to_string(), value.clone());
        // insta prints its diff to stdout and panics: keep both for the error, so a trial that
        // expects a mismatch prints nothing. The panic report is dropped: its message is the
        // payload, and its backtrace only shows insta.
        let ((outcome, printed), _panic_report) = crate::testkit::capture::output_of(|| {
            crate::testkit::capture::stdout_of(true, || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    this.assert_json(&owned_name, &owned_value)
                }))
            })
        });
        outcome.map_err(|panic| {
            let mut message = crate::testkit::capture::payload_text(panic.as_ref());
            let differences = self
                .stored(name)
                .map(|stored| diff(&stored, &redact(value), "$"))
                .unwrap_or_default();
            if !differences.is_empty() {
                message.push_str(&format!("; differences:\n  {}", differences.join("\n  ")));
            }
            if !printed.trim().is_empty() {
                message.push_str(&format!("\n{}", printed.trim_end()));
            }
            anyhow::anyhow!("{message}")
        })
    }

    /// The value stored in snapshot `name`, if it exists.
    pub fn stored(&self, name: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.dir.join(format!("{name}.snap"))).ok()?;
        // The header is front matter between the first two `---` lines.
        let body = text.splitn(3, "---\n").nth(2)?;
        serde_json::from_str(body).ok()
    }
}

/// Paths where two JSON values differ, with both sides: `$.status: "PAID" -> "DECLINED"`.
pub fn diff(expected: &Value, actual: &Value, path: &str) -> Vec<String> {
    match (expected, actual) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = Vec::new();
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => out.extend(diff(v, w, &format!("{path}.{k}"))),
                    None => out.push(format!("{path}.{k}: missing (expected {v})")),
                }
            }
            for (k, w) in b {
                if !a.contains_key(k) {
                    out.push(format!("{path}.{k}: unexpected (got {w})"));
                }
            }
            out
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .flat_map(|(i, (v, w))| diff(v, w, &format!("{path}[{i}]")))
            .collect(),
        (a, b) if a == b => Vec::new(),
        (a, b) => vec![format!("{path}: {a} -> {b}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn volatile_values_become_stable_placeholders() {
        let v = json!({
            "status": "PAID",
            "id": "9b2f0e5c-0d6a-4c39-9d8e-2a8b7f0c1d2e",
            "created_at": "2026-11-22T01:02:03.123456Z",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "payment": {"order_id": "9B2F0E5C-0D6A-4C39-9D8E-2A8B7F0C1D2E", "id": 17, "amount": 1234},
            "message": "order 11111111-2222-3333-4444-555555555555 paid",
            "items": [{"sku": "a", "quantity": 2}]
        });
        let r = redact(&v);
        assert_eq!(r["id"], "[uuid-1]");
        assert_eq!(
            r["payment"]["order_id"], "[uuid-1]",
            "the same uuid keeps its placeholder"
        );
        assert_eq!(r["message"], "order [uuid-2] paid");
        assert_eq!(r["created_at"], "[timestamp]");
        assert_eq!(r["trace_id"], "[trace-id]");
        assert_eq!(r["payment"]["id"], "[id]");
        assert_eq!(r["payment"]["amount"], 1234, "plain numbers are kept");
        assert_eq!(r["items"][0]["quantity"], 2);
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn diff_names_the_paths_that_changed() {
        let a = json!({"status": "PAID", "items": [{"sku": "a"}], "id": 1});
        let b = json!({"state": "PAID", "items": [{"sku": "b"}], "id": 1});
        assert_eq!(
            diff(&a, &b, "$"),
            vec![
                "$.items[0].sku: \"a\" -> \"b\"".to_string(),
                "$.status: missing (expected \"PAID\")".into(),
                "$.state: unexpected (got \"PAID\")".into(),
            ]
        );
    }

    #[test]
    fn names_derive_from_the_trial() {
        assert_eq!(
            Snapshots::name("journeys::happy path", "order"),
            "journeys__happy_path__order"
        );
    }
}
