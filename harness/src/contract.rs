//! Consumer-driven contracts, provider side: Pact files verified against the real provider of a
//! running stack.
//!
//! - Pact files come from a directory (`contracts/`) or a Pact Broker.
//! - [`Contracts::add_trials`] turns every interaction of every pact file into its own trial,
//!   named `<consumer>-><provider>::<description>` under the suite's name, so
//!   `cargo test -- declined` verifies one interaction.
//! - Provider states are async closures registered per provider and state name
//!   ([`Contracts::state`]); they set data up directly in the provider's own stores through the
//!   [`Stack`]. An interaction whose state has no handler fails, naming the state.
//! - Message interactions: the verifier asks a `message` transport for each message. The
//!   harness serves that transport itself on 127.0.0.1 and answers with what the provider's
//!   registered producer ([`Contracts::message_producer`]) returns — typically a message the
//!   real provider published and the producer captured.
//! - [`Contracts::verify_provider`] verifies a provider against all its pacts at once (from a
//!   directory or a broker, optionally publishing the results) and returns a summary: this is
//!   what `harness verify` runs (see [`VerifyRequest`]).
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

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::panic::RefUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use base64::Engine as _;
use pact_models::http_utils::HttpAuth;
use pact_models::interaction::Interaction;
use pact_models::pact::Pact;
use pact_models::provider_states::ProviderState;
use pact_verifier::callback_executors::{ProviderStateError, ProviderStateExecutor};
use pact_verifier::verification_result::VerificationExecutionResult;
use pact_verifier::{
    FilterInfo, MismatchResult, NullRequestFilterExecutor, PactSource, ProviderInfo,
    ProviderTransport, PublishOptions, VerificationOptions,
};
use serde_json::{Map, Value};

use crate::error::Error;
use crate::manifest::{Launch, Manifest};
use crate::runner::Suite;
use crate::stack::Stack;
use crate::template::Template;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type StateFn = Arc<dyn Fn(Arc<Stack>, StateCall) -> BoxFuture<anyhow::Result<()>> + Send + Sync>;
type ProducerFn = Arc<
    dyn Fn(Arc<Stack>, MessageRequest) -> BoxFuture<anyhow::Result<ProducedMessage>> + Send + Sync,
>;

/// Lines of the provider's log shown with a failed interaction.
pub const PROVIDER_LOG_LINES: usize = 20;

/// How long the verifier waits for the provider (and for a message producer) per request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Turns off the Pact libraries' usage reporting for this process. Call it first thing in
/// `main`, before threads exist (setting the environment is only sound then).
pub fn do_not_track() {
    std::env::set_var("PACT_DO_NOT_TRACK", "true");
}

/// A provider state as a handler sees it: its name and parameters.
#[derive(Debug, Clone)]
pub struct StateCall {
    /// The state's name, e.g. `a payment with id X exists`.
    pub name: String,
    /// Its parameters.
    pub params: Map<String, Value>,
}

