//! An HTTP server on a loopback port of its own, for stand-ins a test or the harness serves
//! itself: message transports, broker stand-ins, proxies in front of a service.

use std::time::Duration;

/// An HTTP server on a loopback port of its own, stopped gracefully by [`LoopbackServer::stop`]
/// (message transports, broker stand-ins, proxies in tests).
#[derive(Debug)]
pub struct LoopbackServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl LoopbackServer {
    /// Serves `app` on `listener` until stopped.
    pub fn serve(listener: tokio::net::TcpListener, app: axum::Router) -> LoopbackServer {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        LoopbackServer { stop, task }
    }

    /// Stops it and waits (at most 5 s) until it has.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}
