//! Reading the server's `INFO replication` text: this node's role, its master and its offset.

use crate::addr::Addr;

/// What `INFO replication` says about this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationInfo {
    /// `Some` when the server is a replica (`role:slave`).
    pub master: Option<Addr>,
    pub offset: i64,
}

impl ReplicationInfo {
    /// Parses the text of `INFO replication`. Missing or malformed fields read as "master, offset 0".
    pub fn parse(text: &str) -> ReplicationInfo {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim())
        };
        let is_replica = field("role:") == Some("slave");
        let int = |name: &str| field(name).and_then(|v| v.parse::<i64>().ok());
        let master = if is_replica {
            match (field("master_host:"), field("master_port:")) {
                (Some(host), Some(port)) => {
                    let text = if host.contains(':') {
                        format!("[{host}]:{port}")
                    } else {
                        format!("{host}:{port}")
                    };
                    Addr::parse(text.as_bytes()).ok()
                }
                _ => None,
            }
        } else {
            None
        };
        let offset = if is_replica {
            int("slave_repl_offset:")
        } else {
            int("master_repl_offset:")
        }
        .unwrap_or(0);
        ReplicationInfo { master, offset }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_reports_its_master_and_offset() {
        let text = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7001\r\n\
                    master_link_status:up\r\nslave_repl_offset:4242\r\nmaster_repl_offset:4242\r\n";
        let info = ReplicationInfo::parse(text);
        assert_eq!(info.master, Some(Addr::parse(b"127.0.0.1:7001").unwrap()));
        assert_eq!(info.offset, 4242);
    }

    #[test]
    fn master_has_no_master() {
        let text =
            "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nmaster_repl_offset:17\r\n";
        assert_eq!(
            ReplicationInfo::parse(text),
            ReplicationInfo {
                master: None,
                offset: 17
            }
        );
    }

    #[test]
    fn ipv6_master_is_bracketed_for_parsing() {
        let text = "role:slave\r\nmaster_host:::1\r\nmaster_port:7002\r\n";
        let info = ReplicationInfo::parse(text);
        assert_eq!(info.master.map(|a| a.port), Some(7002));
    }

    #[test]
    fn garbage_reads_as_master() {
        assert_eq!(
            ReplicationInfo::parse("\u{0}junk"),
            ReplicationInfo::default()
        );
    }
}