impl StateCall {
    fn from_state(state: &ProviderState) -> StateCall {
        StateCall {
            name: state.name.clone(),
            params: state
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// A string parameter; an error names the state and the parameter.
    pub fn str(&self, key: &str) -> anyhow::Result<&str> {
        self.params.get(key).and_then(Value::as_str).ok_or_else(|| {
            anyhow!(
                "provider state `{}` needs a string parameter `{key}`; it has {}",
                self.name,
                Value::Object(self.params.clone())
            )
        })
    }

    /// A parameter deserialised into `T`.
    pub fn param<T: serde::de::DeserializeOwned>(&self, key: &str) -> anyhow::Result<T> {
        let v = self
            .params
            .get(key)
            .ok_or_else(|| anyhow!("provider state `{}` has no parameter `{key}`", self.name))?;
        serde_json::from_value(v.clone())
            .with_context(|| format!("parameter `{key}` of provider state `{}`", self.name))
    }
}

/// What the verifier asks a message producer for.
#[derive(Debug, Clone)]
pub struct MessageRequest {
    /// The interaction's description.
    pub description: String,
    /// Its provider states.
    pub states: Vec<StateCall>,
}

/// A message as a provider produced it.
#[derive(Debug, Clone)]
pub struct ProducedMessage {
    /// The body.
    pub contents: Vec<u8>,
    /// Its content type.
    pub content_type: String,
    /// Metadata (e.g. AMQP properties and headers), compared with the contract's.
    pub metadata: Map<String, Value>,
}

#[derive(Clone)]
struct StateHandler {
    setup: StateFn,
    teardown: Option<StateFn>,
}

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
    /// Contracts whose pact files are in `dir` (the `*.json` files directly in it). Also turns
    /// off the Pact libraries' usage reporting ([`do_not_track`]): create it early in `main`.
    pub fn new(dir: impl Into<PathBuf>) -> Contracts {
        do_not_track();
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
    pub fn pacts(&self) -> anyhow::Result<Vec<PactFile>> {
        load_pacts(&self.dir)
    }

    /// Adds one trial per interaction of every pact file, named
    /// `<consumer>-><provider>::<description>`; each verifies that interaction alone (the
    /// verifier's description filter, anchored). A directory that cannot be read becomes one
    /// failing trial, `load pact files`.
    pub fn add_trials(&self, mut suite: Suite) -> Suite {
        let pacts = match self.pacts() {
            Ok(p) => p,
            Err(e) => {
                let message = format!("{e:#}");
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
                            .await
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
    ) -> anyhow::Result<()> {
        let endpoint = stack.endpoint(&pact.provider)?;
        let port = endpoint
            .port(None)
            .map_err(|e| anyhow!("provider `{}`: {e}", pact.provider))?;
        let target = Target {
            host: endpoint.host.clone(),
            port,
        };
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
    ) -> anyhow::Result<()> {
        let count = pact
            .interactions
            .iter()
            .filter(|i| i.description == description)
            .count();
        if count == 0 {
            anyhow::bail!("{} has no interaction `{description}`", pact.path.display());
        }
        let run = Verification {
            contracts: self,
            stack: stack.clone(),
            provider: pact.provider.clone(),
            target: target.clone(),
        };
        let filter = FilterInfo::Description(format!("^{}$", regex::escape(description)));
        let source = PactSource::File(pact.path.to_string_lossy().into_owned());
        let outcome = run
            .run(vec![source], filter, vec![pact.consumer.clone()], None)
            .await?;
        let results = &outcome.interactions;
        if results.len() != count {
            anyhow::bail!(
                "expected to verify {count} interaction(s) `{description}` of {}, the verifier ran {}:\n{}",
                pact.path.display(),
                results.len(),
                outcome.output.join("\n")
            );
        }
        if outcome.passed && results.iter().all(|r| r.failure.is_none()) {
            return Ok(());
        }
        let mut report = format!(
            "contract `{} -> {}`: interaction `{description}` does not hold against `{}` at http://{}:{}",
            pact.consumer, pact.provider, pact.provider, target.host, target.port
        );
        for r in results {
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
        let lines = stack
            .logs(&pact.provider, PROVIDER_LOG_LINES)
            .await
            .unwrap_or_default();
        if !lines.is_empty() {
            let _ = write!(
                report,
                "\n--- last {} lines of `{}` ---\n{}",
                lines.len(),
                pact.provider,
                lines.join("\n")
            );
        }
        Err(anyhow!(report))
    }

    /// Verifies `request.provider` against all its pacts (from the directory or a broker),
    /// publishing the results if asked; returns the summary. The provider's HTTP API is the
    /// one of `stack`.
    pub async fn verify_provider(
        &self,
        stack: Arc<Stack>,
        request: &VerifyRequest,
    ) -> anyhow::Result<VerifyReport> {
        let provider = request.provider.clone();
        let endpoint = stack.endpoint(&provider)?;
        let port = endpoint
            .port(None)
            .map_err(|e| anyhow!("provider `{provider}`: {e}"))?;
        let run = Verification {
            contracts: self,
            stack: stack.clone(),
            provider: provider.clone(),
            target: Target {
                host: endpoint.host.clone(),
                port,
            },
        };
        let source = match &request.broker {
            None => PactSource::Dir(self.dir.to_string_lossy().into_owned()),
            Some(b) => {
                let selectors = pact_verifier::selectors::json_to_selectors(b.selectors.clone());
                if selectors.len() != b.selectors.len() {
                    anyhow::bail!(
                        "a consumer version selector is not valid: {}",
                        Value::Array(b.selectors.clone())
                    );
                }
                PactSource::BrokerWithDynamicConfiguration {
                    provider_name: provider.clone(),
                    broker_url: b.url.clone(),
                    enable_pending: b.enable_pending,
                    include_wip_pacts_since: b.include_wip_pacts_since.clone(),
                    provider_tags: vec![],
                    provider_branch: request.publish.as_ref().and_then(|p| p.branch.clone()),
                    selectors,
                    auth: b.token.clone().map(HttpAuth::Token),
                    links: vec![],
                }
            }
        };
        let publish = request.publish.as_ref().map(|p| PublishOptions {
            provider_version: Some(p.provider_version.clone()),
            build_url: p.build_url.clone(),
            provider_tags: vec![],
            provider_branch: p.branch.clone(),
        });
        let outcome = run
            .run(vec![source], FilterInfo::None, vec![], publish.as_ref())
            .await?;
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
        Ok(VerifyReport {
            provider,
            rows: rows.into_values().collect(),
            failures,
            ok,
            interactions: outcome.interactions.len(),
        })
    }

    /// A suite for `harness verify`: the candidate (if any) replaces the provider's launch in
    /// the manifest, and one trial, `verify::<provider>`, verifies the provider against all
    /// its pacts, prints the summary table and fails if any interaction failed.
    pub fn verify_suite(&self, suite: Suite, request: VerifyRequest) -> Suite {
        let request = Arc::new(request);
        let name = format!("verify::{}", request.provider);
        let hook = request.clone();
        let contracts = self.clone();
        suite
            .configure_manifest(move |m| hook.apply_candidate(m))
            .trial(&name, move |ctx| {
                let (contracts, request) = (contracts.clone(), request.clone());
                async move {
                    println!("\n{}", request.describe(contracts.dir()));
                    let report = contracts
                        .verify_provider(ctx.stack.clone(), &request)
                        .await?;
                    if let Some(path) = std::env::var_os(ENV_REPORT) {
                        let json = serde_json::to_vec_pretty(&report)?;
                        std::fs::write(&path, json)
                            .with_context(|| format!("writing {}", Path::new(&path).display()))?;
                    }
                    println!("\n{}", report.table());
                    if let Some(p) = &request.publish {
                        println!(
                            "verification results published for provider version {}{}",
                            p.provider_version,
                            p.branch
                                .as_deref()
                                .map(|b| format!(" (branch {b})"))
                                .unwrap_or_default()
                        );
                    }
                    if report.ok {
                        Ok(())
                    } else {
                        Err(anyhow!("{}", report.failures.join("\n\n")))
                    }
                }
            })
    }
}

/// Where the verifier reaches a provider's HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// A pact file: who it is between and its interactions.
#[derive(Debug, Clone)]
pub struct PactFile {
    /// The file.
    pub path: PathBuf,
    /// The consumer's name.
    pub consumer: String,
    /// The provider's name.
    pub provider: String,
    /// Its interactions, in file order.
    pub interactions: Vec<InteractionInfo>,
}

/// One interaction of a pact file.
#[derive(Debug, Clone)]
pub struct InteractionInfo {
    /// Its description (unique within the file for trials to be unique).
    pub description: String,
    /// The names of its provider states.
    pub states: Vec<String>,
    /// `true` for a message interaction.
    pub is_message: bool,
}

/// Reads the `*.json` pact files directly in `dir`, sorted by file name.
pub fn load_pacts(dir: &Path) -> anyhow::Result<Vec<PactFile>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the pact directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    paths.sort();
    paths.iter().map(|p| load_pact(p)).collect()
}

/// Reads one pact file.
pub fn load_pact(path: &Path) -> anyhow::Result<PactFile> {
    let pact: Box<dyn Pact + Send + Sync + RefUnwindSafe> = pact_models::pact::read_pact(path)
        .with_context(|| format!("reading the pact file {}", path.display()))?;
    let interactions = pact
        .interactions()
        .iter()
        .map(|i| InteractionInfo {
            description: i.description(),
            states: i.provider_states().iter().map(|s| s.name.clone()).collect(),
            is_message: i.is_message(),
        })
        .collect();
    Ok(PactFile {
        path: path.to_path_buf(),
        consumer: pact.consumer().name,
        provider: pact.provider().name,
        interactions,
    })
}

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

/// What [`Contracts::verify_provider`] found.
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
}

impl VerifyReport {
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

/// Where pacts come from when not from the directory: a Pact Broker.
#[derive(Clone, Default, PartialEq)]
pub struct BrokerSource {
    /// The broker's base URL.
    pub url: String,
    /// Its bearer token ([`VerifyRequest::from_env`]: `PACT_BROKER_TOKEN`). Never printed and
    /// never put in the `HARNESS_VERIFY_*` environment.
    pub token: Option<String>,
    /// Consumer version selectors, as the broker's JSON objects (e.g. `{"mainBranch": true}`).
    pub selectors: Vec<Value>,
    /// Verify pending pacts without failing the run on them.
    pub enable_pending: bool,
    /// Also verify work-in-progress pacts created since this date.
    pub include_wip_pacts_since: Option<String>,
}

impl std::fmt::Debug for BrokerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSource")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("selectors", &self.selectors)
            .field("enable_pending", &self.enable_pending)
            .field("include_wip_pacts_since", &self.include_wip_pacts_since)
            .finish()
    }
}

/// Publishing verification results to the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publish {
    /// The provider version verified (required).
    pub provider_version: String,
    /// The provider's branch.
    pub branch: Option<String>,
    /// A link to the build.
    pub build_url: Option<String>,
}

/// The candidate of the provider to verify, in place of the manifest's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    /// A binary run natively.
    Binary(PathBuf),
    /// An image, for the container backend.
    Image(String),
}

