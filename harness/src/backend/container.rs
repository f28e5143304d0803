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
//! - Images: see [`plan`] for which image each service runs and [`PullPolicy`] for pulling.
//!   Missing images fail the preflight, before anything starts, listing every one of them.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use testcontainers::bollard::errors::Error as DockerError;
use testcontainers::bollard::models::{
    ContainerCreateBody, ContainerUpdateBody, EndpointSettings, HostConfig, NetworkCreateRequest,
    NetworkingConfig, PortBinding,
};
use testcontainers::bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use testcontainers::bollard::Docker;

use super::{Backend, BackendKind, Instance, StartRequest};
use crate::cleanup::{self, RunDir, RUN_ID_ENV};
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::manifest::{Kind, Manifest, PullPolicy};

/// Label: the id of the run that created a resource.
pub const LABEL_RUN_ID: &str = "org.harness.run-id";
/// Label: the pid of the process that owns the run.
pub const LABEL_OWNER_PID: &str = "org.harness.owner-pid";
/// Label: when the run started (unix seconds).
pub const LABEL_STARTED_AT: &str = "org.harness.started-at";
/// Label: `true` on everything the harness creates.
pub const LABEL_MANAGED: &str = "org.harness.managed";
/// Label: the host name of the machine of the owner (only its own runs are judged dead).
pub const LABEL_HOST: &str = "org.harness.host";
/// Label: the run directory of the owner.
pub const LABEL_RUN_DIR: &str = "org.harness.run-dir";
/// Label: the service a container runs.
pub const LABEL_SERVICE: &str = "org.harness.service";

/// How long `stop` lets a container shut down before the engine kills it.
const STOP_GRACE_SECS: i32 = 10;
/// How long the engine gets to answer the first request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// CPU weight of the containers on the (estimated) critical path until they are ready; others
/// keep the engine's default of 1024. Measured on two cores (PostgreSQL, Redis, RabbitMQ and a
/// dependent): the stack is up in 4.6 s with it, 5.7 s without.
const CRITICAL_CPU_SHARES: i64 = 65536;
/// The engine's default CPU weight.
const DEFAULT_CPU_SHARES: i64 = 1024;

/// Typical seconds from launch to ready, per kind, to estimate the critical path before
/// anything was measured.
fn typical_boot(kind: Kind) -> f64 {
    match kind {
        Kind::Rabbitmq => 5.0,
        Kind::Postgres => 3.0,
        Kind::Redis => 0.3,
        Kind::Service => 0.5,
    }
}

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

/// Where the engine is: `DOCKER_HOST`, else the local socket.
pub fn docker_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// Connects to the engine and agrees on an API version it supports.
pub async fn connect() -> Result<Docker, String> {
    let host = docker_host();
    let docker = Docker::connect_with_host(&host)
        .map_err(|e| format!("cannot use DOCKER_HOST `{host}`: {e}"))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => Err(format!("no Docker engine answers at {host}: {e}")),
        Err(_) => Err(format!(
            "no Docker engine answered at {host} within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Runs a Docker operation to completion from synchronous code (`Drop`, the signal handler,
/// [`Instance::log_tail`]), inside a runtime or not: on a thread of its own, with its own
/// runtime and connection.
fn blocking<T, F, Fut>(f: F) -> Result<T, String>
where
    T: Send,
    F: FnOnce(Docker) -> Fut + Send,
    Fut: Future<Output = T>,
{
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a runtime: {e}"))?;
                runtime.block_on(async move {
                    let docker = connect().await?;
                    Ok(f(docker).await)
                })
            })
            .join()
            .unwrap_or_else(|_| Err("the thread talking to the engine panicked".into()))
    })
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The labels of every resource of a run.
pub fn run_labels(
    run_id: &str,
    run_dir: Option<&Path>,
    started_at: u64,
) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (LABEL_RUN_ID.to_string(), run_id.to_string()),
        (LABEL_OWNER_PID.to_string(), std::process::id().to_string()),
        (LABEL_STARTED_AT.to_string(), started_at.to_string()),
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_HOST.to_string(), hostname()),
    ]);
    if let Some(dir) = run_dir {
        labels.insert(LABEL_RUN_DIR.to_string(), dir.display().to_string());
    }
    labels
}

// ---------------------------------------------------------------------------------- images

/// The image a service runs, and where that choice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageChoice {
    /// The image reference.
    pub image: String,
    /// Where it came from, for messages (`HARNESS_IMAGE_POSTGRES`, `the manifest`, ...).
    pub from: String,
}

/// Which image every service runs, and the pull policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlan {
    /// `HARNESS_PULL`, else `[stack] pull`, else `if-missing`.
    pub pull: PullPolicy,
    /// Image per service.
    pub images: BTreeMap<String, ImageChoice>,
    /// Services that name no image (a `service` with only a `binary` or `command`).
    pub unset: Vec<String>,
}

impl ImagePlan {
    /// Services per image, each image once.
    pub fn by_image(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (service, choice) in &self.images {
            out.entry(choice.image.as_str())
                .or_default()
                .push(service.as_str());
        }
        out
    }
}

/// The environment variable that replaces a service's image: `HARNESS_IMAGE_<SERVICE>`
/// (upper case, `-` as `_`).
pub fn image_var(service: &str) -> String {
    format!("HARNESS_IMAGE_{}", service.to_uppercase().replace('-', "_"))
}

