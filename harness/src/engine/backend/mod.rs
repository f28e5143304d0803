//! Backends run services: as local processes ([`native`]), as containers on a private network
//! ([`container`]), or not at all ([`external`]: endpoints come from the environment). Every
//! backend produces [`Instance`]s, and the `Stack` handle on top is the
//! same for all of them.
//!
//! Which one runs a stack: `--backend` / [`StackOptions::backend`](crate::StackOptions), else
//! `HARNESS_BACKEND`, else [`detect`]ed. Each service can have a backend of its own
//! ([`mixed`]): CI service containers as `external`, the team's services native.

#[cfg(feature = "containers")]
pub mod container;
#[cfg(not(feature = "containers"))]
#[path = "no_container.rs"]
pub mod container;
pub mod external;
pub mod interface;
pub mod mixed;
pub mod native;

pub use interface::{Backend, Instance, StartRequest};

use crate::engine::error::Error;
pub use crate::manifest::BackendKind;
use crate::manifest::Manifest;
use crate::settings::Settings;

impl BackendKind {
    /// The backend `HARNESS_BACKEND` asks for in `settings`: `None` when it is unset, empty or
    /// `auto`.
    pub fn from_settings(settings: &Settings) -> Result<Option<BackendKind>, Error> {
        parse_backend(settings.get("HARNESS_BACKEND").as_deref())
    }
}

/// Parses a `HARNESS_BACKEND` value; `None` (and `auto`) leave the choice to [`detect`].
pub fn parse_backend(value: Option<&str>) -> Result<Option<BackendKind>, Error> {
    match value.map(str::trim) {
        None | Some("") | Some("auto") => Ok(None),
        Some("native") => Ok(Some(BackendKind::Native)),
        Some("container") => Ok(Some(BackendKind::Container)),
        Some("external") => Ok(Some(BackendKind::External)),
        Some(other) => Err(Error::Usage(format!(
            "HARNESS_BACKEND is `{other}`; use `container`, `native`, `external` or `auto`"
        ))),
    }
}

/// Picks a backend able to run the manifest without fetching anything: the container backend
/// when a Docker engine answers and every image the manifest needs is present locally; else
/// native when its servers and binaries are installed; else external when every endpoint is
/// configured; else an error naming what each one lacks. Nothing is pulled or built, so the
/// choice depends only on what this machine already has.
pub async fn detect(manifest: &Manifest, settings: &Settings) -> Result<BackendKind, Error> {
    let container = container::available(manifest, settings).await;
    if container.is_ok() {
        return Ok(BackendKind::Container);
    }
    let native = native::check(manifest, &settings.bin_dir(manifest.dir()));
    if native.is_ok() {
        return Ok(BackendKind::Native);
    }
    choose(container, native, external::check(manifest, settings))
}

/// The decision of [`detect`], given what each backend lacks (`Err`) or that it can run the
/// stack (`Ok`): container first, then native, then external.
pub fn choose(
    container: Result<(), String>,
    native: Result<(), Error>,
    external: Result<(), Error>,
) -> Result<BackendKind, Error> {
    let (container, native, external) = match (container, native, external) {
        (Ok(()), _, _) => return Ok(BackendKind::Container),
        (_, Ok(()), _) => return Ok(BackendKind::Native),
        (_, _, Ok(())) => return Ok(BackendKind::External),
        (Err(c), Err(n), Err(e)) => (c, n, e),
    };
    let what = |e: Error| match e {
        Error::Prerequisite { what, .. } => what,
        other => other.to_string(),
    };
    let indent = |s: String| s.replace('\n', "\n    ");
    Err(Error::Prerequisite {
        what: format!(
            "no backend can run this stack on this machine:\n  - container: {}\n  - native: {}\n  - external: {}",
            indent(container),
            indent(what(native)),
            indent(what(external)),
        ),
        help: [
            "containers: start a Docker engine (or set DOCKER_HOST) and provide the images: `fixtures/images/build.sh`, then `set -a; . fixtures/images/local.env; set +a`",
            "native: install the servers (`apt-get install -y postgresql redis-server rabbitmq-server`) and `cargo build` the service binaries",
            "external: export every service's endpoint (`HARNESS_<SERVICE>_HOST`, `_PORT`, ...)",
            "or choose one explicitly with `--backend` or HARNESS_BACKEND=container|native|external",
        ]
        .join("\n  = help: "),
    })
}

