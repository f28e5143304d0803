//! The native backend: real servers as local processes from installed binaries, each on a
//! free loopback port, each in its own directory inside the run directory.
//!
//! - PostgreSQL: `initdb` then `postgres` (fsync off, socket in its directory). As root it runs
//!   as the `postgres` user, which PostgreSQL requires.
//! - Redis: `redis-server` without persistence.
//! - RabbitMQ: `rabbitmq-server` with every path (mnesia, logs, feature flags, pid, config)
//!   inside its directory and an `epmd` of its own on a free port, so nothing outlives the run.
//!   As root it runs as the `rabbitmq` user and its directories belong to that user.
//! - Generic services: a cargo binary of the workspace (`binary = "orders"`) or a command.
//!
//! Every process runs in its own process group, registered with [`crate::cleanup`] and written
//! to the run's record in the same guarded step as its spawn; every process works inside the
//! run directory, so helpers that leave their group are found by their working directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Pid, User};
use tokio::process::{Child, Command};

use super::{Backend, BackendKind, Instance, StartRequest};
use crate::cleanup::{self, RunDir, RUN_ID_ENV};
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::manifest::{Kind, Launch, Manifest, Service};

/// How long a graceful stop may take before the group is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs services as local processes.
#[derive(Debug)]
pub struct Native {
    run_id: String,
    run_dir: PathBuf,
    bin_dir: PathBuf,
    /// The manifest's directory: a command's program given as a relative path is found there.
    project_dir: PathBuf,
}

impl Native {
    /// A native backend for one run.
    pub fn new(run: &RunDir, manifest_dir: &Path) -> Native {
        Native {
            run_id: run.id.clone(),
            run_dir: run.path.clone(),
            bin_dir: crate::paths::bin_dir(manifest_dir),
            project_dir: manifest_dir.to_path_buf(),
        }
    }
}

/// Finds a program in `PATH` or in the given extra directories.
fn find_program(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    extra
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn postgres_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort_by(|a, b| b.cmp(a));
    dirs
}

fn rabbitmq_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/usr/lib/rabbitmq/bin")]
}

struct Programs {
    missing: Vec<(String, String)>,
}

impl Programs {
    fn need(
        &mut self,
        name: &str,
        extra: &[PathBuf],
        service: &str,
        help: &str,
    ) -> Option<PathBuf> {
        let found = find_program(name, extra);
        if found.is_none() {
            self.missing.push((
                format!("`{name}` (for service `{service}`)"),
                help.to_string(),
            ));
        }
        found
    }
}

/// Whether the native backend can run every service of a manifest: the servers installed and
/// the service binaries built (in `bins`, see [`bin_dir`](crate::paths::bin_dir)). Lists
/// everything missing at once.
pub fn check(manifest: &Manifest, bins: &Path) -> Result<(), Error> {
    let mut p = Programs {
        missing: Vec::new(),
    };
    for s in &manifest.services {
        let name = s.name.as_str();
        match (s.kind, &s.launch) {
            (Kind::Postgres, _) => {
                let help = "install PostgreSQL: `apt-get install -y postgresql`";
                p.need("initdb", &postgres_dirs(), name, help);
                p.need("postgres", &postgres_dirs(), name, help);
            }
            (Kind::Redis, _) => {
                p.need("redis-server", &[], name, "install Redis: `apt-get install -y redis-server`");
            }
            (Kind::Rabbitmq, _) => {
                let help = "install RabbitMQ: `apt-get install -y rabbitmq-server`";
                p.need("rabbitmq-server", &rabbitmq_dirs(), name, help);
                p.need("epmd", &[], name, help);
            }
            (Kind::Service, Launch::Binary(b)) => {
                if !bins.join(b).is_file() {
                    p.missing.push((
                        format!("binary `{b}` (for service `{name}`) at {}", bins.join(b).display()),
                        format!("build it with `cargo build --bin {b}`, or point HARNESS_BIN_DIR at the directory holding it"),
                    ));
                }
            }
            (Kind::Service, Launch::ImageOnly) => p.missing.push((
                format!("a way to run service `{name}` natively"),
                format!("give `{name}` a `binary` or `command` in the manifest, or use the container backend"),
            )),
            (Kind::Service, _) => {}
        }
    }
    if p.missing.is_empty() {
        return Ok(());
    }
    let what = p
        .missing
        .iter()
        .map(|(w, _)| format!("\n  - {w}"))
        .collect::<String>();
    let help: BTreeSet<&str> = p.missing.iter().map(|(_, h)| h.as_str()).collect();
    Err(Error::Prerequisite {
        what: format!("the native backend cannot start this stack; missing:{what}"),
        help: help.into_iter().collect::<Vec<_>>().join("\n  = help: "),
    })
}

