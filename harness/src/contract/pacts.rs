//! Pact files as the harness sees them: who a pact is between and its interactions, and where
//! the verifier reaches the provider.

use std::panic::RefUnwindSafe;
use std::path::{Path, PathBuf};

use pact_models::pact::Pact;

use super::Error;

/// Where the verifier reaches a provider's HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// A pact file: who it is between and its interactions.
#[derive(Debug, Clone)]
pub struct PactFile {
    /// The file.
    pub path: PathBuf,
    /// The consumer's name.
    pub consumer: String,
    /// The provider's name.
    pub provider: String,
    /// Its interactions, in file order.
    pub interactions: Vec<InteractionInfo>,
}

/// One interaction of a pact file.
#[derive(Debug, Clone)]
pub struct InteractionInfo {
    /// Its description (unique within the file for trials to be unique).
    pub description: String,
    /// The names of its provider states.
    pub states: Vec<String>,
    /// `true` for a message interaction.
    pub is_message: bool,
}

/// Reads the `*.json` pact files directly in `dir`, sorted by file name.
pub fn load_pacts(dir: &Path) -> Result<Vec<PactFile>, Error> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|cause| Error::PactDir {
            dir: dir.to_path_buf(),
            cause,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    paths.sort();
    paths.iter().map(|p| load_pact(p)).collect()
}

/// Reads one pact file.
pub fn load_pact(path: &Path) -> Result<PactFile, Error> {
    let pact: Box<dyn Pact + Send + Sync + RefUnwindSafe> = pact_models::pact::read_pact(path)
        .map_err(|e| Error::PactFile {
            path: path.to_path_buf(),
            cause: format!("{e:#}"),
        })?;
    let interactions = pact
        .interactions()
        .iter()
        .map(|i| InteractionInfo {
            description: i.description(),
            states: i.provider_states().iter().map(|s| s.name.clone()).collect(),
            is_message: i.is_message(),
        })
        .collect();
    Ok(PactFile {
        path: path.to_path_buf(),
        consumer: pact.consumer().name,
        provider: pact.provider().name,
        interactions,
    })
}
