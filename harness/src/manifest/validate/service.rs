//! One `[services.<name>]` table, concern by concern: ports, dependencies, backend, launch,
//! image, probe, databases and credentials, paths, environment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::super::diagnostics::{join, unknown_service_help, Problem};
use super::super::raw::{RawBuild, RawDependsOn, RawProbe, RawProbeKind, RawService};
use super::super::{
    valid_image, BackendKind, Build, Condition, Credentials, Dependency, Kind, Launch, Mount,
    MountSource, ProbeSpec, Service,
};
use super::duration_field;
use super::references::parse_template;
use crate::model::names::closest;

/// The service `body` describes, named `name` among the services `names`.
pub(super) fn build_service(
    name: &str,
    body: &Spanned<RawService>,
    names: &BTreeSet<&str>,
    default_timeout: Duration,
    problems: &mut Vec<Problem>,
) -> Service {
    let raw = body.get_ref();
    let ports = ports(name, raw, problems);
    let depends_on = dependencies(name, raw, names, problems);
    let backend = backend(name, raw, problems);
    let launch = launch(name, body, backend, problems);
    check_image(raw, problems);
    let probe = probe(name, raw, &ports, problems);
    let startup_timeout = raw
        .startup_timeout
        .as_ref()
        .and_then(|t| duration_field(t, problems))
        .unwrap_or(default_timeout);
    let databases = databases(name, raw, problems);
    let credentials = credentials(raw, problems);
    check_paths(name, raw, problems);
    check_env_names(name, raw, problems);
    let entrypoint = raw.entrypoint.as_ref().map(|e| {
        if e.get_ref().is_empty() {
            problems.push(Problem::at(
                e.span(),
                format!("`entrypoint` of service `{name}` is empty"),
                "give the program and its arguments, or remove the key to keep the image's",
            ));
        }
        e.get_ref()
            .iter()
            .filter_map(|a| parse_template(a, problems))
            .collect()
    });
    let volumes = raw
        .volumes
        .iter()
        .filter_map(|v| mount(name, v, problems))
        .collect();
    for t in &raw.tmpfs {
        container_path(name, "tmpfs", t, problems);
    }
    Service {
        name: name.to_string(),
        kind: raw.kind,
        image: raw
            .image
            .as_ref()
            .map(|i| i.get_ref().clone())
            .or_else(|| raw.kind.default_image().map(str::to_string)),
        launch,
        args: raw
            .args
            .iter()
            .filter_map(|a| parse_template(a, problems))
            .collect(),
        env: raw
            .env
            .iter()
            .filter_map(|(k, v)| parse_template(v, problems).map(|t| (k.get_ref().clone(), t)))
            .collect(),
        ports,
        depends_on,
        probe,
        startup_timeout,
        credentials,
        databases,
        paths: raw.paths.iter().map(|p| p.get_ref().clone()).collect(),
        backend,
        entrypoint,
        workdir: raw.workdir.as_ref().map(|w| w.get_ref().clone()),
        run_as: raw.run_as.as_ref().map(|u| u.get_ref().clone()),
        aliases: raw.aliases.iter().map(|a| a.get_ref().clone()).collect(),
        volumes,
        tmpfs: raw.tmpfs.iter().map(|t| t.get_ref().clone()).collect(),
        build: raw.build.as_ref().and_then(|b| build(name, b, problems)),
    }
}

/// `build`: a context directory (checked once the manifest's directory is known) and a
/// Dockerfile inside it.
fn build(name: &str, b: &Spanned<RawBuild>, problems: &mut Vec<Problem>) -> Option<Build> {
    let (context, dockerfile, args, target) = match b.get_ref() {
        RawBuild::Context(c) => (c.clone(), None, BTreeMap::new(), None),
        RawBuild::Full {
            context,
            dockerfile,
            args,
            target,
        } => (
            context.clone(),
            dockerfile.clone(),
            args.clone(),
            target.clone(),
        ),
    };
    let dockerfile = dockerfile.unwrap_or_else(|| "Dockerfile".into());
    if context.trim().is_empty() || dockerfile.starts_with('/') || dockerfile.contains("..") {
        problems.push(Problem::at(
            b.span(),
            format!("the `build` of service `{name}` needs a context directory and a Dockerfile inside it"),
            "write `build = \"./api\"` or `build = { context = \"./api\", dockerfile = \"Dockerfile.test\" }` (paths relative to the manifest)",
        ));
        return None;
    }
    Some(Build {
        context: context.into(),
        dockerfile,
        args,
        target,
    })
}

