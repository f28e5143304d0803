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

#[test]
fn a_build_candidate_needs_a_dockerfile() {
    let dir = tempfile::tempdir().unwrap();
    refused(
        &["payments", "--build", dir.path().to_str().unwrap()],
        "has no Dockerfile",
    );
}

#[test]
fn a_state_change_url_is_a_url_or_a_path() {
    refused(
        &["payments", "--state-change-url", "localhost:9000/state"],
        "give an http(s) URL, or a path",
    );
}

#[test]
fn teardown_calls_need_a_state_change_url() {
    let out = verify(&["payments", "--state-change-teardown"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--state-change-url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Outside a cargo workspace `harness verify` needs no suite: a project with a manifest, a
/// service of its own (a Python program whose state-change endpoint sets the state up) and a
/// pact is verified in the harness's own process; the same service without the state
/// endpoint's effect fails, naming the interaction.
#[test]
fn a_repository_of_its_own_verifies_without_cargo() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("stack.toml"),
        r#"[services.greeter]
kind = "service"
command = ["python3", "greeter.py"]
ports = { http = 8080 }
probe = { type = "http", path = "/health" }

[services.greeter.env]
PORT = "{{ self.port.http }}"
"#,
    )
    .unwrap();
    std::fs::write(
        root.join("greeter.py"),
        r#"import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer
names = set()
class H(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {})
        name = self.path.rsplit("/", 1)[-1]
        if name in names:
            return self.reply(200, {"greeting": "hello " + name})
        self.reply(404, {})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if body.get("state") == "a friend" and os.environ.get("FORGETFUL") is None:
            names.add(body["params"]["name"])
        self.reply(200, {})
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#,
    )
    .unwrap();
    std::fs::create_dir(root.join("contracts")).unwrap();
    std::fs::write(
        root.join("contracts/visitor-greeter.json"),
        serde_json::json!({
            "consumer": {"name": "visitor"},
            "provider": {"name": "greeter"},
            "interactions": [{
                "description": "a greeting for a friend",
                "providerStates": [{"name": "a friend", "params": {"name": "ada"}}],
                "request": {"method": "GET", "path": "/greetings/ada"},
                "response": {"status": 200, "body": {"greeting": "hello ada"}}
            }],
            "metadata": {"pactSpecification": {"version": "3.0.0"}}
        })
        .to_string(),
    )
    .unwrap();
    let run = |forgetful: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
        cmd.current_dir(root)
            .args(["verify", "greeter", "--state-change-url", "/_pact/state"])
            .args(["--json", "report.json"])
            .env("PACT_DO_NOT_TRACK", "true")
            .env("HARNESS_BACKEND", "native")
            .env_remove("HARNESS_MANIFEST")
            .env_remove("HARNESS_STATE_DIR");
        if forgetful {
            cmd.env("FORGETFUL", "1");
        }
        let out = cmd.output().expect("the harness binary runs");
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("report.json")).unwrap_or_default())
                .unwrap_or_default();
        (out, report)
    };
    let (out, report) = run(false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("result: verified"), "{stdout}");
    assert_eq!(
        report["results"][0]["interaction"],
        "a greeting for a friend"
    );
    let junit = std::fs::read_to_string(root.join(".harness/junit/verify-greeter.xml")).unwrap();
    assert!(junit.contains("tests=\"1\" failures=\"0\""), "{junit}");

    let (out, report) = run(true);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(report["ok"], false);
    let failure = report["results"][0]["failure"].as_str().unwrap_or_default();
    assert!(failure.contains("404"), "{failure}");
}
