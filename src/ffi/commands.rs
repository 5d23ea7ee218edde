//! Registration of the module's commands, and the trampolines the server calls.
//!
//! Every trampoline runs its handler inside [`guard`]: a panic becomes an error reply. Each call
//! also gives client identity a chance to calibrate (see [`client`]), since a module command is the
//! one place where the module is told which client is running.

use std::ffi::CString;
use std::os::raw::c_int;

use redis_module::raw;

use super::client::{self, Calibration};
use super::{call, guard, log_notice, log_warning, reply, rm, string_bytes};
use super::{filter, redirect_cache, slot_count};
use crate::addr::Addr;
use crate::commands::connection::{self, CallSite};
use crate::commands::{cluster, umctl, Server};
use crate::pubsub::PUBLISHED_COMMAND;
use crate::reply::Reply;
use crate::resp::Value;
use crate::server_info::ReplicationInfo;
use crate::state;
use crate::topology::persist::{self, Saved};

/// Flags of the control-plane commands: admin-only, never from scripts, usable while the server
/// loads or serves stale data (the topology does not depend on the data).
const UMCTL_FLAGS: &str = "admin deny-script allow-loading allow-stale";
/// Flags of the per-connection and informational commands.
const CONNECTION_FLAGS: &str = "fast allow-loading allow-stale";
const CLUSTER_FLAGS: &str = "allow-loading allow-stale";
/// Flags of the redirect command: read-only so that it passes every check a write would fail
/// (OOM, read-only replica, min-replicas), and usable from scripts.
const REDIRECT_FLAGS: &str = "readonly fast allow-loading allow-stale";

/// Flags of the publish commands: like `PUBLISH` (usable while loading, on a stale replica, in
/// scripts).
const PUBLISH_FLAGS: &str = "pubsub fast allow-loading allow-stale";

type RawCommand =
    extern "C" fn(*mut raw::RedisModuleCtx, *mut *mut raw::RedisModuleString, c_int) -> c_int;

/// ACL categories of the commands the filter substitutes for client commands, so a restricted
/// user who may run the original command may run its substitute. Redis 7.0 has no API for module
/// command categories: there the user needs the commands granted by name (see the README).
fn acl_categories(name: &[u8]) -> Option<&'static std::ffi::CStr> {
    match name {
        b"umcluster.redirect" | b"u.r" => Some(c"read"),
        b"umcluster.asking" | b"umcluster.readonly" | b"umcluster.readwrite" => Some(c"connection"),
        b"umcluster.cluster" => Some(c"slow"),
        b"umcluster.info" => Some(c"slow dangerous"),
        b"umcluster.publish" | b"umcluster.published" => Some(c"pubsub fast"),
        _ => None,
    }
}

/// Sets [`acl_categories`] where the server has `RedisModule_SetCommandACLCategories` (7.2+).
///
/// # Safety
/// `ctx` must be the OnLoad context and `name` a command this module just created.
unsafe fn set_acl_categories(ctx: *mut raw::RedisModuleCtx, name: &CString) {
    let (Some(get), Some(set), Some(categories)) = (
        raw::RedisModule_GetCommand,
        raw::RedisModule_SetCommandACLCategories,
        acl_categories(name.as_bytes()),
    ) else {
        return;
    };
    let command = get(ctx, name.as_ptr());
    if command.is_null() || set(command, categories.as_ptr()) != raw::REDISMODULE_OK as c_int {
        log_warning(&format!(
            "umcluster: cannot set the ACL categories of {}",
            name.to_string_lossy()
        ));
    }
}

