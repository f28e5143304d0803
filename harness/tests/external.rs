//! A stack whose servers are external (a CI job's service containers) and whose own service
//! is native: templates give the native service the external servers' addresses, databases
//! the harness created there are dropped afterwards, and teardown touches nothing else of the
//! external servers. The "CI service containers" are a native stack of their own here.
//!
//! A container reaches an external server on the host through the engine's host gateway
//! (needs a Docker engine and `harness-local/base:bookworm` of `fixtures/images/build.sh`).
//!
//! The tests set `HARNESS_<SERVICE>_*` in the process environment, each for services of its
//! own names.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use harness::backend::BackendKind;
use harness::isolation::DatabaseTemplate;
use harness::{Error, Manifest, Stack, StackOptions};
use sqlx::Connection;

const SERVERS: &str = r#"
[stack]
name = "ci-services"

[services.postgres]
kind = "postgres"

[services.redis]
kind = "redis"
"#;

const STACK: &str = r#"
[stack]
name = "team"

[services.postgres]
kind = "postgres"
databases = ["created_by_run", "there_before"]

[services.redis]
kind = "redis"

[services.app]
kind = "service"
command = ["sh", "-c", "printf '%s\n%s\n' \"$DATABASE_URL\" \"$REDIS_URL\" > /tmp/$HARNESS_RUN_ID.urls.tmp && mv /tmp/$HARNESS_RUN_ID.urls.tmp /tmp/$HARNESS_RUN_ID.urls && exec sleep 600"]
depends-on = ["postgres", "redis"]
env = { DATABASE_URL = "{{ postgres.url.created_by_run }}", REDIS_URL = "{{ redis.url }}" }
"#;

fn manifest(source: &str) -> Manifest {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/external.toml");
    Manifest::parse(&path, source).unwrap()
}

