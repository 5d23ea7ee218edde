//! Node ids for `CLUSTER NODES`, `CLUSTER MYID` and `CLUSTER SHARDS`.
//!
//! A native node picks a random 40-character id and gossips it. We have no gossip, so every node
//! must compute the same id for the same peer without talking to it: the id is the SHA-1 of the
//! cluster name and the node's address, as 40 lowercase hex characters (the width and alphabet
//! every client parser expects).

use crate::addr::Addr;

/// Length of a node id, as in native Redis Cluster.
pub const NODE_ID_LEN: usize = 40;

/// The id of the node at `addr` in the cluster named `cluster_name`.
pub fn node_id(cluster_name: &str, addr: &Addr) -> String {
    let mut hasher = sha1_smol::Sha1::new();
    hasher.update(cluster_name.as_bytes());
    hasher.update(b"\n");
    hasher.update(addr.to_string().as_bytes());
    hasher.digest().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Addr {
        Addr::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn ids_are_40_lowercase_hex_and_deterministic() {
        let id = node_id("mycluster", &addr("127.0.0.1:7001"));
        assert_eq!(id.len(), NODE_ID_LEN);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(id, node_id("mycluster", &addr("127.0.0.1:7001")));
    }

    #[test]
    fn ids_differ_by_address_and_cluster() {
        let a = node_id("c", &addr("127.0.0.1:7001"));
        assert_ne!(a, node_id("c", &addr("127.0.0.1:7002")));
        assert_ne!(a, node_id("d", &addr("127.0.0.1:7001")));
    }
}