/// The last `n` lines of a log source, whichever backend's service wrote it.
pub fn log_tail(source: &crate::engine::logs::LogSource, n: usize) -> Vec<String> {
    match source {
        crate::engine::logs::LogSource::File(path) => crate::engine::logs::file_tail(path, n),
        crate::engine::logs::LogSource::Container(id) => container::log_tail(id, n),
    }
}

/// Creates the backend of the given kind for one run.
pub fn create(
    kind: BackendKind,
    run: &crate::engine::cleanup::RunDir,
    manifest: &Manifest,
    bin_dir: &std::path::Path,
    settings: &Settings,
) -> Box<dyn Backend> {
    match kind {
        BackendKind::Native => {
            Box::new(native::Native::new(run, manifest.dir(), bin_dir, settings))
        }
        BackendKind::External => Box::new(external::External(settings.clone())),
        BackendKind::Container => {
            Box::new(container::Container::new(run, manifest, bin_dir, settings))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(what: &str) -> Error {
        Error::Prerequisite {
            what: what.into(),
            help: "h".into(),
        }
    }

    #[test]
    fn harness_backend_values() {
        assert_eq!(parse_backend(None).unwrap(), None);
        assert_eq!(parse_backend(Some("auto")).unwrap(), None);
        assert_eq!(parse_backend(Some("")).unwrap(), None);
        assert_eq!(
            parse_backend(Some("container")).unwrap(),
            Some(BackendKind::Container)
        );
        assert_eq!(
            parse_backend(Some("native")).unwrap(),
            Some(BackendKind::Native)
        );
        assert_eq!(
            parse_backend(Some("external")).unwrap(),
            Some(BackendKind::External)
        );
        let err = parse_backend(Some("docker")).unwrap_err().to_string();
        assert!(
            err.contains(
                "HARNESS_BACKEND is `docker`; use `container`, `native`, `external` or `auto`"
            ),
            "{err}"
        );
    }

    #[test]
    fn containers_win_when_the_engine_and_every_image_are_there() {
        let kind = choose(Ok(()), Ok(()), Ok(())).unwrap();
        assert_eq!(kind, BackendKind::Container);
        let kind = choose(Ok(()), Err(missing("n")), Err(missing("e"))).unwrap();
        assert_eq!(kind, BackendKind::Container);
    }

    #[test]
    fn native_when_containers_cannot_run_it() {
        let kind = choose(
            Err("images not present locally: postgres:16".into()),
            Ok(()),
            Ok(()),
        )
        .unwrap();
        assert_eq!(kind, BackendKind::Native);
    }

    #[test]
    fn external_only_when_nothing_else_can() {
        let kind = choose(Err("no engine".into()), Err(missing("no initdb")), Ok(())).unwrap();
        assert_eq!(kind, BackendKind::External);
    }

    #[test]
    fn nothing_available_names_what_each_backend_lacks_and_how_to_get_it() {
        let err = choose(
            Err("no Docker engine answers at unix:///var/run/docker.sock".into()),
            Err(missing(
                "the native backend cannot start this stack; missing:\n  - `initdb`",
            )),
            Err(missing("HARNESS_POSTGRES_PORT not set")),
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), crate::exit_code::PREREQUISITE_MISSING);
        let text = err.to_string();
        assert!(
            text.contains("  - container: no Docker engine answers"),
            "{text}"
        );
        assert!(text.contains("  - native: the native backend cannot start this stack; missing:\n      - `initdb`"), "{text}");
        assert!(
            text.contains("  - external: HARNESS_POSTGRES_PORT not set"),
            "{text}"
        );
        assert!(text.contains("fixtures/images/build.sh"), "{text}");
        assert!(text.contains("apt-get install"), "{text}");
        assert!(text.contains("--backend"), "{text}");
    }
}
