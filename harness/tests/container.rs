//! The container backend against a real Docker engine: PostgreSQL, Redis and RabbitMQ in
//! containers answer their protocols on loopback-only ports, a dependent container reaches them
//! by name, faults can be injected, and nothing of a run remains afterwards — after success,
//! after a failure, after a panic, after SIGINT, and (once reaped) after `kill -9`.
//!
//! These tests need a Docker engine and the images of `fixtures/images/build.sh`; they fail
//! with a message saying so when either is missing. They use the local images through
//! `fixtures/images/local.env` (variables already set in the environment win).

use std::future::Future;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use harness::backend::container::{self, LABEL_OWNER_PID, LABEL_RUN_ID};
use harness::backend::{self, BackendKind};
use harness::manifest::ProbeSpec;
use harness::settings::Settings;
use harness::{Error, Manifest, Stack, StackOptions};
mod common;

use sqlx::Connection;

/// One stack at a time: two cores run three servers each, and the checks of "nothing left of
/// this process" must not see another test's live stack.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(path)
}

/// Runs a future on a runtime of its own (from sync code or inside another runtime).
fn block<T: Send>(f: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| tokio::runtime::Runtime::new().unwrap().block_on(f))
            .join()
            .unwrap()
    })
}

/// Loads `fixtures/images/local.env` into the environment (where unset), and fails the test
/// with instructions when the engine or an image is missing.
fn setup() -> Manifest {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let text = std::fs::read_to_string(fixture("images/local.env")).unwrap();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (k, v) = line.split_once('=').unwrap();
            if std::env::var_os(k).is_none() {
                std::env::set_var(k, v);
            }
        }
    });
    let manifest = Manifest::load(&fixture("manifests/infra-container.toml")).unwrap();
    if let Err(e) = block(container::connect()) {
        panic!("these tests need a Docker engine: {e}");
    }
    if let Err(e) = block(container::available(&manifest, &Settings::from_env())) {
        panic!("images missing: {e}\n  run `fixtures/images/build.sh` first (it builds the harness-local/* images)");
    }
    manifest
}

fn containers() -> StackOptions {
    StackOptions {
        backend: Some(BackendKind::Container),
        ..StackOptions::default()
    }
}

