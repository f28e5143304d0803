//! Redis: `kind = "redis"`. No persistence natively or in a container; ready means `PING`
//! answered `PONG`.

use async_trait::async_trait;

use super::server::{need, Entrypoint, NativeHost, Process, Program, Server, Target};

/// Redis.
#[derive(Debug)]
pub struct Redis;

fn program() -> Program {
    Program {
        name: "redis-server",
        dirs: Vec::new(),
        help: "install Redis: `apt-get install -y redis-server`",
    }
}

#[async_trait]
impl Server for Redis {
    fn port(&self) -> (&'static str, u16) {
        ("redis", 6379)
    }

    fn protocol(&self) -> &'static str {
        "redis"
    }

    fn probe_description(&self) -> &'static str {
        "redis `PING`"
    }

    fn healthcheck(&self, target: &Target) -> Option<String> {
        Some(format!(
            "redis-cli -h 127.0.0.1 -p {} ping | grep -q PONG",
            target.port
        ))
    }

    fn image(&self) -> &'static str {
        "redis:7"
    }

    fn typical_boot(&self) -> f64 {
        0.3
    }

    fn scheme(&self) -> &'static str {
        "redis"
    }

    fn default_path(&self) -> &'static str {
        "0"
    }

    fn entrypoint(&self) -> Option<Entrypoint> {
        Some(Entrypoint {
            script: include_str!("entrypoints/redis.sh"),
            stop_signal: None,
        })
    }

    fn native_programs(&self) -> Vec<Program> {
        vec![program()]
    }

    async fn native(&self, host: &dyn NativeHost, target: &Target) -> Result<Vec<Process>, String> {
        let port = target.port.to_string();
        let dir = host.dir().display().to_string();
        let args = [
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--daemonize",
            "no",
        ];
        Ok(vec![Process {
            program: need(&program())?,
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Process::default()
        }])
    }

    async fn probe(&self, target: &Target) -> Result<(), String> {
        super::wire::redis::ping(
            &target.host,
            target.port,
            target.user.as_deref(),
            target.password.as_deref(),
            0,
        )
        .await
        .map_err(|e| e.to_string())
    }
}