/// A `harness verify` request: carried from the command to the suite binary in the environment
/// (`HARNESS_VERIFY_*`), so the suite's own provider-state handlers and message producers run.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyRequest {
    /// The provider to verify.
    pub provider: String,
    /// Its candidate; `None`: the manifest's.
    pub candidate: Option<Candidate>,
    /// Pacts from a broker; `None`: from the contracts directory.
    pub broker: Option<BrokerSource>,
    /// Publish the results (broker only).
    pub publish: Option<Publish>,
}

const ENV_PROVIDER: &str = "HARNESS_VERIFY_PROVIDER";
const ENV_BINARY: &str = "HARNESS_VERIFY_BINARY";
const ENV_IMAGE: &str = "HARNESS_VERIFY_IMAGE";
const ENV_BROKER_URL: &str = "HARNESS_VERIFY_BROKER_URL";
const ENV_SELECTORS: &str = "HARNESS_VERIFY_SELECTORS";
const ENV_PENDING: &str = "HARNESS_VERIFY_ENABLE_PENDING";
const ENV_WIP: &str = "HARNESS_VERIFY_WIP_SINCE";
const ENV_VERSION: &str = "HARNESS_VERIFY_PROVIDER_VERSION";
const ENV_BRANCH: &str = "HARNESS_VERIFY_BRANCH";
const ENV_BUILD_URL: &str = "HARNESS_VERIFY_BUILD_URL";
const ENV_PUBLISH: &str = "HARNESS_VERIFY_PUBLISH";
/// Where the suite binary writes its [`VerifyReport`] as JSON for `harness verify`.
const ENV_REPORT: &str = "HARNESS_VERIFY_REPORT";

