//! Every malformed manifest under fixtures/manifests/invalid gets its own clear error, with
//! file, line and column; the messages are snapshotted.

use std::path::{Path, PathBuf};

use harness::Manifest;

fn invalid_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/manifests/invalid")
}

#[test]
fn every_invalid_manifest_is_rejected_with_its_own_message() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(invalid_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "only {} invalid manifests", files.len());
    let mut messages = std::collections::BTreeSet::new();
    for file in &files {
        let name = file.file_stem().unwrap().to_str().unwrap().to_string();
        let shown = Path::new("fixtures/manifests/invalid").join(file.file_name().unwrap());
        let source = std::fs::read_to_string(file).unwrap();
        let err = match Manifest::parse(&shown, &source) {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("error: "), "{name}: {err}");
        assert!(err.contains("= help: "), "{name} gives no help: {err}");
        if name != "19-no-services" {
            assert!(
                err.contains(&format!("{}:", shown.display())),
                "{name} has no file:line: {err}"
            );
        }
        assert!(
            messages.insert(err.clone()),
            "{name} repeats another file's message"
        );
        insta::assert_snapshot!(name, err);
    }
}

#[test]
fn the_example_manifests_are_valid() {
    for file in [
        "../fixtures/manifests/infra.toml",
        "../fixtures/manifests/infra-container.toml",
        "../fixtures/stack.toml",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        if let Err(e) = Manifest::load(&path) {
            panic!("{file}:\n{e}");
        }
    }
}
