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

/// Dispatches provider states to the registered handlers.
pub(crate) struct StateExecutor {
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

impl StateExecutor {
    /// An executor of `provider`'s states with `handlers`.
    pub(crate) fn new(
        provider: &str,
        stack: Arc<Stack>,
        handlers: BTreeMap<String, StateHandler>,
    ) -> StateExecutor {
        StateExecutor {
            provider: provider.to_string(),
            stack,
            handlers,
            errors: Mutex::new(Vec::new()),
        }
    }

    /// The failures of handlers so far, taken out.
    pub(crate) fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner()))
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
