//! Endpoint templates in manifest values: `"{{ postgres.url.orders }}"`, `"{{ self.bind.http }}"`.
//!
//! A reference is `{{ <service>.<field> }}` where `<service>` is a dependency or `self`, and
//! `<field>` is one of:
//!
//! | field | value |
//! |---|---|
//! | `host` | host name the owner reaches the service at (`127.0.0.1`, or its name on a container network) |
//! | `port`, `port.<name>` | its primary or named port |
//! | `address`, `address.<name>` | `host:port` |
//! | `bind`, `bind.<name>` | the address the service itself should listen on (`self` only makes sense) |
//! | `user`, `password`, `database` | its credentials (generated per run unless fixed) |
//! | `url`, `url.<database>` | a connection URL: `postgres://…`, `redis://…`, `amqp://…`, `http://…` |
//!
//! Values are resolved per backend at the moment the owner starts, so the same manifest is right
//! whether Postgres runs as a local process or as a container.

use std::fmt;

use crate::model::endpoint::Endpoint;

/// A field of an endpoint a template can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// Host name.
    Host,
    /// Port, primary or named.
    Port(Option<String>),
    /// Listen address (`0.0.0.0:8080` in a container, `127.0.0.1:<port>` natively).
    Bind(Option<String>),
    /// `host:port` of the primary port.
    Address,
    /// User name.
    User,
    /// Password.
    Password,
    /// Default database.
    Database,
    /// Connection URL, optionally for another database.
    Url(Option<String>),
}

impl Field {
    /// The value of this field of `endpoint`.
    pub fn value(&self, endpoint: &Endpoint) -> Result<String, String> {
        let missing = |what: &str| format!("the service has no {what}");
        match self {
            Field::Host => Ok(endpoint.host.clone()),
            Field::Port(name) => endpoint.port(name.as_deref()).map(|p| p.to_string()),
            Field::Bind(name) => Ok(format!(
                "{}:{}",
                endpoint.bind_host,
                endpoint.port(name.as_deref())?
            )),
            Field::Address => endpoint.address(),
            Field::User => endpoint.user.clone().ok_or_else(|| missing("user")),
            Field::Password => endpoint.password.clone().ok_or_else(|| missing("password")),
            Field::Database => endpoint.database.clone().ok_or_else(|| missing("database")),
            Field::Url(db) => endpoint.url(db.as_deref()),
        }
    }
}

/// One `{{ service.field }}` in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The service named, or `self`.
    pub service: String,
    /// The field wanted.
    pub field: Field,
    /// The reference as written, braces included.
    pub text: String,
    /// Byte offset of the reference in the template.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Ref(Reference),
}

/// A string with endpoint references, parsed once at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Byte offset of the problem in the template.
    pub offset: usize,
    /// Length of the offending text.
    pub len: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: String,
}

impl Template {
    /// Parses a template.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = 0;
        while let Some(open) = text[rest..].find("{{").map(|i| i + rest) {
            if open > rest {
                parts.push(Part::Literal(text[rest..open].to_string()));
            }
            let Some(close) = text[open..].find("}}").map(|i| i + open) else {
                return Err(TemplateError {
                    offset: open,
                    len: text.len() - open,
                    message: format!("unterminated reference in `{text}`"),
                    help: "close it with `}}`, e.g. `{{ postgres.url }}`".into(),
                });
            };
            let inner = text[open + 2..close].trim();
            let whole = &text[open..close + 2];
            parts.push(Part::Ref(parse_reference(inner, whole, open)?));
            rest = close + 2;
        }
        if rest < text.len() {
            parts.push(Part::Literal(text[rest..].to_string()));
        }
        Ok(Template { parts })
    }

    /// The text itself when it holds no references.
    pub fn literal(&self) -> Option<String> {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(s) => Some(s.as_str()),
                Part::Ref(_) => None,
            })
            .collect()
    }

    /// The references in this template.
    pub fn references(&self) -> impl Iterator<Item = &Reference> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref(r) => Some(r),
            Part::Literal(_) => None,
        })
    }

    /// Substitutes every reference; `lookup` gives the endpoint of a service (or `self`).
    pub fn render<'a>(
        &self,
        lookup: impl Fn(&str) -> Option<&'a Endpoint>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Ref(r) => {
                    let endpoint = lookup(&r.service).ok_or_else(|| {
                        format!(
                            "`{}`: the endpoint of `{}` is not known yet",
                            r.text, r.service
                        )
                    })?;
                    out.push_str(
                        &r.field
                            .value(endpoint)
                            .map_err(|e| format!("`{}`: {e}", r.text))?,
                    );
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(s) => f.write_str(s)?,
                Part::Ref(r) => f.write_str(&r.text)?,
            }
        }
        Ok(())
    }
}

