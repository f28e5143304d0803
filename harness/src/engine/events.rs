//! What the engine and the test kit report while they work, and where it goes.
//!
//! The library writes nothing to the terminal by itself: a stack, the scheduler, the reaper,
//! the signal handler and the runner send [`Event`]s to a [`Sink`] they were given
//! ([`crate::StackOptions::sink`]). The default, [`Discard`], drops them. [`Terminal`] renders
//! them as the `harness` command and the suite runner show them; [`Trials`] keeps the trial
//! results the summary and the JUnit report are made from; [`Fanout`] sends each event to
//! several sinks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::manifest::BackendKind;
use crate::testkit::report::TrialRecord;

/// Something the engine or the test kit reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// What dead runs left behind (processes, directories) was removed before a start.
    Reaped {
        /// How many dead runs.
        runs: usize,
    },
    /// A stack starts.
    StackStarting {
        /// The stack's name (the manifest's).
        stack: String,
        /// Its services' names.
        services: Vec<String>,
        /// Which backends run them, in words.
        backends: String,
    },
    /// A service's dependencies are met; it is being launched.
    ServiceStarting {
        /// The service.
        service: String,
        /// The backend that runs it.
        backend: BackendKind,
        /// Since the start of the stack.
        at: Duration,
    },
    /// A service was launched; its readiness probe runs.
    ServiceProbing {
        /// The service.
        service: String,
        /// Since the start of the stack.
        at: Duration,
    },
    /// A service passed its probe.
    ServiceReady {
        /// The service.
        service: String,
        /// Since the start of the stack.
        at: Duration,
        /// From its launch until it was ready.
        waited: Duration,
    },
    /// A service failed to start or to become ready.
    ServiceFailed {
        /// The service.
        service: String,
        /// Since the start of the stack.
        at: Duration,
        /// Why.
        message: String,
    },
    /// A service's start was cancelled because another one failed.
    ServiceCancelled {
        /// The service.
        service: String,
        /// Since the start of the stack.
        at: Duration,
    },
    /// A service was stopped and removed by the stack's teardown.
    ServiceStopped {
        /// The service.
        service: String,
    },
    /// Every service of a stack is ready.
    StackReady {
        /// The stack's name.
        stack: String,
        /// From the start of the stack.
        elapsed: Duration,
    },
    /// A running service was restarted in place because what it runs changed.
    Refreshed(Refreshed),
    /// A suite attached to a stack another process runs.
    Attached {
        /// That process.
        pid: u32,
        /// The backend that runs the stack.
        backend: BackendKind,
    },
    /// The container backend builds a service's image from its Dockerfile context.
    ImageBuilding {
        /// The service.
        service: String,
        /// The tag it builds.
        image: String,
        /// The build context.
        context: std::path::PathBuf,
    },
    /// A service's image was built.
    ImageBuilt {
        /// The service.
        service: String,
        /// The tag built.
        image: String,
        /// How long the build took.
        took: Duration,
    },
    /// Something the user should see and act on (a database left on an external server, a
    /// running stack that could not be used, a report that could not be written).
    Warning(String),
    /// A signal arrived; what the run started is being torn down.
    Interrupted {
        /// Process groups being stopped.
        groups: usize,
        /// Directories being removed.
        dirs: usize,
        /// Cleanup hooks being run (containers being removed).
        hooks: usize,
    },
    /// A trial starts (its first attempt).
    TrialStarted {
        /// The trial's full name.
        name: String,
    },
    /// An attempt of a trial failed and it is tried again.
    TrialRetrying {
        /// The trial's full name.
        name: String,
        /// The attempt that failed (1 = the first).
        attempt: u32,
        /// Attempts left.
        left: u32,
    },
    /// A trial ended: how, and after how long (over all its attempts).
    TrialFinished(TrialRecord),
    /// A report file was written.
    ReportWritten {
        /// Which report.
        report: Report,
        /// Where.
        path: std::path::PathBuf,
    },
    /// The summary of a suite's trials, as text (see [`crate::testkit::report::summary`]).
    Summary(String),
    /// Why a run cannot go on (the runner then exits with the error's code).
    Fatal(String),
}

