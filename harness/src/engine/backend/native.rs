//! The native backend: real servers as local processes from installed binaries, each on a
//! free loopback port, each in its own directory inside the run directory.
//!
//! - PostgreSQL: `initdb` then `postgres` (fsync off, socket in its directory). As root it runs
//!   as the `postgres` user, which PostgreSQL requires.
//! - Redis: `redis-server` without persistence.
//! - RabbitMQ: `rabbitmq-server` with every path (mnesia, logs, feature flags, pid, config)
//!   inside its directory and an `epmd` of its own on a free port, so nothing outlives the run.
//!   As root it runs as the `rabbitmq` user and its directories belong to that user.
//! - Generic services: a cargo binary of the workspace (`binary = "orders"`) or a command.
//!
//! Every process runs in its own process group, registered with [`crate::engine::cleanup`] and written
//! to the run's record in the same guarded step as its spawn; every process works inside the
//! run directory, so helpers that leave their group are found by their working directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Pid, User};
use tokio::process::{Child, Command};

use super::interface::{Backend, Instance, StartRequest};
use crate::engine::cleanup::{self, RunDir, RUN_ID_ENV};
use crate::engine::error::Error;
use crate::engine::events::Sink;
use crate::manifest::BackendKind;
use crate::manifest::{Launch, Manifest, Service};
use crate::model::endpoint::Endpoint;
use crate::model::kind::server::find_program;
use crate::model::kind::NativeHost;
use crate::settings::Settings;

/// How long a graceful stop may take before the group is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs services as local processes.
#[derive(Debug)]
pub struct Native {
    run_id: String,
    run_dir: PathBuf,
    bin_dir: PathBuf,
    /// The manifest's directory: a command's program given as a relative path is found there.
    project_dir: PathBuf,
    /// Where cached clusters are kept ([`Settings::cache_dir`]).
    cache_dir: PathBuf,
}

impl Native {
    /// A native backend for one run, running the workspace's binaries from `bin_dir`.
    pub fn new(run: &RunDir, manifest_dir: &Path, bin_dir: &Path, settings: &Settings) -> Native {
        Native {
            run_id: run.id.clone(),
            run_dir: run.path.clone(),
            bin_dir: bin_dir.to_path_buf(),
            project_dir: manifest_dir.to_path_buf(),
            cache_dir: settings.cache_dir(),
        }
    }
}