fn docker(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Containers, networks and volumes carrying `label` (`key=value`).
fn leftovers(label: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let filter = format!("label={label}");
    (
        docker(&["ps", "-aq", "--filter", &filter]),
        docker(&["network", "ls", "-q", "--filter", &filter]),
        docker(&["volume", "ls", "-q", "--filter", &filter]),
    )
}

fn nothing() -> (Vec<String>, Vec<String>, Vec<String>) {
    (vec![], vec![], vec![])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_in_containers_answer_on_loopback_survive_faults_and_leave_nothing() {
    let manifest = setup();
    let _serial = SERIAL.lock().await;
    let stack = Stack::start(manifest, containers())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stack.backend(), BackendKind::Container);
    let run_id = stack.run_id().to_string();
    let run_label = format!("{LABEL_RUN_ID}={run_id}");
    let t = |s: &str| common::timing(&stack, s);
    for dep in ["postgres", "redis", "rabbitmq"] {
        assert!(
            t("web").started >= t(dep).ready,
            "web started before {dep} was ready"
        );
    }

    // Labels on everything, ports published on 127.0.0.1 only.
    let (names, networks, _) = leftovers(&run_label);
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(networks.len(), 1);
    let network = docker(&["network", "inspect", "-f", "{{.Name}}", &networks[0]]);
    assert_eq!(network, [format!("harness-{run_id}")]);
    for id in &names {
        let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", id]).join("");
        for key in [
            "org.harness.run-id",
            "org.harness.owner-pid",
            "org.harness.started-at",
            "org.harness.managed\":\"true",
        ] {
            assert!(labels.contains(key), "{key} missing: {labels}");
        }
        let ports = docker(&["port", id]);
        assert!(!ports.is_empty());
        for p in &ports {
            assert!(
                p.contains(" -> 127.0.0.1:"),
                "published beyond loopback: {p}"
            );
        }
    }

    // The critical path (rabbitmq -> web) had a larger CPU weight only until it was ready.
    let mut weights = Vec::new();
    for _ in 0..100 {
        weights = names
            .iter()
            .map(|id| docker(&["inspect", "-f", "{{.HostConfig.CpuShares}}", id]).join(""))
            .collect();
        if weights.iter().all(|w| w == "0" || w == "1024") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        weights.iter().all(|w| w == "0" || w == "1024"),
        "{weights:?}"
    );

    // PostgreSQL, Redis and RabbitMQ answer their protocols over the published ports.
    let pg = common::servers_answer(&stack).await;
    assert_eq!(pg.host, "127.0.0.1");

    // The dependent got endpoints on the network (names, container ports) and reaches them.
    let rabbit = stack.endpoint("rabbitmq").unwrap();
    let internal = |user: &Option<String>, password: &Option<String>| {
        format!(
            "{}:{}",
            user.as_deref().unwrap(),
            password.as_deref().unwrap()
        )
    };
    let env = reqwest::get(format!("{}/env", stack.url("web").unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        env,
        format!(
            "postgres://{}@postgres:5432/extra\namqp://{}@rabbitmq:5672/%2F\n\
             postgres:5432 reachable\nredis:6379 reachable\nrabbitmq:5672 reachable\n",
            internal(&pg.user, &pg.password),
            internal(&rabbit.user, &rabbit.password),
        )
    );

    // Pause Redis: its probe fails; unpause: it passes again.
    let redis_ep = stack.endpoint("redis").unwrap();
    stack.pause("redis").await.unwrap();
    assert!(
        harness::probe::check(
            &ProbeSpec::Protocol(harness::manifest::Kind::Redis),
            &redis_ep
        )
        .await
        .is_err(),
        "a paused redis answered PING"
    );
    stack.unpause("redis").await.unwrap();
    harness::probe::check(
        &ProbeSpec::Protocol(harness::manifest::Kind::Redis),
        &redis_ep,
    )
    .await
    .unwrap();

    // Stop PostgreSQL: the probe fails; start it again: ready on its (new) port, data kept.
    stack.stop("postgres").await.unwrap();
    assert!(
        harness::probe::check(&ProbeSpec::Protocol(harness::manifest::Kind::Postgres), &pg)
            .await
            .is_err()
    );
    stack.start_service("postgres").await.unwrap();
    let pg_again = stack.endpoint("postgres").unwrap();
    let published = docker(&[
        "port",
        &format!("h-{}-postgres", run_id.rsplit('-').next().unwrap()),
        "5432",
    ]);
    assert_eq!(
        published,
        [format!("127.0.0.1:{}", pg_again.port(None).unwrap())]
    );
    let mut conn = sqlx::PgConnection::connect(&stack.url("postgres").unwrap())
        .await
        .unwrap();
    let kept: i32 = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 42);
    drop(conn);

    // Kill Redis outright and start it again.
    stack.kill("redis").await.unwrap();
    assert!(harness::probe::check(
        &ProbeSpec::Protocol(harness::manifest::Kind::Redis),
        &redis_ep
    )
    .await
    .is_err());
    stack.start_service("redis").await.unwrap();
    harness::probe::check(
        &ProbeSpec::Protocol(harness::manifest::Kind::Redis),
        &stack.endpoint("redis").unwrap(),
    )
    .await
    .unwrap();

    // Logs come from the containers' stdout and stderr.
    let logs = stack.logs("postgres", 100).await.unwrap();
    assert!(
        logs.iter()
            .any(|l| l.contains("ready to accept connections")),
        "{logs:?}"
    );
    let logs = stack.logs("web", 10).await.unwrap();
    assert!(
        logs.iter().any(|l| l.contains("listening on 0.0.0.0:8080")),
        "{logs:?}"
    );

    stack.down().await;
    assert_eq!(
        leftovers(&run_label),
        nothing(),
        "left behind by run {run_id}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_exits_fails_the_start_at_once_and_everything_is_removed() {
    setup();
    let _serial = SERIAL.lock().await;
    let source = r#"
[stack]
pull = "never"

[services.redis]
kind = "redis"

[services.crash]
kind = "service"
image = "harness-local/base:bookworm"
args = ["sh", "-c", "echo booting crash; echo missing configuration file >&2; exit 3"]
ports = { http = 8080 }
depends-on = ["redis"]
startup-timeout = "30s"
"#;
    let manifest = Manifest::parse(Path::new("crash.toml"), source).unwrap();
    let started = Instant::now();
    let err = Stack::start(manifest, containers()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let Error::Startup(e) = &err else {
        panic!("not a startup error: {err}")
    };
    assert_eq!(e.service, "crash");
    assert!(e.message.contains("exited (exit code 3)"), "{}", e.message);
    assert!(
        e.log_tail
            .iter()
            .any(|l| l.contains("missing configuration file")),
        "{:?}",
        e.log_tail
    );
    assert!(e.stopped.contains(&"redis".to_string()), "{:?}", e.stopped);
    let mine = format!("{LABEL_OWNER_PID}={}", std::process::id());
    assert_eq!(leftovers(&mine), nothing());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_fail_the_preflight_listing_every_one_before_anything_starts() {
    setup();
    let _serial = SERIAL.lock().await;
    let source = r#"
[stack]
pull = "never"

[stack.images]
db = "harness-local/no-such-postgres:0"
cache = "harness-local/no-such-redis:0"

[services.db]
kind = "postgres"

[services.cache]
kind = "redis"

[services.api]
kind = "service"
command = ["true"]
"#;
    let manifest = Manifest::parse(Path::new("missing.toml"), source).unwrap();
    let err = Stack::start(manifest.clone(), containers())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), harness::exit_code::PREREQUISITE_MISSING);
    let text = err.to_string();
    assert!(
        text.contains("image `harness-local/no-such-postgres:0` (service `db`"),
        "{text}"
    );
    assert!(
        text.contains("image `harness-local/no-such-redis:0` (service `cache`"),
        "{text}"
    );
    assert!(
        text.contains("an image for service `api`: it names none"),
        "{text}"
    );
    assert!(text.contains("fixtures/images/build.sh"), "{text}");
    assert!(text.contains("HARNESS_IMAGE_DB=<image:tag>"), "{text}");
    let mine = format!("{LABEL_OWNER_PID}={}", std::process::id());
    assert_eq!(leftovers(&mine), nothing());
    // Auto-detection does not pick containers for it.
    assert!(container::available(&manifest, &Settings::from_env())
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_the_stack_is_up_leaves_nothing() {
    setup();
    let _serial = SERIAL.lock().await;
    let source = "[stack]\npull = \"never\"\n\n[services.redis]\nkind = \"redis\"\n";
    let manifest = Manifest::parse(Path::new("panic.toml"), source).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let stack = Stack::start(manifest, containers()).await.unwrap();
        tx.send(stack.run_id().to_string()).unwrap();
        panic!("a test failed while holding the stack");
    });
    let run_id = rx.await.unwrap();
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(leftovers(&format!("{LABEL_RUN_ID}={run_id}")), nothing());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_detection_picks_containers_only_when_every_image_is_present() {
    let manifest = setup();
    assert_eq!(
        backend::detect(&manifest, &Settings::from_env())
            .await
            .unwrap(),
        BackendKind::Container
    );
    // infra.toml's `web` is a python command with no image: the native backend runs it.
    let native_only = Manifest::load(&fixture("manifests/infra.toml")).unwrap();
    assert_eq!(
        backend::detect(&native_only, &Settings::from_env())
            .await
            .unwrap(),
        BackendKind::Native
    );
}

/// Starts `harness up` on the container manifest and returns it once `marker` was printed,
/// with the lines seen so far and a thread draining the rest.
fn up_until(
    marker: &str,
) -> (
    std::process::Child,
    Vec<String>,
    std::thread::JoinHandle<Vec<String>>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_harness"))
        .args(["up", "--no-build", "--backend", "container", "-m"])
        .arg(fixture("manifests/infra-container.toml"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains(marker) {
            break;
        }
    }
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    (child, seen, drain)
}

#[test]
fn sigint_during_startup_removes_every_container_and_the_network() {
    setup();
    let _serial = SERIAL.blocking_lock();
    // Redis is ready, RabbitMQ and PostgreSQL are still booting.
    let (child, mut seen, drain) = up_until("redis     ready in");
    let owner = format!("{LABEL_OWNER_PID}={}", child.id());
    let (running, networks, _) = leftovers(&owner);
    assert!(
        running.len() >= 3 && networks.len() == 1,
        "nothing was running: {seen:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = { child }.wait().unwrap();
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
    assert_eq!(
        leftovers(&owner),
        nothing(),
        "left behind after SIGINT: {seen:?}"
    );
}

#[test]
fn kill_9_mid_startup_is_cleaned_up_by_the_next_run() {
    setup();
    let _serial = SERIAL.blocking_lock();
    let (mut child, seen, drain) = up_until("redis     ready in");
    let owner = format!("{LABEL_OWNER_PID}={}", child.id());
    let (running, networks, _) = leftovers(&owner);
    assert!(
        running.len() >= 3 && networks.len() == 1,
        "nothing was running: {seen:?}"
    );
    child.kill().unwrap(); // SIGKILL: no handler runs, nothing is cleaned up
    child.wait().unwrap();
    drop(drain.join());
    let (left, networks, _) = leftovers(&owner);
    assert!(
        !left.is_empty() && !networks.is_empty(),
        "a killed run cannot clean up after itself"
    );
    // What every start of the container backend does first.
    let reaped = block(container::reap_dead_runs()).unwrap();
    assert!(
        reaped
            .iter()
            .any(|id| id.starts_with(&format!("{}-", child.id()))),
        "{reaped:?}"
    );
    assert_eq!(leftovers(&owner), nothing());
    // A live run is never judged dead: this process's own.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(container::run_alive(&container::run_labels("x", None, now)));
}

/// fixtures/compose/jobs.yml: the one-shot jobs run to completion before the service that
/// waits for them (which checks its working directory, user, seeded volume and tmpfs itself
/// and is ready by its healthcheck, run in its container); the migration's table is there.
/// With the migration failing (`MIGRATE_EXIT=1`, through the file's `${MIGRATE_EXIT:-0}`) the
/// start fails naming the job, its exit code and its log, and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_jobs_complete_before_their_dependents_and_a_failing_one_fails_the_start() {
    setup();
    let _serial = SERIAL.lock().await;
    let path = fixture("compose/jobs.yml");
    let settings = Settings::from_env().without("MIGRATE_EXIT");
    let manifest = Manifest::load_with(&path, &settings).unwrap();
    let stack = Stack::start(manifest, containers())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let t = |s: &str| common::timing(&stack, s);
    for job in ["migrate", "seed"] {
        assert!(
            t("app").started >= t(job).ready,
            "app started before {job} completed"
        );
    }
    assert!(t("migrate").started >= t("postgres").ready);
    let url = stack.endpoint("postgres").unwrap().url(None).unwrap();
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM migrated")
        .fetch_one(&mut db)
        .await
        .unwrap_or_else(|e| panic!("the migration's table is missing: {e}"));
    assert_eq!(n, 0);
    drop(db);
    stack.down().await;

    let failing = Settings::from_env().with("MIGRATE_EXIT", "1");
    let manifest = Manifest::load_with(&path, &failing).unwrap();
    let err = Stack::start(manifest, containers()).await.unwrap_err();
    let Error::Startup(e) = &err else {
        panic!("not a startup error: {err}")
    };
    assert_eq!(e.service, "migrate");
    assert!(e.message.contains("exit code 1"), "{}", e.message);
    assert!(
        e.log_tail.iter().any(|l| l.contains("exiting with 1")),
        "{:?}",
        e.log_tail
    );
    let mine = format!("{LABEL_OWNER_PID}={}", std::process::id());
    assert_eq!(leftovers(&mine), nothing());
}

/// The image builds and the readiness a stack's start reports, in order.
#[derive(Default)]
struct Builds(std::sync::Mutex<Vec<String>>);

impl Builds {
    fn count(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| *e == "built")
            .count()
    }
}

impl harness::events::Sink for Builds {
    fn event(&self, event: &harness::events::Event) {
        let seen = match event {
            harness::events::Event::ImageBuilt { .. } => "built".to_string(),
            harness::events::Event::ServiceReady { service, .. } => format!("ready {service}"),
            _ => return,
        };
        self.0.lock().unwrap().push(seen);
    }
}

/// A `build` service's image is built from its context once: a second start finds its tag and
/// builds nothing, a changed file makes a new tag. The build runs while a service that does not
/// need it starts: that one is ready before the image is built. A Dockerfile whose `FROM` is not on the
/// machine fails the start, saying there is no registry and how to provide the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_built_once_per_context_and_a_missing_base_says_what_to_do() {
    setup();
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "Dockerfile",
        "FROM harness-local/base:bookworm\nCOPY job.sh /job.sh\nCMD [\"/bin/bash\", \"/job.sh\"]\n",
    );
    write(
        "job.sh",
        &format!("echo job of test {}\n", std::process::id()),
    );
    let source = format!(
        "[services.job]\nkind = \"service\"\nbuild = {:?}\nprobe = {{ type = \"exit\" }}\n\n[services.cache]\nkind = \"redis\"\n",
        dir.path().display().to_string()
    );
    let mut first = Vec::new();
    let mut tags = Vec::new();
    let mut built = Vec::new();
    for change in [false, false, true] {
        if change {
            write("job.sh", "echo changed\n");
        }
        let manifest = Manifest::parse(Path::new("build.toml"), &source).unwrap();
        let plan = container::plan(&manifest, &Settings::from_env()).unwrap();
        tags.push(plan.images["job"].image.clone());
        let builds = std::sync::Arc::new(Builds::default());
        let stack = Stack::start(
            manifest,
            StackOptions {
                sink: builds.clone(),
                ..containers()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        stack.down().await;
        built.push(builds.count());
        if first.is_empty() {
            first = builds.0.lock().unwrap().clone();
        }
    }
    for tag in tags.iter().collect::<std::collections::BTreeSet<_>>() {
        docker(&["image", "rm", "-f", tag]);
    }
    assert_eq!(built, [1, 0, 1], "builds per start (tags {tags:?})");
    let order = |e: &str| first.iter().position(|x| x == e).unwrap_or(usize::MAX);
    assert!(
        order("ready cache") < order("built") && order("built") < order("ready job"),
        "the cache waited for the build, or the job did not: {first:?}"
    );
    assert_eq!(tags[0], tags[1]);
    assert_ne!(tags[1], tags[2]);

    write(
        "Dockerfile",
        "FROM harness-local/no-such-base:1\nCOPY job.sh /job.sh\n",
    );
    let manifest = Manifest::parse(Path::new("build.toml"), &source).unwrap();
    let err = Stack::start(manifest, containers())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("harness-local/no-such-base:1"), "{err}");
    assert!(err.contains("no registry"), "{err}");
    let mine = format!("{LABEL_OWNER_PID}={}", std::process::id());
    assert_eq!(leftovers(&mine), nothing());
}

/// A `binary` service whose image is only a runtime (a tag of the base, as `./run` makes the
/// shop's) and whose binary is not mounted would run nothing: the start is refused before any
/// container exists, saying how to bake the binary in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_image_without_its_binary_is_refused_before_anything_starts() {
    setup();
    let _serial = SERIAL.lock().await;
    let tag = format!("harness-local/runtime-test-{}:1", std::process::id());
    docker(&["tag", "harness-local/base:bookworm", &tag]);
    let source = format!("[services.payments]\nkind = \"service\"\nbinary = \"payments\"\nimage = \"{tag}\"\nports = {{ http = 8080 }}\n");
    let manifest = Manifest::parse(Path::new("runtime.toml"), &source).unwrap();
    let err = Stack::start(
        manifest,
        StackOptions {
            settings: Settings::from_env().with("HARNESS_MOUNT_BINARIES", "0"),
            ..containers()
        },
    )
    .await
    .map(|_| ())
    .unwrap_err();
    docker(&["image", "rm", &tag]);
    let text = err.to_string();
    assert!(text.contains("only a runtime"), "{text}");
    assert!(text.contains("HARNESS_MOUNT_BINARIES=0"), "{text}");
    assert!(text.contains("build.sh service payments"), "{text}");
    assert_eq!(err.exit_code(), harness::exit_code::PREREQUISITE_MISSING);
    let mine = format!("{LABEL_OWNER_PID}={}", std::process::id());
    assert_eq!(leftovers(&mine), nothing());
}

/// Container Postgres on the local image starts from a cached cluster: the first run hands
/// its fresh cluster to the cache, the next gets a copy of it (a file planted in the cached
/// cluster shows up in its data directory) and still runs with its own credentials and
/// databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_postgres_starts_from_the_cached_cluster_with_its_own_credentials() {
    setup();
    let _serial = SERIAL.lock().await;
    let cache = tempfile::tempdir().unwrap();
    let settings =
        Settings::from_env().with("HARNESS_CACHE_DIR", cache.path().display().to_string());
    let source = "[services.postgres]\nkind = \"postgres\"\ndatabases = [\"extra\"]\n";
    let start = || async {
        let manifest = Manifest::parse(Path::new("seed.toml"), source).unwrap();
        Stack::start(
            manifest,
            StackOptions {
                settings: settings.clone(),
                ..containers()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let first = start().await;
    let root = cache.path().join("postgres-container");
    let mut entry = None;
    for _ in 0..100 {
        entry = std::fs::read_dir(&root)
            .ok()
            .and_then(|mut d| d.find_map(|e| e.ok().map(|e| e.path())))
            .filter(|p| p.join("data/PG_VERSION").is_file());
        if entry.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.down().await;
    let entry = entry.expect("the first run cached no cluster");
    let planted = format!("planted-{}", std::process::id());
    std::fs::write(entry.join("data").join(&planted), "").unwrap();

    let second = start().await;
    let data = second.run_dir().unwrap().join("postgres-data");
    let seeded = data.join(&planted).is_file();
    let endpoint = second.endpoint("postgres").unwrap();
    let mut conn = sqlx::PgConnection::connect(&endpoint.url(Some("extra")).unwrap())
        .await
        .unwrap();
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    drop(conn);
    second.down().await;
    assert!(seeded, "the second run's cluster is not the cached one");
    assert_eq!(Some(user), endpoint.user);
    let mine = format!("{LABEL_OWNER_PID}={}", std::process::id());
    assert_eq!(leftovers(&mine), nothing());
}

/// A workspace binary mounted into a runtime image has its container created and started while
/// its dependency boots, held at its gate: the program itself runs only once the dependency is
/// ready, and a container started again (a fault journey's stop and start) passes the gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_container_runs_its_program_only_once_its_dependencies_are_ready() {
    setup();
    let _serial = SERIAL.lock().await;
    let dir = std::env::temp_dir().join(format!("harness-prepared-{}", std::process::id()));
    let (bins, out) = (dir.join("bin"), dir.join("out"));
    std::fs::create_dir_all(&bins).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    // The "binary": notes when it ran (appending, so a second start adds a line), then serves.
    let app = bins.join("app");
    std::fs::write(
        &app,
        "#!/bin/sh\ndate +%s%N >> /out/started\nexec python3 -m http.server 8001\n",
    )
    .unwrap();
    std::fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tag = format!("harness-local/prepared-test-{}:1", std::process::id());
    docker(&["tag", "harness-local/base:bookworm", &tag]);
    let source = format!(
        r#"
[services.slow]
kind = "service"
image = "{1}"
args = ["sh", "-c", "sleep 2 && date +%s%N > /out/slow && exec python3 -m http.server 8000"]
ports = {{ http = 8000 }}
probe = {{ type = "http", path = "/" }}
volumes = ["{0}:/out"]

[services.app]
kind = "service"
binary = "app"
image = "{1}"
ports = {{ http = 8001 }}
depends-on = ["slow"]
probe = {{ type = "http", path = "/" }}
volumes = ["{0}:/out"]
"#,
        out.display(),
        tag
    );
    let manifest = Manifest::parse(&dir.join("prepared.toml"), &source).unwrap();
    let result = Stack::start(
        manifest,
        StackOptions {
            bin_dir: Some(bins.clone()),
            ..containers()
        },
    )
    .await;
    let stack = match result {
        Ok(s) => s,
        Err(e) => {
            docker(&["image", "rm", &tag]);
            panic!("{e}");
        }
    };
    let stamp = |f: &str| -> u128 {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // When the dependency's server began to serve: the earliest it can have been ready.
    let slow_ready = stamp("slow");
    let ran: Vec<u128> = std::fs::read_to_string(out.join("started"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert!(
        ran[0] >= slow_ready,
        "the program ran {} ms before its dependency was ready",
        (slow_ready - ran[0]) / 1_000_000
    );
    // Its container existed long before: it was prepared, not created at the launch.
    let name = format!("h-{}-app", stack.run_id().rsplit('-').next().unwrap());
    let created = docker(&["inspect", "-f", "{{.Created}}", &name]).join("");
    let created = chrono_like_nanos(&created);
    assert!(
        created + 1_000_000_000 < slow_ready,
        "the container was created at {created}, the dependency ready at {slow_ready}: not prepared ahead"
    );
    // Killed and started again, it runs at once: the gate was opened for good.
    stack.kill("app").await.unwrap();
    stack.start_service("app").await.unwrap();
    let again = std::fs::read_to_string(out.join("started")).unwrap();
    assert_eq!(again.lines().count(), 2, "{again}");
    let run_label = format!("{LABEL_RUN_ID}={}", stack.run_id());
    stack.down().await;
    docker(&["image", "rm", &tag]);
    assert_eq!(leftovers(&run_label), nothing());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Nanoseconds since the epoch of the engine's RFC 3339 `Created` time (UTC, `Z`).
fn chrono_like_nanos(text: &str) -> u128 {
    let out = Command::new("date")
        .args(["-u", "-d", text.trim(), "+%s%N"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