/// Decides each service's image. First match wins:
///
/// 1. `HARNESS_IMAGE_<SERVICE>=image:tag`;
/// 2. `[stack.images] <service> = "image:tag"` in the manifest;
/// 3. the service's `image` (or its kind's official image: `postgres:16`, `redis:7`,
///    `rabbitmq:3`), behind the prefix `HARNESS_IMAGE_PREFIX`, else `[stack] image-prefix`
///    (`<prefix>/<image>`).
///
/// The pull policy is `HARNESS_PULL`, else `[stack] pull`, else `if-missing`. `env` looks up
/// environment variables (a parameter so tests need not change the process environment).
pub fn plan(manifest: &Manifest, env: &dyn Fn(&str) -> Option<String>) -> Result<ImagePlan, Error> {
    let get = |name: &str| {
        env(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let pull = match get("HARNESS_PULL") {
        Some(v) => PullPolicy::parse(&v).ok_or_else(|| {
            Error::Usage(format!(
                "HARNESS_PULL is `{v}`; use {}",
                PullPolicy::CHOICES
            ))
        })?,
        None => manifest.images.pull.unwrap_or_default(),
    };
    let prefix = match get("HARNESS_IMAGE_PREFIX") {
        Some(p) => {
            let p = p.trim_end_matches('/').to_string();
            if !crate::manifest::valid_image(&p) || p.contains("://") {
                return Err(Error::Usage(format!(
                    "HARNESS_IMAGE_PREFIX is `{p}`; give a registry or mirror without a scheme, e.g. `mirror.example.com:5000`"
                )));
            }
            Some((p, "HARNESS_IMAGE_PREFIX".to_string()))
        }
        None => manifest
            .images
            .prefix
            .clone()
            .map(|p| (p, "`[stack] image-prefix`".to_string())),
    };
    let mut images = BTreeMap::new();
    let mut unset = Vec::new();
    for service in &manifest.services {
        let var = image_var(&service.name);
        let choice = if let Some(image) = get(&var) {
            if !crate::manifest::valid_image(&image) {
                return Err(Error::Usage(format!(
                    "{var} is `{image}`, which is not an image reference"
                )));
            }
            ImageChoice { image, from: var }
        } else if let Some(image) = manifest.images.overrides.get(&service.name) {
            ImageChoice {
                image: image.clone(),
                from: "`[stack.images]` of the manifest".into(),
            }
        } else if let Some(image) = &service.image {
            let default = service.kind.default_image() == Some(image.as_str());
            let from = if default {
                format!("the default for `{}` services", service.kind)
            } else {
                "the manifest".to_string()
            };
            match &prefix {
                Some((p, by)) => ImageChoice {
                    image: format!("{p}/{image}"),
                    from: format!("{from}, behind {by}"),
                },
                None => ImageChoice {
                    image: image.clone(),
                    from,
                },
            }
        } else {
            unset.push(service.name.clone());
            continue;
        };
        images.insert(service.name.clone(), choice);
    }
    Ok(ImagePlan {
        pull,
        images,
        unset,
    })
}

/// [`mounted_binaries`] as this process's environment decides them, of the binaries in `bins`.
pub fn planned_mounts(manifest: &Manifest, bins: &Path) -> BTreeMap<String, PathBuf> {
    plan(manifest, &process_env)
        .map(|p| mounted_binaries(manifest, &p, &process_env, bins))
        .unwrap_or_default()
}

/// Where a mounted workspace binary appears inside its container.
const MOUNTED_BIN_DIR: &str = "/harness/bin";

/// The workspace binaries the container backend runs fresh from the host: every `binary`
/// service whose image is the manifest's own (not replaced by `HARNESS_IMAGE_<SERVICE>` or
/// `[stack.images]`, e.g. a candidate image under verification), when the binary is built.
/// The binary is mounted read-only into the service's image and run as its entrypoint, so a
/// `cargo build` is all a change needs: no image is rebuilt, and a stale image never runs old
/// code. `HARNESS_MOUNT_BINARIES=0` runs the images as they are.
pub fn mounted_binaries(
    manifest: &Manifest,
    plan: &ImagePlan,
    env: &dyn Fn(&str) -> Option<String>,
    bins: &Path,
) -> BTreeMap<String, PathBuf> {
    if env("HARNESS_MOUNT_BINARIES").is_some_and(|v| v.trim() == "0") {
        return BTreeMap::new();
    }
    manifest
        .services
        .iter()
        .filter_map(|s| {
            let crate::manifest::Launch::Binary(b) = &s.launch else {
                return None;
            };
            let own = plan
                .images
                .get(&s.name)
                .is_some_and(|c| c.from.starts_with("the manifest"));
            let path = bins.join(b);
            (own && path.is_file()).then(|| (s.name.clone(), path))
        })
        .collect()
}

pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether an image is present in the engine.
async fn image_present(docker: &Docker, image: &str) -> Result<bool, String> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) if status_of(&e) == Some(404) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// The id of the image each service of `manifest` runs (as [`plan`] chooses it from this
/// process's environment); services whose image cannot be inspected are left out.
pub async fn image_ids(manifest: &Manifest) -> BTreeMap<String, String> {
    let (Ok(plan), Ok(docker)) = (plan(manifest, &process_env), connect().await) else {
        return BTreeMap::new();
    };
    let mut ids = BTreeMap::new();
    for (image, services) in plan.by_image() {
        if let Ok(inspect) = docker.inspect_image(image).await {
            if let Some(id) = inspect.id {
                for s in services {
                    ids.insert(s.to_string(), id.clone());
                }
            }
        }
    }
    ids
}

async fn pull(docker: &Docker, image: &str) -> Result<(), String> {
    let options = CreateImageOptionsBuilder::new().from_image(image).build();
    let mut progress = docker.create_image(Some(options), None, None);
    while let Some(step) = progress.next().await {
        let step = step.map_err(|e| e.to_string())?;
        if let Some(e) = step.error_detail.and_then(|d| d.message) {
            return Err(e);
        }
    }
    Ok(())
}

/// One image that cannot be had, and why.
#[derive(Debug, Clone)]
struct Unavailable {
    image: String,
    services: Vec<String>,
    reason: String,
}

/// Checks (and per the policy pulls) every image of the plan; returns those not available.
async fn provide_images(docker: &Docker, plan: &ImagePlan) -> Vec<Unavailable> {
    let checks = plan
        .by_image()
        .into_iter()
        .map(|(image, services)| async move {
            let present = image_present(docker, image).await;
            let reason = match (plan.pull, present) {
                (_, Err(e)) => Some(format!("cannot inspect it: {e}")),
                (PullPolicy::Never, Ok(true)) | (PullPolicy::IfMissing, Ok(true)) => None,
                (PullPolicy::Never, Ok(false)) => {
                    Some("not present locally, and the pull policy is `never`".into())
                }
                (PullPolicy::IfMissing, Ok(false)) => pull(docker, image)
                    .await
                    .err()
                    .map(|e| format!("not present locally, and pulling it failed: {e}")),
                (PullPolicy::Always, Ok(_)) => pull(docker, image)
                    .await
                    .err()
                    .map(|e| format!("pulling it failed (pull policy `always`): {e}")),
            };
            reason.map(|reason| Unavailable {
                image: image.to_string(),
                services: services.iter().map(|s| s.to_string()).collect(),
                reason,
            })
        });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn images_error(plan: &ImagePlan, missing: &[Unavailable]) -> Error {
    let mut what = String::from("the container backend cannot start this stack; not available:");
    for m in missing {
        let services = m
            .services
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let from = m
            .services
            .first()
            .and_then(|s| plan.images.get(s))
            .map(|c| c.from.as_str())
            .unwrap_or("");
        what.push_str(&format!(
            "\n  - image `{}` (service {services}; {from}): {}",
            m.image, m.reason
        ));
    }
    for s in &plan.unset {
        what.push_str(&format!("\n  - an image for service `{s}`: it names none"));
    }
    let mut help = vec![
        "build the local images: `fixtures/images/build.sh` (a service image: `fixtures/images/build.sh service <name> <binary> <dockerfile-dir>`)".to_string(),
        "then point the services at them: `set -a; . fixtures/images/local.env; set +a`, or `[stack.images]` in the manifest".to_string(),
    ];
    let vars: Vec<String> = missing
        .iter()
        .flat_map(|m| m.services.iter())
        .chain(plan.unset.iter())
        .map(|s| format!("{}=<image:tag>", image_var(s)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !vars.is_empty() {
        help.push(format!(
            "or name an image you have, per service: {}",
            vars.join(", ")
        ));
    }
    if plan.pull == PullPolicy::Never && !missing.is_empty() {
        help.push(
            "or let the harness pull what is missing: HARNESS_PULL=if-missing (needs a registry)"
                .into(),
        );
    }
    help.push("or run the stack without containers: `--backend native`".into());
    Error::Prerequisite {
        what,
        help: help.join("\n  = help: "),
    }
}

/// Whether the container backend can run the manifest with what this machine has: an engine
/// answers and every image is present locally (nothing is pulled). `Err` says what is missing.
pub async fn available(manifest: &Manifest) -> Result<(), String> {
    let docker = connect().await?;
    let plan = plan(manifest, &process_env).map_err(|e| e.to_string())?;
    let mut missing = Vec::new();
    for image in plan.by_image().keys() {
        match image_present(&docker, image).await {
            Ok(true) => {}
            Ok(false) => missing.push(format!("`{image}`")),
            Err(e) => return Err(format!("cannot inspect image `{image}`: {e}")),
        }
    }
    for s in &plan.unset {
        missing.push(format!("an image for service `{s}` (it names none)"));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("not present locally: {}", missing.join(", ")))
    }
}

// ------------------------------------------------------------------------- removal, reaping

/// What a removal removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Containers.
    pub containers: usize,
    /// Networks.
    pub networks: usize,
    /// Volumes.
    pub volumes: usize,
}

impl Removed {
    /// Whether nothing was removed.
    pub fn is_empty(&self) -> bool {
        *self == Removed::default()
    }
}

fn label_filter(label: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![label.to_string()])])
}

