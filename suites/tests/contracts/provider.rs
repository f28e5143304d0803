//! Provider side of the shop's contracts: provider states, set up directly in the provider's
//! own stores (its Postgres database and Redis), and the producer of orders' messages, which
//! drives the real orders service and captures what it publishes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use harness::contract::{Contracts, MessageRequest, ProducedMessage, StateCall};
use harness::journey::Journey;
use harness::Stack;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::consumer::{ORDERS, PAYMENTS};

/// How long the producer waits for orders to publish `order.paid`.
const PUBLISH_WITHIN: Duration = Duration::from_secs(20);

/// The shop's provider states and message producers.
pub fn register(contracts: Contracts) -> Contracts {
    contracts
        .state_with_teardown(PAYMENTS, "a payment exists", payment_exists, delete_payment)
        .state(PAYMENTS, "no payment exists", delete_payment)
        .state_with_teardown(
            PAYMENTS,
            "no payment was made with the idempotency key",
            forget_key,
            forget_key,
        )
        .state_with_teardown(
            PAYMENTS,
            "a payment was made with the idempotency key",
            payment_made_with_key,
            forget_key,
        )
        // Payments approves every card but `tok_declined`: nothing to store up front. The
        // message producer places the order that gets paid.
        .state(ORDERS, "an order has been paid", |_stack, _state| async {
            Ok(())
        })
        .message_producer(ORDERS, produce)
}

fn journey(stack: &Arc<Stack>, state: &StateCall) -> Journey {
    Journey::new(stack.clone(), &format!("provider state `{}`", state.name))
}

fn uuid(state: &StateCall, key: &str) -> anyhow::Result<Uuid> {
    Uuid::parse_str(state.str(key)?)
        .with_context(|| format!("parameter `{key}` of `{}` is not a UUID", state.name))
}

