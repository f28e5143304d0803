//! The container backend: every service runs as a container of a Docker engine (`DOCKER_HOST`,
//! else the local socket), on a private bridge network of its run (`harness-<run id>`).
//!
//! - On the network a service is reached by its name (a network alias) and its container port:
//!   `{{ postgres.url }}` renders as `postgres://…@postgres:5432/app` for other services.
//! - Every port a service declares is published on `127.0.0.1` only, on a port the engine
//!   picks; the host endpoint (tests, probes) uses those. They change when a container is
//!   started again, and [`Instance::endpoint`] follows.
//! - Built-in servers get the environment of their official images (`POSTGRES_USER`,
//!   `POSTGRES_PASSWORD`, `POSTGRES_DB`; `RABBITMQ_DEFAULT_USER`, `RABBITMQ_DEFAULT_PASS`);
//!   services get their rendered `env`, and their `args` as the command.
//! - Images: see [`plan`] for which image each service runs and
//!   [`PullPolicy`](crate::manifest::PullPolicy) for pulling. Missing images fail the
//!   preflight, before anything starts, listing every one of them.
//! - Containers on the estimated critical path get a larger CPU weight until they are ready
//!   ([`estimated_critical_path`]), so boots competing for few cores finish in the order that
//!   matters for the stack-up time.
//!
//! Nothing is left behind. Every container and network carries the labels
//! `org.harness.run-id`, `org.harness.owner-pid`, `org.harness.started-at` and
//! `org.harness.managed=true`. Teardown removes them on success and failure, `Drop` (panics)
//! removes what is left of the run, a cleanup hook removes it on Ctrl-C, and every start of this
//! backend first removes what runs whose owner died left behind ([`reap_dead_runs`]).
//! [`remove_all`] (`harness down --all`) removes every resource the harness owns.
//!
//! The engine is spoken to with the API version it supports (negotiated), so older engines work.

mod build;
mod engine;
mod gate;
mod images;
mod instance;
mod reaper;
mod seed;
mod servers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use testcontainers::bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
    PortBinding,
};
use testcontainers::bollard::query_parameters::CreateContainerOptionsBuilder;
use testcontainers::bollard::Docker;

pub use engine::{connect, docker_host};
pub(crate) use images::MOUNTED_BIN_DIR;
pub use images::{
    available, bare_base_images, bare_base_services, image_ids, image_var, mounted_binaries, plan,
    planned_mounts, ImageChoice, ImagePlan,
};
use images::{images_error, provide_images, unmounted_runtimes};
pub use instance::log_tail;
use instance::{ContainerInstance, Shared};
pub use reaper::{
    reap_dead_runs, remove_all, remove_labelled, remove_run_blocking, run_alive, run_labels,
    RemoveError, Removed, LABEL_HOST, LABEL_MANAGED, LABEL_OWNER_PID, LABEL_RUN_DIR, LABEL_RUN_ID,
    LABEL_SERVICE, LABEL_STARTED_AT,
};
use reaper::{reap_dead_runs_with, unix_now};
pub(crate) use servers::{base_entrypoint, builtin_env, default_args, BASE_RUNNER, ENTRYPOINT_ENV};
use servers::{data_dir, typical_boot};

use super::interface::{Backend, Instance, StartRequest};
use crate::engine::cleanup::{self, RunDir, RUN_ID_ENV};
use crate::engine::error::Error;
use crate::engine::events::{Event, Sink};
use crate::manifest::BackendKind;
use crate::manifest::Manifest;
use crate::model::endpoint::Endpoint;
use crate::settings::Settings;

/// CPU weight of the containers on the (estimated) critical path until they are ready; others
/// keep the engine's default of 1024. Measured on two cores (PostgreSQL, Redis, RabbitMQ and a
/// dependent): the stack is up in 4.6 s with it, 5.7 s without.
const CRITICAL_CPU_SHARES: i64 = 65536;

