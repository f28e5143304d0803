//! # harness
//!
//! A local multi-service integration test harness. A stack manifest (`stack.toml`) names the
//! services of a system under test — PostgreSQL, Redis, RabbitMQ and services of your own —
//! with their dependencies and readiness probes. The harness validates it, starts every
//! service the moment its dependencies are ready, and hands tests a [`Stack`] with endpoints,
//! fault injection and logs. Everything it started is removed afterwards: on success, failure,
//! panic and Ctrl-C.
//!
//! ```no_run
//! use harness::{Manifest, Stack, StackOptions};
//!
//! # async fn demo() -> Result<(), harness::Error> {
//! let manifest = Manifest::load("fixtures/stack.toml".as_ref())?;
//! let stack = Stack::start(manifest, StackOptions::default()).await?;
//! let db_url = stack.url("postgres")?;          // postgres://u…:…@127.0.0.1:…/app
//! stack.pause("redis").await?;                  // fault injection
//! stack.unpause("redis").await?;
//! stack.down().await;                           // or drop it: processes are killed either way
//! # Ok(()) }
//! ```
//!
//! ## Modules
//! - [`manifest`]: the TOML model and its validation (errors with file:line:column and help).
//! - [`template`]: `{{ postgres.url }}` references between services, resolved per backend.
//! - [`graph`]: order, layers, transitive dependents, critical path, Graphviz.
//! - [`scheduler`]: the DAG scheduler.
//! - [`probe`]: readiness probes speaking each protocol.
//! - [`backend`]: native processes, containers on a private network, external endpoints.
//! - [`stack`]: the handle tests use.
//! - [`cleanup`]: teardown on signals and of runs that died.
//! - [`contract`]: consumer-driven contracts verified against a running stack.
//! - [`capture`]: a trial's output, shown only when it fails.
//! - [`events`]: what the engine reports, and the sinks it goes to (nothing by default).
//! - [`bench`]: startup measurements.

#![forbid(unsafe_code)]
#![deny(missing_debug_implementations)]
#![warn(missing_docs)]

pub mod affected;
pub mod amqp;
pub mod attach;
pub mod backend;
pub mod bench;
pub mod build;
pub mod capture;
pub mod cleanup;
pub mod contract;
pub mod endpoint;
pub mod error;
pub mod events;
pub mod fingerprint;
pub mod graph;
pub mod isolation;
pub mod journey;
pub mod manifest;
pub mod model;
pub mod probe;
pub mod report;
pub mod runner;
pub mod scheduler;
pub mod snapshot;
pub mod stack;
pub mod template;

pub use endpoint::Endpoint;
pub use error::{exit_code, Error};
pub use graph::Graph;
pub use manifest::Manifest;
pub use stack::{Stack, StackOptions};

/// Finds the stack manifest: `HARNESS_MANIFEST`, else `stack.toml`, else `fixtures/stack.toml`,
/// looked up from the current directory upwards.
pub fn default_manifest_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("HARNESS_MANIFEST") {
        return p.into();
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    for dir in cwd.ancestors() {
        for candidate in ["stack.toml", "fixtures/stack.toml"] {
            let p = dir.join(candidate);
            if p.is_file() {
                return p;
            }
        }
    }
    "stack.toml".into()
}
