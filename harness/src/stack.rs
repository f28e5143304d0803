//! The stack handle: a started stack's endpoints, fault injection, logs and teardown. The same
//! handle whichever backend runs it, so suites never know which one did.

use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::backend::{self, Backend, BackendKind, Instance, StartRequest};
use crate::cleanup::{self, RunDir};
use crate::endpoint::Endpoint;
use crate::error::{Error, StartupError};
use crate::graph::Graph;
use crate::manifest::{Kind, Manifest, Service};
use crate::probe;
use crate::scheduler::{self, Failure, Launcher, Phase, Timing};

/// Lines of a service's log shown when it fails.
pub const LOG_TAIL_LINES: usize = 20;

/// How a stack is started.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// The backend; `None` picks one from `HARNESS_BACKEND`, else detects one (see
    /// [`backend::detect`]).
    pub backend: Option<BackendKind>,
    /// Launch at most this many services at once (`Some(1)`: sequential).
    pub max_parallel: Option<usize>,
    /// Print a line per service and phase to stderr.
    pub progress: bool,
}

/// A running stack.
#[derive(Debug)]
pub struct Stack {
    manifest: Manifest,
    graph: Graph,
    kind: BackendKind,
    /// Kept alive while the stack runs; `None` for an attached stack.
    backend: Option<Box<dyn Backend>>,
    instances: BTreeMap<String, tokio::sync::Mutex<Box<dyn Instance>>>,
    endpoints: RwLock<BTreeMap<String, Endpoint>>,
    timings: Vec<Timing>,
    run: Option<RunDir>,
    attached: Option<u32>,
}

fn random_token(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// Credentials for one run: fixed in the manifest or random.
fn credentials(service: &Service) -> (Option<String>, Option<String>, Option<String>) {
    let c = &service.credentials;
    match service.kind {
        Kind::Postgres | Kind::Rabbitmq => (
            Some(
                c.user
                    .clone()
                    .unwrap_or_else(|| format!("u{}", random_token(8))),
            ),
            Some(c.password.clone().unwrap_or_else(|| random_token(24))),
            match service.kind {
                Kind::Postgres => Some(
                    c.database
                        .clone()
                        .unwrap_or_else(|| crate::manifest::DEFAULT_POSTGRES_DATABASE.into()),
                ),
                _ => c.database.clone(),
            },
        ),
        Kind::Redis | Kind::Service => (c.user.clone(), c.password.clone(), c.database.clone()),
    }
}

struct StackLauncher<'a> {
    manifest: &'a Manifest,
    backend: &'a dyn Backend,
    launched: Mutex<BTreeMap<String, Instant>>,
}

#[async_trait]
impl Launcher for StackLauncher<'_> {
    type Handle = Box<dyn Instance>;

    async fn launch(
        &self,
        name: &str,
        deps: &BTreeMap<String, Endpoint>,
    ) -> Result<(Box<dyn Instance>, Endpoint), Failure> {
        let service = self
            .manifest
            .service(name)
            .ok_or_else(|| Failure::new(format!("`{name}` is not in the manifest")))?;
        self.launched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), Instant::now());
        let (user, password, database) = credentials(service);
        let request = StartRequest {
            service,
            user,
            password,
            database,
            deps,
        };
        let instance = self
            .backend
            .start(request)
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
        let endpoint = instance.internal_endpoint();
        Ok((instance, endpoint))
    }

    async fn ready(&self, name: &str, instance: &mut Box<dyn Instance>) -> Result<(), Failure> {
        let service = self
            .manifest
            .service(name)
            .ok_or_else(|| Failure::new(format!("`{name}` is not in the manifest")))?;
        let launched = self
            .launched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
            .unwrap_or_else(Instant::now);
        let endpoint = instance.endpoint();
        let deadline = launched + service.startup_timeout;
        probe::wait_ready(&service.probe, &endpoint, deadline, || instance.exited())
            .await
            .map_err(|f| Failure {
                message: f.last_error,
                log_tail: instance.log_tail(LOG_TAIL_LINES),
                probe: Some(f.probe),
                waited: Some(launched.elapsed()),
            })?;
        after_ready(service, &endpoint)
            .await
            .map_err(|message| Failure {
                message,
                log_tail: instance.log_tail(LOG_TAIL_LINES),
                probe: None,
                waited: None,
            })?;
        instance.on_ready().await;
        Ok(())
    }

    async fn stop(&self, _name: &str, mut instance: Box<dyn Instance>) {
        instance.remove().await;
    }
}

