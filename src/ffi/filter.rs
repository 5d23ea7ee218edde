//! The command filter: the hot path. Runs in `processCommand()` for every command the server
//! executes (client commands, commands queued in MULTI, the master link, each `redis.call` of a
//! script), before the server even looks the command up.
//!
//! A filter cannot reply; it can only rewrite the arguments. So:
//! - a command this node executes is left untouched (the common case: one hash lookup of the
//!   name, a CRC16 per key, one table read; no allocation);
//! - a command that must be redirected becomes `umcluster.redirect "<error line>" ...`, a module
//!   command that replies that error (`-MOVED 3999 127.0.0.1:7002`); a `MOVED` or `ASK` line is
//!   made once per slot and handed over by reference, its reply made once too
//!   ([`redirect_cache`]); once cached, a command whose keys start at its first argument is
//!   instead renamed in place to `u.r <key> ...`, which replies its slot's cached redirect
//!   ([`rename_to_quick_redirect`]);
//! - inside MULTI it instead becomes an unknown command whose name is the redirect
//!   (`'MOVED 3999 127.0.0.1:7002'`): the server rejects it at queue time and flags the
//!   transaction, so `EXEC` answers `-EXECABORT` and runs nothing. A module command would merely
//!   be queued, and the transaction would run partially. This is the one place where the reply
//!   text differs from a native node's (see README, "Transactions");
//! - inside a script, a command on a key this node does not serve becomes
//!   `umcluster.redirect "ERR Script attempted to access a non local key in a cluster node"`, so
//!   `redis.call` raises that error and the key is never touched locally;
//! - `ASKING`, `READONLY`, `READWRITE` and `CLUSTER` become the module's own commands.
//!
//! Never redirected: the master link and AOF replay (the server must obey them), the module's own
//! calls (registered with `NOSELF`), and calls with no client at all.
//!
//! Three paths, cheapest first, each deciding only what it can: [`one_key_fast`] (raw reads of
//! the context and the argument strings: one-key commands and keyless ones on owned slots, and
//! through [`moved_or_full`] a `MOVED` already cached),
//! [`general_filter`] (the first version of the fast path, through [`router::fast_path_args`]),
//! and the full rules ([`slow_filter`], with the state held exclusively), which decide
//! everything from scratch.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use redis_module::raw;

use super::client::{self, Caller};
use super::redirect_cache;
use super::{
    guard, inline_string_bytes, inline_strings, int_encoded_value, new_string, plain_string_bytes,
    rm, sds8_bytes, string_bytes, DetachedContext,
};
use crate::command_table::{self, parse_strict_i64, CmdFlags, FastPlan, Keys, Role};
use crate::router::{self, ClientView, Decision, Fast, SlotRoute};
use crate::slot::key_slot;
use crate::state::{self, State};

/// Name of the module command that replies a redirect or error computed by the filter.
pub const REDIRECT_COMMAND: &str = "umcluster.redirect";

/// Name of the module command that runs a client's `PUBLISH` and forwards it to the peers.
pub const PUBLISH_COMMAND: &str = "umcluster.publish";

/// Name of the module command that answers `INFO` with `cluster_enabled:1`.
pub const INFO_COMMAND: &str = "umcluster.info";

/// Error a script gets for a key this node does not serve (native text).
pub(super) const SCRIPT_NON_LOCAL: &str =
    "ERR Script attempted to access a non local key in a cluster node";
/// Error a script gets while this node has no topology (native text).
const SCRIPT_CLUSTER_DOWN: &str =
    "ERR Script attempted to execute a command while the cluster is down";

/// A thread-safe context kept for key-existence checks (the filter has no context of its own).
pub static EXISTS_CTX: DetachedContext = DetachedContext::new();

/// Entry point registered with `RedisModule_RegisterCommandFilter` on a CPU without
/// carry-less multiplication (see [`command_filter_clmul`]).
///
/// # Safety
/// Called by the server with the filter context of the command being processed.
pub unsafe extern "C" fn command_filter(fctx: *mut raw::RedisModuleCommandFilterCtx) {
    filter::<false>(fctx)
}

/// [`command_filter`] with key slots computed by carry-less multiplication
/// ([`crate::slot::clmul`]): registered instead of it when the CPU has `PCLMULQDQ`.
///
/// # Safety
/// As [`command_filter`], and the CPU must have `PCLMULQDQ`.
#[cfg(target_arch = "x86_64")]
pub unsafe extern "C" fn command_filter_clmul(fctx: *mut raw::RedisModuleCommandFilterCtx) {
    filter::<true>(fctx)
}

/// The filter callback this CPU can run fastest, and how it hashes keys (for the load log line).
///
/// Debug builds only: `UMCLUSTER_DEBUG_PORTABLE_FILTER=1` in the server's environment picks the
/// portable one anyway, so that the tests run both.
pub fn best_command_filter() -> (
    unsafe extern "C" fn(*mut raw::RedisModuleCommandFilterCtx),
    &'static str,
) {
    #[cfg(debug_assertions)]
    let forced_portable =
        std::env::var_os("UMCLUSTER_DEBUG_PORTABLE_FILTER").is_some_and(|v| v == "1");
    #[cfg(not(debug_assertions))]
    let forced_portable = false;
    #[cfg(target_arch = "x86_64")]
    if !forced_portable && crate::slot::clmul::available() {
        return (
            command_filter_clmul,
            "carry-less multiplication (PCLMULQDQ)",
        );
    }
    let _ = forced_portable;
    (command_filter, "portable table")
}

/// A command argument: the server string and its bytes.
#[derive(Clone, Copy)]
struct Arg {
    ptr: *mut raw::RedisModuleString,
    /// Integer-encoded argument: its decimal text lives in `digits`.
    int: bool,
    digits: [u8; 24],
    len: usize,
    data: *const u8,
}

impl Arg {
    const EMPTY: Arg = Arg {
        ptr: std::ptr::null_mut(),
        int: false,
        digits: [0; 24],
        len: 0,
        data: std::ptr::null(),
    };

    /// # Safety
    /// `ptr` must be a live argument of the command being filtered.
    unsafe fn new(ptr: *mut raw::RedisModuleString) -> Arg {
        let mut arg = Arg { ptr, ..Arg::EMPTY };
        let digits = arg.digits.as_ptr();
        let bytes = string_bytes(ptr, &mut arg.digits);
        let (data, len) = (bytes.as_ptr(), bytes.len());
        arg.len = len;
        if data == digits {
            arg.int = true;
        } else {
            arg.data = data;
        }
        arg
    }

    fn bytes(&self) -> &[u8] {
        if self.int {
            &self.digits[..self.len]
        } else if self.data.is_null() {
            &[]
        } else {
            // SAFETY: points into the argument's string, alive for the whole filter call.
            unsafe { std::slice::from_raw_parts(self.data, self.len) }
        }
    }
}

