//! Suites as test binaries: `harness = false` targets whose trials run under libtest-mimic
//! against one stack per binary, started before the trials and torn down after them.
//!
//! ```no_run
//! use harness::runner::Suite;
//!
//! fn main() -> std::process::ExitCode {
//!     Suite::new("journeys")
//!         .trial("happy_path", |ctx| async move {
//!             let url = ctx.stack.url("orders")?;
//!             anyhow::ensure!(reqwest::get(format!("{url}/health")).await?.status().is_success());
//!             Ok(())
//!         })
//!         .run()
//! }
//! ```
//!
//! Filtering, `--list`, `--exact`, `--skip`, `--ignored`, `--test-threads` and `--format` are
//! libtest-mimic's and behave as with `cargo test`. `--list` and a filter that selects nothing
//! start no stack. `main` returns an `ExitCode` (never `Conclusion::exit()`, which would skip
//! the teardown).

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};

use crate::engine::events::{Event, Fanout, Report, Sink, Terminal, Trials};
use crate::engine::stack::{Stack, StackOptions};
use crate::manifest::Kind;
use crate::settings::Settings;
use crate::testkit::report::{Outcome, TrialRecord};
use crate::{exit_code, Manifest};

type TrialFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type TrialFn = Arc<dyn Fn(Arc<TrialContext>) -> TrialFuture + Send + Sync>;
type LocalFn = Arc<dyn Fn() -> TrialFuture + Send + Sync>;
type ManifestHook = Arc<dyn Fn(&mut Manifest) -> Result<(), crate::Error> + Send + Sync>;

/// What a trial gets: the shared stack and its own name.
#[derive(Debug)]
pub struct TrialContext {
    /// The stack all trials of this binary share.
    pub stack: Arc<Stack>,
    /// The trial's full name (`suite::trial`).
    pub name: String,
}

/// A named set of trials run against one stack.
pub struct Suite {
    name: String,
    trials: Vec<(String, TrialFn, bool)>,
    manifest: Option<std::path::PathBuf>,
    sequential: bool,
    local: Vec<(String, LocalFn, bool)>,
    manifest_hooks: Vec<ManifestHook>,
    /// Trials that read services' logs, by full name: ignored, with the reason, where the
    /// logs cannot be read.
    needs_logs: std::collections::BTreeMap<String, Vec<String>>,
    settings: Settings,
}

