//! `--pacts` and `--consumer` of `harness verify`: pacts that are not in `contracts/`, written
//! the way other Pact implementations write them (V3 here: `providerStates` with params, the
//! V3 matching rules), verified against the running provider with the suite's own state
//! handlers; a consumer filter keeps only the named consumers' pacts.

use std::sync::Arc;

use anyhow::ensure;
use harness::contract::{Contracts, VerifyRequest};
use harness::runner::{Suite, TrialContext};
use serde_json::{json, Value};

use crate::consumer::PAYMENTS;

pub fn add_trials(suite: Suite, contracts: Contracts) -> Suite {
    suite.trial(
        "sources::pacts from --pacts are verified, filtered by --consumer",
        move |ctx| pacts_from_elsewhere(ctx, contracts.clone()),
    )
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
    std::fs::write(
        dir.path().join("refunds-payments.json"),
        refunds.to_string(),
    )?;
    std::fs::write(dir.path().join("audit-payments.json"), audit.to_string())?;
    let pacts = vec![dir.path().display().to_string()];

    let only_refunds = VerifyRequest {
        provider: PAYMENTS.into(),
        pacts: pacts.clone(),
        consumers: vec!["refunds".into()],
        ..VerifyRequest::default()
    };
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
