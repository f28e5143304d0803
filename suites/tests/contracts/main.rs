//! Consumer-driven contracts between the shop's services.
//!
//! - `contracts::consumer::<consumer>-><provider>::<description>`: consumer tests. Each drives
//!   the consumer's real client code (orders' `PaymentsClient`, notifications' decoder) against
//!   a Pact mock or the contract's example message. No stack is needed for these.
//! - `contracts::drift::pact files match the consumer tests`: regenerates every pact file and
//!   fails with a diff when `contracts/*.json` differ (`UPDATE_CONTRACTS=1` rewrites them,
//!   never under `CI=true`).
//! - `contracts::<consumer>-><provider>::<description>`: provider verification, one trial per
//!   interaction of the committed pact files, against the real provider of the stack, with
//!   provider states set up directly in the provider's stores.
//! - `contracts::negative::…`: a provider changed on purpose (a proxy renaming a field) fails
//!   the right interaction, naming the field.
//! - `contracts::sources::…`: pacts from elsewhere (`--pacts`), filtered by consumer;
//! - `contracts::broker::…`: pacts fetched from a Pact Broker (a local stand-in) and the
//!   verification results published to it.
//!
//! `harness verify <provider>` runs this binary with `HARNESS_VERIFY_*` set: then it holds one
//! trial, `contracts::verify::<provider>`, that verifies the provider (optionally a candidate
//! build of it, optionally against a broker) and prints a summary table. `harness states serve
//! <provider>` runs it with `HARNESS_STATES_*` set: then its one trial,
//! `contracts::states::serve::<provider>`, serves the provider's states below as a Pact
//! state-change endpoint until stopped.

use std::path::PathBuf;
use std::process::ExitCode;

use harness::contract::{Contracts, StatesRequest, VerifyRequest};
use harness::runner::Suite;

mod broker;
mod consumer;
mod negative;
mod provider;
mod sources;

/// Where the committed pact files live.
fn contracts_dir() -> PathBuf {
    let suites = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    suites.parent().unwrap_or(suites).join("contracts")
}

fn main() -> ExitCode {
    // The Pact libraries report usage unless told not to; set before any thread exists.
    std::env::set_var("PACT_DO_NOT_TRACK", "true");
    let contracts = provider::register(Contracts::new(contracts_dir()));
    // `harness states serve`: the handlers as a state-change endpoint, attached to a running
    // stack when there is one.
    match StatesRequest::from_env() {
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
        Ok(Some(request)) => {
            return contracts
                .states_suite(Suite::new("contracts"), request)
                .run()
        }
        Ok(None) => {}
    }
    // One trial at a time: provider verifications of the same interaction (the broker and the
    // proxy trials repeat some) share its idempotency keys and rows in the provider's stores.
    let suite = Suite::new("contracts").sequential();
    match VerifyRequest::from_env() {
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
        Ok(Some(request)) => return contracts.verify_suite(suite, request).run(),
        Ok(None) => {}
    }
    let suite = consumer::add_trials(suite, contracts_dir());
    let suite = contracts.add_trials(suite);
    let suite = negative::add_trials(suite, contracts.clone());
    let suite = sources::add_trials(suite, contracts.clone());
    broker::add_trials(suite, contracts).run()
}
