//! The manifest as read from TOML: every value with its position, nothing checked yet.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use super::{Condition, Kind};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawManifest {
    #[serde(default)]
    pub(super) stack: RawStack,
    #[serde(default)]
    pub(super) services: BTreeMap<Spanned<String>, Spanned<RawService>>,
    #[serde(default)]
    pub(super) suites: BTreeMap<String, RawSuite>,
}

/// `[stack]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawStack {
    pub(super) name: Option<Spanned<String>>,
    pub(super) startup_timeout: Option<Spanned<String>>,
    pub(super) pull: Option<Spanned<String>>,
    pub(super) image_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) images: BTreeMap<Spanned<String>, Spanned<String>>,
    /// Where state, reports, timelines and logs go, relative to the manifest.
    pub(super) state_dir: Option<Spanned<String>>,
    /// The cargo test target whose handlers hold the provider states for `harness verify`.
    pub(super) contracts_suite: Option<Spanned<RawContractsSuite>>,
}

/// `[stack] contracts-suite = { dir = "suite", package = "…", test = "contracts" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawContractsSuite {
    /// The cargo project (or workspace) directory, relative to the manifest (default: its own).
    pub(super) dir: Option<Spanned<String>>,
    /// The cargo package.
    pub(super) package: Spanned<String>,
    /// The test target (default `contracts`).
    pub(super) test: Option<Spanned<String>>,
}

/// One `[services.<name>]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawService {
    pub(super) kind: Kind,
    pub(super) image: Option<Spanned<String>>,
    pub(super) binary: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) args: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) env: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub(super) ports: BTreeMap<Spanned<String>, Spanned<i64>>,
    pub(super) depends_on: Option<Spanned<RawDependsOn>>,
    pub(super) probe: Option<Spanned<RawProbe>>,
    pub(super) startup_timeout: Option<Spanned<String>>,
    pub(super) user: Option<String>,
    pub(super) password: Option<String>,
    pub(super) database: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) databases: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) paths: Vec<Spanned<String>>,
    pub(super) backend: Option<Spanned<String>>,
    /// Container backend: replaces the image's entrypoint.
    pub(super) entrypoint: Option<Spanned<Vec<Spanned<String>>>>,
    /// The working directory: inside the container, or (native) relative to the manifest.
    pub(super) workdir: Option<Spanned<String>>,
    /// Container backend: the user the container runs as (`uid[:gid]` or a name).
    pub(super) run_as: Option<Spanned<String>>,
    /// Container backend: more host names other services reach it by.
    #[serde(default)]
    pub(super) aliases: Vec<Spanned<String>>,
    /// Container backend: `source:target[:ro]` mounts; a relative source is a directory of
    /// the manifest's, a bare name a volume of the run.
    #[serde(default)]
    pub(super) volumes: Vec<Spanned<String>>,
    /// Container backend: directories mounted as in-memory filesystems.
    #[serde(default)]
    pub(super) tmpfs: Vec<Spanned<String>>,
    /// Container backend: the image is built from a Dockerfile.
    pub(super) build: Option<Spanned<RawBuild>>,
}

/// `build = "./api"` or `build = { context = "./api", dockerfile = "…", args = {…}, target = "…" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawBuild {
    Context(String),
    Full {
        context: String,
        dockerfile: Option<String>,
        #[serde(default)]
        args: BTreeMap<String, String>,
        target: Option<String>,
    },
}

impl RawService {
    /// A service of `kind` with nothing else set (what a compose file's service is built on).
    pub(super) fn new(kind: Kind) -> RawService {
        RawService {
            kind,
            image: None,
            binary: None,
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            ports: BTreeMap::new(),
            depends_on: None,
            probe: None,
            startup_timeout: None,
            user: None,
            password: None,
            database: None,
            databases: Vec::new(),
            paths: Vec::new(),
            backend: None,
            entrypoint: None,
            workdir: None,
            run_as: None,
            aliases: Vec::new(),
            volumes: Vec::new(),
            tmpfs: Vec::new(),
            build: None,
        }
    }
}

/// `depends-on`: a list of names (each `ready`) or a table of `name = condition`.
#[derive(Debug)]
pub(super) enum RawDependsOn {
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

/// A `[suites]` entry: the services a suite exercises (`contracts = ["payments"]`), or a table
/// that also gives the command `harness test` runs for it
/// (`e2e = { services = ["api"], command = ["pytest", "tests"] }`).
#[derive(Debug, Default)]
pub(super) struct RawSuite {
    pub(super) services: Vec<Spanned<String>>,
    pub(super) command: Option<Spanned<Vec<Spanned<String>>>>,
    /// A key of the table that is neither `services` nor `command`.
    pub(super) unknown: Vec<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawSuite {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawSuite;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a list of service names or a table `{ services = [...], command = [...] }`",
                )
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut suite = RawSuite::default();
                while let Some(name) = seq.next_element()? {
                    suite.services.push(name);
                }
                Ok(suite)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut suite = RawSuite::default();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    match key.get_ref().as_str() {
                        "services" => suite.services = map.next_value()?,
                        "command" => suite.command = Some(map.next_value()?),
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            suite.unknown.push(key);
                        }
                    }
                }
                Ok(suite)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `probe = { type = "…", … }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    #[serde(rename = "type")]
    pub(super) kind: RawProbeKind,
    pub(super) path: Option<String>,
    pub(super) port: Option<Spanned<String>>,
    /// `exec`: the program and its arguments, run inside the service's container.
    pub(super) command: Option<Spanned<Vec<String>>>,
}

/// The probe's `type`: a server kind's protocol (`postgres`, `amqp`, ...), `http`, `tcp` or
/// `none`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub(super) enum RawProbeKind {
    Protocol(Kind),
    Http,
    Tcp,
    Exec,
    Exit,
    None,
}

impl TryFrom<String> for RawProbeKind {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "http" => Ok(RawProbeKind::Http),
            "tcp" => Ok(RawProbeKind::Tcp),
            "exec" => Ok(RawProbeKind::Exec),
            "exit" => Ok(RawProbeKind::Exit),
            "none" => Ok(RawProbeKind::None),
            _ => Kind::of_protocol(&name)
                .map(RawProbeKind::Protocol)
                .ok_or_else(|| {
                    let protocols: Vec<String> = Kind::ALL
                        .iter()
                        .filter_map(|k| k.server())
                        .map(|s| format!("`{}`", s.protocol()))
                        .chain(["`http`", "`tcp`", "`exec`", "`exit`", "`none`"].map(String::from))
                        .collect();
                    format!(
                        "unknown probe type `{name}`, expected one of {}",
                        protocols.join(", ")
                    )
                }),
        }
    }
}

/// The keys a `[services.<name>]` table may hold, for did-you-mean on an unknown key.
pub(super) const SERVICE_KEYS: &[&str] = &[
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
    "entrypoint",
    "workdir",
    "run-as",
    "aliases",
    "volumes",
    "tmpfs",
    "build",
];

/// The other keys of a manifest (tables, `[stack]`, probes), for did-you-mean on an unknown key.
pub(super) const STACK_KEYS: &[&str] = &[
    "stack",
    "services",
    "name",
    "type",
    "path",
    "port",
    "command",
    "pull",
    "image-prefix",
    "images",
    "state-dir",
    "suites",
    "contracts-suite",
    "dir",
    "package",
    "test",
];
