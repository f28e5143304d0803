//! A run leaves nothing behind whenever it is stopped: `harness up` on the shop's manifest is
//! interrupted at random moments of its startup (half of them in the first 1.5 s, the build
//! step included), alternating SIGINT to its process group (a terminal's Ctrl-C) and SIGTERM
//! to the process, on both backends; and a `harness up` killed with SIGKILL is cleaned up by
//! the next run. What is left is counted four ways: by the run's record, by container label,
//! by run directory, and by processes working inside the run directory (or carrying its id).
//!
//! `HARNESS_INTERRUPTS` sets the interrupts per backend (default 10), `HARNESS_INTERRUPT_SEED`
//! replays a failing sequence, `HARNESS_INTERRUPT_VERBOSE=1` prints the counts of every trial.
//! The container part needs a Docker engine and the images of `fixtures/images/build.sh`; it
//! says so and skips without them, except in CI (`CI=true`), where it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use harness::backend::container;
use harness::cleanup::{self, Recorded};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use testcontainers::bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
};

/// Set on every `harness up` the tests start, to its trial's tag.
const TRIAL_ENV: &str = "HARNESS_INTERRUPT_TRIAL";

/// One test at a time: a run's reaper must not clean another test's leftovers before they
/// are counted.
static SERIAL: Mutex<()> = Mutex::new(());

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(path)
}

