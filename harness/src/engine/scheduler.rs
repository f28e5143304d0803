//! The DAG scheduler: each service starts the moment every dependency it names has reached
//! the condition it asks for; independent services start concurrently. No layer barriers.
//!
//! The scheduler knows nothing of processes or containers: it drives a [`Launcher`], so unit
//! tests use fake services that become ready after known delays.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::graph::Graph;
use crate::manifest::Condition;
use crate::model::endpoint::Endpoint;

/// Why one service failed to start or become ready.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What happened, one line.
    pub message: String,
    /// The last lines of the service's log, if any.
    pub log_tail: Vec<String>,
    /// The probe that failed, if it got as far as probing.
    pub probe: Option<String>,
    /// How long the probe waited.
    pub waited: Option<Duration>,
}

impl Failure {
    /// A failure without log lines.
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            log_tail: Vec::new(),
            probe: None,
            waited: None,
        }
    }
}

/// What the scheduler drives: starts a service, waits until it is ready, stops it.
#[async_trait]
pub trait Launcher: Sync {
    /// A running service.
    type Handle: Send + 'static;
    /// Starts a service; `deps` holds the endpoints of its started dependencies.
    /// Returns the handle and the endpoint dependents should use.
    async fn launch(
        &self,
        service: &str,
        deps: &BTreeMap<String, Endpoint>,
    ) -> Result<(Self::Handle, Endpoint), Failure>;
    /// Called once, when every dependency of a service waiting for them has launched (their
    /// endpoints are known) but some are not ready: the launcher may begin the slow part of its
    /// launch (see [`crate::engine::backend::Backend::prepare`]). Not in a sequential start.
    fn prepare(&self, service: &str, deps: &BTreeMap<String, Endpoint>) {
        let _ = (service, deps);
    }
    /// Waits until the service is ready, or fails when its deadline passes.
    async fn ready(&self, service: &str, handle: &mut Self::Handle) -> Result<(), Failure>;
    /// Stops and removes a service.
    async fn stop(&self, service: &str, handle: Self::Handle);
}

/// What the scheduler reports while it works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its dependencies are met; launching.
    Starting,
    /// Launched; probing for readiness.
    Probing,
    /// Ready.
    Ready,
    /// Failed to start or become ready.
    Failed,
    /// Cancelled because another service failed.
    Cancelled,
}

/// Start and ready times of one service, relative to the start of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// Service name.
    pub service: String,
    /// When its dependencies were met and it was launched.
    pub started: Duration,
    /// When its launch returned (process spawned, container created).
    pub launched: Duration,
    /// When it became ready.
    pub ready: Duration,
}

impl Timing {
    /// Time from launch to ready.
    pub fn ready_in(&self) -> Duration {
        self.ready.saturating_sub(self.started)
    }
}

/// A started stack: handles in start order, and their timings.
#[derive(Debug)]
pub struct Started<H> {
    /// Handles with their dependents' endpoints, in the order they became ready.
    pub services: Vec<(String, H, Endpoint)>,
    /// Timings, in the order services became ready.
    pub timings: Vec<Timing>,
}

/// A failed start: the first failure, and every other failure seen while stopping.
#[derive(Debug, Clone)]
pub struct StartError {
    /// The service that failed first.
    pub service: String,
    /// Its failure.
    pub failure: Failure,
    /// Services that had started and were stopped again, in the order they were stopped.
    pub stopped: Vec<String>,
}

enum Step<H> {
    Launched(String, Result<(H, Endpoint), Failure>, Instant),
    Ready(String, H, Result<(), Failure>),
}

