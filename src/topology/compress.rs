//! `UMCTL SETCLUSTER v2 <epoch> COMPRESS <payload>`: the whole topology in one argument.
//!
//! The payload is `base64(gzip(json))` exactly as undermoon's coordinator builds it (standard
//! base64 alphabet with padding, gzip with its header):
//!
//! ```text
//! {"cluster_name":"mycluster",
//!  "local":{"127.0.0.1:7001":[{"range_list":[[233,666]],"tag":"None"}]},
//!  "peer":{"127.0.0.1:7002":[{"range_list":[[8001,16383]],
//!          "tag":{"Migrating":{"epoch":7,"src_proxy_address":"...","src_node_address":"...",
//!                              "dst_proxy_address":"...","dst_node_address":"..."}}}]},
//!  "cluster_config":{"compression_strategy":"disabled",
//!                    "migration_config":{"max_migration_time":10800,"max_blocking_time":10000,
//!                                        "scan_interval":500,"scan_count":16}}}
//! ```
//!
//! Decoding is bounded: the decompressed JSON may not exceed [`MAX_JSON_LEN`], so a small
//! payload cannot expand into gigabytes inside the server.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::setcluster::{valid_cluster_name, SetClusterError};
use super::{GroupKind, MigrationMeta, SlotGroup, SlotRange};
use crate::addr::Addr;
use crate::slot::MAX_SLOT;

/// Largest decompressed JSON accepted (a full 16384-slot topology with many nodes is well under).
pub const MAX_JSON_LEN: u64 = 16 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Payload {
    cluster_name: String,
    local: BTreeMap<String, Vec<JsonRange>>,
    peer: BTreeMap<String, Vec<JsonRange>>,
    cluster_config: JsonConfig,
}

#[derive(Serialize, Deserialize)]
struct JsonRange {
    range_list: Vec<(u64, u64)>,
    tag: JsonTag,
}

#[derive(Serialize, Deserialize)]
enum JsonTag {
    None,
    Migrating(JsonMeta),
    Importing(JsonMeta),
}

#[derive(Serialize, Deserialize)]
struct JsonMeta {
    epoch: u64,
    src_proxy_address: String,
    src_node_address: String,
    dst_proxy_address: String,
    dst_node_address: String,
}

#[derive(Serialize, Deserialize, Default)]
struct JsonConfig {
    #[serde(default)]
    compression_strategy: Option<String>,
    #[serde(default)]
    migration_config: Option<JsonMigrationConfig>,
}

#[derive(Serialize, Deserialize)]
struct JsonMigrationConfig {
    max_migration_time: u64,
    max_blocking_time: u64,
    scan_interval: u64,
    scan_count: u64,
}

/// The decoded content: cluster name, local groups, peer groups, config pairs.
pub type Decoded = (
    String,
    Vec<SlotGroup>,
    Vec<SlotGroup>,
    Vec<(String, String)>,
);

/// Decodes a COMPRESS payload. Errors say which layer failed.
pub fn decode(payload: &[u8]) -> Result<Decoded, SetClusterError> {
    let bad = |why: String| SetClusterError::Compress(why);
    let gzipped = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|e| bad(format!("not base64: {e}")))?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gzipped.as_slice())
        .take(MAX_JSON_LEN + 1)
        .read_to_end(&mut json)
        .map_err(|e| bad(format!("not gzip: {e}")))?;
    if json.len() as u64 > MAX_JSON_LEN {
        return Err(bad(format!(
            "decompressed size exceeds {MAX_JSON_LEN} bytes"
        )));
    }
    let payload: Payload = serde_json::from_slice(&json)
        .map_err(|e| bad(format!("JSON does not match the schema: {e}")))?;
    if !valid_cluster_name(payload.cluster_name.as_bytes()) {
        return Err(SetClusterError::BadClusterName(payload.cluster_name));
    }
    let local = groups(&payload.local)?;
    let peers = groups(&payload.peer)?;
    let mut config = Vec::new();
    if let Some(strategy) = payload.cluster_config.compression_strategy {
        config.push(("compression_strategy".to_string(), strategy));
    }
    if let Some(m) = payload.cluster_config.migration_config {
        config.push((
            "migration_max_migration_time".into(),
            m.max_migration_time.to_string(),
        ));
        config.push((
            "migration_max_blocking_time".into(),
            m.max_blocking_time.to_string(),
        ));
        config.push((
            "migration_scan_interval".into(),
            m.scan_interval.to_string(),
        ));
        config.push(("migration_scan_count".into(), m.scan_count.to_string()));
    }
    Ok((payload.cluster_name, local, peers, config))
}

