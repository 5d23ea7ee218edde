//! Parser for `UMCTL SETCLUSTER`, the grammar of undermoon's server-side proxy (v2).
//!
//! ```text
//! UMCTL SETCLUSTER v2 <epoch> <flags> <cluster-name>
//!       [<addr> <slot-range>]...                 -- this node (the "local" part)
//!       [PEER [<addr> <slot-range>]...]          -- every other node
//!       [CONFIG [<field> <value>]...]
//!
//! <slot-range> := <n> <start-end>{n}
//!              |  migrating <n> <start-end>{n} <migration-epoch> <src-proxy> <src-node> <dst-proxy> <dst-node>
//!              |  importing <n> <start-end>{n} <migration-epoch> <src-proxy> <src-node> <dst-proxy> <dst-node>
//! ```
//!
//! With `COMPRESS` in `<flags>`, everything after the flags is one argument: base64(gzip(json)) of
//! the same data, cluster name included (see [`super::compress`]).
//!
//! Parsing is all-or-nothing: any malformed token makes the whole command an error that says what
//! is wrong, and the node's state is not touched.

use std::fmt;

use super::{ClusterConfig, GroupKind, MigrationMeta, SlotGroup, SlotRange};
use crate::addr::Addr;
use crate::slot::{MAX_SLOT, SLOT_COUNT};

/// A parsed, validated `SETCLUSTER`.
#[derive(Clone, Debug, PartialEq)]
pub struct SetCluster {
    pub epoch: u64,
    pub force: bool,
    pub cluster_name: String,
    pub local: Vec<SlotGroup>,
    pub peers: Vec<SlotGroup>,
    pub config: ClusterConfig,
    /// CONFIG fields that were unknown or had a bad value (ignored, reported as a warning).
    pub ignored_config: Vec<String>,
}

/// Why a `SETCLUSTER` was refused. Displayed as the error line sent to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetClusterError {
    WrongArity,
    UnsupportedVersion(String),
    BadEpoch(String),
    BadClusterName(String),
    BadAddr(String),
    MissingSlotRange(String),
    BadCount(String),
    TooFewRanges { expected: usize, found: usize },
    BadRange(String),
    MissingMigration(String),
    DuplicatePeer,
    Overlap { slot: u16 },
    ImportingOverlap { slot: u16 },
    ImportingOwnSlot { slot: u16 },
    SeveralLocalAddresses(String, String),
    Compress(String),
}

impl fmt::Display for SetClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SetClusterError::*;
        match self {
            WrongArity => write!(f, "ERR wrong number of arguments for 'umctl|setcluster' command"),
            UnsupportedVersion(v) => write!(f, "ERR_SETCLUSTER unsupported version '{v}', expected v2"),
            BadEpoch(e) => write!(f, "ERR_SETCLUSTER invalid epoch '{e}': expected an unsigned 64-bit integer"),
            BadClusterName(n) => write!(
                f,
                "ERR_SETCLUSTER invalid cluster name '{n}': 1 to 30 characters of [A-Za-z0-9_-]"
            ),
            BadAddr(a) => write!(f, "ERR_SETCLUSTER invalid address '{a}': expected ip:port or [ipv6]:port"),
            MissingSlotRange(a) => write!(f, "ERR_SETCLUSTER missing slot range after address {a}"),
            BadCount(c) => write!(f, "ERR_SETCLUSTER invalid range count '{c}'"),
            TooFewRanges { expected, found } => write!(
                f,
                "ERR_SETCLUSTER range count says {expected} but only {found} ranges follow"
            ),
            BadRange(r) => write!(
                f,
                "ERR_SETCLUSTER invalid slot range '{r}': expected start-end with 0 <= start <= end <= {MAX_SLOT}"
            ),
            MissingMigration(what) => write!(f, "ERR_SETCLUSTER incomplete migration description: missing {what}"),
            DuplicatePeer => write!(f, "ERR_SETCLUSTER PEER given twice"),
            Overlap { slot } => write!(f, "ERR_SETCLUSTER slot {slot} is assigned more than once"),
            ImportingOverlap { slot } => write!(f, "ERR_SETCLUSTER slot {slot} is imported more than once"),
            ImportingOwnSlot { slot } => write!(
                f,
                "ERR_SETCLUSTER slot {slot} is imported by the node that already owns it"
            ),
            SeveralLocalAddresses(a, b) => write!(
                f,
                "ERR_SETCLUSTER the local part names two addresses ({a} and {b}): a module serves one server"
            ),
            Compress(why) => write!(f, "ERR_SETCLUSTER invalid COMPRESS payload: {why}"),
        }
    }
}

