//! Fingerprints: what a running service was started from, so an attached suite never tests
//! old code.
//!
//! A service's fingerprint has named parts, each a hash:
//!
//! - `config`: its manifest entry (kind, image, launch, env and args templates, ports,
//!   dependencies, probe, credentials), so a changed entry changes it;
//! - `binary`: the content of a `binary` service's executable (native backend);
//! - `program` and `files`: for a `command` service, the resolved program's content and the
//!   content of every file under its `paths` (`target/` and VCS directories skipped);
//! - `image`: the id of the image a container runs (container backend), and `binary` when the
//!   container runs a workspace binary mounted from the host.
//!
//! The stack's owner records them when the stack starts (in the state file); an attaching suite
//! computes them again and asks the owner to refresh what differs (see the `attach` module).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::backend::BackendKind;
use crate::manifest::{Launch, Manifest, Service};
use crate::model::digest::{content_hash, Hasher};
use crate::settings::Settings;

/// The parts of one service's fingerprint, by name (`config`, `binary`, `files`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint(pub BTreeMap<String, String>);

impl Fingerprint {
    /// Why `self` (now) differs from `before`: `binary changed`, `config and files changed`;
    /// `None` when they are equal.
    pub fn changed_since(&self, before: &Fingerprint) -> Option<String> {
        let mut parts: Vec<&str> = self
            .0
            .iter()
            .filter(|(k, v)| before.0.get(*k) != Some(*v))
            .map(|(k, _)| k.as_str())
            .chain(
                before
                    .0
                    .keys()
                    .filter(|k| !self.0.contains_key(*k))
                    .map(String::as_str),
            )
            .collect();
        parts.dedup();
        match parts.as_slice() {
            [] => None,
            [one] => Some(format!("{one} changed")),
            [init @ .., last] => Some(format!("{} and {last} changed", init.join(", "))),
        }
    }
}

/// Fingerprints of every service, by name.
pub type Fingerprints = BTreeMap<String, Fingerprint>;

/// The services whose fingerprint differs, with the reason, in manifest order.
pub fn changes(recorded: &Fingerprints, now: &Fingerprints) -> Vec<(String, String)> {
    now.iter()
        .filter_map(|(name, f)| {
            let before = recorded.get(name).cloned().unwrap_or_default();
            f.changed_since(&before).map(|why| (name.clone(), why))
        })
        .collect()
}

/// Computes fingerprints, remembering file hashes by (size, modification time, inode) so a
/// long-lived caller (`harness up --watch`) re-reads only what changed on disk; with
/// [`Fingerprinter::with_hash_cache`], so does the next process.
#[derive(Debug, Default)]
pub struct Fingerprinter {
    files: BTreeMap<PathBuf, (Stamp, u64)>,
    /// The file that keeps [`Fingerprinter::files`] between processes, and whether it was read
    /// and has fallen behind.
    hash_cache: Option<HashCache>,
    /// Where the workspace's binaries are; `None`: [`Settings::bin_dir`].
    bin_dir: Option<PathBuf>,
    /// Which images and binaries the services run (see [`crate::settings`]).
    settings: Settings,
}

/// What identifies a file's content without reading it: size, modification time (ns since the
/// epoch) and inode. Cargo and editors write a new file, so a change moves at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    len: u64,
    modified_ns: i128,
    inode: u64,
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    Stamp {
        len: meta.len(),
        modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        inode: meta.ino(),
    }
}

#[derive(Debug)]
struct HashCache {
    path: PathBuf,
    loaded: bool,
    dirty: bool,
}

/// A file hashed before, with the stamp it had (recorded in the state file, so an attaching
/// suite re-reads only what changed: hashing debug binaries of a hundred megabytes each costs
/// seconds in a debug build).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownFile {
    path: PathBuf,
    stamp: Stamp,
    hash: u64,
}

impl Fingerprinter {
    /// A fingerprinter with nothing remembered, with this process's settings.
    pub fn new() -> Fingerprinter {
        Fingerprinter::default().with_settings(Settings::from_env())
    }

