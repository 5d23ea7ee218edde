//! Registration of the module's commands, and the trampolines the server calls.
//!
//! Every trampoline runs its handler inside [`guard`]: a panic becomes an error reply. Each call
//! also gives client identity a chance to calibrate (see [`client`]), since a module command is the
//! one place where the module is told which client is running.

use std::ffi::CString;
use std::os::raw::{c_int, c_void};

use redis_module::raw;

use super::client::{self, Calibration};
use super::{call, guard, log_notice, log_warning, reply, rm, string_bytes};
use crate::addr::Addr;
use crate::commands::connection::{self, CallSite};
use crate::commands::{cluster, umctl, Server};
use crate::reply::Reply;
use crate::resp::Value;
use crate::server_info::ReplicationInfo;
use crate::slot::key_slot;
use crate::state;

/// Flags of the control-plane commands: admin-only, never from scripts, usable while the server
/// loads or serves stale data (the topology does not depend on the data).
const UMCTL_FLAGS: &str = "admin deny-script allow-loading allow-stale";
/// Flags of the per-connection and informational commands.
const CONNECTION_FLAGS: &str = "fast allow-loading allow-stale";
const CLUSTER_FLAGS: &str = "allow-loading allow-stale";
/// Flags of the redirect command: read-only so that it passes every check a write would fail
/// (OOM, read-only replica, min-replicas), and usable from scripts.
const REDIRECT_FLAGS: &str = "readonly fast allow-loading allow-stale";

type RawCommand =
    extern "C" fn(*mut raw::RedisModuleCtx, *mut *mut raw::RedisModuleString, c_int) -> c_int;

/// ACL categories of the commands the filter substitutes for client commands, so a restricted
/// user who may run the original command may run its substitute. Redis 7.0 has no API for module
/// command categories: there the user needs the commands granted by name (see the README).
fn acl_categories(name: &[u8]) -> Option<&'static std::ffi::CStr> {
    match name {
        b"umcluster.redirect" => Some(c"read"),
        b"umcluster.asking" | b"umcluster.readonly" | b"umcluster.readwrite" => Some(c"connection"),
        b"umcluster.cluster" => Some(c"slow"),
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
    let mut commands: Vec<(String, RawCommand, &str)> = vec![
        ("umctl".into(), umctl_command, UMCTL_FLAGS),
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
    ];
    // Fault injection for the hardening tests; never compiled into a release build.
    #[cfg(debug_assertions)]
    commands.push((DEBUG_PANIC_COMMAND.into(), debug_panic_command, UMCTL_FLAGS));
    for sub in umctl::SUBCOMMANDS {
        commands.push((format!("umctl.{sub}"), umctl_dotted_command, UMCTL_FLAGS));
    }
    for (name, func, flags) in commands {
        let cname = CString::new(name.clone()).map_err(|_| name.clone())?;
        let cflags = CString::new(flags).map_err(|_| name.clone())?;
        let status = rm!(RedisModule_CreateCommand)(
            ctx,
            cname.as_ptr(),
            Some(func),
            cflags.as_ptr(),
            0,
            0,
            0,
        );
        if status != raw::REDISMODULE_OK as c_int {
            return Err(name);
        }
        set_acl_categories(ctx, &cname);
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

    fn keys_in_slot(&self, slot: u16, max: usize) -> (u64, Vec<Vec<u8>>) {
        // SAFETY: ctx is the context of the command being run, on the main thread.
        unsafe { scan_slot(self.ctx, slot, max) }
    }
}

struct SlotScan {
    slot: u16,
    max: usize,
    count: u64,
    keys: Vec<Vec<u8>>,
}

extern "C" fn slot_scan_callback(
    _ctx: *mut raw::RedisModuleCtx,
    keyname: *mut raw::RedisModuleString,
    _key: *mut raw::RedisModuleKey,
    privdata: *mut c_void,
) {
    guard(
        "the slot scan",
        || unsafe {
            let scan = &mut *(privdata as *mut SlotScan);
            let mut buf = [0u8; 24];
            let name = string_bytes(keyname, &mut buf);
            if key_slot(name) == scan.slot {
                scan.count += 1;
                if scan.keys.len() < scan.max {
                    scan.keys.push(name.to_vec());
                }
            }
        },
        |_| (),
    )
}

/// Counts the keys of `slot` in the caller's database, collecting up to `max` names. Standalone
/// redis keeps no per-slot index, so this visits the whole keyspace (O(keys)).
unsafe fn scan_slot(ctx: *mut raw::RedisModuleCtx, slot: u16, max: usize) -> (u64, Vec<Vec<u8>>) {
    let mut scan = SlotScan {
        slot,
        max,
        count: 0,
        keys: Vec::new(),
    };
    let cursor = rm!(RedisModule_ScanCursorCreate)();
    while rm!(RedisModule_Scan)(
        ctx,
        cursor,
        Some(slot_scan_callback),
        (&mut scan as *mut SlotScan).cast(),
    ) != 0
    {}
    rm!(RedisModule_ScanCursorDestroy)(cursor);
    (scan.count, scan.keys)
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
            let server = LiveServer { ctx };
            state::with_mut(|st| umctl::run(&server, st, sub, rest))
        })
    }
}

extern "C" fn umctl_dotted_command(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    unsafe {
        run_command(ctx, "UMCTL", || {
            let args = args_of(argv, argc);
            let args = refs(&args);
            // "umctl.setcluster" -> "setcluster"
            let Some((name, rest)) = args.split_first() else {
                return Reply::error("ERR wrong number of arguments for 'umctl' command");
            };
            let sub = name.splitn(2, |&b| b == b'.').nth(1).unwrap_or_default();
            let server = LiveServer { ctx };
            state::with_mut(|st| umctl::run(&server, st, sub, rest))
        })
    }
}

extern "C" fn cluster_command(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    unsafe {
        run_command(ctx, "CLUSTER", || {
            let args = args_of(argv, argc);
            let args = refs(&args);
            let server = LiveServer { ctx };
            state::with(|st| cluster::run(&server, st, args.get(1..).unwrap_or_default()))
        })
    }
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
        calibrate(ctx);
        let line = guard(
            "umcluster.redirect",
            || {
                let mut buf = [0u8; 24];
                let text = if argc >= 2 {
                    string_bytes(*argv.add(1), &mut buf)
                } else {
                    &b"ERR umcluster.redirect needs an error line"[..]
                };
                // One line, no NUL: the reply is written as `-<text>\r\n`.
                let clean: Vec<u8> = text
                    .iter()
                    .map(|&b| {
                        if b == b'\r' || b == b'\n' || b == 0 {
                            b' '
                        } else {
                            b
                        }
                    })
                    .collect();
                CString::new(clean).unwrap_or_default()
            },
            |e| CString::new(e.replace(['\r', '\n', '\0'], " ")).unwrap_or_default(),
        );
        rm!(RedisModule_ReplyWithError)(ctx, line.as_ptr());
        raw::REDISMODULE_OK as c_int
    }
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
