//! Which connection is the command filter looking at?
//!
//! Redis 7.0's command filter receives the arguments only, not the client. Routing needs the
//! client for the rules a native cluster node applies per connection: `ASKING` is one-shot per
//! connection, `READONLY` is per connection, a redirect inside `MULTI` must abort the transaction,
//! and commands from this replica's master must never be redirected (`mustObeyClient()`).
//!
//! The server knows the client it is executing: `server.current_client`, a field of the exported
//! global `server` (redis-server is linked with `-rdynamic`). Its offset differs between builds,
//! so the module finds it at run time instead of assuming a layout, with two facts that every
//! redis version from 6.2 to 8 keeps:
//! - a module command's context starts `{ getapifuncptr, module, client }`, so inside one of our
//!   commands the calling client's address is known, and
//! - a client struct starts `{ uint64_t id, uint64_t flags }` (7.0 and later), checked against
//!   `RedisModule_GetClientId` before anything is trusted.
//!
//! Calibration compares words of the `server` struct (its exact size comes from the dynamic
//! symbol table) with the calling client's address, without dereferencing anything. If several
//! words match (7.2 keeps `executing_client` next to `current_client`), a nested call through
//! `RedisModule_Call` tells them apart: only `current_client` still names the caller inside it.
//! The offset is used only when exactly one candidate survives, and every later call of one of our
//! commands re-checks it; a mismatch switches identity off (the filter then takes its
//! conservative branches) and logs why.

use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use redis_module::raw;

/// Client flag bits (identical in redis 7.0 to 8.x `server.h`).
pub mod flags {
    pub const MASTER: u64 = 1 << 1;
    pub const MULTI: u64 = 1 << 3;
    /// The fake client running a script's `redis.call`.
    pub const SCRIPT: u64 = 1 << 8;
    /// The fake client of a module's `RedisModule_Call`.
    pub const MODULE: u64 = 1 << 27;
}

/// `CLIENT_ID_AOF`: the fake client replaying the AOF.
const AOF_CLIENT_ID: u64 = u64::MAX;

const UNKNOWN: usize = usize::MAX;

static SERVER_BASE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static SERVER_SIZE: AtomicUsize = AtomicUsize::new(0);
static CURRENT_CLIENT_OFFSET: AtomicUsize = AtomicUsize::new(UNKNOWN);
/// `&server.current_client` once calibrated (null while identity is off): what the filter's fast
/// path reads, one load instead of two and a comparison.
static CURRENT_CLIENT_AT: AtomicPtr<*const u64> = AtomicPtr::new(std::ptr::null_mut());

/// Records the calibrated offset (or `UNKNOWN`) and the address the fast path reads.
fn set_offset(offset: usize) {
    let base = SERVER_BASE.load(Ordering::Relaxed);
    let at = if offset == UNKNOWN || base.is_null() {
        std::ptr::null_mut()
    } else {
        // SAFETY: `offset` lies inside the `server` symbol (see `calibrate`).
        unsafe { base.add(offset) as *mut *const u64 }
    };
    CURRENT_CLIENT_OFFSET.store(offset, Ordering::Relaxed);
    CURRENT_CLIENT_AT.store(at, Ordering::Relaxed);
}

/// The client whose command is being filtered, as far as the filter can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Identity is not available (not calibrated yet, or calibration failed).
    Unknown,
    /// No client: a module call from a timer or thread. Never redirected.
    Internal,
    Client {
        id: u64,
        flags: u64,
    },
}

impl Caller {
    /// The master link or the AOF: the server must obey it, whatever the slot table says.
    pub fn must_obey(self) -> bool {
        match self {
            Caller::Client { id, flags } => id == AOF_CLIENT_ID || flags & flags::MASTER != 0,
            Caller::Internal => true,
            Caller::Unknown => false,
        }
    }

    pub fn in_multi(self) -> bool {
        matches!(self, Caller::Client { flags, .. } if flags & flags::MULTI != 0)
    }

