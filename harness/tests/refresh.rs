//! An attached suite never tests old code: `harness up --detach` runs a stack, a service is
//! changed on disk (an edited file of a `command` service, a rebuilt `binary`, a changed
//! manifest entry), and the next attach restarts exactly that service in place before
//! anything is tested; with nothing changed, nothing restarts.
//!
//! The services are small HTTP servers in Perl (installed on every Debian machine and in the
//! base image): POST answers with the status the code says, and every answer names the
//! process's start id, so a restart shows.

use std::path::PathBuf;
use std::process::Command;

use harness::settings::Settings;
use harness::{attach, Manifest, Stack};

/// Answers GET with 200 and POST with `STATUS` (from the code, or from the environment when
/// the code says `env`); `X-Start` identifies this start of the process.
const SERVER: &str = r#"use IO::Socket::INET;
my $status = "201";
$status = $ENV{STATUS} if $status eq "env";
my $start = int(rand(1e12));
my $s = IO::Socket::INET->new(LocalAddr => $ENV{BIND_HOST}, LocalPort => $ENV{PORT}, Listen => 16, ReuseAddr => 1) or die "listen: $!";
$SIG{TERM} = sub { exit 0 };
while (my $c = $s->accept) {
  my $line = <$c> // "";
  while (my $h = <$c>) { last if $h =~ /^\r?\n$/ }
  my $code = $line =~ /^POST/ ? $status : 200;
  print $c "HTTP/1.0 $code X\r\nContent-Length: 0\r\nX-Start: $start\r\nConnection: close\r\n\r\n";
  close $c;
}
"#;

/// A project of its own in a temporary directory (with a `Cargo.toml`, so its `target/` holds
/// the state file and the `binary` services), removed on drop after its stack is down.
struct Project {
    dir: PathBuf,
    manifest: PathBuf,
    up: bool,
}

