//! umcluster: a Redis module that makes a stock `redis-server` (7.0+) answer like a Redis Cluster
//! master, with the topology pushed by `UMCTL SETCLUSTER`.
//!
//! Layout:
//! - pure core, unit-tested without a server: [`slot`] (hashing), [`addr`], [`node_id`],
//!   [`topology`] (the UMCTL model, parsers and epoch rules), [`command_table`] (where each
//!   command's keys are), [`router`] (the routing decision), [`connections`] (per-connection
//!   ASKING/READONLY/transaction state), [`cluster_info`] (the `CLUSTER` replies), [`resp`];
//! - [`commands`]: the module's commands (`UMCTL`, `CLUSTER`, `ASKING`/`READONLY`/`READWRITE`);
//! - [`ffi`]: the only code that calls the server's C API: the command filter (the hot path),
//!   registration, events, the INFO section, and the global allocator.

pub mod addr;
pub mod cluster_info;
pub mod command_table;
pub mod commands;
pub mod connections;
pub mod ffi;
pub mod migration;
pub mod node_id;
pub mod pubsub;
pub mod reply;
pub mod resp;
pub mod router;
pub mod server_info;
pub mod slot;
pub mod state;
pub mod stats;
pub mod topology;
pub mod transfer;

use ffi::module::{on_load, on_unload};

redis_module::redis_module! {
    name: "umcluster",
    version: 1,
    allocator: (crate::ffi::alloc::ServerAwareAllocator, crate::ffi::alloc::ServerAwareAllocator),
    data_types: [],
    init: on_load,
    deinit: on_unload,
}