impl VerifyRequest {
    /// Checks the request: publishing needs a broker and a provider version.
    pub fn validate(&self) -> Result<(), Error> {
        if self.provider.trim().is_empty() {
            return Err(Error::Usage("the provider to verify is empty".into()));
        }
        if let Some(p) = &self.publish {
            if p.provider_version.trim().is_empty() {
                return Err(Error::Usage(
                    "publishing verification results needs the provider version: add --provider-version <version>"
                        .into(),
                ));
            }
            if self.broker.is_none() {
                return Err(Error::Usage(
                    "results can only be published to a Pact Broker: add --broker-url <url>".into(),
                ));
            }
        }
        if let Some(Candidate::Binary(b)) = &self.candidate {
            if !b.is_file() {
                return Err(Error::Usage(format!(
                    "the candidate binary {} does not exist",
                    b.display()
                )));
            }
        }
        Ok(())
    }

    /// The environment that carries this request to a suite binary.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![(ENV_PROVIDER, self.provider.clone())];
        match &self.candidate {
            Some(Candidate::Binary(b)) => env.push((ENV_BINARY, b.to_string_lossy().into_owned())),
            Some(Candidate::Image(i)) => env.push((ENV_IMAGE, i.clone())),
            None => {}
        }
        if let Some(b) = &self.broker {
            env.push((ENV_BROKER_URL, b.url.clone()));
            if !b.selectors.is_empty() {
                env.push((ENV_SELECTORS, Value::Array(b.selectors.clone()).to_string()));
            }
            if b.enable_pending {
                env.push((ENV_PENDING, "true".into()));
            }
            if let Some(w) = &b.include_wip_pacts_since {
                env.push((ENV_WIP, w.clone()));
            }
        }
        if let Some(p) = &self.publish {
            env.push((ENV_PUBLISH, "true".into()));
            env.push((ENV_VERSION, p.provider_version.clone()));
            if let Some(b) = &p.branch {
                env.push((ENV_BRANCH, b.clone()));
            }
            if let Some(u) = &p.build_url {
                env.push((ENV_BUILD_URL, u.clone()));
            }
        }
        env
    }

    /// The request carried in the environment, if any (`HARNESS_VERIFY_PROVIDER` is set).
    pub fn from_env() -> Result<Option<VerifyRequest>, Error> {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<VerifyRequest>, Error> {
        let Some(provider) = var(ENV_PROVIDER) else {
            return Ok(None);
        };
        let candidate = match (var(ENV_BINARY), var(ENV_IMAGE)) {
            (Some(_), Some(_)) => {
                return Err(Error::Usage(format!(
                    "set {ENV_BINARY} or {ENV_IMAGE}, not both"
                )))
            }
            (Some(b), None) => Some(Candidate::Binary(b.into())),
            (None, Some(i)) => Some(Candidate::Image(i)),
            (None, None) => None,
        };
        let broker = match var(ENV_BROKER_URL) {
            None => None,
            Some(url) => {
                let selectors = match var(ENV_SELECTORS) {
                    None => vec![],
                    Some(s) => match serde_json::from_str::<Value>(&s) {
                        Ok(Value::Array(a)) => a,
                        Ok(other) => vec![other],
                        Err(e) => {
                            return Err(Error::Usage(format!("{ENV_SELECTORS} is not JSON: {e}")))
                        }
                    },
                };
                Some(BrokerSource {
                    url,
                    token: var("PACT_BROKER_TOKEN"),
                    selectors,
                    enable_pending: var(ENV_PENDING).is_some_and(|v| v == "true" || v == "1"),
                    include_wip_pacts_since: var(ENV_WIP),
                })
            }
        };
        let publish = if var(ENV_PUBLISH).is_some_and(|v| v == "true" || v == "1") {
            Some(Publish {
                provider_version: var(ENV_VERSION).unwrap_or_default(),
                branch: var(ENV_BRANCH),
                build_url: var(ENV_BUILD_URL),
            })
        } else {
            None
        };
        let request = VerifyRequest {
            provider,
            candidate,
            broker,
            publish,
        };
        request.validate()?;
        Ok(Some(request))
    }

    /// One line saying what is verified against what (never the broker token).
    pub fn describe(&self, dir: &Path) -> String {
        let candidate = match &self.candidate {
            None => "as the manifest runs it".to_string(),
            Some(Candidate::Binary(b)) => format!("candidate binary {}", b.display()),
            Some(Candidate::Image(i)) => format!("candidate image {i}"),
        };
        let source = match &self.broker {
            None => format!("the pacts in {}", dir.display()),
            Some(b) => format!("the pacts of the broker at {}", b.url),
        };
        format!(
            "verifying `{}` ({candidate}) against {source}",
            self.provider
        )
    }

    /// Replaces the provider's launch in the manifest with the candidate's.
    pub fn apply_candidate(&self, manifest: &mut Manifest) -> Result<(), Error> {
        let Some(candidate) = &self.candidate else {
            return Ok(());
        };
        let service = manifest
            .services
            .iter_mut()
            .find(|s| s.name == self.provider)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "the manifest has no service `{}` to verify",
                    self.provider
                ))
            })?;
        match candidate {
            Candidate::Binary(path) => {
                let text = path.to_string_lossy();
                let program = Template::parse(&text).map_err(|e| {
                    Error::Usage(format!("the candidate binary path {text}: {}", e.message))
                })?;
                service.launch = Launch::Command(vec![program]);
            }
            Candidate::Image(image) => {
                // Only a container backend runs an image: natively the service now has nothing
                // to run, which the backend reports before anything starts.
                service.image = Some(image.clone());
                service.launch = Launch::ImageOnly;
            }
        }
        Ok(())
    }
}