impl Project {
    fn new(name: &str, manifest: &str) -> Project {
        let dir = std::env::temp_dir().join(format!("harness-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("app")).unwrap();
        std::fs::create_dir_all(dir.join("target/debug")).unwrap();
        std::fs::write(dir.join("Cargo.toml"), "# a project of its own\n").unwrap();
        let path = dir.join("stack.toml");
        // Commands run in the service's run directory: files of the project by absolute path.
        std::fs::write(
            &path,
            manifest.replace("DIR/", &format!("{}/", dir.display())),
        )
        .unwrap();
        Project {
            dir,
            manifest: path,
            up: false,
        }
    }

    fn write(&self, file: &str, text: &str) {
        let path = self.dir.join(file);
        // A new file (not rewritten in place), as cargo and editors do.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    fn harness(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_harness"))
            .arg("--manifest")
            .arg(&self.manifest)
            .args(args)
            .current_dir(&self.dir)
            .env_remove("HARNESS_BIN_DIR")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("HARNESS_ATTACH")
            .output()
            .expect("the harness binary runs")
    }

    fn up(&mut self, backend: &str) {
        let out = self.harness(&["up", "--detach", "--no-build", "--backend", backend]);
        assert!(
            out.status.success(),
            "harness up --detach failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.up = true;
    }

    /// Attaches as a suite does: refresh what changed, then a handle on the stack.
    async fn attach(&self) -> (Stack, Vec<String>) {
        let manifest = Manifest::load(&self.manifest).unwrap();
        let state =
            attach::find(&manifest, &Settings::from_env()).expect("the detached stack is found");
        let (state, refreshed) = attach::refreshed(&manifest, state, &Settings::from_env())
            .await
            .unwrap_or_else(|e| panic!("the stack could not be refreshed: {e}"));
        let stack = Stack::attach(manifest, state, &Settings::from_env()).unwrap();
        (stack, refreshed.iter().map(|r| r.to_string()).collect())
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if self.up {
            let _ = self.harness(&["down"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// POSTs to a service: (status, start id).
async fn post(stack: &Stack, service: &str) -> (u16, String) {
    let url = stack.url(service).unwrap();
    let response = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let start = response
        .headers()
        .get("x-start")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (response.status().as_u16(), start)
}

fn only(refreshed: &[String], service: &str, reason: &str) {
    assert_eq!(refreshed.len(), 1, "one refresh expected: {refreshed:?}");
    let line = &refreshed[0];
    assert!(
        line.starts_with(&format!("refreshed {service}: {reason} (")) && line.ends_with(" ms)"),
        "{line}"
    );
}

const NATIVE: &str = r#"
[stack]
name = "refresh-native"

[services.cmd]
kind = "service"
command = ["./app/server.pl"]
ports = { http = 8080 }
paths = ["app"]
probe = { type = "http", path = "/" }
env = { PORT = "{{ self.port.http }}", BIND_HOST = "{{ self.host }}" }

[services.bin]
kind = "service"
binary = "bin-server"
ports = { http = 8080 }
probe = { type = "http", path = "/" }
env = { PORT = "{{ self.port.http }}", BIND_HOST = "{{ self.host }}" }
"#;

fn program(status: &str) -> String {
    SERVER.replace(
        r#"my $status = "201";"#,
        &format!(r#"my $status = "{status}";"#),
    )
}

fn executable(status: &str) -> String {
    format!("#!/usr/bin/env perl\n{}", program(status))
}

#[tokio::test(flavor = "multi_thread")]
async fn native_services_that_changed_are_refreshed_and_nothing_else() {
    let mut p = Project::new("refresh-native", NATIVE);
    p.write("app/server.pl", &executable("201"));
    p.write("target/debug/bin-server", &executable("201"));
    p.up("native");

    let (stack, refreshed) = p.attach().await;
    assert!(refreshed.is_empty(), "nothing changed: {refreshed:?}");
    let (status, cmd_start) = post(&stack, "cmd").await;
    assert_eq!(status, 201);
    let (status, bin_start) = post(&stack, "bin").await;
    assert_eq!(status, 201);

    // An edited file of the `command` service: that service, and only it, restarts.
    p.write("app/server.pl", &executable("200"));
    let (stack, refreshed) = p.attach().await;
    only(&refreshed, "cmd", "files and program changed");
    let (status, start) = post(&stack, "cmd").await;
    assert_eq!(status, 200, "the refreshed stack runs the changed code");
    assert_ne!(start, cmd_start);
    assert_eq!(post(&stack, "bin").await, (201, bin_start.clone()));

    // Reverted: back to the old behaviour.
    p.write("app/server.pl", &executable("201"));
    let (stack, refreshed) = p.attach().await;
    only(&refreshed, "cmd", "files and program changed");
    let (status, cmd_start) = post(&stack, "cmd").await;
    assert_eq!(status, 201);

    // A rebuilt binary.
    p.write("target/debug/bin-server", &executable("202"));
    let (stack, refreshed) = p.attach().await;
    only(&refreshed, "bin", "binary changed");
    let (status, bin_start) = post(&stack, "bin").await;
    assert_eq!(status, 202);
    assert_eq!(post(&stack, "cmd").await, (201, cmd_start.clone()));

    // Nothing changed: nothing restarts.
    let (stack, refreshed) = p.attach().await;
    assert!(refreshed.is_empty(), "nothing changed: {refreshed:?}");
    assert_eq!(post(&stack, "cmd").await, (201, cmd_start));
    assert_eq!(post(&stack, "bin").await, (202, bin_start));

    // A changed manifest entry is a change too.
    let edited = std::fs::read_to_string(&p.manifest).unwrap().replace(
        r#"binary = "bin-server""#,
        "binary = \"bin-server\"\nargs = [\"-w\"]",
    );
    std::fs::write(&p.manifest, edited).unwrap();
    let (_stack, refreshed) = p.attach().await;
    only(&refreshed, "bin", "config changed");
}

fn docker_ready(image: &str) -> bool {
    let present = Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present && std::env::var_os("CI").is_some() {
        panic!("CI has a Docker engine and builds the images; `{image}` is missing");
    }
    present
}

const BASE_IMAGE: &str = "harness-local/base:bookworm";

#[tokio::test(flavor = "multi_thread")]
async fn a_container_whose_entry_changed_is_recreated() {
    if !docker_ready(BASE_IMAGE) {
        eprintln!("skipped: no Docker engine with {BASE_IMAGE} (fixtures/images/build.sh base)");
        return;
    }
    let server = SERVER.replace(r#"my $status = "201";"#, r#"my $status = "env";"#);
    let manifest = format!(
        r#"
[stack]
name = "refresh-container"

[services.app]
kind = "service"
image = "{BASE_IMAGE}"
args = ["perl", "-e", {server:?}]
ports = {{ http = 8080 }}
probe = {{ type = "http", path = "/" }}
env = {{ PORT = "8080", BIND_HOST = "0.0.0.0", STATUS = "201" }}
"#
    );
    let mut p = Project::new("refresh-container", &manifest);
    p.up("container");
    let (stack, refreshed) = p.attach().await;
    assert!(refreshed.is_empty(), "{refreshed:?}");
    let (status, first) = post(&stack, "app").await;
    assert_eq!(status, 201);

    std::fs::write(
        &p.manifest,
        manifest.replace(r#"STATUS = "201""#, r#"STATUS = "200""#),
    )
    .unwrap();
    let (stack, refreshed) = p.attach().await;
    only(&refreshed, "app", "config changed");
    let (status, second) = post(&stack, "app").await;
    assert_eq!(status, 200, "the container runs the changed entry");
    assert_ne!(first, second);

    std::fs::write(&p.manifest, &manifest).unwrap();
    let (stack, refreshed) = p.attach().await;
    only(&refreshed, "app", "config changed");
    assert_eq!(post(&stack, "app").await.0, 201);
    let (stack, refreshed) = p.attach().await;
    assert!(refreshed.is_empty(), "{refreshed:?}");
    assert_eq!(post(&stack, "app").await.0, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retagged_image_changes_the_fingerprint() {
    // Two images with different ids: the base, and the base with a label of this test's
    // (committed from a container that never ran: no layer is written).
    if !docker_ready(BASE_IMAGE) {
        eprintln!("skipped: no Docker engine with the local images");
        return;
    }
    let tag = format!("harness-refresh-test/app:{}", std::process::id());
    let other = format!("harness-refresh-test/other:{}", std::process::id());
    let created = Command::new("docker")
        .args(["create", BASE_IMAGE, "true"])
        .output()
        .unwrap();
    let container = String::from_utf8_lossy(&created.stdout).trim().to_string();
    assert!(Command::new("docker")
        .args([
            "commit",
            "--change",
            &format!("LABEL org.harness.test={}", std::process::id()),
            &container,
            &other
        ])
        .output()
        .unwrap()
        .status
        .success());
    let _ = Command::new("docker").args(["rm", &container]).output();
    let retag = |from: &str| {
        assert!(Command::new("docker")
            .args(["tag", from, &tag])
            .status()
            .unwrap()
            .success());
    };
    let p = Project::new(
        "refresh-image",
        &format!("[stack]\nname = \"refresh-image\"\n\n[services.app]\nkind = \"service\"\nimage = \"{tag}\"\nports = {{ http = 80 }}\n"),
    );
    let manifest = Manifest::load(&p.manifest).unwrap();
    let fingerprint = |m: &Manifest| {
        let m = m.clone();
        async move {
            harness::fingerprint::Fingerprinter::new()
                .all(&m, harness::backend::BackendKind::Container)
                .await
        }
    };
    retag(BASE_IMAGE);
    let before = fingerprint(&manifest).await;
    retag(&other);
    let after = fingerprint(&manifest).await;
    let _ = Command::new("docker").args(["rmi", &tag, &other]).output();
    assert_eq!(
        harness::fingerprint::changes(&before, &after),
        vec![("app".to_string(), "image changed".to_string())]
    );
}

#[test]
fn up_watch_refreshes_a_rebuilt_binary_by_itself() {
    use std::io::{BufRead as _, BufReader};
    let p = Project::new("refresh-watch", NATIVE);
    p.write("app/server.pl", &executable("201"));
    p.write("target/debug/bin-server", &executable("201"));
    let mut up = Command::new(env!("CARGO_BIN_EXE_harness"))
        .arg("--manifest")
        .arg(&p.manifest)
        .args(["up", "--watch", "--no-build", "--backend", "native"])
        .env_remove("HARNESS_BIN_DIR")
        .env_remove("CARGO_TARGET_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(up.id() as i32);
    // Ends the stack whatever happens below.
    struct Stop(nix::unistd::Pid);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGINT);
        }
    }
    let stop = Stop(pid);
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = up.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let wait_for = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!(
            "`harness up --watch` did not print `{what}` within 30 s; it printed:\n{}",
            seen.join("\n")
        );
    };
    wait_for("watching for changes");
    p.write("target/debug/bin-server", &executable("203"));
    let line = wait_for("refreshed bin:");
    assert!(
        line.starts_with("refreshed bin: binary changed ("),
        "{line}"
    );
    let manifest = Manifest::load(&p.manifest).unwrap();
    let state = attach::find(&manifest, &Settings::from_env()).expect("the watched stack is found");
    let status = raw_post(&state.endpoints["bin"].address().unwrap());
    assert_eq!(status, 203, "the watched stack runs the rebuilt binary");
    drop(stop);
    let status = up.wait().unwrap();
    assert_eq!(status.code(), Some(130), "Ctrl-C ends `up` with 130");
    assert!(
        attach::find(&manifest, &Settings::from_env()).is_none(),
        "the state file is removed"
    );
}

/// POSTs over a plain socket (for tests without a runtime); returns the status code.
fn raw_post(address: &str) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(address).unwrap();
    conn.write_all(b"POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_runs_the_binary_as_built_and_a_rebuild_refreshes_it() {
    if !docker_ready(BASE_IMAGE) {
        eprintln!("skipped: no Docker engine with {BASE_IMAGE} (fixtures/images/build.sh base)");
        return;
    }
    let mut p = Project::new(
        "refresh-container-bin",
        &format!(
            r#"
[stack]
name = "refresh-container-bin"

[services.bin]
kind = "service"
binary = "bin-server"
image = "{BASE_IMAGE}"
ports = {{ http = 8080 }}
probe = {{ type = "http", path = "/" }}
env = {{ PORT = "8080", BIND_HOST = "0.0.0.0" }}
"#
        ),
    );
    p.write("target/debug/bin-server", &executable("201"));
    p.up("container");
    let (stack, refreshed) = p.attach().await;
    assert!(refreshed.is_empty(), "{refreshed:?}");
    let (status, first) = post(&stack, "bin").await;
    assert_eq!(
        status, 201,
        "the image has no such program: the built binary runs"
    );

    p.write("target/debug/bin-server", &executable("200"));
    let (stack, refreshed) = p.attach().await;
    only(&refreshed, "bin", "binary changed");
    let (status, second) = post(&stack, "bin").await;
    assert_eq!(status, 200, "the container runs the rebuilt binary");
    assert_ne!(first, second);

    p.write("target/debug/bin-server", &executable("201"));
    let (stack, refreshed) = p.attach().await;
    only(&refreshed, "bin", "binary changed");
    assert_eq!(post(&stack, "bin").await.0, 201);
}

/// The shop's `payments` as built by cargo, in a project of its own with the servers it needs.
fn shop_payments(name: &str) -> Project {
    let built = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/payments");
    assert!(
        std::path::Path::new(built).is_file(),
        "{built} is missing: `cargo build --workspace --bins` first (./run does)"
    );
    let p = Project::new(
        name,
        r#"
[stack]
name = "refresh-shop"

[services.postgres]
kind = "postgres"
databases = ["payments"]

[services.redis]
kind = "redis"

[services.payments]
kind = "service"
binary = "payments"
image = "harness-local/payments:latest"
ports = { http = 8080 }
depends-on = ["postgres", "redis"]
probe = { type = "http", path = "/health" }

[services.payments.env]
BIND_ADDR = "{{ self.bind.http }}"
DATABASE_URL = "{{ postgres.url.payments }}"
REDIS_URL = "{{ redis.url }}"
"#,
    );
    std::fs::copy(built, p.dir.join("target/debug/payments")).unwrap();
    p
}

/// "Rebuilds" a binary as cargo does: a new file with other content (one byte more, after the
/// ELF image, so it runs the same).
fn rebuild(p: &Project, binary: &str) {
    let path = p.dir.join("target/debug").join(binary);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.push(0);
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

/// Creates a payment; returns its id.
async fn pay(stack: &Stack) -> String {
    let url = format!("{}/payments", stack.url("payments").unwrap());
    let response = reqwest::Client::new()
        .post(&url)
        .header("idempotency-key", uuid_like())
        .json(&serde_json::json!({
            "order_id": "6f9619ff-8b86-d011-b42d-00c04fc964ff",
            "amount": 1234, "currency": "EUR", "card_token": "tok_visa"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201, "POST {url}");
    let body: serde_json::Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

fn uuid_like() -> String {
    format!("refresh-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A rebuilt shop service is restarted in place against the same servers: what it stored
/// before is still there, the servers were not restarted, and nothing else was.
async fn shop_service_refresh(backend: &str) {
    let mut p = shop_payments(&format!("refresh-shop-{backend}"));
    p.up(backend);
    let (stack, refreshed) = p.attach().await;
    assert!(refreshed.is_empty(), "{refreshed:?}");
    let servers = (
        stack.endpoint("postgres").unwrap(),
        stack.endpoint("redis").unwrap(),
    );
    let id = pay(&stack).await;

    rebuild(&p, "payments");
    let (stack, refreshed) = p.attach().await;
    only(&refreshed, "payments", "binary changed");
    assert_eq!(
        (
            stack.endpoint("postgres").unwrap(),
            stack.endpoint("redis").unwrap()
        ),
        servers,
        "the servers are not restarted"
    );
    let url = format!("{}/payments/{id}", stack.url("payments").unwrap());
    let status = reqwest::get(&url).await.unwrap().status().as_u16();
    assert_eq!(
        status, 200,
        "GET {url}: the refreshed payments reads what the old one wrote"
    );
    pay(&stack).await;

    let (_stack, refreshed) = p.attach().await;
    assert!(refreshed.is_empty(), "nothing changed: {refreshed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuilt_shop_service_is_refreshed_natively() {
    shop_service_refresh("native").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuilt_shop_service_is_refreshed_in_containers() {
    if !docker_ready("harness-local/payments:latest") || !docker_ready("harness-local/postgres:15")
    {
        eprintln!("skipped: no Docker engine with the local images");
        return;
    }
    // The servers' images as ./run points at them (fixtures/images/local.env).
    if std::env::var_os("HARNESS_IMAGE_POSTGRES").is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the tests with fixtures/images/local.env sourced"
        );
        eprintln!("skipped: source fixtures/images/local.env for the local server images");
        return;
    }
    shop_service_refresh("container").await;
}