/// Runs the graph: starts everything, or stops what started and reports the first failure.
///
/// `max_parallel` bounds how many services launch at once (`None`: unbounded); `1` gives a
/// sequential start, used to measure solo ready times. `on_phase` hears of every service's
/// phases as they change, with the failure when one fails.
pub async fn run<L: Launcher>(
    graph: &Graph,
    launcher: &L,
    max_parallel: Option<usize>,
    mut on_phase: impl FnMut(&str, Phase, Duration, Option<&Failure>),
) -> Result<Started<L::Handle>, StartError> {
    let t0 = Instant::now();
    let (abort_tx, abort_rx) = watch::channel(false);
    let mut pending: BTreeSet<String> = graph.services().map(str::to_string).collect();
    let mut started: BTreeMap<String, Endpoint> = BTreeMap::new();
    let mut ready: BTreeSet<String> = BTreeSet::new();
    let mut handles: Vec<(String, L::Handle, Endpoint)> = Vec::new();
    let mut launched_at: BTreeMap<String, (Duration, Duration)> = BTreeMap::new();
    let mut timings = Vec::new();
    let mut failure: Option<(String, Failure)> = None;
    let mut in_flight = FuturesUnordered::new();
    let mut probing = 0usize;
    let mut prepared: BTreeSet<String> = BTreeSet::new();
    let deps_of =
        |service: &str, started: &BTreeMap<String, Endpoint>| -> BTreeMap<String, Endpoint> {
            graph
                .dependencies(service)
                .iter()
                .filter_map(|(d, _)| started.get(d).map(|e| (d.clone(), e.clone())))
                .collect()
        };

    loop {
        if failure.is_none() {
            let runnable: Vec<String> = pending
                .iter()
                .filter(|s| {
                    graph.dependencies(s).iter().all(|(d, c)| match c {
                        Condition::Ready | Condition::Completed => ready.contains(d),
                        Condition::Started => started.contains_key(d),
                    })
                })
                .cloned()
                .collect();
            for service in runnable {
                if max_parallel.is_some_and(|m| in_flight.len() >= m) {
                    break;
                }
                pending.remove(&service);
                on_phase(&service, Phase::Starting, t0.elapsed(), None);
                let deps = deps_of(&service, &started);
                let begun = Instant::now();
                in_flight.push(Box::pin(async move {
                    let r = launcher.launch(&service, &deps).await;
                    Step::Launched(service, r, begun)
                })
                    as std::pin::Pin<
                        Box<dyn std::future::Future<Output = Step<L::Handle>> + Send + '_>,
                    >);
            }
        }
        if failure.is_none() && max_parallel.is_none() {
            for service in &pending {
                let launched = graph
                    .dependencies(service)
                    .iter()
                    .all(|(d, _)| started.contains_key(d));
                if launched && prepared.insert(service.clone()) {
                    launcher.prepare(service, &deps_of(service, &started));
                }
            }
        }
        let Some(step) = in_flight.next().await else {
            break;
        };
        match step {
            Step::Launched(service, Ok((mut handle, endpoint)), begun) => {
                launched_at.insert(service.clone(), (begun - t0, t0.elapsed()));
                started.insert(service.clone(), endpoint.clone());
                if failure.is_some() {
                    handles.push((service, handle, endpoint));
                    continue;
                }
                on_phase(&service, Phase::Probing, t0.elapsed(), None);
                probing += 1;
                let mut abort = abort_rx.clone();
                in_flight.push(Box::pin(async move {
                    let result = tokio::select! {
                        r = launcher.ready(&service, &mut handle) => r,
                        _ = abort.wait_for(|a| *a) => Err(Failure::new("cancelled")),
                    };
                    // Keep the endpoint with the handle so a cancelled service is still stopped.
                    let _ = &endpoint;
                    Step::Ready(service, handle, result)
                }));
            }
            Step::Launched(service, Err(f), _) => {
                on_phase(&service, Phase::Failed, t0.elapsed(), Some(&f));
                if failure.is_none() {
                    failure = Some((service, f));
                    let _ = abort_tx.send(true);
                }
            }
            Step::Ready(service, handle, result) => {
                probing -= 1;
                let endpoint = started
                    .get(&service)
                    .cloned()
                    .unwrap_or_else(unreachable_endpoint);
                match result {
                    Ok(()) if failure.is_none() => {
                        on_phase(&service, Phase::Ready, t0.elapsed(), None);
                        let (s, l) = launched_at.get(&service).copied().unwrap_or_default();
                        timings.push(Timing {
                            service: service.clone(),
                            started: s,
                            launched: l,
                            ready: t0.elapsed(),
                        });
                        ready.insert(service.clone());
                    }
                    Ok(()) => on_phase(&service, Phase::Cancelled, t0.elapsed(), None),
                    Err(f) => {
                        if failure.is_none() {
                            on_phase(&service, Phase::Failed, t0.elapsed(), Some(&f));
                            failure = Some((service.clone(), f));
                            let _ = abort_tx.send(true);
                        } else {
                            on_phase(&service, Phase::Cancelled, t0.elapsed(), None);
                        }
                    }
                }
                handles.push((service, handle, endpoint));
            }
        }
    }
    debug_assert_eq!(probing, 0);

    match failure {
        None => Ok(Started {
            services: handles,
            timings,
        }),
        Some((service, failure)) => {
            let stopped = stop_all(graph, launcher, handles).await;
            Err(StartError {
                service,
                failure,
                stopped,
            })
        }
    }
}

