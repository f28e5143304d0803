//! Degradation journeys: each breaks a dependency on purpose (stops payments, pauses Redis,
//! pauses RabbitMQ) and checks the shop degrades and recovers as designed. They run in a test
//! binary of their own — so on a stack of their own — one at a time, so no other trial ever
//! sees the faults.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
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
            let started = Instant::now();
            let placed = j
                .step(
                    &format!("order {n} while payments is down"),
                    place_order(&j, &order(&who, GOOD_CARD)),
                )
                .await?;
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
            ids.push(id_of(&placed)?);
        }
        j.step("the breaker opens: orders answers at once", async {
            let started = Instant::now();
            let placed = place_order(&j, &order(&who, GOOD_CARD)).await?;
            ensure!(
                placed["status"] == "PENDING_PAYMENT",
                "status is {}",
                placed["status"]
            );
            let took = started.elapsed();
            ensure!(
                took < Duration::from_millis(1500),
                "an order took {took:?} with the breaker open"
            );
            ids.push(id_of(&placed)?);
            Ok(())
        })
        .await?;
        j.step("start payments again", async {
            Ok(stack.start_service("payments").await.map(|_| ())?)
        })
        .await?;
        for id in &ids {
            j.step(
                &format!("order {id} becomes PAID by itself"),
                order_reaches(&j, id, "PAID", RECOVERY),
            )
            .await?;
        }
        j.step(
            "every order gets its notification",
            notifications_reach(&j, &who, ids.len(), RECOVERY),
        )
        .await?;
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = stack.start_service("payments").await;
    }
    result
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
    ensure!(placed["status"] == "PAID", "status is {}", placed["status"]);
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
