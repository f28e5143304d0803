//! Server kinds: what `kind = "postgres"` means, one module per kind behind one trait.
//!
//! [`Kind`] is the list of kinds a manifest may name; [`Kind::server`] is the table from a
//! kind to what it means ([`Server`]). Adding a kind is a module here, a variant and a row of
//! that table: nothing else in the harness matches on kinds.

pub mod mariadb;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod server;
pub mod wire;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use server::{Credentials, Entrypoint, NativeHost, Process, Program, Server, Target};

/// What a service is: one of the built-in servers, or a generic service of the user's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// PostgreSQL.
    Postgres,
    /// Redis.
    Redis,
    /// RabbitMQ (AMQP 0-9-1).
    Rabbitmq,
    /// MariaDB (the MySQL protocol).
    Mariadb,
    /// A generic service: a process (native) or an image (container).
    Service,
}

impl Kind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: &'static [Kind] = &[
        Kind::Postgres,
        Kind::Redis,
        Kind::Rabbitmq,
        Kind::Mariadb,
        Kind::Service,
    ];

    /// What a built-in server kind means; `None` for a generic service.
    pub fn server(self) -> Option<&'static dyn Server> {
        match self {
            Kind::Postgres => Some(&postgres::Postgres),
            Kind::Redis => Some(&redis::Redis),
            Kind::Rabbitmq => Some(&rabbitmq::Rabbitmq),
            Kind::Mariadb => Some(&mariadb::Mariadb),
            Kind::Service => None,
        }
    }

    /// The name a manifest uses for the kind.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Redis => "redis",
            Kind::Rabbitmq => "rabbitmq",
            Kind::Mariadb => "mariadb",
            Kind::Service => "service",
        }
    }

    /// The image used on the container backend when the manifest names none.
    pub fn default_image(self) -> Option<&'static str> {
        self.server().map(|s| s.image())
    }

    /// The port a built-in server listens on, under its conventional name.
    pub fn default_port(self) -> Option<(&'static str, u16)> {
        self.server().map(|s| s.port())
    }

    /// The URL scheme of the service's primary endpoint.
    pub fn scheme(self) -> &'static str {
        self.server().map_or("http", |s| s.scheme())
    }

    /// The kind whose protocol probe a manifest names (`probe = { kind = "amqp" }`).
    pub fn of_protocol(protocol: &str) -> Option<Kind> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.server().is_some_and(|s| s.protocol() == protocol))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A connection URL for a server of `kind`, naming `path` (a database, an index, a vhost) or
/// the kind's default; a generic service's is `http://address[/path]`.
pub fn url(kind: Kind, target: &Target, path: Option<&str>) -> String {
    let address = format!("{}:{}", target.host, target.port);
    let Some(server) = kind.server() else {
        return format!(
            "http://{address}{}",
            path.map(|p| format!("/{p}")).unwrap_or_default()
        );
    };
    let auth = match (&target.user, &target.password) {
        (Some(u), Some(p)) => format!("{}:{}@", encode(u), encode(p)),
        (Some(u), None) => format!("{}@", encode(u)),
        (None, Some(p)) => format!(":{}@", encode(p)),
        (None, None) => String::new(),
    };
    let path = path
        .or(target
            .database
            .as_deref()
            .filter(|_| server.path_is_database()))
        .unwrap_or(server.default_path());
    let path = if server.encodes_path() {
        encode(path)
    } else {
        path.to_string()
    };
    format!("{}://{auth}{address}/{path}", server.scheme())
}

/// Percent-encodes what may not appear raw in the user-info or path of a URL.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The given variables that have a value, for a container's environment.
fn env_of(vars: &[(&str, &Option<String>)]) -> Vec<(String, String)> {
    vars.iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
        .collect()
}
