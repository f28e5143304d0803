//! Plumbing to the Pact verifier: one run of it against a provider, with the provider's state
//! handlers and message producer, reduced to text the rest of the module reports from.

use std::sync::{Arc, Mutex};

use pact_verifier::verification_result::VerificationExecutionResult;
use pact_verifier::{
    FilterInfo, NullRequestFilterExecutor, PactSource, ProviderInfo, ProviderTransport,
    PublishOptions, VerificationOptions,
};
use serde_json::Value;

use super::message_server::MessageServer;
use super::mismatch::render_mismatch;
use super::pacts::Target;
use super::states::{Handlers, StateChange, StateExecutor, StateSource};
use super::{Contracts, Error, REQUEST_TIMEOUT};
use crate::Stack;

/// Where the verifier reaches `provider` of `stack`: its endpoint's host and (only) port.
pub(crate) fn provider_target(stack: &Stack, provider: &str) -> Result<Target, Error> {
    let endpoint = stack.endpoint(provider)?;
    let port = endpoint.port(None).map_err(|reason| Error::NoPort {
        provider: provider.to_string(),
        reason,
    })?;
    Ok(Target {
        host: endpoint.host.clone(),
        port,
    })
}

/// What a verifier run found, reduced to text (the verifier's own result is neither `Send`
/// nor `Sync`).
pub(crate) struct Outcome {
    /// The verifier's verdict.
    pub(crate) passed: bool,
    /// What it printed.
    pub(crate) output: Vec<String>,
    /// One per interaction run.
    pub(crate) interactions: Vec<InteractionOutcome>,
    /// Errors outside any interaction, e.g. a pact that could not be loaded.
    pub(crate) other_errors: Vec<String>,
    /// Failures of provider-state handlers.
    pub(crate) state_errors: Vec<String>,
    /// Failures of the message producer.
    pub(crate) producer_errors: Vec<String>,
}

/// One interaction the verifier ran.
pub(crate) struct InteractionOutcome {
    pub(crate) consumer: String,
    pub(crate) provider: String,
    /// The verifier's description: pact, states and interaction (keys its errors).
    description: String,
    /// The interaction's own description.
    pub(crate) interaction: String,
    pub(crate) states: Vec<String>,
    pub(crate) pending: bool,
    pub(crate) failure: Option<String>,
}

impl Outcome {
    fn from_result(result: VerificationExecutionResult) -> Outcome {
        let interactions: Vec<InteractionOutcome> = result
            .interaction_results
            .iter()
            .map(|r| InteractionOutcome {
                consumer: r.consumer.clone(),
                provider: r.provider.clone(),
                description: r.description.clone(),
                interaction: r.interaction_description.clone(),
                states: r.provider_states.clone(),
                pending: r.pending,
                failure: r.result.as_ref().err().map(render_mismatch),
            })
            .collect();
        // Errors outside any interaction, e.g. a pact that could not be loaded.
        let other_errors = result
            .errors
            .iter()
            .filter(|(what, _)| !interactions.iter().any(|r| &r.description == what))
            .map(|(what, e)| {
                let v: Value = e.into();
                format!(
                    "{what}: {}",
                    v["message"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                )
            })
            .collect();
        Outcome {
            passed: result.result,
            output: result.output,
            interactions,
            other_errors,
            state_errors: Vec::new(),
            producer_errors: Vec::new(),
        }
    }
}

impl Outcome {
    /// Adds each failure of a provider state to the failure of the interaction it was set up
    /// for (the verifier itself only says that "one or more" handlers failed): interactions
    /// run one after the other, each with its states, so the failures are matched in order.
    /// What matches no interaction stays in `state_errors`.
    fn attribute_state_errors(&mut self, errors: Vec<(String, String)>) {
        let mut errors = std::collections::VecDeque::from(errors);
        for r in &mut self.interactions {
            let mut mine = Vec::new();
            while errors
                .front()
                .is_some_and(|(state, _)| r.states.contains(state))
            {
                if let Some((_, e)) = errors.pop_front() {
                    mine.push(format!("  provider state failed: {e}"));
                }
            }
            if mine.is_empty() {
                continue;
            }
            let failure = r.failure.get_or_insert_with(String::new);
            for e in mine {
                if !failure.is_empty() {
                    failure.push('\n');
                }
                failure.push_str(&e);
            }
        }
        self.state_errors = errors.into_iter().map(|(_, e)| e).collect();
    }
}

/// A verifier run of `provider` at `target`, with the provider's handlers of `contracts`.
pub(crate) struct Verification<'a> {
    pub(crate) contracts: &'a Contracts,
    pub(crate) stack: Arc<Stack>,
    pub(crate) provider: String,
    pub(crate) target: Target,
    /// States from the provider's own state-change URL instead of the handlers.
    pub(crate) state_change: Option<StateChange>,
}