fn groups(map: &BTreeMap<String, Vec<JsonRange>>) -> Result<Vec<SlotGroup>, SetClusterError> {
    let addr = |s: &str| {
        Addr::parse(s.as_bytes())
            .map_err(|_| SetClusterError::BadAddr(s.chars().take(64).collect()))
    };
    let mut out = Vec::new();
    for (address, ranges) in map {
        let node = addr(address)?;
        for r in ranges {
            let mut list = Vec::with_capacity(r.range_list.len());
            for &(start, end) in &r.range_list {
                if start > end || end > MAX_SLOT as u64 {
                    return Err(SetClusterError::BadRange(format!("{start}-{end}")));
                }
                list.push(SlotRange {
                    start: start as u16,
                    end: end as u16,
                });
            }
            let meta = |m: &JsonMeta| -> Result<MigrationMeta, SetClusterError> {
                Ok(MigrationMeta {
                    epoch: m.epoch,
                    src_proxy: addr(&m.src_proxy_address)?,
                    src_node: addr(&m.src_node_address)?,
                    dst_proxy: addr(&m.dst_proxy_address)?,
                    dst_node: addr(&m.dst_node_address)?,
                })
            };
            let kind = match &r.tag {
                JsonTag::None => GroupKind::Stable,
                JsonTag::Migrating(m) => GroupKind::Migrating(meta(m)?),
                JsonTag::Importing(m) => GroupKind::Importing(meta(m)?),
            };
            out.push(SlotGroup {
                addr: node.clone(),
                kind,
                ranges: list,
            });
        }
    }
    Ok(out)
}

