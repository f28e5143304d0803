//! Checks the native and container integration tests share.

use std::time::Duration;

use harness::{Endpoint, Stack};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use sqlx::Connection;

/// PostgreSQL (the generated credentials, a table `kept` with 42, the extra database `extra`),
/// Redis (SET/GET) and RabbitMQ (publish, consume) all answer; returns PostgreSQL's endpoint.
pub async fn servers_answer(stack: &Stack) -> Endpoint {
    let pg = stack.endpoint("postgres").unwrap();
    let mut conn = sqlx::PgConnection::connect(&stack.url("postgres").unwrap())
        .await
        .unwrap();
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(Some(user), pg.user);
    sqlx::raw_sql("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let mut extra = sqlx::PgConnection::connect(&pg.url(Some("extra")).unwrap())
        .await
        .unwrap();
    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut extra)
        .await
        .unwrap();
    assert_eq!(db, "extra");
    drop(extra);

    // Redis.
    let client = redis::Client::open(stack.url("redis").unwrap()).unwrap();
    let mut r = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut r)
        .await
        .unwrap();
    let v: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(v, "v");

    // RabbitMQ: publish and consume a message.
    let amqp =
        lapin::Connection::connect(&stack.url("rabbitmq").unwrap(), harness::amqp::properties())
            .await
            .unwrap();
    let channel = amqp.create_channel().await.unwrap();
    channel
        .queue_declare("q", QueueDeclareOptions::default(), Default::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            "",
            "q",
            BasicPublishOptions::default(),
            b"hello",
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            "q",
            "t",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut consumer),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(delivery.data, b"hello");
    let _ = amqp.close(200, "done").await;
    pg
}

/// When `service` started, was launched and became ready in this stack's start.
pub fn timing(stack: &Stack, service: &str) -> harness::scheduler::Timing {
    stack
        .timings()
        .iter()
        .find(|t| t.service == service)
        .unwrap_or_else(|| panic!("no timing for `{service}`"))
        .clone()
}
