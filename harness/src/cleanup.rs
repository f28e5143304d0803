//! Teardown that cannot be skipped.
//!
//! Every process group and directory a run creates is registered here while it lives. On
//! SIGINT, SIGTERM or SIGHUP a handler thread stops them all (SIGTERM, then SIGKILL after a
//! grace period), removes the directories and exits with `128 + signal`. Normal teardown and
//! `Drop` unregister what they removed.
//!
//! A run that is killed outright (`kill -9`) cannot clean up after itself; every run therefore
//! owns a directory under [`runs_root`] recording its owner, and every process it starts carries
//! `HARNESS_RUN_ID` in its environment. [`reap_dead_runs`] (called at every start) finds runs
//! whose owner is gone and removes what they left.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Environment variable carried by every process a run starts.
pub const RUN_ID_ENV: &str = "HARNESS_RUN_ID";

type Hook = Box<dyn Fn() + Send>;

#[derive(Default)]
struct Registry {
    groups: BTreeMap<i32, Signal>,
    dirs: BTreeSet<PathBuf>,
    hooks: BTreeMap<u64, Hook>,
    next_hook: u64,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
static INSTALL: Once = Once::new();
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a signal arrived and the process is being torn down; callers should stay quiet
/// (what they see failing is the teardown) and let the handler exit.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut guard = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(Registry::default))
}

/// Installs the signal handler thread (once per process).
pub fn install_signal_handler() {
    INSTALL.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            return;
        };
        let _ = std::thread::Builder::new().name("harness-signals".into()).spawn(move || {
            if let Some(signal) = signals.forever().next() {
                INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
                let (groups, dirs, hooks) = with(|r| (r.groups.len(), r.dirs.len(), r.hooks.len()));
                if hooks > 0 {
                    eprintln!("\nharness: interrupted; stopping {groups} process group(s), removing {dirs} director(ies) and running {hooks} cleanup hook(s)");
                } else if groups + dirs > 0 {
                    eprintln!("\nharness: interrupted; stopping {groups} process group(s) and removing {dirs} director(ies)");
                }
                emergency_cleanup();
                std::process::exit(128 + signal);
            }
        });
    });
}

/// Registers a process group, stopped with `graceful` first on emergency cleanup.
pub fn register_group(pgid: i32, graceful: Signal) {
    with(|r| r.groups.insert(pgid, graceful));
}

/// Forgets a process group that was stopped normally.
pub fn unregister_group(pgid: i32) {
    with(|r| r.groups.remove(&pgid));
}

/// Registers a directory to remove on emergency cleanup.
pub fn register_dir(dir: &Path) {
    with(|r| r.dirs.insert(dir.to_path_buf()));
}

/// Forgets a directory that was removed normally.
pub fn unregister_dir(dir: &Path) {
    with(|r| r.dirs.remove(dir));
}

/// Registers a cleanup action (e.g. removing containers); returns a key to unregister it.
pub fn register_hook(hook: impl Fn() + Send + 'static) -> u64 {
    with(|r| {
        r.next_hook += 1;
        r.hooks.insert(r.next_hook, Box::new(hook));
        r.next_hook
    })
}

/// Forgets a cleanup action.
pub fn unregister_hook(key: u64) {
    with(|r| r.hooks.remove(&key));
}

/// Stops every registered process group and removes every registered directory, now.
pub fn emergency_cleanup() {
    let (groups, dirs, hooks) = with(|r| {
        (
            std::mem::take(&mut r.groups),
            std::mem::take(&mut r.dirs),
            std::mem::take(&mut r.hooks),
        )
    });
    for hook in hooks.values() {
        hook();
    }
    for (pgid, signal) in &groups {
        let _ = killpg(Pid::from_raw(*pgid), *signal);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && groups.keys().any(|g| group_alive(*g)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pgid in groups.keys() {
        let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
    }
    for path in dirs {
        if std::fs::remove_dir_all(&path).is_err() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Whether any process of a group is alive (zombies count as gone).
pub fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok() && processes_in_group(pgid).next().is_some()
}

fn processes_in_group(pgid: i32) -> impl Iterator<Item = i32> {
    all_pids().filter(move |pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                // Fields after the command name: state ppid pgrp ...
                let rest = s.rsplit_once(')')?.1;
                let mut f = rest.split_whitespace();
                let state = f.next()?;
                let _ppid = f.next()?;
                let pgrp: i32 = f.next()?.parse().ok()?;
                Some(pgrp == pgid && state != "Z")
            })
            .unwrap_or(false)
    })
}

fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Where runs keep their directories.
pub fn runs_root() -> PathBuf {
    std::env::temp_dir().join("harness-runs")
}

/// The start time of a process (clock ticks since boot), to tell a live owner from a reused pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The directory of one run, removed when dropped.
#[derive(Debug)]
pub struct RunDir {
    /// The run's id, also in `HARNESS_RUN_ID` of its processes.
    pub id: String,
    /// Its directory.
    pub path: PathBuf,
}

impl RunDir {
    /// Creates a fresh run directory owned by this process.
    pub fn create() -> std::io::Result<RunDir> {
        use std::os::unix::fs::PermissionsExt;
        let root = runs_root();
        std::fs::create_dir_all(&root)?;
        let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755));
        let id = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        let path = root.join(&id);
        std::fs::create_dir(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        let me = std::process::id();
        std::fs::write(
            path.join("owner"),
            format!("{me} {}\n", start_time(me).unwrap_or(0)),
        )?;
        register_dir(&path);
        Ok(RunDir { id, path })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        unregister_dir(&self.path);
    }
}

/// Kills the processes and removes the directories of runs whose owner has died.
/// Returns the ids of the runs reaped.
pub fn reap_dead_runs() -> Vec<String> {
    let mut reaped = Vec::new();
    let Ok(entries) = std::fs::read_dir(runs_root()) else {
        return reaped;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let owner = std::fs::read_to_string(path.join("owner")).unwrap_or_default();
        let mut fields = owner.split_whitespace();
        let pid: Option<u32> = fields.next().and_then(|p| p.parse().ok());
        let started: Option<u64> = fields.next().and_then(|s| s.parse().ok());
        let alive = match (pid, started) {
            (Some(pid), Some(t)) => start_time(pid) == Some(t),
            // A run dir still being created: leave it alone unless it is old.
            _ => entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|m| m.elapsed().unwrap_or_default() < Duration::from_secs(60))
                .unwrap_or(false),
        };
        if alive {
            continue;
        }
        kill_run_processes(&id);
        let _ = std::fs::remove_dir_all(&path);
        reaped.push(id);
    }
    reaped
}

/// Pids of processes carrying `HARNESS_RUN_ID=<id>`.
pub fn run_processes(id: &str) -> Vec<i32> {
    let marker = format!("{RUN_ID_ENV}={id}");
    all_pids()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

fn kill_run_processes(id: &str) {
    for pid in run_processes(id) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