/// `source:target[:ro|:rw]`: a path of the host (absolute, or starting with `.`, relative to
/// the manifest) or the name of a volume of the run, mounted at an absolute path.
fn mount(name: &str, v: &Spanned<String>, problems: &mut Vec<Problem>) -> Option<Mount> {
    let text = v.get_ref();
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [s, t] => (*s, *t, None),
        [s, t, m] => (*s, *t, Some(*m)),
        _ => {
            problems.push(Problem::at(
                v.span(),
                format!("`{text}` is not a mount (service `{name}`)"),
                "write `source:target` or `source:target:ro`, e.g. `./init:/docker-entrypoint-initdb.d:ro` or `data:/var/lib/data`",
            ));
            return None;
        }
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            problems.push(Problem::at(
                v.span(),
                format!("`{other}` is not a mount mode (service `{name}`)"),
                "use `ro` (read-only) or `rw`, or leave the mode out",
            ));
            false
        }
    };
    if !target.starts_with('/') {
        problems.push(Problem::at(
            v.span(),
            format!("the mount target `{target}` of service `{name}` is not an absolute path"),
            "mount at an absolute path inside the container, e.g. `./init:/docker-entrypoint-initdb.d`",
        ));
        return None;
    }
    let source = if source.starts_with('.') || source.starts_with('/') {
        MountSource::Host(source.into())
    } else if !source.is_empty()
        && source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        MountSource::Volume(source.to_string())
    } else {
        problems.push(Problem::at(
            v.span(),
            format!("`{source}` is neither a path nor a volume name (service `{name}`)"),
            "start a path of the host with `./` or `/`; name a volume of the run with letters, digits, `-`, `_` and `.`",
        ));
        return None;
    };
    Some(Mount {
        source,
        target: target.to_string(),
        read_only,
    })
}

/// A path inside the container: absolute.
fn container_path(name: &str, key: &str, path: &Spanned<String>, problems: &mut Vec<Problem>) {
    if !path.get_ref().starts_with('/') {
        problems.push(Problem::at(
            path.span(),
            format!(
                "`{}` in `{key}` of service `{name}` is not an absolute path",
                path.get_ref()
            ),
            "give an absolute path inside the container, e.g. `/tmp`",
        ));
    }
}

/// The built-in server's port under its conventional name, and the declared ones.
fn ports(name: &str, raw: &RawService, problems: &mut Vec<Problem>) -> BTreeMap<String, u16> {
    let mut ports = BTreeMap::new();
    if let Some((port_name, port)) = raw.kind.default_port() {
        ports.insert(port_name.to_string(), port);
    }
    let mut seen_numbers = BTreeMap::new();
    for (port_name, number) in &raw.ports {
        let n = *number.get_ref();
        let pname = port_name.get_ref();
        if pname.is_empty()
            || !pname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.push(Problem::at(
                port_name.span(),
                if pname.is_empty() {
                    format!("service `{name}` has a port with an empty name")
                } else {
                    format!("`{pname}` is not a port name service `{name}` can use")
                },
                "name ports with letters, digits, `-` and `_` (templates refer to them as `{{ <service>.port.<name> }}`), e.g. `http = 8080`",
            ));
            continue;
        }
        if !(1..=65535).contains(&n) {
            problems.push(Problem::at(
                number.span(),
                format!("port `{}` of service `{name}` is {n}, outside 1..=65535", port_name.get_ref()),
                "use the port number the service listens on inside its container, e.g. `http = 8080`",
            ));
            continue;
        }
        if let Some(other) = seen_numbers.insert(n, port_name.get_ref().clone()) {
            problems.push(Problem::at(
                number.span(),
                format!(
                    "ports `{other}` and `{}` of service `{name}` are both {n}",
                    port_name.get_ref()
                ),
                "give each named port its own number",
            ));
        }
        ports.insert(port_name.get_ref().clone(), n as u16);
    }
    ports
}

