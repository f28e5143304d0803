//! From the raw model to the validated one: every problem is collected (none stops the
//! others being found), each with its position and a help text.
//!
//! The stack as a whole is checked here; one service in [`service`], and the templates
//! between services, which need every service built first, in [`references`].

mod references;
mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::diagnostics::{unknown_service_help, Problem};
use super::raw::RawDependsOn;
use super::raw::{RawManifest, RawStack};
use super::{
    parse_duration, valid_image, Condition, Images, Manifest, MountSource, ProbeSpec, PullPolicy,
    DEFAULT_STARTUP_TIMEOUT,
};

fn duration_field(value: &Spanned<String>, problems: &mut Vec<Problem>) -> Option<Duration> {
    match parse_duration(value.get_ref()) {
        Some(d) if !d.is_zero() => Some(d),
        Some(_) => {
            problems.push(Problem::at(
                value.span(),
                "a startup timeout of zero can never be met",
                "give the service time to start, e.g. `startup-timeout = \"30s\"`",
            ));
            None
        }
        None => {
            problems.push(Problem::at(
                value.span(),
                format!("`{}` is not a duration", value.get_ref()),
                "write a number with a unit: `500ms`, `30s` or `2m`",
            ));
            None
        }
    }
}

/// Whether `name` can be a service's name: a host name of lowercase letters, digits and `-`.
pub(super) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// The manifest `raw` describes; what is wrong with it goes to `problems`.
pub(super) fn build(path: &Path, raw: RawManifest, problems: &mut Vec<Problem>) -> Manifest {
    let default_timeout = raw
        .stack
        .startup_timeout
        .as_ref()
        .and_then(|t| duration_field(t, problems))
        .unwrap_or(DEFAULT_STARTUP_TIMEOUT);
    if raw.services.is_empty() {
        problems.push(Problem {
            span: None,
            message: "the manifest defines no services".into(),
            help: "add at least one `[services.<name>]` table with a `kind`".into(),
        });
    }
    let names: BTreeSet<&str> = raw.services.keys().map(|k| k.get_ref().as_str()).collect();
    let mut services = Vec::new();
    for (name, body) in &raw.services {
        check_service_name(name, problems);
        services.push(service::build_service(
            name.get_ref(),
            body,
            &names,
            default_timeout,
            problems,
        ));
    }
    references::check_templates(&raw, &services, problems);
    let images = build_images(&raw.stack, &names, problems);
    if let Some(n) = &raw.stack.name {
        if n.get_ref().trim().is_empty() || n.get_ref().contains(char::is_control) {
            problems.push(Problem::at(
                n.span(),
                "the stack's `name` is empty",
                "name the stack (it is shown in progress and reports), e.g. `name = \"shop\"`, or remove the key",
            ));
        }
    }
    let mut manifest = Manifest {
        path: path.to_path_buf(),
        name: raw
            .stack
            .name
            .as_ref()
            .map(|n| n.get_ref().clone())
            .unwrap_or_else(|| "stack".into()),
        services,
        images,
        suites: BTreeMap::new(),
        suite_commands: BTreeMap::new(),
        state_dir: raw.stack.state_dir.as_ref().and_then(|d| {
            let dir = d.get_ref().trim();
            if dir.is_empty() {
                problems.push(Problem::at(
                    d.span(),
                    "the stack's `state-dir` is empty",
                    "name a directory (relative to the manifest), e.g. `state-dir = \".harness\"`, or remove the key",
                ));
                return None;
            }
            let base = std::path::absolute(path.parent().unwrap_or(Path::new(".")))
                .unwrap_or_default();
            Some(base.join(dir))
        }),
        contracts_suite: contracts_suite(&raw, path, problems),
        warnings: Vec::new(),
    };
    (manifest.suites, manifest.suite_commands) = build_suites(&raw, &manifest, problems);
    check_completed(&raw, &manifest, problems);
    let dir = std::path::absolute(manifest.dir()).unwrap_or_else(|_| manifest.dir().to_path_buf());
    for (service, body) in manifest.services.iter_mut().zip(raw.services.values()) {
        if let Some(b) = &mut service.build {
            let given = b.context.join(&b.dockerfile);
            b.context = dir.join(
                b.context
                    .components()
                    .filter(|c| *c != std::path::Component::CurDir)
                    .collect::<std::path::PathBuf>(),
            );
            let dockerfile = b.context.join(&b.dockerfile);
            if !dockerfile.is_file() {
                let span = body
                    .get_ref()
                    .build
                    .as_ref()
                    .map_or(body.span(), |b| b.span());
                problems.push(Problem::at(
                    span,
                    format!(
                        "service `{}` is built from {}, which is not a file (beside the manifest)",
                        service.name,
                        given.display()
                    ),
                    "give the context directory relative to the manifest, and the Dockerfile relative to the context (default `Dockerfile`)",
                ));
            }
        }
        for m in &mut service.volumes {
            if let MountSource::Host(p) = &mut m.source {
                *p = dir.join(&*p);
            }
        }
    }
    if problems.is_empty() {
        check_cycles(&raw, &manifest, problems);
    }
    manifest
}