/// The report files the runner writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The startup timeline picture (SVG).
    Timeline,
    /// The JUnit XML report.
    Junit,
}

/// Where events go.
pub trait Sink: Send + Sync {
    /// Receives one event; called from whichever thread or task the event happened on.
    fn event(&self, event: &Event);
}

impl std::fmt::Debug for dyn Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

/// Drops every event: a library writes nothing unless asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl Sink for Discard {
    fn event(&self, _event: &Event) {}
}

/// Renders events on stderr, as the `harness` command and the suite runner show them.
#[derive(Debug)]
pub struct Terminal {
    progress: bool,
    /// The column of service names: as wide as the longest name of the stack last started.
    width: AtomicUsize,
}

impl Terminal {
    /// Everything, the start of a stack line by line included.
    pub fn new() -> Terminal {
        Terminal {
            progress: true,
            width: AtomicUsize::new(NAME_WIDTH),
        }
    }

    /// Without the start of a stack line by line (`HARNESS_QUIET`); the rest is shown.
    pub fn quiet() -> Terminal {
        Terminal {
            progress: false,
            ..Terminal::new()
        }
    }
}

impl Default for Terminal {
    fn default() -> Terminal {
        Terminal::new()
    }
}

/// The column width of service names in the progress lines of a stack without services.
const NAME_WIDTH: usize = 8;

impl Terminal {
    /// The text an event shows, without its final newline (a [`Event::Summary`] without its
    /// last one); `None` for events shown as nothing.
    pub fn render(&self, event: &Event) -> Option<String> {
        let progress = |text: String| {
            // Once a signal arrived, what fails is the teardown: the handler says so instead.
            (self.progress && !crate::engine::interrupt::interrupted()).then_some(text)
        };
        let width = self.width.load(Ordering::Relaxed);
        let line = |service: &str, at: &Duration, what: &str| {
            progress(format!(
                "  {:>7.3}s  {service:<width$}  {what}",
                at.as_secs_f64()
            ))
        };
        match event {
            Event::Reaped { runs } => (self.progress && *runs > 0)
                .then(|| format!("removed what {runs} dead run(s) left behind")),
            Event::StackStarting {
                stack,
                services,
                backends,
            } => {
                let width = services.iter().map(String::len).max().unwrap_or(NAME_WIDTH);
                self.width.store(width, Ordering::Relaxed);
                self.progress.then(|| {
                    format!(
                        "starting stack `{stack}` ({} services, {backends})",
                        services.len()
                    )
                })
            }
            Event::ServiceStarting { service, at, .. } => line(service, at, "starting"),
            Event::ServiceProbing { service, at } => line(service, at, "launched, probing"),
            Event::ServiceReady {
                service,
                at,
                waited,
            } => line(service, at, &format!("ready in {} ms", waited.as_millis())),
            Event::ServiceFailed { service, at, .. } => line(service, at, "FAILED"),
            Event::ServiceCancelled { service, at } => line(service, at, "cancelled"),
            Event::ServiceStopped { .. } | Event::StackReady { .. } => None,
            Event::TrialStarted { .. } => None,
            Event::TrialFinished(record) => match record.outcome {
                crate::testkit::report::Outcome::Flaky { passed_on, .. } => Some(format!(
                    "harness: FLAKY `{}`: failed, then passed on attempt {passed_on}",
                    record.name
                )),
                _ => None,
            },
            Event::Refreshed(r) => Some(r.to_string()),
            Event::Attached { pid, backend } => Some(format!(
                "attached to the running stack of process {pid} ({backend} backend)"
            )),
            Event::ImageBuilding {
                service,
                image,
                context,
            } => progress(format!(
                "building {image} for `{service}` from {}",
                context.display()
            )),
            Event::ImageBuilt {
                service,
                image,
                took,
            } => progress(format!(
                "built {image} for `{service}` in {:.1} s",
                took.as_secs_f64()
            )),
            Event::Warning(text) | Event::Fatal(text) => Some(text.clone()),
            Event::Interrupted {
                groups,
                dirs,
                hooks,
            } => {
                if *hooks > 0 {
                    Some(format!("\nharness: interrupted; stopping {groups} process group(s), removing {dirs} director(ies) and running {hooks} cleanup hook(s)"))
                } else if groups + dirs > 0 {
                    Some(format!("\nharness: interrupted; stopping {groups} process group(s) and removing {dirs} director(ies)"))
                } else {
                    None
                }
            }
            Event::TrialRetrying {
                name,
                attempt,
                left,
            } => Some(format!(
                "harness: `{name}` failed on attempt {attempt}; retrying ({left} left)"
            )),
            Event::ReportWritten { report, path } => Some(match report {
                Report::Timeline => format!("startup timeline: {}", path.display()),
                Report::Junit => format!("junit report: {}", path.display()),
            }),
            Event::Summary(text) => Some(text.strip_suffix('\n').unwrap_or(text).to_string()),
        }
    }
}

