//! Whether a signal is tearing this process down: set by the signal handler of
//! [`cleanup`](super::cleanup), read by whatever must then stay quiet or stop (the terminal sink).

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether a signal arrived and the process is being torn down; callers should stay quiet
/// (what they see failing is the teardown) and let the handler exit.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Records that a signal arrived.
pub(crate) fn set() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}
