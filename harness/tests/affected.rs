//! `harness affected` against a scripted git history: it never selects fewer trials than a
//! change can break.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::runner::Selection;

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

[services.web]
kind = "service"
binary = "web"
ports = { http = 8080 }
paths = ["services/web"]
depends-on = ["orders"]

[suites]
"journeys::" = ["orders", "payments", "notifications"]
"web::" = ["web"]
"notifications::" = ["notifications"]
"contracts::orders->notifications" = ["orders", "notifications"]
"#;

/// The suites' trials, and the services each names (as consumer, provider or journey): the
/// test's own account, written independently of the mapping under test.
const TRIALS: &[(&str, &[&str])] = &[
    (
        "journeys::happy_path",
        &["orders", "payments", "notifications"],
    ),
    (
        "journeys::declined_payment",
        &["orders", "payments", "notifications"],
    ),
    ("web::checkout", &["web"]),
    ("notifications::listing", &["notifications"]),
    (
        "contracts::orders->payments::create a payment",
        &["orders", "payments"],
    ),
    (
        "contracts::orders->payments::create a payment, declined",
        &["orders", "payments"],
    ),
    (
        "contracts::consumer::orders->payments::create a payment",
        &["orders", "payments"],
    ),
    (
        "contracts::notifications->orders::an order.paid event",
        &["notifications", "orders"],
    ),
    (
        "contracts::consumer::notifications->orders::an order.paid event",
        &["notifications", "orders"],
    ),
    // Nothing maps these: they must always run.
    ("contracts::drift::pact files match the consumer tests", &[]),
    ("contracts::negative::a renamed response field fails", &[]),
];

/// Direct dependencies of each service, as in MANIFEST.
const DEPENDS_ON: &[(&str, &[&str])] = &[
    ("payments", &["postgres"]),
    ("orders", &["postgres", "payments"]),
    ("notifications", &["postgres"]),
    ("web", &["orders"]),
];

fn pact(consumer: &str, provider: &str) -> String {
    serde_json::json!({
        "consumer": {"name": consumer},
        "provider": {"name": provider},
        "interactions": [],
        "metadata": {"pactSpecification": {"version": "4.0"}}
    })
    .to_string()
}

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

struct Repo {
    root: PathBuf,
    dir: PathBuf,
    trials_file: PathBuf,
}