impl Sink for Terminal {
    fn event(&self, event: &Event) {
        if let Some(text) = self.render(event) {
            eprintln!("{text}");
        }
    }
}

/// Keeps the trial results ([`Event::TrialFinished`]) for the summary and the JUnit report.
#[derive(Debug, Default)]
pub struct Trials {
    records: Mutex<Vec<TrialRecord>>,
}

impl Trials {
    /// The results so far, in the order the trials finished.
    pub fn records(&self) -> Vec<TrialRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Sink for Trials {
    fn event(&self, event: &Event) {
        if let Event::TrialFinished(record) = event {
            self.records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(record.clone());
        }
    }
}

/// Sends each event to every sink it holds, in order.
#[derive(Clone)]
pub struct Fanout(pub Vec<Arc<dyn Sink>>);

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fanout({} sinks)", self.0.len())
    }
}

impl Sink for Fanout {
    fn event(&self, event: &Event) {
        for sink in &self.0 {
            sink.event(event);
        }
    }
}

/// One service a refresh restarted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refreshed {
    /// The service.
    pub service: String,
    /// Why: `binary changed`, `config and files changed`, `dependency payments moved`.
    pub reason: String,
    /// How long the restart and probe took.
    pub millis: u64,
}

impl std::fmt::Display for Refreshed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refreshed {}: {} ({} ms)",
            self.service, self.reason, self.millis
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_read_as_before() {
        let t = Terminal::new();
        let starting = Event::StackStarting {
            stack: "shop".into(),
            services: vec!["postgres".into(), "cache".into()],
            backends: "native".into(),
        };
        assert_eq!(
            t.render(&starting).as_deref(),
            Some("starting stack `shop` (2 services, native)")
        );
        let ready = Event::ServiceReady {
            service: "postgres".into(),
            at: Duration::from_millis(1234),
            waited: Duration::from_millis(987),
        };
        assert_eq!(
            t.render(&ready).as_deref(),
            Some("    1.234s  postgres  ready in 987 ms")
        );
        assert_eq!(Terminal::quiet().render(&ready), None);
        let warning = Event::Warning("w".into());
        assert_eq!(Terminal::quiet().render(&warning).as_deref(), Some("w"));
    }

    #[test]
    fn trials_keeps_finished_trials() {
        let trials = Trials::default();
        for name in ["s::b", "s::a"] {
            trials.event(&Event::TrialFinished(TrialRecord {
                name: name.into(),
                outcome: crate::testkit::report::Outcome::Passed,
                duration: Duration::ZERO,
            }));
        }
        trials.event(&Event::TrialStarted {
            name: "s::c".into(),
        });
        let names: Vec<_> = trials.records().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["s::b", "s::a"]);
    }
}
