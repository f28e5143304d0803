//! What a verification found, as text: the summary of a provider's verification
//! ([`VerifyReport`]), the account of an interaction that does not hold, and the verifier's
//! mismatches.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::pacts::{PactFile, Target};
use super::verifier::Outcome;

/// One row of the summary: a consumer's interactions with the provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SummaryRow {
    /// The consumer.
    pub consumer: String,
    /// The provider.
    pub provider: String,
    /// Interactions that held.
    pub passed: usize,
    /// Interactions that failed.
    pub failed: usize,
    /// Interactions that failed but are pending (they do not fail the run).
    pub pending: usize,
}

/// One interaction of a verification, as the JUnit report and `--json` give it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InteractionResult {
    /// The consumer.
    pub consumer: String,
    /// The provider.
    pub provider: String,
    /// The interaction's description.
    pub interaction: String,
    /// Its provider states.
    pub states: Vec<String>,
    /// Whether its pact is pending (a failure does not fail the run).
    pub pending: bool,
    /// Why it does not hold; `None`: it held.
    pub failure: Option<String>,
}

/// What [`Contracts::verify_provider`](super::Contracts::verify_provider) found.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    /// The provider verified.
    pub provider: String,
    /// One row per consumer, sorted by consumer.
    pub rows: Vec<SummaryRow>,
    /// A readable account of each failure.
    pub failures: Vec<String>,
    /// Whether the verification passed.
    pub ok: bool,
    /// Interactions verified.
    pub interactions: usize,
    /// Each interaction verified, in the order the verifier ran them.
    #[serde(default)]
    pub results: Vec<InteractionResult>,
}

impl VerifyReport {
    /// The summary of a verifier run of `provider` against all its pacts.
    pub(crate) fn from_outcome(provider: String, outcome: &Outcome) -> VerifyReport {
        let mut rows: BTreeMap<String, SummaryRow> = BTreeMap::new();
        let mut failures = Vec::new();
        for r in &outcome.interactions {
            let row = rows
                .entry(r.consumer.clone())
                .or_insert_with(|| SummaryRow {
                    consumer: r.consumer.clone(),
                    provider: r.provider.clone(),
                    ..SummaryRow::default()
                });
            match &r.failure {
                None => row.passed += 1,
                Some(f) => {
                    if r.pending {
                        row.pending += 1;
                    } else {
                        row.failed += 1;
                    }
                    failures.push(format!(
                        "{} -> {}: `{}`{}\n{f}",
                        r.consumer,
                        r.provider,
                        r.interaction,
                        if r.pending {
                            " (pending: does not fail the run)"
                        } else {
                            ""
                        },
                    ));
                }
            }
        }
        failures.extend(outcome.other_errors.iter().cloned());
        failures.extend(
            outcome
                .state_errors
                .iter()
                .map(|e| format!("provider state failed: {e}")),
        );
        failures.extend(
            outcome
                .producer_errors
                .iter()
                .map(|e| format!("message producer failed: {e}")),
        );
        let ok = outcome.passed
            && outcome.other_errors.is_empty()
            && rows.values().all(|r| r.failed == 0);
        VerifyReport {
            provider,
            rows: rows.into_values().collect(),
            failures,
            ok,
            interactions: outcome.interactions.len(),
            results: outcome
                .interactions
                .iter()
                .map(|r| InteractionResult {
                    consumer: r.consumer.clone(),
                    provider: r.provider.clone(),
                    interaction: r.interaction.clone(),
                    states: r.states.clone(),
                    pending: r.pending,
                    failure: r.failure.clone(),
                })
                .collect(),
        }
    }