    /// A fingerprinter that remembers `known` files (from [`Fingerprinter::known`]).
    pub fn from_known(known: &[KnownFile]) -> Fingerprinter {
        Fingerprinter {
            files: known
                .iter()
                .map(|k| (k.path.clone(), (k.stamp, k.hash)))
                .collect(),
            hash_cache: None,
            bin_dir: None,
            settings: Settings::from_env(),
        }
    }

    /// Fingerprints services as `settings` choose their images and binaries (a stack's own, see
    /// [`crate::StackOptions::settings`]).
    pub fn with_settings(mut self, settings: Settings) -> Fingerprinter {
        self.settings = settings;
        self
    }

    /// Fingerprints the workspace's binaries in `bin_dir` (a stack's own, see
    /// [`crate::StackOptions::bin_dir`]).
    pub fn with_bin_dir(mut self, bin_dir: PathBuf) -> Fingerprinter {
        self.bin_dir = Some(bin_dir);
        self
    }

    /// Keeps the hashes of files in the cache directory ([`Settings::cache_dir`]), so that the
    /// next process re-reads only what changed: a stack's start hashed its three debug
    /// binaries (120 MB or more each) in half a second, every time.
    pub fn with_hash_cache(mut self) -> Fingerprinter {
        self.hash_cache = Some(HashCache {
            path: self.settings.cache_dir().join("file-hashes.json"),
            loaded: false,
            dirty: false,
        });
        self
    }

