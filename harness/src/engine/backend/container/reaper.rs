//! Labels on everything of a run, removal by label, and reaping what runs whose owner died
//! left behind.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use testcontainers::bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use testcontainers::bollard::Docker;

use super::engine::{blocking, connect, status_of};

/// Label: the id of the run that created a resource.
pub const LABEL_RUN_ID: &str = "org.harness.run-id";
/// Label: the pid of the process that owns the run.
pub const LABEL_OWNER_PID: &str = "org.harness.owner-pid";
/// Label: when the run started (unix seconds).
pub const LABEL_STARTED_AT: &str = "org.harness.started-at";
/// Label: `true` on everything the harness creates.
pub const LABEL_MANAGED: &str = "org.harness.managed";
/// Label: the host name of the machine of the owner (only its own runs are judged dead).
pub const LABEL_HOST: &str = "org.harness.host";
/// Label: the run directory of the owner.
pub const LABEL_RUN_DIR: &str = "org.harness.run-dir";
/// Label: the service a container runs.
pub const LABEL_SERVICE: &str = "org.harness.service";

/// Now, in unix seconds.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The host name of this machine (empty if unknown).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The labels of every resource of a run.
pub fn run_labels(
    run_id: &str,
    run_dir: Option<&Path>,
    started_at: u64,
) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (LABEL_RUN_ID.to_string(), run_id.to_string()),
        (LABEL_OWNER_PID.to_string(), std::process::id().to_string()),
        (LABEL_STARTED_AT.to_string(), started_at.to_string()),
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_HOST.to_string(), hostname()),
    ]);
    if let Some(dir) = run_dir {
        labels.insert(LABEL_RUN_DIR.to_string(), dir.display().to_string());
    }
    labels
}

/// What a removal removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Containers.
    pub containers: usize,
    /// Networks.
    pub networks: usize,
    /// Volumes.
    pub volumes: usize,
}

impl Removed {
    /// Whether nothing was removed.
    pub fn is_empty(&self) -> bool {
        *self == Removed::default()
    }
}

/// An engine list filter on one label (`key=value`).
fn label_filter(label: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![label.to_string()])])
}

/// Removes one container with its anonymous volumes; `Ok(false)` when it was gone already.
pub(super) async fn remove_container(docker: &Docker, id: &str) -> Result<bool, String> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(true),
        // Gone already, or being removed by someone else.
        Err(e) if matches!(status_of(&e), Some(404) | Some(409)) => Ok(false),
        Err(e) => Err(format!("removing container {id}: {e}")),
    }
}

/// Removes every container, network and (with `volumes`) volume carrying `label`
/// (`key=value`). Containers first, listing again until none is left (a start may be creating
/// one right now), then networks.
pub async fn remove_labelled(
    docker: &Docker,
    label: &str,
    volumes: bool,
) -> Result<Removed, String> {
    let mut removed = Removed::default();
    let mut errors = Vec::new();
    for pass in 0..20 {
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&label_filter(label))
            .build();
        let list = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| e.to_string())?;
        let ids: Vec<String> = list.into_iter().filter_map(|c| c.id).collect();
        if ids.is_empty() {
            break;
        }
        if pass > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for result in
            futures::future::join_all(ids.iter().map(|id| remove_container(docker, id))).await
        {
            match result {
                Ok(true) => removed.containers += 1,
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    let options = ListNetworksOptionsBuilder::new()
        .filters(&label_filter(label))
        .build();
    let networks = docker
        .list_networks(Some(options))
        .await
        .map_err(|e| e.to_string())?;
    for network in networks {
        let Some(id) = network.id else { continue };
        let mut attempt = 0;
        loop {
            match docker.remove_network(&id).await {
                Ok(()) => {
                    removed.networks += 1;
                    break;
                }
                Err(e) if status_of(&e) == Some(404) => break,
                // Endpoints of containers just removed may linger for a moment.
                Err(_) if attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    errors.push(format!("removing network {id}: {e}"));
                    break;
                }
            }
        }
    }
    if volumes {
        let options = ListVolumesOptionsBuilder::new()
            .filters(&label_filter(label))
            .build();
        let list = docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| e.to_string())?;
        for volume in list.volumes.unwrap_or_default() {
            let options = RemoveVolumeOptionsBuilder::new().force(true).build();
            match docker.remove_volume(&volume.name, Some(options)).await {
                Ok(()) => removed.volumes += 1,
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => errors.push(format!("removing volume {}: {e}", volume.name)),
            }
        }
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(errors.join("; "))
    }
}

/// Removes everything of one run, from synchronous code.
pub fn remove_run_blocking(run_id: &str) -> Result<Removed, String> {
    let label = format!("{LABEL_RUN_ID}={run_id}");
    blocking(|docker| async move { remove_labelled(&docker, &label, true).await })?
}