fn check_service_name(name: &Spanned<String>, problems: &mut Vec<Problem>) {
    let name_str = name.get_ref().as_str();
    if name_str == "self" {
        problems.push(Problem::at(
            name.span(),
            "a service cannot be named `self`",
            "rename it: in templates `{{ self.… }}` already means the service the template belongs to",
        ));
    } else if !valid_name(name_str) {
        problems.push(Problem::at(
            name.span(),
            format!("`{name_str}` is not a valid service name"),
            "use lowercase letters, digits and `-`, starting with a letter (it becomes a host name)",
        ));
    }
}

/// `[stack] contracts-suite`: a cargo directory (relative to the manifest, with a `Cargo.toml`),
/// a package and a test target (default `contracts`).
fn contracts_suite(
    raw: &RawManifest,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<super::ContractsSuite> {
    let suite = raw.stack.contracts_suite.as_ref()?;
    let body = suite.get_ref();
    let base = std::path::absolute(path.parent().unwrap_or(Path::new("."))).unwrap_or_default();
    let written = body.dir.as_ref().map(|d| d.get_ref().trim()).unwrap_or(".");
    let dir = base.join(written);
    if !dir.join("Cargo.toml").is_file() {
        let span = body
            .dir
            .as_ref()
            .map(|d| d.span())
            .unwrap_or_else(|| suite.span());
        problems.push(Problem::at(
            span,
            format!(
                "the contracts suite's directory `{written}` (relative to the manifest) has no Cargo.toml"
            ),
            "name the cargo project that holds the suite, relative to the manifest: `dir = \"suite\"`",
        ));
        return None;
    }
    let package = body.package.get_ref().trim().to_string();
    if package.is_empty() {
        problems.push(Problem::at(
            body.package.span(),
            "the contracts suite's `package` is empty",
            "name the cargo package whose test target registers the provider states",
        ));
        return None;
    }
    let test = body
        .test
        .as_ref()
        .map(|t| t.get_ref().trim().to_string())
        .unwrap_or_else(|| "contracts".into());
    Some(super::ContractsSuite { dir, package, test })
}

/// The `[suites]` table: the services of each suite, and the commands of those that have one.
fn build_suites(
    raw: &RawManifest,
    manifest: &Manifest,
    problems: &mut Vec<Problem>,
) -> (BTreeMap<String, Vec<String>>, BTreeMap<String, Vec<String>>) {
    let (mut suites, mut commands) = (BTreeMap::new(), BTreeMap::new());
    for (suite, body) in &raw.suites {
        let mut list = Vec::new();
        for s in &body.services {
            if manifest.service(s.get_ref()).is_none() {
                problems.push(Problem::at(
                    s.span(),
                    format!(
                        "suite `{suite}` names service `{}`, which is not defined",
                        s.get_ref()
                    ),
                    "list the services the suite exercises, by their names under [services]",
                ));
            }
            list.push(s.get_ref().clone());
        }
        for key in &body.unknown {
            problems.push(Problem::at(
                key.span(),
                format!(
                    "suite `{suite}` has the key `{}`, which a suite does not take",
                    key.get_ref()
                ),
                "a suite is a list of services, or a table with `services` and `command`",
            ));
        }
        if let Some(command) = &body.command {
            let words: Vec<String> = command
                .get_ref()
                .iter()
                .map(|w| w.get_ref().clone())
                .collect();
            if words.first().is_none_or(|w| w.trim().is_empty()) {
                problems.push(Problem::at(
                    command.span(),
                    format!("suite `{suite}` has an empty `command`"),
                    "give the program and its arguments, e.g. `command = [\"pytest\", \"tests\"]`",
                ));
            }
            commands.insert(suite.clone(), words);
        }
        suites.insert(suite.clone(), list);
    }
    (suites, commands)
}

/// A `completed` dependency is a one-shot job: its probe is `exit`.
fn check_completed(raw: &RawManifest, manifest: &Manifest, problems: &mut Vec<Problem>) {
    for (name, body) in &raw.services {
        let Some(deps) = &body.get_ref().depends_on else {
            continue;
        };
        let RawDependsOn::Table(table) = deps.get_ref() else {
            continue;
        };
        for (dep, condition) in table {
            let job = manifest.service(dep.get_ref());
            if *condition == Condition::Completed && job.is_some_and(|j| j.probe != ProbeSpec::Exit)
            {
                problems.push(Problem::at(
                    dep.span(),
                    format!(
                        "service `{}` waits for `{}` to complete, and `{}` is not a one-shot job",
                        name.get_ref(),
                        dep.get_ref(),
                        dep.get_ref()
                    ),
                    format!(
                        "give `{}` `probe = {{ type = \"exit\" }}` (it is done when it exits 0), or wait for it to be \"ready\"",
                        dep.get_ref()
                    ),
                ));
            }
        }
    }
}

fn check_cycles(raw: &RawManifest, manifest: &Manifest, problems: &mut Vec<Problem>) {
    let edges: BTreeMap<&str, Vec<&str>> = manifest
        .services
        .iter()
        .map(|s| {
            let deps = s.depends_on.iter().map(|d| d.service.as_str()).collect();
            (s.name.as_str(), deps)
        })
        .collect();
    let Some(cycle) = crate::model::dag::find_cycle(&edges) else {
        return;
    };
    let span = cycle
        .first()
        .and_then(|first| raw.services.get(first.as_str()))
        .and_then(|s| s.get_ref().depends_on.as_ref())
        .map(|d| d.span())
        .unwrap_or(0..0);
    problems.push(Problem::at(
        span,
        format!("dependency cycle: {}", cycle.join(" -> ")),
        "services cannot wait for each other: remove one of these `depends-on` entries",
    ));
}

/// `[stack] pull`, `image-prefix` and `[stack.images]`.
fn build_images(stack: &RawStack, names: &BTreeSet<&str>, problems: &mut Vec<Problem>) -> Images {
    let pull = stack.pull.as_ref().and_then(|p| {
        let policy = PullPolicy::parse(p.get_ref());
        if policy.is_none() {
            problems.push(Problem::at(
                p.span(),
                format!("`{}` is not a pull policy", p.get_ref()),
                format!("use {}", PullPolicy::CHOICES),
            ));
        }
        policy
    });
    let prefix = stack.image_prefix.as_ref().and_then(|p| {
        let text = p.get_ref().trim_end_matches('/');
        if !valid_image(text) || text.contains("://") {
            problems.push(Problem::at(
                p.span(),
                format!("`{}` is not an image prefix", p.get_ref()),
                "write a registry or mirror without a scheme, e.g. `image-prefix = \"mirror.example.com:5000\"`; images become `<prefix>/<image>`",
            ));
            return None;
        }
        Some(text.to_string())
    });
    let mut overrides = BTreeMap::new();
    for (service, image) in &stack.images {
        let name = service.get_ref().as_str();
        if !names.contains(name) {
            problems.push(Problem::at(
                service.span(),
                format!("`[stack.images]` names `{name}`, which is not a service"),
                unknown_service_help(name, names, "keys of `[stack.images]` are service names"),
            ));
            continue;
        }
        if !valid_image(image.get_ref()) {
            problems.push(Problem::at(
                image.span(),
                format!("`{}` is not an image reference", image.get_ref()),
                format!("write `name:tag`, e.g. `{name} = \"harness-local/{name}:latest\"`"),
            ));
            continue;
        }
        overrides.insert(name.to_string(), image.get_ref().clone());
    }
    Images {
        pull,
        prefix,
        overrides,
    }
}
