//! Hash slots: which of the 16384 slots a key belongs to.
//!
//! ```text
//! slot = CRC16-XMODEM(hashed part of key) mod 16384
//! ```
//!
//! The hashed part is the whole key, unless the key holds a hash tag: the bytes between the first
//! `{` and the first `}` after it, when there is at least one byte between them. `{}` (empty)
//! means the whole key is hashed. This is the rule every Redis Cluster client implements, so
//! `{user1000}.following` and `{user1000}.followers` always land on the same node.

/// Number of hash slots in a Redis Cluster.
pub const SLOT_COUNT: usize = 16384;

/// Highest valid slot number.
pub const MAX_SLOT: u16 = (SLOT_COUNT - 1) as u16;

/// Returns the part of `key` that is hashed: the hash tag if there is a non-empty one, else the key.
#[inline]
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|&b| b == b'}') {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    key
}

/// Returns the slot of `key`.
#[inline]
pub fn key_slot(key: &[u8]) -> u16 {
    crc16_xmodem(hash_tag(key)) & MAX_SLOT
}

/// CRC16 with polynomial 0x1021, initial value 0, no reflection (XMODEM), as Redis Cluster uses.
#[inline]
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_native_cluster_reference_values() {
        assert_eq!(key_slot(b"age"), 741);
        assert_eq!(key_slot(b"a"), 15495);
        assert_eq!(key_slot(b"b"), 3300);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b""), 0);
        // From the Redis Cluster specification: CRC16("123456789") = 0x31C3.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
    }

    #[test]
    fn keys_with_the_same_hash_tag_share_a_slot() {
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
    }

    #[test]
    fn hash_tag_rules_follow_the_cluster_spec() {
        // Empty tag: the whole key is hashed.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        // Only the first `{` counts, up to the first `}` after it.
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        // No closing brace: whole key.
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar");
        assert_eq!(hash_tag(b"}foo{"), b"}foo{");
        assert_eq!(hash_tag(b"{a}"), b"a");
    }

    #[test]
    fn every_slot_is_below_16384() {
        for i in 0..10_000u32 {
            assert!(key_slot(format!("key:{i}").as_bytes()) <= MAX_SLOT);
        }
    }
}