/// Whether the native backend can run every service of a manifest: the servers installed and
/// the service binaries built (in `bins`, see [`Settings::bin_dir`]). Lists
/// everything missing at once.
pub fn check(manifest: &Manifest, bins: &Path) -> Result<(), Error> {
    let mut missing: Vec<(String, String)> = Vec::new();
    for s in &manifest.services {
        let name = s.name.as_str();
        if let Some(server) = s.kind.server() {
            for program in server.native_programs() {
                if find_program(program.name, &program.dirs).is_none() {
                    missing.push((
                        format!("`{}` (for service `{name}`)", program.name),
                        program.help.to_string(),
                    ));
                }
            }
            continue;
        }
        match &s.launch {
            Launch::Binary(b) => {
                if !bins.join(b).is_file() {
                    missing.push((
                        format!("binary `{b}` (for service `{name}`) at {}", bins.join(b).display()),
                        format!("build it with `cargo build --bin {b}`, or point HARNESS_BIN_DIR at the directory holding it"),
                    ));
                }
            }
            Launch::ImageOnly => missing.push((
                format!("a way to run service `{name}` natively"),
                format!("give `{name}` a `binary` or `command` in the manifest, or use the container backend"),
            )),
            Launch::Builtin | Launch::Command(_) => {}
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let what = missing
        .iter()
        .map(|(w, _)| format!("\n  - {w}"))
        .collect::<String>();
    let help: BTreeSet<&str> = missing.iter().map(|(_, h)| h.as_str()).collect();
    Err(Error::Prerequisite {
        what: format!("the native backend cannot start this stack; missing:{what}"),
        help: help.into_iter().collect::<Vec<_>>().join("\n  = help: "),
    })
}

#[async_trait]
impl Backend for Native {
    fn kind(&self) -> BackendKind {
        BackendKind::Native
    }

    async fn preflight(
        &self,
        manifest: &Manifest,
        _: &std::sync::Arc<dyn Sink>,
    ) -> Result<(), Error> {
        check(manifest, &self.bin_dir)
    }

    async fn start(&self, req: StartRequest<'_>) -> Result<Box<dyn Instance>, Error> {
        let service = req.service;
        let dir = self.run_dir.join(&service.name);
        // Not `create_dir_all`: after a signal the run directory is gone and must stay gone.
        cleanup::guarded(|| std::fs::create_dir(&dir))
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut ports = BTreeMap::new();
        for name in service.ports.keys() {
            let port = match req.ports.and_then(|p| p.get(name)) {
                Some(p) => *p,
                None => free_port().map_err(|e| Error::io("finding a free port", e))?,
            };
            ports.insert(name.clone(), port);
        }
        let endpoint = Endpoint {
            kind: service.kind,
            host: "127.0.0.1".into(),
            ports,
            primary: service.primary_port().map(str::to_string),
            bind_host: "127.0.0.1".into(),
            user: req.user.clone(),
            password: req.password.clone(),
            database: req.database.clone(),
        };
        let mut instance = NativeInstance {
            name: service.name.clone(),
            dir: dir.clone(),
            endpoint: endpoint.clone(),
            procs: Vec::new(),
        };
        let base = ProcSpec {
            run_id: self.run_id.clone(),
            run_dir: self.run_dir.clone(),
            log: dir.join("output.log"),
            cwd: dir.clone(),
            ..ProcSpec::default()
        };
        if let Some(server) = service.kind.server() {
            let host = Host {
                base: &base,
                run_id: &self.run_id,
                cache_dir: &self.cache_dir,
            };
            let target = endpoint
                .target()
                .map_err(|e| Error::service(&service.name, e))?;
            let processes = server
                .native(&host, &target)
                .await
                .map_err(|e| Error::service(&service.name, e))?;
            for p in processes {
                let mut proc = Proc::new(ProcSpec {
                    log: p.log.map_or_else(|| base.log.clone(), |l| dir.join(l)),
                    program: p.program,
                    args: p.args,
                    env: p.env,
                    user: p.user,
                    graceful: p.graceful,
                    ..base.clone()
                });
                proc.spawn().map_err(|e| Error::service(&service.name, e))?;
                let listening = match p.listens_on {
                    Some(port) => wait_listening(port).await,
                    None => Ok(()),
                };
                instance.procs.push(proc);
                listening.map_err(|e| Error::service(&service.name, e))?;
            }
        } else {
            let mut proc = generic(
                &base,
                service,
                &endpoint,
                req.deps,
                &self.bin_dir,
                &self.project_dir,
            )?;
            proc.spawn().map_err(|e| Error::service(&service.name, e))?;
            instance.procs.push(proc);
        }
        Ok(Box::new(instance))
    }
}

/// A free loopback port. The kernel hands out ports round-robin, and the harness remembers
/// what it gave, so two services of one run never get the same port.
fn free_port() -> std::io::Result<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..50 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no free loopback port after 50 tries",
    ))
}

/// How long a helper process may take to listen before the server that needs it starts.
const HELPER_LISTEN: Duration = Duration::from_secs(5);

/// Waits until a helper process listens on a loopback port.
async fn wait_listening(port: u16) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + HELPER_LISTEN;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "a helper did not listen on port {port} within {} s",
                HELPER_LISTEN.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// What the native backend gives a kind's launch: the service's directory, the cache, free
/// ports, and helper programs run in registered process groups.
struct Host<'a> {
    base: &'a ProcSpec,
    run_id: &'a str,
    cache_dir: &'a Path,
}

#[async_trait]
impl NativeHost for Host<'_> {
    fn dir(&self) -> &Path {
        &self.base.cwd
    }

    fn run_id(&self) -> &str {
        self.run_id
    }

    fn cache_dir(&self) -> PathBuf {
        self.cache_dir.to_path_buf()
    }

    fn free_port(&self) -> std::io::Result<u16> {
        free_port()
    }

    async fn run(
        &self,
        cmd: Command,
        user: Option<&User>,
        stdin: Option<String>,
    ) -> Result<std::process::Output, String> {
        run_to_end(self.base, cmd, user, stdin).await
    }
}

