//! The `CLUSTER NODES`, `SLOTS`, `SHARDS`, `INFO` and `REPLICAS` replies, in the native formats of
//! redis 7.0 (`clusterGenNodeDescription()`, `clusterReplyMultiBulkSlots()`,
//! `clusterReplyShards()` in `cluster.c`), byte for byte, so that every client's parser accepts
//! them.
//!
//! The node list is the topology's nodes (masters, with their slots) plus the replicas that
//! `SETREPL` describes. There is no gossip, so the fields a native node fills from it are
//! constants: ping-sent and pong-received are 0, every link is `connected`, every node's config
//! epoch is the topology epoch.

use std::fmt::Write;

use crate::addr::Addr;
use crate::node_id::node_id;
use crate::reply::Reply;
use crate::state::Replication;
use crate::topology::{GroupKind, SlotRange, Topology};

/// One node as the CLUSTER replies show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewNode {
    pub id: String,
    pub addr: Addr,
    pub myself: bool,
    /// Index (in the view) of this node's master when it is a replica.
    pub master: Option<usize>,
    /// Slots it serves (masters only).
    pub slots: Vec<SlotRange>,
}

/// Everything the CLUSTER replies need, computed once per call.
#[derive(Clone, Debug)]
pub struct ClusterView<'a> {
    pub topology: Option<&'a Topology>,
    pub nodes: Vec<ViewNode>,
    pub epoch: u64,
    /// This node's replication offset (`master_repl_offset` or the replica's processed offset).
    pub my_repl_offset: i64,
}

