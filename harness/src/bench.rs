//! Startup measurements, side by side in one run (`harness bench startup`).
//!
//! - **solo**: each service's launch-to-ready time with nothing else starting (a sequential
//!   start, dependencies already up); their sum is what a one-by-one start costs.
//! - **critical path**: the longest dependency chain of solo times, the floor for any scheduler.
//! - **stack-up**: a cold start of the whole stack with the DAG scheduler, wall time.
//! - **readiness lag**: how long after a port starts answering the probe notices.
//!
//! [`compose`] compares a cold start on the container backend with docker-compose
//! (`harness bench compose`).

pub mod compose;
pub mod suites;

pub use suites::suites;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::error::Error;
use crate::engine::stack::{Stack, StackOptions};
use crate::manifest::{Kind, Manifest, ProbeSpec};
use crate::model::endpoint::Endpoint;
use crate::Graph;

/// Results of a startup benchmark.
#[derive(Debug, Clone)]
pub struct StartupReport {
    /// Runs of each mode.
    pub runs: usize,
    /// Median solo ready time per service.
    pub solo: BTreeMap<String, Duration>,
    /// Median ready time per service within the parallel start (contended).
    pub parallel_ready: BTreeMap<String, Duration>,
    /// Median wall time of a sequential start.
    pub sequential_wall: Duration,
    /// Wall times of cold parallel starts.
    pub stack_up: Vec<Duration>,
    /// The critical path and its length in solo times.
    pub critical_path: (Vec<String>, Duration),
    /// Readiness lag samples.
    pub lag: Vec<Duration>,
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl StartupReport {
    /// Sum of solo times.
    pub fn solo_sum(&self) -> Duration {
        self.solo.values().sum()
    }

    /// Median cold stack-up time.
    pub fn stack_up_median(&self) -> Duration {
        median(&self.stack_up)
    }

    /// Renders the report as a table with ratios.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "startup benchmark ({} runs of each mode)\n", self.runs);
        let _ = writeln!(
            out,
            "  {:<16} {:>10} {:>14}",
            "service", "solo (ms)", "in stack (ms)"
        );
        for (name, solo) in &self.solo {
            let par = self.parallel_ready.get(name).copied().unwrap_or_default();
            let _ = writeln!(out, "  {name:<16} {:>10.0} {:>14.0}", ms(*solo), ms(par));
        }
        let up = self.stack_up_median();
        let crit = self.critical_path.1;
        let sum = self.solo_sum();
        let _ = writeln!(out);
        let _ = writeln!(out, "  sum of solo times        {:>8.0} ms", ms(sum));
        let _ = writeln!(
            out,
            "  sequential start (wall)  {:>8.0} ms",
            ms(self.sequential_wall)
        );
        let _ = writeln!(
            out,
            "  critical path            {:>8.0} ms  ({})",
            ms(crit),
            self.critical_path.0.join(" -> ")
        );
        let ups: Vec<String> = self
            .stack_up
            .iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect();
        let _ = writeln!(
            out,
            "  stack-up, DAG scheduler  {:>8.0} ms  (median of {})",
            ms(up),
            ups.join(", ")
        );
        let _ = writeln!(out);
        let ratio = |a: Duration, b: Duration| {
            if b.is_zero() {
                0.0
            } else {
                a.as_secs_f64() / b.as_secs_f64()
            }
        };
        let _ = writeln!(
            out,
            "  stack-up / critical path = {:.2}  (target <= 1.10)",
            ratio(up, crit)
        );
        let _ = writeln!(out, "  stack-up / sum of solo   = {:.2}", ratio(up, sum));
        if !self.lag.is_empty() {
            let max = self.lag.iter().max().copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "  readiness lag: median {:.1} ms, max {:.1} ms over {} port openings  (target <= 50 ms)",
                ms(median(&self.lag)),
                ms(max),
                self.lag.len()
            );
        }
        out
    }
}

/// Measures a manifest's startup: `runs` sequential starts, `runs` cold parallel starts, and
/// `lag_samples` readiness-lag samples.
pub async fn startup(
    manifest: &Manifest,
    runs: usize,
    lag_samples: usize,
) -> Result<StartupReport, Error> {
    let graph = Graph::new(manifest)
        .map_err(|c| Error::Usage(format!("dependency cycle: {}", c.path.join(" -> "))))?;
    let mut solo: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut parallel: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut sequential_wall = Vec::new();
    let mut stack_up = Vec::new();
    for run in 0..runs {
        // Alternate which mode goes first so neither always meets a cold page cache.
        for sequential in if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        } {
            // A command's bench: it owns the process, as `harness up` does.
            let options = StackOptions {
                max_parallel: sequential.then_some(1),
                ..StackOptions::owning_the_process(false)
            };
            let t0 = Instant::now();
            let stack = Stack::start(manifest.clone(), options).await?;
            let wall = t0.elapsed();
            for t in stack.timings() {
                let into = if sequential { &mut solo } else { &mut parallel };
                into.entry(t.service.clone())
                    .or_default()
                    .push(t.ready_in());
            }
            if sequential {
                sequential_wall.push(wall);
            } else {
                stack_up.push(wall);
            }
            stack.down().await;
        }
    }
    let solo: BTreeMap<String, Duration> = solo.into_iter().map(|(k, v)| (k, median(&v))).collect();
    let (path, crit) = graph.critical_path(|s| solo.get(s).map(|d| d.as_secs_f64()).unwrap_or(0.0));
    Ok(StartupReport {
        runs,
        parallel_ready: parallel.into_iter().map(|(k, v)| (k, median(&v))).collect(),
        solo,
        sequential_wall: median(&sequential_wall),
        stack_up,
        critical_path: (path, Duration::from_secs_f64(crit)),
        lag: readiness_lag(lag_samples).await,
    })
}

/// Opens a loopback port after a random delay, `samples` times, and records how long the
/// readiness wait took to notice each time.
pub async fn readiness_lag(samples: usize) -> Vec<Duration> {
    let mut lags = Vec::new();
    for i in 0..samples {
        let Ok(probe_sock) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = probe_sock.local_addr() else {
            continue;
        };
        drop(probe_sock);
        let endpoint = Endpoint {
            kind: Kind::Service,
            host: "127.0.0.1".into(),
            ports: BTreeMap::from([("http".into(), addr.port())]),
            primary: Some("http".into()),
            bind_host: "127.0.0.1".into(),
            user: None,
            password: None,
            database: None,
        };
        let delay = Duration::from_millis(50 + (i as u64 * 37) % 400);
        let opener = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let listener = tokio::net::TcpListener::bind(addr).await.ok()?;
            let opened = Instant::now();
            Some((opened, listener))
        });
        let spec = ProbeSpec::Tcp {
            port: "http".into(),
        };
        let ok = crate::engine::probe::wait_ready(
            &spec,
            &endpoint,
            Instant::now() + Duration::from_secs(5),
            || None,
        )
        .await;
        let noticed = Instant::now();
        if let (Ok(_), Ok(Some((opened, _listener)))) = (ok, opener.await) {
            lags.push(noticed.saturating_duration_since(opened));
        }
    }
    lags
}
