//! One service of a compose file, key by key, into the raw model of a `stack.toml` service.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::super::raw::{RawBuild, RawDependsOn, RawProbe, RawProbeKind, RawService};
use super::super::{Condition, Kind};
use super::yaml::{Node, Value};
use super::{interpolate, Context, HARMLESS};
use crate::model::kind::Target;
use crate::model::names::closest;

/// The keys of a service the harness reads.
const SUPPORTED: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "depends_on",
    "healthcheck",
    "volumes",
    "tmpfs",
    "working_dir",
    "user",
    "profiles",
    "networks",
    "x-harness",
];

/// The keys of a service's `x-harness`.
const EXTENSION: &[&str] = &[
    "kind",
    "binary",
    "command",
    "probe",
    "paths",
    "ports",
    "env",
    "databases",
    "startup-timeout",
    "backend",
    "workdir",
];

/// What the whole file defines, for checking references.
pub(super) struct Found<'a> {
    pub(super) services: &'a BTreeSet<String>,
    pub(super) volumes: &'a BTreeSet<String>,
}

/// Whether a service takes part: it names no `profiles`, or one that `COMPOSE_PROFILES` turns on.
pub(super) fn active(body: &Node, profiles: &BTreeSet<String>) -> bool {
    match body.get("profiles").map(|p| &p.value) {
        Some(Value::Seq(list)) if !list.is_empty() => list
            .iter()
            .any(|p| p.text().is_some_and(|t| profiles.contains(t) || t == "*")),
        _ => true,
    }
}

/// The built-in kind an image is (`postgres:16`, `docker.io/library/redis:7-alpine`), or a
/// service of one's own.
fn kind_of_image(image: &str) -> Kind {
    let last = image.rsplit('/').next().unwrap_or(image);
    let base = last.split(['@', ':']).next().unwrap_or(last);
    Kind::ALL
        .iter()
        .copied()
        .find(|k| k.server().is_some() && k.name() == base)
        .unwrap_or(Kind::Service)
}

/// Which of a built-in kind's variables (`POSTGRES_USER`, ...) carry its user, password and
/// database: asked of the kind itself, so the two never disagree.
fn credential_vars(kind: Kind) -> Vec<(String, usize)> {
    let Some(server) = kind.server() else {
        return Vec::new();
    };
    let marks = ["\u{1}user", "\u{1}password", "\u{1}database"];
    let target = Target {
        host: String::new(),
        port: 0,
        user: Some(marks[0].into()),
        password: Some(marks[1].into()),
        database: Some(marks[2].into()),
    };
    server
        .container_env(&target)
        .into_iter()
        .filter_map(|(var, value)| Some((var, marks.iter().position(|m| *m == value)?)))
        .collect()
}

