//! The cargo orchestration of `harness verify`: the suite binary that holds the provider
//! states is run with the request in its environment, and its report is read back.

use std::path::Path;

use super::report::VerifyReport;
use super::verify::ENV_REPORT;
use super::verify::{Candidate, VerifyRequest};
use super::Error;
use crate::settings::Settings;

/// How `harness verify` runs a suite binary: which cargo package and test target hold the
/// shop-specific state handlers and producers.
#[derive(Debug, Clone)]
pub struct SuiteTarget {
    /// The cargo package (`-p`).
    pub package: String,
    /// The test target (`--test`).
    pub test: String,
}

/// `harness verify`: validates the request, runs the suite binary with the request in its
/// environment (so its own state handlers and producers are used), prints the summary table
/// the suite reports back, and returns the exit code: 0 verified, 1 an interaction failed, or
/// the suite's own code when the stack could not be started (2–5).
pub fn run_verify_command(
    request: &VerifyRequest,
    target: &SuiteTarget,
    manifest: &Path,
    settings: &Settings,
) -> Result<u8, Error> {
    crate::engine::cleanup::install_signal_handler();
    request.validate()?;
    let mut request = request.clone();
    if let Some(Candidate::Binary(b)) = &request.candidate {
        let abs = std::fs::canonicalize(b).map_err(|cause| Error::Command {
            context: format!("resolving {}", b.display()),
            cause,
        })?;
        request.candidate = Some(Candidate::Binary(abs));
    }
    let manifest = std::fs::canonicalize(manifest).unwrap_or_else(|_| manifest.to_path_buf());
    let report_path = std::env::temp_dir().join(format!(
        "harness-verify-{}-{}.json",
        request.provider,
        std::process::id()
    ));
    let _ = std::fs::remove_file(&report_path);
    let mut cmd = std::process::Command::new(settings.cargo());
    // In verify mode the suite holds the one trial `<suite>::verify::<provider>`.
    cmd.args([
        "test",
        "--quiet",
        "-p",
        &target.package,
        "--test",
        &target.test,
        "--",
    ])
    .arg(format!("::verify::{}", request.provider))
    .env("HARNESS_MANIFEST", &manifest)
    .env(ENV_REPORT, &report_path)
    .env("PACT_DO_NOT_TRACK", "true");
    if let Some(dir) = manifest.parent() {
        cmd.current_dir(dir);
    }
    for (k, v) in request.to_env() {
        cmd.env(k, v);
    }
    let what = format!("`cargo test -p {} --test {}`", target.package, target.test);
    // In a group of its own, registered: a signal to `harness verify` reaches the suite, whose
    // own handler then stops its stack.
    let status =
        crate::engine::cleanup::status_in_own_group(&mut cmd).map_err(|cause| Error::Command {
            context: format!("running {what}"),
            cause,
        })?;
    let report = std::fs::read(&report_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<VerifyReport>(&bytes).ok());
    let _ = std::fs::remove_file(&report_path);
    match (report, status.code()) {
        (_, Some(c @ 2..=5)) => Ok(c as u8),
        (Some(report), _) => {
            println!("\nharness verify {}:\n{}", report.provider, report.table());
            Ok(if report.ok && status.success() {
                crate::exit_code::OK
            } else {
                crate::exit_code::TESTS_FAILED
            })
        }
        (None, _) if status.success() => Err(Error::NoVerification {
            command: what,
            provider: request.provider,
        }),
        (None, _) => Ok(crate::exit_code::TESTS_FAILED),
    }
}
