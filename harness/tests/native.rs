//! The native backend against real PostgreSQL, Redis and RabbitMQ: they start, they answer
//! their protocols, faults can be injected, and nothing of a run remains afterwards — after
//! success, after a failure mid-startup, and after SIGINT.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::backend::BackendKind;
use harness::cleanup;
use harness::manifest::ProbeSpec;
use harness::{Error, Manifest, Stack, StackOptions};
mod common;

use sqlx::Connection;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(path)
}

fn native() -> StackOptions {
    StackOptions {
        backend: Some(BackendKind::Native),
        ..StackOptions::default()
    }
}

/// Processes and run directories belonging to runs whose id starts with `prefix`.
fn leftovers(prefix: &str) -> (Vec<i32>, Vec<PathBuf>) {
    let dirs: Vec<PathBuf> = std::fs::read_dir(cleanup::runs_root())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    let marker = format!("{}={prefix}", cleanup::RUN_ID_ENV);
    let pids = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| {
                    env.split(|b| *b == 0)
                        .any(|kv| kv.starts_with(marker.as_bytes()))
                })
                .unwrap_or(false)
        })
        .collect();
    (pids, dirs)
}

async fn wait_until_clean(prefix: &str) -> (Vec<i32>, Vec<PathBuf>) {
    let mut left = leftovers(prefix);
    for _ in 0..100 {
        if left.0.is_empty() && left.1.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = leftovers(prefix);
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_servers_start_answer_survive_faults_and_leave_nothing() {
    let manifest = Manifest::load(&fixture("manifests/infra.toml")).unwrap();
    let stack = Stack::start(manifest, native())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let run_id = stack.run_id().to_string();

    // The scheduler: web waits for postgres to be ready but only for rabbitmq to start.
    let t = |s: &str| common::timing(&stack, s);
    assert!(t("web").started >= t("postgres").ready);
    assert!(
        t("web").ready < t("rabbitmq").ready,
        "web waited for rabbitmq's readiness"
    );

    // PostgreSQL, Redis and RabbitMQ answer their protocols.
    let pg = common::servers_answer(&stack).await;

    // The generic service got its environment from templates resolved against the real ports.
    let web = stack.url("web").unwrap();
    let env = reqwest::get(format!("{web}/env"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        env,
        format!(
            "{}\n{}",
            pg.url(Some("extra")).unwrap(),
            stack.url("rabbitmq").unwrap()
        )
    );

    // Pause Redis: its probe fails; unpause: it passes again.
    let redis_ep = stack.endpoint("redis").unwrap();
    stack.pause("redis").await.unwrap();
    let paused = harness::probe::check(
        &ProbeSpec::Protocol(harness::manifest::Kind::Redis),
        &redis_ep,
    )
    .await;
    assert!(paused.is_err(), "a paused redis answered PING");
    stack.unpause("redis").await.unwrap();
    harness::probe::check(
        &ProbeSpec::Protocol(harness::manifest::Kind::Redis),
        &redis_ep,
    )
    .await
    .unwrap();

    // Stop PostgreSQL: the probe fails; start it again: ready, data kept.
    stack.stop("postgres").await.unwrap();
    assert!(
        harness::probe::check(&ProbeSpec::Protocol(harness::manifest::Kind::Postgres), &pg)
            .await
            .is_err()
    );
    stack.start_service("postgres").await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&stack.url("postgres").unwrap())
        .await
        .unwrap();
    let kept: i32 = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 42);
    drop(conn);

    // Logs are captured.
    assert!(stack
        .logs("postgres", 50)
        .await
        .unwrap()
        .iter()
        .any(|l| l.contains("ready to accept connections")));

    assert!(
        !leftovers(&run_id).0.is_empty(),
        "the stack's processes carry the run id"
    );
    stack.down().await;
    let (pids, dirs) = wait_until_clean(&run_id).await;
    assert!(pids.is_empty(), "processes left: {pids:?}");
    assert!(dirs.is_empty(), "directories left: {dirs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_gets_ready_stops_everything_and_says_why() {
    let source = r#"
[services.postgres]
kind = "postgres"

[services.redis]
kind = "redis"

[services.stuck]
kind = "service"
command = ["sh", "-c", "echo booting stuck; echo waiting for a config file that never comes >&2; exec sleep 60"]
ports = { http = 8080 }
depends-on = ["postgres"]
startup-timeout = "1500ms"
"#;
    let manifest = Manifest::parse(Path::new("stuck.toml"), source).unwrap();
    let prefix = format!("{}-", std::process::id());
    let started = std::time::Instant::now();
    let err = Stack::start(manifest, native()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    let Error::Startup(e) = &err else {
        panic!("not a startup error: {err}")
    };
    assert_eq!(e.service, "stuck");
    assert_eq!(e.probe.as_deref(), Some("tcp connect (port `http`)"));
    assert!(e.waited.unwrap() >= Duration::from_millis(1500));
    assert!(
        e.log_tail.iter().any(|l| l.contains("never comes")),
        "{:?}",
        e.log_tail
    );
    assert_eq!(e.stopped.first().map(String::as_str), Some("stuck"));
    assert!(
        e.stopped.contains(&"postgres".to_string()) && e.stopped.contains(&"redis".to_string())
    );
    let text = err.to_string();
    assert!(
        text.contains("service `stuck` did not become ready"),
        "{text}"
    );
    assert!(text.contains("connect to 127.0.0.1:"), "{text}");
    assert_eq!(err.exit_code(), harness::exit_code::STARTUP_FAILED);
    // Other tests of this process may be running stacks; this one's processes are gone
    // once no process is left that carries a run id of this process and is not a live run.
    let (pids, _) = wait_until_clean(&prefix).await;
    for pid in pids {
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !cmd.contains("never comes"),
            "the stuck service survived: {pid}"
        );
    }
}

#[test]
fn sigint_during_startup_leaves_nothing_behind() {
    let bin = env!("CARGO_BIN_EXE_harness");
    let mut child = std::process::Command::new(bin)
        .args(["up", "--no-build", "-m"])
        .arg(fixture("manifests/infra.toml"))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let prefix = format!("{}-", child.id());
    // Wait until Redis is ready and RabbitMQ is still booting, then interrupt.
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("redis") && line.contains("ready in") {
            break;
        }
    }
    // Keep draining stderr so the harness never writes into a closed pipe.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    assert!(
        !leftovers(&prefix).0.is_empty(),
        "nothing was running: {seen:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    seen.extend(drain.join().unwrap());
    assert_eq!(status.code(), Some(130), "{seen:?}");
    assert!(
        seen.iter().any(|l| l.contains("interrupted; stopping")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|l| l.starts_with("error:")),
        "teardown reported as an error: {seen:?}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (pids, dirs) = rt.block_on(wait_until_clean(&prefix));
    assert!(pids.is_empty(), "processes left after SIGINT: {pids:?}");
    assert!(dirs.is_empty(), "directories left after SIGINT: {dirs:?}");
}

#[test]
fn an_invalid_manifest_exits_2_and_starts_nothing() {
    let bin = env!("CARGO_BIN_EXE_harness");
    for command in ["check", "up"] {
        let child = std::process::Command::new(bin)
            .args(
                [command, "--no-build", "--manifest"][..if command == "up" { 3 } else { 1 }]
                    .iter()
                    .chain(["--manifest"].iter().filter(|_| command != "up")),
            )
            .arg(fixture("manifests/invalid/05-cycle.toml"))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let prefix = format!("{}-", child.id());
        let child = child.wait_with_output().unwrap();
        assert_eq!(
            leftovers(&prefix),
            (vec![], vec![]),
            "{command} started something"
        );
        assert_eq!(child.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8_lossy(&child.stderr);
        assert!(
            stderr.contains("dependency cycle: orders -> payments -> orders"),
            "{stderr}"
        );
        assert!(stderr.contains("05-cycle.toml:4:14"), "{stderr}");
    }
}

/// `harness up --detach` as a nextest setup script: with `NEXTEST_ENV` set it appends the
/// endpoints to that file as `HARNESS_<SERVICE>_*` lines, and the stack ends by itself once the
/// process that ran it (nextest; here a shell) has ended.
#[test]
fn a_setup_script_stack_writes_its_endpoints_and_ends_with_the_run_that_started_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("stack.toml");
    std::fs::write(&manifest, "[services.redis]\nkind = \"redis\"\n").unwrap();
    let env_file = dir.path().join("nextest.env");
    let mut run = std::process::Command::new("sh")
        .arg("-c")
        .arg("\"$0\" --manifest \"$1\" up --detach --backend native >/dev/null && sleep 3")
        .arg(env!("CARGO_BIN_EXE_harness"))
        .arg(&manifest)
        .env("NEXTEST_ENV", &env_file)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let port = loop {
        let text = std::fs::read_to_string(&env_file).unwrap_or_default();
        if let Some(p) = text
            .lines()
            .find_map(|l| l.strip_prefix("HARNESS_REDIS_PORT="))
        {
            break p.trim().parse::<u16>().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no endpoints in {env_file:?}: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "redis is not up on the port written"
    );
    assert!(run.wait().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stack still runs 15 s after the run that started it ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