/// Registers every module command. Returns the name that failed, if any.
///
/// # Safety
/// `ctx` must be the context passed to `RedisModule_OnLoad`.
pub unsafe fn register_all(ctx: *mut raw::RedisModuleCtx) -> Result<(), String> {
    register_umctl(ctx)?;
    let commands: Vec<(String, RawCommand, &str)> = vec![
        ("umcluster.cluster".into(), cluster_command, CLUSTER_FLAGS),
        ("umcluster.asking".into(), asking_command, CONNECTION_FLAGS),
        (
            "umcluster.readonly".into(),
            readonly_command,
            CONNECTION_FLAGS,
        ),
        (
            "umcluster.readwrite".into(),
            readwrite_command,
            CONNECTION_FLAGS,
        ),
        (
            super::filter::REDIRECT_COMMAND.into(),
            redirect_command,
            REDIRECT_FLAGS,
        ),
        (PROBE_COMMAND.into(), probe_command, CLUSTER_FLAGS),
        (
            super::filter::INFO_COMMAND.into(),
            info_command,
            CLUSTER_FLAGS,
        ),
        (
            super::filter::PUBLISH_COMMAND.into(),
            publish_command,
            PUBLISH_FLAGS,
        ),
        (PUBLISHED_COMMAND.into(), published_command, PUBLISH_FLAGS),
        (
            crate::transfer::IMPORT_COMMAND.into(),
            super::import::import_command,
            super::import::IMPORT_FLAGS,
        ),
    ];
    // Fault injection for the hardening tests; never compiled into a release build.
    #[cfg(debug_assertions)]
    let commands = {
        let mut commands = commands;
        commands.push((DEBUG_PANIC_COMMAND.into(), debug_panic_command, UMCTL_FLAGS));
        commands
    };
    for (name, func, flags) in commands {
        if !create_command(ctx, &name, func, flags) {
            return Err(name);
        }
    }
    register_quick_redirect(ctx);
    Ok(())
}

/// Creates one module command (no keys: the filter routes them) and sets its ACL categories
/// where the server can ([`set_acl_categories`]). False if the server refused it.
///
/// # Safety
/// `ctx` must be the context passed to `RedisModule_OnLoad`.
unsafe fn create_command(
    ctx: *mut raw::RedisModuleCtx,
    name: &str,
    func: RawCommand,
    flags: &str,
) -> bool {
    let (Ok(cname), Ok(cflags)) = (CString::new(name), CString::new(flags)) else {
        return false;
    };
    let status =
        rm!(RedisModule_CreateCommand)(ctx, cname.as_ptr(), Some(func), cflags.as_ptr(), 0, 0, 0);
    if status != raw::REDISMODULE_OK as c_int {
        return false;
    }
    set_acl_categories(ctx, &cname);
    true
}

/// Registers [`filter::QUICK_REDIRECT_COMMAND`] and turns on the filter's renaming in place.
/// Optional: if the name is taken or this server's strings look different, redirects go
/// through `umcluster.redirect` alone (a few hundred instructions more each) and the log says
/// so.
///
/// # Safety
/// `ctx` must be the context passed to `RedisModule_OnLoad`.
unsafe fn register_quick_redirect(ctx: *mut raw::RedisModuleCtx) {
    if !create_command(
        ctx,
        filter::QUICK_REDIRECT_COMMAND,
        quick_redirect_command,
        REDIRECT_FLAGS,
    ) {
        log_warning(&format!(
            "umcluster: cannot register {}: redirects go through {} only",
            filter::QUICK_REDIRECT_COMMAND,
            filter::REDIRECT_COMMAND
        ));
        return;
    }
    if !filter::enable_quick_rename() {
        log_warning(&format!(
            "umcluster: this server's strings do not have the expected layout: redirects go \
             through {} only",
            filter::REDIRECT_COMMAND
        ));
    }
}

