//! The model every layer shares: server kinds, and (below the manifest) what a service is.

pub mod kind;
