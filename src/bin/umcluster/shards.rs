//! Shards (one master, its replicas, its slots): placing replicas, reading the shards a cluster
//! has, pushing a whole cluster (SETCLUSTER + SETREPL). `failover.rs` and `sentinel.rs` build on it.
//!
//! Every node receives the full picture: masters get their own slots as the local part, replicas
//! get an empty local part (every master is a `PEER`), and every node gets the same SETREPL
//! entries, so `CLUSTER NODES`/`SLOTS`/`SHARDS` list the replicas everywhere. The node an entry
//! names applies it to its own replication (`REPLICAOF`).

use std::time::{Duration, Instant};

use umcluster::addr::Addr;
use umcluster::cluster_info::parse_nodes;
use umcluster::resp::Value;
use umcluster::topology::SlotRange;

use crate::conn::Conn;
use crate::create::node_epoch;
use crate::topology_push::{setcluster_args, NodePlan};

/// One master, its replicas and its slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub master: Addr,
    pub replicas: Vec<Addr>,
    pub ranges: Vec<SlotRange>,
}

/// Splits `addrs` into `masters` masters (the first ones, in order) and gives each master up to
/// `replicas` replicas from the rest, preferring a node on another host than its master (like
/// `redis-cli --cluster create --cluster-replicas`). Nodes left over become extra replicas, round
/// robin.
pub fn place(addrs: &[Addr], replicas: usize) -> Result<Vec<(Addr, Vec<Addr>)>, String> {
    let masters = addrs.len() / (replicas + 1);
    if masters == 0 {
        return Err(format!(
            "{} nodes are not enough for one master with {replicas} replica(s)",
            addrs.len()
        ));
    }
    let mut shards: Vec<(Addr, Vec<Addr>)> = addrs[..masters]
        .iter()
        .map(|m| (m.clone(), Vec::new()))
        .collect();
    let mut rest: Vec<Addr> = addrs[masters..].to_vec();
    // Each round gives every master (while nodes remain) one replica (rounds past `replicas` hand
    // out the left-over nodes): the remaining nodes are
    // handed out in order, rotated by the shift that puts the fewest replicas on their master's
    // host (a plain greedy choice can corner the last master).
    while !rest.is_empty() {
        let n = shards.len().min(rest.len());
        let conflicts = |shift: usize| {
            (0..n)
                .filter(|&i| rest[(i + shift) % rest.len()].host == shards[i].0.host)
                .count()
        };
        let shift = (0..rest.len()).min_by_key(|&s| conflicts(s)).unwrap_or(0);
        let picked: Vec<usize> = (0..n).map(|i| (i + shift) % rest.len()).collect();
        for (i, &p) in picked.iter().enumerate() {
            shards[i].1.push(rest[p].clone());
        }
        let mut k = 0;
        rest.retain(|_| {
            let keep = !picked.contains(&k);
            k += 1;
            keep
        });
    }
    Ok(shards)
}

/// The `UMCTL SETREPL` arguments describing every shard.
pub fn setrepl_args(name: &str, epoch: u64, shards: &[Shard]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "UMCTL".into(),
        "SETREPL".into(),
        epoch.to_string(),
        "NOFLAG".into(),
    ];
    for s in shards {
        args.extend([
            "master".into(),
            name.to_string(),
            s.master.to_string(),
            s.replicas.len().to_string(),
        ]);
        for r in &s.replicas {
            args.extend([r.to_string(), r.to_string()]);
        }
        for r in &s.replicas {
            args.extend([
                "replica".into(),
                name.to_string(),
                r.to_string(),
                "1".into(),
                s.master.to_string(),
                s.master.to_string(),
            ]);
        }
    }
    args
}

/// Every node of the shards, masters first.
pub fn all_nodes(shards: &[Shard]) -> Vec<Addr> {
    let mut out: Vec<Addr> = shards.iter().map(|s| s.master.clone()).collect();
    out.extend(shards.iter().flat_map(|s| s.replicas.iter().cloned()));
    out
}

/// The replication epoch a node is at (`INFO umcluster`), 0 if it does not say.
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

/// Highest topology or replication epoch among `conns`.
pub fn highest_epoch(conns: &mut [Conn]) -> Result<u64, String> {
    let mut epoch = 0;
    for c in conns.iter_mut() {
        epoch = epoch.max(node_epoch(c)?).max(repl_epoch(c)?);
    }
    Ok(epoch)
}

fn accepted(reply: &Value) -> bool {
    matches!(reply, Value::Simple(s) if s == "OK" || s.starts_with("WARNING"))
}

