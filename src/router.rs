//! The routing decision: given a command's keys, the slot table and the connection's state, does
//! this node execute the command, or answer with a redirect or an error?
//!
//! This is the rule of a native redis 7.0 cluster master (`getNodeByQuery()` in `cluster.c`),
//! written as a pure function so that every branch is unit-tested without a server:
//!
//! 1. keys in more than one slot: `-CROSSSLOT`;
//! 2. no accepted topology: `-CLUSTERDOWN The cluster is down`; slot nobody serves:
//!    `-CLUSTERDOWN Hash slot not served`;
//! 3. slot served by a peer: `-MOVED slot host:port`;
//! 4. slot migrating away: execute if every key is still here, `-TRYAGAIN` if only some are,
//!    `-ASK` to the destination if none is;
//! 5. slot importing: execute for a connection that sent `ASKING` just before (or a command that
//!    implies it, `RESTORE-ASKING`), `-TRYAGAIN` for a multi-key command missing some keys,
//!    `-MOVED` to the current owner otherwise;
//! 6. slot owned: execute.
//!
//! A replica serves reads for its master's slots to connections that sent `READONLY`; everything
//! else gets `-MOVED` to the master. Who may bypass all of this (the master link, scripts' inner
//! calls, the module's own calls) is decided by the caller, not here.

use crate::command_table::{legacy_span, CmdFlags, CommandTable, FastPlan, KeyPlan, Keys};
use crate::slot::{key_slot, key_slot_inline, SLOT_COUNT};

/// Outcome of [`fast_path`]: the cheap first look the command filter takes at every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fast {
    /// Nothing for routing to do: unknown command (the server rejects it), wrong arity (the
    /// server rejects it before it touches a key), or no keys.
    NoKeys,
    /// Every key hashes to this slot, which this node owns and which is stable.
    OwnedSlot(u16),
    /// Anything else: decide with the full rules.
    Slow,
}

/// The hot path of routing, without the server: resolves the command name, finds its keys at
/// fixed positions (or behind a `numkeys` argument), hashes them and reads the slot table. No
/// allocation, no side effect. The caller still has to check the connection state (a pending
/// `ASKING`, an open `MULTI`) before executing an [`Fast::OwnedSlot`] command untouched.
///
/// `arg(i)` is argument `i` (the name is 0), `None` when its bytes are not at hand (an
/// integer-encoded argument); `arg_int(i)` parses argument `i` as the server parses integers.
/// Returns [`Fast::Slow`] for anything unusual (containers, `ASKING`/`MULTI`-like commands, keys
/// only the server can find, an argument without bytes, keys in several slots, a slot that is not
/// owned and stable), so it only has to be right when it says something else.
#[inline]
pub fn fast_path<'a>(
    commands: &CommandTable,
    table: &SlotTable,
    argc: usize,
    arg: impl Fn(usize) -> Option<&'a [u8]>,
    arg_int: impl Fn(usize) -> Option<i64>,
) -> Fast {
    struct Closures<A, I>(A, I);
    impl<'a, A: Fn(usize) -> Option<&'a [u8]>, I: Fn(usize) -> Option<i64>> Args<'a>
        for Closures<A, I>
    {
        #[inline(always)]
        fn bytes(&self, i: usize) -> Option<&'a [u8]> {
            (self.0)(i)
        }
        #[inline(always)]
        fn int(&self, i: usize) -> Option<i64> {
            (self.1)(i)
        }
    }
    fast_path_args(commands, table, argc, &Closures(arg, arg_int))
}

/// The arguments of the command [`fast_path_args`] looks at.
pub trait Args<'a> {
    /// Argument `i` (the name is 0), `None` when its bytes are not at hand (an integer-encoded
    /// argument).
    fn bytes(&self, i: usize) -> Option<&'a [u8]>;
    /// Argument `i` parsed as the server parses integers.
    fn int(&self, i: usize) -> Option<i64>;
    /// The slot of `key` ([`key_slot`]; an implementation may compute it faster).
    #[inline(always)]
    fn key_slot(&self, key: &[u8]) -> u16 {
        key_slot_inline(key)
    }
    /// [`Args::key_slot`] for one of several keys, which usually share a hash tag.
    #[inline(always)]
    fn key_slot_among_several(&self, key: &[u8]) -> u16 {
        self.key_slot(key)
    }
    /// The slot of a hash tag found already ([`crate::slot::tag_slot`]).
    #[inline(always)]
    fn tag_slot(&self, tag: &[u8]) -> u16 {
        crate::slot::tag_slot(tag)
    }
}

