//! The test kit on top of the engine: the suite [`runner`] (one trial per check, libtest-mimic),
//! [`journey`]s across services, response [`snapshot`]s, per-trial [`isolation`], output
//! [`capture`], [`report`]s (summary, JUnit, timeline), [`affected`] trials, and the
//! [`build`] of the workspace's service binaries before a suite.

pub mod affected;
#[cfg(feature = "journeys")]
pub mod amqp;
pub mod build;
pub mod capture;
#[cfg(feature = "journeys")]
pub mod isolation;
#[cfg(feature = "journeys")]
pub mod journey;
#[cfg(feature = "contracts")]
pub mod loopback;
pub mod report;
pub mod runner;
#[cfg(feature = "snapshots")]
pub mod snapshot;
