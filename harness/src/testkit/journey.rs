//! The journey toolkit: multi-step flows across a running stack, with named steps, a fresh
//! trace id per journey, HTTP clients per service, SQL/Redis/AMQP access and `eventually`.
//!
//! ```no_run
//! # async fn demo(stack: std::sync::Arc<harness::Stack>) -> anyhow::Result<()> {
//! use harness::journey::{eventually, Journey};
//! use std::time::Duration;
//!
//! let j = Journey::new(stack, "happy path");
//! let order = j
//!     .step("place an order", async {
//!         j.http("orders")?.post("/orders", &serde_json::json!({"sku": "x"})).await?.expect_status(201)
//!     })
//!     .await?;
//! let db = j.sql("orders").await?;
//! eventually(Duration::from_secs(10), || async {
//!     let status: String = sqlx::query_scalar("SELECT status FROM orders LIMIT 1")
//!         .fetch_one(&db).await.map_err(|e| e.to_string())?;
//!     if status == "PAID" { Ok(()) } else { Err(format!("status is {status}")) }
//! }).await?;
//! # Ok(()) }
//! ```
//!
//! A failed step names itself, shows the last HTTP exchange (request and response) and the log
//! tails of the services the journey talked to: the lines carrying the journey's trace id,
//! without the journey's own successful reads (its polling), so a service's warning about the
//! real cause is not pushed out of view by the test's `GET`s.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use serde_json::Value;
use tokio::time::Instant;

use crate::engine::stack::Stack;
use crate::manifest::Kind;

/// A W3C trace context: a fresh 32-hex trace id per journey.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The 32-hex-digit trace id.
    pub trace_id: String,
}

impl Trace {
    /// A fresh random trace id.
    pub fn new() -> Trace {
        Trace {
            trace_id: format!("{:032x}", rand::random::<u128>()),
        }
    }

    /// A `traceparent` header value with a fresh span id.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{:016x}-01", self.trace_id, rand::random::<u64>() | 1)
    }
}

impl Default for Trace {
    fn default() -> Self {
        Trace::new()
    }
}

/// One HTTP request and its response, as shown when a step fails.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// `METHOD url`.
    pub request: String,
    /// Request body, if any.
    pub request_body: Option<String>,
    /// Response status.
    pub status: u16,
    /// Response body.
    pub body: String,
}

impl std::fmt::Display for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  request:  {}", self.request)?;
        if let Some(b) = &self.request_body {
            writeln!(f, "            {b}")?;
        }
        write!(f, "  response: {} {}", self.status, self.body)
    }
}

/// A journey: a trace id, the services it touched, and its last HTTP exchange.
#[derive(Debug, Clone)]
pub struct Journey {
    stack: Arc<Stack>,
    name: String,
    trace: Trace,
    touched: Arc<Mutex<BTreeSet<String>>>,
    last: Arc<Mutex<Option<Exchange>>>,
    reads: Reads,
}

/// Paths of the `GET` requests the journey sent, to recognise its polling in log tails.
type Reads = Arc<Mutex<BTreeSet<String>>>;

/// Lines of a log tail shown when a step fails.
const TAIL_LINES: usize = 10;
/// How far back a failing step searches a service's log for its trace id.
const TAIL_SEARCH: usize = 2000;

/// The lines of `lines` worth showing for a journey: those with its trace id, minus the
/// service's own records of the journey's successful reads (JSON lines at info level or
/// below whose `method` is `GET` and whose `path` the journey read). `None` when no line
/// has the trace id.
fn journey_lines(
    lines: &[String],
    trace_id: &str,
    reads: &BTreeSet<String>,
) -> Option<Vec<String>> {
    let with_trace: Vec<&String> = lines.iter().filter(|l| l.contains(trace_id)).collect();
    if with_trace.is_empty() {
        return None;
    }
    let own_read = |line: &str| {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return false;
        };
        let quiet = v["level"]
            .as_str()
            .is_some_and(|l| matches!(l.to_ascii_lowercase().as_str(), "info" | "debug" | "trace"));
        quiet && v["method"] == "GET" && v["path"].as_str().is_some_and(|p| reads.contains(p))
    };
    let kept: Vec<String> = with_trace
        .into_iter()
        .filter(|l| !own_read(l))
        .cloned()
        .collect();
    let skip = kept.len().saturating_sub(TAIL_LINES);
    Some(kept.into_iter().skip(skip).collect())
}

