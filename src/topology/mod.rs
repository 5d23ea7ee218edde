//! The cluster topology pushed by the control plane, and the rules for accepting it.
//!
//! `UMCTL SETCLUSTER` (see [`setcluster`]) describes, for one node, which slots it serves (the
//! "local" part), which slots every other node serves (the `PEER` part), which ranges are moving
//! between two nodes, and a few settings. The node keeps the last accepted [`Topology`] and its
//! epoch; a push with an epoch that is not strictly higher is refused (`-OLD_EPOCH`) unless it
//! carries `FORCE`, so a control plane that comes back from a partition with an old view can never
//! overwrite a newer one.
//!
//! Ownership: a slot belongs to the node whose stable or `migrating` group names it (a migrating
//! source still owns the slot until the control plane commits the move). An `importing` group
//! marks the receiving side of a move and does not own anything.

pub mod compress;
pub mod config;
pub mod persist;
pub mod setcluster;
pub mod setrepl;

use crate::addr::Addr;
use crate::node_id::node_id;
use crate::router::{SlotRoute, SlotTable};
use crate::slot::SLOT_COUNT;

pub use config::ClusterConfig;

/// Inclusive slot range `start..=end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
}

impl SlotRange {
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn slots(&self) -> impl Iterator<Item = u16> {
        self.start..=self.end
    }
}

impl std::fmt::Display for SlotRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// The four addresses and the epoch that identify one migration, as both sides receive them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MigrationMeta {
    pub epoch: u64,
    pub src_proxy: Addr,
    pub src_node: Addr,
    pub dst_proxy: Addr,
    pub dst_node: Addr,
}

/// What a group of ranges means for the node it is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupKind {
    Stable,
    Migrating(MigrationMeta),
    Importing(MigrationMeta),
}

/// One `<addr> <slot-range>` group of a SETCLUSTER command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotGroup {
    pub addr: Addr,
    pub kind: GroupKind,
    pub ranges: Vec<SlotRange>,
}

/// One node known to this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub addr: Addr,
    /// Deterministic 40-hex id (see [`crate::node_id`]).
    pub id: String,
    /// Whether this is the node the module runs in.
    pub myself: bool,
}

/// An accepted topology.
#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    pub epoch: u64,
    pub cluster_name: String,
    /// The local part (this node's own groups).
    pub local: Vec<SlotGroup>,
    /// The `PEER` part.
    pub peers: Vec<SlotGroup>,
    pub config: ClusterConfig,
    /// Every node named anywhere, this node first when the local part names it.
    pub nodes: Vec<Node>,
    /// Owner of each slot (index into `nodes`), `None` when unassigned.
    owners: Vec<Option<u16>>,
}

impl Topology {
    /// Builds a topology from validated groups. `groups` must have passed
    /// [`setcluster::validate`].
    pub fn new(
        epoch: u64,
        cluster_name: String,
        local: Vec<SlotGroup>,
        peers: Vec<SlotGroup>,
        config: ClusterConfig,
    ) -> Topology {
        let mut nodes: Vec<Node> = Vec::new();
        let index_of = |addr: &Addr, myself: bool, nodes: &mut Vec<Node>| -> u16 {
            if let Some(i) = nodes.iter().position(|n| &n.addr == addr) {
                return i as u16;
            }
            nodes.push(Node {
                addr: addr.clone(),
                id: node_id(&cluster_name, addr),
                myself,
            });
            (nodes.len() - 1) as u16
        };
        for g in &local {
            index_of(&g.addr, true, &mut nodes);
        }
        for g in &peers {
            index_of(&g.addr, false, &mut nodes);
        }
        // Addresses that appear only inside a migration description still need an index, so a
        // redirect can name them.
        for g in local.iter().chain(&peers) {
            if let GroupKind::Migrating(m) | GroupKind::Importing(m) = &g.kind {
                index_of(&m.src_proxy, false, &mut nodes);
                index_of(&m.dst_proxy, false, &mut nodes);
            }
        }

        let mut owners = vec![None; SLOT_COUNT];
        for g in local.iter().chain(&peers) {
            if matches!(g.kind, GroupKind::Stable | GroupKind::Migrating(_)) {
                let owner = index_of(&g.addr, false, &mut nodes);
                for r in &g.ranges {
                    for s in r.slots() {
                        owners[s as usize] = Some(owner);
                    }
                }
            }
        }
        Topology {
            epoch,
            cluster_name,
            local,
            peers,
            config,
            nodes,
            owners,
        }
    }

    /// This node's announced address, when the local part names it.
    pub fn myself(&self) -> Option<&Node> {
        self.nodes.iter().find(|n| n.myself)
    }

    pub fn node_index(&self, addr: &Addr) -> Option<u16> {
        self.nodes
            .iter()
            .position(|n| &n.addr == addr)
            .map(|i| i as u16)
    }

    /// Owner of `slot` (index into `nodes`).
    pub fn owner(&self, slot: u16) -> Option<u16> {
        self.owners.get(slot as usize).copied().flatten()
    }

    /// Number of slots that have an owner.
    pub fn assigned_slots(&self) -> usize {
        self.owners.iter().filter(|o| o.is_some()).count()
    }

    /// Number of slots this node owns.
    pub fn owned_slots(&self) -> usize {
        self.owners
            .iter()
            .filter(|o| o.is_some_and(|i| self.nodes[i as usize].myself))
            .count()
    }

