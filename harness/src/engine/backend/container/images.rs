//! Which image each service runs ([`plan`]), the workspace binaries mounted into them, and
//! making sure the images are there (inspecting, pulling per the policy) before a stack starts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use testcontainers::bollard::query_parameters::CreateImageOptionsBuilder;
use testcontainers::bollard::Docker;

use super::engine::{connect, status_of};
use super::servers::base_entrypoint;
use crate::engine::error::Error;
use crate::engine::events::Sink;
use crate::manifest::{Manifest, PullPolicy};
use crate::settings::Settings;

/// The image a service runs, and where that choice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageChoice {
    /// The image reference.
    pub image: String,
    /// Where it came from, for messages (`HARNESS_IMAGE_POSTGRES`, `the manifest`, ...).
    pub from: String,
}

/// Which image every service runs, and the pull policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlan {
    /// `HARNESS_PULL`, else `[stack] pull`, else `if-missing`.
    pub pull: PullPolicy,
    /// Image per service.
    pub images: BTreeMap<String, ImageChoice>,
    /// Services that name no image (a `service` with only a `binary` or `command`).
    pub unset: Vec<String>,
    /// Images built from a Dockerfile context (`build`): the tag, its service and how.
    pub builds: BTreeMap<String, (String, crate::manifest::Build)>,
    /// The built images only services of one's own (`kind = "service"`) run: when missing,
    /// they are built while the rest of the stack starts, not before.
    pub deferrable: BTreeSet<String>,
}

impl ImagePlan {
    /// Services per image, each image once.
    pub fn by_image(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (service, choice) in &self.images {
            out.entry(choice.image.as_str())
                .or_default()
                .push(service.as_str());
        }
        out
    }
}

/// The environment variable that replaces a service's image: `HARNESS_IMAGE_<SERVICE>`
/// (upper case, `-` as `_`).
pub fn image_var(service: &str) -> String {
    format!("HARNESS_IMAGE_{}", service.to_uppercase().replace('-', "_"))
}

/// Decides each service's image. First match wins:
///
/// 1. `HARNESS_IMAGE_<SERVICE>=image:tag`;
/// 2. `[stack.images] <service> = "image:tag"` in the manifest;
/// 3. the service's `image` (or its kind's official image: `postgres:16`, `redis:7`,
///    `rabbitmq:3`), behind the prefix `HARNESS_IMAGE_PREFIX`, else `[stack] image-prefix`
///    (`<prefix>/<image>`).
///
/// The pull policy is `HARNESS_PULL`, else `[stack] pull`, else `if-missing`.
pub fn plan(manifest: &Manifest, settings: &Settings) -> Result<ImagePlan, Error> {
    let get = |name: &str| settings.get(name);
    let pull = match get("HARNESS_PULL") {
        Some(v) => PullPolicy::parse(&v).ok_or_else(|| {
            Error::Usage(format!(
                "HARNESS_PULL is `{v}`; use {}",
                PullPolicy::CHOICES
            ))
        })?,
        None => manifest.images.pull.unwrap_or_default(),
    };
    let prefix = match get("HARNESS_IMAGE_PREFIX") {
        Some(p) => {
            let p = p.trim_end_matches('/').to_string();
            if !crate::manifest::valid_image(&p) || p.contains("://") {
                return Err(Error::Usage(format!(
                    "HARNESS_IMAGE_PREFIX is `{p}`; give a registry or mirror without a scheme, e.g. `mirror.example.com:5000`"
                )));
            }
            Some((p, "HARNESS_IMAGE_PREFIX".to_string()))
        }
        None => manifest
            .images
            .prefix
            .clone()
            .map(|p| (p, "`[stack] image-prefix`".to_string())),
    };
    let mut images = BTreeMap::new();
    let mut unset = Vec::new();
    let mut builds = BTreeMap::new();
    for service in &manifest.services {
        let var = image_var(&service.name);
        let choice = if let Some(image) = get(&var) {
            if !crate::manifest::valid_image(&image) {
                return Err(Error::Usage(format!(
                    "{var} is `{image}`, which is not an image reference"
                )));
            }
            ImageChoice { image, from: var }
        } else if let Some(image) = manifest.images.overrides.get(&service.name) {
            ImageChoice {
                image: image.clone(),
                from: "`[stack.images]` of the manifest".into(),
            }
        } else if let Some((image, var)) = service.kind.server().and_then(|_| {
            let var = format!(
                "HARNESS_SERVER_IMAGE_{}",
                service.kind.name().to_uppercase()
            );
            get(&var).map(|i| (i, var))
        }) {
            ImageChoice { image, from: var }
        } else if let Some(build) = &service.build {
            let image = super::build::tag(&service.name, build)
                .map_err(|e| Error::service(&service.name, e))?;
            builds.insert(image.clone(), (service.name.clone(), build.clone()));
            ImageChoice {
                image,
                from: format!("built from {}", build.context.display()),
            }
        } else if let Some(image) = &service.image {
            let default = service.kind.default_image() == Some(image.as_str());
            let from = if default {
                format!("the default for `{}` services", service.kind)
            } else {
                "the manifest".to_string()
            };
            match &prefix {
                Some((p, by)) => ImageChoice {
                    image: format!("{p}/{image}"),
                    from: format!("{from}, behind {by}"),
                },
                None => ImageChoice {
                    image: image.clone(),
                    from,
                },
            }
        } else {
            unset.push(service.name.clone());
            continue;
        };
        images.insert(service.name.clone(), choice);
    }
    let deferrable = builds
        .keys()
        .filter(|image| {
            images
                .iter()
                .filter(|(_, c)| c.image == **image)
                .all(|(s, _)| {
                    manifest
                        .service(s)
                        .is_some_and(|m| m.kind == crate::manifest::Kind::Service)
                })
        })
        .cloned()
        .collect();
    Ok(ImagePlan {
        pull,
        images,
        unset,
        builds,
        deferrable,
    })
}