impl Context<'_, '_> {
    /// The service `name`, from its compose mapping `body`.
    pub(super) fn service(
        &mut self,
        name: &str,
        body: &Node,
        found: &Found<'_>,
        jobs: &mut BTreeSet<String>,
    ) -> Option<Spanned<RawService>> {
        let what = format!("service `{name}`");
        let entries = self.entries(body, &what);
        let image = body.get("image").and_then(|i| self.spanned(i, "`image`"));
        let kind = image
            .as_ref()
            .map_or(Kind::Service, |i| kind_of_image(i.get_ref()));
        let mut s = RawService::new(kind);
        s.image = image;
        let mut env: Vec<(Spanned<String>, Spanned<String>)> = Vec::new();
        let mut env_files = Vec::new();
        let mut command = None;
        let mut probe = None;
        let mut deadline = None;
        let mut ports = Vec::new();
        for (key, value) in entries {
            let Some(k) = key.text() else { continue };
            match k {
                "image" | "profiles" => {}
                "build" => s.build = self.build(name, value),
                "command" => command = Some((key, self.words(value, "`command`"))),
                "entrypoint" => {
                    s.entrypoint = self
                        .words(value, "`entrypoint`")
                        .map(|w| Spanned::new(value.span.clone(), w))
                }
                "environment" => env.extend(self.environment(value)),
                "env_file" => env_files.push(value),
                "ports" | "expose" => ports.extend(self.ports(name, value)),
                "depends_on" => {
                    s.depends_on = self
                        .depends_on(name, value, found, jobs)
                        .map(|t| Spanned::new(value.span.clone(), RawDependsOn::Table(t)))
                }
                "healthcheck" => probe = self.healthcheck(value, &mut deadline),
                "volumes" => self.volumes(name, value, found, &mut s),
                "tmpfs" => {
                    s.tmpfs
                        .extend(self.words(value, "`tmpfs`").unwrap_or_default());
                }
                "working_dir" => s.workdir = self.spanned(value, "`working_dir`"),
                "user" => s.run_as = self.spanned(value, "`user`"),
                "networks" => s.aliases.extend(self.aliases(value)),
                "x-harness" => {}
                k if HARMLESS.contains(&k) => self.warn(
                    &key.span,
                    format!("`{k}` of {what} is ignored in a test run"),
                    "nothing to do; remove it to silence this",
                ),
                k if k.starts_with("x-") => {}
                other => {
                    let help = match closest(other, SUPPORTED.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "remove it, or say what it does in the service's `x-harness` (see the README's \"Use it in your repository\")".into(),
                    };
                    self.error(
                        &key.span,
                        format!("`{other}` of {what} is not supported"),
                        help,
                    );
                }
            }
        }
        // `env_file` first; `environment` overrides it, as in compose.
        let mut all_env: Vec<(Spanned<String>, Spanned<String>)> = Vec::new();
        for f in env_files {
            all_env.extend(self.env_files(f));
        }
        all_env.extend(env);
        if kind.server().is_some() {
            let vars = credential_vars(kind);
            for (k, v) in all_env {
                match vars.iter().find(|(var, _)| var == k.get_ref()) {
                    Some((_, 0)) => s.user = Some(v.into_inner()),
                    Some((_, 1)) => s.password = Some(v.into_inner()),
                    Some(_) => s.database = Some(v),
                    None => {
                        s.env.insert(k, v);
                    }
                }
            }
            if let Some((key, _)) = command {
                self.warn(
                    &key.span,
                    format!("the `command` of {what} is ignored: the harness runs its `{kind}` with settings of its own"),
                    "nothing to do; the built-in server is configured for tests (no fsync, fast shutdown)",
                );
            }
            if let Some(e) = s.entrypoint.take() {
                self.warn(
                    &e.span(),
                    format!("the `entrypoint` of {what} is ignored: the harness runs its `{kind}` itself"),
                    "nothing to do",
                );
            }
        } else {
            s.env = all_env.into_iter().collect();
            if let Some((_, Some(words))) = command {
                s.args = words;
            }
            s.probe = probe;
        }
        for (port_name, number) in ports {
            if kind
                .default_port()
                .is_some_and(|(_, p)| i64::from(p) == *number.get_ref())
            {
                continue;
            }
            s.ports.insert(port_name, number);
        }
        if s.build.is_some() {
            // The harness tags what it builds by the content of the context.
            s.image = None;
        }
        if let Some(d) = deadline {
            let span = body
                .get("healthcheck")
                .map_or(body.span.clone(), |h| h.span.clone());
            s.startup_timeout = Some(Spanned::new(span, format!("{}ms", d.as_millis().max(1))));
        }
        if let Some(ext) = body.get("x-harness") {
            self.extension(name, ext, &mut s);
        }
        Some(Spanned::new(body.span.clone(), s))
    }

