//! `umcluster add-node NEW_ADDR SEED_ADDR`: a new, empty master joins the cluster with no slots.
//!
//! The new node must run the module, hold no keys and have no topology of its own (a node of
//! another cluster is refused; a node already in this one is only pushed again). Every node,
//! the new one included, receives the current assignment plus the new master with zero slots, at
//! an epoch above any node's. Slots come to it afterwards with `migrate` or `rebalance`. When the
//! cluster has replicas, the new node also receives their description (SETREPL) so its
//! `CLUSTER NODES` lists them like everybody else's.

use umcluster::addr::Addr;

use crate::conn::Conn;
use crate::create::{key_count, node_epoch};
use crate::picture::{self, cluster_name};
use crate::shards::{read_shards, setrepl_args};

pub fn run(args: &[String]) -> Result<(), String> {
    let [new, seed] = args else {
        return Err("usage: umcluster add-node NEW_ADDR SEED_ADDR".into());
    };
    let new = Addr::parse(new.as_bytes()).map_err(|e| e.to_string())?;
    let seed = Addr::parse(seed.as_bytes()).map_err(|e| e.to_string())?;
    add_node(&new, &seed)
}

pub fn add_node(new: &Addr, seed: &Addr) -> Result<(), String> {
    let p = picture::read(seed)?;
    if !p.disagreements().is_empty() {
        return Err(format!(
            "the nodes disagree about slot ownership; fix that first (umcluster check {seed})"
        ));
    }
    if let Some((src, dst, ranges)) = p.open_migrations().into_iter().next() {
        return Err(format!(
            "a migration is open (slots {} from {src} to {dst}): finish it first",
            picture::ranges_text(&ranges)
        ));
    }
    let member = p.nodes.iter().any(|n| &n.addr == new);
    let mut conn = Conn::open(new)?;
    let new_epoch = node_epoch(&mut conn)?;
    if !member {
        if let Some(other) = cluster_name(&mut conn)? {
            return Err(format!(
                "{new} already has a topology (cluster '{other}', epoch {new_epoch}): only an \
                 unconfigured node can join"
            ));
        }
        let keys = key_count(&mut conn)?;
        if keys > 0 {
            return Err(format!(
                "{new} holds {keys} keys: a joining node must be empty (its keys would be lost to \
                 clients, its slots being owned elsewhere)"
            ));
        }
    }
    let epoch = p.max_epoch().max(new_epoch) + 1;
    let mut masters = p.masters.clone();
    if !member {
        masters.push(new.clone());
    }
    let mut order = vec![new.clone()];
    order.extend(p.nodes.iter().map(|n| n.addr.clone()).filter(|a| a != new));
    picture::push(&order, &p.name, epoch, &masters, &p.reference().owners, &[])?;
    // The replicas, as the others know them (a stale or missing SETREPL on the new node only
    // hides replicas from its CLUSTER NODES).
    if !member {
        let (_, shards) = read_shards(seed)?;
        if shards.iter().any(|s| !s.replicas.is_empty()) {
            let repl = setrepl_args(&p.name, epoch, &shards);
            let reply = conn.call(&repl)?;
            if reply.as_str() != Some("OK") {
                eprintln!("umcluster: {new} refused the replica description: {reply}");
            }
        }
    }
    if member {
        println!("{new} was already a member: topology pushed again (epoch {epoch})");
    } else {
        println!(
            "[OK] {new} joined cluster '{}' as a master with no slots (epoch {epoch}); move slots \
             to it with: umcluster rebalance {seed}",
            p.name
        );
    }
    Ok(())
}
