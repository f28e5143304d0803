//! The stack handle: a started stack's endpoints, fault injection, logs and teardown. The same
//! handle whichever backend runs it, so suites never know which one did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::backend::mixed::Plan;
use crate::engine::backend::{self, Backend, BackendKind, Instance};
use crate::engine::cleanup::{self, RunDir};
use crate::engine::error::{Error, StartupError};
use crate::engine::events::{Discard, Event, Sink, Terminal};
use crate::engine::fingerprint::{Fingerprinter, Fingerprints};
use crate::engine::probe;
use crate::engine::scheduler::{self, Timing};
use crate::graph::Graph;
use crate::manifest::Manifest;
use crate::model::endpoint::Endpoint;
use crate::settings::Settings;

pub use crate::engine::launch::LOG_TAIL_LINES;

/// How a stack is started.
#[derive(Clone)]
pub struct StackOptions {
    /// The backend; `None` picks one from `HARNESS_BACKEND`, else detects one (see
    /// [`backend::detect`]).
    pub backend: Option<BackendKind>,
    /// Backends of single services (`--backend postgres=external`), beating every other
    /// setting (see [`backend::mixed`]).
    pub service_backends: BTreeMap<String, BackendKind>,
    /// Launch at most this many services at once (`Some(1)`: sequential).
    pub max_parallel: Option<usize>,
    /// Where the progress of the start, warnings and the teardown are reported (see
    /// [`crate::engine::events`]); the default drops everything.
    pub sink: Arc<dyn Sink>,
    /// Installs the process-wide handler of SIGINT, SIGTERM and SIGHUP that tears down
    /// everything the process started and exits (see [`cleanup::install_signal_handler_with`]),
    /// reporting to `sink`. Without it a signal ends the process the default way and what the
    /// stack started stays until a later run reaps it. For whoever owns the process: a command,
    /// a test runner.
    pub handle_signals: bool,
    /// Before starting, kills the processes and removes the directories of runs on this
    /// machine whose owner has died (see [`cleanup::reap_dead_runs`]). It touches other
    /// processes' leftovers, so it is for whoever owns the run: a command, a test runner.
    pub reap_dead_runs: bool,
    /// Where the workspace's binaries are, beating `HARNESS_BIN_DIR` and the rest of
    /// [`Settings::bin_dir`]; `None` looks there.
    pub bin_dir: Option<PathBuf>,
    /// The settings (see [`crate::settings`]); the default reads this process's
    /// environment when the options are made. The fields above beat them.
    pub settings: Settings,
}

impl Default for StackOptions {
    /// A stack that leaves the process alone: no signal handler, no reaping, nothing printed.
    fn default() -> StackOptions {
        StackOptions {
            backend: None,
            service_backends: BTreeMap::new(),
            max_parallel: None,
            sink: Arc::new(Discard),
            handle_signals: false,
            reap_dead_runs: false,
            bin_dir: None,
            settings: Settings::from_env(),
        }
    }
}

impl std::fmt::Debug for StackOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackOptions")
            .field("backend", &self.backend)
            .field("service_backends", &self.service_backends)
            .field("max_parallel", &self.max_parallel)
            .field("handle_signals", &self.handle_signals)
            .field("reap_dead_runs", &self.reap_dead_runs)
            .field("bin_dir", &self.bin_dir)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl StackOptions {
    /// The options of a process that owns its run (a command, a test runner): progress and
    /// warnings on the terminal (`progress: false`: without the start line by line), the
    /// signal handler installed, dead runs reaped.
    pub fn owning_the_process(progress: bool) -> StackOptions {
        StackOptions {
            sink: Arc::new(if progress {
                Terminal::new()
            } else {
                Terminal::quiet()
            }),
            handle_signals: true,
            reap_dead_runs: true,
            ..StackOptions::default()
        }
    }
}

