//! End-to-end journeys through the shop on one shared stack. Trials run in parallel and keep
//! out of each other's way: each uses customers, order ids, idempotency keys and capture
//! queues of its own. Journeys that break a shared dependency live in `faults.rs`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use harness::isolation::DatabaseTemplate;
use harness::journey::{eventually, Journey};
use harness::runner::{Suite, TrialContext};
use harness::snapshot::Snapshots;
use serde_json::{json, Value};
use sqlx::Row as _;
use suites::{
    count, customer, execute, fetch_row, id_of, notifications_reach, order, place_order, snapshots,
    DECLINED_CARD, GOOD_CARD,
};

/// Where orders publishes its events, and where notifications dead-letters what it cannot read.
const EXCHANGE: &str = "shop.events";
const ORDER_PAID: &str = "order.paid";
const DEAD_LETTER_EXCHANGE: &str = "notifications.dlx";
const EVENTUALLY: Duration = Duration::from_secs(15);
/// How long after the first `order.paid` of an order a second one would be noticed.
const DUPLICATE_WINDOW: Duration = Duration::from_millis(1000);
/// The order total of [`order`] in minor units, and its currency.
const TOTAL: i64 = 1234;
const CURRENCY: &str = "EUR";

fn main() -> ExitCode {
    Suite::new("journeys")
        .trial("happy_path", happy_path)
        .trial("declined_payment", declined_payment)
        .trial("idempotency", idempotency)
        .trial("trace_id_everywhere", trace_id_everywhere)
        // Reads their logs: on the external backend there are none, and it is ignored, saying so.
        .needs_logs(
            "trace_id_everywhere",
            &["orders", "payments", "notifications"],
        )
        .trial(
            "malformed_order_paid_is_dead_lettered",
            malformed_order_paid_is_dead_lettered,
        )
        .trial("bad_input", bad_input)
        .trial(
            "snapshot_detects_a_changed_response",
            snapshot_detects_a_changed_response,
        )
        .trial("fresh_database_isolation", fresh_database_isolation)
        .run()
}

async fn happy_path(ctx: Arc<TrialContext>) -> anyhow::Result<()> {
    let j = Journey::new(ctx.stack.clone(), &ctx.name);
    let who = customer();
    let mut bus = j.capture("shop.events", "order.paid").await?;
    let placed = j
        .step("place an order", place_order(&j, &order(&who, GOOD_CARD)))
        .await?;
    let id = id_of(&placed)?;
    j.step("the order is paid at once", async {
        ensure!(placed["status"] == "PAID", "status is {}", placed["status"]);
        ensure!(
            placed["total"] == TOTAL,
            "total is {}, expected {TOTAL}",
            placed["total"]
        );
        Ok(())
    })
    .await?;
    let event = j
        .step("order.paid is published exactly once", async {
            let of_order = |m: &harness::journey::Message| {
                m.json().is_ok_and(|v| v["order_id"] == id.as_str())
            };
            let m = bus.wait_for(EVENTUALLY, of_order).await?;
            let all = bus.collect(DUPLICATE_WINDOW, of_order).await;
            ensure!(
                all.len() == 1,
                "{} order.paid messages on the bus for order {id}, expected 1: orders' outbox \
                 publisher sent the event more than once",
                all.len()
            );
            m.json()
        })
        .await?;
    let notifications = j
        .step(
            "a notification is listed",
            notifications_reach(&j, &who, 1, EVENTUALLY),
        )
        .await?;
    j.step("rows in every service's database agree", async {
        let orders = j.sql("orders").await?;
        let row = fetch_row(
            &orders,
            "SELECT status, payment_id::text FROM orders WHERE id = $1::uuid",
            &[&id],
        )
        .await?;
        let status: String = row.try_get(0)?;
        ensure!(status == "PAID", "orders row is {status}");
        let payment_id: String = row
            .try_get::<Option<String>, _>(1)?
            .context("the order row has no payment_id")?;
        let payments = j.sql("payments").await?;
        let row = fetch_row(
            &payments,
            "SELECT status, amount, currency FROM payments WHERE id = $1::uuid AND order_id = $2::uuid",
            &[&payment_id, &id],
        )
        .await?;
        let (p_status, amount): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
        let currency: String = row.try_get(2)?;
        ensure!(p_status == "APPROVED", "payment row: status {p_status}, expected APPROVED");
        ensure!(amount == TOTAL, "payment row: amount {amount}, expected {TOTAL}");
        ensure!(currency == CURRENCY, "payment row: currency {currency}, expected {CURRENCY}");
        let notes = j.sql("notifications").await?;
        let rows = count(
            &notes,
            "SELECT count(*) FROM notifications WHERE order_id = $1::uuid",
            &[&id],
        )
        .await?;
        ensure!(
            rows == 1,
            "notifications' database has {rows} rows for order {id}, expected 1"
        );
        ensure!(
            event["payment_id"] == payment_id.as_str(),
            "event payment_id {}",
            event["payment_id"]
        );
        Ok(())
    })
    .await?;
    let fetched = j
        .step("GET /orders/{id} answers the same order", async {
            j.http("orders")?
                .get(&format!("/orders/{id}"))
                .await?
                .expect_status(200)
        })
        .await?;
    j.step("responses and the event match their snapshots", async {
        let snap = snapshots();
        snap.check_json(&Snapshots::name(&ctx.name, "placed_order"), &placed)?;
        snap.check_json(&Snapshots::name(&ctx.name, "fetched_order"), &fetched)?;
        snap.check_json(&Snapshots::name(&ctx.name, "order_paid_event"), &event)?;
        snap.check_json(&Snapshots::name(&ctx.name, "notifications"), &notifications)
    })
    .await
}

