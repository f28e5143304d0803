//! The test kit on top of the engine: the suite [`runner`] (one trial per check, libtest-mimic),
//! [`journey`]s across services, response [`snapshot`]s, per-trial [`isolation`], output
//! [`capture`], [`report`]s (summary, JUnit, timeline), [`affected`] trials, and the
//! [`build`] of the workspace's service binaries before a suite.

pub mod affected;
pub mod amqp;
pub mod build;
pub mod capture;
pub mod isolation;
pub mod journey;
pub mod loopback;
pub mod report;
pub mod runner;
pub mod snapshot;
