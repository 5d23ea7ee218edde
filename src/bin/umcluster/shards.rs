//! Shards (one master, its replicas, its slots): placing replicas, reading the shards a cluster
//! has, pushing a whole cluster (SETCLUSTER + SETREPL) and `umcluster failover`.
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

/// `umcluster sentinel-hook <master-name> <role> <state> <from-ip> <from-port> <to-ip> <to-port>`:
/// Sentinel's `client-reconfig-script`. Sentinel has promoted `to`; push the topology that says
/// so. Exit status 1 makes Sentinel retry the script.
pub fn sentinel_hook(args: &[String]) -> Result<(), String> {
    let [_name, _role, _state, _from_ip, _from_port, to_ip, to_port] = args else {
        return Err(
            "usage: umcluster sentinel-hook <master-name> <role> <state> <from-ip> <from-port> \
             <to-ip> <to-port>"
                .into(),
        );
    };
    let to = Addr::parse(format!("{to_ip}:{to_port}").as_bytes()).map_err(|e| e.to_string())?;
    failover(&to, &to)
}

/// Sentinel master name of shard `i` of cluster `name`.
pub fn sentinel_name(name: &str, i: usize) -> String {
    format!("{name}-{i}")
}

/// `umcluster sentinel-config [--port P] [--quorum Q] [--down-after MS] [--hook PATH] SEED_ADDR`.
pub fn sentinel_config(args: &[String]) -> Result<(), String> {
    let mut port = 26379u16;
    let mut quorum = 2u32;
    let mut down_after = 5000u64;
    let mut hook = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(crate::HOOK_NAME)))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| crate::HOOK_NAME.to_string());
    let mut seed = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |what: &str| it.next().cloned().ok_or(format!("{what} needs a value"));
        match a.as_str() {
            "--port" => port = value("--port")?.parse().map_err(|_| "bad --port")?,
            "--quorum" => quorum = value("--quorum")?.parse().map_err(|_| "bad --quorum")?,
            "--down-after" => {
                down_after = value("--down-after")?
                    .parse()
                    .map_err(|_| "bad --down-after")?
            }
            "--hook" => hook = value("--hook")?,
            other => seed = Some(Addr::parse(other.as_bytes()).map_err(|e| e.to_string())?),
        }
    }
    let seed = seed.ok_or(
        "usage: umcluster sentinel-config [--port P] [--quorum Q] [--down-after MS] [--hook PATH] \
         SEED_ADDR",
    )?;
    let (name, shards) = read_shards(&seed)?;
    println!("port {port}");
    print!(
        "{}",
        sentinel_text(&name, &shards, quorum, down_after, &hook)
    );
    Ok(())
}

/// The Sentinel configuration monitoring every shard.
pub fn sentinel_text(
    name: &str,
    shards: &[Shard],
    quorum: u32,
    down_after: u64,
    hook: &str,
) -> String {
    let mut out = format!(
        "# Sentinel configuration for umcluster cluster '{name}' ({} shards).\n\
         # The hook is the umcluster binary under the name {} (a symlink): it pushes the new\n\
         # topology after each failover. Each Sentinel needs its own copy of this file (it\n\
         # rewrites it) and its own port.\n",
        shards.len(),
        crate::HOOK_NAME
    );
    for (i, s) in shards.iter().enumerate() {
        let n = sentinel_name(name, i);
        out.push_str(&format!(
            "sentinel monitor {n} {} {} {quorum}\n\
             sentinel down-after-milliseconds {n} {down_after}\n\
             sentinel failover-timeout {n} {}\n\
             sentinel parallel-syncs {n} 1\n\
             sentinel client-reconfig-script {n} {hook}\n",
            s.master.host,
            s.master.port,
            // A failed election is retried after twice this: keep it short when down-after is.
            (down_after * 4).max(4_000),
        ));
    }
    out
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
        let text = sentinel_text("c", &shards, 2, 1000, "/bin/hook");
        assert!(text.contains("sentinel monitor c-0 127.0.0.1 1 2\n"));
        assert!(text.contains("sentinel client-reconfig-script c-0 /bin/hook\n"));
    }
}