/// Removes every container, network and volume of the harness (`org.harness.managed=true`),
/// of live runs too (`harness down --all`).
pub async fn remove_all() -> Result<Removed, RemoveError> {
    let docker = connect().await.map_err(RemoveError::NoEngine)?;
    remove_labelled(&docker, &format!("{LABEL_MANAGED}=true"), true)
        .await
        .map_err(RemoveError::Engine)
}

/// Why [`remove_all`] removed nothing, or not everything.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// No Docker engine answers: there is nothing of the harness there to remove.
    #[error("{0}")]
    NoEngine(String),
    /// The engine answered, and refused or failed a removal.
    #[error("{0}")]
    Engine(String),
}

/// When a process started, in unix seconds (`None` if it is gone or a zombie).
fn process_started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    let ticks: u64 = fields.get(19)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    // /proc reports clock ticks of USER_HZ, 100 on Linux.
    Some(boot + ticks / 100)
}

/// Whether the run that created a resource (by its labels) may still be using it. Runs of other
/// machines count as alive; a run is dead when its owner process is gone, when its pid now
/// belongs to a process started after the run, or when its run directory is gone.
pub fn run_alive(labels: &HashMap<String, String>) -> bool {
    if labels.get(LABEL_HOST).map(String::as_str) != Some(hostname().as_str()) {
        return true;
    }
    let Some(pid) = labels
        .get(LABEL_OWNER_PID)
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return true;
    };
    let Some(process_start) = process_started(pid) else {
        return false;
    };
    if let Some(run_start) = labels
        .get(LABEL_STARTED_AT)
        .and_then(|t| t.parse::<u64>().ok())
    {
        if process_start > run_start + 2 {
            return false;
        }
    }
    match labels.get(LABEL_RUN_DIR) {
        Some(dir) => Path::new(dir).exists(),
        None => true,
    }
}

/// Removes the containers, networks and volumes of runs whose owner died (killed with
/// `kill -9`, say). Returns the ids of the runs reaped.
pub async fn reap_dead_runs() -> Result<Vec<String>, String> {
    let docker = connect().await?;
    reap_dead_runs_with(&docker).await
}

/// [`reap_dead_runs`] on a connection the caller has.
pub(super) async fn reap_dead_runs_with(docker: &Docker) -> Result<Vec<String>, String> {
    let managed = label_filter(&format!("{LABEL_MANAGED}=true"));
    let mut runs: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
    let mut note = |labels: HashMap<String, String>| {
        if let Some(id) = labels.get(LABEL_RUN_ID).cloned() {
            runs.entry(id).or_insert(labels);
        }
    };
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&managed)
        .build();
    for c in docker
        .list_containers(Some(options))
        .await
        .map_err(|e| e.to_string())?
    {
        note(c.labels.unwrap_or_default());
    }
    let options = ListNetworksOptionsBuilder::new().filters(&managed).build();
    for n in docker
        .list_networks(Some(options))
        .await
        .map_err(|e| e.to_string())?
    {
        note(n.labels.unwrap_or_default());
    }
    let options = ListVolumesOptionsBuilder::new().filters(&managed).build();
    for v in docker
        .list_volumes(Some(options))
        .await
        .map_err(|e| e.to_string())?
        .volumes
        .unwrap_or_default()
    {
        note(v.labels);
    }
    let mut reaped = Vec::new();
    for (id, labels) in runs {
        if run_alive(&labels) {
            continue;
        }
        remove_labelled(docker, &format!("{LABEL_RUN_ID}={id}"), true).await?;
        reaped.push(id);
    }
    Ok(reaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_dead_owners_are_dead() {
        let me = std::process::id();
        let started = unix_now();
        let dir = std::env::temp_dir();
        let alive = run_labels("x", Some(&dir), started);
        assert!(run_alive(&alive));
        let mut gone_dir = alive.clone();
        gone_dir.insert(LABEL_RUN_DIR.into(), "/nonexistent/harness-run".into());
        assert!(!run_alive(&gone_dir));
        let mut reused = alive.clone();
        reused.insert(LABEL_STARTED_AT.into(), "1000".into());
        assert!(
            !run_alive(&reused),
            "a pid that started after the run is another process"
        );
        let mut dead = alive.clone();
        dead.insert(LABEL_OWNER_PID.into(), "999999999".into());
        assert!(!run_alive(&dead));
        let mut elsewhere = dead.clone();
        elsewhere.insert(LABEL_HOST.into(), "another-machine".into());
        assert!(
            run_alive(&elsewhere),
            "runs of other machines are not judged"
        );
        assert_eq!(alive[LABEL_OWNER_PID], me.to_string());
        assert_eq!(alive[LABEL_MANAGED], "true");
    }
}
