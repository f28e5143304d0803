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
/// long-lived caller (`harness up --watch`) re-reads only what changed on disk.
#[derive(Debug, Default)]
pub struct Fingerprinter {
    files: BTreeMap<PathBuf, (Stamp, u64)>,
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
}