/// Runs a short helper program to its end in its own registered process group (a signal
/// meanwhile stops it before the run directory it works in is removed); its output on failure.
async fn run_to_end(
    base: &ProcSpec,
    mut cmd: Command,
    user: Option<&User>,
    stdin: Option<String>,
) -> Result<std::process::Output, String> {
    cmd.env(RUN_ID_ENV, &base.run_id)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(u) = user {
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    let program = format!("{:?}", cmd.as_std().get_program());
    let mut child = cleanup::spawn_recorded(
        Some(&base.run_dir),
        Signal::SIGTERM,
        || cmd.spawn(),
        Child::id,
    )
    .map_err(|e| format!("cannot run {program}: {e}"))?;
    let pgid = child.id().map(|p| p as i32);
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt as _;
        // A server that refuses its input exits, and its output tells why.
        let _ = pipe.write_all(text.as_bytes()).await;
    }
    let out = child.wait_with_output().await;
    if let Some(g) = pgid {
        cleanup::unregister_group(g);
    }
    let out = out.map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

fn generic(
    base: &ProcSpec,
    service: &Service,
    ep: &Endpoint,
    deps: &BTreeMap<String, Endpoint>,
    bin_dir: &Path,
    project_dir: &Path,
) -> Result<Proc, Error> {
    let render = |t: &crate::model::template::Template| {
        t.render(|name| {
            if name == "self" {
                Some(ep)
            } else {
                deps.get(name)
            }
        })
        .map_err(|e| Error::service(&service.name, e))
    };
    let (program, mut args) = match &service.launch {
        Launch::Binary(b) => (bin_dir.join(b), Vec::new()),
        Launch::Command(cmd) => {
            let mut parts = cmd
                .iter()
                .map(render)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter();
            let program = PathBuf::from(
                parts
                    .next()
                    .ok_or_else(|| Error::service(&service.name, "empty command"))?,
            );
            // `./bin/orders` is the project's, not the run directory's (where it runs).
            let program = if program.is_relative() && program.components().count() > 1 {
                project_dir.join(program)
            } else {
                program
            };
            (program, parts.collect())
        }
        Launch::Builtin | Launch::ImageOnly => {
            return Err(Error::service(
                &service.name,
                "has no binary or command to run natively",
            ))
        }
    };
    // `args` are the binary's (and the image's, in a container); a `command` is whole.
    if matches!(service.launch, Launch::Binary(_)) {
        for a in &service.args {
            args.push(render(a)?);
        }
    }
    let env = service
        .env
        .iter()
        .map(|(k, v)| Ok((k.clone(), render(v)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    // A service of one's own runs in the manifest's directory (or its `workdir`, relative to
    // it), so the paths in its command mean what they say there.
    let project = if project_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        project_dir
    };
    let cwd = project.join(service.workdir.as_deref().unwrap_or(""));
    let mut env = env;
    env.push((
        "HARNESS_SERVICE_DIR".into(),
        base.log.parent().unwrap_or(&base.cwd).display().to_string(),
    ));
    Ok(Proc::new(ProcSpec {
        program,
        args,
        env,
        cwd,
        ..base.clone()
    }))
}

/// What to run for one process.
#[derive(Debug, Clone, Default)]
struct ProcSpec {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    user: Option<User>,
    cwd: PathBuf,
    log: PathBuf,
    run_id: String,
    /// Where the run's record is kept.
    run_dir: PathBuf,
    graceful: Option<Signal>,
}

/// One process of a service, in its own process group.
#[derive(Debug)]
struct Proc {
    spec: ProcSpec,
    child: Option<Child>,
    pgid: Option<i32>,
    exit: Option<String>,
    /// Whether it exited with status 0, once it has.
    ok: Option<bool>,
}

impl Proc {
    fn new(spec: ProcSpec) -> Proc {
        Proc {
            spec,
            child: None,
            pgid: None,
            exit: None,
            ok: None,
        }
    }

    fn graceful(&self) -> Signal {
        self.spec.graceful.unwrap_or(Signal::SIGTERM)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let s = &self.spec;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .map_err(|e| format!("cannot open log {}: {e}", s.log.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&s.program);
        cmd.args(&s.args)
            .envs(s.env.iter().map(|(k, v)| (k, v)))
            .env(RUN_ID_ENV, &s.run_id)
            .current_dir(&s.cwd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        if let Some(u) = &s.user {
            cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        }
        let child =
            cleanup::spawn_recorded(Some(&s.run_dir), self.graceful(), || cmd.spawn(), Child::id)
                .map_err(|e| format!("cannot run {}: {e}", s.program.display()))?;
        let pgid = child.id().map(|p| p as i32);
        self.child = Some(child);
        self.pgid = pgid;
        self.exit = None;
        Ok(())
    }

    fn exited(&mut self) -> Option<String> {
        if self.exit.is_none() {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exit = Some(status.to_string());
                    self.ok = Some(status.success());
                }
            }
        }
        self.exit.clone()
    }

    fn signal(&self, signal: Signal) -> Result<(), String> {
        match self.pgid {
            Some(g) => {
                killpg(Pid::from_raw(g), signal).map_err(|e| format!("{signal} failed: {e}"))
            }
            None => Err("the process is not running".into()),
        }
    }

    async fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = self.pgid.take();
        if let Some(g) = pgid {
            let _ = killpg(Pid::from_raw(g), Signal::SIGCONT);
            let _ = killpg(Pid::from_raw(g), self.graceful());
        }
        let status = match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(s)) => s.to_string(),
            _ => {
                let _ = child.start_kill();
                child
                    .wait()
                    .await
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string())
            }
        };
        if let Some(g) = pgid {
            // Stragglers of the group (children the main process did not reap).
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while cleanup::group_alive(g) && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cleanup::unregister_group(g);
        }
        self.exit = Some(status);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(g) = self.pgid.take() {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
            cleanup::unregister_group(g);
        }
    }
}

