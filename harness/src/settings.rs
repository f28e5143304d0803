//! Settings: every variable of the environment the harness reads, in one table ([`VARIABLES`])
//! and one value ([`Settings`]) read once and passed down.
//!
//! The order is the same everywhere: a command-line flag (the caller puts it in with
//! [`Settings::with`]) beats the environment, which beats the manifest (`[stack]` keys, a
//! service's `backend`, `[stack.images]`: applied where the manifest is read, by the same
//! names), which beats the defaults below. The README's "Settings" table lists the same
//! variables as [`VARIABLES`], and a test holds them equal.
//!
//! A stack and a suite take their settings from their options ([`crate::StackOptions::settings`],
//! [`crate::runner::Suite::settings`]). What belongs to the whole process, not to one stack, reads
//! [`Settings::process`], a copy of the environment taken at its first use: where run
//! directories are (every run of the process and the reaping of dead ones must agree), the
//! Docker engine's address (for the teardown in a signal handler) and whether trial output is
//! captured. `PATH` is not a setting: programs are looked up on it the way the system does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One variable of the environment the harness reads (or, for [`Role::SetByHarness`], writes
/// for the programs it starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    /// The name; `<SERVICE>` stands for a service's name in upper case with `-` as `_`, `<NAME>`
    /// for a port's name likewise.
    pub name: &'static str,
    /// Who reads it.
    pub role: Role,
    /// What it does, its values and its default.
    pub meaning: &'static str,
}

/// Who reads a [`Variable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The engine: stacks, backends, attach.
    Stack,
    /// The suite runner.
    Runner,
    /// Contract verification.
    Verify,
    /// Set by the harness for the programs it starts (the services, the suite `harness verify`
    /// runs); reading them is those programs' business.
    SetByHarness,
}

