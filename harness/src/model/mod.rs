//! The model every layer shares, depending on nothing else of the harness: what a kind of
//! server means ([`kind`]), where a service can be reached ([`endpoint`]), references between
//! services ([`template`]), and small pure helpers (cycle detection, did-you-mean, content
//! hashes).

pub(crate) mod dag;
pub mod digest;
pub mod endpoint;
pub mod kind;
pub(crate) mod names;
pub mod template;
