//! Provider states: what a handler is given ([`StateCall`]), the handlers registered per
//! provider, and the executor that dispatches the verifier's state calls to them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context as _};
use pact_models::provider_states::ProviderState;
use pact_verifier::callback_executors::{ProviderStateError, ProviderStateExecutor};
use serde_json::{Map, Value};

use crate::Stack;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub(crate) type StateFn =
    Arc<dyn Fn(Arc<Stack>, StateCall) -> BoxFuture<anyhow::Result<()>> + Send + Sync>;

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

/// The setup and the optional teardown of one provider state.
#[derive(Clone)]
pub(crate) struct StateHandler {
    pub(crate) setup: StateFn,
    pub(crate) teardown: Option<StateFn>,
}

/// The provider's own state-change URL (`--state-change-url`): Pact's
/// `POST {"state", "params", "action"}` before each interaction with states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateChange {
    /// An http(s) URL, or a path (`/_pact/state`) on the provider's own address in the stack.
    pub url: String,
    /// Also call it after each interaction, with `"action": "teardown"`.
    pub teardown: bool,
}

impl StateChange {
    /// The URL to call: a path is taken on the provider's address.
    pub(crate) fn resolve(&self, provider: &super::pacts::Target) -> String {
        if self.url.starts_with('/') {
            format!("http://{}:{}{}", provider.host, provider.port, self.url)
        } else {
            self.url.clone()
        }
    }
}

/// Where an interaction's provider states are set up.
#[derive(Clone)]
pub(crate) enum StateSource {
    /// The Rust handlers the suite registered for the provider.
    Handlers(Handlers),
    /// The provider's own state-change URL: Pact's `POST {"state", "params", "action"}`, and
    /// the teardown too when `teardown` is set.
    Url {
        /// The URL (already resolved against the provider's address).
        url: String,
        /// Whether teardown calls are made.
        teardown: bool,
    },
}

/// The registered handlers of one provider, dispatched by state name: what the verifier's
/// executor and the state-change endpoint of `harness states serve` both call.
#[derive(Clone)]
pub(crate) struct Handlers {
    pub(crate) provider: String,
    pub(crate) stack: Arc<Stack>,
    pub(crate) handlers: BTreeMap<String, StateHandler>,
}

impl Handlers {
    /// Runs the setup (or teardown) of `call`'s state. A missing handler fails the setup,
    /// naming the state and the known ones; a missing teardown is nothing to do.
    pub(crate) async fn run(&self, call: StateCall, setup: bool) -> anyhow::Result<()> {
        match self.handlers.get(&call.name) {
            None if setup && self.handlers.is_empty() => Err(anyhow!(
                "no handler for provider state `{}` of `{}`: no states are registered here; give `harness verify --state-change-url <url>` (the provider's own endpoint, or `harness states serve`), or verify from the cargo workspace whose contracts suite registers them",
                call.name,
                self.provider,
            )),
            None if setup => Err(anyhow!(
                "no handler for provider state `{}` of `{}` (known: {})",
                call.name,
                self.provider,
                self.handlers
                    .keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => Ok(()),
            Some(h) if setup => (h.setup)(self.stack.clone(), call).await,
            Some(h) => match &h.teardown {
                Some(t) => t(self.stack.clone(), call).await,
                None => Ok(()),
            },
        }
    }
}

/// Dispatches the verifier's provider states to their [`StateSource`], keeping each failure
/// (state, phase, cause) for the report.
pub(crate) struct StateExecutor {
    provider: String,
    source: StateSource,
    /// Each failure: the state's name and the account of it.
    errors: Mutex<Vec<(String, String)>>,
}

impl std::fmt::Debug for StateExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("StateExecutor");
        d.field("provider", &self.provider);
        match &self.source {
            StateSource::Handlers(h) => d.field("states", &h.handlers.keys().collect::<Vec<_>>()),
            StateSource::Url { url, teardown } => d.field("url", url).field("teardown", teardown),
        };
        d.finish()
    }
}

impl StateExecutor {
    /// An executor of `provider`'s states from `source`.
    pub(crate) fn new(provider: &str, source: StateSource) -> StateExecutor {
        StateExecutor {
            provider: provider.to_string(),
            source,
            errors: Mutex::new(Vec::new()),
        }
    }

    /// The failures of handlers so far (state, account), in the order they happened, taken
    /// out.
    pub(crate) fn take_errors(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn dispatch(
        &self,
        call: StateCall,
        setup: bool,
    ) -> anyhow::Result<HashMap<String, Value>> {
        match &self.source {
            StateSource::Handlers(handlers) => {
                handlers.run(call, setup).await.map(|()| HashMap::new())
            }
            StateSource::Url {
                teardown: false, ..
            } if !setup => Ok(HashMap::new()),
            StateSource::Url { url, .. } => post_state_change(url, &call, setup).await,
        }
    }
}

/// How long a state-change URL may take to answer.
const STATE_CHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Pact's state-change request: `POST url` with `{"state", "params", "action"}`; a 2xx answers,
/// and a JSON object in its body are values the verifier may inject into the request.
async fn post_state_change(
    url: &str,
    call: &StateCall,
    setup: bool,
) -> anyhow::Result<HashMap<String, Value>> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(STATE_CHANGE_TIMEOUT)
            .build()
            .unwrap_or_default()
    });
    let body = serde_json::json!({
        "state": call.name,
        "params": Value::Object(call.params.clone()),
        "action": if setup { "setup" } else { "teardown" },
    });
    let response = client.post(url).json(&body).send().await.map_err(|e| {
        anyhow!("the state-change URL {url} did not answer ({e}); is the provider (or `harness states serve`) serving it?")
    })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let text = text.trim();
        return Err(anyhow!(
            "the state-change URL {url} answered {status}{}",
            if text.is_empty() {
                String::new()
            } else {
                format!(": {}", text.chars().take(2000).collect::<String>())
            }
        ));
    }
    Ok(match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(values)) => values.into_iter().collect(),
        _ => HashMap::new(),
    })
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
        let phase = if setup { "setup" } else { "teardown" };
        match self
            .dispatch(StateCall::from_state(provider_state), setup)
            .await
        {
            Ok(values) => Ok(values),
            Err(e) => {
                let description = format!("`{}` ({phase}): {e:#}", provider_state.name);
                self.errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((provider_state.name.clone(), description.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;

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
