//! Shared helpers of the protocol integration tests.

pub mod pair;
