//! Images built from a service's Dockerfile context (`build`), through the engine's API.
//!
//! The image is tagged `harness-build/<service>:<hash>`, the hash taken over every file of the
//! context that `.dockerignore` lets in (path, executable bit, content), the Dockerfile's
//! name, the build arguments and the target. An image of that tag is the build: it is not
//! built again, and a change to any file it was built from makes a new tag.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::StreamExt;
use testcontainers::bollard::query_parameters::BuildImageOptionsBuilder;
use testcontainers::bollard::Docker;

use crate::engine::events::{Event, Sink};
use crate::manifest::Build;
use crate::model::digest::{content_hash, Hasher};

/// The lines of build output shown when a build fails.
const OUTPUT_TAIL: usize = 25;

/// The tag of the image `build` makes for `service`.
pub fn tag(service: &str, build: &Build) -> Result<String, String> {
    let files = context_files(&build.context)?;
    let mut h = Hasher::new();
    h.write(build.dockerfile.as_bytes());
    h.write(build.target.as_deref().unwrap_or("").as_bytes());
    for (k, v) in &build.args {
        h.write(k.as_bytes());
        h.write(v.as_bytes());
    }
    for rel in &files {
        let path = build.context.join(rel);
        let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        h.write(rel.to_string_lossy().as_bytes());
        h.write(&[u8::from(executable(&path))]);
        h.write(&content_hash(&bytes).to_le_bytes());
    }
    Ok(format!("harness-build/{service}:{:016x}", h.finish()))
}

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// The files of a context (relative, sorted) that its `.dockerignore` does not exclude; the
/// Dockerfile and `.dockerignore` are always sent, as the engine needs them.
pub fn context_files(context: &Path) -> Result<Vec<PathBuf>, String> {
    let ignore = std::fs::read_to_string(context.join(".dockerignore"))
        .map(|t| Ignore::parse(&t))
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let full = context.join(&dir);
        let entries = std::fs::read_dir(&full)
            .map_err(|e| format!("reading the build context {}: {e}", full.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| e.to_string())?;
            let rel = dir.join(entry.file_name());
            let kind = entry.file_type().map_err(|e| e.to_string())?;
            let text = rel.to_string_lossy().to_string();
            if kind.is_dir() {
                // A directory is entered unless excluded with nothing re-included below it.
                if !ignore.excludes(&text) || ignore.may_include_below(&text) {
                    dirs.push(rel);
                }
            } else if kind.is_file() && !ignore.excludes(&text) {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `.dockerignore`: patterns with `*`, `?` and `**`, later lines winning, `!` re-including.
#[derive(Debug, Default)]
struct Ignore {
    rules: Vec<(bool, String)>,
}

impl Ignore {
    fn parse(text: &str) -> Ignore {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| match l.strip_prefix('!') {
                Some(p) => (false, clean(p)),
                None => (true, clean(l)),
            })
            .collect();
        Ignore { rules }
    }

    fn excludes(&self, path: &str) -> bool {
        if path == "Dockerfile" || path == ".dockerignore" {
            return false;
        }
        let mut excluded = false;
        for (exclude, pattern) in &self.rules {
            // A pattern matches a path or any directory above it.
            let hit = glob(pattern, path)
                || path
                    .match_indices('/')
                    .any(|(i, _)| glob(pattern, &path[..i]));
            if hit {
                excluded = *exclude;
            }
        }
        excluded
    }

    fn may_include_below(&self, dir: &str) -> bool {
        self.rules
            .iter()
            .any(|(exclude, p)| !exclude && p.starts_with(&format!("{dir}/")))
    }
}

fn clean(pattern: &str) -> String {
    pattern
        .trim()
        .trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

/// Whether `path` matches `pattern` (`*` within a segment, `?` one character, `**` any
/// number of segments).
fn glob(pattern: &str, path: &str) -> bool {
    fn seg(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => seg(&p[1..], s) || (!s.is_empty() && seg(p, &s[1..])),
            (Some(b'?'), Some(_)) => seg(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => seg(&p[1..], &s[1..]),
            _ => false,
        }
    }
    fn parts(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(&"**"), _) => parts(&p[1..], s) || (!s.is_empty() && parts(p, &s[1..])),
            (Some(a), Some(b)) => seg(a.as_bytes(), b.as_bytes()) && parts(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    parts(&p, &s)
}

/// The context as a tar archive, as the engine's build endpoint takes it.
fn archive(context: &Path) -> Result<Vec<u8>, String> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(true);
    for rel in context_files(context)? {
        tar.append_path_with_name(context.join(&rel), &rel)
            .map_err(|e| format!("packing {}: {e}", rel.display()))?;
    }
    tar.into_inner().map_err(|e| e.to_string())
}

/// Builds `image` for `service` from `build`, reporting to `sink`; the error holds the end of
/// the build's output, and for a base image that is not there, how to provide one.
pub(super) async fn build_image(
    docker: &Docker,
    service: &str,
    image: &str,
    build: &Build,
    sink: &dyn Sink,
) -> Result<(), String> {
    let started = Instant::now();
    sink.event(&Event::ImageBuilding {
        service: service.to_string(),
        image: image.to_string(),
        context: build.context.clone(),
    });
    let context = build.context.clone();
    let body = tokio::task::spawn_blocking(move || archive(&context))
        .await
        .map_err(|e| e.to_string())??;
    let args: HashMap<String, String> = build.args.clone().into_iter().collect();
    let mut options = BuildImageOptionsBuilder::new()
        .t(image)
        .dockerfile(&build.dockerfile)
        .buildargs(&args)
        .rm(true)
        .forcerm(true)
        .labels(&HashMap::from([(
            crate::engine::backend::container::LABEL_MANAGED,
            "true",
        )]));
    if let Some(t) = &build.target {
        options = options.target(t);
    }
    let mut stream = docker.build_image(
        options.build(),
        None,
        Some(testcontainers::bollard::body_full(body.into())),
    );
    let mut output: Vec<String> = Vec::new();
    let mut failure = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(text) = info.stream.or(info.status) {
                    output.extend(
                        text.lines()
                            .map(str::to_string)
                            .filter(|l| !l.trim().is_empty()),
                    );
                }
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    failure = Some(e);
                }
            }
            Err(e) => failure = Some(e.to_string()),
        }
    }
    if let Some(e) = failure {
        let from = missing_base(&e);
        let tail: Vec<&String> = output.iter().rev().take(OUTPUT_TAIL).collect();
        let tail: Vec<String> = tail.into_iter().rev().map(|l| format!("  | {l}")).collect();
        let mut message = format!(
            "building its image from {} failed: {e}",
            build.context.join(&build.dockerfile).display()
        );
        if !tail.is_empty() {
            message.push_str(&format!(
                "\n  build output (last {} lines):\n{}",
                tail.len(),
                tail.join("\n")
            ));
        }
        if let Some(base) = from {
            message.push_str(&format!(
                "\n  = help: the base image `{base}` is not on this machine and there is no registry to pull it from: build or tag it locally (`docker image tag <local image> {base}`, or `fixtures/images/build.sh` for harness-local/base:bookworm) and name it in the Dockerfile's FROM"
            ));
        }
        return Err(message);
    }
    sink.event(&Event::ImageBuilt {
        service: service.to_string(),
        image: image.to_string(),
        took: started.elapsed(),
    });
    Ok(())
}

