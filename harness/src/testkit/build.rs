//! Building the workspace binaries a manifest runs, so a stack never starts stale code.

use crate::engine::error::Error;
use crate::manifest::{Launch, Manifest};
use crate::settings::Settings;

/// Runs `cargo build --bin …` for every `binary` service of the manifest (a no-op when they
/// are fresh). Skipped when `HARNESS_BIN_DIR` points at prebuilt binaries.
pub fn cargo_binaries(manifest: &Manifest, settings: &Settings) -> Result<(), Error> {
    let bins: Vec<&str> = manifest
        .services
        .iter()
        .filter_map(|s| match &s.launch {
            Launch::Binary(b) => Some(b.as_str()),
            _ => None,
        })
        .collect();
    if bins.is_empty() || settings.bins_given() {
        return Ok(());
    }
    let mut cmd = std::process::Command::new(settings.cargo());
    cmd.arg("build").arg("--quiet").current_dir(manifest.dir());
    for b in &bins {
        cmd.args(["--bin", b]);
    }
    // In a group of its own, registered: a signal to the harness stops the build too (a
    // terminal's Ctrl-C reaches only the harness's group, whose handler passes it on).
    let status = crate::engine::cleanup::status_in_own_group(&mut cmd)
        .map_err(|e| Error::io("running `cargo build`", e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Prerequisite {
            what: format!("building the service binaries ({}) failed", bins.join(", ")),
            help: "fix the build errors above, or set HARNESS_BIN_DIR to a directory of prebuilt binaries".into(),
        })
    }
}
