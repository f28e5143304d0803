//! A verifier's mismatch as text: each mismatch with its path, expected and actual value, then
//! the expected and actual bodies.

use std::fmt::Write as _;

use pact_models::interaction::Interaction;
use pact_verifier::MismatchResult;
use serde_json::{Map, Value};

/// A mismatch result as text: each mismatch with its path, expected and actual value, then the
/// expected and actual bodies.
pub(crate) fn render_mismatch(result: &MismatchResult) -> String {
    match result {
        MismatchResult::Error(e, _) => format!("  error: {e}"),
        MismatchResult::Mismatches {
            mismatches,
            expected,
            actual,
            ..
        } => {
            let mut out = String::new();
            for (i, m) in mismatches.iter().enumerate() {
                let j = m.to_json();
                let kind = j["type"].as_str().unwrap_or("Mismatch");
                let at = ["path", "key", "parameter"]
                    .iter()
                    .find_map(|k| j[*k].as_str())
                    .map(|p| format!(" at {p}"))
                    .unwrap_or_default();
                let _ = write!(out, "  {}) {kind}{at}: {}", i + 1, m.description());
                for (label, key) in [("expected", "expected"), ("actual", "actual")] {
                    match &j[key] {
                        Value::Null => {}
                        Value::String(s) if s.is_empty() => {}
                        v => {
                            let v = v
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string());
                            let _ = write!(
                                out,
                                "\n       {label:<8}: {}",
                                v.replace('\n', "\n                  ")
                            );
                        }
                    }
                }
                out.push('\n');
            }
            let (e, a) = (describe(expected.as_ref()), describe(actual.as_ref()));
            let _ = write!(
                out,
                "  expected {}\n  actual   {}",
                e.replace('\n', "\n  "),
                a.replace('\n', "\n  ")
            );
            out
        }
    }
}

/// The part of an interaction that is compared: a response or a message.
fn describe(i: &dyn Interaction) -> String {
    if let Some(http) = i.as_v4_http() {
        let r = &http.response;
        let body = pretty(&r.body.display_string());
        format!(
            "response: status {}, body:\n  {}",
            r.status,
            body.replace('\n', "\n  ")
        )
    } else if let Some(m) = i.as_v4_async_message() {
        let body = pretty(&m.contents.contents.display_string());
        let metadata: Map<String, Value> = m
            .contents
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        format!(
            "message: metadata {}, body:\n  {}",
            Value::Object(metadata),
            body.replace('\n', "\n  ")
        )
    } else {
        pretty(&i.contents_for_verification().display_string())
    }
}

fn pretty(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string())
}