/// A running stack.
#[derive(Debug)]
pub struct Stack {
    manifest: Manifest,
    graph: Graph,
    kind: BackendKind,
    /// The backend of each service.
    plan: Plan,
    /// Databases the harness created on external postgres services, by service: dropped by
    /// [`Stack::down`] (the server and what was there before stay).
    created: BTreeMap<String, Vec<String>>,
    /// Kept alive while the stack runs; `None` for an attached stack.
    backend: Option<Box<dyn Backend>>,
    instances: BTreeMap<String, tokio::sync::Mutex<Box<dyn Instance>>>,
    endpoints: RwLock<BTreeMap<String, Endpoint>>,
    timings: Vec<Timing>,
    run: Option<RunDir>,
    attached: Option<u32>,
    /// Credentials each service was started with (kept for a refresh in place).
    credentials: BTreeMap<String, Creds>,
    /// What each service was started from (see [`crate::engine::fingerprint`]).
    fingerprints: Fingerprints,
    fingerprinter: Fingerprinter,
    /// Where the workspace's binaries are, as resolved when it started.
    bin_dir: PathBuf,
    /// Where state, reports and timelines go ([`Manifest::state_dir_for`]).
    state_dir: PathBuf,
    /// The settings it was started (or attached) with; a refresh reads the manifest with them.
    settings: Settings,
    /// Where the teardown reports (see [`StackOptions::sink`]).
    sink: Arc<dyn Sink>,
}

pub use crate::engine::events::Refreshed;

use crate::engine::launch::{
    credentials, drop_databases, make_ready, phase_event, start_request, Creds, StackLauncher,
    Vacant,
};

impl Stack {
    /// Validates prerequisites, starts every service in dependency order and waits until all
    /// are ready. On failure everything started is stopped again before this returns.
    pub async fn start(manifest: Manifest, options: StackOptions) -> Result<Stack, Error> {
        let began = Instant::now();
        let sink = options.sink.clone();
        if options.handle_signals {
            cleanup::install_signal_handler_with(sink.clone());
        }
        if options.reap_dead_runs {
            let runs = cleanup::reap_dead_runs().len();
            sink.event(&Event::Reaped { runs });
        }
        let settings = options.settings;
        let bin_dir = options
            .bin_dir
            .unwrap_or_else(|| settings.bin_dir(manifest.dir()));
        let state_dir = manifest.state_dir_for(&settings);
        let graph = Graph::new(&manifest)
            .map_err(|c| Error::Usage(format!("dependency cycle: {}", c.path.join(" -> "))))?;
        let plan = backend::mixed::plan(
            &manifest,
            options.backend,
            &options.service_backends,
            &settings,
        )
        .await?;
        let kind = plan.main(&manifest);
        let run = RunDir::create().map_err(|e| Error::io("creating the run directory", e))?;
        let backend = backend::mixed::create(&plan, &run, &manifest, &bin_dir, &settings);
        backend.preflight(&manifest, &sink).await?;
        // Taken before anything launches: a change made while the stack starts is seen by the
        // next attach, never missed.
        let mut fingerprinter = Fingerprinter::default()
            .with_settings(settings.clone())
            .with_bin_dir(bin_dir.clone())
            .with_hash_cache();
        let fingerprints = fingerprinter.planned(&manifest, &plan).await;
        let launcher = StackLauncher {
            manifest: &manifest,
            backend: backend.as_ref(),
            plan: &plan,
            launched: Mutex::new(BTreeMap::new()),
            credentials: Mutex::new(BTreeMap::new()),
            created: Mutex::new(BTreeMap::new()),
            sink: sink.as_ref(),
        };
        let mut phase_start = BTreeMap::new();
        sink.event(&Event::StackStarting {
            stack: manifest.name.clone(),
            services: manifest.services.iter().map(|s| s.name.clone()).collect(),
            backends: plan.describe(&manifest),
        });
        let result = scheduler::run(
            &graph,
            &launcher,
            options.max_parallel,
            |s, p, at, failure| {
                sink.event(&phase_event(s, p, at, failure, &plan, &mut phase_start));
            },
        )
        .await;
        let started = match result {
            Ok(s) => s,
            Err(e) => {
                return Err(Error::Startup(Box::new(StartupError {
                    service: e.service,
                    probe: e.failure.probe,
                    waited: e.failure.waited,
                    message: e.failure.message,
                    log_tail: e.failure.log_tail,
                    stopped: e.stopped,
                })))
            }
        };
        let mut instances = BTreeMap::new();
        let mut endpoints = BTreeMap::new();
        for (name, instance, _) in started.services {
            endpoints.insert(name.clone(), instance.endpoint());
            instances.insert(name, tokio::sync::Mutex::new(instance));
        }
        let credentials = launcher
            .credentials
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        let created = launcher
            .created
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        sink.event(&Event::StackReady {
            stack: manifest.name.clone(),
            elapsed: began.elapsed(),
        });
        Ok(Stack {
            manifest,
            graph,
            kind,
            plan,
            created,
            backend: Some(backend),
            instances,
            endpoints: RwLock::new(endpoints),
            timings: started.timings,
            run: Some(run),
            attached: None,
            credentials,
            fingerprints,
            fingerprinter,
            state_dir,
            bin_dir,
            settings,
            sink,
        })
    }