    fn load_hash_cache(&mut self) {
        let Some(cache) = self.hash_cache.as_mut().filter(|c| !c.loaded) else {
            return;
        };
        cache.loaded = true;
        let known: Vec<KnownFile> = std::fs::read(&cache.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for k in known {
            self.files.entry(k.path).or_insert((k.stamp, k.hash));
        }
    }

    /// Writes the cache when this process hashed anything, leaving out files that have gone or
    /// changed since (a new file: a temporary one renamed over it, as other processes may
    /// write it too).
    fn save_hash_cache(&mut self) {
        let Some(cache) = self.hash_cache.as_mut().filter(|c| c.dirty) else {
            return;
        };
        cache.dirty = false;
        let current: Vec<KnownFile> = self
            .files
            .iter()
            .filter(|(path, (seen, _))| std::fs::metadata(path).is_ok_and(|m| stamp(&m) == *seen))
            .map(|(path, (stamp, hash))| KnownFile {
                path: path.clone(),
                stamp: *stamp,
                hash: *hash,
            })
            .collect();
        let Ok(text) = serde_json::to_vec(&current) else {
            return;
        };
        let tmp = cache
            .path
            .with_extension(format!("json.{}", std::process::id()));
        let written = cache
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &cache.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// The files hashed so far, for [`Fingerprinter::from_known`].
    pub fn known(&self) -> Vec<KnownFile> {
        self.files
            .iter()
            .map(|(path, (stamp, hash))| KnownFile {
                path: path.clone(),
                stamp: *stamp,
                hash: *hash,
            })
            .collect()
    }

    /// Fingerprints of every service of `manifest`, each as its backend in `plan` runs it.
    pub async fn planned(
        &mut self,
        manifest: &Manifest,
        plan: &crate::engine::backend::mixed::Plan,
    ) -> Fingerprints {
        let mut out = Fingerprints::new();
        for kind in plan.kinds() {
            let all = self.all(manifest, kind).await;
            out.extend(all.into_iter().filter(|(s, _)| plan.of(s) == kind));
        }
        out
    }

    /// Fingerprints of every service of `manifest` as `backend` runs them.
    pub async fn all(&mut self, manifest: &Manifest, backend: BackendKind) -> Fingerprints {
        self.load_hash_cache();
        let fingerprints = self.all_hashed(manifest, backend).await;
        self.save_hash_cache();
        fingerprints
    }

    async fn all_hashed(&mut self, manifest: &Manifest, backend: BackendKind) -> Fingerprints {
        let bins = self
            .bin_dir
            .clone()
            .unwrap_or_else(|| self.settings.bin_dir(manifest.dir()));
        let (images, mounts) = match backend {
            BackendKind::Container => (
                crate::engine::backend::container::image_ids(manifest, &self.settings).await,
                crate::engine::backend::container::planned_mounts(manifest, &bins, &self.settings),
            ),
            _ => (BTreeMap::new(), BTreeMap::new()),
        };
        manifest
            .services
            .iter()
            .map(|s| {
                let mut parts = BTreeMap::new();
                parts.insert("config".to_string(), hex(config_hash(s)));
                match backend {
                    BackendKind::Native => self.native_parts(s, manifest.dir(), &bins, &mut parts),
                    BackendKind::Container => {
                        if let Some(id) = images.get(&s.name) {
                            parts.insert("image".into(), id.clone());
                        }
                        if let Some(bin) = mounts.get(&s.name) {
                            parts.insert("binary".into(), hex(self.file(bin)));
                        }
                    }
                    BackendKind::External => {}
                }
                (s.name.clone(), Fingerprint(parts))
            })
            .collect()
    }

    fn native_parts(
        &mut self,
        s: &Service,
        dir: &Path,
        bins: &Path,
        parts: &mut BTreeMap<String, String>,
    ) {
        match &s.launch {
            Launch::Binary(b) => {
                parts.insert("binary".into(), hex(self.file(&bins.join(b))));
            }
            Launch::Command(cmd) => {
                if let Some(program) = cmd.first().and_then(|t| t.literal()) {
                    if let Some(path) = resolve_program(&program, dir) {
                        parts.insert("program".into(), hex(self.file(&path)));
                    }
                }
                if !s.paths.is_empty() {
                    parts.insert("files".into(), hex(self.paths(dir, &s.paths)));
                }
            }
            Launch::Builtin | Launch::ImageOnly => {}
        }
    }

    /// A hash over every file under `paths` (relative to `dir`): relative names and contents.
    fn paths(&mut self, dir: &Path, paths: &[String]) -> u64 {
        let mut files = Vec::new();
        for p in paths {
            collect(&dir.join(p), &mut files);
        }
        files.sort();
        files.dedup();
        let mut h = Hasher::new();
        for f in &files {
            h.write(
                f.strip_prefix(dir)
                    .unwrap_or(f)
                    .as_os_str()
                    .as_encoded_bytes(),
            );
            h.write(&self.file(f).to_le_bytes());
        }
        h.finish()
    }

    /// The hash of a file's content (0 when it cannot be read), from memory when its size,
    /// modification time and inode are unchanged.
    fn file(&mut self, path: &Path) -> u64 {
        let Ok(meta) = std::fs::metadata(path) else {
            return 0;
        };
        let now = stamp(&meta);
        if let Some((seen, hash)) = self.files.get(path) {
            if *seen == now {
                return *hash;
            }
        }
        let hash = std::fs::read(path).map(|b| content_hash(&b)).unwrap_or(0);
        self.files.insert(path.to_path_buf(), (now, hash));
        if let Some(cache) = &mut self.hash_cache {
            cache.dirty = true;
        }
        hash
    }
}

/// Directories never part of a service's files.
const SKIPPED_DIRS: &[&str] = &[
    "target",
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    "node_modules",
];

fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_file() {
        out.push(path.to_path_buf());
        return;
    }
    if !meta.is_dir() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        let skipped = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| SKIPPED_DIRS.contains(&n));
        if !skipped {
            collect(&p, out);
        }
    }
}