/// `UMCTL` as a container of native subcommands (`umctl|setcluster` ...), so ACLs can grant them
/// one by one; the filter turns the dotted spelling (`UMCTL.SETCLUSTER ...`) into `UMCTL
/// SETCLUSTER ...` (see [`crate::command_table::UMCTL_DOTTED`]).
///
/// Not one command per spelling: every command the module registers enlarges the server's
/// command table, which on 7.0 (240 commands in 256 buckets) then doubles and rehashes, and
/// every command's lookup then costs about 65 instructions more in about 4 server starts of
/// 10 (callgrind, GET, 10 starts each: with the 8 dotted commands 3 of 10 slow, without them 0).
///
/// # Safety
/// `ctx` must be the context passed to `RedisModule_OnLoad`.
unsafe fn register_umctl(ctx: *mut raw::RedisModuleCtx) -> Result<(), String> {
    let failed = || "umctl".to_string();
    let flags = CString::new(UMCTL_FLAGS).map_err(|_| failed())?;
    // No function: a container (its arity is then -2, so a bare UMCTL gets the arity error).
    if rm!(RedisModule_CreateCommand)(ctx, c"umctl".as_ptr(), None, flags.as_ptr(), 0, 0, 0)
        != raw::REDISMODULE_OK as c_int
    {
        return Err(failed());
    }
    let parent = rm!(RedisModule_GetCommand)(ctx, c"umctl".as_ptr());
    if parent.is_null() {
        return Err(failed());
    }
    for sub in umctl::SUBCOMMANDS {
        let name = CString::new(sub).map_err(|_| format!("umctl|{sub}"))?;
        let status = rm!(RedisModule_CreateSubcommand)(
            parent,
            name.as_ptr(),
            Some(umctl_command),
            flags.as_ptr(),
            0,
            0,
            0,
        );
        if status != raw::REDISMODULE_OK as c_int {
            return Err(format!("umctl|{sub}"));
        }
    }
    Ok(())
}

/// Debug builds only: a command whose handler panics while it holds the state mutably, to prove
/// that [`guard`] turns the panic into an error reply and releases the state.
#[cfg(debug_assertions)]
pub const DEBUG_PANIC_COMMAND: &str = "umcluster.debug-panic";

#[cfg(debug_assertions)]
extern "C" fn debug_panic_command(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    // SAFETY: ctx is the context of this command.
    unsafe {
        run_command(ctx, "umcluster.debug-panic", || {
            state::with_mut(|_st| -> Reply { panic!("injected by umcluster.debug-panic") })
        })
    }
}

/// Internal command run through `RedisModule_Call` during client-identity calibration.
const PROBE_COMMAND: &str = "umcluster._probe";

/// The running server, as the command handlers see it.
struct LiveServer {
    ctx: *mut raw::RedisModuleCtx,
}

impl LiveServer {
    fn config_int(&self, name: &str) -> Option<i64> {
        // SAFETY: ctx is the context of the command being run.
        let reply = unsafe { call::call(self.ctx, "CONFIG", &[b"GET", name.as_bytes()]) }.ok()?;
        let items = reply.as_array()?;
        items.get(1)?.as_str()?.parse().ok()
    }
}

impl Server for LiveServer {
    fn listening_ports(&self) -> Vec<u16> {
        ["port", "tls-port"]
            .iter()
            .filter_map(|name| self.config_int(name))
            .filter_map(|p| u16::try_from(p).ok())
            .collect()
    }

    fn replication(&self) -> ReplicationInfo {
        // SAFETY: ctx is the context of the command being run, on the main thread.
        unsafe { read_replication_info(self.ctx) }
    }