/// Pushes SETREPL then SETCLUSTER, both at `epoch`, to every connection in order (the caller
/// puts a node being promoted first, so it stops replicating before the others follow it).
pub fn push_cluster(
    conns: &mut [Conn],
    name: &str,
    epoch: u64,
    shards: &[Shard],
) -> Result<(), String> {
    let plan: Vec<NodePlan> = shards
        .iter()
        .map(|s| NodePlan {
            addr: s.master.clone(),
            ranges: s.ranges.clone(),
        })
        .collect();
    let repl = setrepl_args(name, epoch, shards);
    for conn in conns.iter_mut() {
        let reply = conn.call(&repl)?;
        if !accepted(&reply) {
            return Err(format!("{} refused SETREPL: {reply}", conn.addr));
        }
        let me = conn.addr.clone();
        let reply = conn.call(&setcluster_args(name, epoch, &plan, &me))?;
        if !accepted(&reply) {
            return Err(format!("{} refused SETCLUSTER: {reply}", conn.addr));
        }
    }
    Ok(())
}

/// Waits until every replica reports its master link up.
pub fn wait_links_up(shards: &[Shard], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    for s in shards {
        for r in &s.replicas {
            loop {
                let up = Conn::open(r)
                    .and_then(|mut c| c.call_ok(&["INFO", "replication"]))
                    .map(|v| {
                        v.as_str()
                            .unwrap_or_default()
                            .lines()
                            .any(|l| l.trim() == "master_link_status:up")
                    })
                    .unwrap_or(false);
                if up {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "replica {r} did not report master_link_status:up within {}s",
                        timeout.as_secs()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

/// The cluster name and shards as `seed` sees them (`UMCTL LISTCLUSTER`, `CLUSTER NODES`).
pub fn read_shards(seed: &Addr) -> Result<(String, Vec<Shard>), String> {
    let mut conn = Conn::open(seed)?;
    let name = match conn.call_ok(&["UMCTL", "LISTCLUSTER"])? {
        Value::Array(items) => items
            .first()
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("{seed} has no cluster configured"))?,
        other => {
            return Err(format!(
                "{seed}: unexpected UMCTL LISTCLUSTER reply: {other}"
            ))
        }
    };
    let nodes = conn.call_ok(&["CLUSTER", "NODES"])?;
    let lines = parse_nodes(nodes.as_str().unwrap_or_default())?;
    let mut shards: Vec<(String, Shard)> = lines
        .iter()
        .filter(|l| !l.is_replica() && !l.slots.is_empty())
        .map(|l| {
            (
                l.id.clone(),
                Shard {
                    master: l.addr.clone(),
                    replicas: Vec::new(),
                    ranges: l.slots.clone(),
                },
            )
        })
        .collect();
    for l in lines.iter().filter(|l| l.is_replica()) {
        if let Some((_, s)) = shards
            .iter_mut()
            .find(|(id, _)| Some(id) == l.master.as_ref())
        {
            s.replicas.push(l.addr.clone());
        }
    }
    let mut shards: Vec<Shard> = shards.into_iter().map(|(_, s)| s).collect();
    shards.sort_by_key(|s| s.ranges.first().map(|r| r.start));
    Ok((name, shards))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Addr {
        Addr::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn replicas_avoid_their_masters_host() {
        let addrs = [
            a("10.0.0.1:7001"),
            a("10.0.0.2:7001"),
            a("10.0.0.3:7001"),
            a("10.0.0.1:7002"),
            a("10.0.0.2:7002"),
            a("10.0.0.3:7002"),
        ];
        let shards = place(&addrs, 1).unwrap();
        assert_eq!(shards.len(), 3);
        for (m, reps) in &shards {
            assert_eq!(reps.len(), 1);
            assert_ne!(reps[0].host, m.host, "{m} got {}", reps[0]);
        }
        // One host: nothing to avoid, order kept.
        let local: Vec<Addr> = (0..6)
            .map(|i| a(&format!("127.0.0.1:{}", 7001 + i)))
            .collect();
        let shards = place(&local, 1).unwrap();
        assert_eq!(shards[0], (local[0].clone(), vec![local[3].clone()]));
        assert_eq!(shards[2], (local[2].clone(), vec![local[5].clone()]));
        // Left-over nodes become extra replicas; too few nodes is an error.
        let shards = place(&local[..5], 1).unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].1.len() + shards[1].1.len(), 3);
        assert!(place(&local[..1], 1).is_err());
    }

    #[test]
    fn setrepl_lists_both_directions() {
        let shards = vec![Shard {
            master: a("127.0.0.1:1"),
            replicas: vec![a("127.0.0.1:2")],
            ranges: vec![SlotRange {
                start: 0,
                end: 16383,
            }],
        }];
        assert_eq!(
            setrepl_args("c", 4, &shards).join(" "),
            "UMCTL SETREPL 4 NOFLAG master c 127.0.0.1:1 1 127.0.0.1:2 127.0.0.1:2 \
             replica c 127.0.0.1:2 1 127.0.0.1:1 127.0.0.1:1"
        );
    }
}
