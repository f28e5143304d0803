//! The stack manifest: a TOML file describing the services of a stack, parsed and validated
//! once, before anything starts.
//!
//! ```toml
//! [stack]
//! name = "shop"
//! startup-timeout = "60s"          # default for every service
//! pull = "if-missing"              # container backend: never | if-missing | always
//! image-prefix = "mirror.local:5000"   # prepended to every image the manifest names
//!
//! [stack.images]                   # per-service image replacements (no prefix applied)
//! postgres = "harness-local/postgres:15"
//!
//! [services.postgres]
//! kind = "postgres"                # postgres | redis | rabbitmq | service
//! databases = ["orders"]           # extra databases created once it is ready
//!
//! [services.orders]
//! kind = "service"
//! binary = "orders"                # native backend: a binary of this workspace
//! image = "shop/orders:latest"     # container backend
//! ports = { http = 8080 }
//! env = { DATABASE_URL = "{{ postgres.url.orders }}", BIND_ADDR = "{{ self.bind.http }}" }
//! depends-on = { postgres = "ready" }
//! probe = { type = "http", path = "/health" }
//! ```
//!
//! Every error names the file, line and column and says how to fix it; see [`ManifestError`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::template::{Field, Template};

/// The database a postgres service creates when the manifest names none (`database`).
pub use crate::model::kind::postgres::DEFAULT_DATABASE as DEFAULT_POSTGRES_DATABASE;

/// Default time a service gets to become ready.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub use crate::model::kind::Kind;

/// Which backend runs a stack, or one service of it (`backend = "…"`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Local processes from installed binaries.
    Native,
    /// Nothing is started; endpoints come from `HARNESS_<SERVICE>_*` environment variables.
    External,
    /// Containers on a private network of a Docker engine (`DOCKER_HOST`).
    Container,
}

impl BackendKind {
    /// The accepted spellings, for messages.
    pub const CHOICES: &'static str = "`native`, `container` or `external`";

    /// Parses `native`, `container` or `external`.
    pub fn parse(text: &str) -> Option<BackendKind> {
        match text.trim() {
            "native" => Some(BackendKind::Native),
            "container" => Some(BackendKind::Container),
            "external" => Some(BackendKind::External),
            _ => None,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Native => "native",
            BackendKind::External => "external",
            BackendKind::Container => "container",
        })
    }
}

/// When a dependent may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// As soon as the dependency's process or container has started.
    Started,
    /// Once the dependency's readiness probe passes.
    Ready,
}

/// How readiness of a service is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSpec {
    /// `SELECT 1` on the service's database.
    Postgres,
    /// Redis `PING`.
    Redis,
    /// An AMQP connection opens (authenticated).
    Amqp,
    /// HTTP GET on `path` answers 2xx.
    Http {
        /// Path of the health endpoint.
        path: String,
        /// Name of the port to probe.
        port: String,
    },
    /// A TCP connect succeeds.
    Tcp {
        /// Name of the port to probe.
        port: String,
    },
    /// No probe: the service is ready when it has started.
    None,
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeSpec::Postgres => f.write_str("postgres `SELECT 1`"),
            ProbeSpec::Redis => f.write_str("redis `PING`"),
            ProbeSpec::Amqp => f.write_str("amqp connection open"),
            ProbeSpec::Http { path, port } => write!(f, "http GET {path} (port `{port}`)"),
            ProbeSpec::Tcp { port } => write!(f, "tcp connect (port `{port}`)"),
            ProbeSpec::None => f.write_str("none"),
        }
    }
}

/// How the native backend runs a generic service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// A built-in server (postgres, redis, rabbitmq): the backend knows how.
    Builtin,
    /// A binary built by cargo in this workspace, found in the target directory.
    Binary(String),
    /// An explicit command line; templates allowed in every argument.
    Command(Vec<Template>),
    /// No native launch: the service only runs as a container.
    ImageOnly,
}

/// One dependency edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The service depended upon.
    pub service: String,
    /// When the dependent may start.
    pub condition: Condition,
}

/// Credentials a service is given; `None` fields are generated at random per run.
pub use crate::model::kind::Credentials;

