//! The command table the router consults: for every command name the server knows, where its keys
//! are and the few flags routing needs.
//!
//! Built from the server's own `COMMAND` reply when the module loads (and again whenever another
//! module loads or unloads), so module commands and future commands are routed with the key
//! positions the server itself declares. Looking a name up costs one case-insensitive hash probe;
//! finding the keys of a command costs a few integer operations for every command whose keys sit
//! at fixed positions (`GET`, `MSET`, `HSET` ...) or behind a `numkeys` argument (`EVALSHA`,
//! `FCALL`, `ZUNIONSTORE` ...). Only the rest (keyword-driven key positions such as `XREAD ...
//! STREAMS`, `SORT ... STORE`, `MIGRATE`, and module commands with a key callback) asks the server.
//!
//! The rules mirror what a native cluster node uses in redis 7.0 (`getKeysFromCommand()`): the
//! legacy (first, last, step) range for ordinary commands, the command's key-finding procedure
//! for commands with movable keys.

use crate::resp::Value;

/// Routing-relevant command flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmdFlags(u16);

impl CmdFlags {
    /// The command writes (`write` flag).
    pub const WRITE: CmdFlags = CmdFlags(1);
    /// The command may replicate something although it is not a write (`may_replicate`).
    pub const MAY_REPLICATE: CmdFlags = CmdFlags(1 << 1);
    /// The command is served in an importing slot without `ASKING` (`asking` flag, RESTORE-ASKING).
    pub const ASKING: CmdFlags = CmdFlags(1 << 2);
    /// Sharded pub/sub: channels are routed like keys, but never checked for existence.
    pub const PUBSUB_SHARD: CmdFlags = CmdFlags(1 << 3);
    /// `MIGRATE` runs locally whenever its slot is migrating or importing (native rule).
    pub const MIGRATE: CmdFlags = CmdFlags(1 << 4);
    /// The command may block the client (`blocking` flag: BLPOP, BZPOPMIN, XREAD ...).
    pub const BLOCKING: CmdFlags = CmdFlags(1 << 5);
    /// `RESTORE`: what a standalone server's `MIGRATE` sends (a cluster node sends
    /// RESTORE-ASKING); served in an importing slot when it comes from the migration's source.
    pub const RESTORE: CmdFlags = CmdFlags(1 << 6);

    pub const fn empty() -> CmdFlags {
        CmdFlags(0)
    }
    pub const fn contains(self, other: CmdFlags) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn union(self, other: CmdFlags) -> CmdFlags {
        CmdFlags(self.0 | other.0)
    }
}

/// Commands whose meaning the module takes over or must observe, instead of only routing them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Routed by its keys; nothing else.
    Plain,
    /// `ASKING`, `READONLY`, `READWRITE`, `CLUSTER`: the server answers these only in cluster
    /// mode, so the filter hands them to the module's own commands.
    Asking,
    ReadOnly,
    ReadWrite,
    Cluster,
    /// Transaction boundaries and `RESET`: the router tracks per-connection transaction state.
    Multi,
    Exec,
    Discard,
    Reset,
    /// `INFO`: once a topology is in force the module answers it, with `cluster_enabled:1`.
    Info,
    /// `PUBLISH`: once a topology is in force the module runs it and forwards the message to
    /// the other masters (see `pubsub`).
    Publish,
    /// The module's `u.r`, sent as such (by hand, or a renamed command the server runs again
    /// after a pause): the filter forgets the redirect it may have handed over.
    QuickRedirect,
}

/// Where a command's keys are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPlan {
    /// No keys.
    None,
    /// `first..=last` by `step`; a negative `last` counts from the end (`-1` = last argument).
    /// Any position past the arguments means "no keys" (the command will fail its own checks).
    Legacy { first: i32, last: i32, step: i32 },
    /// Key specifications evaluated inline (index begin-search with a range or numkeys find).
    Specs(Box<[Spec]>),
    /// Ask the server (keyword searches, incomplete specs, module key callbacks).
    Server,
}

/// One key specification of the simple kinds the router evaluates itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spec {
    /// Keys from `index` to `index + lastkey` (or to the end, with a negative `lastkey`).
    Range {
        index: i32,
        lastkey: i32,
        keystep: i32,
        limit: i32,
    },
    /// The number of keys is at `index + keynumidx`; keys start at `index + firstkey`.
    KeyNum {
        index: i32,
        keynumidx: i32,
        firstkey: i32,
        keystep: i32,
    },
}

/// What the router knows about one command (or subcommand).
#[derive(Clone, Debug)]
pub struct CommandEntry {
    pub name: Box<[u8]>,
    pub arity: i32,
    pub flags: CmdFlags,
    pub role: Role,
    pub keys: KeyPlan,
    /// For container commands (`XINFO`, `OBJECT` ...): the subcommands, by the name after `|`.
    pub subcommands: Option<Box<NameMap<CommandEntry>>>,
    /// What the filter's fast path does with the command, decided once from the fields above.
    pub fast: FastPlan,
    /// The arity as a range: `argc_min..=argc_min + argc_extra` arguments.
    argc_min: usize,
    argc_extra: usize,
    /// [`FastPlan::OneKey`]'s position, `usize::MAX` for any other plan: "is there a key at a
    /// fixed position, and is it among the arguments" in one comparison ([`Self::one_key_at`]).
    one_key_pos: usize,
}

/// What the router's fast path does with a command, decided once when the table is built so that
/// the hot path reads one field instead of four.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastPlan {
    /// The full rules decide: a command with a role, a container, a blocking command (the slow
    /// path remembers the slot its client waits on), keys that only the server can find.
    Slow,
    /// No keys at all.
    NoKeys,
    /// Exactly one key, at this position, which every call of the right arity has (`GET`, `SET`,
    /// `INCR` ...: legacy `first == last`, below the minimum argument count).
    OneKey(u32),
    /// Keys found by [`CommandEntry::keys`] (a legacy range, or key specs).
    Keys,
}

