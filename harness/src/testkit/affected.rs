//! Affected trials: which trials a change can break. Fail-safe: when in doubt, a trial runs.
//!
//! Changed paths (from git) map to the services that own them (`paths` of each service in
//! the manifest, relative to the manifest's directory). Every service that depends on a
//! changed one, directly or not, is affected too: a change to payments affects orders'
//! journeys and the orders→payments contract.
//!
//! Each trial of the suites (listed from the built suite binaries) maps to the services it
//! exercises:
//! - by the manifest's `[suites]` table: a key is a trial-name prefix, its value the services;
//! - by the pact files: a trial with a name segment `<consumer>-><provider>`
//!   (`contracts::orders->payments::…`, `contracts::consumer::orders->payments::…`) exercises
//!   both services of that pact, without any `[suites]` entry.
//!
//! A trial runs when one of its services is affected, and always when nothing maps it
//! (`unmapped, always run`). A change to the manifest, or to a path no service owns (shared
//! code, the harness, the suites themselves, the pact files), selects every trial: the filter
//! is then empty, which the runner reads as "no filter". Documentation (`*.md`) selects only
//! the unmapped trials.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::error::Error;
use crate::graph::Graph;
use crate::manifest::Manifest;
use crate::settings::Settings;

/// What a change affects.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Affected {
    /// Changed paths, relative to the repository root.
    pub changed: Vec<String>,
    /// Why every trial is selected, when it is.
    pub everything: Option<String>,
    /// Services whose own paths changed.
    pub changed_services: BTreeSet<String>,
    /// Those and every service depending on them.
    pub affected_services: BTreeSet<String>,
    /// Every trial runs: the filter is empty.
    pub all: bool,
    /// The trials to run, sorted.
    pub trials: Vec<String>,
    /// Trials that nothing maps to a service: they always run.
    pub unmapped: Vec<String>,
    /// Trials left out: none of their services is affected.
    pub skipped: Vec<String>,
    /// The value for `HARNESS_ONLY`: empty for every trial, `-` when nothing needs to run,
    /// else trial-name prefixes separated by commas.
    pub filter: String,
}

/// A pact file's two sides.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Pact {
    /// The consumer's name.
    pub consumer: String,
    /// The provider's name.
    pub provider: String,
    /// The file it was read from.
    pub file: PathBuf,
}

impl Pact {
    /// The trial-name segment of this pact's trials: `consumer->provider`.
    pub fn segment(&self) -> String {
        format!("{}->{}", self.consumer, self.provider)
    }
}

/// One trial and the services it exercises, with what says so.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MappedTrial {
    /// The trial's full name.
    pub name: String,
    /// The services of the manifest it exercises; empty when unmapped.
    pub services: BTreeSet<String>,
    /// The `[suites]` keys (`[suites] "journeys::"`) and pacts (`pact orders->payments`)
    /// that map it.
    pub by: Vec<String>,
}

/// Maps each trial to its services, by the `[suites]` table and the pacts. Services the
/// manifest does not define are dropped, so a trial mapped only to such names is unmapped
/// (and runs always).
pub fn map_trials(manifest: &Manifest, pacts: &[Pact], trials: &[String]) -> Vec<MappedTrial> {
    let known = |s: &String| manifest.service(s).is_some();
    trials
        .iter()
        .map(|name| {
            let mut services = BTreeSet::new();
            let mut by = Vec::new();
            for (key, list) in &manifest.suites {
                if name.starts_with(key.as_str()) {
                    services.extend(list.iter().filter(|s| known(s)).cloned());
                    by.push(format!("[suites] \"{key}\""));
                }
            }
            for pact in pacts {
                let segment = pact.segment();
                if name.split("::").any(|part| part == segment) {
                    services.extend(
                        [&pact.consumer, &pact.provider]
                            .into_iter()
                            .filter(|s| known(s))
                            .cloned(),
                    );
                    by.push(format!("pact {segment}"));
                }
            }
            MappedTrial {
                name: name.clone(),
                services,
                by,
            }
        })
        .collect()
}

