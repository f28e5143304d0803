//! The stack manifest: a TOML file (or a docker-compose file, read by `compose`) describing the
//! services of a stack, parsed and validated once, before anything starts.
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
//!
//! The file is read into a raw model that mirrors the TOML (`raw`), checked and turned into
//! the types below (`validate`); what is wrong is reported as in a compiler (`diagnostics`).

mod compose;
mod convert;
mod diagnostics;
mod raw;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::template::Template;
use crate::settings::Settings;

pub use compose::is_compose;
pub use diagnostics::{ManifestError, Problem};
use raw::RawManifest;

/// The database a postgres service creates when the manifest names none (`database`).
pub use crate::model::kind::postgres::DEFAULT_DATABASE as DEFAULT_POSTGRES_DATABASE;

/// Default time a service gets to become ready.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

pub use crate::model::kind::Kind;

/// Which backend runs a stack, or one service of it (`backend = "…"`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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
    /// Once the dependency, a one-shot job (`probe = { type = "exit" }`: migrations,
    /// seeders), has exited with status 0.
    Completed,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Condition::Started => "started",
            Condition::Ready => "ready",
            Condition::Completed => "completed",
        })
    }
}

/// How readiness of a service is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSpec {
    /// The protocol check of a built-in server kind (Postgres `SELECT 1`, Redis `PING`, an
    /// authenticated AMQP connection, ...).
    Protocol(Kind),
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
    /// A command run inside the service's container (natively: on the host) exits 0; a
    /// compose file's `healthcheck`.
    Exec(Vec<String>),
    /// A one-shot job: ready once it has exited with status 0 (and failed when it exits with
    /// any other).
    Exit,
    /// No probe: the service is ready when it has started.
    None,
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeSpec::Protocol(kind) => f.write_str(
                kind.server()
                    .map_or("connection", |s| s.probe_description()),
            ),
            ProbeSpec::Http { path, port } => write!(f, "http GET {path} (port `{port}`)"),
            ProbeSpec::Tcp { port } => write!(f, "tcp connect (port `{port}`)"),
            ProbeSpec::Exec(command) => write!(f, "exec `{}`", command.join(" ")),
            ProbeSpec::Exit => f.write_str("exits with status 0"),
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
    /// Arguments passed to the image's entrypoint (container) or the `binary` (native); a
    /// native `command` is a whole command line and takes none.
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
    /// Container backend: the entrypoint that replaces the image's.
    pub entrypoint: Option<Vec<Template>>,
    /// The working directory: inside the container as given; natively, relative to the
    /// manifest's directory (default: the manifest's directory).
    pub workdir: Option<String>,
    /// Container backend: the user the container runs as.
    pub run_as: Option<String>,
    /// Container backend: more names it is reached by on the run's network.
    pub aliases: Vec<String>,
    /// Container backend: mounts.
    pub volumes: Vec<Mount>,
    /// Container backend: in-memory filesystems at these paths.
    pub tmpfs: Vec<String>,
    /// Container backend: the image is built from this Dockerfile context (and tagged by a
    /// hash of it) instead of named.
    pub build: Option<Build>,
}

/// How a service's image is built (`build = { context = "./api" }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// The build context: a directory, absolute once validated (given relative to the
    /// manifest's directory).
    pub context: PathBuf,
    /// The Dockerfile, relative to the context (default `Dockerfile`).
    pub dockerfile: String,
    /// Build arguments (`ARG`).
    pub args: BTreeMap<String, String>,
    /// The stage to build, in a multi-stage Dockerfile.
    pub target: Option<String>,
}

/// A mount of the container backend (`volumes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// What is mounted.
    pub source: MountSource,
    /// Where, inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What a [`Mount`] mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A file or directory of the host; relative paths are relative to the manifest's directory.
    Host(PathBuf),
    /// A volume of the run, shared by the services that name it and removed with the run.
    Volume(String),
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

/// The cargo test target whose handlers hold a stack's provider states (`[stack]
/// contracts-suite`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractsSuite {
    /// The cargo project (or workspace) directory, absolute; cargo runs there.
    pub dir: PathBuf,
    /// The cargo package (`-p`).
    pub package: String,
    /// The test target (`--test`).
    pub test: String,
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
    /// The command `harness test` runs for each suite that has one (`[suites]` tables with a
    /// `command`), in the manifest's directory with the stack's endpoints in its environment.
    pub suite_commands: BTreeMap<String, Vec<String>>,
    /// `[stack] state-dir`, absolute; see [`Manifest::state_dir_for`].
    pub state_dir: Option<PathBuf>,
    /// `[stack] contracts-suite`: the cargo test target whose handlers hold the provider states
    /// `harness verify` uses (default: `suites`/`contracts` of the cargo workspace around the
    /// manifest).
    pub contracts_suite: Option<ContractsSuite>,
    /// What a test run ignores but the file says (a compose file's `restart`, an unset
    /// `${VAR}`), one line each with its position.
    pub warnings: Vec<String>,
}

impl Manifest {
    /// Reads and validates a manifest file: a `stack.toml`, or a compose file (`.yml`,
    /// `.yaml`) whose `${VAR}` come from the process's environment.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        Manifest::load_with(path, Settings::process())
    }

    /// [`Manifest::load`] with a compose file's variables from `settings`.
    pub fn load_with(path: &Path, settings: &Settings) -> Result<Manifest, ManifestError> {
        let source = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.display().to_string(),
            problems: vec![Problem {
                span: None,
                message: format!("cannot read the manifest: {e}"),
                help: "pass the path of a stack manifest or compose file with `--manifest <file>` (default: `stack.toml`, then `compose.yaml`, `docker-compose.yml` and their spellings, then `fixtures/stack.toml`)".into(),
            }],
            source: String::new(),
        })?;
        Manifest::parse_with(path, &source, settings)
    }

    /// Parses and validates manifest text; `path` is only used in messages (and tells a
    /// compose file by its extension).
    pub fn parse(path: &Path, source: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse_with(path, source, Settings::process())
    }

    /// [`Manifest::parse`] with a compose file's variables from `settings`.
    pub fn parse_with(
        path: &Path,
        source: &str,
        settings: &Settings,
    ) -> Result<Manifest, ManifestError> {
        let file = path.display().to_string();
        let fail = |mut problems: Vec<Problem>| {
            problems.sort_by_key(|p| p.span.map(|s| s.0).unwrap_or(0));
            ManifestError {
                file: file.clone(),
                problems,
                source: source.to_string(),
            }
        };
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let raw: RawManifest = if is_compose(path) {
            let vars = |name: &str| settings.interpolated(name).map(str::to_string);
            match compose::read(path, source, &vars, &mut problems, &mut warnings) {
                Some(raw) => raw,
                None => return Err(fail(problems)),
            }
        } else {
            toml::from_str(source).map_err(|e| fail(vec![diagnostics::toml_problem(&e)]))?
        };
        let mut manifest = validate::build(path, raw, &mut problems);
        if problems.is_empty() {
            manifest.warnings = warnings
                .iter()
                .map(|w| diagnostics::one_line(&file, source, w))
                .collect();
            Ok(manifest)
        } else {
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

    /// Where this stack's state, reports, timelines and logs go ([`Settings::state_dir`]):
    /// `HARNESS_STATE_DIR`, else `[stack] state-dir`, else `target/harness/` inside a cargo
    /// workspace, else `.harness/` beside the manifest.
    pub fn state_dir_for(&self, settings: &Settings) -> PathBuf {
        settings.state_dir(self.dir(), self.state_dir.as_deref())
    }
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
