//! `umcluster`: the admin tool for umcluster nodes.
//!
//! ```text
//! umcluster create [--name NAME] ADDR...   split the slots over the nodes and push the topology
//! umcluster check ADDR                     every node agrees on epoch and table, all slots served
//! umcluster create --replicas N ADDR...     masters first, N replicas each
//! umcluster failover --to REPLICA SEED      promote a replica, push the new topology
//! umcluster add-replica NODE SEED         (re)attach NODE as a replica, push the topology
//! umcluster sentinel-hook ARGS...           Sentinel's client-reconfig-script
//! umcluster sentinel-config SEED            a Sentinel configuration monitoring every shard
//! umcluster migrate --slots A-B --to ADDR SEED  move slots (and their keys) to another master
//! umcluster add-node NEW SEED               an empty node joins as a master with no slots
//! umcluster rebalance [--dry-run] SEED      even out the slot counts with the fewest moves
//! ```
//!
//! Run under the name `umcluster-sentinel-hook` (a symlink), the binary is the hook itself:
//! Sentinel's `client-reconfig-script` takes a path and no arguments of its own.
//!
//! Set `UMCLUSTER_PASSWORD` (and `UMCLUSTER_USER`) when the nodes require AUTH.

mod add_node;
mod check;
mod conn;
mod create;
mod failover;
mod migrate;
mod picture;
mod rebalance;
mod sentinel;
mod shards;
mod topology_push;

const USAGE: &str = "\
usage: umcluster <command> [args]

commands:
  create [--name NAME] [--replicas N] ADDR...
                                 split the 16384 slots evenly over the masters (like
                                 redis-cli --cluster create): with N replicas, the first
                                 len/(N+1) nodes are masters and the rest their replicas
                                 (not on their master's host when hosts differ); waits
                                 until every replica's link is up
  failover --to REPLICA SEED     promote REPLICA (REPLICAOF NO ONE), turn its old master, if
                                 reachable, into a replica of it, push a new topology with a
                                 higher epoch everywhere; running it twice is harmless
  add-replica [--master MASTER] NODE SEED
                                 make NODE a replica of MASTER (default: the master NODE
                                 already follows, e.g. a failed master Sentinel demoted when
                                 it came back) and push the topology everywhere
  sentinel-hook NAME ROLE STATE FROM-IP FROM-PORT TO-IP TO-PORT
                                 Sentinel's client-reconfig-script (or run the binary as
                                 umcluster-sentinel-hook): pushes the topology after a failover
  sentinel-config [--port P] [--quorum Q] [--down-after MS] [--hook PATH] SEED
                                 print a Sentinel configuration (port P, default 26379),
                                 one master name per shard (<cluster>-<i>)
  migrate --slots A-B[,C-D...] --to ADDR [--timeout SECONDS] SEED
                                 move the slots, with their keys, to master ADDR while
                                 clients keep working: marks them migrating on their
                                 owners and importing on ADDR, waits for the modules to
                                 move the keys (progress shown), then commits; re-run the
                                 same command after an interruption to resume
  add-node NEW_ADDR SEED         add an empty, unconfigured node as a master with no slots
  rebalance [--dry-run] [--timeout SECONDS] SEED
                                 give every master 16384/N slots (rounded) with the fewest
                                 moves; prints the plan, then runs one migrate per receiver
  check ADDR                     check that every node agrees on the epoch and the slot table
                                 and that all slots are served

ADDR is host:port ([ipv6]:port). Set UMCLUSTER_PASSWORD / UMCLUSTER_USER if the nodes need AUTH.";

/// Name under which the binary acts as Sentinel's `client-reconfig-script`.
pub const HOOK_NAME: &str = "umcluster-sentinel-hook";

fn main() {
    let mut all = std::env::args();
    let argv0 = all.next().unwrap_or_default();
    let args: Vec<String> = all.collect();
    let as_hook = std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == HOOK_NAME);
    let result = match args.first().map(String::as_str) {
        _ if as_hook => sentinel::sentinel_hook(&args),
        Some("create") => create::run(&args[1..]),
        Some("failover") => failover::failover_cmd(&args[1..]),
        Some("add-replica") => failover::add_replica_cmd(&args[1..]),
        Some("sentinel-hook") => sentinel::sentinel_hook(&args[1..]),
        Some("sentinel-config") => sentinel::sentinel_config(&args[1..]),
        Some("check") => check::run(&args[1..]),
        Some("migrate") => migrate::run(&args[1..]),
        Some("add-node") => add_node::run(&args[1..]),
        Some("rebalance") => rebalance::run(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command '{other}'\n\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    if let Err(e) = result {
        eprintln!("umcluster: {e}");
        std::process::exit(1);
    }
}
