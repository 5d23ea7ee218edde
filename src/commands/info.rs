//! `INFO` on a configured node: the server's own text with `cluster_enabled:1`.
//!
//! Frameworks and tools (redis-cli --cluster among them) decide "is this a cluster node?" from the
//! `# Cluster` section. The server prints `cluster_enabled:0` because it runs without
//! `cluster-enabled`; once a topology is accepted the filter hands `INFO` to the module, which runs
//! the real `INFO` with the same arguments and flips that one field. Every other byte is the
//! server's.

const DISABLED: &[u8] = b"cluster_enabled:0";

/// Replaces the value of the `cluster_enabled` line (at the start of a line) with 1.
pub fn patch_cluster_enabled(text: &[u8]) -> Vec<u8> {
    let mut out = text.to_vec();
    let mut at = 0;
    while let Some(pos) = find(&out[at..], DISABLED) {
        let start = at + pos;
        let line_start = start == 0 || out[start - 1] == b'\n';
        let end = start + DISABLED.len();
        let line_end = end == out.len() || out[end] == b'\r' || out[end] == b'\n';
        if line_start && line_end {
            out[end - 1] = b'1';
        }
        at = end;
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_only_the_cluster_enabled_line() {
        let text = b"# Server\r\nredis_version:7.0.15\r\n\r\n# Cluster\r\ncluster_enabled:0\r\n";
        let patched = patch_cluster_enabled(text);
        assert_eq!(
            patched,
            b"# Server\r\nredis_version:7.0.15\r\n\r\n# Cluster\r\ncluster_enabled:1\r\n".to_vec()
        );
    }

    #[test]
    fn leaves_lookalikes_and_other_sections_alone() {
        let text = b"# Keyspace\r\nxcluster_enabled:0\r\nclient_name:cluster_enabled:0\r\ncluster_enabled:00\r\n";
        assert_eq!(patch_cluster_enabled(text), text.to_vec());
    }

    #[test]
    fn text_without_a_cluster_section_is_unchanged() {
        let text = b"# Memory\r\nused_memory:1\r\n";
        assert_eq!(patch_cluster_enabled(text), text.to_vec());
        assert_eq!(patch_cluster_enabled(b""), Vec::<u8>::new());
        assert_eq!(
            patch_cluster_enabled(b"cluster_enabled:0"),
            b"cluster_enabled:1".to_vec()
        );
    }
}