#[async_trait]
impl Backend for Native {
    fn kind(&self) -> BackendKind {
        BackendKind::Native
    }

    async fn preflight(&self, manifest: &Manifest) -> Result<(), Error> {
        check(manifest, &self.bin_dir)
    }

    async fn start(&self, req: StartRequest<'_>) -> Result<Box<dyn Instance>, Error> {
        let service = req.service;
        let dir = self.run_dir.join(&service.name);
        // Not `create_dir_all`: after a signal the run directory is gone and must stay gone.
        cleanup::guarded(|| std::fs::create_dir(&dir))
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut ports = BTreeMap::new();
        for name in service.ports.keys() {
            let port = match req.ports.and_then(|p| p.get(name)) {
                Some(p) => *p,
                None => free_port().map_err(|e| Error::io("finding a free port", e))?,
            };
            ports.insert(name.clone(), port);
        }
        let endpoint = Endpoint {
            kind: service.kind,
            host: "127.0.0.1".into(),
            ports,
            primary: service.primary_port().map(str::to_string),
            bind_host: "127.0.0.1".into(),
            user: req.user.clone(),
            password: req.password.clone(),
            database: req.database.clone(),
        };
        let mut instance = NativeInstance {
            name: service.name.clone(),
            dir: dir.clone(),
            endpoint: endpoint.clone(),
            procs: Vec::new(),
        };
        let base = ProcSpec {
            run_id: self.run_id.clone(),
            run_dir: self.run_dir.clone(),
            log: dir.join("output.log"),
            cwd: dir.clone(),
            ..ProcSpec::default()
        };
        match service.kind {
            Kind::Postgres => instance.procs.push(postgres(&base, &endpoint, &dir).await?),
            Kind::Redis => instance.procs.push(redis(&base, &endpoint)?),
            Kind::Rabbitmq => {
                let (epmd, rabbit) = rabbitmq(&base, &endpoint, &dir, &self.run_id).await?;
                instance.procs.push(epmd);
                instance.procs.push(rabbit);
            }
            Kind::Service => instance.procs.push(generic(
                &base,
                service,
                &endpoint,
                req.deps,
                &self.bin_dir,
                &self.project_dir,
            )?),
        }
        for proc in &mut instance.procs {
            if proc.child.is_none() {
                proc.spawn().map_err(|e| Error::service(&service.name, e))?;
            }
        }
        Ok(Box::new(instance))
    }
}

/// A free loopback port. The kernel hands out ports round-robin, and the harness remembers
/// what it gave, so two services of one run never get the same port.
fn free_port() -> std::io::Result<u16> {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..50 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no free loopback port after 50 tries",
    ))
}

fn system_user(name: &str) -> Option<User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    User::from_name(name).ok().flatten()
}

