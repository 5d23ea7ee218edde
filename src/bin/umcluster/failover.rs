//! `umcluster failover --to REPLICA SEED` and `umcluster add-replica [--master M] NODE SEED`:
//! change who is master or replica of a shard and push the result to every node with an epoch
//! higher than any node has seen.

use umcluster::addr::Addr;

use crate::conn::Conn;
use crate::shards::{all_nodes, highest_epoch, push_cluster, read_shards, Shard};

/// The new shards after promoting `to`: it becomes its shard's master, the other replicas follow
/// it, and the old master joins as a replica when `old_master_alive`, else leaves the topology.
/// `None` when `to` is not a replica (already a master: nothing to change).
pub fn promote(shards: &[Shard], to: &Addr, old_master_alive: bool) -> Option<Vec<Shard>> {
    let mut out = shards.to_vec();
    let shard = out
        .iter_mut()
        .find(|s| s.replicas.iter().any(|r| r.same_endpoint(to)))?;
    let old = std::mem::replace(&mut shard.master, to.clone());
    shard.replicas.retain(|r| !r.same_endpoint(to));
    if old_master_alive {
        shard.replicas.push(old);
    }
    Some(out)
}

/// `umcluster failover --to REPLICA_ADDR SEED_ADDR`.
pub fn failover_cmd(args: &[String]) -> Result<(), String> {
    let usage = "usage: umcluster failover --to REPLICA_ADDR SEED_ADDR";
    let (to, seed) = match args {
        [flag, to, seed] if flag == "--to" => (to, seed),
        _ => return Err(usage.into()),
    };
    let to = Addr::parse(to.as_bytes()).map_err(|e| e.to_string())?;
    let seed = Addr::parse(seed.as_bytes()).map_err(|e| e.to_string())?;
    failover(&to, &seed)
}