/// Every variable the harness reads or sets, in the README's order.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "HARNESS_MANIFEST",
        role: Role::Stack,
        meaning: "the manifest when `--manifest` is not given; default: `stack.toml`, else a compose file (`compose.yaml`, `docker-compose.yml`, ...), else `fixtures/stack.toml`, in the current directory or a parent",
    },
    Variable {
        name: "HARNESS_BACKEND",
        role: Role::Stack,
        meaning: "`container` | `native` | `external` | `auto` (default): the stack's backend when `--backend` is not given",
    },
    Variable {
        name: "HARNESS_BACKEND_<SERVICE>",
        role: Role::Stack,
        meaning: "one service's backend, beating its `backend` in the manifest and `HARNESS_BACKEND`",
    },
    Variable {
        name: "HARNESS_<SERVICE>_HOST",
        role: Role::Stack,
        meaning: "external backend: the service's host (default `127.0.0.1`); `harness env` prints these for a running stack",
    },
    Variable {
        name: "HARNESS_<SERVICE>_PORT",
        role: Role::Stack,
        meaning: "external backend: the service's main port (required)",
    },
    Variable {
        name: "HARNESS_<SERVICE>_PORT_<NAME>",
        role: Role::Stack,
        meaning: "external backend: another named port of the service",
    },
    Variable {
        name: "HARNESS_<SERVICE>_USER",
        role: Role::Stack,
        meaning: "external backend: the server's user (likewise `_PASSWORD`, `_DATABASE`)",
    },
    Variable {
        name: "HARNESS_<SERVICE>_PASSWORD",
        role: Role::Stack,
        meaning: "external backend: the server's password",
    },
    Variable {
        name: "HARNESS_<SERVICE>_DATABASE",
        role: Role::Stack,
        meaning: "external backend: the server's database",
    },
    Variable {
        name: "HARNESS_<SERVICE>_URL",
        role: Role::SetByHarness,
        meaning: "the service's URL (`postgres://…`, `http://…`), for the suite commands of `harness test`",
    },
    Variable {
        name: "HARNESS_IMAGE_<SERVICE>",
        role: Role::Stack,
        meaning: "container backend: the image of one service (`image:tag`), beating `[stack.images]` and the manifest",
    },
    Variable {
        name: "NEXTEST_ENV",
        role: Role::Runner,
        meaning: "set by nextest for a setup script: `harness up --detach` appends the endpoints to it as `HARNESS_<SERVICE>_*` lines, and the stack stops when the nextest run ends",
    },
    Variable {
        name: "HARNESS_SERVER_IMAGE_<KIND>",
        role: Role::Stack,
        meaning: "container backend: the image of every built-in server of a kind (`POSTGRES`, `REDIS`, `RABBITMQ`, `MARIADB`) that `HARNESS_IMAGE_<SERVICE>` and `[stack.images]` leave alone, whatever image the manifest names (a compose file's `postgres:16-alpine` on a machine without a registry)",
    },
    Variable {
        name: "HARNESS_IMAGE_PREFIX",
        role: Role::Stack,
        meaning: "container backend: a registry or mirror put before every server image, beating `[stack] image-prefix`",
    },
    Variable {
        name: "HARNESS_PULL",
        role: Role::Stack,
        meaning: "container backend: `never` | `if-missing` (default) | `always`, beating `[stack] pull`",
    },
    Variable {
        name: "HARNESS_MOUNT_BINARIES",
        role: Role::Stack,
        meaning: "container backend: `0` runs service images as they are instead of mounting the freshly built binaries",
    },
    Variable {
        name: "HARNESS_DATA_ON_HOST",
        role: Role::Stack,
        meaning: "container backend: `0` keeps server data inside the containers instead of the run directory",
    },
    Variable {
        name: "HARNESS_BIN_DIR",
        role: Role::Stack,
        meaning: "where the workspace's binaries are (and no `cargo build` before a suite); default: where `cargo build` puts them for `HARNESS_CARGO_PROFILE`",
    },
    Variable {
        name: "HARNESS_CARGO_PROFILE",
        role: Role::Stack,
        meaning: "the cargo profile `binary` services are built with (`dev`, `release`, ...); default: the profile of the running test binary, else `dev`",
    },
    Variable {
        name: "CARGO_TARGET_DIR",
        role: Role::Stack,
        meaning: "cargo's target directory, as cargo reads it",
    },
    Variable {
        name: "CARGO",
        role: Role::Stack,
        meaning: "the cargo program to run (cargo sets it for the programs it runs); default `cargo`",
    },
    Variable {
        name: "HARNESS_RUNS_DIR",
        role: Role::Stack,
        meaning: "where runs keep their directories; default `/dev/shm/harness-runs` with 1 GiB free, else `$TMPDIR/harness-runs`",
    },
    Variable {
        name: "HARNESS_CACHE_DIR",
        role: Role::Stack,
        meaning: "where rebuildable state is kept (initialised clusters, file hashes); default `$XDG_CACHE_HOME/harness`, else `~/.cache/harness`",
    },
    Variable {
        name: "XDG_CACHE_HOME",
        role: Role::Stack,
        meaning: "the user's cache directory, as the XDG convention has it",
    },
    Variable {
        name: "HOME",
        role: Role::Stack,
        meaning: "the user's home, for `~/.cache/harness`",
    },
    Variable {
        name: "HARNESS_ATTACH",
        role: Role::Stack,
        meaning: "`0`: never attach to a stack `harness up --detach` started; start one of the run's own",
    },
    Variable {
        name: "DOCKER_HOST",
        role: Role::Stack,
        meaning: "the Docker engine's address, as Docker reads it; default `unix:///var/run/docker.sock`",
    },
    Variable {
        name: "HARNESS_VERBOSE",
        role: Role::Runner,
        meaning: "`1`: print every trial's output as it happens, not only a failing trial's",
    },
    Variable {
        name: "HARNESS_QUIET",
        role: Role::Runner,
        meaning: "set: no progress lines, only the results",
    },
    Variable {
        name: "HARNESS_JUNIT",
        role: Role::Runner,
        meaning: "the JUnit file to write; default `junit/<suite>.xml` in the state directory",
    },
    Variable {
        name: "HARNESS_STATE_DIR",
        role: Role::Stack,
        meaning: "where state, reports, timelines and logs go; default `[stack] state-dir`, else `target/harness/` inside a cargo workspace, else `.harness/` beside the manifest",
    },
    Variable {
        name: "HARNESS_ONLY",
        role: Role::Runner,
        meaning: "trial-name prefixes to run, comma-separated (`harness affected --filter` prints it); empty: every trial",
    },
    Variable {
        name: "HARNESS_SHARD",
        role: Role::Runner,
        meaning: "`<index>/<count>`: run one shard of the trials, e.g. `2/4`",
    },
    Variable {
        name: "HARNESS_RETRIES",
        role: Role::Runner,
        meaning: "extra attempts for a failing trial (default 0); a pass on a retry is reported flaky",
    },
    Variable {
        name: "PACT_BROKER_TOKEN",
        role: Role::Verify,
        meaning: "the Pact Broker's bearer token for `harness verify --broker-url`; never printed",
    },
    Variable {
        name: "PACT_DO_NOT_TRACK",
        role: Role::Verify,
        meaning: "`true` turns off the Pact libraries' usage reports: the `harness` command sets it for itself; a suite with contract trials sets it first thing in `main` (the library never changes the environment)",
    },
    Variable {
        name: "HARNESS_RUN_ID",
        role: Role::SetByHarness,
        meaning: "the run's id, in every process the run starts (how a later run finds leftovers)",
    },
    Variable {
        name: "HARNESS_SERVICE_DIR",
        role: Role::SetByHarness,
        meaning: "native backend: a scratch directory of the service's own inside the run directory, removed with the run (a service runs in the manifest's directory)",
    },
    Variable {
        name: "HARNESS_ENTRYPOINT",
        role: Role::SetByHarness,
        meaning: "container backend: a server's entrypoint script, given at run time",
    },
    Variable {
        name: "HARNESS_SEED_DIR",
        role: Role::SetByHarness,
        meaning: "container backend: where the local Postgres image's entrypoint hands out a fresh cluster for the harness to cache",
    },
    Variable {
        name: "HARNESS_VERIFY_<FIELD>",
        role: Role::SetByHarness,
        meaning: "`harness verify`'s request to the contracts suite (provider, pacts, broker, state-change URL, publishing, report file)",
    },
    Variable {
        name: "HARNESS_STATES_<FIELD>",
        role: Role::SetByHarness,
        meaning: "`harness states serve`'s request to the contracts suite (provider, listen address, URL file)",
    },
];