fn unreachable_endpoint() -> Endpoint {
    Endpoint {
        kind: crate::manifest::Kind::Service,
        host: String::new(),
        ports: BTreeMap::new(),
        primary: None,
        bind_host: String::new(),
        user: None,
        password: None,
        database: None,
    }
}

/// Stops services in reverse dependency order; returns their names in the order stopped.
pub async fn stop_all<L: Launcher>(
    graph: &Graph,
    launcher: &L,
    mut handles: Vec<(String, L::Handle, Endpoint)>,
) -> Vec<String> {
    let order = graph.order();
    let rank = |s: &str| order.iter().position(|o| o == s).unwrap_or(usize::MAX);
    handles.sort_by_key(|(s, _, _)| std::cmp::Reverse(rank(s)));
    let mut stopped = Vec::new();
    for (service, handle, _) in handles {
        launcher.stop(&service, handle).await;
        stopped.push(service);
    }
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Fake services: launching takes `launch` ms, becoming ready `ready` ms more.
    struct Fake {
        delays: BTreeMap<&'static str, (u64, u64)>,
        fail: Option<&'static str>,
        log: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Launcher for Fake {
        type Handle = String;
        async fn launch(
            &self,
            s: &str,
            deps: &BTreeMap<String, Endpoint>,
        ) -> Result<(String, Endpoint), Failure> {
            self.log.lock().unwrap().push(format!(
                "launch {s} with {:?}",
                deps.keys().collect::<Vec<_>>()
            ));
            tokio::time::sleep(Duration::from_millis(self.delays[s].0)).await;
            Ok((s.to_string(), unreachable_endpoint()))
        }
        async fn ready(&self, s: &str, _h: &mut String) -> Result<(), Failure> {
            tokio::time::sleep(Duration::from_millis(self.delays[s].1)).await;
            if self.fail == Some(s) {
                return Err(Failure::new(format!("{s} never became ready")));
            }
            Ok(())
        }
        async fn stop(&self, s: &str, _h: String) {
            self.log.lock().unwrap().push(format!("stop {s}"));
        }
    }

    fn graph(edges: &[(&str, &[(&str, Condition)])]) -> Graph {
        Graph::from_edges(
            edges
                .iter()
                .map(|(n, d)| {
                    (
                        n.to_string(),
                        d.iter().map(|(d, c)| (d.to_string(), *c)).collect(),
                    )
                })
                .collect(),
        )
        .unwrap()
    }

    fn ms(d: Duration) -> i64 {
        d.as_millis() as i64
    }

    use Condition::{Ready as R, Started as S};

    #[tokio::test(start_paused = true)]
    async fn each_service_starts_when_its_own_dependencies_are_ready() {
        // slow(500) and fast(100) are independent; after-fast depends only on fast, so it
        // must start at ~100 ms, not after slow (a layer barrier would make it 500 ms).
        let g = graph(&[
            ("slow", &[]),
            ("fast", &[]),
            ("after-fast", &[("fast", R)]),
            ("after-both", &[("fast", R), ("slow", R)]),
        ]);
        let fake = Fake {
            delays: BTreeMap::from([
                ("slow", (0, 500)),
                ("fast", (0, 100)),
                ("after-fast", (10, 50)),
                ("after-both", (10, 50)),
            ]),
            fail: None,
            log: Mutex::new(Vec::new()),
        };
        let out = run(&g, &fake, None, |_, _, _, _| {}).await.unwrap();
        let t: BTreeMap<_, _> = out
            .timings
            .iter()
            .map(|t| (t.service.as_str(), t.clone()))
            .collect();
        assert_eq!(ms(t["slow"].started), 0);
        assert_eq!(ms(t["fast"].started), 0);
        assert_eq!(ms(t["fast"].ready), 100);
        assert_eq!(ms(t["after-fast"].started), 100);
        assert_eq!(ms(t["after-fast"].ready), 160);
        assert_eq!(ms(t["after-both"].started), 500);
        assert_eq!(ms(t["after-both"].ready), 560);
        assert_eq!(out.services.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_condition_does_not_wait_for_readiness() {
        let g = graph(&[("db", &[]), ("app", &[("db", S)])]);
        let fake = Fake {
            delays: BTreeMap::from([("db", (20, 1000)), ("app", (0, 10))]),
            fail: None,
            log: Mutex::new(Vec::new()),
        };
        let out = run(&g, &fake, None, |_, _, _, _| {}).await.unwrap();
        let app = out.timings.iter().find(|t| t.service == "app").unwrap();
        assert_eq!(ms(app.started), 20);
        assert_eq!(ms(app.ready), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn sequential_mode_starts_one_at_a_time() {
        let g = graph(&[("a", &[]), ("b", &[]), ("c", &[])]);
        let fake = Fake {
            delays: BTreeMap::from([("a", (0, 100)), ("b", (0, 100)), ("c", (0, 100))]),
            fail: None,
            log: Mutex::new(Vec::new()),
        };
        let out = run(&g, &fake, Some(1), |_, _, _, _| {}).await.unwrap();
        let last = out.timings.iter().map(|t| t.ready).max().unwrap();
        assert_eq!(ms(last), 300);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_stops_everything_started_in_reverse_order() {
        let g = graph(&[
            ("db", &[]),
            ("cache", &[]),
            ("api", &[("db", R), ("cache", R)]),
            ("broker", &[]),
            ("worker", &[("api", R)]),
        ]);
        let fake = Fake {
            delays: BTreeMap::from([
                ("db", (0, 10)),
                ("cache", (0, 20)),
                ("api", (0, 30)),
                ("broker", (0, 5000)),
                ("worker", (0, 10)),
            ]),
            fail: Some("api"),
            log: Mutex::new(Vec::new()),
        };
        let mut phases = Vec::new();
        let err = run(&g, &fake, None, |s, p, at, _| {
            phases.push((s.to_string(), p, ms(at)))
        })
        .await
        .unwrap_err();
        assert_eq!(err.service, "api");
        assert!(err.failure.message.contains("never became ready"));
        // The broker, still probing, is cancelled at once rather than waited for.
        assert!(
            phases.contains(&("broker".to_string(), Phase::Cancelled, 50)),
            "{phases:?}"
        );
        // worker never launched; api is stopped before its dependencies.
        assert_eq!(err.stopped, ["api", "db", "cache", "broker"]);
        let log = fake.log.lock().unwrap();
        assert!(
            !log.iter().any(|l| l.starts_with("launch worker")),
            "{log:?}"
        );
    }
}