    fn set_master(&self, master: Option<&Addr>) -> Result<(), String> {
        let port;
        let args: [&[u8]; 2] = match master {
            Some(m) => {
                port = m.port.to_string();
                [m.host.as_bytes(), port.as_bytes()]
            }
            None => [b"NO", b"ONE"],
        };
        // SAFETY: ctx is the context of the command being run, on the main thread.
        match unsafe { call::call(self.ctx, "REPLICAOF", &args) } {
            Ok(Value::Error(e)) => Err(e),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn count_keys_in_slot(&self, slot: u16) -> u64 {
        // SAFETY: ctx is the context of the command being run, on the main thread.
        unsafe { slot_count::scan_slot(self.ctx, slot, None).0 }
    }

    fn keys_in_slot(&self, slot: u16, max: usize) -> Vec<Vec<u8>> {
        // SAFETY: as above.
        unsafe { slot_count::scan_slot(self.ctx, slot, Some(max)).1 }
    }

    fn save_config(&self, saved: &Saved) -> Result<(), String> {
        let Some(path) = super::module::config_file() else {
            return Ok(());
        };
        persist::write(&path, saved).inspect_err(|e| {
            log_warning(&format!(
                "umcluster: refusing a push: cannot save the config file: {e}"
            ))
        })
    }
}

/// The live server while the saved config is replayed at load: everything goes to the server
/// except saving, since the file already holds what is being replayed.
struct Replaying<'a>(&'a LiveServer);

impl Server for Replaying<'_> {
    fn listening_ports(&self) -> Vec<u16> {
        self.0.listening_ports()
    }
    fn replication(&self) -> ReplicationInfo {
        self.0.replication()
    }
    fn set_master(&self, master: Option<&Addr>) -> Result<(), String> {
        self.0.set_master(master)
    }
    fn count_keys_in_slot(&self, slot: u16) -> u64 {
        self.0.count_keys_in_slot(slot)
    }
    fn keys_in_slot(&self, slot: u16, max: usize) -> Vec<Vec<u8>> {
        self.0.keys_in_slot(slot, max)
    }
}

/// Applies a saved config at load, through the same handlers a live push takes: SETCLUSTER,
/// then SETREPL (which issues REPLICAOF). `FORCE` is not needed: the state is empty.
///
/// # Safety
/// `ctx` must be the OnLoad context, on the main thread, after the state is initialised.
pub unsafe fn replay_saved(ctx: *mut raw::RedisModuleCtx, saved: &Saved) -> Result<(), String> {
    let live = LiveServer { ctx };
    let server = Replaying(&live);
    for (sub, args) in [
        ("setcluster", &saved.setcluster),
        ("setrepl", &saved.setrepl),
    ] {
        let Some(args) = args else { continue };
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let reply = state::with_mut(|st| umctl::run(&server, st, sub.as_bytes(), &refs));
        if let Reply::Error(e) = reply {
            return Err(format!("saved {} refused: {e}", sub.to_ascii_uppercase()));
        }
    }
    Ok(())
}

/// The arguments of a module command, owned.
unsafe fn args_of(argv: *mut *mut raw::RedisModuleString, argc: c_int) -> Vec<Vec<u8>> {
    (0..argc.max(0) as usize)
        .map(|i| {
            let mut buf = [0u8; 24];
            string_bytes(*argv.add(i), &mut buf).to_vec()
        })
        .collect()
}

/// Common body of every trampoline: guard, calibrate, run, reply.
unsafe fn run_command(
    ctx: *mut raw::RedisModuleCtx,
    what: &str,
    body: impl FnOnce() -> Reply,
) -> c_int {
    calibrate(ctx);
    let reply = guard(what, body, Reply::Error);
    reply::send(ctx, &reply);
    raw::REDISMODULE_OK as c_int
}

unsafe fn calibrate(ctx: *mut raw::RedisModuleCtx) {
    // Reads server memory at a probed offset: a surprise there must not take the command down.
    guard(
        "client identity calibration",
        || calibrate_unguarded(ctx),
        |_| (),
    );
}

unsafe fn calibrate_unguarded(ctx: *mut raw::RedisModuleCtx) {
    let outcome = client::calibrate(ctx, || {
        let name = CString::new(PROBE_COMMAND).unwrap_or_default();
        let reply = rm!(RedisModule_Call)(ctx, name.as_ptr(), c"".as_ptr());
        if !reply.is_null() {
            rm!(RedisModule_FreeCallReply)(reply);
        }
    });
    match outcome {
        Calibration::Found(offset) => log_notice(&format!(
            "umcluster: client identity available (server.current_client found at offset {offset})"
        )),
        Calibration::Failed(why) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                log_warning(&format!(
                    "umcluster: client identity unavailable ({why}); ASKING, READONLY and \
                     redirects inside MULTI fall back to conservative behaviour"
                ))
            });
        }
        Calibration::AlreadyDone | Calibration::NotNow => {}
    }
    match client::calibrate_db(ctx) {
        client::DbCalibration::Found { stride } => log_notice(&format!(
            "umcluster: client databases readable (client db at offset {}, {stride}-byte \
             databases)",
            client::DB_FIELD_AT
        )),
        client::DbCalibration::Failed(why) => log_warning(&format!(
            "umcluster: client databases unreadable ({why}); moving slots ask the server for \
             each command's database"
        )),
        client::DbCalibration::Quiet => {}
    }
}

