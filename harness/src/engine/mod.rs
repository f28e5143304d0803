//! The engine: starts a validated manifest as a running stack and keeps it honest. The
//! [`scheduler`] starts each service the moment its dependencies reach their condition, the
//! [`backend`]s run them (native processes, containers, external endpoints, or a mix), the
//! [`probe`]s say when each is ready, the [`stack`] is the handle tests use, [`attach`] and
//! [`fingerprint`] let a test attach to a running stack and refresh what changed, and
//! [`cleanup`] removes everything a run created, after any ending. [`crate::settings`] are
//! read once and passed down.

pub mod attach;
pub mod backend;
pub mod cleanup;
pub mod error;
pub mod events;
pub mod fingerprint;
pub mod interrupt;
mod launch;
pub mod logs;
pub mod probe;
pub mod scheduler;
pub mod stack;
pub mod state;
