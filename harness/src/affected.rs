//! Affected suites: which trials a change can break.
//!
//! Changed paths (from git) map to the services that own them (`paths` of each service in
//! the manifest, relative to the manifest's directory). Every service that depends on a
//! changed one, directly or not, is affected too: a change to payments affects orders'
//! journeys and the orders→payments contract. Suites declare the services they exercise in the
//! manifest's `[suites]` table; a suite runs when any of them is affected.
//!
//! A change to the manifest, or to a path no service owns (shared code, the harness, the
//! suites themselves), selects everything. Documentation (`*.md`) selects nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::Error;
use crate::graph::Graph;
use crate::manifest::Manifest;

/// What a change affects.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Affected {
    /// Changed paths, relative to the repository root.
    pub changed: Vec<String>,
    /// Why everything is selected, when it is.
    pub everything: Option<String>,
    /// Services whose own paths changed.
    pub changed_services: BTreeSet<String>,
    /// Those and every service depending on them.
    pub affected_services: BTreeSet<String>,
    /// Suites (trial-name prefixes) to run.
    pub suites: Vec<String>,
    /// The value for `HARNESS_ONLY` that makes the runner run just these suites
    /// (`-` when nothing needs to run).
    pub filter: String,
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

/// Works out what `changed` (repo-relative paths) affects.
pub fn analyze(manifest: &Manifest, repo: &Path, changed: Vec<String>) -> Affected {
    let graph = Graph::new(manifest).ok();
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
            // Documentation affects no trial.
        } else {
            everything.get_or_insert_with(|| format!("shared code changed ({path})"));
        }
    }
    let mut affected_services = changed_services.clone();
    if let Some(g) = &graph {
        for s in &changed_services {
            affected_services.extend(g.dependents(s));
        }
    }
    let suites: Vec<String> = manifest
        .suites
        .iter()
        .filter(|(_, services)| {
            everything.is_some() || services.iter().any(|s| affected_services.contains(s))
        })
        .map(|(name, _)| name.clone())
        .collect();
    let filter = if everything.is_some() && manifest.suites.is_empty() {
        String::new()
    } else if suites.is_empty() {
        "-".into()
    } else {
        suites.join(",")
    };
    Affected {
        changed,
        everything,
        changed_services,
        affected_services,
        suites,
        filter,
    }
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
        if self.suites.is_empty() {
            out.push_str("suites to run:     (none)\n");
        } else {
            out.push_str(&format!("suites to run:     {}\n", self.suites.join(", ")));
        }
        out.push_str(&format!(
            "runner filter:     HARNESS_ONLY={}\n",
            self.filter
        ));
        out
    }
}
