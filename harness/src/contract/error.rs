//! What the contracts module returns to its callers, by kind.
//!
//! A cause is part of each message rather than a `source`: the runner and the command print an
//! error with its chain on one line, and a cause in both places would be printed twice.

use std::path::PathBuf;

use crate::exit_code;

/// Everything the contracts module can fail with. Provider-state handlers and message
/// producers written by users return `anyhow`; what they report reaches the caller inside
/// [`Error::DoesNotHold`] and [`Error::NotVerified`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pact directory cannot be read.
    #[error("reading the pact directory {}: {cause}", dir.display())]
    PactDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// A pact file cannot be read or is not a valid pact.
    #[error("reading the pact file {}: {cause}", path.display())]
    PactFile {
        /// The file.
        path: PathBuf,
        /// What the pact library said, with its causes.
        cause: String,
    },
    /// The pact file has no interaction with this description.
    #[error("{} has no interaction `{description}`", path.display())]
    NoInteraction {
        /// The pact file.
        path: PathBuf,
        /// The description asked for.
        description: String,
    },
    /// The verifier ran another number of interactions than the pact file has with the
    /// description (its filter matched differently).
    #[error("expected to verify {expected} interaction(s) `{description}` of {}, the verifier ran {ran}:\n{output}", path.display())]
    UnexpectedCount {
        /// The pact file.
        path: PathBuf,
        /// The description.
        description: String,
        /// Interactions with it in the file.
        expected: usize,
        /// Interactions the verifier ran.
        ran: usize,
        /// The verifier's output.
        output: String,
    },
    /// An interaction does not hold against the provider.
    #[error("{report}")]
    DoesNotHold {
        /// The consumer.
        consumer: String,
        /// The provider.
        provider: String,
        /// The interaction's description.
        description: String,
        /// Mismatches, failed states and producers, the provider's log.
        report: String,
    },
    /// A provider failed its verification against all its pacts (`harness verify`).
    #[error("{}", failures.join("\n\n"))]
    NotVerified {
        /// The provider.
        provider: String,
        /// A readable account of each failure.
        failures: Vec<String>,
    },
    /// The provider is not a service of the stack.
    #[error("{0}")]
    Stack(#[from] crate::Error),
    /// The provider's endpoint has no port the verifier can use.
    #[error("provider `{provider}`: {reason}")]
    NoPort {
        /// The provider.
        provider: String,
        /// Why.
        reason: String,
    },
    /// A setting of a verify request is wrong: a command-line flag or a `HARNESS_VERIFY_*`
    /// variable.
    #[error("{problem}")]
    Setting {
        /// The flag or variable at fault, e.g. `--provider-version` or
        /// `HARNESS_VERIFY_SELECTORS`.
        setting: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The manifest has no service by the provider's name.
    #[error("the manifest has no service `{provider}` to verify")]
    UnknownProvider {
        /// The provider.
        provider: String,
    },
    /// The verifier failed as a whole, not an interaction: it could not run, or panicked.
    #[error("{context}: {cause}")]
    Verifier {
        /// What was being done.
        context: &'static str,
        /// Why, with its causes.
        cause: String,
    },
    /// The `message` transport could not be served on 127.0.0.1.
    #[error("binding the message transport to 127.0.0.1: {cause}")]
    MessageTransport {
        /// Why.
        cause: std::io::Error,
    },
    /// The suite binary could not write its report for `harness verify`.
    #[error("writing {}: {cause}", path.display())]
    Report {
        /// The report file.
        path: PathBuf,
        /// Why.
        cause: String,
    },
    /// `harness verify` could not run the suite binary.
    #[error("{context}: {cause}")]
    Command {
        /// What it was doing.
        context: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The suite binary ran, but verified nothing: its `main` does not hand the request on.
    #[error("{command} ran no verification of `{provider}`: its main must hand a HARNESS_VERIFY_PROVIDER request to `Contracts::verify_suite` (see harness::contract)")]
    NoVerification {
        /// The command run.
        command: String,
        /// The provider.
        provider: String,
    },
}

impl Error {
    /// The exit code of the `harness` command for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::PactDir { .. }
            | Error::PactFile { .. }
            | Error::NoInteraction { .. }
            | Error::NoPort { .. }
            | Error::Setting { .. }
            | Error::UnknownProvider { .. }
            | Error::NoVerification { .. } => exit_code::INVALID_INPUT,
            Error::UnexpectedCount { .. }
            | Error::DoesNotHold { .. }
            | Error::NotVerified { .. } => exit_code::TESTS_FAILED,
            Error::Stack(e) => e.exit_code(),
            Error::Verifier { .. }
            | Error::MessageTransport { .. }
            | Error::Report { .. }
            | Error::Command { .. } => exit_code::INTERNAL,
        }
    }

    /// A wrong setting of a verify request.
    pub(crate) fn setting(setting: &'static str, problem: impl Into<String>) -> Error {
        Error::Setting {
            setting,
            problem: problem.into(),
        }
    }
}