async fn remove_container(docker: &Docker, id: &str) -> Result<bool, String> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(true),
        // Gone already, or being removed by someone else.
        Err(e) if matches!(status_of(&e), Some(404) | Some(409)) => Ok(false),
        Err(e) => Err(format!("removing container {id}: {e}")),
    }
}

/// Removes every container, network and (with `volumes`) volume carrying `label`
/// (`key=value`). Containers first, listing again until none is left (a start may be creating
/// one right now), then networks.
pub async fn remove_labelled(
    docker: &Docker,
    label: &str,
    volumes: bool,
) -> Result<Removed, String> {
    let mut removed = Removed::default();
    let mut errors = Vec::new();
    for pass in 0..20 {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&label_filter(label))
            .build();
        let list = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| e.to_string())?;
        let ids: Vec<String> = list.into_iter().filter_map(|c| c.id).collect();
        if ids.is_empty() {
            break;
        }
        if pass > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for result in
            futures::future::join_all(ids.iter().map(|id| remove_container(docker, id))).await
        {
            match result {
                Ok(true) => removed.containers += 1,
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    let options = ListNetworksOptionsBuilder::new()
        .filters(&label_filter(label))
        .build();
    let networks = docker
        .list_networks(Some(options))
        .await
        .map_err(|e| e.to_string())?;
    for network in networks {
        let Some(id) = network.id else { continue };
        let mut attempt = 0;
        loop {
            match docker.remove_network(&id).await {
                Ok(()) => {
                    removed.networks += 1;
                    break;
                }
                Err(e) if status_of(&e) == Some(404) => break,
                // Endpoints of containers just removed may linger for a moment.
                Err(_) if attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    errors.push(format!("removing network {id}: {e}"));
                    break;
                }
            }
        }
    }
    if volumes {
        let options = ListVolumesOptionsBuilder::new()
            .filters(&label_filter(label))
            .build();
        let list = docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| e.to_string())?;
        for volume in list.volumes.unwrap_or_default() {
            let options = RemoveVolumeOptionsBuilder::new().force(true).build();
            match docker.remove_volume(&volume.name, Some(options)).await {
                Ok(()) => removed.volumes += 1,
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => errors.push(format!("removing volume {}: {e}", volume.name)),
            }
        }
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(errors.join("; "))
    }
}