/// A service running as local processes.
#[derive(Debug)]
struct NativeInstance {
    name: String,
    dir: PathBuf,
    endpoint: Endpoint,
    /// Helpers first (epmd), the server last.
    procs: Vec<Proc>,
}

impl NativeInstance {
    fn main(&self) -> Result<&Proc, Error> {
        self.procs
            .last()
            .ok_or_else(|| Error::service(&self.name, "has no process"))
    }
}

#[async_trait]
impl Instance for NativeInstance {
    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    fn internal_endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    fn exited(&mut self) -> Option<String> {
        self.procs.iter_mut().rev().find_map(|p| p.exited())
    }

    fn exit_ok(&mut self) -> Option<bool> {
        let main = self.procs.last_mut()?;
        main.exited();
        main.ok
    }

    /// Natively an `exec` probe runs on this machine, in the service's working directory and
    /// with its environment, in a process group of its own that is killed if the probe is
    /// abandoned.
    async fn exec(&self, command: &[String]) -> Result<(), String> {
        let main = self.main().map_err(|e| e.to_string())?;
        let (program, args) = command.split_first().ok_or("the command is empty")?;
        let log = self.dir.join("probe.log");
        let _ = std::fs::remove_file(&log);
        let mut probe = Proc::new(ProcSpec {
            program: program.into(),
            args: args.to_vec(),
            log: log.clone(),
            graceful: Some(Signal::SIGKILL),
            ..main.spec.clone()
        });
        probe.spawn()?;
        loop {
            if probe.exited().is_some() {
                return match probe.ok {
                    Some(true) => Ok(()),
                    _ => {
                        let tail = crate::engine::logs::file_tail(&log, 3);
                        Err(format!(
                            "{}{}",
                            probe.exit.clone().unwrap_or_default(),
                            if tail.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", tail.join(" / "))
                            }
                        ))
                    }
                };
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn log_tail(&self, n: usize) -> Vec<String> {
        self.procs
            .last()
            .map(|p| crate::engine::logs::file_tail(&p.spec.log, n))
            .unwrap_or_default()
    }

    fn log_source(&self) -> Option<crate::engine::logs::LogSource> {
        self.procs
            .last()
            .map(|p| crate::engine::logs::LogSource::File(p.spec.log.clone()))
    }

    async fn stop(&mut self) -> Result<(), Error> {
        for p in self.procs.iter_mut().rev() {
            p.stop(STOP_GRACE).await;
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<(), Error> {
        for p in &mut self.procs {
            if p.child.is_none() {
                p.spawn().map_err(|e| Error::service(&self.name, e))?;
            }
        }
        Ok(())
    }

    async fn kill(&mut self) -> Result<(), Error> {
        for p in self.procs.iter_mut().rev() {
            p.stop(Duration::ZERO).await;
        }
        Ok(())
    }

    async fn pause(&mut self) -> Result<(), Error> {
        self.main()?
            .signal(Signal::SIGSTOP)
            .map_err(|e| Error::service(&self.name, e))
    }

    async fn unpause(&mut self) -> Result<(), Error> {
        self.main()?
            .signal(Signal::SIGCONT)
            .map_err(|e| Error::service(&self.name, e))
    }

    async fn remove(&mut self) {
        let _ = self.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for NativeInstance {
    fn drop(&mut self) {
        // Processes are killed by their own Drop; the directory goes with the run directory.
        self.procs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
