//! Per-connection routing state: `ASKING`, `READONLY`, and the slot of an open transaction.
//!
//! A native cluster node keeps these as client flags. The server keeps no such flags for us
//! (its own `ASKING`/`READONLY` refuse to run outside cluster mode), so the module keeps them,
//! keyed by client id, and forgets a client when it disconnects.
//!
//! Why `ASKING` is one-shot: a client that got `-ASK` retries *one* command on the importing
//! node; the node must not keep serving that connection for the slot, or a client that never
//! learned of the migration could read a half-moved slot. Natively the flag is cleared after the
//! next command, except inside `MULTI` (the whole transaction runs under it) and except for the
//! inner calls of a script the flagged command started.

use std::collections::HashMap;

use crate::command_table::Role;
use crate::router::{SlotRoute, SlotTable};

/// What the module remembers about one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ConnState {
    asking: bool,
    readonly: bool,
    tx: Option<Transaction>,
}

impl ConnState {
    fn is_default(&self) -> bool {
        *self == ConnState::default()
    }
}

/// The slot an open transaction (`MULTI` ... `EXEC`) has touched so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transaction {
    /// Slot of the first keyed command queued, if any.
    pub slot: Option<u16>,
    /// Topology version when that command was queued: `EXEC` re-checks the slot if it changed.
    pub version: u64,
}

/// All connections with non-default state.
#[derive(Debug, Default)]
pub struct Connections {
    clients: HashMap<u64, ConnState>,
    asking_armed: usize,
    /// The client whose current command consumed `ASKING`: the inner calls of a script that
    /// command runs see `ASKING` too.
    script_asking: Option<u64>,
    /// Slot of the last blocking command each client ran (BLPOP and friends): when the topology
    /// takes that slot away, the client may be blocked on a key this node no longer serves.
    blocking: HashMap<u64, u16>,
}

impl Connections {
    /// Whether any connection has an `ASKING` pending. When false, the filter skips all
    /// per-connection work for commands on owned slots.
    #[inline]
    pub fn asking_pending(&self) -> bool {
        self.asking_armed > 0 || self.script_asking.is_some()
    }

    /// `ASKING` from `id`: its next command may use an importing slot.
    pub fn arm_asking(&mut self, id: u64) {
        let state = self.clients.entry(id).or_default();
        if !state.asking {
            state.asking = true;
            self.asking_armed += 1;
        }
    }

    /// Decides whether the command `id` is sending now runs under `ASKING`, and consumes the flag
    /// the way a native node does.
    pub fn take_asking(&mut self, id: u64, role: Role, in_multi: bool, in_script: bool) -> bool {
        if !self.asking_pending() {
            return false;
        }
        if in_script {
            return self.script_asking == Some(id);
        }
        // A new top-level command: the previous command's script window is over.
        self.script_asking = None;
        if role == Role::Asking {
            return false;
        }
        let Some(state) = self.clients.get_mut(&id) else {
            return false;
        };
        if !state.asking {
            return false;
        }
        // Inside MULTI the flag lasts until the transaction ends.
        if in_multi && !matches!(role, Role::Exec | Role::Discard | Role::Reset) {
            return true;
        }
        state.asking = false;
        self.asking_armed -= 1;
        self.script_asking = Some(id);
        self.forget_if_default(id);
        true
    }

    pub fn set_readonly(&mut self, id: u64, readonly: bool) {
        self.clients.entry(id).or_default().readonly = readonly;
        self.forget_if_default(id);
    }

    pub fn readonly(&self, id: u64) -> bool {
        self.clients.get(&id).is_some_and(|s| s.readonly)
    }

    /// `MULTI`: a fresh transaction.
    pub fn begin_transaction(&mut self, id: u64, version: u64) {
        self.clients.entry(id).or_default().tx = Some(Transaction {
            slot: None,
            version,
        });
    }

    /// A keyed command queued in the transaction of `id`, on `slot`. Returns false when the
    /// transaction already uses another slot (the native node answers `CROSSSLOT` at `EXEC`).
    pub fn queue_in_transaction(&mut self, id: u64, slot: u16, version: u64) -> bool {
        let tx = self
            .clients
            .entry(id)
            .or_default()
            .tx
            .get_or_insert(Transaction {
                slot: None,
                version,
            });
        match tx.slot {
            None => {
                tx.slot = Some(slot);
                tx.version = version;
                true
            }
            Some(s) => s == slot,
        }
    }

    /// `EXEC` or `DISCARD`: the transaction ends; returns what it touched.
    pub fn end_transaction(&mut self, id: u64) -> Option<Transaction> {
        let tx = self.clients.get_mut(&id).and_then(|s| s.tx.take());
        self.forget_if_default(id);
        tx
    }

    /// `RESET`: the connection returns to its initial state.
    pub fn reset(&mut self, id: u64) {
        self.disconnect(id);
    }

