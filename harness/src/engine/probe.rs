//! Readiness probes that speak each server's real protocol.
//!
//! Waiting happens in two phases. While the port does not accept connections a plain TCP
//! connect is polled every [`PORT_POLL`] (cheap, so the moment a port opens is seen quickly);
//! once it accepts, the protocol probe runs with exponential backoff from [`BACKOFF_START`]
//! to [`BACKOFF_CAP`], all under the service's deadline.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

use crate::engine::backend::interface::Instance;
use crate::manifest::ProbeSpec;
use crate::model::endpoint::Endpoint;

/// Interval between TCP connects while a port is still closed.
pub const PORT_POLL: Duration = Duration::from_millis(5);
/// First delay between protocol probes.
pub const BACKOFF_START: Duration = Duration::from_millis(10);
/// Longest delay between protocol probes.
pub const BACKOFF_CAP: Duration = Duration::from_millis(250);
/// Longest a single probe attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP probe keeps its connection to see that it was really accepted. A port
/// published by a container engine's proxy accepts connections even while nothing listens
/// behind it, and closes them at once (well under a millisecond); a listening server keeps them.
pub const TCP_HOLD: Duration = Duration::from_millis(20);

/// Why a service did not become ready.
#[derive(Debug, Clone)]
pub struct ProbeFailure {
    /// The probe that failed, as text (`postgres \`SELECT 1\``).
    pub probe: String,
    /// How long it waited.
    pub waited: Duration,
    /// The last error the probe saw.
    pub last_error: String,
    /// Attempts made.
    pub attempts: u32,
}

/// Runs one probe attempt against an endpoint.
pub async fn check(spec: &ProbeSpec, endpoint: &Endpoint) -> Result<(), String> {
    match timeout(ATTEMPT_TIMEOUT, attempt(spec, endpoint)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {} ms",
            ATTEMPT_TIMEOUT.as_millis()
        )),
    }
}

async fn attempt(spec: &ProbeSpec, endpoint: &Endpoint) -> Result<(), String> {
    match spec {
        ProbeSpec::None => Ok(()),
        ProbeSpec::Exec(_) | ProbeSpec::Exit => Err(format!(
            "a probe that {spec} needs the running service, not its address"
        )),
        ProbeSpec::Tcp { port } => tcp_accepted(endpoint, port).await,
        ProbeSpec::Protocol(_) => match endpoint.kind.server() {
            Some(server) => server.probe(&endpoint.target()?).await,
            None => Err(format!("a {spec} probe needs a {spec} server")),
        },
        ProbeSpec::Http { path, port } => {
            let url = format!(
                "http://{}:{}{}",
                endpoint.host,
                endpoint.port(Some(port))?,
                path
            );
            let response = http_client().get(&url).send().await.map_err(|e| {
                let mut msg = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg = format!("{msg}: {s}");
                    source = s.source();
                }
                msg
            })?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                let body = response.text().await.unwrap_or_default();
                Err(format!(
                    "GET {path} answered {status}: {}",
                    truncate(&body, 200)
                ))
            }
        }
    }
}

fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .unwrap_or_default()
    })
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

async fn tcp(endpoint: &Endpoint, port: Option<&str>) -> Result<(), String> {
    let port = endpoint.port(port)?;
    TcpStream::connect((endpoint.host.as_str(), port))
        .await
        .map(drop)
        .map_err(|e| format!("connect to {}:{port}: {e}", endpoint.host))
}

/// A TCP connect that the listener keeps for [`TCP_HOLD`] (or greets): something accepted it.
async fn tcp_accepted(endpoint: &Endpoint, port: &str) -> Result<(), String> {
    let number = endpoint.port(Some(port))?;
    let stream = TcpStream::connect((endpoint.host.as_str(), number))
        .await
        .map_err(|e| format!("connect to {}:{number}: {e}", endpoint.host))?;
    let mut buf = [0u8; 1];
    match timeout(TCP_HOLD, stream.peek(&mut buf)).await {
        Err(_) | Ok(Ok(1..)) => Ok(()),
        Ok(Ok(_)) => Err(format!(
            "{}:{number} accepted the connection and closed it at once (nothing listens behind it yet)",
            endpoint.host
        )),
        Ok(Err(e)) => Err(format!("{}:{number}: {e}", endpoint.host)),
    }
}

