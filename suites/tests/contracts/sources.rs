//! `--pacts` and `--consumer` of `harness verify`: pacts that are not in `contracts/`, written
//! the way other Pact implementations write them (V3: `providerStates` with params, the V3
//! matching rules; V2: no state parameters, `$.body` rules), verified against the running
//! provider with the suite's own state handlers; a consumer filter keeps only the named
//! consumers' pacts. Provider states that fail are named with their parameter, and states from
//! a state-change URL are set up and torn down by Pact's request.

use std::sync::Arc;

use anyhow::{ensure, Context as _};
use axum::response::IntoResponse as _;
use harness::contract::{Contracts, StateChange, VerifyRequest};
use harness::runner::{Suite, TrialContext};
use serde_json::{json, Value};

use crate::consumer::PAYMENTS;

pub fn add_trials(suite: Suite, contracts: Contracts) -> Suite {
    let (c1, c2) = (contracts.clone(), contracts.clone());
    suite
        .trial(
            "sources::pacts from --pacts are verified, filtered by --consumer",
            move |ctx| pacts_from_elsewhere(ctx, contracts.clone()),
        )
        .trial(
            "sources::a failing provider state is named with its parameter, in the report and in JUnit",
            move |ctx| failing_state_is_named(ctx, c1.clone()),
        )
        .trial(
            "sources::states from a state-change URL, set up and torn down, failures named",
            move |ctx| states_from_a_url(ctx, c2.clone()),
        )
}

/// One V3 pact of `consumer` written into `dir`; the request naming `dir`.
fn write_pact(
    dir: &std::path::Path,
    consumer: &str,
    pact: &Value,
) -> anyhow::Result<VerifyRequest> {
    std::fs::write(
        dir.join(format!("{consumer}-payments.json")),
        pact.to_string(),
    )?;
    Ok(VerifyRequest {
        provider: PAYMENTS.into(),
        pacts: vec![dir.display().to_string()],
        consumers: vec![consumer.into()],
        ..VerifyRequest::default()
    })
}

/// A pact whose state lacks a parameter the handler needs (`status`): the failure names the
/// interaction, the state and the parameter, in the summary's failures and in the JUnit
/// testcase of that interaction.
async fn failing_state_is_named(
    ctx: Arc<TrialContext>,
    contracts: Contracts,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let id = "7a1e9b30-2c4d-4e5f-8a6b-3c2d0000000c";
    let ledger = v3_pact(
        "ledger",
        "a payment for the ledger",
        json!({ "name": "a payment exists", "params": {
            "amount": 500, "currency": "EUR", "id": id,
            "order_id": "0d6c4a52-7f3e-4b1a-9c2d-1e5f0000000c" } }),
        &format!("/payments/{id}"),
        json!({ "status": 200 }),
    );
    let request = write_pact(dir.path(), "ledger", &ledger)?;
    let report = contracts
        .verify_provider(ctx.stack.clone(), &request)
        .await?;
    harness::capture::note(&report.table());
    ensure!(!report.ok, "a pact whose state cannot be set up passed");
    let failure = report
        .results
        .iter()
        .find(|r| r.interaction == "a payment for the ledger")
        .and_then(|r| r.failure.clone())
        .unwrap_or_default();
    for part in ["a payment exists", "`status`", "setup"] {
        ensure!(
            failure.contains(part),
            "the interaction's failure does not name {part}: {failure}"
        );
    }
    let junit = report.junit();
    ensure!(
        junit.contains("name=\"a payment for the ledger\"")
            && junit.contains("failures=\"1\"")
            && junit.contains("parameter `status`"),
        "the JUnit report does not carry the state's failure:\n{junit}"
    );
    Ok(())
}

/// What a state-change endpoint of the provider's own was sent.
type Calls = Arc<std::sync::Mutex<Vec<Value>>>;

/// States from a state-change URL: the setup and the teardown are POSTed with Pact's body, and
/// an endpoint that answers 500 fails the interaction with the state and its answer.
async fn states_from_a_url(ctx: Arc<TrialContext>, contracts: Contracts) -> anyhow::Result<()> {
    let calls: Calls = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/_pact/state", listener.local_addr()?);
    let recorded = calls.clone();
    let app = axum::Router::new().route(
        "/_pact/state",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let recorded = recorded.clone();
            async move {
                let broken = body["params"]["id"] == "broken";
                recorded
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(body);
                if broken {
                    (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "no fixture for broken",
                    )
                        .into_response()
                } else {
                    axum::Json(json!({})).into_response()
                }
            }
        }),
    );
    let server = harness::loopback::LoopbackServer::serve(listener, app);
    let dir = tempfile::tempdir()?;
    let missing = "7a1e9b30-2c4d-4e5f-8a6b-3c2d0000000d";
    let pact = |id: &str| {
        v3_pact(
            "archive",
            "a payment that is not there",
            json!({ "name": "no payment exists", "params": { "id": id } }),
            &format!("/payments/{missing}"),
            json!({ "status": 404 }),
        )
    };
    let mut request = write_pact(dir.path(), "archive", &pact(missing))?;
    request.state_change = Some(StateChange {
        url: url.clone(),
        teardown: true,
    });
    let report = contracts.verify_provider(ctx.stack.clone(), &request).await;
    let broken = match &report {
        Ok(r) if r.ok => {
            write_pact(dir.path(), "archive", &pact("broken"))?;
            Some(contracts.verify_provider(ctx.stack.clone(), &request).await)
        }
        _ => None,
    };
    server.stop().await;
    let report = report?;
    ensure!(
        report.ok,
        "verified with the state-change URL: {:?}",
        report.failures
    );
    let seen = calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let actions: Vec<&str> = seen.iter().filter_map(|c| c["action"].as_str()).collect();
    ensure!(
        actions.starts_with(&["setup", "teardown"]),
        "calls: {seen:?}"
    );
    ensure!(
        seen[0]["state"] == "no payment exists" && seen[0]["params"]["id"] == missing,
        "the setup call: {}",
        seen[0]
    );
    let broken = broken.context("the second verification did not run")??;
    ensure!(!broken.ok, "a state-change URL answering 500 passed");
    let failure = broken.failures.join("\n");
    for part in [
        "no payment exists",
        "500",
        "no fixture for broken",
        "a payment that is not there",
    ] {
        ensure!(
            failure.contains(part),
            "the failure does not name {part}: {failure}"
        );
    }
    Ok(())
}

