//! Consumer side: what orders needs from payments (HTTP) and what notifications needs from
//! orders' `order.paid` event (message), each interaction a trial of its own, plus the check
//! that the committed pact files are what these tests generate.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _};
use chrono::TimeZone as _;
use harness::runner::Suite;
use notifications::decoder::decode_order_paid;
use orders::breaker::BreakerConfig;
use orders::events::{order_paid_message, OrderPaid, OutgoingMessage};
use orders::gateway::{ChargeOutcome, PaymentGateway};
use orders::payments_client::{
    CreatePayment, Payment, PaymentStatus, PaymentsClient, PaymentsError,
};
use pact_consumer::builders::{InteractionBuilder, MessageInteractionBuilder};
use pact_consumer::prelude::*;
use pact_models::matchingrules::{MatchingRule, RuleLogic};
use pact_models::path_exp::DocPath;
use serde_json::{json, Value};
use shop_common::TraceContext;
use uuid::Uuid;

pub const UUID: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
pub const TIMESTAMP: &str = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$";
pub const CURRENCY: &str = "^[A-Z]{3}$";
pub const TRACE_ID: &str = "^[0-9a-f]{32}$";
pub const TRACEPARENT: &str = "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$";
/// The trace the consumer examples run under (the W3C specification's example).
const EXAMPLE_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Idempotency keys (= order ids, as orders sends them) and payment ids of the examples.
pub const APPROVED_KEY: &str = "0d6c4a52-7f3e-4b1a-9c2d-1e5f00000001";
pub const DECLINED_KEY: &str = "0d6c4a52-7f3e-4b1a-9c2d-1e5f00000002";
pub const REPLAYED_KEY: &str = "0d6c4a52-7f3e-4b1a-9c2d-1e5f00000003";
pub const REPLAYED_PAYMENT: &str = "7a1e9b30-2c4d-4e5f-8a6b-3c2d00000003";
pub const INVALID_KEY: &str = "0d6c4a52-7f3e-4b1a-9c2d-1e5f00000004";
pub const EXISTING_PAYMENT: &str = "7a1e9b30-2c4d-4e5f-8a6b-3c2d00000005";
pub const EXISTING_ORDER: &str = "0d6c4a52-7f3e-4b1a-9c2d-1e5f00000005";
pub const MISSING_PAYMENT: &str = "7a1e9b30-2c4d-4e5f-8a6b-3c2d00000006";
const CREATED_AT: &str = "2024-05-01T10:00:00.123456Z";
const GOOD_CARD: &str = "tok_visa";
const DECLINED_CARD: &str = "tok_declined";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One HTTP interaction: how it is written down, and the consumer code that must work with it.
pub struct HttpCase {
    pub description: &'static str,
    define: fn(InteractionBuilder) -> InteractionBuilder,
    exercise: fn(PaymentsClient) -> BoxFuture<anyhow::Result<()>>,
}

/// One message interaction: how it is written down, and the consumer code that must accept it.
pub struct MessageCase {
    pub description: &'static str,
    define: fn() -> anyhow::Result<pact_models::v4::async_message::AsynchronousMessage>,
}

pub const ORDERS: &str = "orders";
pub const PAYMENTS: &str = "payments";
pub const NOTIFICATIONS: &str = "notifications";

fn payment_request(key: &str, amount: i64, currency: &str, card: &str) -> CreatePayment {
    CreatePayment {
        order_id: Uuid::parse_str(key).expect("the example keys are UUIDs"),
        amount,
        currency: currency.to_string(),
        card_token: card.to_string(),
    }
}

/// `POST /payments` as orders sends it: the order id is the idempotency key, and the trace is
/// propagated as a W3C `traceparent` (payments records it; journeys check it arrives).
fn post_payment(i: &mut InteractionBuilder, key: &str, body: JsonPattern) {
    i.request
        .post()
        .path("/payments")
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .header("Idempotency-Key", term!(UUID, key))
        .header("traceparent", term!(TRACEPARENT, EXAMPLE_TRACEPARENT))
        .json_body(body);
}

/// The trace context of the examples.
fn example_trace() -> anyhow::Result<TraceContext> {
    shop_common::trace::parse_traceparent(EXAMPLE_TRACEPARENT)
        .context("EXAMPLE_TRACEPARENT is not a valid traceparent")
}

