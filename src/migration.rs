//! Slot migration tasks of the source node: which ranges move where, how far the move is, and the
//! replies of `UMCTL INFOMGR` / `UMCTL MIGRATIONS`. The moving itself (scan, copy, delete, timer) is
//! in [`crate::ffi::mover`]; this file is the bookkeeping it drives, kept free of server calls so
//! it can be unit-tested.
//!
//! A task exists while the accepted topology gives this node a local `migrating` group. It is
//! identified by the group's migration description and ranges: a re-push of the same migration
//! with a higher cluster epoch keeps the task (and its progress); a push without it (commit or
//! rollback) drops it. A task is `done` when a complete pass over every database found no key of
//! its slots; `INFOMGR` lists it from then on so the control plane can commit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::reply::Reply;
use crate::topology::{GroupKind, MigrationMeta, SlotRange, Topology};
use crate::transfer::{Batch, Collection, Entry, Link, Payload, StreamId};

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// Scanning and moving keys.
    Running,
    /// The last batch failed (destination down, refused, out of memory...): waiting to retry.
    Retrying,
    /// A full pass found no key of the task's slots.
    Done,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Done => "done",
        }
    }
}

/// Position of a task's scan, owned by the server side (a `RedisModuleScanCursor`); released by
/// `destroy` when dropped, so dropping a task never leaks the server's cursor.
pub struct ScanCursor {
    pub raw: *mut std::ffi::c_void,
    pub destroy: unsafe fn(*mut std::ffi::c_void),
}

impl Drop for ScanCursor {
    fn drop(&mut self) {
        // SAFETY: `raw` came from the function `destroy` belongs to and is released only here.
        unsafe { (self.destroy)(self.raw) }
    }
}

impl std::fmt::Debug for ScanCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScanCursor")
    }
}

/// A big collection moved in pieces (see `transfer::Piece`), waiting for its turn or being read.
/// It holds its key's fence from the scan that met it until its last piece is handed over; the
/// last piece's entry holds it from then on, like any entry of a batch.
#[derive(Debug)]
pub struct BigKey {
    pub db: i32,
    pub name: Vec<u8>,
    /// What it is, known once its first piece is read (`None` before, and after a restart).
    pub of: Option<Collection>,
    /// Position in a hash, set or sorted set (`RedisModule_ScanKey`).
    pub cursor: Option<ScanCursor>,
    /// Position in a list.
    pub next_index: i64,
    /// Position in a stream: the id the next piece starts at.
    pub next_id: StreamId,
    /// Pieces read so far.
    pub pieces: u32,
}

impl BigKey {
    pub fn new(db: i32, name: Vec<u8>) -> BigKey {
        BigKey {
            db,
            name,
            of: None,
            cursor: None,
            next_index: 0,
            next_id: StreamId { ms: 0, seq: 0 },
            pieces: 0,
        }
    }

    /// From the first piece again (pieces of it were lost with a link: they must arrive in order,
    /// and the first replaces whatever the destination holds).
    pub fn restart(&mut self) {
        *self = BigKey::new(self.db, std::mem::take(&mut self.name));
    }
}

/// One migration of this node's slots to another node.
#[derive(Debug)]
pub struct Task {
    pub meta: MigrationMeta,
    pub ranges: Vec<SlotRange>,
    /// `slots[s]`: slot `s` belongs to this task.
    pub slots: Vec<bool>,
    pub state: TaskState,
    pub keys_moved: u64,
    /// Key names plus values moved (`DUMP` payloads for types other than strings).
    pub bytes_moved: u64,
    pub errors: u64,
    pub last_error: String,
    /// Keys of the task's slots counted when the task started (from the databases' sizes and the
    /// share of slots), until the first pass ends; then what the last pass found.
    pub keys_estimate: Option<u64>,
    /// Database being scanned and the scan's position in it.
    pub db: i32,
    pub cursor: Option<ScanCursor>,
    /// Keys of the task's slots met in the current pass.
    pub found_this_pass: u64,
    /// Moved during the current pass (for `keys_left`).
    pub moved_this_pass: u64,
    /// No batch before this time (ms), after a failure.
    pub retry_at_ms: u64,
    /// Failed batches since the last one that went through (the backoff doubles with each).
    pub consecutive_failures: u32,
    rate_window_start_ms: u64,
    rate_window_keys: u64,
    pub keys_per_sec: u64,
    /// Keys on their way to the destination.
    pub pipe: Pipeline,
    /// Big collections met by the scan, moved in pieces one at a time (the front one is read),
    /// ahead of further scanning.
    pub big: VecDeque<BigKey>,
    /// Keys (database, name) whose `DUMP` payload the destination refused: a collection among
    /// them goes in pieces next time (they do not depend on the RDB format, so a destination of
    /// an older version takes them).
    pub dump_refused: HashSet<(i32, Vec<u8>)>,
}