/// A validated service of the manifest.
#[derive(Debug, Clone)]
pub struct Service {
    /// Unique name; also its host name on a container network.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Image for the container backend.
    pub image: Option<String>,
    /// How the native backend runs it.
    pub launch: Launch,
    /// Extra arguments passed to the image's entrypoint or the binary.
    pub args: Vec<Template>,
    /// Environment, templates resolved at start.
    pub env: Vec<(String, Template)>,
    /// Named ports the service listens on (container ports; native ports are allocated).
    pub ports: BTreeMap<String, u16>,
    /// What it waits for.
    pub depends_on: Vec<Dependency>,
    /// Readiness probe.
    pub probe: ProbeSpec,
    /// Deadline to become ready.
    pub startup_timeout: Duration,
    /// Fixed credentials, if any.
    pub credentials: Credentials,
    /// Extra databases created once a postgres service is ready.
    pub databases: Vec<String>,
    /// Paths (relative to the manifest's directory) whose changes affect this service.
    pub paths: Vec<String>,
    /// `backend = "…"`: the backend that runs this service whatever runs the rest (CI service
    /// containers: `external`); `None` follows the stack's.
    pub backend: Option<BackendKind>,
}

impl Service {
    /// The name of the port other services and probes use by default.
    pub fn primary_port(&self) -> Option<&str> {
        if let Some((name, _)) = self.kind.default_port() {
            if self.ports.contains_key(name) {
                return Some(name);
            }
        }
        if self.ports.contains_key("http") {
            return Some("http");
        }
        self.ports.keys().next().map(String::as_str)
    }
}

/// When the container backend pulls an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Never: every image must be present locally.
    Never,
    /// Only images that are not present locally (the default).
    #[default]
    IfMissing,
    /// Every image, before anything starts.
    Always,
}

impl PullPolicy {
    /// The accepted spellings, for messages.
    pub const CHOICES: &'static str = "`never`, `if-missing` or `always`";

    /// Parses `never`, `if-missing` or `always`.
    pub fn parse(text: &str) -> Option<PullPolicy> {
        match text.trim() {
            "never" => Some(PullPolicy::Never),
            "if-missing" => Some(PullPolicy::IfMissing),
            "always" => Some(PullPolicy::Always),
            _ => None,
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullPolicy::Never => "never",
            PullPolicy::IfMissing => "if-missing",
            PullPolicy::Always => "always",
        })
    }
}

/// Image settings of a stack, used by the container backend. Environment variables
/// (`HARNESS_PULL`, `HARNESS_IMAGE_PREFIX`, `HARNESS_IMAGE_<SERVICE>`) override them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Images {
    /// `[stack] pull`; `None`: the default ([`PullPolicy::IfMissing`]).
    pub pull: Option<PullPolicy>,
    /// `[stack] image-prefix`: a registry or mirror put in front of every image the services
    /// name (`<prefix>/<image>`).
    pub prefix: Option<String>,
    /// `[stack.images]`: service name to the image that replaces its own (used as is).
    pub overrides: BTreeMap<String, String>,
}

/// Whether a text can be an image reference (`name[:tag]`, `registry/name@digest`).
pub fn valid_image(image: &str) -> bool {
    !image.trim().is_empty() && !image.contains(char::is_whitespace)
}

