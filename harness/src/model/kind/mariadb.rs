//! MariaDB: `kind = "mariadb"`.
//!
//! The server's settings and the SQL that gives a data directory this run's accounts are the
//! container entrypoint's (`entrypoints/mariadb.sh`): the native launch sources that script for
//! them, so both backends make alike servers. Natively the data directory comes from a cached
//! one (per server build and settings), copied into the run; the run's credentials are set by
//! the server itself at start (`--init-file`), before it accepts a client. The run's user owns
//! its database; root has the same password and creates the manifest's other `databases`.
//! Ready means a login as the run's user and `SELECT 1`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nix::unistd::User;
use tokio::process::Command;

use super::server::{
    cache_key, chown_tree, from_cache_or, need, server_identity, system_user, with_random_user,
    write, Credentials, Entrypoint, NativeHost, Process, Program, Server, Target,
};
use super::wire::mysql::Client;

/// MariaDB.
#[derive(Debug)]
pub struct Mariadb;

/// The database a mariadb service's URL names when the manifest names none.
const DEFAULT_DATABASE: &str = "app";

/// Bumped whenever the way a cached data directory is made changes.
const DATA_FORMAT: u32 = 1;

/// The container entrypoint, also the source of the native settings.
const ENTRYPOINT: &str = include_str!("entrypoints/mariadb.sh");

const ROOT: &str = "root";

fn program(name: &'static str, dir: &str) -> Program {
    Program {
        name,
        dirs: vec![PathBuf::from(dir)],
        help: "install MariaDB: `apt-get install -y --no-install-recommends mariadb-server`",
    }
}