impl Repo {
    fn new(name: &str) -> Repo {
        let root =
            std::env::temp_dir().join(format!("harness-affected-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("repo");
        std::fs::create_dir_all(&dir).unwrap();
        // Outside the repository: an untracked file there would count as a change.
        let trials_file = root.join("trials.txt");
        let list: String = TRIALS.iter().map(|(t, _)| format!("{t}: test\n")).collect();
        std::fs::write(&trials_file, list).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        write(&dir, "stack/stack.toml", MANIFEST);
        for s in ["payments", "orders", "notifications", "web"] {
            write(
                &dir,
                &format!("stack/services/{s}/src/main.rs"),
                "fn main() {}\n",
            );
        }
        write(
            &dir,
            "contracts/orders-payments.json",
            &pact("orders", "payments"),
        );
        write(
            &dir,
            "contracts/notifications-orders.json",
            &pact("notifications", "orders"),
        );
        write(&dir, "stack/lib/shared.rs", "// shared\n");
        write(&dir, "README.md", "# shop\n");
        git(&dir, &["add", "-A"]);
        git(&dir, &["commit", "-qm", "base"]);
        Repo {
            root,
            dir,
            trials_file,
        }
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_harness"))
            .arg("affected")
            .args(args)
            .arg("--trials")
            .arg(&self.trials_file)
            .arg("--manifest")
            .arg(self.dir.join("stack/stack.toml"))
            .output()
            .unwrap()
    }

    fn affected(&self, since: &str) -> serde_json::Value {
        let out = self.run(&["--json", "--since", since]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn commit(&self, path: &str, text: &str) {
        write(&self.dir, path, text);
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-qm", path]);
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn strings(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// `service` and every service depending on it, directly or not.
fn with_dependents(service: &str) -> BTreeSet<String> {
    let deps: BTreeMap<&str, &[&str]> = DEPENDS_ON.iter().copied().collect();
    let mut out = BTreeSet::from([service.to_string()]);
    loop {
        let more: Vec<String> = deps
            .iter()
            .filter(|(s, d)| !out.contains(**s) && d.iter().any(|d| out.contains(*d)))
            .map(|(s, _)| s.to_string())
            .collect();
        if more.is_empty() {
            return out;
        }
        out.extend(more);
    }
}

/// The trials the runner keeps with `HARNESS_ONLY=<filter>`, parsed as the runner parses it.
fn kept_by_filter(filter: &str) -> BTreeSet<String> {
    let selection = Selection {
        only: Selection::parse_only(filter),
        ..Selection::default()
    };
    TRIALS
        .iter()
        .map(|(t, _)| t.to_string())
        .filter(|t| selection.keeps(t))
        .collect()
}

#[test]
fn every_trial_a_change_can_break_is_selected() {
    let repo = Repo::new("history");
    let all: BTreeSet<String> = TRIALS.iter().map(|(t, _)| t.to_string()).collect();

    // One service changes at a time: every trial naming it or a (transitive) dependent runs,
    // the unmapped ones run, the rest do not.
    for (n, service) in ["payments", "orders", "notifications", "web"]
        .into_iter()
        .enumerate()
    {
        repo.commit(
            &format!("stack/services/{service}/src/main.rs"),
            &format!("fn main() {{ let _ = {n}; }}\n"),
        );
        let a = repo.affected("HEAD~1");
        let hit = with_dependents(service);
        let expected: BTreeSet<String> = TRIALS
            .iter()
            .filter(|(_, s)| s.is_empty() || s.iter().any(|s| hit.contains(*s)))
            .map(|(t, _)| t.to_string())
            .collect();
        assert_eq!(
            strings(&a["changed_services"]),
            BTreeSet::from([service.to_string()])
        );
        assert_eq!(strings(&a["affected_services"]), hit, "change to {service}");
        assert_eq!(
            strings(&a["trials"]),
            expected,
            "change to {service}: {a:#}"
        );
        let filter = a["filter"].as_str().unwrap();
        let kept = kept_by_filter(filter);
        let missed: Vec<&String> = expected.difference(&kept).collect();
        assert!(
            missed.is_empty(),
            "change to {service}: HARNESS_ONLY={filter} drops {missed:?}"
        );
        assert_eq!(a["all"], expected == all, "change to {service}: {a:#}");
        if service == "notifications" {
            // It has no dependents: the orders->payments contract and web are left out.
            let skipped = strings(&a["skipped"]);
            assert!(skipped.contains("web::checkout"), "{a:#}");
            assert!(
                skipped.contains("contracts::orders->payments::create a payment"),
                "{a:#}"
            );
        }
        assert_eq!(
            strings(&a["unmapped"]),
            BTreeSet::from([
                "contracts::drift::pact files match the consumer tests".to_string(),
                "contracts::negative::a renamed response field fails".to_string(),
            ])
        );
    }
    // Documentation: only the unmapped trials run.
    repo.commit("README.md", "# the shop\n");
    let a = repo.affected("HEAD~1");
    assert_eq!(strings(&a["trials"]), strings(&a["unmapped"]));
    assert_eq!(
        kept_by_filter(a["filter"].as_str().unwrap()),
        strings(&a["unmapped"])
    );

    // Shared code, the pact files and the manifest select every trial: no filter at all.
    for (path, why) in [
        (
            "stack/lib/shared.rs",
            "shared code changed (stack/lib/shared.rs)",
        ),
        (
            "contracts/orders-payments.json",
            "shared code changed (contracts/",
        ),
        ("stack/stack.toml", "the manifest changed"),
    ] {
        let text = if path.ends_with(".json") {
            pact("orders", "payments") + "\n"
        } else if path.ends_with(".toml") {
            format!("{MANIFEST}\n# comment\n")
        } else {
            "// changed\n".into()
        };
        repo.commit(path, &text);
        let a = repo.affected("HEAD~1");
        assert!(a["everything"].as_str().unwrap().contains(why), "{a:#}");
        assert_eq!(a["all"], true, "{a:#}");
        assert_eq!(a["filter"], "", "{a:#}");
        assert_eq!(strings(&a["trials"]), all);
        assert_eq!(kept_by_filter(""), all);
    }
    // A range over several commits unions them.
    let a = repo.affected("HEAD~8");
    assert_eq!(a["all"], true);
    assert_eq!(strings(&a["changed_services"]).len(), 4, "{a:#}");
}

#[test]
fn output_explains_and_warns() {
    let repo = Repo::new("explain");
    let out = repo.run(&["--since", "HEAD", "--explain"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The key that matches nothing is named with its line.
    let line = MANIFEST
        .lines()
        .position(|l| l.starts_with("\"contracts::orders->notifications\""))
        .unwrap()
        + 1;
    assert!(
        stderr.contains(
            "warning: [suites] key \"contracts::orders->notifications\" matches no trial"
        ) && stderr.contains(&format!("stack/stack.toml:{line}")),
        "{stderr}"
    );
    for line in [
        "pact orders->payments",
        "  contracts::consumer::orders->payments::create a payment\n",
        "[suites] \"contracts::orders->notifications\" -> orders, notifications: 0 trial(s)\n  (matches no trial)",
        "unmapped, always run: 2 trial(s)\n  contracts::drift::pact files match the consumer tests\n",
        "trials to run:     2 of 11\n",
        "  contracts::negative::a renamed response field fails  (unmapped, always run)\n",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // A bad revision is a clear usage error.
    let out = repo.run(&["--since", "no-such-rev"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`no-such-rev` is not a commit"));
}
