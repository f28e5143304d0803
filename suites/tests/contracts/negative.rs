//! Proof that verification can fail: payments behind a proxy (127.0.0.1) that renames the
//! `status` field of its JSON responses to `state` must fail the approved-payment interaction,
//! and the failure must name `status`.

use std::sync::Arc;

use anyhow::{ensure, Context as _};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use harness::contract::{Contracts, Target};
use harness::loopback::LoopbackServer;
use harness::runner::{Suite, TrialContext};
use serde_json::Value;

use crate::consumer::{ORDERS, PAYMENTS};

pub fn add_trials(suite: Suite, contracts: Contracts) -> Suite {
    suite.trial(
        "negative::a renamed response field fails the approved payment",
        move |ctx| renamed_field_fails(ctx, contracts.clone()),
    )
}

async fn renamed_field_fails(ctx: Arc<TrialContext>, contracts: Contracts) -> anyhow::Result<()> {
    let pact = contracts
        .pacts()?
        .into_iter()
        .find(|p| p.consumer == ORDERS && p.provider == PAYMENTS)
        .context("no orders -> payments pact in contracts/")?;
    let upstream = ctx.stack.url(PAYMENTS)?;
    let proxy = RenamingProxy::start(upstream, "status", "state").await?;
    let target = Target {
        host: "127.0.0.1".into(),
        port: proxy.port,
    };
    let result = contracts
        .verify_interaction_at(
            ctx.stack.clone(),
            &pact,
            "create a payment that is approved",
            target.clone(),
        )
        .await;
    let failure = match result {
        Ok(()) => anyhow::bail!(
            "the approved payment verified although payments answered `state` instead of `status`"
        ),
        Err(e @ harness::contract::Error::DoesNotHold { .. }) => format!("{e:#}"),
        Err(e) => anyhow::bail!("the approved payment failed, but not as a mismatch: {e:#}"),
    };
    ensure!(
        failure.contains("create a payment that is approved"),
        "the failure does not name the interaction:\n{failure}"
    );
    ensure!(
        failure.contains("status"),
        "the failure does not name the field `status`:\n{failure}"
    );
    ensure!(
        failure.contains("BodyMismatch at $"),
        "the failure does not give the path into the body:\n{failure}"
    );
    ensure!(
        failure.contains("\"state\": \"APPROVED\""),
        "the failure does not show the actual body:\n{failure}"
    );
    // The same proxy leaves other interactions alone when the field is not in the contract.
    contracts
        .verify_interaction_at(
            ctx.stack.clone(),
            &pact,
            "get a payment that does not exist",
            target,
        )
        .await
        .context("an interaction without the renamed field must still hold behind the proxy")?;
    proxy.stop().await;
    Ok(())
}

/// A reverse proxy in front of a service that renames one key in every JSON object it returns.
struct RenamingProxy {
    port: u16,
    server: LoopbackServer,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    from: &'static str,
    to: &'static str,
}

impl RenamingProxy {
    async fn start(
        upstream: String,
        from: &'static str,
        to: &'static str,
    ) -> anyhow::Result<RenamingProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = ProxyState {
            upstream,
            client: reqwest::Client::builder().no_proxy().build()?,
            from,
            to,
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        Ok(RenamingProxy {
            port,
            server: LoopbackServer::serve(listener, app),
        })
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

fn rename(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::Object(map) => {
            if let Some(x) = map.remove(from) {
                map.insert(to.to_string(), x);
            }
            map.values_mut().for_each(|v| rename(v, from, to));
        }
        Value::Array(list) => list.iter_mut().for_each(|v| rename(v, from, to)),
        _ => {}
    }
}

async fn forward(
    State(st): State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = st
        .client
        .request(method, format!("{}{path}", st.upstream))
        .body(body);
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            request = request.header(k, v);
        }
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("proxy: {e}")).into_response(),
    };
    let status = response.status();
    let mut out_headers = HeaderMap::new();
    for (k, v) in response.headers() {
        if k != "content-length" && k != "transfer-encoding" {
            out_headers.append(k, v.clone());
        }
    }
    let bytes = response.bytes().await.unwrap_or_default();
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut v) => {
            rename(&mut v, st.from, st.to);
            Bytes::from(v.to_string())
        }
        Err(_) => bytes,
    };
    (status, out_headers, body).into_response()
}
