//! A docker-compose file read as a manifest: its services, images, environment, ports,
//! dependencies, healthchecks and volumes become the manifest's, with the harness's semantics
//! (see the README's "Use it in your repository"):
//!
//! - images named `postgres`, `redis`, `rabbitmq` or `mariadb` (any tag or registry) are the
//!   built-in kinds, with their protocol probes and the credentials their `POSTGRES_*`-style
//!   variables give;
//! - a short `depends_on` waits for the dependency to be **ready** (its probe passed), not
//!   merely started; `service_completed_successfully` waits for a one-shot job to exit 0;
//! - a `healthcheck` becomes an `exec` probe run at the harness's cadence;
//! - host ports are never bound: every container port is published on an ephemeral port of
//!   127.0.0.1;
//! - what compose cannot say goes in an `x-harness` mapping per service.
//!
//! The YAML is parsed with positions ([`yaml`]), `${VAR}` interpolated as compose does
//! ([`interpolate`]), and the result is the same raw model a `stack.toml` is read into, so both
//! are validated by the same code and every problem points at its line in the compose file.

mod interpolate;
mod service;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::diagnostics::Problem;
use super::raw::{RawContractsSuite, RawDependsOn, RawManifest, RawService, RawStack, RawSuite};
use crate::model::names::closest;
use interpolate::{Outcome, Variables};
use yaml::{Node, Value};

/// Whether `path` names a compose file (`.yml` or `.yaml`) rather than a `stack.toml`.
pub fn is_compose(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yml" | "yaml")
    )
}

/// Keys of a service that change nothing in a test run: ignored with a warning.
const HARMLESS: &[&str] = &[
    "restart",
    "deploy",
    "logging",
    "container_name",
    "labels",
    "stop_grace_period",
    "stop_signal",
    "init",
    "tty",
    "stdin_open",
    "hostname",
    "domainname",
    "pull_policy",
    "platform",
    "mem_limit",
    "memswap_limit",
    "cpus",
    "cpu_shares",
    "ulimits",
    "shm_size",
    "oom_score_adj",
];

/// The top-level keys of a compose file.
const TOP_LEVEL: &[&str] = &[
    "services",
    "version",
    "name",
    "networks",
    "volumes",
    "x-harness",
];