    /// Ranges of contiguous slots owned by node `index`.
    pub fn ranges_of(&self, index: u16) -> Vec<SlotRange> {
        let mut out: Vec<SlotRange> = Vec::new();
        for (slot, owner) in self.owners.iter().enumerate() {
            if *owner != Some(index) {
                continue;
            }
            let slot = slot as u16;
            match out.last_mut() {
                Some(r) if r.end + 1 == slot => r.end = slot,
                _ => out.push(SlotRange {
                    start: slot,
                    end: slot,
                }),
            }
        }
        out
    }

    /// The migrating and importing groups of the local part.
    pub fn local_migrations(&self) -> impl Iterator<Item = &SlotGroup> {
        self.local
            .iter()
            .filter(|g| !matches!(g.kind, GroupKind::Stable))
    }

    /// Compiles the per-slot routing table the command filter reads. `my_master` is the node
    /// index of this node's master when it is a replica.
    pub fn slot_table(&self, my_master: Option<u16>) -> SlotTable {
        let mut table = SlotTable::configured();
        table.my_master = my_master;
        for (slot, owner) in self.owners.iter().enumerate() {
            if let Some(owner) = *owner {
                let route = if self.nodes[owner as usize].myself {
                    SlotRoute::Owned
                } else {
                    SlotRoute::Remote { owner }
                };
                table.set(slot as u16, route);
            }
        }
        for g in &self.local {
            let route = match &g.kind {
                GroupKind::Stable => continue,
                GroupKind::Migrating(m) => match self.node_index(&m.dst_proxy) {
                    Some(to) => SlotRoute::Migrating { to },
                    None => continue,
                },
                GroupKind::Importing(m) => {
                    let Some(source) = self.node_index(&m.src_proxy) else {
                        continue;
                    };
                    for r in &g.ranges {
                        for s in r.slots() {
                            let owner = self.owner(s).unwrap_or(source);
                            table.set(s, SlotRoute::Importing { owner });
                        }
                    }
                    continue;
                }
            };
            for r in &g.ranges {
                for s in r.slots() {
                    table.set(s, route);
                }
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Addr {
        Addr::parse(s.as_bytes()).unwrap()
    }

    fn range(start: u16, end: u16) -> SlotRange {
        SlotRange { start, end }
    }

    fn meta() -> MigrationMeta {
        MigrationMeta {
            epoch: 2,
            src_proxy: addr("127.0.0.1:7001"),
            src_node: addr("127.0.0.1:7001"),
            dst_proxy: addr("127.0.0.1:7002"),
            dst_node: addr("127.0.0.1:7002"),
        }
    }

    #[test]
    fn owners_and_routes_follow_groups() {
        let t = Topology::new(
            1,
            "c".into(),
            vec![SlotGroup {
                addr: addr("127.0.0.1:7001"),
                kind: GroupKind::Stable,
                ranges: vec![range(0, 99)],
            }],
            vec![SlotGroup {
                addr: addr("127.0.0.1:7002"),
                kind: GroupKind::Stable,
                ranges: vec![range(100, 200)],
            }],
            ClusterConfig::default(),
        );
        assert_eq!(t.myself().unwrap().addr, addr("127.0.0.1:7001"));
        assert_eq!(t.owned_slots(), 100);
        assert_eq!(t.assigned_slots(), 201);
        let table = t.slot_table(None);
        assert_eq!(table.get(5), SlotRoute::Owned);
        assert_eq!(table.get(150), SlotRoute::Remote { owner: 1 });
        assert_eq!(table.get(201), SlotRoute::Unassigned);
        assert_eq!(t.ranges_of(0), vec![range(0, 99)]);
    }

    #[test]
    fn migrating_source_still_owns_and_asks_destination() {
        let t = Topology::new(
            2,
            "c".into(),
            vec![
                SlotGroup {
                    addr: addr("127.0.0.1:7001"),
                    kind: GroupKind::Stable,
                    ranges: vec![range(0, 8000)],
                },
                SlotGroup {
                    addr: addr("127.0.0.1:7001"),
                    kind: GroupKind::Migrating(meta()),
                    ranges: vec![range(8001, 16383)],
                },
            ],
            vec![SlotGroup {
                addr: addr("127.0.0.1:7002"),
                kind: GroupKind::Importing(meta()),
                ranges: vec![range(8001, 16383)],
            }],
            ClusterConfig::default(),
        );
        assert_eq!(t.owned_slots(), 16384);
        let table = t.slot_table(None);
        assert_eq!(table.get(9000), SlotRoute::Migrating { to: 1 });
        assert_eq!(table.get(10), SlotRoute::Owned);
    }

    #[test]
    fn importing_destination_routes_to_current_owner() {
        let t = Topology::new(
            2,
            "c".into(),
            vec![SlotGroup {
                addr: addr("127.0.0.1:7002"),
                kind: GroupKind::Importing(meta()),
                ranges: vec![range(8001, 16383)],
            }],
            vec![
                SlotGroup {
                    addr: addr("127.0.0.1:7001"),
                    kind: GroupKind::Stable,
                    ranges: vec![range(0, 8000)],
                },
                SlotGroup {
                    addr: addr("127.0.0.1:7001"),
                    kind: GroupKind::Migrating(meta()),
                    ranges: vec![range(8001, 16383)],
                },
            ],
            ClusterConfig::default(),
        );
        let table = t.slot_table(None);
        let src = t.node_index(&addr("127.0.0.1:7001")).unwrap();
        assert_eq!(table.get(9000), SlotRoute::Importing { owner: src });
        assert_eq!(table.get(10), SlotRoute::Remote { owner: src });
        assert_eq!(t.owned_slots(), 0);
    }
}