/// Charges 1234 EUR for the order `key` through orders' real gateway, as `POST /orders` does,
/// so the request the pact records is the one orders builds: the order's amount and currency,
/// the order id as idempotency key, the trace propagated.
async fn charge(client: PaymentsClient, key: &str, card: &str) -> anyhow::Result<Payment> {
    let gateway = PaymentGateway::new(client, BreakerConfig::default(), 1, Duration::ZERO);
    let order_id = Uuid::parse_str(key)?;
    match gateway
        .charge(order_id, 1234, "EUR", card, &example_trace()?)
        .await
    {
        ChargeOutcome::Approved(p) | ChargeOutcome::Declined(p) => Ok(p),
        other => bail!("orders' payment gateway did not get a payment: {other:?}"),
    }
}

fn client_error(e: PaymentsError) -> anyhow::Error {
    anyhow!("orders' payments client failed: {e} ({e:?})")
}

pub fn http_cases() -> Vec<HttpCase> {
    vec![
        HttpCase {
            description: "create a payment that is approved",
            define: |mut i| {
                i.given_with_params(
                    "no payment was made with the idempotency key",
                    &json!({"idempotency_key": APPROVED_KEY}),
                );
                post_payment(
                    &mut i,
                    APPROVED_KEY,
                    json_pattern!({
                        "order_id": term!(UUID, APPROVED_KEY),
                        "amount": 1234,
                        "currency": "EUR",
                        "card_token": like!(GOOD_CARD)
                    }),
                );
                i.response
                    .status(201)
                    .header("Content-Type", "application/json")
                    .json_body(json_pattern!({
                        "id": term!(UUID, "7a1e9b30-2c4d-4e5f-8a6b-3c2d00000001"),
                        "order_id": term!(UUID, APPROVED_KEY),
                        "amount": like!(1234),
                        "currency": term!(CURRENCY, "EUR"),
                        "status": "APPROVED",
                        "created_at": term!(TIMESTAMP, CREATED_AT)
                    }));
                i
            },
            exercise: |client| {
                Box::pin(async move {
                    let p = charge(client, APPROVED_KEY, GOOD_CARD).await?;
                    ensure!(
                        p.status == PaymentStatus::Approved,
                        "status is {:?}",
                        p.status
                    );
                    ensure!(
                        p.order_id.to_string() == APPROVED_KEY && p.amount == 1234,
                        "{p:?}"
                    );
                    Ok(())
                })
            },
        },
        HttpCase {
            description: "create a payment that is declined",
            define: |mut i| {
                i.given_with_params(
                    "no payment was made with the idempotency key",
                    &json!({"idempotency_key": DECLINED_KEY}),
                );
                post_payment(
                    &mut i,
                    DECLINED_KEY,
                    json_pattern!({
                        "order_id": term!(UUID, DECLINED_KEY),
                        "amount": 1234,
                        "currency": "EUR",
                        "card_token": DECLINED_CARD
                    }),
                );
                i.response
                    .status(201)
                    .header("Content-Type", "application/json")
                    .json_body(json_pattern!({
                        "id": term!(UUID, "7a1e9b30-2c4d-4e5f-8a6b-3c2d00000002"),
                        "order_id": term!(UUID, DECLINED_KEY),
                        "amount": like!(1234),
                        "currency": term!(CURRENCY, "EUR"),
                        "status": "DECLINED",
                        "decline_reason": like!("card_declined"),
                        "created_at": term!(TIMESTAMP, CREATED_AT)
                    }));
                i
            },
            exercise: |client| {
                Box::pin(async move {
                    let p = charge(client, DECLINED_KEY, DECLINED_CARD).await?;
                    ensure!(
                        p.status == PaymentStatus::Declined,
                        "status is {:?}",
                        p.status
                    );
                    ensure!(
                        p.decline_reason.as_deref() == Some("card_declined"),
                        "{p:?}"
                    );
                    Ok(())
                })
            },
        },
        HttpCase {
            description: "repeat a payment with the same idempotency key",
            define: |mut i| {
                i.given_with_params(
                    "a payment was made with the idempotency key",
                    &json!({
                        "idempotency_key": REPLAYED_KEY,
                        "id": REPLAYED_PAYMENT,
                        "order_id": REPLAYED_KEY,
                        "amount": 1234,
                        "currency": "EUR",
                        "card_token": GOOD_CARD
                    }),
                );
                post_payment(
                    &mut i,
                    REPLAYED_KEY,
                    json_pattern!({
                        "order_id": term!(UUID, REPLAYED_KEY),
                        "amount": 1234,
                        "currency": "EUR",
                        "card_token": like!(GOOD_CARD)
                    }),
                );
                i.response
                    .status(201)
                    .header("Content-Type", "application/json")
                    .header("Idempotent-Replayed", "true")
                    .json_body(json_pattern!({
                        "id": REPLAYED_PAYMENT,
                        "order_id": term!(UUID, REPLAYED_KEY),
                        "amount": like!(1234),
                        "currency": term!(CURRENCY, "EUR"),
                        "status": "APPROVED",
                        "created_at": term!(TIMESTAMP, CREATED_AT)
                    }));
                i
            },
            exercise: |client| {
                Box::pin(async move {
                    let p = charge(client, REPLAYED_KEY, GOOD_CARD).await?;
                    ensure!(
                        p.id.to_string() == REPLAYED_PAYMENT,
                        "the replay is a new payment: {p:?}"
                    );
                    ensure!(
                        p.status == PaymentStatus::Approved,
                        "status is {:?}",
                        p.status
                    );
                    Ok(())
                })
            },
        },
        HttpCase {
            description: "create a payment with invalid fields",
            define: |mut i| {
                post_payment(
                    &mut i,
                    INVALID_KEY,
                    json_pattern!({
                        "order_id": term!(UUID, INVALID_KEY),
                        "amount": 0,
                        "currency": "eur",
                        "card_token": like!(GOOD_CARD)
                    }),
                );
                i.response
                    .status(422)
                    .header("Content-Type", "application/json")
                    .json_body(json_pattern!({
                        "error": "validation_failed",
                        "message": like!("request validation failed: amount, currency"),
                        "fields": each_like!({
                            "field": like!("amount"),
                            "message": like!("must be greater than 0")
                        })
                    }));
                i
            },
            exercise: |client| {
                Box::pin(async move {
                    let e = client
                        .create_payment(
                            INVALID_KEY,
                            &payment_request(INVALID_KEY, 0, "eur", GOOD_CARD),
                            Some(&example_trace()?),
                        )
                        .await
                        .err()
                        .context("an invalid payment was accepted")?;
                    let PaymentsError::Rejected {
                        status: 422,
                        body: Some(body),
                    } = &e
                    else {
                        bail!("expected a 422 rejection with an error body, got {e:?}");
                    };
                    ensure!(e.error_code() == Some("validation_failed"), "{e:?}");
                    ensure!(!body.fields.is_empty(), "no fields named: {body:?}");
                    ensure!(
                        !e.is_retryable() && !e.indicates_outage(),
                        "a validation error must be final: {e:?}"
                    );
                    Ok(())
                })
            },
        },
        HttpCase {
            description: "get an existing payment",
            define: |mut i| {
                i.given_with_params(
                    "a payment exists",
                    &json!({
                        "id": EXISTING_PAYMENT,
                        "order_id": EXISTING_ORDER,
                        "amount": 1234,
                        "currency": "EUR",
                        "status": "APPROVED"
                    }),
                );
                i.request
                    .get()
                    .path(format!("/payments/{EXISTING_PAYMENT}"))
                    .header("Accept", "application/json");
                i.response
                    .status(200)
                    .header("Content-Type", "application/json")
                    .json_body(json_pattern!({
                        "id": EXISTING_PAYMENT,
                        "order_id": term!(UUID, EXISTING_ORDER),
                        "amount": like!(1234),
                        "currency": term!(CURRENCY, "EUR"),
                        "status": term!("^(APPROVED|DECLINED)$", "APPROVED"),
                        "created_at": term!(TIMESTAMP, CREATED_AT)
                    }));
                i
            },
            exercise: |client| {
                Box::pin(async move {
                    let id = Uuid::parse_str(EXISTING_PAYMENT)?;
                    let p = client.get_payment(id, None).await.map_err(client_error)?;
                    ensure!(p.id == id && p.status == PaymentStatus::Approved, "{p:?}");
                    Ok(())
                })
            },
        },
        HttpCase {
            description: "get a payment that does not exist",
            define: |mut i| {
                i.given_with_params("no payment exists", &json!({"id": MISSING_PAYMENT}));
                i.request
                    .get()
                    .path(format!("/payments/{MISSING_PAYMENT}"))
                    .header("Accept", "application/json");
                i.response.status(404);
                i
            },
            exercise: |client| {
                Box::pin(async move {
                    let e = client
                        .get_payment(Uuid::parse_str(MISSING_PAYMENT)?, None)
                        .await
                        .err();
                    ensure!(
                        e == Some(PaymentsError::NotFound),
                        "expected NotFound, got {e:?}"
                    );
                    Ok(())
                })
            },
        },
    ]
}

