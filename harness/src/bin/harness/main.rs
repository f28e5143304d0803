//! The `harness` command: a thin shell over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use harness::backend::mixed::BackendChoice;
use harness::{exit_code, Error, Graph, Manifest, Stack, StackOptions};

mod args;
mod init;
mod job;

use args::{Bench, Cli, Command, States, VerifyArgs};

fn main() -> ExitCode {
    // First of all: a signal at any later moment tears down what was started by then.
    harness::cleanup::install_signal_handler();
    // The Pact libraries report usage unless this is set; set before any thread exists.
    std::env::set_var("PACT_DO_NOT_TRACK", "true");
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit_code::INTERNAL);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if harness::cleanup::interrupted() {
                // The signal handler is tearing down and will exit; what failed here is that.
                std::thread::sleep(Duration::from_secs(30));
            }
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn load(cli_manifest: &Option<PathBuf>) -> Result<Manifest, Error> {
    let path = cli_manifest
        .clone()
        .unwrap_or_else(|| settings().manifest_path());
    let manifest = Manifest::load(&path)?;
    for w in &manifest.warnings {
        eprintln!("warning: {w}");
    }
    Ok(manifest)
}

/// The command's settings: its environment, read once (its flags go into the options they
/// beat, [`StackOptions`]).
fn settings() -> &'static harness::settings::Settings {
    harness::settings::Settings::process()
}

/// What a command can fail with: the engine's errors and, for `verify`, the contracts'.
#[derive(Debug)]
enum Failure {
    Engine(Error),
    Contract(harness::contract::Error),
}

impl Failure {
    /// The one place where a failure becomes an exit code.
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Engine(e) => e.exit_code(),
            Failure::Contract(e) => e.exit_code(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Engine(e) => e.fmt(f),
            Failure::Contract(e) => e.fmt(f),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Engine(e)
    }
}

impl From<harness::contract::Error> for Failure {
    fn from(e: harness::contract::Error) -> Failure {
        Failure::Contract(e)
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Verify(args) => return verify(&cli.manifest, *args),
        Command::States { what } => return states(&cli.manifest, what),
        _ => {}
    }
    commands(cli).await.map_err(Failure::from)
}