/// A V3 pact of `consumer` with payments, as another implementation writes it.
fn v3_pact(consumer: &str, description: &str, state: Value, path: &str, response: Value) -> Value {
    json!({
        "consumer": { "name": consumer },
        "provider": { "name": PAYMENTS },
        "interactions": [{
            "description": description,
            "providerStates": [state],
            "request": { "method": "GET", "path": path, "headers": { "Accept": "application/json" } },
            "response": response,
        }],
        "metadata": { "pactSpecification": { "version": "3.0.0" } },
    })
}

async fn pacts_from_elsewhere(ctx: Arc<TrialContext>, contracts: Contracts) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let id = "7a1e9b30-2c4d-4e5f-8a6b-3c2d0000000a";
    let refunds = v3_pact(
        "refunds",
        "a payment to refund",
        json!({ "name": "a payment exists", "params": {
            "amount": 500, "currency": "EUR", "id": id,
            "order_id": "0d6c4a52-7f3e-4b1a-9c2d-1e5f0000000a", "status": "APPROVED" } }),
        &format!("/payments/{id}"),
        json!({
            "status": 200,
            "headers": { "Content-Type": "application/json" },
            "body": { "id": id, "amount": 500, "currency": "EUR", "status": "APPROVED" },
            "matchingRules": { "body": {
                "$.status": { "matchers": [{ "match": "regex", "regex": "^(APPROVED|DECLINED)$" }] }
            } },
        }),
    );
    // A consumer whose expectation the provider does not meet: found only without the filter.
    let missing = "7a1e9b30-2c4d-4e5f-8a6b-3c2d0000000b";
    let audit = v3_pact(
        "audit",
        "a payment that was never made",
        json!({ "name": "no payment exists", "params": { "id": missing } }),
        &format!("/payments/{missing}"),
        json!({ "status": 200 }),
    );
    let only_refunds = write_pact(dir.path(), "refunds", &refunds)?;
    write_pact(dir.path(), "audit", &audit)?;
    let report = contracts
        .verify_provider(ctx.stack.clone(), &only_refunds)
        .await?;
    harness::capture::note(&report.table());
    ensure!(report.ok, "the refunds pact failed: {:?}", report.failures);
    let consumers: Vec<&str> = report.rows.iter().map(|r| r.consumer.as_str()).collect();
    ensure!(
        consumers == ["refunds"],
        "verified consumers {consumers:?}, not [refunds]"
    );
    ensure!(
        report.interactions == 1,
        "{} interactions verified, not 1",
        report.interactions
    );

    // A V2 pact, as older implementations write it: no provider-state parameters, `$.body…`
    // matching rules.
    let legacy = json!({
        "consumer": { "name": "legacy" },
        "provider": { "name": PAYMENTS },
        "interactions": [{
            "description": "an unknown payment, the V2 way",
            "request": { "method": "GET", "path": "/payments/7a1e9b30-2c4d-4e5f-8a6b-3c2d0000000e" },
            "response": {
                "status": 404,
                "headers": { "Content-Type": "application/json" },
                "body": { "error": "not found" },
                "matchingRules": { "$.body.error": { "match": "type" } }
            }
        }],
        "metadata": { "pactSpecification": { "version": "2.0.0" } }
    });
    let v2 = write_pact(dir.path(), "legacy", &legacy)?;
    let report = contracts.verify_provider(ctx.stack.clone(), &v2).await?;
    harness::capture::note(&report.table());
    ensure!(
        report.ok && report.interactions == 1,
        "the V2 pact: {} interactions, {:?}",
        report.interactions,
        report.failures
    );

    let every = VerifyRequest {
        consumers: vec![],
        ..only_refunds
    };
    let report = contracts.verify_provider(ctx.stack.clone(), &every).await?;
    harness::capture::note(&report.table());
    ensure!(
        !report.ok,
        "the audit pact, which payments does not meet, passed"
    );
    ensure!(
        report
            .failures
            .iter()
            .any(|f| f.contains("a payment that was never made")),
        "the failure does not name the interaction: {:?}",
        report.failures
    );
    Ok(())
}