impl<'a> ClusterView<'a> {
    /// Builds the view. `me` is this node's own address when known (from the topology or SETREPL);
    /// `my_port` is used to show an unconfigured node as `:port`.
    pub fn new(
        topology: Option<&'a Topology>,
        replication: &Replication,
        me: Option<&Addr>,
        my_port: u16,
        my_repl_offset: i64,
    ) -> ClusterView<'a> {
        let cluster_name = topology.map(|t| t.cluster_name.as_str()).unwrap_or("");
        let mut nodes: Vec<ViewNode> = Vec::new();
        if let Some(t) = topology {
            for (i, n) in t.nodes.iter().enumerate() {
                nodes.push(ViewNode {
                    id: n.id.clone(),
                    addr: n.addr.clone(),
                    myself: Some(&n.addr) == me,
                    master: None,
                    slots: t.ranges_of(i as u16),
                });
            }
        }
        let index_of = |addr: &Addr, nodes: &mut Vec<ViewNode>| -> usize {
            if let Some(i) = nodes.iter().position(|n| &n.addr == addr) {
                return i;
            }
            nodes.push(ViewNode {
                id: node_id(cluster_name, addr),
                addr: addr.clone(),
                myself: Some(addr) == me,
                master: None,
                slots: Vec::new(),
            });
            nodes.len() - 1
        };
        if let Some(me) = me {
            index_of(me, &mut nodes);
        }
        for (replica, master) in replication.replica_pairs() {
            let m = index_of(&master, &mut nodes);
            let r = index_of(&replica, &mut nodes);
            // A node serving slots stays a master whatever SETREPL says; a replica never owns.
            if r != m && nodes[r].slots.is_empty() && nodes[m].master.is_none() {
                nodes[r].master = Some(m);
            }
        }
        if nodes.is_empty() {
            let addr = Addr {
                host: String::new(),
                port: my_port,
            };
            nodes.push(ViewNode {
                id: node_id("", &addr),
                addr,
                myself: true,
                master: None,
                slots: Vec::new(),
            });
        }
        ClusterView {
            topology,
            nodes,
            epoch: topology.map_or(0, |t| t.epoch),
            my_repl_offset,
        }
    }

    pub fn myself(&self) -> Option<&ViewNode> {
        self.nodes.iter().find(|n| n.myself)
    }

    /// Masters in view order.
    fn masters(&self) -> impl Iterator<Item = (usize, &ViewNode)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.master.is_none())
    }

    fn replicas_of(&self, master: usize) -> impl Iterator<Item = &ViewNode> {
        self.nodes.iter().filter(move |n| n.master == Some(master))
    }

    /// One `CLUSTER NODES` line (without the trailing newline).
    pub fn node_line(&self, index: usize) -> String {
        let n = &self.nodes[index];
        let mut line = String::with_capacity(128);
        let _ = write!(
            line,
            "{} {}:{}@{} ",
            n.id,
            n.addr.host,
            n.addr.port,
            n.addr.port as u32 + 10000
        );
        let mut flags = Vec::new();
        if n.myself {
            flags.push("myself");
        }
        flags.push(if n.master.is_some() {
            "slave"
        } else {
            "master"
        });
        line.push_str(&flags.join(","));
        match n.master {
            Some(m) => {
                line.push(' ');
                line.push_str(&self.nodes[m].id);
            }
            None => line.push_str(" -"),
        }
        let _ = write!(line, " 0 0 {} connected", self.epoch);
        for r in &n.slots {
            if r.start == r.end {
                let _ = write!(line, " {}", r.start);
            } else {
                let _ = write!(line, " {}-{}", r.start, r.end);
            }
        }
        if n.myself {
            self.push_open_slots(&mut line);
        }
        line
    }

    /// `[slot->-id]` / `[slot-<-id]` for the slots this node is migrating / importing, as a native
    /// node shows them on its own line.
    fn push_open_slots(&self, line: &mut String) {
        let Some(t) = self.topology else { return };
        for g in t.local_migrations() {
            let (arrow, other) = match &g.kind {
                GroupKind::Migrating(m) => ("->-", &m.dst_proxy),
                GroupKind::Importing(m) => ("-<-", &m.src_proxy),
                GroupKind::Stable => continue,
            };
            let other_id = node_id(&t.cluster_name, other);
            for r in &g.ranges {
                for s in r.slots() {
                    let _ = write!(line, " [{s}{arrow}{other_id}]");
                }
            }
        }
    }

    /// `CLUSTER NODES`: one line per node, each ending in `\n`.
    pub fn nodes_text(&self) -> String {
        let mut out = String::new();
        for i in 0..self.nodes.len() {
            out.push_str(&self.node_line(i));
            out.push('\n');
        }
        out
    }

    fn node_entry(&self, n: &ViewNode) -> Reply {
        Reply::Array(vec![
            Reply::bulk(&n.addr.host),
            Reply::Int(n.addr.port as i64),
            Reply::bulk(&n.id),
            Reply::Map(Vec::new()),
        ])
    }

    /// `CLUSTER SLOTS`: one entry per run of consecutive slots with the same master.
    pub fn slots_reply(&self) -> Reply {
        let mut runs: Vec<(u16, u16, usize)> = Vec::new();
        for (i, n) in self.masters() {
            for r in &n.slots {
                runs.push((r.start, r.end, i));
            }
        }
        runs.sort();
        Reply::Array(
            runs.into_iter()
                .map(|(start, end, m)| {
                    let mut entry = vec![
                        Reply::Int(start as i64),
                        Reply::Int(end as i64),
                        self.node_entry(&self.nodes[m]),
                    ];
                    entry.extend(self.replicas_of(m).map(|r| self.node_entry(r)));
                    Reply::Array(entry)
                })
                .collect(),
        )
    }

    fn shard_node(&self, n: &ViewNode) -> Reply {
        let offset = if n.myself { self.my_repl_offset } else { 0 };
        Reply::Map(vec![
            (Reply::bulk("id"), Reply::bulk(&n.id)),
            (Reply::bulk("port"), Reply::Int(n.addr.port as i64)),
            (Reply::bulk("ip"), Reply::bulk(&n.addr.host)),
            (Reply::bulk("endpoint"), Reply::bulk(&n.addr.host)),
            (
                Reply::bulk("role"),
                Reply::bulk(if n.master.is_some() {
                    "replica"
                } else {
                    "master"
                }),
            ),
            (Reply::bulk("replication-offset"), Reply::Int(offset)),
            (Reply::bulk("health"), Reply::bulk("online")),
        ])
    }

    /// `CLUSTER SHARDS`: one entry per master, with its slots and its nodes (master first).
    pub fn shards_reply(&self) -> Reply {
        Reply::Array(
            self.masters()
                .map(|(i, m)| {
                    let slots = m
                        .slots
                        .iter()
                        .flat_map(|r| [Reply::Int(r.start as i64), Reply::Int(r.end as i64)])
                        .collect();
                    let mut nodes = vec![self.shard_node(m)];
                    nodes.extend(self.replicas_of(i).map(|r| self.shard_node(r)));
                    Reply::Map(vec![
                        (Reply::bulk("slots"), Reply::Array(slots)),
                        (Reply::bulk("nodes"), Reply::Array(nodes)),
                    ])
                })
                .collect(),
        )
    }

    /// `CLUSTER REPLICAS <node-id>`: the `CLUSTER NODES` lines of that master's replicas.
    pub fn replicas_reply(&self, id: &[u8]) -> Reply {
        let Some(index) = self.nodes.iter().position(|n| n.id.as_bytes() == id) else {
            return Reply::error(format!("ERR Unknown node {}", String::from_utf8_lossy(id)));
        };
        if self.nodes[index].master.is_some() {
            return Reply::error("ERR The specified node is not a master");
        }
        Reply::Array(
            (0..self.nodes.len())
                .filter(|&r| self.nodes[r].master == Some(index))
                .map(|r| Reply::bulk(self.node_line(r)))
                .collect(),
        )
    }

    /// `CLUSTER INFO`.
    pub fn info_text(&self) -> String {
        let assigned = self.topology.map_or(0, |t| t.assigned_slots());
        let state = if assigned == crate::slot::SLOT_COUNT {
            "ok"
        } else {
            "fail"
        };
        let size = self.masters().filter(|(_, n)| !n.slots.is_empty()).count();
        format!(
            "cluster_state:{state}\r\n\
             cluster_slots_assigned:{assigned}\r\n\
             cluster_slots_ok:{assigned}\r\n\
             cluster_slots_pfail:0\r\n\
             cluster_slots_fail:0\r\n\
             cluster_known_nodes:{}\r\n\
             cluster_size:{size}\r\n\
             cluster_current_epoch:{}\r\n\
             cluster_my_epoch:{}\r\n\
             cluster_stats_messages_sent:0\r\n\
             cluster_stats_messages_received:0\r\n\
             total_cluster_links_buffer_limit_exceeded:0\r\n",
            self.nodes.len(),
            self.epoch,
            self.epoch
        )
    }
}