async fn declined_payment(ctx: Arc<TrialContext>) -> anyhow::Result<()> {
    let j = Journey::new(ctx.stack.clone(), &ctx.name);
    let who = customer();
    let mut bus = j.capture("shop.events", "order.paid").await?;
    let placed = j
        .step(
            "place an order with a declined card",
            place_order(&j, &order(&who, DECLINED_CARD)),
        )
        .await?;
    let id = id_of(&placed)?;
    j.step("the order ends DECLINED", async {
        ensure!(
            placed["status"] == "DECLINED",
            "status is {}",
            placed["status"]
        );
        ensure!(
            placed["decline_reason"] == "card_declined",
            "reason is {}",
            placed["decline_reason"]
        );
        Ok(())
    })
    .await?;
    j.step("no order.paid event and no notification", async {
        let events = bus
            .collect(Duration::from_secs(2), |m| {
                m.json().is_ok_and(|v| v["order_id"] == id.as_str())
            })
            .await;
        ensure!(
            events.is_empty(),
            "{} order.paid event(s) for a declined order",
            events.len()
        );
        let orders = j.sql("orders").await?;
        let outbox = count(
            &orders,
            "SELECT count(*) FROM outbox WHERE aggregate_id = $1::uuid",
            &[&id],
        )
        .await?;
        ensure!(outbox == 0, "{outbox} outbox rows for a declined order");
        let list = j
            .http("notifications")?
            .get(&format!("/notifications?customer_id={who}"))
            .await?
            .expect_status(200)?;
        ensure!(list["notifications"] == json!([]), "notifications: {list}");
        Ok(())
    })
    .await?;
    j.step("the response matches its snapshot", async {
        snapshots().check_json(&Snapshots::name(&ctx.name, "declined_order"), &placed)
    })
    .await
}