fn call_site(ctx: *mut raw::RedisModuleCtx) -> CallSite {
    // SAFETY: ctx is the context of the running command.
    let flags = unsafe { rm!(RedisModule_GetContextFlags)(ctx) } as u32;
    CallSite {
        in_script: flags & raw::REDISMODULE_CTX_FLAGS_LUA != 0,
        in_exec: flags & raw::REDISMODULE_CTX_FLAGS_MULTI != 0,
    }
}

fn refs(args: &[Vec<u8>]) -> Vec<&[u8]> {
    args.iter().map(Vec::as_slice).collect()
}

extern "C" fn umctl_command(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    unsafe {
        run_command(ctx, "UMCTL", || {
            let args = args_of(argv, argc);
            let args = refs(&args);
            let Some((sub, rest)) = args.get(1..).and_then(<[&[u8]]>::split_first) else {
                return Reply::error("ERR wrong number of arguments for 'umctl' command");
            };
            run_umctl(ctx, sub, rest)
        })
    }
}

/// Runs a UMCTL subcommand, then releases the clients blocked on keys of slots the new table
/// no longer serves here.
///
/// # Safety
/// `ctx` is the context of the command being run.
unsafe fn run_umctl(ctx: *mut raw::RedisModuleCtx, sub: &[u8], args: &[&[u8]]) -> Reply {
    let server = LiveServer { ctx };
    let reply = state::with_mut(|st| umctl::run(&server, st, sub, args));
    release_blocked_elsewhere(ctx);
    super::mover::ensure_timer(ctx);
    // Credentials are read when a topology is pushed (a `CONFIG SET masterauth` takes effect
    // with the next push), not on every UMCTL (the admin tool polls progress many times).
    if sub.eq_ignore_ascii_case(b"setcluster") {
        let credentials = super::peer_credentials(ctx);
        let _ = state::try_with_mut(|st| st.publish.set_credentials(credentials));
    }
    reply
}

/// A client blocked (BLPOP...) on a key whose slot moved would wait forever: writes to that key
/// now go to the new owner. A native node answers it `-MOVED`; a module can only end another
/// client's block through `CLIENT UNBLOCK`, so the client gets
/// `-UNBLOCKED client unblocked via CLIENT UNBLOCK` and, retrying, the redirect.
///
/// # Safety
/// `ctx` is a valid module context on the main thread.
unsafe fn release_blocked_elsewhere(ctx: *mut raw::RedisModuleCtx) {
    let ids = state::with_mut(|st| st.connections.take_blocked_elsewhere(&st.table));
    for id in ids {
        let id = id.to_string();
        let released = matches!(
            call::call(ctx, "CLIENT", &[b"UNBLOCK", id.as_bytes(), b"ERROR"]),
            Ok(Value::Int(1))
        );
        if released {
            state::with_mut(|st| st.stats.blocked_released += 1);
        }
    }
}

extern "C" fn cluster_command(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    unsafe {
        // COUNTKEYSINSLOT scans the whole keyspace: in slices, the client blocked meanwhile.
        if argc == 3 && count_in_slices(ctx, argv) {
            return raw::REDISMODULE_OK as c_int;
        }
        run_command(ctx, "CLUSTER", || {
            let args = args_of(argv, argc);
            let args = refs(&args);
            let server = LiveServer { ctx };
            state::with(|st| cluster::run(&server, st, args.get(1..).unwrap_or_default()))
        })
    }
}

