//! Fuzz target: the `UMCTL SETCLUSTER` grammar, then the topology and the routing table it
//! compiles to. Input: the arguments after `SETCLUSTER`, one per line (`\n`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use umcluster::topology::{setcluster, Topology};

fuzz_target!(|data: &[u8]| {
    let args: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if let Ok(sc) = setcluster::parse(&args) {
        // Whatever the parser accepts must build a topology and a table without panicking.
        let t = Topology::new(sc.epoch, sc.cluster_name, sc.local, sc.peers, sc.config);
        let _ = t.slot_table(None);
        let _ = t.owned_slots();
        let _ = t.local_migrations().count();
    }
});
