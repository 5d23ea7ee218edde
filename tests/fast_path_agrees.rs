//! The filter's fast path (`router::fast_path`) agrees with the command table's full key
//! extraction (`KeyPlan::keys`) on every command it settles: a command it calls "one owned slot"
//! has all its keys in that slot and the slot is owned; one it calls "no keys" has none (or the
//! wrong arity, which the server rejects before touching a key). Thousands of seeded commands
//! with the shapes that take its different branches: one key at a fixed position, a legacy
//! range (`MSET`, `MGET`, `DEL`), one `numkeys` spec (`EVAL`, `EVALSHA`, `FCALL`) with valid,
//! zero, negative, malformed and too large counts, several specs, and keys in one or several
//! slots, owned or not.
//!
//! The command table is built from a real server's `COMMAND` reply, as the module builds it.

mod common;

use common::*;
use umcluster::command_table::{parse_strict_i64, Keys};
use umcluster::router::{self, Fast, SlotRoute};
use umcluster::slot::key_slot;

/// xorshift64: a seeded stream, so that a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

fn random_key(rng: &mut Rng) -> String {
    // Leading tags (the shortcut for keys that share the first key's `{tag}`), and keys that look
    // like them but are not: a tag further in, an empty tag, no closing brace, a brace doubled.
    let tag = rng.pick(&[
        "{t1}", "{t1}", "{t2}", "{t1}}", "{t1", "{}", "x{t1}", "{{t1}", "", "", "",
    ]);
    match rng.below(4) {
        // The tag alone, or cut short: a key that is a prefix of another's tag.
        0 => tag.to_string(),
        _ => format!("{tag}k{}", rng.below(50)),
    }
}

fn random_command(rng: &mut Rng) -> Vec<String> {
    let keys = |rng: &mut Rng, n: u64| (0..n).map(|_| random_key(rng)).collect::<Vec<_>>();
    let mut cmd: Vec<String> = match rng.below(8) {
        0 => vec!["GET".into(), random_key(rng)],
        1 => vec!["SET".into(), random_key(rng), "v".into()],
        2 => {
            let n = rng.below(4);
            let mut c = vec!["MSET".to_string()];
            for k in keys(rng, n) {
                c.push(k);
                c.push("v".into());
            }
            c
        }
        3 => {
            let n = rng.below(4);
            [
                vec![rng.pick(&["MGET", "DEL", "EXISTS"]).to_string()],
                keys(rng, n),
            ]
            .concat()
        }
        4 | 5 => {
            let name = rng.pick(&["EVAL", "EVALSHA", "EVAL_RO", "FCALL"]);
            let numkeys = rng.pick(&["0", "1", "1", "2", "3", "-1", "x", "01", "99", ""]);
            let n = rng.below(4);
            [
                vec![name.to_string(), "body".into(), numkeys.to_string()],
                keys(rng, n),
                vec!["arg".into(); rng.below(2) as usize],
            ]
            .concat()
        }
        // Two key specs (`LMOVE src dst LEFT RIGHT`), and one with a keyword search.
        6 => vec![
            "LMOVE".into(),
            random_key(rng),
            random_key(rng),
            "LEFT".into(),
            "RIGHT".into(),
        ],
        _ => {
            let n = rng.below(3);
            [
                vec!["ZUNIONSTORE".to_string(), random_key(rng), n.to_string()],
                keys(rng, n),
            ]
            .concat()
        }
    };
    // Some wrong arities.
    if rng.below(10) == 0 && cmd.len() > 1 {
        cmd.pop();
    }
    cmd
}

#[test]
fn fast_path_agrees_with_the_full_key_extraction() {
    let commands = real_command_table();
    let table = half_owned_table();

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut owned, mut keyless, mut slow) = (0, 0, 0);
    for _ in 0..20_000 {
        let cmd = random_command(&mut rng);
        let argv: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
        let arg_int = |i: usize| argv.get(i).and_then(|a| parse_strict_i64(a));
        let fast = router::fast_path(
            &commands,
            &table,
            argv.len(),
            |i| argv.get(i).copied(),
            arg_int,
        );
        let entry = commands.get(argv[0]).expect("a known command");
        match fast {
            Fast::OwnedSlot(slot) => {
                owned += 1;
                assert!(entry.arity_ok(argv.len()), "{cmd:?}");
                let Keys::At(ranges) = entry.keys.keys(argv.len(), arg_int) else {
                    panic!("{cmd:?}: one owned slot, but the full extraction finds no keys");
                };
                let slots: Vec<u16> = ranges.positions().map(|p| key_slot(argv[p])).collect();
                assert!(
                    !slots.is_empty() && slots.iter().all(|&s| s == slot),
                    "{cmd:?}: {slots:?} vs {slot}"
                );
                assert_eq!(table.get(slot), SlotRoute::Owned, "{cmd:?}");
            }
            Fast::NoKeys => {
                keyless += 1;
                assert!(
                    !entry.arity_ok(argv.len())
                        || matches!(entry.keys.keys(argv.len(), arg_int), Keys::None),
                    "{cmd:?}: called keyless, but it has keys"
                );
            }
            // The full rules decide: nothing to check here but that it happens.
            Fast::Slow => slow += 1,
        }
    }
    // Every outcome happened often enough for the checks above to mean something.
    assert!(
        owned > 1000 && keyless > 1000 && slow > 1000,
        "{owned} {keyless} {slow}"
    );
}