impl Journey {
    /// Starts a journey on a stack.
    pub fn new(stack: Arc<Stack>, name: &str) -> Journey {
        Journey {
            stack,
            name: name.to_string(),
            trace: Trace::new(),
            touched: Arc::default(),
            last: Arc::default(),
            reads: Arc::default(),
        }
    }

    /// The journey's trace id.
    pub fn trace_id(&self) -> &str {
        &self.trace.trace_id
    }

    /// The stack.
    pub fn stack(&self) -> &Arc<Stack> {
        &self.stack
    }

    /// Adds `service`'s log tail to the report of a failing step, e.g. a consumer the journey
    /// reaches only through the broker (services it calls over HTTP are added by themselves).
    pub fn watch(&self, service: &str) {
        self.touch(service);
    }

    fn touch(&self, service: &str) {
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service.to_string());
    }

    /// Runs a named step; a failure says which step failed, with the last HTTP exchange and
    /// the log tails of the services touched so far.
    pub async fn step<T>(
        &self,
        name: &str,
        body: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
        match body.await {
            Ok(v) => Ok(v),
            Err(e) => {
                let mut report = format!("journey `{}`: step `{name}` failed: {e:#}", self.name);
                if let Some(x) = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                    report.push_str(&format!("\n  last HTTP exchange of the step:\n{x}"));
                }
                report.push_str(&format!("\n  trace id: {}", self.trace.trace_id));
                let touched: Vec<String> = self
                    .touched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                let reads = self.reads.lock().unwrap_or_else(|p| p.into_inner()).clone();
                for service in touched {
                    let lines = match self.stack.logs(&service, TAIL_SEARCH).await {
                        Ok(lines) => lines,
                        Err(crate::Error::LogsUnavailable { reason, .. }) => {
                            report.push_str(&format!("\n  --- logs of `{service}`: {reason} ---"));
                            continue;
                        }
                        Err(_) => Vec::new(),
                    };
                    let (title, shown) = match journey_lines(&lines, &self.trace.trace_id, &reads) {
                        Some(shown) => (
                            format!("last lines of `{service}` with the journey's trace id"),
                            shown,
                        ),
                        None => (
                            format!("last lines of `{service}` (none has the journey's trace id)"),
                            lines[lines.len().saturating_sub(TAIL_LINES)..].to_vec(),
                        ),
                    };
                    if !shown.is_empty() {
                        report.push_str(&format!("\n  --- {title} ---\n  {}", shown.join("\n  ")));
                    }
                }
                Err(anyhow!(report))
            }
        }
    }

    /// An HTTP client for a service: base URL set, the journey's trace id sent as `traceparent`.
    pub fn http(&self, service: &str) -> anyhow::Result<Http> {
        self.touch(service);
        Ok(Http {
            base: self.stack.url(service)?,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(15))
                .build()?,
            trace: self.trace.clone(),
            last: self.last.clone(),
            reads: self.reads.clone(),
        })
    }

    /// The value of a service's environment variable as the host sees it: the manifest's
    /// template rendered against the endpoints the host reaches (e.g. its `DATABASE_URL`).
    pub fn service_env(&self, service: &str, var: &str) -> anyhow::Result<String> {
        let spec = self
            .stack
            .manifest()
            .service(service)
            .ok_or_else(|| anyhow!("the stack has no service `{service}`"))?;
        let template = spec
            .env
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                anyhow!("service `{service}` has no environment variable `{var}` in the manifest")
            })?;
        let endpoints = self.stack.endpoints();
        let own = self.stack.endpoint(service)?;
        template
            .render(|name| {
                if name == "self" {
                    Some(&own)
                } else {
                    endpoints.get(name)
                }
            })
            .map_err(|e| anyhow!(e))
    }

    /// A connection pool to a service's own database (its `DATABASE_URL`).
    pub async fn sql(&self, service: &str) -> anyhow::Result<sqlx::PgPool> {
        let url = self.service_env(service, "DATABASE_URL")?;
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .with_context(|| format!("connecting to the database of `{service}`"))
    }

    /// A connection to the stack's Redis service.
    pub async fn redis(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let name = self.service_of_kind(Kind::Redis)?;
        let client = redis::Client::open(self.stack.url(&name)?)?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// A connection to the stack's RabbitMQ service.
    pub async fn amqp(&self) -> anyhow::Result<lapin::Connection> {
        let name = self.service_of_kind(Kind::Rabbitmq)?;
        Ok(
            lapin::Connection::connect(&self.stack.url(&name)?, crate::testkit::amqp::properties())
                .await?,
        )
    }

    /// Starts capturing messages published to the topic `exchange` with `routing_key` on a
    /// temporary, exclusive queue of the journey's own.
    pub async fn capture(&self, exchange: &str, routing_key: &str) -> anyhow::Result<Capture> {
        self.capture_from(exchange, lapin::ExchangeKind::Topic, routing_key)
            .await
    }

    /// Starts capturing every message routed through the fanout `exchange` (e.g. a service's
    /// dead-letter exchange) on a temporary, exclusive queue of the journey's own.
    pub async fn capture_fanout(&self, exchange: &str) -> anyhow::Result<Capture> {
        self.capture_from(exchange, lapin::ExchangeKind::Fanout, "")
            .await
    }

    async fn capture_from(
        &self,
        exchange: &str,
        kind: lapin::ExchangeKind,
        routing_key: &str,
    ) -> anyhow::Result<Capture> {
        let connection = self.amqp().await?;
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                exchange,
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring the exchange `{exchange}` to capture from"))?;
        let queue = channel
            .queue_declare(
                "",
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().as_str(),
                exchange,
                routing_key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let consumer = channel
            .basic_consume(
                queue.name().as_str(),
                "journey",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Capture {
            _connection: connection,
            consumer,
            seen: Vec::new(),
        })
    }

    /// Publishes one JSON message with `message_id` to `exchange` with `routing_key` and waits
    /// for the broker's confirm. Text `headers` are sent with it, plus the journey's `trace_id`
    /// (unless given), so the consumer's log lines about the message show in the journey's log
    /// tails.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
        use lapin::types::{AMQPValue, ShortString};
        let connection = self.amqp().await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut table = FieldTable::default();
        table.insert(
            ShortString::from("trace_id"),
            AMQPValue::LongString(self.trace.trace_id.as_str().into()),
        );
        for (k, v) in headers {
            table.insert(ShortString::from(*k), AMQPValue::LongString((*v).into()));
        }
        let confirm = channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions::default(),
                body,
                lapin::BasicProperties::default()
                    .with_message_id(message_id.into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_headers(table),
            )
            .await
            .with_context(|| format!("publishing to `{exchange}` with key `{routing_key}`"))?
            .await?;
        anyhow::ensure!(
            confirm.is_ack(),
            "the broker refused the message to `{exchange}` with key `{routing_key}`"
        );
        let _ = connection.close(200, "published").await;
        Ok(())
    }

    fn service_of_kind(&self, kind: Kind) -> anyhow::Result<String> {
        let s = self
            .stack
            .manifest()
            .services
            .iter()
            .find(|s| s.kind == kind)
            .ok_or_else(|| anyhow!("the stack has no `{kind}` service"))?;
        self.touch(&s.name);
        Ok(s.name.clone())
    }
}

