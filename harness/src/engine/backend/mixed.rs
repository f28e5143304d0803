//! A backend per service: one stack whose servers come from a CI job (`external`) while the
//! harness starts the team's own services (`native` or `container`).
//!
//! Which backend runs a service, first match wins: a setting for the service beats one for the
//! stack, and within each flags beat environment beat manifest.
//!
//! 1. `--backend postgres=external` ([`StackOptions::service_backends`](crate::StackOptions));
//! 2. `HARNESS_BACKEND_<SERVICE>` (`<SERVICE>` upper-cased, `-` as `_`);
//! 3. `backend = "…"` of the service in the manifest (a service that only runs elsewhere);
//! 4. `--backend native` ([`StackOptions::backend`](crate::StackOptions));
//! 5. `HARNESS_BACKEND`;
//! 6. [`detect`](super::detect)ed for the services still without one.
//!
//! Templates resolve across backends ([`reach`]): a native service is given the host address
//! of an external server or a container; a container is given an external server on the host
//! through the engine's host gateway ([`HOST_GATEWAY`]). Teardown removes only what the harness
//! started: an external service's `remove` does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;

use super::interface::{Backend, Instance, StartRequest};
use crate::engine::error::Error;
use crate::engine::events::Sink;
use crate::manifest::BackendKind;
use crate::manifest::{Kind, Manifest};
use crate::model::endpoint::Endpoint;
use crate::settings::Settings;

/// The name a container reaches the host at: every container of a run gets it as an extra
/// host mapped to the engine's `host-gateway`.
pub use super::interface::HOST_GATEWAY;

/// `--backend` on the command line: a backend for the stack, and backends for some services
/// (`native`, `postgres=external,redis=external`, `native,postgres=external`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendChoice {
    /// The backend of every service not named (`None`: decided further down the list).
    pub default: Option<BackendKind>,
    /// Backends of named services.
    pub services: BTreeMap<String, BackendKind>,
}

impl BackendChoice {
    /// Parses a `--backend` value: comma-separated `<backend>` or `<service>=<backend>`.
    pub fn parse(text: &str) -> Result<BackendChoice, String> {
        let mut choice = BackendChoice::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (service, value) = match item.split_once('=') {
                Some((s, v)) => (Some(s.trim()), v.trim()),
                None => (None, item),
            };
            let kind = match (service, value) {
                (None, "auto") => None,
                _ => Some(BackendKind::parse(value).ok_or_else(|| {
                    format!("`{value}` is not a backend; use {}", BackendKind::CHOICES)
                })?),
            };
            match (service, kind) {
                (Some(""), _) => return Err(format!("`{item}` names no service")),
                (Some(s), Some(k)) => {
                    if choice.services.insert(s.to_string(), k).is_some() {
                        return Err(format!("`{s}` is given a backend twice"));
                    }
                }
                (Some(_), None) => {}
                (None, k) => choice.default = k,
            }
        }
        Ok(choice)
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<String> = self.default.iter().map(|k| k.to_string()).collect();
        items.extend(self.services.iter().map(|(s, k)| format!("{s}={k}")));
        f.write_str(&items.join(","))
    }
}

/// The variable that chooses one service's backend: `HARNESS_BACKEND_<SERVICE>`.
pub fn service_var(service: &str) -> String {
    format!(
        "HARNESS_BACKEND_{}",
        service.to_uppercase().replace('-', "_")
    )
}

/// Which backend runs each service of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Backend by service name; every service of the manifest has one.
    pub services: BTreeMap<String, BackendKind>,
}

impl Plan {
    /// Every service on one backend.
    pub fn uniform(manifest: &Manifest, kind: BackendKind) -> Plan {
        Plan {
            services: manifest
                .services
                .iter()
                .map(|s| (s.name.clone(), kind))
                .collect(),
        }
    }

    /// The backend of a service (native for a name the plan does not know).
    pub fn of(&self, service: &str) -> BackendKind {
        self.services
            .get(service)
            .copied()
            .unwrap_or(BackendKind::Native)
    }