    pub fn id(self) -> Option<u64> {
        match self {
            Caller::Client { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// Whether the filter can identify clients.
pub fn identity_available() -> bool {
    CURRENT_CLIENT_OFFSET.load(Ordering::Relaxed) != UNKNOWN
}

/// The client currently executing a command, read from `server.current_client`.
#[inline]
pub fn current() -> Caller {
    let offset = CURRENT_CLIENT_OFFSET.load(Ordering::Relaxed);
    if offset == UNKNOWN {
        return Caller::Unknown;
    }
    let base = SERVER_BASE.load(Ordering::Relaxed);
    // SAFETY: `offset` was verified to lie inside the `server` symbol and to hold
    // `current_client`, which the server sets to a live client (or NULL) around every command.
    unsafe {
        let client = std::ptr::read(base.add(offset) as *const *const u64);
        if client.is_null() {
            return Caller::Internal;
        }
        Caller::Client {
            id: std::ptr::read(client),
            flags: std::ptr::read(client.add(1)),
        }
    }
}

/// `server.current_client`: the client executing the command, a live client struct (its `id`
/// and `flags` first), or null when there is none or identity is off.
#[inline(always)]
pub fn current_client() -> *const u64 {
    let at = CURRENT_CLIENT_AT.load(Ordering::Relaxed);
    if at.is_null() {
        return std::ptr::null();
    }
    // SAFETY: as in `current`: `at` is `&server.current_client`, a live client or NULL.
    unsafe { std::ptr::read(at) }
}

/// Whether the command comes from a known client that routing treats plainly: not the master
/// link, not the AOF, not in `MULTI` (false when identity is off or there is no client).
#[inline(always)]
pub fn current_is_plain_client() -> bool {
    // SAFETY: read from `current_client`.
    unsafe { is_plain_client(current_client()) }
}

/// [`current_is_plain_client`] for `client`, read from [`current_client`].
///
/// # Safety
/// `client` must come from [`current_client`], in the same command.
#[inline(always)]
pub unsafe fn is_plain_client(client: *const u64) -> bool {
    // A live client struct (see `current_client`).
    !client.is_null()
        && std::ptr::read(client) != AOF_CLIENT_ID
        && std::ptr::read(client.add(1)) & (flags::MASTER | flags::MULTI) == 0
}

/// Whether the client a module command's context names is a script's (a `redis.call`).
///
/// # Safety
/// `ctx` must be the context the server passed to a module command.
pub unsafe fn ctx_client_is_script(ctx: *mut raw::RedisModuleCtx) -> bool {
    match ctx_client(ctx) {
        Some(client) => std::ptr::read(client.add(1)) & flags::SCRIPT != 0,
        None => {
            super::rm!(RedisModule_GetContextFlags)(ctx) as u32 & raw::REDISMODULE_CTX_FLAGS_LUA
                != 0
        }
    }
}

/// Whether the client executing the command is in `MULTI`: the same answer as
/// `current().in_multi()` (false when identity is off or there is no client), cheaper.
#[inline(always)]
pub fn current_in_multi() -> bool {
    let client = current_client();
    // SAFETY: a live client struct (see `current_client`).
    !client.is_null() && unsafe { std::ptr::read(client.add(1)) } & flags::MULTI != 0
}

/// Locates the `server` symbol and its size. Returns false (and identity stays off) if the
/// server binary does not export it.
pub fn locate_server_symbol() -> bool {
    // SAFETY: dlsym/dladdr1 only read the dynamic linker's tables.
    unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, c"server".as_ptr());
        if sym.is_null() {
            return false;
        }
        let mut info: libc::Dl_info = std::mem::zeroed();
        let mut extra: *mut c_void = std::ptr::null_mut();
        const RTLD_DL_SYMENT: libc::c_int = 1;
        if libc::dladdr1(sym, &mut info, &mut extra, RTLD_DL_SYMENT) == 0 || extra.is_null() {
            return false;
        }
        let elf_sym = &*(extra as *const libc::Elf64_Sym);
        let size = elf_sym.st_size as usize;
        if size < 64 || info.dli_saddr != sym {
            return false;
        }
        SERVER_BASE.store(sym as *mut u8, Ordering::Relaxed);
        SERVER_SIZE.store(size, Ordering::Relaxed);
        true
    }
}

/// The client a module command's context names (its third word), unchecked: only to compare
/// with a client read from `server.current_client` (equal, they are the same live client).
///
/// # Safety
/// `ctx` must be the context the server passed to a module command.
#[inline(always)]
pub unsafe fn ctx_client_word(ctx: *mut raw::RedisModuleCtx) -> *const u64 {
    *(ctx as *const *const u64).add(2)
}

/// The client a module command's context names (its third word), once its id is the one
/// `RedisModule_GetClientId` gives; `None` otherwise.
///
/// # Safety
/// `ctx` must be the context the server passed to a module command.
unsafe fn ctx_client(ctx: *mut raw::RedisModuleCtx) -> Option<*const u64> {
    let get_id = raw::RedisModule_GetClientId?;
    let client = ctx_client_word(ctx);
    if client.is_null() {
        return None;
    }
    let id = get_id(ctx);
    (id != 0 && std::ptr::read(client) == id).then_some(client)
}

/// The calling client's address, from a module command's context ([`ctx_client`]). `None` for
/// the fake clients of scripts and module calls: for those, `server.current_client` rightly
/// names somebody else (the script's caller).
///
/// # Safety
/// `ctx` must be the context the server passed to a module command.
unsafe fn client_from_ctx(ctx: *mut raw::RedisModuleCtx) -> Option<usize> {
    let client = ctx_client(ctx)?;
    let client_flags = std::ptr::read(client.add(1));
    if client_flags & (flags::SCRIPT | flags::MODULE) != 0 {
        return None;
    }
    Some(client as usize)
}

fn words_equal_to(value: usize) -> Vec<usize> {
    let base = SERVER_BASE.load(Ordering::Relaxed);
    let size = SERVER_SIZE.load(Ordering::Relaxed);
    if base.is_null() {
        return Vec::new();
    }
    let align = std::mem::align_of::<usize>();
    let start = base.align_offset(align);
    (start..size.saturating_sub(std::mem::size_of::<usize>() - 1))
        .step_by(align)
        // SAFETY: inside the `server` object, aligned; plain integer reads, nothing dereferenced.
        .filter(|&off| unsafe { std::ptr::read(base.add(off) as *const usize) } == value)
        .collect()
}

/// Calibration state shared between [`calibrate`] and the nested probe command.
static PROBE_CLIENT: AtomicUsize = AtomicUsize::new(0);
static PROBE_RESULT: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// Outcome of a calibration attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calibration {
    AlreadyDone,
    Found(usize),
    /// Not possible from this call (inside a script, no client, ...): try again later.
    NotNow,
    /// The layout is not what we expect; identity stays off.
    Failed(&'static str),
}

/// Tries to find `server.current_client`, from inside one of our commands called by a client.
/// `probe` runs the nested probe command through `RedisModule_Call`.
///
/// # Safety
/// `ctx` must be the context the server passed to a module command.
pub unsafe fn calibrate(ctx: *mut raw::RedisModuleCtx, probe: impl FnOnce()) -> Calibration {
    if identity_available() {
        return verify(ctx);
    }
    if SERVER_BASE.load(Ordering::Relaxed).is_null() {
        return Calibration::Failed("the server binary does not export its 'server' symbol");
    }
    let Some(client) = client_from_ctx(ctx) else {
        return Calibration::NotNow;
    };
    let mut candidates = words_equal_to(client);
    if candidates.is_empty() {
        return Calibration::NotNow;
    }
    if candidates.len() > 1 {
        PROBE_CLIENT.store(client, Ordering::Relaxed);
        if let Ok(mut r) = PROBE_RESULT.lock() {
            r.clear();
        }
        probe();
        PROBE_CLIENT.store(0, Ordering::Relaxed);
        let inside = PROBE_RESULT.lock().map(|r| r.clone()).unwrap_or_default();
        candidates.retain(|c| inside.contains(c));
    }
    match candidates.as_slice() {
        [only] => {
            set_offset(*only);
            Calibration::Found(*only)
        }
        [] => Calibration::Failed(
            "no word of the server struct names the caller during a nested call",
        ),
        _ => Calibration::Failed("several words of the server struct name the caller"),
    }
}

/// Body of the nested probe command: records which words still name the original caller.
pub fn probe_body() {
    let client = PROBE_CLIENT.load(Ordering::Relaxed);
    if client == 0 {
        return;
    }
    let found = words_equal_to(client);
    if let Ok(mut r) = PROBE_RESULT.lock() {
        *r = found;
    }
}

/// Re-checks a calibrated offset against the context of a command a client is running.
unsafe fn verify(ctx: *mut raw::RedisModuleCtx) -> Calibration {
    let Some(client) = client_from_ctx(ctx) else {
        return Calibration::AlreadyDone;
    };
    let offset = CURRENT_CLIENT_OFFSET.load(Ordering::Relaxed);
    let base = SERVER_BASE.load(Ordering::Relaxed);
    let seen = std::ptr::read(base.add(offset) as *const usize);
    if seen == client {
        Calibration::AlreadyDone
    } else {
        set_offset(UNKNOWN);
        Calibration::Failed("server.current_client no longer names the calling client")
    }
}

// --- The calling client's database -------------------------------------------------------------
//
// Routing asks whether a key exists only in migrating and importing slots, and then in the
// caller's database. The API tells a client's database only with its whole info
// (`RedisModule_GetClientInfoById` formats the peer address: a `getpeername` system call and
// about 2,000 instructions, on every command of a moving slot). A client struct keeps
// `redisDb *db`, a pointer into the array `server.db`, and `SELECT` changes only that pointer.
// Every version from 7.0 to 7.4 starts the client struct `{ id, flags, conn, resp, db }`, `db` at
// byte 32. That is checked, not assumed: once, inside one of the module's commands called by a
// client, the module selects another database on that client and back (`RedisModule_SelectDb`)
// and the word must follow (the other words are not compared: some hold padding). The two
// pointers give the array's base and element size. Every later command of the module a client
// runs re-checks the result against `RedisModule_GetSelectedDb`; a mismatch switches it off
// (the API again).

/// Address of `server.db[0]` and the size of one `redisDb`; 0 while the layout is not known
/// (not calibrated yet, or switched off).
static DB_BASE: AtomicUsize = AtomicUsize::new(0);
static DB_STRIDE: AtomicUsize = AtomicUsize::new(0);
/// Whether the database calibration was attempted (it runs once).
static DB_TRIED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Where `db` sits in the client struct (see above).
pub const DB_FIELD_AT: usize = 32;

/// Outcome of [`calibrate_db`] worth a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbCalibration {
    /// Nothing to report (done before, or not possible from this call).
    Quiet,
    /// The layout is known; the size of one `redisDb`.
    Found {
        stride: usize,
    },
    Failed(&'static str),
}

/// Finds (once) or re-checks where a client struct keeps its database; see above.
///
/// # Safety
/// `ctx` must be the context the server passed to a module command, on the main thread.
pub unsafe fn calibrate_db(ctx: *mut raw::RedisModuleCtx) -> DbCalibration {
    let Some(client) = client_from_ctx(ctx) else {
        return DbCalibration::Quiet;
    };
    let (Some(get_db), Some(select_db)) =
        (raw::RedisModule_GetSelectedDb, raw::RedisModule_SelectDb)
    else {
        return DbCalibration::Quiet;
    };
    if DB_TRIED.load(Ordering::Relaxed) {
        if DB_STRIDE.load(Ordering::Relaxed) == 0
            || db_of_client(client as *const u64) == Some(get_db(ctx))
        {
            return DbCalibration::Quiet;
        }
        DB_STRIDE.store(0, Ordering::Relaxed);
        return DbCalibration::Failed("a client's database pointer no longer gives its database");
    }
    DB_TRIED.store(true, Ordering::Relaxed);
    let word = || std::ptr::read((client as *const u8).add(DB_FIELD_AT) as *const usize);
    let original = get_db(ctx);
    let other = if original == 0 { 1 } else { 0 };
    let before = word();
    if select_db(ctx, other) != raw::REDISMODULE_OK as i32 {
        return DbCalibration::Failed("the server has one database only");
    }
    let during = word();
    let restored = select_db(ctx, original) == raw::REDISMODULE_OK as i32;
    let after = word();
    if !restored || get_db(ctx) != original {
        return DbCalibration::Failed("could not select the client's database back");
    }
    if before != after || during == before {
        return DbCalibration::Failed("the client struct's db field does not follow SELECT");
    }
    // p(db) = base + db * stride, seen at two databases.
    let (p0, p1) = (before as i128, during as i128);
    let steps = i128::from(other) - i128::from(original);
    let stride = (p1 - p0) / steps;
    let base = p0 - i128::from(original) * stride;
    if (p1 - p0) % steps != 0 || !(8..=1 << 16).contains(&stride) || base <= 0 {
        return DbCalibration::Failed("the database pointers are not an array");
    }
    DB_BASE.store(base as usize, Ordering::Relaxed);
    DB_STRIDE.store(stride as usize, Ordering::Relaxed);
    DbCalibration::Found {
        stride: stride as usize,
    }
}

/// The database of the client executing the command (`server.current_client`), once both
/// calibrations succeeded; `None` otherwise (no client, or not known: ask the API).
#[inline]
pub fn current_db() -> Option<i32> {
    let client = current_client();
    // SAFETY: a live client struct (see `current_client`).
    (!client.is_null())
        .then(|| unsafe { db_of_client(client) })
        .flatten()
}

/// The database a live client has selected, from its `db` pointer.
///
/// # Safety
/// `client` must point to a live client struct.
unsafe fn db_of_client(client: *const u64) -> Option<i32> {
    let stride = DB_STRIDE.load(Ordering::Relaxed);
    if stride == 0 {
        return None;
    }
    let base = DB_BASE.load(Ordering::Relaxed);
    let db = std::ptr::read((client as *const u8).add(DB_FIELD_AT) as *const usize);
    let from_base = db.checked_sub(base)?;
    if from_base % stride != 0 {
        return None;
    }
    i32::try_from(from_base / stride).ok()
}
