//! The source side of slot migration: a main-thread timer that finds the keys of the migrating
//! slots and moves them to the destination with the server's own `MIGRATE`.
//!
//! Why `MIGRATE`, called in-process: it carries every type (it is `DUMP`/`RESTORE`), with its
//! TTL, to the same logical database on the destination; it sends a whole batch of keys in one
//! pipelined round trip (`RESTORE-ASKING` for each), and deletes them locally only once the
//! destination acknowledged every one of them, propagating the `DEL` to replicas and AOF (the call
//! is made with the `!` flag). And it does all of that while holding the event loop, so no client
//! command can run between the copy and the delete: there is no window in which a write could
//! land on a copy that is about to be discarded. That atomicity is what the native design relies
//! on too; what we change is who drives it — no outside tool and no round trip per batch through
//! one, and the slot scan happens next to the data.
//!
//! The price of atomicity is that each batch holds the event loop for its round trip. Batches are
//! small (at most [`BATCH_KEYS`] keys) and every timer tick stops after [`TICK_BUDGET`]; the next
//! tick comes [`TICK_PERIOD_MS`] later, so clients are served between ticks. A single huge key
//! holds the loop for its whole `DUMP` + transfer + `RESTORE` (as native `MIGRATE` does); the
//! batch's `MIGRATE` timeout is the topology's `migration_max_blocking_time`, capped at
//! [`MAX_TIMEOUT_MS`].
//!
//! Finding keys: standalone Redis keeps no slot index, so each task walks every database with
//! `RedisModule_Scan` (a bucket at a time, resumable across ticks). A pass over all databases that
//! meets no key of the task's slots finishes the task. Keys cannot appear in a migrating slot
//! behind the scan: the router sends a command whose keys are missing here to the destination
//! (`ASK`), so only keys that already exist are written here. A transaction queued before a batch
//! and executed after it could recreate a moved key here: every batch that moved keys bumps the
//! table version, and `EXEC` of a transaction on a migrating slot queued before that is aborted
//! (the existing `EXECABORT` path of the filter).

use std::cell::Cell;
use std::ffi::c_void;
use std::os::raw::c_int;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis_module::raw;

use super::{call, guard, log_notice, log_warning, rm, string_bytes};
use crate::migration::{ScanCursor, Task, TaskState};
use crate::resp::Value;
use crate::slot::key_slot;
use crate::state::{self, State};

/// Most keys one `MIGRATE` carries.
pub const BATCH_KEYS: usize = 128;
/// Work per timer tick before the event loop gets control back.
pub const TICK_BUDGET: Duration = Duration::from_millis(2);
/// Pause between ticks while a task is moving keys, unless the topology's
/// `migration_scan_interval` (µs) asks for a longer one.
pub const TICK_PERIOD_MS: i64 = 1;
/// Pause between ticks when every task waits (retry backoff, done, replica).
const IDLE_PERIOD_MS: i64 = 100;
/// Wait after a failed batch before the next attempt.
const RETRY_BACKOFF_MS: u64 = 500;
/// Upper bound of one batch's `MIGRATE` timeout (the loop is held that long at most when the
/// destination stops answering).
pub const MAX_TIMEOUT_MS: u64 = 1000;

thread_local! {
    /// The scheduled tick, if any (main thread only).
    static ARMED: Cell<Option<raw::RedisModuleTimerID>> = const { Cell::new(None) };
}

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

extern "C" fn tick(ctx: *mut raw::RedisModuleCtx, _data: *mut c_void) {
    ARMED.with(|a| a.set(None));
    // SAFETY: the server calls timers on the main thread with a valid context.
    let next = guard(
        "the migration timer",
        || unsafe { run_tick(ctx) },
        |_| Some(IDLE_PERIOD_MS),
    );
    if let Some(period) = next {
        // SAFETY: as above.
        unsafe { arm(ctx, period) };
    }
}

