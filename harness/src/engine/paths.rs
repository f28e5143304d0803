//! Where the workspace's build output is, for the backends that run its binaries and for what
//! fingerprints and records them.

use std::path::{Path, PathBuf};

/// Where cargo puts this workspace's binaries: `HARNESS_BIN_DIR`, else `CARGO_TARGET_DIR/debug`,
/// else `target/debug` of the workspace around the manifest.
pub fn bin_dir(manifest_dir: &Path) -> PathBuf {
    bin_dir_or(None, manifest_dir)
}

/// `explicit` when given (a caller's own directory, [`crate::StackOptions::bin_dir`]), else
/// [`bin_dir`].
pub fn bin_dir_or(explicit: Option<&Path>, manifest_dir: &Path) -> PathBuf {
    if let Some(d) = explicit {
        return d.to_path_buf();
    }
    if let Some(d) = std::env::var_os("HARNESS_BIN_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d).join("debug");
    }
    let start = std::fs::canonicalize(manifest_dir).unwrap_or_else(|_| manifest_dir.to_path_buf());
    let mut root = None;
    for dir in start.ancestors() {
        if dir.join("Cargo.toml").is_file() {
            root = Some(dir.to_path_buf());
        }
    }
    root.unwrap_or(start).join("target").join("debug")
}
