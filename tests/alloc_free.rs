//! Proof that the routing hot path never allocates: the command filter's first look at a command
//! on a slot this node owns (`router::fast_path`: name lookup, key positions, slot hashing, slot
//! table), and the full routing decision for the same commands (`router::route`), run thousands
//! of times under the crate's own global allocator, which counts every allocation of the calling
//! thread in debug builds (`ffi::alloc::thread_allocations`).
//!
//! The command table is built from a real server's `COMMAND` reply, so key positions are exactly
//! what the filter sees inside redis-server. The filter itself adds only FFI reads around this
//! (argument pointers, the string bytes, the caller's flags); `make bench` shows with callgrind
//! that the module makes no allocator call per command on this path.

#![cfg(debug_assertions)]

mod common;

use common::*;
use umcluster::command_table::{parse_strict_i64, CmdFlags};
use umcluster::ffi::alloc::thread_allocations;
use umcluster::router::{self, ClientView, Decision, Fast};
use umcluster::slot::key_slot;

/// A key named `prefix<n>` whose slot is in `0..8192` (owned in the table below) or not.
fn key(prefix: &str, owned: bool) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| (key_slot(k.as_bytes()) < 8192) == owned)
        .expect("some key fits")
}

fn args(parts: &[&str]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.as_bytes().to_vec()).collect()
}

#[test]
fn owned_slot_path_makes_no_heap_allocation() {
    let commands = real_command_table();
    // This node owns slots 0..8192; a peer owns the rest.
    let table = half_owned_table();

    let k = key("bench:key:", true);
    let tag = key("tag", true);
    let (a, b) = (format!("{{{tag}}}:a"), format!("{{{tag}}}:b"));
    let sha = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db";
    let owned: Vec<Vec<Vec<u8>>> = vec![
        args(&["GET", &k]),
        args(&["get", &k]),
        args(&["SET", &k, "value"]),
        args(&["MSET", &a, "1", &b, "2"]),
        args(&["INCR", &k]),
        args(&["LPUSH", &k, "x"]),
        args(&["ZADD", &k, "1", "member"]),
        args(&["HSET", &k, "field", "value"]),
        args(&["EVALSHA", sha, "1", &k]),
        args(&["EVALSHA", sha, "2", &a, &b, "arg"]),
    ];
    let remote = args(&["GET", &key("bench:key:", false)]);

    let fast = |cmd: &Vec<Vec<u8>>| {
        router::fast_path(
            &commands,
            &table,
            cmd.len(),
            |i| cmd.get(i).map(Vec::as_slice),
            |i| cmd.get(i).and_then(|a| parse_strict_i64(a)),
        )
    };
    // Position of the first key (the only one checked by the full rules below).
    let first_key = |cmd: &Vec<Vec<u8>>| {
        if cmd[0].eq_ignore_ascii_case(b"EVALSHA") {
            3
        } else {
            1
        }
    };
    let decide = |cmd: &Vec<Vec<u8>>| {
        // The full rules on the first key (what the filter's slow path would decide).
        let keys = [cmd[first_key(cmd)].as_slice()];
        router::route(
            &table,
            keys.iter(),
            CmdFlags::empty(),
            ClientView::default(),
            &mut |_| false,
        )
    };

    // The counter is live: an allocation on this thread shows.
    let before = thread_allocations();
    let probe = std::hint::black_box(Vec::<u8>::with_capacity(16));
    assert!(
        thread_allocations() > before,
        "allocation counter is not counting"
    );
    drop(probe);

    let mut results = [Fast::Slow; 10];
    let mut decisions = [Decision::CrossSlot; 10];
    let before = thread_allocations();
    for _ in 0..2000 {
        for (i, cmd) in owned.iter().enumerate() {
            results[i] = std::hint::black_box(fast(cmd));
            decisions[i] = std::hint::black_box(decide(cmd));
        }
    }
    let allocations = thread_allocations() - before;

    for (cmd, result) in owned.iter().zip(results) {
        let name = String::from_utf8_lossy(&cmd[0]);
        let expected = key_slot(&cmd[first_key(cmd)]);
        assert_eq!(result, Fast::OwnedSlot(expected), "{name}");
    }
    for (cmd, decision) in owned.iter().zip(decisions) {
        assert_eq!(decision, Decision::Execute, "{:?}", cmd[0]);
    }
    assert_eq!(allocations, 0, "the owned-slot path allocated");

    // A key a peer owns is not for the fast path.
    assert_eq!(fast(&remote), Fast::Slow);
}
