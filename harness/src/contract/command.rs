//! The command side of `harness verify` and `harness states serve`: the suite binary that holds
//! the provider states is run by cargo with the request in its environment (or, with no suite,
//! the verification runs in this process), its report is read back, printed and written as
//! JUnit and JSON.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::report::VerifyReport;
use super::state_server::StatesRequest;
use super::verify::ENV_REPORT;
use super::verify::{Candidate, VerifyRequest};
use super::Error;
use crate::settings::Settings;
use crate::testkit::runner::Suite;

/// How `harness verify` runs a suite binary: which cargo package and test target hold the
/// shop-specific state handlers and producers.
#[derive(Debug, Clone)]
pub struct SuiteTarget {
    /// The cargo package (`-p`).
    pub package: String,
    /// The test target (`--test`).
    pub test: String,
    /// Where cargo runs (the cargo project of the suite); `None`: the manifest's directory.
    pub dir: Option<PathBuf>,
}

impl SuiteTarget {
    /// The suite a manifest names (`[stack] contracts-suite`), else `package`/`test` of the
    /// cargo workspace around the manifest.
    pub fn for_manifest(manifest: &crate::Manifest, package: String, test: String) -> SuiteTarget {
        match &manifest.contracts_suite {
            Some(s) => SuiteTarget {
                package: s.package.clone(),
                test: s.test.clone(),
                dir: Some(s.dir.clone()),
            },
            None => SuiteTarget {
                package,
                test,
                dir: None,
            },
        }
    }
}

/// Where `harness verify` finds the provider states.
#[derive(Debug, Clone)]
pub enum StatesFrom {
    /// The handlers of a suite binary: cargo runs it with the request in its environment.
    Suite(SuiteTarget),
    /// None but the request's state-change URL, if it has one: verified in this process
    /// (no cargo workspace needed), with the pacts of `contracts_dir` unless `--pacts` says.
    InProcess {
        /// The pact directory when neither `--pacts` nor a broker is given.
        contracts_dir: PathBuf,
    },
}

/// Where `harness verify` writes its reports besides the summary table.
#[derive(Debug, Clone)]
pub struct VerifyOutput {
    /// JUnit XML, one testcase per interaction.
    pub junit: PathBuf,
    /// The report as JSON (`--json`).
    pub json: Option<PathBuf>,
}

/// `harness verify`: validates the request, verifies (in a suite binary whose state handlers
/// and producers are used, or in this process), prints the summary table, writes the JUnit
/// and JSON reports, and returns the exit code: 0 verified, 1 an interaction failed, or the
/// stack's own code when it could not be started (2–5).
pub fn run_verify_command(
    request: &VerifyRequest,
    states: &StatesFrom,
    manifest: &Path,
    settings: &Settings,
    output: &VerifyOutput,
) -> Result<u8, Error> {
    crate::engine::cleanup::install_signal_handler();
    request.validate()?;
    let mut request = request.clone();
    request.candidate = match request.candidate.take() {
        Some(Candidate::Binary(b)) => Some(Candidate::Binary(absolute(&b)?)),
        Some(Candidate::Build(c)) => Some(Candidate::Build(absolute(&c)?)),
        other => other,
    };
    let manifest = canonical(manifest);
    let report_path = handoff_file("verify", &request.provider, "json");
    let (code, what) = match states {
        StatesFrom::Suite(target) => (
            run_suite(&request, target, &manifest, settings, &report_path)?,
            format!("`cargo test -p {} --test {}`", target.package, target.test),
        ),
        StatesFrom::InProcess { contracts_dir } => {
            let contracts = super::Contracts::new(contracts_dir);
            let suite = Suite::new("verify")
                .manifest(&manifest)
                .settings(settings.clone());
            let suite =
                contracts.verify_suite_reporting(suite, request.clone(), Some(report_path.clone()));
            let code = std::thread::scope(|scope| {
                scope
                    .spawn(|| suite.run_with_args(["harness verify".to_string()]))
                    .join()
                    .unwrap_or(crate::exit_code::INTERNAL)
            });
            (code, "the verification".to_string())
        }
    };
    let report = std::fs::read(&report_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<VerifyReport>(&bytes).ok());
    let _ = std::fs::remove_file(&report_path);
    match (report, code) {
        (_, c @ 2..=5) => Ok(c),
        (Some(report), _) => {
            println!("\nharness verify {}:\n{}", report.provider, report.table());
            write_output(&output.junit, report.junit().as_bytes())?;
            println!("junit: {}", output.junit.display());
            if let Some(json) = &output.json {
                let text = serde_json::to_vec_pretty(&report).map_err(|e| Error::Report {
                    path: json.clone(),
                    cause: e.to_string(),
                })?;
                write_output(json, &text)?;
            }
            Ok(if report.ok && code == 0 {
                crate::exit_code::OK
            } else {
                crate::exit_code::TESTS_FAILED
            })
        }
        (None, 0) => Err(Error::NoVerification {
            command: what,
            provider: request.provider,
        }),
        (None, _) => Ok(crate::exit_code::TESTS_FAILED),
    }
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A file in the temporary directory through which the suite binary hands something back
/// (`harness-<what>-<provider>-<pid>.<ext>`), none there yet.
fn handoff_file(what: &str, provider: &str, ext: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "harness-{what}-{provider}-{}.{ext}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::fs::canonicalize(path).map_err(|cause| Error::Command {
        context: format!("resolving {}", path.display()),
        cause,
    })
}

