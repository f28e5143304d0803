//! Launching the services of a stack: what the scheduler calls to start, probe and stop each
//! one (credentials for the run, the kind's one-time setup such as databases, progress events),
//! and the placeholder a service's place holds during a refresh.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::engine::backend::mixed::Plan;
use crate::engine::backend::{Backend, BackendKind, Instance, StartRequest};
use crate::engine::error::Error;
use crate::engine::events::{Event, Sink};
use crate::engine::probe;
use crate::engine::scheduler::{Failure, Launcher, Phase};
use crate::manifest::{Manifest, Service};
use crate::model::endpoint::Endpoint;

/// Lines of a service's log shown when it fails.
pub const LOG_TAIL_LINES: usize = 20;

pub(super) type Creds = (Option<String>, Option<String>, Option<String>);

pub(super) fn random_token(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// Credentials for one run: fixed in the manifest, or completed by the kind (random ones).
pub(super) fn credentials(service: &Service) -> Creds {
    let c = &service.credentials;
    match service.kind.server() {
        Some(server) => {
            let c = server.credentials(c, &random_token);
            (c.user, c.password, c.database)
        }
        None => (c.user.clone(), c.password.clone(), c.database.clone()),
    }
}

pub(super) fn start_request<'a>(
    service: &'a Service,
    (user, password, database): Creds,
    deps: &'a BTreeMap<String, Endpoint>,
    ports: Option<&'a BTreeMap<String, u16>>,
) -> StartRequest<'a> {
    StartRequest {
        service,
        user,
        password,
        database,
        deps,
        ports,
    }
}

pub(super) struct StackLauncher<'a> {
    pub(super) manifest: &'a Manifest,
    pub(super) backend: &'a dyn Backend,
    pub(super) plan: &'a Plan,
    pub(super) launched: Mutex<BTreeMap<String, Instant>>,
    pub(super) credentials: Mutex<BTreeMap<String, Creds>>,
    pub(super) created: Mutex<BTreeMap<String, Vec<String>>>,
    pub(super) sink: &'a dyn Sink,
}

impl StackLauncher<'_> {
    /// The service's credentials for this run: made once (by its preparation or its launch).
    fn credentials_of(&self, service: &Service) -> Creds {
        self.credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(service.name.clone())
            .or_insert_with(|| credentials(service))
            .clone()
    }
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
        let creds = self.credentials_of(service);
        let request = start_request(service, creds, deps, None);
        let instance = self
            .backend
            .start(request)
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
        let endpoint = instance.internal_endpoint();
        Ok((instance, endpoint))
    }

    fn prepare(&self, name: &str, deps: &BTreeMap<String, Endpoint>) {
        if let Some(service) = self.manifest.service(name) {
            let creds = self.credentials_of(service);
            self.backend
                .prepare(start_request(service, creds, deps, None));
        }
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
        let created = make_ready(service, instance.as_mut(), launched).await?;
        // Only on a server the harness did not start do its databases outlive the run.
        if self.plan.of(name) == BackendKind::External && !created.is_empty() {
            self.created
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_string(), created);
        }
        Ok(())
    }

    async fn stop(&self, name: &str, mut instance: Box<dyn Instance>) {
        let created = self
            .created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(dbs) = created {
            drop_databases(name, &instance.endpoint(), &dbs, self.sink).await;
        }
        instance.remove().await;
    }
}

/// The place of a service between its removal and its successor's start in a refresh (and
/// after a refresh that failed): every operation says so.
#[derive(Debug)]
pub(super) struct Vacant {
    pub(super) name: String,
    pub(super) endpoint: Endpoint,
    pub(super) internal: Endpoint,
}

impl Vacant {
    fn gone(&self) -> Error {
        Error::service(
            &self.name,
            "is not running: its refresh did not bring it back (see the refresh error)",
        )
    }
}

