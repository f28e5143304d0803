//! Backends run services: as local processes ([`native`]), or not at all ([`external`]:
//! endpoints come from the environment). Every backend produces [`Instance`]s, and the
//! [`Stack`](crate::stack::Stack) handle on top is the same for all of them.

pub mod external;
pub mod native;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;

use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::manifest::{Manifest, Service};

/// Which backend runs a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Local processes from installed binaries.
    Native,
    /// Nothing is started; endpoints come from `HARNESS_<SERVICE>_*` environment variables.
    External,
}

impl BackendKind {
    /// Picks the backend: `HARNESS_BACKEND` if set, else native.
    pub fn from_env() -> Result<BackendKind, Error> {
        match std::env::var("HARNESS_BACKEND") {
            Err(_) => Ok(BackendKind::Native),
            Ok(v) => match v.as_str() {
                "native" => Ok(BackendKind::Native),
                "external" => Ok(BackendKind::External),
                other => Err(Error::Usage(format!(
                    "HARNESS_BACKEND is `{other}`; use `native` or `external`"
                ))),
            },
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Native => "native",
            BackendKind::External => "external",
        })
    }
}

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
}

/// A backend: starts services of a manifest.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Checks before anything starts that every service can be started (binaries installed,
    /// images present), listing everything missing at once.
    async fn preflight(&self, manifest: &Manifest) -> Result<(), Error>;
    /// Starts one service; returns once it has been launched (not yet ready).
    async fn start(&self, request: StartRequest<'_>) -> Result<Box<dyn Instance>, Error>;
}

/// One running service.
#[async_trait]
pub trait Instance: Send + Sync + fmt::Debug {
    /// Where the host (probes, tests) reaches it.
    fn endpoint(&self) -> Endpoint;
    /// Where other services reach it.
    fn internal_endpoint(&self) -> Endpoint;
    /// `Some(description)` once the service has exited on its own.
    fn exited(&mut self) -> Option<String>;
    /// The last `n` lines of its output.
    fn log_tail(&self, n: usize) -> Vec<String>;
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

/// Creates the backend of the given kind for one run.
pub fn create(kind: BackendKind, run: &crate::cleanup::RunDir, manifest: &Manifest) -> Box<dyn Backend> {
    match kind {
        BackendKind::Native => Box::new(native::Native::new(run, manifest.dir())),
        BackendKind::External => Box::new(external::External),
    }
}
