//! RabbitMQ (AMQP 0-9-1): `kind = "rabbitmq"`.
//!
//! Natively every path (mnesia, logs, feature flags, pid, config) is inside the service's
//! directory, with an `epmd` of its own on a free port, so nothing outlives the run, and a slim
//! home whose code path holds only the applications `rabbit` needs. As root it runs as the
//! `rabbitmq` user. Ready means an AMQP connection opened with the run's credentials.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::server::{
    chown_tree, create_dirs, need, system_user, with_random_user, write, Credentials, Entrypoint,
    NativeHost, Process, Program, Server, Target,
};

/// RabbitMQ.
#[derive(Debug)]
pub struct Rabbitmq;

fn program(name: &'static str) -> Program {
    Program {
        name,
        dirs: if name == "epmd" {
            Vec::new()
        } else {
            vec![PathBuf::from("/usr/lib/rabbitmq/bin")]
        },
        help: "install RabbitMQ: `apt-get install -y rabbitmq-server`",
    }
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
fn slim_home(server: &Path, home: &Path) -> Option<PathBuf> {
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

#[async_trait]
impl Server for Rabbitmq {
    fn port(&self) -> (&'static str, u16) {
        ("amqp", 5672)
    }

    fn protocol(&self) -> &'static str {
        "amqp"
    }

    fn probe_description(&self) -> &'static str {
        "amqp connection open"
    }

    fn image(&self) -> &'static str {
        "rabbitmq:3"
    }

    fn typical_boot(&self) -> f64 {
        5.0
    }

    fn scheme(&self) -> &'static str {
        "amqp"
    }

    fn default_path(&self) -> &'static str {
        "/"
    }

    fn encodes_path(&self) -> bool {
        true
    }

    fn credentials(&self, given: &Credentials, random: &dyn Fn(usize) -> String) -> Credentials {
        with_random_user(given, random, None)
    }

    fn container_env(&self, target: &Target) -> Vec<(String, String)> {
        super::env_of(&[
            ("RABBITMQ_DEFAULT_USER", &target.user),
            ("RABBITMQ_DEFAULT_PASS", &target.password),
            ("RABBITMQ_DEFAULT_VHOST", &target.database),
        ])
    }

    fn entrypoint(&self) -> Option<Entrypoint> {
        Some(Entrypoint {
            script: include_str!("entrypoints/rabbitmq.sh"),
            stop_signal: None,
        })
    }

    fn data_dir(&self) -> Option<&'static str> {
        Some("/var/lib/rabbitmq")
    }

    fn native_programs(&self) -> Vec<Program> {
        vec![program("rabbitmq-server"), program("epmd")]
    }

    async fn native(&self, host: &dyn NativeHost, target: &Target) -> Result<Vec<Process>, String> {
        let server = need(&program("rabbitmq-server"))?;
        let epmd = need(&program("epmd"))?;
        let user = system_user("rabbitmq");
        let port = |p: std::io::Result<u16>| p.map_err(|e| format!("finding a free port: {e}"));
        let epmd_port = port(host.free_port())?;
        let dist_port = port(host.free_port())?;
        let dir = host.dir();
        create_dirs(dir, &["mnesia", "log"])?;
        write(&dir.join("enabled_plugins"), "[].\n")?;
        write(&dir.join("rabbitmq-env.conf"), "")?;
        write(
            &dir.join("rabbitmq.conf"),
            &format!(
                "default_user = {}\ndefault_pass = {}\nloopback_users = none\nlisteners.tcp.default = 127.0.0.1:{}\n",
                target.user.as_deref().unwrap_or("guest"),
                target.password.as_deref().unwrap_or("guest"),
                target.port,
            ),
        )?;
        if let Some(u) = &user {
            chown_tree(dir, u)?;
        }
        let d = |s: &str| dir.join(s).display().to_string();
        let run_id = host.run_id();
        let short = run_id.rsplit('-').next().unwrap_or(run_id);
        let scripts = slim_home(&server, &dir.join("home"));
        let program = match &scripts {
            Some(s) => s.join("rabbitmq-server"),
            None => server,
        };
        let mut env: Vec<(String, String)> = [
            ("HOME", d("")),
            ("ERL_EPMD_PORT", epmd_port.to_string()),
            // The VM would otherwise run `epmd -daemon`, which leaves its group and outlives the
            // run; ours is already listening on ERL_EPMD_PORT.
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-start_epmd false".into(),
            ),
            ("RABBITMQ_NODENAME", format!("harness-{short}@localhost")),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", target.port.to_string()),
            ("RABBITMQ_DIST_PORT", dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", d("mnesia")),
            ("RABBITMQ_LOG_BASE", d("log")),
            ("RABBITMQ_LOGS", "-".into()),
            ("RABBITMQ_PID_FILE", d("rabbitmq.pid")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
            ("RABBITMQ_FEATURE_FLAGS_FILE", d("feature_flags")),
            ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config")),
            ("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(s) = &scripts {
            // RABBITMQ_HOME is the parent of the scripts directory, its `plugins` the code path.
            env.push(("RABBITMQ_SCRIPTS_DIR".into(), s.display().to_string()));
        }
        // rabbitmq-server would start an epmd of its own (which outlives it) if ours were not up.
        let epmd = Process {
            program: epmd,
            args: vec![
                "-port".into(),
                epmd_port.to_string(),
                "-address".into(),
                "127.0.0.1".into(),
            ],
            user: user.clone(),
            log: Some("epmd.log"),
            listens_on: Some(epmd_port),
            ..Process::default()
        };
        let rabbit = Process {
            program,
            env,
            user,
            ..Process::default()
        };
        Ok(vec![epmd, rabbit])
    }

    async fn probe(&self, target: &Target) -> Result<(), String> {
        super::wire::amqp::open(
            &target.host,
            target.port,
            target.user.as_deref().unwrap_or("guest"),
            target.password.as_deref().unwrap_or("guest"),
            // The default vhost, as the URL without a path names it.
            "/",
        )
        .await
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
