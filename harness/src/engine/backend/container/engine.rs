//! The connection to the engine: where it is, connecting with a negotiated API version, and
//! running an engine operation from synchronous code.

use std::future::Future;
use std::time::Duration;

use testcontainers::bollard::errors::Error as DockerError;
use testcontainers::bollard::Docker;

/// How long the engine gets to answer the first request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the engine is: `DOCKER_HOST`, else the local socket (the process's setting: the
/// teardown in a signal handler connects too).
pub fn docker_host() -> String {
    crate::settings::Settings::process().docker_host()
}

/// Connects to the engine and agrees on an API version it supports.
pub async fn connect() -> Result<Docker, String> {
    let host = docker_host();
    let docker = Docker::connect_with_host(&host)
        .map_err(|e| format!("cannot use DOCKER_HOST `{host}`: {e}"))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => Err(format!("no Docker engine answers at {host}: {e}")),
        Err(_) => Err(format!(
            "no Docker engine answered at {host} within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Runs a Docker operation to completion from synchronous code (`Drop`, the signal handler,
/// [`Instance::log_tail`]), inside a runtime or not: on a thread of its own, with its own
/// runtime and connection.
pub(super) fn blocking<T, F, Fut>(f: F) -> Result<T, String>
where
    T: Send,
    F: FnOnce(Docker) -> Fut + Send,
    Fut: Future<Output = T>,
{
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a runtime: {e}"))?;
                runtime.block_on(async move {
                    let docker = connect().await?;
                    Ok(f(docker).await)
                })
            })
            .join()
            .unwrap_or_else(|_| Err("the thread talking to the engine panicked".into()))
    })
}

/// The HTTP status of an error the engine answered with (`None`: no answer).
pub(super) fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}