/// One tick: moves keys until the budget is spent. Returns when to come back, `None` when no
/// task needs a tick any more.
unsafe fn run_tick(ctx: *mut raw::RedisModuleCtx) -> Option<i64> {
    let flags = rm!(RedisModule_GetContextFlags)(ctx) as u32;
    let replica = flags & raw::REDISMODULE_CTX_FLAGS_SLAVE != 0;
    let loading = flags & raw::REDISMODULE_CTX_FLAGS_LOADING != 0;
    let started = Instant::now();
    let databases = database_count(ctx);
    state::try_with_mut(|st| {
        if st.migrations.iter().all(|t| t.state == TaskState::Done) {
            return None;
        }
        // A replica follows its master's deletes; it never moves keys itself.
        if replica || loading {
            return Some(IDLE_PERIOD_MS);
        }
        let mut busy = false;
        for i in 0..st.migrations.len() {
            if started.elapsed() >= TICK_BUDGET {
                busy = true;
                break;
            }
            busy |= step_task(ctx, st, i, databases, started);
        }
        Some(if busy {
            busy_period(st)
        } else {
            IDLE_PERIOD_MS
        })
    })
    .flatten()
}

/// Works on task `i` until the tick's budget is spent, the task waits, or it is done. Returns
/// whether it wants the next tick soon.
unsafe fn step_task(
    ctx: *mut raw::RedisModuleCtx,
    st: &mut State,
    i: usize,
    databases: i32,
    started: Instant,
) -> bool {
    let timeout = st
        .topology
        .as_ref()
        .map_or(MAX_TIMEOUT_MS, |t| t.config.migration_max_blocking_time)
        .clamp(10, MAX_TIMEOUT_MS);
    let now = now_ms();
    {
        let task = &mut st.migrations[i];
        match task.state {
            TaskState::Done => return false,
            TaskState::Retrying if now < task.retry_at_ms => return false,
            _ => {}
        }
        if task.keys_estimate.is_some() || task.db != 0 || task.cursor.is_some() {
            // Estimated already, or the first pass is under way.
        } else {
            let guess = estimate(ctx, st, i, databases);
            st.migrations[i].keys_estimate = Some(guess);
        }
    }
    while started.elapsed() < TICK_BUDGET {
        let task = &mut st.migrations[i];
        if task.db >= databases {
            if task.end_pass() {
                log_notice(&format!(
                    "umcluster: migration of {} to {} done: {} keys moved",
                    ranges(task),
                    task.meta.dst_proxy,
                    task.keys_moved
                ));
                return false;
            }
            continue;
        }
        let db = task.db;
        let (keys, bytes, db_finished) = collect_batch(ctx, task);
        task.found_this_pass += keys.len() as u64;
        if db_finished {
            task.cursor = None;
            task.db += 1;
        }
        if keys.is_empty() {
            continue;
        }
        let dst = task.meta.dst_node.clone();
        match migrate(ctx, &dst.host, dst.port, db, timeout, &keys) {
            Ok(()) => {
                let task = &mut st.migrations[i];
                task.moved(keys.len() as u64, bytes, now_ms());
                st.stats.migration_keys_moved += keys.len() as u64;
                st.stats.migration_bytes_moved += bytes;
                // Transactions queued on these slots before this batch must not run (see the
                // file comment).
                st.table_version += 1;
            }
            Err(e) => {
                let task = &mut st.migrations[i];
                if task.state != TaskState::Retrying {
                    log_warning(&format!(
                        "umcluster: migration of {} to {}: {e}; retrying",
                        ranges(task),
                        task.meta.dst_proxy
                    ));
                }
                task.failed(e, now_ms(), RETRY_BACKOFF_MS);
                st.stats.migration_errors += 1;
                return false;
            }
        }
    }
    true
}