    /// The verification as JUnit XML, suite `verify-<provider>`: one testcase per interaction,
    /// named `<consumer>-><provider>::<interaction>`; a failure outside any interaction (a
    /// pact that could not be read, a state no interaction claims) is a testcase of its own.
    /// A pending interaction's failure does not fail the run, so its testcase passes and says
    /// so in its name.
    pub fn junit(&self) -> String {
        use crate::testkit::report::{junit, Outcome, TrialRecord};
        let mut records: Vec<TrialRecord> = self
            .results
            .iter()
            .map(|r| {
                let mut name = format!("{}->{}::{}", r.consumer, r.provider, r.interaction);
                let outcome = match &r.failure {
                    Some(_) if r.pending => {
                        name.push_str(" (pending: failed, does not fail the run)");
                        Outcome::Passed
                    }
                    Some(f) => Outcome::Failed(f.clone()),
                    None => Outcome::Passed,
                };
                TrialRecord {
                    name,
                    outcome,
                    duration: std::time::Duration::ZERO,
                }
            })
            .collect();
        let claimed = |f: &String| {
            self.results
                .iter()
                .any(|r| r.failure.is_some() && f.contains(&format!("`{}`", r.interaction)))
        };
        for (i, f) in self.failures.iter().filter(|f| !claimed(f)).enumerate() {
            records.push(TrialRecord {
                name: format!("{}::verification error {}", self.provider, i + 1),
                outcome: Outcome::Failed(f.clone()),
                duration: std::time::Duration::ZERO,
            });
        }
        junit(&format!("verify-{}", self.provider), &records)
    }

    /// The summary as a table.
    pub fn table(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|r| r.consumer.len())
            .max()
            .unwrap_or(0)
            .max("consumer".len());
        let mut out = format!(
            "{:<width$}  {:<12}  {:>6}  {:>6}  {:>7}\n",
            "consumer", "provider", "passed", "failed", "pending"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<width$}  {:<12}  {:>6}  {:>6}  {:>7}",
                r.consumer, r.provider, r.passed, r.failed, r.pending
            );
        }
        if self.rows.is_empty() {
            let _ = writeln!(
                out,
                "(no interactions were verified for `{}`)",
                self.provider
            );
        }
        let _ = write!(
            out,
            "result: {}",
            if self.ok { "verified" } else { "FAILED" }
        );
        out
    }
}

/// Why the interaction `description` of `pact` does not hold against `target`: its states,
/// mismatches, failed states and producers, then the last lines of the provider's log.
pub(crate) fn interaction_failure(
    pact: &PactFile,
    description: &str,
    target: &Target,
    outcome: &Outcome,
    provider_log: &[String],
) -> String {
    let mut report = format!(
        "contract `{} -> {}`: interaction `{description}` does not hold against `{}` at http://{}:{}",
        pact.consumer, pact.provider, pact.provider, target.host, target.port
    );
    for r in &outcome.interactions {
        if !r.states.is_empty() {
            let _ = write!(report, "\n  given: {}", r.states.join(", "));
        }
        if let Some(f) = &r.failure {
            report.push('\n');
            report.push_str(f);
        }
    }
    for e in &outcome.other_errors {
        let _ = write!(report, "\n  {e}");
    }
    for e in &outcome.state_errors {
        let _ = write!(report, "\n  provider state failed: {e}");
    }
    for e in &outcome.producer_errors {
        let _ = write!(report, "\n  message producer failed: {e}");
    }
    if !provider_log.is_empty() {
        let _ = write!(
            report,
            "\n--- last {} lines of `{}` ---\n{}",
            provider_log.len(),
            pact.provider,
            provider_log.join("\n")
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_each_consumer() {
        let report = VerifyReport {
            provider: "payments".into(),
            rows: vec![SummaryRow {
                consumer: "orders".into(),
                provider: "payments".into(),
                passed: 5,
                failed: 1,
                pending: 0,
            }],
            failures: vec![],
            ok: false,
            interactions: 6,
            results: vec![],
        };
        let t = report.table();
        assert!(t.contains("consumer"), "{t}");
        assert!(
            t.lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                == ["orders", "payments", "5", "1", "0"],
            "{t}"
        );
        assert!(t.ends_with("result: FAILED"), "{t}");
    }
}
