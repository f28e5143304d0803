//! The external backend: nothing is started. Each service's endpoint comes from environment
//! variables (CI service containers, a shared staging stack):
//!
//! `HARNESS_<SERVICE>_HOST` (default `127.0.0.1`), `HARNESS_<SERVICE>_PORT` (required when the
//! service has ports), `HARNESS_<SERVICE>_PORT_<NAME>` for further named ports, and
//! `HARNESS_<SERVICE>_USER`, `_PASSWORD`, `_DATABASE`. `<SERVICE>` is the name upper-cased with
//! `-` as `_`.

use crate::engine::events::Sink;
use crate::settings::Settings;
use std::collections::BTreeMap;

use async_trait::async_trait;

use super::interface::{Backend, Instance, StartRequest};
use crate::engine::error::Error;
use crate::manifest::BackendKind;
use crate::manifest::{Manifest, Service};
use crate::model::endpoint::Endpoint;

/// Endpoints from the environment (the settings' `HARNESS_<SERVICE>_*`).
#[derive(Debug)]
pub struct External(pub Settings);

/// `HARNESS_<SERVICE>_<FIELD>`: a service's name in upper case, `-` as `_`.
pub fn var_name(service: &str, field: &str) -> String {
    format!(
        "HARNESS_{}_{field}",
        service.to_uppercase().replace('-', "_")
    )
}

/// The field of a port: `PORT` for the primary one, `PORT_<NAME>` for the others.
fn port_field(name: &str, primary: Option<&str>) -> String {
    if Some(name) == primary {
        "PORT".to_string()
    } else {
        format!("PORT_{}", name.to_uppercase().replace('-', "_"))
    }
}

/// The variables that give `endpoint` to the external backend as service `service` (what a
/// CI job exports for its service containers; `harness env` prints them for a running stack).
pub fn variables(service: &str, endpoint: &Endpoint) -> Vec<(String, String)> {
    let mut vars = vec![(var_name(service, "HOST"), endpoint.host.clone())];
    for (name, port) in &endpoint.ports {
        let field = port_field(name, endpoint.primary.as_deref());
        vars.push((var_name(service, &field), port.to_string()));
    }
    for (field, value) in [
        ("USER", &endpoint.user),
        ("PASSWORD", &endpoint.password),
        ("DATABASE", &endpoint.database),
    ] {
        if let Some(v) = value {
            vars.push((var_name(service, field), v.clone()));
        }
    }
    vars
}

fn endpoint(service: &Service, settings: &Settings, missing: &mut Vec<String>) -> Endpoint {
    endpoint_from(service, &|v| settings.get(v), missing)
}

fn endpoint_from(
    service: &Service,
    env: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
) -> Endpoint {
    let get = |field: &str| env(&var_name(&service.name, field));
    let mut ports = BTreeMap::new();
    let primary = service.primary_port().map(str::to_string);
    for name in service.ports.keys() {
        let field = port_field(name, primary.as_deref());
        match get(&field).map(|p| p.parse::<u16>()) {
            Some(Ok(p)) => {
                ports.insert(name.clone(), p);
            }
            Some(Err(_)) => missing.push(format!(
                "{} (not a port number)",
                var_name(&service.name, &field)
            )),
            None => missing.push(var_name(&service.name, &field)),
        }
    }
    Endpoint {
        kind: service.kind,
        host: get("HOST").unwrap_or_else(|| "127.0.0.1".into()),
        ports,
        primary,
        bind_host: "0.0.0.0".into(),
        user: get("USER").or(service.credentials.user.clone()),
        password: get("PASSWORD").or(service.credentials.password.clone()),
        database: get("DATABASE").or(service.credentials.database.clone()),
    }
}

/// Whether every service's endpoint is given in the environment; lists every variable missing.
pub fn check(manifest: &Manifest, settings: &Settings) -> Result<(), Error> {
    let mut missing = Vec::new();
    for s in &manifest.services {
        endpoint(s, settings, &mut missing);
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Prerequisite {
        what: format!(
            "the external backend needs every service's endpoint; not set:\n  - {}",
            missing.join("\n  - ")
        ),
        help: "export them (e.g. `HARNESS_POSTGRES_PORT=5432`), or use the native backend".into(),
    })
}

