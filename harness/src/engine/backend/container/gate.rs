//! A container started ahead of time and held at a gate: a service's container is created and
//! started (its network, mounts and published ports set up: 0.4 s a container here) while its
//! dependencies boot, but its program runs only once they are ready and the gate opens.
//!
//! The gate is a FIFO of the run directory, bind-mounted into the container with the marker
//! that it was opened once. The container's entrypoint becomes a shell that waits on the FIFO
//! (unless the marker is there: a container started again passes at once), then `exec`s the
//! service's own entrypoint and command, so the program runs as PID 1 exactly as without the
//! gate. Only for images known to have `/bin/sh` (runtime tags of the local base image).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use testcontainers::bollard::models::ContainerCreateBody;

/// Where the gate's directory is mounted in the container.
const INSIDE: &str = "/harness/gate";

/// The shell that holds the service until the gate opens: `$0` and `$@` are the service's own
/// entrypoint and command.
const HOLD: &str =
    "[ -e /harness/gate/open ] || read -r _ < /harness/gate/go || exit 125; exec \"$0\" \"$@\"";

/// How long opening waits for the container to reach its gate.
const OPEN_WAIT: Duration = Duration::from_secs(5);

/// One service's gate: `<run dir>/gates/<service>/go` (the FIFO) and `open` (the marker).
#[derive(Debug)]
pub(super) struct Gate {
    dir: PathBuf,
}

impl Gate {
    /// Makes the FIFO (readable by any user the container runs as).
    pub(super) fn create(run_dir: &Path, service: &str) -> std::io::Result<Gate> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = run_dir.join("gates").join(service);
        std::fs::create_dir_all(&dir)?;
        let fifo = dir.join("go");
        let _ = std::fs::remove_file(&fifo);
        let _ = std::fs::remove_file(dir.join("open"));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666))
            .map_err(std::io::Error::from)?;
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o666))?;
        Ok(Gate { dir })
    }

    /// `body` held at this gate. `None` when it has no entrypoint of its own to run after it.
    pub(super) fn hold(&self, mut body: ContainerCreateBody) -> Option<ContainerCreateBody> {
        let entrypoint = body.entrypoint.take().filter(|e| !e.is_empty())?;
        body.entrypoint = Some(
            ["/bin/sh", "-c", HOLD]
                .into_iter()
                .map(str::to_string)
                .chain(entrypoint)
                .collect(),
        );
        let host = body.host_config.get_or_insert_with(Default::default);
        host.binds
            .get_or_insert_with(Vec::new)
            .push(format!("{}:{INSIDE}", self.dir.display()));
        Some(body)
    }

    /// Lets the service's program run: writes to the FIFO once the container waits on it, then
    /// leaves the marker for later starts. Fails when nobody reads within [`OPEN_WAIT`] (the
    /// container did not get to its gate).
    pub(super) async fn open(&self) -> Result<(), String> {
        let fifo = self.dir.join("go");
        let deadline = tokio::time::Instant::now() + OPEN_WAIT;
        loop {
            // Non-blocking: without a reader the open fails at once (ENXIO) instead of hanging.
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&fifo)
            {
                Ok(mut f) => {
                    f.write_all(b"go\n")
                        .map_err(|e| format!("opening the gate {}: {e}", fifo.display()))?;
                    break;
                }
                Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {
                    if tokio::time::Instant::now() > deadline {
                        return Err(format!(
                            "the container did not wait at its gate {} within {OPEN_WAIT:?}",
                            fifo.display()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(format!("opening the gate {}: {e}", fifo.display())),
            }
        }
        std::fs::write(self.dir.join("open"), "")
            .map_err(|e| format!("marking the gate {} open: {e}", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The held shell, run here with `sh` as the container would run it.
    fn hold(gate: &Gate, program: &[&str]) -> std::process::Child {
        let body = ContainerCreateBody {
            entrypoint: Some(program.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        let held = gate.hold(body).unwrap();
        let argv = held.entrypoint.unwrap();
        let script = argv[2].replace(INSIDE, &gate.dir.display().to_string());
        std::process::Command::new(&argv[0])
            .arg("-c")
            .arg(script)
            .args(&argv[3..])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[tokio::test]
    async fn the_program_runs_only_once_the_gate_opens_and_a_restart_passes_it() {
        let run = std::env::temp_dir().join(format!("harness-gate-{}", std::process::id()));
        let gate = Gate::create(&run, "api").unwrap();
        let mut child = hold(&gate, &["/bin/echo", "ran", "with args"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "the program ran before the gate opened"
        );
        gate.open().await.unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ran with args\n");
        // Started again (a fault journey's stop and start): the marker lets it through.
        let again = hold(&gate, &["/bin/echo", "again"])
            .wait_with_output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&again.stdout), "again\n");
        let _ = std::fs::remove_dir_all(&run);
    }

    #[tokio::test]
    async fn a_gate_nobody_waits_at_fails_to_open_and_an_entrypoint_is_needed() {
        let run = std::env::temp_dir().join(format!("harness-gate-none-{}", std::process::id()));
        let gate = Gate::create(&run, "api").unwrap();
        tokio::time::pause();
        let err = gate.open().await.unwrap_err();
        assert!(err.contains("did not wait at its gate"), "{err}");
        assert!(gate.hold(ContainerCreateBody::default()).is_none());
        let _ = std::fs::remove_dir_all(&run);
    }
}