/// Longest accepted cluster name (undermoon's limit).
pub const MAX_CLUSTER_NAME_LEN: usize = 30;

/// Checks a cluster name: 1 to 30 bytes of `[A-Za-z0-9_-]`.
pub fn valid_cluster_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CLUSTER_NAME_LEN
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
}

/// Flags of a `SETCLUSTER`/`SETREPL`: one token, `FORCE` and `COMPRESS` comma-separated; any other
/// token (`NOFLAG`, `NOFLAGS` ...) means none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub force: bool,
    pub compress: bool,
}

impl Flags {
    pub fn parse(token: &[u8]) -> Flags {
        let mut flags = Flags::default();
        for part in token.split(|&b| b == b',') {
            if part.eq_ignore_ascii_case(b"FORCE") {
                flags.force = true;
            } else if part.eq_ignore_ascii_case(b"COMPRESS") {
                flags.compress = true;
            }
        }
        flags
    }
}

/// Parses the arguments that follow `SETCLUSTER`.
pub fn parse(args: &[&[u8]]) -> Result<SetCluster, SetClusterError> {
    if args.len() < 4 {
        return Err(SetClusterError::WrongArity);
    }
    if !args[0].eq_ignore_ascii_case(b"v2") {
        return Err(SetClusterError::UnsupportedVersion(lossy(args[0])));
    }
    let epoch = parse_u64(args[1]).ok_or_else(|| SetClusterError::BadEpoch(lossy(args[1])))?;
    let flags = Flags::parse(args[2]);

    let (cluster_name, local, peers, config_pairs) = if flags.compress {
        // `v2 <epoch> <flags> <payload>`: the cluster name travels inside the payload.
        if args.len() != 4 {
            return Err(SetClusterError::Compress(format!(
                "expected exactly one argument after the flags, got {}",
                args.len() - 3
            )));
        }
        super::compress::decode(args[3])?
    } else {
        if !valid_cluster_name(args[3]) {
            return Err(SetClusterError::BadClusterName(lossy(args[3])));
        }
        let (local, peers, config) = parse_body(&args[4..])?;
        (lossy(args[3]), local, peers, config)
    };

    validate(&local, &peers)?;

    let mut config = ClusterConfig::default();
    let mut ignored_config = Vec::new();
    for (field, value) in config_pairs {
        if !config.set(&field, &value) {
            ignored_config.push(field);
        }
    }

    Ok(SetCluster {
        epoch,
        force: flags.force,
        cluster_name,
        local,
        peers,
        config,
        ignored_config,
    })
}

type Body = (Vec<SlotGroup>, Vec<SlotGroup>, Vec<(String, String)>);

