//! The command line of `harness`: its commands, arguments and flags (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use harness::backend::mixed::BackendChoice;
use harness::backend::BackendKind;

#[derive(Debug, Parser)]
#[command(
    name = "harness",
    version,
    about = "Start a stack of services and test it for real"
)]
pub(crate) struct Cli {
    /// The stack manifest (default: $HARNESS_MANIFEST, stack.toml, fixtures/stack.toml).
    #[arg(long, short = 'm', global = true)]
    pub(crate) manifest: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Validate the manifest; start nothing.
    Check {
        /// Also list the trials of the suites (built if needed) and warn about `[suites]` keys
        /// that match none.
        #[arg(long)]
        suites: bool,
        /// The cargo package holding the suites.
        #[arg(long, default_value = "suites", value_name = "PACKAGE")]
        suite_package: String,
    },
    /// Write a starter `stack.toml` (from the compose file here, if there is one) and a starter
    /// suite (`tests/stack.rs`) in the current directory; nothing is overwritten.
    Init,
    /// Print the `stack.toml` a compose file means to the harness (any manifest: its
    /// normalised form).
    Convert {
        /// The compose file (or manifest) to convert.
        file: PathBuf,
    },
    /// Print the start order and dependency layers, or Graphviz DOT.
    Graph {
        /// Print Graphviz DOT instead.
        #[arg(long)]
        dot: bool,
        /// Print the services that depend on this one (transitively).
        #[arg(long, value_name = "SERVICE")]
        dependents: Option<String>,
    },
    /// Start the stack, print its endpoints, and keep it up until Ctrl-C or `harness down`.
    Up {
        /// Which backend runs the services: `native`, `container` or `external` for all, and
        /// `<service>=<backend>` for one (`--backend native,postgres=external`). Default:
        /// $HARNESS_BACKEND_<SERVICE>, $HARNESS_BACKEND, the manifest's `backend`, else
        /// detected: containers when a Docker engine answers and every image is present, else
        /// native, else external.
        #[arg(long, value_name = "BACKENDS", value_parser = BackendChoice::parse)]
        backend: Option<BackendChoice>,
        /// Do not build the workspace binaries the manifest names.
        #[arg(long)]
        no_build: bool,
        /// Start the stack in the background and return once it is ready; suites then attach
        /// to it (nextest, repeated `cargo test`), and `harness down` ends it.
        #[arg(long)]
        detach: bool,
        /// Restart a service in place when what it runs changes (a rebuilt binary, an edited
        /// file under its `paths`, a new image, its manifest entry), so `cargo build` in
        /// another terminal is enough.
        #[arg(long, conflicts_with = "detach")]
        watch: bool,
        /// Stop the stack by itself once the process PID has ended (what `--detach` passes its
        /// background stack under a nextest setup script: the nextest run).
        #[arg(long, value_name = "PID", hide = true)]
        stop_with: Option<i32>,
    },
    /// Which trials a change affects, from git: changed paths -> services -> dependents ->
    /// trials. Trials nothing maps always run; shared changes run every trial.
    Affected {
        /// The revision to compare the working tree with (e.g. `origin/main`, `HEAD~1`).
        #[arg(long, value_name = "REV")]
        since: String,
        /// Print JSON instead of text.
        #[arg(long, conflicts_with = "filter")]
        json: bool,
        /// Print only the runner filter (the value for HARNESS_ONLY; empty: every trial).
        #[arg(long)]
        filter: bool,
        /// Also list each `[suites]` key and pact with the trials it maps, and the unmapped ones.
        #[arg(long, conflicts_with_all = ["json", "filter"])]
        explain: bool,
        /// Read the trial names from this file (one per line, or `--list --format terse`
        /// output) instead of building the suites and listing their trials.
        #[arg(long, value_name = "FILE")]
        trials: Option<PathBuf>,
        /// The pact files (default: `contracts/` beside the manifest, else at the repository
        /// root).
        #[arg(long, value_name = "DIR")]
        contracts: Option<PathBuf>,
        /// The cargo package holding the suites.
        #[arg(long, default_value = "suites", value_name = "PACKAGE")]
        suite_package: String,
    },
    /// Print the endpoints of the stack `harness up` runs as the external backend's variables
    /// (`HARNESS_<SERVICE>_HOST=…`), for `export`: another job or repository then uses it as
    /// its external servers.
    Env {
        /// Only these services (default: all).
        services: Vec<String>,
    },
    /// Stop a stack started by `harness up`.
    Down {
        /// Also remove every container, network and volume the harness owns in the Docker
        /// engine (label org.harness.managed=true), of any run, live or dead.
        #[arg(long)]
        all: bool,
    },
    /// Run every suite against the stack (the main job).
    Test {
        /// Extra arguments for the test runner (filters, --list, ...).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Measure things side by side.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
    /// Verify every contract in which PROVIDER is the provider against a candidate of it, with
    /// the rest of the stack real. Provider states come from the suite binary that holds them
    /// (in a cargo workspace) or from --state-change-url.
    Verify(Box<VerifyArgs>),
    /// Provider states for other tools.
    States {
        #[command(subcommand)]
        what: States,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum States {
    /// Serve the provider states a suite registers as a Pact state-change endpoint against the
    /// stack (a running `harness up`'s, else one of its own), for Pact's verifier CLI or any
    /// language's verifier: `--state-change-url <the printed URL>`. Runs until Ctrl-C.
    Serve {
        /// The provider whose states are served.
        provider: String,
        /// The address to listen on (port 0: a free one, printed).
        #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// The cargo package of the suite that holds the provider states.
        #[arg(long, default_value = "suites")]
        suite_package: String,
        /// Its test target.
        #[arg(long, default_value = "contracts")]
        suite_test: String,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The provider: a service of the manifest named as provider in the contracts.
    pub(crate) provider: String,
    /// Run this binary as the provider instead of the manifest's.
    #[arg(long, value_name = "PATH", conflicts_with = "image")]
    pub(crate) binary: Option<PathBuf>,
    /// Run this image as the provider instead of the manifest's (container backend).
    #[arg(long, value_name = "REF", conflicts_with = "build")]
    pub(crate) image: Option<String>,
    /// Build the provider from this Docker build context (its Dockerfile) and run that
    /// (container backend).
    #[arg(long, value_name = "DIR", conflicts_with = "binary")]
    pub(crate) build: Option<PathBuf>,
    /// Set up provider states by POSTing Pact's {"state", "params", "action"} to this URL (a
    /// path such as /_pact/state is taken on the provider's own address) instead of a suite's
    /// handlers; verifies without cargo, in any repository.
    #[arg(long, value_name = "URL")]
    pub(crate) state_change_url: Option<String>,
    /// Also call the state-change URL after each interaction ("action": "teardown").
    #[arg(long, requires = "state_change_url")]
    pub(crate) state_change_teardown: bool,
    /// Write the JUnit report (one testcase per interaction) here (default:
    /// junit/verify-PROVIDER.xml in the state directory).
    #[arg(long, value_name = "FILE")]
    pub(crate) junit: Option<PathBuf>,
    /// Also write the report as JSON here: the summary rows and each interaction's result.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Verify these pacts instead of contracts/: a pact file, a directory of them, or an
    /// http(s) URL, written by any Pact implementation (V2 to V4); repeatable, and beside a
    /// broker's.
    #[arg(long = "pacts", value_name = "FILE|DIR|URL")]
    pub(crate) pacts: Vec<String>,
    /// Only the pacts of this consumer (repeatable); default: every consumer's.
    #[arg(long = "consumer", value_name = "NAME")]
    pub(crate) consumers: Vec<String>,
    /// Fetch the pacts from this Pact Broker instead of contracts/ (token: $PACT_BROKER_TOKEN).
    #[arg(long, value_name = "URL")]
    pub(crate) broker_url: Option<String>,
    /// A consumer version selector as JSON, e.g. '{"mainBranch":true}' (repeatable).
    #[arg(long = "consumer-version-selector", value_name = "JSON")]
    pub(crate) selectors: Vec<String>,
    /// Verify pending pacts without failing on them.
    #[arg(long)]
    pub(crate) enable_pending: bool,
    /// Also verify work-in-progress pacts created since this date (YYYY-MM-DD).
    #[arg(long, value_name = "DATE")]
    pub(crate) include_wip_pacts_since: Option<String>,
    /// Publish the verification results to the broker (needs --provider-version).
    #[arg(long)]
    pub(crate) publish: bool,
    /// The provider version the results are published for.
    #[arg(long, value_name = "VERSION")]
    pub(crate) provider_version: Option<String>,
    /// The provider's branch, published with the results.
    #[arg(long, value_name = "BRANCH")]
    pub(crate) branch: Option<String>,
    /// A link to the build, published with the results.
    #[arg(long, value_name = "URL")]
    pub(crate) build_url: Option<String>,
    /// The cargo package of the suite that holds the provider states (in a cargo workspace,
    /// without --state-change-url).
    #[arg(long, default_value = "suites")]
    pub(crate) suite_package: String,
    /// Its test target.
    #[arg(long, default_value = "contracts")]
    pub(crate) suite_test: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Bench {
    /// Cold stack-up vs. sequential start vs. critical path, and readiness lag.
    Startup {
        /// Runs of each mode.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Samples of readiness lag.
        #[arg(long, default_value_t = 30)]
        lag_samples: usize,
        /// Do not build the workspace binaries the manifest names.
        #[arg(long)]
        no_build: bool,
    },
    /// Whole-suite wall time: a cold run (the suite starts its own stack) vs a warm run
    /// attached to a running stack, and the time to the first trial in each.
    Suites {
        /// Runs of each mode.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The suite (test target of the `suites` package).
        #[arg(long, default_value = "journeys")]
        suite: String,
        /// Which backend runs the stacks.
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
    },
    /// Cold stack-up on the container backend vs docker-compose, with solo ready times and the
    /// critical path (default manifest: fixtures/manifests/infra-container.toml).
    Compose {
        /// Runs of each side.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}
