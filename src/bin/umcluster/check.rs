//! `umcluster check ADDR`: do all nodes agree, and is every slot served?
//!
//! Reads the node list from ADDR, then asks every node for its epoch (`UMCTL GETEPOCH`) and its
//! view of the cluster (`CLUSTER NODES`). The cluster is healthy when every node reports the same
//! epoch and the same slot ownership, all 16384 slots are assigned, no slot is open
//! (migrating/importing) and every node replicates as the topology says (a replica from its
//! master, a master from nobody). Prints a report in the style of `redis-cli --cluster check`; exits
//! non-zero on any problem.

use std::collections::BTreeMap;

use umcluster::addr::Addr;
use umcluster::cluster_info::{parse_nodes, NodeLine};
use umcluster::server_info::ReplicationInfo;
use umcluster::slot::SLOT_COUNT;
use umcluster::topology::SlotRange;

use crate::conn::Conn;
use crate::create::{key_count, node_epoch};

/// Slot ownership as one node sees it: master address -> ranges.
type SlotMap = BTreeMap<String, Vec<SlotRange>>;

fn slot_map(lines: &[NodeLine]) -> SlotMap {
    lines
        .iter()
        .filter(|l| !l.is_replica() && !l.slots.is_empty())
        .map(|l| (l.addr.to_string(), l.slots.clone()))
        .collect()
}

/// What one node reports.
pub struct NodeReport {
    pub addr: Addr,
    pub epoch: u64,
    pub lines: Vec<NodeLine>,
    pub keys: u64,
    /// The master the server really replicates from (`INFO replication`).
    pub following: Option<Addr>,
}

/// Reads one node's view.
pub fn read_node(addr: &Addr) -> Result<NodeReport, String> {
    let mut conn = Conn::open(addr)?;
    let epoch = node_epoch(&mut conn)?;
    let nodes = conn.call_ok(&["CLUSTER", "NODES"])?;
    let lines = parse_nodes(nodes.as_str().unwrap_or_default())?;
    let keys = key_count(&mut conn)?;
    let info = conn.call_ok(&["INFO", "replication"])?;
    let following = ReplicationInfo::parse(info.as_str().unwrap_or_default()).master;
    Ok(NodeReport {
        addr: addr.clone(),
        epoch,
        lines,
        keys,
        following,
    })
}

pub fn run(args: &[String]) -> Result<(), String> {
    let [seed] = args else {
        return Err("usage: umcluster check ADDR".into());
    };
    let seed = Addr::parse(seed.as_bytes()).map_err(|e| e.to_string())?;
    let problems = check(&seed)?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{} problem(s) found", problems.len()))
    }
}

/// Runs the check, printing the report; returns the problems found.
pub fn check(seed: &Addr) -> Result<Vec<String>, String> {
    let seed_report = read_node(seed)?;
    let reference = slot_map(&seed_report.lines);
    let mut problems = Vec::new();
    let mut reports = Vec::new();
    for line in &seed_report.lines {
        let addr = if line.is_myself() {
            seed.clone()
        } else {
            line.addr.clone()
        };
        match read_node(&addr) {
            Ok(r) => reports.push((line.clone(), r)),
            Err(e) => problems.push(format!("cannot read {addr}: {e}")),
        }
    }

    println!(">>> Performing Cluster Check (using node {seed})");
    for (line, r) in &reports {
        let slots: usize = line.slots.iter().map(|s| s.len()).sum();
        let role = if line.is_replica() {
            "replica"
        } else {
            "master"
        };
        println!(
            "{} {} ({}...) epoch {} | {} keys | {} slots",
            role.to_uppercase().chars().next().unwrap_or('M'),
            r.addr,
            &line.id[..8.min(line.id.len())],
            r.epoch,
            r.keys,
            slots
        );
        if r.epoch != seed_report.epoch {
            problems.push(format!(
                "{} is at epoch {}, {} at epoch {}",
                r.addr, r.epoch, seed, seed_report.epoch
            ));
        }
        // The server's real replication must match the roles the topology gives it.
        let expected_master = line
            .master
            .as_ref()
            .and_then(|id| seed_report.lines.iter().find(|l| &l.id == id))
            .map(|l| l.addr.clone());
        match (&expected_master, &r.following) {
            (Some(want), Some(got)) if !want.same_endpoint(got) => problems.push(format!(
                "{} replicates from {got}, the topology says {want}",
                r.addr
            )),
            (Some(want), None) => problems.push(format!(
                "{} is a master, the topology says it replicates from {want}",
                r.addr
            )),
            (None, Some(got)) if !line.is_replica() => problems.push(format!(
                "{} replicates from {got}, the topology says it is a master",
                r.addr
            )),
            _ => {}
        }
        let view = slot_map(&r.lines);
        if view != reference {
            problems.push(format!(
                "{} disagrees with {} about slot ownership",
                r.addr, seed
            ));
        }
        for l in r
            .lines
            .iter()
            .filter(|l| l.is_myself() && !l.open_slots.is_empty())
        {
            problems.push(format!(
                "{} has open slots (a migration is in progress): {}",
                r.addr,
                l.open_slots.join(" ")
            ));
        }
    }
    if problems.iter().all(|p| !p.contains("disagrees")) {
        println!("[OK] All nodes agree about slots configuration.");
    }
    let covered: usize = reference.values().flatten().map(|r| r.len()).sum();
    if covered == SLOT_COUNT {
        println!("[OK] All {SLOT_COUNT} slots covered.");
    } else {
        problems.push(format!("only {covered} of {SLOT_COUNT} slots are assigned"));
    }
    for p in &problems {
        println!("[ERR] {p}");
    }
    Ok(problems)
}