/// Promotes `to`; reads the cluster from `seed`, or from `to` when `seed` is unreachable.
pub fn failover(to: &Addr, seed: &Addr) -> Result<(), String> {
    let (name, shards) = read_shards(seed).or_else(|e| {
        eprintln!("umcluster: {e}; reading the cluster from {to} instead");
        read_shards(to)
    })?;
    let new_shards = match shards
        .iter()
        .find(|s| s.replicas.iter().any(|r| r.same_endpoint(to)))
    {
        Some(s) => {
            let alive = Conn::open(&s.master)
                .and_then(|mut c| c.call_ok(&["PING"]))
                .is_ok();
            if !alive {
                println!(
                    "old master {} is unreachable: removed from the topology",
                    s.master
                );
            }
            promote(&shards, to, alive).unwrap_or(shards.clone())
        }
        None if shards.iter().any(|s| s.master.same_endpoint(to)) => {
            println!("{to} is already a master: pushing the topology again");
            shards.clone()
        }
        None => {
            return Err(format!(
                "{to} is not a node of the cluster seen from {seed}"
            ))
        }
    };
    // The promoted node first: it must stop replicating before the others follow it.
    let mut order = vec![to.clone()];
    order.extend(
        all_nodes(&new_shards)
            .into_iter()
            .filter(|a| !a.same_endpoint(to)),
    );
    let mut conns = Vec::new();
    for a in &order {
        match Conn::open(a) {
            Ok(c) => conns.push(c),
            Err(e) => eprintln!("umcluster: skipping {a}: {e}"),
        }
    }
    // Two concurrent runs (several Sentinels) may race for the same epoch: retry on OLD_EPOCH.
    let mut last = String::new();
    for _ in 0..5 {
        let epoch = highest_epoch(&mut conns)? + 1;
        match push_cluster(&mut conns, &name, epoch, &new_shards) {
            Ok(()) => {
                println!("[OK] {to} is master of its shard; topology epoch {epoch} pushed");
                return Ok(());
            }
            Err(e) if e.contains("OLD_EPOCH") => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// `umcluster add-replica [--master MASTER] NODE SEED`: makes NODE a replica of MASTER (default:
/// the master NODE already replicates from, e.g. an old master Sentinel demoted after it came
/// back) and pushes the topology, with a higher epoch, to every node including NODE. This is how a
/// node that returns with an old saved table is brought back into the cluster.
pub fn add_replica_cmd(args: &[String]) -> Result<(), String> {
    let usage = "usage: umcluster add-replica [--master MASTER_ADDR] NODE_ADDR SEED_ADDR";
    let parse = |s: &String| Addr::parse(s.as_bytes()).map_err(|e| e.to_string());
    let (master, node, seed) = match args {
        [flag, m, n, s] if flag == "--master" => (Some(parse(m)?), parse(n)?, parse(s)?),
        [n, s] => (None, parse(n)?, parse(s)?),
        _ => return Err(usage.into()),
    };
    let master = match master {
        Some(m) => m,
        None => {
            let info = Conn::open(&node)?.call_ok(&["INFO", "replication"])?;
            umcluster::server_info::ReplicationInfo::parse(info.as_str().unwrap_or_default())
                .master
                .ok_or_else(|| {
                    format!("{node} replicates from nobody: name its master with --master")
                })?
        }
    };
    let (name, shards) = read_shards(&seed)?;
    let new_shards = with_replica(&shards, &master, &node)
        .ok_or_else(|| format!("{master} is not a master of the cluster seen from {seed}"))?;
    let mut conns = Vec::new();
    for a in all_nodes(&new_shards) {
        match Conn::open(&a) {
            Ok(c) => conns.push(c),
            Err(e) if a.same_endpoint(&node) => return Err(e),
            Err(e) => eprintln!("umcluster: skipping {a}: {e}"),
        }
    }
    let epoch = highest_epoch(&mut conns)? + 1;
    push_cluster(&mut conns, &name, epoch, &new_shards)?;
    println!("[OK] {node} is a replica of {master}; topology epoch {epoch} pushed");
    Ok(())
}

/// The shards with `node` as a replica of `master` (and nowhere else). `None` if `master` is not
/// a master.
pub fn with_replica(shards: &[Shard], master: &Addr, node: &Addr) -> Option<Vec<Shard>> {
    let mut out: Vec<Shard> = shards.to_vec();
    out.retain(|s| !s.master.same_endpoint(node));
    for s in out.iter_mut() {
        s.replicas.retain(|r| !r.same_endpoint(node));
    }
    let shard = out.iter_mut().find(|s| s.master.same_endpoint(master))?;
    shard.replicas.push(node.clone());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use umcluster::topology::SlotRange;

    fn a(s: &str) -> Addr {
        Addr::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn promote_swaps_roles_once() {
        let shards = vec![Shard {
            master: a("127.0.0.1:1"),
            replicas: vec![a("127.0.0.1:2"), a("127.0.0.1:3")],
            ranges: vec![SlotRange {
                start: 0,
                end: 16383,
            }],
        }];
        let p = promote(&shards, &a("127.0.0.1:2"), true).unwrap();
        assert_eq!(p[0].master, a("127.0.0.1:2"));
        assert_eq!(p[0].replicas, vec![a("127.0.0.1:3"), a("127.0.0.1:1")]);
        assert!(promote(&p, &a("127.0.0.1:2"), true).is_none());
        let gone = promote(&shards, &a("127.0.0.1:3"), false).unwrap();
        assert_eq!(gone[0].replicas, vec![a("127.0.0.1:2")]);
    }

    #[test]
    fn with_replica_moves_a_node_under_a_master() {
        let shards = vec![
            Shard {
                master: a("127.0.0.1:1"),
                replicas: vec![a("127.0.0.1:2")],
                ranges: vec![SlotRange {
                    start: 0,
                    end: 8191,
                }],
            },
            Shard {
                master: a("127.0.0.1:3"),
                replicas: vec![],
                ranges: vec![SlotRange {
                    start: 8192,
                    end: 16383,
                }],
            },
        ];
        let moved = with_replica(&shards, &a("127.0.0.1:3"), &a("127.0.0.1:2")).unwrap();
        assert!(moved[0].replicas.is_empty());
        assert_eq!(moved[1].replicas, vec![a("127.0.0.1:2")]);
        assert!(with_replica(&shards, &a("127.0.0.1:2"), &a("127.0.0.1:9")).is_none());
    }
}