    /// The backends in use.
    pub fn kinds(&self) -> BTreeSet<BackendKind> {
        self.services.values().copied().collect()
    }

    /// The backend that names the stack: the one of its own services (kind `service`), else
    /// of its first service.
    pub fn main(&self, manifest: &Manifest) -> BackendKind {
        manifest
            .services
            .iter()
            .find(|s| s.kind == Kind::Service)
            .or(manifest.services.first())
            .map(|s| self.of(&s.name))
            .unwrap_or(BackendKind::Native)
    }

    /// `postgres=external, redis=external` for the services not on the main backend.
    pub fn describe(&self, manifest: &Manifest) -> String {
        let main = self.main(manifest);
        let others: Vec<String> = self
            .services
            .iter()
            .filter(|(_, k)| **k != main)
            .map(|(s, k)| format!("{s}={k}"))
            .collect();
        if others.is_empty() {
            format!("{main} backend")
        } else {
            format!("{main} backend; {}", others.join(", "))
        }
    }
}

/// The backend of each service as far as flags, environment and manifest decide it (see the
/// module docs); `None` is left to detection.
pub fn assign(
    manifest: &Manifest,
    default: Option<BackendKind>,
    services: &BTreeMap<String, BackendKind>,
    settings: &Settings,
) -> Result<BTreeMap<String, Option<BackendKind>>, Error> {
    for name in services.keys() {
        if manifest.service(name).is_none() {
            let names = manifest.services.iter().map(|s| s.name.as_str());
            let hint = match crate::model::names::closest(name, names.clone()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("the services are: {}", names.collect::<Vec<_>>().join(", ")),
            };
            return Err(Error::Usage(format!(
                "`--backend {name}=…` names a service the manifest does not define; {hint}"
            )));
        }
    }
    let stack_env = BackendKind::from_settings(settings)?;
    let mut out = BTreeMap::new();
    for s in &manifest.services {
        let var = service_var(&s.name);
        let from_env = match settings.get(&var).as_deref() {
            None | Some("auto") => None,
            Some(v) => Some(BackendKind::parse(v).ok_or_else(|| {
                Error::Usage(format!(
                    "{var} is `{v}`; use {}, or `auto`",
                    BackendKind::CHOICES
                ))
            })?),
        };
        let kind = services
            .get(&s.name)
            .copied()
            .or(from_env)
            .or(s.backend)
            .or(default)
            .or(stack_env);
        out.insert(s.name.clone(), kind);
    }
    Ok(out)
}

/// The full plan: [`assign`], then one detected backend for the services still open.
pub async fn plan(
    manifest: &Manifest,
    default: Option<BackendKind>,
    services: &BTreeMap<String, BackendKind>,
    settings: &Settings,
) -> Result<Plan, Error> {
    let assigned = assign(manifest, default, services, settings)?;
    let open: BTreeSet<&String> = assigned
        .iter()
        .filter(|(_, k)| k.is_none())
        .map(|(s, _)| s)
        .collect();
    let detected = if open.is_empty() {
        None
    } else {
        Some(super::detect(&manifest.only(|s| open.contains(&s.name)), settings).await?)
    };
    Ok(Plan {
        services: assigned
            .into_iter()
            .map(|(s, k)| (s, k.or(detected).unwrap_or(BackendKind::Native)))
            .collect(),
    })
}

/// One started service as [`Mixed`] remembers it.
#[derive(Debug, Clone)]
pub struct Started {
    /// Its backend.
    pub kind: BackendKind,
    /// Where the host reaches it.
    pub host: Endpoint,
    /// Where services of its own backend reach it.
    pub internal: Endpoint,
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]") || host.starts_with("127.")
}

/// The endpoint a service on backend `consumer` is given for a started dependency: the
/// internal one on the same backend; the host one from a native process; the host one through
/// the engine's host gateway from a container (loopback means the container itself there).
pub fn reach(consumer: BackendKind, dependency: &Started) -> Endpoint {
    if consumer == dependency.kind {
        return dependency.internal.clone();
    }
    match (consumer, dependency.kind) {
        (BackendKind::Container, _) if is_loopback(&dependency.host.host) => Endpoint {
            host: HOST_GATEWAY.into(),
            ..dependency.host.clone()
        },
        _ => dependency.host.clone(),
    }
}

