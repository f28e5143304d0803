//! What every backend gives: a [`Backend`] starts services, each an [`Instance`] the stack
//! probes, stops, faults and removes. The backends implement these; nothing here knows any.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;

use crate::engine::error::Error;
use crate::engine::events::Sink;
use crate::manifest::{BackendKind, Manifest, Service};
use crate::model::endpoint::Endpoint;

/// The name by which a container reaches the machine that runs its engine (services of
/// other backends on the host).
pub const HOST_GATEWAY: &str = "host.docker.internal";

/// Everything a backend needs to start one service.
#[derive(Debug)]
pub struct StartRequest<'a> {
    /// The service as the manifest describes it.
    pub service: &'a Service,
    /// Credentials for this run (fixed in the manifest or generated).
    pub user: Option<String>,
    /// Password for this run.
    pub password: Option<String>,
    /// Default database for this run.
    pub database: Option<String>,
    /// Endpoints of its started dependencies, as the service itself reaches them.
    pub deps: &'a BTreeMap<String, Endpoint>,
    /// Host ports to listen on again (a refresh in place keeps a native service's address, so
    /// its dependents need no restart); `None` allocates new ones.
    pub ports: Option<&'a BTreeMap<String, u16>>,
}

/// A backend: starts services of a manifest.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Checks before anything starts that every service can be started (binaries installed,
    /// images present), listing everything missing at once; warnings go to `sink`.
    async fn preflight(
        &self,
        manifest: &Manifest,
        sink: &std::sync::Arc<dyn Sink>,
    ) -> Result<(), Error>;
    /// Starts one service; returns once it has been launched (not yet ready).
    async fn start(&self, request: StartRequest<'_>) -> Result<Box<dyn Instance>, Error>;
    /// Called once every dependency of the service has launched (their endpoints are known)
    /// while some are not ready yet: the backend may begin what is slow in `start` (creating
    /// and starting a container) in the background. Nothing of the service's own program may
    /// run before `start` with the same request. Anything that goes wrong is left for `start`
    /// to report.
    fn prepare(&self, request: StartRequest<'_>) {
        let _ = request;
    }
}

/// One running service.
#[async_trait]
pub trait Instance: Send + Sync + fmt::Debug {
    /// Where the host (probes, tests) reaches it.
    fn endpoint(&self) -> Endpoint;
    /// Where other services reach it.
    fn internal_endpoint(&self) -> Endpoint;
    /// Called once during stack-up, when the service passed its readiness probe.
    async fn on_ready(&mut self) {}
    /// `Some(description)` once the service has exited on its own.
    fn exited(&mut self) -> Option<String>;
    /// `Some(true)` once the service has exited with status 0, `Some(false)` with any other
    /// (a one-shot job's outcome); `None` while it runs.
    fn exit_ok(&mut self) -> Option<bool> {
        None
    }
    /// Runs `command` where the service runs (inside its container) for an `exec` probe:
    /// `Ok` when it exits 0, else what it printed.
    async fn exec(&self, command: &[String]) -> Result<(), String> {
        let _ = command;
        Err("this backend cannot run commands beside a service".into())
    }
    /// The last `n` lines of its output.
    fn log_tail(&self, n: usize) -> Vec<String>;
    /// Why its output cannot be read (`Some("unavailable on the external backend")`), or
    /// `None` when [`Instance::log_tail`] reads it.
    fn logs_unavailable(&self) -> Option<String> {
        None
    }
    /// Where its output can be read by another process (for attached stacks).
    fn log_source(&self) -> Option<crate::engine::logs::LogSource> {
        None
    }
    /// Stops it gracefully (data kept, can be started again).
    async fn stop(&mut self) -> Result<(), Error>;
    /// Starts it again after [`Instance::stop`] or [`Instance::kill`].
    async fn start(&mut self) -> Result<(), Error>;
    /// Kills it at once (SIGKILL).
    async fn kill(&mut self) -> Result<(), Error>;
    /// Freezes it: it keeps its sockets but answers nothing.
    async fn pause(&mut self) -> Result<(), Error>;
    /// Resumes it after [`Instance::pause`].
    async fn unpause(&mut self) -> Result<(), Error>;
    /// Stops it and removes everything it created.
    async fn remove(&mut self);
}
