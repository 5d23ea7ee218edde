//! Module load and unload: checks the server offers what the module needs, registers commands,
//! the command filter, events and the INFO section, and builds the command table.
//!
//! Arguments: `config-file <path>` (the accepted topology and replication roles are saved there
//! and loaded back at start, see [`crate::topology::persist`]). Any other argument is refused so a
//! typo cannot go unnoticed.

use std::os::raw::c_int;
use std::path::PathBuf;
use std::sync::Mutex;

use redis_module::{raw, Context, RedisString, Status};

use super::{call, client, commands, events, filter, guard, info, log_notice, log_warning, rm};
use crate::command_table::CommandTable;
use crate::state::{self, State};
use crate::topology::persist;

/// The `config-file` argument, when given.
static CONFIG_FILE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Where accepted pushes are saved, if anywhere.
pub fn config_file() -> Option<PathBuf> {
    CONFIG_FILE.lock().ok().and_then(|g| g.clone())
}

/// Parses the module arguments (`config-file <path>`).
fn parse_args(args: &[RedisString]) -> Result<Option<PathBuf>, String> {
    let mut config = None;
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(name) = it.next() {
        if name.eq_ignore_ascii_case("config-file") {
            match it.next() {
                // Made absolute now: a relative path is relative to the server's `dir` at load,
                // and stays there if `CONFIG SET dir` changes the working directory later.
                Some(path) if !path.is_empty() => {
                    let path = std::path::absolute(PathBuf::from(path))
                        .map_err(|e| format!("config-file: {e}"))?;
                    config = Some(path)
                }
                _ => return Err("module argument 'config-file' needs a path".into()),
            }
        } else {
            return Err(format!(
                "unknown module argument '{name}' (umcluster takes: config-file <path>)"
            ));
        }
    }
    Ok(config)
}

/// Server API functions the module calls. Redis 7.0 has them all; a server without one of them
/// cannot run the module, and loading fails with a log line naming it.
macro_rules! required_api {
    ($($name:ident),* $(,)?) => {
        fn missing_api() -> Option<&'static str> {
            // SAFETY: reading function pointers filled in by RedisModule_Init.
            unsafe {
                $( let f = raw::$name; if f.is_none() { return Some(stringify!($name)); } )*
            }
            None
        }
    };
}

required_api!(
    RedisModule_Alloc,
    RedisModule_Free,
    RedisModule_Realloc,
    RedisModule_CreateCommand,
    RedisModule_GetCommand,
    RedisModule_CreateSubcommand,
    RedisModule_RegisterCommandFilter,
    RedisModule_CommandFilterArgsCount,
    RedisModule_CommandFilterArgGet,
    RedisModule_CommandFilterArgReplace,
    RedisModule_CommandFilterArgInsert,
    RedisModule_GetCommandKeysWithFlags,
    RedisModule_KeyExists,
    RedisModule_SelectDb,
    RedisModule_GetClientId,
    RedisModule_GetClientInfoById,
    RedisModule_GetContextFlags,
    RedisModule_GetDetachedThreadSafeContext,
    RedisModule_FreeThreadSafeContext,
    RedisModule_Call,
    RedisModule_CallReplyType,
    RedisModule_CallReplyStringPtr,
    RedisModule_CallReplyInteger,
    RedisModule_CallReplyLength,
    RedisModule_CallReplyArrayElement,
    RedisModule_CallReplyMapElement,
    RedisModule_CallReplyBool,
    RedisModule_CallReplyDouble,
    RedisModule_FreeCallReply,
    RedisModule_CreateString,
    RedisModule_FreeString,
    RedisModule_StringPtrLen,
    RedisModule_ReplyWithError,
    RedisModule_ReplyWithCallReply,
    RedisModule_RetainString,
    RedisModule_ReplyWithSimpleString,
    RedisModule_ReplyWithLongLong,
    RedisModule_ReplyWithStringBuffer,
    RedisModule_ReplyWithVerbatimString,
    RedisModule_ReplyWithNull,
    RedisModule_ReplyWithArray,
    RedisModule_ReplyWithMap,
    RedisModule_SubscribeToServerEvent,
    RedisModule_RegisterInfoFunc,
    RedisModule_InfoAddSection,
    RedisModule_InfoAddFieldCString,
    RedisModule_Scan,
    RedisModule_ScanCursorCreate,
    RedisModule_ScanCursorDestroy,
    RedisModule_Log,
    RedisModule_CreateTimer,
    RedisModule_StopTimer,
    RedisModule_GetSelectedDb,
    RedisModule_DbSize,
    RedisModule_KeyType,
    RedisModule_ValueLength,
    RedisModule_StringSet,
    RedisModule_SetAbsExpire,
    RedisModule_Milliseconds,
    RedisModule_ReplicateVerbatim,
    RedisModule_Replicate,
    RedisModule_EventLoopAddOneShot,
    RedisModule_BlockClient,
    RedisModule_UnblockClient,
    RedisModule_GetBlockedClientPrivateData,
    RedisModule_GetContextFlags,
);

/// `init` of the module: see the file comment.
pub fn on_load(ctx: &Context, args: &[RedisString]) -> Status {
    guard("module load", || load(ctx.ctx, args), Err).unwrap_or_else(|e| {
        log_warning(&format!("umcluster: refusing to load: {e}"));
        Status::Err
    })
}

