//! Every malformed manifest under fixtures/manifests/invalid gets its own clear error, with
//! file, line and column; the messages are snapshotted.

use std::path::{Path, PathBuf};

use harness::Manifest;

/// Every file with extension `ext` in `fixtures/manifests/<dir>` is rejected by `parse` with a
/// message of its own (snapshotted as `<prefix><name>`) that has help and, except for
/// `no_position`, the file's line.
fn each_is_rejected_with_its_own_message(
    dir: &str,
    ext: &str,
    parse: impl Fn(&Path, &str) -> Result<Manifest, harness::manifest::ManifestError>,
    no_position: &str,
    prefix: &str,
) {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/manifests")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&full)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "only {} files in {dir}", files.len());
    let mut messages = std::collections::BTreeSet::new();
    for file in &files {
        let name = file.file_stem().unwrap().to_str().unwrap().to_string();
        let shown = Path::new("fixtures/manifests")
            .join(dir)
            .join(file.file_name().unwrap());
        let source = std::fs::read_to_string(file).unwrap();
        let err = match parse(&shown, &source) {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("error: "), "{name}: {err}");
        assert!(err.contains("= help: "), "{name} gives no help: {err}");
        if name != no_position {
            assert!(
                err.contains(&format!("{}:", shown.display())),
                "{name} has no file:line: {err}"
            );
        }
        assert!(
            messages.insert(err.clone()),
            "{name} repeats another file's message"
        );
        insta::assert_snapshot!(format!("{prefix}{name}"), err);
    }
}

#[test]
fn every_invalid_manifest_is_rejected_with_its_own_message() {
    each_is_rejected_with_its_own_message("invalid", "toml", Manifest::parse, "19-no-services", "");
}

#[test]
fn the_example_manifests_are_valid() {
    for file in [
        "../fixtures/manifests/infra.toml",
        "../fixtures/manifests/infra-container.toml",
        "../fixtures/stack.toml",
        "../fixtures/compose/docker-compose.test.yml",
        "../fixtures/compose/jobs.yml",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        if let Err(e) = Manifest::load(&path) {
            panic!("{file}:\n{e}");
        }
    }
}

/// Every broken compose file under fixtures/manifests/invalid-compose, likewise; its `${VAR}`
/// see an empty environment.
#[test]
fn every_invalid_compose_file_is_rejected_with_its_own_message() {
    let empty = harness::settings::Settings::from_pairs([("PATH", "/bin")]);
    each_is_rejected_with_its_own_message(
        "invalid-compose",
        "yml",
        |path, source| Manifest::parse_with(path, source, &empty),
        "12-no-services",
        "compose-",
    );
}

/// The compose file of the README's "Use it in your repository" is a valid manifest.
#[test]
fn the_readme_compose_example_is_valid() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = readme.split("## Use it in your repository").nth(1).unwrap();
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let empty = harness::settings::Settings::from_pairs([("PATH", "/bin")]);
    let m = Manifest::parse_with(Path::new("README/docker-compose.yml"), yaml, &empty)
        .unwrap_or_else(|e| panic!("{e}"));
    let api = m.service("api").unwrap();
    assert_eq!(
        api.probe.to_string(),
        "exec `/bin/sh -c curl -fs http://localhost:8080/health`"
    );
    assert!(m.service("migrate").unwrap().probe == harness::manifest::ProbeSpec::Exit);
}
