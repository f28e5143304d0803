//! Building the workspace binaries a manifest runs, so a stack never starts stale code.

use std::path::{Path, PathBuf};

use crate::engine::error::Error;
use crate::manifest::{Launch, Manifest};
use crate::settings::Settings;

/// Runs `cargo build --profile <p> --bin …` for every `binary` service of the manifest (a no-op
/// when they are fresh), with the profile of [`Settings::cargo_profile`], and checks from
/// cargo's own output that the executables are where the stack will run them from
/// ([`Settings::bin_dir`]). Skipped when `HARNESS_BIN_DIR` points at prebuilt binaries, and
/// when the manifest has no `binary` services; a manifest outside a cargo workspace that has
/// some is an error (cargo is never invoked there).
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
    let dir = std::fs::canonicalize(manifest.dir()).unwrap_or_else(|_| manifest.dir().into());
    if crate::settings::cargo_workspace(&dir).is_none() {
        return Err(Error::Prerequisite {
            what: format!(
                "{} runs cargo binaries ({}) but is not inside a cargo workspace",
                manifest.path.display(),
                bins.join(", ")
            ),
            help: "give those services a `command` (or an `image`), or set HARNESS_BIN_DIR to a directory of prebuilt binaries".into(),
        });
    }
    let profile = settings.cargo_profile();
    let mut cmd = settings.cargo_command();
    cmd.args([
        "build",
        "--quiet",
        "--message-format=json-render-diagnostics",
    ])
    .args(["--profile", &profile])
    .current_dir(&dir)
    .stdout(std::process::Stdio::piped());
    for b in &bins {
        cmd.args(["--bin", b]);
    }
    // In a group of its own, registered: a signal to the harness stops the build too (a
    // terminal's Ctrl-C reaches only the harness's group, whose handler passes it on).
    let mut built = Vec::new();
    let status = crate::engine::cleanup::status_in_own_group_reading(&mut cmd, |line| {
        if let Some(exe) = executable(line, &bins) {
            built.push(exe);
        }
    })
    .map_err(|e| Error::io("running `cargo build`", e))?;
    if !status.success() {
        return Err(Error::Prerequisite {
            what: format!("building the service binaries ({}) failed", bins.join(", ")),
            help: "fix the build errors above, or set HARNESS_BIN_DIR to a directory of prebuilt binaries".into(),
        });
    }
    let expected = settings.bin_dir(manifest.dir());
    for (name, path) in &built {
        if path.parent() != Some(expected.as_path()) && !same_file(&expected.join(name), path) {
            return Err(Error::Prerequisite {
                what: format!(
                    "cargo built `{name}` as {}, but the stack runs binaries from {} (profile `{profile}`)",
                    path.display(),
                    expected.display()
                ),
                help: format!(
                    "set HARNESS_BIN_DIR={} (or CARGO_TARGET_DIR to cargo's target directory)",
                    path.parent().unwrap_or(Path::new(".")).display()
                ),
            });
        }
    }
    Ok(())
}

/// The binary and executable of a `compiler-artifact` line of cargo's JSON output, when it
/// is one of `bins`.
fn executable(line: &str, bins: &[&str]) -> Option<(String, PathBuf)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["reason"] != "compiler-artifact" {
        return None;
    }
    let name = v["target"]["name"].as_str()?;
    let is_bin = v["target"]["kind"]
        .as_array()
        .is_some_and(|k| k.iter().any(|k| k == "bin"));
    (is_bin && bins.contains(&name))
        .then(|| Some((name.to_string(), PathBuf::from(v["executable"].as_str()?))))
        .flatten()
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_executables_of_the_named_binaries_off_cargos_output() {
        let line = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"orders"},"executable":"/t/release/orders"}"#;
        assert_eq!(
            executable(line, &["orders"]),
            Some(("orders".into(), PathBuf::from("/t/release/orders")))
        );
        assert_eq!(executable(line, &["payments"]), None);
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"orders"},"executable":null}"#;
        assert_eq!(executable(lib, &["orders"]), None);
        assert_eq!(executable("Compiling orders", &["orders"]), None);
    }
}
