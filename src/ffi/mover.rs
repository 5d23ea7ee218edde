//! The source side of slot migration, on the main thread: ticks (back to back, one pass of the
//! event loop apart, while keys remain; on a timer while waiting) that find the keys of the
//! migrating slots, copy them into batches for the background sender
//! ([`crate::transfer::Link`]), and deletes them here once the destination acknowledged them.
//!
//! Why this split: everything that touches the keyspace must run on the main thread, but waiting
//! for the destination must not. So a tick only does memory work — scan a few buckets, copy
//! string values (the sender builds their `DUMP` payloads and checksums), `DUMP` other types,
//! delete acknowledged keys with one replicated `UNLINK` per batch — for at most a few milliseconds
//! ([`crate::migration::tick_budget`]: all of an idle loop, 30 % of a busy one),
//! and the transfer and the destination's `RESTORE`s overlap with the source serving clients.
//! Several batches are in flight at once (up to [`MAX_IN_FLIGHT_KEYS`] keys /
//! [`MAX_IN_FLIGHT_BYTES`]).
//!
//! What keeps every write while a copy is on its way: the keys of a batch are *fenced* from
//! the moment they are copied until they are deleted here after the acknowledgement (see
//! [`crate::migration::Pipeline`]); the filter answers `TRYAGAIN` to a write of a fenced key, so
//! the value that was copied is the value that is deleted. An acknowledged key is still checked
//! before it is deleted (strings: value and expiry; other types: expiry), and one that changed
//! anyway (a path the filter does not see) or vanished (expiry, eviction, `FLUSHALL`) is sent
//! again — the latter as a tombstone that deletes the destination's copy — before its fence
//! lifts. A transaction queued before its keys were fenced or deleted and executed after is
//! aborted: every batch bumps the table version, and `EXEC` of a transaction on a migrating slot
//! queued before that is refused (the filter's existing `EXECABORT` path).
//!
//! Finding keys: standalone Redis keeps no slot index, so each task walks every database with
//! `RedisModule_Scan`, resumable across ticks. A pass over all databases that meets no key of the
//! task's slots, with nothing in flight, finishes the task. Keys cannot appear in a migrating slot
//! behind the scan: the router sends a command whose keys are missing here to the destination
//! (`ASK`).
//!
//! Big collections: a hash, set, sorted set or list of more than [`PIECE_ITEMS`] items, or of
//! more than [`WEIGH_ITEMS`] that takes more than [`HEAVY_BYTES`], and a stream of more than
//! [`PIECE_ITEMS`] entries without consumer groups, moves in pieces (see
//! [`crate::transfer::Piece`]) read across ticks — `RedisModule_ScanKey`, list indexes, the
//! stream iterator — instead of one `DUMP`, which would hold this loop for its serialization
//! and the destination's for its `RESTORE` (a million fields: about 0.7 s each). The key stays fenced
//! from the scan that meets it until its last piece is acknowledged; a failed link makes it start
//! over from the first piece, which replaces what the destination holds of it. Acknowledged keys
//! are unlinked (a big value is freed by the server's lazy-free thread).
//!
//! A huge key otherwise: strings are copied on the main thread (a memory copy, about 10 ms for
//! 100 MB); streams with consumer groups and module types are serialized by the server's
//! `DUMP`, which holds the loop for as long as it takes (and the destination's `RESTORE` holds
//! the destination's).

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::c_void;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use redis_module::raw;

use super::{call, guard, log_notice, log_warning, rm, string_bytes, DetachedContext};
use crate::migration::{
    loop_idle, tick_budget, BigKey, Pipeline, ScanCursor, Sent, Task, TaskState, MIN_TICK_BUDGET,
};
use crate::resp::Value;
use crate::slot::key_slot;
use crate::state::{self, State};
use crate::transfer::{
    pack_element, refused_entry, Batch, Collection, Delivery, Entry, Event, Link, LinkConfig,
    Payload, Piece, StreamId, IMPORT_COMMAND,
};

/// Most keys in one batch.
pub const BATCH_KEYS: usize = 256;
/// Most bytes (names and values) in one batch, unless a single key is bigger.
pub const BATCH_BYTES: u64 = 1 << 20;
/// Most keys handed to the sender and not yet acknowledged. Small on purpose: an acknowledged
/// key is looked up again to be deleted, and that is cheaper while it is still in the CPU's cache
/// (measured, 3 M keys: 2 µs of main-thread time per key with 2,048 in flight, 3 µs with 4,096
/// or 16,384; with 512 the loop waits for the destination).
pub const MAX_IN_FLIGHT_KEYS: usize = 2048;
/// Most bytes handed to the sender and not yet acknowledged.
pub const MAX_IN_FLIGHT_BYTES: u64 = 4 << 20;
/// Pause between ticks while a task waits for acknowledgements (or when the server has no
/// one-shot events), unless the topology's `migration_scan_interval` (µs) asks for a longer one.
pub const TICK_PERIOD_MS: i64 = 1;
/// Pause between ticks when every task waits (retry backoff, done, replica).
const IDLE_PERIOD_MS: i64 = 100;
/// Wait after a failed link or a refused batch before the next attempt (doubling, see
/// [`Task::failed`]).
const RETRY_BACKOFF_MS: u64 = 500;
/// How long the destination may take to answer a batch (plus a second per 10 MB of it, see
/// `transfer::reply_wait`) before the link is dropped and its batches parked.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A tick this long is logged.
const LONG_TICK: Duration = Duration::from_millis(20);

thread_local! {
    /// CPU time ticks took beyond their budgets and have not paid back yet.
    static OVER_BUDGET: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// The main thread's CPU time when the last tick ended.
    static LAST_TICK_END_CPU: Cell<Option<Duration>> = const { Cell::new(None) };
    /// The scheduled tick, if any (main thread only).
    static ARMED: Cell<Option<raw::RedisModuleTimerID>> = const { Cell::new(None) };
    /// The last tick queued the next one for the next pass of the event loop.
    static CHAINED: Cell<bool> = const { Cell::new(false) };
}

/// The last tick ended waiting for the destination: the next event the link reports should
/// start a tick at once instead of at the 1 ms timer (see [`wake_if_waiting`]).
static WAITING: AtomicBool = AtomicBool::new(false);

/// A one-shot event will arm the next tick (see [`schedule_soon`]; the link's threads queue them
/// too, see [`wake_if_waiting`]).
static SOON_QUEUED: AtomicBool = AtomicBool::new(false);

