//! What the container backend asks of a built-in server's kind (typical boot time, data
//! directory, environment, entrypoint on a bare base image, default command), and how a bare
//! base image runs that entrypoint.

use crate::manifest::Kind;
use crate::model::endpoint::Endpoint;

/// Typical seconds from launch to ready, per kind, to estimate the critical path before
/// anything was measured.
pub(super) fn typical_boot(kind: Kind) -> f64 {
    kind.server().map_or(0.5, |s| s.typical_boot())
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
/// entrypoint script and its stop signal.
pub(crate) fn base_entrypoint(kind: Kind) -> Option<(&'static str, Option<&'static str>)> {
    let e = kind.server()?.entrypoint()?;
    Some((e.script, e.stop_signal))
}

/// Where a built-in server keeps its data inside its container (the official images' and ours).
pub(super) fn data_dir(kind: Kind) -> Option<&'static str> {
    kind.server()?.data_dir()
}

/// A built-in server's command when the manifest gives no `args` (speed over durability).
pub(crate) fn default_args(kind: Kind) -> Vec<String> {
    kind.server().map(|s| s.default_args()).unwrap_or_default()
}

/// The environment the official images of the built-in servers take their settings from.
pub(crate) fn builtin_env(kind: Kind, ep: &Endpoint) -> Vec<(String, String)> {
    match (kind.server(), ep.target()) {
        (Some(server), Ok(target)) => server.container_env(&target),
        _ => Vec::new(),
    }
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