/// [`fast_path`] with the arguments behind a trait, whose methods the caller can force inline
/// (closures passed down several levels are not always inlined, and a call costs a frame).
#[inline(always)]
pub fn fast_path_args<'a>(
    commands: &CommandTable,
    table: &SlotTable,
    argc: usize,
    args: &impl Args<'a>,
) -> Fast {
    let arg = |i: usize| args.bytes(i);
    let Some(name) = arg(0) else {
        return Fast::Slow;
    };
    let Some(entry) = commands.get(name) else {
        // Unknown: the server answers it, but for the dotted UMCTL spelling the filter rewrites.
        return match crate::command_table::umctl_dotted_sub(name) {
            Some(_) => Fast::Slow,
            None => Fast::NoKeys,
        };
    };
    if entry.fast == FastPlan::Slow {
        return Fast::Slow;
    }
    if !entry.arity_ok(argc) {
        return Fast::NoKeys;
    }
    let slot = match entry.fast {
        FastPlan::Slow => return Fast::Slow,
        FastPlan::NoKeys => return Fast::NoKeys,
        // The arity check above guarantees the argument is there.
        FastPlan::OneKey(pos) => match args.bytes(pos as usize) {
            Some(key) => args.key_slot(key),
            None => return Fast::Slow,
        },
        FastPlan::Keys => match several_keys_slot(entry, argc, args) {
            Ok(slot) => slot,
            Err(fast) => return fast,
        },
    };
    if table.owned_stable(slot) {
        Fast::OwnedSlot(slot)
    } else {
        Fast::Slow
    }
}

/// The one slot of a command's keys ([`FastPlan::Keys`]), or what [`fast_path_args`] answers
/// instead. Always inlined: the filter calls it from a function of its own, out of line, so
/// that its loops do not cost the one-key path registers.
#[inline(always)]
pub fn several_keys_slot<'a>(
    entry: &crate::command_table::CommandEntry,
    argc: usize,
    args: &impl Args<'a>,
) -> Result<u16, Fast> {
    let arg_int = |i: usize| args.int(i);
    match entry.keys {
        // A legacy range, or one spec (`EVAL`, `EVALSHA`, `FCALL` with their `numkeys`, ...):
        // no list of ranges.
        KeyPlan::Legacy { first, last, step } => match legacy_span(first, last, step, argc) {
            Some((first, last, step)) => {
                one_slot(args, first as usize, last as usize, step as usize)
            }
            None => Err(Fast::NoKeys),
        },
        KeyPlan::Specs(ref specs) if specs.len() == 1 => match specs[0].span(argc, arg_int) {
            Some((first, last, step)) => {
                one_slot(args, first as usize, last as usize, step as usize)
            }
            None => Err(Fast::NoKeys),
        },
        ref keys => {
            let slot_at = |i: usize| args.bytes(i).map(|key| args.key_slot_among_several(key));
            let ranges = match keys.keys(argc, arg_int) {
                Keys::At(ranges) => ranges,
                Keys::None => return Err(Fast::NoKeys),
                Keys::AskServer => return Err(Fast::Slow),
            };
            let mut positions = ranges.positions();
            let Some(slot) = positions.next().and_then(slot_at) else {
                return Err(Fast::Slow);
            };
            if !positions.all(|p| slot_at(p) == Some(slot)) {
                return Err(Fast::Slow);
            }
            Ok(slot)
        }
    }
}

/// The one slot of the keys at `first..=last` by `step`: nothing stored.
#[inline(always)]
fn one_slot<'a>(args: &impl Args<'a>, first: usize, last: usize, step: usize) -> Result<u16, Fast> {
    let Some(key) = args.bytes(first).filter(|_| first <= last) else {
        return Err(Fast::Slow);
    };
    if first == last {
        // One key: no point looking for a tag first (see `Args::key_slot_among_several`).
        return Ok(args.key_slot(key));
    }
    // Keys kept together share a hash tag, usually at the front (`{user1}.a`, `{user1}.b`): a key
    // that starts with the first one's `{tag}` is in its slot without hashing it.
    let tag = crate::slot::leading_tag(key);
    let slot = match tag {
        Some(tag) => args.tag_slot(&tag[1..tag.len() - 1]),
        None => args.key_slot_among_several(key),
    };
    let mut pos = first + step;
    while pos <= last {
        let Some(key) = args.bytes(pos) else {
            return Err(Fast::Slow);
        };
        let same_tag = tag.is_some_and(|tag| crate::slot::starts_with_tag(key, tag));
        if !same_tag && args.key_slot_among_several(key) != slot {
            return Err(Fast::Slow);
        }
        pos += step;
    }
    Ok(slot)
}