/// The `order.paid` example, built by orders' own code from fixed values.
pub fn order_paid_example() -> OutgoingMessage {
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let paid_at = chrono::Utc
        .with_ymd_and_hms(2024, 5, 1, 10, 0, 0)
        .single()
        .expect("a valid time")
        + chrono::Duration::microseconds(123_456);
    let mut event = OrderPaid::new(
        Uuid::parse_str("6f1c0f34-6a5c-4b8e-9d7e-1b2c3d4e5f60").expect("uuid"),
        "customer-1",
        1234,
        "EUR",
        Uuid::parse_str("0b8f6a3e-1c1d-4c52-9a0e-6f4d1b2c3a4b").expect("uuid"),
        paid_at,
        trace_id,
    );
    event.event_id = Uuid::parse_str("9a7b3c2d-1e0f-4a5b-8c9d-0e1f2a3b4c5d").expect("uuid");
    order_paid_message(&event, &TraceContext::from_trace_id(trace_id))
}

pub fn message_cases() -> Vec<MessageCase> {
    vec![MessageCase {
        description: "an order.paid event",
        define: || {
            let example = order_paid_example();
            let p = example.payload_json();
            let s = |k: &str| {
                p[k].as_str()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("orders' payload has no string `{k}`: {p}"))
            };
            let body = json_pattern!({
                "schema_version": 1,
                "type": "order.paid",
                "event_id": term!(UUID, s("event_id")?),
                "order_id": term!(UUID, s("order_id")?),
                "customer_id": like!(s("customer_id")?),
                "amount": like!(p["amount"].clone()),
                "currency": term!(CURRENCY, s("currency")?),
                "payment_id": term!(UUID, s("payment_id")?),
                "paid_at": term!(TIMESTAMP, s("paid_at")?),
                "trace_id": term!(TRACE_ID, s("trace_id")?)
            });
            let example_keys: Vec<&String> = p
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            let pattern_keys = body.to_example();
            let pattern_keys: Vec<&String> = pattern_keys
                .as_object()
                .map(|o| o.keys().collect())
                .unwrap_or_default();
            ensure!(
                example_keys == pattern_keys,
                "the contract names {pattern_keys:?}, orders builds {example_keys:?}: describe every field orders sends"
            );
            let mut m = MessageInteractionBuilder::new("an order.paid event");
            m.given_with_params(
                "an order has been paid",
                &json!({"amount": 1234, "currency": "EUR"}),
            );
            m.json_body(body);
            // Metadata with values that differ per message gets a fixed example and a rule.
            let mut rules: Vec<(&str, &str)> = Vec::new();
            for (k, v) in example.metadata().as_object().cloned().unwrap_or_default() {
                match k.as_str() {
                    "messageId" => rules.push(("messageId", UUID)),
                    "trace_id" => rules.push(("trace_id", TRACE_ID)),
                    "traceparent" => rules.push(("traceparent", TRACEPARENT)),
                    _ => {}
                }
                let v = if k == "traceparent" {
                    Value::String(format!(
                        "00-{}-00f067aa0ba902b7-01",
                        p["trace_id"].as_str().unwrap_or_default()
                    ))
                } else {
                    v
                };
                m.metadata(k, v);
            }
            let mut message = m.build();
            let category = message.contents.matching_rules.add_category("metadata");
            for (key, regex) in rules {
                category.add_rule(
                    DocPath::root().join(key),
                    MatchingRule::Regex(regex.to_string()),
                    RuleLogic::And,
                );
            }
            Ok(message)
        },
    }]
}