fn parse_body(tokens: &[&[u8]]) -> Result<Body, SetClusterError> {
    #[derive(PartialEq)]
    enum Section {
        Local,
        Peer,
        Config,
    }
    let mut local = Vec::new();
    let mut peers = Vec::new();
    let mut config = Vec::new();
    let mut section = Section::Local;
    let mut seen_peer = false;
    let mut it = tokens.iter().copied();
    while let Some(token) = it.next() {
        if token.eq_ignore_ascii_case(b"PEER") {
            // Two PEER sections would leave it unclear which nodes the push describes.
            if seen_peer {
                return Err(SetClusterError::DuplicatePeer);
            }
            seen_peer = true;
            section = Section::Peer;
            continue;
        }
        if token.eq_ignore_ascii_case(b"CONFIG") {
            section = Section::Config;
            continue;
        }
        if section == Section::Config {
            // A field without a value is an invalid setting like any other: ignored, reported.
            let value = it.next().map(lossy).unwrap_or_default();
            config.push((lossy(token), value));
            continue;
        }
        let addr = Addr::parse(token).map_err(|_| SetClusterError::BadAddr(lossy(token)))?;
        let group = parse_group(addr, &mut it)?;
        match section {
            Section::Local => local.push(group),
            _ => peers.push(group),
        }
    }
    Ok((local, peers, config))
}

fn parse_group<'a>(
    addr: Addr,
    it: &mut impl Iterator<Item = &'a [u8]>,
) -> Result<SlotGroup, SetClusterError> {
    let first = it
        .next()
        .ok_or_else(|| SetClusterError::MissingSlotRange(addr.to_string()))?;
    let migration = if first.eq_ignore_ascii_case(b"migrating") {
        Some(true)
    } else if first.eq_ignore_ascii_case(b"importing") {
        Some(false)
    } else {
        None
    };
    let count_token = match migration {
        Some(_) => it
            .next()
            .ok_or_else(|| SetClusterError::MissingSlotRange(addr.to_string()))?,
        None => first,
    };
    let count = parse_u64(count_token)
        .filter(|&n| n <= SLOT_COUNT as u64)
        .ok_or_else(|| SetClusterError::BadCount(lossy(count_token)))? as usize;
    let mut ranges = Vec::with_capacity(count);
    for found in 0..count {
        let token = it.next().ok_or(SetClusterError::TooFewRanges {
            expected: count,
            found,
        })?;
        ranges.push(parse_range(token)?);
    }
    let kind = match migration {
        None => GroupKind::Stable,
        Some(migrating) => {
            let epoch_token = it
                .next()
                .ok_or_else(|| SetClusterError::MissingMigration("migration epoch".into()))?;
            let epoch = parse_u64(epoch_token)
                .ok_or_else(|| SetClusterError::BadEpoch(lossy(epoch_token)))?;
            let mut addrs = Vec::with_capacity(4);
            for what in [
                "source proxy address",
                "source node address",
                "destination proxy address",
                "destination node address",
            ] {
                let token = it
                    .next()
                    .ok_or_else(|| SetClusterError::MissingMigration(what.into()))?;
                addrs.push(Addr::parse(token).map_err(|_| SetClusterError::BadAddr(lossy(token)))?);
            }
            let mut addrs = addrs.into_iter();
            let meta = MigrationMeta {
                epoch,
                src_proxy: addrs.next().expect("four addresses parsed"),
                src_node: addrs.next().expect("four addresses parsed"),
                dst_proxy: addrs.next().expect("four addresses parsed"),
                dst_node: addrs.next().expect("four addresses parsed"),
            };
            if migrating {
                GroupKind::Migrating(meta)
            } else {
                GroupKind::Importing(meta)
            }
        }
    };
    Ok(SlotGroup { addr, kind, ranges })
}

/// Parses `start-end`.
pub fn parse_range(token: &[u8]) -> Result<SlotRange, SetClusterError> {
    let bad = || SetClusterError::BadRange(lossy(token));
    let dash = token.iter().position(|&b| b == b'-').ok_or_else(bad)?;
    let start = parse_u64(&token[..dash]).ok_or_else(bad)?;
    let end = parse_u64(&token[dash + 1..]).ok_or_else(bad)?;
    if start > end || end > MAX_SLOT as u64 {
        return Err(bad());
    }
    Ok(SlotRange {
        start: start as u16,
        end: end as u16,
    })
}

