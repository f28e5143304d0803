//! `harness test`, the main job: one stack for every suite that can share it, the suites run
//! against it, a line per suite, the teardown. The suites are the commands of the manifest's
//! `[suites]` tables, or, when none has a `command`, the `suites` cargo package.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{exit_code, Error, Manifest, Stack, StackOptions};

use crate::{settings, write_timeline};

/// One suite the job runs: its name and its command line.
struct Run {
    name: String,
    command: Command,
}

/// The main job; `args` go to every suite command (to `cargo test -- …` for the package).
pub(crate) async fn main_job(m: Manifest, args: Vec<String>) -> Result<u8, Error> {
    harness::build::cargo_binaries(&m, settings())?;
    let runs = if m.suite_commands.is_empty() {
        vec![cargo_suites(&m, &args)?]
    } else {
        m.suite_commands
            .iter()
            .map(|(name, words)| Run {
                name: name.clone(),
                command: suite_command(&m, words, &args),
            })
            .collect()
    };
    let started = Instant::now();
    let mut stack = Stack::start(m.clone(), StackOptions::owning_the_process(true)).await?;
    let state = harness::attach::write(&stack)?;
    write_timeline(&stack);
    let control = harness::attach::Control::bind(&stack)?;
    let variables = endpoint_variables(&stack);
    let mut results = Vec::new();
    for mut run in runs {
        run.command
            .env("HARNESS_MANIFEST", &m.path)
            .env("PACT_DO_NOT_TRACK", "true")
            .envs(variables.iter().map(|(k, v)| (k, v)));
        let began = Instant::now();
        let mut child = tokio::task::spawn_blocking(move || {
            let status = harness::cleanup::status_in_own_group(&mut run.command);
            (run, status)
        });
        // The suites attach to this stack; one that finds a service changed asks for a refresh.
        let (run, status) = loop {
            tokio::select! {
                done = &mut child => break done.map_err(|e| Error::io("running a suite", std::io::Error::other(e.to_string())))?,
                _ = control.serve_one(&mut stack) => {}
            }
        };
        let program = run.command.get_program().to_string_lossy().into_owned();
        let ok = status
            .map_err(|e| {
                Error::io(
                    format!(
                        "running suite `{}` (`{program}`, in {})",
                        run.name,
                        m.dir().display()
                    ),
                    e,
                )
            })?
            .success();
        results.push((run.name, ok, began.elapsed()));
    }
    let timings = stack.timings().to_vec();
    stack.down().await;
    let _ = std::fs::remove_file(&state);
    harness::cleanup::unregister_dir(&state);
    println!(
        "{}",
        harness::report::summary(&[], &timings)
            .trim_end()
            .replace("0 passed, 0 failed, 0 flaky", "shared stack")
    );
    let passed = results.iter().all(|(_, ok, _)| *ok);
    if !m.suite_commands.is_empty() {
        println!("{}", suite_lines(&results));
    }
    let reports = if m.suite_commands.is_empty() {
        let junit = m.state_dir_for(settings()).join("junit");
        format!("; JUnit reports in {}", junit.display())
    } else {
        String::new()
    };
    println!(
        "main job {} in {:.1} s{reports}",
        if passed { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64(),
    );
    Ok(if passed {
        exit_code::OK
    } else {
        exit_code::TESTS_FAILED
    })
}

/// The `suites` cargo package, built first so a build error is not a failed test run.
fn cargo_suites(m: &Manifest, args: &[String]) -> Result<Run, Error> {
    let dir = m.dir();
    if harness::settings::cargo_workspace(&std::fs::canonicalize(dir).unwrap_or(dir.into()))
        .is_none()
    {
        return Err(Error::Prerequisite {
            what: format!(
                "{} gives no suite commands and is not inside a cargo workspace, so there are no suites to run",
                m.path.display()
            ),
            help: "give a suite a command in the manifest, e.g. `[suites] e2e = { services = [\"api\"], command = [\"pytest\", \"tests\"] }` (compose: under the top-level `x-harness: suites:`)".into(),
        });
    }
    let built = harness::cleanup::status_in_own_group(
        settings()
            .cargo_command()
            .args(["test", "-p", "suites", "--no-run", "--quiet"])
            .current_dir(dir),
    )
    .map_err(|e| Error::io("building the suites", e))?;
    if !built.success() {
        return Err(Error::Prerequisite {
            what: "the suites do not build".into(),
            help: "fix the build errors above".into(),
        });
    }
    let mut command = settings().cargo_command();
    command
        .args(["test", "-p", "suites", "--"])
        .args(args)
        .current_dir(dir);
    Ok(Run {
        name: "cargo test -p suites".into(),
        command,
    })
}

/// A suite's command: run in the manifest's directory, a program with a `/` relative to it.
fn suite_command(m: &Manifest, words: &[String], args: &[String]) -> Command {
    let program = Path::new(&words[0]);
    let program = if words[0].contains('/') && program.is_relative() {
        m.dir().join(program)
    } else {
        program.to_path_buf()
    };
    let mut command = Command::new(program);
    command.args(&words[1..]).args(args).current_dir(m.dir());
    command
}

/// `HARNESS_<SERVICE>_HOST`, `_PORT…`, credentials and `_URL` of every service.
fn endpoint_variables(stack: &Stack) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for (name, endpoint) in stack.endpoints() {
        vars.extend(harness::backend::external::variables(&name, &endpoint));
        if let Ok(url) = endpoint.url(None) {
            vars.push((harness::backend::external::var_name(&name, "URL"), url));
        }
    }
    vars
}

/// One line per suite command: its name, passed or FAILED, and its time.
fn suite_lines(results: &[(String, bool, Duration)]) -> String {
    let width = results.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
    results
        .iter()
        .map(|(name, ok, took)| {
            format!(
                "  suite {name:<width$}  {}  {:.1} s",
                if *ok { "passed" } else { "FAILED" },
                took.as_secs_f64()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
