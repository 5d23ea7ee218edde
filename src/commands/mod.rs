//! The module's own commands, one family per file:
//! - [`umctl`]: `UMCTL SETCLUSTER|SETREPL|GETEPOCH|READY|INFOMGR|INFOREPL|LISTCLUSTER` (and the
//!   `UMCTL.X` spellings), the control plane's interface;
//! - [`cluster`]: `CLUSTER ...`, answered by the module because the server runs without
//!   `cluster-enabled`;
//! - [`connection`]: `ASKING`, `READONLY`, `READWRITE`.
//!
//! Handlers take the arguments and the state and return a [`Reply`](crate::reply::Reply); what
//! they need from the running server comes through [`Server`], so they are tested without one.

pub mod cluster;
pub mod connection;
pub mod info;
pub mod umctl;

use crate::addr::Addr;
use crate::server_info::ReplicationInfo;

/// What command handlers need to ask the running server.
pub trait Server {
    /// The ports this server listens on (`port`, `tls-port`; 0 when disabled).
    fn listening_ports(&self) -> Vec<u16>;
    /// This node's replication state: its master (when a replica) and offset.
    fn replication(&self) -> ReplicationInfo;
    /// Makes the server replicate from `master` (`REPLICAOF host port`), or stop replicating
    /// (`REPLICAOF NO ONE`) when `None`.
    fn set_master(&self, master: Option<&Addr>) -> Result<(), String>;
    /// How many keys `slot` has in the caller's database.
    fn count_keys_in_slot(&self, slot: u16) -> u64;
    /// Up to `max` keys of `slot` in the caller's database.
    fn keys_in_slot(&self, slot: u16, max: usize) -> Vec<Vec<u8>>;
    /// Saves an accepted push to the module's `config-file`, when there is one. An error refuses
    /// the push (nothing applied), so the control plane retries.
    fn save_config(&self, _saved: &crate::topology::persist::Saved) -> Result<(), String> {
        Ok(())
    }
}

/// The first listening port that is not 0 (for displaying an unconfigured node).
pub fn main_port(server: &dyn Server) -> u16 {
    server
        .listening_ports()
        .into_iter()
        .find(|&p| p != 0)
        .unwrap_or(0)
}