/// A parsed and validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it was read from.
    pub path: PathBuf,
    /// Name of the stack.
    pub name: String,
    /// Services, sorted by name.
    pub services: Vec<Service>,
    /// Image settings for the container backend.
    pub images: Images,
    /// Suites (trial-name prefixes) and the services each exercises: `[suites]` table.
    pub suites: BTreeMap<String, Vec<String>>,
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let source = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.display().to_string(),
            problems: vec![Problem {
                span: None,
                message: format!("cannot read the manifest: {e}"),
                help: "pass the path of a stack manifest with `--manifest <file>` (default: `stack.toml`, then `fixtures/stack.toml`)".into(),
            }],
            source: String::new(),
        })?;
        Manifest::parse(path, &source)
    }

    /// Parses and validates manifest text; `path` is only used in messages.
    pub fn parse(path: &Path, source: &str) -> Result<Manifest, ManifestError> {
        let file = path.display().to_string();
        let fail = |problems: Vec<Problem>| ManifestError {
            file: file.clone(),
            problems,
            source: source.to_string(),
        };
        let raw: RawManifest = toml::from_str(source).map_err(|e| fail(vec![toml_problem(&e)]))?;
        let mut problems = Vec::new();
        let manifest = build(path, raw, &mut problems);
        if problems.is_empty() {
            Ok(manifest)
        } else {
            problems.sort_by_key(|p| p.span.map(|s| s.0).unwrap_or(0));
            Err(fail(problems))
        }
    }

    /// Looks a service up by name.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The manifest reduced to the services `keep` accepts; dependencies on services left out
    /// are dropped (a backend given a part of a stack sees only its part).
    pub fn only(&self, keep: impl Fn(&Service) -> bool) -> Manifest {
        let mut part = self.clone();
        part.services.retain(|s| keep(s));
        let names: BTreeSet<String> = part.services.iter().map(|s| s.name.clone()).collect();
        for s in &mut part.services {
            s.depends_on.retain(|d| names.contains(&d.service));
        }
        part
    }

    /// The directory the manifest lives in; relative paths in it are relative to this.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawManifest {
    #[serde(default)]
    stack: RawStack,
    #[serde(default)]
    services: BTreeMap<Spanned<String>, Spanned<RawService>>,
    #[serde(default)]
    suites: BTreeMap<String, Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawStack {
    name: Option<Spanned<String>>,
    startup_timeout: Option<Spanned<String>>,
    pull: Option<Spanned<String>>,
    image_prefix: Option<Spanned<String>>,
    #[serde(default)]
    images: BTreeMap<Spanned<String>, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawService {
    kind: Kind,
    image: Option<Spanned<String>>,
    binary: Option<Spanned<String>>,
    command: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    args: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    ports: BTreeMap<Spanned<String>, Spanned<i64>>,
    depends_on: Option<Spanned<RawDependsOn>>,
    probe: Option<Spanned<RawProbe>>,
    startup_timeout: Option<Spanned<String>>,
    user: Option<String>,
    password: Option<String>,
    database: Option<Spanned<String>>,
    #[serde(default)]
    databases: Vec<Spanned<String>>,
    #[serde(default)]
    paths: Vec<Spanned<String>>,
    backend: Option<Spanned<String>>,
}

/// `depends-on`: a list of names (each `ready`) or a table of `name = condition`.
#[derive(Debug)]
enum RawDependsOn {
    List(Vec<Spanned<String>>),
    Table(Vec<(Spanned<String>, Condition)>),
}

impl<'de> Deserialize<'de> for RawDependsOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawDependsOn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a list of service names or a table of `name = \"started\" | \"ready\"`",
                )
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(name) = seq.next_element()? {
                    v.push(name);
                }
                Ok(RawDependsOn::List(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(name) = map.next_key()? {
                    v.push((name, map.next_value()?));
                }
                Ok(RawDependsOn::Table(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    #[serde(rename = "type")]
    kind: RawProbeKind,
    path: Option<String>,
    port: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawProbeKind {
    Postgres,
    Redis,
    Amqp,
    Http,
    Tcp,
    None,
}

/// One thing wrong with a manifest.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Byte range in the file, when known.
    pub span: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: String,
}

impl Problem {
    fn at(
        span: std::ops::Range<usize>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Problem {
            span: Some((span.start, span.end)),
            message: message.into(),
            help: help.into(),
        }
    }
}

/// A manifest that cannot be used, with every problem found in it.
#[derive(Debug, Clone)]
pub struct ManifestError {
    /// The manifest's path as given.
    pub file: String,
    /// Everything wrong, in file order.
    pub problems: Vec<Problem>,
    source: String,
}

impl std::error::Error for ManifestError {}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "error: {}", p.message)?;
            match p.span {
                Some((start, end)) => {
                    let (line, col) = line_col(&self.source, start);
                    writeln!(f, "  --> {}:{}:{}", self.file, line, col)?;
                    let text = self.source.lines().nth(line - 1).unwrap_or("");
                    let width = line.to_string().len();
                    let span_len = end
                        .saturating_sub(start)
                        .clamp(1, text.len().saturating_sub(col - 1).max(1));
                    writeln!(f, "{:width$} |", "")?;
                    writeln!(f, "{line} | {text}")?;
                    writeln!(
                        f,
                        "{:width$} | {}{}",
                        "",
                        " ".repeat(col - 1),
                        "^".repeat(span_len)
                    )?;
                }
                None => writeln!(f, "  --> {}", self.file)?,
            }
            write!(f, "  = help: {}", p.help)?;
        }
        Ok(())
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

const SERVICE_KEYS: &[&str] = &[
    "kind",
    "image",
    "binary",
    "command",
    "args",
    "env",
    "ports",
    "depends-on",
    "probe",
    "startup-timeout",
    "user",
    "password",
    "database",
    "databases",
    "paths",
    "backend",
];

const STACK_KEYS: &[&str] = &[
    "stack",
    "services",
    "name",
    "type",
    "path",
    "port",
    "pull",
    "image-prefix",
    "images",
];

fn toml_problem(e: &toml::de::Error) -> Problem {
    let message = e.message().trim().to_string();
    let help = if let Some(field) = between(&message, "unknown field `", "`") {
        match closest(
            field,
            SERVICE_KEYS
                .iter()
                .copied()
                .chain(STACK_KEYS.iter().copied()),
        ) {
            Some(s) => format!("did you mean `{s}`? remove or rename the key"),
            None => "remove the key; the manifest format is described in the README".into(),
        }
    } else if message.contains("unknown variant `service_healthy`") {
        "did you mean \"ready\"? docker compose's `service_healthy` is the harness's `ready`: the dependency's probe passed".into()
    } else if message.contains("unknown variant `service_started`") {
        "did you mean \"started\"? docker compose's `service_started` is the harness's `started`: the dependency's process or container is running".into()
    } else if message.contains("unknown variant") {
        "use one of the values listed above".into()
    } else if message.contains("duplicate key") {
        "each service (and each key) may appear only once: rename or merge the duplicate".into()
    } else if message.contains("expected a list of service names") {
        "write `depends-on = [\"postgres\"]` or `depends-on = { postgres = \"ready\" }`".into()
    } else if message.contains("missing field `kind`") {
        "add `kind = \"postgres\" | \"redis\" | \"rabbitmq\" | \"service\"` to the service".into()
    } else if message.contains("invalid type") {
        "check the value's type against the manifest format in the README".into()
    } else {
        "fix the TOML syntax at this position".into()
    };
    Problem {
        span: e.span().map(|s| (s.start, s.end)),
        message,
        help,
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Parses `"250ms"`, `"30s"`, `"2m"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

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

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

fn build(path: &Path, raw: RawManifest, problems: &mut Vec<Problem>) -> Manifest {
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
        services.push(build_service(
            name_str,
            body,
            &names,
            default_timeout,
            problems,
        ));
    }
    check_templates(&raw, &services, problems);
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
    let manifest = Manifest {
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
    };
    let mut manifest = manifest;
    for (suite, services) in &raw.suites {
        let mut list = Vec::new();
        for s in services {
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
        manifest.suites.insert(suite.clone(), list);
    }
    if problems.is_empty() {
        if let Err(cycle) = crate::graph::Graph::new(&manifest) {
            let first = &cycle.path[0];
            let span = raw
                .services
                .get(first.as_str())
                .and_then(|s| s.get_ref().depends_on.as_ref())
                .map(|d| d.span())
                .unwrap_or(0..0);
            problems.push(Problem::at(
                span,
                format!("dependency cycle: {}", cycle.path.join(" -> ")),
                "services cannot wait for each other: remove one of these `depends-on` entries",
            ));
        }
    }
    manifest
}

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
            let help = match closest(name, names.iter().copied()) {
                Some(s) => format!(
                    "did you mean `{s}`? the services are: {}",
                    join(names.iter().copied())
                ),
                None => format!(
                    "keys of `[stack.images]` are service names: {}",
                    join(names.iter().copied())
                ),
            };
            problems.push(Problem::at(
                service.span(),
                format!("`[stack.images]` names `{name}`, which is not a service"),
                help,
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

fn build_service(
    name: &str,
    body: &Spanned<RawService>,
    names: &BTreeSet<&str>,
    default_timeout: Duration,
    problems: &mut Vec<Problem>,
) -> Service {
    let raw = body.get_ref();
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
                let help = match closest(dep_name, names.iter().copied()) {
                    Some(s) => format!(
                        "did you mean `{s}`? the services are: {}",
                        join(names.iter().copied())
                    ),
                    None => format!(
                        "add a `[services.{dep_name}]` table or use one of: {}",
                        join(names.iter().copied())
                    ),
                };
                problems.push(Problem::at(
                    dep.span(),
                    format!("service `{name}` depends on `{dep_name}`, which is not defined"),
                    help,
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

    let backend = raw.backend.as_ref().and_then(|b| {
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
    });

    let launch = match (raw.kind, &raw.binary, &raw.command) {
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
        (Kind::Service, None, Some(cmd)) => {
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
        (Kind::Service, None, None) => {
            // An external service runs elsewhere: the harness needs only its endpoint.
            if raw.image.is_none() && backend != Some(BackendKind::External) {
                problems.push(Problem::at(
                    body.span().start..body.span().start + 1,
                    format!("service `{name}` has nothing to run"),
                    "give it a `binary` (native backend), a `command`, or an `image` (container backend)",
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
    };

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

    let probe = match &raw.probe {
        None => default_probe(raw.kind, &ports),
        Some(p) => {
            let spec = p.get_ref();
            let port = match &spec.port {
                Some(port) => {
                    if !ports.contains_key(port.get_ref()) {
                        problems.push(Problem::at(
                            port.span(),
                            format!("the probe of `{name}` uses port `{}`, which the service does not declare", port.get_ref()),
                            format!("declare it under `ports` or use one of: {}", join(ports.keys().map(String::as_str))),
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
                            format!(
                                "the probe of `{name}` needs a port, and the service declares none"
                            ),
                            "add `ports = { http = 8080 }` to the service",
                        ));
                        String::new()
                    })
            };
            if spec.path.is_some() && !matches!(spec.kind, RawProbeKind::Http) {
                problems.push(Problem::at(
                    p.span(),
                    format!("the probe of `{name}` has a `path`, which only an `http` probe uses"),
                    "remove `path`, or use `type = \"http\"`",
                ));
            }
            match spec.kind {
                RawProbeKind::Postgres => ProbeSpec::Postgres,
                RawProbeKind::Redis => ProbeSpec::Redis,
                RawProbeKind::Amqp => ProbeSpec::Amqp,
                RawProbeKind::None => ProbeSpec::None,
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
    };
    let protocol_kind = match probe {
        ProbeSpec::Postgres => Some(Kind::Postgres),
        ProbeSpec::Redis => Some(Kind::Redis),
        ProbeSpec::Amqp => Some(Kind::Rabbitmq),
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

    let startup_timeout = raw
        .startup_timeout
        .as_ref()
        .and_then(|t| duration_field(t, problems))
        .unwrap_or(default_timeout);

    let mut databases = Vec::new();
    for db in &raw.databases {
        if raw.kind != Kind::Postgres {
            problems.push(Problem::at(
                db.span(),
                format!(
                    "`databases` only applies to postgres services, and `{name}` is a `{}`",
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

    if let Some(db) = &raw.database {
        let d = db.get_ref();
        if raw.kind == Kind::Postgres
            && (d.is_empty() || !d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            problems.push(Problem::at(
                db.span(),
                format!("`{d}` is not a database name the harness can create"),
                "use letters, digits and `_` only, e.g. `database = \"app\"`",
            ));
        }
    }

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
        credentials: Credentials {
            user: raw.user.clone(),
            password: raw.password.clone(),
            database: raw.database.as_ref().map(|d| d.get_ref().clone()),
        },
        databases,
        paths: raw.paths.iter().map(|p| p.get_ref().clone()).collect(),
        backend,
    }
}

fn default_probe(kind: Kind, ports: &BTreeMap<String, u16>) -> ProbeSpec {
    match kind {
        Kind::Postgres => ProbeSpec::Postgres,
        Kind::Redis => ProbeSpec::Redis,
        Kind::Rabbitmq => ProbeSpec::Amqp,
        Kind::Service => match ports.keys().next() {
            Some(_) if ports.contains_key("http") => ProbeSpec::Tcp {
                port: "http".into(),
            },
            Some(first) => ProbeSpec::Tcp {
                port: first.clone(),
            },
            None => ProbeSpec::None,
        },
    }
}

fn parse_template(value: &Spanned<String>, problems: &mut Vec<Problem>) -> Option<Template> {
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
fn check_templates(raw: &RawManifest, services: &[Service], problems: &mut Vec<Problem>) {
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
                let span = at..at + r.len;
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
                    continue;
                };
                if r.service != "self" && !service.depends_on.iter().any(|d| d.service == r.service)
                {
                    problems.push(Problem::at(
                        span.clone(),
                        format!("`{}` refers to `{}`, but `{}` does not depend on it", r.text, r.service, service.name),
                        format!("add `{}` to the `depends-on` of `{}` so its endpoint is known when `{}` starts", r.service, service.name, service.name),
                    ));
                }
                if let (Field::Url(Some(db)), Kind::Postgres) = (&r.field, target.kind) {
                    let default = target
                        .credentials
                        .database
                        .as_deref()
                        .unwrap_or(DEFAULT_POSTGRES_DATABASE);
                    let created: Vec<&str> = std::iter::once(default)
                        .chain(target.databases.iter().map(String::as_str))
                        .collect();
                    // `postgres` is the server's own maintenance database, always there.
                    if !created.contains(&db.as_str()) && db != "postgres" {
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
        }
    }
}

fn join<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.into_iter().collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &str = r#"
[services.postgres]
kind = "postgres"

[services.redis]
kind = "redis"
"#;

    fn parse(stack: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("m.toml"), &format!("{stack}\n{SERVICES}"))
    }

    #[test]
    fn image_settings_default_to_nothing() {
        let m = parse("").unwrap();
        assert_eq!(m.images, Images::default());
        assert_eq!(
            m.service("postgres").unwrap().image.as_deref(),
            Some("postgres:16")
        );
    }

    #[test]
    fn pull_prefix_and_per_service_images_are_read() {
        let m = parse(
            r#"
[stack]
pull = "never"
image-prefix = "mirror.local:5000/"

[stack.images]
postgres = "harness-local/postgres:15"
"#,
        )
        .unwrap();
        assert_eq!(m.images.pull, Some(PullPolicy::Never));
        assert_eq!(m.images.prefix.as_deref(), Some("mirror.local:5000"));
        assert_eq!(
            m.images.overrides,
            BTreeMap::from([(
                "postgres".to_string(),
                "harness-local/postgres:15".to_string()
            )])
        );
    }

    #[test]
    fn every_image_setting_problem_is_reported_with_its_position() {
        let err = parse(
            r#"[stack]
pull = "sometimes"
image-prefix = "https://mirror"

[stack.images]
postgress = "harness-local/postgres:15"
redis = "harness local/redis"
"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 4, "{text}");
        assert!(
            text.contains("error: `sometimes` is not a pull policy\n  --> m.toml:2:8"),
            "{text}"
        );
        assert!(
            text.contains("use `never`, `if-missing` or `always`"),
            "{text}"
        );
        assert!(
            text.contains("`https://mirror` is not an image prefix\n  --> m.toml:3:16"),
            "{text}"
        );
        assert!(
            text.contains(
                "`[stack.images]` names `postgress`, which is not a service\n  --> m.toml:6:1"
            ),
            "{text}"
        );
        assert!(text.contains("did you mean `postgres`?"), "{text}");
        assert!(
            text.contains("`harness local/redis` is not an image reference\n  --> m.toml:7:9"),
            "{text}"
        );
    }

    #[test]
    fn a_misspelt_stack_key_gets_a_suggestion() {
        let err = parse("[stack]\nimage-prefx = \"m\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `image-prefix`?"), "{err}");
    }

    #[test]
    fn pull_policies_parse_and_print() {
        for p in [PullPolicy::Never, PullPolicy::IfMissing, PullPolicy::Always] {
            assert_eq!(PullPolicy::parse(&p.to_string()), Some(p));
        }
        assert_eq!(PullPolicy::parse("missing"), None);
        assert_eq!(PullPolicy::default(), PullPolicy::IfMissing);
    }
}
