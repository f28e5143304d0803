//! A library leaves the process alone unless asked: a stack started with
//! `StackOptions::default()` installs no signal handler and reaps no dead run; asked for
//! (`handle_signals`, `reap_dead_runs`), it does both. A suite runner asks: its trials run with
//! the handler installed.
//!
//! This binary runs itself as a suite (`CONSENT_SUITE=1`) for the runner's part.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use harness::backend::BackendKind;
use harness::runner::Suite;
use harness::{Manifest, Stack, StackOptions};

/// Whether this process catches `signal` (its bit in `SigCgt` of `/proc/self/status`).
fn catches(signal: i32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

fn signals_caught() -> [bool; 3] {
    use nix::sys::signal::Signal::{SIGHUP, SIGINT, SIGTERM};
    [SIGINT, SIGTERM, SIGHUP].map(|s| catches(s as i32))
}

/// The directory of a run whose owner has died, as a `kill -9` leaves it.
fn dead_run() -> PathBuf {
    let mut ended = std::process::Command::new("true")
        .spawn()
        .expect("`true` runs");
    let owner = ended.id();
    let _ = ended.wait();
    let dir =
        harness::cleanup::runs_root().join(format!("{owner}-consenttest{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the dead run's directory");
    std::fs::write(dir.join("owner"), format!("{owner} 1\n")).expect("writing its owner");
    dir
}

async fn start(options: StackOptions) -> Stack {
    let manifest = Manifest::parse(
        Path::new("consent.toml"),
        "[services.cache]\nkind = \"redis\"\n",
    )
    .expect("the manifest parses");
    Stack::start(
        manifest,
        StackOptions {
            backend: Some(BackendKind::Native),
            ..options
        },
    )
    .await
    .expect("the stack starts")
}

/// The stack's part: `Err` says what went wrong.
async fn stack_asks_first() -> Result<(), String> {
    let dead = dead_run();
    let stack = start(StackOptions::default()).await;
    let (caught, kept) = (signals_caught(), dead.exists());
    stack.down().await;
    if caught.iter().any(|c| *c) {
        return Err(format!(
            "default options installed a signal handler (SIGINT, SIGTERM, SIGHUP caught: {caught:?})"
        ));
    }
    if !kept {
        return Err("default options reaped a dead run".into());
    }
    let stack = start(StackOptions {
        handle_signals: true,
        reap_dead_runs: true,
        ..StackOptions::default()
    })
    .await;
    let (caught, kept) = (signals_caught(), dead.exists());
    stack.down().await;
    let _ = std::fs::remove_dir_all(&dead);
    if caught != [true; 3] {
        return Err(format!(
            "handle_signals installed no handler (SIGINT, SIGTERM, SIGHUP caught: {caught:?})"
        ));
    }
    if kept {
        return Err(format!("reap_dead_runs left {}", dead.display()));
    }
    Ok(())
}

/// The runner's part: a suite's trial runs with the handler installed.
fn runner_asks() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let junit = std::env::temp_dir().join(format!("harness-consent-{}.xml", std::process::id()));
    let out = std::process::Command::new(exe)
        .env("CONSENT_SUITE", "1")
        .env("HARNESS_JUNIT", &junit)
        .env_remove("HARNESS_ONLY")
        .env_remove("HARNESS_SHARD")
        .env_remove("HARNESS_RETRIES")
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&junit);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the suite failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn main() -> ExitCode {
    if std::env::var_os("CONSENT_SUITE").is_some() {
        return Suite::new("consent")
            .local_trial("signals are handled", || async {
                let caught = signals_caught();
                anyhow::ensure!(
                    caught == [true; 3],
                    "the runner installed no signal handler (SIGINT, SIGTERM, SIGHUP caught: {caught:?})"
                );
                Ok(())
            })
            .run();
    }
    // The runner's part first: the stack's part installs the handler in this process.
    let runner = runner_asks();
    let stack = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(stack_asks_first()),
        Err(e) => Err(format!("no async runtime: {e}")),
    };
    let mut failed = false;
    for (name, result) in [("the runner asks", runner), ("a stack asks first", stack)] {
        match result {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                failed = true;
                println!("test {name} ... FAILED\n{e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