/// Encodes a topology the way undermoon's coordinator does (used by tests and the admin tool).
pub fn encode(cluster_name: &str, local: &[SlotGroup], peers: &[SlotGroup]) -> String {
    fn to_map(groups: &[SlotGroup]) -> BTreeMap<String, Vec<JsonRange>> {
        let mut map: BTreeMap<String, Vec<JsonRange>> = BTreeMap::new();
        for g in groups {
            let meta = |m: &MigrationMeta| JsonMeta {
                epoch: m.epoch,
                src_proxy_address: m.src_proxy.to_string(),
                src_node_address: m.src_node.to_string(),
                dst_proxy_address: m.dst_proxy.to_string(),
                dst_node_address: m.dst_node.to_string(),
            };
            map.entry(g.addr.to_string()).or_default().push(JsonRange {
                range_list: g
                    .ranges
                    .iter()
                    .map(|r| (r.start as u64, r.end as u64))
                    .collect(),
                tag: match &g.kind {
                    GroupKind::Stable => JsonTag::None,
                    GroupKind::Migrating(m) => JsonTag::Migrating(meta(m)),
                    GroupKind::Importing(m) => JsonTag::Importing(meta(m)),
                },
            });
        }
        map
    }
    let payload = Payload {
        cluster_name: cluster_name.to_string(),
        local: to_map(local),
        peer: to_map(peers),
        cluster_config: JsonConfig {
            compression_strategy: Some("disabled".into()),
            migration_config: Some(JsonMigrationConfig {
                max_migration_time: 10_800,
                max_blocking_time: 10_000,
                scan_interval: 500,
                scan_count: 16,
            }),
        },
    };
    let json = serde_json::to_vec(&payload).unwrap_or_default();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = std::io::Write::write_all(&mut gz, &json);
    let bytes = gz.finish().unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built with Python's gzip (level 1) from the JSON undermoon's coordinator test serializes.
    const UNDERMOON_SAMPLE: &str = "H4sIAAAAAAAEA0VP7QrDIAx8l/wuQzfWjT7EXqAUsTYTmcaidqwU330p7IP8Se6Sy90Gxi+5YFKkA0IHYf0A0ICPRnvoNpDHy0Fwye4ihISu3yBpsqi8y4XH/ng6NW3bDkMDRVuWuUVCqENtYEZMrMHd95OJdHe8tIGJYU6Ys4ukckm6oF35eHJZjx4nthCcZXjn/1dBv9QfL273LcVVCF5namTbD0dWfRmxM9loUo446XPPdP5hJi7EGWRba30DHcgGtQ4BAAA=";

    #[test]
    fn decodes_the_coordinator_payload() {
        let (name, local, peers, config) = decode(UNDERMOON_SAMPLE.as_bytes()).unwrap();
        assert_eq!(name, "mycluster");
        assert_eq!(local.len(), 1);
        assert_eq!(local[0].addr.to_string(), "127.0.0.1:7001");
        assert_eq!(
            local[0].ranges,
            vec![SlotRange {
                start: 233,
                end: 666
            }]
        );
        assert!(peers.is_empty());
        assert_eq!(config.len(), 5);
    }

    #[test]
    fn round_trips_migrations() {
        let meta = MigrationMeta {
            epoch: 7,
            src_proxy: Addr::parse(b"127.0.0.1:7001").unwrap(),
            src_node: Addr::parse(b"127.0.0.1:7001").unwrap(),
            dst_proxy: Addr::parse(b"127.0.0.1:7002").unwrap(),
            dst_node: Addr::parse(b"127.0.0.1:7002").unwrap(),
        };
        let local = vec![SlotGroup {
            addr: meta.src_proxy.clone(),
            kind: GroupKind::Migrating(meta.clone()),
            ranges: vec![SlotRange { start: 0, end: 10 }],
        }];
        let payload = encode("db", &local, &[]);
        let (name, decoded, _, _) = decode(payload.as_bytes()).unwrap();
        assert_eq!(name, "db");
        assert_eq!(decoded, local);
    }

    #[test]
    fn rejects_each_broken_layer() {
        for bad in [&b"!!!"[..], b"aGVsbG8=", b""] {
            assert!(matches!(decode(bad), Err(SetClusterError::Compress(_))));
        }
        let json = |s: &str| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, s.as_bytes()).unwrap();
            base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
        };
        assert!(matches!(
            decode(json("{}").as_bytes()),
            Err(SetClusterError::Compress(_))
        ));
        let bad_range = r#"{"cluster_name":"a","local":{"127.0.0.1:1":[{"range_list":[[5,1]],"tag":"None"}]},"peer":{},"cluster_config":{}}"#;
        assert!(matches!(
            decode(json(bad_range).as_bytes()),
            Err(SetClusterError::BadRange(_))
        ));
        let bad_name = r#"{"cluster_name":"","local":{},"peer":{},"cluster_config":{}}"#;
        assert!(matches!(
            decode(json(bad_name).as_bytes()),
            Err(SetClusterError::BadClusterName(_))
        ));
    }

    #[test]
    fn refuses_decompression_bombs() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![b' '; 1024 * 1024];
        for _ in 0..17 {
            std::io::Write::write_all(&mut gz, &zeros).unwrap();
        }
        let payload = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        match decode(payload.as_bytes()) {
            Err(SetClusterError::Compress(why)) => assert!(why.contains("exceeds")),
            other => panic!("expected a size error, got {:?}", other.map(|d| d.0)),
        }
    }
}