/// The port the probe talks to, if any.
fn probed_port(spec: &ProbeSpec) -> Option<Option<&str>> {
    match spec {
        ProbeSpec::None | ProbeSpec::Exec(_) | ProbeSpec::Exit => None,
        ProbeSpec::Tcp { port } | ProbeSpec::Http { port, .. } => Some(Some(port)),
        ProbeSpec::Protocol(_) => Some(None),
    }
}

/// Waits until `instance` passes its probe: [`wait_ready`] on its endpoint, or for the probes
/// that need the running service itself, its command run beside it (`exec`, at the same
/// backoff) or its exit (`exit`: status 0 passes, any other fails at once).
pub async fn wait_instance_ready(
    spec: &ProbeSpec,
    instance: &mut dyn Instance,
    deadline: Instant,
) -> Result<Duration, ProbeFailure> {
    let command = match spec {
        ProbeSpec::Exec(command) => command,
        ProbeSpec::Exit => return wait_exit(spec, instance, deadline).await,
        _ => {
            let endpoint = instance.endpoint();
            return wait_ready(spec, &endpoint, deadline, || instance.exited()).await;
        }
    };
    let started = Instant::now();
    let mut attempts = 0;
    let mut delay = BACKOFF_START;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last_error = match timeout(
            remaining.max(Duration::from_millis(1)),
            instance.exec(command),
        )
        .await
        {
            Ok(Ok(())) => return Ok(started.elapsed()),
            Ok(Err(e)) => e,
            Err(_) => "the deadline was reached while the command ran".to_string(),
        };
        let fail = |last_error| ProbeFailure {
            probe: spec.to_string(),
            waited: started.elapsed(),
            last_error,
            attempts,
        };
        if let Some(status) = instance.exited() {
            return Err(fail(format!(
                "the service exited ({status}); last probe error: {last_error}"
            )));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(fail(last_error));
        }
        sleep(delay.min(deadline - now)).await;
        delay = (delay * 3 / 2).min(BACKOFF_CAP);
    }
}

/// A one-shot job is ready when it has exited with status 0.
async fn wait_exit(
    spec: &ProbeSpec,
    instance: &mut dyn Instance,
    deadline: Instant,
) -> Result<Duration, ProbeFailure> {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let fail = |last_error| ProbeFailure {
            probe: spec.to_string(),
            waited: started.elapsed(),
            last_error,
            attempts,
        };
        match instance.exit_ok() {
            Some(true) => return Ok(started.elapsed()),
            Some(false) => {
                let status = instance.exited().unwrap_or_else(|| "failed".into());
                return Err(fail(format!("the job exited ({status})")));
            }
            None if Instant::now() >= deadline => {
                return Err(fail("the job was still running at its deadline".into()))
            }
            None => sleep(PORT_POLL * 2).await,
        }
    }
}

