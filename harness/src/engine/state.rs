//! What the state file of attach mode records about a running stack (see the `attach` module),
//! and so what a handle on that stack is built from. Below the stack: it names no handle.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::engine::backend::BackendKind;
use crate::engine::fingerprint::{Fingerprints, KnownFile};
use crate::engine::logs::LogSource;
use crate::engine::scheduler::Timing;
use crate::manifest::Manifest;
use crate::model::endpoint::Endpoint;

/// What a state file records about a running stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Pid of the process that owns the stack.
    pub pid: u32,
    /// The run id.
    pub run_id: String,
    /// Backend that runs it.
    pub backend: BackendKind,
    /// The manifest it was started from (canonical path).
    pub manifest: PathBuf,
    /// Hash of the manifest's content when it started.
    pub manifest_hash: String,
    /// Host endpoints by service.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Log sources by service.
    pub logs: BTreeMap<String, LogSource>,
    /// Start timings, in ready order: (service, started ms, ready ms).
    pub timings: Vec<(String, u64, u64)>,
    /// What each service was started from.
    #[serde(default)]
    pub fingerprints: Fingerprints,
    /// The owner's control socket, where attached suites ask for a refresh.
    #[serde(default)]
    pub control: Option<PathBuf>,
    /// Files already hashed for the fingerprints, with what identified their content.
    #[serde(default)]
    pub files: Vec<KnownFile>,
    /// The backend of each service (empty: every one on `backend`).
    #[serde(default)]
    pub backends: BTreeMap<String, BackendKind>,
}

impl State {
    /// The backend of each service of the stack.
    pub fn plan(&self, manifest: &Manifest) -> crate::engine::backend::mixed::Plan {
        let mut plan = crate::engine::backend::mixed::Plan::uniform(manifest, self.backend);
        plan.services.extend(self.backends.clone());
        plan
    }
}

impl State {
    /// The timings recorded, as scheduler timings.
    pub fn timings(&self) -> Vec<Timing> {
        self.timings
            .iter()
            .map(|(s, a, b)| Timing {
                service: s.clone(),
                started: std::time::Duration::from_millis(*a),
                launched: std::time::Duration::from_millis(*a),
                ready: std::time::Duration::from_millis(*b),
            })
            .collect()
    }
}