/// [`mounted_binaries`] as `settings` decide them, of the binaries in `bins`.
pub fn planned_mounts(
    manifest: &Manifest,
    bins: &Path,
    settings: &Settings,
) -> BTreeMap<String, PathBuf> {
    plan(manifest, settings)
        .map(|p| mounted_binaries(manifest, &p, settings, bins))
        .unwrap_or_default()
}

/// Where a mounted workspace binary appears inside its container.
pub(crate) const MOUNTED_BIN_DIR: &str = "/harness/bin";

/// The workspace binaries the container backend runs fresh from the host: every `binary`
/// service whose image is the manifest's own (not replaced by `HARNESS_IMAGE_<SERVICE>` or
/// `[stack.images]`, e.g. a candidate image under verification), when the binary is built.
/// The binary is mounted read-only into the service's image and run as its entrypoint, so a
/// `cargo build` is all a change needs: no image is rebuilt, and a stale image never runs old
/// code. `HARNESS_MOUNT_BINARIES=0` runs the images as they are.
pub fn mounted_binaries(
    manifest: &Manifest,
    plan: &ImagePlan,
    settings: &Settings,
    bins: &Path,
) -> BTreeMap<String, PathBuf> {
    if settings.is_off("HARNESS_MOUNT_BINARIES") {
        return BTreeMap::new();
    }
    manifest
        .services
        .iter()
        .filter_map(|s| {
            let crate::manifest::Launch::Binary(b) = &s.launch else {
                return None;
            };
            let own = plan
                .images
                .get(&s.name)
                .is_some_and(|c| c.from.starts_with("the manifest"));
            let path = bins.join(b);
            (own && path.is_file()).then(|| (s.name.clone(), path))
        })
        .collect()
}

/// Whether an image is present in the engine.
async fn image_present(docker: &Docker, image: &str) -> Result<bool, String> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) if status_of(&e) == Some(404) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// The id of the image each service of `manifest` runs (as [`plan`] chooses it with
/// `settings`); services whose image cannot be inspected are left out.
pub async fn image_ids(manifest: &Manifest, settings: &Settings) -> BTreeMap<String, String> {
    let (Ok(plan), Ok(docker)) = (plan(manifest, settings), connect().await) else {
        return BTreeMap::new();
    };
    let mut ids = BTreeMap::new();
    for (image, services) in plan.by_image() {
        // A built image's tag is already a hash of what it is built from; and it may still be
        // building while the fingerprints are taken.
        if plan.builds.contains_key(image) {
            for s in services {
                ids.insert(s.to_string(), image.to_string());
            }
            continue;
        }
        if let Ok(inspect) = docker.inspect_image(image).await {
            if let Some(id) = inspect.id {
                for s in services {
                    ids.insert(s.to_string(), id.clone());
                }
            }
        }
    }
    ids
}

/// Pulls an image, following the engine's progress until it is done or fails.
async fn pull(docker: &Docker, image: &str) -> Result<(), String> {
    let options = CreateImageOptionsBuilder::new().from_image(image).build();
    let mut progress = docker.create_image(Some(options), None, None);
    while let Some(step) = progress.next().await {
        let step = step.map_err(|e| e.to_string())?;
        if let Some(e) = step.error_detail.and_then(|d| d.message) {
            return Err(e);
        }
    }
    Ok(())
}

