//! Degradation journeys: each breaks a dependency on purpose (stops payments, pauses payments,
//! pauses Redis, pauses RabbitMQ) and checks the shop degrades and recovers as designed. They run in a test
//! binary of their own — so on a stack of their own — one at a time, so no other trial ever
//! sees the faults.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use harness::journey::{eventually, Journey};
use harness::runner::{Suite, TrialContext};
use sqlx::Row as _;
use suites::{
    customer, fetch_row, id_of, notifications_reach, order, order_reaches, place_order, GOOD_CARD,
};

const RECOVERY: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    Suite::new("faults")
        .sequential()
        .trial("payments_down", payments_down)
        .trial("payments_slow", payments_slow)
        .trial("redis_down", redis_down)
        .trial("broker_outage", broker_outage)
        .run()
}

async fn payments_down(ctx: Arc<TrialContext>) -> anyhow::Result<()> {
    let j = Journey::new(ctx.stack.clone(), &ctx.name);
    let stack = &ctx.stack;
    j.step("stop payments", async { Ok(stack.stop("payments").await?) })
        .await?;
    let result = async {
        let who = customer();
        let mut ids = Vec::new();
        for n in 0..3 {
            let id = j
                .step(
                    &format!("order {n} while payments is down waits for payment"),
                    async {
                        let started = Instant::now();
                        let placed = place_order(&j, &order(&who, GOOD_CARD)).await?;
                        let took = started.elapsed();
                        ensure!(
                            placed["status"] == "PENDING_PAYMENT",
                            "status is {}",
                            placed["status"]
                        );
                        ensure!(
                            took < Duration::from_secs(8),
                            "orders hung for {took:?} with payments down"
                        );
                        id_of(&placed)
                    },
                )
                .await?;
            ids.push(id);
        }
        ids.push(breaker_open(&j, &who).await?);
        j.step("start payments again", async {
            Ok(stack.start_service("payments").await.map(|_| ())?)
        })
        .await?;
        recovers(&j, &who, &ids).await
    }
    .await;
    if result.is_err() {
        let _ = stack.start_service("payments").await;
    }
    result
}

/// A payments that accepts connections but never answers (paused): orders' calls time out, the
/// breaker opens, and then orders answers without waiting — the case a stopped payments, which
/// refuses connections at once, cannot show.
async fn payments_slow(ctx: Arc<TrialContext>) -> anyhow::Result<()> {
    let j = Journey::new(ctx.stack.clone(), &ctx.name);
    let stack = &ctx.stack;
    j.step("pause payments", async {
        Ok(stack.pause("payments").await?)
    })
    .await?;
    let result = async {
        let who = customer();
        // As many concurrent orders as failures open the breaker (BREAKER_FAILURE_THRESHOLD):
        // each one times out once, so together they cost one payments timeout.
        let mut ids = j
            .step("five orders while payments hangs wait for payment", async {
                let body = order(&who, GOOD_CARD);
                let started = Instant::now();
                let placed =
                    futures::future::join_all((0..5).map(|_| place_order(&j, &body))).await;
                let took = started.elapsed();
                let mut ids = Vec::new();
                for p in placed {
                    let p = p?;
                    ensure!(
                        p["status"] == "PENDING_PAYMENT",
                        "status is {}",
                        p["status"]
                    );
                    ids.push(id_of(&p)?);
                }
                ensure!(
                    took < Duration::from_secs(5),
                    "orders took {took:?} to answer with payments hanging: the payments \
                         timeout (PAYMENTS_TIMEOUT_MS) is not applied"
                );
                Ok(ids)
            })
            .await?;
        ids.push(breaker_open(&j, &who).await?);
        j.step("unpause payments", async {
            Ok(stack.unpause("payments").await?)
        })
        .await?;
        recovers(&j, &who, &ids).await
    }
    .await;
    if result.is_err() {
        let _ = stack.unpause("payments").await;
    }
    result
}

/// The payments entry of orders' `/health`: circuit state and how many calls orders made.
async fn payments_health(j: &Journey) -> anyhow::Result<(String, u64)> {
    let health = j.http("orders")?.get("/health").await?.json()?;
    let payments = &health["dependencies"]["payments"];
    let circuit = payments["circuit"]
        .as_str()
        .with_context(|| format!("orders' /health has no payments circuit: {health}"))?;
    let calls = payments["calls"]
        .as_u64()
        .with_context(|| format!("orders' /health has no payments call count: {health}"))?;
    Ok((circuit.to_string(), calls))
}

/// With payments unreachable: the circuit reads open, and an order is answered at once without
/// a call to payments; returns the order's id.
async fn breaker_open(j: &Journey, who: &str) -> anyhow::Result<String> {
    j.step(
        "orders' /health reports the payments circuit open",
        circuit_is_open(j),
    )
    .await?;
    j.step(
        "with the breaker open orders answers at once and calls nobody",
        order_while_open(j, who),
    )
    .await
}

