//! Deliberately broken behaviours, for the simulator's checker self-tests.
//!
//! Every flag is off by default and has no effect unless the crate is built
//! with the `sim-bugs` cargo feature, so a production build cannot switch a
//! bug on by accident. Each flag is a classic mistake that the simulator must
//! catch; see `tests/tests/sim_selftest.rs`.

/// Which mistakes to make. `Bugs::default()` makes none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Client: acknowledge pushes as soon as they arrive, before they are durable.
    pub client_ack_before_persist: bool,
    /// Client: do not drop duplicates by seq (surface a redelivered message again).
    pub client_no_dedup: bool,
    /// Client: drop out-of-order pushes instead of buffering them, yet report
    /// them in the selective ack (the "acked and dropped" mistake).
    pub client_drop_out_of_order: bool,
    /// Client: ignore the outbox in the restored snapshot after a reload.
    pub client_forget_outbox: bool,
    /// Server: confirm (`sent`) and push a message before its write is durable.
    pub server_ack_before_persist: bool,
    /// Server: skip the (device, client id) idempotency lookup.
    pub server_no_dedup: bool,
}

impl Bugs {
    /// True when `flag` is set and bugs are compiled in.
    #[inline]
    pub(crate) fn on(flag: bool) -> bool {
        cfg!(feature = "sim-bugs") && flag
    }
}
