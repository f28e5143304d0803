//! Attach mode: one long-lived stack, many test processes.
//!
//! `harness up --detach` (or `harness test`) starts a stack and records it in a state file
//! under `target/harness/stack.json`: owner pid, manifest path and content hash, endpoints,
//! where each service's log is. A suite binary that finds a live state file for the same
//! manifest attaches to that stack instead of starting its own — what makes nextest, which
//! runs every test in a process of its own, practical. `harness down` ends it.
//!
//! An attached stack offers endpoints and logs. Fault injection (stop, pause…) needs a stack
//! of the suite's own: suites that break things (`Suite::sequential`) never attach.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::manifest::Manifest;
use crate::scheduler::Timing;

/// Where a service's output can be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// A file (native backend).
    File(PathBuf),
    /// A container's output (container backend).
    Container(String),
}

/// What a state file records about a running stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Pid of the process that owns the stack.
    pub pid: u32,
    /// The run id.
    pub run_id: String,
    /// Backend that runs it.
    pub backend: BackendKind,
    /// The manifest it was started from (canonical path).
    pub manifest: PathBuf,
    /// Hash of the manifest's content when it started.
    pub manifest_hash: String,
    /// Host endpoints by service.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Log sources by service.
    pub logs: BTreeMap<String, LogSource>,
    /// Start timings, in ready order: (service, started ms, ready ms).
    pub timings: Vec<(String, u64, u64)>,
}

/// The target directory of the workspace around a manifest.
pub fn target_dir(manifest: &Manifest) -> PathBuf {
    crate::backend::native::bin_dir(manifest.dir())
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// The state file for stacks of a manifest.
pub fn state_file(manifest: &Manifest) -> PathBuf {
    target_dir(manifest).join("harness").join("stack.json")
}

/// A stable hash of a file's content (FNV-1a, hex).
pub fn content_hash(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    format!("{:016x}", fnv1a(&bytes))
}

/// FNV-1a, 64 bit: stable across runs and platforms (unlike `DefaultHasher`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Writes the state file of a stack this process owns; it is removed on teardown and on
/// signals (registered with [`crate::cleanup`]).
pub fn write(stack: &crate::Stack) -> Result<PathBuf, Error> {
    let manifest = stack.manifest();
    let path = state_file(manifest);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let state = State {
        pid: std::process::id(),
        run_id: stack.run_id().to_string(),
        backend: stack.backend(),
        manifest: canonical(&manifest.path),
        manifest_hash: content_hash(&manifest.path),
        endpoints: stack.endpoints(),
        logs: stack.log_sources(),
        timings: stack
            .timings()
            .iter()
            .map(|t| {
                (
                    t.service.clone(),
                    t.started.as_millis() as u64,
                    t.ready.as_millis() as u64,
                )
            })
            .collect(),
    };
    let text = serde_json::to_vec_pretty(&state)
        .map_err(|e| Error::Usage(format!("encoding the state: {e}")))?;
    // Written whole, then renamed: a reader never sees half a file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    crate::cleanup::register_dir(&path);
    Ok(path)
}

/// Reads the state file, if any.
pub fn read(path: &Path) -> Option<State> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
}

/// A live stack of this very manifest to attach to, unless `HARNESS_ATTACH=0`.
pub fn find(manifest: &Manifest) -> Option<State> {
    if std::env::var("HARNESS_ATTACH").is_ok_and(|v| v == "0") {
        return None;
    }
    let state = read(&state_file(manifest))?;
    let same = state.manifest == canonical(&manifest.path)
        && state.manifest_hash == content_hash(&manifest.path);
    (same && alive(state.pid) && state.pid != std::process::id()).then_some(state)
}

/// The last `n` lines of a log source.
pub fn tail(source: &LogSource, n: usize) -> Vec<String> {
    match source {
        LogSource::File(path) => crate::backend::native::tail(path, n),
        LogSource::Container(id) => crate::backend::container::log_tail(id, n),
    }
}

impl State {
    /// The timings recorded, as scheduler timings.
    pub fn timings(&self) -> Vec<Timing> {
        self.timings
            .iter()
            .map(|(s, a, b)| Timing {
                service: s.clone(),
                started: std::time::Duration::from_millis(*a),
                launched: std::time::Duration::from_millis(*a),
                ready: std::time::Duration::from_millis(*b),
            })
            .collect()
    }
}
