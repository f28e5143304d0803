//! Container Postgres from a cached cluster. The first run of a bare base image initialises a
//! cluster in its container (bootstrap user `postgres`, nothing of the run in it) and hands a
//! copy out through a seed directory; the harness keeps it under the cache directory, keyed by
//! the image's id and entrypoint and the settings that shape a cluster. Later runs get that
//! cluster copied into their data directory before the container starts, and the entrypoint
//! only sets the run's user, password and database in single-user mode: no `initdb`, no
//! private server started and stopped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::model::kind::server::cache_key;

/// Where the container sees its seed directory.
const SEED_INSIDE: &str = "/harness/seed";
/// The file the entrypoint writes last into the seed directory (and finds in a seeded cluster).
const SEEDED: &str = "harness-seeded";
/// Bumped whenever the way a cached container cluster is made changes.
const VERSION: &str = "1";

/// What seeding adds to a container: a bind and a variable when it is to hand a cluster out.
#[derive(Debug, Default)]
pub(super) struct Seeding {
    pub binds: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// The key of a cached cluster: the image, the entrypoint script, and the variables initdb's
/// result depends on.
pub(super) fn key(image_id: &str, script: &str, env: &[(String, String)]) -> String {
    let var = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    cache_key(&[
        ("version", VERSION.to_string()),
        ("image", image_id.to_string()),
        (
            "entrypoint",
            format!(
                "{:016x}",
                crate::model::digest::content_hash(script.as_bytes())
            ),
        ),
        ("auth", var("POSTGRES_HOST_AUTH_METHOD")),
        ("initdb", var("POSTGRES_INITDB_ARGS")),
    ])
}

/// Fills `data` (the container's data directory on this machine, empty) from the cached
/// cluster under `cache`, or, when there is none, prepares a seed directory in `run_dir` and
/// saves what the container puts there once it is complete.
pub(super) async fn prepare(cache: PathBuf, data: &Path, run_dir: &Path, service: &str) -> Seeding {
    let cached = cache.join("data");
    if cached.join("PG_VERSION").is_file() {
        let (from, to) = (cached.clone(), data.to_path_buf());
        let copied = tokio::task::spawn_blocking(move || copy_tree(&from, &to))
            .await
            .unwrap_or(false);
        if copied {
            return Seeding::default();
        }
        // A partial copy: start from nothing, as without a cache.
        clear(data);
    }
    let seed = run_dir.join(format!("{service}-seed"));
    if crate::engine::cleanup::guarded(|| std::fs::create_dir(&seed)).is_err() {
        return Seeding::default();
    }
    tokio::spawn(save_when_seeded(seed.clone(), cache));
    Seeding {
        binds: vec![format!("{}:{SEED_INSIDE}", seed.display())],
        env: vec![("HARNESS_SEED_DIR".to_string(), SEED_INSIDE.to_string())],
    }
}

/// Waits (bounded) for the entrypoint to finish the seed, then saves it as `cache`: copied to
/// a directory of its own first, so two runs filling the same entry never mix; the first
/// rename wins. A run that ends first leaves the cache as it was.
async fn save_when_seeded(seed: PathBuf, cache: PathBuf) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !seed.join(SEEDED).is_file() {
        if Instant::now() > deadline || !seed.is_dir() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = tokio::task::spawn_blocking(move || {
        let parent = cache.parent()?;
        std::fs::create_dir_all(parent).ok()?;
        let tmp = parent.join(format!(".new-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&tmp).ok()?;
        if copy_tree(&seed, &tmp.join("data")) {
            let _ = std::fs::rename(&tmp, &cache);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        Some(())
    })
    .await;
}

/// `from`'s contents into `to`, owners and modes kept (as the native caches copy them).
fn copy_tree(from: &Path, to: &Path) -> bool {
    std::fs::create_dir_all(to).is_ok()
        && crate::model::kind::server::copy_tree(&from.join("."), to)
            .as_std_mut()
            .status()
            .is_ok_and(|s| s.success())
}

fn clear(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_cluster_is_not_reused_when_the_image_or_what_shapes_a_cluster_changes() {
        let env = |auth: &str, args: &str| {
            vec![
                ("POSTGRES_HOST_AUTH_METHOD".to_string(), auth.to_string()),
                ("POSTGRES_INITDB_ARGS".to_string(), args.to_string()),
                ("POSTGRES_PASSWORD".to_string(), "per run".to_string()),
            ]
        };
        let base = key("sha256:1", "script", &env("scram-sha-256", ""));
        assert_eq!(base, key("sha256:1", "script", &env("scram-sha-256", "")));
        for other in [
            key("sha256:2", "script", &env("scram-sha-256", "")),
            key("sha256:1", "script v2", &env("scram-sha-256", "")),
            key("sha256:1", "script", &env("md5", "")),
            key("sha256:1", "script", &env("scram-sha-256", "--locale=C")),
        ] {
            assert_ne!(base, other);
        }
        // The run's credentials are set on each copy; they are not part of the key.
        let mut same = env("scram-sha-256", "");
        same[2].1 = "another run".into();
        assert_eq!(base, key("sha256:1", "script", &same));
    }
}