/// The raw manifest a compose file describes. `env` looks variables up in the environment
/// (the `.env` file beside the compose file comes second, as in compose); what compose would
/// accept but a test run ignores is in `warnings`.
pub(super) fn read(
    path: &Path,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Option<RawManifest> {
    let root = match yaml::load(source) {
        Ok(Some(root)) => root,
        Ok(None) => {
            problems.push(Problem {
                span: None,
                message: "the compose file is empty".into(),
                help: "define the stack's services under `services:`".into(),
            });
            return None;
        }
        Err(p) => {
            problems.push(p);
            return None;
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let vars = Variables {
        env,
        dotenv: dotenv(dir, problems),
    };
    let mut ctx = Context {
        dir,
        vars,
        problems,
        warnings,
        unset: BTreeSet::new(),
    };
    let raw = ctx.manifest(&root);
    for name in std::mem::take(&mut ctx.unset) {
        ctx.warnings.push(Problem {
            span: None,
            message: format!("the variable `{name}` is not set: an empty string is used"),
            help: format!(
                "set it in the environment or in {}",
                dir.join(".env").display()
            ),
        });
    }
    raw
}

/// The variables of the `.env` file beside the compose file, if there is one.
fn dotenv(dir: &Path, problems: &mut Vec<Problem>) -> BTreeMap<String, String> {
    let file = dir.join(".env");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return BTreeMap::new();
    };
    match interpolate::parse_env_file(&text) {
        Ok(vars) => vars.into_iter().collect(),
        Err((line, message)) => {
            problems.push(Problem {
                span: None,
                message: format!("{}:{line}: {message}", file.display()),
                help: "write one `KEY=VALUE` per line (`#` starts a comment)".into(),
            });
            BTreeMap::new()
        }
    }
}

/// What reading one compose file needs as it goes.
pub(super) struct Context<'a, 'p> {
    dir: &'a Path,
    vars: Variables<'a>,
    problems: &'p mut Vec<Problem>,
    warnings: &'p mut Vec<Problem>,
    /// Variables used but not set.
    unset: BTreeSet<String>,
}

impl Context<'_, '_> {
    fn error(&mut self, span: &Range<usize>, message: impl Into<String>, help: impl Into<String>) {
        self.problems.push(Problem::at(span.clone(), message, help));
    }

    fn warn(&mut self, span: &Range<usize>, message: impl Into<String>, help: impl Into<String>) {
        self.warnings.push(Problem::at(span.clone(), message, help));
    }

    /// A scalar's text with `${VAR}` interpolated; `None` (and a problem) for anything else.
    fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        let Some(text) = node.text() else {
            let found = node.describe();
            self.error(
                &node.span,
                format!("{what} must be a single value, and this is {found}"),
                "write it as a string",
            );
            return None;
        };
        let mut outcome = Outcome::default();
        match interpolate::interpolate(text, &self.vars, &mut outcome) {
            Ok(s) => {
                self.unset.extend(outcome.unset);
                Some(s)
            }
            Err(e) => {
                self.error(
                    &node.span,
                    e,
                    "fix the `${…}` interpolation, or write `$$` for a literal `$`",
                );
                None
            }
        }
    }

    /// A scalar as a spanned string.
    fn spanned(&mut self, node: &Node, what: &str) -> Option<Spanned<String>> {
        self.string(node, what)
            .map(|s| Spanned::new(node.span.clone(), s))
    }

    /// A list of scalars, or (where compose allows it) one string split into words.
    fn words(&mut self, node: &Node, what: &str) -> Option<Vec<Spanned<String>>> {
        match &node.value {
            Value::Seq(items) => items.iter().map(|i| self.spanned(i, what)).collect(),
            Value::Str(_) | Value::Plain(_) => {
                let text = self.string(node, what)?;
                match split_words(&text) {
                    Ok(words) => Some(
                        words
                            .into_iter()
                            .map(|w| Spanned::new(node.span.clone(), w))
                            .collect(),
                    ),
                    Err(e) => {
                        self.error(
                            &node.span,
                            format!("{what}: {e}"),
                            "close the quote, or write the command as a list",
                        );
                        None
                    }
                }
            }
            _ => {
                self.error(
                    &node.span,
                    format!(
                        "{what} must be a string or a list, and this is {}",
                        node.describe()
                    ),
                    "write `command: [\"program\", \"arg\"]` or `command: program arg`",
                );
                None
            }
        }
    }

    /// The entries of a mapping; a problem if `node` is not one.
    fn entries<'n>(&mut self, node: &'n Node, what: &str) -> &'n [(Node, Node)] {
        match &node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            _ => {
                self.error(
                    &node.span,
                    format!("{what} must be a mapping, and this is {}", node.describe()),
                    "indent `key: value` lines under it",
                );
                &[]
            }
        }
    }

    fn manifest(&mut self, root: &Node) -> Option<RawManifest> {
        let entries = self.entries(root, "a compose file");
        let mut stack = RawStack::default();
        let mut suites = BTreeMap::new();
        let mut services = None;
        let mut volumes = BTreeSet::new();
        for (key, value) in entries {
            let Some(k) = key.text() else {
                self.error(&key.span, "keys must be names", "write `services:`");
                continue;
            };
            match k {
                "services" => services = Some(value),
                "version" => self.warn(
                    &key.span,
                    "`version` is obsolete and ignored",
                    "remove it (compose ignores it too)",
                ),
                "name" => stack.name = self.spanned(value, "`name`"),
                // Every service joins the run's one private network: only the shape is checked.
                "networks" => {
                    self.entries(value, "`networks`");
                }
                "volumes" => {
                    for (name, body) in self.entries(value, "`volumes`") {
                        if let Some(n) = name.text() {
                            volumes.insert(n.to_string());
                        }
                        if let Value::Map(opts) = &body.value {
                            if let Some((k, _)) = opts.first() {
                                self.warn(
                                    &k.span,
                                    "volume options are ignored: a volume of the run is a fresh directory removed with it",
                                    "remove the options, or keep them for compose",
                                );
                            }
                        }
                    }
                }
                "x-harness" => self.stack_extension(value, &mut stack, &mut suites),
                k if k.starts_with("x-") => {}
                other => {
                    let help = match closest(other, TOP_LEVEL.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => match other {
                            "secrets" | "configs" | "include" => "the harness does not support it yet: give the values as `environment` or `volumes` of the services".to_string(),
                            _ => "remove the key; the supported keys are listed in the README".to_string(),
                        },
                    };
                    self.error(
                        &key.span,
                        format!("`{other}` is not supported in a compose file the harness runs"),
                        help,
                    );
                }
            }
        }
        let Some(services) = services else {
            self.problems.push(Problem {
                span: None,
                message: "the compose file has no `services`".into(),
                help: "define the stack's services under `services:`".into(),
            });
            return None;
        };
        let profiles = active_profiles(&self.vars);
        let mut read = BTreeMap::new();
        let entries = self.entries(services, "`services`");
        let defined: BTreeSet<String> = entries
            .iter()
            .filter_map(|(k, v)| {
                let name = k.text()?;
                service::active(v, &profiles).then(|| name.to_string())
            })
            .collect();
        let mut jobs = BTreeSet::new();
        for (name, body) in entries {
            let Some(n) = name.text() else {
                self.error(
                    &name.span,
                    "a service's name must be a name",
                    "write `api:`",
                );
                continue;
            };
            if !defined.contains(n) {
                continue;
            }
            let found = service::Found {
                services: &defined,
                volumes: &volumes,
            };
            if let Some(s) = self.service(n, body, &found, &mut jobs) {
                read.insert(Spanned::new(name.span.clone(), n.to_string()), s);
            }
        }
        self.host_names(&mut read, &mut jobs, &mut suites);
        service::mark_jobs(&mut read, &jobs);
        service::link_addresses(&mut read);
        Some(RawManifest {
            stack,
            services: read,
            suites,
        })
    }

    /// Compose names that are not host names (`api_server`, `Api.v2`) become the harness's
    /// names for them (`api-server`, `api-v2`) everywhere they are referred to, and stay
    /// the names other containers reach them by (an alias). Two that become one are an error.
    fn host_names(
        &mut self,
        services: &mut BTreeMap<Spanned<String>, Spanned<RawService>>,
        jobs: &mut BTreeSet<String>,
        suites: &mut BTreeMap<String, RawSuite>,
    ) {
        let renamed: BTreeMap<String, String> = services
            .keys()
            .filter_map(|n| {
                let host = host_name(n.get_ref())?;
                (host != *n.get_ref()).then(|| (n.get_ref().clone(), host))
            })
            .collect();
        if renamed.is_empty() {
            return;
        }
        let rename = |name: &mut Spanned<String>| {
            if let Some(to) = renamed.get(name.get_ref()) {
                *name = Spanned::new(name.span(), to.clone());
            }
        };
        // Taken: a name as written, or the host name of more than one service.
        let taken = |from: &str, to: &str| {
            services.contains_key(to) || renamed.iter().any(|(f, t)| t == to && f != from)
        };
        let collisions: BTreeSet<String> = renamed
            .iter()
            .filter(|(from, to)| taken(from, to))
            .map(|(from, _)| from.clone())
            .collect();
        let old = std::mem::take(services);
        for (mut name, mut body) in old {
            let original = name.clone();
            rename(&mut name);
            if name != original {
                if collisions.contains(original.get_ref()) {
                    self.error(
                        &original.span(),
                        format!(
                            "service `{}` would be `{}` (a host name), which another service is already called",
                            original.get_ref(),
                            name.get_ref()
                        ),
                        "rename one of the two services",
                    );
                }
                body.get_mut().aliases.push(original);
            }
            match body.get_mut().depends_on.as_mut().map(|d| d.get_mut()) {
                Some(RawDependsOn::List(l)) => l.iter_mut().for_each(&rename),
                Some(RawDependsOn::Table(t)) => t.iter_mut().for_each(|(d, _)| rename(d)),
                None => {}
            }
            services.insert(name, body);
        }
        *jobs = std::mem::take(jobs)
            .into_iter()
            .map(|j| renamed.get(&j).cloned().unwrap_or(j))
            .collect();
        for suite in suites.values_mut() {
            suite.services.iter_mut().for_each(&rename);
        }
    }

    /// The top-level `x-harness`: the stack's `name`, `startup-timeout` and `suites`.
    fn stack_extension(
        &mut self,
        node: &Node,
        stack: &mut RawStack,
        suites: &mut BTreeMap<String, RawSuite>,
    ) {
        for (key, value) in self.entries(node, "`x-harness`") {
            match key.text() {
                Some("name") => stack.name = self.spanned(value, "`name`"),
                Some("startup-timeout") => {
                    stack.startup_timeout = self.spanned(value, "`startup-timeout`")
                }
                Some("state-dir") => stack.state_dir = self.spanned(value, "`state-dir`"),
                Some("contracts-suite") => {
                    stack.contracts_suite = self.contracts_suite(value);
                }
                Some("suites") => {
                    for (prefix, body) in self.entries(value, "`suites`") {
                        let Some(p) = prefix.text() else { continue };
                        if let Some(suite) = self.suite(body) {
                            suites.insert(p.to_string(), suite);
                        }
                    }
                }
                other => self.error(
                    &key.span,
                    format!(
                        "`{}` is not a key of the top-level `x-harness`",
                        other.unwrap_or("?")
                    ),
                    "use `name`, `startup-timeout`, `state-dir` or `suites` (per-service settings go in the service's own `x-harness`)",
                ),
            }
        }
    }

    /// One suite of the top-level `x-harness`: a list of services, or a mapping with
    /// `services` and `command` (a string split like a shell, or a list).
    /// `x-harness: contracts-suite: { dir, package, test }`.
    fn contracts_suite(&mut self, node: &Node) -> Option<Spanned<RawContractsSuite>> {
        let (mut dir, mut package, mut test) = (None, None, None);
        for (key, value) in self.entries(node, "`contracts-suite`") {
            match key.text() {
                Some("dir") => dir = self.spanned(value, "`contracts-suite.dir`"),
                Some("package") => package = self.spanned(value, "`contracts-suite.package`"),
                Some("test") => test = self.spanned(value, "`contracts-suite.test`"),
                other => self.error(
                    &key.span,
                    format!(
                        "`contracts-suite` has no key `{}`",
                        other.unwrap_or("?")
                    ),
                    "its keys are `dir` (the cargo project, relative to this file), `package` and `test`",
                ),
            }
        }
        let Some(package) = package else {
            self.error(
                &node.span,
                "`contracts-suite` names no `package`",
                "add `package: <the cargo package whose test target registers the provider states>`",
            );
            return None;
        };
        Some(Spanned::new(
            node.span.clone(),
            RawContractsSuite { dir, package, test },
        ))
    }

    fn suite(&mut self, node: &Node) -> Option<RawSuite> {
        let Value::Map(entries) = &node.value else {
            return Some(RawSuite {
                services: self.words(node, "a suite's services")?,
                ..RawSuite::default()
            });
        };
        let mut suite = RawSuite::default();
        for (key, value) in entries {
            match key.text() {
                Some("services") => suite.services = self.words(value, "a suite's services")?,
                Some("command") => {
                    suite.command = Some(Spanned::new(
                        value.span.clone(),
                        self.words(value, "a suite's `command`")?,
                    ))
                }
                other => suite.unknown.push(Spanned::new(
                    key.span.clone(),
                    other.unwrap_or("?").to_string(),
                )),
            }
        }
        Some(suite)
    }
}