/// `CLUSTER COUNTKEYSINSLOT <slot>` with a valid slot from a client that can block: started in
/// slices ([`slot_count`]); false for anything else (answered at once by `cluster::run`).
///
/// # Safety
/// `ctx`, `argv` are those of `umcluster.cluster` with 3 arguments.
unsafe fn count_in_slices(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
) -> bool {
    guard(
        "CLUSTER COUNTKEYSINSLOT",
        || {
            let mut buf = [0u8; 24];
            if !string_bytes(*argv.add(1), &mut buf).eq_ignore_ascii_case(b"countkeysinslot") {
                return false;
            }
            let mut buf = [0u8; 24];
            match cluster::parse_slot(string_bytes(*argv.add(2), &mut buf)) {
                Ok(slot) => slot_count::start(ctx, slot),
                Err(_) => false,
            }
        },
        |_| false,
    )
}

extern "C" fn asking_command(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    unsafe {
        run_command(ctx, "ASKING", || {
            let id = rm!(RedisModule_GetClientId)(ctx);
            let site = call_site(ctx);
            state::with_mut(|st| connection::asking(st, id, site, (argc.max(1) as usize) - 1))
        })
    }
}

extern "C" fn readonly_command(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    unsafe {
        run_command(ctx, "READONLY", || {
            let id = rm!(RedisModule_GetClientId)(ctx);
            let site = call_site(ctx);
            state::with_mut(|st| {
                connection::readonly(st, id, site, (argc.max(1) as usize) - 1, true)
            })
        })
    }
}

extern "C" fn readwrite_command(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    unsafe {
        run_command(ctx, "READWRITE", || {
            let id = rm!(RedisModule_GetClientId)(ctx);
            let site = call_site(ctx);
            state::with_mut(|st| {
                connection::readonly(st, id, site, (argc.max(1) as usize) - 1, false)
            })
        })
    }
}

/// `umcluster.redirect <error line> ...`: replies the error the filter computed. Also callable
/// directly; it only ever replies an error.
extern "C" fn redirect_command(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    // SAFETY: ctx and argv are the context and arguments of this command.
    unsafe {
        let replied = guard(
            "umcluster.redirect",
            || {
                let mut buf = [0u8; 24];
                let text = if argc >= 2 {
                    string_bytes(*argv.add(1), &mut buf)
                } else {
                    &b"ERR umcluster.redirect needs an error line"[..]
                };
                // The commonest redirect skips re-checking client identity (every other command
                // of the module does it, and so does this one until identity is found).
                let cached = if argc >= 2 {
                    redirect_cache::cached(*argv.add(1), text)
                } else {
                    None
                };
                if cached.is_none() || !client::identity_available() {
                    calibrate(ctx);
                }
                if let Some(cached) = cached {
                    if reply_cached(ctx, cached) {
                        return true;
                    }
                }
                // One line, no NUL: the reply is written as `-<text>\r\n`.
                let clean = |b: &u8| {
                    if *b == b'\r' || *b == b'\n' || *b == 0 {
                        b' '
                    } else {
                        *b
                    }
                };
                // Usual redirects fit on the stack: no allocation per MOVED.
                let mut stack = [0u8; 256];
                if text.len() < stack.len() {
                    // No byte below 0x20 (the usual case, found with a vectorised minimum):
                    // nothing to clean, one copy.
                    if text.iter().fold(u8::MAX, |m, &b| m.min(b)) >= 0x20 {
                        stack[..text.len()].copy_from_slice(text);
                    } else {
                        for (out, b) in stack.iter_mut().zip(text) {
                            *out = clean(b);
                        }
                    }
                    rm!(RedisModule_ReplyWithError)(ctx, stack.as_ptr().cast());
                } else {
                    let line = CString::new(text.iter().map(clean).collect::<Vec<u8>>())
                        .unwrap_or_default();
                    rm!(RedisModule_ReplyWithError)(ctx, line.as_ptr());
                }
                true
            },
            |_| false,
        );
        if !replied {
            rm!(RedisModule_ReplyWithError)(
                ctx,
                c"ERR umcluster: internal error in umcluster.redirect".as_ptr(),
            );
        }
        raw::REDISMODULE_OK as c_int
    }
}

