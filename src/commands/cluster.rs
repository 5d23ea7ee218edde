//! `CLUSTER <subcommand>`, answered by the module (the server runs without `cluster-enabled`, so
//! its own CLUSTER command would only say cluster support is disabled; the command filter sends
//! CLUSTER here instead).
//!
//! ```text
//! CLUSTER NODES | SLOTS | SHARDS | INFO | MYID | LINKS
//! CLUSTER KEYSLOT <key>
//! CLUSTER COUNTKEYSINSLOT <slot>
//! CLUSTER GETKEYSINSLOT <slot> <count>
//! CLUSTER REPLICAS <node-id>      (also SLAVES)
//! ```
//!
//! Subcommands that change a native cluster through gossip (MEET, ADDSLOTS, SETSLOT, FAILOVER ...)
//! are refused: here the topology comes from the control plane through `UMCTL SETCLUSTER`.

use super::{main_port, Server};
use crate::cluster_info::ClusterView;
use crate::reply::Reply;
use crate::slot::{key_slot, SLOT_COUNT};
use crate::state::State;

/// Subcommands of a native cluster that this node refuses, pointing at UMCTL.
const GOSSIP_ONLY: [&str; 16] = [
    "meet",
    "addslots",
    "addslotsrange",
    "delslots",
    "delslotsrange",
    "flushslots",
    "setslot",
    "failover",
    "forget",
    "replicate",
    "reset",
    "bumpepoch",
    "set-config-epoch",
    "saveconfig",
    "count-failure-reports",
    "myshardid",
];

/// Runs `CLUSTER args...` (`args[0]` is the subcommand).
pub fn run(server: &dyn Server, state: &State, args: &[&[u8]]) -> Reply {
    let Some((sub, rest)) = args.split_first() else {
        return Reply::error("ERR wrong number of arguments for 'cluster' command");
    };
    let sub_lower = String::from_utf8_lossy(sub).to_ascii_lowercase();
    let view = || {
        let port = main_port(server);
        let me = state.my_addr(Some(port));
        ClusterView::new(
            state.topology.as_ref(),
            &state.replication,
            me.as_ref(),
            port,
            server.replication().offset,
        )
    };
    match (sub_lower.as_str(), rest.len()) {
        ("nodes", 0) => Reply::Verbatim(view().nodes_text()),
        ("slots", 0) => view().slots_reply(),
        ("shards", 0) => view().shards_reply(),
        ("info", 0) => Reply::Verbatim(view().info_text()),
        ("myid", 0) => {
            let v = view();
            match v.myself() {
                Some(me) => Reply::bulk(&me.id),
                None => Reply::bulk(&v.nodes[0].id),
            }
        }
        ("links", 0) => Reply::Array(Vec::new()),
        ("keyslot", 1) => Reply::Int(key_slot(rest[0]) as i64),
        ("countkeysinslot", 1) => match parse_slot(rest[0]) {
            Ok(slot) => Reply::Int(server.count_keys_in_slot(slot) as i64),
            Err(e) => e,
        },
        ("getkeysinslot", 2) => {
            let count = parse_i64(rest[1]);
            match (parse_slot(rest[0]), count) {
                (Ok(slot), Some(n)) if n >= 0 => Reply::Array(
                    server
                        .keys_in_slot(slot, n as usize)
                        .into_iter()
                        .map(Reply::Bulk)
                        .collect(),
                ),
                (Err(e), _) if count.is_none() => e,
                (_, None) => not_an_integer(),
                _ => Reply::error("ERR Invalid slot or number of keys"),
            }
        }
        ("replicas" | "slaves", 1) => view().replicas_reply(rest[0]),
        ("help", 0) => help(),
        (name, _) if GOSSIP_ONLY.contains(&name) => Reply::error(format!(
            "ERR CLUSTER {} is not supported: umcluster nodes do not gossip, their topology is \
             pushed with UMCTL SETCLUSTER; use the umcluster admin tool (umcluster create, \
             migrate, add-node, rebalance, failover) instead of redis-cli --cluster",
            name.to_ascii_uppercase()
        )),
        _ => Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLUSTER HELP.",
            sub_lower.chars().take(128).collect::<String>()
        )),
    }
}