async fn commands(cli: Cli) -> Result<u8, Error> {
    match cli.command {
        Command::Check {
            suites,
            suite_package,
        } => {
            let m = load(&cli.manifest)?;
            let graph = Graph::new(&m).map_err(|c| Error::Usage(c.path.join(" -> ")))?;
            println!(
                "{}: ok, {} services; start order: {}",
                m.path.display(),
                m.services.len(),
                graph.order().join(", ")
            );
            if harness::manifest::is_compose(&m.path) {
                // What the harness makes of compose's words, which mean less there.
                for s in &m.services {
                    let waits: Vec<String> = s
                        .depends_on
                        .iter()
                        .map(|d| format!("`{}` {}", d.service, d.condition))
                        .collect();
                    println!(
                        "  {}: probe {}{}",
                        s.name,
                        s.probe,
                        if waits.is_empty() {
                            String::new()
                        } else {
                            format!("; waits for {}", waits.join(", "))
                        }
                    );
                }
                println!("  (a short `depends_on` waits for the dependency to be ready, not merely started; host ports are ephemeral ports of 127.0.0.1)");
            }
            if suites {
                let trials = harness::affected::list_trials(m.dir(), &suite_package, settings())?;
                let warnings = harness::affected::unused_key_warnings(&m, &trials);
                for w in &warnings {
                    eprintln!("{w}");
                }
                if warnings.is_empty() {
                    println!(
                        "suites: {} trials; every [suites] key matches some",
                        trials.len()
                    );
                }
            }
            Ok(exit_code::OK)
        }
        Command::Init => init::init(
            &std::env::current_dir().map_err(|e| Error::io("finding the current directory", e))?,
        ),
        Command::Convert { file } => {
            let m = load(&Some(file))?;
            print!("{}", m.to_toml(m.dir()));
            Ok(exit_code::OK)
        }
        Command::Graph { dot, dependents } => {
            let m = load(&cli.manifest)?;
            let graph = Graph::new(&m).map_err(|c| Error::Usage(c.path.join(" -> ")))?;
            if let Some(service) = dependents {
                if m.service(&service).is_none() {
                    return Err(Error::Usage(format!(
                        "the manifest has no service `{service}`"
                    )));
                }
                for d in graph.dependents(&service) {
                    println!("{d}");
                }
            } else if dot {
                print!("{}", graph.to_dot(&m.name));
            } else {
                println!("order: {}", graph.order().join(" -> "));
                for (i, layer) in graph.layers().iter().enumerate() {
                    println!("layer {i}: {}", layer.join(", "));
                }
            }
            Ok(exit_code::OK)
        }
        Command::Up {
            backend,
            no_build,
            detach,
            watch,
            stop_with,
        } => {
            let m = load(&cli.manifest)?;
            if !no_build {
                harness::build::cargo_binaries(&m, settings())?;
            }
            if detach {
                return up_detached(&m, backend).await;
            }
            let backend = backend.unwrap_or_default();
            let mut stack = Stack::start(
                m,
                StackOptions {
                    backend: backend.default,
                    service_backends: backend.services,
                    ..StackOptions::owning_the_process(true)
                },
            )
            .await?;
            print_endpoints(&stack);
            harness::attach::write(&stack)?;
            write_timeline(&stack);
            let control = harness::attach::Control::bind(&stack)?;
            if let Some(pid) = stop_with {
                stop_when_gone(pid);
            }
            println!(
                "\nthe stack is up{}; Ctrl-C or `harness down` stops it",
                if watch { ", watching for changes" } else { "" }
            );
            // Runs until the cleanup thread ends the process on SIGINT/SIGTERM/SIGHUP.
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                let refreshed = tokio::select! {
                    r = control.serve_one(&mut stack) => r,
                    _ = tick.tick(), if watch => {
                        match harness::attach::refresh_and_record(&mut stack).await {
                            Ok(r) => r,
                            Err(e) => {
                                eprintln!("{e}");
                                Vec::new()
                            }
                        }
                    }
                };
                for r in refreshed {
                    println!("{r}");
                }
            }
        }
        Command::Env { services } => env(&load(&cli.manifest)?, &services),
        Command::Down { all } => {
            let m = load(&cli.manifest)?;
            let code = down(&harness::attach::state_file(&m, settings())).await?;
            if all {
                remove_all().await?;
            }
            Ok(code)
        }
        Command::Test { args } => job::main_job(load(&cli.manifest)?, args).await,
        Command::Affected {
            since,
            json,
            filter,
            explain,
            trials,
            contracts,
            suite_package,
        } => {
            let m = load(&cli.manifest)?;
            let repo = harness::affected::repo_root(m.dir())?;
            let changed = harness::affected::changed_since(&repo, &since)?;
            let names = match trials {
                Some(file) => harness::affected::parse_trial_list(
                    &std::fs::read_to_string(&file)
                        .map_err(|e| Error::io(format!("reading {}", file.display()), e))?,
                ),
                None => harness::affected::list_trials(m.dir(), &suite_package, settings())?,
            };
            let pacts = match contracts {
                Some(dir) => harness::affected::read_pacts(&dir)?,
                None => harness::affected::find_pacts(&m, &repo)?,
            };
            for w in harness::affected::unused_key_warnings(&m, &names) {
                eprintln!("{w}");
            }
            let mapped = harness::affected::map_trials(&m, &pacts, &names);
            let affected = harness::affected::analyze(&m, &repo, changed, &mapped);
            if explain {
                println!("{}", harness::affected::explain(&m, &pacts, &mapped));
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&affected).unwrap_or_default()
                );
            } else if filter {
                println!("{}", affected.filter);
            } else {
                print!("{}", affected.render());
            }
            Ok(exit_code::OK)
        }
        Command::Bench {
            what:
                Bench::Suites {
                    runs,
                    suite,
                    backend,
                },
        } => {
            let m = load(&cli.manifest)?;
            harness::build::cargo_binaries(&m, settings())?;
            let report = harness::bench::suites(&m, &suite, runs.max(1), backend).await?;
            print!("{report}");
            Ok(exit_code::OK)
        }
        Command::Bench {
            what:
                Bench::Startup {
                    runs,
                    lag_samples,
                    no_build,
                },
        } => {
            let m = load(&cli.manifest)?;
            if !no_build {
                harness::build::cargo_binaries(&m, settings())?;
            }
            let report = harness::bench::startup(&m, runs.max(1), lag_samples).await?;
            print!("{}", report.render());
            Ok(exit_code::OK)
        }
        Command::Bench {
            what: Bench::Compose { runs },
        } => {
            let path = match &cli.manifest {
                Some(p) => p.clone(),
                None => {
                    find_upwards("fixtures/manifests/infra-container.toml").ok_or_else(|| {
                        Error::Usage(
                            "no fixtures/manifests/infra-container.toml here; pass --manifest"
                                .into(),
                        )
                    })?
                }
            };
            let m = Manifest::load(&path)?;
            let report = harness::bench::compose::compose(&m, runs.max(1)).await?;
            print!("{}", report.render());
            Ok(exit_code::OK)
        }
        Command::Verify(_) | Command::States { .. } => {
            unreachable!("`run` handles verify and states")
        }
    }
}

