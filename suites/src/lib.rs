//! Helpers the shop's suites share: request bodies, unique customers, common steps.

use std::time::Duration;

use anyhow::Context as _;
use harness::journey::{eventually, Journey};
use serde_json::{json, Value};

/// The card token the payments service always declines.
pub const DECLINED_CARD: &str = "tok_declined";
/// A card token that is approved.
pub const GOOD_CARD: &str = "tok_visa";

/// Where the suites keep their snapshots.
pub fn snapshots() -> harness::snapshot::Snapshots {
    harness::snapshot::Snapshots::new(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"))
}

/// A customer id no other trial uses.
pub fn customer() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A valid order: two lines, 2 × 500 + 1 × 234 = 1234 minor units.
pub fn order(customer: &str, card: &str) -> Value {
    json!({
        "customer_id": customer,
        "currency": "EUR",
        "card_token": card,
        "items": [
            {"sku": "SKU-MUG", "quantity": 2, "unit_price": 500},
            {"sku": "SKU-TEA", "quantity": 1, "unit_price": 234}
        ]
    })
}

/// Places an order and returns its JSON, expecting 201.
pub async fn place_order(j: &Journey, body: &Value) -> anyhow::Result<Value> {
    j.http("orders")?
        .post("/orders", body)
        .await?
        .expect_status(201)
}

/// The `id` field of a JSON object.
pub fn id_of(v: &Value) -> anyhow::Result<String> {
    v["id"]
        .as_str()
        .map(str::to_string)
        .context("the response has no string `id`")
}

/// Waits until `GET /orders/{id}` reports `status`.
pub async fn order_reaches(
    j: &Journey,
    id: &str,
    status: &str,
    within: Duration,
) -> anyhow::Result<Value> {
    let http = j.http("orders")?;
    eventually(within, || {
        let http = http.clone();
        async move {
            let r = http
                .get(&format!("/orders/{id}"))
                .await
                .map_err(|e| e.to_string())?;
            let v = r.json().map_err(|e| e.to_string())?;
            if v["status"] == status {
                Ok(v)
            } else {
                Err(format!("order {id} is {}", v["status"]))
            }
        }
    })
    .await
}

/// Waits until the customer has `n` notifications listed; returns the list.
pub async fn notifications_reach(
    j: &Journey,
    customer: &str,
    n: usize,
    within: Duration,
) -> anyhow::Result<Value> {
    let http = j.http("notifications")?;
    eventually(within, || {
        let http = http.clone();
        async move {
            let r = http
                .get(&format!("/notifications?customer_id={customer}"))
                .await
                .map_err(|e| e.to_string())?;
            let v = r.json().map_err(|e| e.to_string())?;
            let count = v["notifications"].as_array().map(Vec::len).unwrap_or(0);
            if count == n {
                Ok(v)
            } else {
                Err(format!("{count} notification(s): {v}"))
            }
        }
    })
    .await
}

/// Runs a query with text arguments (cast in SQL, e.g. `$1::uuid`) and returns its first row.
///
/// Boxed with an explicit `Send` bound: sqlx's executor futures otherwise trip the compiler's
/// higher-ranked `Send` checks inside the trials' futures.
pub fn fetch_row<'a>(
    pool: &'a sqlx::PgPool,
    sql: &'a str,
    args: &'a [&'a str],
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = anyhow::Result<sqlx::postgres::PgRow>> + Send + 'a>,
> {
    Box::pin(async move {
        let mut query = sqlx::query(sql);
        for a in args {
            query = query.bind(*a);
        }
        query
            .fetch_one(pool)
            .await
            .with_context(|| format!("running `{sql}`"))
    })
}

/// Runs a statement with text arguments.
pub fn execute<'a>(
    pool: &'a sqlx::PgPool,
    sql: &'a str,
    args: &'a [&'a str],
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<u64>> + Send + 'a>> {
    Box::pin(async move {
        let mut query = sqlx::query(sql);
        for a in args {
            query = query.bind(*a);
        }
        Ok(query
            .execute(pool)
            .await
            .with_context(|| format!("running `{sql}`"))?
            .rows_affected())
    })
}

/// The first column of the first row, as an integer count.
pub async fn count(pool: &sqlx::PgPool, sql: &str, args: &[&str]) -> anyhow::Result<i64> {
    use sqlx::Row as _;
    Ok(fetch_row(pool, sql, args).await?.try_get(0)?)
}