/// `u.r <key> ...` ([`filter::QUICK_REDIRECT_COMMAND`]): what a command whose keys start at its
/// first argument becomes when the filter answers it with its slot's cached redirect (the filter
/// renames it in place and keeps the arguments). Replies the redirect cached for the key's slot
/// in the current routing table (`MOVED`/`ASK`), counted as `umcluster.redirect` counts it; a
/// script's call gets the native non-local-key error. Without a cached redirect (called by
/// hand, or the table changed while the command waited, e.g. in `CLIENT PAUSE`): `TRYAGAIN`, so
/// the client sends its command again and gets today's answer.
extern "C" fn quick_redirect_command(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    // SAFETY: ctx and argv are the context and arguments of this command.
    unsafe {
        let replied = guard(
            filter::QUICK_REDIRECT_COMMAND,
            || {
                // Renamed by the filter just now: the slot it found (and not a script's call).
                let handed = redirect_cache::take_handed(client::ctx_client_word(ctx));
                let slot = match handed {
                    Some(slot) => slot,
                    None if argc >= 2 => {
                        let mut buf = [0u8; 24];
                        let arg = *argv.add(1);
                        let key = super::plain_string_bytes(arg)
                            .unwrap_or_else(|| string_bytes(arg, &mut buf));
                        crate::slot::key_slot_fastest(key)
                    }
                    None => return false,
                };
                let cached = state::peek(|st| st.table_version)
                    .and_then(|version| redirect_cache::cached_for(slot, version));
                match (cached, handed) {
                    (Some(cached), Some(_)) => reply_cached_to_client(ctx, cached),
                    (Some(cached), None) => reply_cached(ctx, cached),
                    (None, _) => false,
                }
            },
            |_| false,
        );
        if !replied {
            let text = if argc >= 2 {
                c"TRYAGAIN no redirect is cached for this key's slot: send the command again"
            } else {
                c"ERR wrong number of arguments for 'u.r' command"
            };
            rm!(RedisModule_ReplyWithError)(ctx, text.as_ptr());
        }
        raw::REDISMODULE_OK as c_int
    }
}

/// Counts a redirect line the filter took from the cache (see [`redirect_cache`]) and replies
/// the cached reply; false if there is none (the caller then formats the line). A script's call
/// gets the native script error instead: the filter's quick `MOVED` does not tell scripts apart.
unsafe fn reply_cached(ctx: *mut raw::RedisModuleCtx, cached: redirect_cache::Cached) -> bool {
    if client::ctx_client_is_script(ctx) {
        state::try_with_mut(|st| st.stats.script_denied += 1);
        let text = CString::new(filter::SCRIPT_NON_LOCAL).unwrap_or_default();
        rm!(RedisModule_ReplyWithError)(ctx, text.as_ptr());
        return true;
    }
    reply_cached_to_client(ctx, cached)
}

/// [`reply_cached`] for a caller known not to be a script.
unsafe fn reply_cached_to_client(
    ctx: *mut raw::RedisModuleCtx,
    cached: redirect_cache::Cached,
) -> bool {
    state::try_with_mut(|st| match cached.ask {
        true => st.stats.ask += 1,
        false => st.stats.moved += 1,
    });
    match redirect_cache::reply(cached.slot, filter::EXISTS_CTX.get()) {
        Some(reply) => {
            rm!(RedisModule_ReplyWithCallReply)(ctx, reply) == raw::REDISMODULE_OK as c_int
        }
        None => false,
    }
}