/// What the node does with a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Execute,
    Moved {
        slot: u16,
        node: u16,
    },
    Ask {
        slot: u16,
        node: u16,
    },
    CrossSlot,
    TryAgain,
    /// No accepted topology yet.
    NotConfigured,
    /// The slot is not assigned to any node.
    Unbound,
}

impl Decision {
    pub fn is_execute(self) -> bool {
        self == Decision::Execute
    }
}

/// The state of one slot as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotRoute {
    Unassigned,
    /// Served here, stable.
    Owned,
    /// Served by node `owner` (an index into the topology's node list).
    Remote {
        owner: u16,
    },
    /// Served here; keys are moving to node `to`.
    Migrating {
        to: u16,
    },
    /// Served by node `owner`; keys are arriving here from it.
    Importing {
        owner: u16,
    },
}

/// The per-slot table the router reads, compiled from the accepted topology.
#[derive(Clone, Debug)]
pub struct SlotTable {
    /// Fixed size, so that a lookup masked to 14 bits needs no bounds check.
    slots: Box<[SlotRoute; SLOT_COUNT]>,
    /// Index of this node's master when this node is a replica.
    pub my_master: Option<u16>,
    /// Whether a topology has been accepted at all.
    pub configured: bool,
}

impl Default for SlotTable {
    fn default() -> Self {
        SlotTable::unconfigured()
    }
}

impl SlotTable {
    /// The table of a node that has not received any topology.
    pub fn unconfigured() -> SlotTable {
        SlotTable {
            slots: Box::new([SlotRoute::Unassigned; SLOT_COUNT]),
            my_master: None,
            configured: false,
        }
    }

    /// An empty configured table (every slot unassigned), to be filled with [`SlotTable::set`].
    pub fn configured() -> SlotTable {
        SlotTable {
            configured: true,
            ..SlotTable::unconfigured()
        }
    }

    pub fn set(&mut self, slot: u16, route: SlotRoute) {
        self.slots[slot as usize] = route;
    }

    #[inline]
    pub fn get(&self, slot: u16) -> SlotRoute {
        self.slots[slot as usize & (SLOT_COUNT - 1)]
    }

    /// Whether `slot` is owned here and stable: the only state in which a command executes with
    /// no further question.
    #[inline]
    pub fn owned_stable(&self, slot: u16) -> bool {
        matches!(self.get(slot), SlotRoute::Owned)
    }
}

/// What the router needs to know about the connection sending the command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientView {
    /// The connection sent `ASKING` immediately before this command.
    pub asking: bool,
    /// The connection sent `READONLY` (and not `READWRITE` since).
    pub readonly: bool,
}