#[async_trait]
impl Backend for External {
    fn kind(&self) -> BackendKind {
        BackendKind::External
    }

    async fn preflight(
        &self,
        manifest: &Manifest,
        _: &std::sync::Arc<dyn Sink>,
    ) -> Result<(), Error> {
        check(manifest, &self.0)
    }

    async fn start(&self, req: StartRequest<'_>) -> Result<Box<dyn Instance>, Error> {
        let mut missing = Vec::new();
        let endpoint = endpoint(req.service, &self.0, &mut missing);
        if !missing.is_empty() {
            return Err(Error::service(
                &req.service.name,
                format!("not set: {}", missing.join(", ")),
            ));
        }
        Ok(Box::new(RemoteInstance::new(
            &req.service.name,
            endpoint,
            None,
            "it belongs to the external backend; the harness did not start it".into(),
        )))
    }
}

/// A service this process did not start (external endpoints, or a stack another process
/// owns): it has an endpoint and maybe a log, and refuses fault injection.
#[derive(Debug)]
pub struct RemoteInstance {
    name: String,
    endpoint: Endpoint,
    log: Option<crate::engine::logs::LogSource>,
    /// Why faults cannot be injected, ending the refusal message.
    why: String,
}

impl RemoteInstance {
    /// A service at `endpoint`; `why` says why it cannot be stopped or paused from here.
    pub fn new(
        name: &str,
        endpoint: Endpoint,
        log: Option<crate::engine::logs::LogSource>,
        why: String,
    ) -> RemoteInstance {
        RemoteInstance {
            name: name.to_string(),
            endpoint,
            log,
            why,
        }
    }

    fn refuse(&self, what: &str) -> Result<(), Error> {
        Err(Error::service(
            &self.name,
            format!("cannot {what} it: {}", self.why),
        ))
    }
}

#[async_trait]
impl Instance for RemoteInstance {
    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
    fn internal_endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }
    fn exited(&mut self) -> Option<String> {
        None
    }
    fn logs_unavailable(&self) -> Option<String> {
        self.log
            .is_none()
            .then(|| "unavailable on the external backend".to_string())
    }
    fn log_tail(&self, n: usize) -> Vec<String> {
        self.log
            .as_ref()
            .map(|l| super::log_tail(l, n))
            .unwrap_or_default()
    }
    async fn stop(&mut self) -> Result<(), Error> {
        self.refuse("stop")
    }
    async fn start(&mut self) -> Result<(), Error> {
        self.refuse("start")
    }
    async fn kill(&mut self) -> Result<(), Error> {
        self.refuse("kill")
    }
    async fn pause(&mut self) -> Result<(), Error> {
        self.refuse("pause")
    }
    async fn unpause(&mut self) -> Result<(), Error> {
        self.refuse("unpause")
    }
    // The harness did not start it, so it never stops it.
    async fn remove(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variables_of_an_endpoint_give_it_back() {
        let m = Manifest::parse(
            std::path::Path::new("m.toml"),
            "[services.rabbit-mq]\nkind = \"rabbitmq\"\nports = { management = 15672 }\n",
        )
        .unwrap();
        let service = &m.services[0];
        let endpoint = Endpoint {
            kind: service.kind,
            host: "10.0.0.7".into(),
            ports: BTreeMap::from([("amqp".into(), 5673), ("management".into(), 15673)]),
            primary: Some("amqp".into()),
            bind_host: "0.0.0.0".into(),
            user: Some("ci".into()),
            password: Some("pw".into()),
            database: None,
        };
        let vars = variables(&service.name, &endpoint);
        let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "HARNESS_RABBIT_MQ_HOST",
                "HARNESS_RABBIT_MQ_PORT",
                "HARNESS_RABBIT_MQ_PORT_MANAGEMENT",
                "HARNESS_RABBIT_MQ_USER",
                "HARNESS_RABBIT_MQ_PASSWORD"
            ]
        );
        let env = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut missing = Vec::new();
        assert_eq!(endpoint_from(service, &env, &mut missing), endpoint);
        assert!(missing.is_empty(), "{missing:?}");
    }
}