impl AsRef<[u8]> for Arg {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

/// Key arguments of one command: inline for the usual handful, on the heap beyond.
struct KeyArgs {
    inline: [Arg; INLINE_KEYS],
    len: usize,
    heap: Vec<Arg>,
}

const INLINE_KEYS: usize = 8;

impl KeyArgs {
    fn new() -> KeyArgs {
        KeyArgs {
            inline: [Arg::EMPTY; INLINE_KEYS],
            len: 0,
            heap: Vec::new(),
        }
    }

    fn push(&mut self, arg: Arg) {
        if self.len < INLINE_KEYS {
            self.inline[self.len] = arg;
            self.len += 1;
        } else {
            self.heap.push(arg);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Arg> + Clone {
        self.inline[..self.len].iter().chain(self.heap.iter())
    }
}

/// The command being filtered. `CLMUL`: key slots by carry-less multiplication (only in
/// [`command_filter_clmul`], whose CPU check makes it sound).
struct Filter<const CLMUL: bool = false> {
    fctx: *mut raw::RedisModuleCommandFilterCtx,
    argc: usize,
    /// The context's own argument array, read directly on the fast path (see [`direct_argv`]);
    /// null to go through the API (always on the slow path, which may rewrite the arguments).
    argv: *const *mut raw::RedisModuleString,
}

impl<const CLMUL: bool> Filter<CLMUL> {
    /// The slot of `key`, by carry-less multiplication in the filter registered for CPUs that
    /// have it.
    #[inline(always)]
    fn slot_of(key: &[u8]) -> u16 {
        #[cfg(target_arch = "x86_64")]
        if CLMUL {
            // SAFETY: `Filter<true>` only exists in `command_filter_clmul`, registered only
            // after `clmul::available()` said yes.
            return unsafe { crate::slot::clmul::key_slot(key) };
        }
        crate::slot::key_slot_inline(key)
    }

    #[inline(always)]
    unsafe fn arg_ptr(&self, i: usize) -> *mut raw::RedisModuleString {
        if self.argv.is_null() {
            rm!(RedisModule_CommandFilterArgGet)(self.fctx, i as c_int)
        } else if i < self.argc {
            *self.argv.add(i)
        } else {
            std::ptr::null_mut()
        }
    }

    /// Argument `i` parsed as the server parses an integer (a `numkeys` argument).
    #[inline]
    unsafe fn arg_int(&self, i: usize) -> Option<i64> {
        let ptr = self.arg_ptr(i);
        match plain_string_bytes(ptr) {
            Some(bytes) => parse_strict_i64(bytes),
            None => int_encoded_value(ptr),
        }
    }

    unsafe fn arg(&self, i: usize) -> Arg {
        Arg::new(self.arg_ptr(i))
    }

    unsafe fn replace(&self, i: usize, text: &[u8]) {
        rm!(RedisModule_CommandFilterArgReplace)(self.fctx, i as c_int, new_string(text));
    }

    unsafe fn insert(&self, i: usize, text: &[u8]) {
        rm!(RedisModule_CommandFilterArgInsert)(self.fctx, i as c_int, new_string(text));
    }

    /// Turns the command into `umcluster.redirect <error>`; the remaining arguments are ignored.
    unsafe fn reply_error(&self, error: &[u8]) {
        self.replace(0, REDIRECT_COMMAND.as_bytes());
        if self.argc >= 2 {
            self.replace(1, error);
        } else {
            self.insert(1, error);
        }
    }

    /// Turns the command into `umcluster.redirect <cached line>` (see [`redirect_cache`]): both
    /// strings are the module's, retained rather than copied.
    unsafe fn answer_cached(&self, line: *mut raw::RedisModuleString) {
        let name = redirect_cache::command_name();
        rm!(RedisModule_RetainString)(std::ptr::null_mut(), name);
        rm!(RedisModule_CommandFilterArgReplace)(self.fctx, 0, name);
        rm!(RedisModule_RetainString)(std::ptr::null_mut(), line);
        if self.argc >= 2 {
            rm!(RedisModule_CommandFilterArgReplace)(self.fctx, 1, line);
        } else {
            rm!(RedisModule_CommandFilterArgInsert)(self.fctx, 1, line);
        }
    }

    /// Turns a command queued in MULTI into an unknown command named after the error, so the
    /// server rejects it and flags the transaction.
    unsafe fn reject_in_transaction(&self, error: &[u8]) {
        self.replace(0, error);
    }
}

impl<'a, const CLMUL: bool> router::Args<'a> for Filter<CLMUL> {
    #[inline(always)]
    fn bytes(&self, i: usize) -> Option<&'a [u8]> {
        // SAFETY: arguments of the command being filtered live for the whole filter call, and
        // the fast path, the only user, rewrites none. `argv` is only set when the sds layout
        // check passed too (see `verify_direct_argv`).
        unsafe {
            if self.argv.is_null() {
                plain_string_bytes(self.arg_ptr(i))
            } else {
                inline_string_bytes(self.arg_ptr(i))
            }
        }
    }

    #[inline(always)]
    fn int(&self, i: usize) -> Option<i64> {
        // SAFETY: as above.
        unsafe { self.arg_int(i) }
    }

    #[inline(always)]
    fn key_slot(&self, key: &[u8]) -> u16 {
        Self::slot_of(key)
    }

    #[inline(always)]
    fn key_slot_among_several(&self, key: &[u8]) -> u16 {
        #[cfg(target_arch = "x86_64")]
        if CLMUL {
            // SAFETY: as in `slot_of`.
            return unsafe { crate::slot::clmul::tag_first_key_slot(key) };
        }
        crate::slot::key_slot_inline(key)
    }

    #[inline(always)]
    fn tag_slot(&self, tag: &[u8]) -> u16 {
        #[cfg(target_arch = "x86_64")]
        if CLMUL {
            // SAFETY: as in `slot_of`.
            return unsafe { crate::slot::clmul::tag_slot(tag) };
        }
        crate::slot::tag_slot(tag)
    }
}

/// Both fast paths, then everything else, each under its own panic guard: a panic leaves the
/// command as it is (the server answers it, or rejects it, itself). The general path is a tail
/// call, so the one-key path keeps no registers and no stack frame of its own.
#[inline(always)]
unsafe fn filter<const CLMUL: bool>(fctx: *mut raw::RedisModuleCommandFilterCtx) {
    // Before the fast paths, which let unknown commands through untouched.
    #[cfg(debug_assertions)]
    if injected_panic(fctx) {
        // Straight to the full rules, which panic on it while they hold the state.
        return full_filter(fctx);
    }
    // SAFETY: reads only; see `one_key_fast`.
    match guard(
        "the command filter",
        || unsafe { one_key_fast::<CLMUL>(fctx) },
        |_| Quick::Unsure,
    ) {
        Quick::Run => {}
        Quick::Full => full_filter(fctx),
        Quick::Unsure => general_filter::<CLMUL>(fctx),
        Quick::NotServed(slot) => moved_or_full(fctx, slot),
    }
}

/// What [`one_key_fast`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quick {
    /// Nothing left to decide: the command runs untouched, or was turned into a cached `MOVED`.
    Run,
    /// The full rules decide ([`slow_filter`]): [`fast_path`] would not settle it either (a
    /// redirect, `MULTI`, a pending `ASKING` ...).
    Full,
    /// [`general_filter`] decides.
    Unsure,
    /// All keys in this slot, which this node does not serve as a stable owner: a quick
    /// `MOVED`, a quick run on a migrating slot, or the full rules ([`moved_or_full`]).
    NotServed(u16),
}

/// Debug builds: whether the command is the one that makes the filter panic
/// ([`DEBUG_FILTER_PANIC`]).
#[cfg(debug_assertions)]
unsafe fn injected_panic(fctx: *mut raw::RedisModuleCommandFilterCtx) -> bool {
    rm!(RedisModule_CommandFilterArgsCount)(fctx) >= 1
        && Arg::new(rm!(RedisModule_CommandFilterArgGet)(fctx, 0))
            .bytes()
            .eq_ignore_ascii_case(DEBUG_FILTER_PANIC)
}

/// The commonest case in as few instructions as possible: a command of up to 8 letters, spelled
/// in one case, whose one key sits at a fixed position (`GET k`, `SET k v`, `INCR k`, `HSET k f
/// v` ...), on a slot this node owns and that is not moving, from a client not in `MULTI`, with
/// no `ASKING` pending anywhere; or a command without keys ([`Quick::Run`]). Keys in a slot
/// not served here go to [`moved_or_full`] ([`Quick::NotServed`]); a command the general fast
/// path would not settle either goes straight to the full rules ([`Quick::Full`]: a
/// transaction, a pending `ASKING`); anything it does not look at goes to [`general_filter`].
/// So it only has to be right when it says [`Quick::Run`], and agrees with [`fast_path`] then.
///
/// Reads the filter context's fields and the argument strings directly, once the first command
/// has shown their layout is the expected one ([`DIRECT_ARGC`]).
#[inline(always)]
unsafe fn one_key_fast<const CLMUL: bool>(fctx: *mut raw::RedisModuleCommandFilterCtx) -> Quick {
    if DIRECT_ARGC.load(Ordering::Relaxed) != 1 {
        return Quick::Unsure;
    }
    let argv = context_argv(fctx);
    let argc = context_argc(fctx);
    if argc < 1 {
        return Quick::Unsure;
    }
    let argc = argc as usize;
    // SAFETY: nothing below re-enters the module.
    unsafe {
        state::peek(|st| {
            if st.connections.asking_pending() {
                return Quick::Full;
            }
            let Some(entry) = short_named_entry(st, *argv) else {
                return Quick::Unsure;
            };
            // One comparison for the commonest plan (a `match` on the plan is a jump table).
            let slot = if let Some(pos) = entry.one_key_at(argc) {
                let key = *argv.add(pos);
                // An embedded string (a key up to 44 bytes) in fewer reads, then any sdshdr8.
                let Some(key) = embstr_bytes(key).or_else(|| sds8_bytes(key)) else {
                    return Quick::Unsure;
                };
                Filter::<CLMUL>::slot_of(key)
            } else {
                match entry.fast {
                    FastPlan::NoKeys => return Quick::Run,
                    FastPlan::Slow => return Quick::Full,
                    FastPlan::Keys if entry.arity_ok(argc) => {
                        match several_keys_slot::<CLMUL>(entry, fctx, argc, argv) {
                            Ok(slot) => slot,
                            Err(Fast::NoKeys) => return Quick::Run,
                            Err(_) => return Quick::Full,
                        }
                    }
                    // A wrong arity, a key missing.
                    _ => return Quick::Unsure,
                }
            };
            if !st.table.owned_stable(slot) {
                Quick::NotServed(slot)
            } else if !client::current_in_multi() {
                Quick::Run
            } else {
                Quick::Full
            }
        })
    }
    .unwrap_or(Quick::Unsure)
}

/// For [`Quick::NotServed`] (a plain client, no `ASKING` pending: checked by [`one_key_fast`]
/// or below), the two commonest cases before the full rules:
/// - a slot another master owns, stable: `MOVED` with the line the full rules cached for the
///   slot the first time ([`redirect_cache`]); a script's call is told apart by the redirect
///   command itself;
/// - a slot migrating away, a one-key command: it runs if its key is still here, else gets the
///   cached `ASK` ([`quick_migrating`]).
///
/// Anything else goes to the full rules. Out of line, so the owned-slot path keeps no stack
/// frame.
#[inline(never)]
unsafe fn moved_or_full(fctx: *mut raw::RedisModuleCommandFilterCtx, slot: u16) {
    // SAFETY: as in `one_key_fast` (which saw the argument count there); the rewrite frees
    // the replaced arguments and re-enters nothing. The key lookup of a migrating slot may
    // expire the key, and another module's keyspace callback could then run a command through
    // this filter: the state is held as a shared borrow there, so such a nested command's full
    // rules fail (caught) instead of changing it underneath.
    let settled = guard(
        "the command filter",
        || unsafe {
            match state::peek(|st| st.table.get(slot)) {
                Some(SlotRoute::Remote { owner }) => {
                    state::peek(|st| quick_moved(st, fctx, slot, owner)) == Some(true)
                }
                Some(SlotRoute::Migrating { .. }) => {
                    state::try_with(|st| quick_migrating(st, fctx, slot)) == Some(true)
                }
                _ => false,
            }
        },
        |_| false,
    );
    if !settled {
        full_filter(fctx);
    }
}

/// Whether a command on a slot migrating away is settled here, as the full rules would decide
/// it for a one-key command (not blocking, not sharded pub/sub) from a plain client whose
/// database is known: its key still here, it runs, unless it writes a key on its way to the
/// destination (that waits: `TRYAGAIN`, from the full rules); its key gone, `ASK` with the line
/// the full rules cached, unless the key may still be on its way (`TRYAGAIN` again). Anything
/// else is left to the full rules.
unsafe fn quick_migrating(
    st: &State,
    fctx: *mut raw::RedisModuleCommandFilterCtx,
    slot: u16,
) -> bool {
    let client = client::current_client();
    if !client::is_plain_client(client) {
        return false;
    }
    let Some(db) = client::current_db() else {
        return false;
    };
    // `one_key_fast` read both from the context (its layout was checked: `DIRECT_ARGC`).
    let argv = context_argv(fctx);
    let argc = context_argc(fctx).max(0) as usize;
    let Some(entry) = short_named_entry(st, *argv) else {
        return false;
    };
    let Some(pos) = entry.one_key_at(argc) else {
        return false;
    };
    if entry.flags.contains(CmdFlags::BLOCKING) || entry.flags.contains(CmdFlags::PUBSUB_SHARD) {
        return false;
    }
    let key = Arg::new(*argv.add(pos));
    let on_its_way = || st.migrations.iter().any(|t| t.pipe.is_fenced(key.bytes()));
    if key_exists(db, &key) {
        let write =
            entry.flags.contains(CmdFlags::WRITE) || entry.flags.contains(CmdFlags::MAY_REPLICATE);
        return !(write && on_its_way());
    }
    if on_its_way() {
        return false;
    }
    // A migrating slot's cached line is its ASK (one redirect per slot and table version).
    let Some(line) = redirect_cache::line(slot, st.table_version) else {
        return false;
    };
    answer_with_cached_line(fctx, client, slot, pos == 1, line);
    true
}

/// Whether the command was turned into its slot's cached `MOVED` (see [`moved_or_full`]):
/// `slot` is `owner`'s, stable.
unsafe fn quick_moved(
    st: &State,
    fctx: *mut raw::RedisModuleCommandFilterCtx,
    slot: u16,
    owner: u16,
) -> bool {
    // A replica serves its master's slots to READONLY connections: the full rules decide.
    let client = client::current_client();
    if st.table.my_master == Some(owner) || !client::is_plain_client(client) {
        return false;
    }
    let Some(line) = redirect_cache::line(slot, st.table_version) else {
        return false;
    };
    // Looked up again rather than carried from `one_key_fast`, where it would cost every
    // command a register.
    let argv = context_argv(fctx);
    let key_first = context_argc(fctx) >= 2
        && short_named_entry(st, *argv).is_some_and(|entry| entry.keys_start_at_argument_1());
    answer_with_cached_line(fctx, client, slot, key_first, line);
    true
}

/// Hands the command of `client` (the current one) to the redirect command that replies
/// `line`, the cached redirect of `slot`: renamed in place to [`QUICK_REDIRECT_COMMAND`] when
/// its keys start at its first argument and the name can be overwritten
/// ([`rename_to_quick_redirect`]),
/// the slot handed over with it ([`redirect_cache::hand_over`]); else rewritten to
/// `umcluster.redirect <line>`.
///
/// # Safety
/// As [`quick_moved`]: `one_key_fast` checked the context's layout.
unsafe fn answer_with_cached_line(
    fctx: *mut raw::RedisModuleCommandFilterCtx,
    client: *const u64,
    slot: u16,
    key_first: bool,
    line: *mut raw::RedisModuleString,
) {
    if key_first && rename_to_quick_redirect(fctx) {
        redirect_cache::hand_over(client, slot);
        return;
    }
    Filter::<false> {
        fctx,
        argc: context_argc(fctx).max(0) as usize,
        argv: std::ptr::null(),
    }
    .answer_cached(line);
}

/// Name of the module command a redirected command is renamed to in place: `u.r <key> ...`
/// replies the redirect cached for its first argument's slot (see
/// `commands::quick_redirect_command`). Three bytes, so that it fits in the name of any
/// command whose keys start at its first argument (`GET`, `SET`, `TTL`, `DEL` are the
/// shortest), and as cheap for the server to look up as theirs.
pub const QUICK_REDIRECT_COMMAND: &str = "u.r";

/// Whether [`rename_to_quick_redirect`] may rename: set at load ([`enable_quick_rename`]) once
/// [`QUICK_REDIRECT_COMMAND`] is registered and this server's strings have the expected layout.
static QUICK_RENAME: AtomicBool = AtomicBool::new(false);

/// Where a `robj`'s `int refcount` sits: after the 4-byte word of `type`, `encoding` and `lru`.
const REFCOUNT_AT: usize = 4;

/// Overwrites the command's name with [`QUICK_REDIRECT_COMMAND`] in place, if it is an embedded
/// string that only the command holds and that is at least as long. Why not
/// `RedisModule_CommandFilterArgReplace`: it frees the name there (and the key, if replaced
/// too), and an 18-letter name costs the server's lookup twice what `GET` does; together most
/// of what a `MOVED` used to cost beyond a `GET`. Nothing else reads the name before the server
/// looks it up: filters run first in `processCommand()` and hand the same `argv` on; the
/// string is freed with the command's other arguments as usual (its allocation unchanged, only
/// its length shorter; a script's argument cache, the one other place such a string goes,
/// reuses it by its allocated size).
///
/// # Safety
/// `one_key_fast` checked the context's layout; the command's name is argument 0.
#[inline]
unsafe fn rename_to_quick_redirect(fctx: *mut raw::RedisModuleCommandFilterCtx) -> bool {
    if !QUICK_RENAME.load(Ordering::Relaxed) {
        return false;
    }
    let name = *context_argv(fctx);
    let new = QUICK_REDIRECT_COMMAND.as_bytes();
    if !embstr_bytes(name).is_some_and(|bytes| bytes.len() >= new.len()) || read_refcount(name) != 1
    {
        return false;
    }
    // The string's bytes, from its `ptr` field (an embedded string: inside its own allocation).
    let buf = std::ptr::read((name as *const u8).add(8) as *const *mut u8);
    std::ptr::copy_nonoverlapping(new.as_ptr(), buf, new.len());
    // The NUL the server's C string comparisons expect, and the sdshdr8's `len`.
    buf.add(new.len()).write(0);
    buf.sub(3).write(new.len() as u8);
    true
}

/// A server string's reference count.
///
/// # Safety
/// `s` must be a live `robj`.
#[inline(always)]
unsafe fn read_refcount(s: *const raw::RedisModuleString) -> i32 {
    std::ptr::read_unaligned((s as *const u8).add(REFCOUNT_AT) as *const i32)
}

/// Turns on renaming in place ([`rename_to_quick_redirect`]) if a string made here has the
/// layout it relies on: an embedded string of refcount 1 at [`REFCOUNT_AT`], 2 once retained.
/// Returns whether it is on.
///
/// # Safety
/// On the main thread, in OnLoad, after [`QUICK_REDIRECT_COMMAND`] was registered.
pub unsafe fn enable_quick_rename() -> bool {
    let s = new_string(b"get");
    if s.is_null() {
        return false;
    }
    let embedded = super::inline_strings() && embstr_bytes(s) == Some(&b"get"[..]);
    let single = read_refcount(s) == 1;
    rm!(RedisModule_RetainString)(std::ptr::null_mut(), s);
    let retained = read_refcount(s) == 2;
    rm!(RedisModule_FreeString)(std::ptr::null_mut(), s);
    rm!(RedisModule_FreeString)(std::ptr::null_mut(), s);
    let ok = embedded && single && retained;
    QUICK_RENAME.store(ok, Ordering::Relaxed);
    ok
}

/// [`router::several_keys_slot`] for [`one_key_fast`]: out of line, with the arguments built
/// here, so that the one-key path needs no stack frame.
#[inline(never)]
unsafe fn several_keys_slot<const CLMUL: bool>(
    entry: &crate::command_table::CommandEntry,
    fctx: *mut raw::RedisModuleCommandFilterCtx,
    argc: usize,
    argv: *const *mut raw::RedisModuleString,
) -> Result<u16, Fast> {
    router::several_keys_slot(entry, argc, &Filter::<CLMUL> { fctx, argc, argv })
}

/// `type` OBJ_STRING (0) in the low 4 bits of a `robj`'s first byte, `encoding`
/// OBJ_ENCODING_EMBSTR (8) above: an embedded string.
const EMBSTR_HEADER: u8 = 0x80;
/// Where an embedded string's bytes start: after the 16-byte `robj`, then `len`, `alloc` and
/// `flags` of its `sdshdr8`, all in one allocation.
const EMBSTR_BYTES_AT: usize = 16 + 3;

/// The bytes of an argument held as an embedded string (every argument up to 44 bytes), or
/// `None`.
///
/// # Safety
/// As [`sds8_bytes`], and the layout check behind [`DIRECT_ARGC`] must have passed.
#[inline(always)]
unsafe fn embstr_bytes<'a>(s: *const raw::RedisModuleString) -> Option<&'a [u8]> {
    if s.is_null() || std::ptr::read(s as *const u8) != EMBSTR_HEADER {
        return None;
    }
    let sds = std::ptr::read((s as *const u8).add(8) as *const *const u8);
    if sds != (s as *const u8).add(EMBSTR_BYTES_AT) {
        return None;
    }
    Some(std::slice::from_raw_parts(
        sds,
        std::ptr::read(sds.sub(3)) as usize,
    ))
}

/// A command name of 1 to 8 bytes as a little-endian word (as the short-name index keeps
/// names), and its length, in one read: in an embedded string ([`embstr_bytes`]) the 8 bytes
/// that end with the name's last one are all inside the allocation (the headers come before
/// the bytes), and a shift drops the ones before the name. `None` for anything else.
///
/// # Safety
/// As [`sds8_bytes`], and the layout check behind [`DIRECT_ARGC`] must have passed.
#[inline(always)]
unsafe fn short_name_word(s: *const raw::RedisModuleString) -> Option<(u64, usize)> {
    let name = embstr_bytes(s)?;
    let len = name.len();
    if !(1..=8).contains(&len) {
        return None;
    }
    let window = std::ptr::read_unaligned(name.as_ptr().add(len).sub(8) as *const u64);
    Some((u64::from_le(window) >> (64 - 8 * len), len))
}

/// The table entry of a command named by [`short_name_word`]'s kind of string (the fast path's
/// lookup).
///
/// # Safety
/// As [`short_name_word`].
#[inline(always)]
unsafe fn short_named_entry(
    st: &State,
    name: *const raw::RedisModuleString,
) -> Option<&crate::command_table::CommandEntry> {
    short_name_word(name).and_then(|(word, len)| st.commands.get_short_word(word, len))
}

/// [`slow_filter`] under the panic guard, for what [`one_key_fast`] sends to the full rules.
#[inline(never)]
unsafe fn full_filter(fctx: *mut raw::RedisModuleCommandFilterCtx) {
    let argc = rm!(RedisModule_CommandFilterArgsCount)(fctx);
    if argc < 1 {
        return;
    }
    let argc = argc as usize;
    guard(
        "the command filter",
        || unsafe { slow_filter(fctx, argc) },
        |_| (),
    )
}

/// Every command [`one_key_fast`] did not settle.
#[inline(never)]
unsafe fn general_filter<const CLMUL: bool>(fctx: *mut raw::RedisModuleCommandFilterCtx) {
    guard(
        "the command filter",
        || unsafe { general_filter_unguarded::<CLMUL>(fctx) },
        |_| (),
    )
}

#[inline(always)]
unsafe fn general_filter_unguarded<const CLMUL: bool>(fctx: *mut raw::RedisModuleCommandFilterCtx) {
    let argc = rm!(RedisModule_CommandFilterArgsCount)(fctx);
    if argc < 1 {
        return;
    }
    let argc = argc as usize;
    let f = Filter::<CLMUL> {
        fctx,
        argc,
        argv: direct_argv(fctx, argc),
    };
    // SAFETY: the fast path only reads the state and the arguments; nothing it calls re-enters
    // the module.
    if unsafe { state::peek(|st| fast_path(st, &f)) } == Some(true) {
        return;
    }
    slow_filter(fctx, argc);
}

/// Everything the fast path does not settle, with the state held exclusively.
#[inline(never)]
unsafe fn slow_filter(fctx: *mut raw::RedisModuleCommandFilterCtx, argc: usize) {
    let f = Filter {
        fctx,
        argc,
        argv: std::ptr::null(),
    };
    state::with_mut(|st| {
        #[cfg(debug_assertions)]
        if f.arg(0).bytes().eq_ignore_ascii_case(DEBUG_FILTER_PANIC) {
            panic!(
                "injected by {}",
                String::from_utf8_lossy(DEBUG_FILTER_PANIC)
            );
        }
        route_command(st, &f);
    });
}

/// Whether the filter may read the arguments from the context's `argv` array instead of calling
/// `RedisModule_CommandFilterArgGet` for each (two calls per GET), and their lengths from the sds
/// headers: 0 not checked yet, 1 yes, 2 no.
static ARGV_DIRECT: AtomicU8 = AtomicU8::new(0);

/// Whether, on top of [`ARGV_DIRECT`], the argument count may be read from the context
/// ([`ARGC_OFFSET`]) rather than through `RedisModule_CommandFilterArgsCount`: 0 not checked yet,
/// 1 yes, 2 no. Set with [`ARGV_DIRECT`], by the first command with arguments.
static DIRECT_ARGC: AtomicU8 = AtomicU8::new(0);

/// Where `argc` sits in `RedisModuleCommandFilterCtx` since redis 7.0: after `RedisModuleString
/// **argv` and `int argv_len` (the fields after it have changed since; these have not). On 6.x it
/// was the second field: the check against the API catches a server that differs.
const ARGC_OFFSET: usize = 12;

/// The context's own argument array, read directly: its first field in every server from 6.0
/// to 8.x, trusted only once [`verify_direct_argv`] has compared it with the API.
#[inline(always)]
unsafe fn context_argv(
    fctx: *mut raw::RedisModuleCommandFilterCtx,
) -> *const *mut raw::RedisModuleString {
    std::ptr::read(fctx as *const *const *mut raw::RedisModuleString)
}

/// The context's argument count, read directly at [`ARGC_OFFSET`], trusted only once
/// [`verify_direct_argv`] has compared it with the API ([`DIRECT_ARGC`]).
#[inline(always)]
unsafe fn context_argc(fctx: *mut raw::RedisModuleCommandFilterCtx) -> c_int {
    std::ptr::read((fctx as *const u8).add(ARGC_OFFSET) as *const c_int)
}

/// The context's argument array ([`context_argv`]), or null to use the API: the first command
/// with arguments checks it against the API before it is trusted.
#[inline(always)]
unsafe fn direct_argv(
    fctx: *mut raw::RedisModuleCommandFilterCtx,
    argc: usize,
) -> *const *mut raw::RedisModuleString {
    match ARGV_DIRECT.load(Ordering::Relaxed) {
        1 => context_argv(fctx),
        2 => std::ptr::null(),
        _ => verify_direct_argv(fctx, argc),
    }
}

#[cold]
#[inline(never)]
unsafe fn verify_direct_argv(
    fctx: *mut raw::RedisModuleCommandFilterCtx,
    argc: usize,
) -> *const *mut raw::RedisModuleString {
    let argv = context_argv(fctx);
    // Direct reads go with inline string lengths: both or neither.
    let ok = inline_strings()
        && !argv.is_null()
        && (0..argc)
            .all(|i| *argv.add(i) == rm!(RedisModule_CommandFilterArgGet)(fctx, i as c_int));
    let argc_at = context_argc(fctx);
    let argc_ok = ok && argc_at >= 0 && argc_at as usize == argc;
    DIRECT_ARGC.store(if argc_ok { 1 } else { 2 }, Ordering::Relaxed);
    ARGV_DIRECT.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
    if ok {
        argv
    } else {
        std::ptr::null()
    }
}

/// The common case, decided with no side effect and no allocation ([`router::fast_path`]): true
/// when the command must run untouched because no connection has an `ASKING` pending and the
/// command either has no keys or only keys in one owned, stable slot, sent by a client that is
/// not in `MULTI`. Anything else returns false and takes [`route_command`], which decides from
/// scratch, so this function only has to be right when it says true.
#[inline(always)]
unsafe fn fast_path<const CLMUL: bool>(st: &State, f: &Filter<CLMUL>) -> bool {
    if st.connections.asking_pending() {
        return false;
    }
    let fast = router::fast_path_args(&st.commands, &st.table, f.argc, f);
    match fast {
        Fast::NoKeys => true,
        Fast::OwnedSlot(_) => !client::current_in_multi(),
        Fast::Slow => false,
    }
}

/// Debug builds only: a command name that makes the filter panic while it holds the state, to
/// prove the guard leaves the command untouched (the server answers "unknown command") and
/// releases the state. Costs one comparison per command, and nothing in a release build.
#[cfg(debug_assertions)]
pub const DEBUG_FILTER_PANIC: &[u8] = b"umcluster.debug-filter-panic";

unsafe fn route_command(st: &mut State, f: &Filter) {
    let name = f.arg(0);
    // Resolve the command as the server will (container commands by their subcommand), and find
    // its keys while the table is borrowed.
    let (role, flags, keys) = {
        let Some(mut entry) = st.commands.get(name.bytes()) else {
            // The dotted spelling of a UMCTL subcommand (see `commands::register_umctl`). The
            // subcommand is copied before the name it is part of is replaced (and freed).
            if let Some(sub) = command_table::umctl_dotted_sub(name.bytes()) {
                f.insert(1, sub);
                f.replace(0, b"umctl");
            }
            // Else unknown to the server too: it will answer "unknown command" itself.
            consume_asking_only(st, Role::Plain);
            return;
        };
        // CLUSTER is a container: its role belongs to the whole command, whatever the subcommand.
        if entry.role != Role::Plain {
            (entry.role, entry.flags, Keys::None)
        } else {
            if let (Some(subs), true) = (&entry.subcommands, f.argc > 1) {
                match subs.get(f.arg(1).bytes()) {
                    Some(sub) => entry = sub,
                    None => {
                        consume_asking_only(st, Role::Plain);
                        return;
                    }
                }
            }
            let keys = if entry.arity_ok(f.argc) {
                entry
                    .keys
                    .keys(f.argc, |i| parse_strict_i64(f.arg(i).bytes()))
            } else {
                Keys::None
            };
            (entry.role, entry.flags, keys)
        }
    };

    if role != Role::Plain {
        handle_role(st, f, role);
        return;
    }

    let mut key_args = KeyArgs::new();
    match keys {
        Keys::None => {
            consume_asking_only(st, role);
            return;
        }
        Keys::At(ranges) => {
            for pos in ranges.positions() {
                key_args.push(f.arg(pos));
            }
        }
        Keys::AskServer => {
            st.stats.server_key_lookups += 1;
            if !server_keys(f, &mut key_args) {
                consume_asking_only(st, role);
                return;
            }
        }
    }

    // Fast path: every key in one slot this node owns, stable, and no connection state that
    // could change the answer.
    let mut keys_iter = key_args.iter();
    let first_slot = keys_iter.next().map(|k| key_slot(k.bytes()));
    let Some(slot) = first_slot else {
        consume_asking_only(st, role);
        return;
    };
    let single_slot = keys_iter.all(|k| key_slot(k.bytes()) == slot);
    let caller = client::current();
    if single_slot
        && st.table.owned_stable(slot)
        && !st.connections.asking_pending()
        && !caller.in_multi()
        && !flags.contains(CmdFlags::BLOCKING)
    {
        return;
    }
    slow_path(
        st,
        f,
        caller,
        role,
        flags,
        &key_args,
        single_slot.then_some(slot),
    );
}

/// Consumes a pending `ASKING` for a command that routing leaves alone (keyless, unknown...).
unsafe fn consume_asking_only(st: &mut State, role: Role) {
    if !st.connections.asking_pending() {
        return;
    }
    let caller = client::current();
    if let Some(id) = caller.id() {
        let in_multi = caller.in_multi() || role == Role::Multi;
        st.connections.take_asking(id, role, in_multi, in_script());
    }
}

/// Whether a script is running (the filter is then seeing one of its `redis.call`s).
unsafe fn in_script() -> bool {
    rm!(RedisModule_GetContextFlags)(std::ptr::null_mut()) as u32 & raw::REDISMODULE_CTX_FLAGS_LUA
        != 0
}

unsafe fn is_replica() -> bool {
    rm!(RedisModule_GetContextFlags)(std::ptr::null_mut()) as u32 & raw::REDISMODULE_CTX_FLAGS_SLAVE
        != 0
}

/// Key positions from the server's own key extraction (movable keys the table cannot resolve).
unsafe fn server_keys(f: &Filter, out: &mut KeyArgs) -> bool {
    let argv: Vec<*mut raw::RedisModuleString> = (0..f.argc)
        .map(|i| rm!(RedisModule_CommandFilterArgGet)(f.fctx, i as c_int))
        .collect();
    let mut argv = argv;
    let mut num = 0 as c_int;
    let ctx = EXISTS_CTX.get();
    if ctx.is_null() {
        // Not loaded yet or being unloaded: no keys known, the command is left as it is.
        return false;
    }
    let positions = rm!(RedisModule_GetCommandKeysWithFlags)(
        ctx,
        argv.as_mut_ptr(),
        f.argc as c_int,
        &mut num,
        std::ptr::null_mut(),
    );
    if positions.is_null() {
        return false;
    }
    for i in 0..num.max(0) as usize {
        let pos = *positions.add(i);
        if pos > 0 && (pos as usize) < f.argc {
            out.push(Arg::new(argv[pos as usize]));
        }
    }
    rm!(RedisModule_Free)(positions.cast());
    true
}

/// Everything but the owned-and-stable case: per-connection state, migrations, redirects.
#[allow(clippy::too_many_arguments)]
unsafe fn slow_path(
    st: &mut State,
    f: &Filter,
    caller: Caller,
    role: Role,
    flags: CmdFlags,
    keys: &KeyArgs,
    slot: Option<u16>,
) {
    let scripted = in_script();
    let id = caller.id();
    let asking = id.is_some_and(|id| {
        st.connections
            .take_asking(id, role, caller.in_multi(), scripted)
    });
    let readonly = id.is_some_and(|id| st.connections.readonly(id));

    // The source's mover delivers keys with plain RESTORE (its connection sends no ASKING):
    // accept it in an importing slot from the host the topology names as that slot's source.
    // Decided before routing, which would look the key and the client's database up for
    // nothing on every one of the mover's RESTOREs.
    let from_source = flags.contains(CmdFlags::RESTORE)
        && !caller.must_obey()
        && slot.is_some_and(|s| {
            matches!(st.table.get(s), SlotRoute::Importing { .. })
                && from_migration_source(st, caller, s)
        });

    let mut decision = if caller.must_obey() || from_source {
        Decision::Execute
    } else {
        // The database is looked up only if a key's existence matters (a migrating or
        // importing slot): the lookup copies the client's whole info, peer address included,
        // and would otherwise dominate the cost of every MOVED.
        let mut db = None;
        router::route(
            &st.table,
            keys.iter(),
            flags,
            ClientView { asking, readonly },
            &mut |key: &&Arg| key_exists(*db.get_or_insert_with(|| caller_db(caller)), key),
        )
    };

    // Keys on their way to a migration's destination (see `migration::Pipeline`): a write
    // must wait until the copy is settled, and so must a read of a key that is gone here while
    // the destination may still hold an older copy of it.
    if !caller.must_obey()
        && matches!(decision, Decision::Execute | Decision::Ask { .. })
        && st.migrations.iter().any(|t| t.pipe.any_fenced())
        && slot.is_some_and(|s| matches!(st.table.get(s), SlotRoute::Migrating { .. }))
    {
        let write = flags.contains(CmdFlags::WRITE) || flags.contains(CmdFlags::MAY_REPLICATE);
        let mut db = None;
        let must_wait = keys.iter().any(|k| {
            st.migrations.iter().any(|t| t.pipe.is_fenced(k.bytes()))
                && (write || !key_exists(*db.get_or_insert_with(|| caller_db(caller)), k))
        });
        if must_wait {
            st.stats.migration_fenced += 1;
            decision = Decision::TryAgain;
        }
    }

    // Without client identity the master link cannot be told apart: on a replica, let writes
    // through (a normal client's write is refused by the server itself, `-READONLY`).
    if caller == Caller::Unknown
        && !decision.is_execute()
        && (flags.contains(CmdFlags::WRITE) || flags.contains(CmdFlags::MAY_REPLICATE))
        && is_replica()
    {
        decision = Decision::Execute;
    }

    if scripted {
        if !decision.is_execute() {
            st.stats.script_denied += 1;
            let text = if decision == Decision::NotConfigured {
                SCRIPT_CLUSTER_DOWN
            } else {
                SCRIPT_NON_LOCAL
            };
            f.reply_error(text.as_bytes());
        }
        return;
    }

    if caller.in_multi() && !caller.must_obey() {
        if let (true, Some(id), Some(slot)) = (decision.is_execute(), id, slot) {
            if !st
                .connections
                .queue_in_transaction(id, slot, st.table_version)
            {
                decision = Decision::CrossSlot;
            }
        }
        if !decision.is_execute() {
            st.stats.multi_rejected += 1;
            let text = error_text(st, decision);
            count(st, decision);
            f.reject_in_transaction(&text);
        }
        return;
    }

    if !decision.is_execute() {
        let text = error_text(st, decision);
        // A redirect is counted by `umcluster.redirect`, which knows the cached line.
        let cached = match decision {
            Decision::Moved { slot, .. } | Decision::Ask { slot, .. } => {
                redirect_cache::line_or_make(slot, st.table_version, &text)
            }
            _ => None,
        };
        match cached {
            Some(line) => f.answer_cached(line),
            None => {
                count(st, decision);
                f.reply_error(&text);
            }
        }
    } else if let (true, Some(id), Some(slot), false) = (
        flags.contains(CmdFlags::BLOCKING),
        id,
        slot,
        caller.must_obey(),
    ) {
        st.connections.note_blocking(id, slot);
    }
}

/// ASKING, READONLY, READWRITE, CLUSTER, and the transaction boundaries.
unsafe fn handle_role(st: &mut State, f: &Filter, role: Role) {
    let rename = |to: &str| f.replace(0, to.as_bytes());
    match role {
        Role::Asking => {
            // ASKING never consumes itself.
            rename("umcluster.asking");
            return;
        }
        Role::ReadOnly => rename("umcluster.readonly"),
        Role::ReadWrite => rename("umcluster.readwrite"),
        Role::Cluster => rename("umcluster.cluster"),
        // Only a configured node claims to be a cluster node; an unconfigured one keeps the
        // server's own INFO untouched.
        Role::Info if st.topology.is_some() => rename(INFO_COMMAND),
        // A client's PUBLISH reaches the other masters too; the master link's and AOF's are
        // replays of publishes already forwarded where they were made.
        Role::Publish
            if st.topology.is_some()
                && f.argc == 3
                && matches!(client::current(), c @ Caller::Client { .. } if !c.must_obey()) =>
        {
            rename(PUBLISH_COMMAND)
        }
        // Sent as such, not renamed by this filter just now: it must find its key's redirect
        // itself.
        Role::QuickRedirect => redirect_cache::forget_handed(),
        Role::Info
        | Role::Publish
        | Role::Plain
        | Role::Multi
        | Role::Exec
        | Role::Discard
        | Role::Reset => {}
    }
    let caller = client::current();
    let Some(id) = caller.id() else {
        return;
    };
    let asking = if st.connections.asking_pending() {
        let in_multi = caller.in_multi() || role == Role::Multi;
        st.connections.take_asking(id, role, in_multi, in_script())
    } else {
        false
    };
    match role {
        Role::Multi if !caller.in_multi() && !caller.must_obey() => {
            st.connections.begin_transaction(id, st.table_version);
        }
        Role::Discard => {
            st.connections.end_transaction(id);
        }
        Role::Reset => st.connections.reset(id),
        Role::Exec => {
            let Some(tx) = st.connections.end_transaction(id) else {
                return;
            };
            if !caller.in_multi() || caller.must_obey() {
                return;
            }
            let Some(slot) = tx.slot else { return };
            if tx.version == st.table_version {
                return;
            }
            let readonly = st.connections.readonly(id);
            let still_served = match st.table.get(slot) {
                SlotRoute::Owned => true,
                SlotRoute::Importing { .. } => asking,
                SlotRoute::Remote { owner } => readonly && st.table.my_master == Some(owner),
                SlotRoute::Migrating { .. } | SlotRoute::Unassigned => false,
            };
            if !still_served {
                // One extra argument fails EXEC's arity check: the server discards the
                // transaction and answers -EXECABORT without running any of it.
                st.stats.exec_aborted += 1;
                f.insert(1, b"UMCLUSTER-SLOT-MOVED");
            }
        }
        _ => {}
    }
}

/// The database the calling client has selected (0 when unknown): read from the client when
/// its layout is known ([`client::current_db`]), else through the client's info.
unsafe fn caller_db(caller: Caller) -> i32 {
    let Some(id) = caller.id() else { return 0 };
    if let Some(db) = client::current_db() {
        return db;
    }
    let mut info: raw::RedisModuleClientInfo = std::mem::zeroed();
    info.version = 1;
    if rm!(RedisModule_GetClientInfoById)((&mut info as *mut raw::RedisModuleClientInfo).cast(), id)
        == raw::REDISMODULE_OK as c_int
    {
        info.db as i32
    } else {
        0
    }
}

/// Whether the caller's host is the one the topology names as the source of importing slot
/// `slot` (the mover's `RESTORE`s and imports are accepted from it only).
pub(super) unsafe fn from_migration_source(st: &State, caller: Caller, slot: u16) -> bool {
    importing_from_caller(st, caller, |r| r.start <= slot && slot <= r.end)
}

/// Whether any importing range for which `wanted` holds names the caller's host as its source
/// (`wanted` sees only ranges whose source is the caller's host).
pub(super) unsafe fn importing_from_caller(
    st: &State,
    caller: Caller,
    mut wanted: impl FnMut(&crate::topology::SlotRange) -> bool,
) -> bool {
    let Some(id) = caller.id() else { return false };
    let Some(topology) = &st.topology else {
        return false;
    };
    // The peer address of the last client asked about: the mover's connection sends thousands
    // of RESTOREs in a row, and looking the address up costs a system call and a formatted
    // copy of the client's info. Client ids are never reused, so an id keeps its address.
    thread_local! {
        static LAST_PEER: std::cell::RefCell<(u64, Vec<u8>)> =
            const { std::cell::RefCell::new((0, Vec::new())) };
    }
    if LAST_PEER.with(|c| c.borrow().0 != id) {
        let mut info: raw::RedisModuleClientInfo = std::mem::zeroed();
        info.version = 1;
        if rm!(RedisModule_GetClientInfoById)(
            (&mut info as *mut raw::RedisModuleClientInfo).cast(),
            id,
        ) != raw::REDISMODULE_OK as c_int
        {
            return false;
        }
        let ip = std::ffi::CStr::from_ptr(info.addr.as_ptr())
            .to_bytes()
            .to_vec();
        LAST_PEER.with(|c| *c.borrow_mut() = (id, ip));
    }
    LAST_PEER.with(|c| {
        let ip = c.borrow();
        let ip = ip.1.as_slice();
        topology.local_migrations().any(|g| match &g.kind {
            crate::topology::GroupKind::Importing(meta) => {
                meta.src_node.host.trim_matches(['[', ']']).as_bytes() == ip
                    && g.ranges.iter().any(&mut wanted)
            }
            _ => false,
        })
    })
}

/// Whether `key` exists in database `db`.
unsafe fn key_exists(db: i32, key: &Arg) -> bool {
    let ctx = EXISTS_CTX.get();
    if ctx.is_null() {
        return false;
    }
    rm!(RedisModule_SelectDb)(ctx, db);
    if !key.int && !key.ptr.is_null() {
        return rm!(RedisModule_KeyExists)(ctx, key.ptr) != 0;
    }
    // Integer-encoded argument: look it up through a plain string copy.
    let s = new_string(key.bytes());
    let exists = rm!(RedisModule_KeyExists)(ctx, s) != 0;
    rm!(RedisModule_FreeString)(std::ptr::null_mut(), s);
    exists
}

/// The error line for a decision (without the leading `-`). Built by hand on the stack (a usual
/// redirect fits; a very long host name goes to the heap): `format!` and the allocation cost more
/// than the rest of a redirect's routing.
fn error_text(st: &State, decision: Decision) -> ErrorLine {
    let addr = |node: u16| {
        st.redirect_addrs
            .get(node as usize)
            .map(String::as_str)
            .unwrap_or("?:0")
    };
    match decision {
        Decision::Execute => ErrorLine::Static(""),
        Decision::Moved { slot, node } => ErrorLine::redirect("MOVED", slot, addr(node)),
        Decision::Ask { slot, node } => ErrorLine::redirect("ASK", slot, addr(node)),
        Decision::CrossSlot => {
            ErrorLine::Static("CROSSSLOT Keys in request don't hash to the same slot")
        }
        Decision::TryAgain => {
            ErrorLine::Static("TRYAGAIN Multiple keys request during rehashing of slot")
        }
        Decision::NotConfigured => ErrorLine::Static("CLUSTERDOWN The cluster is down"),
        Decision::Unbound => ErrorLine::Static("CLUSTERDOWN Hash slot not served"),
    }
}

/// Room for `MOVED 16383 ` and an address of up to 100 bytes.
const ERROR_LINE_STACK: usize = 112;

/// An error line: a constant, or a redirect built on the stack (on the heap if too long).
enum ErrorLine {
    Static(&'static str),
    Stack {
        buf: [u8; ERROR_LINE_STACK],
        len: usize,
    },
    Heap(Vec<u8>),
}

impl ErrorLine {
    /// `<kind> <slot> <addr>`.
    fn redirect(kind: &str, slot: u16, addr: &str) -> ErrorLine {
        let mut digits = [0u8; 5];
        let mut i = digits.len();
        let mut n = slot;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let parts: [&[u8]; 5] = [kind.as_bytes(), b" ", &digits[i..], b" ", addr.as_bytes()];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > ERROR_LINE_STACK {
            return ErrorLine::Heap(parts.concat());
        }
        let mut buf = [0u8; ERROR_LINE_STACK];
        let mut at = 0;
        for part in parts {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        ErrorLine::Stack { buf, len }
    }
}

impl std::ops::Deref for ErrorLine {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ErrorLine::Static(s) => s.as_bytes(),
            ErrorLine::Stack { buf, len } => &buf[..*len],
            ErrorLine::Heap(v) => v,
        }
    }
}

fn count(st: &mut State, decision: Decision) {
    let s = &mut st.stats;
    match decision {
        Decision::Execute => {}
        Decision::Moved { .. } => s.moved += 1,
        Decision::Ask { .. } => s.ask += 1,
        Decision::CrossSlot => s.crossslot += 1,
        Decision::TryAgain => s.tryagain += 1,
        Decision::NotConfigured | Decision::Unbound => s.clusterdown += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_lines_have_the_native_form() {
        let st = State {
            redirect_addrs: vec!["127.0.0.1:7001".into(), "[::1]:7002".into()],
            ..State::default()
        };
        for slot in [0u16, 7, 10, 999, 16383] {
            assert_eq!(
                &*error_text(&st, Decision::Moved { slot, node: 1 }),
                format!("MOVED {slot} [::1]:7002").as_bytes()
            );
            assert_eq!(
                &*error_text(&st, Decision::Ask { slot, node: 0 }),
                format!("ASK {slot} 127.0.0.1:7001").as_bytes()
            );
        }
        assert_eq!(
            &*error_text(&st, Decision::Moved { slot: 5, node: 9 }),
            b"MOVED 5 ?:0"
        );
        // An address too long for the stack line still comes out whole.
        let long = format!("{}:7003", "h".repeat(200));
        let st = State {
            redirect_addrs: vec![long.clone()],
            ..State::default()
        };
        assert_eq!(
            &*error_text(
                &st,
                Decision::Moved {
                    slot: 16383,
                    node: 0
                }
            ),
            format!("MOVED 16383 {long}").as_bytes()
        );
        assert_eq!(
            &*error_text(&st, Decision::CrossSlot),
            b"CROSSSLOT Keys in request don't hash to the same slot"
        );
    }
}
