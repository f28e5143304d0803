//! `harness init`: from a compose file, a `stack.toml` that means the same; without one, a
//! starter that is valid; and a second `init` overwrites nothing (exit 2).

use std::path::Path;
use std::process::Command;

use harness::Manifest;

fn init(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .arg("init")
        .current_dir(dir)
        .env("PACT_DO_NOT_TRACK", "true")
        .output()
        .unwrap()
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn init_converts_the_compose_file_and_overwrites_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/polyglot");
    copy(&project, dir.path());
    let out = init(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compose = Manifest::load(&dir.path().join("compose.yaml")).unwrap();
    let toml = Manifest::load(&dir.path().join("stack.toml")).unwrap();
    let names = |m: &Manifest| {
        m.services
            .iter()
            .map(|s| (s.name.clone(), s.probe.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&toml), names(&compose));
    assert_eq!(
        toml.service("inventory").unwrap().build,
        compose.service("inventory").unwrap().build
    );
    assert!(dir.path().join("tests/stack.rs").is_file());
    let again = init(dir.path());
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("overwrites nothing"));
}

#[test]
fn init_without_a_compose_file_writes_a_valid_starter() {
    let dir = tempfile::tempdir().unwrap();
    let out = init(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Manifest::load(&dir.path().join("stack.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.services.len(), 2);
}
