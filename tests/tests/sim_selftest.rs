//! Proof that the simulator's checker can fail: each test plugs one classic
//! mistake into the protocol core (through `protocol::Bugs`, compiled in by
//! the `sim-bugs` feature) and asserts that some seed in a bounded range
//! reports a violation of the matching kind.

use ackline_tests::sim::{self, Bugs, Options, Violation};

/// Seeds tried per broken variant before the test gives up.
const BOUND: u64 = 400;

fn first_violation(bugs: Bugs) -> Option<(Violation, u64)> {
    for (tried, seed) in (0xB0_0000..0xB0_0000 + BOUND).enumerate() {
        if let Err(v) = sim::run(Options {
            seed,
            bugs,
            ..Options::default()
        }) {
            return Some((v, tried as u64 + 1));
        }
    }
    None
}

fn expect_caught(name: &str, bugs: Bugs, expect: &[&str]) {
    let Some((v, tried)) = first_violation(bugs) else {
        panic!("{name}: no violation in {BOUND} seeds: the checker cannot see this bug");
    };
    println!("{name}: caught after {tried} seeds: {}", v.what);
    assert!(
        expect.iter().any(|e| v.what.contains(e)),
        "{name}: caught, but for an unexpected reason: {}",
        v.what
    );
}

#[test]
fn catches_client_ack_before_persist() {
    let bugs = Bugs {
        client_ack_before_persist: true,
        ..Bugs::default()
    };
    expect_caught("client ack before persist", bugs, &["not durable"]);
}

#[test]
fn catches_server_ack_before_persist() {
    let bugs = Bugs {
        server_ack_before_persist: true,
        ..Bugs::default()
    };
    expect_caught(
        "server ack before persist",
        bugs,
        &["before seq", "not durable", "differs", "diverged"],
    );
}

#[test]
fn catches_client_without_dedup() {
    let bugs = Bugs {
        client_no_dedup: true,
        ..Bugs::default()
    };
    expect_caught(
        "client without dedup",
        bugs,
        &["surfaced twice", "out of order"],
    );
}

#[test]
fn catches_server_without_dedup() {
    let bugs = Bugs {
        server_no_dedup: true,
        ..Bugs::default()
    };
    expect_caught("server without dedup", bugs, &["stored twice"]);
}

#[test]
fn catches_client_dropping_out_of_order_pushes() {
    let bugs = Bugs {
        client_drop_out_of_order: true,
        ..Bugs::default()
    };
    expect_caught(
        "client drops out-of-order pushes",
        bugs,
        &["not durable", "liveness"],
    );
}

#[test]
fn catches_client_forgetting_its_outbox() {
    let bugs = Bugs {
        client_forget_outbox: true,
        ..Bugs::default()
    };
    expect_caught(
        "client forgets its outbox on reload",
        bugs,
        &["never stored", "liveness"],
    );
}

#[test]
fn catches_client_reporting_delivered_on_sent() {
    let bugs = Bugs {
        client_delivered_on_sent: true,
        ..Bugs::default()
    };
    expect_caught(
        "client reports delivered on sent",
        bugs,
        &["reported delivered, but no device of"],
    );
}

#[test]
fn catches_server_that_never_resends() {
    let bugs = Bugs {
        server_never_resends: true,
        ..Bugs::default()
    };
    expect_caught(
        "server never resends",
        bugs,
        &[
            "no resend scheduled",
            "the server stopped pushing to a live connection",
        ],
    );
}

#[test]
fn catches_client_skipping_chain_verification() {
    let bugs = Bugs {
        client_skip_chain_check: true,
        ..Bugs::default()
    };
    expect_caught(
        "client skips chain verification",
        bugs,
        &["differs from the server's durable copy"],
    );
}

#[test]
fn catches_client_surfacing_before_durable() {
    let bugs = Bugs {
        client_surface_before_durable: true,
        ..Bugs::default()
    };
    expect_caught(
        "client surfaces before durable",
        bugs,
        &["surfaced before durable"],
    );
}

#[test]
fn catches_server_cursor_moving_backwards() {
    let bugs = Bugs {
        server_cursor_backwards: true,
        ..Bugs::default()
    };
    expect_caught("server cursor moves backwards", bugs, &["moved backwards"]);
}

#[test]
fn catches_server_ignoring_send_order() {
    let bugs = Bugs {
        server_ignore_send_order: true,
        ..Bugs::default()
    };
    expect_caught("server ignores send order", bugs, &["send order broken"]);
}
