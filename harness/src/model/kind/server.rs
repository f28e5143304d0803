//! The trait every built-in server kind implements, and what its methods take and give.
//!
//! A kind knows its own conventions (port, image, credentials, URL), how its container is
//! configured, how it is launched natively and how its protocol says "ready". The engine knows
//! none of that: it asks the kind, and gives it a [`NativeHost`] for the one thing the engine
//! owns, running processes so that nothing outlives the run.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nix::sys::signal::Signal;
use nix::unistd::User;
use tokio::process::Command;

/// Where and as whom one server can be reached: what a kind's probe, setup and URL need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// The server's port.
    pub port: u16,
    /// User name, if any.
    pub user: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
    /// Default database (vhost, index), if any.
    pub database: Option<String>,
}

/// A user, password and default database, as the manifest gives them or a kind completes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Default database (vhost for RabbitMQ, index for Redis).
    pub database: Option<String>,
}

/// The entrypoint a server's container gets when its image is a bare tag of the local base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entrypoint {
    /// The script, run by bash.
    pub script: &'static str,
    /// The signal that stops the server quickly, when not SIGTERM.
    pub stop_signal: Option<&'static str>,
}

/// A program a kind needs on this machine to run natively.
#[derive(Debug, Clone)]
pub struct Program {
    /// Its file name.
    pub name: &'static str,
    /// Directories searched before `PATH`.
    pub dirs: Vec<PathBuf>,
    /// How to install it.
    pub help: &'static str,
}

/// A long-running process a native launch asks the engine to start, in its own process group.
#[derive(Debug, Clone, Default)]
pub struct Process {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// The user it runs as (root only).
    pub user: Option<User>,
    /// Its log file name in the service's directory, when not the shared `output.log`.
    pub log: Option<&'static str>,
    /// The signal that stops it gracefully, when not SIGTERM.
    pub graceful: Option<Signal>,
    /// A loopback port it must listen on before the next process starts.
    pub listens_on: Option<u16>,
}

/// What the engine provides to a kind's native launch.
#[async_trait]
pub trait NativeHost: Send + Sync {
    /// The service's own directory inside the run directory (it exists and is empty).
    fn dir(&self) -> &Path;
    /// The run's id.
    fn run_id(&self) -> &str;
    /// Where state that can be rebuilt is kept (cached clusters).
    fn cache_dir(&self) -> PathBuf;
    /// A free loopback port, never handed out twice in one run.
    fn free_port(&self) -> std::io::Result<u16>;
    /// Runs a helper program to its end (registered, so a signal meanwhile stops it), as `user`,
    /// with `stdin` written to it; its output, or why it failed with the output.
    async fn run(
        &self,
        cmd: Command,
        user: Option<&User>,
        stdin: Option<String>,
    ) -> Result<std::process::Output, String>;
}

/// What one built-in server kind means. One implementation per kind, each in its own module.
#[async_trait]
pub trait Server: Send + Sync + std::fmt::Debug {
    /// The port it listens on, under its conventional name (`("postgres", 5432)`).
    fn port(&self) -> (&'static str, u16);
    /// The name of its protocol probe in a manifest (`probe = { type = "amqp" }`).
    fn protocol(&self) -> &'static str;
    /// What its protocol probe checks, for messages (`postgres \`SELECT 1\``).
    fn probe_description(&self) -> &'static str;
    /// A shell command that succeeds inside its container once it is ready (a compose
    /// healthcheck); `None`: a TCP connect to its port.
    fn healthcheck(&self, target: &Target) -> Option<String> {
        let _ = target;
        None
    }
    /// The image the container backend runs when the manifest names none.
    fn image(&self) -> &'static str;
    /// Typical seconds from launch to ready, to estimate the critical path before measuring.
    fn typical_boot(&self) -> f64;
    /// The scheme of its connection URLs.
    fn scheme(&self) -> &'static str;
    /// The URL path when none is asked for and the credentials name no database.
    fn default_path(&self) -> &'static str;
    /// Whether the URL path is percent-encoded (a RabbitMQ vhost `/` is `%2F`).
    fn encodes_path(&self) -> bool {
        false
    }
    /// Whether its URL path names the default database of the credentials when none is asked for.
    fn path_is_database(&self) -> bool {
        false
    }
    /// The manifest's credentials completed as this kind needs them for one run (a random user and
    /// password where it has users, a default database).
    fn credentials(&self, given: &Credentials, random: &dyn Fn(usize) -> String) -> Credentials {
        let _ = random;
        given.clone()
    }
    /// Whether `databases = [...]` means something for it.
    fn holds_databases(&self) -> bool {
        false
    }
    /// The environment its official image takes its settings from.
    fn container_env(&self, target: &Target) -> Vec<(String, String)> {
        let _ = target;
        Vec::new()
    }
    /// The entrypoint its container gets when the image is a bare tag of the local base image.
    fn entrypoint(&self) -> Option<Entrypoint>;
    /// Where it keeps its data inside a container, if anywhere worth mounting.
    fn data_dir(&self) -> Option<&'static str> {
        None
    }
    /// Its container's command when the manifest gives no `args` (speed over durability).
    fn default_args(&self) -> Vec<String> {
        Vec::new()
    }
    /// The programs it needs to run natively.
    fn native_programs(&self) -> Vec<Program>;
    /// Prepares a native launch in the host's directory; the processes to start, in order.
    async fn native(&self, host: &dyn NativeHost, target: &Target) -> Result<Vec<Process>, String>;
    /// One attempt of its protocol's readiness check.
    async fn probe(&self, target: &Target) -> Result<(), String>;
    /// Creates those of `wanted` that do not exist yet, once the server is ready; the created ones.
    async fn create_databases(
        &self,
        target: &Target,
        wanted: &[&str],
    ) -> Result<Vec<String>, String> {
        let _ = (target, wanted);
        Ok(Vec::new())
    }
    /// Drops databases created by [`Server::create_databases`] (on a server the run does not own).
    async fn drop_databases(&self, target: &Target, dbs: &[String]) -> Result<(), String> {
        let _ = (target, dbs);
        Ok(())
    }
}