/// Most of the event loop a migration tick takes while the clients leave it idle; also the
/// longest a client waits behind a tick. Short, because idle ticks run back to back (one pass of
/// the event loop apart), so a short tick costs the mover almost nothing: measured with 3 M keys,
/// 1 ms ticks moved them as fast as 4 ms ones and the longest PING fell from 11 to 7 ms.
pub const MAX_TICK_BUDGET: Duration = Duration::from_millis(1);
/// Least a tick works, however busy the clients keep the loop.
pub const MIN_TICK_BUDGET: Duration = Duration::from_micros(200);
/// Share of a busy event loop the mover leaves to the clients (percent).
pub const CLIENT_SHARE_PERCENT: u32 = 70;

/// Client CPU between two ticks one pass of the event loop apart below which the loop counts as
/// idle: a pass that serves even a few ready clients costs more (a poll alone costs a few µs).
pub const IDLE_PASS_CPU: Duration = Duration::from_micros(50);

/// Whether the event loop was idle between the last tick and this one, from the CPU time the
/// main thread spent on everything else in between (`None`: unknown). `chained`: the ticks were
/// one pass of the loop apart (see the mover's one-shot scheduling); otherwise a timer's wait
/// (1 ms or more) was in between and up to [`MIN_TICK_BUDGET`] of client work still counts as
/// idle.
pub fn loop_idle(client_cpu: Option<Duration>, chained: bool) -> bool {
    let threshold = if chained {
        IDLE_PASS_CPU
    } else {
        MIN_TICK_BUDGET
    };
    matches!(client_cpu, Some(c) if c < threshold)
}

/// How long a migration tick may work, from the CPU time the main thread spent on everything
/// else since the previous tick ended (`None`: unknown). Clients that kept the loop busy for
/// `c` get it back in the proportion [`CLIENT_SHARE_PERCENT`] : the rest (the tick gets
/// `c * 30 / 70`), so a saturated node keeps 70 % of its throughput; an idle loop (see
/// [`loop_idle`]) gives the mover [`MAX_TICK_BUDGET`].
pub fn tick_budget(client_cpu: Option<Duration>, chained: bool) -> Duration {
    let Some(c) = client_cpu else {
        return MIN_TICK_BUDGET;
    };
    if loop_idle(client_cpu, chained) {
        return MAX_TICK_BUDGET;
    }
    let share = c * (100 - CLIENT_SHARE_PERCENT) / CLIENT_SHARE_PERCENT;
    share.clamp(MIN_TICK_BUDGET, MAX_TICK_BUDGET)
}

/// A 64-bit hash of a key name (FxHash-style, a word at a time): the fence keeps these instead
/// of copies of the names, so fencing a key allocates nothing.
pub fn fingerprint(key: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = key.len() as u64;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let mut w = [0u8; 8];
    w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    // Mix the high bits down: the map's buckets use the low ones.
    h ^ (h >> 29)
}

/// Hasher for keys that are hashes already.
#[derive(Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A batch handed to a link and not yet acknowledged.
#[derive(Debug)]
pub struct Sent {
    pub batch: Arc<Batch>,
    /// It was handed to a link whose connection failed after it was made: some of its keys may
    /// be on the destination, so they stay fenced until a later copy is acknowledged.
    pub maybe_delivered: bool,
}

/// The keys of a task between "copied from the keyspace" and "deleted here after the
/// destination acknowledged them".
///
/// The invariant that keeps every write: a key is **fenced** from the moment it is serialized
/// until it is deleted here after an acknowledgement, or until it is known never to have left
/// (its link never connected). The filter answers `TRYAGAIN` to writes of a fenced key, and to
/// reads of a fenced key that no longer exists here (the destination may hold a stale copy), so
/// no client can change a value whose copy is on its way or may be on the destination.
#[derive(Debug, Default)]
pub struct Pipeline {
    pub link: Option<Link>,
    /// How the next link delivers keys (`Restore` once a destination did not know the import
    /// command).
    pub delivery: crate::transfer::Delivery,
    /// Reported by `link` and not handled yet (a tick handles what its budget allows).
    pub events: VecDeque<crate::transfer::Event>,
    /// Handed to `link`, acknowledged in this order.
    pub in_flight: VecDeque<Sent>,
    /// Handed to a link that failed: sent again before anything new.
    pub parked: Vec<Sent>,
    /// Keys (database, name) to serialize again: they changed or vanished behind the fence
    /// (expiry, eviction, `FLUSHALL`) while a copy was on its way.
    pub resend: Vec<(i32, Vec<u8>)>,
    /// Keys (database, name) the destination refused whose tombstone is on its way (see
    /// [`Pipeline::split_refused`]): once it is acknowledged they are unfenced, not sent again.
    releasing: Vec<(i32, Bytes)>,
    /// Fenced keys by [`fingerprint`], with a count (a name can be fenced in several databases,
    /// or share a fingerprint with another: that only fences the other needlessly for a moment).
    fenced: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
    next_id: u64,
    /// Keys and bytes of `in_flight` and `parked`.
    pub keys: usize,
    pub bytes: u64,
}

impl Pipeline {
    /// Whether a key of this name (in any database) is fenced.
    #[inline]
    pub fn is_fenced(&self, key: &[u8]) -> bool {
        !self.fenced.is_empty() && self.fenced.contains_key(&fingerprint(key))
    }