/// The file names a manifest is looked for by, in each directory from the current one up: a
/// `stack.toml`, then a compose file in compose's own order, then `fixtures/stack.toml`.
pub const MANIFEST_NAMES: [&str; 6] = [
    "stack.toml",
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
    "fixtures/stack.toml",
];

/// The environment's values of the [`VARIABLES`], read once; flags put in with [`Settings::with`]
/// beat them. Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    values: BTreeMap<String, String>,
    /// The whole environment, for what a manifest itself names (a compose file's `${VAR}`).
    environment: std::sync::Arc<BTreeMap<String, String>>,
}

impl Settings {
    /// This process's environment now: the [`VARIABLES`] that are set.
    pub fn from_env() -> Settings {
        Settings::from_pairs(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// The process's settings: [`Settings::from_env`] as it was at the first call. For what
    /// belongs to the whole process (see the module's documentation).
    pub fn process() -> &'static Settings {
        static PROCESS: OnceLock<Settings> = OnceLock::new();
        PROCESS.get_or_init(Settings::from_env)
    }

    /// Settings from name-value pairs (an environment of one's own, in tests); pairs that name
    /// no variable of [`VARIABLES`] are only seen by [`Settings::interpolated`].
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Settings {
        let environment: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Settings {
            values: environment
                .iter()
                .filter(|(k, _)| is_known(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            environment: std::sync::Arc::new(environment),
        }
    }

    /// These settings with `name` set to `value` (a command-line flag, which beats the
    /// environment).
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Settings {
        self.values.insert(name.to_string(), value.into());
        self
    }

    /// These settings without `name` (as if it were not set).
    pub fn without(mut self, name: &str) -> Settings {
        self.values.remove(name);
        self
    }

    /// The value of `name`, trimmed; `None` when unset or blank.
    pub fn get(&self, name: &str) -> Option<String> {
        self.values
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    /// Any variable of the environment exactly as set, empty or not: what a compose file's
    /// `${VAR}` names (which tells unset from empty).
    pub fn interpolated(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .or_else(|| self.environment.get(name))
            .map(String::as_str)
    }

    /// Whether `name` is set to `0` (how the switches that are on by default are turned off).
    pub fn is_off(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v == "0")
    }

    /// Whether `name` is set to something other than `0`.
    pub fn is_on(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v != "0")
    }

    /// The value of `name` as a path.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        self.get(name).map(PathBuf::from)
    }

    /// The manifest to use: `HARNESS_MANIFEST`, else `stack.toml`, else a compose file
    /// ([`MANIFEST_NAMES`]), else `fixtures/stack.toml`, looked up from the current directory
    /// upwards (`stack.toml` when none is found).
    pub fn manifest_path(&self) -> PathBuf {
        if let Some(p) = self.path("HARNESS_MANIFEST") {
            return p;
        }
        let cwd = std::env::current_dir().unwrap_or_default();
        for dir in cwd.ancestors() {
            for candidate in MANIFEST_NAMES {
                let p = dir.join(candidate);
                if p.is_file() {
                    return p;
                }
            }
        }
        "stack.toml".into()
    }

    /// Where cargo puts the workspace's binaries: `HARNESS_BIN_DIR`, else the directory of
    /// [`Settings::cargo_profile`] in `$CARGO_TARGET_DIR`, else in `target/` of the outermost
    /// cargo workspace around `manifest_dir` (`target/debug` for `dev`). `harness::build`
    /// corrects it from cargo's own output where a cargo configuration moves the target.
    pub fn bin_dir(&self, manifest_dir: &Path) -> PathBuf {
        if let Some(d) = self.path("HARNESS_BIN_DIR") {
            return d;
        }
        let start = canonical(manifest_dir);
        let root = cargo_workspace(&start).unwrap_or(start);
        self.cargo_target(&root)
            .join(profile_dir(&self.cargo_profile()))
    }

    /// Cargo's target directory for the workspace at `root`: `CARGO_TARGET_DIR`, else
    /// `<root>/target`.
    fn cargo_target(&self, root: &Path) -> PathBuf {
        self.path("CARGO_TARGET_DIR")
            .unwrap_or_else(|| root.join("target"))
    }

    /// The cargo profile `binary` services are built with: `HARNESS_CARGO_PROFILE`, else the
    /// profile the running program was built with when it lies in a cargo target directory
    /// (`target/<profile>/deps/…`, as a test binary does), else `dev`.
    pub fn cargo_profile(&self) -> String {
        if let Some(p) = self.get("HARNESS_CARGO_PROFILE") {
            return p;
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| profile_of_exe(&exe))
            .unwrap_or_else(|| "dev".into())
    }

    /// The directory for state, reports, timelines and logs: `HARNESS_STATE_DIR`, else
    /// `configured` (`[stack] state-dir`), else `harness/` in the target directory when the
    /// manifest is inside a cargo workspace, else `.harness/` beside the manifest.
    pub fn state_dir(&self, manifest_dir: &Path, configured: Option<&Path>) -> PathBuf {
        if let Some(d) = self.path("HARNESS_STATE_DIR") {
            return d;
        }
        if let Some(d) = configured {
            return d.to_path_buf();
        }
        // By where the manifest is, never by who asks: `harness up` and a suite binary of the
        // same manifest must agree on where the state file is.
        if let Some(root) = cargo_workspace(&canonical(manifest_dir)) {
            return self.cargo_target(&root).join("harness");
        }
        manifest_dir.join(".harness")
    }

    /// The JUnit file of `suite`: `HARNESS_JUNIT`, else `junit/<suite>.xml` in `state_dir`.
    pub fn junit(&self, suite: &str, state_dir: &Path) -> PathBuf {
        self.path("HARNESS_JUNIT")
            .unwrap_or_else(|| state_dir.join("junit").join(format!("{suite}.xml")))
    }

    /// Whether `HARNESS_BIN_DIR` names the binaries' directory (a caller who built them).
    pub fn bins_given(&self) -> bool {
        self.get("HARNESS_BIN_DIR").is_some()
    }

    /// Where rebuildable state is kept: `HARNESS_CACHE_DIR`, else `$XDG_CACHE_HOME/harness`,
    /// else `~/.cache/harness`, else a directory in the system's temporary directory.
    pub fn cache_dir(&self) -> PathBuf {
        if let Some(d) = self.path("HARNESS_CACHE_DIR") {
            return d;
        }
        if let Some(d) = self.path("XDG_CACHE_HOME") {
            return d.join("harness");
        }
        match self.path("HOME") {
            Some(h) => h.join(".cache").join("harness"),
            None => std::env::temp_dir().join("harness-cache"),
        }
    }

    /// A command of the cargo program (`CARGO`, else `cargo`) without the variables cargo gives
    /// a program it runs
    /// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, …): this process may be a `cargo test` or `cargo
    /// run` one, and a build script that reads them (ring's does) would otherwise see them
    /// change between a build from the shell and one from here, and rebuild itself and every
    /// crate above it (rustls, bollard, the pact crates, the harness) each time.
    pub fn cargo_command(&self) -> std::process::Command {
        let cargo = self.get("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(set_by_cargo_for_a_program) {
                cmd.env_remove(name);
            }
        }
        cmd
    }