/// The image a failed build could not find or pull, from the engine's message.
fn missing_base(error: &str) -> Option<String> {
    let lower = error.to_lowercase();
    let relevant = [
        "pull access denied",
        "not found",
        "no such host",
        "manifest unknown",
        "dial tcp",
        "lookup",
    ]
    .iter()
    .any(|m| lower.contains(m));
    if !relevant {
        return None;
    }
    // "pull access denied for python, repository does not exist ..."
    if let Some(rest) = error.split("pull access denied for ").nth(1) {
        return rest.split([',', ' ']).next().map(str::to_string);
    }
    // "... failed to resolve reference \"docker.io/library/python:3.12\" ..."
    error
        .split('"')
        .nth(1)
        .filter(|r| r.contains(':') || r.contains('/'))
        .map(str::to_string)
        .or_else(|| Some("named in FROM".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_dockerignore() {
        assert!(glob("*.pyc", "app.pyc"));
        assert!(!glob("*.pyc", "src/app.pyc"));
        assert!(glob("**/*.pyc", "src/deep/app.pyc"));
        assert!(glob("build", "build"));
        assert!(glob("te?t", "test"));
        let ignore = Ignore::parse("# comment\nnode_modules\n*.log\n!keep.log\n/secrets/\n");
        assert!(ignore.excludes("node_modules/x/y.js"));
        assert!(ignore.excludes("debug.log"));
        assert!(!ignore.excludes("keep.log"));
        assert!(ignore.excludes("secrets/key"));
        assert!(!ignore.excludes("Dockerfile"));
        assert!(!ignore.excludes("app.py"));
    }

    #[test]
    fn the_tag_follows_the_context_and_what_dockerignore_leaves_out_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let write = |p: &str, t: &str| std::fs::write(dir.path().join(p), t).unwrap();
        write("Dockerfile", "FROM base\nCOPY app.py /\n");
        write("app.py", "print(1)\n");
        write(".dockerignore", "*.log\n");
        let build = Build {
            context: dir.path().to_path_buf(),
            dockerfile: "Dockerfile".into(),
            args: Default::default(),
            target: None,
        };
        let first = tag("api", &build).unwrap();
        assert!(first.starts_with("harness-build/api:"), "{first}");
        write("debug.log", "noise");
        assert_eq!(
            tag("api", &build).unwrap(),
            first,
            "an ignored file changed the tag"
        );
        write("app.py", "print(2)\n");
        let second = tag("api", &build).unwrap();
        assert_ne!(second, first, "a changed source kept the tag");
        let with_arg = Build {
            args: [("MODE".to_string(), "test".to_string())].into(),
            ..build.clone()
        };
        assert_ne!(tag("api", &with_arg).unwrap(), second);
        assert_eq!(
            context_files(dir.path()).unwrap(),
            [".dockerignore", "Dockerfile", "app.py"].map(PathBuf::from)
        );
    }
}