#[async_trait]
impl Instance for Vacant {
    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
    fn internal_endpoint(&self) -> Endpoint {
        self.internal.clone()
    }
    fn exited(&mut self) -> Option<String> {
        Some("removed for a refresh".into())
    }
    fn log_tail(&self, _n: usize) -> Vec<String> {
        Vec::new()
    }
    async fn stop(&mut self) -> Result<(), Error> {
        Err(self.gone())
    }
    async fn start(&mut self) -> Result<(), Error> {
        Err(self.gone())
    }
    async fn kill(&mut self) -> Result<(), Error> {
        Err(self.gone())
    }
    async fn pause(&mut self) -> Result<(), Error> {
        Err(self.gone())
    }
    async fn unpause(&mut self) -> Result<(), Error> {
        Err(self.gone())
    }
    async fn remove(&mut self) {}
}

/// Waits until a launched service passes its probe, then runs its one-time setup; returns the
/// databases that setup created.
pub(super) async fn make_ready(
    service: &Service,
    instance: &mut dyn Instance,
    launched: Instant,
) -> Result<Vec<String>, Failure> {
    let endpoint = instance.endpoint();
    let deadline = launched + service.startup_timeout;
    probe::wait_instance_ready(&service.probe, instance, deadline)
        .await
        .map_err(|f| Failure {
            message: f.last_error,
            log_tail: instance.log_tail(LOG_TAIL_LINES),
            probe: Some(f.probe),
            waited: Some(launched.elapsed()),
        })?;
    let created = after_ready(service, &endpoint)
        .await
        .map_err(|message| Failure {
            message,
            log_tail: instance.log_tail(LOG_TAIL_LINES),
            probe: None,
            waited: None,
        })?;
    instance.on_ready().await;
    Ok(created)
}

/// One-time setup once a service is ready: the databases it should hold (its default one and
/// `databases`), each created when missing. Returns those it created.
pub(super) async fn after_ready(
    service: &Service,
    endpoint: &Endpoint,
) -> Result<Vec<String>, String> {
    let Some(server) = service.kind.server().filter(|s| s.holds_databases()) else {
        return Ok(Vec::new());
    };
    let wanted: Vec<&str> = endpoint
        .database
        .as_deref()
        .into_iter()
        .chain(service.databases.iter().map(String::as_str))
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    server.create_databases(&endpoint.target()?, &wanted).await
}

/// Drops the databases the harness created on an external server.
pub(super) async fn drop_databases(
    service: &str,
    endpoint: &Endpoint,
    dbs: &[String],
    sink: &dyn Sink,
) {
    let Some(server) = endpoint.kind.server() else {
        return;
    };
    let result = match endpoint.target() {
        Ok(target) => server.drop_databases(&target, dbs).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        // Teardown goes on; the leftover is named so it can be removed by hand.
        sink.event(&Event::Warning(format!(
            "harness: the databases it created on the external `{service}` ({}) were not all dropped: {e}",
            dbs.join(", ")
        )));
    }
}

/// The event of a service's phase; `started` keeps when each service began, for the time it
/// took to become ready.
pub(super) fn phase_event(
    service: &str,
    phase: Phase,
    at: Duration,
    failure: Option<&Failure>,
    plan: &Plan,
    started: &mut BTreeMap<String, Duration>,
) -> Event {
    let service = service.to_string();
    match phase {
        Phase::Starting => {
            started.insert(service.clone(), at);
            Event::ServiceStarting {
                backend: plan.of(&service),
                service,
                at,
            }
        }
        Phase::Probing => Event::ServiceProbing { service, at },
        Phase::Ready => {
            let since = started.get(&service).copied().unwrap_or_default();
            Event::ServiceReady {
                service,
                at,
                waited: at - since,
            }
        }
        Phase::Failed => Event::ServiceFailed {
            service,
            at,
            message: failure.map(|f| f.message.clone()).unwrap_or_default(),
        },
        Phase::Cancelled => Event::ServiceCancelled { service, at },
    }
}