/// Checks the slot claims of a whole push: at most one owner per slot (stable or migrating
/// group), at most one importer per slot, no node importing a slot it owns, and one local address.
pub fn validate(local: &[SlotGroup], peers: &[SlotGroup]) -> Result<(), SetClusterError> {
    if let Some(first) = local.first() {
        if let Some(other) = local.iter().find(|g| g.addr != first.addr) {
            return Err(SetClusterError::SeveralLocalAddresses(
                first.addr.to_string(),
                other.addr.to_string(),
            ));
        }
    }
    let mut owner: Vec<Option<&Addr>> = vec![None; SLOT_COUNT];
    let mut importer: Vec<Option<&Addr>> = vec![None; SLOT_COUNT];
    for g in local.iter().chain(peers) {
        let claims = match g.kind {
            GroupKind::Stable | GroupKind::Migrating(_) => &mut owner,
            GroupKind::Importing(_) => &mut importer,
        };
        for r in &g.ranges {
            for s in r.slots() {
                if claims[s as usize].is_some() {
                    return Err(match g.kind {
                        GroupKind::Importing(_) => SetClusterError::ImportingOverlap { slot: s },
                        _ => SetClusterError::Overlap { slot: s },
                    });
                }
                claims[s as usize] = Some(&g.addr);
            }
        }
    }
    for s in 0..SLOT_COUNT {
        if let (Some(o), Some(i)) = (owner[s], importer[s]) {
            if o == i {
                return Err(SetClusterError::ImportingOwnSlot { slot: s as u16 });
            }
        }
    }
    Ok(())
}

/// Parses an unsigned decimal (no sign, no spaces, at most 20 digits).
pub fn parse_u64(token: &[u8]) -> Option<u64> {
    if token.is_empty() || token.len() > 20 || !token.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(token).ok()?.parse().ok()
}