/// How `harness verify` runs a suite binary: which cargo package and test target hold the
/// shop-specific state handlers and producers.
#[derive(Debug, Clone)]
pub struct SuiteTarget {
    /// The cargo package (`-p`).
    pub package: String,
    /// The test target (`--test`).
    pub test: String,
}

/// `harness verify`: validates the request, runs the suite binary with the request in its
/// environment (so its own state handlers and producers are used), prints the summary table
/// the suite reports back, and returns the exit code: 0 verified, 1 an interaction failed, or
/// the suite's own code when the stack could not be started (2–5).
pub fn run_verify_command(
    request: &VerifyRequest,
    target: &SuiteTarget,
    manifest: &Path,
) -> Result<u8, Error> {
    crate::cleanup::install_signal_handler();
    request.validate()?;
    let mut request = request.clone();
    if let Some(Candidate::Binary(b)) = &request.candidate {
        let abs = std::fs::canonicalize(b)
            .map_err(|e| Error::io(format!("resolving {}", b.display()), e))?;
        request.candidate = Some(Candidate::Binary(abs));
    }
    let manifest = std::fs::canonicalize(manifest).unwrap_or_else(|_| manifest.to_path_buf());
    let report_path = std::env::temp_dir().join(format!(
        "harness-verify-{}-{}.json",
        request.provider,
        std::process::id()
    ));
    let _ = std::fs::remove_file(&report_path);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    // In verify mode the suite holds the one trial `<suite>::verify::<provider>`.
    cmd.args([
        "test",
        "--quiet",
        "-p",
        &target.package,
        "--test",
        &target.test,
        "--",
    ])
    .arg(format!("::verify::{}", request.provider))
    .env("HARNESS_MANIFEST", &manifest)
    .env(ENV_REPORT, &report_path)
    .env("PACT_DO_NOT_TRACK", "true");
    if let Some(dir) = manifest.parent() {
        cmd.current_dir(dir);
    }
    for (k, v) in request.to_env() {
        cmd.env(k, v);
    }
    let what = format!("`cargo test -p {} --test {}`", target.package, target.test);
    // In a group of its own, registered: a signal to `harness verify` reaches the suite, whose
    // own handler then stops its stack.
    let status = crate::cleanup::status_in_own_group(&mut cmd)
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    let report = std::fs::read(&report_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<VerifyReport>(&bytes).ok());
    let _ = std::fs::remove_file(&report_path);
    match (report, status.code()) {
        (_, Some(c @ 2..=5)) => Ok(c as u8),
        (Some(report), _) => {
            println!("\nharness verify {}:\n{}", report.provider, report.table());
            Ok(if report.ok && status.success() {
                crate::exit_code::OK
            } else {
                crate::exit_code::TESTS_FAILED
            })
        }
        (None, _) if status.success() => Err(Error::Usage(format!(
            "{what} ran no verification of `{}`: its main must hand a HARNESS_VERIFY_PROVIDER request to \
             `Contracts::verify_suite` (see harness::contract)",
            request.provider
        ))),
        (None, _) => Ok(crate::exit_code::TESTS_FAILED),
    }
}