/// An HTTP client bound to one service.
#[derive(Debug, Clone)]
pub struct Http {
    base: String,
    client: reqwest::Client,
    trace: Trace,
    last: Arc<Mutex<Option<Exchange>>>,
    reads: Reads,
}

/// A response, with its body read.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: reqwest::header::HeaderMap,
    /// Body as text.
    pub body: String,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("the body is not JSON: {}", self.body))
    }

    /// Fails unless the status is `status`; returns the body as JSON.
    pub fn expect_status(&self, status: u16) -> anyhow::Result<Value> {
        if self.status != status {
            anyhow::bail!(
                "expected status {status}, got {}: {}",
                self.status,
                self.body
            );
        }
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        self.json()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Http {
    /// The service's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends a request; `headers` are added to the trace header.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .client
            .request(method.clone(), &url)
            .header("traceparent", self.trace.traceparent());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let request = format!("{method} {url}");
        let response = req
            .send()
            .await
            .with_context(|| format!("{request}: no response"))?;
        let status = response.status().as_u16();
        if method == reqwest::Method::GET && status < 500 {
            let path = path.split('?').next().unwrap_or(path).to_string();
            self.reads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(path);
        }
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Exchange {
            request,
            request_body: body.map(|b| b.to_string()),
            status,
            body: text.clone(),
        });
        Ok(Response {
            status,
            headers,
            body: text,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Response> {
        self.send(reqwest::Method::GET, path, None, &[]).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Response> {
        self.send(reqwest::Method::POST, path, Some(body), &[])
            .await
    }
}

/// A captured message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Routing key it was published with.
    pub routing_key: String,
    /// Body.
    pub body: Vec<u8>,
    /// AMQP properties.
    pub properties: lapin::BasicProperties,
}

impl Message {
    /// A header's value as text (strings, numbers and booleans; `None` when absent).
    pub fn header(&self, name: &str) -> Option<String> {
        use lapin::types::AMQPValue;
        let headers = self.properties.headers().as_ref()?;
        Some(match headers.inner().get(name)? {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.to_string(),
            AMQPValue::Boolean(b) => b.to_string(),
            AMQPValue::LongLongInt(n) => n.to_string(),
            AMQPValue::LongInt(n) => n.to_string(),
            AMQPValue::ShortInt(n) => n.to_string(),
            other => format!("{other:?}"),
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).context("the message body is not JSON")
    }
}

/// Messages arriving on a journey's temporary queue.
#[derive(Debug)]
pub struct Capture {
    _connection: lapin::Connection,
    consumer: lapin::Consumer,
    seen: Vec<Message>,
}

impl Capture {
    /// Waits for a message matching `pred`; fails after `timeout`, listing what arrived.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> anyhow::Result<Message> {
        if let Some(m) = self.seen.iter().find(|m| pred(m)) {
            return Ok(m.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                    let m = Message {
                        routing_key: delivery.routing_key.to_string(),
                        body: delivery.data.clone(),
                        properties: delivery.properties.clone(),
                    };
                    self.seen.push(m.clone());
                    if pred(&m) {
                        return Ok(m);
                    }
                }
                Ok(Some(Err(e))) => return Err(anyhow!("the capture queue failed: {e}")),
                Ok(None) => return Err(anyhow!("the capture queue was closed")),
                Err(_) => {
                    let seen: Vec<String> = self
                        .seen
                        .iter()
                        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
                        .collect();
                    anyhow::bail!(
                        "no matching message within {:.1} s; {} other message(s) arrived: {seen:?}",
                        timeout.as_secs_f64(),
                        seen.len()
                    );
                }
            }
        }
    }

    /// Messages that arrive within `window` and match `pred` (e.g. to prove none came).
    pub async fn collect(
        &mut self,
        window: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> Vec<Message> {
        let _ = self.wait_for(window, |_| false).await;
        self.seen.iter().filter(|m| pred(m)).cloned().collect()
    }
}

/// Retries an async check with backoff (10 ms doubling to 500 ms) until it passes or
/// `timeout` ends; the failure shows the last observed value.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match check().await {
            Ok(v) => return Ok(v),
            Err(last) => {
                let now = Instant::now();
                if now >= deadline {
                    anyhow::bail!(
                        "still not true after {:.1} s ({attempts} checks); last observed: {last}",
                        timeout.as_secs_f64()
                    );
                }
                tokio::time::sleep(delay.min(deadline - now)).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_reports_the_last_observed_value() {
        let mut n = 0;
        let err = eventually(Duration::from_millis(100), || {
            n += 1;
            let v = n;
            async move { Err::<(), _>(format!("count is {v}")) }
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("last observed: count is"), "{err}");
        assert!(!err.contains("count is 1;"), "{err}");
    }

    #[tokio::test]
    async fn eventually_passes_once_the_check_does() {
        let mut n = 0;
        let v = eventually(Duration::from_secs(2), || {
            n += 1;
            let v = n;
            async move {
                if v >= 3 {
                    Ok(v)
                } else {
                    Err(format!("{v}"))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn log_tails_keep_the_trace_and_drop_the_journeys_own_reads() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let poll = format!(
            r#"{{"level":"INFO","trace_id":"{t}","method":"GET","path":"/notifications","message":"request completed"}}"#
        );
        let cause = format!(
            r#"{{"level":"WARN","trace_id":"{t}","message":"malformed order.paid message; dead-lettering"}}"#
        );
        let other =
            r#"{"level":"INFO","trace_id":"0af7651916cd43dd8448eb211c80319c","message":"x"}"#;
        let mut lines = vec![cause.clone(), other.to_string()];
        lines.extend(std::iter::repeat_n(poll.clone(), 50));
        let reads: BTreeSet<String> = ["/notifications".to_string()].into();
        assert_eq!(journey_lines(&lines, t, &reads), Some(vec![cause.clone()]));
        // A read the journey did not make is kept; no line with the trace id gives `None`.
        let shown = journey_lines(&lines, t, &BTreeSet::new()).unwrap();
        assert_eq!(shown.len(), TAIL_LINES);
        assert_eq!(journey_lines(&[other.to_string()], t, &reads), None);
    }

    #[test]
    fn traceparent_is_w3c() {
        let t = Trace::new();
        let tp = t.traceparent();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], t.trace_id);
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
    }
}
