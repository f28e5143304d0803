//! Pact interactions as trials: one trial per interaction, each verifying that interaction
//! alone against the provider of the stack.

use std::sync::Arc;

use anyhow::anyhow;
use pact_verifier::{FilterInfo, PactSource};

use super::pacts::{PactFile, Target};
use super::report::interaction_failure;
use super::verifier::{provider_target, Verification};
use super::{Contracts, Error, PROVIDER_LOG_LINES};
use crate::testkit::runner::Suite;
use crate::Stack;

impl Contracts {
    /// Adds one trial per interaction of every pact file, named
    /// `<consumer>-><provider>::<description>`; each verifies that interaction alone (the
    /// verifier's description filter, anchored). A directory that cannot be read becomes one
    /// failing trial, `load pact files`.
    pub fn add_trials(&self, mut suite: Suite) -> Suite {
        let pacts = match self.pacts() {
            Ok(p) => p,
            Err(e) => {
                let message = e.to_string();
                return suite.local_trial("load pact files", move || {
                    let message = message.clone();
                    async move { Err(anyhow!(message)) }
                });
            }
        };
        for pact in pacts {
            let pact = Arc::new(pact);
            let mut seen = std::collections::BTreeSet::new();
            for interaction in &pact.interactions {
                // Interactions sharing a description (with different states) are one trial.
                if !seen.insert(interaction.description.clone()) {
                    continue;
                }
                let name = format!(
                    "{}->{}::{}",
                    pact.consumer, pact.provider, interaction.description
                );
                let (contracts, pact, description) =
                    (self.clone(), pact.clone(), interaction.description.clone());
                suite = suite.trial(&name, move |ctx| {
                    let (contracts, pact, description) =
                        (contracts.clone(), pact.clone(), description.clone());
                    async move {
                        contracts
                            .verify_interaction(ctx.stack.clone(), &pact, &description)
                            .await?;
                        Ok(())
                    }
                });
            }
        }
        suite
    }

    /// Verifies one interaction of a pact file against the provider of `stack`.
    pub async fn verify_interaction(
        &self,
        stack: Arc<Stack>,
        pact: &PactFile,
        description: &str,
    ) -> Result<(), Error> {
        let target = provider_target(&stack, &pact.provider)?;
        self.verify_interaction_at(stack, pact, description, target)
            .await
    }

    /// Verifies one interaction against the provider's HTTP API at `target` (e.g. a proxy in
    /// front of the real provider); states and messages still use `stack`.
    pub async fn verify_interaction_at(
        &self,
        stack: Arc<Stack>,
        pact: &PactFile,
        description: &str,
        target: Target,
    ) -> Result<(), Error> {
        let count = pact
            .interactions
            .iter()
            .filter(|i| i.description == description)
            .count();
        if count == 0 {
            return Err(Error::NoInteraction {
                path: pact.path.clone(),
                description: description.to_string(),
            });
        }
        let run = Verification {
            contracts: self,
            stack: stack.clone(),
            provider: pact.provider.clone(),
            target: target.clone(),
            state_change: None,
        };
        let filter = FilterInfo::Description(format!("^{}$", regex::escape(description)));
        let source = PactSource::File(pact.path.to_string_lossy().into_owned());
        let outcome = run
            .run(vec![source], filter, vec![pact.consumer.clone()], None)
            .await?;
        let results = &outcome.interactions;
        if results.len() != count {
            return Err(Error::UnexpectedCount {
                path: pact.path.clone(),
                description: description.to_string(),
                expected: count,
                ran: results.len(),
                output: outcome.output.join("\n"),
            });
        }
        if outcome.passed && results.iter().all(|r| r.failure.is_none()) {
            return Ok(());
        }
        let lines = stack
            .logs(&pact.provider, PROVIDER_LOG_LINES)
            .await
            .unwrap_or_default();
        Err(Error::DoesNotHold {
            consumer: pact.consumer.clone(),
            provider: pact.provider.clone(),
            description: description.to_string(),
            report: interaction_failure(pact, description, &target, &outcome, &lines),
        })
    }
}