async fn idempotency(ctx: Arc<TrialContext>) -> anyhow::Result<()> {
    let j = Journey::new(ctx.stack.clone(), &ctx.name);
    let payments = j.http("payments")?;
    let key = format!("idem-{}", uuid::Uuid::new_v4());
    let body = json!({"order_id": uuid::Uuid::new_v4(), "amount": 999, "currency": "EUR", "card_token": GOOD_CARD});
    let send = |payments: harness::journey::Http, body: Value, key: String| async move {
        payments
            .send(
                reqwest::Method::POST,
                "/payments",
                Some(&body),
                &[("Idempotency-Key", &key)],
            )
            .await
    };
    let first = j
        .step("first payment", async {
            send(payments.clone(), body.clone(), key.clone())
                .await?
                .expect_status(201)
        })
        .await?;
    let replay = j
        .step("the same key again returns the original payment", async {
            let r = send(payments.clone(), body.clone(), key.clone()).await?;
            ensure!(
                r.header("idempotent-replayed") == Some("true"),
                "no Idempotent-Replayed header"
            );
            r.expect_status(201)
        })
        .await?;
    j.step("the replay is the first payment", async {
        ensure!(
            first["id"] == replay["id"],
            "replay has another id: {} vs {}",
            first["id"],
            replay["id"]
        );
        Ok(())
    })
    .await?;
    j.step("ten concurrent requests with one new key make one payment", async {
        let key2 = format!("idem-{}", uuid::Uuid::new_v4());
        let body2 = json!({"order_id": uuid::Uuid::new_v4(), "amount": 500, "currency": "USD", "card_token": GOOD_CARD});
        let answers = futures::future::join_all((0..10).map(|_| send(payments.clone(), body2.clone(), key2.clone()))).await;
        let mut ids = std::collections::BTreeSet::new();
        for a in answers {
            let a = a?;
            // A request racing the first may be told to retry; nothing else is acceptable.
            match a.status {
                201 => {
                    ids.insert(a.json()?["id"].to_string());
                }
                409 if a.body.contains("request_in_progress") => {}
                other => anyhow::bail!("unexpected {other}: {}", a.body),
            }
        }
        ensure!(ids.len() == 1, "{} different payment ids: {ids:?}", ids.len());
        let db = j.sql("payments").await?;
        for k in [&key, &key2] {
            let rows = count(&db, "SELECT count(*) FROM payments WHERE idempotency_key = $1", &[k]).await?;
            ensure!(rows == 1, "{rows} payment rows for key {k}");
        }
        Ok(())
    })
    .await?;
    j.step("the same key with another body is a conflict", async {
        let other = json!({"order_id": body["order_id"], "amount": 1000, "currency": "EUR", "card_token": GOOD_CARD});
        let r = send(payments.clone(), other, key.clone()).await?;
        let v = r.expect_status(409)?;
        snapshots().check_json(&Snapshots::name(&ctx.name, "conflict"), &v)
    })
    .await
}

async fn trace_id_everywhere(ctx: Arc<TrialContext>) -> anyhow::Result<()> {
    let j = Journey::new(ctx.stack.clone(), &ctx.name);
    let who = customer();
    let trace = j.trace_id().to_string();
    let mut bus = j.capture("shop.events", "order.paid").await?;
    let placed = j
        .step("place an order", place_order(&j, &order(&who, GOOD_CARD)))
        .await?;
    let id = id_of(&placed)?;
    j.step("the trace id is in the order.paid message", async {
        let m = bus
            .wait_for(EVENTUALLY, |m| {
                m.json().is_ok_and(|v| v["order_id"] == id.as_str())
            })
            .await?;
        ensure!(
            m.json()?["trace_id"] == trace.as_str(),
            "message trace_id {}",
            m.json()?["trace_id"]
        );
        let header = m.header("trace_id").context("no trace_id header")?;
        ensure!(header == trace, "trace_id header is {header}");
        let parent = m.header("traceparent").context("no traceparent header")?;
        ensure!(parent.contains(&trace), "traceparent header is {parent}");
        Ok(())
    })
    .await?;
    j.step("payments received the trace from orders as traceparent", async {
        let payments = j.sql("payments").await?;
        let row = fetch_row(
            &payments,
            "SELECT traceparent FROM payments WHERE order_id = $1::uuid",
            &[&id],
        )
        .await?;
        let received: Option<String> = row.try_get(0)?;
        let received = received.with_context(|| {
            format!(
                "payments received no `traceparent` header from orders for order {id}: orders \
                 must propagate the W3C trace context on its payments call"
            )
        })?;
        let parts: Vec<&str> = received.split('-').collect();
        ensure!(
            parts.len() == 4 && parts[1] == trace,
            "payments received traceparent `{received}` from orders, expected one with trace id {trace}"
        );
        Ok(())
    })
    .await?;
    j.step(
        "a notification is listed",
        notifications_reach(&j, &who, 1, EVENTUALLY),
    )
    .await?;
    j.step(
        "the trace id is in the log lines of all three services",
        async {
            for service in ["orders", "payments", "notifications"] {
                // A service whose output cannot be read (the external backend) says so at once,
                // rather than reading as one that logged nothing.
                ctx.stack.logs(service, 1).await?;
                eventually(Duration::from_secs(5), || async {
                    let lines = ctx
                        .stack
                        .logs(service, 5000)
                        .await
                        .map_err(|e| e.to_string())?;
                    let hits = lines.iter().filter(|l| l.contains(&trace)).count();
                    if hits > 0 {
                        Ok(())
                    } else {
                        Err(format!(
                            "none of the last {} lines of `{service}` has trace id {trace}",
                            lines.len()
                        ))
                    }
                })
                .await?;
            }
            Ok(())
        },
    )
    .await
}