/// One-time setup once a service is ready: the databases a postgres service should hold.
async fn after_ready(service: &Service, endpoint: &Endpoint) -> Result<(), String> {
    if service.kind != Kind::Postgres {
        return Ok(());
    }
    use sqlx::Connection as _;
    let wanted: Vec<&str> = endpoint
        .database
        .as_deref()
        .into_iter()
        .chain(service.databases.iter().map(String::as_str))
        .filter(|d| *d != "postgres")
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let url = endpoint.url(Some("postgres"))?;
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .map_err(|e| format!("creating databases: {e}"))?;
    for db in wanted {
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(db)
                .fetch_optional(&mut conn)
                .await
                .map_err(|e| format!("creating database `{db}`: {e}"))?;
        if exists.is_none() {
            sqlx::query(&format!("CREATE DATABASE \"{db}\""))
                .execute(&mut conn)
                .await
                .map_err(|e| format!("creating database `{db}`: {e}"))?;
        }
    }
    let _ = conn.close().await;
    Ok(())
}

fn print_phase(
    service: &str,
    phase: Phase,
    at: Duration,
    width: usize,
    started: &mut BTreeMap<String, Duration>,
) {
    let t = format!("{:>7.3}s", at.as_secs_f64());
    let what = match phase {
        Phase::Starting => {
            started.insert(service.to_string(), at);
            "starting".to_string()
        }
        Phase::Probing => "launched, probing".to_string(),
        Phase::Ready => {
            let since = started.get(service).copied().unwrap_or_default();
            format!("ready in {} ms", (at - since).as_millis())
        }
        Phase::Failed => "FAILED".to_string(),
        Phase::Cancelled => "cancelled".to_string(),
    };
    eprintln!("  {t}  {service:<width$}  {what}");
}

impl Stack {
    /// Validates prerequisites, starts every service in dependency order and waits until all
    /// are ready. On failure everything started is stopped again before this returns.
    pub async fn start(manifest: Manifest, options: StackOptions) -> Result<Stack, Error> {
        cleanup::install_signal_handler();
        let reaped = cleanup::reap_dead_runs();
        if options.progress && !reaped.is_empty() {
            eprintln!("removed what {} dead run(s) left behind", reaped.len());
        }
        let graph = Graph::new(&manifest)
            .map_err(|c| Error::Usage(format!("dependency cycle: {}", c.path.join(" -> "))))?;
        let kind = backend::resolve(options.backend, &manifest).await?;
        let run = RunDir::create().map_err(|e| Error::io("creating the run directory", e))?;
        let backend = backend::create(kind, &run, &manifest);
        backend.preflight(&manifest).await?;
        let launcher = StackLauncher {
            manifest: &manifest,
            backend: backend.as_ref(),
            launched: Mutex::new(BTreeMap::new()),
        };
        let width = manifest
            .services
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(8);
        let mut phase_start = BTreeMap::new();
        if options.progress {
            eprintln!(
                "starting stack `{}` ({} services, {kind} backend)",
                manifest.name,
                manifest.services.len()
            );
        }
        let result = scheduler::run(&graph, &launcher, options.max_parallel, |s, p, at| {
            if options.progress && !cleanup::interrupted() {
                print_phase(s, p, at, width, &mut phase_start);
            }
        })
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
        drop(launcher);
        Ok(Stack {
            manifest,
            graph,
            kind,
            backend: Some(backend),
            instances,
            endpoints: RwLock::new(endpoints),
            timings: started.timings,
            run: Some(run),
            attached: None,
        })
    }

    /// A handle on a stack another process started (see [`crate::attach`]).
    pub fn attach(manifest: Manifest, state: crate::attach::State) -> Result<Stack, Error> {
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
            let instance: Box<dyn Instance> = Box::new(crate::backend::external::RemoteInstance::new(
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
            backend: None,
            instances,
            endpoints: RwLock::new(state.endpoints),
            manifest,
            run: None,
            attached: Some(state.pid),
        })
    }

    /// The pid of the process owning the stack, when this handle is attached to it.
    pub fn attached_to(&self) -> Option<u32> {
        self.attached
    }

    /// Where each service's output can be read.
    pub fn log_sources(&self) -> BTreeMap<String, crate::attach::LogSource> {
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

    /// The backend that runs it.
    pub fn backend(&self) -> BackendKind {
        self.kind
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

    /// The last `n` lines of a service's output.
    pub async fn logs(&self, name: &str, n: usize) -> Result<Vec<String>, Error> {
        Ok(self.instance(name)?.lock().await.log_tail(n))
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
        let waited = probe::wait_ready(&service.probe, &endpoint, deadline, || instance.exited())
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
                instance.lock().await.remove().await;
            }
        }
        self.instances.clear();
        self.backend.take();
        self.run.take();
    }
}