/// Runs a function or prints a list of the entrypoint script, sourced (it defines, runs nothing).
async fn sourced(
    host: &dyn NativeHost,
    script: &Path,
    call: &str,
    args: &[&str],
) -> Result<String, String> {
    let mut cmd = Command::new("bash");
    // `$0` is not the script: sourced under its own name, it would run as the entrypoint.
    cmd.arg("-c")
        .arg(format!(". \"$1\"; shift; {call}"))
        .arg("harness-mariadb")
        .arg(script)
        .args(args)
        .current_dir(host.dir());
    let out = host.run(cmd, None, None).await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The install arguments and server settings of the entrypoint.
async fn settings(
    host: &dyn NativeHost,
    script: &Path,
) -> Result<(Vec<String>, Vec<String>), String> {
    let text = sourced(
        host,
        script,
        r#"printf '%s\n' "${MARIADB_INSTALL_ARGS[@]}" -- "${MARIADB_SETTINGS[@]}""#,
        &[],
    )
    .await?;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let split = lines
        .iter()
        .position(|l| l == "--")
        .ok_or("the mariadb entrypoint defines no MARIADB_SETTINGS")?;
    Ok((lines[..split].to_vec(), lines[split + 1..].to_vec()))
}

/// The statements that give the data directory this run's accounts and database. Root gets the
/// run's password too, so that it can make the manifest's other databases over TCP.
async fn init_sql(host: &dyn NativeHost, script: &Path, target: &Target) -> Result<String, String> {
    let user = target.user.as_deref().unwrap_or(ROOT);
    let password = target.password.as_deref().unwrap_or_default();
    let db = target.database.as_deref().unwrap_or_default();
    let args = if user == ROOT {
        ["", "", db, password, "%", "0"]
    } else {
        [user, password, db, password, "%", "0"]
    };
    sourced(host, script, "mariadb_init_sql \"$@\"", &args).await
}

/// A root login over TCP, for the statements the run's user may not run.
async fn as_root(target: &Target) -> Result<Client, String> {
    Client::connect(
        &target.host,
        target.port,
        ROOT,
        target.password.as_deref().unwrap_or_default(),
        None,
    )
    .await
    .map_err(|e| e.to_string())
}

fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[async_trait]
impl Server for Mariadb {
    fn port(&self) -> (&'static str, u16) {
        ("mysql", 3306)
    }

    fn protocol(&self) -> &'static str {
        "mysql"
    }

    fn probe_description(&self) -> &'static str {
        "mysql `SELECT 1`"
    }

    fn healthcheck(&self, target: &Target) -> Option<String> {
        Some(format!(
            "mariadb-admin ping --silent -h 127.0.0.1 -P {} -u {} --password={}",
            target.port,
            target.user.as_deref().unwrap_or(ROOT),
            target.password.as_deref().unwrap_or_default()
        ))
    }

    fn image(&self) -> &'static str {
        "mariadb:10.11"
    }

    fn typical_boot(&self) -> f64 {
        1.5
    }

    fn scheme(&self) -> &'static str {
        "mysql"
    }

    fn default_path(&self) -> &'static str {
        ""
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
        let root = target.user.as_deref() == Some(ROOT);
        let user = if root { &None } else { &target.user };
        super::env_of(&[
            ("MARIADB_USER", user),
            (
                "MARIADB_PASSWORD",
                if root { &None } else { &target.password },
            ),
            ("MARIADB_DATABASE", &target.database),
            ("MARIADB_ROOT_PASSWORD", &target.password),
        ])
    }

    fn entrypoint(&self) -> Option<Entrypoint> {
        Some(Entrypoint {
            script: ENTRYPOINT,
            stop_signal: None,
        })
    }

    fn data_dir(&self) -> Option<&'static str> {
        Some("/var/lib/mysql")
    }

    fn native_programs(&self) -> Vec<Program> {
        vec![
            program("mariadbd", "/usr/sbin"),
            program("mariadb-install-db", "/usr/bin"),
        ]
    }

    async fn native(&self, host: &dyn NativeHost, target: &Target) -> Result<Vec<Process>, String> {
        let server = need(&program("mariadbd", "/usr/sbin"))?;
        let install = need(&program("mariadb-install-db", "/usr/bin"))?;
        let user = system_user("mysql");
        let dir = host.dir();
        let script = dir.join("entrypoint.sh");
        write(&script, ENTRYPOINT)?;
        let (mut install_args, settings) = settings(host, &script).await?;
        // Root's socket logins belong to the OS user that runs the harness, whoever runs the
        // server, so one cached directory serves both.
        let caller = User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| ROOT.to_string(), |u| u.name);
        install_args.push(format!("--auth-root-socket-user={caller}"));
        let key = cache_key(&[
            ("format", DATA_FORMAT.to_string()),
            ("server", server_identity(&server).await?),
            ("install", install_args.join(" ")),
            ("settings", settings.join(" ")),
        ]);
        let cached = host.cache_dir().join("mariadb").join(key);
        let data = dir.join("data");
        if let Some(u) = &user {
            chown_tree(dir, u)?;
        }
        // Without --user: with it, install-db also gives the package's PAM helper to the user.
        let mut cmd = Command::new(install);
        cmd.args(&install_args)
            .arg(format!("--datadir={}", data.display()))
            .args(&settings)
            .current_dir(dir);
        let made = async {
            host.run(cmd, user.as_ref(), None)
                .await
                .map(drop)
                .map_err(|e| format!("mariadb-install-db: {e}"))
        };
        from_cache_or(host, &cached, &data, made).await?;
        let init = dir.join("init.sql");
        write(&init, &init_sql(host, &script, target).await?)?;
        if let Some(u) = &user {
            chown_tree(dir, u)?;
        }
        let d = |name: &str| dir.join(name).display().to_string();
        let mut args = vec!["--no-defaults".to_string()];
        if user.is_none() && nix::unistd::geteuid().is_root() {
            args.push("--user=root".into());
        }
        args.extend([
            format!("--datadir={}", data.display()),
            format!("--socket={}", d("mariadb.sock")),
            format!("--pid-file={}", d("mariadb.pid")),
            format!("--tmpdir={}", d("")),
            format!("--port={}", target.port),
            "--bind-address=127.0.0.1".into(),
            format!("--init-file={}", init.display()),
        ]);
        args.extend(settings);
        Ok(vec![Process {
            program: server,
            args,
            user,
            ..Process::default()
        }])
    }

    async fn probe(&self, target: &Target) -> Result<(), String> {
        let mut client = Client::connect(
            &target.host,
            target.port,
            target.user.as_deref().unwrap_or(ROOT),
            target.password.as_deref().unwrap_or_default(),
            target.database.as_deref(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let rows = client.query("SELECT 1").await.map_err(|e| e.to_string())?;
        client.close().await;
        (rows == [vec![Some("1".to_string())]])
            .then_some(())
            .ok_or_else(|| format!("SELECT 1 returned {rows:?}"))
    }

    async fn create_databases(
        &self,
        target: &Target,
        wanted: &[&str],
    ) -> Result<Vec<String>, String> {
        let mut root = as_root(target)
            .await
            .map_err(|e| format!("creating databases: {e}"))?;
        let mut created = Vec::new();
        for db in wanted {
            let found = root
                .query(&format!("SHOW DATABASES LIKE {}", literal(db)))
                .await
                .map_err(|e| format!("creating database `{db}`: {e}"))?;
            if !found.is_empty() {
                continue;
            }
            let mut sql = vec![format!("CREATE DATABASE {}", ident(db))];
            if let Some(user) = target.user.as_deref().filter(|u| *u != ROOT) {
                sql.push(format!(
                    "GRANT ALL PRIVILEGES ON {}.* TO {}@'%'",
                    ident(db),
                    literal(user)
                ));
            }
            for statement in sql {
                root.query(&statement)
                    .await
                    .map_err(|e| format!("creating database `{db}`: {e}"))?;
            }
            created.push(db.to_string());
        }
        root.close().await;
        Ok(created)
    }

    async fn drop_databases(&self, target: &Target, dbs: &[String]) -> Result<(), String> {
        let mut root = as_root(target).await?;
        for db in dbs {
            root.query(&format!("DROP DATABASE IF EXISTS {}", ident(db)))
                .await
                .map_err(|e| format!("dropping `{db}`: {e}"))?;
        }
        root.close().await;
        Ok(())
    }
}
