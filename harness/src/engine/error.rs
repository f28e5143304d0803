//! Errors as values with a kind, each mapped to a named exit code.

use std::time::Duration;

use crate::manifest::ManifestError;

/// Exit codes of the `harness` command, named in one place.
pub mod exit_code {
    /// Everything passed.
    pub const OK: u8 = 0;
    /// At least one trial, contract or journey failed.
    pub const TESTS_FAILED: u8 = 1;
    /// The manifest is invalid, or the command line is wrong: fix the input.
    pub const INVALID_INPUT: u8 = 2;
    /// Something the stack needs is missing on this machine (a binary, an image, an engine).
    pub const PREREQUISITE_MISSING: u8 = 3;
    /// A service failed to start or become ready.
    pub const STARTUP_FAILED: u8 = 4;
    /// An operation on a running service failed (stop, start, pause).
    pub const SERVICE_FAILED: u8 = 5;
    /// A fault inside the harness: please report it.
    pub const INTERNAL: u8 = 101;
    /// Stopped by SIGINT (Ctrl-C).
    pub const INTERRUPTED: u8 = 130;
}

/// Everything that can go wrong, by who can fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest is invalid.
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    /// A command-line or environment setting is wrong.
    #[error("error: {0}")]
    Usage(String),
    /// Something the stack needs is missing; `help` says how to get it.
    #[error("error: {what}\n  = help: {help}")]
    Prerequisite {
        /// What is missing.
        what: String,
        /// How to provide it.
        help: String,
    },
    /// A service did not start or become ready.
    #[error("{0}")]
    Startup(Box<StartupError>),
    /// An operation on a running service failed.
    #[error("error: service `{service}`: {message}")]
    Service {
        /// The service.
        service: String,
        /// What failed.
        message: String,
    },
    /// A service's output cannot be read: the harness did not start it (external backend).
    #[error("error: the logs of service `{service}` are {reason}: the harness did not start it and cannot read its output\n  = help: read them where the server runs (the CI job's service container log), or run `{service}` on the native or container backend")]
    LogsUnavailable {
        /// The service.
        service: String,
        /// Why: `unavailable on the external backend`.
        reason: String,
    },
    /// An I/O fault inside the harness.
    #[error("error: {context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// The exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Manifest(_) | Error::Usage(_) => exit_code::INVALID_INPUT,
            Error::Prerequisite { .. } => exit_code::PREREQUISITE_MISSING,
            Error::Startup(_) => exit_code::STARTUP_FAILED,
            Error::Service { .. } | Error::LogsUnavailable { .. } => exit_code::SERVICE_FAILED,
            Error::Io { .. } => exit_code::INTERNAL,
        }
    }

    /// An I/O error with what the harness was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A failed operation on a service.
    pub fn service(service: &str, message: impl Into<String>) -> Error {
        Error::Service {
            service: service.to_string(),
            message: message.into(),
        }
    }
}

/// A service that did not start or become ready, and what was done about it.
#[derive(Debug)]
pub struct StartupError {
    /// The service that failed.
    pub service: String,
    /// Its probe, as text, if it got as far as probing.
    pub probe: Option<String>,
    /// How long it waited.
    pub waited: Option<Duration>,
    /// What went wrong.
    pub message: String,
    /// The last lines of its log.
    pub log_tail: Vec<String>,
    /// Services stopped again, in the order stopped.
    pub stopped: Vec<String>,
}

impl std::fmt::Display for StartupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.probe, self.waited) {
            (Some(probe), Some(waited)) => writeln!(
                f,
                "error: service `{}` did not become ready: probe {probe} failed after waiting {:.1} s",
                self.service,
                waited.as_secs_f64()
            )?,
            _ => writeln!(f, "error: service `{}` failed to start", self.service)?,
        }
        writeln!(f, "  cause: {}", self.message)?;
        if self.stopped.is_empty() {
            writeln!(f, "  nothing else had started")?;
        } else {
            writeln!(
                f,
                "  stopped again, in reverse dependency order: {}",
                self.stopped.join(", ")
            )?;
        }
        if self.log_tail.is_empty() {
            write!(f, "  (its log is empty)")?;
        } else {
            writeln!(f, "  last {} lines of its log:", self.log_tail.len())?;
            for (i, line) in self.log_tail.iter().enumerate() {
                if i > 0 {
                    writeln!(f)?;
                }
                write!(f, "  | {line}")?;
            }
        }
        write!(
            f,
            "\n  = help: run `harness up` to watch it start, or raise `startup-timeout` of `{}` in the manifest if it is merely slow",
            self.service
        )
    }
}