/// One parsed `CLUSTER NODES` line (as the admin tool and tests read them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLine {
    pub id: String,
    pub addr: Addr,
    pub flags: Vec<String>,
    /// Master's id for a replica.
    pub master: Option<String>,
    pub epoch: u64,
    pub slots: Vec<SlotRange>,
    /// `[slot->-id]` / `[slot-<-id]` entries, as printed.
    pub open_slots: Vec<String>,
}

impl NodeLine {
    pub fn is_myself(&self) -> bool {
        self.flags.iter().any(|f| f == "myself")
    }

    pub fn is_replica(&self) -> bool {
        self.flags.iter().any(|f| f == "slave")
    }
}

/// Parses `CLUSTER NODES` text.
pub fn parse_nodes(text: &str) -> Result<Vec<NodeLine>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 8 {
            return Err(format!("short CLUSTER NODES line: {line}"));
        }
        let hostport = f[1].split(['@', ',']).next().unwrap_or_default();
        let colon = hostport
            .rfind(':')
            .ok_or_else(|| format!("bad address in: {line}"))?;
        let port: u16 = hostport[colon + 1..]
            .parse()
            .map_err(|_| format!("bad port in: {line}"))?;
        let mut slots = Vec::new();
        let mut open_slots = Vec::new();
        for item in &f[8..] {
            if item.starts_with('[') {
                open_slots.push(item.to_string());
                continue;
            }
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            let start: u16 = a
                .parse()
                .map_err(|_| format!("bad slot '{item}' in: {line}"))?;
            let end: u16 = b
                .parse()
                .map_err(|_| format!("bad slot '{item}' in: {line}"))?;
            slots.push(SlotRange { start, end });
        }
        out.push(NodeLine {
            id: f[0].to_string(),
            addr: Addr {
                host: hostport[..colon].to_string(),
                port,
            },
            flags: f[2].split(',').map(str::to_string).collect(),
            master: (f[3] != "-").then(|| f[3].to_string()),
            epoch: f[6].parse().map_err(|_| format!("bad epoch in: {line}"))?,
            slots,
            open_slots,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::setrepl::{ReplEntry, ReplPeer, ReplRole};
    use crate::topology::{setcluster, ClusterConfig};

    fn addr(s: &str) -> Addr {
        Addr::parse(s.as_bytes()).unwrap()
    }

    fn topology(cmd: &str) -> Topology {
        let tokens: Vec<&[u8]> = cmd.split_whitespace().map(str::as_bytes).collect();
        let sc = setcluster::parse(&tokens).unwrap();
        Topology::new(
            sc.epoch,
            sc.cluster_name,
            sc.local,
            sc.peers,
            ClusterConfig::default(),
        )
    }

    fn three_nodes() -> Topology {
        topology(
            "v2 5 NOFLAGS db 127.0.0.1:7001 1 0-5460 PEER 127.0.0.1:7002 1 5461-10922 127.0.0.1:7003 2 10923-16382 16383-16383",
        )
    }

    #[test]
    fn nodes_lines_have_the_native_shape() {
        let t = three_nodes();
        let me = addr("127.0.0.1:7001");
        let v = ClusterView::new(Some(&t), &Replication::default(), Some(&me), 7001, 0);
        let text = v.nodes_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(text.ends_with('\n'));
        let id1 = node_id("db", &me);
        assert_eq!(
            lines[0],
            format!("{id1} 127.0.0.1:7001@17001 myself,master - 0 0 5 connected 0-5460")
        );
        assert!(lines[2].ends_with("connected 10923-16383"));
        // Every line: id, addr@cport, flags, master, ping, pong, epoch, link, slots...
        for l in lines {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f[0].len(), 40);
            assert!(f[1].contains('@'));
            assert_eq!(f[7], "connected");
        }
    }

    #[test]
    fn slots_reply_groups_runs_and_lists_replicas() {
        let t = three_nodes();
        let repl = Replication {
            epoch: 1,
            entries: vec![ReplEntry {
                role: ReplRole::Master,
                cluster_name: "db".into(),
                node: addr("127.0.0.1:7002"),
                peers: vec![ReplPeer {
                    node: addr("127.0.0.1:7005"),
                    proxy: addr("127.0.0.1:7005"),
                }],
            }],
        };
        let me = addr("127.0.0.1:7001");
        let v = ClusterView::new(Some(&t), &repl, Some(&me), 7001, 0);
        let Reply::Array(entries) = v.slots_reply() else {
            panic!()
        };
        assert_eq!(entries.len(), 3);
        let Reply::Array(second) = &entries[1] else {
            panic!()
        };
        assert_eq!(second[0], Reply::Int(5461));
        assert_eq!(second[1], Reply::Int(10922));
        assert_eq!(second.len(), 4, "master plus one replica");
        let Reply::Array(replica) = &second[3] else {
            panic!()
        };
        assert_eq!(replica[1], Reply::Int(7005));
        let text = v.nodes_text();
        let replica_line = text.lines().find(|l| l.contains("7005")).unwrap();
        assert!(replica_line.contains(" slave "));
        assert!(replica_line.contains(&node_id("db", &addr("127.0.0.1:7002"))));
    }

    #[test]
    fn shards_reply_lists_every_master() {
        let t = three_nodes();
        let v = ClusterView::new(
            Some(&t),
            &Replication::default(),
            Some(&addr("127.0.0.1:7001")),
            7001,
            42,
        );
        let Reply::Array(shards) = v.shards_reply() else {
            panic!()
        };
        assert_eq!(shards.len(), 3);
        let Reply::Map(first) = &shards[0] else {
            panic!()
        };
        assert_eq!(
            first[0].1,
            Reply::Array(vec![Reply::Int(0), Reply::Int(5460)])
        );
    }

    #[test]
    fn info_reports_ok_only_with_full_coverage() {
        let t = three_nodes();
        let v = ClusterView::new(Some(&t), &Replication::default(), None, 7001, 0);
        assert!(v
            .info_text()
            .starts_with("cluster_state:ok\r\ncluster_slots_assigned:16384\r\n"));
        assert!(v.info_text().contains("cluster_size:3\r\n"));
        let partial = topology("v2 1 NOFLAGS db 127.0.0.1:7001 1 0-100");
        let v = ClusterView::new(Some(&partial), &Replication::default(), None, 7001, 0);
        assert!(v
            .info_text()
            .starts_with("cluster_state:fail\r\ncluster_slots_assigned:101\r\n"));
        let v = ClusterView::new(None, &Replication::default(), None, 7001, 0);
        assert!(v.info_text().contains("cluster_known_nodes:1\r\n"));
    }

    #[test]
    fn parse_nodes_reads_back_what_we_print() {
        let t = three_nodes();
        let me = addr("127.0.0.1:7001");
        let v = ClusterView::new(Some(&t), &Replication::default(), Some(&me), 7001, 0);
        let parsed = parse_nodes(&v.nodes_text()).unwrap();
        assert_eq!(parsed.len(), 3);
        assert!(parsed[0].is_myself());
        assert_eq!(parsed[0].addr, me);
        assert_eq!(
            parsed[2].slots,
            vec![SlotRange {
                start: 10923,
                end: 16383
            }]
        );
        assert_eq!(parsed[1].epoch, 5);
        assert!(parse_nodes("garbage").is_err());
    }

    #[test]
    fn unconfigured_node_shows_itself() {
        let v = ClusterView::new(None, &Replication::default(), None, 7001, 0);
        let line = v.nodes_text();
        assert!(line.contains(" :7001@17001 myself,master - 0 0 0 connected\n"));
    }

    #[test]
    fn myself_shows_open_slots() {
        let t = topology(
            "v2 2 NOFLAGS db 127.0.0.1:7001 1 0-10 127.0.0.1:7001 migrating 1 11-12 2 127.0.0.1:7001 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7002 PEER 127.0.0.1:7002 importing 1 11-12 2 127.0.0.1:7001 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7002",
        );
        let me = addr("127.0.0.1:7001");
        let v = ClusterView::new(Some(&t), &Replication::default(), Some(&me), 7001, 0);
        let dst = node_id("db", &addr("127.0.0.1:7002"));
        assert!(v
            .node_line(0)
            .ends_with(&format!("0-12 [11->-{dst}] [12->-{dst}]")));
    }

    #[test]
    fn replicas_subcommand_checks_the_node() {
        let t = three_nodes();
        let v = ClusterView::new(Some(&t), &Replication::default(), None, 7001, 0);
        assert!(matches!(v.replicas_reply(b"nope"), Reply::Error(_)));
        let id = node_id("db", &addr("127.0.0.1:7002"));
        assert_eq!(v.replicas_reply(id.as_bytes()), Reply::Array(vec![]));
    }
}