    /// The Docker engine's address: `DOCKER_HOST`, else the local socket.
    pub fn docker_host(&self) -> String {
        self.get("DOCKER_HOST")
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
    }

    /// Whether a run may attach to a stack started by `harness up --detach` (unless
    /// `HARNESS_ATTACH=0`).
    pub fn attach(&self) -> bool {
        !self.is_off("HARNESS_ATTACH")
    }

    /// Whether every trial's output is printed as it happens (`HARNESS_VERBOSE`, not `0`).
    pub fn verbose(&self) -> bool {
        self.is_on("HARNESS_VERBOSE")
    }

    /// Whether the runner leaves out progress lines (`HARNESS_QUIET` set).
    pub fn quiet(&self) -> bool {
        self.values.contains_key("HARNESS_QUIET")
    }
}

/// The outermost directory around `dir` (itself included) with a `Cargo.toml`: the cargo
/// workspace a manifest belongs to, if any.
pub fn cargo_workspace(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .filter(|d| d.join("Cargo.toml").is_file())
        .last()
        .map(Path::to_path_buf)
}

fn canonical(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// The directory of a target directory that holds a profile's output: `debug` for `dev`,
/// `release` for `release` and `bench`'s parent, the profile's own name otherwise.
pub fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "release" | "bench" => "release",
        other => other,
    }
}