impl std::fmt::Debug for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suite")
            .field("name", &self.name)
            .field(
                "trials",
                &self.trials.iter().map(|t| &t.0).collect::<Vec<_>>(),
            )
            .field(
                "local",
                &self.local.iter().map(|t| &t.0).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Suite {
    /// An empty suite; trial names are prefixed with `name::`.
    pub fn new(name: &str) -> Suite {
        Suite {
            name: name.to_string(),
            trials: Vec::new(),
            manifest: None,
            sequential: false,
            local: Vec::new(),
            manifest_hooks: Vec::new(),
            needs_logs: std::collections::BTreeMap::new(),
            settings: Settings::from_env(),
        }
    }

    /// Uses these settings instead of this process's environment (see
    /// [`crate::settings`]): selection, reports, backends, attaching.
    pub fn settings(mut self, settings: Settings) -> Suite {
        self.settings = settings;
        self
    }

    /// Declares that trial `name` reads the logs of `services`: where one of them has none to
    /// read (the external backend), the trial is reported as ignored with the reason instead
    /// of failing.
    pub fn needs_logs(mut self, name: &str, services: &[&str]) -> Suite {
        self.needs_logs.insert(
            format!("{}::{name}", self.name),
            services.iter().map(|s| s.to_string()).collect(),
        );
        self
    }

    /// Uses this manifest instead of the default one.
    pub fn manifest(mut self, path: impl Into<std::path::PathBuf>) -> Suite {
        self.manifest = Some(path.into());
        self
    }

    /// Runs the trials one at a time (unless `--test-threads` says otherwise): for trials that
    /// break shared dependencies on purpose.
    pub fn sequential(mut self) -> Suite {
        self.sequential = true;
        self
    }

    /// Adds a trial.
    pub fn trial<F, Fut>(self, name: &str, f: F) -> Suite
    where
        F: Fn(Arc<TrialContext>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.add(name, f, false)
    }

    /// Adds a trial that runs only with `--ignored` or `--include-ignored`.
    pub fn ignored_trial<F, Fut>(self, name: &str, f: F) -> Suite
    where
        F: Fn(Arc<TrialContext>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.add(name, f, true)
    }

    /// Adds a trial that needs no stack (e.g. a consumer contract test against a mock). When
    /// the arguments select only such trials, no stack is started.
    pub fn local_trial<F, Fut>(mut self, name: &str, f: F) -> Suite
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let full = format!("{}::{name}", self.name);
        let f: LocalFn = Arc::new(move || Box::pin(f()));
        self.local.push((full, f, false));
        self
    }

    /// Adjusts the manifest after it is loaded and before the stack starts (e.g. to run a
    /// candidate build of one service). Hooks run in the order added.
    pub fn configure_manifest<F>(mut self, f: F) -> Suite
    where
        F: Fn(&mut Manifest) -> Result<(), crate::Error> + Send + Sync + 'static,
    {
        self.manifest_hooks.push(Arc::new(f));
        self
    }

    fn add<F, Fut>(mut self, name: &str, f: F, ignored: bool) -> Suite
    where
        F: Fn(Arc<TrialContext>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let full = format!("{}::{name}", self.name);
        let f: TrialFn = Arc::new(move |ctx| Box::pin(f(ctx)));
        self.trials.push((full, f, ignored));
        self
    }

    /// Names of the trials the arguments select.
    fn selected(&self, args: &Arguments) -> Vec<&str> {
        self.trials
            .iter()
            .filter(|(name, _, ignored)| is_selected(args, name, *ignored))
            .map(|(n, _, _)| n.as_str())
            .collect()
    }

    /// Names of the stackless trials the arguments select.
    fn selected_local(&self, args: &Arguments) -> Vec<&str> {
        self.local
            .iter()
            .filter(|(name, _, ignored)| is_selected(args, name, *ignored))
            .map(|(n, _, _)| n.as_str())
            .collect()
    }

    /// Parses the command line, starts the stack if any trial is selected, runs the trials,
    /// tears the stack down, writes the reports, and returns the exit code.
    pub fn run(self) -> ExitCode {
        ExitCode::from(self.run_with(Arguments::from_args()))
    }

    /// [`Suite::run`] with these arguments instead of the process's command line (the first is
    /// the program's name), for a suite run inside another program; returns the exit code:
    /// 0, libtest's 101 when a trial failed, or the stack's error's code (2–5).
    pub fn run_with_args<I: IntoIterator<Item = String>>(self, args: I) -> u8 {
        self.run_with(Arguments::from_iter(args))
    }

    fn run_with(mut self, mut args: Arguments) -> u8 {
        let terminal: Arc<dyn Sink> = Arc::new(if self.settings.quiet() {
            Terminal::quiet()
        } else {
            Terminal::new()
        });
        crate::engine::cleanup::install_signal_handler_with(terminal.clone());
        let trials_seen = Arc::new(Trials::default());
        let sink: Arc<dyn Sink> = Arc::new(Fanout(vec![terminal.clone(), trials_seen.clone()]));
        let fatal = |e: &dyn std::fmt::Display| terminal.event(&Event::Fatal(e.to_string()));
        if self.sequential && args.test_threads.is_none() {
            args.test_threads = Some(1);
        }
        let selection = match Selection::from_settings(&self.settings) {
            Ok(s) => s,
            Err(e) => {
                fatal(&e);
                return e.exit_code();
            }
        };
        self.trials.retain(|(name, _, _)| selection.keeps(name));
        self.local.retain(|(name, _, _)| selection.keeps(name));
        let needs_stack = !self.selected(&args).is_empty();
        if args.list || (!needs_stack && self.selected_local(&args).is_empty()) {
            let trials = self
                .trials
                .iter()
                .map(|(name, _, ignored)| (name, ignored))
                .chain(self.local.iter().map(|(name, _, ignored)| (name, ignored)))
                .map(|(name, ignored)| {
                    Trial::test(name.clone(), || Ok(())).with_ignored_flag(*ignored)
                })
                .collect();
            return code_of(&libtest_mimic::run(&args, trials));
        }
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                fatal(&format!("error: cannot start the async runtime: {e}"));
                return exit_code::INTERNAL;
            }
        };
        let handle = runtime.handle().clone();
        let retries = selection.retries;
        let local: Vec<Trial> = self
            .local
            .iter()
            .map(|(name, f, ignored)| {
                let (f, handle, sink, name2) =
                    (f.clone(), handle.clone(), sink.clone(), name.clone());
                Trial::test(name.clone(), move || {
                    attempts(&name2, retries, sink.as_ref(), || {
                        handle.block_on(f()).map_err(|e| format!("{e:#}"))
                    })
                })
                .with_ignored_flag(*ignored)
            })
            .collect();
        if !needs_stack {
            let trials = self
                .trials
                .iter()
                .map(|(name, _, ignored)| {
                    Trial::test(name.clone(), || Ok(())).with_ignored_flag(*ignored)
                })
                .chain(local)
                .collect();
            let conclusion = libtest_mimic::run(&args, trials);
            finish(
                &self.name,
                &trials_seen,
                &[],
                &state_dir_of(self.manifest.as_deref(), &self.settings),
                terminal.as_ref(),
                &self.settings,
            );
            return code_of(&conclusion);
        }
        let attachable = !self.sequential && self.manifest_hooks.is_empty();
        let stack = match runtime.block_on(start_stack(
            self.manifest.clone(),
            &self.manifest_hooks,
            attachable,
            terminal.clone(),
            &self.settings,
        )) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                fatal(&e);
                return e.exit_code();
            }
        };
        if stack.attached_to().is_none() {
            write_timeline(&stack, &self.name, terminal.as_ref());
        }
        let mut needs_logs = std::mem::take(&mut self.needs_logs);
        let trials = self
            .trials
            .into_iter()
            .map(|(name, f, ignored)| {
                let ctx = Arc::new(TrialContext {
                    stack: stack.clone(),
                    name: name.clone(),
                });
                let (handle, sink) = (handle.clone(), sink.clone());
                let reads = needs_logs.remove(&name).unwrap_or_default();
                Trial::ignorable_test(name.clone(), move || {
                    if let Some(reason) = handle.block_on(logs_missing(&ctx.stack, &reads)) {
                        return Ok(libtest_mimic::Completion::ignored_with(reason));
                    }
                    attempts(&name, retries, sink.as_ref(), || {
                        let (ctx, f) = (ctx.clone(), f.clone());
                        handle.block_on(async move {
                            let stack = ctx.stack.clone();
                            match f(ctx).await {
                                Ok(()) => Ok(()),
                                Err(e) => Err(failure_report(&stack, &e).await),
                            }
                        })
                    })
                    .map(|()| libtest_mimic::Completion::Completed)
                })
                .with_ignored_flag(ignored)
            })
            .chain(local)
            .collect();
        let conclusion = libtest_mimic::run(&args, trials);
        let timings = if stack.attached_to().is_none() {
            stack.timings().to_vec()
        } else {
            Vec::new()
        };
        let state_dir = stack.state_dir().to_path_buf();
        match Arc::try_unwrap(stack) {
            Ok(stack) => runtime.block_on(stack.down()),
            Err(stack) => drop(stack),
        }
        finish(
            &self.name,
            &trials_seen,
            &timings,
            &state_dir,
            terminal.as_ref(),
            &self.settings,
        );
        code_of(&conclusion)
    }
}

