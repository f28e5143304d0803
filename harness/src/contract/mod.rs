//! Consumer-driven contracts, provider side: Pact files verified against the real provider of a
//! running stack.
//!
//! - Pact files come from a directory (`contracts/`) or a Pact Broker.
//! - [`Contracts::add_trials`] turns every interaction of every pact file into its own trial,
//!   named `<consumer>-><provider>::<description>` under the suite's name, so
//!   `cargo test -- declined` verifies one interaction.
//! - Provider states are async closures registered per provider and state name
//!   ([`Contracts::state`]); they set data up directly in the provider's own stores through the
//!   [`Stack`]. An interaction whose state has no handler fails, naming the state; a handler's
//!   failure (a missing or ill-typed parameter, its own error) is part of its interaction's
//!   failure. Instead of handlers, a verification may call the provider's own state-change URL
//!   ([`VerifyRequest::state_change`]); and [`Contracts::states_suite`] serves the handlers as
//!   such a URL for other tools (`harness states serve`).
//! - Message interactions: the verifier asks a `message` transport for each message. The
//!   harness serves that transport itself on 127.0.0.1 and answers with what the provider's
//!   registered producer ([`Contracts::message_producer`]) returns — typically a message the
//!   real provider published and the producer captured.
//! - [`Contracts::verify_provider`] verifies a provider against all its pacts at once (from a
//!   directory or a broker, optionally publishing the results) and returns a summary: this is
//!   what `harness verify` runs (see [`VerifyRequest`]; [`run_verify_command`] is the command's
//!   side, the `HARNESS_VERIFY_*` environment carries the request between the two).
//! - Failures are values of one type, [`Error`], with a kind; provider-state handlers and
//!   message producers return `anyhow`, and what they report is part of the failure.
//!
//! ```no_run
//! use harness::contract::Contracts;
//! use harness::runner::Suite;
//!
//! fn main() -> std::process::ExitCode {
//!     let contracts = Contracts::new("../contracts").state("payments", "a payment exists", |_stack, state| async move {
//!         let _id = state.str("id")?;
//!         Ok(())
//!     });
//!     contracts.add_trials(Suite::new("contracts")).run()
//! }
//! ```

mod command;
mod error;
mod message_server;
mod mismatch;
mod pacts;
mod report;
mod request_env;
mod state_server;
mod states;
mod trials;
mod verifier;
mod verify;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The loopback HTTP server, at its former path (it lives in [`crate::testkit::loopback`]).
pub use crate::testkit::loopback::LoopbackServer;
pub use command::{run_states_command, run_verify_command, StatesFrom, SuiteTarget, VerifyOutput};
pub use error::Error;
pub use message_server::{MessageRequest, ProducedMessage};
pub use pacts::{load_pact, load_pacts, InteractionInfo, PactFile, Target};
pub use report::{InteractionResult, SummaryRow, VerifyReport};
pub use state_server::StatesRequest;
pub use states::{StateCall, StateChange};
pub use verify::{BrokerSource, Candidate, Publish, VerifyRequest, VerifySettings};

use crate::Stack;
use message_server::ProducerFn;
use states::{StateFn, StateHandler};

/// Lines of the provider's log shown with a failed interaction.
pub const PROVIDER_LOG_LINES: usize = 20;

/// How long the verifier waits for the provider (and for a message producer) per request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Pact files, provider-state handlers and message producers: everything needed to verify
/// providers. Cheap to clone.
#[derive(Clone)]
pub struct Contracts {
    dir: PathBuf,
    states: BTreeMap<String, BTreeMap<String, StateHandler>>,
    producers: BTreeMap<String, ProducerFn>,
}

impl std::fmt::Debug for Contracts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contracts")
            .field("dir", &self.dir)
            .field(
                "states",
                &self
                    .states
                    .iter()
                    .map(|(p, s)| (p, s.keys().collect::<Vec<_>>()))
                    .collect::<BTreeMap<_, _>>(),
            )
            .field("producers", &self.producers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Contracts {
    /// Contracts whose pact files are in `dir` (the `*.json` files directly in it). The Pact
    /// libraries report usage unless `PACT_DO_NOT_TRACK=true` is in the environment; the
    /// library never changes the environment, so set it in the suite's `main` first thing
    /// (before threads exist) or where the suite is run.
    pub fn new(dir: impl Into<PathBuf>) -> Contracts {
        Contracts {
            dir: dir.into(),
            states: BTreeMap::new(),
            producers: BTreeMap::new(),
        }
    }

    /// The directory of pact files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Registers the setup of a provider state of `provider`.
    pub fn state<F, Fut>(self, provider: &str, name: &str, setup: F) -> Contracts
    where
        F: Fn(Arc<Stack>, StateCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.add_state(
            provider,
            name,
            Arc::new(move |s, c| Box::pin(setup(s, c))),
            None,
        )
    }

    /// Registers the setup and teardown of a provider state of `provider`. The teardown runs
    /// after the interaction was verified, whether it held or not.
    pub fn state_with_teardown<F, Fut, T, TFut>(
        self,
        provider: &str,
        name: &str,
        setup: F,
        teardown: T,
    ) -> Contracts
    where
        F: Fn(Arc<Stack>, StateCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
        T: Fn(Arc<Stack>, StateCall) -> TFut + Send + Sync + 'static,
        TFut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.add_state(
            provider,
            name,
            Arc::new(move |s, c| Box::pin(setup(s, c))),
            Some(Arc::new(move |s, c| Box::pin(teardown(s, c)))),
        )
    }

    fn add_state(
        mut self,
        provider: &str,
        name: &str,
        setup: StateFn,
        teardown: Option<StateFn>,
    ) -> Contracts {
        self.states
            .entry(provider.to_string())
            .or_default()
            .insert(name.to_string(), StateHandler { setup, teardown });
        self
    }

    /// Registers how `provider` produces the messages its message interactions describe.
    pub fn message_producer<F, Fut>(mut self, provider: &str, producer: F) -> Contracts
    where
        F: Fn(Arc<Stack>, MessageRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<ProducedMessage>> + Send + 'static,
    {
        self.producers.insert(
            provider.to_string(),
            Arc::new(move |s, r| Box::pin(producer(s, r))),
        );
        self
    }

    /// The pact files in the directory, sorted by file name.
    pub fn pacts(&self) -> Result<Vec<PactFile>, Error> {
        load_pacts(&self.dir)
    }
}