/// What a verifier run found, reduced to text (the verifier's own result is neither `Send`
/// nor `Sync`).
struct Outcome {
    passed: bool,
    output: Vec<String>,
    interactions: Vec<InteractionOutcome>,
    other_errors: Vec<String>,
    state_errors: Vec<String>,
    producer_errors: Vec<String>,
}

struct InteractionOutcome {
    consumer: String,
    provider: String,
    /// The verifier's description: pact, states and interaction (keys its errors).
    description: String,
    /// The interaction's own description.
    interaction: String,
    states: Vec<String>,
    pending: bool,
    failure: Option<String>,
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

struct Verification<'a> {
    contracts: &'a Contracts,
    stack: Arc<Stack>,
    provider: String,
    target: Target,
}

impl Verification<'_> {
    async fn run(
        &self,
        sources: Vec<PactSource>,
        filter: FilterInfo,
        consumers: Vec<String>,
        publish: Option<&PublishOptions>,
    ) -> anyhow::Result<Outcome> {
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
        let executor = Arc::new(StateExecutor {
            provider: self.provider.clone(),
            stack: self.stack.clone(),
            handlers: self
                .contracts
                .states
                .get(&self.provider)
                .cloned()
                .unwrap_or_default(),
            errors: Mutex::new(Vec::new()),
        });
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
            crate::capture::stdout_of(false, || {
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
                    .context("running the verifier")
                    .map(Outcome::from_result)
                })
            })
        })
        .await;
        if let Some(server) = server {
            server.stop().await;
        }
        let (result, printed) = joined.map_err(|e| anyhow!("the verifier panicked: {e}"))?;
        let report: String = match &result {
            Ok(outcome) => outcome.output.iter().map(|l| format!("{l}\n")).collect(),
            Err(_) => String::new(),
        };
        // What else reached stdout meanwhile (other threads) is printed after all.
        crate::capture::write_back(&printed, &report);
        if !report.trim().is_empty() && !crate::capture::verbose() {
            crate::capture::note(&format!(
                "--- the verifier's report ---\n{}",
                report.trim_end()
            ));
        }
        let mut outcome = result?;
        outcome.state_errors =
            std::mem::take(&mut *executor.errors.lock().unwrap_or_else(|p| p.into_inner()));
        outcome.producer_errors =
            std::mem::take(&mut *producer_errors.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(outcome)
    }
}