/// The exit code of a run of trials: libtest's 101 when one failed, as `cargo test` knows it.
fn code_of(conclusion: &libtest_mimic::Conclusion) -> u8 {
    if conclusion.has_failed() {
        101
    } else {
        exit_code::OK
    }
}

/// Runs a trial up to `1 + retries` times and reports how it ended to `sink`
/// ([`Event::TrialFinished`]); a pass after a failure is reported as flaky.
fn attempts(
    name: &str,
    retries: u32,
    sink: &dyn Sink,
    mut run: impl FnMut() -> Result<(), String>,
) -> Result<(), Failed> {
    sink.event(&Event::TrialStarted {
        name: name.to_string(),
    });
    let started = std::time::Instant::now();
    let mut first_failure = None;
    let mut outcome = Err(String::new());
    let mut passed_on = 1;
    for attempt in 1..=retries + 1 {
        outcome = run_captured(&mut run);
        passed_on = attempt;
        match &outcome {
            Ok(()) => break,
            Err(e) => {
                if attempt <= retries {
                    sink.event(&Event::TrialRetrying {
                        name: name.to_string(),
                        attempt,
                        left: retries + 1 - attempt,
                    });
                }
                first_failure.get_or_insert_with(|| e.clone());
            }
        }
    }
    let record = match (&outcome, first_failure) {
        (Ok(()), None) => Outcome::Passed,
        (Ok(()), Some(first)) => Outcome::Flaky {
            passed_on,
            first_failure: first,
        },
        (Err(e), _) => Outcome::Failed(e.clone()),
    };
    sink.event(&Event::TrialFinished(TrialRecord {
        name: name.to_string(),
        outcome: record,
        duration: started.elapsed(),
    }));
    outcome.map_err(Failed::from)
}

