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
#[inline(always)]
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = find_open_brace(key) {
        let rest = &key[open + 1..];
        if let Some(close) = find_byte::<b'}'>(rest) {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    key
}

/// The `{tag}` a key starts with, braces included, when its hash tag is that (`{user1}.name`:
/// `{user1}`); `None` otherwise (no tag, an empty one, or one further in). Any key that starts
/// with these bytes has the same hash tag: its first `{` is the first byte, and the first `}`
/// after it is the one that closes this prefix.
#[inline(always)]
pub fn leading_tag(key: &[u8]) -> Option<&[u8]> {
    if key.first() != Some(&b'{') {
        return None;
    }
    match find_byte::<b'}'>(&key[1..]) {
        Some(close) if close > 0 => Some(&key[..close + 2]),
        _ => None,
    }
}

/// Whether `key` starts with `prefix`: for a tag of up to 16 bytes, two overlapping word
/// compares instead of a call to `memcmp`.
#[inline(always)]
pub fn starts_with_tag(key: &[u8], prefix: &[u8]) -> bool {
    let n = prefix.len();
    if key.len() < n {
        return false;
    }
    if (8..=16).contains(&n) {
        word_at(key, 0) == word_at(prefix, 0) && word_at(key, n - 8) == word_at(prefix, n - 8)
    } else {
        key[..n] == *prefix
    }
}

/// The slot of a hash tag's bytes (what is between the braces, found already).
#[inline(always)]
pub fn tag_slot(tag: &[u8]) -> u16 {
    crc16_xmodem(tag) & MAX_SLOT
}

/// Position of the first `{`, eight bytes at a time: this scan runs over every key of every
/// command, and a byte-by-byte loop costs about as much as the CRC itself.
#[inline(always)]
fn find_open_brace(key: &[u8]) -> Option<usize> {
    find_byte::<b'{'>(key)
}

/// Position of the first byte `B` in `bytes`, eight bytes at a time. The tail is one more word
/// read that overlaps the last full one (its bytes before the tail hold no `B`, so the first one
/// found is still the first), and 4 to 7 bytes are two overlapping 4-byte reads.
#[inline(always)]
fn find_byte<const B: u8>(bytes: &[u8]) -> Option<usize> {
    let n = bytes.len();
    if n >= 8 {
        let mut base = 0;
        while base + 8 <= n {
            if let Some(i) = first_in_word::<B>(word_at(bytes, base)) {
                return Some(base + i);
            }
            base += 8;
        }
        if base < n {
            return first_in_word::<B>(word_at(bytes, n - 8)).map(|i| n - 8 + i);
        }
        None
    } else if n >= 4 {
        let lo = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as u64;
        let hi = u32::from_le_bytes([bytes[n - 4], bytes[n - 3], bytes[n - 2], bytes[n - 1]]);
        // Bytes 0..4 then n-4..n: byte j >= 4 of the word is byte n - 4 + (j - 4).
        first_in_word::<B>(lo | ((hi as u64) << 32))
            .map(|j| if j < 4 { j } else { n - 4 + (j - 4) })
    } else {
        bytes.iter().position(|&b| b == B)
    }
}

#[inline(always)]
fn word_at(key: &[u8], at: usize) -> u64 {
    let b = &key[at..at + 8];
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Index of the first byte `B` among the eight of `word` (little-endian).
#[inline(always)]
fn first_in_word<const B: u8>(word: u64) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let v = word ^ (ONES * B as u64);
    // Exact "some byte is zero" test for the lowest such byte: a borrow only starts at a zero
    // byte, so everything below the first flagged byte is exact.
    let zero = v.wrapping_sub(ONES) & !v & HIGH;
    if zero != 0 {
        Some((zero.trailing_zeros() / 8) as usize)
    } else {
        None
    }
}

/// Returns the slot of `key`.
#[inline]
pub fn key_slot(key: &[u8]) -> u16 {
    key_slot_inline(key)
}

/// [`key_slot`] by carry-less multiplication where the CPU has it ([`clmul::key_slot`]).
#[inline]
pub fn key_slot_fastest(key: &[u8]) -> u16 {
    #[cfg(target_arch = "x86_64")]
    if clmul::available() {
        // SAFETY: the CPU has PCLMULQDQ.
        return unsafe { clmul::key_slot(key) };
    }
    key_slot(key)
}

/// [`key_slot`], always inlined: for the one call on the hottest path (a one-key command).
#[inline(always)]
pub fn key_slot_inline(key: &[u8]) -> u16 {
    crc16_xmodem(hash_tag(key)) & MAX_SLOT
}

/// CRC16 with polynomial 0x1021, initial value 0, no reflection (XMODEM), as Redis Cluster uses.
///
/// Table-driven, two bytes per step (two independent lookups), tables built at compile time:
/// this runs for every key of every command and is the filter's largest single cost.
///
/// One byte: `crc' = (crc << 8) ^ T[(crc >> 8) ^ b]`. Two bytes, by linearity of `T`:
/// `crc'' = T2[(crc >> 8) ^ b0] ^ T[(crc & 0xff) ^ b1]` with `T2[x] = (T[x] << 8) ^ T[T[x] >> 8]`.
#[inline(always)]
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    let mut pairs = bytes.chunks_exact(2);
    for pair in &mut pairs {
        // Both bytes at once: `x >> 8` is `(crc >> 8) ^ b0`, `x & 0xff` is `(crc & 0xff) ^ b1`.
        let x = crc ^ u16::from_be_bytes([pair[0], pair[1]]);
        crc = CRC16_TABLE2[(x >> 8) as usize] ^ CRC16_TABLE[(x & 0xff) as usize];
    }
    for &b in pairs.remainder() {
        crc = (crc << 8) ^ CRC16_TABLE[((crc >> 8) as u8 ^ b) as usize];
    }
    crc
}