/// The host name a compose service name stands for: lower case, `_` and `.` as `-`; `None`
/// when even that is not a valid name (the validation then reports the name as written).
fn host_name(name: &str) -> Option<String> {
    let host: String = name
        .chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    super::validate::valid_name(&host).then_some(host)
}

/// `COMPOSE_PROFILES`, comma-separated, as compose reads it.
fn active_profiles(vars: &Variables<'_>) -> BTreeSet<String> {
    vars.get("COMPOSE_PROFILES")
        .unwrap_or_default()
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// A command line split into words as a POSIX shell would (quotes and backslashes), which
/// is how compose reads `command: program arg`.
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("a `'` is not closed".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => word.push(c),
                            None => return Err("a `\"` is not closed".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("a `\"` is not closed".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_like_a_shell() {
        assert_eq!(
            split_words(r#"sh -c 'echo "a b"' x\ y "q\"" "#).unwrap(),
            ["sh", "-c", "echo \"a b\"", "x y", "q\""]
        );
        assert!(split_words("echo 'open").is_err());
    }

    #[test]
    fn compose_file_names_are_recognised() {
        assert!(is_compose(Path::new("docker-compose.test.yml")));
        assert!(is_compose(Path::new("compose.yaml")));
        assert!(!is_compose(Path::new("stack.toml")));
    }

    fn parse(text: &str) -> Result<crate::manifest::Manifest, String> {
        let settings = crate::settings::Settings::from_pairs([("PATH", "/bin")]);
        crate::manifest::Manifest::parse_with(Path::new("/p/compose.yaml"), text, &settings)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn names_that_are_not_host_names_become_ones_and_stay_reachable_as_written() {
        let m = parse(
            "services:\n  main_db:\n    image: postgres:16\n  web.api:\n    image: api:1\n    depends_on: [main_db]\n    environment:\n      DB: main_db:5432\nx-harness:\n  suites:\n    smoke: [web.api]\n",
        )
        .unwrap();
        let names: Vec<&str> = m.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["main-db", "web-api"]);
        let web = m.service("web-api").unwrap();
        assert_eq!(web.aliases, ["web.api"]);
        assert_eq!(m.service("main-db").unwrap().aliases, ["main_db"]);
        assert_eq!(web.depends_on[0].service, "main-db");
        assert_eq!(
            web.env[0].1.to_string(),
            "{{ main-db.host }}:{{ main-db.port.postgres }}"
        );
        assert_eq!(m.suites["smoke"], ["web-api"]);
    }

    #[test]
    fn healthcheck_timings_set_the_deadline_compose_would_give_up_at() {
        let m = parse(
            "services:\n  a:\n    image: a:1\n    healthcheck:\n      test: [CMD, 'true']\n      interval: 2s\n      timeout: 500ms\n      retries: 4\n      start_period: 1m\n  b:\n    image: b:1\n    healthcheck:\n      test: [CMD, 'true']\n",
        )
        .unwrap();
        assert_eq!(
            m.service("a").unwrap().startup_timeout,
            std::time::Duration::from_secs(70)
        );
        // No timings given: the stack's default, not compose's three 60 s rounds.
        assert_eq!(
            m.service("b").unwrap().startup_timeout,
            crate::manifest::DEFAULT_STARTUP_TIMEOUT
        );
    }

    #[test]
    fn suites_may_give_the_command_harness_test_runs() {
        let m = parse(
            "services:\n  a:\n    image: a:1\nx-harness:\n  state-dir: out/state\n  suites:\n    e2e:\n      services: [a]\n      command: python3 -m unittest -v\n    plain: [a]\n",
        )
        .unwrap();
        assert_eq!(m.suite_commands["e2e"], ["python3", "-m", "unittest", "-v"]);
        assert!(!m.suite_commands.contains_key("plain"));
        assert_eq!(m.suites["e2e"], ["a"]);
        assert_eq!(m.state_dir.as_deref(), Some(Path::new("/p/out/state")));
        let wrong = parse(
            "services:\n  a:\n    image: a:1\nx-harness:\n  suites:\n    e2e:\n      comand: [x]\n",
        )
        .unwrap_err();
        assert!(
            wrong.contains("suite `e2e` has the key `comand`"),
            "{wrong}"
        );
    }

    #[test]
    fn two_names_that_become_one_host_name_are_refused_whatever_their_order() {
        for (a, b) in [("api_server", "api-server"), ("Api", "api"), ("a.b", "a_b")] {
            let text = format!("services:\n  {a}:\n    image: x:1\n  {b}:\n    image: y:1\n");
            let err = parse(&text).unwrap_err();
            assert!(
                err.contains("which another service is already called"),
                "{a}/{b}: {err}"
            );
        }
    }
}