/// `[suites]` keys that match no trial: a typo there would leave trials unmapped, or map
/// nothing at all.
pub fn unused_keys(manifest: &Manifest, trials: &[String]) -> Vec<String> {
    manifest
        .suites
        .keys()
        .filter(|key| !trials.iter().any(|t| t.starts_with(key.as_str())))
        .cloned()
        .collect()
}

/// A warning per `[suites]` key that matches no trial, pointing at its line in the manifest.
pub fn unused_key_warnings(manifest: &Manifest, trials: &[String]) -> Vec<String> {
    let text = std::fs::read_to_string(&manifest.path).unwrap_or_default();
    unused_keys(manifest, trials)
        .into_iter()
        .map(|key| {
            let quoted = format!("\"{key}\"");
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with(&quoted))
                .map(|i| format!(":{}", i + 1))
                .unwrap_or_default();
            format!(
                "warning: [suites] key \"{key}\" matches no trial of the suites\n  --> {}{line}\n  = help: a key is the start of trial names (see `cargo test -p suites -- --list`); contract trials are mapped from the pact files without a key",
                manifest.path.display()
            )
        })
        .collect()
}

/// The pacts in `dir` (`*.json`), sorted by file name.
pub fn read_pacts(dir: &Path) -> Result<Vec<Pact>, Error> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("reading the pact files in {}", dir.display()), e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                Error::Usage(format!(
                    "{} is not a pact file (not JSON: {e})",
                    file.display()
                ))
            })?;
            let side = |k: &str| {
                v[k]["name"].as_str().map(str::to_string).ok_or_else(|| {
                    Error::Usage(format!(
                        "{} is not a pact file: it names no {k} (`{k}.name`)",
                        file.display()
                    ))
                })
            };
            Ok(Pact {
                consumer: side("consumer")?,
                provider: side("provider")?,
                file,
            })
        })
        .collect()
}

/// The pacts of `contracts/` beside the manifest, else at the repository root; none when
/// neither exists.
pub fn find_pacts(manifest: &Manifest, repo: &Path) -> Result<Vec<Pact>, Error> {
    let candidates = [manifest.dir().join("contracts"), repo.join("contracts")];
    match candidates.iter().find(|d| d.is_dir()) {
        Some(dir) => read_pacts(dir),
        None => Ok(Vec::new()),
    }
}

/// The trials of the built suite binaries of `package`: builds them (`cargo test --no-run`),
/// then asks each binary for `--list --format terse`.
pub fn list_trials(dir: &Path, package: &str, settings: &Settings) -> Result<Vec<String>, Error> {
    let out = settings
        .cargo_command()
        .args(["test", "-p", package, "--no-run", "--quiet"])
        .arg("--message-format=json")
        .current_dir(dir)
        .output()
        .map_err(|e| Error::io("running `cargo test --no-run` to build the suites", e))?;
    if !out.status.success() {
        return Err(Error::Prerequisite {
            what: format!(
                "the suites of package `{package}` do not build, so their trials cannot be listed:\n{}",
                String::from_utf8_lossy(&out.stderr).trim_end()
            ),
            help: "fix the build, or pass the trial names with `--trials <file>`".into(),
        });
    }
    let mut trials = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test_target = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        let Some(exe) = msg["executable"].as_str().filter(|_| is_test_target) else {
            continue;
        };
        let listed = std::process::Command::new(exe)
            .args(["--list", "--format", "terse"])
            // The selection variables would hide trials from the list.
            .env_remove("HARNESS_ONLY")
            .env_remove("HARNESS_SHARD")
            .env_remove("HARNESS_VERIFY_PROVIDER")
            .current_dir(dir)
            .output()
            .map_err(|e| Error::io(format!("listing the trials of {exe}"), e))?;
        if !listed.status.success() {
            return Err(Error::Prerequisite {
                what: format!(
                    "`{exe} --list` failed: {}",
                    String::from_utf8_lossy(&listed.stderr).trim_end()
                ),
                help: "run it yourself to see why, or pass the trial names with `--trials <file>`"
                    .into(),
            });
        }
        trials.extend(parse_trial_list(&String::from_utf8_lossy(&listed.stdout)));
    }
    trials.sort();
    trials.dedup();
    Ok(trials)
}