/// Where a command's program is: a path with a `/` relative to the manifest's directory, else
/// looked up on `PATH`.
fn resolve_program(program: &str, dir: &Path) -> Option<PathBuf> {
    if program.contains('/') {
        let p = dir.join(program);
        return p.is_file().then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn config_hash(s: &Service) -> u64 {
    // The derived `Debug` of the validated entry is deterministic (ordered maps, no spans).
    content_hash(format!("{s:?}").as_bytes())
}

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(parts: &[(&str, &str)]) -> Fingerprint {
        Fingerprint(
            parts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_reason_names_every_changed_part() {
        let before = fp(&[("config", "1"), ("binary", "2")]);
        assert_eq!(before.changed_since(&before), None);
        assert_eq!(
            fp(&[("config", "1"), ("binary", "3")]).changed_since(&before),
            Some("binary changed".into())
        );
        assert_eq!(
            fp(&[("config", "9"), ("binary", "3")]).changed_since(&before),
            Some("binary and config changed".into())
        );
        assert_eq!(
            fp(&[("config", "1")]).changed_since(&before),
            Some("binary changed".into())
        );
    }

    #[test]
    fn files_under_paths_count_but_target_and_vcs_dirs_do_not() {
        let dir = std::env::temp_dir().join(format!("harness-fp-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = dir.as_path();
        std::fs::create_dir_all(d.join("app/target")).unwrap();
        std::fs::create_dir_all(d.join("app/.git")).unwrap();
        std::fs::write(d.join("app/main.py"), "print(1)").unwrap();
        let mut f = Fingerprinter::new();
        let paths = vec!["app".to_string()];
        let first = f.paths(d, &paths);
        std::fs::write(d.join("app/target/out"), "x").unwrap();
        std::fs::write(d.join("app/.git/HEAD"), "x").unwrap();
        assert_eq!(f.paths(d, &paths), first, "target/ and .git/ are ignored");
        std::fs::write(d.join("app/main.py"), "print(2)").unwrap();
        assert_ne!(f.paths(d, &paths), first, "an edited file changes the hash");
        std::fs::write(d.join("app/main.py"), "print(1)").unwrap();
        assert_eq!(f.paths(d, &paths), first, "reverting restores it");
        std::fs::write(d.join("app/extra.py"), "").unwrap();
        assert_ne!(f.paths(d, &paths), first, "a new file changes the hash");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_known_file_is_not_read_again_until_it_changes() {
        let dir = std::env::temp_dir().join(format!("harness-fp-known-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bin");
        std::fs::write(&file, "one").unwrap();
        let mut first = Fingerprinter::new();
        let hash = first.file(&file);
        assert_eq!(hash, content_hash(b"one"));
        // A remembered hash is trusted while the stamp is the same: prove it by faking it.
        let mut known = first.known();
        known[0].hash = 42;
        assert_eq!(Fingerprinter::from_known(&known).file(&file), 42);
        // A new file (as cargo writes one) is read.
        let tmp = dir.join("bin.new");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_eq!(
            Fingerprinter::from_known(&known).file(&file),
            content_hash(b"two")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_hash_cache_spares_the_next_process_the_reading_until_a_file_changes() {
        let dir = std::env::temp_dir().join(format!("harness-fp-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (file, gone) = (dir.join("bin"), dir.join("gone"));
        std::fs::write(&file, "one").unwrap();
        std::fs::write(&gone, "old").unwrap();
        let settings =
            Settings::from_pairs([("HARNESS_CACHE_DIR", dir.join("cache").to_str().unwrap())]);
        let process = || {
            Fingerprinter::default()
                .with_settings(settings.clone())
                .with_hash_cache()
        };
        let mut first = process();
        first.load_hash_cache();
        assert_eq!(first.file(&file), content_hash(b"one"));
        first.file(&gone);
        std::fs::remove_file(&gone).unwrap();
        first.save_hash_cache();
        let cache = dir.join("cache").join("file-hashes.json");
        let mut saved: Vec<KnownFile> =
            serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
        assert_eq!(
            saved.len(),
            1,
            "a file that has gone is left out: {saved:?}"
        );
        // The next process trusts the cached hash while the stamp is the same: prove it by faking it.
        saved[0].hash = 42;
        std::fs::write(&cache, serde_json::to_vec(&saved).unwrap()).unwrap();
        let mut second = process();
        second.load_hash_cache();
        assert_eq!(second.file(&file), 42);
        // A new file (as cargo writes one) is read, and the cache learns it.
        let tmp = dir.join("bin.new");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let mut third = process();
        third.load_hash_cache();
        assert_eq!(third.file(&file), content_hash(b"two"));
        third.save_hash_cache();
        let mut fourth = process();
        fourth.load_hash_cache();
        assert_eq!(fourth.files[&file].1, content_hash(b"two"));
        // Without the cache, nothing is read from or written to it.
        std::fs::remove_file(&cache).unwrap();
        let mut plain = Fingerprinter::default().with_settings(settings.clone());
        plain.load_hash_cache();
        plain.file(&file);
        plain.save_hash_cache();
        assert!(!cache.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
