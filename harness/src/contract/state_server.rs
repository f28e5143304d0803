//! The reverse bridge: a suite's provider-state handlers served as Pact's state-change endpoint
//! (`harness states serve`), so Pact's own verifier CLI, or any language's verifier, sets up
//! the states against the harness's stack the way the suite does.
//!
//! The endpoint takes what Pact sends: `POST` with `{"state", "params", "action"}` in the body
//! (`action` is `setup` or `teardown`), or the same as query parameters
//! (`--state-change-as-query`). It answers 200 with `{}` (also to a request without a state,
//! which verifiers send for interactions that have none), 400 for a malformed request, and 500
//! with the handler's failure (the state, the phase, the missing or ill-typed
//! parameter, the cause) as text, which the verifier shows with the interaction.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::states::{Handlers, StateCall};
use super::{Contracts, Error};
use crate::settings::Settings;
use crate::testkit::runner::Suite;

const ENV_PROVIDER: &str = "HARNESS_STATES_PROVIDER";
const ENV_LISTEN: &str = "HARNESS_STATES_LISTEN";
const ENV_URL_FILE: &str = "HARNESS_STATES_URL_FILE";

/// A `harness states serve` request, carried to the suite binary in its environment
/// (`HARNESS_STATES_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatesRequest {
    /// The provider whose states are served.
    pub provider: String,
    /// The address to listen on (`127.0.0.1:0`: a free port).
    pub listen: String,
    /// Where the endpoint's URL is written once it listens.
    pub url_file: Option<PathBuf>,
}

impl StatesRequest {
    /// The environment that carries this request to a suite binary.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (ENV_PROVIDER, self.provider.clone()),
            (ENV_LISTEN, self.listen.clone()),
        ];
        if let Some(f) = &self.url_file {
            env.push((ENV_URL_FILE, f.to_string_lossy().into_owned()));
        }
        env
    }

    /// The request carried in the environment, if any (`HARNESS_STATES_PROVIDER` is set).
    pub fn from_env() -> Result<Option<StatesRequest>, Error> {
        let settings = Settings::from_env();
        let Some(provider) = settings.get(ENV_PROVIDER) else {
            return Ok(None);
        };
        let listen = settings
            .get(ENV_LISTEN)
            .unwrap_or_else(|| "127.0.0.1:0".into());
        listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| Error::setting(ENV_LISTEN, format!("{ENV_LISTEN}={listen}: {e}")))?;
        Ok(Some(StatesRequest {
            provider,
            listen,
            url_file: settings.path(ENV_URL_FILE),
        }))
    }
}

impl Contracts {
    /// A suite for `harness states serve`: one trial, `states::serve::<provider>`, that serves
    /// the provider's state handlers against the suite's stack (attached to a running
    /// `harness up` when there is one) until the process is stopped.
    pub fn states_suite(&self, suite: Suite, request: StatesRequest) -> Suite {
        let name = format!("states::serve::{}", request.provider);
        let handlers = self.states.get(&request.provider).cloned();
        let request = Arc::new(request);
        suite.trial(&name, move |ctx| {
            let (handlers, request) = (handlers.clone(), request.clone());
            async move {
                let Some(handlers) = handlers else {
                    anyhow::bail!(
                        "the suite registers no provider states for `{}`",
                        request.provider
                    );
                };
                serve(
                    Handlers {
                        provider: request.provider.clone(),
                        stack: ctx.stack.clone(),
                        handlers,
                    },
                    &request,
                )
                .await
            }
        })
    }
}

/// Serves `handlers` on the request's address until the process ends.
async fn serve(handlers: Handlers, request: &StatesRequest) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&request.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", request.listen))?;
    let url = format!("http://{}/", listener.local_addr()?);
    let app = axum::Router::new()
        .fallback(state_change)
        .with_state(Arc::new(handlers));
    let server = crate::testkit::loopback::LoopbackServer::serve(listener, app);
    if let Some(file) = &request.url_file {
        // Whole or not at all: the command reads it as soon as it exists.
        let partial = file.with_extension("partial");
        std::fs::write(&partial, &url)?;
        std::fs::rename(&partial, file)?;
    }
    // Until a signal ends the process (the runner's handler tears down a stack of its own).
    std::future::pending::<()>().await;
    server.stop().await;
    Ok(())
}

/// One state-change request.
async fn state_change(
    State(handlers): State<Arc<Handlers>>,
    Query(query): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    let ok = || (StatusCode::OK, [("content-type", "application/json")], "{}").into_response();
    let (call, setup) = match parse(&query, &body) {
        Ok(Some(c)) => c,
        Ok(None) => return ok(),
        Err(problem) => return (StatusCode::BAD_REQUEST, problem).into_response(),
    };
    let phase = if setup { "setup" } else { "teardown" };
    let name = call.name.clone();
    match handlers.run(call, setup).await {
        Ok(()) => ok(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "provider state `{name}` ({phase}) of `{}`: {e:#}",
                handlers.provider
            ),
        )
            .into_response(),
    }
}

/// The state, its parameters and whether it is the setup, from the body or else the query;
/// `None` for a request without a state.
fn parse(
    query: &BTreeMap<String, String>,
    body: &[u8],
) -> Result<Option<(StateCall, bool)>, String> {
    let (state, params, action) = if body.iter().all(u8::is_ascii_whitespace) {
        let mut params: Map<String, Value> = query
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let state = params.remove("state");
        let action = params.remove("action");
        (state, params, action)
    } else {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| format!("the state-change body is not JSON: {e}"))?;
        let params = match &v["params"] {
            Value::Object(m) => m.clone(),
            Value::Null => Map::new(),
            other => return Err(format!("`params` must be an object, not {other}")),
        };
        (v.get("state").cloned(), params, v.get("action").cloned())
    };
    let name = match state {
        Some(Value::String(s)) if !s.is_empty() => s,
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(_)) => return Ok(None),
        Some(other) => return Err(format!("`state` must be a string, not {other}")),
    };
    let setup = match action.as_ref().and_then(Value::as_str) {
        None | Some("setup") => true,
        Some("teardown") => false,
        Some(other) => {
            return Err(format!(
                "`action` of state `{name}` is `{other}`: `setup` or `teardown`"
            ))
        }
    };
    Ok(Some((StateCall { name, params }, setup)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_change_is_read_from_the_body_or_the_query() {
        let (call, setup) = parse(
            &BTreeMap::new(),
            br#"{"state": "a payment exists", "params": {"id": "x"}, "action": "teardown"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(call.name, "a payment exists");
        assert_eq!(call.params["id"], "x");
        assert!(!setup);
        let query: BTreeMap<String, String> = [("state", "no payment exists"), ("id", "y")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (call, setup) = parse(&query, b"").unwrap().unwrap();
        assert_eq!((call.name.as_str(), setup), ("no payment exists", true));
        assert_eq!(call.params["id"], "y");
        assert!(parse(&BTreeMap::new(), br#"{"state": "", "params": {}}"#)
            .unwrap()
            .is_none());
        let bad_state = parse(&BTreeMap::new(), br#"{"state": 1}"#).unwrap_err();
        assert!(bad_state.contains("must be a string"), "{bad_state}");
        let bad_action =
            parse(&BTreeMap::new(), br#"{"state": "s", "action": "undo"}"#).unwrap_err();
        assert!(bad_action.contains("`undo`"), "{bad_action}");
    }
}