/// A malformed `order.paid` is dead-lettered by notifications, and the valid message after it is
/// still processed: a consumer that requeues forever, drops the message or stops fails here.
async fn malformed_order_paid_is_dead_lettered(ctx: Arc<TrialContext>) -> anyhow::Result<()> {
    let j = Journey::new(ctx.stack.clone(), &ctx.name);
    j.watch("notifications");
    let mut dead = j.capture_fanout(DEAD_LETTER_EXCHANGE).await?;
    let bad_id = uuid::Uuid::new_v4().to_string();
    j.step("publish a malformed order.paid", async {
        let body = json!({"schema_version": 1, "type": "order.paid", "order_id": "not-a-uuid"});
        j.publish(
            EXCHANGE,
            ORDER_PAID,
            &bad_id,
            body.to_string().as_bytes(),
            &[],
        )
        .await
    })
    .await?;
    let who = customer();
    j.step("publish a valid order.paid after it", async {
        let event = orders::events::OrderPaid::new(
            uuid::Uuid::new_v4(),
            &who,
            TOTAL,
            CURRENCY,
            uuid::Uuid::new_v4(),
            chrono::Utc::now(),
            j.trace_id(),
        );
        let message = orders::events::order_paid_message(
            &event,
            &shop_common::TraceContext::from_trace_id(j.trace_id()),
        );
        let headers: Vec<(&str, &str)> = message
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        j.publish(
            &message.exchange,
            &message.routing_key,
            &message.message_id,
            &message.payload,
            &headers,
        )
        .await
    })
    .await?;
    j.step(
        "the malformed message lands in the dead-letter queue",
        async {
            dead.wait_for(Duration::from_secs(5), |m| {
                m.properties
                    .message_id()
                    .as_ref()
                    .is_some_and(|id| id.as_str() == bad_id)
            })
            .await
            .with_context(|| {
                format!(
                "message {bad_id} was not dead-lettered to `{DEAD_LETTER_EXCHANGE}`: notifications \
                 must reject a malformed order.paid without requeueing it"
            )
            })?;
            Ok(())
        },
    )
    .await?;
    j.step(
        "the valid message after it is still processed",
        notifications_reach(&j, &who, 1, Duration::from_secs(5)),
    )
    .await?;
    Ok(())
}

async fn bad_input(ctx: Arc<TrialContext>) -> anyhow::Result<()> {
    let j = Journey::new(ctx.stack.clone(), &ctx.name);
    let who = customer();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no_items",
            json!({"customer_id": who, "currency": "EUR", "card_token": GOOD_CARD, "items": []}),
            "items",
        ),
        (
            "zero_quantity",
            json!({"customer_id": who, "currency": "EUR", "card_token": GOOD_CARD,
                   "items": [{"sku": "A", "quantity": 0, "unit_price": 100}]}),
            "items[0].quantity",
        ),
        (
            "negative_price",
            json!({"customer_id": who, "currency": "EUR", "card_token": GOOD_CARD,
                   "items": [{"sku": "A", "quantity": 1, "unit_price": -5}]}),
            "items[0].unit_price",
        ),
        (
            "unknown_currency",
            json!({"customer_id": who, "currency": "XYZ", "card_token": GOOD_CARD,
                   "items": [{"sku": "A", "quantity": 1, "unit_price": 100}]}),
            "currency",
        ),
        (
            "missing_customer",
            json!({"currency": "EUR", "card_token": GOOD_CARD,
                   "items": [{"sku": "A", "quantity": 1, "unit_price": 100}]}),
            "customer_id",
        ),
    ];
    let orders = j.http("orders")?;
    for (label, body, field) in &cases {
        j.step(&format!("{label} is refused naming `{field}`"), async {
            let r = orders.post("/orders", body).await?;
            ensure!((400..500).contains(&r.status), "status {}", r.status);
            let v = r.json()?;
            let fields: Vec<&str> = v["fields"]
                .as_array()
                .map(|a| a.iter().filter_map(|f| f["field"].as_str()).collect())
                .unwrap_or_default();
            ensure!(
                fields.contains(field),
                "fields {fields:?} do not name `{field}`: {v}"
            );
            snapshots().check_json(&Snapshots::name(&ctx.name, label), &v)
        })
        .await?;
    }
    j.step("malformed JSON is refused", async {
        let r = orders
            .send(
                reqwest::Method::POST,
                "/orders",
                None,
                &[("content-type", "application/json")],
            )
            .await?;
        ensure!(r.status == 400, "status {} for an empty body", r.status);
        Ok(())
    })
    .await?;
    j.step("nothing was written", async {
        let db = j.sql("orders").await?;
        let rows = count(
            &db,
            "SELECT count(*) FROM orders WHERE customer_id = $1",
            &[&who],
        )
        .await?;
        ensure!(rows == 0, "{rows} order rows for refused orders");
        Ok(())
    })
    .await
}