/// One attempt, with its panics and notes captured ([`crate::testkit::capture`]): they are shown with
/// the failure message, and not at all when the attempt passes. A panic fails the attempt
/// (with its message, location and backtrace) instead of unwinding through the runner.
fn run_captured(run: &mut impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let (outcome, output) = crate::testkit::capture::output_of(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut *run)).unwrap_or_else(|p| {
            Err(format!(
                "panicked: {}",
                crate::testkit::capture::payload_text(p.as_ref())
            ))
        })
    });
    outcome.map_err(|e| {
        if output.trim().is_empty() {
            e
        } else {
            format!(
                "{e}\n--- output of the trial (HARNESS_VERBOSE=1 shows it as it happens) ---\n{}",
                output.trim_end()
            )
        }
    })
}

/// Trial selection from the environment: a CI shard, an "only these" filter (from
/// `harness affected`), and retries.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `(index, count)`, 1-based index: `HARNESS_SHARD=2/4`.
    pub shard: Option<(u64, u64)>,
    /// Trial-name prefixes to keep: `HARNESS_ONLY=journeys::,contracts::orders->payments`.
    pub only: Option<Vec<String>>,
    /// Extra attempts for a failing trial: `HARNESS_RETRIES=2`.
    pub retries: u32,
}

impl Selection {
    /// Reads `HARNESS_SHARD`, `HARNESS_ONLY` and `HARNESS_RETRIES` of `settings`.
    pub fn from_settings(settings: &Settings) -> Result<Selection, crate::Error> {
        let var = |k: &str| settings.get(k);
        let shard = match var("HARNESS_SHARD") {
            None => None,
            Some(v) => Some(parse_shard(&v).ok_or_else(|| {
                crate::Error::Usage(format!("HARNESS_SHARD is `{v}`; write `<index>/<count>` with 1 <= index <= count, e.g. `2/4`"))
            })?),
        };
        let only = var("HARNESS_ONLY").and_then(|v| Selection::parse_only(&v));
        let retries = match var("HARNESS_RETRIES") {
            None => 0,
            Some(v) => v.parse().map_err(|_| {
                crate::Error::Usage(format!(
                    "HARNESS_RETRIES is `{v}`; write a number of retries, e.g. `2`"
                ))
            })?,
        };
        Ok(Selection {
            shard,
            only,
            retries,
        })
    }

    /// A `HARNESS_ONLY` value: trial-name prefixes separated by commas. Empty (or only
    /// commas and spaces) means no filter: every trial is kept.
    pub fn parse_only(value: &str) -> Option<Vec<String>> {
        let prefixes: Vec<String> = value
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        (!prefixes.is_empty()).then_some(prefixes)
    }

    /// Whether a trial is kept.
    pub fn keeps(&self, name: &str) -> bool {
        let in_shard = self.shard.is_none_or(|(i, n)| shard_of(name, n) == i);
        let wanted = self
            .only
            .as_ref()
            .is_none_or(|prefixes| prefixes.iter().any(|p| name.starts_with(p.as_str())));
        in_shard && wanted
    }
}

fn parse_shard(v: &str) -> Option<(u64, u64)> {
    let (i, n) = v.split_once('/')?;
    let (i, n): (u64, u64) = (i.trim().parse().ok()?, n.trim().parse().ok()?);
    (n >= 1 && (1..=n).contains(&i)).then_some((i, n))
}

/// The 1-based shard a trial belongs to out of `count`, by a stable hash of its name.
pub fn shard_of(name: &str, count: u64) -> u64 {
    crate::engine::attach::fnv1a(name.as_bytes()) % count.max(1) + 1
}