/// Removes everything of one run, from synchronous code.
pub fn remove_run_blocking(run_id: &str) -> Result<Removed, String> {
    let label = format!("{LABEL_RUN_ID}={run_id}");
    blocking(|docker| async move { remove_labelled(&docker, &label, true).await })?
}

/// Removes every container, network and volume of the harness (`org.harness.managed=true`),
/// of live runs too (`harness down --all`).
pub async fn remove_all() -> Result<Removed, String> {
    let docker = connect().await?;
    remove_labelled(&docker, &format!("{LABEL_MANAGED}=true"), true).await
}

/// When a process started, in unix seconds (`None` if it is gone or a zombie).
fn process_started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    let ticks: u64 = fields.get(19)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    // /proc reports clock ticks of USER_HZ, 100 on Linux.
    Some(boot + ticks / 100)
}

/// Whether the run that created a resource (by its labels) may still be using it. Runs of other
/// machines count as alive; a run is dead when its owner process is gone, when its pid now
/// belongs to a process started after the run, or when its run directory is gone.
pub fn run_alive(labels: &HashMap<String, String>) -> bool {
    if labels.get(LABEL_HOST).map(String::as_str) != Some(hostname().as_str()) {
        return true;
    }
    let Some(pid) = labels
        .get(LABEL_OWNER_PID)
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return true;
    };
    let Some(process_start) = process_started(pid) else {
        return false;
    };
    if let Some(run_start) = labels
        .get(LABEL_STARTED_AT)
        .and_then(|t| t.parse::<u64>().ok())
    {
        if process_start > run_start + 2 {
            return false;
        }
    }
    match labels.get(LABEL_RUN_DIR) {
        Some(dir) => Path::new(dir).exists(),
        None => true,
    }
}

/// Removes the containers, networks and volumes of runs whose owner died (killed with
/// `kill -9`, say). Returns the ids of the runs reaped.
pub async fn reap_dead_runs() -> Result<Vec<String>, String> {
    let docker = connect().await?;
    reap_dead_runs_with(&docker).await
}

async fn reap_dead_runs_with(docker: &Docker) -> Result<Vec<String>, String> {
    let managed = label_filter(&format!("{LABEL_MANAGED}=true"));
    let mut runs: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
    let mut note = |labels: HashMap<String, String>| {
        if let Some(id) = labels.get(LABEL_RUN_ID).cloned() {
            runs.entry(id).or_insert(labels);
        }
    };
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&managed)
        .build();
    for c in docker
        .list_containers(Some(options))
        .await
        .map_err(|e| e.to_string())?
    {
        note(c.labels.unwrap_or_default());
    }
    let options = ListNetworksOptionsBuilder::new().filters(&managed).build();
    for n in docker
        .list_networks(Some(options))
        .await
        .map_err(|e| e.to_string())?
    {
        note(n.labels.unwrap_or_default());
    }
    let options = ListVolumesOptionsBuilder::new().filters(&managed).build();
    for v in docker
        .list_volumes(Some(options))
        .await
        .map_err(|e| e.to_string())?
        .volumes
        .unwrap_or_default()
    {
        note(v.labels);
    }
    let mut reaped = Vec::new();
    for (id, labels) in runs {
        if run_alive(&labels) {
            continue;
        }
        remove_labelled(docker, &format!("{LABEL_RUN_ID}={id}"), true).await?;
        reaped.push(id);
    }
    Ok(reaped)
}

// ---------------------------------------------------------------------------------- backend

/// State shared by the backend, its instances and its cleanup hook.
#[derive(Debug, Default)]
struct Shared {
    /// Container creations under way (the Ctrl-C hook waits for them, then removes).
    creating: AtomicUsize,
    /// Everything of the run was removed; instances need not remove themselves.
    swept: AtomicBool,
    /// Something was created in the engine (a network, a container), so teardown has work.
    touched: AtomicBool,
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
    critical: BTreeSet<String>,
    shared: Arc<Shared>,
    hook: u64,
    /// Where the workspace's binaries it mounts are.
    bin_dir: PathBuf,
}