/// The services on the critical path of the manifest, estimated from [`typical_boot`]. Their
/// containers get a larger CPU weight: on a machine with fewer cores than the stack has busy
/// boots, the chain that decides the stack-up time goes first, and the rest (which has slack)
/// waits. Without contention the weight changes nothing.
pub fn estimated_critical_path(manifest: &Manifest) -> BTreeSet<String> {
    match crate::graph::Graph::new(manifest) {
        Ok(graph) => {
            let cost = |s: &str| {
                manifest
                    .service(s)
                    .map(|s| typical_boot(s.kind))
                    .unwrap_or(0.0)
            };
            graph.critical_path(cost).0.into_iter().collect()
        }
        Err(_) => BTreeSet::new(),
    }
}

/// Runs services as containers.
#[derive(Debug)]
pub struct Container {
    run_id: String,
    /// Where the data directories of servers go when [`data_on_host`] allows it.
    run_dir: PathBuf,
    short: String,
    network: String,
    labels: HashMap<String, String>,
    docker: tokio::sync::OnceCell<Docker>,
    images: Mutex<BTreeMap<String, String>>,
    mounts: Mutex<BTreeMap<String, PathBuf>>,
    /// Services whose image is a bare tag of the local base image (see [`base_entrypoint`]).
    bare: Mutex<BTreeSet<String>>,
    /// Services whose image is a runtime tag of the local base image, server or not.
    runtimes: Mutex<BTreeSet<String>>,
    /// Containers started ahead and held at their gate (see [`Backend::prepare`]), by service.
    prepared: Mutex<BTreeMap<String, Prepared>>,
    critical: BTreeSet<String>,
    shared: Arc<Shared>,
    hook: u64,
    /// Where the workspace's binaries it mounts are.
    bin_dir: PathBuf,
    /// Which images the services run, and where the engine is.
    settings: Settings,
    /// Images being built while the stack starts, by image: a service that runs one waits for
    /// its build when its turn to start comes (see [`ImagePlan::deferrable`]).
    builds: Mutex<BTreeMap<String, PendingBuild>>,
}

/// A container started ahead of its service's launch, held at its gate: what it was created
/// from (the launch must ask for the same) and the creation under way.
#[derive(Debug)]
struct Prepared {
    body: String,
    creation: tokio::task::JoinHandle<Result<ContainerInstance, Error>>,
    gate: gate::Gate,
}

/// What a service's container is created from.
#[derive(Debug)]
struct Spec {
    name: String,
    image: String,
    body: ContainerCreateBody,
    internal: Endpoint,
    boosted: bool,
}

/// Creates the container and starts it.
async fn create_and_start(
    docker: Docker,
    shared: Arc<Shared>,
    service: String,
    spec: Spec,
) -> Result<ContainerInstance, Error> {
    let options = CreateContainerOptionsBuilder::new()
        .name(&spec.name)
        .build();
    let id = docker
        .create_container(Some(options), spec.body)
        .await
        .map_err(|e| {
            Error::service(
                &service,
                format!("cannot create a container from `{}`: {e}", spec.image),
            )
        })?
        .id;
    let mut instance = ContainerInstance::new(
        &service,
        spec.name,
        id,
        docker,
        spec.internal,
        spec.boosted,
        shared,
    );
    instance.start().await?;
    Ok(instance)
}

/// A build under way: its outcome, which every service of the image awaits, and how to stop it.
#[derive(Debug)]
struct PendingBuild {
    outcome: futures::future::Shared<futures::future::BoxFuture<'static, Result<(), String>>>,
    abort: tokio::task::AbortHandle,
    context: PathBuf,
}

