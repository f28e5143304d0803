//! A green run reads green: what a passing trial prints on the way (a panic it catches, a
//! snapshot mismatch it expects, notes) is kept out of the output and shown only when the
//! trial fails, or as it happens with `HARNESS_VERBOSE=1`.
//!
//! This binary runs itself as a suite (`QUIET_SUITE=green|red`) and checks its output.

use std::process::ExitCode;

use harness::runner::Suite;
use harness::snapshot::Snapshots;

const PANIC_MARKER: &str = "a panic the trial expects";
const NOTE_MARKER: &str = "a note of the trial";

/// What the trials print on their way: a caught panic, insta's diff of an expected snapshot
/// mismatch, a note.
fn noisy() -> anyhow::Result<()> {
    let caught = std::panic::catch_unwind(|| panic!("{PANIC_MARKER}"));
    anyhow::ensure!(caught.is_err(), "the panic was not caught");
    let dir = std::env::temp_dir().join(format!("harness-quiet-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("quiet__value.snap"),
        "---\nsource: harness/tests/quiet.rs\n---\n{\n  \"status\": \"PAID\"\n}\n",
    )?;
    let mismatch =
        Snapshots::new(&dir).check_json("quiet__value", &serde_json::json!({"status": "DECLINED"}));
    let _ = std::fs::remove_dir_all(&dir);
    let message = match mismatch {
        Ok(()) => anyhow::bail!("a changed value matched its snapshot"),
        Err(e) => format!("{e:#}"),
    };
    // The diff insta printed is kept in the error, where a failing trial shows it.
    anyhow::ensure!(
        message.contains("DECLINED") && message.contains("$.status"),
        "the mismatch does not show the diff:\n{message}"
    );
    harness::capture::note(NOTE_MARKER);
    Ok(())
}

fn suite(kind: &str) -> ExitCode {
    let suite = Suite::new("quiet").local_trial("noisy but green", || async { noisy() });
    let suite = if kind == "red" {
        suite.local_trial("noisy and red", || async {
            noisy()?;
            anyhow::bail!("the red trial fails")
        })
    } else {
        suite
    };
    suite.run()
}

/// Runs this binary as the suite `kind` and returns its exit status and all its output.
fn child(kind: &str, verbose: bool) -> (bool, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let junit = std::env::temp_dir().join(format!("harness-quiet-{}.xml", std::process::id()));
    let mut cmd = std::process::Command::new(exe);
    cmd.env("QUIET_SUITE", kind)
        .env("HARNESS_JUNIT", &junit)
        // insta then also writes `.snap.new` (in a scratch directory) and says so on stderr.
        .env("INSTA_UPDATE", "new")
        .env("RUST_BACKTRACE", "1")
        .env_remove("HARNESS_ONLY")
        .env_remove("HARNESS_SHARD")
        .env_remove("HARNESS_RETRIES")
        .args(["--test-threads", "1"]);
    if verbose {
        cmd.env("HARNESS_VERBOSE", "1");
    } else {
        cmd.env_remove("HARNESS_VERBOSE");
    }
    let out = cmd.output().expect("running the suite");
    let _ = std::fs::remove_file(&junit);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn check() -> Result<(), String> {
    let noise = [
        PANIC_MARKER,
        NOTE_MARKER,
        "panicked",
        "stack backtrace",
        "snapshot assertion",
        "DECLINED",
        "stored new snapshot",
    ];
    let (ok, green) = child("green", false);
    if !ok {
        return Err(format!("the green suite failed:\n{green}"));
    }
    if let Some(n) = noise.iter().find(|n| green.contains(**n)) {
        return Err(format!("a green run shows `{n}`:\n{green}"));
    }
    let (ok, verbose) = child("green", true);
    if !ok {
        return Err(format!(
            "the green suite failed with HARNESS_VERBOSE=1:\n{verbose}"
        ));
    }
    if let Some(n) = [PANIC_MARKER, NOTE_MARKER, "DECLINED"]
        .iter()
        .find(|n| !verbose.contains(**n))
    {
        return Err(format!("HARNESS_VERBOSE=1 does not show `{n}`:\n{verbose}"));
    }
    let (ok, red) = child("red", false);
    if ok {
        return Err(format!("the red suite passed:\n{red}"));
    }
    // The failing trial's report holds what it printed, backtrace included; the green
    // trial's output still stays out.
    let report = red
        .split_once("---- quiet::noisy and red ----")
        .map(|(_, r)| r)
        .ok_or_else(|| format!("no failure report for the red trial:\n{red}"))?;
    for expected in [
        "the red trial fails",
        "--- output of the trial",
        PANIC_MARKER,
        "stack backtrace",
        NOTE_MARKER,
    ] {
        if !report.contains(expected) {
            return Err(format!(
                "the red trial's failure lacks `{expected}`:\n{red}"
            ));
        }
    }
    if red.matches(NOTE_MARKER).count() != 1 {
        return Err(format!(
            "the note shows more than once (the green trial's too?):\n{red}"
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Ok(kind) = std::env::var("QUIET_SUITE") {
        return suite(&kind);
    }
    let trial =
        libtest_mimic::Trial::test("a green run shows no output of its passing trials", || {
            check().map_err(Into::into)
        });
    libtest_mimic::run(&libtest_mimic::Arguments::from_args(), vec![trial]).exit_code()
}