    /// `build:` a context directory, or `context`, `dockerfile`, `args` (list or mapping) and
    /// `target`. The harness builds it and runs the image it built (an `image:` beside it only
    /// names what compose would tag).
    fn build(&mut self, name: &str, node: &Node) -> Option<Spanned<RawBuild>> {
        let raw = match &node.value {
            Value::Map(entries) => {
                let mut context = None;
                let mut dockerfile = None;
                let mut args = BTreeMap::new();
                let mut target = None;
                for (k, v) in entries {
                    match k.text() {
                        Some("context") => context = self.string(v, "`context`"),
                        Some("dockerfile") => dockerfile = self.string(v, "`dockerfile`"),
                        Some("target") => target = self.string(v, "`target`"),
                        Some("args") => {
                            for (key, value) in self.environment(v) {
                                args.insert(key.into_inner(), value.into_inner());
                            }
                        }
                        other => self.error(
                            &k.span,
                            format!(
                                "`{}` of the `build` of service `{name}` is not supported",
                                other.unwrap_or("?")
                            ),
                            "use `context`, `dockerfile`, `args` and `target`",
                        ),
                    }
                }
                RawBuild::Full {
                    context: context.unwrap_or_else(|| ".".into()),
                    dockerfile,
                    args,
                    target,
                }
            }
            _ => RawBuild::Context(self.string(node, "`build`")?),
        };
        Some(Spanned::new(node.span.clone(), raw))
    }

    /// `environment:` as a list of `KEY=VALUE` (a bare `KEY` takes the environment's value)
    /// or a mapping (an empty value likewise).
    fn environment(&mut self, node: &Node) -> Vec<(Spanned<String>, Spanned<String>)> {
        let mut out = Vec::new();
        match &node.value {
            Value::Seq(items) => {
                for item in items {
                    let Some(text) = self.string(item, "an `environment` entry") else {
                        continue;
                    };
                    match text.split_once('=') {
                        Some((k, v)) => out.push((
                            Spanned::new(item.span.clone(), k.to_string()),
                            Spanned::new(item.span.clone(), v.to_string()),
                        )),
                        None => {
                            if let Some(v) = self.vars.get(&text) {
                                out.push((
                                    Spanned::new(item.span.clone(), text.clone()),
                                    Spanned::new(item.span.clone(), v),
                                ));
                            }
                        }
                    }
                }
            }
            _ => {
                for (k, v) in self.entries(node, "`environment`") {
                    let Some(key) = k.text() else { continue };
                    let value = match &v.value {
                        Value::Null => self.vars.get(key),
                        _ => self.string(v, "an `environment` value"),
                    };
                    if let Some(value) = value {
                        out.push((
                            Spanned::new(k.span.clone(), key.to_string()),
                            Spanned::new(v.span.clone(), value),
                        ));
                    }
                }
            }
        }
        out
    }

    /// `env_file:` one path, a list of paths, or of `{ path, required }`; relative to the
    /// compose file.
    fn env_files(&mut self, node: &Node) -> Vec<(Spanned<String>, Spanned<String>)> {
        let items: Vec<&Node> = match &node.value {
            Value::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut out = Vec::new();
        for item in items {
            let (path, required) = match &item.value {
                Value::Map(_) => (
                    item.get("path").and_then(|p| self.string(p, "`path`")),
                    item.get("required").and_then(|r| r.text()) != Some("false"),
                ),
                _ => (self.string(item, "an `env_file`"), true),
            };
            let Some(path) = path else { continue };
            let file = self.dir.join(&path);
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(_) if !required => continue,
                Err(e) => {
                    self.error(
                        &item.span,
                        format!("cannot read the env_file {}: {e}", file.display()),
                        "give a path relative to the compose file, or `required: false` for an optional one",
                    );
                    continue;
                }
            };
            match interpolate::parse_env_file(&text) {
                Ok(vars) => out.extend(vars.into_iter().map(|(k, v)| {
                    (
                        Spanned::new(item.span.clone(), k),
                        Spanned::new(item.span.clone(), v),
                    )
                })),
                Err((line, message)) => self.error(
                    &item.span,
                    format!("{}:{line}: {message}", file.display()),
                    "write one `KEY=VALUE` per line (`#` starts a comment)",
                ),
            }
        }
        out
    }

