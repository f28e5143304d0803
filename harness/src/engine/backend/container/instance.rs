//! One service as a container: its endpoints, how it ended, its log, and the faults (stop,
//! kill, pause) done to it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use testcontainers::bollard::errors::Error as DockerError;
use testcontainers::bollard::models::ContainerUpdateBody;
use testcontainers::bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptionsBuilder, LogsOptionsBuilder,
    StartContainerOptions, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use testcontainers::bollard::Docker;

use super::engine::{blocking, status_of};
use super::reaper::remove_container;
use crate::engine::backend::interface::Instance;
use crate::engine::error::Error;
use crate::engine::logs::LogSource;
use crate::model::endpoint::Endpoint;

/// How long `stop` lets a container shut down before the engine kills it.
const STOP_GRACE_SECS: i32 = 10;
/// The engine's default CPU weight.
const DEFAULT_CPU_SHARES: i64 = 1024;

/// State shared by the backend, its instances and its cleanup hook.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Container creations under way (the Ctrl-C hook waits for them, then removes).
    pub(super) creating: AtomicUsize,
    /// Everything of the run was removed; instances need not remove themselves.
    pub(super) swept: AtomicBool,
    /// Something was created in the engine (a network, a container), so teardown has work.
    pub(super) touched: AtomicBool,
    /// The run's containers are being removed: a creation that finishes now removes its own.
    pub(super) closing: AtomicBool,
}

/// How a container ended, written by the task that waits for it.
#[derive(Debug, Default)]
struct Watch {
    exit: Mutex<Option<Exit>>,
    /// Bumped on every start, so a waiter of an earlier start cannot report.
    generation: AtomicU64,
}

/// How a container ended: as described to people, and whether with status 0.
#[derive(Debug, Clone)]
struct Exit {
    description: String,
    ok: bool,
}

impl Exit {
    fn code(code: i64, error: &str) -> Exit {
        Exit {
            description: if error.is_empty() {
                format!("exit code {code}")
            } else {
                format!("exit code {code}: {error}")
            },
            ok: code == 0 && error.is_empty(),
        }
    }
}

/// One service as a container.
#[derive(Debug)]
pub(super) struct ContainerInstance {
    service: String,
    name: String,
    id: String,
    docker: Docker,
    endpoint: Endpoint,
    internal: Endpoint,
    watch: Arc<Watch>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// Runs with [`super::CRITICAL_CPU_SHARES`] until it is ready.
    boosted: bool,
    paused: bool,
    removed: bool,
    shared: Arc<Shared>,
}

impl ContainerInstance {
    /// A container just created for `service`, not started yet. Its host endpoint is the
    /// network one on the loopback until the first start reads the ports the engine published.
    pub(super) fn new(
        service: &str,
        name: String,
        id: String,
        docker: Docker,
        internal: Endpoint,
        boosted: bool,
        shared: Arc<Shared>,
    ) -> ContainerInstance {
        ContainerInstance {
            service: service.to_string(),
            name,
            id,
            docker,
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
            shared,
        }
    }

    fn fail(&self, message: impl Into<String>) -> Error {
        Error::service(&self.service, message)
    }

    /// Reads the host ports the engine published, once they are all there. `Ok(Some(status))`
    /// when the container stopped before that.
    async fn refresh_ports(&mut self) -> Result<Option<Exit>, Error> {
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
                return Ok(Some(Exit::code(state.exit_code.unwrap_or_default(), "")));
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
                    Some(Ok(r)) => break Exit::code(r.status_code, ""),
                    Some(Err(DockerError::DockerContainerWaitError { code, error })) => {
                        break Exit::code(code, &error)
                    }
                    Some(Err(e)) if status_of(&e) == Some(404) => {
                        break Exit {
                            description: "the container was removed".to_string(),
                            ok: false,
                        }
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
        self.watch
            .exit
            .try_lock()
            .ok()
            .and_then(|e| e.as_ref().map(|e| e.description.clone()))
    }

    fn exit_ok(&mut self) -> Option<bool> {
        self.watch
            .exit
            .try_lock()
            .ok()
            .and_then(|e| e.as_ref().map(|e| e.ok))
    }

    async fn exec(&self, command: &[String]) -> Result<(), String> {
        exec(&self.docker, &self.id, command).await
    }

    fn log_tail(&self, n: usize) -> Vec<String> {
        log_tail(&self.id, n)
    }

    fn log_source(&self) -> Option<LogSource> {
        Some(LogSource::Container(self.id.clone()))
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
        Ok(text) => crate::engine::logs::last_lines(&text, n),
        Err(e) => vec![format!("(cannot read the container's log: {e})")],
    }
}

/// Runs `command` in the running container `id`: `Ok` when it exits 0, else its exit code and
/// the end of what it printed.
async fn exec(docker: &Docker, id: &str, command: &[String]) -> Result<(), String> {
    use testcontainers::bollard::exec::{CreateExecOptions, StartExecResults};
    let created = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(command.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("cannot run the command in the container: {e}"))?;
    let mut printed = String::new();
    if let StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&created.id, None)
        .await
        .map_err(|e| format!("cannot run the command in the container: {e}"))?
    {
        while let Some(Ok(chunk)) = output.next().await {
            printed.push_str(&chunk.to_string());
        }
    }
    let code = docker
        .inspect_exec(&created.id)
        .await
        .map_err(|e| format!("cannot read the command's exit code: {e}"))?
        .exit_code;
    match code {
        Some(0) => Ok(()),
        code => {
            let tail: Vec<&str> = printed.trim().lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(format!(
                "exit code {}{}",
                code.map_or("unknown".into(), |c| c.to_string()),
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", tail.join(" / "))
                }
            ))
        }
    }
}