/// Context for arming timers outside a timer callback (see [`schedule_soon`]): made at load,
/// used on the main thread only, for `RedisModule_CreateTimer`/`StopTimer`.
pub static TIMER_CTX: DetachedContext = DetachedContext::new();

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Schedules the next tick by the topology in force (replacing a scheduled one, whose period
/// may come from an older topology) when there is a task to work on. Called after every
/// accepted `SETCLUSTER` and at load.
///
/// # Safety
/// `ctx` is a valid module context on the main thread.
pub unsafe fn ensure_timer(ctx: *mut raw::RedisModuleCtx) {
    let has_work = state::try_with(|st| st.migrations.iter().any(|t| t.state != TaskState::Done))
        .unwrap_or(false);
    if !has_work {
        return;
    }
    if let Some(id) = ARMED.with(Cell::take) {
        rm!(RedisModule_StopTimer)(ctx, id, std::ptr::null_mut());
    }
    let period = state::try_with(busy_period).unwrap_or(TICK_PERIOD_MS);
    arm(ctx, period);
}

/// The pause between busy ticks: [`TICK_PERIOD_MS`], or the topology's `migration_scan_interval`
/// when that is longer (a control plane slows a migration down with it; tests hold one open).
fn busy_period(st: &State) -> i64 {
    let interval_ms = st
        .topology
        .as_ref()
        .map_or(0, |t| t.config.migration_scan_interval / 1000);
    (interval_ms.min(i64::MAX as u64) as i64).max(TICK_PERIOD_MS)
}

unsafe fn arm(ctx: *mut raw::RedisModuleCtx, period_ms: i64) {
    let id = rm!(RedisModule_CreateTimer)(ctx, period_ms, Some(tick), std::ptr::null_mut());
    ARMED.with(|a| a.set(Some(id)));
}

/// Whether a tick is queued for the next pass of the event loop (module unload must wait).
pub fn tick_queued() -> bool {
    SOON_QUEUED.load(Ordering::Acquire)
}

/// Runs the next tick after one more pass of the event loop (the clients that are ready are
/// served first) instead of after a timer: the server's module timers fire at most once per
/// millisecond, which left an idle source's loop unused for a fifth or more of the time (1 ms after
/// each tick of at most a few ms). The server
/// runs one-shot events when its module pipe is readable; the callback there arms a timer due
/// at once, which the same pass of the loop fires (so the tick still runs with a timer's context,
/// as every other tick). Falls back to the 1 ms timer on a server without one-shot events.
/// Returns whether the tick was queued that way.
unsafe fn schedule_soon(ctx: *mut raw::RedisModuleCtx) -> bool {
    let queued = queue_soon();
    if !queued {
        arm(ctx, TICK_PERIOD_MS);
    }
    queued
}

/// The link's wake-up (called on its threads after each event): when the main thread waits for
/// acknowledgements, queues a tick for the next pass of the event loop. The timer stays armed as
/// the fallback.
fn wake_if_waiting() {
    if WAITING.swap(false, Ordering::AcqRel) {
        queue_soon();
    }
}

/// Queues [`run_soon`] as a one-shot event unless one is queued already (any thread may: the
/// server locks its one-shot queue). False when the server cannot: no one-shot events, or no
/// timer context.
fn queue_soon() -> bool {
    if SOON_QUEUED.swap(true, Ordering::AcqRel) {
        return true;
    }
    // SAFETY: reading a function pointer RedisModule_Init filled in and never changes;
    // `run_soon` runs on the main thread.
    let queued = !TIMER_CTX.get().is_null()
        && unsafe {
            raw::RedisModule_EventLoopAddOneShot.is_some_and(|add| {
                add(Some(run_soon), std::ptr::null_mut()) == raw::REDISMODULE_OK as c_int
            })
        };
    if !queued {
        SOON_QUEUED.store(false, Ordering::Release);
    }
    queued
}

extern "C" fn run_soon(_data: *mut c_void) {
    SOON_QUEUED.store(false, Ordering::Release);
    guard(
        "the migration wake-up",
        || {
            let ctx = TIMER_CTX.get();
            if ctx.is_null() {
                return;
            }
            // SAFETY: one-shot events run on the main thread; `ctx` lives until unload, which
            // is refused while a tick is queued.
            unsafe {
                if let Some(id) = ARMED.with(Cell::take) {
                    rm!(RedisModule_StopTimer)(ctx, id, std::ptr::null_mut());
                }
                arm(ctx, 0);
            }
        },
        |_| (),
    )
}

extern "C" fn tick(ctx: *mut raw::RedisModuleCtx, _data: *mut c_void) {
    ARMED.with(|a| a.set(None));
    let started = Instant::now();
    let cpu_started = thread_cpu_time();
    let (budget, idle) = this_tick_budget(cpu_started);
    // SAFETY: the server calls timers on the main thread with a valid context.
    let next = guard(
        "the migration timer",
        || unsafe { run_tick(ctx, started + budget) },
        |_| Some(Next::After(IDLE_PERIOD_MS)),
    );
    let cpu_ended = thread_cpu_time();
    LAST_TICK_END_CPU.with(|c| c.set(cpu_ended));
    let on_cpu = cpu_started.zip(cpu_ended).map(|(a, b)| b.saturating_sub(a));
    report_long_tick(started.elapsed(), on_cpu);
    if let Some(cpu) = on_cpu {
        let over = cpu.saturating_sub(budget);
        OVER_BUDGET.with(|d| d.set((d.get() + over).min(Duration::from_secs(1))));
        let _ = state::try_with_mut(|st| st.stats.migration_cpu_us += cpu.as_micros() as u64);
    }
    // Back to back only while the clients leave the loop idle: between chained ticks a closed
    // loop of clients (each waiting for its replies) has little ready work at every pass, which
    // would read as idle and hand the mover most of the loop; the timer's wait lets them run.
    let next = match next {
        Some(Next::Soon) if !idle => Some(Next::After(TICK_PERIOD_MS)),
        next => next,
    };
    WAITING.store(
        idle && next == Some(Next::After(TICK_PERIOD_MS)),
        Ordering::Release,
    );
    // SAFETY: as above.
    let chained = match next {
        Some(Next::Soon) => unsafe { schedule_soon(ctx) },
        Some(Next::After(period)) => {
            unsafe { arm(ctx, period) };
            false
        }
        None => false,
    };
    CHAINED.with(|c| c.set(chained));
}

/// When a task wants its next tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// After one more pass of the event loop: the tick ran out of budget with keys to move.
    Soon,
    /// After this many milliseconds: waiting for the destination, or slowed by the topology.
    After(i64),
}

/// How long the tick starting now (main-thread CPU time `cpu_now`) may work, and whether the loop
/// was idle since the last tick: from the CPU the
/// clients used since the last tick (see `migration::tick_budget`), capped by the control
/// plane's `migration_max_blocking_time` (ms; it lowers the cap, never raises it), minus CPU
/// earlier ticks took beyond their budgets (a big key), which is paid back first.
fn this_tick_budget(cpu_now: Option<Duration>) -> (Duration, bool) {
    let client_cpu = LAST_TICK_END_CPU
        .with(Cell::get)
        .zip(cpu_now)
        .map(|(a, b)| b.saturating_sub(a));
    let chained = CHAINED.with(Cell::get);
    let cap_ms = state::try_with(|st| {
        st.topology
            .as_ref()
            .map_or(u64::MAX, |t| t.config.migration_max_blocking_time)
    })
    .unwrap_or(u64::MAX);
    let base = tick_budget(client_cpu, chained).min(Duration::from_millis(cap_ms.max(1)));
    let debt = OVER_BUDGET.with(Cell::get);
    let budget = base.saturating_sub(debt).max(MIN_TICK_BUDGET);
    OVER_BUDGET.with(|d| d.set(debt.saturating_sub(base.saturating_sub(budget))));
    (budget, loop_idle(client_cpu, chained))
}

