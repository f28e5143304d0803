//! Shared helpers for the suites.
