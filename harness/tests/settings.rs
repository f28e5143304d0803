//! The settings are read in one place and documented in one table: the README's "Settings"
//! section is the table of `harness::settings::VARIABLES`, and no other module of the library
//! reads the environment or names a variable the table lacks.

use std::path::{Path, PathBuf};

use harness::settings::{is_known, Role, VARIABLES};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The README's table, as the variables' list renders it.
fn expected_table() -> String {
    let mut out = String::from("| Variable | Read by | What it does |\n|---|---|---|\n");
    for v in VARIABLES {
        let role = match v.role {
            Role::Stack => "stack",
            Role::Runner => "suite runner",
            Role::Verify => "`harness verify`",
            Role::SetByHarness => "set by the harness",
        };
        out.push_str(&format!("| `{}` | {role} | {} |\n", v.name, v.meaning));
    }
    out
}

/// The table of the README's `## Settings` section: its lines that start with `|`.
fn readme_table() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Settings\n")
        .nth(1)
        .expect("the README has a `## Settings` section");
    let section = section.split("\n## ").next().unwrap_or_default();
    section
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn the_readme_lists_exactly_the_settings() {
    let expected = expected_table();
    assert!(
        readme_table() == expected,
        "the README's `## Settings` table differs from harness::settings::VARIABLES; put this \
         table there:\n\n{expected}"
    );
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `"HARNESS_…"` string literal of a source (names, and prefixes ending in `_`).
fn harness_literals(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("\"HARNESS_") {
        let name: String = rest[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        found.push(name);
        rest = &rest[i + 1..];
    }
    found
}

#[test]
fn only_the_settings_module_reads_the_environment() {
    let mut files = Vec::new();
    sources(&root().join("harness/src"), &mut files);
    let settings = root().join("harness/src/settings.rs");
    let mut offenders = Vec::new();
    for file in files.iter().filter(|f| **f != settings) {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let reads = ["env::var(", "env::var_os(", "env::vars("]
                .iter()
                .any(|r| line.contains(r));
            // `PATH` is looked up the way the system does, not a setting (see the module docs).
            let path_lookup = line.contains("var_os(\"PATH\")");
            if reads && !path_lookup {
                offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
            if line.contains("set_var(") || line.contains("remove_var(") {
                let code = line.trim_start();
                if !code.starts_with("//") && !file.ends_with("bin/harness/main.rs") {
                    offenders.push(format!("{}:{}: {}", file.display(), n + 1, code));
                }
            }
        }
        for name in harness_literals(&text) {
            // A prefix (`"HARNESS_"`, `"HARNESS_VERIFY_"`) builds names the patterns cover.
            let prefix = name.ends_with('_');
            if !prefix && !is_known(&name) {
                offenders.push(format!(
                    "{}: `{name}` is not in harness::settings::VARIABLES",
                    file.display()
                ));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "the environment is read (or named) outside harness/src/settings.rs; read it \
         through `Settings` and list the variable there:\n  {}",
        offenders.join("\n  ")
    );
}