/// `depends-on`: every entry a defined service other than this one, each listed once.
fn dependencies(
    name: &str,
    raw: &RawService,
    names: &BTreeSet<&str>,
    problems: &mut Vec<Problem>,
) -> Vec<Dependency> {
    let mut depends_on = Vec::new();
    if let Some(deps) = &raw.depends_on {
        let entries: Vec<(&Spanned<String>, Condition)> = match deps.get_ref() {
            RawDependsOn::List(list) => list.iter().map(|d| (d, Condition::Ready)).collect(),
            RawDependsOn::Table(table) => table.iter().map(|(d, c)| (d, *c)).collect(),
        };
        let mut seen = BTreeSet::new();
        for (dep, condition) in entries {
            let dep_name = dep.get_ref().as_str();
            if dep_name == name {
                problems.push(Problem::at(
                    dep.span(),
                    format!("service `{name}` depends on itself"),
                    "remove it from its own `depends-on`",
                ));
            } else if !names.contains(dep_name) {
                let fallback = format!("add a `[services.{dep_name}]` table or use one of");
                problems.push(Problem::at(
                    dep.span(),
                    format!("service `{name}` depends on `{dep_name}`, which is not defined"),
                    unknown_service_help(dep_name, names, &fallback),
                ));
            } else if !seen.insert(dep_name) {
                problems.push(Problem::at(
                    dep.span(),
                    format!("service `{name}` lists `{dep_name}` twice in `depends-on`"),
                    "list each dependency once",
                ));
            } else {
                depends_on.push(Dependency {
                    service: dep_name.to_string(),
                    condition,
                });
            }
        }
    }
    depends_on
}

/// `backend = "…"`, when the service does not follow the stack's.
fn backend(name: &str, raw: &RawService, problems: &mut Vec<Problem>) -> Option<BackendKind> {
    raw.backend.as_ref().and_then(|b| {
        let kind = BackendKind::parse(b.get_ref());
        if kind.is_none() {
            let help = match closest(b.get_ref(), ["native", "container", "external"]) {
                Some(s) => format!(
                    "did you mean `{s}`? use {}, or remove the key to follow the stack's backend",
                    BackendKind::CHOICES
                ),
                None => format!(
                    "use {}, or remove the key to follow the stack's backend",
                    BackendKind::CHOICES
                ),
            };
            problems.push(Problem::at(
                b.span(),
                format!("`{}` is not a backend (service `{name}`)", b.get_ref()),
                help,
            ));
        }
        kind
    })
}

/// How the native backend runs the service: `binary`, `command`, or the built-in server.
fn launch(
    name: &str,
    body: &Spanned<RawService>,
    backend: Option<BackendKind>,
    problems: &mut Vec<Problem>,
) -> Launch {
    let raw = body.get_ref();
    match (raw.kind, &raw.binary, &raw.command) {
        (_, Some(b), Some(_)) => {
            problems.push(Problem::at(
                b.span(),
                format!("service `{name}` has both `binary` and `command`"),
                "keep one: `binary` names a cargo binary of this workspace, `command` is a full command line",
            ));
            Launch::ImageOnly
        }
        (Kind::Service, Some(b), None) => {
            if b.get_ref().trim().is_empty() || b.get_ref().contains('/') {
                problems.push(Problem::at(
                    b.span(),
                    format!("`binary` of service `{name}` must be the name of a cargo binary"),
                    "write the binary's name (e.g. `binary = \"orders\"`), or use `command = [\"/path/to/program\"]`",
                ));
            }
            Launch::Binary(b.get_ref().clone())
        }
        (Kind::Service, None, Some(cmd)) => command(name, cmd, problems),
        (Kind::Service, None, None) => {
            // An external service runs elsewhere: the harness needs only its endpoint.
            if raw.image.is_none() && raw.build.is_none() && backend != Some(BackendKind::External)
            {
                problems.push(Problem::at(
                    body.span().start..body.span().start + 1,
                    format!("service `{name}` has nothing to run"),
                    "give it a `binary` (native backend), a `command`, or an `image` or `build` (container backend)",
                ));
            }
            Launch::ImageOnly
        }
        (kind, Some(b), None) => {
            problems.push(Problem::at(
                b.span(),
                format!("service `{name}` is a built-in `{kind}`: it takes no `binary`"),
                "remove `binary`; the backend knows how to run it (set `image` to choose the container image)",
            ));
            Launch::Builtin
        }
        (kind, None, Some(c)) => {
            problems.push(Problem::at(
                c.span(),
                format!("service `{name}` is a built-in `{kind}`: it takes no `command`"),
                "remove `command`; use `kind = \"service\"` to run a program of your own",
            ));
            Launch::Builtin
        }
        (_, None, None) => Launch::Builtin,
    }
}

