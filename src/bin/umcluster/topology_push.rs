//! Building `UMCTL SETCLUSTER` commands for a whole cluster and pushing them to every node.

use umcluster::addr::Addr;
use umcluster::resp::Value;
use umcluster::topology::SlotRange;

use crate::conn::Conn;

/// What one master serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    pub addr: Addr,
    pub ranges: Vec<SlotRange>,
}

/// The `UMCTL SETCLUSTER` arguments for node `me` of the plan.
pub fn setcluster_args(name: &str, epoch: u64, plan: &[NodePlan], me: &Addr) -> Vec<String> {
    let mut args = vec![
        "UMCTL".to_string(),
        "SETCLUSTER".into(),
        "v2".into(),
        epoch.to_string(),
        "NOFLAG".into(),
        name.to_string(),
    ];
    let group = |args: &mut Vec<String>, p: &NodePlan| {
        args.push(p.addr.to_string());
        args.push(p.ranges.len().to_string());
        args.extend(p.ranges.iter().map(|r| r.to_string()));
    };
    if let Some(mine) = plan.iter().find(|p| &p.addr == me) {
        group(&mut args, mine);
    }
    let peers: Vec<&NodePlan> = plan.iter().filter(|p| &p.addr != me).collect();
    if !peers.is_empty() {
        args.push("PEER".into());
        for p in peers {
            group(&mut args, p);
        }
    }
    args
}

/// Pushes the plan to every connection (each node receives its own view). Stops at the first
/// node that refuses, naming it and the nodes already updated.
pub fn push_topology(
    conns: &mut [Conn],
    name: &str,
    epoch: u64,
    plan: &[NodePlan],
) -> Result<(), String> {
    let mut done: Vec<String> = Vec::new();
    for conn in conns.iter_mut() {
        let args = setcluster_args(name, epoch, plan, &conn.addr.clone());
        match conn.call(&args) {
            Ok(Value::Simple(s)) if s == "OK" || s.starts_with("WARNING") => {
                done.push(conn.addr.to_string())
            }
            Ok(other) => {
                return Err(format!(
                    "{} refused the topology: {other} (already updated: {})",
                    conn.addr,
                    if done.is_empty() {
                        "none".to_string()
                    } else {
                        done.join(", ")
                    }
                ))
            }
            Err(e) => {
                return Err(format!(
                    "{e} (already updated: {})",
                    if done.is_empty() {
                        "none".to_string()
                    } else {
                        done.join(", ")
                    }
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_gets_itself_local_and_the_rest_as_peers() {
        let a = Addr::parse(b"127.0.0.1:7001").unwrap();
        let b = Addr::parse(b"127.0.0.1:7002").unwrap();
        let plan = vec![
            NodePlan {
                addr: a.clone(),
                ranges: vec![SlotRange {
                    start: 0,
                    end: 8191,
                }],
            },
            NodePlan {
                addr: b.clone(),
                ranges: vec![SlotRange {
                    start: 8192,
                    end: 16383,
                }],
            },
        ];
        assert_eq!(
            setcluster_args("db", 3, &plan, &b).join(" "),
            "UMCTL SETCLUSTER v2 3 NOFLAG db 127.0.0.1:7002 1 8192-16383 PEER 127.0.0.1:7001 1 0-8191"
        );
    }
}