/// A mismatch result as text: each mismatch with its path, expected and actual value, then the
/// expected and actual bodies.
fn render_mismatch(result: &MismatchResult) -> String {
    match result {
        MismatchResult::Error(e, _) => format!("  error: {e}"),
        MismatchResult::Mismatches {
            mismatches,
            expected,
            actual,
            ..
        } => {
            let mut out = String::new();
            for (i, m) in mismatches.iter().enumerate() {
                let j = m.to_json();
                let kind = j["type"].as_str().unwrap_or("Mismatch");
                let at = ["path", "key", "parameter"]
                    .iter()
                    .find_map(|k| j[*k].as_str())
                    .map(|p| format!(" at {p}"))
                    .unwrap_or_default();
                let _ = write!(out, "  {}) {kind}{at}: {}", i + 1, m.description());
                for (label, key) in [("expected", "expected"), ("actual", "actual")] {
                    match &j[key] {
                        Value::Null => {}
                        Value::String(s) if s.is_empty() => {}
                        v => {
                            let v = v
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string());
                            let _ = write!(
                                out,
                                "\n       {label:<8}: {}",
                                v.replace('\n', "\n                  ")
                            );
                        }
                    }
                }
                out.push('\n');
            }
            let (e, a) = (describe(expected.as_ref()), describe(actual.as_ref()));
            let _ = write!(
                out,
                "  expected {}\n  actual   {}",
                e.replace('\n', "\n  "),
                a.replace('\n', "\n  ")
            );
            out
        }
    }
}

/// The part of an interaction that is compared: a response or a message.
fn describe(i: &dyn Interaction) -> String {
    if let Some(http) = i.as_v4_http() {
        let r = &http.response;
        let body = pretty(&r.body.display_string());
        format!(
            "response: status {}, body:\n  {}",
            r.status,
            body.replace('\n', "\n  ")
        )
    } else if let Some(m) = i.as_v4_async_message() {
        let body = pretty(&m.contents.contents.display_string());
        let metadata: Map<String, Value> = m
            .contents
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        format!(
            "message: metadata {}, body:\n  {}",
            Value::Object(metadata),
            body.replace('\n', "\n  ")
        )
    } else {
        pretty(&i.contents_for_verification().display_string())
    }
}

fn pretty(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string())
}

/// Dispatches provider states to the registered handlers.
struct StateExecutor {
    provider: String,
    stack: Arc<Stack>,
    handlers: BTreeMap<String, StateHandler>,
    errors: Mutex<Vec<String>>,
}