fn write_timeline(stack: &Stack, suite: &str, sink: &dyn Sink) {
    let dir = stack.state_dir();
    let path = dir.join(format!("timeline-{suite}.svg"));
    let svg = crate::testkit::report::timeline_svg(
        stack.graph(),
        stack.timings(),
        &format!("startup of `{}` for suite `{suite}`", stack.manifest().name),
    );
    if std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, svg))
        .is_ok()
    {
        sink.event(&Event::ReportWritten {
            report: Report::Timeline,
            path,
        });
    }
}

/// Reports the summary of the trials `trials` saw finish and writes the JUnit report
/// (`HARNESS_JUNIT`, else `junit/<suite>.xml` in the state directory).
fn finish(
    suite: &str,
    trials: &Trials,
    timings: &[crate::engine::scheduler::Timing],
    state_dir: &std::path::Path,
    sink: &dyn Sink,
    settings: &Settings,
) {
    let mut records = trials.records();
    records.sort_by(|a, b| a.name.cmp(&b.name));
    sink.event(&Event::Summary(crate::testkit::report::summary(
        &records, timings,
    )));
    let path = settings.junit(suite, state_dir);
    let xml = crate::testkit::report::junit(suite, &records);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(&path, xml) {
        Ok(()) => sink.event(&Event::ReportWritten {
            report: Report::Junit,
            path,
        }),
        Err(e) => sink.event(&Event::Warning(format!(
            "warning: cannot write the junit report {}: {e}",
            path.display()
        ))),
    }
}

/// The state directory of a suite that starts no stack: its manifest's, when it reads.
fn state_dir_of(manifest: Option<&std::path::Path>, settings: &Settings) -> std::path::PathBuf {
    let path = manifest
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| settings.manifest_path());
    match Manifest::load_with(&path, settings) {
        Ok(m) => m.state_dir_for(settings),
        Err(_) => settings.state_dir(path.parent().unwrap_or(std::path::Path::new(".")), None),
    }
}

fn is_selected(args: &Arguments, name: &str, ignored: bool) -> bool {
    let by_filter = match &args.filter {
        None => true,
        Some(f) if args.exact => name == f,
        Some(f) => name.contains(f.as_str()),
    };
    let skipped = args.skip.iter().any(|s| {
        if args.exact {
            name == s
        } else {
            name.contains(s.as_str())
        }
    });
    let by_ignore = if args.ignored {
        ignored
    } else {
        args.include_ignored || !ignored
    };
    by_filter && !skipped && by_ignore
}

async fn start_stack(
    manifest: Option<std::path::PathBuf>,
    hooks: &[ManifestHook],
    attachable: bool,
    sink: Arc<dyn Sink>,
    settings: &Settings,
) -> Result<Stack, crate::Error> {
    let path = manifest.unwrap_or_else(|| settings.manifest_path());
    let mut manifest = Manifest::load_with(&path, settings)?;
    let mut built = false;
    if attachable {
        if let Some(state) = crate::engine::attach::find(&manifest, settings) {
            // Built first, so the fingerprints compared are those of the code as it is now.
            crate::testkit::build::cargo_binaries(&manifest, settings)?;
            built = true;
            match crate::engine::attach::refreshed(&manifest, state, settings).await {
                Ok((state, refreshed)) => {
                    for r in refreshed {
                        sink.event(&Event::Refreshed(r));
                    }
                    sink.event(&Event::Attached {
                        pid: state.pid,
                        backend: state.backend,
                    });
                    return Stack::attach(manifest, state, settings);
                }
                Err(why) => sink.event(&Event::Warning(format!(
                    "not attaching to the running stack: {why}; starting a stack of its own"
                ))),
            }
        }
    }
    for hook in hooks {
        hook(&mut manifest)?;
    }
    if !built {
        crate::testkit::build::cargo_binaries(&manifest, settings)?;
    }
    Stack::start(
        manifest,
        StackOptions {
            sink,
            handle_signals: true,
            reap_dead_runs: true,
            settings: settings.clone(),
            ..StackOptions::default()
        },
    )
    .await
}

/// Why a trial reading the logs of `services` cannot run: the first whose logs are unavailable.
async fn logs_missing(stack: &Stack, services: &[String]) -> Option<String> {
    for service in services {
        if let Err(crate::Error::LogsUnavailable { reason, .. }) = stack.logs(service, 0).await {
            return Some(format!("needs the logs of `{service}`, {reason}"));
        }
    }
    None
}

