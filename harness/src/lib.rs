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
//! ## Layers
//! Each layer imports only the layers below it.
//!
//! | layer | what it holds |
//! |---|---|
//! | [`model`] | server kinds ([`model::kind`]: one module per kind behind one trait, with their wire protocols), endpoints, templates |
//! | [`manifest`] | `stack.toml` read and validated into one model, errors with file:line:column and help |
//! | [`graph`] | dependency order, layers, transitive dependents, critical path, Graphviz |
//! | [`engine`] | scheduler, probes, backends (native, container, external, mixed), the [`Stack`] handle, attach and refresh, cleanup and reaping, errors |
//! | [`testkit`] | the suite runner (libtest-mimic), journeys, snapshots, isolation, reports, affected trials |
//! | [`contract`] | Pact files, provider states, verification, broker, publish |
//! | [`bench`] | startup, compose and suite benchmarks (what `harness bench` runs) |
//!
//! The modules of the engine and the test kit are also re-exported here under their own names
//! (`harness::backend`, `harness::journey`, ...), so paths stay short.

#![forbid(unsafe_code)]
#![deny(missing_debug_implementations)]
#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod bench;
#[cfg(feature = "contracts")]
pub mod contract;
pub mod engine;
pub mod graph;
pub mod manifest;
pub mod model;
pub mod settings;
pub mod testkit;

pub use engine::{
    attach, backend, cleanup, error, events, fingerprint, logs, probe, scheduler, stack, state,
};
pub use model::{endpoint, template};
#[cfg(feature = "contracts")]
pub use testkit::loopback;
#[cfg(feature = "snapshots")]
pub use testkit::snapshot;
pub use testkit::{affected, build, capture, report, runner};
#[cfg(feature = "journeys")]
pub use testkit::{amqp, isolation, journey};

pub use engine::error::{exit_code, Error};
pub use engine::stack::{Stack, StackOptions};
pub use graph::Graph;
pub use manifest::Manifest;
pub use model::endpoint::Endpoint;

/// Finds the stack manifest: `HARNESS_MANIFEST`, else `stack.toml`, else `fixtures/stack.toml`,
/// looked up from the current directory upwards.
pub fn default_manifest_path() -> std::path::PathBuf {
    settings::Settings::from_env().manifest_path()
}