async fn databases(url: &str) -> Vec<String> {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT datname::text FROM pg_database ORDER BY 1")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn external_servers_are_used_and_left_as_they_were() {
    let servers = Stack::start(
        manifest(SERVERS),
        StackOptions {
            backend: Some(BackendKind::Native),
            ..StackOptions::default()
        },
    )
    .await
    .unwrap();
    // What the CI job exports for its service containers.
    for name in ["postgres", "redis"] {
        let endpoint = servers.endpoint(name).unwrap();
        for (k, v) in harness::backend::external::variables(name, &endpoint) {
            std::env::set_var(k, v);
        }
    }
    let pg = servers.endpoint("postgres").unwrap();
    let admin = pg.url(Some("postgres")).unwrap();
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query("CREATE DATABASE there_before")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let mut before = sqlx::PgConnection::connect(&pg.url(Some("there_before")).unwrap())
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        .execute(&mut before)
        .await
        .unwrap();
    drop(before);
    let redis_client = redis::Client::open(servers.url("redis").unwrap()).unwrap();
    let mut r = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("kept")
        .arg("v")
        .query_async(&mut r)
        .await
        .unwrap();

    let stack = Stack::start(
        manifest(STACK),
        StackOptions {
            backend: Some(BackendKind::Native),
            service_backends: BTreeMap::from([
                ("postgres".to_string(), BackendKind::External),
                ("redis".to_string(), BackendKind::External),
            ]),
            ..StackOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(stack.plan().of("postgres"), BackendKind::External);
    assert_eq!(stack.plan().of("app"), BackendKind::Native);
    assert_eq!(stack.backend(), BackendKind::Native);

    // The native service was given the external servers' own addresses and credentials.
    // It runs in the manifest's directory, so it writes to /tmp, under its run's id.
    let urls = std::path::PathBuf::from(format!("/tmp/{}.urls", stack.run_id()));
    let mut text = String::new();
    for _ in 0..100 {
        if let Ok(t) = std::fs::read_to_string(&urls) {
            text = t;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(&urls);
    assert_eq!(
        text,
        format!(
            "{}\n{}\n",
            pg.url(Some("created_by_run")).unwrap(),
            servers.url("redis").unwrap()
        )
    );
    let dbs = databases(&admin).await;
    assert!(dbs.contains(&"created_by_run".to_string()), "{dbs:?}");

    // Per-trial isolation works on the external server: a template, a clone of it, dropped.
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/orders/migrations");
    let template = DatabaseTemplate::from_migrations(&stack, "external", &migrations)
        .await
        .unwrap();
    let fresh = template.fresh_database().await.unwrap();
    assert!(databases(&admin).await.contains(&fresh.name));
    template.drop_database(&fresh).await.unwrap();
    assert!(!databases(&admin).await.contains(&fresh.name));

    // Logs that are not there are said to be not there.
    match stack.logs("postgres", 10).await {
        Err(e @ Error::LogsUnavailable { .. }) => {
            assert!(
                e.to_string().contains(
                    "the logs of service `postgres` are unavailable on the external backend"
                ),
                "{e}"
            )
        }
        other => panic!("logs of an external service: {other:?}"),
    }
    assert!(stack.logs("app", 10).await.is_ok());
    let refused = stack.stop("redis").await.unwrap_err().to_string();
    assert!(
        refused.contains("the harness did not start it"),
        "{refused}"
    );

    let run_dir = stack.run_dir().unwrap().to_path_buf();
    stack.down().await;
    assert!(!run_dir.exists(), "{} is left", run_dir.display());

    // The external servers still run, with what was there before; only what the run created
    // is gone.
    let dbs = databases(&admin).await;
    assert!(!dbs.contains(&"created_by_run".to_string()), "{dbs:?}");
    let mut before = sqlx::PgConnection::connect(&pg.url(Some("there_before")).unwrap())
        .await
        .expect("`there_before` was there before the run: teardown must leave it");
    let v: i32 = sqlx::query_scalar("SELECT v FROM kept")
        .fetch_one(&mut before)
        .await
        .unwrap();
    assert_eq!(v, 42);
    drop(before);
    let mut r = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let kept: String = redis::cmd("GET")
        .arg("kept")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(kept, "v");
    assert!(servers.logs("postgres", 5).await.is_ok());
    servers.down().await;
}

const GATEWAY: &str = r#"
[stack]
name = "gateway"
pull = "never"

# A server outside the engine, on the host (what a CI job's service container is to the job).
[services.ext]
kind = "service"
backend = "external"
ports = { http = 8080 }
probe = { type = "tcp" }

# Says whether it reaches `ext` at the address its template gave it.
[services.client]
kind = "service"
image = "harness-local/base:bookworm"
ports = { http = 8080 }
depends-on = ["ext"]
probe = { type = "http", path = "/env" }
env = { EXT = "{{ ext.address }}" }
args = ["perl", "-MIO::Socket::INET", "-e", '''
my ($host, $port) = split /:/, $ARGV[0];
my $server = IO::Socket::INET->new(LocalAddr => $host, LocalPort => $port, Listen => 16, ReuseAddr => 1)
    or die "cannot listen on $ARGV[0]: $!\n";
while (my $client = $server->accept) {
    while (my $line = <$client>) { last if $line =~ /^\r?$/ }
    my $peer = IO::Socket::INET->new(PeerAddr => $ENV{EXT}, Timeout => 2);
    my $body = $ENV{EXT} . ($peer ? " reachable" : " unreachable: $!") . "\n";
    print $client "HTTP/1.0 200 OK\r\nContent-Length: " . length($body) . "\r\n\r\n$body";
    close $client;
}
''', "{{ self.bind.http }}"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_container_reaches_an_external_server_on_the_host_through_the_gateway() {
    if let Err(e) = harness::backend::container::connect().await {
        panic!("this test needs a Docker engine: {e}");
    }
    // On every address: the container comes from the engine's bridge, not from loopback.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Connections are kept open: one closed at once reads as "nothing listens behind it".
    let server = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            open.push(conn);
        }
    });
    std::env::set_var("HARNESS_EXT_PORT", port.to_string());
    let stack = Stack::start(
        manifest(GATEWAY),
        StackOptions {
            backend: Some(BackendKind::Container),
            ..StackOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n  (images: run `fixtures/images/build.sh`; it builds harness-local/base:bookworm)"
        )
    });
    assert_eq!(stack.plan().of("ext"), BackendKind::External);
    let body = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/env", stack.url("client").unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    stack.down().await;
    server.abort();
    assert_eq!(body, format!("host.docker.internal:{port} reachable\n"));
}