impl FastPlan {
    /// The plan for a command with these properties.
    pub fn of(
        role: Role,
        flags: CmdFlags,
        arity: i32,
        keys: &KeyPlan,
        container: bool,
    ) -> FastPlan {
        if role != Role::Plain || container || flags.contains(CmdFlags::BLOCKING) {
            return FastPlan::Slow;
        }
        let min_argc = (arity as i64).abs();
        match *keys {
            KeyPlan::None => FastPlan::NoKeys,
            KeyPlan::Server => FastPlan::Slow,
            KeyPlan::Legacy { first, last, .. }
                if first > 0 && first == last && (first as i64) < min_argc =>
            {
                FastPlan::OneKey(first as u32)
            }
            KeyPlan::Legacy { .. } | KeyPlan::Specs(_) => FastPlan::Keys,
        }
    }
}

impl CommandEntry {
    /// Whether `argc` arguments (command name included) satisfy the arity. A command with the wrong
    /// arity is left alone: the server rejects it before it can touch a key.
    #[inline(always)]
    pub fn arity_ok(&self, argc: usize) -> bool {
        // One comparison: `argc - min` (wrapping) within the span the arity allows.
        argc.wrapping_sub(self.argc_min) <= self.argc_extra
    }

    /// Whether argument 1 is one of the command's keys whenever it has any: its one key sits
    /// there, or its keys start there (legacy `first` 1, or a first key spec that is a range
    /// from index 1: `MSET`, `DEL`, `MGET`, `RENAME` ...; not `EVAL`'s numkeys).
    pub fn keys_start_at_argument_1(&self) -> bool {
        self.one_key_pos == 1
            || match &self.keys {
                KeyPlan::Legacy { first, .. } => *first == 1,
                KeyPlan::Specs(specs) => {
                    matches!(specs.first(), Some(Spec::Range { index: 1, .. }))
                }
                KeyPlan::None | KeyPlan::Server => false,
            }
    }

    /// The position of the command's one key ([`FastPlan::OneKey`]) when it is among `argc`
    /// arguments.
    #[inline(always)]
    pub fn one_key_at(&self, argc: usize) -> Option<usize> {
        (self.one_key_pos < argc).then_some(self.one_key_pos)
    }
}

/// `(argc_min, argc_extra)` of [`CommandEntry`] for an arity: exactly `arity` arguments, or at
/// least `-arity`.
fn argc_range(arity: i32) -> (usize, usize) {
    let min = arity.unsigned_abs() as usize;
    if arity >= 0 {
        (min, 0)
    } else {
        (min, usize::MAX - min)
    }
}

/// Up to [`MAX_RANGES`] position ranges: the keys of one command, found without allocating.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyRanges {
    ranges: [(u32, u32, u32); MAX_RANGES],
    len: usize,
}

/// A command with more key specifications than this asks the server for its keys.
pub const MAX_RANGES: usize = 4;

impl KeyRanges {
    fn push(&mut self, first: u32, last: u32, step: u32) -> bool {
        if self.len == MAX_RANGES {
            return false;
        }
        self.ranges[self.len] = (first, last, step.max(1));
        self.len += 1;
        true
    }