fn write_output(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(path, bytes).map_err(|e| Error::Report {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })
}

/// Runs the suite binary of `target` with `request` in its environment; its exit code.
fn run_suite(
    request: &VerifyRequest,
    target: &SuiteTarget,
    manifest: &Path,
    settings: &Settings,
    report_path: &Path,
) -> Result<u8, Error> {
    // In verify mode the suite holds the one trial `<suite>::verify::<provider>`.
    let filter = format!("::verify::{}", request.provider);
    let mut env: Vec<(&str, String)> = request.to_env();
    env.push((ENV_REPORT, report_path.to_string_lossy().into_owned()));
    suite_command(target, manifest, settings, &filter, &env)
}

/// `cargo test -p <package> --test <test> -- <filter>` in the manifest's directory with `env`,
/// in a group of its own (a signal to the harness reaches the suite, whose handler then stops
/// its stack); its exit code.
fn suite_command(
    target: &SuiteTarget,
    manifest: &Path,
    settings: &Settings,
    filter: &str,
    env: &[(&str, String)],
) -> Result<u8, Error> {
    let mut cmd = settings.cargo_command();
    cmd.args([
        "test",
        "--quiet",
        "-p",
        &target.package,
        "--test",
        &target.test,
        "--",
    ])
    .arg(filter)
    .env("HARNESS_MANIFEST", manifest)
    .env("PACT_DO_NOT_TRACK", "true");
    if let Some(dir) = target.dir.as_deref().or(manifest.parent()) {
        cmd.current_dir(dir);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status =
        crate::engine::cleanup::status_in_own_group(&mut cmd).map_err(|cause| Error::Command {
            context: format!(
                "running `cargo test -p {} --test {}`",
                target.package, target.test
            ),
            cause,
        })?;
    Ok(status
        .code()
        .map(|c| c as u8)
        .unwrap_or(crate::exit_code::INTERRUPTED))
}

/// `harness states serve`: runs the suite binary of `target` serving `request.provider`'s state
/// handlers as a state-change endpoint against the stack (a running `harness up`'s, else one
/// of its own); prints the endpoint's URL once it listens, and runs until stopped.
pub fn run_states_command(
    request: &StatesRequest,
    target: &SuiteTarget,
    manifest: &Path,
    settings: &Settings,
) -> Result<u8, Error> {
    crate::engine::cleanup::install_signal_handler();
    let manifest = canonical(manifest);
    let url_file = handoff_file("states", &request.provider, "url");
    crate::engine::cleanup::register_dir(&url_file);
    let request = StatesRequest {
        url_file: Some(url_file.clone()),
        ..request.clone()
    };
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, url_file, provider) = (done.clone(), url_file.clone(), request.provider.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Ok(url) = std::fs::read_to_string(&url_file) {
                    println!(
                        "provider states of `{provider}` served at {url} (POST {{\"state\", \"params\", \"action\"}}); Ctrl-C stops"
                    );
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        })
    };
    let filter = format!("::states::serve::{}", request.provider);
    let code = suite_command(target, &manifest, settings, &filter, &request.to_env());
    done.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    let _ = std::fs::remove_file(&url_file);
    crate::engine::cleanup::unregister_dir(&url_file);
    code
}