/// A small deterministic generator, so a failing sequence can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn from_env() -> Rng {
        let seed = std::env::var("HARNESS_INTERRUPT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        Rng(seed.max(1))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn interrupts() -> usize {
    std::env::var("HARNESS_INTERRUPTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

fn verbose() -> bool {
    std::env::var_os("HARNESS_INTERRUPT_VERBOSE").is_some()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Native,
    Container,
}

/// A `harness up` in a process group of its own, its output in a file.
struct Up {
    child: Child,
    log: PathBuf,
    /// What its run records said, gathered while they existed.
    recorded: BTreeSet<(i32, i32, u64)>,
    /// Its trial's tag (see [`TRIAL_ENV`]).
    tag: String,
}

impl Up {
    fn start(backend: Backend, tag: &str) -> Up {
        let log = std::env::temp_dir().join(format!(
            "harness-interrupt-{}-{tag}.log",
            std::process::id()
        ));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
        cmd.args(["up", "-m"])
            .arg(fixture("stack.toml"))
            // Inherited by every descendant that keeps its environment (`cargo build`, say),
            // so one left behind is found even outside the run directory.
            .env(TRIAL_ENV, format!("{}-{tag}", std::process::id()));
        match backend {
            Backend::Native => cmd.args(["--backend", "native"]),
            // The images hold the binaries: no build needed.
            Backend::Container => cmd.args(["--backend", "container", "--no-build"]),
        };
        use std::os::unix::process::CommandExt as _;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap();
        Up {
            child,
            log,
            recorded: BTreeSet::new(),
            tag: format!("{}-{tag}", std::process::id()),
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Run ids start with the owner's pid.
    fn prefix(&self) -> String {
        format!("{}-", self.pid())
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn gather_records(&mut self) {
        for dir in run_dirs(&self.prefix()) {
            for r in cleanup::read_record(&dir) {
                self.recorded.insert((r.pid, r.pgid, r.start));
            }
        }
    }

    /// Sleeps `d` while reading the run's records.
    fn watch(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.gather_records();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (bounded) for the process to end, reading records meanwhile; `None` if it did not.
    fn wait(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + bound;
        while Instant::now() < until {
            self.gather_records();
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Waits until the output contains `text` (bounded).
    fn wait_for_output(&mut self, text: &str, bound: Duration) -> bool {
        let until = Instant::now() + bound;
        while Instant::now() < until {
            if self.output().contains(text) {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            self.watch(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // A run that did not obey its signal is not left running by the test.
        if let Ok(None) = self.child.try_wait() {
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn run_dirs(prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(cleanup::runs_root())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect()
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// (state, pgrp, start time) of a live process.
fn stat(pid: i32) -> Option<(String, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let state = f.first()?.to_string();
    (state != "Z").then_some(())?;
    Some((state, f.get(2)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

fn command_line(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// What a run left behind, counted four ways.
#[derive(Debug, Default)]
struct Leftovers {
    /// Processes of the run's record still alive (same start time), or members of their groups.
    by_record: Vec<String>,
    /// Containers and networks labelled with the run's owner.
    by_label: Vec<String>,
    /// Run directories.
    dirs: Vec<PathBuf>,
    /// Processes working inside a run directory, or carrying the run's id or the trial's tag.
    by_cwd_or_env: Vec<String>,
}

impl Leftovers {
    fn total(&self) -> usize {
        self.by_record.len() + self.by_label.len() + self.dirs.len() + self.by_cwd_or_env.len()
    }

    fn counts(&self) -> String {
        format!(
            "record {}, label {}, dirs {}, cwd/env {}",
            self.by_record.len(),
            self.by_label.len(),
            self.dirs.len(),
            self.by_cwd_or_env.len()
        )
    }
}

fn count(up: &Up, engine: bool) -> Leftovers {
    let (owner, recorded) = (up.pid(), &up.recorded);
    let prefix = format!("{owner}-");
    let mut left = Leftovers::default();
    let all = pids();
    for &(pid, pgid, start) in recorded {
        let r = Recorded { pid, pgid, start };
        for p in &all {
            let Some((_, pgrp, started)) = stat(*p) else {
                continue;
            };
            let same = *p == r.pid && started == r.start;
            let member = pgrp == r.pgid && started >= r.start && *p != owner;
            if same || member {
                left.by_record.push(format!("{p} {}", command_line(*p)));
            }
        }
    }
    left.dirs = run_dirs(&prefix);
    let root = cleanup::runs_root();
    let marker = format!("{}={prefix}", cleanup::RUN_ID_ENV);
    let trial = format!("{TRIAL_ENV}={}", up.tag);
    for p in all {
        if stat(p).is_none() {
            continue;
        }
        let in_dir = std::fs::read_link(format!("/proc/{p}/cwd"))
            .ok()
            .and_then(|c| {
                let rest = c.strip_prefix(&root).ok()?.to_str()?.to_string();
                Some(rest.starts_with(&prefix))
            })
            .unwrap_or(false);
        let has_id = std::fs::read(format!("/proc/{p}/environ"))
            .map(|env| {
                env.split(|b| *b == 0)
                    .any(|kv| kv.starts_with(marker.as_bytes()) || kv == trial.as_bytes())
            })
            .unwrap_or(false);
        if (in_dir || has_id) && p != owner {
            left.by_cwd_or_env.push(format!("{p} {}", command_line(p)));
        }
    }
    if engine {
        left.by_label = labelled(owner);
    }
    left
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Containers and networks whose owner label is `owner`.
fn labelled(owner: i32) -> Vec<String> {
    block(async {
        let Ok(docker) = container::connect().await else {
            return vec!["(the engine did not answer)".to_string()];
        };
        let filter = std::collections::HashMap::from([(
            "label".to_string(),
            vec![format!("{}={owner}", container::LABEL_OWNER_PID)],
        )]);
        let mut found = Vec::new();
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filter)
            .build();
        for c in docker
            .list_containers(Some(options))
            .await
            .unwrap_or_default()
        {
            found.push(format!("container {:?}", c.names.unwrap_or_default()));
        }
        let options = ListNetworksOptionsBuilder::new().filters(&filter).build();
        for n in docker
            .list_networks(Some(options))
            .await
            .unwrap_or_default()
        {
            found.push(format!("network {}", n.name.unwrap_or_default()));
        }
        found
    })
}

/// Counts again for a moment: the last process of a group may take a few ms to be reaped.
fn settle(up: &Up, engine: bool) -> Leftovers {
    let mut left = count(up, engine);
    for _ in 0..10 {
        if left.total() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = count(up, engine);
    }
    left
}

/// Whether the container backend can run the shop here; panics in CI when it cannot.
fn engine_ready() -> bool {
    let text = std::fs::read_to_string(fixture("images/local.env")).unwrap_or_default();
    let env: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    for (k, v) in &env {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
    let problem = match harness::Manifest::load(&fixture("stack.toml")) {
        Err(e) => Some(e.to_string()),
        Ok(m) => block(async {
            if let Err(e) = container::connect().await {
                return Some(format!("no Docker engine: {e}"));
            }
            container::available(&m, &harness::settings::Settings::from_env())
                .await
                .err()
                .map(|e| e.to_string())
        }),
    };
    match problem {
        None => true,
        Some(p) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI must run the container interrupts, but: {p}\n  run `fixtures/images/build.sh` first")
        }
        Some(p) => {
            eprintln!("skipping the container interrupts: {p}\n  (run `fixtures/images/build.sh` to build the harness-local/* images)");
            false
        }
    }
}

/// Interrupts `harness up` `n` times at random moments of startup and counts what is left.
fn interrupt_at_random(backend: Backend, startup: Duration) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = Rng::from_env();
    let seed = rng.0;
    let engine = backend == Backend::Container;
    let mut failures = Vec::new();
    let mut total = 0;
    for i in 0..interrupts() {
        // Even trials in the first 1.5 s, odd ones anywhere in the rest of startup.
        let delay = if i % 2 == 0 {
            Duration::from_millis(rng.below(1500))
        } else {
            Duration::from_millis(1500 + rng.below(startup.as_millis() as u64 - 1500))
        };
        let to_group = i % 4 < 2;
        let mut up = Up::start(backend, &format!("{backend:?}-{i}"));
        up.watch(delay);
        let signal = if to_group {
            let _ = killpg(Pid::from_raw(up.pid()), Signal::SIGINT);
            "SIGINT to the group"
        } else {
            let _ = kill(Pid::from_raw(up.pid()), Signal::SIGTERM);
            "SIGTERM to the process"
        };
        let status = up.wait(Duration::from_secs(40));
        let left = settle(&up, engine);
        total += left.total();
        let what = format!(
            "{backend:?} trial {i}: {signal} at {} ms: exit {:?}, {} recorded; left: {}",
            delay.as_millis(),
            status.map(|s| s.code().map_or(format!("by {s}"), |c| c.to_string())),
            up.recorded.len(),
            left.counts()
        );
        if verbose() {
            eprintln!("{what}");
        }
        // Killed by the signal itself rather than exiting from the handler (130, 143): the
        // handler was not installed yet. Only the first instants after exec may see that.
        let unhandled = status.is_some_and(|s| s.code().is_none()) && delay.as_millis() >= 50;
        if status.is_none() || unhandled || left.total() > 0 {
            failures.push(format!("{what}\n  {left:#?}\n  output:\n{}", up.output()));
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed} (HARNESS_INTERRUPT_SEED): {} of {} interrupted runs left something ({total} leftovers), did not stop, or died of the signal unhandled:\n{}",
        failures.len(),
        interrupts(),
        failures.join("\n")
    );
}

#[test]
fn native_interrupted_at_random_moments_leaves_nothing() {
    interrupt_at_random(Backend::Native, Duration::from_secs(8));
}

#[test]
fn container_interrupted_at_random_moments_leaves_nothing() {
    if !engine_ready() {
        return;
    }
    interrupt_at_random(Backend::Container, Duration::from_secs(12));
}

#[test]
fn native_killed_with_sigkill_is_reaped_by_the_next_run() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut first = Up::start(Backend::Native, "kill9-first");
    assert!(
        first.wait_for_output("redis", Duration::from_secs(60))
            && first.wait_for_output("ready in", Duration::from_secs(60)),
        "the first run did not get a service ready:\n{}",
        first.output()
    );
    // Give the slower servers a moment to be mid-start too.
    first.watch(Duration::from_millis(1500));
    let redis_before: Vec<i32> = first
        .recorded
        .iter()
        .filter(|(pid, _, _)| command_line(*pid).contains("redis-server"))
        .map(|(pid, _, _)| *pid)
        .collect();
    assert!(
        !redis_before.is_empty(),
        "no redis-server in the first run's record: {:?}\n{}",
        first.recorded,
        first.output()
    );
    kill(Pid::from_raw(first.pid()), Signal::SIGKILL).unwrap();
    let _ = first.wait(Duration::from_secs(5));
    let before = count(&first, false);
    assert!(
        before.total() > 0,
        "SIGKILL left nothing to reap, so this test checks nothing: {before:?}"
    );

    let mut second = Up::start(Backend::Native, "kill9-second");
    // The reaper runs before the stack starts (another run on this machine may reap first).
    let started = second.wait_for_output("starting stack", Duration::from_secs(60));
    let _ = kill(Pid::from_raw(second.pid()), Signal::SIGTERM);
    let status = second.wait(Duration::from_secs(40));
    let left_first = settle(&first, false);
    let left_second = settle(&second, false);
    let redis_left: Vec<&i32> = redis_before
        .iter()
        .filter(|p| stat(**p).is_some() && command_line(**p).contains("redis-server"))
        .collect();
    assert!(
        started && status.is_some() && left_first.total() == 0 && left_second.total() == 0,
        "after SIGKILL and one more run: started {started}, second exit {status:?}, redis left {redis_left:?}\n  killed run: {}\n  {left_first:#?}\n  next run: {}\n  {left_second:#?}\n  output:\n{}",
        left_first.counts(),
        left_second.counts(),
        second.output()
    );
    assert!(redis_left.is_empty(), "redis survived: {redis_left:?}");
}
