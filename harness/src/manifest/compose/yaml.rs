//! A compose file's YAML as a tree whose every node knows its byte range in the file, so each
//! problem found later points at its line. Parsed by saphyr (YAML 1.2, maintained, positions on
//! every node).

use std::ops::Range;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use super::super::diagnostics::Problem;

/// One node of the document.
#[derive(Debug, Clone)]
pub(super) struct Node {
    /// Where it is, in bytes.
    pub(super) span: Range<usize>,
    /// What it holds.
    pub(super) value: Value,
}

/// What a node holds. Scalars other than strings keep their text as written.
#[derive(Debug, Clone)]
pub(super) enum Value {
    Null,
    Str(String),
    /// A number or boolean, as written (`8080`, `1.5`, `true`).
    Plain(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A scalar's text; `None` for null, lists and mappings.
    pub(super) fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) | Value::Plain(s) => Some(s),
            _ => None,
        }
    }

    /// What kind of value it is, for messages.
    pub(super) fn describe(&self) -> &'static str {
        match &self.value {
            Value::Null => "empty",
            Value::Str(_) | Value::Plain(_) => "a single value",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The value of `key` in a mapping.
    pub(super) fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.text() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// The document of a compose file; `Ok(None)` when it is empty.
pub(super) fn load(source: &str) -> Result<Option<Node>, Problem> {
    let offsets = ByteOffsets::new(source);
    let documents = MarkedYaml::load_from_str(source).map_err(|e| {
        let at = offsets.byte(e.marker().index());
        Problem::at(
            at..at + 1,
            format!("this is not valid YAML: {}", e.info()),
            "fix the YAML syntax at this position (indentation, a missing `:` or quote)",
        )
    })?;
    match documents.as_slice() {
        [] => Ok(None),
        [doc] => convert(doc, &offsets).map(Some),
        [_, second, ..] => {
            let at = offsets.byte(second.span.start.index());
            Err(Problem::at(
                at..at + 1,
                "a compose file holds one YAML document, and this is a second",
                "remove the `---` and what follows, or merge it into the first document",
            ))
        }
    }
}

fn convert(node: &MarkedYaml<'_>, offsets: &ByteOffsets) -> Result<Node, Problem> {
    let start = offsets.byte(node.span.start.index());
    let end = offsets.byte(node.span.end.index()).max(start + 1);
    let span = start..end;
    let value = match &node.data {
        YamlData::Value(scalar) => match scalar {
            Scalar::Null => Value::Null,
            Scalar::String(s) => Value::Str(s.to_string()),
            Scalar::Boolean(b) => Value::Plain(b.to_string()),
            Scalar::Integer(i) => Value::Plain(i.to_string()),
            Scalar::FloatingPoint(f) => Value::Plain(
                offsets
                    .source
                    .get(span.clone())
                    .map(|t| t.trim().to_string())
                    .unwrap_or_else(|| f.to_string()),
            ),
        },
        YamlData::Representation(text, _, _) => Value::Str(text.to_string()),
        YamlData::Sequence(items) => Value::Seq(
            items
                .iter()
                .map(|i| convert(i, offsets))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let key = convert(k, offsets)?;
                if key.text() == Some("<<") {
                    return Err(Problem::at(
                        key.span,
                        "YAML merge keys (`<<: *name`) are not supported",
                        "write the merged keys out in each service (or use `x-harness` for what differs)",
                    ));
                }
                out.push((key, convert(v, offsets)?));
            }
            Value::Map(out)
        }
        YamlData::Alias(_) => {
            return Err(Problem::at(
                span,
                "YAML aliases (`*name`) are not supported",
                "write the value out where the alias is",
            ))
        }
        YamlData::Tagged(tag, _) => {
            return Err(Problem::at(
                span,
                format!("the YAML tag `{tag}` is not supported"),
                "remove the tag: compose values are plain strings, numbers, lists and mappings",
            ))
        }
        YamlData::BadValue => {
            return Err(Problem::at(
                span,
                "this value cannot be read",
                "quote it as a string",
            ))
        }
    };
    Ok(Node { span, value })
}

/// Character positions (what the parser reports) to byte offsets (what problems hold).
struct ByteOffsets<'a> {
    source: &'a str,
    /// Byte offset of every character, when the text is not all ASCII.
    bytes: Option<Vec<usize>>,
}

impl<'a> ByteOffsets<'a> {
    fn new(source: &'a str) -> Self {
        let bytes = (!source.is_ascii()).then(|| source.char_indices().map(|(i, _)| i).collect());
        ByteOffsets { source, bytes }
    }

    fn byte(&self, char_index: usize) -> usize {
        match &self.bytes {
            None => char_index.min(self.source.len()),
            Some(b) => b.get(char_index).copied().unwrap_or(self.source.len()),
        }
    }
}
