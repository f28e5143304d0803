//! PostgreSQL: `kind = "postgres"`.
//!
//! Natively it starts from a cached initialised cluster (per server build, bootstrap user,
//! initdb arguments and settings), copied into the run, with this run's credentials set in
//! single-user mode before it listens; `initdb` runs only when no cached cluster matches. In a
//! container the official image's variables (`POSTGRES_USER`, ...) apply. Ready means a
//! `SELECT 1` on the maintenance database as the run's user.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nix::sys::signal::Signal;
use nix::unistd::User;
use tokio::process::Command;

use super::server::{
    cache_key, chown_tree, from_cache_or, need, server_identity, system_user, with_random_user,
    write, Credentials, Entrypoint, NativeHost, Process, Program, Server, Target,
};
use super::wire::postgres::Client;

/// The database a postgres service's URL names when the manifest names none.
pub const DEFAULT_DATABASE: &str = "app";

/// PostgreSQL.
#[derive(Debug)]
pub struct Postgres;

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
const NATIVE_SETTINGS: [&str; 6] = [
    "listen_addresses=127.0.0.1",
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
    "shared_buffers=64MB",
];

/// Server settings of the postgres container when the manifest gives no `args`: durability is
/// traded for speed, as natively (test data only).
const CONTAINER_SETTINGS: [&str; 4] = [
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
];

/// Bumped whenever the way a cached cluster is made changes, so old entries are not reused.
const CLUSTER_FORMAT: u32 = 1;

/// The superuser every cached cluster is initialised with; a run's own user is made at start.
const BOOTSTRAP_ROLE: &str = "postgres";

/// The maintenance database, which always exists.
const MAINTENANCE: &str = "postgres";

fn dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort_by(|a, b| b.cmp(a));
    dirs
}

