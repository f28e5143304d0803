//! Templates in `env`, `args` and `command`: each parses, and names only `self` or a
//! dependency, by fields that service has.

use std::ops::Range;

use toml::Spanned;

use super::super::diagnostics::{join, Problem};
use super::super::raw::RawManifest;
use super::super::Service;
use crate::model::names::closest;
use crate::model::template::{Field, Reference, Template};

/// The template `value` holds; a syntax error goes to `problems`, at its place in the file.
pub(super) fn parse_template(
    value: &Spanned<String>,
    problems: &mut Vec<Problem>,
) -> Option<Template> {
    match Template::parse(value.get_ref()) {
        Ok(t) => Some(t),
        Err(e) => {
            // The span covers the quoted string; point inside it.
            let start = value.span().start + 1 + e.offset;
            problems.push(Problem::at(start..start + e.len.max(1), e.message, e.help));
            None
        }
    }
}

/// Templates may name `self` or a service the owner depends on: the only endpoints known
/// when it starts.
pub(super) fn check_templates(
    raw: &RawManifest,
    services: &[Service],
    problems: &mut Vec<Problem>,
) {
    for service in services {
        let Some(body) = raw.services.get(service.name.as_str()) else {
            continue;
        };
        let body = body.get_ref();
        let spanned: Vec<&Spanned<String>> = body
            .env
            .values()
            .chain(body.args.iter())
            .chain(body.command.iter().flat_map(|c| c.get_ref().iter()))
            .collect();
        for value in spanned {
            let Ok(template) = Template::parse(value.get_ref()) else {
                continue;
            };
            for r in template.references() {
                let at = value.span().start + 1 + r.offset;
                check_reference(service, services, r, at..at + r.len, problems);
            }
        }
    }
}

/// One reference of a template of `service`, found at `span` in the file.
fn check_reference(
    service: &Service,
    services: &[Service],
    r: &Reference,
    span: Range<usize>,
    problems: &mut Vec<Problem>,
) {
    let target = if r.service == "self" {
        Some(service)
    } else {
        services.iter().find(|s| s.name == r.service)
    };
    let Some(target) = target else {
        let names = services.iter().map(|s| s.name.as_str());
        problems.push(Problem::at(
            span,
            format!(
                "`{}` refers to service `{}`, which is not defined",
                r.text, r.service
            ),
            match closest(&r.service, names.clone()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("use `self` or one of: {}", join(names)),
            },
        ));
        return;
    };
    if r.service != "self" && !service.depends_on.iter().any(|d| d.service == r.service) {
        problems.push(Problem::at(
            span.clone(),
            format!(
                "`{}` refers to `{}`, but `{}` does not depend on it",
                r.text, r.service, service.name
            ),
            format!(
                "add `{}` to the `depends-on` of `{}` so its endpoint is known when `{}` starts",
                r.service, service.name, service.name
            ),
        ));
    }
    let server = target.kind.server().filter(|s| s.holds_databases());
    if let (Field::Url(Some(db)), Some(server)) = (&r.field, server) {
        // The kind's default when the manifest names none (the "random" parts are unused).
        let default = server
            .credentials(&target.credentials, &|_| String::new())
            .database
            .unwrap_or_default();
        let created: Vec<&str> = std::iter::once(default.as_str())
            .chain(target.databases.iter().map(String::as_str))
            .collect();
        // The server's own maintenance database (`postgres`) is always there.
        if !created.contains(&db.as_str()) && db != server.default_path() {
            problems.push(Problem::at(
                span.clone(),
                format!(
                    "`{}`: service `{}` does not create a database `{db}`",
                    r.text, target.name
                ),
                format!(
                    "add `\"{db}\"` to `databases` of `{}`, or use one it creates: {}",
                    target.name,
                    join(created.iter().copied())
                ),
            ));
        }
    }
    if let Field::Port(Some(port)) | Field::Bind(Some(port)) = &r.field {
        if !target.ports.contains_key(port) {
            problems.push(Problem::at(
                span.clone(),
                format!(
                    "`{}`: service `{}` has no port named `{port}`",
                    r.text, target.name
                ),
                format!(
                    "declare it under `ports` or use one of: {}",
                    join(target.ports.keys().map(String::as_str))
                ),
            ));
        }
    } else if matches!(
        r.field,
        Field::Port(None) | Field::Bind(None) | Field::Url(_) | Field::Address
    ) && target.primary_port().is_none()
    {
        problems.push(Problem::at(
            span,
            format!("`{}`: service `{}` declares no ports", r.text, target.name),
            format!("add `ports = {{ http = 8080 }}` to `{}`", target.name),
        ));
    }
}