/// Finds a program in the given directories, then in `PATH`.
pub fn find_program(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    dirs.iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The program a kind needs, or an error naming it.
pub fn need(program: &Program) -> Result<PathBuf, String> {
    find_program(program.name, &program.dirs).ok_or_else(|| format!("{} not found", program.name))
}

/// The system user a server must run as when the harness runs as root (PostgreSQL refuses root).
pub fn system_user(name: &str) -> Option<User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    User::from_name(name).ok().flatten()
}

/// Gives a directory tree to a user.
pub fn chown_tree(path: &Path, user: &User) -> Result<(), String> {
    let chown = |p: &Path| {
        std::os::unix::fs::chown(p, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .map_err(|e| format!("giving {} to user `{}`: {e}", p.display(), user.name))
    };
    chown(path)?;
    for entry in std::fs::read_dir(path).map_err(|e| format!("reading {}: {e}", path.display()))? {
        let entry = entry.map_err(|e| format!("reading {}: {e}", path.display()))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            chown_tree(&entry.path(), user)?;
        } else {
            chown(&entry.path())?;
        }
    }
    Ok(())
}

/// Writes a file of a native launch.
pub fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Creates directories of a native launch.
pub fn create_dirs(dir: &Path, subs: &[&str]) -> Result<(), String> {
    for sub in subs {
        let p = dir.join(sub);
        std::fs::create_dir(&p).map_err(|e| format!("creating {}: {e}", p.display()))?;
    }
    Ok(())
}

/// What identifies an installed server: a package upgrade changes at least one of these.
pub async fn server_identity(server: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(server).map_err(|e| format!("{}: {e}", server.display()))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let out = Command::new(server)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {} --version: {e}", server.display()))?;
    Ok(format!(
        "{} {} {} {modified}",
        String::from_utf8_lossy(&out.stdout).trim(),
        server.display(),
        meta.len()
    ))
}

/// `cp -a` (a reflink where the filesystem has them) of a directory tree.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Command {
    let mut cp = Command::new("cp");
    cp.args(["-a", "--reflink=auto"]).arg(from).arg(to);
    cp
}

/// Saves a freshly initialised data directory under `cached` for later runs. Two runs filling the same
/// entry at once each copy into a directory of their own; the first rename wins.
async fn publish_cached(host: &dyn NativeHost, data: &Path, cached: &Path) -> Result<(), String> {
    let parent = cached.parent().unwrap_or(cached);
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let tmp = parent.join(format!(".new-{:016x}", rand::random::<u64>()));
    std::fs::create_dir(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let copied = host
        .run(copy_tree(data, &tmp.join("data")), None, None)
        .await;
    let renamed = copied.and_then(|_| {
        std::fs::rename(&tmp, cached).or_else(|e| {
            if cached.join("data").is_dir() {
                Ok(())
            } else {
                Err(format!("saving {}: {e}", cached.display()))
            }
        })
    });
    let _ = std::fs::remove_dir_all(&tmp);
    renamed
}

/// The key of a cached data directory: a hash of every line that decides its content.
pub fn cache_key(lines: &[(&str, String)]) -> String {
    let text: String = lines.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
    format!(
        "{:016x}",
        crate::model::digest::content_hash(text.as_bytes())
    )
}

/// Fills `data` from the cached copy under `cached`, or makes it with `make` and saves it there
/// for later runs (a run without a cache still works, only slower next time).
pub async fn from_cache_or<F>(
    host: &dyn NativeHost,
    cached: &Path,
    data: &Path,
    make: F,
) -> Result<(), String>
where
    F: std::future::Future<Output = Result<(), String>> + Send,
{
    if cached.join("data").is_dir() {
        // Root copies keep the server user as owner; anyone else owns what it copies.
        return host
            .run(copy_tree(&cached.join("data"), data), None, None)
            .await
            .map(drop)
            .map_err(|e| {
                format!(
                    "copying the cached data directory {}: {e}",
                    cached.display()
                )
            });
    }
    make.await?;
    let _ = publish_cached(host, data, cached).await;
    Ok(())
}

/// Credentials of a server with users: the given ones, a random user `u<token>` and password
/// where none is given, and `database` as the default database where none is given.
pub fn with_random_user(
    given: &Credentials,
    random: &dyn Fn(usize) -> String,
    database: Option<&str>,
) -> Credentials {
    Credentials {
        user: Some(
            given
                .user
                .clone()
                .unwrap_or_else(|| format!("u{}", random(8))),
        ),
        password: Some(given.password.clone().unwrap_or_else(|| random(24))),
        database: given.database.clone().or(database.map(str::to_string)),
    }
}
