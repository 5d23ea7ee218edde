//! Scans for one slot's keys: `CLUSTER COUNTKEYSINSLOT` without holding the event loop, and the
//! one-go scans of `GETKEYSINSLOT` and of a count where the client cannot block ([`scan_slot`]).
//!
//! A standalone server keeps no per-slot key index, so counting a slot's keys visits the whole
//! keyspace: about 11 s for 10 M keys (measured, `RedisModule_Scan` plus a CRC16 per key), long
//! enough for a Sentinel or a control plane to declare the node dead. So the count is done in
//! slices instead: the command blocks its client (`RedisModule_BlockClient`), and a timer scans
//! for at most [`SLICE`] per pass of the event loop, all counts in progress sharing it, until the
//! scan is over; the client then gets the count. Other clients are served between the slices
//! (10 M keys: the count in 20.9 s, a PING every millisecond meanwhile answered within 3.5 ms).
//!
//! The count has `SCAN`'s guarantees: a key present for the whole count is counted once; a key
//! added or removed meanwhile may or may not be. Where the client cannot block (inside `MULTI`,
//! a script, or another module's `RedisModule_Call`) the count is done at once, as before.
//!
//! Main thread only: the command, the timer and the blocked client's callbacks all run there.

use std::cell::RefCell;
use std::os::raw::{c_int, c_void};
use std::time::{Duration, Instant};

use redis_module::raw;

use super::{guard, log_warning, rm, string_bytes};
use crate::slot::key_slot_fastest;

/// The scanning the counts may do per pass of the event loop, all together. Module timers fire
/// at most once a millisecond, so this is also the share of the loop they take: with 1 ms, 10 M
/// keys took 30.6 s (longest PING meanwhile 5.3 ms); with 2 ms, 20.9 s (3.5 ms).
const SLICE: Duration = Duration::from_millis(2);

/// Scan calls between two looks at the clock (each visits one bucket: a key or a few).
const CALLS_PER_CLOCK_CHECK: u32 = 64;

/// What a scan for one slot gathers: how many keys it has, and up to `max` of their names.
struct SlotScan {
    slot: u16,
    max: usize,
    count: u64,
    keys: Vec<Vec<u8>>,
}

impl SlotScan {
    fn new(slot: u16, max: usize) -> SlotScan {
        SlotScan {
            slot,
            max,
            count: 0,
            keys: Vec::new(),
        }
    }

    /// One `RedisModule_Scan` call (a bucket: a key or a few) of the database selected in
    /// `ctx`; false when the scan is over.
    ///
    /// # Safety
    /// `ctx` a valid context on the main thread, `cursor` a live scan cursor.
    unsafe fn step(
        &mut self,
        ctx: *mut raw::RedisModuleCtx,
        cursor: *mut raw::RedisModuleScanCursor,
    ) -> bool {
        rm!(RedisModule_Scan)(
            ctx,
            cursor,
            Some(scanned_key),
            (self as *mut SlotScan).cast(),
        ) != 0
    }
}

extern "C" fn scanned_key(
    _ctx: *mut raw::RedisModuleCtx,
    keyname: *mut raw::RedisModuleString,
    _key: *mut raw::RedisModuleKey,
    privdata: *mut c_void,
) {
    guard(
        "the slot scan",
        || unsafe {
            // SAFETY: `privdata` is the `SlotScan` that `step` passed, alive for its call.
            let scan = &mut *(privdata as *mut SlotScan);
            let mut buf = [0u8; 24];
            let name = string_bytes(keyname, &mut buf);
            if key_slot_fastest(name) == scan.slot {
                scan.count += 1;
                if scan.keys.len() < scan.max {
                    scan.keys.push(name.to_vec());
                }
            }
        },
        |_| (),
    )
}

/// Counts the keys of `slot` in the caller's database, or (`names`: `Some(max)`) collects up to
/// `max` of their names, in one go. Counting visits the whole keyspace (O(keys)); collecting
/// stops once it has `max` names (a slot of 600 keys among 10 M, 10 names: about 2 % of the
/// keyspace) and visits all of it only when the slot has fewer.
///
/// # Safety
/// `ctx` is the context of the command being run, on the main thread.
pub unsafe fn scan_slot(
    ctx: *mut raw::RedisModuleCtx,
    slot: u16,
    names: Option<usize>,
) -> (u64, Vec<Vec<u8>>) {
    let mut scan = SlotScan::new(slot, names.unwrap_or(0));
    let cursor = rm!(RedisModule_ScanCursorCreate)();
    while scan.step(ctx, cursor) {
        if names.is_some() && scan.keys.len() >= scan.max {
            break;
        }
    }
    rm!(RedisModule_ScanCursorDestroy)(cursor);
    (scan.count, scan.keys)
}

/// One count in progress.
struct Count {
    client: *mut raw::RedisModuleBlockedClient,
    db: c_int,
    cursor: *mut raw::RedisModuleScanCursor,
    scan: SlotScan,
}

thread_local! {
    /// The counts in progress, oldest first (main thread only).
    static COUNTS: RefCell<Vec<Count>> = const { RefCell::new(Vec::new()) };
    /// Whether the timer that advances them is armed.
    static ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether `ctx`'s client may be blocked (not in `MULTI`, a script or a module's call).
///
/// # Safety
/// `ctx` is the context of the command being run.
pub unsafe fn may_block(ctx: *mut raw::RedisModuleCtx) -> bool {
    let flags = rm!(RedisModule_GetContextFlags)(ctx) as u32;
    flags
        & (raw::REDISMODULE_CTX_FLAGS_MULTI
            | raw::REDISMODULE_CTX_FLAGS_LUA
            | raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING)
        == 0
}