/// `command = [program, args…]`: a program that is not empty, templates in every element.
fn command(name: &str, cmd: &Spanned<Vec<Spanned<String>>>, problems: &mut Vec<Problem>) -> Launch {
    if cmd.get_ref().is_empty() {
        problems.push(Problem::at(
            cmd.span(),
            format!("`command` of service `{name}` is empty"),
            "give the program and its arguments, e.g. `command = [\"./bin/server\", \"--port\", \"{{ self.port }}\"]`",
        ));
    } else if let Some(program) = cmd
        .get_ref()
        .first()
        .filter(|p| p.get_ref().trim().is_empty())
    {
        problems.push(Problem::at(
            program.span(),
            format!("the program of service `{name}`'s `command` is an empty string"),
            "the first element is the program to run: a path or a name found in PATH, e.g. `command = [\"./bin/server\"]`",
        ));
    }
    Launch::Command(
        cmd.get_ref()
            .iter()
            .filter_map(|a| parse_template(a, problems))
            .collect(),
    )
}

fn check_image(raw: &RawService, problems: &mut Vec<Problem>) {
    if let Some(image) = &raw.image {
        let i = image.get_ref();
        if !valid_image(i) {
            problems.push(Problem::at(
                image.span(),
                format!("`{i}` is not an image reference"),
                "write `name:tag`, e.g. `image = \"postgres:16\"`",
            ));
        }
    }
}

/// The readiness probe: the one given, or the kind's default.
fn probe(
    name: &str,
    raw: &RawService,
    ports: &BTreeMap<String, u16>,
    problems: &mut Vec<Problem>,
) -> ProbeSpec {
    let probe = match &raw.probe {
        None => default_probe(raw.kind, ports),
        Some(p) => given_probe(name, p, ports, problems),
    };
    check_probe_kind(name, raw, &probe, problems);
    probe
}

/// `probe = { … }`: its port must be declared, its `path` only on an `http` probe.
fn given_probe(
    name: &str,
    p: &Spanned<RawProbe>,
    ports: &BTreeMap<String, u16>,
    problems: &mut Vec<Problem>,
) -> ProbeSpec {
    let spec = p.get_ref();
    let port = match &spec.port {
        Some(port) => {
            if !ports.contains_key(port.get_ref()) {
                problems.push(Problem::at(
                    port.span(),
                    format!(
                        "the probe of `{name}` uses port `{}`, which the service does not declare",
                        port.get_ref()
                    ),
                    format!(
                        "declare it under `ports` or use one of: {}",
                        join(ports.keys().map(String::as_str))
                    ),
                ));
            }
            Some(port.get_ref().clone())
        }
        None => None,
    };
    let port_or_primary = |problems: &mut Vec<Problem>| {
        port.clone()
            .or_else(|| ports.contains_key("http").then(|| "http".to_string()))
            .or_else(|| ports.keys().next().cloned())
            .unwrap_or_else(|| {
                problems.push(Problem::at(
                    p.span(),
                    format!("the probe of `{name}` needs a port, and the service declares none"),
                    "add `ports = { http = 8080 }` to the service",
                ));
                String::new()
            })
    };
    if spec.command.is_some() != matches!(spec.kind, RawProbeKind::Exec) {
        problems.push(Problem::at(
            p.span(),
            if spec.command.is_some() {
                format!("the probe of `{name}` has a `command`, which only an `exec` probe uses")
            } else {
                format!("the `exec` probe of `{name}` has no `command`")
            },
            "write `probe = { type = \"exec\", command = [\"pg_isready\", \"-q\"] }`: the command runs in the service's container and passes when it exits 0",
        ));
    }
    if spec.path.is_some() && !matches!(spec.kind, RawProbeKind::Http) {
        problems.push(Problem::at(
            p.span(),
            format!("the probe of `{name}` has a `path`, which only an `http` probe uses"),
            "remove `path`, or use `type = \"http\"`",
        ));
    }
    match spec.kind {
        RawProbeKind::Protocol(kind) => ProbeSpec::Protocol(kind),
        RawProbeKind::None => ProbeSpec::None,
        RawProbeKind::Exit => ProbeSpec::Exit,
        RawProbeKind::Exec => {
            let command = spec.command.as_ref().map(|c| c.get_ref().clone());
            if let Some(c) = spec.command.as_ref().filter(|c| c.get_ref().is_empty()) {
                problems.push(Problem::at(
                    c.span(),
                    format!("the `exec` probe of `{name}` has an empty `command`"),
                    "give the program and its arguments, e.g. `command = [\"pg_isready\", \"-q\"]`",
                ));
            }
            ProbeSpec::Exec(command.unwrap_or_default())
        }
        RawProbeKind::Tcp => ProbeSpec::Tcp {
            port: port_or_primary(problems),
        },
        RawProbeKind::Http => {
            let path = spec.path.clone().unwrap_or_else(|| "/health".into());
            if !path.starts_with('/') {
                problems.push(Problem::at(
                    p.span(),
                    format!("the probe path `{path}` of `{name}` must start with `/`"),
                    "write an absolute path such as `/health`",
                ));
            }
            ProbeSpec::Http {
                path,
                port: port_or_primary(problems),
            }
        }
    }
}

