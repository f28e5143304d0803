//! `harness init`: a starter `stack.toml` (the compose file's meaning when the directory has
//! one) and a starter suite, written beside each other; nothing is overwritten.

use std::path::Path;

use harness::settings::MANIFEST_NAMES;
use harness::{Error, Manifest};

/// The manifest of a directory without a compose file: one server and one service to adapt.
const STARTER_MANIFEST: &str = r#"# The stack the suites run against; `harness check` validates it, `harness up` starts it.
[stack]
name = "app"

[services.postgres]
kind = "postgres"                 # postgres | redis | rabbitmq | mariadb | service

[services.api]
kind = "service"
command = ["./bin/api"]           # how it runs natively (relative to this file)
# image = "api:test"              # how it runs in a container
# build = "./api"                 # or built from a Dockerfile
ports = { http = 8080 }
depends-on = ["postgres"]
probe = { type = "http", path = "/health" }

[services.api.env]
BIND_ADDR = "{{ self.bind.http }}"
DATABASE_URL = "{{ postgres.url }}"
"#;

/// A suite with one trial against the stack (a `harness = false` test target).
const STARTER_SUITE: &str = r#"//! Trials against the stack of the manifest found upwards from here: started once, shared by
//! every trial, stopped at the end (or attached to, when `harness up --detach` runs it).

use std::process::ExitCode;
use std::sync::Arc;

use harness::runner::{Suite, TrialContext};

fn main() -> ExitCode {
    Suite::new("stack").trial("every_service_answers", endpoints).run()
}

async fn endpoints(ctx: Arc<TrialContext>) -> anyhow::Result<()> {
    for (name, endpoint) in ctx.stack.endpoints() {
        // One-shot jobs listen on nothing; every other service answers on its address.
        if !endpoint.ports.is_empty() {
            let address = endpoint.address().map_err(anyhow::Error::msg)?;
            tokio::net::TcpStream::connect(&address)
                .await
                .map_err(|e| anyhow::anyhow!("`{name}` does not answer at {address}: {e}"))?;
        }
    }
    Ok(())
}
"#;

/// Writes `stack.toml` and `tests/stack.rs` in `dir`, and says what to add to Cargo.toml.
pub(crate) fn init(dir: &Path) -> Result<u8, Error> {
    let manifest = dir.join("stack.toml");
    let suite = dir.join("tests/stack.rs");
    for path in [&manifest, &suite] {
        if path.exists() {
            return Err(Error::Usage(format!(
                "{} exists already; `harness init` overwrites nothing (remove it, or edit it)",
                path.display()
            )));
        }
    }
    let compose = MANIFEST_NAMES[1..5]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file());
    let text = match &compose {
        Some(file) => Manifest::load(file)?.to_toml(dir),
        None => STARTER_MANIFEST.to_string(),
    };
    let write = |path: &Path, text: &str| {
        std::fs::create_dir_all(path.parent().unwrap_or(dir))
            .and_then(|()| std::fs::write(path, text))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    };
    write(&manifest, &text)?;
    write(&suite, STARTER_SUITE)?;
    match &compose {
        Some(file) => println!("wrote {} from {}", manifest.display(), file.display()),
        None => println!("wrote {} (adapt its services)", manifest.display()),
    }
    println!(
        "wrote {}; add to Cargo.toml:\n\n[dev-dependencies]\nharness = {{ path = \"<the harness crate>\", default-features = false, features = [\"containers\"] }}\nanyhow = \"1\"\ntokio = {{ version = \"1\", features = [\"full\"] }}\n\n[[test]]\nname = \"stack\"\npath = \"tests/stack.rs\"\nharness = false\n\nthen `cargo test --test stack`",
        suite.display()
    );
    Ok(harness::exit_code::OK)
}