fn load(ctx: *mut raw::RedisModuleCtx, args: &[RedisString]) -> Result<Status, String> {
    if let Some(name) = missing_api() {
        return Err(format!(
            "the server lacks {name} (redis 7.0 or later is required)"
        ));
    }
    let config = parse_args(args)?;
    if let Ok(mut g) = CONFIG_FILE.lock() {
        g.clone_from(&config);
    }
    // SAFETY: ctx is the OnLoad context; every call below is a registration the API allows here.
    unsafe {
        commands::register_all(ctx).map_err(|name| format!("cannot register command {name}"))?;
        let (command_filter, key_hashing) = filter::best_command_filter();
        let filter_handle = rm!(RedisModule_RegisterCommandFilter)(
            ctx,
            Some(command_filter),
            raw::REDISMODULE_CMDFILTER_NOSELF as c_int,
        );
        if filter_handle.is_null() {
            return Err("cannot register the command filter".into());
        }
        log_notice(&format!("umcluster: key slots by {key_hashing}"));
        events::subscribe(ctx)?;
        rm!(RedisModule_RegisterInfoFunc)(ctx, Some(info::info_callback));
        filter::EXISTS_CTX.make(ctx);
        super::mover::TIMER_CTX.make(ctx);
        if !client::locate_server_symbol() {
            log_warning(
                "umcluster: the server does not export its 'server' symbol: client identity is \
                 unavailable (ASKING, READONLY and redirects inside MULTI are degraded)",
            );
        }
        if !super::verify_string_layout(ctx) {
            log_warning(
                "umcluster: this server's string layout is not the expected one: the command \
                 filter reads arguments through the module API (correct, a little slower)",
            );
        }
        let commands = load_command_table(ctx)?;
        let count = commands.len();
        state::init(State {
            commands,
            server_master: commands::read_replication_info(ctx).master,
            ..State::default()
        });
        match config {
            Some(path) => {
                load_config_file(ctx, &path, count);
                // A saved migration resumes where the keys are.
                super::mover::ensure_timer(ctx);
                let credentials = super::peer_credentials(ctx);
                let _ = state::try_with_mut(|st| st.publish.set_credentials(credentials));
            }
            None => log_notice(&format!(
                "umcluster: loaded, routing {count} commands; waiting for UMCTL SETCLUSTER"
            )),
        }
    }
    Ok(Status::Ok)
}

/// Loads the saved topology and roles. Any problem leaves the node unconfigured (it answers
/// `-CLUSTERDOWN` until the control plane pushes again) and says why in the log; it never fails
/// the load, so a bad file cannot keep the server from starting.
///
/// # Safety
/// `ctx` must be the OnLoad context, after the state is initialised.
unsafe fn load_config_file(ctx: *mut raw::RedisModuleCtx, path: &std::path::Path, count: usize) {
    let unconfigured = |why: String| {
        state::with_mut(|st| {
            st.topology = None;
            st.replication = state::Replication::default();
            st.saved = persist::Saved::new();
            st.rebuild_table();
        });
        log_warning(&format!(
            "umcluster: starting unconfigured, config file not used: {why}"
        ));
    };
    match persist::read(path) {
        Ok(None) => log_notice(&format!(
            "umcluster: loaded, routing {count} commands; no config file at {} yet, waiting for \
             UMCTL SETCLUSTER",
            path.display()
        )),
        Ok(Some(saved)) => match commands::replay_saved(ctx, &saved) {
            Ok(()) => {
                let (epoch, repl_epoch) = state::with(|st| {
                    (
                        st.topology.as_ref().map_or(0, |t| t.epoch),
                        st.replication.epoch,
                    )
                });
                log_notice(&format!(
                    "umcluster: loaded, routing {count} commands; topology epoch {epoch} and \
                     replication epoch {repl_epoch} restored from {}",
                    path.display()
                ));
            }
            Err(e) => unconfigured(format!("{}: {e}", path.display())),
        },
        Err(e) => unconfigured(e),
    }
}

/// Builds the command table from the server's `COMMAND` reply.
///
/// # Safety
/// `ctx` must be a valid module context on the main thread.
pub unsafe fn load_command_table(ctx: *mut raw::RedisModuleCtx) -> Result<CommandTable, String> {
    let reply = call::call(ctx, "COMMAND", &[])?;
    let table = CommandTable::from_command_reply(&reply)?;
    if table.is_empty() {
        return Err("the server's COMMAND reply lists no command".into());
    }
    Ok(table)
}

/// `deinit`: refuses to unload while a topology is in force. Without the module the server
/// would serve every key as a standalone node, accepting writes for slots other nodes own.
pub fn on_unload(_ctx: &Context) -> Status {
    // A panic here would unwind into MODULE UNLOAD: refuse instead.
    guard("module unload", unload, |_| Status::Err)
}

fn unload() -> Status {
    let configured = state::try_with(|st| st.topology.is_some()).unwrap_or(true);
    if configured {
        log_warning(
            "umcluster: refusing MODULE UNLOAD while a cluster topology is in force \
             (the node would start serving every key); restart the server without the module instead",
        );
        return Status::Err;
    }
    if super::mover::tick_queued() {
        log_warning("umcluster: refusing MODULE UNLOAD while a migration tick is queued");
        return Status::Err;
    }
    state::clear();
    // SAFETY: unload runs on the main thread (MODULE UNLOAD), in none of the module's own
    // functions.
    unsafe { super::redirect_cache::clear() };
    filter::EXISTS_CTX.free();
    super::mover::TIMER_CTX.free();
    Status::Ok
}