/// Routes a command whose keys are `keys`.
///
/// `exists` answers whether a key exists locally; it is called only for slots being migrated or
/// imported (never for sharded pub/sub channels).
pub fn route<K: AsRef<[u8]>>(
    table: &SlotTable,
    keys: impl Iterator<Item = K>,
    cmd: CmdFlags,
    client: ClientView,
    exists: &mut dyn FnMut(&K) -> bool,
) -> Decision {
    let pubsub_shard = cmd.contains(CmdFlags::PUBSUB_SHARD);
    let mut first: Option<(K, u16, SlotRoute)> = None;
    let mut multiple_keys = false;
    let mut missing = 0usize;
    let mut existing = 0usize;

    for key in keys {
        let (slot, route) = match &first {
            None => {
                let slot = key_slot(key.as_ref());
                (slot, table.get(slot))
            }
            Some((first_key, slot, route)) => {
                if key.as_ref() != first_key.as_ref() {
                    if key_slot(key.as_ref()) != *slot {
                        return Decision::CrossSlot;
                    }
                    multiple_keys = true;
                }
                (*slot, *route)
            }
        };
        let moving = matches!(
            route,
            SlotRoute::Migrating { .. } | SlotRoute::Importing { .. }
        );
        if table.configured && moving && !pubsub_shard {
            if exists(&key) {
                existing += 1;
            } else {
                missing += 1;
            }
        }
        if first.is_none() {
            first = Some((key, slot, route));
        }
    }

    let Some((_, slot, route)) = first else {
        return Decision::Execute;
    };
    if !table.configured {
        return Decision::NotConfigured;
    }

    let owner = match route {
        SlotRoute::Unassigned => return Decision::Unbound,
        SlotRoute::Owned => return Decision::Execute,
        SlotRoute::Migrating { to } => {
            if cmd.contains(CmdFlags::MIGRATE) || missing == 0 {
                return Decision::Execute;
            }
            return if existing > 0 {
                Decision::TryAgain
            } else {
                Decision::Ask { slot, node: to }
            };
        }
        SlotRoute::Importing { owner } => {
            if cmd.contains(CmdFlags::MIGRATE) {
                return Decision::Execute;
            }
            if client.asking || cmd.contains(CmdFlags::ASKING) {
                return if multiple_keys && missing > 0 {
                    Decision::TryAgain
                } else {
                    Decision::Execute
                };
            }
            owner
        }
        SlotRoute::Remote { owner } => owner,
    };

    // A replica serves reads of its master's slots to READONLY connections (and sharded pub/sub).
    let is_write = cmd.contains(CmdFlags::WRITE);
    if (client.readonly || pubsub_shard) && !is_write && table.my_master == Some(owner) {
        return Decision::Execute;
    }
    Decision::Moved { slot, node: owner }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOO: u16 = 12182; // key_slot("foo")
    const PEER: u16 = 1;
    const DEST: u16 = 2;

    fn table_with(slot: u16, route: SlotRoute) -> SlotTable {
        let mut t = SlotTable::configured();
        t.set(slot, route);
        t
    }

    fn run(
        table: &SlotTable,
        keys: &[&str],
        cmd: CmdFlags,
        client: ClientView,
        present: &[&str],
    ) -> Decision {
        route(
            table,
            keys.iter().map(|k| k.as_bytes()),
            cmd,
            client,
            &mut |k: &&[u8]| present.iter().any(|p| p.as_bytes() == *k),
        )
    }

    fn plain() -> ClientView {
        ClientView::default()
    }

    #[test]
    fn executes_when_slot_owned() {
        let t = table_with(FOO, SlotRoute::Owned);
        assert_eq!(
            run(&t, &["foo"], CmdFlags::WRITE, plain(), &[]),
            Decision::Execute
        );
    }

    #[test]
    fn keyless_commands_execute_even_unconfigured() {
        let t = SlotTable::unconfigured();
        assert_eq!(
            run(&t, &[], CmdFlags::empty(), plain(), &[]),
            Decision::Execute
        );
    }

    #[test]
    fn clusterdown_when_not_configured() {
        let t = SlotTable::unconfigured();
        assert_eq!(
            run(&t, &["foo"], CmdFlags::empty(), plain(), &[]),
            Decision::NotConfigured
        );
    }

    #[test]
    fn crossslot_comes_before_clusterdown() {
        let t = SlotTable::unconfigured();
        assert_eq!(
            run(&t, &["a", "b"], CmdFlags::empty(), plain(), &[]),
            Decision::CrossSlot
        );
    }

    #[test]
    fn unbound_when_slot_unassigned() {
        let t = SlotTable::configured();
        assert_eq!(
            run(&t, &["foo"], CmdFlags::empty(), plain(), &[]),
            Decision::Unbound
        );
    }

    #[test]
    fn moved_when_slot_owned_by_peer() {
        let t = table_with(FOO, SlotRoute::Remote { owner: PEER });
        assert_eq!(
            run(&t, &["foo"], CmdFlags::empty(), plain(), &[]),
            Decision::Moved {
                slot: FOO,
                node: PEER
            }
        );
    }

    #[test]
    fn crossslot_for_keys_in_two_slots_and_same_key_twice_is_single() {
        let mut t = SlotTable::configured();
        for s in 0..16384 {
            t.set(s, SlotRoute::Owned);
        }
        assert_eq!(
            run(&t, &["a", "b"], CmdFlags::empty(), plain(), &[]),
            Decision::CrossSlot
        );
        assert_eq!(
            run(&t, &["{x}a", "{x}b"], CmdFlags::empty(), plain(), &[]),
            Decision::Execute
        );
        assert_eq!(
            run(&t, &["a", "a"], CmdFlags::empty(), plain(), &[]),
            Decision::Execute
        );
    }

    #[test]
    fn migrating_executes_when_all_keys_present() {
        let t = table_with(FOO, SlotRoute::Migrating { to: DEST });
        assert_eq!(
            run(&t, &["foo"], CmdFlags::empty(), plain(), &["foo"]),
            Decision::Execute
        );
    }

    #[test]
    fn migrating_asks_destination_when_no_key_present_even_for_writes() {
        let t = table_with(FOO, SlotRoute::Migrating { to: DEST });
        assert_eq!(
            run(&t, &["foo"], CmdFlags::WRITE, plain(), &[]),
            Decision::Ask {
                slot: FOO,
                node: DEST
            }
        );
    }

    #[test]
    fn migrating_tryagain_when_keys_split() {
        let s = key_slot(b"{t}a");
        let t = table_with(s, SlotRoute::Migrating { to: DEST });
        assert_eq!(
            run(&t, &["{t}a", "{t}b"], CmdFlags::empty(), plain(), &["{t}a"]),
            Decision::TryAgain
        );
    }

    #[test]
    fn migrating_lets_migrate_run_locally() {
        let t = table_with(FOO, SlotRoute::Migrating { to: DEST });
        assert_eq!(
            run(&t, &["foo"], CmdFlags::MIGRATE, plain(), &[]),
            Decision::Execute
        );
    }

    #[test]
    fn migrating_does_not_check_sharded_channels() {
        let t = table_with(FOO, SlotRoute::Migrating { to: DEST });
        assert_eq!(
            run(&t, &["foo"], CmdFlags::PUBSUB_SHARD, plain(), &[]),
            Decision::Execute
        );
    }

    #[test]
    fn importing_moves_to_owner_without_asking() {
        let t = table_with(FOO, SlotRoute::Importing { owner: PEER });
        assert_eq!(
            run(&t, &["foo"], CmdFlags::empty(), plain(), &["foo"]),
            Decision::Moved {
                slot: FOO,
                node: PEER
            }
        );
    }

    #[test]
    fn importing_executes_after_asking() {
        let t = table_with(FOO, SlotRoute::Importing { owner: PEER });
        let asking = ClientView {
            asking: true,
            readonly: false,
        };
        assert_eq!(
            run(&t, &["foo"], CmdFlags::WRITE, asking, &[]),
            Decision::Execute
        );
        assert_eq!(
            run(&t, &["foo"], CmdFlags::ASKING, plain(), &[]),
            Decision::Execute
        );
    }

    #[test]
    fn importing_tryagain_for_multikey_with_missing_keys() {
        let s = key_slot(b"{t}a");
        let t = table_with(s, SlotRoute::Importing { owner: PEER });
        let asking = ClientView {
            asking: true,
            readonly: false,
        };
        assert_eq!(
            run(&t, &["{t}a", "{t}b"], CmdFlags::empty(), asking, &["{t}a"]),
            Decision::TryAgain
        );
        assert_eq!(
            run(
                &t,
                &["{t}a", "{t}b"],
                CmdFlags::empty(),
                asking,
                &["{t}a", "{t}b"]
            ),
            Decision::Execute
        );
        // A single missing key is fine: it is being created here.
        assert_eq!(
            run(&t, &["{t}a"], CmdFlags::empty(), asking, &[]),
            Decision::Execute
        );
    }

    #[test]
    fn replica_serves_readonly_reads_of_its_masters_slots() {
        let mut t = table_with(FOO, SlotRoute::Remote { owner: PEER });
        t.my_master = Some(PEER);
        let ro = ClientView {
            asking: false,
            readonly: true,
        };
        assert_eq!(
            run(&t, &["foo"], CmdFlags::empty(), ro, &[]),
            Decision::Execute
        );
        assert_eq!(
            run(&t, &["foo"], CmdFlags::WRITE, ro, &[]),
            Decision::Moved {
                slot: FOO,
                node: PEER
            }
        );
        assert_eq!(
            run(&t, &["foo"], CmdFlags::empty(), plain(), &[]),
            Decision::Moved {
                slot: FOO,
                node: PEER
            }
        );
        // Not our master's slot: MOVED even for READONLY connections.
        t.my_master = Some(DEST);
        assert_eq!(
            run(&t, &["foo"], CmdFlags::empty(), ro, &[]),
            Decision::Moved {
                slot: FOO,
                node: PEER
            }
        );
    }
}
