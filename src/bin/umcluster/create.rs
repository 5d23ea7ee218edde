//! `umcluster create [--name NAME] ADDR...`: turn empty nodes into one cluster.
//!
//! Splits the 16384 slots evenly across the nodes, in the order given, exactly as
//! `redis-cli --cluster create` does, and pushes the topology to every node with an epoch higher
//! than any of them has seen. A single node may already hold data (it receives every slot, so
//! every key stays where it is); several nodes must be empty, or their keys would end up on nodes
//! that do not own them.

use umcluster::addr::Addr;
use umcluster::resp::Value;
use umcluster::slot::SLOT_COUNT;
use umcluster::topology::setcluster::valid_cluster_name;
use umcluster::topology::SlotRange;

use crate::conn::Conn;
use crate::shards::{self, Shard};
use crate::topology_push::{push_topology, NodePlan};

/// Default cluster name.
pub const DEFAULT_NAME: &str = "umcluster";

/// Splits the slots over `n` masters like redis-cli: `16384 / n` slots each (rounded), the last
/// master taking whatever remains.
pub fn split_slots(n: usize) -> Vec<SlotRange> {
    let per_node = SLOT_COUNT as f64 / n as f64;
    let mut cursor = 0.0f64;
    let mut first: i64 = 0;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut last = (cursor + per_node - 1.0).round() as i64;
        if last > SLOT_COUNT as i64 - 1 || i == n - 1 {
            last = SLOT_COUNT as i64 - 1;
        }
        if last < first {
            last = first;
        }
        out.push(SlotRange {
            start: first as u16,
            end: last as u16,
        });
        first = last + 1;
        cursor += per_node;
    }
    out
}

/// Number of keys a node holds, over all databases (from `INFO keyspace`).
pub fn key_count(conn: &mut Conn) -> Result<u64, String> {
    let info = conn.call_ok(&["INFO", "keyspace"])?;
    let text = info.as_str().unwrap_or_default().to_string();
    Ok(text
        .lines()
        .filter(|l| l.starts_with("db"))
        .filter_map(|l| l.split("keys=").nth(1))
        .filter_map(|v| v.split(',').next())
        .filter_map(|v| v.parse::<u64>().ok())
        .sum())
}

/// Current topology epoch of a node; an error if the module is not loaded there.
pub fn node_epoch(conn: &mut Conn) -> Result<u64, String> {
    match conn.call(&["UMCTL", "GETEPOCH"])? {
        Value::Int(e) if e >= 0 => Ok(e as u64),
        Value::Error(e) => Err(format!(
            "{}: does not answer UMCTL GETEPOCH ({e}): is the umcluster module loaded?",
            conn.addr
        )),
        other => Err(format!(
            "{}: unexpected UMCTL GETEPOCH reply: {other}",
            conn.addr
        )),
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut name = DEFAULT_NAME.to_string();
    let mut replicas = 0usize;
    let mut addrs: Vec<Addr> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--name" => name = it.next().ok_or("--name needs a value")?.clone(),
            "--replicas" => {
                replicas = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--replicas needs a number")?
            }
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            addr => addrs.push(Addr::parse(addr.as_bytes()).map_err(|e| e.to_string())?),
        }
    }
    if addrs.is_empty() {
        return Err("usage: umcluster create [--name NAME] [--replicas N] ADDR...".into());
    }
    if !valid_cluster_name(name.as_bytes()) {
        return Err(format!(
            "invalid cluster name '{name}': 1 to 30 characters of [A-Za-z0-9_-]"
        ));
    }
    for (i, a) in addrs.iter().enumerate() {
        if addrs[..i].contains(a) {
            return Err(format!("{a} is listed twice"));
        }
    }
    if addrs.len() > SLOT_COUNT {
        return Err(format!("at most {SLOT_COUNT} nodes"));
    }

    let mut conns = Vec::with_capacity(addrs.len());
    let mut epoch = 0u64;
    for a in &addrs {
        let mut conn = Conn::open(a)?;
        epoch = epoch.max(node_epoch(&mut conn)?);
        let keys = key_count(&mut conn)?;
        if keys > 0 && addrs.len() > 1 {
            return Err(format!(
                "{a} holds {keys} keys: nodes of a new multi-node cluster must be empty \
                 (a single node may hold data: create it alone, then add nodes and move slots)"
            ));
        }
        conns.push(conn);
    }
    let epoch = epoch + 1;
    if replicas > 0 {
        return create_with_replicas(&mut conns, &name, epoch, &addrs, replicas);
    }
    let ranges = split_slots(addrs.len());
    let plan: Vec<NodePlan> = addrs
        .iter()
        .zip(&ranges)
        .map(|(a, r)| NodePlan {
            addr: a.clone(),
            ranges: vec![*r],
        })
        .collect();
    push_topology(&mut conns, &name, epoch, &plan)?;
    for p in &plan {
        println!(
            "{} -> slots {}",
            p.addr,
            p.ranges
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    println!(
        "[OK] cluster '{name}' created: {} masters, all {SLOT_COUNT} slots assigned, epoch {epoch}",
        addrs.len()
    );
    println!(
        "Connect with: redis-cli -c -h {} -p {}",
        addrs[0].host, addrs[0].port
    );
    Ok(())
}

/// `create --replicas N`: masters first, replicas placed by [`shards::place`], then SETREPL and
/// SETCLUSTER to every node, then wait for every replica's link to come up.
fn create_with_replicas(
    conns: &mut [Conn],
    name: &str,
    epoch: u64,
    addrs: &[Addr],
    replicas: usize,
) -> Result<(), String> {
    let placed = shards::place(addrs, replicas)?;
    let ranges = split_slots(placed.len());
    let shards: Vec<Shard> = placed
        .into_iter()
        .zip(ranges)
        .map(|((master, replicas), r)| Shard {
            master,
            replicas,
            ranges: vec![r],
        })
        .collect();
    // Masters first, so they are masters before replicas start syncing from them.
    let order = shards::all_nodes(&shards);
    conns.sort_by_key(|c| order.iter().position(|a| a == &c.addr));
    shards::push_cluster(conns, name, epoch, &shards)?;
    for s in &shards {
        let reps: Vec<String> = s.replicas.iter().map(|r| r.to_string()).collect();
        println!(
            "{} -> slots {}, replicas: {}",
            s.master,
            s.ranges[0],
            reps.join(", ")
        );
    }
    shards::wait_links_up(&shards, std::time::Duration::from_secs(60))?;
    println!(
        "[OK] cluster '{name}' created: {} masters with {replicas} replica(s) each, all \
         {SLOT_COUNT} slots assigned, epoch {epoch}, every replica link up",
        shards.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_redis_cli() {
        let r = split_slots(3);
        assert_eq!(
            r,
            vec![
                SlotRange {
                    start: 0,
                    end: 5460
                },
                SlotRange {
                    start: 5461,
                    end: 10922
                },
                SlotRange {
                    start: 10923,
                    end: 16383
                }
            ]
        );
        assert_eq!(
            split_slots(1),
            vec![SlotRange {
                start: 0,
                end: 16383
            }]
        );
        for n in 1..50 {
            let r = split_slots(n);
            assert_eq!(r.len(), n);
            assert_eq!(r[0].start, 0);
            assert_eq!(r[n - 1].end, 16383);
            for w in r.windows(2) {
                assert_eq!(w[0].end + 1, w[1].start);
            }
        }
    }
}
