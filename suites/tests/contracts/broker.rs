//! The broker path of `harness verify`, against a local stand-in of a Pact Broker: it serves
//! the broker's HAL resources (the index with `pb:provider-pacts-for-verification`, the
//! pacts-for-verification POST, the pact content with its `pb:publish-verification-results`
//! and `pb:provider` links, the provider's `pb:branch-version`) and records what is sent to it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context as _};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use harness::contract::{BrokerSource, Contracts, Publish, VerifyRequest};
use harness::loopback::LoopbackServer;
use harness::runner::{Suite, TrialContext};
use serde_json::{json, Value};

use crate::consumer::PAYMENTS;

const TOKEN: &str = "stand-in-token";

pub fn add_trials(suite: Suite, contracts: Contracts) -> Suite {
    suite.trial(
        "broker::pacts from a broker are verified and the results published",
        move |ctx| verify_from_broker(ctx, contracts.clone()),
    )
}

async fn verify_from_broker(ctx: Arc<TrialContext>, contracts: Contracts) -> anyhow::Result<()> {
    let committed = std::fs::read_to_string(contracts.dir().join("orders-payments.json"))
        .context("reading contracts/orders-payments.json")?;
    let broker = StandIn::start(serde_json::from_str(&committed)?).await?;
    let request = VerifyRequest {
        provider: PAYMENTS.into(),
        candidate: None,
        broker: Some(BrokerSource {
            url: broker.url.clone(),
            selectors: vec![
                json!({"mainBranch": true}),
                json!({"deployedOrReleased": true}),
            ],
            enable_pending: true,
            include_wip_pacts_since: Some("2024-01-01".into()),
            token: Some(TOKEN.into()),
        }),
        publish: Some(Publish {
            provider_version: "1.2.3-contract-test".into(),
            branch: Some("main".into()),
            build_url: None,
        }),
        ..VerifyRequest::default()
    };
    let report = contracts
        .verify_provider(ctx.stack.clone(), &request)
        .await?;
    // Shown with the failure if a check below fails.
    harness::capture::note(&report.table());
    let seen = broker
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    broker.stop().await;

    // What the verifier asked for.
    let query = seen
        .iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/for-verification"))
        .context("the verifier never asked for the pacts for verification")?;
    ensure!(
        query.body["consumerVersionSelectors"]
            == json!([{"mainBranch": true}, {"deployedOrReleased": true}]),
        "selectors: {}",
        query.body
    );
    ensure!(
        query.body["includePendingStatus"] == true,
        "pending: {}",
        query.body
    );
    ensure!(
        query.body["includeWipPactsSince"] == "2024-01-01",
        "wip: {}",
        query.body
    );
    ensure!(
        seen.iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "a request to the broker went without the token"
    );

    // The summary: the orders pact held; the pending pact of `mobile` failed without failing
    // the run.
    let rows: BTreeMap<&str, (usize, usize, usize)> = report
        .rows
        .iter()
        .map(|r| (r.consumer.as_str(), (r.passed, r.failed, r.pending)))
        .collect();
    let orders = contracts
        .pacts()?
        .into_iter()
        .find(|p| p.consumer == "orders" && p.provider == PAYMENTS)
        .map(|p| p.interactions.len())
        .unwrap_or_default();
    ensure!(
        rows.get("orders") == Some(&(orders, 0, 0)),
        "orders row: {:?}\n{}",
        rows.get("orders"),
        report.table()
    );
    ensure!(
        rows.get("mobile") == Some(&(0, 0, 1)),
        "mobile row: {:?}\n{}",
        rows.get("mobile"),
        report.table()
    );
    ensure!(
        report.ok,
        "a pending failure must not fail the run:\n{}",
        report.failures.join("\n")
    );

    // What it published.
    let results: Vec<&Seen> = seen
        .iter()
        .filter(|r| r.path.ends_with("/verification-results"))
        .collect();
    ensure!(
        results.len() == 2,
        "expected a result per pact, got {}",
        results.len()
    );
    for r in &results {
        ensure!(
            r.body["providerApplicationVersion"] == "1.2.3-contract-test",
            "published: {}",
            r.body
        );
    }
    let orders_result = results
        .iter()
        .find(|r| r.path.contains("/consumer/orders/"))
        .context("no result for the orders pact")?;
    ensure!(
        orders_result.body["success"] == true,
        "orders result: {}",
        orders_result.body
    );
    let mobile_result = results
        .iter()
        .find(|r| r.path.contains("/consumer/mobile/"))
        .context("no result for the mobile pact")?;
    ensure!(
        mobile_result.body["success"] == false,
        "mobile result: {}",
        mobile_result.body
    );
    ensure!(
        seen.iter().any(|r| r.method == "PUT"
            && r.path == "/pacticipants/payments/branches/main/versions/1.2.3-contract-test"),
        "the provider branch was not recorded: {:?}",
        seen.iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// A request the stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Value,
}

struct StandIn {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    server: LoopbackServer,
}

#[derive(Clone)]
struct BrokerState {
    base: String,
    pacts: Arc<BTreeMap<String, Value>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A pact of another consumer that payments does not satisfy, pending on the broker.
fn pending_pact() -> Value {
    json!({
        "consumer": {"name": "mobile"},
        "provider": {"name": "payments"},
        "interactions": [{
            "type": "Synchronous/HTTP",
            "description": "get a payment with a loyalty field",
            "providerStates": [{"name": "no payment exists", "params": {"id": "7a1e9b30-2c4d-4e5f-8a6b-3c2d00000099"}}],
            "request": {"method": "GET", "path": "/payments/7a1e9b30-2c4d-4e5f-8a6b-3c2d00000099"},
            "response": {"status": 200, "body": {"content": {"loyalty_points": 1}}}
        }],
        "metadata": {"pactSpecification": {"version": "4.0"}}
    })
}

impl StandIn {
    async fn start(orders_pact: Value) -> anyhow::Result<StandIn> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let mut pacts = BTreeMap::new();
        pacts.insert("orders".to_string(), orders_pact);
        pacts.insert("mobile".to_string(), pending_pact());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = BrokerState {
            base: base.clone(),
            pacts: Arc::new(pacts),
            seen: seen.clone(),
        };
        let app = axum::Router::new().fallback(serve).with_state(state);
        Ok(StandIn {
            url: base,
            seen,
            server: LoopbackServer::serve(listener, app),
        })
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

fn hal(v: Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/hal+json")],
        v.to_string(),
    )
        .into_response()
}

async fn serve(
    State(st): State<BrokerState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    st.seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Seen {
            method: method.to_string(),
            path: path.clone(),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
    let b = &st.base;
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", [""]) => hal(json!({
            "_links": {
                "self": {"href": format!("{b}/")},
                "pb:provider-pacts-for-verification": {
                    "href": format!("{b}/pacts/provider/{{provider}}/for-verification"),
                    "templated": true
                }
            }
        })),
        ("GET", ["pacts", "provider", provider, "for-verification"]) => hal(json!({
            "_links": {"self": {"href": format!("{b}/pacts/provider/{provider}/for-verification")}}
        })),
        ("POST", ["pacts", "provider", provider, "for-verification"]) => {
            let pacts: Vec<Value> = st
                .pacts
                .keys()
                .map(|consumer| {
                    let pending = consumer == "mobile";
                    json!({
                        "shortDescription": format!("latest from {consumer}"),
                        "verificationProperties": {
                            "pending": pending,
                            "notices": [{"when": "before_verification", "text": format!("verifying the pact of {consumer} (pending: {pending})")}]
                        },
                        "_links": {"self": {"href": format!("{b}/pacts/provider/{provider}/consumer/{consumer}/pact-version/1"), "name": format!("pact of {consumer}")}}
                    })
                })
                .collect();
            hal(
                json!({"_embedded": {"pacts": pacts}, "_links": {"self": {"href": format!("{b}{path}")}}}),
            )
        }
        ("GET", ["pacts", "provider", provider, "consumer", consumer, "pact-version", version]) => {
            let Some(pact) = st.pacts.get(*consumer) else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let mut pact = pact.clone();
            pact["_links"] = json!({
                "self": {"href": format!("{b}{path}")},
                "pb:provider": {"href": format!("{b}/pacticipants/{provider}")},
                "pb:publish-verification-results": {
                    "href": format!("{b}/pacts/provider/{provider}/consumer/{consumer}/pact-version/{version}/verification-results")
                }
            });
            hal(pact)
        }
        ("GET", ["pacticipants", provider]) => hal(json!({
            "name": provider,
            "_links": {
                "self": {"href": format!("{b}/pacticipants/{provider}")},
                "pb:branch-version": {"href": format!("{b}/pacticipants/{provider}/branches/{{branch}}/versions/{{version}}"), "templated": true}
            }
        })),
        ("PUT", ["pacticipants", _, "branches", _, "versions", _]) => hal(json!({})),
        ("POST", [.., "verification-results"]) => (
            StatusCode::CREATED,
            [("content-type", "application/hal+json")],
            "{}",
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
