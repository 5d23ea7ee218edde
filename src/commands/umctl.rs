//! `UMCTL`: the control plane's interface (undermoon's server-side proxy protocol).
//!
//! ```text
//! UMCTL SETCLUSTER v2 <epoch> <flags> <cluster-name> ...   -> +OK | +WARNING: ignored invalid config
//! UMCTL SETREPL <epoch> <flags> [<role> ...]...            -> +OK
//! UMCTL GETEPOCH                                           -> :<epoch>
//! UMCTL READY                                              -> :1 | :0
//! UMCTL INFOMGR                                            -> finished migrations, one bulk string each
//! UMCTL MIGRATIONS                                         -> every migration task with its progress (field/value arrays)
//! UMCTL INFOREPL                                           -> the replication roles in force
//! UMCTL LISTCLUSTER                                        -> the cluster name
//! ```
//!
//! Every subcommand also exists as its own command, `UMCTL.SETCLUSTER` and so on. A refused push
//! (malformed, stale epoch, meant for another node) changes nothing.

use super::Server;
use crate::addr::Addr;
use crate::migration;
use crate::reply::Reply;
use crate::state::{Replication, State};
use crate::topology::setrepl::ReplRole;
use crate::topology::{persist, setcluster, setrepl, GroupKind, Topology};

/// The subcommands, as registered (`umctl|<name>`; see `ffi::commands::register_umctl`).
pub const SUBCOMMANDS: [&str; 9] = [
    "setcluster",
    "setrepl",
    "getepoch",
    "ready",
    "infomgr",
    "inforepl",
    "listcluster",
    "migrations",
    "help",
];

/// Reply to a push whose epoch is not newer than the one in force (undermoon's text: its
/// coordinator treats it as "already applied").
pub const OLD_EPOCH: &str = "OLD_EPOCH";
/// Reply to a push whose local part names another server.
pub const NOT_MY_META: &str = "ERR_NOT_MY_META";
/// Prefix of the reply to a push refused because the `config-file` could not be written.
pub const CONFIG_WRITE: &str = "ERR_CONFIG_WRITE";

/// Runs `UMCTL <sub> args...`.
pub fn run(server: &dyn Server, state: &mut State, sub: &[u8], args: &[&[u8]]) -> Reply {
    let sub = String::from_utf8_lossy(sub).to_ascii_lowercase();
    let no_args = |reply: Reply| {
        if args.is_empty() {
            reply
        } else {
            Reply::error(format!(
                "ERR wrong number of arguments for 'umctl|{sub}' command"
            ))
        }
    };
    match sub.as_str() {
        "setcluster" => set_cluster(server, state, args),
        "setrepl" => set_repl(server, state, args),
        "getepoch" => no_args(Reply::Int(epoch(state) as i64)),
        "ready" => no_args(Reply::Int(ready(server, state) as i64)),
        "infomgr" => no_args(migration::infomgr(&state.migrations, state.topology.as_ref())),
        "migrations" => no_args(migration::migrations(
            &state.migrations,
            state.topology.as_ref(),
        )),
        "inforepl" => no_args(info_repl(&state.replication)),
        "listcluster" => no_args(Reply::Array(
            state
                .topology
                .iter()
                .map(|t| Reply::bulk(&t.cluster_name))
                .collect(),
        )),
        "help" => Reply::Array(
            [
                "UMCTL SETCLUSTER v2 <epoch> <flags> <cluster-name> [<addr> <slot-range>]... [PEER ...] [CONFIG ...]",
                "UMCTL SETREPL <epoch> <flags> [<role> <cluster-name> <node-addr> <peer-count> [<peer-node> <peer-proxy>]...]...",
                "UMCTL GETEPOCH",
                "UMCTL READY",
                "UMCTL INFOMGR",
                "UMCTL MIGRATIONS",
                "UMCTL INFOREPL",
                "UMCTL LISTCLUSTER",
            ]
            .iter()
            .map(|s| Reply::Simple(s.to_string()))
            .collect(),
        ),
        _ => Reply::error(format!(
            "ERR unknown subcommand '{}'. Try UMCTL HELP.",
            sub.chars().take(64).collect::<String>()
        )),
    }
}

