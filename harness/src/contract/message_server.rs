//! The `message` transport: the verifier asks it for each message of a message interaction,
//! and it answers with what the provider's registered producer returns.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Map, Value};

use super::states::{BoxFuture, StateCall};
use super::Error;
use crate::testkit::loopback::LoopbackServer;
use crate::Stack;

pub(crate) type ProducerFn = Arc<
    dyn Fn(Arc<Stack>, MessageRequest) -> BoxFuture<anyhow::Result<ProducedMessage>> + Send + Sync,
>;

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

/// The `message` transport: answers the verifier's `POST {description, providerStates}` with
/// the producer's message, its metadata base64-encoded JSON in `Pact-Message-Metadata`.
pub(crate) struct MessageServer {
    pub(crate) port: u16,
    server: LoopbackServer,
}

#[derive(Clone)]
struct MessageServerState {
    producer: ProducerFn,
    stack: Arc<Stack>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl MessageServer {
    /// Serves `producer` on a port of its own; its failures are added to `errors`.
    pub(crate) async fn start(
        producer: ProducerFn,
        stack: Arc<Stack>,
        errors: Arc<Mutex<Vec<String>>>,
    ) -> Result<MessageServer, Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|cause| Error::MessageTransport { cause })?;
        let port = listener
            .local_addr()
            .map_err(|cause| Error::MessageTransport { cause })?
            .port();
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

    pub(crate) async fn stop(self) {
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