/// Carry-less multiplication (`PCLMULQDQ`): the slot of a key in a few instructions per 8 bytes,
/// where the table needs two lookups per 2 bytes. x86-64 only, and only where the CPU has the
/// instruction: the module checks at load ([`clmul::available`]) and registers the filter built
/// with it, or the portable one. Everything is SSE2 (part of x86-64) but the multiplication
/// itself, one instruction of inline assembly ([`clmul::clmul`]): the `#[target_feature]`
/// intrinsic cannot be inlined into the filter (its closures, and everything it calls, would
/// need the feature too).
///
/// The arithmetic: with `M(x)` the key's bits (first byte highest), CRC16 is `M(x)·x^16 mod P(x)`,
/// `P = 0x11021`. Keys are cut into 8-byte words from the end, so the first word is the short
/// one. A word `w` (a polynomial of degree < 64) after a prefix whose CRC is `c` gives
/// `(c·x^48 + w)·x^16 mod P`, a value `a·x^16 mod P` with `deg a < 64`. Its quotient by `P` is
/// exactly `floor(a·μ / x^64)` with `μ = floor(x^80 / P)` (Barrett reduction is exact for
/// polynomials: the error term has degree < 80 and vanishes in the division by `x^64`), and
/// `μ = x^64 + μ_low` makes that `a ^ high64(clmul(a, μ_low))`. The remainder's low 16 bits are
/// those of `clmul(q, 0x1021)` (the `x^16·q` part has none), and it has no others.
#[cfg(target_arch = "x86_64")]
pub mod clmul {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_cvtsi128_si32, _mm_cvtsi64_si128, _mm_movemask_epi8,
        _mm_or_si128, _mm_set1_epi8, _mm_set_epi64x, _mm_slli_epi64, _mm_srli_si128, _mm_xor_si128,
    };

    /// `x^80` divided by `P = 0x11021` (carry-less long division): `(quotient, remainder)`.
    const X80_DIV_P: (u128, u128) = {
        let p: u128 = 0x11021;
        let mut rem: u128 = 1 << 80;
        let mut q: u128 = 0;
        let mut bit = 80;
        while bit >= 16 {
            if rem & (1 << bit) != 0 {
                rem ^= p << (bit - 16);
                q |= 1 << (bit - 16);
            }
            bit -= 1;
        }
        (q, rem)
    };

    /// `floor(x^80 / P)` without its `x^64` term.
    const MU_LOW: u64 = {
        assert!(X80_DIV_P.0 >> 64 == 1);
        X80_DIV_P.0 as u64
    };

    /// `x^80 mod P`: folds the first of two words onto the second ([`two_words`]).
    const X80_MOD_P: u64 = X80_DIV_P.1 as u64;

    /// Whether this CPU can run [`key_slot`] (checked once, at load).
    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("pclmulqdq")
    }

    /// `clmul(low64(a), low64(b))`: the one instruction SSE2 does not have.
    ///
    /// # Safety
    /// The CPU must have `PCLMULQDQ`.
    #[inline(always)]
    unsafe fn clmul(mut a: __m128i, b: __m128i) -> __m128i {
        // SAFETY: register-only arithmetic; the caller guarantees the instruction exists.
        unsafe {
            std::arch::asm!(
                "pclmulqdq {a}, {b}, 0",
                a = inout(xmm_reg) a,
                b = in(xmm_reg) b,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        a
    }

    /// `a·x^16 mod P` for `a` of degree < 64 (its low lane), in the low 16 bits of the result
    /// (the bits above are left over: callers mask or shift them out).
    ///
    /// # Safety
    /// As [`clmul`].
    #[inline(always)]
    unsafe fn reduce(a: __m128i, k: &Constants) -> __m128i {
        // SAFETY: the caller guarantees the instruction; the rest is SSE2, part of x86-64.
        unsafe {
            let q = _mm_xor_si128(_mm_srli_si128::<8>(clmul(a, k.mu)), a);
            clmul(q, k.p)
        }
    }

    /// `w` in the low lane, and a mask of its bytes that are `{`.
    ///
    /// # Safety
    /// SSE2 only (part of x86-64).
    #[inline(always)]
    unsafe fn load(w: u64, k: &Constants) -> (__m128i, __m128i) {
        // SAFETY: SSE2.
        unsafe {
            let v = _mm_cvtsi64_si128(w as i64);
            (v, _mm_cmpeq_epi8(v, k.open))
        }
    }

    /// The first word (the CRC before it is zero): `(crc, braces)`.
    ///
    /// # Safety
    /// As [`clmul`].
    #[inline(always)]
    unsafe fn first_step(w: u64, k: &Constants) -> (__m128i, __m128i) {
        // SAFETY: as above.
        unsafe {
            let (a, braces) = load(w, k);
            (reduce(a, k), braces)
        }
    }

    /// One more 8-byte word: `crc := (crc·x^48 + w)·x^16 mod P` and `braces |= (bytes of w ==
    /// '{')`. `crc` is in the low 16 bits of its low lane; the bits above, left over from the
    /// reduction, are shifted out here.
    ///
    /// # Safety
    /// As [`clmul`].
    #[inline(always)]
    unsafe fn step(crc: &mut __m128i, braces: &mut __m128i, w: u64, k: &Constants) {
        // SAFETY: as above.
        unsafe {
            let (v, open) = load(w, k);
            *braces = _mm_or_si128(*braces, open);
            *crc = reduce(_mm_xor_si128(v, _mm_slli_epi64::<48>(*crc)), k);
        }
    }

    /// A key of 9 to 16 bytes, `h` its first `n - 8` bytes and `l` its last 8: `V·x^16 =
    /// h·x^80 + l·x^16 ≡ h·(x^80 mod P) + l·x^16 = Z`, a polynomial of degree < 80; with
    /// `Z = z_hi·x^16 + z_lo`, `Z mod P = z_lo + reduce(z_hi)`. One multiplication fewer than two
    /// [`step`]s, and no loop: `(crc, braces)`.
    ///
    /// # Safety
    /// As [`clmul`].
    #[inline(always)]
    unsafe fn two_words(h: u64, l: u64, k: &Constants) -> (__m128i, __m128i) {
        // SAFETY: as above.
        unsafe {
            let (h, open_h) = load(h, k);
            let (l, open_l) = load(l, k);
            // Below x^79: shifted down 16 bits it fits the low lane.
            let folded = clmul(h, k.k80);
            let z_hi = _mm_xor_si128(_mm_srli_si128::<2>(folded), l);
            (
                _mm_xor_si128(reduce(z_hi, k), folded),
                _mm_or_si128(open_h, open_l),
            )
        }
    }

    struct Constants {
        k80: __m128i,
        mu: __m128i,
        p: __m128i,
        open: __m128i,
    }

    /// A key of 1 to 7 bytes as a big-endian number.
    #[inline(always)]
    fn head_word(head: &[u8]) -> u64 {
        let n = head.len();
        // Two overlapping reads; the bytes they share are equal, so OR keeps them.
        if n >= 4 {
            let lo = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as u64;
            let hi = u32::from_be_bytes([head[n - 4], head[n - 3], head[n - 2], head[n - 1]]);
            (lo << (8 * (n - 4))) | hi as u64
        } else if n >= 2 {
            let lo = u16::from_be_bytes([head[0], head[1]]) as u64;
            let hi = u16::from_be_bytes([head[n - 2], head[n - 1]]);
            (lo << (8 * (n - 2))) | hi as u64
        } else {
            head[0] as u64
        }
    }

    /// [`super::key_slot`] with carry-less multiplication. The search for a hash tag's `{`
    /// rides on the words the CRC reads (a head word's padding bytes are zero, never `{`); a key
    /// that has one is hashed again, over its tag if it has one.
    ///
    /// # Safety
    /// The CPU must have `PCLMULQDQ` ([`available`]).
    #[inline(always)]
    pub unsafe fn key_slot(key: &[u8]) -> u16 {
        // SAFETY: the caller guarantees the instruction.
        let (crc, braces) = unsafe { crc16(key) };
        if braces {
            // SAFETY: as above.
            return unsafe { tagged_key_slot(key, crc) };
        }
        crc & super::MAX_SLOT
    }

    /// [`super::tag_slot`].
    ///
    /// # Safety
    /// As [`key_slot`].
    #[inline(always)]
    pub unsafe fn tag_slot(tag: &[u8]) -> u16 {
        // SAFETY: as above.
        unsafe { crc16(tag) }.0 & super::MAX_SLOT
    }

    /// [`super::key_slot`] with the hash tag looked for before the CRC, for the keys of
    /// multi-key commands, which in a cluster usually share a tag (`MSET {u1}.a 1 {u1}.b 2`):
    /// [`key_slot`] would hash such a key twice.
    ///
    /// # Safety
    /// As [`key_slot`].
    #[inline(always)]
    pub unsafe fn tag_first_key_slot(key: &[u8]) -> u16 {
        // SAFETY: as above.
        unsafe { crc16(super::hash_tag(key)) }.0 & super::MAX_SLOT
    }

    /// The slot of a key that holds a `{`: its tag's CRC, or `crc` (the whole key's) if it has
    /// no tag.
    ///
    /// # Safety
    /// As [`key_slot`].
    #[inline(never)]
    unsafe fn tagged_key_slot(key: &[u8], crc: u16) -> u16 {
        let tag = super::hash_tag(key);
        if tag.len() == key.len() {
            return crc & super::MAX_SLOT;
        }
        // SAFETY: as above.
        unsafe { crc16(tag) }.0 & super::MAX_SLOT
    }

    /// CRC16 of `bytes`, and whether one of them is `{`.
    ///
    /// # Safety
    /// As [`key_slot`].
    #[inline(always)]
    unsafe fn crc16(bytes: &[u8]) -> (u16, bool) {
        let n = bytes.len();
        let be_word =
            |b: &[u8]| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        // SAFETY: SSE2 is part of x86-64.
        let k = unsafe {
            Constants {
                k80: _mm_set_epi64x(0, X80_MOD_P as i64),
                mu: _mm_set_epi64x(0, MU_LOW as i64),
                p: _mm_set_epi64x(0, 0x1021),
                open: _mm_set1_epi8(b'{' as i8),
            }
        };
        if (9..=16).contains(&n) {
            // The first n - 8 bytes out of the first eight; the last eight.
            let h = be_word(&bytes[..8]) >> (8 * (16 - n));
            let l = be_word(&bytes[n - 8..]);
            // SAFETY: the caller guarantees the instruction.
            let (crc, braces) = unsafe { two_words(h, l, &k) };
            // SAFETY: SSE2.
            return unsafe {
                (
                    _mm_cvtsi128_si32(crc) as u16,
                    _mm_movemask_epi8(braces) != 0,
                )
            };
        }
        let (head, rest) = bytes.split_at(n % 8);
        let mut words = rest.chunks_exact(8);
        // The first word: the first `n % 8` bytes, or the first 8.
        let first = if n >= 8 {
            let eight = be_word(&bytes[..8]);
            if head.is_empty() {
                words.next();
                eight
            } else {
                // The first eight bytes without the ones after the head: no second read.
                eight >> (64 - 8 * head.len())
            }
        } else if n > 0 {
            head_word(head)
        } else {
            return (0, false);
        };
        // SAFETY: the caller guarantees the instruction.
        let (mut crc, mut braces) = unsafe { first_step(first, &k) };
        for word in words {
            // SAFETY: as above.
            unsafe { step(&mut crc, &mut braces, be_word(word), &k) };
        }
        // SAFETY: SSE2.
        unsafe {
            (
                _mm_cvtsi128_si32(crc) as u16,
                _mm_movemask_epi8(braces) != 0,
            )
        }
    }
}

const CRC16_TABLE2: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let t = CRC16_TABLE[i];
        table[i] = (t << 8) ^ CRC16_TABLE[(t >> 8) as usize];
        i += 1;
    }
    table
};