fn epoch(state: &State) -> u64 {
    state.topology.as_ref().map_or(0, |t| t.epoch)
}

/// Whether `addr` is this server: its port is one we listen on, and when this node already knows
/// its announced address, the host matches too.
fn is_me(server: &dyn Server, state: &State, addr: &Addr) -> bool {
    let ports = server.listening_ports();
    if !ports.iter().any(|&p| p != 0 && p == addr.port) {
        return false;
    }
    match state.my_addr(None) {
        Some(me) => me.host == addr.host,
        None => true,
    }
}

fn set_cluster(server: &dyn Server, state: &mut State, args: &[&[u8]]) -> Reply {
    let sc = match setcluster::parse(args) {
        Ok(sc) => sc,
        Err(e) => {
            state.stats.setcluster_rejected += 1;
            return Reply::error(e.to_string());
        }
    };
    let ports = server.listening_ports();
    if let Some(g) = sc.local.first() {
        if !ports.iter().any(|&p| p != 0 && p == g.addr.port) {
            state.stats.setcluster_rejected += 1;
            return Reply::error(NOT_MY_META);
        }
    }
    if !sc.force && sc.epoch <= epoch(state) {
        state.stats.setcluster_rejected += 1;
        return Reply::error(OLD_EPOCH);
    }
    let mut saved = state.saved.clone();
    saved.version = persist::FORMAT_VERSION;
    saved.setcluster = Some(persist::to_strings(args));
    if let Err(e) = server.save_config(&saved) {
        state.stats.setcluster_rejected += 1;
        state.stats.config_write_failed += 1;
        return Reply::error(format!("{CONFIG_WRITE} {e}"));
    }
    state.saved = saved;
    let warn = !sc.ignored_config.is_empty();
    state.topology = Some(Topology::new(
        sc.epoch,
        sc.cluster_name,
        sc.local,
        sc.peers,
        sc.config,
    ));
    state.server_master = server.replication().master;
    state.rebuild_table();
    migration::sync(&mut state.migrations, state.topology.as_ref());
    state.stats.setcluster_accepted += 1;
    if warn {
        Reply::Simple("WARNING: ignored invalid config".into())
    } else {
        Reply::Ok
    }
}

fn set_repl(server: &dyn Server, state: &mut State, args: &[&[u8]]) -> Reply {
    let sr = match setrepl::parse(args) {
        Ok(sr) => sr,
        Err(e) => {
            state.stats.setrepl_rejected += 1;
            return Reply::error(e);
        }
    };
    // Entries about this server must really be about it; entries about other nodes describe the
    // rest of the cluster (their replicas show in CLUSTER SLOTS/NODES/SHARDS).
    let ports = server.listening_ports();
    let claims_my_port = sr.entries.iter().any(|e| ports.contains(&e.node.port));
    if claims_my_port
        && !sr
            .entries
            .iter()
            .filter(|e| ports.contains(&e.node.port))
            .all(|e| is_me(server, state, &e.node))
    {
        state.stats.setrepl_rejected += 1;
        return Reply::error(NOT_MY_META);
    }
    if !sr.force && sr.epoch <= state.replication.epoch {
        state.stats.setrepl_rejected += 1;
        return Reply::error(OLD_EPOCH);
    }
    if let Some(target) = wanted_master(server, state, &sr.entries) {
        let current = server.replication().master;
        let same = match (&target, &current) {
            (Some(t), Some(c)) => t.same_endpoint(c),
            (None, None) => true,
            _ => false,
        };
        if !same {
            if let Err(e) = server.set_master(target.as_ref()) {
                state.stats.setrepl_rejected += 1;
                let what = match &target {
                    Some(m) => format!("REPLICAOF {m}"),
                    None => "REPLICAOF NO ONE".to_string(),
                };
                return Reply::error(format!("ERR_SETREPL {what} failed: {e}"));
            }
        }
    }
    // REPLICAOF has run; if the roles cannot be saved the push is still refused, so the control
    // plane retries it (the server keeps following the new master meanwhile, which is harmless:
    // the retry asks for the same thing).
    let mut saved = state.saved.clone();
    saved.version = persist::FORMAT_VERSION;
    saved.setrepl = Some(persist::to_strings(args));
    if let Err(e) = server.save_config(&saved) {
        state.stats.setrepl_rejected += 1;
        state.stats.config_write_failed += 1;
        return Reply::error(format!("{CONFIG_WRITE} {e}"));
    }
    state.saved = saved;
    state.replication = Replication {
        epoch: sr.epoch,
        entries: sr.entries,
    };
    state.server_master = server.replication().master;
    state.rebuild_table();
    state.stats.setrepl_accepted += 1;
    Reply::Ok
}

