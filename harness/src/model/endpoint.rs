//! Endpoints: where a service can be reached, with its credentials.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::kind::{self, Kind, Target};

/// Where a service can be reached from one vantage point (the host, or another service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// What the service is; decides the URL scheme.
    pub kind: Kind,
    /// Host name or address.
    pub host: String,
    /// Named ports.
    pub ports: BTreeMap<String, u16>,
    /// Name of the primary port, if the service has ports.
    pub primary: Option<String>,
    /// Host the service itself listens on (`0.0.0.0` in a container, `127.0.0.1` natively).
    pub bind_host: String,
    /// User name, if the service has one.
    pub user: Option<String>,
    /// Password, if the service has one.
    pub password: Option<String>,
    /// Default database, if the service has one.
    pub database: Option<String>,
}

impl Endpoint {
    /// The primary port, or a named one.
    pub fn port(&self, name: Option<&str>) -> Result<u16, String> {
        let name = match name {
            Some(n) => n,
            None => self
                .primary
                .as_deref()
                .ok_or("the service declares no ports")?,
        };
        self.ports
            .get(name)
            .copied()
            .ok_or_else(|| format!("the service has no port named `{name}`"))
    }

    /// `host:port` of the primary port.
    pub fn address(&self) -> Result<String, String> {
        Ok(format!("{}:{}", self.host, self.port(None)?))
    }

    /// A connection URL for the service, optionally naming another database.
    pub fn url(&self, database: Option<&str>) -> Result<String, String> {
        Ok(kind::url(self.kind, &self.target()?, database))
    }

    /// The primary port's host, port and credentials, as a kind's probe and setup take them.
    pub fn target(&self) -> Result<Target, String> {
        Ok(Target {
            host: self.host.clone(),
            port: self.port(None)?,
            user: self.user.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A postgres endpoint with credentials that need encoding in a URL.
    pub(crate) fn pg() -> Endpoint {
        Endpoint {
            kind: Kind::Postgres,
            host: "127.0.0.1".into(),
            ports: BTreeMap::from([("postgres".into(), 5433)]),
            primary: Some("postgres".into()),
            bind_host: "127.0.0.1".into(),
            user: Some("u".into()),
            password: Some("p@ss".into()),
            database: Some("app".into()),
        }
    }

    #[test]
    fn urls_per_kind() {
        assert_eq!(
            pg().url(None).unwrap(),
            "postgres://u:p%40ss@127.0.0.1:5433/app"
        );
        assert_eq!(
            pg().url(Some("orders")).unwrap(),
            "postgres://u:p%40ss@127.0.0.1:5433/orders"
        );
        let amqp = Endpoint {
            kind: Kind::Rabbitmq,
            ports: BTreeMap::from([("amqp".into(), 5672)]),
            primary: Some("amqp".into()),
            database: None,
            ..pg()
        };
        assert_eq!(
            amqp.url(None).unwrap(),
            "amqp://u:p%40ss@127.0.0.1:5672/%2F"
        );
    }
}