/// Blocks the calling client and starts counting the keys of `slot` in its database; the client
/// gets the count when the scan is over. False (nothing done) when the client cannot block.
///
/// # Safety
/// `ctx` is the context of the command being run, on the main thread.
pub unsafe fn start(ctx: *mut raw::RedisModuleCtx, slot: u16) -> bool {
    if !may_block(ctx) {
        return false;
    }
    let db = rm!(RedisModule_GetSelectedDb)(ctx);
    let client = rm!(RedisModule_BlockClient)(ctx, Some(reply_count), None, Some(free_count), 0);
    if client.is_null() {
        return false;
    }
    let cursor = rm!(RedisModule_ScanCursorCreate)();
    COUNTS.with(|c| {
        c.borrow_mut().push(Count {
            client,
            db,
            cursor,
            scan: SlotScan::new(slot, 0),
        })
    });
    arm(ctx);
    true
}

/// Whether a count is in progress (the module must not unload under it).
pub fn counting() -> bool {
    COUNTS.with(|c| !c.borrow().is_empty())
}

/// Schedules the next slice for the next pass of the event loop.
unsafe fn arm(ctx: *mut raw::RedisModuleCtx) {
    if ARMED.with(|a| a.replace(true)) {
        return;
    }
    rm!(RedisModule_CreateTimer)(ctx, 0, Some(slice), std::ptr::null_mut());
}

/// The timer: scans for at most [`SLICE`], the oldest count first, and answers the counts that
/// are over.
extern "C" fn slice(ctx: *mut raw::RedisModuleCtx, _data: *mut c_void) {
    ARMED.with(|a| a.set(false));
    guard(
        "CLUSTER COUNTKEYSINSLOT",
        || unsafe { advance(ctx) },
        |_| unsafe { abandon_all() },
    );
    if counting() {
        // SAFETY: the timer's context, on the main thread.
        unsafe { arm(ctx) };
    }
}

/// One slice of scanning.
///
/// # Safety
/// `ctx` is a timer's context, on the main thread.
unsafe fn advance(ctx: *mut raw::RedisModuleCtx) {
    let deadline = Instant::now() + SLICE;
    loop {
        // The oldest count, taken out while it scans (nothing else touches the list meanwhile).
        let Some(mut count) = COUNTS.with(|c| {
            let mut c = c.borrow_mut();
            (!c.is_empty()).then(|| c.remove(0))
        }) else {
            return;
        };
        let over = scan_until(ctx, &mut count, deadline);
        if over {
            finish(count);
        } else {
            COUNTS.with(|c| c.borrow_mut().insert(0, count));
            return;
        }
        if Instant::now() >= deadline {
            return;
        }
    }
}

/// Scans `count`'s database until the scan is over (true) or `deadline` passes (false).
///
/// # Safety
/// As [`advance`].
unsafe fn scan_until(ctx: *mut raw::RedisModuleCtx, count: &mut Count, deadline: Instant) -> bool {
    if rm!(RedisModule_SelectDb)(ctx, count.db) != raw::REDISMODULE_OK as c_int {
        return true;
    }
    let mut calls = 0u32;
    loop {
        if !count.scan.step(ctx, count.cursor) {
            return true;
        }
        calls += 1;
        if calls % CALLS_PER_CLOCK_CHECK == 0 && Instant::now() >= deadline {
            return false;
        }
    }
}

/// Answers a count that is over and frees its cursor.
///
/// # Safety
/// Main thread; `count` was taken out of [`COUNTS`].
unsafe fn finish(count: Count) {
    rm!(RedisModule_ScanCursorDestroy)(count.cursor);
    let keys = Box::into_raw(Box::new(count.scan.count));
    if rm!(RedisModule_UnblockClient)(count.client, keys.cast()) != raw::REDISMODULE_OK as c_int {
        drop(Box::from_raw(keys));
    }
}

/// After a panic in a slice: every count in progress answers an error rather than wait forever.
///
/// # Safety
/// Main thread.
unsafe fn abandon_all() {
    let counts = COUNTS.with(|c| std::mem::take(&mut *c.borrow_mut()));
    for count in counts {
        rm!(RedisModule_ScanCursorDestroy)(count.cursor);
        // No private data: the reply callback answers an error.
        rm!(RedisModule_UnblockClient)(count.client, std::ptr::null_mut());
    }
    log_warning("umcluster: CLUSTER COUNTKEYSINSLOT abandoned its counts in progress");
}

/// The blocked client's reply: the count, or an error if the count was abandoned.
extern "C" fn reply_count(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    // SAFETY: the reply callback's context; its private data is what `finish` handed over.
    unsafe {
        let keys = rm!(RedisModule_GetBlockedClientPrivateData)(ctx) as *const u64;
        if keys.is_null() {
            rm!(RedisModule_ReplyWithError)(
                ctx,
                c"ERR umcluster: internal error in CLUSTER COUNTKEYSINSLOT".as_ptr(),
            );
        } else {
            rm!(RedisModule_ReplyWithLongLong)(ctx, (*keys).min(i64::MAX as u64) as i64);
        }
    }
    raw::REDISMODULE_OK as c_int
}

extern "C" fn free_count(_ctx: *mut raw::RedisModuleCtx, privdata: *mut c_void) {
    if !privdata.is_null() {
        // SAFETY: made by `finish` with `Box::into_raw`, freed once, here.
        unsafe { drop(Box::from_raw(privdata as *mut u64)) };
    }
}
