//! Teardown that cannot be skipped.
//!
//! Every process group and directory a run creates is registered here while it lives. On
//! SIGINT, SIGTERM or SIGHUP a handler thread stops them all (SIGTERM, then SIGKILL after a
//! grace period), removes the directories and exits with `128 + signal`. Normal teardown and
//! `Drop` unregister what they removed.
//!
//! Starting something and the cleanup exclude each other ([`guarded`]): a process or directory
//! started while a signal arrives is registered before the handler looks, and nothing starts
//! once it has begun.
//!
//! A run that is killed outright (`kill -9`) cannot clean up after itself; every run therefore
//! owns a directory under [`runs_root`] holding its owner (`owner`: pid and start time) and its
//! record (`processes`: pid, process group and start time of every process it started, appended
//! right after each spawn). [`reap_dead_runs`] (called before a stack starts in a process that
//! owns its run: `harness`, a suite runner) finds runs whose owner is gone and kills what their
//! record lists (when the start time still matches, so a reused pid is spared), the rest of
//! those process groups, and every process whose working directory is inside the run's
//! directory (servers' own helpers that left the group, and anything started in the instant
//! between spawn and record); then it removes the directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Environment variable carried by every process a run starts (for the processes' own use;
/// reaping does not rely on it, since servers such as redis overwrite their environment).
pub const RUN_ID_ENV: &str = "HARNESS_RUN_ID";

/// The file in a run directory listing the processes the run started.
pub const RECORD_FILE: &str = "processes";

type Hook = Box<dyn Fn() + Send>;

#[derive(Default)]
struct Registry {
    groups: BTreeMap<i32, Signal>,
    dirs: BTreeSet<PathBuf>,
    hooks: BTreeMap<u64, Hook>,
    next_hook: u64,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
/// Held while something is started and while the emergency cleanup runs (see [`guarded`]).
static STARTS: Mutex<()> = Mutex::new(());
static INSTALL: Once = Once::new();

pub use crate::engine::interrupt::interrupted;

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut guard = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(Registry::default))
}

/// Installs the signal handler thread (once per process), reporting the teardown on the
/// terminal.
pub fn install_signal_handler() {
    install_signal_handler_with(std::sync::Arc::new(crate::engine::events::Terminal::new()));
}

/// Installs the signal handler thread (once per process; the first call's `sink` is the one
/// told of an interrupt, [`crate::engine::events::Event::Interrupted`]).
pub fn install_signal_handler_with(sink: std::sync::Arc<dyn crate::engine::events::Sink>) {
    INSTALL.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            return;
        };
        let _ = std::thread::Builder::new()
            .name("harness-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    crate::engine::interrupt::set();
                    let (groups, dirs, hooks) =
                        with(|r| (r.groups.len(), r.dirs.len(), r.hooks.len()));
                    sink.event(&crate::engine::events::Event::Interrupted {
                        groups,
                        dirs,
                        hooks,
                    });
                    emergency_cleanup();
                    std::process::exit(128 + signal);
                }
            });
    });
}

/// Runs `start` (a spawn, a directory creation) unless a signal arrived. The emergency cleanup
/// waits for a `start` under way and registers nothing until it returns, so whatever `start`
/// registers is seen by it; after the signal, `start` is refused.
pub fn guarded<T>(start: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    let _starts = STARTS.lock().unwrap_or_else(|p| p.into_inner());
    if interrupted() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "not started: the run is being stopped by a signal",
        ));
    }
    start()
}

/// Spawns a process that the command puts in a process group of its own (`process_group(0)`),
/// registers the group for emergency cleanup and appends it to the run's record (`record`: the
/// run directory), all before any other start or the signal handler's cleanup can happen.
pub fn spawn_recorded<C>(
    record: Option<&Path>,
    graceful: Signal,
    spawn: impl FnOnce() -> std::io::Result<C>,
    pid_of: impl Fn(&C) -> Option<u32>,
) -> std::io::Result<C> {
    guarded(|| {
        let child = spawn()?;
        if let Some(pid) = pid_of(&child) {
            register_group(pid as i32, graceful);
            if let Some(dir) = record {
                // A failed write only loses the record; the reaper still finds the process by
                // its working directory, and this run's own cleanup by its registered group.
                let _ = append_record(dir, pid);
            }
        }
        Ok(child)
    })
}

fn append_record(run_dir: &Path, pid: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    let stat = proc_stat(pid as i32).ok_or_else(|| std::io::Error::other("process gone"))?;
    let line = format!("{pid} {} {}\n", stat.pgrp, stat.start);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(RECORD_FILE))?
        .write_all(line.as_bytes())
}

/// Runs a command to its end in a process group of its own, registered, so a signal to this
/// process stops it too (`cargo build`, `cargo test`); returns its exit status.
pub fn status_in_own_group(
    cmd: &mut std::process::Command,
) -> std::io::Result<std::process::ExitStatus> {
    status_in_own_group_reading(cmd, |_| {})
}