impl Container {
    /// A container backend for one run. It registers a cleanup hook that removes the run's
    /// containers and network on Ctrl-C.
    pub fn new(
        run: &RunDir,
        manifest: &Manifest,
        bin_dir: &Path,
        settings: &Settings,
    ) -> Container {
        let shared = Arc::new(Shared::default());
        let hook = {
            let shared = shared.clone();
            let run_id = run.id.clone();
            cleanup::register_hook(move || {
                shared.closing.store(true, Ordering::SeqCst);
                // New creations see `interrupted()` and stop; wait for those under way.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while shared.creating.load(Ordering::SeqCst) > 0
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if shared.touched.load(Ordering::SeqCst) {
                    if let Err(e) = remove_run_blocking(&run_id) {
                        eprintln!("harness: removing the containers of run {run_id}: {e}");
                    }
                }
                shared.swept.store(true, Ordering::SeqCst);
            })
        };
        let short = run.id.rsplit('-').next().unwrap_or(&run.id).to_string();
        Container {
            network: format!("harness-{}", run.id),
            labels: run_labels(&run.id, Some(&run.path), unix_now()),
            run_id: run.id.clone(),
            run_dir: run.path.clone(),
            short,
            docker: tokio::sync::OnceCell::new(),
            images: Mutex::new(BTreeMap::new()),
            mounts: Mutex::new(BTreeMap::new()),
            bare: Mutex::new(BTreeSet::new()),
            runtimes: Mutex::new(BTreeSet::new()),
            prepared: Mutex::new(BTreeMap::new()),
            critical: estimated_critical_path(manifest),
            shared,
            hook,
            bin_dir: bin_dir.to_path_buf(),
            settings: settings.clone(),
            builds: Mutex::new(BTreeMap::new()),
        }
    }

    /// Starts building `images` in the background (see [`Container::builds`]).
    fn spawn_builds(
        &self,
        docker: &Docker,
        plan: &ImagePlan,
        images: Vec<String>,
        sink: &Arc<dyn Sink>,
    ) {
        use futures::FutureExt as _;
        let mut builds = self.builds.lock().unwrap_or_else(|p| p.into_inner());
        for image in images {
            let Some((service, build)) = plan.builds.get(&image).cloned() else {
                continue;
            };
            let (docker, sink, tag) = (docker.clone(), sink.clone(), image.clone());
            let context = build.context.clone();
            let task = tokio::spawn(async move {
                build::build_image(&docker, &service, &tag, &build, sink.as_ref()).await
            });
            let abort = task.abort_handle();
            let outcome = async move {
                task.await
                    .unwrap_or_else(|e| Err(format!("the build was stopped: {e}")))
            }
            .boxed()
            .shared();
            builds.insert(
                image,
                PendingBuild {
                    outcome,
                    abort,
                    context,
                },
            );
        }
    }

    /// Waits for the build of `service`'s image, if one is under way.
    async fn built(&self, service: &str) -> Result<(), Error> {
        let image = self
            .images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .cloned();
        let pending = image.as_ref().and_then(|image| {
            let builds = self.builds.lock().unwrap_or_else(|p| p.into_inner());
            builds
                .get(image)
                .map(|b| (b.outcome.clone(), b.context.clone()))
        });
        let Some((outcome, context)) = pending else {
            return Ok(());
        };
        outcome.await.map_err(|reason| Error::Prerequisite {
            what: format!(
                "the image of `{service}` (`{}`, built from {}) could not be built: {reason}",
                image.unwrap_or_default(),
                context.display()
            ),
            help: "fix the Dockerfile or its context (the build's output is above), or run the stack without containers: `--backend native`".into(),
        })
    }

    /// The run's network.
    pub fn network(&self) -> &str {
        &self.network
    }

    async fn docker(&self) -> Result<&Docker, Error> {
        self.docker
            .get_or_try_init(connect)
            .await
            .map_err(|e| Error::Prerequisite {
                what: format!("the container backend needs a Docker engine: {e}"),
                help: "start one (`dockerd`, `systemctl start docker`) or point DOCKER_HOST at it; or use `--backend native`".into(),
            })
    }