fn chown_tree(path: &Path, user: &User) -> Result<(), Error> {
    let chown = |p: &Path| {
        std::os::unix::fs::chown(p, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .map_err(|e| Error::io(format!("giving {} to user `{}`", p.display(), user.name), e))
    };
    chown(path)?;
    for entry in
        std::fs::read_dir(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?
    {
        let entry = entry.map_err(|e| Error::io("reading a directory", e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            chown_tree(&entry.path(), user)?;
        } else {
            chown(&entry.path())?;
        }
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// How every native cluster is initialised; part of the cached cluster's key.
const INITDB_ARGS: [&str; 6] = [
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    "--no-sync",
    "--encoding=UTF8",
    "--locale=C",
    // 1 MB WAL segments instead of 16: a cluster of 24 MB instead of 40 to copy per run.
    "--wal-segsize=1",
];

/// Server settings every native Postgres runs with; part of the cached cluster's key, so a
/// change of them never meets a cluster made for others.
const POSTGRES_SETTINGS: [&str; 6] = [
    "listen_addresses=127.0.0.1",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
    "shared_buffers=64MB",
];

/// Bumped whenever the way a cached cluster is made changes, so old entries are not reused.
const CLUSTER_FORMAT: u32 = 1;

/// Where the harness keeps state it can rebuild: `HARNESS_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/harness`, else `~/.cache/harness`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HARNESS_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("harness");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("harness"),
        None => std::env::temp_dir().join("harness-cache"),
    }
}

/// The key of a cached initialised cluster: the server's identity (its `--version`, path,
/// size and modification time), the superuser's name, the initdb arguments and the settings.
fn cluster_key(
    server_identity: &str,
    user: &str,
    initdb_args: &[&str],
    settings: &[&str],
) -> String {
    let text = format!(
        "format {CLUSTER_FORMAT}\nserver {server_identity}\nuser {user}\ninitdb {}\nsettings {}\n",
        initdb_args.join(" "),
        settings.join(" ")
    );
    format!("{:016x}", crate::digest::content_hash(text.as_bytes()))
}

/// What identifies an installed server: a package upgrade changes at least one of these.
async fn server_identity(server: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(server).map_err(|e| format!("{}: {e}", server.display()))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let out = Command::new(server)
        .arg("--version")
        .stdin(Stdio::null())
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

/// Runs a short helper program to its end in its own registered process group (a signal
/// meanwhile stops it before the run directory it works in is removed); its output on failure.
async fn run_to_end(
    base: &ProcSpec,
    mut cmd: Command,
    user: Option<&User>,
    stdin: Option<String>,
) -> Result<std::process::Output, String> {
    cmd.env(RUN_ID_ENV, &base.run_id)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(u) = user {
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    let program = format!("{:?}", cmd.as_std().get_program());
    let mut child = cleanup::spawn_recorded(
        Some(&base.run_dir),
        Signal::SIGTERM,
        || cmd.spawn(),
        Child::id,
    )
    .map_err(|e| format!("cannot run {program}: {e}"))?;
    let pgid = child.id().map(|p| p as i32);
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt as _;
        // A server that refuses its input exits, and its output tells why.
        let _ = pipe.write_all(text.as_bytes()).await;
    }
    let out = child.wait_with_output().await;
    if let Some(g) = pgid {
        cleanup::unregister_group(g);
    }
    let out = out.map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

/// `cp -a` (a reflink where the filesystem has them) of a directory tree.
fn copy_tree(from: &Path, to: &Path) -> Command {
    let mut cp = Command::new("cp");
    cp.args(["-a", "--reflink=auto"]).arg(from).arg(to);
    cp
}

/// Saves a freshly initialised cluster under `cached` for later runs. Two runs filling the same
/// entry at once each copy into a directory of their own; the first rename wins.
async fn publish_cluster(base: &ProcSpec, data: &Path, cached: &Path) -> Result<(), String> {
    let parent = cached.parent().unwrap_or(cached);
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let tmp = parent.join(format!(".new-{:016x}", rand::random::<u64>()));
    std::fs::create_dir(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let copied = run_to_end(base, copy_tree(data, &tmp.join("data")), None, None).await;
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

/// The superuser every cached cluster is initialised with; a run's own user is made at start.
const BOOTSTRAP_ROLE: &str = "postgres";

/// The SQL that gives a cluster made for another run this run's superuser and password.
fn credentials_sql(role: &str, password: &str) -> String {
    let ident = role.replace('"', "\"\"");
    let literal = password.replace('\'', "''");
    if role == BOOTSTRAP_ROLE {
        format!("ALTER ROLE \"{ident}\" PASSWORD '{literal}';\n\n")
    } else {
        // The session user of single-user mode (the bootstrap superuser) cannot be renamed.
        format!("CREATE ROLE \"{ident}\" SUPERUSER LOGIN PASSWORD '{literal}';\n\n")
    }
}

/// This run's superuser and password set in single-user mode, before the server listens.
async fn set_credentials(
    base: &ProcSpec,
    server: &Path,
    data: &Path,
    user: Option<&User>,
    role: &str,
    password: &str,
) -> Result<(), String> {
    let mut cmd = Command::new(server);
    // -j: a statement ends at a semicolon and an empty line, so a password may hold newlines.
    cmd.args(["--single", "-j", "-D"])
        .arg(data)
        .args(["-c", "fsync=off", "postgres"])
        .current_dir(&base.cwd);
    let out = run_to_end(base, cmd, user, Some(credentials_sql(role, password))).await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The single-user backend reports a failed statement and still exits 0.
    if text.contains("ERROR:") || text.contains("FATAL:") {
        return Err(format!(
            "setting the credentials of `{role}` failed:\n{text}"
        ));
    }
    Ok(())
}

async fn postgres(base: &ProcSpec, ep: &Endpoint, dir: &Path) -> Result<Proc, Error> {
    let fail = |m: String| Error::service("postgres", m);
    let initdb =
        find_program("initdb", &postgres_dirs()).ok_or_else(|| fail("initdb not found".into()))?;
    let server = find_program("postgres", &postgres_dirs())
        .ok_or_else(|| fail("postgres not found".into()))?;
    let user = system_user("postgres");
    let role = ep.user.as_deref().unwrap_or("postgres");
    let password = ep.password.as_deref().unwrap_or("postgres");
    let data = dir.join("data");
    let key = cluster_key(
        &server_identity(&server).await.map_err(fail)?,
        BOOTSTRAP_ROLE,
        &INITDB_ARGS,
        &POSTGRES_SETTINGS,
    );
    let cached = cache_dir().join("postgres").join(key);
    if let Some(u) = &user {
        chown_tree(dir, u)?;
    }
    if cached.join("data").is_dir() {
        // Root copies keep the postgres user as owner; anyone else owns what it copies.
        run_to_end(base, copy_tree(&cached.join("data"), &data), None, None)
            .await
            .map_err(|e| {
                fail(format!(
                    "copying the cached cluster {}: {e}",
                    cached.display()
                ))
            })?;
    } else {
        // This run's credentials are set below, as on a cached copy.
        let pwfile = dir.join("pwfile");
        write(&pwfile, &format!("{:016x}", rand::random::<u64>()))?;
        if let Some(u) = &user {
            chown_tree(dir, u)?;
        }
        let mut cmd = Command::new(&initdb);
        cmd.arg("-D")
            .arg(&data)
            .arg(format!("--username={BOOTSTRAP_ROLE}"))
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(INITDB_ARGS)
            .current_dir(dir);
        let made = run_to_end(base, cmd, user.as_ref(), None).await;
        let _ = std::fs::remove_file(&pwfile);
        made.map_err(|e| fail(format!("initdb: {e}")))?;
        // Without a cache the run still works, only slower next time.
        let _ = publish_cluster(base, &data, &cached).await;
    }
    set_credentials(base, &server, &data, user.as_ref(), role, password)
        .await
        .map_err(fail)?;
    let port = ep.port(None).map_err(fail)?;
    let mut args: Vec<String> = vec![
        "-D".into(),
        data.display().to_string(),
        "-p".into(),
        port.to_string(),
    ];
    args.extend(["-k".into(), dir.display().to_string()]);
    for setting in POSTGRES_SETTINGS {
        args.extend(["-c".into(), setting.into()]);
    }
    Ok(Proc::new(ProcSpec {
        program: server,
        args,
        user,
        // SIGINT is postgres' "fast shutdown": it does not wait for clients to disconnect.
        graceful: Some(Signal::SIGINT),
        ..base.clone()
    }))
}

fn redis(base: &ProcSpec, ep: &Endpoint) -> Result<Proc, Error> {
    let program = find_program("redis-server", &[])
        .ok_or_else(|| Error::service("redis", "redis-server not found"))?;
    let port = ep.port(None).map_err(|e| Error::service("redis", e))?;
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "--dir".into(),
        base.cwd.display().to_string(),
        "--daemonize".into(),
        "no".into(),
    ]);
    Ok(Proc::new(ProcSpec {
        program,
        args,
        ..base.clone()
    }))
}

/// The applications `rabbit` needs, as named in each one's `ebin/<app>.app`
/// (`applications` and `included_applications`), found in `plugins`; OTP's own are not there.
fn rabbit_closure(plugins: &Path) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = std::fs::read_dir(plugins)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("ebin").is_dir())
        .collect();
    // `rabbit-3.10.8` -> `rabbit`; the highest version wins.
    let app_of = |p: &Path| {
        let name = p.file_name()?.to_str()?;
        let (app, version) = name.rsplit_once('-')?;
        version
            .starts_with(|c: char| c.is_ascii_digit())
            .then(|| app.to_string())
    };
    let mut by_app: BTreeMap<String, PathBuf> = BTreeMap::new();
    for d in dirs {
        if let Some(app) = app_of(&d) {
            let newer = by_app.get(&app).is_none_or(|old| *old < d);
            if newer {
                by_app.insert(app, d);
            }
        }
    }
    let mut queue = vec!["rabbit".to_string()];
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    while let Some(app) = queue.pop() {
        if !seen.insert(app.clone()) {
            continue;
        }
        let Some(dir) = by_app.get(&app) else {
            continue;
        };
        found.push(dir.clone());
        let spec = std::fs::read_to_string(dir.join("ebin").join(format!("{app}.app")))
            .unwrap_or_default();
        let spec: String = spec.chars().filter(|c| !c.is_whitespace()).collect();
        for key in ["{applications,[", "{included_applications,["] {
            for (at, _) in spec.match_indices(key) {
                let rest = &spec[at + key.len()..];
                let list = rest.split(']').next().unwrap_or_default();
                queue.extend(
                    list.split(',')
                        .filter(|a| !a.is_empty())
                        .map(|a| a.trim_matches('\'').to_string()),
                );
            }
        }
    }
    found
}

/// A private RabbitMQ home whose plugins directory links only the applications `rabbit` needs:
/// RabbitMQ scans every module of every application on its code path at boot, and with all
/// ~70 bundled plugins there that cost seconds (the container images do the same). `None`
/// when the layout is not the expected one; the server then runs as installed.
fn slim_rabbitmq_home(server: &Path, home: &Path) -> Option<PathBuf> {
    let dist = std::fs::canonicalize(server)
        .ok()?
        .parent()?
        .parent()?
        .to_path_buf();
    let apps = rabbit_closure(&dist.join("plugins"));
    if !apps.iter().any(|a| {
        a.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("rabbit-"))
    }) {
        return None;
    }
    std::fs::create_dir_all(home.join("plugins")).ok()?;
    for sub in ["sbin", "escript"] {
        std::os::unix::fs::symlink(dist.join(sub), home.join(sub)).ok()?;
    }
    for app in apps {
        std::os::unix::fs::symlink(&app, home.join("plugins").join(app.file_name()?)).ok()?;
    }
    Some(home.join("sbin"))
}

async fn rabbitmq(
    base: &ProcSpec,
    ep: &Endpoint,
    dir: &Path,
    run_id: &str,
) -> Result<(Proc, Proc), Error> {
    let fail = |m: String| Error::service("rabbitmq", m);
    let server = find_program("rabbitmq-server", &rabbitmq_dirs())
        .ok_or_else(|| fail("rabbitmq-server not found".into()))?;
    let epmd_bin = find_program("epmd", &[]).ok_or_else(|| fail("epmd not found".into()))?;
    let user = system_user("rabbitmq");
    let epmd_port = free_port().map_err(|e| Error::io("finding a free port", e))?;
    let dist_port = free_port().map_err(|e| Error::io("finding a free port", e))?;
    for sub in ["mnesia", "log"] {
        std::fs::create_dir(dir.join(sub))
            .map_err(|e| Error::io("creating rabbitmq directories", e))?;
    }
    write(&dir.join("enabled_plugins"), "[].\n")?;
    write(&dir.join("rabbitmq-env.conf"), "")?;
    write(
        &dir.join("rabbitmq.conf"),
        &format!(
            "default_user = {}\ndefault_pass = {}\nloopback_users = none\nlisteners.tcp.default = 127.0.0.1:{}\n",
            ep.user.as_deref().unwrap_or("guest"),
            ep.password.as_deref().unwrap_or("guest"),
            ep.port(None).map_err(fail)?,
        ),
    )?;
    if let Some(u) = &user {
        chown_tree(dir, u)?;
    }
    let mut epmd = Proc::new(ProcSpec {
        program: epmd_bin,
        args: vec![
            "-port".into(),
            epmd_port.to_string(),
            "-address".into(),
            "127.0.0.1".into(),
        ],
        user: user.clone(),
        log: dir.join("epmd.log"),
        ..base.clone()
    });
    epmd.spawn().map_err(fail)?;
    // rabbitmq-server would start an epmd of its own (which outlives it) if ours were not up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(("127.0.0.1", epmd_port))
        .await
        .is_err()
    {
        if tokio::time::Instant::now() > deadline {
            return Err(fail(format!(
                "epmd did not listen on port {epmd_port} within 5 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let d = |s: &str| dir.join(s).display().to_string();
    let short = run_id.rsplit('-').next().unwrap_or(run_id);
    let scripts = slim_rabbitmq_home(&server, &dir.join("home"));
    let program = match &scripts {
        Some(s) => s.join("rabbitmq-server"),
        None => server,
    };
    let mut env = vec![
        ("HOME".into(), d("")),
        ("ERL_EPMD_PORT".into(), epmd_port.to_string()),
        // The VM would otherwise run `epmd -daemon`, which leaves its group and outlives the
        // run; ours is already listening on ERL_EPMD_PORT.
        (
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS".into(),
            "-start_epmd false".into(),
        ),
        (
            "RABBITMQ_NODENAME".into(),
            format!("harness-{short}@localhost"),
        ),
        ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
        (
            "RABBITMQ_NODE_PORT".into(),
            ep.port(None).map_err(fail)?.to_string(),
        ),
        ("RABBITMQ_DIST_PORT".into(), dist_port.to_string()),
        ("RABBITMQ_MNESIA_BASE".into(), d("mnesia")),
        ("RABBITMQ_LOG_BASE".into(), d("log")),
        ("RABBITMQ_LOGS".into(), "-".into()),
        ("RABBITMQ_PID_FILE".into(), d("rabbitmq.pid")),
        ("RABBITMQ_ENABLED_PLUGINS_FILE".into(), d("enabled_plugins")),
        ("RABBITMQ_FEATURE_FLAGS_FILE".into(), d("feature_flags")),
        ("RABBITMQ_CONFIG_FILE".into(), d("rabbitmq.conf")),
        ("RABBITMQ_ADVANCED_CONFIG_FILE".into(), d("advanced.config")),
        ("RABBITMQ_CONF_ENV_FILE".into(), d("rabbitmq-env.conf")),
    ];
    if let Some(s) = &scripts {
        // RABBITMQ_HOME is the parent of the scripts directory, its `plugins` the code path.
        env.push(("RABBITMQ_SCRIPTS_DIR".into(), s.display().to_string()));
    }
    let rabbit = Proc::new(ProcSpec {
        program,
        env,
        user,
        ..base.clone()
    });
    Ok((epmd, rabbit))
}

fn generic(
    base: &ProcSpec,
    service: &Service,
    ep: &Endpoint,
    deps: &BTreeMap<String, Endpoint>,
    bin_dir: &Path,
    project_dir: &Path,
) -> Result<Proc, Error> {
    let render = |t: &crate::template::Template| {
        t.render(|name| {
            if name == "self" {
                Some(ep)
            } else {
                deps.get(name)
            }
        })
        .map_err(|e| Error::service(&service.name, e))
    };
    let (program, mut args) = match &service.launch {
        Launch::Binary(b) => (bin_dir.join(b), Vec::new()),
        Launch::Command(cmd) => {
            let mut parts = cmd
                .iter()
                .map(render)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter();
            let program = PathBuf::from(
                parts
                    .next()
                    .ok_or_else(|| Error::service(&service.name, "empty command"))?,
            );
            // `./bin/orders` is the project's, not the run directory's (where it runs).
            let program = if program.is_relative() && program.components().count() > 1 {
                project_dir.join(program)
            } else {
                program
            };
            (program, parts.collect())
        }
        Launch::Builtin | Launch::ImageOnly => {
            return Err(Error::service(
                &service.name,
                "has no binary or command to run natively",
            ))
        }
    };
    for a in &service.args {
        args.push(render(a)?);
    }
    let env = service
        .env
        .iter()
        .map(|(k, v)| Ok((k.clone(), render(v)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Proc::new(ProcSpec {
        program,
        args,
        env,
        ..base.clone()
    }))
}

/// What to run for one process.
#[derive(Debug, Clone, Default)]
struct ProcSpec {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    user: Option<User>,
    cwd: PathBuf,
    log: PathBuf,
    run_id: String,
    /// Where the run's record is kept.
    run_dir: PathBuf,
    graceful: Option<Signal>,
}

/// One process of a service, in its own process group.
#[derive(Debug)]
struct Proc {
    spec: ProcSpec,
    child: Option<Child>,
    pgid: Option<i32>,
    exit: Option<String>,
}

impl Proc {
    fn new(spec: ProcSpec) -> Proc {
        Proc {
            spec,
            child: None,
            pgid: None,
            exit: None,
        }
    }

    fn graceful(&self) -> Signal {
        self.spec.graceful.unwrap_or(Signal::SIGTERM)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let s = &self.spec;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .map_err(|e| format!("cannot open log {}: {e}", s.log.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&s.program);
        cmd.args(&s.args)
            .envs(s.env.iter().map(|(k, v)| (k, v)))
            .env(RUN_ID_ENV, &s.run_id)
            .current_dir(&s.cwd)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        if let Some(u) = &s.user {
            cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        }
        let child =
            cleanup::spawn_recorded(Some(&s.run_dir), self.graceful(), || cmd.spawn(), Child::id)
                .map_err(|e| format!("cannot run {}: {e}", s.program.display()))?;
        let pgid = child.id().map(|p| p as i32);
        self.child = Some(child);
        self.pgid = pgid;
        self.exit = None;
        Ok(())
    }

    fn exited(&mut self) -> Option<String> {
        if self.exit.is_none() {
            if let Some(child) = &mut self.child {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exit = Some(status.to_string());
                }
            }
        }
        self.exit.clone()
    }

    fn signal(&self, signal: Signal) -> Result<(), String> {
        match self.pgid {
            Some(g) => {
                killpg(Pid::from_raw(g), signal).map_err(|e| format!("{signal} failed: {e}"))
            }
            None => Err("the process is not running".into()),
        }
    }

    async fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = self.pgid.take();
        if let Some(g) = pgid {
            let _ = killpg(Pid::from_raw(g), Signal::SIGCONT);
            let _ = killpg(Pid::from_raw(g), self.graceful());
        }
        let status = match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(s)) => s.to_string(),
            _ => {
                let _ = child.start_kill();
                child
                    .wait()
                    .await
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string())
            }
        };
        if let Some(g) = pgid {
            // Stragglers of the group (children the main process did not reap).
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while cleanup::group_alive(g) && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cleanup::unregister_group(g);
        }
        self.exit = Some(status);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(g) = self.pgid.take() {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
            cleanup::unregister_group(g);
        }
    }
}

/// A service running as local processes.
#[derive(Debug)]
struct NativeInstance {
    name: String,
    dir: PathBuf,
    endpoint: Endpoint,
    /// Helpers first (epmd), the server last.
    procs: Vec<Proc>,
}

impl NativeInstance {
    fn main(&self) -> Result<&Proc, Error> {
        self.procs
            .last()
            .ok_or_else(|| Error::service(&self.name, "has no process"))
    }
}

#[async_trait]
impl Instance for NativeInstance {
    fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    fn internal_endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    fn exited(&mut self) -> Option<String> {
        self.procs.iter_mut().rev().find_map(|p| p.exited())
    }

    fn log_tail(&self, n: usize) -> Vec<String> {
        self.procs
            .last()
            .map(|p| crate::logs::file_tail(&p.spec.log, n))
            .unwrap_or_default()
    }

    fn log_source(&self) -> Option<crate::logs::LogSource> {
        self.procs
            .last()
            .map(|p| crate::logs::LogSource::File(p.spec.log.clone()))
    }

    async fn stop(&mut self) -> Result<(), Error> {
        for p in self.procs.iter_mut().rev() {
            p.stop(STOP_GRACE).await;
        }
        Ok(())
    }

    async fn start(&mut self) -> Result<(), Error> {
        for p in &mut self.procs {
            if p.child.is_none() {
                p.spawn().map_err(|e| Error::service(&self.name, e))?;
            }
        }
        Ok(())
    }

    async fn kill(&mut self) -> Result<(), Error> {
        for p in self.procs.iter_mut().rev() {
            p.stop(Duration::ZERO).await;
        }
        Ok(())
    }

    async fn pause(&mut self) -> Result<(), Error> {
        self.main()?
            .signal(Signal::SIGSTOP)
            .map_err(|e| Error::service(&self.name, e))
    }

    async fn unpause(&mut self) -> Result<(), Error> {
        self.main()?
            .signal(Signal::SIGCONT)
            .map_err(|e| Error::service(&self.name, e))
    }

    async fn remove(&mut self) {
        let _ = self.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for NativeInstance {
    fn drop(&mut self) {
        // Processes are killed by their own Drop; the directory goes with the run directory.
        self.procs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "postgres (PostgreSQL) 15.18 /usr/lib/postgresql/15/bin/postgres 9000 1";

    #[test]
    fn a_cached_cluster_is_not_reused_when_the_server_or_its_settings_change() {
        let key = cluster_key(SERVER, "postgres", &INITDB_ARGS, &POSTGRES_SETTINGS);
        assert_eq!(
            key,
            cluster_key(SERVER, "postgres", &INITDB_ARGS, &POSTGRES_SETTINGS),
            "the same server and settings must find the same cluster"
        );
        let upgraded = SERVER.replace("15.18", "15.19");
        assert_ne!(
            key,
            cluster_key(&upgraded, "postgres", &INITDB_ARGS, &POSTGRES_SETTINGS)
        );
        let rebuilt = SERVER.replace(" 1", " 2");
        assert_ne!(
            key,
            cluster_key(&rebuilt, "postgres", &INITDB_ARGS, &POSTGRES_SETTINGS)
        );
        assert_ne!(
            key,
            cluster_key(SERVER, "admin", &INITDB_ARGS, &POSTGRES_SETTINGS)
        );
        let mut initdb = INITDB_ARGS.to_vec();
        initdb[4] = "--locale=C.UTF-8";
        assert_ne!(
            key,
            cluster_key(SERVER, "postgres", &initdb, &POSTGRES_SETTINGS)
        );
        let mut settings = POSTGRES_SETTINGS.to_vec();
        settings.push("max_locks_per_transaction=128");
        assert_ne!(
            key,
            cluster_key(SERVER, "postgres", &INITDB_ARGS, &settings)
        );
    }

    #[test]
    fn only_the_applications_rabbit_needs_are_on_the_slim_code_path() {
        let dir = tempfile::tempdir().unwrap();
        let app = |name: &str, version: &str, deps: &str| {
            let ebin = dir.path().join(format!("{name}-{version}")).join("ebin");
            std::fs::create_dir_all(&ebin).unwrap();
            let spec = format!(
                "{{application, '{name}',\n [{{applications, [kernel, {deps}]}},\n  {{included_applications, []}}]}}.\n"
            );
            std::fs::write(ebin.join(format!("{name}.app")), spec).unwrap();
        };
        app("rabbit", "3.10.8", "rabbit_common,ra");
        app("rabbit_common", "3.10.8", "'recon'");
        app("ra", "2.0.0", "");
        app("ra", "2.1.0", "");
        app("recon", "2.5.2", "");
        app("rabbitmq_management", "3.10.8", "rabbit");
        let mut names: Vec<String> = rabbit_closure(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "ra-2.1.0",
                "rabbit-3.10.8",
                "rabbit_common-3.10.8",
                "recon-2.5.2"
            ]
        );
    }

    #[test]
    fn credentials_are_quoted_and_a_new_superuser_is_made_for_another_name() {
        assert_eq!(
            credentials_sql("u\"x", "p'w"),
            "CREATE ROLE \"u\"\"x\" SUPERUSER LOGIN PASSWORD 'p''w';\n\n"
        );
        assert_eq!(
            credentials_sql(BOOTSTRAP_ROLE, "pw"),
            "ALTER ROLE \"postgres\" PASSWORD 'pw';\n\n"
        );
    }
}