    /// `ports:`/`expose:` as named container ports (named by their number). The host side of
    /// a mapping is dropped: every port is published on an ephemeral port of 127.0.0.1.
    fn ports(&mut self, name: &str, node: &Node) -> Vec<(Spanned<String>, Spanned<i64>)> {
        let Value::Seq(items) = &node.value else {
            self.error(
                &node.span,
                format!("`ports` of service `{name}` must be a list"),
                "write `ports: [\"8080\"]` or `- \"5432:5432\"` lines",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            let text = match &item.value {
                Value::Map(_) => item.get("target").and_then(|t| self.string(t, "`target`")),
                _ => self.string(item, "a port"),
            };
            let Some(text) = text else { continue };
            let container = text.rsplit(':').next().unwrap_or(&text);
            let (number, protocol) = container.split_once('/').unwrap_or((container, "tcp"));
            let parsed = number.trim().parse::<i64>();
            match (parsed, protocol) {
                (Ok(n), "tcp") => out.push((
                    Spanned::new(item.span.clone(), n.to_string()),
                    Spanned::new(item.span.clone(), n),
                )),
                (Ok(_), other) => self.error(
                    &item.span,
                    format!("port `{text}` of service `{name}` is {other}; the harness publishes tcp ports only"),
                    "remove it, or use a tcp port",
                ),
                (Err(_), _) => self.error(
                    &item.span,
                    format!("`{text}` is not a port of service `{name}` the harness can publish"),
                    "write one container port per entry (`\"8080\"` or `\"5432:5432\"`); ranges are not supported",
                ),
            }
        }
        out
    }

    /// `depends_on:` as a list (each waited for to be ready) or a mapping with `condition`
    /// and `required`.
    fn depends_on(
        &mut self,
        name: &str,
        node: &Node,
        found: &Found<'_>,
        jobs: &mut BTreeSet<String>,
    ) -> Option<Vec<(Spanned<String>, Condition)>> {
        let mut out = Vec::new();
        match &node.value {
            Value::Seq(items) => {
                for item in items {
                    if let Some(dep) = self.spanned(item, "a dependency") {
                        out.push((dep, Condition::Ready));
                    }
                }
            }
            _ => {
                for (dep, spec) in self.entries(node, "`depends_on`") {
                    let Some(d) = self.spanned(dep, "a dependency") else {
                        continue;
                    };
                    let required = spec.get("required").and_then(|r| r.text()) != Some("false");
                    if !required && !found.services.contains(d.get_ref()) {
                        continue;
                    }
                    let condition = match spec.get("condition") {
                        None => Condition::Started,
                        Some(c) => match c.text() {
                            Some("service_started") => Condition::Started,
                            Some("service_healthy") => Condition::Ready,
                            Some("service_completed_successfully") => {
                                jobs.insert(d.get_ref().clone());
                                Condition::Completed
                            }
                            other => {
                                self.error(
                                    &c.span,
                                    format!(
                                        "`{}` is not a condition service `{name}` can wait for",
                                        other.unwrap_or("?")
                                    ),
                                    "use `service_started`, `service_healthy` or `service_completed_successfully`",
                                );
                                continue;
                            }
                        },
                    };
                    out.push((d, condition));
                }
            }
        }
        Some(out)
    }

    /// `healthcheck:` as an `exec` probe (`CMD`, `CMD-SHELL` or a string, run by `/bin/sh -c`),
    /// or no probe (`NONE`, `disable: true`). The harness probes at its own cadence, not at
    /// `interval`; when the timings are given, the time compose would take to call the service
    /// unhealthy (`start_period` + `retries` × (`interval` + `timeout`)) is its deadline.
    fn healthcheck(
        &mut self,
        node: &Node,
        deadline: &mut Option<Duration>,
    ) -> Option<Spanned<RawProbe>> {
        // Compose's defaults.
        let mut timings = [
            ("interval", Duration::from_secs(30), false),
            ("timeout", Duration::from_secs(30), false),
            ("start_period", Duration::ZERO, false),
            ("start_interval", Duration::from_secs(5), false),
        ];
        for (key, value, given) in &mut timings {
            if let Some(v) = node.get(key) {
                if let Some(text) = self.string(v, &format!("`{key}`")) {
                    match compose_duration(&text) {
                        Some(d) => (*value, *given) = (d, true),
                        None => self.error(
                            &v.span,
                            format!("`{text}` is not a duration"),
                            "write it as compose does: `10s`, `1m30s`, `500ms`",
                        ),
                    }
                }
            }
        }
        let retries = match node.get("retries") {
            Some(v) => match self.string(v, "`retries`").map(|t| t.parse::<u32>()) {
                Some(Ok(n)) => Some(n),
                Some(Err(_)) => {
                    self.error(
                        &v.span,
                        "`retries` is not a whole number",
                        "write e.g. `retries: 5`",
                    );
                    None
                }
                None => None,
            },
            None => None,
        };
        if retries.is_some() || timings.iter().take(3).any(|t| t.2) {
            let [interval, timeout, start, _] = timings.map(|t| t.1);
            *deadline = Some(start + (interval + timeout) * retries.unwrap_or(3));
        }
        let probe = |kind, command: Option<Vec<String>>| {
            Some(Spanned::new(
                node.span.clone(),
                RawProbe {
                    kind,
                    path: None,
                    port: None,
                    command: command.map(|c| Spanned::new(node.span.clone(), c)),
                },
            ))
        };
        if node.get("disable").and_then(|d| d.text()) == Some("true") {
            return probe(RawProbeKind::None, None);
        }
        let test = node.get("test")?;
        let words: Vec<String> = match &test.value {
            Value::Seq(items) => items
                .iter()
                .filter_map(|i| self.string(i, "a `test` word"))
                .collect(),
            _ => {
                let shell = self.string(test, "`test`")?;
                vec!["CMD-SHELL".into(), shell]
            }
        };
        match words.split_first() {
            Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
                probe(RawProbeKind::Exec, Some(rest.to_vec()))
            }
            Some((first, rest)) if first == "CMD-SHELL" && !rest.is_empty() => probe(
                RawProbeKind::Exec,
                Some(vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]),
            ),
            Some((first, _)) if first == "NONE" => probe(RawProbeKind::None, None),
            _ => {
                self.error(
                    &test.span,
                    "a healthcheck's `test` starts with `CMD`, `CMD-SHELL` or `NONE`",
                    "write `test: [\"CMD\", \"pg_isready\"]` or `test: [\"CMD-SHELL\", \"curl -f http://localhost/health\"]`",
                );
                None
            }
        }
    }

    /// `volumes:` short (`./src:/dst:ro`, `name:/dst`, `/dst`) or long (`type`, `source`,
    /// `target`, `read_only`): host paths relative to the compose file, named volumes of the
    /// run, and anonymous volumes and `tmpfs` as in-memory filesystems.
    fn volumes(&mut self, name: &str, node: &Node, found: &Found<'_>, s: &mut RawService) {
        let Value::Seq(items) = &node.value else {
            self.error(
                &node.span,
                format!("`volumes` of service `{name}` must be a list"),
                "write `- ./init:/docker-entrypoint-initdb.d:ro` lines",
            );
            return;
        };
        for item in items {
            let (source, target, read_only, kind) = match &item.value {
                Value::Map(_) => {
                    let get = |ctx: &mut Self, k: &str| item.get(k).and_then(|v| ctx.string(v, k));
                    let kind = get(self, "type").unwrap_or_else(|| "volume".into());
                    let source = get(self, "source");
                    let Some(target) = get(self, "target") else {
                        self.error(
                            &item.span,
                            format!("a volume of service `{name}` has no `target`"),
                            "add `target: /path/in/the/container`",
                        );
                        continue;
                    };
                    let ro = get(self, "read_only").as_deref() == Some("true");
                    (source, target, ro, kind)
                }
                _ => {
                    let Some(text) = self.string(item, "a volume") else {
                        continue;
                    };
                    let parts: Vec<&str> = text.split(':').collect();
                    match parts.as_slice() {
                        [target] => (None, target.to_string(), false, "volume".to_string()),
                        [src, target] | [src, target, _] => {
                            let ro = parts
                                .get(2)
                                .is_some_and(|m| m.split(',').any(|m| m == "ro"));
                            let kind = if src.starts_with(['.', '/', '~']) {
                                "bind"
                            } else {
                                "volume"
                            };
                            (
                                Some(src.to_string()),
                                target.to_string(),
                                ro,
                                kind.to_string(),
                            )
                        }
                        _ => {
                            self.error(
                                &item.span,
                                format!("`{text}` is not a volume of service `{name}`"),
                                "write `source:target` or `source:target:ro`",
                            );
                            continue;
                        }
                    }
                }
            };
            let mode = if read_only { ":ro" } else { "" };
            let spanned = |t: String| Spanned::new(item.span.clone(), t);
            match (kind.as_str(), source) {
                ("tmpfs", _) | ("volume", None) => s.tmpfs.push(spanned(target)),
                ("bind", Some(src)) if src.starts_with('~') => self.error(
                    &item.span,
                    format!("the volume `{src}` of service `{name}` is in a home directory"),
                    "mount a path of the repository (relative to the compose file) so the test run means the same on every machine",
                ),
                ("bind", Some(src)) => {
                    let src = if Path::new(&src).is_absolute() || src.starts_with('.') {
                        src
                    } else {
                        format!("./{src}")
                    };
                    s.volumes.push(spanned(format!("{src}:{target}{mode}")));
                }
                ("volume", Some(src)) => {
                    if !found.volumes.contains(&src) {
                        self.error(
                            &item.span,
                            format!("service `{name}` mounts the volume `{src}`, which the file does not declare"),
                            format!("declare it under the top-level `volumes:` (`{src}: {{}}`), or mount a path with `./{src}`"),
                        );
                        continue;
                    }
                    s.volumes.push(spanned(format!("{src}:{target}{mode}")));
                }
                (other, _) => self.error(
                    &item.span,
                    format!("a volume of type `{other}` (service `{name}`) is not supported"),
                    "use `bind`, `volume` or `tmpfs`",
                ),
            }
        }
    }

    /// `networks:` of a service: the aliases it is also reached by (every service is on the
    /// run's one network).
    fn aliases(&mut self, node: &Node) -> Vec<Spanned<String>> {
        let mut out = Vec::new();
        if let Value::Map(entries) = &node.value {
            for (_, body) in entries {
                if let Some(list) = body.get("aliases") {
                    out.extend(self.words(list, "`aliases`").unwrap_or_default());
                }
            }
        }
        out
    }

    /// A service's `x-harness`: what compose cannot say, in the words of a `stack.toml`.
    fn extension(&mut self, name: &str, node: &Node, s: &mut RawService) {
        for (key, value) in self.entries(node, "`x-harness`") {
            let Some(k) = key.text() else { continue };
            match k {
                "kind" => match self
                    .string(value, "`kind`")
                    .map(|k| Kind::ALL.iter().copied().find(|c| c.name() == k))
                {
                    Some(Some(kind)) => s.kind = kind,
                    Some(None) => self.error(
                        &value.span,
                        format!("`kind` of service `{name}` is not a kind"),
                        "use `postgres`, `redis`, `rabbitmq`, `mariadb` or `service`",
                    ),
                    None => {}
                },
                "binary" => s.binary = self.spanned(value, "`binary`"),
                "command" => {
                    // The native command line; a compose `command` stays the container's.
                    s.command = self
                        .words(value, "`command`")
                        .map(|w| Spanned::new(value.span.clone(), w));
                }
                "probe" => s.probe = self.probe(value),
                "paths" => s.paths = self.words(value, "`paths`").unwrap_or_default(),
                "databases" => s.databases = self.words(value, "`databases`").unwrap_or_default(),
                "startup-timeout" => s.startup_timeout = self.spanned(value, "`startup-timeout`"),
                "backend" => s.backend = self.spanned(value, "`backend`"),
                "workdir" => s.workdir = self.spanned(value, "`workdir`"),
                "ports" => {
                    let named: Vec<(Spanned<String>, Spanned<i64>)> = self
                        .entries(value, "`ports`")
                        .iter()
                        .filter_map(|(k, v)| {
                            let n = v.text()?.parse::<i64>().ok()?;
                            Some((
                                Spanned::new(k.span.clone(), k.text()?.to_string()),
                                Spanned::new(v.span.clone(), n),
                            ))
                        })
                        .collect();
                    for (port_name, number) in named {
                        s.ports.retain(|_, n| n.get_ref() != number.get_ref());
                        s.ports.insert(port_name, number);
                    }
                }
                "env" => {
                    for (k, v) in self.entries(value, "`env`") {
                        if let (Some(key), Some(val)) =
                            (k.text(), self.spanned(v, "an `env` value"))
                        {
                            s.env
                                .insert(Spanned::new(k.span.clone(), key.to_string()), val);
                        }
                    }
                }
                other => {
                    let help = match closest(other, EXTENSION.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("use one of: {}", EXTENSION.join(", ")),
                    };
                    self.error(
                        &key.span,
                        format!("`{other}` is not a key of `x-harness` (service `{name}`)"),
                        help,
                    );
                }
            }
        }
    }

    /// `probe:` of `x-harness`, as in a `stack.toml`: `type`, `path`, `port`, `command`.
    fn probe(&mut self, node: &Node) -> Option<Spanned<RawProbe>> {
        let kind_text = node.get("type").and_then(|t| self.string(t, "`type`"))?;
        let kind = match RawProbeKind::try_from(kind_text) {
            Ok(k) => k,
            Err(e) => {
                self.error(&node.span, e, "see the README's probes");
                return None;
            }
        };
        let command = node.get("command").and_then(|c| {
            self.words(c, "`command`").map(|w| {
                Spanned::new(
                    c.span.clone(),
                    w.into_iter().map(Spanned::into_inner).collect(),
                )
            })
        });
        Some(Spanned::new(
            node.span.clone(),
            RawProbe {
                kind,
                path: node.get("path").and_then(|p| self.string(p, "`path`")),
                port: node.get("port").and_then(|p| self.spanned(p, "`port`")),
                command,
            },
        ))
    }
}