/// Runs `f` on a blocking thread of the runtime: the Pact mock servers and message iterators
/// block, and are neither `Send` nor usable inside an async context. A panic (a mock server
/// reporting requests that did not match) becomes the error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".to_string());
            Err(anyhow!("{text}"))
        }
        Err(e) => Err(anyhow!("the consumer test did not run: {e}")),
    }
}

/// Runs one HTTP case against a Pact mock of payments; the pact is written to `out`. Call it
/// on a blocking thread (see [`blocking`]).
fn run_http_case(case: &HttpCase, out: &Path) -> anyhow::Result<()> {
    let mut builder = PactBuilder::new_v4(ORDERS, PAYMENTS);
    builder.with_output_dir(out);
    builder.interaction(case.description, "", |mut i| {
        i.test_name(format!(
            "contracts::consumer::{ORDERS}->{PAYMENTS}::{}",
            case.description
        ));
        (case.define)(i)
    });
    let server = builder.start_mock_server(None, None);
    let client = PaymentsClient::new(server.url().to_string(), Duration::from_secs(5));
    let result = tokio::runtime::Handle::current().block_on((case.exercise)(client));
    if result.is_err() && !server.status().is_empty() {
        // Dropping the mock reports what it received instead of what it expected.
        drop(server);
    }
    result
}

