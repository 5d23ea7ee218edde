//! The `umcluster` section of `INFO`.
//!
//! ```text
//! # umcluster
//! umcluster_configured:1
//! umcluster_epoch:7
//! ...
//! ```

use std::ffi::CString;
use std::sync::atomic::Ordering::Relaxed;

use redis_module::raw;

use super::{client, rm};
use crate::state::{self, State};

/// Registered with `RedisModule_RegisterInfoFunc`.
///
/// # Safety
/// Called by the server with a valid INFO context.
pub unsafe extern "C" fn info_callback(
    ctx: *mut raw::RedisModuleInfoCtx,
    _for_crash_report: std::os::raw::c_int,
) {
    // A crash report may run while the state is borrowed: then the section is left out.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Some(fields) = state::try_with(fields) {
            rm!(RedisModule_InfoAddSection)(ctx, c"".as_ptr());
            for (name, value) in fields {
                let (Ok(name), Ok(value)) = (CString::new(name), CString::new(value)) else {
                    continue;
                };
                rm!(RedisModule_InfoAddFieldCString)(ctx, name.as_ptr(), value.as_ptr());
            }
        }
    }));
}

/// The section's fields, in order.
pub fn fields(st: &State) -> Vec<(&'static str, String)> {
    let t = st.topology.as_ref();
    let s = &st.stats;
    let (running, keys_left, keys_per_sec) = crate::migration::totals(&st.migrations);
    vec![
        ("configured", (t.is_some() as u8).to_string()),
        ("epoch", t.map_or(0, |t| t.epoch).to_string()),
        (
            "cluster_name",
            t.map_or(String::new(), |t| t.cluster_name.clone()),
        ),
        (
            "myself",
            st.my_addr(None).map(|a| a.to_string()).unwrap_or_default(),
        ),
        ("slots_owned", t.map_or(0, |t| t.owned_slots()).to_string()),
        (
            "slots_assigned",
            t.map_or(0, |t| t.assigned_slots()).to_string(),
        ),
        ("known_nodes", t.map_or(0, |t| t.nodes.len()).to_string()),
        ("repl_epoch", st.replication.epoch.to_string()),
        (
            "client_identity",
            if client::identity_available() {
                "ok"
            } else {
                "unavailable"
            }
            .to_string(),
        ),
        ("redirect_moved", s.moved.to_string()),
        ("redirect_ask", s.ask.to_string()),
        ("error_crossslot", s.crossslot.to_string()),
        ("error_tryagain", s.tryagain.to_string()),
        ("error_clusterdown", s.clusterdown.to_string()),
        ("script_denied", s.script_denied.to_string()),
        ("multi_rejected", s.multi_rejected.to_string()),
        ("exec_aborted", s.exec_aborted.to_string()),
        ("server_key_lookups", s.server_key_lookups.to_string()),
        ("setcluster_accepted", s.setcluster_accepted.to_string()),
        ("setcluster_rejected", s.setcluster_rejected.to_string()),
        ("setrepl_accepted", s.setrepl_accepted.to_string()),
        ("setrepl_rejected", s.setrepl_rejected.to_string()),
        ("config_write_failed", s.config_write_failed.to_string()),
        ("tracked_connections", st.connections.len().to_string()),
        ("blocked_released", s.blocked_released.to_string()),
        (
            "publish_forwarded",
            st.publish.stats.forwarded.load(Relaxed).to_string(),
        ),
        (
            "publish_dropped",
            st.publish.stats.dropped.load(Relaxed).to_string(),
        ),
        ("migrations_running", running.to_string()),
        ("migration_keys_moved", s.migration_keys_moved.to_string()),
        ("migration_bytes_moved", s.migration_bytes_moved.to_string()),
        ("migration_keys_left", keys_left.to_string()),
        ("migration_keys_per_sec", keys_per_sec.to_string()),
        ("migration_errors", s.migration_errors.to_string()),
        ("migration_fenced", s.migration_fenced.to_string()),
        ("migration_pieces", s.migration_pieces.to_string()),
        ("migration_cpu_us", s.migration_cpu_us.to_string()),
    ]
}