/// The services others wait for with `service_completed_successfully` are one-shot jobs:
/// ready once they exited 0.
pub(super) fn mark_jobs(
    services: &mut BTreeMap<Spanned<String>, Spanned<RawService>>,
    jobs: &BTreeSet<String>,
) {
    for job in jobs {
        if let Some(s) = services.get_mut(job.as_str()) {
            let span = s.span();
            let raw = s.get_mut();
            let explicit = raw.probe.as_ref().is_some_and(|p| {
                !matches!(p.get_ref().kind, RawProbeKind::Exec | RawProbeKind::None)
            });
            if !explicit {
                raw.probe = Some(Spanned::new(
                    span,
                    RawProbe {
                        kind: RawProbeKind::Exit,
                        path: None,
                        port: None,
                        command: None,
                    },
                ));
            }
        }
    }
}

/// A duration as compose writes them: `1m30s`, `10s`, `500ms`, `2h`.
fn compose_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, seconds) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("ms", 1e-3),
            ("h", 3600.0),
            ("m", 60.0),
            ("s", 1.0),
        ]
        .into_iter()
        .find(|(u, _)| rest.starts_with(u))?;
        rest = &rest[unit.len()..];
        total += number * seconds;
    }
    Some(Duration::from_secs_f64(total))
}