/// `harness verify`: the request, checked before anything is built, verified by the suite
/// binary that holds the provider states (in a cargo workspace, without --state-change-url) or
/// in this process.
fn verify(cli_manifest: &Option<PathBuf>, args: VerifyArgs) -> Result<u8, Failure> {
    use harness::contract::{StatesFrom, SuiteTarget, VerifyOutput, VerifyRequest, VerifySettings};
    let m = load(cli_manifest)?;
    let verify_settings = VerifySettings {
        provider: args.provider,
        binary: args.binary,
        image: args.image,
        build: args.build,
        broker_url: args.broker_url,
        selectors: args.selectors,
        enable_pending: args.enable_pending,
        include_wip_pacts_since: args.include_wip_pacts_since,
        publish: args.publish,
        provider_version: args.provider_version,
        branch: args.branch,
        build_url: args.build_url,
        pacts: args.pacts,
        consumers: args.consumers,
        state_change_url: args.state_change_url,
        state_change_teardown: args.state_change_teardown,
    };
    let request = VerifyRequest::from_settings(verify_settings, &m)?;
    let dir = m.path.parent().unwrap_or(std::path::Path::new("."));
    let states = if request.state_change.is_none()
        && (m.contracts_suite.is_some() || harness::settings::cargo_workspace(dir).is_some())
    {
        StatesFrom::Suite(SuiteTarget::for_manifest(
            &m,
            args.suite_package,
            args.suite_test,
        ))
    } else {
        // `contracts/` beside the manifest, else at the root of the cargo workspace around it.
        let contracts_dir = [
            Some(dir.join("contracts")),
            harness::settings::cargo_workspace(dir).map(|w| w.join("contracts")),
        ]
        .into_iter()
        .flatten()
        .find(|d| d.is_dir())
        .unwrap_or_else(|| dir.join("contracts"));
        if request.pacts.is_empty() && request.broker.is_none() && !contracts_dir.is_dir() {
            return Err(Failure::Engine(Error::Usage(format!(
                "no pacts to verify: {} does not exist; give --pacts <file|dir|url> or --broker-url <url>",
                contracts_dir.display()
            ))));
        }
        StatesFrom::InProcess { contracts_dir }
    };
    let output = VerifyOutput {
        junit: args.junit.unwrap_or_else(|| {
            m.state_dir_for(settings())
                .join("junit")
                .join(format!("verify-{}.xml", request.provider))
        }),
        json: args.json,
    };
    Ok(harness::contract::run_verify_command(
        &request,
        &states,
        &m.path,
        settings(),
        &output,
    )?)
}

/// `harness states serve`.
fn states(cli_manifest: &Option<PathBuf>, what: States) -> Result<u8, Failure> {
    let States::Serve {
        provider,
        listen,
        suite_package,
        suite_test,
    } = what;
    let m = load(cli_manifest)?;
    if m.service(&provider).is_none() {
        return Err(Failure::Contract(
            harness::contract::Error::UnknownProvider { provider },
        ));
    }
    let request = harness::contract::StatesRequest {
        provider,
        listen: listen.to_string(),
        url_file: None,
    };
    let target = harness::contract::SuiteTarget::for_manifest(&m, suite_package, suite_test);
    Ok(harness::contract::run_states_command(
        &request,
        &target,
        &m.path,
        settings(),
    )?)
}

/// A file relative to the current directory or one of its parents.
fn find_upwards(relative: &str) -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .map(|d| d.join(relative))
        .find(|p| p.is_file())
}

/// `harness down --all`: every harness-owned resource in the Docker engine, and what dead runs
/// left on this machine (processes, run directories).
async fn remove_all() -> Result<(), Error> {
    let reaped = harness::cleanup::reap_dead_runs();
    if !reaped.is_empty() {
        println!(
            "removed the processes and directories of {} dead run(s)",
            reaped.len()
        );
    }
    match harness::backend::container::remove_all().await {
        Ok(r) => {
            println!(
                "removed {} container(s), {} network(s) and {} volume(s) of the harness",
                r.containers, r.networks, r.volumes
            );
            Ok(())
        }
        Err(harness::backend::container::RemoveError::NoEngine(e)) => {
            println!("no Docker engine answers ({e}); nothing to remove there");
            Ok(())
        }
        Err(e) => Err(Error::service("docker", e.to_string())),
    }
}

pub(crate) fn write_timeline(stack: &Stack) {
    let path = stack.state_dir().join("timeline.svg");
    let svg = harness::report::timeline_svg(
        stack.graph(),
        stack.timings(),
        &format!("startup of `{}`", stack.manifest().name),
    );
    if std::fs::write(&path, svg).is_ok() {
        println!(
            "startup timeline: {} (open it in a browser)",
            path.display()
        );
    }
}