/// Feeds each message of one message case to notifications' real decoder; the pact is
/// written to `out`. Call it on a blocking thread (see [`blocking`]).
fn run_message_case(case: &MessageCase, out: &Path) -> anyhow::Result<()> {
    let mut message = (case.define)()?;
    message.comments.insert(
        "testname".into(),
        json!(format!(
            "contracts::consumer::{NOTIFICATIONS}->{ORDERS}::{}",
            case.description
        )),
    );
    let mut builder = PactBuilder::new_v4(NOTIFICATIONS, ORDERS);
    builder.with_output_dir(out);
    builder.push_interaction(&message);
    let mut seen = 0;
    for m in builder.messages() {
        seen += 1;
        let payload = m
            .contents
            .contents
            .value()
            .context("the message has no body")?;
        let headers: BTreeMap<String, String> = m
            .contents
            .metadata
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect();
        let event = decode_order_paid(&payload, &headers)
            .map_err(|e| anyhow!("notifications' decoder rejects the contract's message: {e}"))?;
        ensure!(event.amount == 1234 && event.currency == "EUR", "{event:?}");
        ensure!(
            event.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736",
            "trace id: {}",
            event.trace_id
        );
    }
    ensure!(seen == 1, "expected one message, the pact has {seen}");
    Ok(())
}

/// Adds one trial per consumer interaction and the drift check.
pub fn add_trials(mut suite: Suite, committed: PathBuf) -> Suite {
    for (i, case) in http_cases().into_iter().enumerate() {
        let name = format!("consumer::{ORDERS}->{PAYMENTS}::{}", case.description);
        suite = suite.local_trial(&name, move || {
            blocking(move || {
                let out = tempfile::tempdir()?;
                let case = http_cases()
                    .into_iter()
                    .nth(i)
                    .context("the case list changed")?;
                run_http_case(&case, out.path())
            })
        });
    }
    for (i, case) in message_cases().into_iter().enumerate() {
        let name = format!("consumer::{NOTIFICATIONS}->{ORDERS}::{}", case.description);
        suite = suite.local_trial(&name, move || {
            blocking(move || {
                let out = tempfile::tempdir()?;
                let case = message_cases()
                    .into_iter()
                    .nth(i)
                    .context("the case list changed")?;
                run_message_case(&case, out.path())
            })
        });
    }
    suite.local_trial("drift::pact files match the consumer tests", move || {
        let committed = committed.clone();
        async move { check_drift(&committed).await }
    })
}

/// Runs every case, each into a directory of its own, and merges what they wrote into one
/// normalised pact file per consumer and provider: keys sorted, interactions sorted by
/// description, pretty-printed with a final newline.
pub async fn generate() -> anyhow::Result<BTreeMap<String, String>> {
    blocking(generate_files).await
}