    pub fn any_fenced(&self) -> bool {
        !self.fenced.is_empty()
    }

    /// Fences `key` unless a key of that name is fenced already (one lookup for both); returns
    /// whether it fenced it.
    pub fn fence_new(&mut self, key: &[u8]) -> bool {
        match self.fenced.entry(fingerprint(key)) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(1);
                true
            }
        }
    }

    /// Adds a fence count for `key` whether or not it is fenced already (the tests build
    /// pipelines with a name in two batches this way; the mover fences with [`Self::fence_new`]).
    #[cfg(test)]
    pub fn fence(&mut self, key: &[u8]) {
        *self.fenced.entry(fingerprint(key)).or_insert(0) += 1;
    }

    pub fn unfence(&mut self, key: &[u8]) {
        let fp = fingerprint(key);
        if let Some(n) = self.fenced.get_mut(&fp) {
            *n -= 1;
            if *n == 0 {
                self.fenced.remove(&fp);
            }
        }
    }

    /// A new batch id.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Nothing on its way and nothing waiting to be sent again.
    pub fn idle(&self) -> bool {
        self.in_flight.is_empty() && self.parked.is_empty() && self.resend.is_empty()
    }

    /// Records a batch handed to the link (its keys were fenced when they were serialized).
    pub fn sent(&mut self, sent: Sent) {
        self.keys += sent.batch.entries.len();
        self.bytes += sent.batch.bytes;
        self.in_flight.push_back(sent);
    }

    /// Takes the oldest batch in flight after its acknowledgement (or refusal) with id `id`;
    /// `None` when the link answered out of order (then the link must be dropped).
    pub fn take_acked(&mut self, id: u64) -> Option<Sent> {
        if self.in_flight.front().map(|s| s.batch.id) != Some(id) {
            return None;
        }
        let sent = self.in_flight.pop_front()?;
        self.keys -= sent.batch.entries.len();
        self.bytes -= sent.batch.bytes;
        Some(sent)
    }

    /// Parks a batch taken with [`Pipeline::take_acked`] (refused: it is sent again later).
    pub fn park(&mut self, mut sent: Sent) {
        sent.maybe_delivered = true;
        self.keys += sent.batch.entries.len();
        self.bytes += sent.batch.bytes;
        self.parked.push(sent);
    }

    /// The parked batches, to hand to a new link (through [`Pipeline::sent`]).
    pub fn take_parked(&mut self) -> Vec<Sent> {
        let parked = std::mem::take(&mut self.parked);
        for sent in &parked {
            self.keys -= sent.batch.entries.len();
            self.bytes -= sent.batch.bytes;
        }
        parked
    }

    /// Drops the link. `connected`: it had connected, so what it was given may have arrived —
    /// those batches are parked (still fenced); otherwise nothing left this node, and batches
    /// never delivered anywhere before are released (their keys unfenced, found again by the scan).
    pub fn link_failed(&mut self, connected: bool) {
        self.link = None;
        self.events.clear();
        while let Some(mut sent) = self.in_flight.pop_front() {
            sent.maybe_delivered |= connected;
            if sent.maybe_delivered {
                self.parked.push(sent);
            } else {
                self.keys -= sent.batch.entries.len();
                self.bytes -= sent.batch.bytes;
                for e in &sent.batch.entries {
                    self.unfence(&e.key);
                }
            }
        }
    }

    /// Takes the pieces of big collections out of the parked batches (after a link failed) and
    /// returns, in order, the database and name of each key that lost a piece, once. Their moves
    /// start over: a key's pieces must arrive in order, from the first.
    pub fn drop_parked_pieces(&mut self) -> Vec<(i32, Vec<u8>)> {
        let mut keys: Vec<(i32, Vec<u8>)> = Vec::new();
        let mut kept = Vec::with_capacity(self.parked.len());
        for sent in std::mem::take(&mut self.parked) {
            let piece = sent
                .batch
                .entries
                .iter()
                .any(|e| matches!(e.payload, Payload::Piece(_)));
            if !piece {
                kept.push(sent);
                continue;
            }
            self.keys -= sent.batch.entries.len();
            self.bytes -= sent.batch.bytes;
            for e in &sent.batch.entries {
                let key = (sent.batch.db, e.key.to_vec());
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        self.parked = kept;
        keys
    }

    /// A batch taken with [`Pipeline::take_acked`] whose entry `n` the destination refused (see
    /// [`crate::transfer::refused_entry`]): the entries before it were applied there, none after
    /// it. Parks the entries after it (still fenced, sent again first) and lets the refused key
    /// go — unfenced, so clients go on using it here, and the scan meets it again on a later pass
    /// — rather than holding it, and the batch with it, fenced for as long as the destination
    /// cannot take it (a module type it lacks, a `DUMP` of a newer version). If the batch may
    /// have reached the destination before (a link failed after it was sent), an earlier copy
    /// may be there: a tombstone goes first, and the key is unfenced when that is acknowledged
    /// ([`Pipeline::release`]). Returns the applied part, to finish like an acknowledged batch.
    pub fn split_refused(&mut self, sent: Sent, n: usize) -> Batch {
        let batch = &sent.batch;
        let applied = batch.entries[..n.min(batch.entries.len())].to_vec();
        let mut rest = Vec::new();
        if let Some(refused) = batch.entries.get(n) {
            if refused.payload == Payload::Tombstone {
                rest.push(refused.clone());
            } else if sent.maybe_delivered {
                self.releasing.push((batch.db, refused.key.clone()));
                rest.push(Entry {
                    key: refused.key.clone(),
                    payload: Payload::Tombstone,
                    expire_at_ms: 0,
                });
            } else {
                self.unfence(&refused.key);
            }
        }
        rest.extend(batch.entries.iter().skip(n + 1).cloned());
        if !rest.is_empty() {
            let id = self.next_id();
            self.park(Sent {
                batch: Arc::new(Batch {
                    id,
                    db: batch.db,
                    bytes: rest.iter().map(Entry::weight).sum(),
                    entries: rest,
                }),
                maybe_delivered: sent.maybe_delivered,
            });
        }
        Batch {
            id: batch.id,
            db: batch.db,
            bytes: applied.iter().map(Entry::weight).sum(),
            entries: applied,
        }
    }

    /// Whether `key` of `db` was refused by the destination and its tombstone (just
    /// acknowledged) was all that had to go: then it is unfenced like a moved key, not sent again.
    pub fn release(&mut self, db: i32, key: &[u8]) -> bool {
        match self
            .releasing
            .iter()
            .position(|(d, k)| *d == db && k[..] == *key)
        {
            Some(at) => {
                self.releasing.swap_remove(at);
                true
            }
            None => false,
        }
    }

    /// Forgets everything (the node became a replica: its master's deletes will follow).
    pub fn reset(&mut self) {
        *self = Pipeline {
            next_id: self.next_id,
            ..Pipeline::default()
        };
    }
}

impl Task {
    pub fn new(meta: MigrationMeta, ranges: Vec<SlotRange>) -> Task {
        let mut slots = vec![false; crate::slot::SLOT_COUNT];
        for r in &ranges {
            for s in r.start..=r.end {
                slots[s as usize] = true;
            }
        }
        Task {
            meta,
            ranges,
            slots,
            state: TaskState::Running,
            keys_moved: 0,
            bytes_moved: 0,
            errors: 0,
            last_error: String::new(),
            keys_estimate: None,
            db: 0,
            cursor: None,
            found_this_pass: 0,
            moved_this_pass: 0,
            retry_at_ms: 0,
            consecutive_failures: 0,
            rate_window_start_ms: 0,
            rate_window_keys: 0,
            keys_per_sec: 0,
            pipe: Pipeline::default(),
            big: VecDeque::new(),
            dump_refused: HashSet::new(),
        }
    }

    pub fn slot_count(&self) -> usize {
        self.slots.iter().filter(|&&s| s).count()
    }

    /// Keys of the task's slots still here, as far as known; `None` before anything is known.
    pub fn keys_left(&self) -> Option<u64> {
        if self.state == TaskState::Done {
            return Some(0);
        }
        self.keys_estimate
            .map(|e| e.saturating_sub(self.moved_this_pass))
    }

    /// A batch of `keys` keys (`bytes` bytes) reached the destination at `now_ms`.
    pub fn moved(&mut self, keys: u64, bytes: u64, now_ms: u64) {
        self.keys_moved += keys;
        self.bytes_moved += bytes;
        self.moved_this_pass += keys;
        if self.state == TaskState::Retrying {
            self.state = TaskState::Running;
        }
        self.consecutive_failures = 0;
        self.tick_rate(now_ms, keys);
    }

    /// Updates the keys-per-second figure over windows of about a second.
    pub fn tick_rate(&mut self, now_ms: u64, keys: u64) {
        if self.rate_window_start_ms == 0 {
            self.rate_window_start_ms = now_ms;
        }
        self.rate_window_keys += keys;
        let elapsed = now_ms.saturating_sub(self.rate_window_start_ms);
        if elapsed >= 1000 {
            self.keys_per_sec = self.rate_window_keys * 1000 / elapsed;
            self.rate_window_start_ms = now_ms;
            self.rate_window_keys = 0;
        }
    }

    /// A batch failed: keys stay here, retry after `backoff_ms`, doubled for every failure in a
    /// row up to 16 times that (a destination that hangs costs the source one batch timeout
    /// per attempt, so attempts must thin out).
    pub fn failed(&mut self, error: String, now_ms: u64, backoff_ms: u64) {
        self.errors += 1;
        self.last_error = error;
        self.state = TaskState::Retrying;
        let factor = 1u64 << self.consecutive_failures.min(4);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.retry_at_ms = now_ms + backoff_ms * factor;
        // Keys that failed to move are still here: the pass cannot end the task.
        self.found_this_pass += 1;
    }

    /// The destination refused one key of a batch and took the others (see
    /// [`Pipeline::split_refused`]): counted and shown, and the move goes on.
    pub fn refused(&mut self, error: String) {
        self.errors += 1;
        self.last_error = error;
    }

    /// A pass ended that found keys but moved none (the destination refused them all): the next
    /// pass waits `backoff_ms`, doubled for every such pass in a row up to 64 times that, so a
    /// key that cannot move does not keep the mover scanning every database.
    pub fn moved_nothing(&mut self, now_ms: u64, backoff_ms: u64) {
        let factor = 1u64 << self.consecutive_failures.min(6);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.state = TaskState::Retrying;
        self.retry_at_ms = now_ms + backoff_ms * factor;
    }

    /// A pass over every database ended. Returns whether the task is now done.
    pub fn end_pass(&mut self) -> bool {
        let found = self.found_this_pass;
        self.keys_estimate = Some(found.saturating_sub(self.moved_this_pass));
        self.found_this_pass = 0;
        self.moved_this_pass = 0;
        self.db = 0;
        self.cursor = None;
        if found == 0 {
            self.state = TaskState::Done;
            self.keys_per_sec = 0;
        }
        self.state == TaskState::Done
    }

    /// The `INFOMGR` line of a finished task (undermoon's format).
    pub fn infomgr_line(&self, cluster_name: &str) -> String {
        let ranges: Vec<String> = self.ranges.iter().map(|r| r.to_string()).collect();
        format!(
            "{} MIGRATING {} {} {} {} {} {} {}",
            cluster_name,
            self.ranges.len(),
            ranges.join(" "),
            self.meta.epoch,
            self.meta.src_proxy,
            self.meta.src_node,
            self.meta.dst_proxy,
            self.meta.dst_node
        )
    }
}

fn ranges_text(ranges: &[SlotRange]) -> String {
    ranges
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Brings `tasks` in line with `topology`: one task per local `migrating` group; an existing task
/// for the same migration and ranges is kept as it is. Returns how many tasks were dropped.
pub fn sync(tasks: &mut Vec<Task>, topology: Option<&Topology>) -> usize {
    let wanted: Vec<(MigrationMeta, Vec<SlotRange>)> = topology
        .map(|t| {
            t.local_migrations()
                .filter_map(|g| match &g.kind {
                    GroupKind::Migrating(meta) => Some((meta.clone(), g.ranges.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let before = tasks.len();
    tasks.retain(|t| wanted.iter().any(|(m, r)| *m == t.meta && *r == t.ranges));
    let dropped = before - tasks.len();
    for (meta, ranges) in wanted {
        if !tasks.iter().any(|t| t.meta == meta && t.ranges == ranges) {
            tasks.push(Task::new(meta, ranges));
        }
    }
    dropped
}

/// `UMCTL INFOMGR`: the finished tasks.
pub fn infomgr(tasks: &[Task], topology: Option<&Topology>) -> Reply {
    let Some(t) = topology else {
        return Reply::Array(Vec::new());
    };
    Reply::Array(
        tasks
            .iter()
            .filter(|task| task.state == TaskState::Done)
            .map(|task| Reply::bulk(task.infomgr_line(&t.cluster_name)))
            .collect(),
    )
}

/// `UMCTL MIGRATIONS`: every task of this node (the source's tasks with their progress; the
/// destination's `importing` groups as `running`), each a flat field/value array.
pub fn migrations(tasks: &[Task], topology: Option<&Topology>) -> Reply {
    let entry = |fields: Vec<(&str, String)>| {
        Reply::Array(
            fields
                .into_iter()
                .flat_map(|(k, v)| [Reply::bulk(k), Reply::bulk(v)])
                .collect(),
        )
    };
    let mut out: Vec<Reply> = tasks
        .iter()
        .map(|t| {
            entry(vec![
                ("ranges", ranges_text(&t.ranges)),
                ("role", "migrating".into()),
                ("epoch", t.meta.epoch.to_string()),
                ("src", t.meta.src_proxy.to_string()),
                ("dst", t.meta.dst_proxy.to_string()),
                ("state", t.state.as_str().into()),
                ("keys_moved", t.keys_moved.to_string()),
                ("bytes_moved", t.bytes_moved.to_string()),
                (
                    "keys_left",
                    t.keys_left().map_or("-1".into(), |k| k.to_string()),
                ),
                ("keys_per_sec", t.keys_per_sec.to_string()),
                ("errors", t.errors.to_string()),
                ("last_error", t.last_error.clone()),
            ])
        })
        .collect();
    if let Some(topology) = topology {
        for g in topology.local_migrations() {
            if let GroupKind::Importing(meta) = &g.kind {
                out.push(entry(vec![
                    ("ranges", ranges_text(&g.ranges)),
                    ("role", "importing".into()),
                    ("epoch", meta.epoch.to_string()),
                    ("src", meta.src_proxy.to_string()),
                    ("dst", meta.dst_proxy.to_string()),
                    ("state", "running".into()),
                    ("keys_moved", "0".into()),
                    ("bytes_moved", "0".into()),
                    ("keys_left", "-1".into()),
                    ("keys_per_sec", "0".into()),
                    ("errors", "0".into()),
                    ("last_error", String::new()),
                ]));
            }
        }
    }
    Reply::Array(out)
}

/// Totals for `INFO umcluster`: (running tasks, keys left or -1 when unknown, keys per second).
pub fn totals(tasks: &[Task]) -> (usize, i64, u64) {
    let running = tasks.iter().filter(|t| t.state != TaskState::Done).count();
    let mut left = 0i64;
    for t in tasks {
        match t.keys_left() {
            Some(k) => left += k as i64,
            None => return (running, -1, tasks.iter().map(|t| t.keys_per_sec).sum()),
        }
    }
    (running, left, tasks.iter().map(|t| t.keys_per_sec).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::setcluster;

    fn topology(text: &str) -> Topology {
        let args: Vec<&[u8]> = text.split(' ').map(str::as_bytes).collect();
        let sc = setcluster::parse(&args).expect("valid SETCLUSTER");
        Topology::new(sc.epoch, sc.cluster_name, sc.local, sc.peers, sc.config)
    }

    const MIGRATING: &str = "v2 5 NOFLAG c 127.0.0.1:7001 1 101-16383 \
        127.0.0.1:7001 migrating 1 0-100 4 127.0.0.1:7001 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7002 \
        PEER 127.0.0.1:7002 importing 1 0-100 4 127.0.0.1:7001 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7002";

    #[test]
    fn sync_creates_one_task_per_migrating_group_and_keeps_it_across_repushes() {
        let mut tasks = Vec::new();
        let t = topology(MIGRATING);
        assert_eq!(sync(&mut tasks, Some(&t)), 0);
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].slot_count(), 101);
        assert!(tasks[0].slots[100] && !tasks[0].slots[101]);
        tasks[0].moved(7, 70, 1);
        let again = topology(&MIGRATING.replacen("v2 5", "v2 6", 1));
        assert_eq!(sync(&mut tasks, Some(&again)), 0);
        assert_eq!(
            tasks[0].keys_moved, 7,
            "a re-push keeps the task's progress"
        );
        let committed =
            topology("v2 7 NOFLAG c 127.0.0.1:7001 1 101-16383 PEER 127.0.0.1:7002 1 0-100");
        assert_eq!(sync(&mut tasks, Some(&committed)), 1);
        assert!(tasks.is_empty());
    }

    #[test]
    fn a_pass_that_finds_nothing_finishes_the_task_and_infomgr_lists_it() {
        let t = topology(MIGRATING);
        let mut tasks = Vec::new();
        sync(&mut tasks, Some(&t));
        assert_eq!(infomgr(&tasks, Some(&t)), Reply::Array(vec![]));
        tasks[0].found_this_pass = 3;
        tasks[0].moved(3, 30, 5);
        assert!(
            !tasks[0].end_pass(),
            "keys were met: another pass is needed"
        );
        assert_eq!(tasks[0].keys_left(), Some(0));
        assert!(tasks[0].end_pass());
        assert_eq!(
            infomgr(&tasks, Some(&t)),
            Reply::Array(vec![Reply::bulk(
                "c MIGRATING 1 0-100 4 127.0.0.1:7001 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7002"
            )])
        );
    }

    #[test]
    fn the_rate_falls_to_zero_when_nothing_moves() {
        let t = topology(MIGRATING);
        let mut tasks = Vec::new();
        sync(&mut tasks, Some(&t));
        let task = &mut tasks[0];
        task.moved(500, 5000, 1000);
        task.moved(700, 7000, 2000);
        assert_eq!(task.keys_per_sec, 1200);
        task.tick_rate(2500, 0);
        assert_eq!(task.keys_per_sec, 1200, "the window is still open");
        task.tick_rate(3100, 0);
        assert_eq!(task.keys_per_sec, 0, "a second with nothing moved");
    }

    #[test]
    fn passes_that_move_nothing_thin_out_until_a_key_moves() {
        let t = topology(MIGRATING);
        let mut tasks = Vec::new();
        sync(&mut tasks, Some(&t));
        let task = &mut tasks[0];
        task.refused("destination refused key 'k' of db 0: Bad data format".into());
        assert_eq!(
            (task.errors, task.state),
            (1, TaskState::Running),
            "no pause for one key"
        );
        let waits: Vec<u64> = (0..9)
            .map(|_| {
                task.moved_nothing(1000, 500);
                assert_eq!(task.state, TaskState::Retrying);
                task.retry_at_ms - 1000
            })
            .collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 32000, 32000]
        );
        task.moved(1, 10, 2000);
        task.moved_nothing(3000, 500);
        assert_eq!(
            task.retry_at_ms, 3500,
            "a key moved: back to the first pause"
        );
    }

    #[test]
    fn a_failed_batch_retries_later_and_keeps_the_pass_open() {
        let t = topology(MIGRATING);
        let mut tasks = Vec::new();
        sync(&mut tasks, Some(&t));
        tasks[0].failed("IOERR".into(), 1000, 200);
        assert_eq!(tasks[0].state, TaskState::Retrying);
        assert_eq!(tasks[0].retry_at_ms, 1200);
        tasks[0].failed("IOERR".into(), 1200, 200);
        assert_eq!(tasks[0].retry_at_ms, 1600, "backoff doubles");
        assert!(!tasks[0].end_pass());
        tasks[0].moved(1, 1, 1300);
        assert_eq!(tasks[0].state, TaskState::Running);
        let Reply::Array(entries) = migrations(&tasks, Some(&t)) else {
            panic!("array")
        };
        assert_eq!(entries.len(), 1);
        let Reply::Array(fields) = &entries[0] else {
            panic!("array")
        };
        assert!(fields.contains(&Reply::bulk("IOERR")));
    }

    fn batch(p: &mut Pipeline, keys: &[&str]) -> Sent {
        let entries = keys
            .iter()
            .map(|k| {
                p.fence(k.as_bytes());
                crate::transfer::Entry {
                    key: k.as_bytes().to_vec().into(),
                    payload: crate::transfer::Payload::Str(b"v".to_vec().into()),
                    expire_at_ms: 0,
                }
            })
            .collect();
        let id = p.next_id();
        Sent {
            batch: Arc::new(Batch {
                id,
                db: 0,
                entries,
                bytes: 2 * keys.len() as u64,
            }),
            maybe_delivered: false,
        }
    }

    #[test]
    fn ticks_take_an_idle_loop_and_leave_a_busy_one_to_the_clients() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        for chained in [false, true] {
            assert_eq!(tick_budget(Some(Duration::ZERO), chained), MAX_TICK_BUDGET);
            assert_eq!(tick_budget(Some(us(1400)), chained), us(600));
            assert_eq!(tick_budget(Some(ms(100)), chained), MAX_TICK_BUDGET);
            assert_eq!(tick_budget(Some(us(300)), chained), MIN_TICK_BUDGET);
            assert_eq!(tick_budget(None, chained), MIN_TICK_BUDGET);
        }
        // After a timer's wait, a little client work is an idle loop; one pass of the loop
        // apart, the same work is clients kept waiting by the previous tick.
        assert_eq!(tick_budget(Some(us(120)), false), MAX_TICK_BUDGET);
        assert_eq!(tick_budget(Some(us(120)), true), MIN_TICK_BUDGET);
        assert!(loop_idle(Some(us(10)), true) && !loop_idle(Some(us(120)), true));
        assert!(!loop_idle(None, false));
    }

    #[test]
    fn fingerprints_tell_names_apart() {
        let names: Vec<Vec<u8>> = (0..10_000)
            .map(|i| format!("key:{i:012}").into_bytes())
            .chain([b"".to_vec(), b"a".to_vec(), b"a\0".to_vec()])
            .collect();
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            assert!(seen.insert(fingerprint(n)), "{n:?}");
        }
    }

    #[test]
    fn a_key_is_fenced_new_once() {
        let mut p = Pipeline::default();
        assert!(p.fence_new(b"a"));
        assert!(!p.fence_new(b"a"), "met twice: fenced already");
        assert!(p.is_fenced(b"a") && !p.is_fenced(b"b"));
        p.unfence(b"a");
        assert!(!p.is_fenced(b"a") && !p.any_fenced());
        assert!(p.fence_new(b"a"));
    }

    #[test]
    fn keys_stay_fenced_until_known_not_to_have_left() {
        let mut p = Pipeline::default();
        let first = batch(&mut p, &["a", "b"]);
        p.sent(first);
        let second = batch(&mut p, &["b", "c"]);
        p.sent(second);
        assert!(p.is_fenced(b"a") && p.is_fenced(b"b") && p.is_fenced(b"c"));
        assert_eq!((p.keys, p.bytes), (4, 8));
        // Out of order: refused.
        assert!(p.take_acked(2).is_none());
        let acked = p.take_acked(1).unwrap();
        for e in &acked.batch.entries {
            p.unfence(&e.key);
        }
        assert!(
            !p.is_fenced(b"a") && p.is_fenced(b"b"),
            "b is in the second batch too"
        );
        // A connection that had been made fails: the batch may have arrived, it stays fenced.
        p.link_failed(true);
        assert_eq!(p.parked.len(), 1);
        assert!(p.is_fenced(b"c") && !p.idle());
        // Re-sent on a link that never connects: still possibly delivered by the first one.
        for again in p.take_parked() {
            p.sent(again);
        }
        p.link_failed(false);
        assert_eq!(p.parked.len(), 1, "delivered once maybe, so still parked");
        // A batch only ever given to a link that never connected is released.
        let fresh = batch(&mut p, &["d"]);
        p.sent(fresh);
        p.link_failed(false);
        assert!(!p.is_fenced(b"d"));
        assert_eq!(p.keys, 2);
    }

    #[test]
    fn a_refused_key_is_let_go_and_the_keys_after_it_are_sent_again() {
        let mut p = Pipeline::default();
        let sent = batch(&mut p, &["a", "b", "c", "d"]);
        p.sent(sent);
        let refused = p.take_acked(1).unwrap();
        let applied = p.split_refused(refused, 1);
        let names = |b: &Batch| b.entries.iter().map(|e| e.key.to_vec()).collect::<Vec<_>>();
        assert_eq!(
            names(&applied),
            [b"a".to_vec()],
            "applied: the entries before it"
        );
        assert_eq!((applied.id, applied.bytes), (1, 2));
        assert!(
            !p.is_fenced(b"b"),
            "never delivered anywhere: clients may use it at once"
        );
        assert!(p.is_fenced(b"a") && p.is_fenced(b"c") && p.is_fenced(b"d"));
        assert_eq!(p.parked.len(), 1);
        let rest = &p.parked[0].batch;
        assert_eq!(names(rest), [b"c".to_vec(), b"d".to_vec()]);
        assert!(rest.id > 1, "a new id: it goes after what is in flight");
        assert_eq!((p.keys, p.bytes), (2, 4));
        assert!(
            !p.release(0, b"b"),
            "nothing to release: no tombstone was sent"
        );

        // The last entry refused: nothing is sent again.
        let mut p = Pipeline::default();
        let sent = batch(&mut p, &["a", "b"]);
        p.sent(sent);
        let refused = p.take_acked(1).unwrap();
        assert_eq!(p.split_refused(refused, 1).entries.len(), 1);
        assert!(p.parked.is_empty() && p.idle() && !p.is_fenced(b"b"));
    }

    #[test]
    fn a_refused_key_of_a_batch_that_may_have_arrived_before_goes_as_a_tombstone_first() {
        let mut p = Pipeline::default();
        let mut sent = batch(&mut p, &["a", "b"]);
        sent.maybe_delivered = true;
        p.sent(sent);
        let refused = p.take_acked(1).unwrap();
        assert!(p.split_refused(refused, 0).entries.is_empty());
        assert!(
            p.is_fenced(b"a"),
            "an earlier copy may be there: fenced until it is deleted"
        );
        let rest = &p.parked[0].batch;
        assert_eq!(rest.entries[0].key, &b"a"[..]);
        assert_eq!(rest.entries[0].payload, crate::transfer::Payload::Tombstone);
        assert_eq!(rest.entries[1].key, &b"b"[..]);
        assert!(
            p.release(0, b"a"),
            "its tombstone, once acknowledged, releases it"
        );
        assert!(!p.release(0, b"a") && !p.release(0, b"b"));
    }

    fn piece(p: &mut Pipeline, db: i32, key: &str, first: bool, last: bool) -> Sent {
        let id = p.next_id();
        Sent {
            batch: Arc::new(Batch {
                id,
                db,
                entries: vec![crate::transfer::Entry {
                    key: key.as_bytes().to_vec().into(),
                    payload: Payload::Piece(crate::transfer::Piece {
                        of: Collection::List,
                        first,
                        last,
                        elements: vec![1, 0, 0, 0, b'x'],
                    }),
                    expire_at_ms: 0,
                }],
                bytes: 10,
            }),
            maybe_delivered: true,
        }
    }

    #[test]
    fn a_failed_link_drops_the_pieces_and_names_their_keys_once_in_order() {
        let mut p = Pipeline::default();
        p.fence(b"big1");
        p.fence(b"big2");
        let whole = batch(&mut p, &["a"]);
        p.sent(whole);
        for sent in [
            piece(&mut p, 0, "big1", false, true),
            piece(&mut p, 2, "big2", true, false),
            piece(&mut p, 2, "big2", false, false),
        ] {
            p.sent(sent);
        }
        // Never connected: the whole batch is released, the pieces are kept (and fenced).
        p.link_failed(false);
        assert!(!p.is_fenced(b"a"));
        assert_eq!(p.parked.len(), 3);
        assert_eq!(
            p.drop_parked_pieces(),
            vec![(0, b"big1".to_vec()), (2, b"big2".to_vec())]
        );
        assert!(p.parked.is_empty() && p.idle());
        assert_eq!((p.keys, p.bytes), (0, 0));
        assert!(
            p.is_fenced(b"big1") && p.is_fenced(b"big2"),
            "their jobs hold the fences"
        );
        let mut job = BigKey::new(2, b"big2".to_vec());
        job.of = Some(Collection::List);
        job.next_index = 5;
        job.next_id = StreamId { ms: 9, seq: 1 };
        job.pieces = 2;
        job.restart();
        assert_eq!(
            (job.db, &job.name[..], job.of, job.next_index, job.pieces),
            (2, &b"big2"[..], None, 0, 0)
        );
        assert_eq!(job.next_id, StreamId { ms: 0, seq: 0 });
    }

    #[test]
    fn the_destination_lists_its_importing_group() {
        let t = topology(
            "v2 5 NOFLAG c 127.0.0.1:7002 importing 1 0-100 4 127.0.0.1:7001 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7002 \
             PEER 127.0.0.1:7001 1 101-16383 127.0.0.1:7001 migrating 1 0-100 4 127.0.0.1:7001 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7002",
        );
        let mut tasks = Vec::new();
        sync(&mut tasks, Some(&t));
        assert!(tasks.is_empty());
        let Reply::Array(entries) = migrations(&tasks, Some(&t)) else {
            panic!("array")
        };
        assert_eq!(entries.len(), 1);
        assert_eq!(totals(&tasks), (0, 0, 0));
    }
}