/// The snapshot check is real: a response with a renamed field and one with another status
/// both fail against the committed snapshot.
async fn snapshot_detects_a_changed_response(ctx: Arc<TrialContext>) -> anyhow::Result<()> {
    if std::env::var("INSTA_UPDATE").is_ok_and(|v| v == "always")
        || std::env::var_os("INSTA_FORCE_PASS").is_some()
    {
        anyhow::bail!("this trial proves snapshots compare; it cannot with INSTA_UPDATE=always or INSTA_FORCE_PASS set");
    }
    let j = Journey::new(ctx.stack.clone(), &ctx.name);
    let placed = j
        .step(
            "place an order",
            place_order(&j, &order(&customer(), DECLINED_CARD)),
        )
        .await?;
    // Compare against a copy of the committed snapshot in a scratch directory, so a failing
    // comparison never leaves a pending snapshot in the repository.
    let scratch =
        std::env::temp_dir().join(format!("harness-snap-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch)?;
    let name = Snapshots::name("journeys::declined_payment", "declined_order");
    let committed =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("snapshots/{name}.snap"));
    std::fs::copy(&committed, scratch.join(format!("{name}.snap")))
        .with_context(|| format!("the committed snapshot {} is missing", committed.display()))?;
    let snap = Snapshots::new(&scratch);
    let result = j
        .step(
            "a renamed field and a changed status fail the snapshot",
            async {
                snap.check_json(&name, &placed)
                    .context("the unchanged response should match")?;
                let mut renamed = placed.clone();
                let status = renamed
                    .as_object_mut()
                    .context("not an object")?
                    .remove("status");
                renamed["state"] = status.unwrap_or_default();
                let err = snap
                    .check_json(&name, &renamed)
                    .err()
                    .context("a renamed field went unnoticed")?;
                ensure!(
                    err.to_string().contains("$.state: unexpected"),
                    "the failure does not name the field: {err}"
                );
                let mut changed = placed.clone();
                changed["status"] = json!("PAID");
                ensure!(
                    snap.check_json(&name, &changed).is_err(),
                    "a changed status went unnoticed"
                );
                Ok(())
            },
        )
        .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Two trials' fresh databases, cloned from the orders migrations, do not see each other.
async fn fresh_database_isolation(ctx: Arc<TrialContext>) -> anyhow::Result<()> {
    let migrations =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/orders/migrations");
    let j = Journey::new(ctx.stack.clone(), &ctx.name);
    let template = j
        .step(
            "a template database from the orders migrations",
            DatabaseTemplate::from_migrations(&ctx.stack, "orders_isolation", &migrations),
        )
        .await?;
    let (a, b) = j
        .step("two fresh databases from it", async {
            Ok((
                template.fresh_database().await?,
                template.fresh_database().await?,
            ))
        })
        .await?;
    j.step("a row written in one is not in the other", async {
        let pa = sqlx::PgPool::connect(&a.url).await?;
        let pb = sqlx::PgPool::connect(&b.url).await?;
        let id = uuid::Uuid::new_v4().to_string();
        execute(
            &pa,
            "INSERT INTO orders (id, customer_id, status, total, currency, card_token, trace_id)
             VALUES ($1::uuid, 'c', 'PAID', 1, 'EUR', 't', 'x')",
            &[&id],
        )
        .await?;
        let in_a = count(&pa, "SELECT count(*) FROM orders", &[]).await?;
        let in_b = count(&pb, "SELECT count(*) FROM orders", &[]).await?;
        pa.close().await;
        pb.close().await;
        ensure!(in_a == 1 && in_b == 0, "a has {in_a} rows, b has {in_b}");
        Ok(())
    })
    .await?;
    j.step("drop both databases", async {
        template.drop_database(&a).await?;
        template.drop_database(&b).await?;
        Ok(())
    })
    .await
}