/// Trial names from `--list --format terse` output (`name: test`) or one name per line.
pub fn parse_trial_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            l.strip_suffix(": test")
                .or_else(|| l.strip_suffix(": bench"))
                .unwrap_or(l)
        })
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

fn git(repo: &Path, args: &[&str]) -> Result<String, Error> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .map_err(|e| Error::io("running git", e))?;
    if !out.status.success() {
        return Err(Error::Usage(format!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The repository root around a directory.
pub fn repo_root(dir: &Path) -> Result<PathBuf, Error> {
    Ok(PathBuf::from(
        git(dir, &["rev-parse", "--show-toplevel"])?.trim(),
    ))
}

/// Paths changed since `rev` (committed, staged, unstaged and untracked), repo-relative.
pub fn changed_since(repo: &Path, rev: &str) -> Result<Vec<String>, Error> {
    git(
        repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .map_err(|_| {
        Error::Usage(format!(
            "`{rev}` is not a commit of the repository at {}",
            repo.display()
        ))
    })?;
    let mut paths: BTreeSet<String> = git(repo, &["diff", "--name-only", rev])?
        .lines()
        .map(str::to_string)
        .collect();
    paths.extend(
        git(repo, &["ls-files", "--others", "--exclude-standard"])?
            .lines()
            .map(str::to_string),
    );
    Ok(paths.into_iter().filter(|p| !p.is_empty()).collect())
}

fn under(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    dir.is_empty() || path == dir || path.starts_with(&format!("{dir}/"))
}

/// Works out which of `trials` (from [`map_trials`]) `changed` (repo-relative paths) affects.
pub fn analyze(
    manifest: &Manifest,
    repo: &Path,
    changed: Vec<String>,
    trials: &[MappedTrial],
) -> Affected {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let repo = canonical(repo);
    let rel = |p: &Path| -> String {
        canonical(p)
            .strip_prefix(&repo)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let manifest_rel = rel(&manifest.path);
    let manifest_dir = rel(manifest.dir());
    let owned: Vec<(String, String)> = manifest
        .services
        .iter()
        .flat_map(|s| {
            s.paths.iter().map(|p| {
                let full = Path::new(&manifest_dir).join(p);
                (
                    s.name.clone(),
                    full.to_string_lossy().trim_end_matches('/').to_string(),
                )
            })
        })
        .collect();
    let mut everything = None;
    if trials.is_empty() {
        everything = Some("the suites have no trials to choose from".to_string());
    }
    let mut changed_services = BTreeSet::new();
    for path in &changed {
        if *path == manifest_rel {
            everything.get_or_insert_with(|| format!("the manifest changed ({path})"));
            continue;
        }
        let owners: Vec<&String> = owned
            .iter()
            .filter(|(_, dir)| under(path, dir))
            .map(|(s, _)| s)
            .collect();
        if !owners.is_empty() {
            changed_services.extend(owners.into_iter().cloned());
        } else if path.ends_with(".md") {
            // Documentation affects no mapped trial.
        } else {
            everything.get_or_insert_with(|| format!("shared code changed ({path})"));
        }
    }
    let mut affected_services = changed_services.clone();
    match Graph::new(manifest) {
        Ok(g) => {
            for s in &changed_services {
                affected_services.extend(g.dependents(s));
            }
        }
        Err(cycle) => {
            everything.get_or_insert_with(|| {
                format!(
                    "the dependents are unknown (dependency cycle {})",
                    cycle.path.join(" -> ")
                )
            });
        }
    }
    let unmapped: Vec<String> = trials
        .iter()
        .filter(|t| t.services.is_empty())
        .map(|t| t.name.clone())
        .collect();
    let (selected, skipped): (Vec<&MappedTrial>, Vec<&MappedTrial>) =
        trials.iter().partition(|t| {
            everything.is_some()
                || t.services.is_empty()
                || !t.services.is_disjoint(&affected_services)
        });
    let all = skipped.is_empty();
    let filter = if all {
        String::new()
    } else if selected.is_empty() {
        "-".into()
    } else {
        let mut prefixes: Vec<&str> = selected.iter().map(|t| filter_prefix(&t.name)).collect();
        prefixes.dedup();
        prefixes.join(",")
    };
    Affected {
        changed,
        everything,
        changed_services,
        affected_services,
        all,
        trials: selected.iter().map(|t| t.name.clone()).collect(),
        unmapped,
        skipped: skipped.iter().map(|t| t.name.clone()).collect(),
        filter,
    }
}

/// The longest start of a trial name that `HARNESS_ONLY` can carry: it splits at commas and
/// trims spaces, and a shorter prefix only selects more, never less.
fn filter_prefix(name: &str) -> &str {
    name.split(',').next().unwrap_or(name).trim()
}

impl Affected {
    /// A human-readable account.
    pub fn render(&self) -> String {
        let mut out = format!("{} changed path(s)\n", self.changed.len());
        if let Some(why) = &self.everything {
            out.push_str(&format!("everything is affected: {why}\n"));
        }
        let list = |s: &BTreeSet<String>| {
            if s.is_empty() {
                "(none)".to_string()
            } else {
                s.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        };
        out.push_str(&format!(
            "services changed:  {}\n",
            list(&self.changed_services)
        ));
        out.push_str(&format!(
            "services affected: {}\n",
            list(&self.affected_services)
        ));
        let total = self.trials.len() + self.skipped.len();
        if self.all {
            out.push_str(&format!("trials to run:     all {total}\n"));
        } else {
            out.push_str(&format!(
                "trials to run:     {} of {total}\n",
                self.trials.len()
            ));
            for t in &self.trials {
                let note = if self.unmapped.contains(t) {
                    "  (unmapped, always run)"
                } else {
                    ""
                };
                out.push_str(&format!("  {t}{note}\n"));
            }
        }
        if !self.unmapped.is_empty() {
            out.push_str(&format!(
                "unmapped, always run: {} trial(s) no [suites] key or pact maps{}\n",
                self.unmapped.len(),
                if self.all { ":" } else { " (marked above)" }
            ));
            if self.all {
                for t in &self.unmapped {
                    out.push_str(&format!("  {t}\n"));
                }
            }
        }
        let filter = if self.all {
            "(empty: every trial)"
        } else {
            &self.filter
        };
        out.push_str(&format!("runner filter:     HARNESS_ONLY={filter}\n"));
        out
    }
}

/// `harness affected --explain`: each `[suites]` key and pact with the trials it maps, then the
/// unmapped trials.
pub fn explain(manifest: &Manifest, pacts: &[Pact], trials: &[MappedTrial]) -> String {
    let mut out = String::new();
    let mut section = |title: String, matched: Vec<&str>| {
        out.push_str(&format!("{title}: {} trial(s)\n", matched.len()));
        if matched.is_empty() {
            out.push_str("  (matches no trial)\n");
        }
        for t in matched {
            out.push_str(&format!("  {t}\n"));
        }
    };
    let matching = |by: &str| -> Vec<&str> {
        trials
            .iter()
            .filter(|t| t.by.iter().any(|b| b == by))
            .map(|t| t.name.as_str())
            .collect()
    };
    for (key, services) in &manifest.suites {
        let by = format!("[suites] \"{key}\"");
        section(format!("{by} -> {}", services.join(", ")), matching(&by));
    }
    for pact in pacts {
        let by = format!("pact {}", pact.segment());
        section(
            format!(
                "{by} ({}) -> {}, {}",
                pact.file.display(),
                pact.consumer,
                pact.provider
            ),
            matching(&by),
        );
    }
    let unmapped: Vec<&str> = trials
        .iter()
        .filter(|t| t.services.is_empty())
        .map(|t| t.name.as_str())
        .collect();
    section("unmapped, always run".into(), unmapped);
    out
}