fn ranges(task: &Task) -> String {
    task.ranges
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Keys of the task's slots met by the scan, with their approximate size.
struct Batch<'a> {
    slots: &'a [bool],
    keys: Vec<Vec<u8>>,
    bytes: u64,
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
            let batch = &mut *(privdata as *mut Batch);
            let mut buf = [0u8; 24];
            let name = string_bytes(keyname, &mut buf);
            if !batch.slots[key_slot(name) as usize] {
                return;
            }
            let mut bytes = name.len() as u64;
            if !key.is_null()
                && rm!(RedisModule_KeyType)(key) == raw::REDISMODULE_KEYTYPE_STRING as c_int
            {
                bytes += rm!(RedisModule_ValueLength)(key) as u64;
            }
            batch.bytes += bytes;
            batch.keys.push(name.to_vec());
        },
        |_| (),
    )
}

unsafe fn destroy_cursor(raw_cursor: *mut c_void) {
    rm!(RedisModule_ScanCursorDestroy)(raw_cursor.cast());
}

/// Scans the task's current database until a batch is full or the database is finished: the
/// keys, their approximate bytes, and whether the database is finished.
unsafe fn collect_batch(
    ctx: *mut raw::RedisModuleCtx,
    task: &mut Task,
) -> (Vec<Vec<u8>>, u64, bool) {
    let cursor = task
        .cursor
        .get_or_insert_with(|| ScanCursor {
            raw: rm!(RedisModule_ScanCursorCreate)().cast(),
            destroy: destroy_cursor,
        })
        .raw;
    let mut batch = Batch {
        slots: &task.slots,
        keys: Vec::new(),
        bytes: 0,
    };
    let previous_db = rm!(RedisModule_GetSelectedDb)(ctx);
    rm!(RedisModule_SelectDb)(ctx, task.db);
    let mut finished = false;
    // A scan step visits one hash bucket (a few keys); stop once the batch is full.
    for _ in 0..BATCH_KEYS * 4 {
        if batch.keys.len() >= BATCH_KEYS {
            break;
        }
        if rm!(RedisModule_Scan)(
            ctx,
            cursor.cast(),
            Some(scan_callback),
            (&mut batch as *mut Batch).cast(),
        ) == 0
        {
            finished = true;
            break;
        }
    }
    rm!(RedisModule_SelectDb)(ctx, previous_db);
    (batch.keys, batch.bytes, finished)
}

/// `MIGRATE host port "" db timeout REPLACE KEYS k...`, run as the server runs it, replicated.
unsafe fn migrate(
    ctx: *mut raw::RedisModuleCtx,
    host: &str,
    port: u16,
    db: i32,
    timeout_ms: u64,
    keys: &[Vec<u8>],
) -> Result<(), String> {
    let port = port.to_string();
    let db_text = db.to_string();
    let timeout = timeout_ms.to_string();
    let mut args: Vec<&[u8]> = vec![
        host.as_bytes(),
        port.as_bytes(),
        b"",
        db_text.as_bytes(),
        timeout.as_bytes(),
        b"REPLACE",
        b"KEYS",
    ];
    args.extend(keys.iter().map(Vec::as_slice));
    // MIGRATE reads its keys in the caller's database.
    let previous_db = rm!(RedisModule_GetSelectedDb)(ctx);
    rm!(RedisModule_SelectDb)(ctx, db);
    // "!": the local deletes reach replicas and the AOF.
    let reply = call::call_with(ctx, "MIGRATE", &args, c"vE!");
    rm!(RedisModule_SelectDb)(ctx, previous_db);
    match reply {
        // Status replies come back from RedisModule_Call as strings.
        Ok(Value::Simple(s)) if s == "OK" || s == "NOKEY" => Ok(()),
        Ok(Value::Bulk(s)) if s == b"OK" || s == b"NOKEY" => Ok(()),
        Ok(Value::Error(e)) | Err(e) => Err(e),
        Ok(other) => Err(format!("unexpected MIGRATE reply: {other}")),
    }
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