/// Inserts a payment row with the state's id, order, amount, currency and status.
async fn payment_exists(stack: Arc<Stack>, state: StateCall) -> anyhow::Result<()> {
    let db = journey(&stack, &state).sql(PAYMENTS).await?;
    let id = uuid(&state, "id")?;
    let status: String = state.param("status")?;
    let decline_reason = (status == "DECLINED").then_some(payments::model::CARD_DECLINED);
    sqlx::query("DELETE FROM payments WHERE id = $1")
        .bind(id)
        .execute(&db)
        .await?;
    sqlx::query(
        "INSERT INTO payments (id, order_id, amount, currency, status, decline_reason, idempotency_key, request_fingerprint)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(uuid(&state, "order_id")?)
    .bind(state.param::<i64>("amount")?)
    .bind(state.str("currency")?)
    .bind(&status)
    .bind(decline_reason)
    .bind(format!("contract-state-{id}"))
    .bind("contract-state")
    .execute(&db)
    .await
    .context("inserting the payment")?;
    db.close().await;
    Ok(())
}

async fn delete_payment(stack: Arc<Stack>, state: StateCall) -> anyhow::Result<()> {
    let db = journey(&stack, &state).sql(PAYMENTS).await?;
    sqlx::query("DELETE FROM payments WHERE id = $1")
        .bind(uuid(&state, "id")?)
        .execute(&db)
        .await?;
    db.close().await;
    Ok(())
}

/// Removes every trace of an idempotency key: its payment row and its Redis record.
async fn forget_key(stack: Arc<Stack>, state: StateCall) -> anyhow::Result<()> {
    let j = journey(&stack, &state);
    let key = state.str("idempotency_key")?;
    let db = j.sql(PAYMENTS).await?;
    sqlx::query("DELETE FROM payments WHERE idempotency_key = $1")
        .bind(key)
        .execute(&db)
        .await?;
    db.close().await;
    let mut redis = j.redis().await?;
    redis::cmd("DEL")
        .arg(payments::idempotency::redis_key(key))
        .query_async::<()>(&mut redis)
        .await
        .context("deleting the idempotency record")?;
    Ok(())
}

/// A payment created earlier with the key and the very request the interaction repeats: the
/// row carries that request's fingerprint, so payments answers with a replay. Redis holds no
/// record, as after its records expired: Postgres is authoritative.
async fn payment_made_with_key(stack: Arc<Stack>, state: StateCall) -> anyhow::Result<()> {
    forget_key(stack.clone(), state.clone()).await?;
    let request = payments::validation::CreatePaymentRequest {
        order_id: uuid(&state, "order_id")?,
        amount: state.param("amount")?,
        currency: state.str("currency")?.to_string(),
        card_token: state.str("card_token")?.to_string(),
    };
    let (status, reason) = payments::model::authorize(&request.card_token);
    let id = uuid(&state, "id")?;
    let db = journey(&stack, &state).sql(PAYMENTS).await?;
    sqlx::query("DELETE FROM payments WHERE id = $1")
        .bind(id)
        .execute(&db)
        .await?;
    sqlx::query(
        "INSERT INTO payments (id, order_id, amount, currency, status, decline_reason, idempotency_key, request_fingerprint)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(request.order_id)
    .bind(request.amount)
    .bind(&request.currency)
    .bind(status.as_str())
    .bind(reason)
    .bind(state.str("idempotency_key")?)
    .bind(payments::idempotency::fingerprint(&request))
    .execute(&db)
    .await
    .context("inserting the earlier payment")?;
    db.close().await;
    Ok(())
}

/// Produces the message a message interaction describes, from the real orders service.
async fn produce(stack: Arc<Stack>, request: MessageRequest) -> anyhow::Result<ProducedMessage> {
    match request.description.as_str() {
        "an order.paid event" => order_paid(stack, &request).await,
        other => Err(anyhow!("orders produces no message `{other}`")),
    }
}

/// Places an order with a card payments approves, through orders' public API, and returns the
/// `order.paid` event orders publishes for it, captured on a queue of our own.
async fn order_paid(
    stack: Arc<Stack>,
    request: &MessageRequest,
) -> anyhow::Result<ProducedMessage> {
    let j = Journey::new(stack, "produce order.paid");
    let mut bus = j
        .capture(
            orders::events::EXCHANGE,
            orders::events::ORDER_PAID_ROUTING_KEY,
        )
        .await?;
    let currency = request
        .states
        .iter()
        .find_map(|s| {
            s.params
                .get("currency")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "EUR".to_string());
    let mut body = suites::order(&suites::customer(), suites::GOOD_CARD);
    body["currency"] = Value::String(currency);
    let placed = suites::place_order(&j, &body).await?;
    anyhow::ensure!(
        placed["status"] == "PAID",
        "the order was not paid: {placed}"
    );
    let id = suites::id_of(&placed)?;
    let message = bus
        .wait_for(PUBLISH_WITHIN, |m| {
            m.json().is_ok_and(|v| v["order_id"] == id.as_str())
        })
        .await
        .with_context(|| format!("orders published no order.paid for order {id}"))?;
    let p = &message.properties;
    let mut metadata = Map::new();
    if let Some(ct) = p.content_type() {
        metadata.insert("contentType".into(), ct.as_str().into());
    }
    if let Some(id) = p.message_id() {
        metadata.insert("messageId".into(), id.as_str().into());
    }
    if let Some(kind) = p.kind() {
        metadata.insert("type".into(), kind.as_str().into());
    }
    if let Some(mode) = p.delivery_mode() {
        metadata.insert("deliveryMode".into(), (*mode).into());
    }
    metadata.insert("exchange".into(), orders::events::EXCHANGE.into());
    metadata.insert("routingKey".into(), message.routing_key.clone().into());
    for (k, v) in shop_common::amqp::headers_to_map(p.headers().as_ref()) {
        metadata.insert(k, v.into());
    }
    Ok(ProducedMessage {
        contents: message.body.clone(),
        content_type: p
            .content_type()
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "application/json".into()),
        metadata,
    })
}