/// [`status_in_own_group`], handing each line of the command's standard output to `line`
/// when the caller piped it (`Stdio::piped()`).
pub fn status_in_own_group_reading(
    cmd: &mut std::process::Command,
    mut line: impl FnMut(&str),
) -> std::io::Result<std::process::ExitStatus> {
    use std::io::BufRead as _;
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0);
    let mut child = spawn_recorded(None, Signal::SIGTERM, || cmd.spawn(), |c| Some(c.id()))?;
    if let Some(out) = child.stdout.take() {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            line(&l);
        }
    }
    let status = child.wait();
    unregister_group(child.id() as i32);
    status
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
    // Held to the end: a start under way finishes (and registers) first, later ones wait and
    // then see `interrupted()`.
    let _starts = STARTS.lock().unwrap_or_else(|p| p.into_inner());
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
    // Long enough for a suite binary run by `harness test` or `verify` to tear its own stack
    // down; groups that are gone end the wait at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && groups.keys().any(|g| group_alive(*g)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pgid in groups.keys() {
        let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
    }
    // Helpers a server started in a session of its own are not in its group, but they work
    // inside the run directory or carry the run's id (RabbitMQ's `epmd -daemon`, started by
    // the VM when our epmd was stopped a moment before it).
    let root = runs_root();
    for dir in dirs.iter().filter(|d| d.starts_with(&root)) {
        kill_until_gone(|| strays(dir).into_iter().collect());
    }
    for path in dirs {
        remove_path(&path);
    }
}

/// Removes a directory (or file); retried, since a process killed a moment ago may still be
/// writing into it.
fn remove_path(path: &Path) {
    for _ in 0..10 {
        let gone = std::fs::remove_dir_all(path).is_ok() || std::fs::remove_file(path).is_ok();
        if gone || !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs what `find` returns until it returns nothing (a parent may fork while its
/// children are killed); bounded.
fn kill_until_gone(find: impl Fn() -> Vec<i32>) {
    for _ in 0..10 {
        let pids = find();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether any process of a group is alive (zombies count as gone).
pub fn group_alive(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None).is_ok() && processes_in_group(pgid).next().is_some()
}

fn processes_in_group(pgid: i32) -> impl Iterator<Item = i32> {
    all_pids().filter(move |pid| proc_stat(*pid).is_some_and(|s| s.pgrp == pgid && !s.zombie))
}

/// What `/proc/<pid>/stat` says about a process.
struct ProcStat {
    zombie: bool,
    pgrp: i32,
    /// Field 22: clock ticks since boot when it started.
    start: u64,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after its last `)` are
    // state, ppid, pgrp, ... with the start time the 20th of them.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(ProcStat {
        zombie: *fields.first()? == "Z",
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Live processes of the run directory `dir` found without its record: those working inside
/// it, and those carrying its id in `HARNESS_RUN_ID` (which daemons keep, redis does not).
fn strays(dir: &Path) -> BTreeSet<i32> {
    let marker = dir
        .file_name()
        .and_then(|n| n.to_str())
        .map(|id| format!("{RUN_ID_ENV}={id}"));
    let mut found: BTreeSet<i32> = processes_with_cwd_in(dir).collect();
    if let Some(marker) = marker {
        found.extend(all_pids().filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
                .unwrap_or(false)
                && proc_stat(*pid).is_some_and(|s| !s.zombie)
        }));
    }
    found
}

/// Live processes whose working directory is `dir` or inside it (also once it is deleted).
fn processes_with_cwd_in(dir: &Path) -> impl Iterator<Item = i32> + '_ {
    all_pids().filter(move |pid| cwd(*pid).is_some_and(|c| c.starts_with(dir)))
}

fn cwd(pid: i32) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let text = link.to_str()?;
    Some(PathBuf::from(
        text.strip_suffix(" (deleted)").unwrap_or(text),
    ))
}

fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Least free space a memory filesystem needs to hold run directories (a container's default
/// `/dev/shm` of 64 MB would not hold one PostgreSQL cluster).
const SHM_MIN_FREE: u64 = 1 << 30;

/// Where runs keep their directories: `HARNESS_RUNS_DIR`, else `/dev/shm/harness-runs` when
/// that memory filesystem has room, else `$TMPDIR/harness-runs`. Servers write their data
/// there; on a disk busy with other writes, copying a PostgreSQL cluster alone took 0.3-1.5 s
/// (0.07-0.15 s in memory).
pub fn runs_root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(d) = crate::settings::Settings::process().path("HARNESS_RUNS_DIR") {
            return d;
        }
        let shm = Path::new("/dev/shm");
        let roomy = nix::sys::statvfs::statvfs(shm)
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()) >= SHM_MIN_FREE)
            .unwrap_or(false);
        if roomy && nix::unistd::access(shm, nix::unistd::AccessFlags::W_OK).is_ok() {
            return shm.join("harness-runs");
        }
        std::env::temp_dir().join("harness-runs")
    })
    .clone()
}

