//! Whole-suite wall time, cold and attached (`harness bench suites`).
//!
//! - **cold**: the suite binary starts its own stack, runs, tears it down.
//! - **warm**: a stack is already up (as after `harness up --detach`); the binary attaches.
//!
//! Both run the built test binary directly (after `cargo test --no-run`), so cargo's own
//! startup is not counted, and record the time from spawning it to its first trial starting
//! (libtest's `running N tests` line) and to its exit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::backend::BackendKind;
use crate::error::Error;
use crate::manifest::Manifest;
use crate::stack::{Stack, StackOptions};

/// Builds the suite's test binary and returns its path.
fn test_binary(manifest: &Manifest, suite: &str) -> Result<PathBuf, Error> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "test",
            "-p",
            "suites",
            "--test",
            suite,
            "--no-run",
            "--message-format=json",
            "--quiet",
        ])
        .current_dir(manifest.dir())
        .output()
        .map_err(|e| Error::io("building the suite", e))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == suite)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| Error::Usage(format!("the suites package has no test target `{suite}`")))
}

/// One run: (time to the first trial, total time, passed).
fn run_once(
    binary: &Path,
    manifest: &Manifest,
    attach: bool,
    backend: Option<BackendKind>,
) -> Result<(Duration, Duration, bool), Error> {
    let t0 = Instant::now();
    let mut cmd = Command::new(binary);
    cmd.env("HARNESS_MANIFEST", &manifest.path)
        .env("HARNESS_QUIET", "1")
        .env("HARNESS_ATTACH", if attach { "1" } else { "0" })
        .env("PACT_DO_NOT_TRACK", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(b) = backend {
        cmd.env("HARNESS_BACKEND", b.to_string());
    }
    let mut child = cmd.spawn().map_err(|e| Error::io("running the suite", e))?;
    let mut first = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if first.is_none() && line.starts_with("running ") {
                first = Some(t0.elapsed());
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| Error::io("waiting for the suite", e))?;
    let total = t0.elapsed();
    Ok((first.unwrap_or(total), total, status.success()))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Runs the benchmark and renders its report.
pub async fn suites(
    manifest: &Manifest,
    suite: &str,
    runs: usize,
    backend: Option<BackendKind>,
) -> Result<String, Error> {
    let binary = test_binary(manifest, suite)?;
    let (mut cold_first, mut cold_total, mut warm_first, mut warm_total) =
        (vec![], vec![], vec![], vec![]);
    let mut failures = 0;
    for _ in 0..runs {
        let (m, b) = (manifest.clone(), binary.clone());
        let (f, t, ok) = tokio::task::spawn_blocking(move || run_once(&b, &m, false, backend))
            .await
            .map_err(|e| Error::service("bench", e.to_string()))??;
        cold_first.push(f);
        cold_total.push(t);
        failures += usize::from(!ok);
    }
    let stack = Stack::start(
        manifest.clone(),
        StackOptions {
            backend,
            ..StackOptions::default()
        },
    )
    .await?;
    let kind = stack.backend();
    let state = crate::attach::write(&stack)?;
    let mut result = Ok(());
    for _ in 0..runs {
        let (m, b) = (manifest.clone(), binary.clone());
        match tokio::task::spawn_blocking(move || run_once(&b, &m, true, backend)).await {
            Ok(Ok((f, t, ok))) => {
                warm_first.push(f);
                warm_total.push(t);
                failures += usize::from(!ok);
            }
            Ok(Err(e)) => {
                result = Err(e);
                break;
            }
            Err(e) => {
                result = Err(Error::service("bench", e.to_string()));
                break;
            }
        }
    }
    stack.down().await;
    let _ = std::fs::remove_file(&state);
    crate::cleanup::unregister_dir(&state);
    result?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (cf, ct, wf, wt) = (
        median(cold_first),
        median(cold_total),
        median(warm_first),
        median(warm_total),
    );
    Ok(format!(
        "suite `{suite}` on the {kind} backend, {runs} runs of each mode (medians)\n\n\
         \x20 mode                 to first trial      whole suite\n\
         \x20 cold (own stack)     {:>10.0} ms   {:>10.0} ms   (target: whole suite <= 45000 ms)\n\
         \x20 warm (attached)      {:>10.0} ms   {:>10.0} ms   (target: first trial <= 1000 ms)\n\n\
         \x20 warm / cold, whole suite = {:.2}\n\
         \x20 runs with failures: {failures}\n",
        ms(cf),
        ms(ct),
        ms(wf),
        ms(wt),
        wt.as_secs_f64() / ct.as_secs_f64().max(1e-9),
    ))
}