/// What the entries about this node ask of its replication: `Some(Some(master))` to replicate
/// from `master` (a `replica` entry; the peer's node address is the server to follow),
/// `Some(None)` to be a master (a `master` entry), `None` when no entry is about this node.
fn wanted_master(
    server: &dyn Server,
    state: &State,
    entries: &[setrepl::ReplEntry],
) -> Option<Option<Addr>> {
    let mine = || entries.iter().filter(|e| is_me(server, state, &e.node));
    if let Some(replica) = mine().find(|e| e.role == ReplRole::Replica) {
        return replica.peers.first().map(|p| Some(p.node.clone()));
    }
    mine().next().map(|_| None)
}

/// `READY`: serving at least one stable or importing range, or a replica with no master role.
fn ready(server: &dyn Server, state: &State) -> bool {
    let serving = state.topology.as_ref().is_some_and(|t| {
        t.local
            .iter()
            .any(|g| !matches!(g.kind, GroupKind::Migrating(_)) && !g.ranges.is_empty())
    });
    if serving {
        return true;
    }
    let mine: Vec<_> = state
        .replication
        .entries
        .iter()
        .filter(|e| is_me(server, state, &e.node))
        .collect();
    !mine.is_empty() && mine.iter().all(|e| e.role == ReplRole::Replica)
}

