//! The module's state: the accepted topology and replication roles, the compiled routing table,
//! the command table, per-connection state and counters.
//!
//! All of it lives on the server's main thread: the command filter, module commands, server
//! events and the INFO callback all run there. [`with`] and [`with_mut`] hand out access through
//! a `RefCell`, so an unexpected re-entrant access is a caught panic (an error reply), never two
//! mutable references.

use std::cell::RefCell;

use crate::addr::Addr;
use crate::command_table::CommandTable;
use crate::connections::Connections;
use crate::migration::Task;
use crate::pubsub::Forwarder;
use crate::router::SlotTable;
use crate::stats::Stats;
use crate::topology::persist::Saved;
use crate::topology::setrepl::{ReplEntry, ReplRole};
use crate::topology::Topology;

/// Accepted `SETREPL`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replication {
    pub epoch: u64,
    pub entries: Vec<ReplEntry>,
}

impl Replication {
    /// The address of this node's master, when an entry says this node (`me`) is a replica.
    pub fn master_of(&self, me: &Addr) -> Option<&Addr> {
        self.entries
            .iter()
            .find(|e| e.role == ReplRole::Replica && &e.node == me)
            .and_then(|e| e.peers.first())
            .map(|p| &p.proxy)
    }

    /// Every (replica, master) pair the entries describe, deduplicated, in order.
    pub fn replica_pairs(&self) -> Vec<(Addr, Addr)> {
        let mut pairs: Vec<(Addr, Addr)> = Vec::new();
        for e in &self.entries {
            for p in &e.peers {
                let pair = match e.role {
                    ReplRole::Master => (p.proxy.clone(), e.node.clone()),
                    ReplRole::Replica => (e.node.clone(), p.proxy.clone()),
                };
                if !pairs.contains(&pair) {
                    pairs.push(pair);
                }
            }
        }
        pairs
    }
}

/// Everything the module keeps.
#[derive(Debug, Default)]
pub struct State {
    pub topology: Option<Topology>,
    pub replication: Replication,
    /// Compiled from `topology` and `replication`; what the filter reads.
    pub table: SlotTable,
    /// Bumped whenever `table` changes; transactions remember it to re-check at EXEC.
    pub table_version: u64,
    /// `host:port` of every topology node, by index, as redirects print it.
    pub redirect_addrs: Vec<String>,
    pub commands: CommandTable,
    pub connections: Connections,
    pub stats: Stats,
    /// The master the server itself replicates from (`REPLICAOF`), as `INFO replication` reports
    /// it. Used as this node's master when no SETREPL entry names one, so a replica attached by
    /// hand still serves `READONLY` reads for its master's slots.
    pub server_master: Option<Addr>,
    /// Forwards the `PUBLISH`es of this node's clients to the other masters.
    pub publish: Forwarder,
    /// The accepted pushes as the `config-file` stores them.
    pub saved: Saved,
    /// Slot migrations this node is the source of.
    pub migrations: Vec<Task>,
}

impl State {
    /// This node's own address: from the local part of the topology, else from a SETREPL entry
    /// naming a node on `my_port`.
    pub fn my_addr(&self, my_port: Option<u16>) -> Option<Addr> {
        if let Some(me) = self.topology.as_ref().and_then(|t| t.myself()) {
            return Some(me.addr.clone());
        }
        let port = my_port?;
        self.replication
            .entries
            .iter()
            .find(|e| e.node.port == port)
            .map(|e| e.node.clone())
    }

    /// Recompiles the routing table after the topology or the replication roles changed.
    pub fn rebuild_table(&mut self) {
        let Some(topology) = &self.topology else {
            self.table = SlotTable::unconfigured();
            self.redirect_addrs.clear();
            self.publish.set_peers(Vec::new());
            self.table_version += 1;
            return;
        };
        let my_master = topology
            .myself()
            .and_then(|me| self.replication.master_of(&me.addr))
            .and_then(|m| topology.node_index(m))
            .or_else(|| {
                let master = self.server_master.as_ref()?;
                topology.node_index(master).or_else(|| {
                    topology
                        .nodes
                        .iter()
                        .position(|n| n.addr.same_endpoint(master))
                        .map(|i| i as u16)
                })
            });
        self.table = topology.slot_table(my_master);
        self.publish.set_peers(
            topology
                .nodes
                .iter()
                .filter(|n| !n.myself)
                .map(|n| n.addr.clone())
                .collect(),
        );
        self.redirect_addrs = topology
            .nodes
            .iter()
            .map(|n| n.addr.redirect_form())
            .collect();
        self.table_version += 1;
    }
}

/// A static touched only on the server's main thread (or by a thread holding the server lock
/// while the main thread waits).
pub(crate) struct MainThread<T>(pub(crate) T);

// SAFETY: the server calls every module entry point (filter, commands, events, INFO) on its
// main thread; nothing else touches a `MainThread` static (STATE, the redirect cache).
unsafe impl<T> Sync for MainThread<T> {}

static STATE: MainThread<RefCell<Option<State>>> = MainThread(RefCell::new(None));

fn cell() -> &'static RefCell<Option<State>> {
    &STATE.0
}

/// Installs a fresh state (module load).
pub fn init(state: State) {
    *cell().borrow_mut() = Some(state);
}

/// Drops the state (module unload).
pub fn clear() {
    *cell().borrow_mut() = None;
}

/// Runs `f` with shared access to the state.
#[inline]
pub fn with<R>(f: impl FnOnce(&State) -> R) -> R {
    let guard = cell().borrow();
    f(guard
        .as_ref()
        .expect("umcluster state is initialised at load"))
}

/// Like [`with`], but `None` instead of a panic when the state is busy or not initialised.
pub fn try_with<R>(f: impl FnOnce(&State) -> R) -> Option<R> {
    let guard = cell().try_borrow().ok()?;
    guard.as_ref().map(f)
}

/// Like [`with_mut`], but `None` when the state is busy (an event raised while a command holds
/// it) or not initialised.
pub fn try_with_mut<R>(f: impl FnOnce(&mut State) -> R) -> Option<R> {
    let mut guard = cell().try_borrow_mut().ok()?;
    guard.as_mut().map(f)
}

/// Runs `f` with shared access to the state without touching the borrow flag: the command
/// filter's fast path, where a `RefCell` borrow and release are a measurable share of the cost.
/// `None` while the state is borrowed mutably (a command holding it calls back into the server)
/// or not initialised.
///
/// # Safety
/// `f` must not borrow the state mutably, directly or by calling into the server in a way that
/// re-enters the module (everything runs on the main thread, so nothing else can).
#[inline(always)]
pub unsafe fn peek<R>(f: impl FnOnce(&State) -> R) -> Option<R> {
    // SAFETY: the caller guarantees no mutable borrow starts while `f` runs.
    let state = unsafe { cell().try_borrow_unguarded() }.ok()?;
    state.as_ref().map(f)
}

/// Runs `f` with exclusive access to the state.
#[inline]
pub fn with_mut<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = cell().borrow_mut();
    f(guard
        .as_mut()
        .expect("umcluster state is initialised at load"))
}