    async fn create_network(&self, docker: &Docker) -> Result<(), Error> {
        // Counted like a container creation (see `start`): a network being created when the
        // signal arrives is waited for, then removed by its labels.
        self.shared.creating.fetch_add(1, Ordering::SeqCst);
        self.shared.touched.store(true, Ordering::SeqCst);
        let request = NetworkCreateRequest {
            name: self.network.clone(),
            driver: Some("bridge".into()),
            labels: Some(self.labels.clone()),
            ..Default::default()
        };
        let result = if cleanup::interrupted() {
            Err(Error::service("stack", "not started: interrupted"))
        } else {
            docker
                .create_network(request)
                .await
                .map(drop)
                .map_err(|e| Error::Prerequisite {
                    what: format!("cannot create the network `{}`: {e}", self.network),
                    help:
                        "check that the engine can create bridge networks (`docker network create x`)"
                            .into(),
                })
        };
        self.shared.creating.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// What `req`'s container is created from, but for its data directory (see
    /// [`Container::create`]). Makes nothing.
    fn spec(&self, req: &StartRequest<'_>) -> Result<Spec, Error> {
        let service = req.service;
        let fail = |m: String| Error::service(&service.name, m);
        let image = self
            .images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&service.name)
            .cloned()
            .ok_or_else(|| fail("has no image (the preflight did not run?)".into()))?;
        let internal = Endpoint {
            kind: service.kind,
            host: service.name.clone(),
            ports: service.ports.clone(),
            primary: service.primary_port().map(str::to_string),
            bind_host: "0.0.0.0".into(),
            user: req.user.clone(),
            password: req.password.clone(),
            database: req.database.clone(),
        };
        let render = |t: &crate::model::template::Template| {
            t.render(|name| {
                if name == "self" {
                    Some(&internal)
                } else {
                    req.deps.get(name)
                }
            })
            .map_err(&fail)
        };
        let mut env = builtin_env(service.kind, &internal);
        env.push((RUN_ID_ENV.to_string(), self.run_id.clone()));
        for (k, v) in &service.env {
            env.push((k.clone(), render(v)?));
        }
        let mut cmd = service
            .args
            .iter()
            .map(render)
            .collect::<Result<Vec<_>, _>>()?;
        if cmd.is_empty() {
            cmd = default_args(service.kind);
        }
        let mut labels = self.labels.clone();
        labels.insert(LABEL_SERVICE.to_string(), service.name.clone());
        let boosted = self.critical.contains(&service.name);
        let bindings: HashMap<String, Option<Vec<PortBinding>>> = service
            .ports
            .values()
            .map(|p| {
                let binding = PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(String::new()),
                };
                (format!("{p}/tcp"), Some(vec![binding]))
            })
            .collect();
        let mounted = self
            .mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&service.name)
            .cloned();
        let (mut entrypoint, mut binds) = match (&mounted, &service.launch) {
            (Some(host), crate::manifest::Launch::Binary(b)) => (
                Some(vec![format!("{MOUNTED_BIN_DIR}/{b}")]),
                Some(vec![format!("{}:{MOUNTED_BIN_DIR}/{b}:ro", host.display())]),
            ),
            _ => (None, None),
        };
        let bare = self
            .bare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&service.name);
        let mut stop_signal = None;
        if let (true, Some((script, signal))) = (bare, base_entrypoint(service.kind)) {
            entrypoint = Some(BASE_RUNNER.iter().map(|s| s.to_string()).collect());
            env.push((ENTRYPOINT_ENV.to_string(), script.to_string()));
            stop_signal = signal.map(str::to_string);
        }
        if let Some(e) = &service.entrypoint {
            entrypoint = Some(e.iter().map(render).collect::<Result<Vec<_>, _>>()?);
        }
        binds
            .get_or_insert_with(Vec::new)
            .extend(self.mounts_of(service)?);
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint,
            hostname: Some(service.name.clone()),
            working_dir: service.workdir.clone(),
            user: service.run_as.clone(),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: (!cmd.is_empty()).then_some(cmd),
            stop_signal,
            labels: Some(labels),
            exposed_ports: Some(bindings.keys().cloned().collect()),
            host_config: Some(HostConfig {
                network_mode: Some(self.network.clone()),
                // Servers outside the engine (CI service containers, the external backend)
                // are on the host: reached by this name (see `mixed::reach`).
                extra_hosts: Some(vec![format!(
                    "{}:host-gateway",
                    super::interface::HOST_GATEWAY
                )]),
                binds,
                port_bindings: Some(bindings),
                publish_all_ports: Some(false),
                cpu_shares: boosted.then_some(CRITICAL_CPU_SHARES),
                tmpfs: (!service.tmpfs.is_empty()).then(|| {
                    service
                        .tmpfs
                        .iter()
                        .map(|t| (t.clone(), String::new()))
                        .collect()
                }),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network.clone(),
                    EndpointSettings {
                        aliases: Some(
                            std::iter::once(&service.name)
                                .chain(&service.aliases)
                                .cloned()
                                .collect(),
                        ),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        Ok(Spec {
            name: format!("h-{}-{}", self.short, service.name),
            image,
            body,
            internal,
            boosted,
        })
    }

    /// Creates and starts `req`'s container, its data directory in the run directory when the
    /// engine sees this machine's files ([`data_on_host`]).
    async fn create(
        &self,
        docker: &Docker,
        req: &StartRequest<'_>,
    ) -> Result<ContainerInstance, Error> {
        let service = req.service;
        let fail = |m: String| Error::service(&service.name, m);
        let mut spec = self.spec(req)?;
        let bare = self
            .bare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&service.name);
        let image = spec.image.clone();
        let binds = &mut spec
            .body
            .host_config
            .get_or_insert_with(Default::default)
            .binds;
        let env = spec.body.env.get_or_insert_with(Vec::new);
        if let (Some(inside), true) = (data_dir(service.kind), data_on_host(&self.settings)) {
            let host = self.run_dir.join(format!("{}-data", service.name));
            cleanup::guarded(|| std::fs::create_dir(&host))
                .map_err(|e| fail(format!("creating {}: {e}", host.display())))?;
            binds
                .get_or_insert_with(Vec::new)
                .push(format!("{}:{inside}", host.display()));
            // Our own Postgres entrypoint on a bare base image starts from a cached cluster.
            if let (true, crate::manifest::Kind::Postgres, Some((script, _))) =
                (bare, service.kind, base_entrypoint(service.kind))
            {
                if let Ok(Some(id)) = docker.inspect_image(&image).await.map(|i| i.id) {
                    let cache = self
                        .settings
                        .cache_dir()
                        .join("postgres-container")
                        .join(seed::key(&id, script, &env_pairs(env)));
                    let seeding = seed::prepare(cache, &host, &self.run_dir, &service.name).await;
                    binds.get_or_insert_with(Vec::new).extend(seeding.binds);
                    env.extend(seeding.env.iter().map(|(k, v)| format!("{k}={v}")));
                }
            }
        }
        create_and_start(
            docker.clone(),
            self.shared.clone(),
            service.name.clone(),
            spec,
        )
        .await
    }
}