/// `umcluster.info [section ...]`: `INFO` as the server answers it, with `cluster_enabled:1`.
extern "C" fn info_command(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    unsafe {
        calibrate(ctx);
        let done = guard(
            "INFO",
            || {
                let args = args_of(argv, argc);
                let args = refs(&args);
                match call::call(ctx, "INFO", args.get(1..).unwrap_or_default()) {
                    Ok(Value::Bulk(text)) => {
                        let text = crate::commands::info::patch_cluster_enabled(&text);
                        rm!(RedisModule_ReplyWithVerbatimString)(
                            ctx,
                            text.as_ptr().cast(),
                            text.len(),
                        );
                        Ok(())
                    }
                    Ok(Value::Error(e)) | Err(e) => Err(e),
                    Ok(other) => Err(format!("ERR unexpected INFO reply: {other}")),
                }
            },
            |e| Err(format!("ERR {e}")),
        );
        if let Err(e) = done {
            reply::send(ctx, &Reply::Error(e));
        }
        raw::REDISMODULE_OK as c_int
    }
}

/// Runs `PUBLISH channel message` locally as the calling user (ACL channel rules apply),
/// replicated like a native PUBLISH; `forward`: then hands the message to the other masters.
///
/// # Safety
/// `ctx`, `argv`, `argc` are what the server passed to a module command.
unsafe fn publish(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
    forward: bool,
) -> c_int {
    calibrate(ctx);
    let reply = guard(
        "PUBLISH",
        || {
            let args = args_of(argv, argc);
            let [_, channel, message] = &args[..] else {
                return Reply::error("ERR wrong number of arguments for 'publish' command");
            };
            // "C": the caller's ACL (channel permissions included); "!": replicate as PUBLISH.
            match call::call_with(ctx, "PUBLISH", &[channel, message], c"vEC!") {
                Ok(Value::Int(receivers)) => {
                    if forward {
                        state::with_mut(|st| st.publish.forward(channel, message));
                    }
                    Reply::Int(receivers)
                }
                Ok(Value::Error(e)) | Err(e) => Reply::Error(native_acl_error(e)),
                Ok(other) => Reply::Error(format!("ERR unexpected PUBLISH reply: {other}")),
            }
        },
        Reply::Error,
    );
    reply::send(ctx, &reply);
    raw::REDISMODULE_OK as c_int
}

/// `RedisModule_Call`'s ACL refusals (`acl verification failed, ...`) in the words a native
/// `PUBLISH` uses, so clients see the `NOPERM` they expect.
fn native_acl_error(e: String) -> String {
    let text = e.strip_prefix("ERR ").unwrap_or(&e);
    if !text.starts_with("acl verification failed") {
        e
    } else if text.contains("channel") {
        "NOPERM this user has no permissions to access one of the channels used as arguments".into()
    } else {
        "NOPERM this user has no permissions to run the 'publish' command".into()
    }
}

/// `umcluster.publish channel message`: a client's `PUBLISH`, forwarded to the other masters.
extern "C" fn publish_command(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    // SAFETY: arguments as the server passed them.
    unsafe { publish(ctx, argv, argc, true) }
}

/// `umcluster.published channel message`: a message another master forwarded; published here
/// only.
extern "C" fn published_command(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    // SAFETY: arguments as the server passed them.
    unsafe { publish(ctx, argv, argc, false) }
}

extern "C" fn probe_command(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    guard("the identity probe", client::probe_body, |_| ());
    // SAFETY: ctx is the context of this command.
    unsafe { reply::send(ctx, &Reply::Ok) };
    raw::REDISMODULE_OK as c_int
}

/// The server's `INFO replication`, parsed.
///
/// # Safety
/// `ctx` must be a valid module context on the main thread.
pub unsafe fn read_replication_info(ctx: *mut raw::RedisModuleCtx) -> ReplicationInfo {
    match call::call(ctx, "INFO", &[b"replication"]) {
        Ok(Value::Bulk(text)) => ReplicationInfo::parse(&String::from_utf8_lossy(&text)),
        _ => ReplicationInfo::default(),
    }
}