/// A protocol probe speaks to its own kind of server only.
fn check_probe_kind(name: &str, raw: &RawService, probe: &ProbeSpec, problems: &mut Vec<Problem>) {
    let protocol_kind = match probe {
        ProbeSpec::Protocol(kind) => Some(*kind),
        _ => None,
    };
    if let (Some(k), Some(p)) = (protocol_kind, &raw.probe) {
        if k != raw.kind {
            problems.push(Problem::at(
                p.span(),
                format!(
                    "a `{k}` probe needs a `{k}` service, and `{name}` is a `{}`",
                    raw.kind
                ),
                "use `type = \"http\"` or `type = \"tcp\"` for a service of your own",
            ));
        }
    }
}

/// The kinds whose servers hold databases, for messages: `postgres and mariadb`.
fn database_kinds() -> String {
    let kinds: Vec<&str> = Kind::ALL
        .iter()
        .filter(|k| holds_databases(**k))
        .map(|k| k.name())
        .collect();
    kinds.join(" and ")
}

/// Whether a kind's servers hold databases the harness creates.
fn holds_databases(kind: Kind) -> bool {
    kind.server().is_some_and(|s| s.holds_databases())
}

/// `databases`: extra databases of a server that holds databases.
fn databases(name: &str, raw: &RawService, problems: &mut Vec<Problem>) -> Vec<String> {
    let mut databases = Vec::new();
    for db in &raw.databases {
        if !holds_databases(raw.kind) {
            problems.push(Problem::at(
                db.span(),
                format!(
                    "`databases` only applies to {} services, and `{name}` is a `{}`",
                    database_kinds(),
                    raw.kind
                ),
                "remove `databases` from this service",
            ));
            break;
        }
        let d = db.get_ref();
        if d.is_empty() || !d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            problems.push(Problem::at(
                db.span(),
                format!("`{d}` is not a database name the harness can create"),
                "use letters, digits and `_` only",
            ));
        } else {
            databases.push(d.clone());
        }
    }
    databases
}

/// `user`, `password` and `database`; the database of a server that holds databases must be
/// one the harness can create.
fn credentials(raw: &RawService, problems: &mut Vec<Problem>) -> Credentials {
    if let Some(db) = &raw.database {
        let d = db.get_ref();
        if holds_databases(raw.kind)
            && (d.is_empty() || !d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            problems.push(Problem::at(
                db.span(),
                format!("`{d}` is not a database name the harness can create"),
                "use letters, digits and `_` only, e.g. `database = \"app\"`",
            ));
        }
    }
    Credentials {
        user: raw.user.clone(),
        password: raw.password.clone(),
        database: raw.database.as_ref().map(|d| d.get_ref().clone()),
    }
}

/// `paths`: relative to the manifest's directory, never empty.
fn check_paths(name: &str, raw: &RawService, problems: &mut Vec<Problem>) {
    for path in &raw.paths {
        let text = path.get_ref();
        if text.trim().is_empty() || Path::new(text).is_absolute() {
            problems.push(Problem::at(
                path.span(),
                if text.trim().is_empty() {
                    format!("`paths` of service `{name}` holds an empty path")
                } else {
                    format!("`paths` of service `{name}` holds `{text}`, which is not a path inside the repository")
                },
                "list directories or files relative to the manifest's directory, e.g. `paths = [\"orders\", \"shop-common\"]`",
            ));
        }
    }
}

fn check_env_names(name: &str, raw: &RawService, problems: &mut Vec<Problem>) {
    for key in raw.env.keys() {
        let k = key.get_ref();
        let mut chars = k.chars();
        let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            problems.push(Problem::at(
                key.span(),
                format!("`{k}` is not an environment variable name (service `{name}`)"),
                "use letters, digits and `_`, not starting with a digit, e.g. `DATABASE_URL = \"{{ postgres.url }}\"`",
            ));
        }
    }
}

fn default_probe(kind: Kind, ports: &BTreeMap<String, u16>) -> ProbeSpec {
    if kind.server().is_some() {
        return ProbeSpec::Protocol(kind);
    }
    match ports.keys().next() {
        Some(_) if ports.contains_key("http") => ProbeSpec::Tcp {
            port: "http".into(),
        },
        Some(first) => ProbeSpec::Tcp {
            port: first.clone(),
        },
        None => ProbeSpec::None,
    }
}