/// Addresses in a compose file's environment and command speak of the container network:
/// `postgres:5432`, `http://payments:8080`, `0.0.0.0:8080`. Where the name is a dependency and
/// the number one of its ports, the address becomes a template (`{{ postgres.host }}:{{
/// postgres.port.postgres }}`), and a listen address on one of the service's own ports
/// `{{ self.bind.<port> }}`: the same on the container network, and right wherever else the
/// value is rendered (a test on the host reading a service's `DATABASE_URL`, the native
/// backend).
pub(super) fn link_addresses(services: &mut BTreeMap<Spanned<String>, Spanned<RawService>>) {
    let ports: BTreeMap<String, Vec<(String, i64)>> = services
        .iter()
        .map(|(name, s)| (name.get_ref().clone(), ports_of(s.get_ref())))
        .collect();
    // The other names a service is reached by (its compose name, when it is not a host name).
    let aliases: BTreeMap<String, Vec<String>> = services
        .iter()
        .map(|(name, s)| {
            let names = s.get_ref().aliases.iter().map(|a| a.get_ref().clone());
            (name.get_ref().clone(), names.collect())
        })
        .collect();
    for s in services.values_mut() {
        let raw = s.get_mut();
        let deps: Vec<String> = match raw.depends_on.as_ref().map(|d| d.get_ref()) {
            Some(RawDependsOn::Table(t)) => t.iter().map(|(d, _)| d.get_ref().clone()).collect(),
            Some(RawDependsOn::List(l)) => l.iter().map(|d| d.get_ref().clone()).collect(),
            None => Vec::new(),
        };
        let mut rewrites: Vec<(String, String)> = Vec::new();
        for dep in &deps {
            let names = std::iter::once(dep).chain(aliases.get(dep).into_iter().flatten());
            for name in names {
                for (port_name, number) in ports.get(dep).into_iter().flatten() {
                    rewrites.push((
                        format!("{name}:{number}"),
                        format!("{{{{ {dep}.host }}}}:{{{{ {dep}.port.{port_name} }}}}"),
                    ));
                }
            }
        }
        for (port_name, number) in ports_of(raw) {
            rewrites.push((
                format!("0.0.0.0:{number}"),
                format!("{{{{ self.bind.{port_name} }}}}"),
            ));
        }
        let values = raw
            .env
            .values_mut()
            .chain(raw.args.iter_mut())
            .chain(
                raw.entrypoint
                    .iter_mut()
                    .flat_map(|e| e.get_mut().iter_mut()),
            )
            .chain(raw.command.iter_mut().flat_map(|c| c.get_mut().iter_mut()));
        for value in values {
            let mut text = value.get_ref().clone();
            for (from, to) in &rewrites {
                text = replace_address(&text, from, to);
            }
            if text != *value.get_ref() {
                *value = Spanned::new(value.span(), text);
            }
        }
    }
}