/// Ends this process as SIGTERM does (the stack torn down) once process `pid` has ended; a
/// process that reuses the number later is told apart by its start time.
fn stop_when_gone(pid: i32) {
    let started = |pid: i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name (which may hold spaces) in parentheses.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(19)
            .map(str::to_string)
    };
    let Some(first) = started(pid) else {
        eprintln!("harness: process {pid} is not running; the stack stops now");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM);
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if started(pid).as_ref() != Some(&first) {
                eprintln!("harness: process {pid} ended; stopping the stack");
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM);
                return;
            }
        }
    });
}

/// `harness up --detach`: this command's `harness up` in the background (see
/// [`harness::attach::start_detached`]), shown once the stack is ready.
async fn up_detached(m: &Manifest, backend: Option<BackendChoice>) -> Result<u8, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the harness binary", e))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["up", "--no-build", "--manifest"]).arg(&m.path);
    if let Some(b) = backend {
        cmd.arg("--backend").arg(b.to_string());
    }
    // Under a nextest setup script: nextest has no teardown hook, so the stack ends with the
    // nextest run (this command's parent), and the tests get its endpoints.
    let nextest_env = settings().path("NEXTEST_ENV");
    if nextest_env.is_some() {
        cmd.arg("--stop-with")
            .arg(nix::unistd::getppid().as_raw().to_string());
    }
    let detached =
        harness::attach::start_detached(m, cmd, Duration::from_secs(300), settings()).await?;
    if let Some(file) = &nextest_env {
        let state = match &detached {
            harness::attach::Detached::Started { state, .. } => Some((**state).clone()),
            harness::attach::Detached::AlreadyUp { .. } => harness::attach::find(m, settings()),
        };
        let mut lines = String::new();
        for (name, endpoint) in state.iter().flat_map(|s| &s.endpoints) {
            for (k, v) in harness::backend::external::variables(name, endpoint) {
                lines.push_str(&format!("{k}={v}\n"));
            }
        }
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(file)
            .and_then(|mut f| f.write_all(lines.as_bytes()))
            .map_err(|e| Error::io(format!("writing the endpoints to {}", file.display()), e))?;
    }
    match detached {
        harness::attach::Detached::AlreadyUp { pid } => println!(
            "a stack of this manifest is already up (process {pid}); `harness down` ends it"
        ),
        harness::attach::Detached::Started { pid, log, state } => {
            println!(
                "the stack is up in the background (process {pid}; log: {})",
                log.display()
            );
            println!("\n  {:<16} {:<24} url", "service", "address");
            for (name, ep) in &state.endpoints {
                println!(
                    "  {name:<16} {:<24} {}",
                    ep.address().unwrap_or_default(),
                    ep.url(None).unwrap_or_default()
                );
            }
            println!("\nsuites attach to it; `harness down` stops it");
        }
    }
    Ok(exit_code::OK)
}

/// `harness env`: the running stack's endpoints as `KEY=VALUE` lines.
fn env(m: &Manifest, only: &[String]) -> Result<u8, Error> {
    let Some(state) = harness::attach::find(m, settings()) else {
        return Err(Error::Usage(format!(
            "no stack of {} is up; start one with `harness up --detach`",
            m.path.display()
        )));
    };
    for name in only {
        if !state.endpoints.contains_key(name) {
            return Err(Error::Usage(format!(
                "the running stack has no service `{name}`; it has: {}",
                state
                    .endpoints
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    for (name, endpoint) in &state.endpoints {
        if only.is_empty() || only.contains(name) {
            for (k, v) in harness::backend::external::variables(name, endpoint) {
                println!("{k}={v}");
            }
        }
    }
    Ok(exit_code::OK)
}

fn print_endpoints(stack: &Stack) {
    println!("\n  {:<16} {:<24} url", "service", "address");
    for (name, ep) in stack.endpoints() {
        let address = ep.address().unwrap_or_else(|_| "-".into());
        let url = ep.url(None).unwrap_or_else(|_| "-".into());
        println!("  {name:<16} {address:<24} {url}");
    }
}

async fn down(state: &Path) -> Result<u8, Error> {
    match harness::attach::stop(state).await? {
        harness::attach::Stopped::NotUp(file) => {
            println!("no stack is up (no {})", file.display())
        }
        harness::attach::Stopped::AlreadyEnded { pid } => {
            println!("the stack's process {pid} had already ended; removed what it left")
        }
        harness::attach::Stopped::Stopped { pid } => println!("stopped the stack (process {pid})"),
    }
    Ok(exit_code::OK)
}