fn lossy(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    // Keep error lines short and on one line whatever the client sent.
    let mut out: String = s.chars().take(64).collect();
    if s.chars().count() > 64 {
        out.push_str("...");
    }
    out.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(cmd: &str) -> Result<SetCluster, SetClusterError> {
        let tokens: Vec<&[u8]> = cmd.split_whitespace().map(|s| s.as_bytes()).collect();
        parse(&tokens)
    }

    fn addr(s: &str) -> Addr {
        Addr::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn parses_local_peer_and_config() {
        let sc = parse_str(
            "v2 7 NOFLAGS mydb 127.0.0.1:7001 2 0-100 200-300 PEER 127.0.0.1:7002 1 101-199 \
             127.0.0.1:7003 0 CONFIG migration_scan_count 32 compression_strategy disabled",
        )
        .unwrap();
        assert_eq!(sc.epoch, 7);
        assert!(!sc.force);
        assert_eq!(sc.cluster_name, "mydb");
        assert_eq!(sc.local.len(), 1);
        assert_eq!(
            sc.local[0].ranges,
            vec![
                SlotRange { start: 0, end: 100 },
                SlotRange {
                    start: 200,
                    end: 300
                }
            ]
        );
        assert_eq!(sc.peers.len(), 2);
        assert_eq!(sc.peers[1].ranges, vec![]);
        assert_eq!(sc.config.migration_scan_count, 32);
        assert!(sc.ignored_config.is_empty());
    }

    #[test]
    fn parses_undermoon_migration_example() {
        let sc = parse_str(
            "v2 2 NOFLAGS mydb 127.0.0.1:7001 1 0-8000 \
             127.0.0.1:7001 migrating 1 8001-16383 2 127.0.0.1:6001 127.0.0.1:7001 127.0.0.1:6002 127.0.0.1:7002 \
             PEER 127.0.0.1:6002 importing 1 8001-16383 2 127.0.0.1:6001 127.0.0.1:7001 127.0.0.1:6002 127.0.0.1:7002",
        )
        .unwrap();
        assert_eq!(sc.local.len(), 2);
        match &sc.local[1].kind {
            GroupKind::Migrating(m) => {
                assert_eq!(m.epoch, 2);
                assert_eq!(m.src_proxy, addr("127.0.0.1:6001"));
                assert_eq!(m.dst_node, addr("127.0.0.1:7002"));
            }
            other => panic!("expected migrating, got {other:?}"),
        }
        assert!(matches!(sc.peers[0].kind, GroupKind::Importing(_)));
    }

    #[test]
    fn keywords_and_flags_are_case_insensitive() {
        let sc = parse_str("V2 1 force,compressed mydb 127.0.0.1:7001 1 0-16383 peer").unwrap();
        assert!(sc.force);
        let sc = parse_str("v2 1 NOFLAG mydb 127.0.0.1:7001 1 0-1 config").unwrap();
        assert!(!sc.force);
        assert!(Flags::parse(b"FORCE,COMPRESS").compress);
        assert!(!Flags::parse(b"NOFLAGS").force);
    }

    #[test]
    fn empty_local_part_is_allowed() {
        let sc = parse_str("v2 1 NOFLAGS mydb PEER 127.0.0.1:7002 1 0-16383").unwrap();
        assert!(sc.local.is_empty());
        let sc = parse_str("v2 1 NOFLAGS mydb").unwrap();
        assert!(sc.peers.is_empty());
    }

    #[test]
    fn config_may_come_before_peer_and_a_missing_value_is_only_a_warning() {
        let sc = parse_str("v2 1 NOFLAGS db 127.0.0.1:7001 1 0-1 CONFIG migration_scan_count 5 PEER 127.0.0.1:7002 1 2-3 CONFIG migration_scan_interval")
            .unwrap();
        assert_eq!(sc.peers.len(), 1);
        assert_eq!(sc.config.migration_scan_count, 5);
        assert_eq!(
            sc.ignored_config,
            vec!["migration_scan_interval".to_string()]
        );
    }

    #[test]
    fn unknown_config_fields_are_reported_not_fatal() {
        let sc = parse_str("v2 1 NOFLAGS mydb 127.0.0.1:7001 1 0-1 CONFIG bogus 1 migration_scan_count x migration_scan_interval 9")
            .unwrap();
        assert_eq!(
            sc.ignored_config,
            vec!["bogus".to_string(), "migration_scan_count".to_string()]
        );
        assert_eq!(sc.config.migration_scan_interval, 9);
    }

    fn err(cmd: &str) -> SetClusterError {
        parse_str(cmd).expect_err(cmd)
    }

    #[test]
    fn rejects_every_malformed_variant() {
        assert_eq!(err("v2 1 NOFLAGS"), SetClusterError::WrongArity);
        assert!(matches!(
            err("v2 1 COMPRESS payload extra"),
            SetClusterError::Compress(_)
        ));
        assert!(matches!(
            err("v2 1 FORCE,COMPRESS notbase64"),
            SetClusterError::Compress(_)
        ));
        assert!(matches!(
            err("v1 1 NOFLAGS db"),
            SetClusterError::UnsupportedVersion(_)
        ));
        assert!(matches!(
            err("v2 -1 NOFLAGS db"),
            SetClusterError::BadEpoch(_)
        ));
        assert!(matches!(
            err("v2 18446744073709551616 NOFLAGS db"),
            SetClusterError::BadEpoch(_)
        ));
        assert!(matches!(
            err("v2 x NOFLAGS db"),
            SetClusterError::BadEpoch(_)
        ));
        assert!(matches!(
            err("v2 1 NOFLAGS bad.name"),
            SetClusterError::BadClusterName(_)
        ));
        assert!(matches!(
            err("v2 1 NOFLAGS aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            SetClusterError::BadClusterName(_)
        ));
        assert!(matches!(
            err("v2 1 NOFLAGS db nothost 1 0-1"),
            SetClusterError::BadAddr(_)
        ));
        assert!(matches!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001"),
            SetClusterError::MissingSlotRange(_)
        ));
        assert!(matches!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 x 0-1"),
            SetClusterError::BadCount(_)
        ));
        assert!(matches!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 99999 0-1"),
            SetClusterError::BadCount(_)
        ));
        assert_eq!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 2 0-1"),
            SetClusterError::TooFewRanges {
                expected: 2,
                found: 1
            }
        );
        // Count mismatch the other way: the extra range is read as an address.
        assert!(matches!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 1 0-1 2-3"),
            SetClusterError::BadAddr(_)
        ));
        assert!(matches!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 1 5-1"),
            SetClusterError::BadRange(_)
        ));
        assert!(matches!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 1 0-16384"),
            SetClusterError::BadRange(_)
        ));
        assert!(matches!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 1 7"),
            SetClusterError::BadRange(_)
        ));
        assert!(matches!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 1 -1-5"),
            SetClusterError::BadRange(_)
        ));
        assert_eq!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 1 0-10 PEER 127.0.0.1:7002 1 10-20"),
            SetClusterError::Overlap { slot: 10 }
        );
        assert_eq!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 1 0-10 PEER 127.0.0.1:7002 1 11-20 PEER"),
            SetClusterError::DuplicatePeer
        );
        assert!(matches!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 1 0-10 127.0.0.1:7002 1 11-20"),
            SetClusterError::SeveralLocalAddresses(..)
        ));
        // Trailing garbage after a complete group.
        assert!(matches!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 1 0-10 junk"),
            SetClusterError::BadAddr(_)
        ));
        // Unknown keyword where an address is expected.
        assert!(matches!(
            err("v2 1 NOFLAGS db PEERS 127.0.0.1:7002 1 0-1"),
            SetClusterError::BadAddr(_)
        ));
        // Incomplete migration descriptions.
        assert!(matches!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 migrating 1 0-10 2 127.0.0.1:7001 127.0.0.1:7001 127.0.0.1:7002"),
            SetClusterError::MissingMigration(_)
        ));
        assert!(matches!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 migrating 1 0-10"),
            SetClusterError::MissingMigration(_)
        ));
        assert!(matches!(
            err("v2 1 NOFLAGS db 127.0.0.1:7001 importing 1 0-10 x 127.0.0.1:7001 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7002"),
            SetClusterError::BadEpoch(_)
        ));
    }

    #[test]
    fn importing_overlaps_are_checked() {
        let m = "2 127.0.0.1:7001 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7002";
        assert_eq!(
            err(&format!(
                "v2 1 NOFLAGS db 127.0.0.1:7002 importing 1 0-10 {m} PEER 127.0.0.1:7003 importing 1 5-6 {m}"
            )),
            SetClusterError::ImportingOverlap { slot: 5 }
        );
        assert_eq!(
            err(&format!(
                "v2 1 NOFLAGS db 127.0.0.1:7002 1 0-10 127.0.0.1:7002 importing 1 0-10 {m}"
            )),
            SetClusterError::ImportingOwnSlot { slot: 0 }
        );
    }

    #[test]
    fn a_migrating_importing_pair_may_overlap() {
        let m = "2 127.0.0.1:7001 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7002";
        parse_str(&format!(
            "v2 1 NOFLAGS db 127.0.0.1:7001 migrating 1 0-10 {m} PEER 127.0.0.1:7002 importing 1 0-10 {m}"
        ))
        .unwrap();
    }

    #[test]
    fn error_lines_are_single_line_and_bounded() {
        let e = SetClusterError::BadAddr(lossy(&[b'x'; 200])).to_string();
        assert!(e.len() < 200);
        let e = SetClusterError::BadAddr(lossy(b"a\r\nb")).to_string();
        assert!(!e.contains('\n'));
    }
}