/// The profile a program in a cargo target directory was built with: `…/<dir>/deps/<exe>`
/// (test binaries) or `…/<dir>/<exe>` (binaries), where the grandparent (parent) holds a
/// `CACHEDIR.TAG` as every cargo target directory does.
fn profile_of_exe(exe: &Path) -> Option<String> {
    let mut dir = exe.parent()?;
    if dir.file_name()? == "deps" {
        dir = dir.parent()?;
    }
    if !dir.parent()?.join("CACHEDIR.TAG").is_file() {
        return None;
    }
    Some(match dir.file_name()?.to_str()? {
        "debug" => "dev".to_string(),
        other => other.to_string(),
    })
}

/// The target directory that holds a directory of binaries (`target/debug`).
pub fn target_dir_of(bins: &Path) -> PathBuf {
    bins.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Whether `name` is one of [`VARIABLES`] (a name with `<…>` parts matches any words there).
pub fn is_known(name: &str) -> bool {
    VARIABLES.iter().any(|v| matches(v.name, name))
}

/// Whether `name` fits `pattern`, whose `<…>` parts stand for one or more characters of
/// `A-Z`, `0-9` and `_`.
fn matches(pattern: &str, name: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('<') else {
        return pattern == name;
    };
    let Some(tail) = rest.split_once('>').map(|(_, t)| t) else {
        return pattern == name;
    };
    let Some(after) = name.strip_prefix(head) else {
        return false;
    };
    let word = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    // The placeholder takes at least one character; try every split (names are short).
    (1..=after.len()).any(|n| {
        after.is_char_boundary(n) && after[..n].chars().all(word) && matches(tail, &after[n..])
    })
}

/// Whether cargo sets the variable `name` for a program it runs (`cargo run`, `cargo test`), as
/// opposed to one a user sets for cargo (`CARGO_HOME`, `CARGO_TARGET_DIR`, `CARGO_PROFILE_*`).
fn set_by_cargo_for_a_program(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_service_names_and_nothing_else() {
        assert!(is_known("HARNESS_BACKEND"));
        assert!(is_known("HARNESS_BACKEND_POSTGRES"));
        assert!(is_known("HARNESS_CACHE_STORE_PORT_HTTP"));
        assert!(is_known("HARNESS_IMAGE_ORDERS"));
        assert!(is_known("HARNESS_VERIFY_PROVIDER"));
        assert!(!is_known("HARNESS_"));
        assert!(!is_known("HARNESS_backend"));
        assert!(!is_known("PATH"));
        assert!(
            !is_known("HARNESS_BACKENDX"),
            "a misspelling is not a service's backend"
        );
    }

    #[test]
    fn cargo_runs_without_what_cargo_gave_this_test_process_and_with_what_users_set() {
        // `cargo test` runs this process with CARGO_MANIFEST_DIR and CARGO_PKG_NAME set.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let cmd = Settings::process().cargo_command();
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
        ] {
            assert!(
                removed.iter().any(|r| r == name),
                "{name} kept: {removed:?}"
            );
        }
        for name in [
            "CARGO_TARGET_DIR",
            "CARGO_HOME",
            "CARGO_PROFILE_DEV_DEBUG",
            "CARGO",
        ] {
            assert!(!set_by_cargo_for_a_program(name), "{name} is a user's");
        }
    }

    #[test]
    fn flags_beat_the_environment_and_blank_is_unset() {
        let s = Settings::from_pairs([("HARNESS_BACKEND", "native"), ("HARNESS_ONLY", "  ")])
            .with("HARNESS_BACKEND", "container");
        assert_eq!(s.get("HARNESS_BACKEND").as_deref(), Some("container"));
        assert_eq!(s.get("HARNESS_ONLY"), None);
        let unrelated = Settings::from_pairs([("UNRELATED", "1")]);
        assert_eq!(unrelated.get("UNRELATED"), None);
        assert_eq!(unrelated.interpolated("UNRELATED"), Some("1"));
    }

    #[test]
    fn defaults_follow_the_documented_order() {
        let s = Settings::from_pairs([("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(s.cache_dir(), PathBuf::from("/x/harness"));
        let s = s.without("XDG_CACHE_HOME");
        assert_eq!(s.cache_dir(), PathBuf::from("/h/.cache/harness"));
        let s = s.with("HARNESS_CACHE_DIR", "/c");
        assert_eq!(s.cache_dir(), PathBuf::from("/c"));
        let s = Settings::from_pairs([("CARGO_TARGET_DIR", "/t")]);
        assert_eq!(s.bin_dir(Path::new("/nowhere")), PathBuf::from("/t/debug"));
        assert_eq!(
            s.with("HARNESS_BIN_DIR", "/b")
                .bin_dir(Path::new("/nowhere")),
            PathBuf::from("/b")
        );
        let s = Settings::from_pairs([
            ("CARGO_TARGET_DIR", "/t"),
            ("HARNESS_CARGO_PROFILE", "release"),
        ]);
        assert_eq!(
            s.bin_dir(Path::new("/nowhere")),
            PathBuf::from("/t/release")
        );
        assert!(Settings::default().attach());
        assert!(!Settings::from_pairs([("HARNESS_ATTACH", "0")]).attach());
        assert!(!Settings::from_pairs([("HARNESS_VERBOSE", "0")]).verbose());
        assert!(Settings::from_pairs([("HARNESS_VERBOSE", "1")]).verbose());
    }

    #[test]
    fn state_goes_to_the_target_inside_a_workspace_and_beside_the_manifest_elsewhere() {
        let outside = tempfile::tempdir().unwrap();
        let s = Settings::default();
        assert_eq!(
            s.state_dir(outside.path(), None),
            outside.path().join(".harness")
        );
        std::fs::write(outside.path().join("Cargo.toml"), "[workspace]\n").unwrap();
        std::fs::create_dir(outside.path().join("fixtures")).unwrap();
        let inside = outside.path().join("fixtures");
        let root = std::fs::canonicalize(outside.path()).unwrap();
        assert_eq!(
            s.state_dir(&inside, None),
            root.join("target/debug").parent().unwrap().join("harness")
        );
        let configured = outside.path().join("reports");
        assert_eq!(s.state_dir(&inside, Some(&configured)), configured);
        assert_eq!(
            s.with("HARNESS_STATE_DIR", "/s")
                .state_dir(&inside, Some(&configured)),
            PathBuf::from("/s")
        );
    }

    #[test]
    fn a_programs_profile_is_read_off_its_place_in_the_target_directory() {
        let target = tempfile::tempdir().unwrap();
        std::fs::write(target.path().join("CACHEDIR.TAG"), "").unwrap();
        let t = target.path();
        assert_eq!(
            profile_of_exe(&t.join("debug/deps/suite-1a2b")).as_deref(),
            Some("dev")
        );
        assert_eq!(
            profile_of_exe(&t.join("release/harness")).as_deref(),
            Some("release")
        );
        assert_eq!(profile_of_exe(&t.join("ci/deps/x")).as_deref(), Some("ci"));
        assert_eq!(profile_of_exe(Path::new("/usr/bin/harness")), None);
        assert_eq!(profile_dir("dev"), "debug");
        assert_eq!(profile_dir("ci"), "ci");
    }
}
