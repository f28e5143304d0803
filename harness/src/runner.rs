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

use crate::manifest::Kind;
use crate::stack::{Stack, StackOptions};
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
}

impl std::fmt::Debug for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suite")
            .field("name", &self.name)
            .field("trials", &self.trials.iter().map(|t| &t.0).collect::<Vec<_>>())
            .field("local", &self.local.iter().map(|t| &t.0).collect::<Vec<_>>())
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
        }
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
    /// tears the stack down, and returns the exit code.
    pub fn run(self) -> ExitCode {
        let mut args = Arguments::from_args();
        if self.sequential && args.test_threads.is_none() {
            args.test_threads = Some(1);
        }
        let needs_stack = !self.selected(&args).is_empty();
        if args.list || (!needs_stack && self.selected_local(&args).is_empty()) {
            let trials = self
                .trials
                .iter()
                .map(|(name, _, ignored)| (name, ignored))
                .chain(self.local.iter().map(|(name, _, ignored)| (name, ignored)))
                .map(|(name, ignored)| Trial::test(name.clone(), || Ok(())).with_ignored_flag(*ignored))
                .collect();
            return libtest_mimic::run(&args, trials).exit_code();
        }
        let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return ExitCode::from(exit_code::INTERNAL);
            }
        };
        let handle = runtime.handle().clone();
        let local: Vec<Trial> = self
            .local
            .iter()
            .map(|(name, f, ignored)| {
                let (f, handle) = (f.clone(), handle.clone());
                Trial::test(name.clone(), move || handle.block_on(f()).map_err(|e| Failed::from(format!("{e:#}"))))
                    .with_ignored_flag(*ignored)
            })
            .collect();
        if !needs_stack {
            let trials = self
                .trials
                .iter()
                .map(|(name, _, ignored)| Trial::test(name.clone(), || Ok(())).with_ignored_flag(*ignored))
                .chain(local)
                .collect();
            return libtest_mimic::run(&args, trials).exit_code();
        }
        let stack = match runtime.block_on(start_stack(self.manifest.clone(), &self.manifest_hooks)) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(e.exit_code());
            }
        };
        let trials = self
            .trials
            .into_iter()
            .map(|(name, f, ignored)| {
                let ctx = Arc::new(TrialContext {
                    stack: stack.clone(),
                    name: name.clone(),
                });
                let handle = handle.clone();
                Trial::test(name, move || {
                    let stack = ctx.stack.clone();
                    handle.block_on(async move {
                        match f(ctx).await {
                            Ok(()) => Ok(()),
                            Err(e) => Err(Failed::from(failure_report(&stack, &e).await)),
                        }
                    })
                })
                .with_ignored_flag(ignored)
            })
            .chain(local)
            .collect();
        let conclusion = libtest_mimic::run(&args, trials);
        match Arc::try_unwrap(stack) {
            Ok(stack) => runtime.block_on(stack.down()),
            Err(stack) => drop(stack),
        }
        conclusion.exit_code()
    }
}

fn is_selected(args: &Arguments, name: &str, ignored: bool) -> bool {
    let by_filter = match &args.filter {
        None => true,
        Some(f) if args.exact => name == f,
        Some(f) => name.contains(f.as_str()),
    };
    let skipped = args
        .skip
        .iter()
        .any(|s| if args.exact { name == s } else { name.contains(s.as_str()) });
    let by_ignore = if args.ignored { ignored } else { args.include_ignored || !ignored };
    by_filter && !skipped && by_ignore
}

async fn start_stack(manifest: Option<std::path::PathBuf>, hooks: &[ManifestHook]) -> Result<Stack, crate::Error> {
    let path = manifest.unwrap_or_else(crate::default_manifest_path);
    let mut manifest = Manifest::load(&path)?;
    for hook in hooks {
        hook(&mut manifest)?;
    }
    crate::build::cargo_binaries(&manifest)?;
    Stack::start(
        manifest,
        StackOptions {
            progress: std::env::var_os("HARNESS_QUIET").is_none(),
            ..StackOptions::default()
        },
    )
    .await
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
            out.push_str(&format!("\n--- last {} lines of `{}` ---\n{}", lines.len(), service.name, lines.join("\n")));
        }
    }
    out
}
