//! `harness bench compose`: a cold stack-up on the container backend against `docker-compose`
//! starting the same stack, both from nothing to every service ready, both torn down after.
//!
//! The compose file is generated from the manifest into a temporary directory: the same images
//! (as the container backend resolves them), environment, commands and published loopback
//! ports, `depends_on` with `condition: service_healthy` (`service_started` for `started`
//! dependencies), and a healthcheck per service probing what the harness probes, every second
//! and, in a second file, every 250 ms (docker-compose's best practical setting here):
//! `pg_isready` for PostgreSQL, `redis-cli ping` for Redis, a TCP connect to AMQP for
//! RabbitMQ, a TCP connect or an HTTP GET (via bash's `/dev/tcp`) for services. docker-compose
//! v1 has no `--wait`, so the clock runs from `docker-compose up -d` until every container
//! reports healthy (polled every 20 ms); then `docker-compose down -v`.
//!
//! Alongside: each service's solo ready time (a sequential start, dependencies already up), the
//! critical path of those, and the per-service ready times inside the parallel start.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::engine::backend::container::{self, ImagePlan, LABEL_RUN_ID};
use crate::engine::backend::BackendKind;
use crate::engine::error::Error;
use crate::engine::stack::{Stack, StackOptions};
use crate::manifest::{Condition, Manifest, ProbeSpec, Service};
use crate::model::endpoint::Endpoint;
use crate::settings::Settings;
use crate::Graph;

/// Results of the comparison.
#[derive(Debug, Clone)]
pub struct ComposeReport {
    /// Runs of each mode.
    pub runs: usize,
    /// `docker-compose version --short`.
    pub compose_version: String,
    /// Median solo ready time per service (container backend).
    pub solo: BTreeMap<String, Duration>,
    /// Median ready time per service inside the parallel start.
    pub in_stack: BTreeMap<String, Duration>,
    /// The critical path of solo times.
    pub critical_path: (Vec<String>, Duration),
    /// Cold stack-up wall times on the container backend.
    pub harness: Vec<Duration>,
    /// Of those, the time before the scheduler started (engine, images, network, reaping).
    pub preflight: Vec<Duration>,
    /// Cold `docker-compose up -d` until every service is healthy (healthchecks every second).
    pub compose: Vec<Duration>,
    /// The same with healthchecks every 250 ms.
    pub compose_fast: Vec<Duration>,
    /// Median time from `docker-compose up` until each service was first seen healthy.
    pub compose_ready: BTreeMap<String, Duration>,
    /// Median time from the start of the harness stack-up until each service was ready.
    pub harness_ready: BTreeMap<String, Duration>,
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        0.0
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

impl ComposeReport {
    /// Median harness stack-up.
    pub fn harness_median(&self) -> Duration {
        median(&self.harness)
    }

    /// Median compose stack-up, the better of the two healthcheck intervals.
    pub fn compose_median(&self) -> Duration {
        let fast = median(&self.compose_fast);
        let slow = median(&self.compose);
        if fast.is_zero() {
            slow
        } else {
            fast.min(slow)
        }
    }

    /// Harness over the better compose run (target: at most 0.6).
    pub fn vs_compose(&self) -> f64 {
        ratio(self.harness_median(), self.compose_median())
    }

    /// Harness over the critical path (target: at most 1.1).
    pub fn vs_critical_path(&self) -> f64 {
        ratio(self.harness_median(), self.critical_path.1)
    }

