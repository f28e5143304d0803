//! What differs per kind of built-in server in a container: its typical boot time, its data
//! directory, the environment its image takes, its entrypoint on a bare base image and the
//! PostgreSQL settings.

use crate::endpoint::Endpoint;
use crate::manifest::Kind;

/// Typical seconds from launch to ready, per kind, to estimate the critical path before
/// anything was measured.
pub(super) fn typical_boot(kind: Kind) -> f64 {
    match kind {
        Kind::Rabbitmq => 5.0,
        Kind::Postgres => 3.0,
        Kind::Redis => 0.3,
        Kind::Service => 0.5,
    }
}

/// The variable that carries a bare base image's entrypoint script into its container.
pub(crate) const ENTRYPOINT_ENV: &str = "HARNESS_ENTRYPOINT";

/// The entrypoint of a built-in server on a bare base image: the script from
/// [`ENTRYPOINT_ENV`] written to a file (the postgres script runs itself again as its user),
/// then run with the command as its arguments.
pub(crate) const BASE_RUNNER: [&str; 4] = [
    "/bin/bash",
    "-c",
    "printf '%s' \"$HARNESS_ENTRYPOINT\" >/usr/local/bin/docker-entrypoint.sh && exec /bin/bash /usr/local/bin/docker-entrypoint.sh \"$@\"",
    "docker-entrypoint",
];

/// What an image built per server used to carry, given at run time instead to a built-in
/// server whose image is a bare tag of the local base image (`fixtures/images/build.sh` tags
/// the base rather than spend half a minute or more on a `docker build` of a few kB): its
/// entrypoint script and its stop signal (SIGINT is postgres' fast shutdown; SIGTERM would
/// wait for every client to disconnect).
pub(crate) fn base_entrypoint(kind: Kind) -> Option<(&'static str, Option<&'static str>)> {
    match kind {
        Kind::Postgres => Some((include_str!("../entrypoints/postgres.sh"), Some("SIGINT"))),
        Kind::Redis => Some((include_str!("../entrypoints/redis.sh"), None)),
        Kind::Rabbitmq => Some((include_str!("../entrypoints/rabbitmq.sh"), None)),
        Kind::Service => None,
    }
}

/// Where a built-in server keeps its data inside its container (the official images' and ours).
pub(super) fn data_dir(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Postgres => Some("/var/lib/postgresql/data"),
        Kind::Rabbitmq => Some("/var/lib/rabbitmq"),
        Kind::Redis | Kind::Service => None,
    }
}

/// Server settings of the postgres container when the manifest gives no `args`: durability is
/// traded for speed, as in the native backend (test data only).
pub(crate) const POSTGRES_SETTINGS: &[&str] = &[
    "-c",
    "fsync=off",
    "-c",
    "synchronous_commit=off",
    "-c",
    "full_page_writes=off",
    "-c",
    "max_connections=200",
];

/// The environment the official images of the built-in servers take their settings from.
pub(crate) fn builtin_env(kind: Kind, ep: &Endpoint) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            env.push((k.to_string(), v.clone()));
        }
    };
    match kind {
        Kind::Postgres => {
            put("POSTGRES_USER", &ep.user);
            put("POSTGRES_PASSWORD", &ep.password);
            put("POSTGRES_DB", &ep.database);
        }
        Kind::Rabbitmq => {
            put("RABBITMQ_DEFAULT_USER", &ep.user);
            put("RABBITMQ_DEFAULT_PASS", &ep.password);
            put("RABBITMQ_DEFAULT_VHOST", &ep.database);
        }
        Kind::Redis | Kind::Service => {}
    }
    env
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn builtin_servers_get_the_official_images_environment() {
        let ep = Endpoint {
            kind: Kind::Postgres,
            host: "postgres".into(),
            ports: BTreeMap::from([("postgres".into(), 5432)]),
            primary: Some("postgres".into()),
            bind_host: "0.0.0.0".into(),
            user: Some("u".into()),
            password: Some("p".into()),
            database: Some("app".into()),
        };
        let env = builtin_env(Kind::Postgres, &ep);
        assert_eq!(
            env,
            [
                ("POSTGRES_USER", "u"),
                ("POSTGRES_PASSWORD", "p"),
                ("POSTGRES_DB", "app")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let rabbit = Endpoint {
            database: None,
            ..ep.clone()
        };
        assert_eq!(builtin_env(Kind::Rabbitmq, &rabbit).len(), 2);
        assert!(builtin_env(Kind::Redis, &ep).is_empty());
    }
}
