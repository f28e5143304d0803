//! The reaper finds what a dead run left even when the process kept nothing the run recorded:
//! a daemon that moved to `/` (as `epmd -daemon` does) and only carries paths into the run's
//! directory in its environment. A process of a live run is spared.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A daemon-like process: working directory `/`, its own process group, and `dir` in its
/// environment the way RabbitMQ's wrapper hands its paths to `epmd`.
fn daemon(dir: &std::path::Path) -> Child {
    Command::new("sleep")
        .arg("60")
        .current_dir("/")
        .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq/rabbitmq.conf"))
        .process_group(0)
        .spawn()
        .expect("sleep runs")
}

fn gone_within(child: &mut Child, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_daemon_of_a_dead_run_is_reaped_by_its_environment_and_a_live_runs_is_not() {
    let root = std::env::temp_dir().join("harness-runs");
    // A pid that has just ended: the owner of the dead run.
    let mut ended = Command::new("true").spawn().unwrap();
    let dead_owner = ended.id();
    ended.wait().unwrap();
    let dead = root.join(format!("{dead_owner}-reapertest{}", std::process::id()));
    // This test process is alive and older than what it starts: the owner of a live run.
    let live = root.join(format!("{}-reapertest", std::process::id()));

    let mut orphan = daemon(&dead);
    let mut spared = daemon(&live);
    std::thread::sleep(Duration::from_millis(50));
    harness::cleanup::reap_dead_runs();
    let reaped = gone_within(&mut orphan, Duration::from_secs(5));
    let survived = spared.try_wait().unwrap().is_none();
    let _ = orphan.kill();
    let _ = spared.kill();
    let _ = orphan.wait();
    let _ = spared.wait();
    assert!(
        reaped,
        "the dead run's daemon (pid {}) was not reaped",
        orphan.id()
    );
    assert!(survived, "a live run's process was reaped");
}