/// The error with its cause chain, and the log tails of the stack's own services.
async fn failure_report(stack: &Stack, error: &anyhow::Error) -> String {
    let mut out = format!("{error:#}");
    if out.contains("--- last lines of") {
        // A journey step already showed the services it talked to.
        return out;
    }
    for service in &stack.manifest().services {
        if service.kind != Kind::Service {
            continue;
        }
        let lines = stack.logs(&service.name, 10).await.unwrap_or_default();
        if !lines.is_empty() {
            out.push_str(&format!(
                "\n--- last {} lines of `{}` ---\n{}",
                lines.len(),
                service.name,
                lines.join("\n")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_trial_exactly_once() {
        let names: Vec<String> = (0..500).map(|i| format!("suite::trial_{i}")).collect();
        for n in [1u64, 2, 3, 4, 7] {
            let mut seen = std::collections::BTreeMap::new();
            for i in 1..=n {
                let s = Selection {
                    shard: Some((i, n)),
                    ..Selection::default()
                };
                for name in names.iter().filter(|t| s.keeps(t)) {
                    *seen.entry(name.clone()).or_insert(0) += 1;
                }
            }
            assert_eq!(seen.len(), names.len(), "{n} shards miss trials");
            assert!(
                seen.values().all(|c| *c == 1),
                "{n} shards run a trial twice"
            );
        }
        // Stable: the same name lands in the same shard every time.
        assert_eq!(
            shard_of("journeys::happy_path", 4),
            shard_of("journeys::happy_path", 4)
        );
    }

    #[test]
    fn shard_and_only_are_parsed_and_checked() {
        assert_eq!(parse_shard("2/4"), Some((2, 4)));
        assert_eq!(parse_shard("0/4"), None);
        assert_eq!(parse_shard("5/4"), None);
        assert_eq!(parse_shard("x"), None);
        let s = Selection {
            only: Some(vec![
                "journeys::".into(),
                "contracts::orders->payments".into(),
            ]),
            ..Selection::default()
        };
        assert!(s.keeps("journeys::happy_path"));
        assert!(s.keeps("contracts::orders->payments::declined"));
        assert!(!s.keeps("faults::redis_down"));
    }

    #[test]
    fn a_trials_output_goes_with_its_failure_only() {
        let trials = Trials::default();
        let passed = attempts("s::quiet", 0, &trials, || {
            crate::testkit::capture::note("said by a passing trial");
            Ok(())
        });
        assert!(passed.is_ok());
        let _ = attempts("s::loud", 0, &trials, || {
            crate::testkit::capture::note("said before failing");
            Err("it failed".into())
        });
        let _ = attempts("s::panics", 0, &trials, || panic!("boom {}", 7));
        let records = trials.records();
        assert_eq!(records[0].outcome, Outcome::Passed);
        let Outcome::Failed(loud) = &records[1].outcome else {
            panic!("{:?}", records[1].outcome)
        };
        assert!(
            loud.starts_with("it failed\n--- output of the trial"),
            "{loud}"
        );
        assert!(loud.contains("said before failing"), "{loud}");
        assert!(!loud.contains("said by a passing trial"), "{loud}");
        let Outcome::Failed(panicked) = &records[2].outcome else {
            panic!("{:?}", records[2].outcome)
        };
        // The message, and where it panicked.
        assert!(panicked.starts_with("panicked: boom 7"), "{panicked}");
        assert!(panicked.contains("src/testkit/runner.rs:"), "{panicked}");
    }

    #[test]
    fn a_pass_after_a_failure_is_flaky_not_green() {
        let trials = Trials::default();
        let mut calls = 0;
        let r = attempts("s::t", 2, &trials, || {
            calls += 1;
            if calls == 1 {
                Err("boom".into())
            } else {
                Ok(())
            }
        });
        assert!(r.is_ok());
        let rec = trials.records()[0].clone();
        assert_eq!(
            rec.outcome,
            Outcome::Flaky {
                passed_on: 2,
                first_failure: "boom".into()
            }
        );
        let r = attempts("s::u", 1, &trials, || Err("always".into()));
        assert!(r.is_err());
        assert_eq!(
            trials.records()[1].outcome,
            Outcome::Failed("always".into())
        );
    }
}