/// One image that cannot be had, and why.
#[derive(Debug, Clone)]
pub(super) struct Unavailable {
    image: String,
    services: Vec<String>,
    reason: String,
}

/// Checks (and per the policy pulls) every image of the plan; returns those not available,
/// and the images to build that [`ImagePlan::deferrable`] lets wait (built by the caller
/// while the services they do not concern start).
pub(super) async fn provide_images(
    docker: &Docker,
    plan: &ImagePlan,
    sink: &dyn Sink,
) -> (Vec<Unavailable>, Vec<String>) {
    let deferred = std::sync::Mutex::new(Vec::new());
    let deferred_ref = &deferred;
    let checks = plan
        .by_image()
        .into_iter()
        .map(|(image, services)| async move {
            let present = image_present(docker, image).await;
            let built = plan.builds.get(image);
            let reason = match (plan.pull, present) {
                (_, Err(e)) => Some(format!("cannot inspect it: {e}")),
                (_, Ok(true)) if built.is_some() => None,
                (_, Ok(false)) if plan.deferrable.contains(image) => {
                    deferred_ref
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(image.to_string());
                    None
                }
                (_, Ok(false)) if built.is_some() => {
                    let (service, build) = built.expect("checked");
                    super::build::build_image(docker, service, image, build, sink)
                        .await
                        .err()
                }
                (PullPolicy::Never, Ok(true)) | (PullPolicy::IfMissing, Ok(true)) => None,
                (PullPolicy::Never, Ok(false)) => {
                    Some("not present locally, and the pull policy is `never`".into())
                }
                (PullPolicy::IfMissing, Ok(false)) => pull(docker, image)
                    .await
                    .err()
                    .map(|e| format!("not present locally, and pulling it failed: {e}")),
                (PullPolicy::Always, Ok(_)) => pull(docker, image)
                    .await
                    .err()
                    .map(|e| format!("pulling it failed (pull policy `always`): {e}")),
            };
            reason.map(|reason| Unavailable {
                image: image.to_string(),
                services: services.iter().map(|s| s.to_string()).collect(),
                reason,
            })
        });
    let missing = futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect();
    (
        missing,
        deferred.into_inner().unwrap_or_else(|p| p.into_inner()),
    )
}

/// The preflight's error for images that cannot be had, with how to provide each.
pub(super) fn images_error(plan: &ImagePlan, missing: &[Unavailable]) -> Error {
    let mut what = String::from("the container backend cannot start this stack; not available:");
    for m in missing {
        let services = m
            .services
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let from = m
            .services
            .first()
            .and_then(|s| plan.images.get(s))
            .map(|c| c.from.as_str())
            .unwrap_or("");
        what.push_str(&format!(
            "\n  - image `{}` (service {services}; {from}): {}",
            m.image, m.reason
        ));
    }
    for s in &plan.unset {
        what.push_str(&format!("\n  - an image for service `{s}`: it names none"));
    }
    let mut help = vec![
        "build the local images: `fixtures/images/build.sh` (a service image: `fixtures/images/build.sh service <name> <binary> <dockerfile-dir>`)".to_string(),
        "then point the services at them: `set -a; . fixtures/images/local.env; set +a`, or `[stack.images]` in the manifest".to_string(),
    ];
    let vars: Vec<String> = missing
        .iter()
        .flat_map(|m| m.services.iter())
        .chain(plan.unset.iter())
        .map(|s| format!("{}=<image:tag>", image_var(s)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !vars.is_empty() {
        help.push(format!(
            "or name an image you have, per service: {}",
            vars.join(", ")
        ));
    }
    if plan.pull == PullPolicy::Never && !missing.is_empty() {
        help.push(
            "or let the harness pull what is missing: HARNESS_PULL=if-missing (needs a registry)"
                .into(),
        );
    }
    help.push("or run the stack without containers: `--backend native`".into());
    Error::Prerequisite {
        what,
        help: help.join("\n  = help: "),
    }
}

/// Whether the container backend can run the manifest with what this machine has: an engine
/// answers and every image is present locally (nothing is pulled). `Err` says what is missing.
pub async fn available(manifest: &Manifest, settings: &Settings) -> Result<(), String> {
    let docker = connect().await?;
    let plan = plan(manifest, settings).map_err(|e| e.to_string())?;
    let mut missing = Vec::new();
    for image in plan.by_image().keys() {
        if plan.builds.contains_key(*image) {
            // Built by the preflight when missing.
            continue;
        }
        match image_present(&docker, image).await {
            Ok(true) => {}
            Ok(false) => missing.push(format!("`{image}`")),
            Err(e) => return Err(format!("cannot inspect image `{image}`: {e}")),
        }
    }
    for s in &plan.unset {
        missing.push(format!("an image for service `{s}` (it names none)"));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("not present locally: {}", missing.join(", ")))
    }
}

/// The built-in servers among the services on a bare tag of the local base image (`bare`, from
/// [`bare_base_images`]): they get their entrypoint at run time (an official image, or one
/// built per server, has one and runs as it is).
pub fn bare_base_services(manifest: &Manifest, bare: &BTreeSet<String>) -> BTreeSet<String> {
    bare.iter()
        .filter(|s| {
            manifest
                .service(s)
                .is_some_and(|m| base_entrypoint(m.kind).is_some())
        })
        .cloned()
        .collect()
}

/// The services of the plan whose image is a bare tag of the local base image (its label, no
/// entrypoint of its own): a runtime that a server's entrypoint or a mounted binary brings to
/// life, and that runs nothing by itself.
pub async fn bare_base_images(docker: &Docker, plan: &ImagePlan) -> BTreeSet<String> {
    let mut bare = BTreeSet::new();
    for (image, services) in plan.by_image() {
        let Ok(inspect) = docker.inspect_image(image).await else {
            continue;
        };
        let config = inspect.config.unwrap_or_default();
        let base = config
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("org.harness.base-suite"));
        let own_entrypoint = config.entrypoint.as_ref().is_some_and(|e| !e.is_empty());
        if base && !own_entrypoint {
            bare.extend(services.iter().map(|s| s.to_string()));
        }
    }
    bare
}

