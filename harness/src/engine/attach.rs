//! Attach mode: one long-lived stack, many test processes.
//!
//! `harness up --detach` (or `harness test`) starts a stack and records it in a state file
//! under `stack.json` in the state directory (`target/harness/` in a cargo workspace): owner pid, manifest path and content hash, endpoints,
//! where each service's log is. A suite binary that finds a live state file for the same
//! manifest attaches to that stack instead of starting its own — what makes nextest, which
//! runs every test in a process of its own, practical. `harness down` ends it.
//!
//! The state also records each service's [fingerprint](crate::engine::fingerprint). Before a suite
//! attaches it compares them with what is on disk now; a service that changed (a rebuilt
//! binary, an edited file, a new image, a changed manifest entry) is restarted in place by the
//! stack's owner, asked over a control socket in its run directory, so an attached suite never
//! tests old code and never owns a process or container itself.
//!
//! An attached stack offers endpoints and logs. Fault injection (stop, pause…) needs a stack
//! of the suite's own: suites that break things (`Suite::sequential`) never attach.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::error::Error;
use crate::engine::fingerprint::Fingerprinter;
use crate::engine::stack::Refreshed;
pub use crate::engine::state::State;
use crate::manifest::Manifest;
use crate::settings::Settings;

/// The state file for stacks of a manifest.
pub fn state_file(manifest: &Manifest, settings: &Settings) -> PathBuf {
    manifest.state_dir_for(settings).join("stack.json")
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
/// signals (registered with [`crate::engine::cleanup`]).
pub fn write(stack: &crate::Stack) -> Result<PathBuf, Error> {
    let manifest = stack.manifest();
    // In the stack's state directory, where the suites of the same manifest look for it.
    let path = stack.state_dir().join("stack.json");
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
        fingerprints: stack.fingerprints().clone(),
        control: stack.run_dir().map(control_socket),
        files: stack.known_files(),
        backends: stack.plan().services.clone(),
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
    crate::engine::cleanup::register_dir(&path);
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

/// A live stack of this very manifest (same file; its content may have changed since) to
/// attach to, unless `HARNESS_ATTACH=0`.
pub fn find(manifest: &Manifest, settings: &Settings) -> Option<State> {
    if !settings.attach() {
        return None;
    }
    let state = read(&state_file(manifest, settings))?;
    let same = state.manifest == canonical(&manifest.path);
    (same && alive(state.pid) && state.pid != std::process::id()).then_some(state)
}

/// How long `harness down` waits for a stack's owner to tear it down.
pub const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What [`stop`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// No state file: no stack of the manifest is up.
    NotUp(PathBuf),
    /// The owner had died; what it left was removed (its state file, its run).
    AlreadyEnded {
        /// The dead owner.
        pid: u32,
    },
    /// The owner tore the stack down and ended.
    Stopped {
        /// The owner.
        pid: u32,
    },
}

/// `harness down`: asks the process that owns the stack recorded in `state` to tear it down
/// (SIGTERM, which its handler turns into a teardown) and waits until it has ended; an owner
/// that died already has its leftovers reaped.
pub async fn stop(state: &Path) -> Result<Stopped, Error> {
    let Ok(text) = std::fs::read(state) else {
        return Ok(Stopped::NotUp(state.to_path_buf()));
    };
    let recorded: State = serde_json::from_slice(&text).map_err(|e| {
        Error::Usage(format!(
            "{} is not a harness state file ({e}); remove it",
            state.display()
        ))
    })?;
    let pid = recorded.pid;
    if !alive(pid) {
        let _ = std::fs::remove_file(state);
        crate::engine::cleanup::reap_dead_runs();
        return Ok(Stopped::AlreadyEnded { pid });
    }
    let raw = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(raw, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + STOP_TIMEOUT;
    while alive(pid) {
        if std::time::Instant::now() > deadline {
            return Err(Error::service(
                "stack",
                format!(
                    "process {pid} did not stop within {} s; its log is up.log beside {}",
                    STOP_TIMEOUT.as_secs(),
                    state.display()
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(Stopped::Stopped { pid })
}

/// What [`start_detached`] found or started.
#[derive(Debug)]
pub enum Detached {
    /// A stack of this manifest was up already.
    AlreadyUp {
        /// The process that owns it.
        pid: u32,
    },
    /// The stack is up in the background.
    Started {
        /// The background process that owns it.
        pid: u32,
        /// Where that process's output goes.
        log: PathBuf,
        /// Its state, as it recorded it once the stack was ready.
        state: Box<State>,
    },
}

/// Runs `owner` (a command that starts the manifest's stack and records it in the state file,
/// `harness up`) in the background, in a process group of its own (so the terminal's Ctrl-C
/// does not reach it) with its output in `up.log` beside the state file, and waits until the
/// state file says the stack is ready, the process ends (an error with the log's end), or
/// `timeout` passes (the process is stopped). A stack of the manifest already up is left as
/// it is.
pub async fn start_detached(
    manifest: &Manifest,
    mut owner: std::process::Command,
    timeout: std::time::Duration,
    settings: &Settings,
) -> Result<Detached, Error> {
    if let Some(running) = find(manifest, settings) {
        return Ok(Detached::AlreadyUp { pid: running.pid });
    }
    let state = state_file(manifest, settings);
    let dir = state.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let log_path = dir.join("up.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| Error::io("opening the log", e))?;
    use std::os::unix::process::CommandExt as _;
    let mut child = owner
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io("starting `harness up` in the background", e))?;
    let pid = child.id();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(s) = read(&state).filter(|s| s.pid == pid) {
            return Ok(Detached::Started {
                pid,
                log: log_path,
                state: Box::new(s),
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = crate::engine::logs::file_tail(&log_path, 30).join("\n  | ");
            return Err(Error::Service {
                service: "stack".into(),
                message: format!("`harness up` ended ({status}) before the stack was ready; its log:\n  | {tail}"),
            });
        }
        if std::time::Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            return Err(Error::service(
                "stack",
                format!(
                    "not ready after {} s; see {}",
                    timeout.as_secs(),
                    log_path.display()
                ),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Where the owner of a stack listens for refresh requests: in its run directory (short
/// enough for a socket path, and removed with the run).
pub fn control_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("control.sock")
}

/// Longest a refresh may take before the attached suite gives up on it.
const REFRESH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Brings a running stack up to date before a suite attaches to it: compares the recorded
/// fingerprints with the manifest and files as they are now and, if any service changed, asks
/// the owner to restart it in place, then reads the state again. `Err` says why the stack
/// cannot be used as it is (the caller then starts a stack of its own); it never hands back a
/// stack running old code.
pub async fn refreshed(
    manifest: &Manifest,
    state: State,
    settings: &Settings,
) -> Result<(State, Vec<Refreshed>), String> {
    let running: Vec<&str> = state.endpoints.keys().map(String::as_str).collect();
    let wanted: std::collections::BTreeSet<&str> =
        manifest.services.iter().map(|s| s.name.as_str()).collect();
    if !running.iter().copied().eq(wanted.iter().copied()) {
        return Err(format!(
            "the running stack has services [{}], the manifest [{}]",
            running.join(", "),
            wanted.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let now = Fingerprinter::from_known(&state.files)
        .with_settings(settings.clone())
        .planned(manifest, &state.plan(manifest))
        .await;
    let changed = crate::engine::fingerprint::changes(&state.fingerprints, &now);
    if changed.is_empty() {
        return Ok((state, Vec::new()));
    }
    let what = changed
        .iter()
        .map(|(s, why)| format!("{s} ({why})"))
        .collect::<Vec<_>>()
        .join(", ");
    let Some(socket) = state.control.clone() else {
        return Err(format!(
            "{what} changed, and the stack's process {} takes no refresh requests",
            state.pid
        ));
    };
    let reply = tokio::time::timeout(REFRESH_TIMEOUT, request(&socket))
        .await
        .map_err(|_| {
            format!(
                "{what} changed; the refresh did not finish within {} s",
                REFRESH_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| {
            format!(
                "{what} changed; asking process {} to refresh them failed: {e}",
                state.pid
            )
        })?;
    let refreshed = match reply {
        Reply::Refreshed(r) => r,
        Reply::Failed(e) => return Err(format!("{what} changed; the refresh failed: {e}")),
    };
    let state = find(manifest, settings)
        .ok_or_else(|| "the stack ended while it was refreshed".to_string())?;
    Ok((state, refreshed))
}

/// What the owner answers a refresh request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    /// The services restarted (none when nothing had changed by the time it looked).
    Refreshed(Vec<Refreshed>),
    /// Why the refresh failed.
    Failed(String),
}

async fn request(socket: &Path) -> std::io::Result<Reply> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    stream.write_all(b"refresh\n").await?;
    let mut line = String::new();
    tokio::io::BufReader::new(stream)
        .read_line(&mut line)
        .await?;
    serde_json::from_str(&line).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unreadable answer `{}`: {e}", line.trim()),
        )
    })
}

/// The owner's side of the control socket.
#[derive(Debug)]
pub struct Control {
    listener: tokio::net::UnixListener,
}

impl Control {
    /// Listens on the control socket of a stack this process owns.
    pub fn bind(stack: &crate::Stack) -> Result<Control, Error> {
        let dir = stack
            .run_dir()
            .ok_or_else(|| Error::Usage("an attached stack has no control socket".into()))?;
        let path = control_socket(dir);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("listening on {}", path.display()), e))?;
        Ok(Control { listener })
    }

    /// Waits for the next request and answers it: refreshes `stack`, rewrites the state file,
    /// and returns what was refreshed (for the owner to show).
    pub async fn serve_one(&self, stack: &mut crate::Stack) -> Vec<Refreshed> {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        let Ok((stream, _)) = self.listener.accept().await else {
            return Vec::new();
        };
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        if tokio::io::BufReader::new(read)
            .read_line(&mut line)
            .await
            .is_err()
            || line.trim() != "refresh"
        {
            return Vec::new();
        }
        let (reply, done) = match refresh_and_record(stack).await {
            Ok(r) => (Reply::Refreshed(r.clone()), r),
            Err(e) => (Reply::Failed(e.to_string()), Vec::new()),
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_default();
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
        done
    }
}

/// Refreshes a stack this process owns and records the result in its state file.
pub async fn refresh_and_record(stack: &mut crate::Stack) -> Result<Vec<Refreshed>, Error> {
    let result = stack.refresh().await;
    // Written even after a failure: what did restart is recorded.
    write(stack)?;
    result
}