impl std::fmt::Debug for StateExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateExecutor")
            .field("provider", &self.provider)
            .field("states", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[async_trait::async_trait]
impl ProviderStateExecutor for StateExecutor {
    async fn call(
        self: Arc<Self>,
        interaction_id: Option<String>,
        provider_state: &ProviderState,
        setup: bool,
        _client: Option<&reqwest_pact::Client>,
    ) -> anyhow::Result<HashMap<String, Value>> {
        if provider_state.name.is_empty() {
            return Ok(HashMap::new());
        }
        let call = StateCall::from_state(provider_state);
        let phase = if setup { "setup" } else { "teardown" };
        let result = match self.handlers.get(&provider_state.name) {
            None if setup => Err(anyhow!(
                "no handler for provider state `{}` of `{}` (known: {})",
                provider_state.name,
                self.provider,
                if self.handlers.is_empty() {
                    "none".to_string()
                } else {
                    self.handlers
                        .keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
            None => Ok(()),
            Some(h) if setup => (h.setup)(self.stack.clone(), call).await,
            Some(h) => match &h.teardown {
                Some(t) => t(self.stack.clone(), call).await,
                None => Ok(()),
            },
        };
        match result {
            Ok(()) => Ok(HashMap::new()),
            Err(e) => {
                let description = format!("`{}` ({phase}): {e:#}", provider_state.name);
                self.errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(description.clone());
                Err(ProviderStateError {
                    description,
                    interaction_id,
                }
                .into())
            }
        }
    }

    fn teardown(&self) -> bool {
        true
    }
}

/// The `message` transport: answers the verifier's `POST {description, providerStates}` with
/// the producer's message, its metadata base64-encoded JSON in `Pact-Message-Metadata`.
struct MessageServer {
    port: u16,
    server: LoopbackServer,
}

/// An HTTP server on a loopback port of its own, stopped gracefully by [`LoopbackServer::stop`]
/// (message transports, broker stand-ins, proxies in tests).
#[derive(Debug)]
pub struct LoopbackServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl LoopbackServer {
    /// Serves `app` on `listener` until stopped.
    pub fn serve(listener: tokio::net::TcpListener, app: axum::Router) -> LoopbackServer {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        LoopbackServer { stop, task }
    }

    /// Stops it and waits (at most 5 s) until it has.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

#[derive(Clone)]
struct MessageServerState {
    producer: ProducerFn,
    stack: Arc<Stack>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl MessageServer {
    async fn start(
        producer: ProducerFn,
        stack: Arc<Stack>,
        errors: Arc<Mutex<Vec<String>>>,
    ) -> anyhow::Result<MessageServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the message transport to 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let state = MessageServerState {
            producer,
            stack,
            errors,
        };
        let app = axum::Router::new().fallback(produce).with_state(state);
        Ok(MessageServer {
            port,
            server: LoopbackServer::serve(listener, app),
        })
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

async fn produce(
    axum::extract::State(state): axum::extract::State<MessageServerState>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::response::IntoResponse as _;
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the request is not JSON: {e}"),
            )
                .into_response()
        }
    };
    let states = request["providerStates"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| StateCall {
                    name: s["name"].as_str().unwrap_or_default().to_string(),
                    params: s["params"].as_object().cloned().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let message_request = MessageRequest {
        description: request["description"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        states,
    };
    let description = message_request.description.clone();
    match (state.producer)(state.stack.clone(), message_request).await {
        Ok(m) => {
            let metadata = base64::engine::general_purpose::STANDARD
                .encode(Value::Object(m.metadata).to_string());
            let mut response = m.contents.into_response();
            let headers = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&m.content_type) {
                headers.insert(header::CONTENT_TYPE, v);
            }
            if let Ok(v) = HeaderValue::from_str(&metadata) {
                headers.insert("pact-message-metadata", v);
            }
            response
        }
        Err(e) => {
            let text = format!("`{description}`: {e:#}");
            state
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(text.clone());
            (StatusCode::INTERNAL_SERVER_ERROR, text).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn no_provider_means_no_request() {
        assert_eq!(VerifyRequest::from_vars(vars(&[])).unwrap(), None);
    }

    #[test]
    fn a_request_round_trips_through_the_environment() {
        let request = VerifyRequest {
            provider: "payments".into(),
            candidate: Some(Candidate::Image("shop/payments:rc1".into())),
            broker: Some(BrokerSource {
                url: "http://127.0.0.1:9292".into(),
                token: None,
                selectors: vec![
                    serde_json::json!({"mainBranch": true}),
                    serde_json::json!({"deployedOrReleased": true}),
                ],
                enable_pending: true,
                include_wip_pacts_since: Some("2024-01-01".into()),
            }),
            publish: Some(Publish {
                provider_version: "1.2.3".into(),
                branch: Some("main".into()),
                build_url: None,
            }),
        };
        let env: Vec<(&str, String)> = request.to_env();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            VerifyRequest::from_vars(vars(&pairs)).unwrap(),
            Some(request)
        );
    }

    #[test]
    fn the_token_stays_out_of_the_request_environment_and_debug_output() {
        let source = BrokerSource {
            url: "http://127.0.0.1:9".into(),
            token: Some("s3cret".into()),
            ..BrokerSource::default()
        };
        let request = VerifyRequest {
            provider: "payments".into(),
            candidate: None,
            broker: Some(source.clone()),
            publish: None,
        };
        assert!(request.to_env().iter().all(|(_, v)| !v.contains("s3cret")));
        assert!(!format!("{request:?}").contains("s3cret"));
        let back = VerifyRequest::from_vars(vars(&[
            (ENV_PROVIDER, "payments"),
            (ENV_BROKER_URL, "http://127.0.0.1:9"),
            ("PACT_BROKER_TOKEN", "s3cret"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(back.broker.unwrap().token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn publishing_without_a_version_is_a_usage_error() {
        let err = VerifyRequest::from_vars(vars(&[
            (ENV_PROVIDER, "payments"),
            (ENV_BROKER_URL, "http://127.0.0.1:9"),
            (ENV_PUBLISH, "true"),
        ]))
        .unwrap_err();
        assert_eq!(err.exit_code(), crate::exit_code::INVALID_INPUT);
        assert!(err.to_string().contains("--provider-version"), "{err}");
    }

    #[test]
    fn publishing_needs_a_broker() {
        let request = VerifyRequest {
            provider: "payments".into(),
            candidate: None,
            broker: None,
            publish: Some(Publish {
                provider_version: "1".into(),
                ..Publish::default()
            }),
        };
        let err = request.validate().unwrap_err();
        assert!(err.to_string().contains("--broker-url"), "{err}");
    }

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

    #[test]
    fn state_parameters_are_typed() {
        let call = StateCall {
            name: "a payment exists".into(),
            params: serde_json::json!({"id": "x", "amount": 5})
                .as_object()
                .cloned()
                .unwrap(),
        };
        assert_eq!(call.str("id").unwrap(), "x");
        assert_eq!(call.param::<i64>("amount").unwrap(), 5);
        let err = call.str("missing").unwrap_err().to_string();
        assert!(
            err.contains("`missing`") && err.contains("a payment exists"),
            "{err}"
        );
    }
}