/// The start time of a process (clock ticks since boot), to tell a live owner from a reused pid.
fn start_time(pid: u32) -> Option<u64> {
    proc_stat(pid as i32).map(|s| s.start)
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
        // Created and registered in one guarded step, so a signal never leaves it behind.
        guarded(|| {
            std::fs::create_dir(&path)?;
            register_dir(&path);
            Ok(())
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        let me = std::process::id();
        std::fs::write(
            path.join("owner"),
            format!("{me} {}\n", start_time(me).unwrap_or(0)),
        )?;
        Ok(RunDir { id, path })
    }
}

impl RunDir {
    /// The run's record of the processes it started (see [`RECORD_FILE`]).
    pub fn record(&self) -> PathBuf {
        self.path.join(RECORD_FILE)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        remove_path(&self.path);
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
        kill_until_gone(|| run_processes(&id));
        remove_path(&path);
        reaped.push(id);
    }
    kill_until_gone(orphans);
    reaped
}

/// Processes of a run that is gone (its directory removed while they lived) and whose owner is
/// dead (the owner's pid is the run id's first part). A process belongs to a run by its working
/// directory, by a value of its environment inside the run directory (a daemon such as `epmd
/// -daemon` moves to `/` but keeps the paths it was given), or by `HARNESS_RUN_ID`; under the
/// runs root of today or of `$TMPDIR`, where runs used to live.
fn orphans() -> Vec<i32> {
    let mut roots = vec![runs_root(), std::env::temp_dir().join("harness-runs")];
    roots.dedup();
    all_pids()
        .filter(|pid| {
            let Some(id) = run_of(*pid, &roots) else {
                return false;
            };
            if roots.iter().any(|r| r.join(&id).exists()) {
                // Judged with its run above (or its run is alive).
                return false;
            }
            let owner: Option<u32> = id.split('-').next().and_then(|p| p.parse().ok());
            let (Some(owner), Some(me)) = (owner, proc_stat(*pid)) else {
                return false;
            };
            // An owner that started after this process is a reused pid.
            !me.zombie && start_time(owner).is_none_or(|t| t > me.start)
        })
        .collect()
}

/// The id of the run a process belongs to, judged without the run's record (see [`orphans`]).
fn run_of(pid: i32, roots: &[PathBuf]) -> Option<String> {
    let id_in = |p: &Path| {
        roots.iter().find_map(|r| {
            let id = p.strip_prefix(r).ok()?.iter().next()?.to_str()?;
            // A run id is `<owner pid>-<suffix>`.
            id.split_once('-')
                .is_some_and(|(owner, _)| owner.parse::<u32>().is_ok())
                .then(|| id.to_string())
        })
    };
    if let Some(id) = cwd(pid).and_then(|c| id_in(&c)) {
        return Some(id);
    }
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0).find_map(|kv| {
        let (k, v) = std::str::from_utf8(kv).ok()?.split_once('=')?;
        if k == RUN_ID_ENV {
            return Some(v.to_string());
        }
        id_in(Path::new(v))
    })
}

/// One line of a run's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The process id.
    pub pid: i32,
    /// Its process group (its own pid: every process is started as a group leader).
    pub pgid: i32,
    /// Its start time (clock ticks since boot, `/proc/<pid>/stat` field 22).
    pub start: u64,
}

/// The processes a run's record lists (`run_dir`/[`RECORD_FILE`]); unreadable lines skipped.
pub fn read_record(run_dir: &Path) -> Vec<Recorded> {
    let text = std::fs::read_to_string(run_dir.join(RECORD_FILE)).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace().map(str::parse::<u64>);
            let (Some(Ok(pid)), Some(Ok(pgid)), Some(Ok(start))) = (f.next(), f.next(), f.next())
            else {
                return None;
            };
            Some(Recorded {
                pid: i32::try_from(pid).ok()?,
                pgid: i32::try_from(pgid).ok()?,
                start,
            })
        })
        .collect()
}

/// Live processes of the run `id`: those its record lists (only while their start time
/// matches, so a reused pid is spared), the members of their process groups started since,
/// every process whose working directory is inside the run directory, and every process
/// carrying the run's id in its environment.
pub fn run_processes(id: &str) -> Vec<i32> {
    let dir = runs_root().join(id);
    let record = read_record(&dir);
    let mut found = strays(&dir);
    for r in &record {
        if proc_stat(r.pid).is_some_and(|s| s.start == r.start && !s.zombie) {
            found.insert(r.pid);
        }
        // A group id is not reused while a member lives; a leader with another start time
        // means the group ended and its id now belongs to someone else.
        let reused = proc_stat(r.pgid).is_some_and(|s| s.start != r.start);
        if !reused {
            found.extend(all_pids().filter(|pid| {
                proc_stat(*pid).is_some_and(|s| s.pgrp == r.pgid && s.start >= r.start && !s.zombie)
            }));
        }
    }
    found.into_iter().collect()
}