/// The preflight's error for `binary` services whose image is only a runtime (a tag of the
/// base, as `./run` makes them) while their binary is not mounted: they would run nothing.
pub(super) fn unmounted_runtimes(
    manifest: &Manifest,
    plan: &ImagePlan,
    bare: &BTreeSet<String>,
    mounts: &BTreeMap<String, PathBuf>,
    settings: &Settings,
) -> Option<Error> {
    let services: Vec<&crate::manifest::Service> = manifest
        .services
        .iter()
        .filter(|s| matches!(s.launch, crate::manifest::Launch::Binary(_)))
        .filter(|s| bare.contains(&s.name) && !mounts.contains_key(&s.name))
        .collect();
    let first = services.first()?;
    let image = plan
        .images
        .get(&first.name)
        .map(|c| c.image.as_str())
        .unwrap_or("");
    let why = if settings.is_off("HARNESS_MOUNT_BINARIES") {
        "HARNESS_MOUNT_BINARIES=0 runs images as they are".to_string()
    } else {
        format!(
            "its binary is not built in {}",
            settings.bin_dir(manifest.dir()).display()
        )
    };
    let names: Vec<String> = services.iter().map(|s| format!("`{}`", s.name)).collect();
    Some(Error::Prerequisite {
        what: format!(
            "the image of {} (`{image}`) is only a runtime, a tag of the local base image with no program of its own, and {why}",
            names.join(", ")
        ),
        help: format!(
            "bake the binary into it: `fixtures/images/build.sh service {} target/debug/{} fixtures/{}` (or give the service an image that runs it), or let the harness mount the fresh binary (unset HARNESS_MOUNT_BINARIES, `cargo build`)",
            first.name, first.name, first.name
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn manifest(extra: &str) -> Manifest {
        let source = format!(
            r#"{extra}
[services.postgres]
kind = "postgres"

[services.cache-store]
kind = "redis"

[services.orders]
kind = "service"
image = "harness-local/orders:latest"
ports = {{ http = 8080 }}

[services.tool]
kind = "service"
command = ["sleep", "1"]
"#
        );
        Manifest::parse(Path::new("m.toml"), &source).unwrap()
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> Settings {
        Settings::from_pairs(vars.iter().copied())
    }

    fn images(plan: &ImagePlan) -> Vec<(&str, &str)> {
        plan.images
            .iter()
            .map(|(s, c)| (s.as_str(), c.image.as_str()))
            .collect()
    }

    #[test]
    fn defaults_are_the_official_images_and_if_missing() {
        let plan = plan(&manifest(""), &env(&[])).unwrap();
        assert_eq!(plan.pull, PullPolicy::IfMissing);
        assert_eq!(
            images(&plan),
            [
                ("cache-store", "redis:7"),
                ("orders", "harness-local/orders:latest"),
                ("postgres", "postgres:16")
            ]
        );
        assert_eq!(plan.unset, ["tool"]);
        assert_eq!(
            plan.images["postgres"].from,
            "the default for `postgres` services"
        );
    }

    #[test]
    fn the_prefix_goes_in_front_of_every_image_but_not_of_replacements() {
        let m = manifest("[stack]\nimage-prefix = \"mirror:5000\"\n[stack.images]\ncache-store = \"local/redis:7\"\n");
        let plan = plan(&m, &env(&[])).unwrap();
        assert_eq!(
            images(&plan),
            [
                ("cache-store", "local/redis:7"),
                ("orders", "mirror:5000/harness-local/orders:latest"),
                ("postgres", "mirror:5000/postgres:16")
            ]
        );
    }

    #[test]
    fn the_environment_overrides_the_manifest() {
        let m = manifest("[stack]\npull = \"always\"\nimage-prefix = \"mirror:5000\"\n[stack.images]\npostgres = \"x/pg:1\"\n");
        let plan = plan(
            &m,
            &env(&[
                ("HARNESS_PULL", "never"),
                ("HARNESS_IMAGE_PREFIX", "other.mirror/"),
                ("HARNESS_IMAGE_POSTGRES", "harness-local/postgres:15"),
                ("HARNESS_IMAGE_CACHE_STORE", "harness-local/redis:7"),
            ]),
        )
        .unwrap();
        assert_eq!(plan.pull, PullPolicy::Never);
        assert_eq!(
            images(&plan),
            [
                ("cache-store", "harness-local/redis:7"),
                ("orders", "other.mirror/harness-local/orders:latest"),
                ("postgres", "harness-local/postgres:15")
            ]
        );
        assert_eq!(plan.images["postgres"].from, "HARNESS_IMAGE_POSTGRES");
        assert_eq!(plan.by_image().len(), 3);
    }

    #[test]
    fn bad_environment_values_are_usage_errors() {
        let m = manifest("");
        let err = plan(&m, &env(&[("HARNESS_PULL", "sometimes")])).unwrap_err();
        assert!(err
            .to_string()
            .contains("HARNESS_PULL is `sometimes`; use `never`, `if-missing` or `always`"));
        assert_eq!(err.exit_code(), crate::exit_code::INVALID_INPUT);
        let err = plan(&m, &env(&[("HARNESS_IMAGE_POSTGRES", "a b")])).unwrap_err();
        assert!(
            err.to_string().contains("HARNESS_IMAGE_POSTGRES is `a b`"),
            "{err}"
        );
        let err = plan(&m, &env(&[("HARNESS_IMAGE_PREFIX", "https://m")])).unwrap_err();
        assert!(err.to_string().contains("HARNESS_IMAGE_PREFIX"), "{err}");
    }

    #[test]
    fn the_missing_images_error_lists_every_image_and_how_to_provide_it() {
        let m = manifest("[stack]\npull = \"never\"\n");
        let plan = plan(&m, &env(&[])).unwrap();
        let missing: Vec<Unavailable> = ["postgres:16", "harness-local/orders:latest"]
            .iter()
            .map(|i| Unavailable {
                image: i.to_string(),
                services: plan.by_image()[i].iter().map(|s| s.to_string()).collect(),
                reason: "not present locally, and the pull policy is `never`".into(),
            })
            .collect();
        let err = images_error(&plan, &missing);
        assert_eq!(err.exit_code(), crate::exit_code::PREREQUISITE_MISSING);
        let text = err.to_string();
        assert!(text.contains("  - image `postgres:16` (service `postgres`; the default for `postgres` services): not present locally, and the pull policy is `never`"), "{text}");
        assert!(
            text.contains(
                "  - image `harness-local/orders:latest` (service `orders`; the manifest)"
            ),
            "{text}"
        );
        assert!(
            text.contains("  - an image for service `tool`: it names none"),
            "{text}"
        );
        assert!(text.contains("fixtures/images/build.sh"), "{text}");
        assert!(text.contains("fixtures/images/local.env"), "{text}");
        assert!(text.contains("HARNESS_IMAGE_ORDERS=<image:tag>, HARNESS_IMAGE_POSTGRES=<image:tag>, HARNESS_IMAGE_TOOL=<image:tag>"), "{text}");
        assert!(text.contains("HARNESS_PULL=if-missing"), "{text}");
    }

    #[test]
    fn image_variables_are_upper_case_with_underscores() {
        assert_eq!(image_var("cache-store"), "HARNESS_IMAGE_CACHE_STORE");
    }
}
