//! `harness affected` against a scripted git history.

use std::path::Path;
use std::process::Command;

const MANIFEST: &str = r#"
[services.postgres]
kind = "postgres"

[services.payments]
kind = "service"
binary = "payments"
ports = { http = 8080 }
paths = ["services/payments"]
depends-on = ["postgres"]

[services.orders]
kind = "service"
binary = "orders"
ports = { http = 8080 }
paths = ["services/orders"]
depends-on = ["postgres", "payments"]

[services.notifications]
kind = "service"
binary = "notifications"
ports = { http = 8080 }
paths = ["services/notifications"]
depends-on = ["postgres"]

[suites]
"journeys::" = ["orders", "payments", "notifications"]
"contracts::orders->payments" = ["orders", "payments"]
"contracts::orders->notifications" = ["orders", "notifications"]
"notifications::" = ["notifications"]
"#;

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

fn write(dir: &Path, path: &str, text: &str) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn affected(dir: &Path, since: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["affected", "--json", "--since", since, "--manifest"])
        .arg(dir.join("stack/stack.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn strings(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn changes_select_their_services_dependents_and_suites() {
    let dir = std::env::temp_dir().join(format!("harness-affected-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    write(&dir, "stack/stack.toml", MANIFEST);
    for s in ["payments", "orders", "notifications"] {
        write(
            &dir,
            &format!("stack/services/{s}/src/main.rs"),
            "fn main() {}\n",
        );
    }
    write(&dir, "stack/lib/shared.rs", "// shared\n");
    write(&dir, "README.md", "# shop\n");
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-qm", "base"]);

    // 1. A change to payments affects orders (its dependent) and their suites.
    write(
        &dir,
        "stack/services/payments/src/main.rs",
        "fn main() { println!(); }\n",
    );
    git(&dir, &["commit", "-qam", "payments"]);
    let a = affected(&dir, "HEAD~1");
    assert_eq!(strings(&a["changed_services"]), ["payments"]);
    assert_eq!(strings(&a["affected_services"]), ["orders", "payments"]);
    assert_eq!(
        strings(&a["suites"]),
        [
            "contracts::orders->notifications",
            "contracts::orders->payments",
            "journeys::"
        ]
    );
    assert!(a["everything"].is_null());
    assert_eq!(
        a["filter"],
        "contracts::orders->notifications,contracts::orders->payments,journeys::"
    );

    // 2. Notifications has no dependents: only its suites.
    write(
        &dir,
        "stack/services/notifications/src/main.rs",
        "fn main() { }\n",
    );
    git(&dir, &["commit", "-qam", "notifications"]);
    let a = affected(&dir, "HEAD~1");
    assert_eq!(strings(&a["affected_services"]), ["notifications"]);
    assert_eq!(
        strings(&a["suites"]),
        [
            "contracts::orders->notifications",
            "journeys::",
            "notifications::"
        ]
    );

    // 3. Documentation affects nothing; the filter then selects no trial.
    write(&dir, "README.md", "# the shop\n");
    git(&dir, &["commit", "-qam", "docs"]);
    let a = affected(&dir, "HEAD~1");
    assert!(strings(&a["suites"]).is_empty());
    assert_eq!(a["filter"], "-");

    // 4. Shared code selects everything, and says why.
    write(&dir, "stack/lib/shared.rs", "// changed\n");
    let a = affected(&dir, "HEAD");
    assert!(
        a["everything"]
            .as_str()
            .unwrap()
            .contains("stack/lib/shared.rs"),
        "{a}"
    );
    assert_eq!(strings(&a["suites"]).len(), 4);
    git(&dir, &["commit", "-qam", "shared"]);

    // 5. So does the manifest; and the range can span several commits.
    write(
        &dir,
        "stack/stack.toml",
        &format!("{MANIFEST}\n# comment\n"),
    );
    git(&dir, &["commit", "-qam", "manifest"]);
    let a = affected(&dir, "HEAD~1");
    assert!(
        a["everything"]
            .as_str()
            .unwrap()
            .contains("the manifest changed"),
        "{a}"
    );
    let a = affected(&dir, "HEAD~5");
    assert_eq!(
        strings(&a["changed_services"]),
        ["notifications", "payments"]
    );

    // 6. A bad revision is a clear usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["affected", "--since", "no-such-rev", "--manifest"])
        .arg(dir.join("stack/stack.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`no-such-rev` is not a commit"));
    let _ = std::fs::remove_dir_all(&dir);
}