fn program(name: &'static str) -> Program {
    Program {
        name,
        dirs: dirs(),
        help: "install PostgreSQL: `apt-get install -y postgresql`",
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
    cache_key(&[
        ("format", CLUSTER_FORMAT.to_string()),
        ("server", server_identity.to_string()),
        ("user", user.to_string()),
        ("initdb", initdb_args.join(" ")),
        ("settings", settings.join(" ")),
    ])
}

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
    host: &dyn NativeHost,
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
        .args(["-c", "fsync=off", MAINTENANCE])
        .current_dir(host.dir());
    let out = host
        .run(cmd, user, Some(credentials_sql(role, password)))
        .await?;
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

/// A fresh cluster in `data` (this run's credentials are set afterwards, as on a cached copy).
async fn initdb(host: &dyn NativeHost, user: Option<&User>, data: &Path) -> Result<(), String> {
    let dir = host.dir();
    let pwfile = dir.join("pwfile");
    write(&pwfile, &format!("{:016x}", rand::random::<u64>()))?;
    if let Some(u) = user {
        chown_tree(dir, u)?;
    }
    let mut cmd = Command::new(need(&program("initdb"))?);
    cmd.arg("-D")
        .arg(data)
        .arg(format!("--username={BOOTSTRAP_ROLE}"))
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(INITDB_ARGS)
        .current_dir(dir);
    let made = host.run(cmd, user, None).await;
    let _ = std::fs::remove_file(&pwfile);
    made.map(drop).map_err(|e| format!("initdb: {e}"))
}

async fn connect(target: &Target, database: &str) -> Result<Client, String> {
    Client::connect(
        &target.host,
        target.port,
        target.user.as_deref().unwrap_or(BOOTSTRAP_ROLE),
        target.password.as_deref().unwrap_or_default(),
        database,
    )
    .await
    .map_err(|e| e.to_string())
}

/// A quoted identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[async_trait]
impl Server for Postgres {
    fn port(&self) -> (&'static str, u16) {
        ("postgres", 5432)
    }

    fn protocol(&self) -> &'static str {
        "postgres"
    }

    fn probe_description(&self) -> &'static str {
        "postgres `SELECT 1`"
    }

    fn healthcheck(&self, target: &Target) -> Option<String> {
        Some(format!(
            "pg_isready -q -h 127.0.0.1 -p {} -U {} -d {MAINTENANCE}",
            target.port,
            target.user.as_deref().unwrap_or(BOOTSTRAP_ROLE)
        ))
    }

    fn image(&self) -> &'static str {
        "postgres:16"
    }

    fn typical_boot(&self) -> f64 {
        3.0
    }

    fn scheme(&self) -> &'static str {
        "postgres"
    }

    fn default_path(&self) -> &'static str {
        MAINTENANCE
    }

    fn path_is_database(&self) -> bool {
        true
    }

    fn credentials(&self, given: &Credentials, random: &dyn Fn(usize) -> String) -> Credentials {
        with_random_user(given, random, Some(DEFAULT_DATABASE))
    }

    fn holds_databases(&self) -> bool {
        true
    }

    fn container_env(&self, target: &Target) -> Vec<(String, String)> {
        super::env_of(&[
            ("POSTGRES_USER", &target.user),
            ("POSTGRES_PASSWORD", &target.password),
            ("POSTGRES_DB", &target.database),
        ])
    }

    fn entrypoint(&self) -> Option<Entrypoint> {
        Some(Entrypoint {
            script: include_str!("entrypoints/postgres.sh"),
            // SIGINT is postgres' fast shutdown; SIGTERM would wait for every client to go.
            stop_signal: Some("SIGINT"),
        })
    }

    fn data_dir(&self) -> Option<&'static str> {
        Some("/var/lib/postgresql/data")
    }

    fn default_args(&self) -> Vec<String> {
        CONTAINER_SETTINGS
            .iter()
            .flat_map(|s| ["-c".to_string(), s.to_string()])
            .collect()
    }

    fn native_programs(&self) -> Vec<Program> {
        vec![program("initdb"), program("postgres")]
    }

    async fn native(&self, host: &dyn NativeHost, target: &Target) -> Result<Vec<Process>, String> {
        let server = need(&program("postgres"))?;
        let user = system_user("postgres");
        let role = target.user.as_deref().unwrap_or(BOOTSTRAP_ROLE);
        let password = target.password.as_deref().unwrap_or(BOOTSTRAP_ROLE);
        let dir = host.dir();
        let data = dir.join("data");
        let key = cluster_key(
            &server_identity(&server).await?,
            BOOTSTRAP_ROLE,
            &INITDB_ARGS,
            &NATIVE_SETTINGS,
        );
        let cached = host.cache_dir().join("postgres").join(key);
        if let Some(u) = &user {
            chown_tree(dir, u)?;
        }
        from_cache_or(host, &cached, &data, initdb(host, user.as_ref(), &data)).await?;
        set_credentials(host, &server, &data, user.as_ref(), role, password).await?;
        let mut args: Vec<String> = vec![
            "-D".into(),
            data.display().to_string(),
            "-p".into(),
            target.port.to_string(),
            "-k".into(),
            dir.display().to_string(),
        ];
        for setting in NATIVE_SETTINGS {
            args.extend(["-c".into(), setting.into()]);
        }
        Ok(vec![Process {
            program: server,
            args,
            user,
            // SIGINT is postgres' "fast shutdown": it does not wait for clients to disconnect.
            graceful: Some(Signal::SIGINT),
            ..Process::default()
        }])
    }

    async fn probe(&self, target: &Target) -> Result<(), String> {
        // The maintenance database always exists; the service's own may not yet.
        let mut client = connect(target, MAINTENANCE).await?;
        let rows = client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| e.to_string());
        client.close().await;
        let rows = rows?;
        (rows == [vec![Some("1".to_string())]])
            .then_some(())
            .ok_or_else(|| format!("SELECT 1 returned {rows:?}"))
    }

    async fn create_databases(
        &self,
        target: &Target,
        wanted: &[&str],
    ) -> Result<Vec<String>, String> {
        let wanted: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|d| *d != MAINTENANCE)
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = connect(target, MAINTENANCE)
            .await
            .map_err(|e| format!("creating databases: {e}"))?;
        let mut created = Vec::new();
        for db in wanted {
            let literal = format!("'{}'", db.replace('\'', "''"));
            let found = client
                .simple_query(&format!(
                    "SELECT 1 FROM pg_database WHERE datname = {literal}"
                ))
                .await
                .map_err(|e| format!("creating database `{db}`: {e}"))?;
            if found.is_empty() {
                client
                    .simple_query(&format!("CREATE DATABASE {}", ident(db)))
                    .await
                    .map_err(|e| format!("creating database `{db}`: {e}"))?;
                created.push(db.to_string());
            }
        }
        client.close().await;
        Ok(created)
    }

    async fn drop_databases(&self, target: &Target, dbs: &[String]) -> Result<(), String> {
        let mut client = connect(target, MAINTENANCE).await?;
        for db in dbs {
            // FORCE: a connection a trial left open must not keep them.
            client
                .simple_query(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    ident(db)
                ))
                .await
                .map_err(|e| format!("dropping `{db}`: {e}"))?;
        }
        client.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "postgres (PostgreSQL) 15.18 /usr/lib/postgresql/15/bin/postgres 9000 1";

    #[test]
    fn a_cached_cluster_is_not_reused_when_the_server_or_its_settings_change() {
        let key = cluster_key(SERVER, "postgres", &INITDB_ARGS, &NATIVE_SETTINGS);
        assert_eq!(
            key,
            cluster_key(SERVER, "postgres", &INITDB_ARGS, &NATIVE_SETTINGS),
            "the same server and settings must find the same cluster"
        );
        let upgraded = SERVER.replace("15.18", "15.19");
        assert_ne!(
            key,
            cluster_key(&upgraded, "postgres", &INITDB_ARGS, &NATIVE_SETTINGS)
        );
        let rebuilt = SERVER.replace(" 1", " 2");
        assert_ne!(
            key,
            cluster_key(&rebuilt, "postgres", &INITDB_ARGS, &NATIVE_SETTINGS)
        );
        assert_ne!(
            key,
            cluster_key(SERVER, "admin", &INITDB_ARGS, &NATIVE_SETTINGS)
        );
        let mut initdb = INITDB_ARGS.to_vec();
        initdb[4] = "--locale=C.UTF-8";
        assert_ne!(
            key,
            cluster_key(SERVER, "postgres", &initdb, &NATIVE_SETTINGS)
        );
        let mut settings = NATIVE_SETTINGS.to_vec();
        settings.push("max_locks_per_transaction=128");
        assert_ne!(
            key,
            cluster_key(SERVER, "postgres", &INITDB_ARGS, &settings)
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
