//! Parser for `UMCTL SETREPL`: who replicates whom.
//!
//! ```text
//! UMCTL SETREPL <epoch> <flags>
//!       [<role> <cluster-name> <node-addr> <peer-count> [<peer-node> <peer-proxy>]...]...
//! ```
//!
//! `<role>` is `master` or `replica`. For a replica, the peer is its master; for a master, the
//! peers are its replicas. SETREPL keeps its own epoch, separate from SETCLUSTER's.

use serde::{Deserialize, Serialize};

use super::setcluster::{parse_u64, valid_cluster_name, Flags};
use crate::addr::Addr;

/// Replication role of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplRole {
    Master,
    Replica,
}

impl ReplRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplRole::Master => "master",
            ReplRole::Replica => "replica",
        }
    }
}

/// The other end of a replication link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplPeer {
    pub node: Addr,
    pub proxy: Addr,
}

/// One `<role> <cluster-name> <node-addr> <peer-count> ...` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplEntry {
    pub role: ReplRole,
    pub cluster_name: String,
    pub node: Addr,
    pub peers: Vec<ReplPeer>,
}

/// A parsed `SETREPL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetRepl {
    pub epoch: u64,
    pub force: bool,
    pub entries: Vec<ReplEntry>,
}

/// Most peers one entry may list (a sanity bound against absurd counts).
const MAX_PEERS: u64 = 1024;

/// Parses the arguments that follow `SETREPL`. Errors are the lines sent to the client.
pub fn parse(args: &[&[u8]]) -> Result<SetRepl, String> {
    if args.len() < 2 {
        return Err("ERR wrong number of arguments for 'umctl|setrepl' command".into());
    }
    let epoch = parse_u64(args[0]).ok_or_else(|| {
        format!(
            "ERR_SETREPL invalid epoch '{}': expected an unsigned 64-bit integer",
            String::from_utf8_lossy(args[0])
        )
    })?;
    let flags = Flags::parse(args[1]);
    let mut entries = Vec::new();
    let mut it = args[2..].iter().copied();
    while let Some(role_token) = it.next() {
        let role = if role_token.eq_ignore_ascii_case(b"master") {
            ReplRole::Master
        } else if role_token.eq_ignore_ascii_case(b"replica") {
            ReplRole::Replica
        } else {
            return Err(format!(
                "ERR_SETREPL invalid role '{}': expected master or replica",
                String::from_utf8_lossy(role_token)
            ));
        };
        let mut next = |what: &str| {
            it.next()
                .ok_or_else(|| format!("ERR_SETREPL missing {what}"))
        };
        let name = next("cluster name")?;
        if !valid_cluster_name(name) {
            return Err(format!(
                "ERR_SETREPL invalid cluster name '{}'",
                String::from_utf8_lossy(name)
            ));
        }
        let node = addr(next("node address")?)?;
        let count_token = next("peer count")?;
        let count = parse_u64(count_token)
            .filter(|&n| n <= MAX_PEERS)
            .ok_or_else(|| {
                format!(
                    "ERR_SETREPL invalid peer count '{}'",
                    String::from_utf8_lossy(count_token)
                )
            })?;
        let mut peers = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let peer_node = addr(next("peer node address")?)?;
            let peer_proxy = addr(next("peer proxy address")?)?;
            peers.push(ReplPeer {
                node: peer_node,
                proxy: peer_proxy,
            });
        }
        entries.push(ReplEntry {
            role,
            cluster_name: String::from_utf8_lossy(name).into_owned(),
            node,
            peers,
        });
    }
    Ok(SetRepl {
        epoch,
        force: flags.force,
        entries,
    })
}

fn addr(token: &[u8]) -> Result<Addr, String> {
    Addr::parse(token).map_err(|e| format!("ERR_SETREPL {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<SetRepl, String> {
        let t: Vec<&[u8]> = s.split_whitespace().map(str::as_bytes).collect();
        parse(&t)
    }

    #[test]
    fn parses_master_and_replica_entries() {
        let r = parse_str(
            "3 NOFLAGS master db 127.0.0.1:7001 2 127.0.0.1:7004 127.0.0.1:7004 127.0.0.1:7005 127.0.0.1:7005 \
             replica db 127.0.0.1:7006 1 127.0.0.1:7002 127.0.0.1:7002",
        )
        .unwrap();
        assert_eq!(r.epoch, 3);
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.entries[0].role, ReplRole::Master);
        assert_eq!(r.entries[0].peers.len(), 2);
        assert_eq!(r.entries[1].role, ReplRole::Replica);
        assert_eq!(r.entries[1].peers[0].node.port, 7002);
    }

    #[test]
    fn empty_entry_list_is_valid() {
        assert!(parse_str("1 FORCE").unwrap().force);
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in [
            "1",
            "x NOFLAGS",
            "1 NOFLAGS boss db 127.0.0.1:7001 0",
            "1 NOFLAGS master db 127.0.0.1:7001",
            "1 NOFLAGS master db 127.0.0.1:7001 1 127.0.0.1:7002",
            "1 NOFLAGS master db bad 0",
            "1 NOFLAGS master bad.name 127.0.0.1:7001 0",
            "1 NOFLAGS master db 127.0.0.1:7001 99999999",
            "1 NOFLAGS master db 127.0.0.1:7001 0 trailing",
        ] {
            assert!(parse_str(bad).is_err(), "{bad}");
        }
    }
}