    /// A handle on a stack another process started (see the `attach` module).
    pub fn attach(
        manifest: Manifest,
        state: crate::engine::state::State,
        settings: &Settings,
    ) -> Result<Stack, Error> {
        let manifest_dir = manifest.dir().to_path_buf();
        let state_dir = manifest.state_dir_for(settings);
        let graph = Graph::new(&manifest)
            .map_err(|c| Error::Usage(format!("dependency cycle: {}", c.path.join(" -> "))))?;
        let mut instances = BTreeMap::new();
        for service in &manifest.services {
            let endpoint = state.endpoints.get(&service.name).cloned().ok_or_else(|| {
                Error::Usage(format!(
                    "the running stack has no service `{}`; run `harness down` and start again",
                    service.name
                ))
            })?;
            let instance: Box<dyn Instance> = Box::new(crate::engine::backend::external::RemoteInstance::new(
                &service.name,
                endpoint,
                state.logs.get(&service.name).cloned(),
                format!(
                    "this suite is attached to the stack of process {} (`harness up --detach`); fault injection \
                     needs a stack of the suite's own: `Suite::sequential()` or HARNESS_ATTACH=0",
                    state.pid
                ),
            ));
            instances.insert(service.name.clone(), tokio::sync::Mutex::new(instance));
        }
        Ok(Stack {
            timings: state.timings(),
            graph,
            kind: state.backend,
            plan: state.plan(&manifest),
            created: BTreeMap::new(),
            backend: None,
            instances,
            endpoints: RwLock::new(state.endpoints),
            manifest,
            run: None,
            attached: Some(state.pid),
            credentials: BTreeMap::new(),
            fingerprinter: Fingerprinter::from_known(&state.files).with_settings(settings.clone()),
            fingerprints: state.fingerprints,
            bin_dir: settings.bin_dir(manifest_dir.as_path()),
            state_dir,
            settings: settings.clone(),
            sink: Arc::new(Discard),
        })
    }

    /// What each service was started from, as recorded when it (last) started.
    pub fn fingerprints(&self) -> &Fingerprints {
        &self.fingerprints
    }

    /// The files hashed for the fingerprints, with what identified their content.
    pub fn known_files(&self) -> Vec<crate::engine::fingerprint::KnownFile> {
        self.fingerprinter.known()
    }

    /// Where the workspace's binaries are for this stack (see [`StackOptions::bin_dir`]).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Where this stack's state, reports and timelines go ([`Manifest::state_dir_for`]).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The run directory of a stack this process owns.
    pub fn run_dir(&self) -> Option<&std::path::Path> {
        self.run.as_ref().map(|r| r.path.as_path())
    }

