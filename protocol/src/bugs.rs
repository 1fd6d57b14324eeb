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
    /// Server: store a `send` even when the message it comes `after` is not
    /// stored yet (one device's messages may then be stored out of order).
    pub server_ignore_send_order: bool,
    /// Server: never retransmit unacknowledged pushes.
    pub server_never_resends: bool,
    /// Server: answer a repeated (older) ack by confirming that ack's seq, not
    /// the device's furthest cursor, so the announced cursor moves backwards.
    pub server_cursor_backwards: bool,
    /// Client: report `delivered` as soon as the server confirms `sent`.
    pub client_delivered_on_sent: bool,
    /// Client: take messages without checking that they extend the chain.
    pub client_skip_chain_check: bool,
    /// Client: show messages to the app as they arrive, before they are durable.
    pub client_surface_before_durable: bool,
}

impl Bugs {
    /// True when `flag` is set and bugs are compiled in.
    #[inline]
    pub(crate) fn on(flag: bool) -> bool {
        cfg!(feature = "sim-bugs") && flag
    }
}
