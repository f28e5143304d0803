//! `harness verify`: command-line mistakes are refused before anything is built or started,
//! with exit code 2 and a message that says how to fix them.

use std::process::{Command, Output};

fn verify(args: &[&str]) -> Output {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/stack.toml");
    Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["--manifest", manifest, "verify"])
        .args(args)
        .env("PACT_DO_NOT_TRACK", "true")
        .env_remove("PACT_BROKER_TOKEN")
        .output()
        .expect("the harness binary runs")
}

fn refused(args: &[&str], says: &str) {
    let out = verify(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(says),
        "{args:?}: expected `{says}` in: {stderr}"
    );
}

#[test]
fn publishing_without_a_provider_version_is_refused() {
    refused(
        &[
            "payments",
            "--broker-url",
            "http://127.0.0.1:9",
            "--publish",
        ],
        "--provider-version",
    );
}

#[test]
fn publishing_needs_a_broker() {
    refused(
        &["payments", "--publish", "--provider-version", "1.0.0"],
        "--broker-url",
    );
}

#[test]
fn broker_options_need_a_broker() {
    refused(&["payments", "--enable-pending"], "--broker-url");
    refused(
        &[
            "payments",
            "--consumer-version-selector",
            "{\"mainBranch\":true}",
        ],
        "--broker-url",
    );
}

#[test]
fn a_selector_must_be_json() {
    refused(
        &[
            "payments",
            "--broker-url",
            "http://127.0.0.1:9",
            "--consumer-version-selector",
            "mainBranch",
        ],
        "not JSON",
    );
}

#[test]
fn the_provider_must_be_a_service_of_the_manifest() {
    refused(&["nosuchservice"], "no service `nosuchservice`");
}

#[test]
fn a_missing_candidate_binary_is_refused() {
    refused(
        &["payments", "--binary", "/nonexistent/payments"],
        "does not exist",
    );
}

#[test]
fn binary_and_image_exclude_each_other() {
    refused(
        &[
            "payments",
            "--binary",
            "/bin/true",
            "--image",
            "shop/payments:rc",
        ],
        "cannot be used with",
    );
}

#[test]
fn pacts_that_are_not_there_are_refused() {
    refused(
        &["payments", "--pacts", "/nonexistent/pacts"],
        "neither a pact file, a directory of pacts nor an http(s) URL",
    );
}
