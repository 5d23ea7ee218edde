//! The whole cluster as the admin tool sees it before changing slot ownership (`migrate`,
//! `add-node`, `rebalance`): every node's epoch and slot table, the migration marks in force, and
//! the `UMCTL SETCLUSTER` pushes that describe a new assignment, marks included.
//!
//! Nodes are found through the seed's `CLUSTER NODES`; each node is then asked for its own view,
//! because a push interrupted half-way leaves nodes that disagree, and the tools must notice (and,
//! for an interrupted commit, finish it) rather than push a table built from one node's view.

use std::collections::BTreeMap;

use umcluster::addr::Addr;
use umcluster::cluster_info::{parse_nodes, NodeLine};
use umcluster::resp::Value;
use umcluster::slot::SLOT_COUNT;
use umcluster::topology::SlotRange;

use crate::conn::Conn;
use crate::create::node_epoch;

/// Slot -> owning master's address, as one node sees it.
pub type Owners = Vec<Option<Addr>>;

/// One node and its view.
pub struct NodeView {
    pub addr: Addr,
    pub epoch: u64,
    /// Highest of the topology and replication epochs (a new push must beat both).
    pub max_epoch: u64,
    pub owners: Owners,
    /// Marks this node itself has in force (from its own `CLUSTER NODES` line).
    pub marks: Vec<Mark>,
}

/// One migration mark a node reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub src: Addr,
    pub dst: Addr,
    pub slot: u16,
    /// Seen on the source (`[slot->-dst]`) rather than the destination (`[slot-<-src]`).
    pub on_source: bool,
}

/// A migration in force: slots moving from `src` to `dst`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    pub src: Addr,
    pub dst: Addr,
    pub ranges: Vec<SlotRange>,
    /// The migration epoch both sides were given.
    pub epoch: u64,
}

/// The cluster seen from every node.
pub struct Picture {
    pub name: String,
    /// Masters (nodes that are not replicas), slots or not, in the seed's order.
    pub masters: Vec<Addr>,
    /// Every node, masters first.
    pub nodes: Vec<NodeView>,
}

impl Picture {
    /// Highest epoch any node has seen: a push must carry more.
    pub fn max_epoch(&self) -> u64 {
        self.nodes.iter().map(|n| n.max_epoch).max().unwrap_or(0)
    }

    /// The view of the node with the highest topology epoch (the latest push that landed).
    pub fn reference(&self) -> &NodeView {
        // `nodes` is never empty: the seed is always in it.
        self.nodes
            .iter()
            .max_by_key(|n| n.epoch)
            .unwrap_or(&self.nodes[0])
    }

    /// Slots on which some node disagrees with the reference view.
    pub fn disagreements(&self) -> Vec<(Addr, u16, Option<Addr>, Option<Addr>)> {
        let reference = self.reference();
        let mut out = Vec::new();
        for n in &self.nodes {
            for slot in 0..SLOT_COUNT {
                if n.owners[slot] != reference.owners[slot] {
                    out.push((
                        n.addr.clone(),
                        slot as u16,
                        n.owners[slot].clone(),
                        reference.owners[slot].clone(),
                    ));
                }
            }
        }
        out
    }

    /// The marks in force, grouped by (source, destination). A mark seen on only one side (a
    /// push interrupted between the two) counts: the next push completes it.
    pub fn open_migrations(&self) -> Vec<(Addr, Addr, Vec<SlotRange>)> {
        let mut by_pair: BTreeMap<(String, String), (Addr, Addr, Vec<u16>)> = BTreeMap::new();
        for n in &self.nodes {
            for m in &n.marks {
                let e = by_pair
                    .entry((m.src.to_string(), m.dst.to_string()))
                    .or_insert_with(|| (m.src.clone(), m.dst.clone(), Vec::new()));
                e.2.push(m.slot);
            }
        }
        by_pair
            .into_values()
            .map(|(s, d, mut slots)| {
                slots.sort_unstable();
                slots.dedup();
                (s, d, to_ranges(&slots))
            })
            .collect()
    }