/// `INFOREPL`: one array per entry, lines ending in `\n` (undermoon's format).
pub fn info_repl(replication: &Replication) -> Reply {
    let mut entries: Vec<_> = replication.entries.iter().collect();
    entries.sort_by_key(|e| e.role == ReplRole::Replica);
    Reply::Array(
        entries
            .into_iter()
            .map(|e| {
                let mut lines = vec![
                    Reply::bulk(format!("cluster:{}\n", e.cluster_name)),
                    Reply::bulk(format!("role:{}\n", e.role.as_str())),
                    Reply::bulk(format!("node_address:{}\n", e.node)),
                ];
                let peer_label = match e.role {
                    ReplRole::Master => "replica",
                    ReplRole::Replica => "master",
                };
                lines.extend(
                    e.peers
                        .iter()
                        .map(|p| Reply::bulk(format!("{peer_label}:{}@{}\n", p.node, p.proxy))),
                );
                Reply::Array(lines)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub struct FakeServer(pub u16);
    impl Server for FakeServer {
        fn listening_ports(&self) -> Vec<u16> {
            vec![self.0, 0]
        }
        fn replication(&self) -> crate::server_info::ReplicationInfo {
            crate::server_info::ReplicationInfo::default()
        }
        fn set_master(&self, _master: Option<&crate::addr::Addr>) -> Result<(), String> {
            Ok(())
        }
        fn count_keys_in_slot(&self, _slot: u16) -> u64 {
            0
        }
        fn keys_in_slot(&self, _slot: u16, _max: usize) -> Vec<Vec<u8>> {
            Vec::new()
        }
    }

    /// A server whose config file cannot be written.
    struct ReadOnlyDisk;
    impl Server for ReadOnlyDisk {
        fn listening_ports(&self) -> Vec<u16> {
            vec![7001]
        }
        fn replication(&self) -> crate::server_info::ReplicationInfo {
            crate::server_info::ReplicationInfo::default()
        }
        fn set_master(&self, _master: Option<&crate::addr::Addr>) -> Result<(), String> {
            Ok(())
        }
        fn count_keys_in_slot(&self, _slot: u16) -> u64 {
            0
        }
        fn keys_in_slot(&self, _slot: u16, _max: usize) -> Vec<Vec<u8>> {
            Vec::new()
        }
        fn save_config(&self, _saved: &persist::Saved) -> Result<(), String> {
            Err("disk full".into())
        }
    }

    #[test]
    fn a_push_that_cannot_be_saved_changes_nothing() {
        let mut s = State::default();
        let args: Vec<&[u8]> = "v2 3 NOFLAG db 127.0.0.1:7001 1 0-16383"
            .split(' ')
            .map(str::as_bytes)
            .collect();
        let reply = run(&ReadOnlyDisk, &mut s, b"setcluster", &args);
        assert_eq!(reply, Reply::error(format!("{CONFIG_WRITE} disk full")));
        assert!(s.topology.is_none());
        assert_eq!(s.stats.config_write_failed, 1);
        let args: Vec<&[u8]> = "2 NOFLAG master db 127.0.0.1:7001 0"
            .split(' ')
            .map(str::as_bytes)
            .collect();
        assert!(matches!(
            run(&ReadOnlyDisk, &mut s, b"setrepl", &args),
            Reply::Error(_)
        ));
        assert_eq!(s.replication.epoch, 0);
        // A saved push is remembered verbatim, for the file.
        let ok: Vec<&[u8]> = "v2 4 NOFLAG db 127.0.0.1:7001 1 0-16383"
            .split(' ')
            .map(str::as_bytes)
            .collect();
        assert_eq!(
            run(&FakeServer(7001), &mut s, b"setcluster", &ok),
            Reply::Ok
        );
        assert_eq!(s.saved.setcluster, Some(persist::to_strings(&ok)));
        assert_eq!(s.saved.version, persist::FORMAT_VERSION);
    }

    fn umctl(state: &mut State, cmd: &str) -> Reply {
        let tokens: Vec<&[u8]> = cmd.split_whitespace().map(str::as_bytes).collect();
        run(&FakeServer(7001), state, tokens[0], &tokens[1..])
    }

    #[test]
    fn setcluster_applies_and_epoch_must_grow() {
        let mut s = State::default();
        assert_eq!(umctl(&mut s, "getepoch"), Reply::Int(0));
        assert_eq!(umctl(&mut s, "ready"), Reply::Int(0));
        assert_eq!(
            umctl(
                &mut s,
                "SETCLUSTER v2 3 NOFLAGS db 127.0.0.1:7001 1 0-16383"
            ),
            Reply::Ok
        );
        assert_eq!(umctl(&mut s, "GETEPOCH"), Reply::Int(3));
        assert_eq!(umctl(&mut s, "ready"), Reply::Int(1));
        let version = s.table_version;
        assert_eq!(
            umctl(&mut s, "setcluster v2 3 NOFLAGS db 127.0.0.1:7001 1 0-100"),
            Reply::error(OLD_EPOCH)
        );
        assert_eq!(
            umctl(&mut s, "setcluster v2 2 NOFLAGS db 127.0.0.1:7001 1 0-100"),
            Reply::error(OLD_EPOCH)
        );
        assert_eq!(
            s.table_version, version,
            "a refused push leaves the table alone"
        );
        assert_eq!(s.topology.as_ref().unwrap().owned_slots(), 16384);
        assert_eq!(
            umctl(&mut s, "setcluster v2 1 FORCE db 127.0.0.1:7001 1 0-100"),
            Reply::Ok
        );
        assert_eq!(s.topology.as_ref().unwrap().owned_slots(), 101);
    }

    #[test]
    fn epoch_zero_needs_force() {
        let mut s = State::default();
        assert_eq!(
            umctl(&mut s, "setcluster v2 0 NOFLAGS db"),
            Reply::error(OLD_EPOCH)
        );
        assert_eq!(umctl(&mut s, "setcluster v2 0 FORCE db"), Reply::Ok);
    }

    #[test]
    fn setcluster_for_another_port_is_not_my_meta() {
        let mut s = State::default();
        assert_eq!(
            umctl(
                &mut s,
                "setcluster v2 1 NOFLAGS db 127.0.0.1:7002 1 0-16383"
            ),
            Reply::error(NOT_MY_META)
        );
        assert!(s.topology.is_none());
    }

    #[test]
    fn malformed_push_changes_nothing() {
        let mut s = State::default();
        umctl(
            &mut s,
            "setcluster v2 1 NOFLAGS db 127.0.0.1:7001 1 0-16383",
        );
        let before = s.topology.clone();
        for bad in [
            "setcluster v2 5 NOFLAGS db 127.0.0.1:7001 2 0-1",
            "setcluster v2 5 NOFLAGS db 127.0.0.1:7001 1 0-1 PEER 127.0.0.1:7002 1 1-2",
            "setcluster v3 5 NOFLAGS db",
            "setcluster",
        ] {
            assert!(matches!(umctl(&mut s, bad), Reply::Error(_)), "{bad}");
        }
        assert_eq!(s.topology, before);
        assert_eq!(s.stats.setcluster_rejected, 4);
    }

    #[test]
    fn invalid_config_is_a_warning() {
        let mut s = State::default();
        assert_eq!(
            umctl(
                &mut s,
                "setcluster v2 1 NOFLAGS db 127.0.0.1:7001 1 0-1 CONFIG bogus 1"
            ),
            Reply::Simple("WARNING: ignored invalid config".into())
        );
        assert!(s.topology.is_some());
    }

    #[test]
    fn setrepl_has_its_own_epoch_and_shows_in_inforepl() {
        let mut s = State::default();
        umctl(
            &mut s,
            "setcluster v2 5 NOFLAGS db 127.0.0.1:7001 1 0-16383",
        );
        assert_eq!(
            umctl(
                &mut s,
                "setrepl 1 NOFLAG master db 127.0.0.1:7001 1 127.0.0.1:7004 127.0.0.1:7004"
            ),
            Reply::Ok
        );
        assert_eq!(umctl(&mut s, "setrepl 1 NOFLAG"), Reply::error(OLD_EPOCH));
        let Reply::Array(entries) = umctl(&mut s, "inforepl") else {
            panic!()
        };
        assert_eq!(
            entries[0],
            Reply::Array(vec![
                Reply::bulk("cluster:db\n"),
                Reply::bulk("role:master\n"),
                Reply::bulk("node_address:127.0.0.1:7001\n"),
                Reply::bulk("replica:127.0.0.1:7004@127.0.0.1:7004\n"),
            ])
        );
        // An entry for this port on another host is not about this node.
        assert_eq!(
            umctl(
                &mut s,
                "setrepl 2 NOFLAG replica db 10.0.0.9:7001 1 127.0.0.1:7002 127.0.0.1:7002"
            ),
            Reply::error(NOT_MY_META)
        );
    }

    #[test]
    fn a_replica_only_node_is_ready() {
        let mut s = State::default();
        umctl(
            &mut s,
            "setcluster v2 5 NOFLAGS db 127.0.0.1:7001 0 PEER 127.0.0.1:7002 1 0-16383",
        );
        assert_eq!(umctl(&mut s, "ready"), Reply::Int(0));
        umctl(
            &mut s,
            "setrepl 1 NOFLAG replica db 127.0.0.1:7001 1 127.0.0.1:7002 127.0.0.1:7002",
        );
        assert_eq!(umctl(&mut s, "ready"), Reply::Int(1));
        // The replica's table knows its master: READONLY reads of the master's slots are served.
        assert_eq!(
            s.table.my_master,
            s.topology
                .as_ref()
                .unwrap()
                .node_index(&Addr::parse(b"127.0.0.1:7002").unwrap())
        );
    }

    #[test]
    fn unknown_and_extra_arguments_are_errors() {
        let mut s = State::default();
        assert!(
            matches!(umctl(&mut s, "bogus"), Reply::Error(e) if e.contains("unknown subcommand"))
        );
        assert!(matches!(umctl(&mut s, "getepoch 1"), Reply::Error(_)));
        assert_eq!(umctl(&mut s, "infomgr"), Reply::Array(vec![]));
    }
}