impl Container {
    /// Opens the gate of the container prepared for `req`, if it was made from what `req` asks
    /// now and got to its gate; else removes it (`None`: create one as usual).
    async fn start_prepared(
        &self,
        prepared: Prepared,
        req: &StartRequest<'_>,
    ) -> Option<ContainerInstance> {
        let same = self
            .spec(req)
            .ok()
            .and_then(|s| serde_json::to_string(&s.body).ok())
            .is_some_and(|body| body == prepared.body);
        let mut instance = prepared.creation.await.ok()?.ok()?;
        if same && prepared.gate.open().await.is_ok() {
            return Some(instance);
        }
        instance.remove().await;
        None
    }
}

/// `KEY=value` entries as pairs.
fn env_pairs(env: &[String]) -> Vec<(String, String)> {
    env.iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Container {
    /// The service's `volumes` as the engine's binds. A volume of the run is a directory of
    /// the run's, shared by the services that name it and removed with the run; it needs an
    /// engine that sees this machine's files ([`data_on_host`]).
    fn mounts_of(&self, service: &crate::manifest::Service) -> Result<Vec<String>, Error> {
        use crate::manifest::MountSource;
        let mut binds = Vec::new();
        for m in &service.volumes {
            let mode = if m.read_only { ":ro" } else { "" };
            match &m.source {
                MountSource::Host(path) => {
                    binds.push(format!("{}:{}{mode}", path.display(), m.target));
                }
                MountSource::Volume(name) if data_on_host(&self.settings) => {
                    let dir = self.run_dir.join("volumes").join(name);
                    cleanup::guarded(|| std::fs::create_dir_all(&dir)).map_err(|e| {
                        Error::service(
                            &service.name,
                            format!("creating the volume `{name}` at {}: {e}", dir.display()),
                        )
                    })?;
                    binds.push(format!("{}:{}{mode}", dir.display(), m.target));
                }
                MountSource::Volume(name) => {
                    return Err(Error::service(
                        &service.name,
                        format!("the volume `{name}` of the run needs an engine on this machine (a local socket, as root); this one is at {}", self.settings.docker_host()),
                    ))
                }
            }
        }
        Ok(binds)
    }
}

/// Whether the data directories of servers are bind-mounted from the run directory (in memory
/// under `/dev/shm`, see [`cleanup::runs_root`]) instead of written to the container's own
/// filesystem: initialising a cluster on fuse-overlayfs took seconds. Not a tmpfs mount of the
/// engine's: that is emptied when the container stops, and a stopped server keeps its data.
/// Only where the engine sees this machine's files (a local socket) and as root, who can remove
/// what the servers' users wrote; `HARNESS_DATA_ON_HOST=0` turns it off.
fn data_on_host(settings: &Settings) -> bool {
    if settings.is_off("HARNESS_DATA_ON_HOST") {
        return false;
    }
    let local = settings.docker_host().starts_with("unix://");
    local && nix::unistd::geteuid().is_root()
}

#[async_trait]
impl Backend for Container {
    fn kind(&self) -> BackendKind {
        BackendKind::Container
    }

    async fn preflight(&self, manifest: &Manifest, sink: &Arc<dyn Sink>) -> Result<(), Error> {
        let docker = self.docker().await?;
        let plan = plan(manifest, &self.settings)?;
        // Independent, so at once: the network is removed again by `Drop` if images are missing.
        let (reaped, (missing, deferred), network) = tokio::join!(
            reap_dead_runs_with(docker),
            provide_images(docker, &plan, sink.as_ref()),
            self.create_network(docker)
        );
        if let Err(e) = reaped {
            sink.event(&Event::Warning(format!(
                "removing what dead runs left in the engine failed: {e}"
            )));
        }
        if !missing.is_empty() || !plan.unset.is_empty() {
            return Err(images_error(&plan, &missing));
        }
        network?;
        self.spawn_builds(docker, &plan, deferred, sink);
        let mounts = mounted_binaries(manifest, &plan, &self.settings, &self.bin_dir);
        let runtimes = bare_base_images(docker, &plan).await;
        if let Some(e) = unmounted_runtimes(manifest, &plan, &runtimes, &mounts, &self.settings) {
            return Err(e);
        }
        *self.mounts.lock().unwrap_or_else(|p| p.into_inner()) = mounts;
        *self.bare.lock().unwrap_or_else(|p| p.into_inner()) =
            bare_base_services(manifest, &runtimes);
        *self.runtimes.lock().unwrap_or_else(|p| p.into_inner()) = runtimes;
        *self.images.lock().unwrap_or_else(|p| p.into_inner()) =
            plan.images.into_iter().map(|(s, c)| (s, c.image)).collect();
        Ok(())
    }

    /// A workspace binary mounted into a runtime tag of the base image (which has `/bin/sh`)
    /// gets its container created and started at its gate ([`gate`]).
    fn prepare(&self, req: StartRequest<'_>) {
        let name = &req.service.name;
        let eligible = matches!(req.service.launch, crate::manifest::Launch::Binary(_))
            && req.service.entrypoint.is_none()
            && data_dir(req.service.kind).is_none()
            && data_on_host(&self.settings)
            && self
                .runtimes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(name)
            && self
                .mounts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(name);
        let Some(docker) = self.docker.get().cloned() else {
            return;
        };
        if !eligible || cleanup::interrupted() {
            return;
        }
        let Ok(mut spec) = self.spec(&req) else {
            return;
        };
        let (Ok(body), Ok(gate)) = (
            serde_json::to_string(&spec.body),
            gate::Gate::create(&self.run_dir, name),
        ) else {
            return;
        };
        let Some(held) = gate.hold(spec.body) else {
            return;
        };
        spec.body = held;
        // Counted like any creation: the Ctrl-C hook waits for it, then removes by label.
        self.shared.creating.fetch_add(1, Ordering::SeqCst);
        self.shared.touched.store(true, Ordering::SeqCst);
        let (shared, service) = (self.shared.clone(), name.clone());
        let creation = tokio::spawn(async move {
            let mut result = create_and_start(docker, shared.clone(), service, spec).await;
            if shared.closing.load(Ordering::SeqCst) {
                // The run is being removed, perhaps without this container: remove it here.
                if let Ok(instance) = &mut result {
                    instance.remove().await;
                }
                result = Err(Error::service(
                    "stack",
                    "not started: the run is being removed",
                ));
            }
            shared.creating.fetch_sub(1, Ordering::SeqCst);
            result
        });
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                name.clone(),
                Prepared {
                    body,
                    creation,
                    gate,
                },
            );
    }

    async fn start(&self, req: StartRequest<'_>) -> Result<Box<dyn Instance>, Error> {
        let prepared = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req.service.name);
        if let Some(prepared) = prepared.filter(|_| !cleanup::interrupted()) {
            if let Some(instance) = self.start_prepared(prepared, &req).await {
                return Ok(Box::new(instance));
            }
        }
        let docker = self.docker().await?;
        // Counted before `interrupted()` is read: the Ctrl-C hook sets that first and then waits
        // for the count to drop, so every container is either never created or seen by it.
        self.shared.creating.fetch_add(1, Ordering::SeqCst);
        self.shared.touched.store(true, Ordering::SeqCst);
        let result = if cleanup::interrupted() {
            Err(Error::service(
                &req.service.name,
                "not started: interrupted",
            ))
        } else {
            match self.built(&req.service.name).await {
                Ok(()) => self.create(docker, &req).await,
                Err(e) => Err(e),
            }
        };
        self.shared.creating.fetch_sub(1, Ordering::SeqCst);
        Ok(Box::new(result?))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        cleanup::unregister_hook(self.hook);
        self.shared.closing.store(true, Ordering::SeqCst);
        // A build nobody waits for any more is stopped (the engine drops it with the request).
        for build in self
            .builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            build.abort.abort();
        }
        if self.shared.touched.load(Ordering::SeqCst) && !self.shared.swept.load(Ordering::SeqCst) {
            if let Err(e) = remove_run_blocking(&self.run_id) {
                eprintln!(
                    "harness: removing the containers of run {}: {e}",
                    self.run_id
                );
            }
        }
        self.shared.swept.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_critical_path_is_estimated_from_the_kinds() {
        let source = r#"
[services.postgres]
kind = "postgres"
[services.redis]
kind = "redis"
[services.rabbitmq]
kind = "rabbitmq"
[services.api]
kind = "service"
image = "api:1"
depends-on = ["postgres", "redis", "rabbitmq"]
"#;
        let m = Manifest::parse(Path::new("m.toml"), source).unwrap();
        let critical: Vec<String> = estimated_critical_path(&m).into_iter().collect();
        assert_eq!(critical, ["api", "rabbitmq"]);
    }
}