impl Container {
    /// A container backend for one run. It registers a cleanup hook that removes the run's
    /// containers and network on Ctrl-C. The workspace's binaries it mounts are those in
    /// `bin_dir`.
    pub fn new(run: &RunDir, manifest: &Manifest, bin_dir: &Path) -> Container {
        let shared = Arc::new(Shared::default());
        let hook = {
            let shared = shared.clone();
            let run_id = run.id.clone();
            cleanup::register_hook(move || {
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
            critical: estimated_critical_path(manifest),
            shared,
            hook,
            bin_dir: bin_dir.to_path_buf(),
        }
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

    async fn create(
        &self,
        docker: &Docker,
        req: &StartRequest<'_>,
    ) -> Result<ContainerInstance, Error> {
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
        let render = |t: &crate::template::Template| {
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
        if cmd.is_empty() && service.kind == Kind::Postgres {
            cmd = POSTGRES_SETTINGS.iter().map(|s| s.to_string()).collect();
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
        if let (Some(inside), true) = (data_dir(service.kind), data_on_host(&process_env)) {
            let host = self.run_dir.join(format!("{}-data", service.name));
            cleanup::guarded(|| std::fs::create_dir(&host))
                .map_err(|e| fail(format!("creating {}: {e}", host.display())))?;
            binds
                .get_or_insert_with(Vec::new)
                .push(format!("{}:{inside}", host.display()));
        }
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint,
            hostname: Some(service.name.clone()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: (!cmd.is_empty()).then_some(cmd),
            stop_signal,
            labels: Some(labels),
            exposed_ports: Some(bindings.keys().cloned().collect()),
            host_config: Some(HostConfig {
                network_mode: Some(self.network.clone()),
                // Servers outside the engine (CI service containers, the external backend)
                // are on the host: reached by this name (see `mixed::reach`).
                extra_hosts: Some(vec![format!("{}:host-gateway", super::mixed::HOST_GATEWAY)]),
                binds,
                port_bindings: Some(bindings),
                publish_all_ports: Some(false),
                cpu_shares: boosted.then_some(CRITICAL_CPU_SHARES),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network.clone(),
                    EndpointSettings {
                        aliases: Some(vec![service.name.clone()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let name = format!("h-{}-{}", self.short, service.name);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let id = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| fail(format!("cannot create a container from `{image}`: {e}")))?
            .id;
        let mut instance = ContainerInstance {
            service: service.name.clone(),
            name,
            id,
            docker: docker.clone(),
            endpoint: Endpoint {
                host: "127.0.0.1".into(),
                ..internal.clone()
            },
            internal,
            watch: Arc::new(Watch::default()),
            watcher: None,
            boosted,
            paused: false,
            removed: false,
            shared: self.shared.clone(),
        };
        instance.start().await?;
        Ok(instance)
    }
}

/// The variable that carries a bare base image's entrypoint script into its container.
pub(crate) const ENTRYPOINT_ENV: &str = "HARNESS_ENTRYPOINT";

/// The entrypoint of a built-in server on a bare base image: the script from
/// [`ENTRYPOINT_ENV`] written to a file (the postgres script runs itself again as its user),
/// then run with the command as its arguments.
pub(crate) const BASE_RUNNER: [&str; 4] = [
    "/bin/bash",
    "-c",
    "printf '%s' \"$HARNESS_ENTRYPOINT\" >/usr/local/bin/docker-entrypoint.sh && exec /bin/bash /usr/local/bin/docker-entrypoint.sh \"$@\"",
    "docker-entrypoint",
];

/// What an image built per server used to carry, given at run time instead to a built-in
/// server whose image is a bare tag of the local base image (`fixtures/images/build.sh` tags
/// the base rather than spend half a minute or more on a `docker build` of a few kB): its
/// entrypoint script and its stop signal (SIGINT is postgres' fast shutdown; SIGTERM would
/// wait for every client to disconnect).
pub(crate) fn base_entrypoint(kind: Kind) -> Option<(&'static str, Option<&'static str>)> {
    match kind {
        Kind::Postgres => Some((include_str!("entrypoints/postgres.sh"), Some("SIGINT"))),
        Kind::Redis => Some((include_str!("entrypoints/redis.sh"), None)),
        Kind::Rabbitmq => Some((include_str!("entrypoints/rabbitmq.sh"), None)),
        Kind::Service => None,
    }
}

/// The built-in servers of `manifest` whose image is a bare tag of the local base image: it
/// carries the base's `org.harness.base-suite` label and no entrypoint of its own (an official
/// image, or one built per server, has one and runs as it is).
pub async fn bare_base_services(
    docker: &Docker,
    manifest: &Manifest,
    plan: &ImagePlan,
) -> BTreeSet<String> {
    let mut bare = BTreeSet::new();
    for (image, services) in plan.by_image() {
        let Ok(inspect) = docker.inspect_image(image).await else {
            continue;
        };
        let config = inspect.config.unwrap_or_default();
        let base = config
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("org.harness.base-suite"));
        let own_entrypoint = config.entrypoint.as_ref().is_some_and(|e| !e.is_empty());
        if base && !own_entrypoint {
            bare.extend(
                services
                    .iter()
                    .filter(|s| {
                        manifest
                            .service(s)
                            .is_some_and(|m| base_entrypoint(m.kind).is_some())
                    })
                    .map(|s| s.to_string()),
            );
        }
    }
    bare
}

/// Where a built-in server keeps its data inside its container (the official images' and ours).
fn data_dir(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Postgres => Some("/var/lib/postgresql/data"),
        Kind::Rabbitmq => Some("/var/lib/rabbitmq"),
        Kind::Redis | Kind::Service => None,
    }
}

/// Whether the data directories of servers are bind-mounted from the run directory (in memory
/// under `/dev/shm`, see [`cleanup::runs_root`]) instead of written to the container's own
/// filesystem: initialising a cluster on fuse-overlayfs took seconds. Not a tmpfs mount of the
/// engine's: that is emptied when the container stops, and a stopped server keeps its data.
/// Only where the engine sees this machine's files (a local socket) and as root, who can remove
/// what the servers' users wrote; `HARNESS_DATA_ON_HOST=0` turns it off.
fn data_on_host(env: &dyn Fn(&str) -> Option<String>) -> bool {
    if env("HARNESS_DATA_ON_HOST").is_some_and(|v| v.trim() == "0") {
        return false;
    }
    let local = env("DOCKER_HOST").is_none_or(|h| h.is_empty() || h.starts_with("unix://"));
    local && nix::unistd::geteuid().is_root()
}

/// Server settings of the postgres container when the manifest gives no `args`: durability is
/// traded for speed, as in the native backend (test data only).
pub(crate) const POSTGRES_SETTINGS: &[&str] = &[
    "-c",
    "fsync=off",
    "-c",
    "synchronous_commit=off",
    "-c",
    "full_page_writes=off",
    "-c",
    "max_connections=200",
];

/// The environment the official images of the built-in servers take their settings from.
pub(crate) fn builtin_env(kind: Kind, ep: &Endpoint) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            env.push((k.to_string(), v.clone()));
        }
    };
    match kind {
        Kind::Postgres => {
            put("POSTGRES_USER", &ep.user);
            put("POSTGRES_PASSWORD", &ep.password);
            put("POSTGRES_DB", &ep.database);
        }
        Kind::Rabbitmq => {
            put("RABBITMQ_DEFAULT_USER", &ep.user);
            put("RABBITMQ_DEFAULT_PASS", &ep.password);
            put("RABBITMQ_DEFAULT_VHOST", &ep.database);
        }
        Kind::Redis | Kind::Service => {}
    }
    env
}

#[async_trait]
impl Backend for Container {
    fn kind(&self) -> BackendKind {
        BackendKind::Container
    }

    async fn preflight(&self, manifest: &Manifest) -> Result<(), Error> {
        let docker = self.docker().await?;
        let plan = plan(manifest, &process_env)?;
        // Independent, so at once: the network is removed again by `Drop` if images are missing.
        let (reaped, missing, network) = tokio::join!(
            reap_dead_runs_with(docker),
            provide_images(docker, &plan),
            self.create_network(docker)
        );
        if let Err(e) = reaped {
            eprintln!("harness: removing what dead runs left in the engine failed: {e}");
        }
        if !missing.is_empty() || !plan.unset.is_empty() {
            return Err(images_error(&plan, &missing));
        }
        network?;
        *self.mounts.lock().unwrap_or_else(|p| p.into_inner()) =
            mounted_binaries(manifest, &plan, &process_env, &self.bin_dir);
        *self.bare.lock().unwrap_or_else(|p| p.into_inner()) =
            bare_base_services(docker, manifest, &plan).await;
        *self.images.lock().unwrap_or_else(|p| p.into_inner()) =
            plan.images.into_iter().map(|(s, c)| (s, c.image)).collect();
        Ok(())
    }

    async fn start(&self, req: StartRequest<'_>) -> Result<Box<dyn Instance>, Error> {
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
            self.create(docker, &req).await
        };
        self.shared.creating.fetch_sub(1, Ordering::SeqCst);
        Ok(Box::new(result?))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        cleanup::unregister_hook(self.hook);
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

// --------------------------------------------------------------------------------- instance

/// How a container ended, written by the task that waits for it.
#[derive(Debug, Default)]
struct Watch {
    exit: Mutex<Option<String>>,
    /// Bumped on every start, so a waiter of an earlier start cannot report.
    generation: AtomicU64,
}

/// One service as a container.
#[derive(Debug)]
struct ContainerInstance {
    service: String,
    name: String,
    id: String,
    docker: Docker,
    endpoint: Endpoint,
    internal: Endpoint,
    watch: Arc<Watch>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// Runs with [`CRITICAL_CPU_SHARES`] until it is ready.
    boosted: bool,
    paused: bool,
    removed: bool,
    shared: Arc<Shared>,
}

impl ContainerInstance {
    fn fail(&self, message: impl Into<String>) -> Error {
        Error::service(&self.service, message)
    }

    /// Reads the host ports the engine published, once they are all there. `Ok(Some(status))`
    /// when the container stopped before that.
    async fn refresh_ports(&mut self) -> Result<Option<String>, Error> {
        for _ in 0..100 {
            let info = self
                .docker
                .inspect_container(&self.id, None::<InspectContainerOptions>)
                .await
                .map_err(|e| self.fail(format!("cannot inspect container {}: {e}", self.name)))?;
            let state = info.state.clone().unwrap_or_default();
            let published = info
                .network_settings
                .and_then(|n| n.ports)
                .unwrap_or_default();
            let mut ports = BTreeMap::new();
            for (name, port) in &self.internal.ports {
                let host = published
                    .get(&format!("{port}/tcp"))
                    .cloned()
                    .flatten()
                    .unwrap_or_default()
                    .iter()
                    .find_map(|b| {
                        b.host_port
                            .as_deref()?
                            .parse::<u16>()
                            .ok()
                            .filter(|p| *p != 0)
                    });
                if let Some(h) = host {
                    ports.insert(name.clone(), h);
                }
            }
            if ports.len() == self.internal.ports.len() {
                self.endpoint.ports = ports;
                return Ok(None);
            }
            if state.running != Some(true) {
                return Ok(Some(format!(
                    "exit code {}",
                    state.exit_code.unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(self.fail("the engine published no host ports for the container"))
    }

    /// Waits in the background for the container to stop, and records how it ended.
    fn watch(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        let generation = self.watch.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *self.watch.exit.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let (docker, id, watch) = (self.docker.clone(), self.id.clone(), self.watch.clone());
        self.watcher = Some(tokio::spawn(async move {
            let status = loop {
                let options = WaitContainerOptionsBuilder::new()
                    .condition("not-running")
                    .build();
                let mut wait = docker.wait_container(&id, Some(options));
                match wait.next().await {
                    Some(Ok(r)) => break format!("exit code {}", r.status_code),
                    Some(Err(DockerError::DockerContainerWaitError { code, error }))
                        if error.is_empty() =>
                    {
                        break format!("exit code {code}")
                    }
                    Some(Err(DockerError::DockerContainerWaitError { code, error })) => {
                        break format!("exit code {code}: {error}")
                    }
                    Some(Err(e)) if status_of(&e) == Some(404) => {
                        break "the container was removed".to_string()
                    }
                    // The request timed out or the connection dropped: ask again.
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            if watch.generation.load(Ordering::SeqCst) == generation {
                *watch.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
            }
        }));
    }

    async fn wait_stopped(&self) {
        for _ in 0..500 {
            match self
                .docker
                .inspect_container(&self.id, None::<InspectContainerOptions>)
                .await
            {
                Ok(info) if info.state.as_ref().and_then(|s| s.running) == Some(true) => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn thaw(&mut self) {
        if self.paused {
            let _ = self.docker.unpause_container(&self.id).await;
            self.paused = false;
        }
    }
}

#[async_trait]
impl Instance for ContainerInstance {
    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    fn internal_endpoint(&self) -> Endpoint {
        self.internal.clone()
    }

    async fn on_ready(&mut self) {
        if std::mem::take(&mut self.boosted) {
            // In the background: the stack-up need not wait for it.
            let (docker, id) = (self.docker.clone(), self.id.clone());
            tokio::spawn(async move {
                let body = ContainerUpdateBody {
                    cpu_shares: Some(DEFAULT_CPU_SHARES),
                    ..Default::default()
                };
                let _ = docker.update_container(&id, body).await;
            });
        }
    }

    fn exited(&mut self) -> Option<String> {
        // Never blocks: the waiter holds the lock only to write.
        self.watch.exit.try_lock().ok().and_then(|e| e.clone())
    }

    fn log_tail(&self, n: usize) -> Vec<String> {
        log_tail(&self.id, n)
    }

    fn log_source(&self) -> Option<crate::attach::LogSource> {
        Some(crate::attach::LogSource::Container(self.id.clone()))
    }

    async fn stop(&mut self) -> Result<(), Error> {
        self.thaw().await;
        let options = StopContainerOptionsBuilder::new()
            .t(STOP_GRACE_SECS)
            .build();
        match self.docker.stop_container(&self.id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(self.fail(format!("stopping container {}: {e}", self.name))),
        }
    }

    async fn start(&mut self) -> Result<(), Error> {
        match self
            .docker
            .start_container(&self.id, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(304) => {}
            Err(e) => return Err(self.fail(format!("starting container {}: {e}", self.name))),
        }
        // A started-again container gets new host ports.
        match self.refresh_ports().await? {
            None => self.watch(),
            // Exited already: `exited()` says so, and the caller's probe reports it with the log.
            Some(status) => {
                if let Some(w) = self.watcher.take() {
                    w.abort();
                }
                self.watch.generation.fetch_add(1, Ordering::SeqCst);
                *self.watch.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
            }
        }
        Ok(())
    }

    async fn kill(&mut self) -> Result<(), Error> {
        self.thaw().await;
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        match self.docker.kill_container(&self.id, Some(options)).await {
            Ok(()) => {}
            // Not running.
            Err(e) if status_of(&e) == Some(409) => {}
            Err(e) => return Err(self.fail(format!("killing container {}: {e}", self.name))),
        }
        self.wait_stopped().await;
        Ok(())
    }

    async fn pause(&mut self) -> Result<(), Error> {
        self.docker
            .pause_container(&self.id)
            .await
            .map_err(|e| self.fail(format!("pausing container {}: {e}", self.name)))?;
        self.paused = true;
        Ok(())
    }

    async fn unpause(&mut self) -> Result<(), Error> {
        self.docker
            .unpause_container(&self.id)
            .await
            .map_err(|e| self.fail(format!("unpausing container {}: {e}", self.name)))?;
        self.paused = false;
        Ok(())
    }

    async fn remove(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        if !self.removed {
            // Removal is forced: a graceful stop first would only cost time for throwaway data.
            let _ = remove_container(&self.docker, &self.id).await;
            self.removed = true;
        }
    }
}

impl Drop for ContainerInstance {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        if !self.removed && !self.shared.swept.load(Ordering::SeqCst) {
            let id = self.id.clone();
            let _ = blocking(|docker| async move { remove_container(&docker, &id).await });
        }
    }
}

/// The last `n` lines of a container's output (stdout and stderr).
pub fn log_tail(id: &str, n: usize) -> Vec<String> {
    let id = id.to_string();
    let tail = n.to_string();
    let text = blocking(|docker| async move {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(false)
            .tail(&tail)
            .build();
        let mut logs = docker.logs(&id, Some(options));
        let mut bytes = Vec::new();
        while let Some(Ok(chunk)) = logs.next().await {
            bytes.extend_from_slice(&chunk.into_bytes());
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    match text {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..]
                .iter()
                .map(|s| s.to_string())
                .collect()
        }
        Err(e) => vec![format!("(cannot read the container's log: {e})")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Manifest {
        let source = format!(
            r#"{extra}
[services.postgres]
kind = "postgres"

[services.cache-store]
kind = "redis"

[services.orders]
kind = "service"
image = "harness-local/orders:latest"
ports = {{ http = 8080 }}

[services.tool]
kind = "service"
command = ["sleep", "1"]
"#
        );
        Manifest::parse(Path::new("m.toml"), &source).unwrap()
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn images(plan: &ImagePlan) -> Vec<(&str, &str)> {
        plan.images
            .iter()
            .map(|(s, c)| (s.as_str(), c.image.as_str()))
            .collect()
    }

    #[test]
    fn defaults_are_the_official_images_and_if_missing() {
        let plan = plan(&manifest(""), &env(&[])).unwrap();
        assert_eq!(plan.pull, PullPolicy::IfMissing);
        assert_eq!(
            images(&plan),
            [
                ("cache-store", "redis:7"),
                ("orders", "harness-local/orders:latest"),
                ("postgres", "postgres:16")
            ]
        );
        assert_eq!(plan.unset, ["tool"]);
        assert_eq!(
            plan.images["postgres"].from,
            "the default for `postgres` services"
        );
    }

    #[test]
    fn the_prefix_goes_in_front_of_every_image_but_not_of_replacements() {
        let m = manifest("[stack]\nimage-prefix = \"mirror:5000\"\n[stack.images]\ncache-store = \"local/redis:7\"\n");
        let plan = plan(&m, &env(&[])).unwrap();
        assert_eq!(
            images(&plan),
            [
                ("cache-store", "local/redis:7"),
                ("orders", "mirror:5000/harness-local/orders:latest"),
                ("postgres", "mirror:5000/postgres:16")
            ]
        );
    }

    #[test]
    fn the_environment_overrides_the_manifest() {
        let m = manifest("[stack]\npull = \"always\"\nimage-prefix = \"mirror:5000\"\n[stack.images]\npostgres = \"x/pg:1\"\n");
        let plan = plan(
            &m,
            &env(&[
                ("HARNESS_PULL", "never"),
                ("HARNESS_IMAGE_PREFIX", "other.mirror/"),
                ("HARNESS_IMAGE_POSTGRES", "harness-local/postgres:15"),
                ("HARNESS_IMAGE_CACHE_STORE", "harness-local/redis:7"),
            ]),
        )
        .unwrap();
        assert_eq!(plan.pull, PullPolicy::Never);
        assert_eq!(
            images(&plan),
            [
                ("cache-store", "harness-local/redis:7"),
                ("orders", "other.mirror/harness-local/orders:latest"),
                ("postgres", "harness-local/postgres:15")
            ]
        );
        assert_eq!(plan.images["postgres"].from, "HARNESS_IMAGE_POSTGRES");
        assert_eq!(plan.by_image().len(), 3);
    }

    #[test]
    fn bad_environment_values_are_usage_errors() {
        let m = manifest("");
        let err = plan(&m, &env(&[("HARNESS_PULL", "sometimes")])).unwrap_err();
        assert!(err
            .to_string()
            .contains("HARNESS_PULL is `sometimes`; use `never`, `if-missing` or `always`"));
        assert_eq!(err.exit_code(), crate::exit_code::INVALID_INPUT);
        let err = plan(&m, &env(&[("HARNESS_IMAGE_POSTGRES", "a b")])).unwrap_err();
        assert!(
            err.to_string().contains("HARNESS_IMAGE_POSTGRES is `a b`"),
            "{err}"
        );
        let err = plan(&m, &env(&[("HARNESS_IMAGE_PREFIX", "https://m")])).unwrap_err();
        assert!(err.to_string().contains("HARNESS_IMAGE_PREFIX"), "{err}");
    }

    #[test]
    fn the_missing_images_error_lists_every_image_and_how_to_provide_it() {
        let m = manifest("[stack]\npull = \"never\"\n");
        let plan = plan(&m, &env(&[])).unwrap();
        let missing: Vec<Unavailable> = ["postgres:16", "harness-local/orders:latest"]
            .iter()
            .map(|i| Unavailable {
                image: i.to_string(),
                services: plan.by_image()[i].iter().map(|s| s.to_string()).collect(),
                reason: "not present locally, and the pull policy is `never`".into(),
            })
            .collect();
        let err = images_error(&plan, &missing);
        assert_eq!(err.exit_code(), crate::exit_code::PREREQUISITE_MISSING);
        let text = err.to_string();
        assert!(text.contains("  - image `postgres:16` (service `postgres`; the default for `postgres` services): not present locally, and the pull policy is `never`"), "{text}");
        assert!(
            text.contains(
                "  - image `harness-local/orders:latest` (service `orders`; the manifest)"
            ),
            "{text}"
        );
        assert!(
            text.contains("  - an image for service `tool`: it names none"),
            "{text}"
        );
        assert!(text.contains("fixtures/images/build.sh"), "{text}");
        assert!(text.contains("fixtures/images/local.env"), "{text}");
        assert!(text.contains("HARNESS_IMAGE_ORDERS=<image:tag>, HARNESS_IMAGE_POSTGRES=<image:tag>, HARNESS_IMAGE_TOOL=<image:tag>"), "{text}");
        assert!(text.contains("HARNESS_PULL=if-missing"), "{text}");
    }

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

    #[test]
    fn image_variables_are_upper_case_with_underscores() {
        assert_eq!(image_var("cache-store"), "HARNESS_IMAGE_CACHE_STORE");
    }

    #[test]
    fn builtin_servers_get_the_official_images_environment() {
        let ep = Endpoint {
            kind: Kind::Postgres,
            host: "postgres".into(),
            ports: BTreeMap::from([("postgres".into(), 5432)]),
            primary: Some("postgres".into()),
            bind_host: "0.0.0.0".into(),
            user: Some("u".into()),
            password: Some("p".into()),
            database: Some("app".into()),
        };
        let env = builtin_env(Kind::Postgres, &ep);
        assert_eq!(
            env,
            [
                ("POSTGRES_USER", "u"),
                ("POSTGRES_PASSWORD", "p"),
                ("POSTGRES_DB", "app")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let rabbit = Endpoint {
            database: None,
            ..ep.clone()
        };
        assert_eq!(builtin_env(Kind::Rabbitmq, &rabbit).len(), 2);
        assert!(builtin_env(Kind::Redis, &ep).is_empty());
    }

    #[test]
    fn runs_of_dead_owners_are_dead() {
        let me = std::process::id();
        let started = unix_now();
        let dir = std::env::temp_dir();
        let alive = run_labels("x", Some(&dir), started);
        assert!(run_alive(&alive));
        let mut gone_dir = alive.clone();
        gone_dir.insert(LABEL_RUN_DIR.into(), "/nonexistent/harness-run".into());
        assert!(!run_alive(&gone_dir));
        let mut reused = alive.clone();
        reused.insert(LABEL_STARTED_AT.into(), "1000".into());
        assert!(
            !run_alive(&reused),
            "a pid that started after the run is another process"
        );
        let mut dead = alive.clone();
        dead.insert(LABEL_OWNER_PID.into(), "999999999".into());
        assert!(!run_alive(&dead));
        let mut elsewhere = dead.clone();
        elsewhere.insert(LABEL_HOST.into(), "another-machine".into());
        assert!(
            run_alive(&elsewhere),
            "runs of other machines are not judged"
        );
        assert_eq!(alive[LABEL_OWNER_PID], me.to_string());
        assert_eq!(alive[LABEL_MANAGED], "true");
    }
}