/// Logs a tick that held the event loop much longer than its budget (a huge key, a slow
/// `DUMP`), at most once every 10 s.
fn report_long_tick(took: Duration, on_cpu: Option<Duration>) {
    thread_local! {
        static LAST_REPORT: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    if took < LONG_TICK {
        return;
    }
    let due = LAST_REPORT.with(|r| {
        r.get()
            .map_or(true, |t| t.elapsed() >= Duration::from_secs(10))
    });
    if due {
        LAST_REPORT.with(|r| r.set(Some(Instant::now())));
        // Wall time far above CPU time: the thread was descheduled (a busy machine), not busy.
        let cpu = on_cpu.map_or("?".to_string(), |c| c.as_millis().to_string());
        log_notice(&format!(
            "umcluster: a migration tick held the event loop for {} ms ({cpu} ms on CPU)",
            took.as_millis()
        ));
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    ok.then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// One tick: works on every task until the budget is spent. Returns when to come back, `None`
/// when no task needs a tick any more.
unsafe fn run_tick(ctx: *mut raw::RedisModuleCtx, deadline: Instant) -> Option<Next> {
    let flags = rm!(RedisModule_GetContextFlags)(ctx) as u32;
    let replica = flags & raw::REDISMODULE_CTX_FLAGS_SLAVE != 0;
    let loading = flags & raw::REDISMODULE_CTX_FLAGS_LOADING != 0;
    let databases = database_count(ctx);
    state::try_with_mut(|st| {
        if st.migrations.iter().all(|t| t.state == TaskState::Done) {
            return None;
        }
        // A replica follows its master's deletes; it never moves keys itself.
        if replica || loading {
            for t in &mut st.migrations {
                t.pipe.reset();
                t.big.clear();
            }
            return Some(Next::After(IDLE_PERIOD_MS));
        }
        let mut want = Want::Nothing;
        for i in 0..st.migrations.len() {
            want = want.max(step_task(ctx, st, i, databases, deadline));
        }
        let slowed_to = busy_period(st);
        Some(match want {
            Want::More if slowed_to <= TICK_PERIOD_MS => Next::Soon,
            Want::More | Want::Wait => Next::After(slowed_to),
            Want::Nothing => Next::After(IDLE_PERIOD_MS),
        })
    })
    .flatten()
}

/// What a task needs from the next tick, least to most urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Want {
    /// Nothing soon: done, a replica, or backing off after a failure.
    Nothing,
    /// To see acknowledgements: the most keys are in flight, or the pass waits for them.
    Wait,
    /// To go on: the tick's budget ran out with work left.
    More,
}

/// Works on task `i` until the tick's budget is spent, the task waits, or it is done. Returns
/// what it wants from the next tick.
unsafe fn step_task(
    ctx: *mut raw::RedisModuleCtx,
    st: &mut State,
    i: usize,
    databases: i32,
    deadline: Instant,
) -> Want {
    if st.migrations[i].state == TaskState::Done {
        return Want::Nothing;
    }
    handle_events(ctx, st, i, deadline);
    let now = now_ms();
    {
        let task = &mut st.migrations[i];
        // The rate's window closes with nothing moved too (waiting, retrying): no stale rate.
        task.tick_rate(now, 0);
        if task.state == TaskState::Retrying && now < task.retry_at_ms {
            return Want::Nothing;
        }
        if task.keys_estimate.is_none() && task.db == 0 && task.cursor.is_none() {
            let guess = estimate(ctx, st, i, databases);
            st.migrations[i].keys_estimate = Some(guess);
        }
    }
    let task = &mut st.migrations[i];
    if task.pipe.link.is_none() {
        let dst = &task.meta.dst_node;
        let host = dst.host.trim_matches(['[', ']']).to_string();
        let port = dst.port;
        task.pipe.link = Some(Link::open(
            &host,
            port,
            LinkConfig {
                connect_timeout: CONNECT_TIMEOUT,
                reply_timeout: REPLY_TIMEOUT,
                auth: super::peer_credentials(ctx),
                wake: wake_if_waiting,
                delivery: task.pipe.delivery,
            },
        ));
        for sent in task.pipe.take_parked() {
            hand_over(&mut task.pipe, sent);
        }
    }
    let mut sent_any = resend_changed(ctx, task);

    while Instant::now() < deadline {
        let task = &mut st.migrations[i];
        if task.pipe.keys >= MAX_IN_FLIGHT_KEYS || task.pipe.bytes >= MAX_IN_FLIGHT_BYTES {
            break;
        }
        if !task.big.is_empty() {
            // The big collections met so far go first, a piece at a time.
            if pieces_allowed(&task.pipe) {
                st.stats.migration_pieces += u64::from(next_piece(ctx, task));
            } else {
                // The destination no longer takes imports: whole `DUMP`s (each job's fence
                // goes with its key to the resend list).
                for job in std::mem::take(&mut task.big) {
                    task.pipe.resend.push((job.db, job.name));
                }
            }
            sent_any = true;
            continue;
        }
        if task.db >= databases {
            // The pass is over; its verdict needs every key it sent settled.
            if !task.pipe.idle() {
                break;
            }
            let moved_nothing = task.moved_this_pass == 0;
            if task.end_pass() {
                task.pipe.link = None;
                log_notice(&format!(
                    "umcluster: migration of {} to {} done: {} keys moved",
                    ranges(task),
                    task.meta.dst_proxy,
                    task.keys_moved
                ));
                return Want::Nothing;
            }
            if moved_nothing {
                task.moved_nothing(now_ms(), RETRY_BACKOFF_MS);
                break;
            }
            continue;
        }
        let db = task.db;
        let (batch, db_finished) = collect_batch(ctx, task, deadline);
        if db_finished {
            task.cursor = None;
            task.db += 1;
        }
        if let Some(mut batch) = batch {
            batch.id = task.pipe.next_id();
            batch.db = db;
            hand_over(
                &mut task.pipe,
                Sent {
                    batch: Arc::new(batch),
                    maybe_delivered: false,
                },
            );
            sent_any = true;
        }
    }
    if sent_any {
        // Transactions queued on these slots before these keys were fenced must not run.
        st.table_version += 1;
    }
    if Instant::now() >= deadline {
        Want::More
    } else {
        Want::Wait
    }
}

/// Keys with more items than this (hash fields, members, elements) move in pieces.
pub const PIECE_ITEMS: usize = 1000;
/// Most bytes of elements in one piece, unless one element is bigger.
const PIECE_BYTES: usize = 1 << 20;

/// Whether big collections may go in pieces: the link sends imports. (A destination without the
/// module refuses the first one, pieces included; the link then falls back to whole `RESTORE`s,
/// and the keys whose pieces were refused go whole too.)
fn pieces_allowed(pipe: &Pipeline) -> bool {
    pipe.delivery == Delivery::Import
}

/// The collection an open key holds, if it moves in pieces for its item count alone: a hash,
/// set, sorted set or list of more than [`PIECE_ITEMS`] items. (A big stream is looked at
/// first, see [`worth_weighing`]; module types go whole, by `DUMP`.)
unsafe fn big_collection(key: *mut raw::RedisModuleKey) -> Option<Collection> {
    collection_kind(key)
        .filter(|of| *of != Collection::Stream && rm!(RedisModule_ValueLength)(key) > PIECE_ITEMS)
}

/// Items above which a collection with few of them is weighed ([`goes_in_pieces`]): below, the server
/// keeps it compact (listpack, intset: 128 entries of at most 64 bytes by default) unless its
/// elements are long, and a few long elements are what a `DUMP` copies quickly enough.
const WEIGH_ITEMS: usize = 64;
/// A collection of [`PIECE_ITEMS`] items or fewer that takes more memory than this moves in
/// pieces too (its `DUMP` would copy, and try to compress, all of it at once).
const HEAVY_BYTES: i64 = 4 << 20;

/// Whether an open key may move in pieces, to be decided by [`goes_in_pieces`] (which calls the
/// server, so not inside its scan): a stream of more than [`PIECE_ITEMS`] entries, or another
/// collection of at most that many items but more than [`WEIGH_ITEMS`] (big elements could make
/// it big). Returns its kind.
unsafe fn worth_weighing(key: *mut raw::RedisModuleKey) -> Option<Collection> {
    let of = collection_kind(key)?;
    let threshold = if of == Collection::Stream {
        PIECE_ITEMS
    } else {
        WEIGH_ITEMS
    };
    (rm!(RedisModule_ValueLength)(key) > threshold).then_some(of)
}

/// For a key [`worth_weighing`]: a stream goes in pieces unless it has consumer groups (their
/// pending entries and consumers go only with a `DUMP`); another collection when it takes more
/// than [`HEAVY_BYTES`] by the server's `MEMORY USAGE` (which samples a few elements).
unsafe fn goes_in_pieces(ctx: *mut raw::RedisModuleCtx, name: &[u8], of: Collection) -> bool {
    if of == Collection::Stream {
        return stream_state(ctx, name).is_some();
    }
    matches!(
        call::call(ctx, "MEMORY", &[b"USAGE", name, b"SAMPLES", b"16"]),
        Ok(Value::Int(bytes)) if bytes > HEAVY_BYTES
    )
}

/// A stream's last generated id, entries added and largest deleted id (`XINFO STREAM`), the
/// last piece's header; `None` when it has consumer groups or cannot be read.
unsafe fn stream_state(ctx: *mut raw::RedisModuleCtx, name: &[u8]) -> Option<[Vec<u8>; 3]> {
    let info = call::call(ctx, "XINFO", &[b"STREAM", name]).ok()?;
    if info.field("groups")?.as_int()? != 0 {
        return None;
    }
    let text = |name: &str| match info.field(name)? {
        Value::Int(n) => Some(n.to_string().into_bytes()),
        v => v.as_bytes().map(<[u8]>::to_vec),
    };
    Some([
        text("last-generated-id")?,
        text("entries-added")?,
        text("max-deleted-entry-id")?,
    ])
}

/// The kind of collection an open key holds, if it is one that can move in pieces.
unsafe fn collection_kind(key: *mut raw::RedisModuleKey) -> Option<Collection> {
    if key.is_null() {
        return None;
    }
    Some(match rm!(RedisModule_KeyType)(key) as isize {
        raw::REDISMODULE_KEYTYPE_HASH => Collection::Hash,
        raw::REDISMODULE_KEYTYPE_SET => Collection::Set,
        raw::REDISMODULE_KEYTYPE_ZSET => Collection::Zset,
        raw::REDISMODULE_KEYTYPE_LIST => Collection::List,
        raw::REDISMODULE_KEYTYPE_STREAM => Collection::Stream,
        _ => return None,
    })
}

/// A piece being read: the packed elements and how many items they make.
struct PieceCollect {
    of: Collection,
    elements: Vec<u8>,
    items: usize,
}

impl PieceCollect {
    fn full(&self) -> bool {
        self.items >= PIECE_ITEMS || self.elements.len() >= PIECE_BYTES
    }
}

unsafe extern "C" fn piece_callback(
    key: *mut raw::RedisModuleKey,
    field: *mut raw::RedisModuleString,
    value: *mut raw::RedisModuleString,
    privdata: *mut c_void,
) {
    guard(
        "the migration's piece reader",
        || {
            let p = &mut *(privdata as *mut PieceCollect);
            let mut buf = [0u8; 24];
            pack_element(string_bytes(field, &mut buf), &mut p.elements);
            let mut score = 0f64;
            if p.of == Collection::Zset
                && rm!(RedisModule_ZsetScore)(key, field, &mut score)
                    == raw::REDISMODULE_OK as c_int
            {
                // The score itself, printed by us: the shortest form that reads back to the same
                // double (the server's text goes through `long double`, which not every
                // environment prints exactly).
                pack_element(format!("{score:e}").as_bytes(), &mut p.elements);
            } else if !value.is_null() {
                pack_element(string_bytes(value, &mut buf), &mut p.elements);
            }
            p.items += 1;
        },
        |_| (),
    )
}

/// Reads the next piece of the task's first big collection and hands it to the link. A key that
/// vanished or changed type behind its fence is sent again whole instead (a tombstone, or its
/// new value). Returns whether a piece went out.
unsafe fn next_piece(ctx: *mut raw::RedisModuleCtx, task: &mut Task) -> bool {
    let Some(job) = task.big.front_mut() else {
        return false;
    };
    let previous_db = rm!(RedisModule_GetSelectedDb)(ctx);
    rm!(RedisModule_SelectDb)(ctx, job.db);
    let name = rm!(RedisModule_CreateString)(ctx, job.name.as_ptr().cast(), job.name.len());
    let key = rm!(RedisModule_OpenKey)(ctx, name, raw::REDISMODULE_READ as c_int);
    // A job reads on while the key holds the same kind of collection (even if it shrank behind
    // the fence, through a path the filter does not see); any other change goes whole.
    let of = collection_kind(key);
    let read = match of {
        Some(of) if job.of.is_none() || job.of == Some(of) => {
            if job.of.is_none() {
                job.of = Some(of);
                if matches!(of, Collection::Hash | Collection::Set | Collection::Zset) {
                    job.cursor = Some(ScanCursor {
                        raw: rm!(RedisModule_ScanCursorCreate)().cast(),
                        destroy: destroy_cursor,
                    });
                }
            }
            let mut piece = PieceCollect {
                of,
                elements: Vec::new(),
                items: 0,
            };
            let done = match (&job.cursor, of) {
                (_, Collection::Stream) => read_stream_entries(ctx, key, job, &mut piece),
                (_, Collection::List) => {
                    let len = rm!(RedisModule_ValueLength)(key) as i64;
                    while job.next_index < len && !piece.full() {
                        let element = rm!(RedisModule_ListGet)(key, job.next_index);
                        if element.is_null() {
                            break;
                        }
                        let mut buf = [0u8; 24];
                        pack_element(string_bytes(element, &mut buf), &mut piece.elements);
                        rm!(RedisModule_FreeString)(ctx, element);
                        piece.items += 1;
                        job.next_index += 1;
                    }
                    Some(job.next_index >= len)
                }
                (Some(cursor), _) => loop {
                    let more = rm!(RedisModule_ScanKey)(
                        key,
                        cursor.raw.cast(),
                        Some(piece_callback),
                        (&mut piece as *mut PieceCollect).cast(),
                    );
                    if more == 0 {
                        break Some(true);
                    }
                    if piece.full() {
                        break Some(false);
                    }
                },
                // Cannot happen (the cursor is made with the kind): read it whole instead.
                (None, _) => None,
            };
            // A first piece that is also the last and holds nothing would delete the key on
            // both sides: a key read as empty goes whole (a tombstone) instead.
            let empty = job.pieces == 0 && done == Some(true) && piece.items == 0;
            done.filter(|_| !empty)
                .map(|done| (of, piece.elements, done, abs_expire(key)))
        }
        _ => None,
    };
    if !key.is_null() {
        rm!(RedisModule_CloseKey)(key);
    }
    // A stream's last piece starts with the stream's state (read with the key closed: the call
    // looks it up itself); one that has consumer groups by now goes whole.
    let read = match read {
        Some((Collection::Stream, entries, true, expire_at_ms)) => stream_state(ctx, &job.name)
            .map(|state| {
                let mut elements = Vec::with_capacity(64 + entries.len());
                for part in &state {
                    pack_element(part, &mut elements);
                }
                elements.extend_from_slice(&entries);
                (Collection::Stream, elements, true, expire_at_ms)
            }),
        other => other,
    };
    rm!(RedisModule_FreeString)(ctx, name);
    rm!(RedisModule_SelectDb)(ctx, previous_db);

    let Some((of, elements, last, expire_at_ms)) = read else {
        if let Some(job) = task.big.pop_front() {
            task.pipe.resend.push((job.db, job.name));
        }
        return false;
    };
    let first = job.pieces == 0;
    job.pieces += 1;
    let db = job.db;
    let entry = Entry {
        key: Bytes::copy_from_slice(&job.name),
        payload: Payload::Piece(Piece {
            of,
            first,
            last,
            elements,
        }),
        expire_at_ms: if last { expire_at_ms } else { 0 },
    };
    if last {
        // The last piece's entry holds the key's fence from here on.
        task.big.pop_front();
    }
    let bytes = entry.weight();
    let batch = Batch {
        id: task.pipe.next_id(),
        db,
        entries: vec![entry],
        bytes,
    };
    hand_over(
        &mut task.pipe,
        Sent {
            batch: Arc::new(batch),
            // Never released as "not delivered" on a failed link: a key's pieces are parked and
            // its move starts over (see `link_error`).
            maybe_delivered: true,
        },
    );
    true
}

/// Reads a stream's entries from the job's position into `piece` until it is full; whether the
/// stream is read to its end (`None` if it cannot be iterated).
unsafe fn read_stream_entries(
    ctx: *mut raw::RedisModuleCtx,
    key: *mut raw::RedisModuleKey,
    job: &mut BigKey,
    piece: &mut PieceCollect,
) -> Option<bool> {
    let mut start = raw::RedisModuleStreamID {
        ms: job.next_id.ms,
        seq: job.next_id.seq,
    };
    if rm!(RedisModule_StreamIteratorStart)(key, 0, &mut start, std::ptr::null_mut())
        != raw::REDISMODULE_OK as c_int
    {
        return None;
    }
    let mut done = false;
    while !piece.full() {
        let mut id = raw::RedisModuleStreamID { ms: 0, seq: 0 };
        let mut fields: std::os::raw::c_long = 0;
        if rm!(RedisModule_StreamIteratorNextID)(key, &mut id, &mut fields)
            != raw::REDISMODULE_OK as c_int
        {
            done = true;
            break;
        }
        let id = StreamId {
            ms: id.ms,
            seq: id.seq,
        };
        pack_element(id.text().as_bytes(), &mut piece.elements);
        // `c_long` is 32 bits on some targets.
        #[allow(clippy::useless_conversion)]
        let (count, count_len) = crate::resp::itoa(i64::from(fields));
        pack_element(&count[..count_len], &mut piece.elements);
        let mut buf = [0u8; 24];
        for _ in 0..fields {
            let mut field = std::ptr::null_mut();
            let mut value = std::ptr::null_mut();
            if rm!(RedisModule_StreamIteratorNextField)(key, &mut field, &mut value)
                != raw::REDISMODULE_OK as c_int
            {
                // Cannot happen after the entry's id; a piece that does not add up is refused
                // by the destination, never applied in part.
                break;
            }
            pack_element(string_bytes(field, &mut buf), &mut piece.elements);
            pack_element(string_bytes(value, &mut buf), &mut piece.elements);
            rm!(RedisModule_FreeString)(ctx, field);
            rm!(RedisModule_FreeString)(ctx, value);
        }
        piece.items += 1;
        match id.next() {
            Some(next) => job.next_id = next,
            None => {
                done = true;
                break;
            }
        }
    }
    rm!(RedisModule_StreamIteratorStop)(key);
    Some(done)
}

/// Hands a batch to the task's link (its keys are fenced already).
fn hand_over(pipe: &mut Pipeline, sent: Sent) {
    let batch = Arc::clone(&sent.batch);
    pipe.sent(sent);
    if let Some(link) = &pipe.link {
        // A link whose threads ended has reported why: the event handler parks or releases
        // this batch with the others.
        let _ = link.send(batch);
    }
}

/// Applies what the task's link reported, while the tick's budget lasts (at least one event).
unsafe fn handle_events(
    ctx: *mut raw::RedisModuleCtx,
    st: &mut State,
    i: usize,
    deadline: Instant,
) {
    {
        let pipe = &mut st.migrations[i].pipe;
        match &pipe.link {
            Some(link) => pipe.events.extend(link.poll()),
            None => return,
        }
    }
    let mut handled = 0;
    while handled == 0 || Instant::now() < deadline {
        let Some(event) = st.migrations[i].pipe.events.pop_front() else {
            return;
        };
        handled += 1;
        match event {
            Event::Acked(id) => match st.migrations[i].pipe.take_acked(id) {
                Some(sent) => finish_batch(ctx, st, i, &sent.batch),
                None => {
                    link_error(st, i, format!("reply for batch {id} out of order"), true);
                    return;
                }
            },
            Event::Refused { id, error } => {
                let Some(sent) = st.migrations[i].pipe.take_acked(id) else {
                    link_error(st, i, format!("reply for batch {id} out of order"), true);
                    return;
                };
                // One key refused for what it holds (a plain `ERR`: a module type the
                // destination lacks, a payload it cannot read). Anything else (`OOM`, `LOADING`,
                // `READONLY` ...) is the destination's state: the batch waits for it, below, as
                // does a piece (it goes the way of any failed piece) and a tombstone (which
                // would otherwise be sent again at once, for as long as it is refused).
                let one_key = refused_entry(&error).filter(|(_, why)| why.starts_with("ERR "));
                if let Some((n, why)) = one_key {
                    let whole_key =
                        |e: &&Entry| matches!(e.payload, Payload::Str(_) | Payload::Dump(_));
                    if let Some(e) = sent.batch.entries.get(n).filter(whole_key) {
                        let error = format!(
                            "destination refused key '{}' of db {}: {why}",
                            String::from_utf8_lossy(&e.key),
                            sent.batch.db
                        );
                        refused_key(ctx, st, i, sent, n);
                        let task = &mut st.migrations[i];
                        let parked = &task.pipe.parked;
                        if parked.iter().any(|s| s.batch.entries.iter().any(is_piece)) {
                            // Pieces must arrive in order: their keys start over on a new link.
                            link_error(st, i, error, true);
                            return;
                        }
                        // The link is fine: the rest goes again on it, after what is in flight.
                        for sent in task.pipe.take_parked() {
                            hand_over(&mut task.pipe, sent);
                        }
                        task.refused(error);
                        st.stats.migration_errors += 1;
                        if task.errors.is_power_of_two() {
                            log_warning(&format!(
                                "umcluster: migration of {} to {}: {} ({} errors so far); the key \
                                 stays here and is tried again on the next pass",
                                ranges(task),
                                task.meta.dst_proxy,
                                task.last_error,
                                task.errors
                            ));
                        }
                        continue;
                    }
                }
                let task = &mut st.migrations[i];
                task.pipe.park(sent);
                if task.pipe.delivery == Delivery::Import && unknown_command(&error) {
                    // A destination without this module (or an older one): plain RESTOREs.
                    log_notice(&format!(
                        "umcluster: {} does not know {IMPORT_COMMAND}; migrating with RESTORE",
                        task.meta.dst_proxy
                    ));
                    task.pipe.delivery = Delivery::Restore;
                }
                link_error(st, i, format!("destination refused: {error}"), true);
                return;
            }
            Event::Unreachable(error) => {
                link_error(st, i, error, false);
                return;
            }
            Event::Down(error) => {
                link_error(st, i, error, true);
                return;
            }
        }
    }
}

/// The destination refused entry `n` of a batch and applied the ones before it: finishes those,
/// lets the refused key go and sends the rest again ([`Pipeline::split_refused`]). A collection
/// whose `DUMP` was refused goes in pieces when the scan meets it again.
unsafe fn refused_key(
    ctx: *mut raw::RedisModuleCtx,
    st: &mut State,
    i: usize,
    sent: Sent,
    n: usize,
) {
    let task = &mut st.migrations[i];
    if let Payload::Dump(_) = sent.batch.entries[n].payload {
        let key = (sent.batch.db, sent.batch.entries[n].key.to_vec());
        task.dump_refused.insert(key);
    }
    let applied = task.pipe.split_refused(sent, n);
    if !applied.entries.is_empty() {
        finish_batch(ctx, st, i, &applied);
    }
}

fn is_piece(e: &Entry) -> bool {
    matches!(e.payload, Payload::Piece(_))
}

/// Whether a refusal says the destination has no such command.
fn unknown_command(error: &str) -> bool {
    error.to_ascii_lowercase().contains("unknown command")
}

/// Drops the task's link after a failure and schedules the retry.
fn link_error(st: &mut State, i: usize, error: String, connected: bool) {
    let task = &mut st.migrations[i];
    if task.state != TaskState::Retrying {
        log_warning(&format!(
            "umcluster: migration of {} to {}: {error}; retrying",
            ranges(task),
            task.meta.dst_proxy
        ));
    }
    task.pipe.link_failed(connected);
    // Keys whose pieces were on the failed link move again from their first piece (which
    // replaces whatever part of them the destination holds).
    for (db, name) in task.pipe.drop_parked_pieces().into_iter().rev() {
        match task.big.iter_mut().find(|j| j.db == db && j.name == name) {
            Some(job) => job.restart(),
            // Its last piece was handed over already: the fence that entry held is the job's.
            None => task.big.push_front(BigKey::new(db, name)),
        }
    }
    task.failed(error, now_ms(), RETRY_BACKOFF_MS);
    st.stats.migration_errors += 1;
}

/// An acknowledged batch: deletes its keys here (replicated as one `UNLINK`), unless a key changed
/// or vanished since it was copied, in which case it is sent again and stays fenced.
unsafe fn finish_batch(ctx: *mut raw::RedisModuleCtx, st: &mut State, i: usize, batch: &Batch) {
    let previous_db = rm!(RedisModule_GetSelectedDb)(ctx);
    rm!(RedisModule_SelectDb)(ctx, batch.db);
    let mut deleted: Vec<*mut raw::RedisModuleString> = Vec::with_capacity(batch.entries.len());
    let mut resend = Vec::new();
    let mut moved = 0u64;
    for (n, e) in batch.entries.iter().enumerate() {
        if !ends_a_key(e) {
            // A piece before the last: the key stays here, fenced, until its last piece.
            continue;
        }
        let name = rm!(RedisModule_CreateString)(ctx, e.key.as_ptr().cast(), e.key.len());
        let key = rm!(RedisModule_OpenKey)(
            ctx,
            name,
            (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as c_int,
        );
        match unchanged(key, e) {
            Some(true) => {
                // What `UNLINK` does, without looking the key up again: delete (a big value is
                // freed by the server's lazy-free thread, not here), invalidate WATCHes, notify;
                // the `UNLINK` itself is replicated once for the batch below.
                rm!(RedisModule_UnlinkKey)(key);
                rm!(RedisModule_SignalModifiedKey)(ctx, name);
                rm!(RedisModule_NotifyKeyspaceEvent)(
                    ctx,
                    raw::REDISMODULE_NOTIFY_GENERIC as c_int,
                    c"del".as_ptr(),
                    name,
                );
                deleted.push(name);
            }
            // A key met twice in one batch (cannot happen: it is fenced when first met) was
            // deleted just above; it must not read as vanished, which would send a tombstone
            // after the copy.
            Some(false) if batch.entries[..n].iter().any(|prev| prev.key == e.key) => {}
            // The tombstone of a refused key (the key stays here, unfenced below).
            Some(false)
                if e.payload == Payload::Tombstone
                    && st.migrations[i].pipe.release(batch.db, &e.key) => {}
            Some(false) => resend.push((batch.db, e.key.to_vec())),
            // A tombstone was delivered: nothing is left here to delete.
            None => {
                st.migrations[i].pipe.release(batch.db, &e.key);
            }
        }
        if !key.is_null() {
            rm!(RedisModule_CloseKey)(key);
        }
        if deleted.last() != Some(&name) {
            rm!(RedisModule_FreeString)(ctx, name);
        }
    }
    if !deleted.is_empty() {
        // To replicas and the AOF, in this database.
        rm!(RedisModule_Replicate)(
            ctx,
            c"UNLINK".as_ptr(),
            c"v".as_ptr(),
            deleted.as_mut_ptr(),
            deleted.len(),
        );
        moved += deleted.len() as u64;
        for name in deleted {
            rm!(RedisModule_FreeString)(ctx, name);
        }
    }
    rm!(RedisModule_SelectDb)(ctx, previous_db);

    let task = &mut st.migrations[i];
    for e in batch.entries.iter().filter(|e| ends_a_key(e)) {
        if !resend.iter().any(|(_, k)| *k == e.key) {
            task.pipe.unfence(&e.key);
        }
    }
    task.pipe.resend.extend(resend);
    task.moved(moved, batch.bytes, now_ms());
    st.stats.migration_keys_moved += moved;
    st.stats.migration_bytes_moved += batch.bytes;
    // Transactions that read these keys before they left must not run.
    st.table_version += 1;
}

/// Whether an acknowledged entry finishes its key's move (everything but a piece before the
/// last of a big collection).
fn ends_a_key(e: &Entry) -> bool {
    !matches!(&e.payload, Payload::Piece(p) if !p.last)
}

/// Whether key `name` still holds what entry `e` carried: `Some(true)` yes (delete it),
/// `Some(false)` no (send it again), `None` for a tombstone (nothing to delete).
unsafe fn unchanged(key: *mut raw::RedisModuleKey, e: &Entry) -> Option<bool> {
    let kind = if key.is_null() {
        raw::REDISMODULE_KEYTYPE_EMPTY as c_int
    } else {
        rm!(RedisModule_KeyType)(key)
    };
    match &e.payload {
        Payload::Tombstone => {
            if kind == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
                None
            } else {
                Some(false)
            }
        }
        _ if kind == raw::REDISMODULE_KEYTYPE_EMPTY as c_int => Some(false),
        Payload::Str(value) => Some(
            kind == raw::REDISMODULE_KEYTYPE_STRING as c_int
                && abs_expire(key) == e.expire_at_ms
                && string_value(key) == Some(&value[..]),
        ),
        // Fenced since it was copied: only its expiry can have changed behind the fence.
        Payload::Dump(_) | Payload::Piece(_) => Some(abs_expire(key) == e.expire_at_ms),
    }
}

/// The key's absolute expiry in ms, 0 for none.
unsafe fn abs_expire(key: *mut raw::RedisModuleKey) -> i64 {
    let at = rm!(RedisModule_GetAbsExpire)(key);
    if at < 0 {
        0
    } else {
        at
    }
}

/// A string key's value. (For a non-raw encoding the server converts the value to a raw string
/// in place; harmless for a key that is leaving.)
unsafe fn string_value<'a>(key: *mut raw::RedisModuleKey) -> Option<&'a [u8]> {
    let mut len = 0usize;
    let ptr = rm!(RedisModule_StringDMA)(key, &mut len, raw::REDISMODULE_READ as c_int);
    if ptr.is_null() {
        return None;
    }
    Some(std::slice::from_raw_parts(ptr as *const u8, len))
}

/// Serializes the keys queued for sending again into one batch per database.
unsafe fn resend_changed(ctx: *mut raw::RedisModuleCtx, task: &mut Task) -> bool {
    if task.pipe.resend.is_empty() || task.pipe.link.is_none() {
        return false;
    }
    let mut keys = std::mem::take(&mut task.pipe.resend);
    keys.sort();
    // Each listed key holds one fence count; a key listed twice is sent once.
    let before = keys.len();
    let mut extra = Vec::new();
    keys.dedup_by(|a, b| {
        let same = a == b;
        if same {
            extra.push(a.1.clone());
        }
        same
    });
    debug_assert_eq!(before, keys.len() + extra.len());
    for k in extra {
        task.pipe.unfence(&k);
    }
    let previous_db = rm!(RedisModule_GetSelectedDb)(ctx);
    let mut start = 0;
    while start < keys.len() {
        let db = keys[start].0;
        let end = start + keys[start..].iter().take_while(|(d, _)| *d == db).count();
        rm!(RedisModule_SelectDb)(ctx, db);
        let mut batch = Batch {
            db,
            ..Batch::default()
        };
        for (_, k) in &keys[start..end] {
            let name = rm!(RedisModule_CreateString)(ctx, k.as_ptr().cast(), k.len());
            let mut key = rm!(RedisModule_OpenKey)(ctx, name, raw::REDISMODULE_READ as c_int);
            let mut split = false;
            if pieces_allowed(&task.pipe) {
                split = big_collection(key).is_some();
                if let Some(of) = worth_weighing(key).filter(|_| !split) {
                    // Weighed with the key closed: the call looks it up itself.
                    rm!(RedisModule_CloseKey)(key);
                    split = goes_in_pieces(ctx, k, of);
                    key = rm!(RedisModule_OpenKey)(ctx, name, raw::REDISMODULE_READ as c_int);
                }
            }
            let entry = if split {
                // Big: in pieces again, from the first; the fence goes with the job.
                task.big.push_back(BigKey::new(db, k.clone()));
                None
            } else if key.is_null()
                || rm!(RedisModule_KeyType)(key) == raw::REDISMODULE_KEYTYPE_EMPTY as c_int
            {
                Some(Entry {
                    key: Bytes::copy_from_slice(k),
                    payload: Payload::Tombstone,
                    expire_at_ms: 0,
                })
            } else {
                copy_entry(ctx, key, k)
            };
            if !key.is_null() {
                rm!(RedisModule_CloseKey)(key);
            }
            rm!(RedisModule_FreeString)(ctx, name);
            // Already fenced: the fence stays until this copy is acknowledged.
            match entry {
                Some(e) => {
                    batch.bytes += e.weight();
                    batch.entries.push(e);
                }
                None if split => {}
                None => task.pipe.unfence(k),
            }
        }
        if !batch.entries.is_empty() {
            batch.id = task.pipe.next_id();
            hand_over(
                &mut task.pipe,
                Sent {
                    batch: Arc::new(batch),
                    maybe_delivered: false,
                },
            );
        }
        start = end;
    }
    rm!(RedisModule_SelectDb)(ctx, previous_db);
    true
}

/// Copies an open key: a string's bytes, or the server's `DUMP` of any other type; with its
/// expiry. `None` if it cannot be serialized (it vanished meanwhile).
unsafe fn copy_entry(
    ctx: *mut raw::RedisModuleCtx,
    key: *mut raw::RedisModuleKey,
    name: &[u8],
) -> Option<Entry> {
    let expire_at_ms = abs_expire(key);
    let payload = if rm!(RedisModule_KeyType)(key) == raw::REDISMODULE_KEYTYPE_STRING as c_int {
        Payload::Str(Bytes::copy_from_slice(string_value(key)?))
    } else {
        match call::call(ctx, "DUMP", &[name]) {
            Ok(Value::Bulk(d)) => Payload::Dump(d),
            _ => return None,
        }
    };
    Some(Entry {
        key: Bytes::copy_from_slice(name),
        payload,
        expire_at_ms,
    })
}

fn ranges(task: &Task) -> String {
    task.ranges
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// What one scan step collects: the task's keys met, copied (strings) or named for `DUMP`.
struct Collect<'a> {
    slots: &'a [bool],
    pipe: &'a mut Pipeline,
    /// The names and string values of `entries`, one buffer for the batch: each is split off
    /// as a shared view ([`Collect::keep`]), with no allocation of its own.
    arena: BytesMut,
    entries: Vec<Entry>,
    to_dump: Vec<(Vec<u8>, i64)>,
    /// Collections to weigh before they are dumped (few items, maybe big ones) and big streams
    /// (without consumer groups they go in pieces).
    to_weigh: Vec<(Vec<u8>, i64, Collection)>,
    /// Big collections may go in pieces (the destination takes imports).
    split: bool,
    /// The task's keys whose `DUMP` the destination refused, and the database scanned.
    dump_refused: &'a HashSet<(i32, Vec<u8>)>,
    db: i32,
    /// Big collections met, to move in pieces.
    big: Vec<Vec<u8>>,
    bytes: u64,
    found: u64,
}

/// Size of the buffers a batch's names and string values are copied into: small enough that a
/// batch of a few keys (a tick that found little) pins little memory while in flight, large
/// enough that a full batch needs one allocation per hundred-odd keys.
const ARENA_CHUNK: usize = 16 * 1024;

impl Collect<'_> {
    /// Whether the destination refused the `DUMP` of key `name` of the scanned database.
    fn refused(&self, name: &[u8]) -> bool {
        !self.dump_refused.is_empty() && self.dump_refused.contains(&(self.db, name.to_vec()))
    }

    /// `bytes` copied into the batch's buffer, as a view of their own (a value larger than a
    /// chunk gets a buffer of its own size).
    fn keep(&mut self, bytes: &[u8]) -> Bytes {
        if self.arena.capacity() < bytes.len() {
            self.arena.reserve(bytes.len().max(ARENA_CHUNK));
        }
        self.arena.extend_from_slice(bytes);
        self.arena.split().freeze()
    }
}

unsafe extern "C" fn scan_callback(
    _ctx: *mut raw::RedisModuleCtx,
    keyname: *mut raw::RedisModuleString,
    key: *mut raw::RedisModuleKey,
    privdata: *mut c_void,
) {
    guard(
        "the migration scan",
        || {
            let c = &mut *(privdata as *mut Collect);
            let mut buf = [0u8; 24];
            let name = string_bytes(keyname, &mut buf);
            if !c.slots[key_slot(name) as usize] {
                return;
            }
            c.found += 1;
            // Fenced from this moment (also against a second visit within this batch). A key on
            // its way already (or met twice: a scan may return a key again while the table is
            // resized) keeps the pass open, nothing else to do.
            if key.is_null() || !c.pipe.fence_new(name) {
                return;
            }
            let expire_at_ms = abs_expire(key);
            if rm!(RedisModule_KeyType)(key) == raw::REDISMODULE_KEYTYPE_STRING as c_int {
                match string_value(key) {
                    Some(value) => {
                        c.bytes += (name.len() + value.len()) as u64;
                        let key = c.keep(name);
                        let value = c.keep(value);
                        c.entries.push(Entry {
                            key,
                            payload: Payload::Str(value),
                            expire_at_ms,
                        });
                    }
                    None => c.pipe.unfence(name),
                }
            } else if let Some(of) = collection_kind(key).filter(|_| c.split && c.refused(name)) {
                // Its `DUMP` was refused: pieces do not depend on the RDB format. (A stream
                // with consumer groups still goes whole: the weighing sends it back to `DUMP`.)
                if of == Collection::Stream {
                    c.to_weigh.push((name.to_vec(), expire_at_ms, of));
                } else {
                    c.big.push(name.to_vec());
                }
            } else if c.split && big_collection(key).is_some() {
                c.big.push(name.to_vec());
            } else if let Some(of) = worth_weighing(key).filter(|_| c.split) {
                c.to_weigh.push((name.to_vec(), expire_at_ms, of));
            } else {
                // `DUMP` runs after the scan step, outside the server's iteration.
                c.to_dump.push((name.to_vec(), expire_at_ms));
            }
        },
        |_| (),
    )
}

unsafe fn destroy_cursor(raw_cursor: *mut c_void) {
    rm!(RedisModule_ScanCursorDestroy)(raw_cursor.cast());
}

/// Scans the task's current database until a batch is full, the tick's budget is spent or the
/// database is finished. Returns the batch (keys fenced; id and db still to set), if any, and
/// whether the database is finished.
unsafe fn collect_batch(
    ctx: *mut raw::RedisModuleCtx,
    task: &mut Task,
    deadline: Instant,
) -> (Option<Batch>, bool) {
    let cursor = task
        .cursor
        .get_or_insert_with(|| ScanCursor {
            raw: rm!(RedisModule_ScanCursorCreate)().cast(),
            destroy: destroy_cursor,
        })
        .raw;
    let split = pieces_allowed(&task.pipe);
    let mut c = Collect {
        slots: &task.slots,
        pipe: &mut task.pipe,
        dump_refused: &task.dump_refused,
        db: task.db,
        arena: BytesMut::new(),
        entries: Vec::new(),
        to_dump: Vec::new(),
        to_weigh: Vec::new(),
        split,
        big: Vec::new(),
        bytes: 0,
        found: 0,
    };
    let previous_db = rm!(RedisModule_GetSelectedDb)(ctx);
    rm!(RedisModule_SelectDb)(ctx, task.db);
    let mut finished = false;
    let mut steps = 0u32;
    // A scan step visits one hash bucket (a few keys).
    while c.entries.len() + c.to_dump.len() < BATCH_KEYS && c.bytes < BATCH_BYTES {
        if rm!(RedisModule_Scan)(
            ctx,
            cursor.cast(),
            Some(scan_callback),
            (&mut c as *mut Collect).cast(),
        ) == 0
        {
            finished = true;
            break;
        }
        steps += 1;
        if steps % 64 == 0 && Instant::now() >= deadline {
            break;
        }
    }
    let Collect {
        mut entries,
        mut to_dump,
        to_weigh,
        mut big,
        mut bytes,
        found,
        ..
    } = c;
    // Weighed outside the server's iteration (the call looks the key up).
    for (name, expire_at_ms, of) in to_weigh {
        if goes_in_pieces(ctx, &name, of) {
            big.push(name);
        } else {
            to_dump.push((name, expire_at_ms));
        }
    }
    let db = task.db;
    task.big
        .extend(big.into_iter().map(|name| BigKey::new(db, name)));
    for (name, expire_at_ms) in to_dump {
        match call::call(ctx, "DUMP", &[&name]) {
            Ok(Value::Bulk(d)) => {
                bytes += (name.len() + d.len()) as u64;
                entries.push(Entry {
                    key: Bytes::from(name),
                    payload: Payload::Dump(d),
                    expire_at_ms,
                });
            }
            _ => task.pipe.unfence(&name),
        }
    }
    rm!(RedisModule_SelectDb)(ctx, previous_db);
    task.found_this_pass += found;
    if entries.is_empty() {
        return (None, finished);
    }
    (
        Some(Batch {
            id: 0,
            db: 0,
            entries,
            bytes,
        }),
        finished,
    )
}

/// Keys the task will probably move: every database's size times the task's share of the slots
/// this node owns. Only used for progress until the first pass ends.
unsafe fn estimate(ctx: *mut raw::RedisModuleCtx, st: &State, i: usize, databases: i32) -> u64 {
    let owned = st.topology.as_ref().map_or(0, |t| t.owned_slots()).max(1) as u64;
    let share = st.migrations[i].slot_count() as u64;
    let previous_db = rm!(RedisModule_GetSelectedDb)(ctx);
    let mut keys = 0u64;
    for db in 0..databases {
        rm!(RedisModule_SelectDb)(ctx, db);
        keys += rm!(RedisModule_DbSize)(ctx);
    }
    rm!(RedisModule_SelectDb)(ctx, previous_db);
    keys * share.min(owned) / owned
}

/// The server's `databases` setting (read once: it cannot change without a restart).
unsafe fn database_count(ctx: *mut raw::RedisModuleCtx) -> i32 {
    thread_local! {
        static DATABASES: Cell<i32> = const { Cell::new(0) };
    }
    let known = DATABASES.with(Cell::get);
    if known > 0 {
        return known;
    }
    let n = match call::call(ctx, "CONFIG", &[b"GET", b"databases"]) {
        Ok(Value::Array(items)) => match items.get(1) {
            Some(Value::Bulk(n)) => std::str::from_utf8(n)
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(16),
            _ => 16,
        },
        _ => 16,
    };
    DATABASES.with(|d| d.set(n));
    n
}
