//! Whole-suite wall time, cold and attached (`harness bench suites`).
//!
//! - **cold**: the suite binary starts its own stack, runs, tears it down.
//! - **warm**: a stack is already up (as after `harness up --detach`); the binary attaches.
//! - **refreshed**: as warm, but one service's binary was rebuilt just before (a new file with
//!   other content, as cargo writes it): the suite finds its fingerprint changed and the stack's
//!   owner restarts it in place before the first trial. Refresh cost = refreshed - warm.
//!
//! Both run the built test binary directly (after `cargo test --no-run`), so cargo's own
//! startup is not counted, and record the time from spawning it to its first trial starting
//! (libtest's `running N tests` line) and to its exit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::engine::backend::BackendKind;
use crate::engine::error::Error;
use crate::engine::stack::{Stack, StackOptions};
use crate::manifest::Manifest;
use crate::settings::Settings;

/// Builds the suite's test binary and returns its path.
fn test_binary(manifest: &Manifest, suite: &str) -> Result<PathBuf, Error> {
    let out = Settings::process()
        .cargo_command()
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

/// One run: (time to the first trial, total time, passed). With `bin_dir` the suite attaches
/// to the running stack that runs the binaries there; without, it starts its own.
fn run_once(
    binary: &Path,
    manifest: &Manifest,
    bin_dir: Option<&Path>,
    backend: Option<BackendKind>,
) -> Result<(Duration, Duration, bool), Error> {
    let attach = bin_dir.is_some();
    let t0 = Instant::now();
    let mut cmd = Command::new(binary);
    if let Some(dir) = bin_dir {
        // The suite compares the stack's fingerprints with these binaries, and finds the
        // stack's state file beside them (not in the project's, where a stack of the
        // developer's may be up).
        cmd.env("HARNESS_BIN_DIR", dir)
            .env("HARNESS_STATE_DIR", dir.join("state"));
    }
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

/// Copies every `binary` service's executable into `dir` (so the benchmark can "rebuild" one
/// without touching the workspace's own `target/`).
fn copy_binaries(manifest: &Manifest, dir: &Path) -> Result<Vec<String>, Error> {
    let bins = Settings::process().bin_dir(manifest.dir());
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut names = Vec::new();
    for s in &manifest.services {
        if let crate::manifest::Launch::Binary(b) = &s.launch {
            std::fs::copy(bins.join(b), dir.join(b))
                .map_err(|e| Error::io(format!("copying {}", bins.join(b).display()), e))?;
            names.push(s.name.clone());
        }
    }
    Ok(names)
}

/// "Rebuilds" a binary: a new file with the old content and one more byte each time (data
/// after an ELF image is never loaded), renamed into place.
fn rebuild(path: &Path, round: usize) -> Result<(), Error> {
    let mut bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    bytes.push(round as u8);
    let tmp = path.with_extension("rebuilt");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Runs the benchmark and renders its report.
pub async fn suites(
    manifest: &Manifest,
    suite: &str,
    runs: usize,
    backend: Option<BackendKind>,
) -> Result<String, Error> {
    let binary = test_binary(manifest, suite)?;
    let (mut cold_first, mut cold_total) = (vec![], vec![]);
    let mut failures = 0;
    for _ in 0..runs {
        let (m, b) = (manifest.clone(), binary.clone());
        let (f, t, ok) = tokio::task::spawn_blocking(move || run_once(&b, &m, None, backend))
            .await
            .map_err(|e| Error::service("bench", e.to_string()))??;
        cold_first.push(f);
        cold_total.push(t);
        failures += usize::from(!ok);
    }
    // The warm and refreshed modes run on copies of the binaries, which the refreshed mode
    // replaces between runs; the stack and the suites find them through HARNESS_BIN_DIR.
    let scratch = std::env::temp_dir().join(format!("harness-bench-{}", std::process::id()));
    let result = warm_and_refreshed(manifest, &binary, runs, backend, &scratch.join("bin")).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let (kind, warm_first, warm_total, refreshed_first, refreshed_service, warm_failures) = result?;
    failures += warm_failures;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (cf, ct, wf, wt, rf) = (
        median(cold_first),
        median(cold_total),
        median(warm_first),
        median(warm_total),
        median(refreshed_first),
    );
    Ok(format!(
        "suite `{suite}` on the {kind} backend, {runs} runs of each mode (medians)\n\n\
         \x20 mode                 to first trial      whole suite\n\
         \x20 cold (own stack)     {:>10.0} ms   {:>10.0} ms   (target: whole suite <= 45000 ms)\n\
         \x20 warm (attached)      {:>10.0} ms   {:>10.0} ms   (target: first trial <= 1000 ms)\n\
         \x20 refreshed ({:<9}) {:>10.0} ms                   (attached, its binary rebuilt)\n\n\
         \x20 warm / cold, whole suite = {:.2}\n\
         \x20 refreshed / cold, to first trial = {:.2}\n\
         \x20 refresh cost (refreshed - warm, to first trial) = {:.0} ms   (target: <= 1500 ms)\n\
         \x20 runs with failures: {failures}\n",
        ms(cf),
        ms(ct),
        ms(wf),
        ms(wt),
        refreshed_service,
        ms(rf),
        wt.as_secs_f64() / ct.as_secs_f64().max(1e-9),
        rf.as_secs_f64() / cf.as_secs_f64().max(1e-9),
        ms(rf) - ms(wf),
    ))
}

type WarmRuns = (
    BackendKind,
    Vec<Duration>,
    Vec<Duration>,
    Vec<Duration>,
    String,
    usize,
);

/// The attached modes: a stack of this process's own (serving refresh requests), the suite
/// attached `runs` times as it is, then `runs` times each after a rebuild of one binary.
async fn warm_and_refreshed(
    manifest: &Manifest,
    binary: &Path,
    runs: usize,
    backend: Option<BackendKind>,
    scratch: &Path,
) -> Result<WarmRuns, Error> {
    let changed = copy_binaries(manifest, scratch)?;
    let Some(service) = changed
        .iter()
        .find(|s| s.as_str() == "orders")
        .or(changed.first())
        .cloned()
    else {
        return Err(Error::Usage(
            "the manifest has no `binary` service to rebuild".into(),
        ));
    };
    let mut stack = Stack::start(
        manifest.clone(),
        StackOptions {
            backend,
            bin_dir: Some(scratch.to_path_buf()),
            settings: crate::settings::Settings::process().clone().with(
                "HARNESS_STATE_DIR",
                scratch.join("state").display().to_string(),
            ),
            // A command's bench: it owns the process, as `harness up` does.
            ..StackOptions::owning_the_process(false)
        },
    )
    .await?;
    let kind = stack.backend();
    let state = crate::engine::attach::write(&stack)?;
    let control = crate::engine::attach::Control::bind(&stack)?;
    let (mut warm_first, mut warm_total, mut refreshed_first) = (vec![], vec![], vec![]);
    let mut failures = 0;
    let mut result = Ok(());
    let program = match manifest.service(&service).map(|s| &s.launch) {
        Some(crate::manifest::Launch::Binary(b)) => scratch.join(b),
        _ => scratch.join(&service),
    };
    for round in 0..runs * 2 {
        let refreshing = round >= runs;
        if refreshing {
            if let Err(e) = rebuild(&program, round) {
                result = Err(e);
                break;
            }
        }
        let (m, b, bins) = (
            manifest.clone(),
            binary.to_path_buf(),
            scratch.to_path_buf(),
        );
        let mut run = tokio::task::spawn_blocking(move || run_once(&b, &m, Some(&bins), backend));
        let outcome = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = control.serve_one(&mut stack) => {}
            }
        };
        match outcome {
            Ok(Ok((f, t, ok))) => {
                if refreshing {
                    refreshed_first.push(f);
                } else {
                    warm_first.push(f);
                    warm_total.push(t);
                }
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
    drop(control);
    stack.down().await;
    let _ = std::fs::remove_file(&state);
    crate::engine::cleanup::unregister_dir(&state);
    result?;
    Ok((
        kind,
        warm_first,
        warm_total,
        refreshed_first,
        service,
        failures,
    ))
}