    /// Restarts in place every service whose fingerprint changed since it started (its
    /// binary, program, files, image or manifest entry), and a dependent when the address it
    /// was given moved; each is probed ready again before this returns. The manifest is read
    /// again from its file. Nothing changed: nothing restarts.
    ///
    /// Only the stack's owner can refresh; a change of the set of services (added, removed)
    /// cannot be refreshed in place.
    pub async fn refresh(&mut self) -> Result<Vec<Refreshed>, Error> {
        let Some(backend) = self.backend.as_ref() else {
            return Err(Error::Usage(
                "only the process that started a stack can refresh it".into(),
            ));
        };
        let manifest = Manifest::load_with(&self.manifest.path, &self.settings)?;
        let names = |m: &Manifest| {
            m.services
                .iter()
                .map(|s| s.name.clone())
                .collect::<std::collections::BTreeSet<_>>()
        };
        let (before, after) = (names(&self.manifest), names(&manifest));
        if before != after {
            let added: Vec<_> = after.difference(&before).cloned().collect();
            let removed: Vec<_> = before.difference(&after).cloned().collect();
            return Err(Error::Usage(format!(
                "the manifest's services changed (added: [{}], removed: [{}]); a running stack cannot \
                 be refreshed in place: `harness down` and start it again",
                added.join(", "),
                removed.join(", ")
            )));
        }
        let graph = Graph::new(&manifest)
            .map_err(|c| Error::Usage(format!("dependency cycle: {}", c.path.join(" -> "))))?;
        let now = self.fingerprinter.planned(&manifest, &self.plan).await;
        let mut why: BTreeMap<String, String> =
            crate::engine::fingerprint::changes(&self.fingerprints, &now)
                .into_iter()
                .collect();
        let mut refreshed = Vec::new();
        let mut moved = Vec::new();
        for name in graph.order() {
            let Some(service) = manifest.service(&name) else {
                continue;
            };
            let reason = why.remove(&name).or_else(|| {
                service
                    .depends_on
                    .iter()
                    .find(|d| moved.contains(&d.service))
                    .map(|d| format!("dependency {} moved", d.service))
            });
            let Some(reason) = reason else { continue };
            let began = Instant::now();
            let mut deps = BTreeMap::new();
            for d in &service.depends_on {
                if let Some(i) = self.instances.get(&d.service) {
                    deps.insert(d.service.clone(), i.lock().await.internal_endpoint());
                }
            }
            let Some(slot) = self.instances.get(&name) else {
                continue;
            };
            let mut instance = slot.lock().await;
            let (old_host, old_internal) = (instance.endpoint(), instance.internal_endpoint());
            // Removed and dropped before its successor starts: an instance's `Drop` removes its
            // directory, which the successor reuses.
            let vacant = Box::new(Vacant {
                name: name.clone(),
                endpoint: old_host.clone(),
                internal: old_internal.clone(),
            });
            let mut old = std::mem::replace(&mut *instance, vacant);
            old.remove().await;
            drop(old);
            let creds = self
                .credentials
                .get(&name)
                .cloned()
                .unwrap_or_else(|| credentials(service));
            let request = start_request(service, creds, &deps, Some(&old_host.ports));
            let refresh_failed = |message: String| {
                Error::service(
                    &name,
                    format!("could not be refreshed ({reason}): {message}"),
                )
            };
            let mut fresh = backend
                .start(request)
                .await
                .map_err(|e| refresh_failed(e.to_string()))?;
            make_ready(service, fresh.as_mut(), began)
                .await
                .map_err(|f| refresh_failed(format!("{}\n{}", f.message, f.log_tail.join("\n"))))?;
            if fresh.internal_endpoint() != old_internal {
                moved.push(name.clone());
            }
            self.endpoints
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone(), fresh.endpoint());
            *instance = fresh;
            drop(instance);
            if let Some(f) = now.get(&name) {
                self.fingerprints.insert(name.clone(), f.clone());
            }
            refreshed.push(Refreshed {
                service: name.clone(),
                reason,
                millis: began.elapsed().as_millis() as u64,
            });
        }
        self.fingerprints = now;
        self.manifest = manifest;
        self.graph = graph;
        Ok(refreshed)
    }

    /// The pid of the process owning the stack, when this handle is attached to it.
    pub fn attached_to(&self) -> Option<u32> {
        self.attached
    }

    /// Where each service's output can be read.
    pub fn log_sources(&self) -> BTreeMap<String, crate::engine::logs::LogSource> {
        self.instances
            .iter()
            .filter_map(|(name, i)| Some((name.clone(), i.try_lock().ok()?.log_source()?)))
            .collect()
    }

    /// The manifest this stack was started from.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Its dependency graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The backend that runs it (that of its own services, when servers come from another;
    /// see [`Stack::plan`]).
    pub fn backend(&self) -> BackendKind {
        self.kind
    }

    /// The backend of each service.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The run's id (also `HARNESS_RUN_ID` of every process it started).
    pub fn run_id(&self) -> &str {
        self.run.as_ref().map(|r| r.id.as_str()).unwrap_or("")
    }

    /// Start and ready times of each service, in the order they became ready.
    pub fn timings(&self) -> &[Timing] {
        &self.timings
    }

    fn unknown(&self, name: &str) -> Error {
        Error::Usage(format!(
            "the stack has no service `{name}`; it has: {}",
            self.instances
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// Where the host reaches a service.
    pub fn endpoint(&self, name: &str) -> Result<Endpoint, Error> {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| self.unknown(name))
    }

    /// Every endpoint, by service name.
    pub fn endpoints(&self) -> BTreeMap<String, Endpoint> {
        self.endpoints
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A connection URL for a service (`postgres://…`, `redis://…`, `amqp://…`, `http://…`).
    pub fn url(&self, name: &str) -> Result<String, Error> {
        self.endpoint(name)?
            .url(None)
            .map_err(|e| Error::service(name, e))
    }

    fn instance(&self, name: &str) -> Result<&tokio::sync::Mutex<Box<dyn Instance>>, Error> {
        self.instances.get(name).ok_or_else(|| self.unknown(name))
    }

    /// The last `n` lines of a service's output; [`Error::LogsUnavailable`] for a service
    /// whose output the harness cannot read (the external backend).
    pub async fn logs(&self, name: &str, n: usize) -> Result<Vec<String>, Error> {
        let instance = self.instance(name)?.lock().await;
        if let Some(reason) = instance.logs_unavailable() {
            return Err(Error::LogsUnavailable {
                service: name.to_string(),
                reason,
            });
        }
        Ok(instance.log_tail(n))
    }

    /// Stops a service gracefully; its data is kept.
    pub async fn stop(&self, name: &str) -> Result<(), Error> {
        self.instance(name)?.lock().await.stop().await
    }

    /// Kills a service at once.
    pub async fn kill(&self, name: &str) -> Result<(), Error> {
        self.instance(name)?.lock().await.kill().await
    }

    /// Freezes a service: connections stay open, nothing is answered.
    pub async fn pause(&self, name: &str) -> Result<(), Error> {
        self.instance(name)?.lock().await.pause().await
    }

    /// Resumes a paused service.
    pub async fn unpause(&self, name: &str) -> Result<(), Error> {
        self.instance(name)?.lock().await.unpause().await
    }

    /// Starts a stopped or killed service again and waits until its probe passes.
    pub async fn start_service(&self, name: &str) -> Result<Duration, Error> {
        let service = self
            .manifest
            .service(name)
            .ok_or_else(|| self.unknown(name))?;
        let mut instance = self.instance(name)?.lock().await;
        instance.start().await?;
        let endpoint = instance.endpoint();
        let deadline = Instant::now() + service.startup_timeout;
        let waited = probe::wait_instance_ready(&service.probe, instance.as_mut(), deadline)
            .await
            .map_err(|f| {
                Error::service(
                    name,
                    format!(
                        "did not become ready again: probe {} failed after {:.1} s: {}\n{}",
                        f.probe,
                        f.waited.as_secs_f64(),
                        f.last_error,
                        instance.log_tail(LOG_TAIL_LINES).join("\n")
                    ),
                )
            })?;
        self.endpoints
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), endpoint);
        Ok(waited)
    }

    /// Stops every service in reverse dependency order and removes everything the run created.
    pub async fn down(mut self) {
        let order = self.graph.order();
        for name in order.iter().rev() {
            if let Some(instance) = self.instances.get(name) {
                let mut instance = instance.lock().await;
                if let Some(dbs) = self.created.remove(name) {
                    drop_databases(name, &instance.endpoint(), &dbs, self.sink.as_ref()).await;
                }
                instance.remove().await;
                self.sink.event(&Event::ServiceStopped {
                    service: name.clone(),
                });
            }
        }
        self.instances.clear();
        self.backend.take();
        self.run.take();
    }
}
