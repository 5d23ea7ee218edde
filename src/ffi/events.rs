//! Server events the module follows:
//! - a client disconnects: forget its ASKING/READONLY/transaction state;
//! - a module loads or unloads: rebuild the command table, so new commands are routed by the key
//!   positions they declare;
//! - the replication role or the master link changes (`REPLICAOF`): note the server's master,
//!   so a replica serves `READONLY` reads for its master's slots even without a SETREPL entry.

use std::os::raw::c_void;

use redis_module::raw;

use super::{commands, guard, log_warning, module, rm};
use crate::state;

/// Subscribes to the events above.
///
/// # Safety
/// `ctx` must be the context passed to `RedisModule_OnLoad`.
pub unsafe fn subscribe(ctx: *mut raw::RedisModuleCtx) -> Result<(), String> {
    let events = [
        (raw::REDISMODULE_EVENT_CLIENT_CHANGE, "client change"),
        (raw::REDISMODULE_EVENT_MODULE_CHANGE, "module change"),
        (
            raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
            "replication role change",
        ),
        (
            raw::REDISMODULE_EVENT_MASTER_LINK_CHANGE,
            "master link change",
        ),
    ];
    for (id, name) in events {
        let event = raw::RedisModuleEvent { id, dataver: 1 };
        if rm!(RedisModule_SubscribeToServerEvent)(ctx, event, Some(on_event))
            != raw::REDISMODULE_OK as i32
        {
            return Err(format!("cannot subscribe to the {name} event"));
        }
    }
    Ok(())
}

unsafe extern "C" fn on_event(
    ctx: *mut raw::RedisModuleCtx,
    eid: raw::RedisModuleEvent,
    subevent: u64,
    data: *mut c_void,
) {
    guard(
        "a server event",
        || match eid.id {
            raw::REDISMODULE_EVENT_CLIENT_CHANGE
                if subevent == raw::REDISMODULE_SUBEVENT_CLIENT_CHANGE_DISCONNECTED
                    && !data.is_null() =>
            {
                let info = &*(data as *const raw::RedisModuleClientInfo);
                state::with_mut(|st| st.connections.disconnect(info.id));
            }
            raw::REDISMODULE_EVENT_MODULE_CHANGE => match module::load_command_table(ctx) {
                Ok(table) => state::with_mut(|st| st.commands = table),
                Err(e) => log_warning(&format!(
                    "umcluster: keeping the previous command table: {e}"
                )),
            },
            raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED
            | raw::REDISMODULE_EVENT_MASTER_LINK_CHANGE => {
                let master = commands::read_replication_info(ctx).master;
                // Busy when UMCTL SETREPL itself ran REPLICAOF: it records the master afterwards.
                state::try_with_mut(|st| {
                    if st.server_master != master {
                        st.server_master = master;
                        st.rebuild_table();
                    }
                });
            }
            _ => {}
        },
        |_| (),
    )
}