/// Services on several backends, one backend each.
#[derive(Debug)]
pub struct Mixed {
    plan: Plan,
    backends: BTreeMap<BackendKind, (Box<dyn Backend>, Manifest)>,
    started: Mutex<BTreeMap<String, Started>>,
}

impl Mixed {
    /// Creates the backends the plan uses, each given its part of the manifest.
    pub fn new(
        plan: Plan,
        run: &crate::engine::cleanup::RunDir,
        manifest: &Manifest,
        bin_dir: &std::path::Path,
        settings: &Settings,
    ) -> Mixed {
        let backends = plan
            .kinds()
            .into_iter()
            .map(|kind| {
                let part = manifest.only(|s| plan.of(&s.name) == kind);
                (
                    kind,
                    (super::create(kind, run, &part, bin_dir, settings), part),
                )
            })
            .collect();
        Mixed {
            plan,
            backends,
            started: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Containers cannot reach native servers: those listen on the host's loopback only.
fn check_reachable(plan: &Plan, manifest: &Manifest) -> Result<(), Error> {
    let mut problems = Vec::new();
    for s in &manifest.services {
        if plan.of(&s.name) != BackendKind::Container {
            continue;
        }
        for d in &s.depends_on {
            if plan.of(&d.service) == BackendKind::Native {
                problems.push(format!(
                    "`{}` runs as a container and depends on `{}`, which runs natively on 127.0.0.1, out of a container's reach",
                    s.name, d.service
                ));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "{}\n  = help: run the dependency as a container too (`--backend {}=container`), or as an external server listening on an address of the host",
        problems.join("\n"),
        manifest
            .services
            .iter()
            .flat_map(|s| s.depends_on.iter())
            .find(|d| plan.of(&d.service) == BackendKind::Native)
            .map(|d| d.service.as_str())
            .unwrap_or("<service>")
    )))
}

#[async_trait]
impl Backend for Mixed {
    fn kind(&self) -> BackendKind {
        // The stack's name for it; each service's own is in the plan.
        self.backends
            .keys()
            .copied()
            .find(|k| *k != BackendKind::External)
            .unwrap_or(BackendKind::External)
    }

    async fn preflight(
        &self,
        manifest: &Manifest,
        sink: &std::sync::Arc<dyn Sink>,
    ) -> Result<(), Error> {
        check_reachable(&self.plan, manifest)?;
        for (backend, part) in self.backends.values() {
            backend.preflight(part, sink).await?;
        }
        Ok(())
    }

    async fn start(&self, req: StartRequest<'_>) -> Result<Box<dyn Instance>, Error> {
        let name = &req.service.name;
        let kind = self.plan.of(name);
        let (backend, _) = self
            .backends
            .get(&kind)
            .ok_or_else(|| Error::service(name, format!("no {kind} backend was created")))?;
        let deps: BTreeMap<String, Endpoint> = {
            let started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            req.deps
                .iter()
                .map(|(d, e)| {
                    let e = started.get(d).map(|s| reach(kind, s)).unwrap_or(e.clone());
                    (d.clone(), e)
                })
                .collect()
        };
        let instance = backend
            .start(StartRequest {
                service: req.service,
                user: req.user,
                password: req.password,
                database: req.database,
                deps: &deps,
                ports: req.ports,
            })
            .await?;
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                name.clone(),
                Started {
                    kind,
                    host: instance.endpoint(),
                    internal: instance.internal_endpoint(),
                },
            );
        Ok(instance)
    }
}

/// Creates what runs a plan: its one backend, or a [`Mixed`] one over several.
pub fn create(
    plan: &Plan,
    run: &crate::engine::cleanup::RunDir,
    manifest: &Manifest,
    bin_dir: &std::path::Path,
    settings: &Settings,
) -> Box<dyn Backend> {
    let kinds = plan.kinds();
    match kinds.iter().next() {
        Some(kind) if kinds.len() == 1 => super::create(*kind, run, manifest, bin_dir, settings),
        _ => Box::new(Mixed::new(plan.clone(), run, manifest, bin_dir, settings)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::template::Template;
    use std::path::Path;

    const SHOP: &str = r#"
[services.postgres]
kind = "postgres"
databases = ["orders"]

[services.redis]
kind = "redis"
backend = "external"

[services.orders]
kind = "service"
binary = "orders"
image = "shop/orders:1"
ports = { http = 8080 }
depends-on = ["postgres", "redis"]
env = { DATABASE_URL = "{{ postgres.url.orders }}", REDIS_URL = "{{ redis.url }}" }
"#;

    fn shop() -> Manifest {
        Manifest::parse(Path::new("m.toml"), SHOP).unwrap()
    }

    fn endpoint(kind: Kind, host: &str, port: u16) -> Endpoint {
        let (name, _) = kind.default_port().unwrap_or(("http", 0));
        Endpoint {
            kind,
            host: host.into(),
            ports: BTreeMap::from([(name.to_string(), port)]),
            primary: Some(name.into()),
            bind_host: "0.0.0.0".into(),
            user: Some("ci".into()),
            password: Some("secret".into()),
            database: None,
        }
    }

    fn external(kind: Kind, host: &str, port: u16) -> Started {
        let e = endpoint(kind, host, port);
        Started {
            kind: BackendKind::External,
            host: e.clone(),
            internal: e,
        }
    }

    /// Renders the orders service's environment the way `consumer` would start it.
    fn rendered(consumer: BackendKind, deps: &BTreeMap<String, Started>) -> Vec<String> {
        let m = shop();
        let given: BTreeMap<String, Endpoint> = deps
            .iter()
            .map(|(n, s)| (n.clone(), reach(consumer, s)))
            .collect();
        m.service("orders")
            .unwrap()
            .env
            .iter()
            .map(|(k, t): &(String, Template)| {
                format!("{k}={}", t.render(|n| given.get(n)).unwrap())
            })
            .collect()
    }

    #[test]
    fn a_native_service_gets_the_external_servers_own_address() {
        let deps = BTreeMap::from([
            (
                "postgres".to_string(),
                external(Kind::Postgres, "127.0.0.1", 5432),
            ),
            ("redis".to_string(), external(Kind::Redis, "10.1.2.3", 6379)),
        ]);
        assert_eq!(
            rendered(BackendKind::Native, &deps),
            [
                "DATABASE_URL=postgres://ci:secret@127.0.0.1:5432/orders",
                "REDIS_URL=redis://ci:secret@10.1.2.3:6379/0"
            ]
        );
    }

    #[test]
    fn a_container_reaches_an_external_server_on_the_host_through_the_gateway() {
        let deps = BTreeMap::from([
            (
                "postgres".to_string(),
                external(Kind::Postgres, "localhost", 5432),
            ),
            ("redis".to_string(), external(Kind::Redis, "10.1.2.3", 6379)),
        ]);
        // Loopback means the container itself: replaced by the gateway. A real address stays.
        assert_eq!(
            rendered(BackendKind::Container, &deps),
            [
                "DATABASE_URL=postgres://ci:secret@host.docker.internal:5432/orders",
                "REDIS_URL=redis://ci:secret@10.1.2.3:6379/0"
            ]
        );
    }

    #[test]
    fn same_backend_keeps_the_internal_address_and_a_native_one_gets_a_containers_host_port() {
        let container_pg = Started {
            kind: BackendKind::Container,
            host: endpoint(Kind::Postgres, "127.0.0.1", 49153),
            internal: endpoint(Kind::Postgres, "postgres", 5432),
        };
        assert_eq!(
            reach(BackendKind::Container, &container_pg)
                .address()
                .unwrap(),
            "postgres:5432"
        );
        assert_eq!(
            reach(BackendKind::Native, &container_pg).address().unwrap(),
            "127.0.0.1:49153"
        );
    }

    #[test]
    fn the_services_own_setting_beats_the_stacks_and_flags_beat_the_environment() {
        let m = shop();
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            Settings::from_pairs(pairs.iter().copied())
        };
        let none = BTreeMap::new();
        // The manifest's `backend = "external"` for redis; the rest left to detection.
        let a = assign(&m, None, &none, &vars(&[])).unwrap();
        assert_eq!(a["redis"], Some(BackendKind::External));
        assert_eq!(a["postgres"], None);
        // HARNESS_BACKEND_<SERVICE> beats the manifest's, which beats HARNESS_BACKEND.
        let env = vars(&[
            ("HARNESS_BACKEND", "native"),
            ("HARNESS_BACKEND_POSTGRES", "external"),
        ]);
        let a = assign(&m, None, &none, &env).unwrap();
        assert_eq!(a["postgres"], Some(BackendKind::External));
        assert_eq!(a["redis"], Some(BackendKind::External));
        assert_eq!(a["orders"], Some(BackendKind::Native));
        let env = vars(&[("HARNESS_BACKEND_REDIS", "container")]);
        let a = assign(&m, Some(BackendKind::Native), &none, &env).unwrap();
        assert_eq!(a["redis"], Some(BackendKind::Container));
        // `--backend container` beats HARNESS_BACKEND; `--backend postgres=native` beats all.
        let env = vars(&[
            ("HARNESS_BACKEND", "native"),
            ("HARNESS_BACKEND_POSTGRES", "external"),
        ]);
        let flags = BTreeMap::from([("postgres".to_string(), BackendKind::Native)]);
        let a = assign(&m, Some(BackendKind::Container), &flags, &env).unwrap();
        assert_eq!(a["postgres"], Some(BackendKind::Native));
        assert_eq!(a["orders"], Some(BackendKind::Container));
        assert_eq!(a["redis"], Some(BackendKind::External));
        // Mistakes are named.
        let bad = vars(&[("HARNESS_BACKEND_REDIS", "docker")]);
        let err = assign(&m, None, &none, &bad).unwrap_err().to_string();
        assert!(err.contains("HARNESS_BACKEND_REDIS is `docker`"), "{err}");
        let typo = BTreeMap::from([("postgress".to_string(), BackendKind::External)]);
        let err = assign(&m, None, &typo, &vars(&[])).unwrap_err().to_string();
        assert!(err.contains("did you mean `postgres`?"), "{err}");
    }

    #[test]
    fn backend_flags_parse_and_print() {
        let c = BackendChoice::parse("native").unwrap();
        assert_eq!(c.default, Some(BackendKind::Native));
        assert!(c.services.is_empty());
        let c = BackendChoice::parse("postgres=external, redis=external,native").unwrap();
        assert_eq!(c.default, Some(BackendKind::Native));
        assert_eq!(c.services["postgres"], BackendKind::External);
        assert_eq!(c.to_string(), "native,postgres=external,redis=external");
        assert_eq!(BackendChoice::parse(&c.to_string()).unwrap(), c);
        assert!(BackendChoice::parse("postgres=podman")
            .unwrap_err()
            .contains("`podman` is not a backend"));
        assert!(BackendChoice::parse("=native").is_err());
        assert!(BackendChoice::parse("redis=native,redis=external").is_err());
    }

    #[test]
    fn containers_are_refused_a_native_dependency_they_cannot_reach() {
        let m = shop();
        let mut plan = Plan::uniform(&m, BackendKind::Container);
        assert!(check_reachable(&plan, &m).is_ok());
        plan.services.insert("redis".into(), BackendKind::External);
        assert!(check_reachable(&plan, &m).is_ok());
        plan.services.insert("postgres".into(), BackendKind::Native);
        let err = check_reachable(&plan, &m).unwrap_err().to_string();
        assert!(
            err.contains(
                "`orders` runs as a container and depends on `postgres`, which runs natively"
            ),
            "{err}"
        );
        assert_eq!(plan.main(&m), BackendKind::Container);
        assert_eq!(
            plan.describe(&m),
            "container backend; postgres=native, redis=external"
        );
    }
}