    /// The report as a table with ratios.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cold stack-up: container backend vs docker-compose {} ({} runs of each)\n",
            self.compose_version, self.runs
        );
        let _ = writeln!(
            out,
            "  {:<12} {:>10} {:>14} {:>18} {:>18}",
            "service", "solo (ms)", "in stack (ms)", "harness: up at", "compose: up at"
        );
        for (name, solo) in &self.solo {
            let get = |m: &BTreeMap<String, Duration>| ms(m.get(name).copied().unwrap_or_default());
            let _ = writeln!(
                out,
                "  {name:<12} {:>10.0} {:>14.0} {:>18.0} {:>18.0}",
                ms(*solo),
                get(&self.in_stack),
                get(&self.harness_ready),
                get(&self.compose_ready)
            );
        }
        let _ = writeln!(
            out,
            "  (solo: launch to ready, started alone; in stack: launch to ready in the parallel start;\n   up at: since the stack-up began)"
        );
        let list = |v: &[Duration]| {
            v.iter()
                .map(|d| format!("{:.0}", ms(*d)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  critical path (solo)     {:>8.0} ms  ({})",
            ms(self.critical_path.1),
            self.critical_path.0.join(" -> ")
        );
        let _ = writeln!(
            out,
            "  harness stack-up         {:>8.0} ms  (median of {})",
            ms(self.harness_median()),
            list(&self.harness)
        );
        let _ = writeln!(
            out,
            "    of which preflight     {:>8.0} ms  (engine, images, network, reaping dead runs)",
            ms(median(&self.preflight))
        );
        let _ = writeln!(
            out,
            "  docker-compose up, 1 s   {:>8.0} ms  (median of {})",
            ms(median(&self.compose)),
            list(&self.compose)
        );
        let _ = writeln!(
            out,
            "  docker-compose up, 250 ms{:>8.0} ms  (median of {})",
            ms(median(&self.compose_fast)),
            list(&self.compose_fast)
        );
        let _ = writeln!(out);
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        let (c, p) = (self.vs_compose(), self.vs_critical_path());
        let _ = writeln!(
            out,
            "  harness / better compose = {c:.2}  (target <= 0.60: {})",
            verdict(c <= 0.60)
        );
        let _ = writeln!(
            out,
            "  harness / critical path  = {p:.2}  (target <= 1.10: {})",
            verdict(p <= 1.10)
        );
        out
    }
}

/// Credentials of the compose stack (fixed; the harness generates its own per run).
/// The user a kind makes of the fixed token `bench`.
#[cfg(test)]
const USER: &str = "ubench";
const PASSWORD: &str = "bench-password";

/// Endpoints as services see each other on the compose network: name and container port.
fn compose_endpoints(manifest: &Manifest) -> BTreeMap<String, Endpoint> {
    manifest
        .services
        .iter()
        .map(|s| {
            // The kind completes the manifest's credentials; its "random" ones are fixed here.
            // A kind names its random user `u<token>`: `ubench`.
            let fixed = |n: usize| if n < 24 { "bench" } else { PASSWORD }.to_string();
            let creds = match s.kind.server() {
                Some(server) => server.credentials(&s.credentials, &fixed),
                None => s.credentials.clone(),
            };
            let ep = Endpoint {
                kind: s.kind,
                host: s.name.clone(),
                ports: s.ports.clone(),
                primary: s.primary_port().map(str::to_string),
                bind_host: "0.0.0.0".into(),
                user: creds.user,
                password: creds.password,
                database: creds.database,
            };
            (s.name.clone(), ep)
        })
        .collect()
}

/// Compose interpolates `$VAR`; a literal `$` is `$$`.
fn escape(s: &str) -> String {
    s.replace('$', "$$")
}

fn healthcheck(service: &Service, ep: &Endpoint, interval: &str) -> Option<Value> {
    let tcp = |port: u16| format!("bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'");
    let port = |name: Option<&str>| ep.port(name).unwrap_or_default();
    let test = match &service.probe {
        ProbeSpec::None | ProbeSpec::Exit => return None,
        ProbeSpec::Exec(command) => {
            return Some(json!({
                "test": std::iter::once("CMD").chain(command.iter().map(|c| c.as_str())).map(escape).collect::<Vec<_>>(),
                "interval": interval,
                "timeout": "2s",
                "retries": 120,
            }))
        }
        ProbeSpec::Protocol(kind) => kind
            .server()
            .zip(ep.target().ok())
            .and_then(|(server, target)| server.healthcheck(&target))
            .unwrap_or_else(|| tcp(port(None))),
        ProbeSpec::Tcp { port: p } => tcp(port(Some(p))),
        ProbeSpec::Http { path, port: p } => format!(
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{} && printf \"GET {path} HTTP/1.0\\r\\n\\r\\n\" >&3 && head -n1 <&3 | grep -q \" 2[0-9][0-9] \"'",
            port(Some(p))
        ),
    };
    Some(json!({
        "test": ["CMD-SHELL", escape(&test)],
        "interval": interval,
        "timeout": "2s",
        "retries": 120,
    }))
}

/// How the container backend would run the manifest, which the compose file copies.
#[derive(Debug)]
pub struct Runtime {
    /// The images, as the container backend resolves them.
    pub plan: ImagePlan,
    /// Labels of every container, network and volume (the run's, so a dead run's are reaped).
    pub labels: BTreeMap<String, String>,
    /// Services whose image is a tag of the local base image: they get the entrypoint the
    /// container backend gives them.
    pub bare: std::collections::BTreeSet<String>,
    /// Services that run the workspace's binary mounted read-only, by its path.
    pub mounted: BTreeMap<String, std::path::PathBuf>,
    /// Where the init scripts of [`init_script`] are (`<dir>/<service>-initdb/`).
    pub init_dir: std::path::PathBuf,
}

impl Runtime {
    /// Images only: no labels, nothing bare or mounted.
    pub fn new(plan: ImagePlan) -> Runtime {
        Runtime {
            plan,
            labels: BTreeMap::new(),
            bare: Default::default(),
            mounted: BTreeMap::new(),
            init_dir: ".".into(),
        }
    }
}

/// The `databases` of a server the harness creates once it is ready, as compose users create
/// them: an SQL script in `/docker-entrypoint-initdb.d`, run once by the entrypoint.
pub fn init_script(service: &Service) -> Option<String> {
    let holds = service.kind.server().is_some_and(|s| s.holds_databases());
    (holds && !service.databases.is_empty()).then(|| {
        service
            .databases
            .iter()
            // The manifest allows letters, digits and `_` only: quoted, the case is kept.
            .map(|d| format!("CREATE DATABASE \"{d}\";\n"))
            .collect()
    })
}

/// The compose file (JSON, which docker-compose reads as YAML) equivalent to the manifest on
/// the container backend as `runtime` describes it, with healthchecks every `interval` (`1s`,
/// `250ms`).
pub fn compose_file(
    manifest: &Manifest,
    runtime: &Runtime,
    interval: &str,
) -> Result<String, Error> {
    let Runtime {
        plan,
        labels,
        bare,
        mounted,
        init_dir,
    } = runtime;
    let endpoints = compose_endpoints(manifest);
    let mut services = Map::new();
    let mut volumes = Map::new();
    for s in &manifest.services {
        let ep = &endpoints[&s.name];
        let image = plan
            .images
            .get(&s.name)
            .ok_or_else(|| Error::service(&s.name, "names no image"))?;
        let render = |t: &crate::model::template::Template| {
            t.render(|name| {
                if name == "self" {
                    Some(ep)
                } else {
                    endpoints.get(name)
                }
            })
            .map_err(|e| Error::service(&s.name, e))
        };
        let mut env = Map::new();
        for (k, v) in container::builtin_env(s.kind, ep) {
            env.insert(k, Value::String(escape(&v)));
        }
        for (k, v) in &s.env {
            env.insert(k.clone(), Value::String(escape(&render(v)?)));
        }
        let mut cmd = s.args.iter().map(render).collect::<Result<Vec<_>, _>>()?;
        if cmd.is_empty() {
            cmd = container::default_args(s.kind);
        }
        let mut service = json!({
            "image": image.image,
            "hostname": s.name,
            "environment": env,
            "labels": labels,
            "ports": s.ports.values().map(|p| format!("127.0.0.1::{p}")).collect::<Vec<_>>(),
        });
        if !cmd.is_empty() {
            service["command"] = json!(cmd.iter().map(|c| escape(c)).collect::<Vec<_>>());
        }
        let mut mounts: Vec<String> = Vec::new();
        if let (Some(host), crate::manifest::Launch::Binary(b)) = (mounted.get(&s.name), &s.launch)
        {
            let inside = format!("{}/{b}", container::MOUNTED_BIN_DIR);
            mounts.push(format!("{}:{inside}:ro", host.display()));
            service["entrypoint"] = json!([escape(&inside)]);
        }
        if init_script(s).is_some() {
            let dir = init_dir.join(format!("{}-initdb", s.name));
            mounts.push(format!("{}:/docker-entrypoint-initdb.d:ro", dir.display()));
        }
        if let (true, Some((script, signal))) =
            (bare.contains(&s.name), container::base_entrypoint(s.kind))
        {
            service["entrypoint"] = json!(container::BASE_RUNNER
                .iter()
                .map(|a| escape(a))
                .collect::<Vec<_>>());
            service["environment"][container::ENTRYPOINT_ENV] = json!(escape(script));
            if let Some(signal) = signal {
                service["stop_signal"] = json!(signal);
            }
        }
        if let Some(h) = healthcheck(s, ep, interval) {
            service["healthcheck"] = h;
        }
        if let Some(e) = &s.entrypoint {
            let e = e.iter().map(render).collect::<Result<Vec<_>, _>>()?;
            service["entrypoint"] = json!(e.iter().map(|c| escape(c)).collect::<Vec<_>>());
        }
        if let Some(w) = &s.workdir {
            service["working_dir"] = json!(w);
        }
        if let Some(u) = &s.run_as {
            service["user"] = json!(u);
        }
        if !s.tmpfs.is_empty() {
            service["tmpfs"] = json!(s.tmpfs);
        }
        if !s.volumes.is_empty() || !mounts.is_empty() {
            mounts.extend(s.volumes.iter().map(|m| {
                let source = match &m.source {
                    crate::manifest::MountSource::Host(p) => p.display().to_string(),
                    crate::manifest::MountSource::Volume(v) => {
                        volumes.insert(v.clone(), json!({ "labels": labels }));
                        v.clone()
                    }
                };
                format!(
                    "{source}:{}{}",
                    m.target,
                    if m.read_only { ":ro" } else { "" }
                )
            }));
            service["volumes"] = json!(mounts);
        }
        let mut depends = Map::new();
        for d in &s.depends_on {
            let target = manifest
                .service(&d.service)
                .map(|t| t.probe != ProbeSpec::None)
                .unwrap_or(false);
            let condition = match d.condition {
                Condition::Ready if target => "service_healthy",
                Condition::Completed => "service_completed_successfully",
                _ => "service_started",
            };
            depends.insert(d.service.clone(), json!({ "condition": condition }));
        }
        if !depends.is_empty() {
            service["depends_on"] = Value::Object(depends);
        }
        services.insert(s.name.clone(), service);
    }
    let file = json!({
        "version": "2.4",
        "services": services,
        "networks": { "default": { "labels": labels } },
        "volumes": volumes,
    });
    serde_json::to_string_pretty(&file)
        .map_err(|e| Error::Usage(format!("cannot write the compose file: {e}")))
}

async fn compose_cmd(file: &Path, project: &str, args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("docker-compose")
        .arg("-p")
        .arg(project)
        .arg("-f")
        .arg(file)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run docker-compose: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`docker-compose {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Waits until every container of the compose project is healthy (or running, without a
/// healthcheck); returns when each service was first seen so.
async fn compose_ready(
    docker: &testcontainers::bollard::Docker,
    project: &str,
    services: usize,
) -> Result<BTreeMap<String, Instant>, String> {
    use testcontainers::bollard::query_parameters::ListContainersOptionsBuilder;
    let filter = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("com.docker.compose.project={project}")],
    )]);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = BTreeMap::new();
    loop {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filter)
            .build();
        let list = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        for c in &list {
            let status = c.status.as_deref().unwrap_or("");
            // A one-shot job is done when it exited 0.
            let done = status.starts_with("Exited (0)");
            if done
                || status.starts_with("Up")
                    && (status.contains("(healthy)") || !status.contains('('))
            {
                let name = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("com.docker.compose.service"))
                    .cloned()
                    .unwrap_or_default();
                seen.entry(name).or_insert(now);
            }
        }
        if list.len() == services && seen.len() == services {
            return Ok(seen);
        }
        if let Some(c) = list.iter().find(|c| {
            let status = c.status.as_deref().unwrap_or("");
            status.starts_with("Exited") && !status.starts_with("Exited (0)")
        }) {
            return Err(format!(
                "a compose container exited: {:?} {:?}",
                c.names, c.status
            ));
        }
        if Instant::now() > deadline {
            return Err("the compose stack did not become healthy within 180 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One cold `docker-compose up -d` until healthy, then `down -v`: the wall time, and when each
/// service was first seen healthy.
async fn compose_run(
    file: &Path,
    project: &str,
    services: usize,
) -> Result<(Duration, BTreeMap<String, Duration>), Error> {
    let docker = container::connect()
        .await
        .map_err(|e| Error::Prerequisite {
            what: e,
            help: "start a Docker engine or set DOCKER_HOST".into(),
        })?;
    let t0 = Instant::now();
    // Watched while `up -d` runs: it returns only once it has started the last service.
    let (up, ready) = tokio::join!(
        compose_cmd(file, project, &["up", "-d", "--no-build"]),
        compose_ready(&docker, project, services)
    );
    let result = up.and(ready);
    let down = compose_cmd(
        file,
        project,
        &["down", "-v", "--remove-orphans", "-t", "1"],
    )
    .await;
    let ready = result.map_err(|e| Error::service("docker-compose", e))?;
    down.map_err(|e| Error::service("docker-compose", e))?;
    let wall = ready.values().max().map(|t| *t - t0).unwrap_or_default();
    Ok((wall, ready.into_iter().map(|(s, t)| (s, t - t0)).collect()))
}

/// What one cold start measured.
struct HarnessRun {
    wall: Duration,
    /// Before the scheduler started.
    preflight: Duration,
    /// Launch to ready, per service.
    ready_in: BTreeMap<String, Duration>,
    /// Stack-up start to ready, per service.
    ready_at: BTreeMap<String, Duration>,
}

async fn harness_run(manifest: &Manifest, sequential: bool) -> Result<HarnessRun, Error> {
    let options = StackOptions {
        backend: Some(BackendKind::Container),
        max_parallel: sequential.then_some(1),
        // A command's bench: it owns the process, as `harness up` does.
        ..StackOptions::owning_the_process(false)
    };
    let t0 = Instant::now();
    let stack = Stack::start(manifest.clone(), options).await?;
    let wall = t0.elapsed();
    let scheduled = stack
        .timings()
        .iter()
        .map(|t| t.ready)
        .max()
        .unwrap_or_default();
    let preflight = wall.saturating_sub(scheduled);
    let run = HarnessRun {
        wall,
        preflight,
        ready_in: stack
            .timings()
            .iter()
            .map(|t| (t.service.clone(), t.ready_in()))
            .collect(),
        ready_at: stack
            .timings()
            .iter()
            .map(|t| (t.service.clone(), preflight + t.ready))
            .collect(),
    };
    stack.down().await;
    Ok(run)
}

/// Runs the comparison `runs` times.
pub async fn compose(manifest: &Manifest, runs: usize) -> Result<ComposeReport, Error> {
    let version = std::process::Command::new("docker-compose")
        .args(["version", "--short"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .ok_or_else(|| Error::Prerequisite {
            what: "`docker-compose` is not installed".into(),
            help: "install it (`apt-get install -y docker-compose`)".into(),
        })?;
    let graph = Graph::new(manifest)
        .map_err(|c| Error::Usage(format!("dependency cycle: {}", c.path.join(" -> "))))?;
    if let Err(e) = container::available(manifest, Settings::process()).await {
        return Err(Error::Prerequisite {
            what: format!("both sides need every image locally: {e}"),
            help: "build them with `fixtures/images/build.sh`, then `set -a; . fixtures/images/local.env; set +a`".into(),
        });
    }
    let plan = container::plan(manifest, Settings::process())?;
    let id = format!("{}-bench{:08x}", std::process::id(), rand::random::<u32>());
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let labels: BTreeMap<String, String> = container::run_labels(&id, None, started_at)
        .into_iter()
        .collect();
    let dir = std::env::temp_dir().join(format!("harness-compose-{id}"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    crate::engine::cleanup::register_dir(&dir);
    // Ctrl-C: the compose containers and network carry the run's labels.
    let hook = crate::engine::cleanup::register_hook({
        let id = id.clone();
        move || {
            let _ = container::remove_run_blocking(&id);
        }
    });
    let bare = match container::connect().await {
        Ok(docker) => container::bare_base_services(
            manifest,
            &container::bare_base_images(&docker, &plan).await,
        ),
        Err(_) => Default::default(),
    };
    let settings = Settings::process();
    let runtime = Runtime {
        mounted: container::mounted_binaries(
            manifest,
            &plan,
            settings,
            &settings.bin_dir(manifest.dir()),
        ),
        labels,
        bare,
        init_dir: dir.clone(),
        plan,
    };
    for s in &manifest.services {
        if let Some(sql) = init_script(s) {
            let scripts = dir.join(format!("{}-initdb", s.name));
            std::fs::create_dir_all(&scripts)
                .and_then(|()| std::fs::write(scripts.join("databases.sql"), sql))
                .map_err(|e| Error::io(format!("writing {}", scripts.display()), e))?;
        }
    }
    let files = [
        ("1s", "docker-compose.yml"),
        ("250ms", "docker-compose-250ms.yml"),
    ];
    for (interval, name) in files {
        std::fs::write(dir.join(name), compose_file(manifest, &runtime, interval)?)
            .map_err(|e| Error::io("writing the compose file", e))?;
    }

    let result = async {
        let mut solo: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        let mut in_stack: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        let (mut harness, mut preflight) = (Vec::new(), Vec::new());
        let (mut compose, mut compose_fast) = (Vec::new(), Vec::new());
        let mut harness_at: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        let mut compose_at: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        for run in 0..runs {
            // Alternate which side goes first so neither always meets the warmer page cache.
            for side in if run % 2 == 0 {
                [0, 1, 3, 2]
            } else {
                [3, 1, 0, 2]
            } {
                match side {
                    0 => {
                        let run = harness_run(manifest, false).await?;
                        harness.push(run.wall);
                        preflight.push(run.preflight);
                        for (s, d) in run.ready_in {
                            in_stack.entry(s).or_default().push(d);
                        }
                        for (s, d) in run.ready_at {
                            harness_at.entry(s).or_default().push(d);
                        }
                    }
                    1 | 3 => {
                        let project = format!("hbench{:08x}", rand::random::<u32>());
                        let file = dir.join(files[usize::from(side == 3)].1);
                        let (wall, at) =
                            compose_run(&file, &project, manifest.services.len()).await?;
                        if side == 3 {
                            compose_fast.push(wall);
                        } else {
                            compose.push(wall);
                            for (s, d) in at {
                                compose_at.entry(s).or_default().push(d);
                            }
                        }
                    }
                    _ => {
                        let run = harness_run(manifest, true).await?;
                        for (s, d) in run.ready_in {
                            solo.entry(s).or_default().push(d);
                        }
                    }
                }
            }
        }
        Ok::<_, Error>((
            solo,
            in_stack,
            harness,
            preflight,
            (compose, compose_fast),
            harness_at,
            compose_at,
        ))
    }
    .await;
    let label = format!("{LABEL_RUN_ID}={id}");
    if let Ok(docker) = container::connect().await {
        let _ = container::remove_labelled(&docker, &label, true).await;
    }
    crate::engine::cleanup::unregister_hook(hook);
    let _ = std::fs::remove_dir_all(&dir);
    crate::engine::cleanup::unregister_dir(&dir);
    let (solo, in_stack, harness, preflight, (compose, compose_fast), harness_at, compose_at) =
        result?;
    let medians =
        |m: BTreeMap<String, Vec<Duration>>| m.into_iter().map(|(k, v)| (k, median(&v))).collect();
    let solo: BTreeMap<String, Duration> = solo.into_iter().map(|(k, v)| (k, median(&v))).collect();
    let (path, crit) = graph.critical_path(|s| solo.get(s).map(|d| d.as_secs_f64()).unwrap_or(0.0));
    Ok(ComposeReport {
        runs,
        compose_version: version,
        in_stack: medians(in_stack),
        harness_ready: medians(harness_at),
        compose_ready: medians(compose_at),
        solo,
        critical_path: (path, Duration::from_secs_f64(crit)),
        harness,
        preflight,
        compose,
        compose_fast,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compose_file_mirrors_the_manifest() {
        let source = r#"
[services.postgres]
kind = "postgres"

[services.redis]
kind = "redis"

[services.web]
kind = "service"
image = "base:1"
args = ["sh", "-c", "echo $HOME", "{{ self.bind.http }}"]
ports = { http = 8080 }
depends-on = { postgres = "ready", redis = "started" }
probe = { type = "http", path = "/env" }
env = { DATABASE_URL = "{{ postgres.url }}" }
"#;
        let manifest = Manifest::parse(Path::new("m.toml"), source).unwrap();
        let env = Settings::from_pairs([("HARNESS_IMAGE_POSTGRES", "local/pg:15")]);
        let plan = container::plan(&manifest, &env).unwrap();
        let labels = BTreeMap::from([("org.harness.managed".to_string(), "true".to_string())]);
        let file: Value = serde_json::from_str(
            &compose_file(
                &manifest,
                &Runtime {
                    labels,
                    ..Runtime::new(plan)
                },
                "1s",
            )
            .unwrap(),
        )
        .unwrap();
        let s = &file["services"];
        assert_eq!(s["postgres"]["image"], "local/pg:15");
        assert_eq!(s["postgres"]["environment"]["POSTGRES_USER"], USER);
        assert_eq!(s["postgres"]["ports"], json!(["127.0.0.1::5432"]));
        assert_eq!(s["postgres"]["command"][1], "fsync=off");
        assert!(s["postgres"]["healthcheck"]["test"][1]
            .as_str()
            .unwrap()
            .starts_with("pg_isready"));
        assert_eq!(s["redis"]["image"], "redis:7");
        assert_eq!(
            s["web"]["environment"]["DATABASE_URL"],
            format!("postgres://{USER}:{PASSWORD}@postgres:5432/app")
        );
        assert_eq!(
            s["web"]["command"],
            json!(["sh", "-c", "echo $$HOME", "0.0.0.0:8080"])
        );
        assert_eq!(
            s["web"]["depends_on"]["postgres"]["condition"],
            "service_healthy"
        );
        assert_eq!(
            s["web"]["depends_on"]["redis"]["condition"],
            "service_started"
        );
        assert!(s["web"]["healthcheck"]["test"][1]
            .as_str()
            .unwrap()
            .contains("GET /env HTTP/1.0"));
        assert_eq!(s["web"]["healthcheck"]["interval"], "1s");
        assert_eq!(
            file["networks"]["default"]["labels"]["org.harness.managed"],
            "true"
        );
        assert_eq!(s["web"]["labels"]["org.harness.managed"], "true");
    }

    #[test]
    fn a_server_on_a_bare_base_image_gets_its_entrypoint_and_fast_healthchecks_their_interval() {
        let source =
            "[services.postgres]\nkind = \"postgres\"\n\n[services.redis]\nkind = \"redis\"\n";
        let manifest = Manifest::parse(Path::new("m.toml"), source).unwrap();
        let plan = container::plan(&manifest, &Settings::default()).unwrap();
        let bare = std::collections::BTreeSet::from(["postgres".to_string()]);
        let text = compose_file(
            &manifest,
            &Runtime {
                bare,
                ..Runtime::new(plan)
            },
            "250ms",
        )
        .unwrap();
        let file: Value = serde_json::from_str(&text).unwrap();
        let pg = &file["services"]["postgres"];
        assert_eq!(pg["entrypoint"][0], "/bin/bash");
        assert!(
            pg["entrypoint"][2]
                .as_str()
                .unwrap()
                .contains("$$HARNESS_ENTRYPOINT"),
            "compose would interpolate the variable: {}",
            pg["entrypoint"][2]
        );
        assert!(pg["environment"][container::ENTRYPOINT_ENV]
            .as_str()
            .unwrap()
            .contains("initdb"));
        assert_eq!(pg["stop_signal"], "SIGINT");
        assert_eq!(pg["healthcheck"]["interval"], "250ms");
        let redis = &file["services"]["redis"];
        assert!(
            redis.get("entrypoint").is_none(),
            "redis is not bare: {redis}"
        );
    }

    #[test]
    fn a_workspace_binary_runs_mounted_into_its_runtime_image_as_the_backend_runs_it() {
        let source = "[services.api]\nkind = \"service\"\nbinary = \"api\"\nimage = \"local/api:1\"\nports = { http = 8080 }\nvolumes = [\"/srv/data:/data:ro\"]\n";
        let manifest = Manifest::parse(Path::new("m.toml"), source).unwrap();
        let plan = || container::plan(&manifest, &Settings::default()).unwrap();
        let mounted = BTreeMap::from([("api".to_string(), "/w/target/debug/api".into())]);
        let text = compose_file(
            &manifest,
            &Runtime {
                mounted,
                ..Runtime::new(plan())
            },
            "1s",
        )
        .unwrap();
        let api = &serde_json::from_str::<Value>(&text).unwrap()["services"]["api"];
        assert_eq!(api["entrypoint"], json!(["/harness/bin/api"]));
        assert_eq!(
            api["volumes"],
            json!([
                "/w/target/debug/api:/harness/bin/api:ro",
                "/srv/data:/data:ro"
            ])
        );
        let unmounted = compose_file(&manifest, &Runtime::new(plan()), "1s").unwrap();
        let api = &serde_json::from_str::<Value>(&unmounted).unwrap()["services"]["api"];
        assert!(api.get("entrypoint").is_none(), "{api}");
    }

    #[test]
    fn the_databases_a_server_holds_are_created_by_an_init_script_as_compose_users_do() {
        let source = "[services.pg]\nkind = \"postgres\"\ndatabases = [\"orders\", \"Audit_1\"]\n\n[services.bare]\nkind = \"postgres\"\n";
        let manifest = Manifest::parse(Path::new("m.toml"), source).unwrap();
        let pg = manifest.service("pg").unwrap();
        assert_eq!(
            init_script(pg).unwrap(),
            "CREATE DATABASE \"orders\";\nCREATE DATABASE \"Audit_1\";\n"
        );
        assert_eq!(init_script(manifest.service("bare").unwrap()), None);
        let plan = container::plan(&manifest, &Settings::default()).unwrap();
        let runtime = Runtime {
            init_dir: "/tmp/b".into(),
            ..Runtime::new(plan)
        };
        let text = compose_file(&manifest, &runtime, "1s").unwrap();
        let file: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            file["services"]["pg"]["volumes"],
            json!(["/tmp/b/pg-initdb:/docker-entrypoint-initdb.d:ro"])
        );
        assert!(file["services"]["bare"].get("volumes").is_none());
    }
}
