//! Native test support for Ackline.

/// Harness for tests against the real edge (wrangler dev on workerd).
pub mod edge;

pub use protocol;