const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn carry_less_slots_equal_the_table_ones_for_every_length_and_brace_position() {
        if !clmul::available() {
            eprintln!("no PCLMULQDQ on this CPU: nothing to compare");
            return;
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for len in 0..80 {
            for round in 0..200 {
                let mut key: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                // Some keys with braces at random places, some with bytes next to `{` (0x7a,
                // 0x7c) and 0x00/0xff, where a word-wide byte test could go wrong.
                if round % 3 == 0 && len > 0 {
                    for _ in 0..(next() % 3) {
                        let at = next() as usize % len;
                        key[at] = [b'{', b'}', 0x7a, 0x7c, 0, 0xff][next() as usize % 6];
                    }
                }
                // SAFETY: `available()` said the CPU has the instructions.
                let fast = unsafe { clmul::key_slot(&key) };
                assert_eq!(fast, key_slot(&key), "key {key:?}");
                // SAFETY: as above.
                let tag_first = unsafe { clmul::tag_first_key_slot(&key) };
                assert_eq!(tag_first, key_slot(&key), "key {key:?}");
                // SAFETY: as above.
                assert_eq!(
                    unsafe { clmul::tag_slot(&key) },
                    tag_slot(&key),
                    "key {key:?}"
                );
            }
        }
        // SAFETY: as above.
        assert_eq!(unsafe { clmul::key_slot(b"123456789") }, 0x31C3 & MAX_SLOT);
        assert_eq!(
            unsafe { clmul::key_slot(b"{user1000}.following") },
            key_slot(b"user1000")
        );
    }

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
    fn tag_prefixes_compare_like_starts_with() {
        let keys: Vec<Vec<u8>> = (0..40usize)
            .map(|n| (0..n).map(|i| b"abc"[(i * 7 + n) % 3]).collect())
            .collect();
        for key in &keys {
            for prefix in keys.iter().chain([&b"{"[..].to_vec()]) {
                assert_eq!(
                    starts_with_tag(key, prefix),
                    key.starts_with(prefix),
                    "{key:?} {prefix:?}"
                );
            }
            for n in 0..=key.len() {
                assert!(starts_with_tag(key, &key[..n]));
                let mut other = key[..n].to_vec();
                if let Some(last) = other.last_mut() {
                    *last ^= 1;
                    assert!(!starts_with_tag(key, &other));
                }
                if let Some(first) = other.first_mut() {
                    *first ^= 2;
                    assert!(!starts_with_tag(key, &other));
                }
            }
        }
        for tag in [&b"a"[..], b"user:1000", b"0123456789abcdef0123"] {
            assert_eq!(tag_slot(tag), key_slot(&[b"{", tag, b"}x"].concat()));
        }
    }

    #[test]
    fn keys_that_start_with_a_leading_tag_share_its_slot() {
        assert_eq!(leading_tag(b"{user1}.name"), Some(&b"{user1}"[..]));
        assert_eq!(leading_tag(b"{a}"), Some(&b"{a}"[..]));
        assert_eq!(leading_tag(b"{{a}}"), Some(&b"{{a}"[..]));
        for none in [&b"x{a}"[..], b"{}a", b"{a", b"", b"{", b"}{a}"] {
            assert_eq!(
                leading_tag(none),
                None,
                "{:?}",
                String::from_utf8_lossy(none)
            );
        }
        // The property the router relies on, over keys built from a small alphabet.
        let alphabet = [b'{', b'}', b'a', b'b'];
        let keys: Vec<Vec<u8>> = (0..4usize.pow(6))
            .flat_map(|n| {
                (1..=6).map(move |len| {
                    (0..len)
                        .map(|i| alphabet[(n >> (2 * i)) & 3])
                        .collect::<Vec<u8>>()
                })
            })
            .collect();
        for first in &keys {
            let Some(tag) = leading_tag(first) else {
                continue;
            };
            for other in keys.iter().filter(|k| k.starts_with(tag)) {
                assert_eq!(
                    hash_tag(other),
                    hash_tag(first),
                    "{:?} {:?}",
                    String::from_utf8_lossy(first),
                    String::from_utf8_lossy(other)
                );
            }
        }
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
    fn brace_search_finds_the_first_brace_at_every_position() {
        for len in 0..40 {
            // Two braces anywhere: the first one is found.
            for a in 0..len {
                for b in a..len {
                    let mut key = vec![b'x'; len];
                    key[a] = b'{';
                    key[b] = b'{';
                    assert_eq!(find_open_brace(&key), Some(a), "len {len} at {a} and {b}");
                }
            }
            for at in 0..len {
                let mut key = vec![b'z'; len];
                key[at] = b'{';
                if at + 3 < len {
                    key[at + 3] = b'{';
                }
                assert_eq!(find_open_brace(&key), Some(at), "len {len} at {at}");
                // Bytes one off from '{' (0x7a 'z', 0x7c '|') and high bytes never match.
                let other: Vec<u8> = (0..len).map(|i| [0x7a, 0x7c, 0xfb, 0x00][i % 4]).collect();
                assert_eq!(find_open_brace(&other), None);
            }
        }
    }

    #[test]
    fn hash_tags_are_found_at_every_position_and_length() {
        for len in 0..40usize {
            for open in 0..len {
                for close in open + 1..len {
                    let mut key = vec![b'x'; len];
                    key[open] = b'{';
                    key[close] = b'}';
                    let expected: &[u8] = if close > open + 1 {
                        &key[open + 1..close]
                    } else {
                        &key
                    };
                    assert_eq!(hash_tag(&key), expected, "len {len} {{ {open} }} {close}");
                }
            }
        }
    }

    #[test]
    fn table_crc_matches_the_crc16_crate() {
        for i in 0..2000u32 {
            let key = format!("k{i}:{}", i * 7919);
            assert_eq!(
                crc16_xmodem(key.as_bytes()),
                crc16::State::<crc16::XMODEM>::calculate(key.as_bytes())
            );
        }
    }

    #[test]
    fn every_slot_is_below_16384() {
        for i in 0..10_000u32 {
            assert!(key_slot(format!("key:{i}").as_bytes()) <= MAX_SLOT);
        }
    }
}