/// Polls until the probe passes, `deadline` passes, or `exited` reports that the service died.
///
/// Returns how long it waited.
pub async fn wait_ready(
    spec: &ProbeSpec,
    endpoint: &Endpoint,
    deadline: Instant,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<Duration, ProbeFailure> {
    let started = Instant::now();
    let mut attempts = 0;
    let mut last_error = String::from("the probe never ran");
    let fail = |attempts, last_error: String| ProbeFailure {
        probe: spec.to_string(),
        waited: started.elapsed(),
        last_error,
        attempts,
    };
    // Phase 1: wait for the port to open.
    if let Some(port) = probed_port(spec) {
        loop {
            if let Some(status) = exited() {
                return Err(fail(
                    attempts,
                    format!("the service exited ({status}) before its port opened"),
                ));
            }
            attempts += 1;
            match tcp(endpoint, port).await {
                Ok(()) => break,
                Err(e) => last_error = e,
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(fail(attempts, last_error));
            }
            sleep(PORT_POLL.min(deadline - now)).await;
        }
    }
    // Phase 2: the protocol probe, with backoff.
    let mut delay = BACKOFF_START;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        match timeout(
            remaining.max(Duration::from_millis(1)),
            check(spec, endpoint),
        )
        .await
        {
            Ok(Ok(())) => return Ok(started.elapsed()),
            Ok(Err(e)) => last_error = e,
            Err(_) => last_error = format!("{last_error} (deadline reached during an attempt)"),
        }
        if let Some(status) = exited() {
            return Err(fail(
                attempts,
                format!("the service exited ({status}); last probe error: {last_error}"),
            ));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(fail(attempts, last_error));
        }
        sleep(delay.min(deadline - now)).await;
        delay = (delay * 3 / 2).min(BACKOFF_CAP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Kind;
    use std::collections::BTreeMap;

    fn local(port: u16) -> Endpoint {
        Endpoint {
            kind: Kind::Service,
            host: "127.0.0.1".into(),
            ports: BTreeMap::from([("http".into(), port)]),
            primary: Some("http".into()),
            bind_host: "127.0.0.1".into(),
            user: None,
            password: None,
            database: None,
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn tcp_probe_notices_a_port_opening_quickly() {
        let port = free_port();
        let spec = ProbeSpec::Tcp {
            port: "http".into(),
        };
        let opener = tokio::spawn(async move {
            sleep(Duration::from_millis(150)).await;
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            let opened = Instant::now();
            let _ = listener.accept().await;
            (opened, listener)
        });
        let waited = wait_ready(
            &spec,
            &local(port),
            Instant::now() + Duration::from_secs(5),
            || None,
        )
        .await
        .unwrap();
        let noticed = Instant::now();
        let (opened, _l) = opener.await.unwrap();
        assert!(waited >= Duration::from_millis(150));
        assert!(
            noticed - opened < Duration::from_millis(100),
            "lag {:?}",
            noticed - opened
        );
    }

    #[tokio::test]
    async fn a_closed_port_fails_at_the_deadline_with_the_last_error() {
        let spec = ProbeSpec::Tcp {
            port: "http".into(),
        };
        let failure = wait_ready(
            &spec,
            &local(free_port()),
            Instant::now() + Duration::from_millis(200),
            || None,
        )
        .await
        .unwrap_err();
        assert!(failure.waited >= Duration::from_millis(150), "{failure:?}");
        assert!(failure.waited < Duration::from_millis(600), "{failure:?}");
        assert!(
            failure.last_error.contains("refused"),
            "{}",
            failure.last_error
        );
        assert!(failure.attempts > 5);
    }

    #[tokio::test]
    async fn an_exited_service_fails_at_once() {
        let spec = ProbeSpec::Tcp {
            port: "http".into(),
        };
        let failure = wait_ready(
            &spec,
            &local(free_port()),
            Instant::now() + Duration::from_secs(10),
            || Some("exit status: 1".into()),
        )
        .await
        .unwrap_err();
        assert!(failure.waited < Duration::from_millis(100));
        assert!(failure.last_error.contains("exit status: 1"));
    }

    #[tokio::test]
    async fn a_port_that_closes_every_connection_at_once_is_not_ready() {
        // What a container engine's proxy does while nothing listens in the container.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        });
        let spec = ProbeSpec::Tcp {
            port: "http".into(),
        };
        let err = check(&spec, &local(port)).await.unwrap_err();
        assert!(err.contains("closed it at once"), "{err}");
        // A listener that keeps its connections is ready.
        let holding = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = holding.local_addr().unwrap().port();
        assert_eq!(check(&spec, &local(port)).await, Ok(()));
    }

    #[tokio::test]
    async fn http_probe_wants_2xx() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let reply: &[u8] = if req.starts_with("GET /health ") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                } else {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown"
                };
                let _ = s.write_all(reply).await;
            }
        });
        let ok = ProbeSpec::Http {
            path: "/health".into(),
            port: "http".into(),
        };
        assert_eq!(check(&ok, &local(port)).await, Ok(()));
        let bad = ProbeSpec::Http {
            path: "/other".into(),
            port: "http".into(),
        };
        let err = check(&bad, &local(port)).await.unwrap_err();
        assert!(err.contains("503") && err.contains("down"), "{err}");
    }
}
