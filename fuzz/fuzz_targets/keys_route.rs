//! Fuzz target: where a command's keys are (`KeyPlan::keys`), their slots (`key_slot`), and the
//! routing decision (`router::route`) over an arbitrary slot table and connection state.
//!
//! The carry-less key hashing (`slot::clmul`) must give every argument the same slot.
//!
//! Input layout: a header of fixed-size fields (key plan, table entries, flags), then the
//! command's arguments separated by `\n`. Checked invariants: every key position is inside the
//! arguments, every slot is below 16384, and a redirect names a slot that a key hashes to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use umcluster::command_table::{parse_strict_i64, CmdFlags, KeyPlan, Keys, Spec};
use umcluster::router::{self, ClientView, Decision, SlotRoute, SlotTable};
use umcluster::slot::{key_slot, SLOT_COUNT};

/// Reads fixed-size fields off the front of the input; zeros once it runs out.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn i32(&mut self) -> i32 {
        // Small values around the interesting edges (negative, zero, a few positions).
        i32::from(self.u8() as i8)
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }
}

fn spec(r: &mut Reader) -> Spec {
    if r.u8() & 1 == 0 {
        Spec::Range {
            index: r.i32(),
            lastkey: r.i32(),
            keystep: r.i32(),
            limit: r.i32(),
        }
    } else {
        Spec::KeyNum {
            index: r.i32(),
            keynumidx: r.i32(),
            firstkey: r.i32(),
            keystep: r.i32(),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0xff).unwrap_or(data.len());
    let (header, args) = data.split_at(split);
    let args: Vec<&[u8]> = if args.is_empty() {
        Vec::new()
    } else {
        args[1..].split(|&b| b == b'\n').collect()
    };
    let mut r = Reader(header);

    let plan = match r.u8() % 4 {
        0 => KeyPlan::None,
        1 => KeyPlan::Legacy {
            first: r.i32(),
            last: r.i32(),
            step: r.i32(),
        },
        2 => {
            let n = r.u8() % 6;
            KeyPlan::Specs((0..n).map(|_| spec(&mut r)).collect())
        }
        _ => KeyPlan::Server,
    };

    let mut table = if r.u8() & 1 == 0 {
        SlotTable::unconfigured()
    } else {
        SlotTable::configured()
    };
    for _ in 0..r.u8() % 32 {
        let slot = r.u16() % SLOT_COUNT as u16;
        let node = u16::from(r.u8());
        let route = match r.u8() % 5 {
            0 => SlotRoute::Unassigned,
            1 => SlotRoute::Owned,
            2 => SlotRoute::Remote { owner: node },
            3 => SlotRoute::Migrating { to: node },
            _ => SlotRoute::Importing { owner: node },
        };
        table.set(slot, route);
    }
    let flags = r.u8();
    let mut cmd = CmdFlags::default();
    for (bit, f) in [
        CmdFlags::WRITE,
        CmdFlags::MAY_REPLICATE,
        CmdFlags::ASKING,
        CmdFlags::PUBSUB_SHARD,
        CmdFlags::MIGRATE,
    ]
    .into_iter()
    .enumerate()
    {
        if flags & (1 << bit) != 0 {
            cmd = cmd.union(f);
        }
    }
    let client = ClientView {
        asking: flags & 0x20 != 0,
        readonly: flags & 0x40 != 0,
    };
    let exists_mask = r.u8();

    let argc = args.len();
    let keys: Vec<&[u8]> = match plan.keys(argc, |i| args.get(i).and_then(|a| parse_strict_i64(a)))
    {
        Keys::None | Keys::AskServer => Vec::new(),
        Keys::At(ranges) => ranges
            .positions()
            .map(|p| {
                assert!(
                    p >= 1 && p < argc,
                    "key position {p} outside {argc} arguments"
                );
                args[p]
            })
            .collect(),
    };
    let slots: Vec<u16> = keys.iter().map(|k| key_slot(k)).collect();
    assert!(slots.iter().all(|&s| (s as usize) < SLOT_COUNT));
    // The carry-less hashing the filter uses on CPUs that have it agrees, on every argument.
    #[cfg(target_arch = "x86_64")]
    if umcluster::slot::clmul::available() {
        for arg in &args {
            // SAFETY: `available()` said the CPU has the instruction.
            let (fast, tag_first) = unsafe {
                (
                    umcluster::slot::clmul::key_slot(arg),
                    umcluster::slot::clmul::tag_first_key_slot(arg),
                )
            };
            assert_eq!(fast, key_slot(arg), "key {arg:?}");
            assert_eq!(tag_first, key_slot(arg), "key {arg:?}");
        }
    }

    let mut n = 0u32;
    let decision = router::route(
        &table,
        keys.iter().copied(),
        cmd,
        client,
        &mut |_k: &&[u8]| {
            n += 1;
            exists_mask & (1 << (n % 8)) != 0
        },
    );
    match decision {
        Decision::Moved { slot, .. } | Decision::Ask { slot, .. } => {
            assert!(
                slots.contains(&slot),
                "redirect for slot {slot} no key hashes to"
            );
        }
        Decision::CrossSlot => assert!(slots.windows(2).any(|w| w[0] != w[1])),
        _ => {}
    }
});