/// A service's named container ports, its kind's own included.
fn ports_of(s: &RawService) -> Vec<(String, i64)> {
    s.kind
        .default_port()
        .map(|(n, p)| (n.to_string(), i64::from(p)))
        .into_iter()
        .chain(
            s.ports
                .iter()
                .map(|(n, p)| (n.get_ref().clone(), *p.get_ref())),
        )
        .collect()
}

/// `text` with every whole `from` (not part of a longer name or number) replaced by `to`.
fn replace_address(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let before = if at > 0 {
            rest[..at].chars().last()
        } else {
            out.chars().last()
        };
        let after = rest[at + from.len()..].chars().next();
        let whole = !before
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !after.is_some_and(|c| c.is_ascii_digit());
        out.push_str(&rest[..at]);
        out.push_str(if whole { to } else { from });
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_addresses_are_replaced() {
        let r = |t: &str| replace_address(t, "db:5432", "X");
        assert_eq!(r("postgres://u:p@db:5432/app"), "postgres://u:p@X/app");
        assert_eq!(r("db:5432,db:54321,mydb:5432"), "X,db:54321,mydb:5432");
        assert_eq!(r("db:5432"), "X");
    }

    #[test]
    fn images_name_their_kinds() {
        assert_eq!(kind_of_image("postgres:16-alpine"), Kind::Postgres);
        assert_eq!(kind_of_image("docker.io/library/redis:7"), Kind::Redis);
        assert_eq!(
            kind_of_image("registry:5000/rabbitmq:3-management"),
            Kind::Rabbitmq
        );
        assert_eq!(kind_of_image("shop/postgres-exporter:1"), Kind::Service);
    }
}