    /// Whether both sides of the pair show their marks for every slot of it.
    pub fn marks_complete(&self, src: &Addr, dst: &Addr, ranges: &[SlotRange]) -> bool {
        let side = |on_source: bool| -> Vec<u16> {
            let mut v: Vec<u16> = self
                .nodes
                .iter()
                .flat_map(|n| n.marks.iter())
                .filter(|m| &m.src == src && &m.dst == dst && m.on_source == on_source)
                .map(|m| m.slot)
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let want: Vec<u16> = ranges.iter().flat_map(|r| r.slots()).collect();
        side(true) == want && side(false) == want
    }

    /// Every node address, in push order: `first` ones (when present) before the rest.
    pub fn push_order(&self, first: &[Addr]) -> Vec<Addr> {
        let mut out: Vec<Addr> = first
            .iter()
            .filter(|a| self.nodes.iter().any(|n| &n.addr == *a))
            .cloned()
            .collect();
        for n in &self.nodes {
            if !out.contains(&n.addr) {
                out.push(n.addr.clone());
            }
        }
        out
    }
}

/// Contiguous ranges of sorted, deduplicated slots.
pub fn to_ranges(slots: &[u16]) -> Vec<SlotRange> {
    let mut out: Vec<SlotRange> = Vec::new();
    for &s in slots {
        match out.last_mut() {
            Some(r) if r.end + 1 == s => r.end = s,
            _ => out.push(SlotRange { start: s, end: s }),
        }
    }
    out
}

/// `0-99,200,300-310` (the `--slots` syntax), for messages.
pub fn ranges_text(ranges: &[SlotRange]) -> String {
    ranges
        .iter()
        .map(|r| {
            if r.start == r.end {
                r.start.to_string()
            } else {
                r.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `A-B[,C-D...]` (a single slot `A` too) into sorted, merged ranges.
pub fn parse_slots(text: &str) -> Result<Vec<SlotRange>, String> {
    let mut slots: Vec<u16> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let parse = |v: &str| -> Result<u16, String> {
            v.trim()
                .parse::<u16>()
                .ok()
                .filter(|&s| (s as usize) < SLOT_COUNT)
                .ok_or_else(|| format!("bad slot '{v}' in --slots (0 to {})", SLOT_COUNT - 1))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b {
            return Err(format!("reversed range '{part}' in --slots"));
        }
        slots.extend(a..=b);
    }
    if slots.is_empty() {
        return Err("--slots names no slot".into());
    }
    slots.sort_unstable();
    slots.dedup();
    Ok(to_ranges(&slots))
}

fn repl_epoch(conn: &mut Conn) -> Result<u64, String> {
    let info = conn.call_ok(&["INFO", "umcluster"])?;
    Ok(info
        .as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("umcluster_repl_epoch:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// The cluster name a node has (`UMCTL LISTCLUSTER`), `None` when it has no topology.
pub fn cluster_name(conn: &mut Conn) -> Result<Option<String>, String> {
    match conn.call_ok(&["UMCTL", "LISTCLUSTER"])? {
        Value::Array(items) => Ok(items.first().and_then(|v| v.as_str()).map(str::to_string)),
        other => Err(format!(
            "{}: unexpected UMCTL LISTCLUSTER reply: {other}",
            conn.addr
        )),
    }
}

fn lines_of(conn: &mut Conn) -> Result<Vec<NodeLine>, String> {
    let nodes = conn.call_ok(&["CLUSTER", "NODES"])?;
    parse_nodes(nodes.as_str().unwrap_or_default())
}

/// The slot owners in `lines`.
fn owners_of(lines: &[NodeLine]) -> Owners {
    let mut owners: Owners = vec![None; SLOT_COUNT];
    for l in lines.iter().filter(|l| !l.is_replica()) {
        for r in &l.slots {
            for s in r.slots() {
                owners[s as usize] = Some(l.addr.clone());
            }
        }
    }
    owners
}

/// The marks on a node's own line: `[slot->-id]` (migrating to id), `[slot-<-id]` (importing).
fn marks_of(lines: &[NodeLine]) -> Vec<Mark> {
    let Some(me) = lines.iter().find(|l| l.is_myself()) else {
        return Vec::new();
    };
    let addr_of = |id: &str| lines.iter().find(|l| l.id == id).map(|l| l.addr.clone());
    let mut out = Vec::new();
    for item in &me.open_slots {
        let inner = item.trim_start_matches('[').trim_end_matches(']');
        let (slot, other, on_source) = if let Some((s, id)) = inner.split_once("->-") {
            (s, id, true)
        } else if let Some((s, id)) = inner.split_once("-<-") {
            (s, id, false)
        } else {
            continue;
        };
        let (Ok(slot), Some(other)) = (slot.parse::<u16>(), addr_of(other)) else {
            continue;
        };
        let (src, dst) = if on_source {
            (me.addr.clone(), other)
        } else {
            (other, me.addr.clone())
        };
        out.push(Mark {
            src,
            dst,
            slot,
            on_source,
        });
    }
    out
}

/// Reads every node named by the seed. Every node must answer: the tools push to all of them.
pub fn read(seed: &Addr) -> Result<Picture, String> {
    let mut conn = Conn::open(seed)?;
    let name =
        cluster_name(&mut conn)?.ok_or_else(|| format!("{seed} has no cluster configured"))?;
    let seed_lines = lines_of(&mut conn)?;
    drop(conn);
    let mut addrs: Vec<(Addr, bool)> = seed_lines
        .iter()
        .map(|l| {
            let a = if l.is_myself() && l.addr.host.is_empty() {
                seed.clone()
            } else {
                l.addr.clone()
            };
            (a, l.is_replica())
        })
        .collect();
    // Masters first (stable sort keeps the seed's order otherwise).
    addrs.sort_by_key(|(_, replica)| *replica);
    let mut nodes = Vec::new();
    for (addr, _) in &addrs {
        let mut c = Conn::open(addr)?;
        let epoch = node_epoch(&mut c)?;
        let max_epoch = epoch.max(repl_epoch(&mut c)?);
        match cluster_name(&mut c)? {
            Some(n) if n == name => {}
            other => {
                return Err(format!(
                    "{addr} is in cluster {:?}, {seed} in '{name}'",
                    other.unwrap_or_default()
                ))
            }
        }
        let lines = lines_of(&mut c)?;
        nodes.push(NodeView {
            addr: addr.clone(),
            epoch,
            max_epoch,
            owners: owners_of(&lines),
            marks: marks_of(&lines),
        });
    }
    let masters = addrs
        .iter()
        .filter(|(_, r)| !r)
        .map(|(a, _)| a.clone())
        .collect();
    Ok(Picture {
        name,
        masters,
        nodes,
    })
}

/// One master's part of an assignment: its stable slots and the migrations it takes part in.
/// Every node receives the same assignment (its own groups as the local part, the rest as
/// `PEER`), so the nodes not involved in a move keep sending the source's slots to the source.
pub fn setcluster_args(
    name: &str,
    epoch: u64,
    masters: &[Addr],
    owners: &Owners,
    migrations: &[Migration],
    me: &Addr,
) -> Vec<String> {
    let moving = |slot: u16| {
        migrations
            .iter()
            .any(|m| m.ranges.iter().any(|r| r.start <= slot && slot <= r.end))
    };
    let groups_of = |m: &Addr| -> Vec<Vec<String>> {
        let stable: Vec<u16> = (0..SLOT_COUNT as u16)
            .filter(|&s| owners[s as usize].as_ref() == Some(m) && !moving(s))
            .collect();
        let mut groups = Vec::new();
        let ranges = to_ranges(&stable);
        let mut g = vec![m.to_string(), ranges.len().to_string()];
        g.extend(ranges.iter().map(|r| r.to_string()));
        groups.push(g);
        for mig in migrations {
            let kind = if &mig.src == m {
                "migrating"
            } else if &mig.dst == m {
                "importing"
            } else {
                continue;
            };
            let mut g = vec![m.to_string(), kind.into(), mig.ranges.len().to_string()];
            g.extend(mig.ranges.iter().map(|r| r.to_string()));
            g.extend([
                mig.epoch.to_string(),
                mig.src.to_string(),
                mig.src.to_string(),
                mig.dst.to_string(),
                mig.dst.to_string(),
            ]);
            groups.push(g);
        }
        // An empty stable group only keeps a master without slots in the topology.
        if groups.len() > 1 && groups[0].len() == 2 {
            groups.remove(0);
        }
        groups
    };
    let mut args: Vec<String> = vec![
        "UMCTL".into(),
        "SETCLUSTER".into(),
        "v2".into(),
        epoch.to_string(),
        "NOFLAG".into(),
        name.to_string(),
    ];
    if masters.contains(me) {
        for g in groups_of(me) {
            args.extend(g);
        }
    }
    let peers: Vec<&Addr> = masters.iter().filter(|m| *m != me).collect();
    if !peers.is_empty() {
        args.push("PEER".into());
        for p in peers {
            for g in groups_of(p) {
                args.extend(g);
            }
        }
    }
    args
}

/// Pushes one assignment to every address in `order` (each gets its own local part). Stops at
/// the first refusal, naming the nodes already updated (re-running the command repairs that).
pub fn push(
    order: &[Addr],
    name: &str,
    epoch: u64,
    masters: &[Addr],
    owners: &Owners,
    migrations: &[Migration],
) -> Result<(), String> {
    let mut done: Vec<String> = Vec::new();
    for addr in order {
        let args = setcluster_args(name, epoch, masters, owners, migrations, addr);
        let reply = Conn::open(addr).and_then(|mut c| c.call(&args));
        let updated = if done.is_empty() {
            "none".to_string()
        } else {
            done.join(", ")
        };
        match reply {
            Ok(Value::Simple(s)) if s == "OK" || s.starts_with("WARNING") => {
                done.push(addr.to_string())
            }
            Ok(other) => {
                return Err(format!(
                    "{addr} refused the topology: {other} (already updated: {updated})"
                ))
            }
            Err(e) => return Err(format!("{e} (already updated: {updated})")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Addr {
        Addr::parse(s.as_bytes()).unwrap()
    }

    fn r(start: u16, end: u16) -> SlotRange {
        SlotRange { start, end }
    }

    #[test]
    fn slots_option_parses_merges_and_rejects() {
        assert_eq!(
            parse_slots("0-9,5-20, 100,101").unwrap(),
            vec![r(0, 20), r(100, 101)]
        );
        assert_eq!(ranges_text(&[r(0, 20), r(7, 7)]), "0-20,7");
        for bad in ["", "16384", "5-3", "a-b", "-1", "0-16384"] {
            assert!(parse_slots(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn assignment_marks_source_and_destination_and_keeps_empty_masters() {
        let (x, y, z) = (a("127.0.0.1:1"), a("127.0.0.1:2"), a("127.0.0.1:3"));
        let mut owners: Owners = vec![Some(x.clone()); SLOT_COUNT];
        for o in &mut owners[8192..] {
            *o = Some(y.clone());
        }
        let masters = vec![x.clone(), y.clone(), z.clone()];
        let migs = vec![Migration {
            src: x.clone(),
            dst: z.clone(),
            ranges: vec![r(0, 99)],
            epoch: 7,
        }];
        let text = |me: &Addr| setcluster_args("c", 8, &masters, &owners, &migs, me).join(" ");
        assert_eq!(
            text(&x),
            "UMCTL SETCLUSTER v2 8 NOFLAG c 127.0.0.1:1 1 100-8191 \
             127.0.0.1:1 migrating 1 0-99 7 127.0.0.1:1 127.0.0.1:1 127.0.0.1:3 127.0.0.1:3 \
             PEER 127.0.0.1:2 1 8192-16383 \
             127.0.0.1:3 importing 1 0-99 7 127.0.0.1:1 127.0.0.1:1 127.0.0.1:3 127.0.0.1:3"
        );
        assert!(text(&z).contains("c 127.0.0.1:3 importing 1 0-99 7 "));
        // Without the migration, z is still a member, with no slots.
        let plain = setcluster_args("c", 9, &masters, &owners, &[], &y).join(" ");
        assert_eq!(
            plain,
            "UMCTL SETCLUSTER v2 9 NOFLAG c 127.0.0.1:2 1 8192-16383 \
             PEER 127.0.0.1:1 1 0-8191 127.0.0.1:3 0"
        );
        // A replica (not a master) gets every master as a peer.
        let rep = setcluster_args("c", 9, &masters, &owners, &[], &a("127.0.0.1:4")).join(" ");
        assert!(rep.starts_with("UMCTL SETCLUSTER v2 9 NOFLAG c PEER 127.0.0.1:1 1 0-8191"));
    }

    #[test]
    fn the_pushed_assignment_parses_and_validates() {
        use umcluster::topology::setcluster;
        let (x, y) = (a("127.0.0.1:1"), a("127.0.0.1:2"));
        let owners: Owners = vec![Some(x.clone()); SLOT_COUNT];
        let masters = vec![x.clone(), y.clone()];
        let migs = vec![Migration {
            src: x.clone(),
            dst: y.clone(),
            ranges: vec![r(0, 10), r(20, 30)],
            epoch: 3,
        }];
        for me in [&x, &y] {
            let args = setcluster_args("c", 4, &masters, &owners, &migs, me);
            let bytes: Vec<&[u8]> = args[2..].iter().map(|s| s.as_bytes()).collect();
            let sc = setcluster::parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
            setcluster::validate(&sc.local, &sc.peers).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