    /// The key positions, in order.
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.ranges[..self.len]
            .iter()
            .flat_map(|&(first, last, step)| (first..=last).step_by(step as usize))
            .map(|p| p as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The keys of one command invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    None,
    At(KeyRanges),
    /// The server must be asked (`RedisModule_GetCommandKeysWithFlags`).
    AskServer,
}

impl KeyPlan {
    /// Finds the keys of a command with `argc` arguments; `arg_int(i)` parses argument `i` as
    /// an integer the way the server does (needed only to read a `numkeys` argument).
    #[inline]
    pub fn keys(&self, argc: usize, arg_int: impl Fn(usize) -> Option<i64>) -> Keys {
        match self {
            KeyPlan::None => Keys::None,
            KeyPlan::Server => Keys::AskServer,
            KeyPlan::Legacy { first, last, step } => legacy_keys(*first, *last, *step, argc),
            KeyPlan::Specs(specs) => spec_keys(specs, argc, arg_int),
        }
    }
}

#[inline]
fn legacy_keys(first: i32, last: i32, step: i32, argc: usize) -> Keys {
    match legacy_span(first, last, step, argc) {
        Some((first, last, step)) => {
            let mut ranges = KeyRanges::default();
            ranges.push(first, last, step);
            Keys::At(ranges)
        }
        None => Keys::None,
    }
}

/// The positions of a legacy key range among `argc` arguments: `first..=last` by `step`, a
/// negative `last` counting from the end; `None` when the command has no keys by it (natively,
/// a position past the arguments means the command is malformed: no keys).
#[inline(always)]
pub fn legacy_span(first: i32, last: i32, step: i32, argc: usize) -> Option<(u32, u32, u32)> {
    let argc = argc as i64;
    let first = first as i64;
    let last = if last < 0 {
        argc + last as i64
    } else {
        last as i64
    };
    if first <= 0 || last < first || last >= argc {
        return None;
    }
    Some((first as u32, last as u32, step.max(1) as u32))
}

fn spec_keys(specs: &[Spec], argc: usize, arg_int: impl Fn(usize) -> Option<i64>) -> Keys {
    let mut ranges = KeyRanges::default();
    for spec in specs {
        let Some((first, last, step)) = spec.span(argc, &arg_int) else {
            return Keys::None;
        };
        if !ranges.push(first, last, step) {
            return Keys::AskServer;
        }
    }
    if ranges.is_empty() {
        Keys::None
    } else {
        Keys::At(ranges)
    }
}

impl Spec {
    /// The positions of this spec's keys among `argc` arguments: `first..=last` by `step`, all
    /// inside the arguments; `None` when the command has no keys by this spec (out of bounds,
    /// or a `numkeys` of 0, negative or unparsable: a syntax error the command reports itself,
    /// and like the server's key procedures the whole command is then keyless).
    #[inline(always)]
    pub fn span(
        &self,
        argc: usize,
        arg_int: impl Fn(usize) -> Option<i64>,
    ) -> Option<(u32, u32, u32)> {
        let argc = argc as i64;
        let (first, last, step) = match *self {
            Spec::Range {
                index,
                lastkey,
                keystep,
                limit,
            } => {
                let first = index as i64;
                let last = if lastkey >= 0 {
                    first + lastkey as i64
                } else if limit == 0 {
                    argc + lastkey as i64
                } else {
                    first + ((argc - first) / limit as i64 + lastkey as i64)
                };
                (first, last, keystep as i64)
            }
            Spec::KeyNum {
                index,
                keynumidx,
                firstkey,
                keystep,
            } => {
                let at = index as i64 + keynumidx as i64;
                if at < 1 || at >= argc {
                    return None;
                }
                let numkeys = arg_int(at as usize).filter(|&n| n > 0)?;
                let first = index as i64 + firstkey as i64;
                (first, first.saturating_add(numkeys - 1), keystep as i64)
            }
        };
        if first < 1 || last >= argc || last < first {
            return None;
        }
        Some((first as u32, last as u32, step.max(1) as u32))
    }
}

/// Parses a decimal integer the way the server's `string2ll` does: no spaces, no `+`, no leading
/// zeros (except "0").
pub fn parse_strict_i64(bytes: &[u8]) -> Option<i64> {
    // The usual `numkeys`, one digit, without the loop's overflow checks.
    if let [digit] = bytes {
        let value = digit.wrapping_sub(b'0');
        return (value < 10).then_some(i64::from(value));
    }
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    let (neg, digits) = match bytes[0] {
        b'-' => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    if digits.is_empty() || (digits[0] == b'0' && (digits.len() > 1 || neg)) {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    Some(if neg { -n } else { n })
}

/// A small open-addressing hash map from case-insensitive ASCII names to values.
///
/// Lookups never lower-case into a buffer: the first 16 bytes of a name are loaded as two
/// 64-bit words, the hash is computed from those words, and a stored name is compared word by
/// word. Command names are at most 16 bytes with few exceptions (those also compare the rest
/// byte by byte).
///
/// Every name is stored under two keys, its lower-case and its upper-case form, both leading to
/// the same value. A lookup first probes with the name exactly as it came, so the usual `GET` or
/// `get` is found with no case folding at all; only a name in mixed case (or an unknown name with
/// an upper-case letter) takes a second probe, lower-cased eight bytes at a time.
///
/// Names of up to 8 bytes (nearly every command) are also kept in a direct-mapped index of
/// two-entry buckets, one word and the length per entry: a hit there costs a word load, a
/// multiplication and two comparisons. A name whose bucket is full is found by the probe.
#[derive(Clone, Debug)]
pub struct NameMap<T> {
    slots: Vec<Option<NameSlot>>,
    mask: usize,
    /// Occupied slots (up to two per name).
    used: usize,
    values: Vec<T>,
    /// `slots.len()` buckets of the short-name index.
    short: Vec<[ShortEntry; 2]>,
}

/// One name of up to 8 bytes in the short-name index, exactly as stored (lower or upper case).
#[derive(Clone, Copy, Debug)]
struct ShortEntry {
    word: u64,
    /// `EMPTY_SHORT` for a free entry (never a name's length).
    len: usize,
    value: usize,
}

const EMPTY_SHORT: ShortEntry = ShortEntry {
    word: 0,
    len: usize::MAX,
    value: 0,
};

#[inline(always)]
fn short_hash(word: u64) -> usize {
    // The length is not mixed in: two names with the same word differ only by trailing NUL
    // bytes, and the entries compare lengths anyway.
    (word.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize
}

#[derive(Clone, Debug)]
struct NameSlot {
    /// The first 16 bytes of the name, lower-cased or upper-cased, zero-padded.
    words: NameWords,
    /// The whole name, lower-cased.
    name: Box<[u8]>,
    /// Index of the value in `values`.
    value: usize,
}

/// First 16 bytes of a name (zero-padded) and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NameWords {
    lo: u64,
    hi: u64,
    len: usize,
}

impl<T> Default for NameMap<T> {
    fn default() -> Self {
        NameMap::with_capacity(8)
    }
}

/// Loads up to 8 bytes as a little-endian word, zero-padded, without reading past `b`.
#[inline(always)]
fn load_word(b: &[u8]) -> u64 {
    let n = b.len().min(8);
    if n == 8 {
        return u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    }
    if n >= 4 {
        // Two overlapping 4-byte reads: the shared bytes hold the same values.
        let a = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64;
        let z = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]) as u64;
        return a | (z << (8 * (n - 4)));
    }
    if n >= 2 {
        // Likewise with 2-byte reads (overlapping for 3 bytes).
        let a = u16::from_le_bytes([b[0], b[1]]) as u64;
        let z = u16::from_le_bytes([b[n - 2], b[n - 1]]) as u64;
        return a | (z << (8 * (n - 2)));
    }
    if n == 0 {
        return 0;
    }
    b[0] as u64
}

/// ASCII lower-casing of eight bytes at once: `A`..=`Z` gain 0x20, every other byte is kept.
#[inline(always)]
fn lower_word(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low7 = x & !HIGH;
    // High bit of each byte set iff its low 7 bits are >= 'A' (resp. > 'Z').
    let ge_a = low7 + ONES * (0x80 - b'A' as u64);
    let gt_z = low7 + ONES * (0x80 - b'Z' as u64 - 1);
    // Upper-case letter: >= 'A', not > 'Z', and a 7-bit byte.
    let upper = ge_a & !gt_z & !x & HIGH;
    x | (upper >> 2)
}

/// The words of a name as they are, without case folding.
#[inline(always)]
fn raw_words(name: &[u8]) -> NameWords {
    let hi = if name.len() > 8 {
        load_word(&name[8..name.len().min(16)])
    } else {
        0
    };
    NameWords {
        lo: load_word(name),
        hi,
        len: name.len(),
    }
}

/// The words of a name, lower-cased.
#[inline(always)]
fn name_words(name: &[u8]) -> NameWords {
    lower_words(raw_words(name))
}

#[inline(always)]
fn lower_words(w: NameWords) -> NameWords {
    NameWords {
        lo: lower_word(w.lo),
        hi: lower_word(w.hi),
        len: w.len,
    }
}

#[inline(always)]
fn words_hash(w: &NameWords) -> usize {
    let h = (w.lo ^ w.hi.rotate_left(29) ^ w.len as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h ^ (h >> 32)) as usize
}

impl<T> NameMap<T> {
    pub fn with_capacity(n: usize) -> NameMap<T> {
        // Two keys per name, at most half the slots used.
        let size = (n * 4).next_power_of_two().max(8);
        NameMap {
            slots: (0..size).map(|_| None).collect(),
            mask: size - 1,
            used: 0,
            values: Vec::with_capacity(n),
            short: vec![[EMPTY_SHORT; 2]; size],
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Inserts or replaces the value for `name` (stored lower-case).
    pub fn insert(&mut self, name: &[u8], value: T) {
        let lower: Box<[u8]> = name.to_ascii_lowercase().into_boxed_slice();
        let words = name_words(&lower);
        if let Some(index) = self.probe(&words, &lower) {
            self.values[index] = value;
            return;
        }
        let index = self.values.len();
        self.values.push(value);
        let upper = raw_words(&lower.to_ascii_uppercase());
        if upper != words {
            self.place(upper, lower.clone(), index);
        }
        self.place(words, lower, index);
    }

    fn place(&mut self, words: NameWords, name: Box<[u8]>, value: usize) {
        if (self.used + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mut i = words_hash(&words) & self.mask;
        while self.slots[i].is_some() {
            i = (i + 1) & self.mask;
        }
        if words.len <= 8 {
            let bucket = &mut self.short[short_hash(words.lo) & self.mask];
            if let Some(free) = bucket.iter_mut().find(|e| e.len == EMPTY_SHORT.len) {
                *free = ShortEntry {
                    word: words.lo,
                    len: words.len,
                    value,
                };
            }
        }
        self.slots[i] = Some(NameSlot { words, name, value });
        self.used += 1;
    }

    fn grow(&mut self) {
        let old = std::mem::take(&mut self.slots);
        let size = (old.len() * 2).max(8);
        self.slots = (0..size).map(|_| None).collect();
        self.short = vec![[EMPTY_SHORT; 2]; size];
        self.mask = size - 1;
        self.used = 0;
        for slot in old.into_iter().flatten() {
            self.place(slot.words, slot.name, slot.value);
        }
    }

    /// The value index of the slot whose words are exactly `words` (and whose name is `name`
    /// beyond 16 bytes, ignoring case).
    #[inline(always)]
    fn probe(&self, words: &NameWords, name: &[u8]) -> Option<usize> {
        let mut i = words_hash(words) & self.mask;
        loop {
            match self.slots.get(i)? {
                Some(slot) => {
                    if slot.words == *words
                        && (words.len <= 16 || slot.name[16..].eq_ignore_ascii_case(&name[16..]))
                    {
                        return Some(slot.value);
                    }
                    i = (i + 1) & self.mask;
                }
                None => return None,
            }
        }
    }

    /// Finds `name`, ignoring ASCII case.
    #[inline(always)]
    pub fn get(&self, name: &[u8]) -> Option<&T> {
        if let Some(value) = self.get_short(name) {
            return Some(value);
        }
        let words = raw_words(name);
        match self.probe(&words, name) {
            Some(index) => self.values.get(index),
            None => self.get_folded(words, name),
        }
    }

    /// A name of up to 8 bytes, exactly as stored (all lower or all upper case), from the
    /// short-name index only: `None` means "not there", not "unknown" (see [`NameMap::get`]).
    #[inline(always)]
    pub fn get_short(&self, name: &[u8]) -> Option<&T> {
        if name.len() > 8 {
            return None;
        }
        self.get_short_word(load_word(name), name.len())
    }

    /// [`NameMap::get_short`] for a name already loaded as a little-endian word, zero-padded
    /// (`len` at most 8).
    #[inline(always)]
    pub fn get_short_word(&self, word: u64, len: usize) -> Option<&T> {
        let bucket = self.short.get(short_hash(word) & self.mask)?;
        let e = bucket.iter().find(|e| e.word == word && e.len == len)?;
        self.values.get(e.value)
    }

    /// The second probe of [`NameMap::get`]: the name lower-cased (mixed case, or unknown).
    #[inline(never)]
    fn get_folded(&self, words: NameWords, name: &[u8]) -> Option<&T> {
        let lower = lower_words(words);
        if lower == words {
            return None;
        }
        self.values.get(self.probe(&lower, name)?)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.values.iter()
    }
}

/// The whole table: every command the server knows.
#[derive(Clone, Debug, Default)]
pub struct CommandTable {
    commands: NameMap<CommandEntry>,
}

impl CommandTable {
    /// Builds the table from the reply of `COMMAND` (RESP2 or RESP3 form).
    pub fn from_command_reply(reply: &Value) -> Result<CommandTable, String> {
        let items = reply
            .as_array()
            .ok_or_else(|| "COMMAND reply is not an array".to_string())?;
        let mut commands = NameMap::with_capacity(items.len());
        for item in items {
            let entry = parse_entry(item)?;
            let name = entry.name.clone();
            commands.insert(&name, entry);
        }
        Ok(CommandTable { commands })
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Finds a command (or container command) by name, ignoring ASCII case.
    #[inline]
    pub fn get(&self, name: &[u8]) -> Option<&CommandEntry> {
        self.commands.get(name)
    }

    /// [`CommandTable::get`] for the usual spelling (all lower or all upper case) of a name of
    /// up to 8 bytes, loaded as a little-endian word (see [`NameMap::get_short`]).
    #[inline(always)]
    pub fn get_short_word(&self, word: u64, len: usize) -> Option<&CommandEntry> {
        self.commands.get_short_word(word, len)
    }

    /// Resolves a command from its first two arguments, as the server's `lookupCommand()` does:
    /// a container command with a subcommand argument resolves to the subcommand.
    #[inline]
    pub fn lookup(&self, name: &[u8], second: Option<&[u8]>) -> Option<&CommandEntry> {
        let entry = self.commands.get(name)?;
        match (&entry.subcommands, second) {
            (Some(subs), Some(sub)) => subs.get(sub),
            _ => Some(entry),
        }
    }

    /// Whether `name` is a container command (its entry has subcommands).
    #[inline]
    pub fn is_container(&self, name: &[u8]) -> bool {
        self.commands
            .get(name)
            .is_some_and(|e| e.subcommands.is_some())
    }
}

fn parse_entry(item: &Value) -> Result<CommandEntry, String> {
    let fields = item
        .as_array()
        .ok_or_else(|| "COMMAND entry is not an array".to_string())?;
    let get = |i: usize| {
        fields
            .get(i)
            .ok_or_else(|| format!("COMMAND entry has no field {i}"))
    };
    let full_name = get(0)?
        .as_bytes()
        .ok_or_else(|| "COMMAND entry name is not a string".to_string())?
        .to_ascii_lowercase();
    let arity = get(1)?.as_int().ok_or("COMMAND arity is not an integer")? as i32;
    let flag_names: Vec<&str> = get(2)?
        .as_array()
        .unwrap_or(&[])
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    let has_flag = |name: &str| flag_names.iter().any(|f| f.eq_ignore_ascii_case(name));
    let first = get(3)?.as_int().unwrap_or(0) as i32;
    let last = get(4)?.as_int().unwrap_or(0) as i32;
    let step = get(5)?.as_int().unwrap_or(0) as i32;

    // A subcommand's own name is the part after `|` ("xinfo|stream" -> "stream").
    let short_name: Vec<u8> = match full_name.iter().position(|&b| b == b'|') {
        Some(bar) => full_name[bar + 1..].to_vec(),
        None => full_name.clone(),
    };

    let mut flags = CmdFlags::empty();
    if has_flag("write") {
        flags = flags.union(CmdFlags::WRITE);
    }
    if has_flag("may_replicate") {
        flags = flags.union(CmdFlags::MAY_REPLICATE);
    }
    if has_flag("asking") {
        flags = flags.union(CmdFlags::ASKING);
    }
    if has_flag("blocking") {
        flags = flags.union(CmdFlags::BLOCKING);
    }
    match full_name.as_slice() {
        b"ssubscribe" | b"sunsubscribe" | b"spublish" => {
            flags = flags.union(CmdFlags::PUBSUB_SHARD)
        }
        b"migrate" => flags = flags.union(CmdFlags::MIGRATE),
        b"restore" => flags = flags.union(CmdFlags::RESTORE),
        _ => {}
    }

    let keys = if has_flag("movablekeys") {
        if has_flag("module") {
            // A module's key callback or key specs: only the server knows how it resolves them.
            KeyPlan::Server
        } else {
            simple_specs(fields.get(8)).map_or(KeyPlan::Server, KeyPlan::Specs)
        }
    } else if first > 0 {
        KeyPlan::Legacy { first, last, step }
    } else {
        KeyPlan::None
    };

    let role = match full_name.as_slice() {
        b"asking" => Role::Asking,
        b"readonly" => Role::ReadOnly,
        b"readwrite" => Role::ReadWrite,
        b"cluster" => Role::Cluster,
        b"multi" => Role::Multi,
        b"exec" => Role::Exec,
        b"discard" => Role::Discard,
        b"reset" => Role::Reset,
        b"info" => Role::Info,
        b"publish" => Role::Publish,
        b"u.r" => Role::QuickRedirect,
        _ => Role::Plain,
    };

    let subcommands = match fields.get(9).and_then(|v| v.as_array()) {
        Some(subs) if !subs.is_empty() => {
            let mut map = NameMap::with_capacity(subs.len());
            for sub in subs {
                let entry = parse_entry(sub)?;
                let name = entry.name.clone();
                map.insert(&name, entry);
            }
            Some(Box::new(map))
        }
        _ => None,
    };

    let fast = FastPlan::of(role, flags, arity, &keys, subcommands.is_some());
    let (argc_min, argc_extra) = argc_range(arity);
    Ok(CommandEntry {
        argc_min,
        argc_extra,
        one_key_pos: match fast {
            FastPlan::OneKey(pos) => pos as usize,
            _ => usize::MAX,
        },
        name: short_name.into_boxed_slice(),
        arity,
        flags,
        role,
        keys,
        subcommands,
        fast,
    })
}

/// Reads a command's key specs when every one of them is of a kind the router evaluates inline:
/// an `index` begin-search with a `range` or `keynum` find, and no flag saying the spec is
/// incomplete, has variable flags, or is not a key.
fn simple_specs(specs: Option<&Value>) -> Option<Box<[Spec]>> {
    let specs = specs?.as_array()?;
    if specs.is_empty() || specs.len() > MAX_RANGES {
        return None;
    }
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let flags = spec.field("flags")?.as_array()?;
        if flags.iter().any(|f| {
            matches!(
                f.as_str().map(|s| s.to_ascii_uppercase()).as_deref(),
                Some("INCOMPLETE" | "VARIABLE_FLAGS" | "NOT_KEY")
            )
        }) {
            return None;
        }
        let bs = spec.field("begin_search")?;
        if bs.field("type")?.as_str()? != "index" {
            return None;
        }
        let index = int_field(bs.field("spec")?, "index")?;
        let fk = spec.field("find_keys")?;
        let fk_spec = fk.field("spec")?;
        out.push(match fk.field("type")?.as_str()? {
            "range" => Spec::Range {
                index,
                lastkey: int_field(fk_spec, "lastkey")?,
                keystep: int_field(fk_spec, "keystep")?,
                limit: int_field(fk_spec, "limit")?,
            },
            "keynum" => Spec::KeyNum {
                index,
                keynumidx: int_field(fk_spec, "keynumidx")?,
                firstkey: int_field(fk_spec, "firstkey")?,
                keystep: int_field(fk_spec, "keystep")?,
            },
            _ => return None,
        });
    }
    Some(out.into_boxed_slice())
}

fn int_field(v: &Value, name: &str) -> Option<i32> {
    let n = v.field(name)?.as_int()?;
    i32::try_from(n).ok()
}

/// The prefix of the dotted spelling of `UMCTL` subcommands (`UMCTL.SETCLUSTER`), any case.
pub const UMCTL_DOTTED: &[u8] = b"umctl.";

/// The subcommand of a dotted `UMCTL` name (`UMCTL.SETCLUSTER` -> `SETCLUSTER`), if it is one.
pub fn umctl_dotted_sub(name: &[u8]) -> Option<&[u8]> {
    let prefix = name.get(..UMCTL_DOTTED.len())?;
    let sub = &name[UMCTL_DOTTED.len()..];
    (prefix.eq_ignore_ascii_case(UMCTL_DOTTED) && !sub.is_empty()).then_some(sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umctl_dotted_names_give_their_subcommand() {
        assert_eq!(
            umctl_dotted_sub(b"UMCTL.SETCLUSTER"),
            Some(&b"SETCLUSTER"[..])
        );
        assert_eq!(umctl_dotted_sub(b"umctl.getepoch"), Some(&b"getepoch"[..]));
        assert_eq!(umctl_dotted_sub(b"UmCtL.x.y"), Some(&b"x.y"[..]));
        for other in [
            &b"umctl."[..],
            b"umctl",
            b"umct.x",
            b"umctlx.y",
            b"",
            b"get",
        ] {
            assert_eq!(umctl_dotted_sub(other), None);
        }
    }

    fn bulk(s: &str) -> Value {
        Value::Bulk(s.as_bytes().to_vec())
    }
    fn simple(s: &str) -> Value {
        Value::Simple(s.to_string())
    }
    fn arr(v: Vec<Value>) -> Value {
        Value::Array(v)
    }
    fn int(i: i64) -> Value {
        Value::Int(i)
    }

    #[test]
    fn word_lowercasing_matches_ascii_lowercasing_for_every_byte() {
        for b in 0..=255u8 {
            let name = [b; 20];
            for len in 0..=20 {
                let w = name_words(&name[..len]);
                let lower = name[..len.min(16)].to_ascii_lowercase();
                let mut padded = [0u8; 16];
                padded[..lower.len()].copy_from_slice(&lower);
                assert_eq!(w.lo.to_le_bytes(), padded[..8], "byte {b} len {len}");
                assert_eq!(w.hi.to_le_bytes(), padded[8..], "byte {b} len {len}");
                assert_eq!(w.len, len);
            }
        }
    }

    #[test]
    fn arity_ranges_match_the_arity_rule() {
        for arity in -5i32..=5 {
            let (argc_min, argc_extra) = argc_range(arity);
            for argc in 0usize..10 {
                let expected = if arity >= 0 {
                    argc as i32 == arity
                } else {
                    argc as i32 >= -arity
                };
                assert_eq!(
                    argc.wrapping_sub(argc_min) <= argc_extra,
                    expected,
                    "arity {arity} argc {argc}"
                );
            }
        }
    }

    #[test]
    fn name_map_finds_many_short_names_whether_their_bucket_is_full_or_not() {
        // Enough names that some short-index buckets overflow to the probe.
        let names: Vec<String> = (0..3000u32)
            .map(|i| {
                let len = 1 + (i % 8) as usize;
                (0..len)
                    .map(|j| (b'a' + ((i / 8 + j as u32 * 7919) % 26) as u8) as char)
                    .collect::<String>()
            })
            .collect();
        let mut map = NameMap::default();
        for (i, n) in names.iter().enumerate() {
            map.insert(n.as_bytes(), i);
        }
        for n in &names {
            // Duplicate names keep the last value inserted.
            let last = names.iter().rposition(|m| m == n).unwrap();
            assert_eq!(map.get(n.as_bytes()), Some(&last), "{n}");
            assert_eq!(map.get(n.to_uppercase().as_bytes()), Some(&last), "{n}");
            let mixed: String = n
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            assert_eq!(map.get(mixed.as_bytes()), Some(&last), "{mixed}");
        }
        assert_eq!(map.get(b"zzzzzzzzz"), None);
    }

    #[test]
    fn name_map_finds_names_of_every_length_in_any_case() {
        let names: Vec<String> = (0..=24)
            .map(|n| {
                (0..n)
                    .map(|i| (b'a' + (i * 7 % 26) as u8) as char)
                    .collect()
            })
            .collect();
        let mut map = NameMap::default();
        for (i, n) in names.iter().enumerate() {
            map.insert(n.as_bytes(), i);
        }
        assert_eq!(map.len(), names.len());
        for (i, n) in names.iter().enumerate() {
            assert_eq!(map.get(n.as_bytes()), Some(&i), "{n}");
            assert_eq!(map.get(n.to_uppercase().as_bytes()), Some(&i), "{n}");
            let mut other = n.clone().into_bytes();
            if let Some(last) = other.last_mut() {
                *last = b'#';
                assert_eq!(map.get(&other), None, "{n}");
            }
        }
        // Same first 16 bytes, same length: told apart by the tail.
        let mut m = NameMap::default();
        m.insert(b"georadiusbymember_ro", 1);
        m.insert(b"georadiusbymember_rx", 2);
        assert_eq!(m.get(b"GEORADIUSBYMEMBER_RO"), Some(&1));
        assert_eq!(m.get(b"GEORADIUSBYMEMBER_RX"), Some(&2));
        assert_eq!(m.get(b"georadiusbymember_r"), None);
        // Bytes outside A-Z are not folded: '@' is not '`', '[' is not '{'.
        m.insert(b"a`b{", 3);
        assert_eq!(m.get(b"A@B["), None);
        assert_eq!(m.get(b"A`B{"), Some(&3));
    }

    fn range_spec(index: i64, lastkey: i64, keystep: i64, limit: i64) -> Value {
        arr(vec![
            bulk("flags"),
            arr(vec![simple("RW")]),
            bulk("begin_search"),
            arr(vec![
                bulk("type"),
                bulk("index"),
                bulk("spec"),
                arr(vec![bulk("index"), int(index)]),
            ]),
            bulk("find_keys"),
            arr(vec![
                bulk("type"),
                bulk("range"),
                bulk("spec"),
                arr(vec![
                    bulk("lastkey"),
                    int(lastkey),
                    bulk("keystep"),
                    int(keystep),
                    bulk("limit"),
                    int(limit),
                ]),
            ]),
        ])
    }

    fn keynum_spec(index: i64, keynumidx: i64, firstkey: i64) -> Value {
        arr(vec![
            bulk("flags"),
            arr(vec![simple("RW")]),
            bulk("begin_search"),
            arr(vec![
                bulk("type"),
                bulk("index"),
                bulk("spec"),
                arr(vec![bulk("index"), int(index)]),
            ]),
            bulk("find_keys"),
            arr(vec![
                bulk("type"),
                bulk("keynum"),
                bulk("spec"),
                arr(vec![
                    bulk("keynumidx"),
                    int(keynumidx),
                    bulk("firstkey"),
                    int(firstkey),
                    bulk("keystep"),
                    int(1),
                ]),
            ]),
        ])
    }

    fn keyword_spec() -> Value {
        arr(vec![
            bulk("flags"),
            arr(vec![simple("RO")]),
            bulk("begin_search"),
            arr(vec![
                bulk("type"),
                bulk("keyword"),
                bulk("spec"),
                arr(vec![]),
            ]),
            bulk("find_keys"),
            arr(vec![bulk("type"), bulk("range"), bulk("spec"), arr(vec![])]),
        ])
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        name: &str,
        arity: i64,
        flags: &[&str],
        first: i64,
        last: i64,
        step: i64,
        specs: Vec<Value>,
        subs: Vec<Value>,
    ) -> Value {
        arr(vec![
            bulk(name),
            int(arity),
            arr(flags.iter().map(|f| simple(f)).collect()),
            int(first),
            int(last),
            int(step),
            arr(vec![]),
            arr(vec![]),
            arr(specs),
            arr(subs),
        ])
    }

    fn table() -> CommandTable {
        let reply = arr(vec![
            entry(
                "get",
                2,
                &["readonly", "fast"],
                1,
                1,
                1,
                vec![range_spec(1, 0, 1, 0)],
                vec![],
            ),
            entry(
                "mset",
                -3,
                &["write", "denyoom"],
                1,
                -1,
                2,
                vec![range_spec(1, -1, 2, 0)],
                vec![],
            ),
            entry(
                "evalsha",
                -3,
                &["noscript", "movablekeys", "may_replicate"],
                0,
                0,
                0,
                vec![keynum_spec(2, 0, 1)],
                vec![],
            ),
            entry(
                "zunionstore",
                -4,
                &["write", "movablekeys"],
                1,
                1,
                1,
                vec![range_spec(1, 0, 1, 0), keynum_spec(2, 0, 1)],
                vec![],
            ),
            entry(
                "xread",
                -4,
                &["readonly", "movablekeys"],
                0,
                0,
                0,
                vec![keyword_spec()],
                vec![],
            ),
            entry(
                "mod.cmd",
                -2,
                &["module", "movablekeys"],
                1,
                1,
                1,
                vec![],
                vec![],
            ),
            entry("ping", -1, &["fast"], 0, 0, 0, vec![], vec![]),
            entry("spublish", 3, &["pubsub"], 1, 1, 1, vec![], vec![]),
            entry(
                "restore-asking",
                -4,
                &["write", "asking"],
                1,
                1,
                1,
                vec![],
                vec![],
            ),
            entry(
                "xinfo",
                -2,
                &[],
                0,
                0,
                0,
                vec![],
                vec![entry(
                    "xinfo|stream",
                    -3,
                    &["readonly"],
                    2,
                    2,
                    1,
                    vec![],
                    vec![],
                )],
            ),
            entry("cluster", -2, &[], 0, 0, 0, vec![], vec![]),
        ]);
        CommandTable::from_command_reply(&reply).unwrap()
    }

    fn keys_of(t: &CommandTable, args: &[&str]) -> Option<Vec<usize>> {
        let e = t.lookup(args[0].as_bytes(), args.get(1).map(|s| s.as_bytes()))?;
        match e
            .keys
            .keys(args.len(), |i| parse_strict_i64(args[i].as_bytes()))
        {
            Keys::None => Some(vec![]),
            Keys::At(r) => Some(r.positions().collect()),
            Keys::AskServer => None,
        }
    }

    #[test]
    fn lookup_ignores_case_and_resolves_subcommands() {
        let t = table();
        assert_eq!(&*t.lookup(b"GeT", None).unwrap().name, b"get");
        assert_eq!(
            &*t.lookup(b"XINFO", Some(b"Stream")).unwrap().name,
            b"stream"
        );
        assert!(t.lookup(b"xinfo", Some(b"nope")).is_none());
        assert_eq!(&*t.lookup(b"xinfo", None).unwrap().name, b"xinfo");
        assert!(t.lookup(b"nosuch", None).is_none());
        assert_eq!(
            t.lookup(b"CLUSTER", Some(b"nodes")).unwrap().role,
            Role::Cluster
        );
        assert!(t.is_container(b"xinfo"));
    }

    #[test]
    fn fast_plans_follow_role_container_and_keys() {
        let t = table();
        let plan = |name: &str| t.lookup(name.as_bytes(), None).unwrap().fast;
        // One key below the minimum argument count: its position, no range arithmetic.
        assert_eq!(plan("get"), FastPlan::OneKey(1));
        assert_eq!(plan("GeT"), FastPlan::OneKey(1));
        assert_eq!(plan("mset"), FastPlan::Keys);
        assert_eq!(plan("evalsha"), FastPlan::Keys);
        assert_eq!(plan("xinfo"), FastPlan::Slow);
        assert_eq!(plan("cluster"), FastPlan::Slow);
        assert_eq!(plan("xread"), FastPlan::Slow);
        let keys = KeyPlan::Legacy {
            first: 1,
            last: 1,
            step: 1,
        };
        let plain = CmdFlags::empty();
        // The key position may be missing from a call of the right arity: the full range check.
        assert_eq!(
            FastPlan::of(Role::Plain, plain, -1, &keys, false),
            FastPlan::Keys
        );
        assert_eq!(
            FastPlan::of(Role::Plain, CmdFlags::BLOCKING, -2, &keys, false),
            FastPlan::Slow
        );
        assert_eq!(
            FastPlan::of(Role::Multi, plain, 1, &KeyPlan::None, false),
            FastPlan::Slow
        );
        assert_eq!(
            FastPlan::of(Role::Plain, plain, 1, &KeyPlan::None, false),
            FastPlan::NoKeys
        );
    }

    #[test]
    fn fixed_position_keys_use_the_legacy_range() {
        let t = table();
        assert_eq!(keys_of(&t, &["get", "k"]), Some(vec![1]));
        assert_eq!(keys_of(&t, &["mset", "a", "1", "b", "2"]), Some(vec![1, 3]));
        assert_eq!(keys_of(&t, &["XINFO", "STREAM", "s"]), Some(vec![2]));
        assert_eq!(keys_of(&t, &["ping"]), Some(vec![]));
        assert_eq!(keys_of(&t, &["spublish", "ch", "msg"]), Some(vec![1]));
        // Malformed: position past the arguments means no keys.
        assert_eq!(keys_of(&t, &["get"]), Some(vec![]));
    }

    #[test]
    fn numkeys_commands_are_evaluated_inline() {
        let t = table();
        assert_eq!(
            keys_of(&t, &["evalsha", "abc", "2", "k1", "k2", "arg"]),
            Some(vec![3, 4])
        );
        assert_eq!(keys_of(&t, &["evalsha", "abc", "0"]), Some(vec![]));
        assert_eq!(keys_of(&t, &["evalsha", "abc", "5", "k1"]), Some(vec![]));
        assert_eq!(keys_of(&t, &["evalsha", "abc", "-1", "k1"]), Some(vec![]));
        assert_eq!(keys_of(&t, &["evalsha", "abc", "01", "k1"]), Some(vec![]));
        assert_eq!(
            keys_of(
                &t,
                &["zunionstore", "d", "2", "a", "b", "WEIGHTS", "1", "2"]
            ),
            Some(vec![1, 3, 4])
        );
    }

    #[test]
    fn keys_start_at_argument_1_for_one_key_legacy_and_range_spec_commands_only() {
        let t = table();
        let first = |name: &str| {
            t.lookup(name.as_bytes(), None)
                .unwrap()
                .keys_start_at_argument_1()
        };
        for name in ["get", "mset", "spublish", "zunionstore"] {
            assert!(first(name), "{name}");
        }
        for name in ["evalsha", "ping", "xread", "mod.cmd"] {
            assert!(!first(name), "{name}");
        }
    }

    #[test]
    fn keyword_and_module_commands_ask_the_server() {
        let t = table();
        assert_eq!(keys_of(&t, &["xread", "STREAMS", "s", "0"]), None);
        assert_eq!(keys_of(&t, &["mod.cmd", "k"]), None);
    }

    #[test]
    fn flags_and_roles_are_recorded() {
        let t = table();
        assert!(t
            .lookup(b"mset", None)
            .unwrap()
            .flags
            .contains(CmdFlags::WRITE));
        assert!(t
            .lookup(b"spublish", None)
            .unwrap()
            .flags
            .contains(CmdFlags::PUBSUB_SHARD));
        assert!(t
            .lookup(b"restore-asking", None)
            .unwrap()
            .flags
            .contains(CmdFlags::ASKING));
        assert!(t
            .lookup(b"evalsha", None)
            .unwrap()
            .flags
            .contains(CmdFlags::MAY_REPLICATE));
        assert!(t.lookup(b"get", None).unwrap().arity_ok(2));
        assert!(!t.lookup(b"get", None).unwrap().arity_ok(3));
        assert!(t.lookup(b"mset", None).unwrap().arity_ok(5));
        assert!(!t.lookup(b"mset", None).unwrap().arity_ok(2));
    }

    #[test]
    fn strict_integers_match_the_server() {
        assert_eq!(parse_strict_i64(b"12"), Some(12));
        assert_eq!(parse_strict_i64(b"-3"), Some(-3));
        assert_eq!(parse_strict_i64(b"0"), Some(0));
        for d in 0..=9u8 {
            assert_eq!(parse_strict_i64(&[b'0' + d]), Some(i64::from(d)));
        }
        for bad in [
            &b""[..],
            b"-",
            b"+",
            b"a",
            b"/",
            b":",
            b" ",
            b"\0",
            b"+1",
            b" 1",
            b"01",
            b"-0",
            b"1a",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_strict_i64(bad), None);
        }
    }

    #[test]
    fn name_map_grows_and_keeps_everything() {
        let mut m = NameMap::with_capacity(1);
        for i in 0..500 {
            m.insert(format!("Cmd{i}").as_bytes(), i);
        }
        assert_eq!(m.len(), 500);
        for i in 0..500 {
            assert_eq!(m.get(format!("CMD{i}").as_bytes()), Some(&i));
        }
        m.insert(b"cmd7", 70);
        assert_eq!(m.get(b"Cmd7"), Some(&70));
        assert_eq!(m.len(), 500);
    }
}