impl Verification<'_> {
    /// Runs the verifier on `sources` (filtered), publishing the results if asked.
    pub(crate) async fn run(
        &self,
        sources: Vec<PactSource>,
        filter: FilterInfo,
        consumers: Vec<String>,
        publish: Option<&PublishOptions>,
    ) -> Result<Outcome, Error> {
        let producer_errors = Arc::new(Mutex::new(Vec::new()));
        let mut transports = vec![ProviderTransport {
            transport: "http".into(),
            port: Some(self.target.port),
            path: None,
            scheme: Some("http".into()),
        }];
        let server = match self.contracts.producers.get(&self.provider) {
            Some(producer) => {
                let server = MessageServer::start(
                    producer.clone(),
                    self.stack.clone(),
                    producer_errors.clone(),
                )
                .await?;
                transports.push(ProviderTransport {
                    transport: "message".into(),
                    port: Some(server.port),
                    path: None,
                    scheme: Some("http".into()),
                });
                Some(server)
            }
            None => None,
        };
        let provider_info = ProviderInfo {
            name: self.provider.clone(),
            host: self.target.host.clone(),
            transports,
            ..ProviderInfo::default()
        };
        let source = match &self.state_change {
            Some(change) => StateSource::Url {
                url: change.resolve(&self.target),
                teardown: change.teardown,
            },
            None => StateSource::Handlers(Handlers {
                provider: self.provider.clone(),
                stack: self.stack.clone(),
                handlers: self
                    .contracts
                    .states
                    .get(&self.provider)
                    .cloned()
                    .unwrap_or_default(),
            }),
        };
        let executor = Arc::new(StateExecutor::new(&self.provider, source));
        let options = VerificationOptions::<NullRequestFilterExecutor> {
            request_timeout: REQUEST_TIMEOUT.as_millis() as u64,
            coloured_output: false,
            broker_request_retries: 2,
            ..VerificationOptions::default()
        };
        let publish = publish.cloned();
        let state_executor = executor.clone();
        // The verifier's future is not `Send` (it holds its results across awaits): drive it on
        // a blocking thread of this runtime, whose reactor and workers it still uses.
        let handle = tokio::runtime::Handle::current();
        let joined = tokio::task::spawn_blocking(move || {
            // The verifier prints its whole report to stdout, `(FAILED)` lines of trials that
            // expect a failure included: capture it, and keep it for a failure message.
            crate::testkit::capture::stdout_of(false, || {
                handle.block_on(async move {
                    pact_verifier::verify_provider_async(
                        provider_info,
                        sources,
                        filter,
                        consumers,
                        &options,
                        publish.as_ref(),
                        &state_executor,
                        None,
                    )
                    .await
                    .map(Outcome::from_result)
                    .map_err(|e| Error::Verifier {
                        context: "running the verifier",
                        cause: format!("{e:#}"),
                    })
                })
            })
        })
        .await;
        if let Some(server) = server {
            server.stop().await;
        }
        let (result, printed) = joined.map_err(|e| Error::Verifier {
            context: "the verifier panicked",
            cause: e.to_string(),
        })?;
        let report: String = match &result {
            Ok(outcome) => outcome.output.iter().map(|l| format!("{l}\n")).collect(),
            Err(_) => String::new(),
        };
        // What else reached stdout meanwhile (other threads) is printed after all.
        crate::testkit::capture::write_back(&printed, &report);
        if !report.trim().is_empty() && !crate::testkit::capture::verbose() {
            crate::testkit::capture::note(&format!(
                "--- the verifier's report ---\n{}",
                report.trim_end()
            ));
        }
        let mut outcome = result?;
        outcome.attribute_state_errors(executor.take_errors());
        outcome.producer_errors =
            std::mem::take(&mut *producer_errors.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(outcome)
    }
}
