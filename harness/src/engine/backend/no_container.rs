//! The container backend of a harness built without its `containers` feature: every request
//! to run containers fails, saying how to get them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::interface::{Backend, Instance, StartRequest};
use crate::engine::cleanup::RunDir;
use crate::engine::error::Error;
use crate::engine::events::Sink;
use crate::manifest::BackendKind;
use crate::manifest::Manifest;
use crate::settings::Settings;

const MISSING: &str = "the harness was built without its `containers` feature";

fn missing() -> Error {
    Error::Prerequisite {
        what: format!("{MISSING}: it cannot run containers"),
        help: "depend on harness with `features = [\"containers\"]`, or use the native or external backend".into(),
    }
}

/// Never available.
pub async fn available(_: &Manifest, _: &Settings) -> Result<(), String> {
    Err(MISSING.into())
}

/// No container ever ran, so there is no log.
pub fn log_tail(_: &str, _: usize) -> Vec<String> {
    Vec::new()
}

/// No images.
pub async fn image_ids(_: &Manifest, _: &Settings) -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// No mounts.
pub fn planned_mounts(_: &Manifest, _: &Path, _: &Settings) -> BTreeMap<String, PathBuf> {
    BTreeMap::new()
}

/// The container backend that is not there.
#[derive(Debug)]
pub struct Container;

impl Container {
    /// One that refuses every start.
    pub fn new(_: &RunDir, _: &Manifest, _: &Path, _: &Settings) -> Container {
        Container
    }
}

#[async_trait]
impl Backend for Container {
    fn kind(&self) -> BackendKind {
        BackendKind::Container
    }

    async fn preflight(&self, _: &Manifest, _: &std::sync::Arc<dyn Sink>) -> Result<(), Error> {
        Err(missing())
    }

    async fn start(&self, _: StartRequest<'_>) -> Result<Box<dyn Instance>, Error> {
        Err(missing())
    }
}
