//! The MariaDB kind against real servers: Debian's `mariadb-server` natively and the local
//! `harness-local/mariadb` image in a container. The stack is ready only when the run's user
//! logs in (`SELECT 1`), the manifest's `databases` exist and belong to that user, and the
//! Debian `mariadb` client reaches the server at the URL the stack gives. The container test
//! needs a Docker engine and the images of `fixtures/images/build.sh`.

use std::process::Command;

use harness::backend::BackendKind;
use harness::manifest::{Kind, ProbeSpec};
use harness::{Manifest, Stack, StackOptions};

const MANIFEST: &str = r#"
[services.db]
kind = "mariadb"
image = "harness-local/mariadb:10.11"
databases = ["reports"]

[services.cache]
kind = "redis"
image = "harness-local/redis:7"
depends-on = ["db"]
"#;

/// Runs SQL with the Debian `mariadb` client as the stack's user, over TCP.
fn client(stack: &Stack, sql: &str) -> Result<String, String> {
    let ep = stack.endpoint("db").map_err(|e| e.to_string())?;
    let out = Command::new("mariadb")
        .args(["--protocol=tcp", "-h", &ep.host])
        .arg(format!("-P{}", ep.port(None)?))
        .arg(format!("-u{}", ep.user.clone().unwrap_or_default()))
        .arg(format!("-p{}", ep.password.clone().unwrap_or_default()))
        .args(["-N", "-B", "-e", sql])
        .output()
        .map_err(|e| format!("the mariadb client does not run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn a_mariadb_stack_is_ready_with_its_databases(backend: BackendKind) {
    std::env::set_var("PACT_DO_NOT_TRACK", "true");
    let manifest = Manifest::parse("mariadb.toml".as_ref(), MANIFEST).unwrap();
    let db = manifest.service("db").unwrap();
    assert_eq!(db.kind, Kind::Mariadb);
    assert_eq!(db.probe, ProbeSpec::Protocol(Kind::Mariadb));
    assert_eq!(db.probe.to_string(), "mysql `SELECT 1`");
    let options = StackOptions {
        backend: Some(backend),
        ..StackOptions::default()
    };
    let stack = Stack::start(manifest, options).await.unwrap();
    let url = stack.url("db").unwrap();
    assert!(url.starts_with("mysql://u"), "{url}");
    assert!(url.ends_with("/app"), "{url}");
    assert_eq!(client(&stack, "SELECT 1").unwrap().trim(), "1");
    let databases = client(&stack, "SHOW DATABASES").unwrap();
    for wanted in ["app", "reports"] {
        assert!(
            databases.lines().any(|l| l == wanted),
            "{wanted} missing: {databases}"
        );
    }
    client(
        &stack,
        "CREATE TABLE reports.t (x INT); INSERT INTO reports.t VALUES (7)",
    )
    .unwrap();
    assert_eq!(
        client(&stack, "SELECT x FROM reports.t").unwrap().trim(),
        "7"
    );
    // The probe is a real login: a wrong password is refused by the server.
    let mut ep = stack.endpoint("db").unwrap();
    ep.password = Some("wrong".into());
    let refused = harness::probe::check(&ProbeSpec::Protocol(Kind::Mariadb), &ep).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("authentication failed")),
        "{refused:?}"
    );
    stack.down().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn native_mariadb_is_ready_with_its_databases() {
    a_mariadb_stack_is_ready_with_its_databases(BackendKind::Native).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn container_mariadb_is_ready_with_its_databases() {
    a_mariadb_stack_is_ready_with_its_databases(BackendKind::Container).await;
}