fn generate_files() -> anyhow::Result<BTreeMap<String, String>> {
    let root = tempfile::tempdir()?;
    let mut dirs = Vec::new();
    for (i, case) in http_cases().iter().enumerate() {
        let dir = root.path().join(format!("http-{i}"));
        run_http_case(case, &dir)
            .with_context(|| format!("consumer test `{}`", case.description))?;
        dirs.push(dir);
    }
    for (i, case) in message_cases().iter().enumerate() {
        let dir = root.path().join(format!("message-{i}"));
        run_message_case(case, &dir)
            .with_context(|| format!("consumer test `{}`", case.description))?;
        dirs.push(dir);
    }
    let mut merged: BTreeMap<String, Value> = BTreeMap::new();
    for dir in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("no pact was written to {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for file in files {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let pact: Value = serde_json::from_slice(&std::fs::read(&file)?)?;
            match merged.get_mut(&name) {
                None => {
                    merged.insert(name, pact);
                }
                Some(existing) => {
                    let more = pact["interactions"].as_array().cloned().unwrap_or_default();
                    if let Some(list) = existing["interactions"].as_array_mut() {
                        list.extend(more);
                    }
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for (name, mut pact) in merged {
        if let Some(list) = pact["interactions"].as_array_mut() {
            list.sort_by_key(|i| {
                (
                    i["description"].as_str().unwrap_or_default().to_string(),
                    i.to_string(),
                )
            });
            list.dedup();
        }
        out.insert(name, serde_json::to_string_pretty(&sorted(pact))? + "\n");
    }
    Ok(out)
}

/// The value with the keys of every object in sorted order.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let entries: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(list) => Value::Array(list.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Regenerates the pact files and compares them with the committed ones. With
/// `UPDATE_CONTRACTS=1` (and not under `CI=true`) it rewrites them instead.
async fn check_drift(committed: &Path) -> anyhow::Result<()> {
    let generated = generate().await?;
    let mut problems = Vec::new();
    for (name, text) in &generated {
        let path = committed.join(name);
        match std::fs::read_to_string(&path) {
            Ok(current) if &current == text => {}
            Ok(current) => problems.push((
                path,
                format!(
                    "differs from what the consumer tests generate (- committed, + generated):\n{}",
                    line_diff(&current, text)
                ),
            )),
            Err(_) => problems.push((path, "is missing".to_string())),
        }
    }
    if let Ok(entries) = std::fs::read_dir(committed) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") && !generated.contains_key(&name) {
                problems.push((
                    e.path(),
                    "is not generated by any consumer test (stale)".to_string(),
                ));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let update = std::env::var("UPDATE_CONTRACTS").is_ok_and(|v| !v.is_empty() && v != "0");
    if update && !ci {
        std::fs::create_dir_all(committed)?;
        for (path, _) in &problems {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            match generated.get(name) {
                Some(text) => std::fs::write(path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::fs::remove_file(path)
                    .with_context(|| format!("removing {}", path.display()))?,
            }
            eprintln!("updated {}", path.display());
        }
        return Ok(());
    }
    let mut report = String::from("the committed contracts are out of date:\n");
    for (path, what) in &problems {
        report.push_str(&format!("\n{} {what}\n", path.display()));
    }
    report.push_str(if ci {
        "\nCI never rewrites contracts: run `UPDATE_CONTRACTS=1 cargo test -p suites --test contracts -- drift` locally and commit the result"
    } else {
        "\nif the change is intended, run `UPDATE_CONTRACTS=1 cargo test -p suites --test contracts -- drift` and commit the result"
    });
    Err(anyhow!(report))
}

/// A line diff (`-` committed, `+` generated) with two lines of context.
fn line_diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    // Longest common subsequence table, from the end.
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let near = |k: usize| {
        ops[k.saturating_sub(2)..(k + 3).min(ops.len())]
            .iter()
            .any(|(c, _)| *c != ' ')
    };
    let mut out = String::new();
    let mut gap = false;
    for (k, (c, line)) in ops.iter().enumerate() {
        if near(k) {
            if gap {
                out.push_str("  ...\n");
                gap = false;
            }
            out.push_str(&format!("{c} {line}\n"));
        } else {
            gap = true;
        }
    }
    out
}