async fn circuit_is_open(j: &Journey) -> anyhow::Result<()> {
    let (circuit, _) = payments_health(j).await?;
    ensure!(
        circuit == "open",
        "orders' /health reports the payments circuit `{circuit}` after repeated payments \
         failures, expected `open`: orders' circuit breaker (fixtures/orders/src/gateway.rs) \
         did not open"
    );
    Ok(())
}

/// Places an order while the breaker is open: it must answer PENDING_PAYMENT at once, and
/// orders must send payments no request for it. Returns the order id.
async fn order_while_open(j: &Journey, who: &str) -> anyhow::Result<String> {
    let (_, before) = payments_health(j).await?;
    let started = Instant::now();
    let placed = place_order(j, &order(who, GOOD_CARD)).await?;
    let took = started.elapsed();
    let (_, after) = payments_health(j).await?;
    ensure!(
        placed["status"] == "PENDING_PAYMENT",
        "status is {}",
        placed["status"]
    );
    ensure!(
        after == before,
        "orders sent {} request(s) to payments while its circuit breaker was open",
        after.saturating_sub(before)
    );
    ensure!(
        took < Duration::from_millis(1000),
        "an order took {took:?} with the breaker open, expected an answer at once"
    );
    id_of(&placed)
}

/// Every order placed during the outage becomes PAID by itself and gets its notification.
async fn recovers(j: &Journey, who: &str, ids: &[String]) -> anyhow::Result<()> {
    for id in ids {
        j.step(
            &format!("order {id} becomes PAID by itself"),
            order_reaches(j, id, "PAID", RECOVERY),
        )
        .await?;
    }
    j.step(
        "every order gets its notification",
        notifications_reach(j, who, ids.len(), RECOVERY),
    )
    .await?;
    Ok(())
}

async fn redis_down(ctx: Arc<TrialContext>) -> anyhow::Result<()> {
    let j = Journey::new(ctx.stack.clone(), &ctx.name);
    let stack = &ctx.stack;
    let placed = j
        .step(
            "place an order",
            place_order(&j, &order(&customer(), GOOD_CARD)),
        )
        .await?;
    let id = id_of(&placed)?;
    let orders = j.http("orders")?;
    let path = format!("/orders/{id}");
    j.step("the order is cached", async {
        eventually(Duration::from_secs(5), || async {
            let r = orders.get(&path).await.map_err(|e| e.to_string())?;
            match r.header("x-cache") {
                Some("hit") => Ok(()),
                other => Err(format!("x-cache: {other:?}")),
            }
        })
        .await
    })
    .await?;
    j.step("pause redis", async { Ok(stack.pause("redis").await?) })
        .await?;
    let result = j
        .step("orders still answers from Postgres", async {
            for _ in 0..3 {
                let started = Instant::now();
                let r = orders.get(&path).await?;
                let v = r.expect_status(200)?;
                ensure!(v["status"] == "PAID", "status {}", v["status"]);
                ensure!(
                    r.header("x-cache") == Some("bypass"),
                    "x-cache: {:?}",
                    r.header("x-cache")
                );
                ensure!(
                    started.elapsed() < Duration::from_secs(2),
                    "a read took {:?}",
                    started.elapsed()
                );
            }
            Ok(())
        })
        .await;
    j.step("unpause redis", async { Ok(stack.unpause("redis").await?) })
        .await?;
    result?;
    j.step("the cache works again", async {
        eventually(RECOVERY, || async {
            let r = orders.get(&path).await.map_err(|e| e.to_string())?;
            match r.header("x-cache") {
                Some("hit") => Ok(()),
                other => Err(format!("x-cache: {other:?}")),
            }
        })
        .await
    })
    .await
}

async fn broker_outage(ctx: Arc<TrialContext>) -> anyhow::Result<()> {
    let j = Journey::new(ctx.stack.clone(), &ctx.name);
    let stack = &ctx.stack;
    let who = customer();
    j.step("pause rabbitmq", async {
        Ok(stack.pause("rabbitmq").await?)
    })
    .await?;
    let placed = j
        .step(
            "place an order during the outage",
            place_order(&j, &order(&who, GOOD_CARD)),
        )
        .await;
    j.step("unpause rabbitmq", async {
        Ok(stack.unpause("rabbitmq").await?)
    })
    .await?;
    let placed = placed?;
    j.step("the order was paid during the outage", async {
        ensure!(placed["status"] == "PAID", "status is {}", placed["status"]);
        Ok(())
    })
    .await?;
    j.step(
        "the notification arrives after the outage",
        notifications_reach(&j, &who, 1, RECOVERY),
    )
    .await?;
    let db = j.sql("orders").await?;
    let id = id_of(&placed)?;
    j.step("the outbox row is published exactly once", async {
        let row = fetch_row(
            &db,
            "SELECT coalesce(bool_and(published_at IS NOT NULL), false), count(*) FROM outbox WHERE aggregate_id = $1::uuid",
            &[&id],
        )
        .await?;
        let (published, count): (bool, i64) = (row.try_get(0)?, row.try_get(1)?);
        ensure!(published && count == 1, "outbox: published={published}, rows={count}");
        Ok(())
    })
    .await
}