fn parse_reference(inner: &str, whole: &str, offset: usize) -> Result<Reference, TemplateError> {
    let err = |message: String, help: &str| TemplateError {
        offset,
        len: whole.len(),
        message,
        help: help.to_string(),
    };
    const FIELDS: &str = "host, port, port.<name>, address, bind, bind.<name>, user, password, database, url, url.<database>";
    let mut pieces = inner.split('.');
    let service = pieces.next().unwrap_or("").trim();
    let field = pieces.next().map(str::trim);
    let arg = pieces.next().map(|s| s.trim().to_string());
    if service.is_empty() || field.is_none() || pieces.next().is_some() {
        return Err(err(
            format!("`{whole}` is not a reference"),
            "write `{{ <service>.<field> }}`, e.g. `{{ postgres.url }}` or `{{ self.port.http }}`",
        ));
    }
    let field = match (field.unwrap_or(""), arg) {
        ("host", None) => Field::Host,
        ("port", a) => Field::Port(a),
        ("bind", a) => Field::Bind(a),
        ("address", None) => Field::Address,
        ("user", None) => Field::User,
        ("password", None) => Field::Password,
        ("database", None) => Field::Database,
        ("url", a) => Field::Url(a),
        (other, _) => {
            let help = match crate::model::names::closest(
                other,
                [
                    "host", "port", "bind", "address", "user", "password", "database", "url",
                ],
            ) {
                Some(s) => format!("did you mean `{s}`? the fields are: {FIELDS}"),
                None => format!("the fields are: {FIELDS}"),
            };
            return Err(TemplateError {
                offset,
                len: whole.len(),
                message: format!("`{whole}`: unknown field `{other}`"),
                help,
            });
        }
    };
    Ok(Reference {
        service: service.to_string(),
        field,
        text: whole.to_string(),
        offset,
        len: whole.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_literals_and_references() {
        let t =
            Template::parse("postgres://x/{{ postgres.database }}?a={{self.port.http}}").unwrap();
        let refs: Vec<_> = t.references().collect();
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].service, "postgres");
        assert_eq!(refs[0].field, Field::Database);
        assert_eq!(refs[1].field, Field::Port(Some("http".into())));
        assert_eq!(
            t.to_string(),
            "postgres://x/{{ postgres.database }}?a={{self.port.http}}"
        );
    }

    #[test]
    fn rejects_unterminated_and_unknown() {
        assert!(Template::parse("{{ postgres.url")
            .unwrap_err()
            .message
            .contains("unterminated"));
        let e = Template::parse("{{ postgres.uri }}").unwrap_err();
        assert!(e.help.contains("did you mean `url`"), "{}", e.help);
        assert!(Template::parse("{{ postgres }}").is_err());
    }

    #[test]
    fn fields_are_read_from_the_endpoint() {
        let pg = crate::model::endpoint::tests::pg();
        assert_eq!(Field::Bind(None).value(&pg).unwrap(), "127.0.0.1:5433");
        assert!(Field::Port(Some("http".into())).value(&pg).is_err());
    }
}