    /// `id` runs a blocking command on `slot` here.
    pub fn note_blocking(&mut self, id: u64, slot: u16) {
        self.blocking.insert(id, slot);
    }

    /// Clients whose last blocking command was on a slot `table` no longer lets this node serve
    /// (neither owned, migrating away, nor importing): they may wait forever for a key whose
    /// writes now go elsewhere. Forgets them.
    pub fn take_blocked_elsewhere(&mut self, table: &SlotTable) -> Vec<u64> {
        let mut gone = Vec::new();
        self.blocking.retain(|&id, &mut slot| {
            let served = matches!(
                table.get(slot),
                SlotRoute::Owned | SlotRoute::Migrating { .. } | SlotRoute::Importing { .. }
            );
            if !served {
                gone.push(id);
            }
            served
        });
        gone.sort_unstable();
        gone
    }

    /// The connection closed.
    pub fn disconnect(&mut self, id: u64) {
        self.blocking.remove(&id);
        if let Some(state) = self.clients.remove(&id) {
            if state.asking {
                self.asking_armed -= 1;
            }
        }
        if self.script_asking == Some(id) {
            self.script_asking = None;
        }
    }

    /// Number of connections with some state (for INFO).
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    fn forget_if_default(&mut self, id: u64) {
        if self.clients.get(&id).is_some_and(ConnState::is_default) {
            self.clients.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_clients_are_released_only_when_their_slot_leaves() {
        let mut c = Connections::default();
        c.note_blocking(1, 10);
        c.note_blocking(2, 20);
        c.note_blocking(3, 30);
        c.note_blocking(4, 40);
        c.disconnect(4);
        let mut table = SlotTable::unconfigured();
        table.set(10, SlotRoute::Owned);
        table.set(20, SlotRoute::Migrating { to: 1 });
        table.set(30, SlotRoute::Remote { owner: 1 });
        table.set(40, SlotRoute::Remote { owner: 1 });
        assert_eq!(c.take_blocked_elsewhere(&table), vec![3]);
        // Forgotten once released.
        assert_eq!(c.take_blocked_elsewhere(&table), Vec::<u64>::new());
        table.set(10, SlotRoute::Unassigned);
        assert_eq!(c.take_blocked_elsewhere(&table), vec![1]);
    }

    #[test]
    fn asking_applies_to_the_next_command_only() {
        let mut c = Connections::default();
        assert!(!c.asking_pending());
        c.arm_asking(1);
        assert!(c.asking_pending());
        assert!(c.take_asking(1, Role::Plain, false, false));
        // The script window of that command keeps it pending until the next top-level command.
        assert!(c.take_asking(1, Role::Plain, false, true));
        assert!(!c.take_asking(1, Role::Plain, false, false));
        assert!(!c.asking_pending());
    }

    #[test]
    fn asking_belongs_to_its_connection() {
        let mut c = Connections::default();
        c.arm_asking(1);
        assert!(!c.take_asking(2, Role::Plain, false, false));
        assert!(c.take_asking(1, Role::Plain, false, false));
    }

    #[test]
    fn asking_twice_then_command_consumes_once() {
        let mut c = Connections::default();
        c.arm_asking(1);
        assert!(!c.take_asking(1, Role::Asking, false, false));
        c.arm_asking(1);
        assert!(c.take_asking(1, Role::Plain, false, false));
        assert!(!c.take_asking(1, Role::Plain, false, false));
    }

    #[test]
    fn asking_lasts_through_multi_until_exec() {
        let mut c = Connections::default();
        c.arm_asking(1);
        assert!(c.take_asking(1, Role::Plain, true, false));
        assert!(c.take_asking(1, Role::Plain, true, false));
        assert!(c.take_asking(1, Role::Exec, true, false));
        assert!(!c.take_asking(1, Role::Plain, false, false));
    }

    #[test]
    fn disconnect_forgets_everything() {
        let mut c = Connections::default();
        c.arm_asking(1);
        c.set_readonly(1, true);
        c.disconnect(1);
        assert!(!c.asking_pending());
        assert!(!c.readonly(1));
        assert!(c.is_empty());
    }

    #[test]
    fn readonly_is_remembered_until_readwrite() {
        let mut c = Connections::default();
        c.set_readonly(7, true);
        assert!(c.readonly(7));
        c.set_readonly(7, false);
        assert!(!c.readonly(7));
        assert!(c.is_empty());
    }

    #[test]
    fn transaction_keeps_one_slot() {
        let mut c = Connections::default();
        c.begin_transaction(1, 5);
        assert!(c.queue_in_transaction(1, 100, 5));
        assert!(c.queue_in_transaction(1, 100, 6));
        assert!(!c.queue_in_transaction(1, 101, 6));
        let tx = c.end_transaction(1).unwrap();
        assert_eq!(tx.slot, Some(100));
        assert_eq!(tx.version, 5);
        assert!(c.end_transaction(1).is_none());
        assert!(c.is_empty());
    }
}