fn parse_i64(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

fn not_an_integer() -> Reply {
    Reply::error("ERR value is not an integer or out of range")
}

/// A slot number argument, refused with the native errors.
pub fn parse_slot(arg: &[u8]) -> Result<u16, Reply> {
    match parse_i64(arg) {
        None => Err(not_an_integer()),
        Some(s) if (0..SLOT_COUNT as i64).contains(&s) => Ok(s as u16),
        Some(_) => Err(Reply::error("ERR Invalid slot")),
    }
}

fn help() -> Reply {
    Reply::Array(
        [
            "CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "COUNTKEYSINSLOT <slot>",
            "    Return the number of keys in <slot>.",
            "GETKEYSINSLOT <slot> <count>",
            "    Return key names stored by current node in a slot.",
            "INFO",
            "    Return information about the cluster.",
            "KEYSLOT <key>",
            "    Return the hash slot for <key>.",
            "LINKS",
            "    Return information about all network links (none: this node does not gossip).",
            "MYID",
            "    Return the node id.",
            "NODES",
            "    Return cluster configuration seen by node.",
            "REPLICAS <node-id>",
            "    Return <node-id> replicas.",
            "SHARDS",
            "    Return information about slot range mappings and the nodes associated with them.",
            "SLOTS",
            "    Return information about slots range mappings.",
            "The topology itself is set with UMCTL SETCLUSTER (see UMCTL HELP).",
        ]
        .iter()
        .map(|s| Reply::Simple(s.to_string()))
        .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::umctl;

    struct FakeServer;
    impl Server for FakeServer {
        fn listening_ports(&self) -> Vec<u16> {
            vec![7001]
        }
        fn replication(&self) -> crate::server_info::ReplicationInfo {
            crate::server_info::ReplicationInfo::default()
        }
        fn set_master(&self, _master: Option<&crate::addr::Addr>) -> Result<(), String> {
            Ok(())
        }
        fn count_keys_in_slot(&self, slot: u16) -> u64 {
            self.keys_in_slot(slot, usize::MAX).len() as u64
        }
        fn keys_in_slot(&self, slot: u16, max: usize) -> Vec<Vec<u8>> {
            let keys: Vec<Vec<u8>> = vec![b"a".to_vec(), b"b".to_vec()];
            keys.into_iter()
                .filter(|k| key_slot(k) == slot)
                .take(max)
                .collect()
        }
    }

    fn cluster(state: &State, cmd: &str) -> Reply {
        let tokens: Vec<&[u8]> = cmd.split_whitespace().map(str::as_bytes).collect();
        run(&FakeServer, state, &tokens)
    }

    fn configured() -> State {
        let mut s = State::default();
        let cmd = "v2 1 NOFLAGS db 127.0.0.1:7001 1 0-8191 PEER 127.0.0.1:7002 1 8192-16383";
        let tokens: Vec<&[u8]> = cmd.split_whitespace().map(str::as_bytes).collect();
        assert_eq!(
            umctl::run(&FakeServer, &mut s, b"setcluster", &tokens),
            Reply::Ok
        );
        s
    }

    #[test]
    fn keyslot_and_key_counts() {
        let s = configured();
        assert_eq!(cluster(&s, "keyslot foo"), Reply::Int(12182));
        assert_eq!(cluster(&s, "COUNTKEYSINSLOT 15495"), Reply::Int(1));
        assert_eq!(
            cluster(&s, "getkeysinslot 15495 10"),
            Reply::Array(vec![Reply::bulk("a")])
        );
        assert_eq!(cluster(&s, "getkeysinslot 15495 0"), Reply::Array(vec![]));
        assert_eq!(
            cluster(&s, "countkeysinslot 16384"),
            Reply::error("ERR Invalid slot")
        );
        assert_eq!(cluster(&s, "countkeysinslot x"), not_an_integer());
        assert_eq!(
            cluster(&s, "getkeysinslot 1 -1"),
            Reply::error("ERR Invalid slot or number of keys")
        );
    }

    #[test]
    fn nodes_myid_and_info_are_served() {
        let s = configured();
        let Reply::Verbatim(nodes) = cluster(&s, "nodes") else {
            panic!()
        };
        assert_eq!(nodes.lines().count(), 2);
        let Reply::Bulk(id) = cluster(&s, "myid") else {
            panic!()
        };
        assert!(nodes.starts_with(std::str::from_utf8(&id).unwrap()));
        assert!(
            matches!(cluster(&s, "info"), Reply::Verbatim(t) if t.starts_with("cluster_state:ok"))
        );
        assert_eq!(cluster(&s, "links"), Reply::Array(vec![]));
    }

    #[test]
    fn gossip_subcommands_point_at_umctl() {
        let s = configured();
        for sub in [
            "meet 1.2.3.4 5",
            "addslots 1",
            "setslot 1 stable",
            "failover",
            "reset",
        ] {
            match cluster(&s, sub) {
                Reply::Error(e) => assert!(e.contains("UMCTL"), "{e}"),
                other => panic!("{sub}: {other:?}"),
            }
        }
        assert!(matches!(cluster(&s, "bogus"), Reply::Error(e) if e.contains("Try CLUSTER HELP")));
        assert!(matches!(cluster(&s, "nodes extra"), Reply::Error(_)));
        assert!(matches!(run(&FakeServer, &s, &[]), Reply::Error(_)));
    }
}
