//! The Event Hubs partition-key hash.
//!
//! The service (and every official SDK) maps a partition key to a partition with
//! Bob Jenkins' lookup3 `hashlittle2` over the UTF-8 bytes of the key, both seeds 0,
//! folds the two 32-bit results into a signed 16-bit value and takes
//! `|hash % partition_count|`. This module is an independent implementation of that
//! published algorithm; the test vectors are the cross-SDK ones, so a key lands on the
//! same partition here as on Azure.
//!
//! Two users: Conveyor's Event Hubs producer, which sends keyed messages
//! straight to their partition in batches of many keys (as the official
//! SDKs' buffered producers do), and the local test broker, which routes
//! keyed sends as the service would.

/// The partition index (0-based) a key is assigned to when a hub has `partitions` partitions.
pub fn partition_for_key(key: &str, partitions: u32) -> u32 {
    if partitions == 0 {
        return 0;
    }
    let h = key_hash(key) as i32;
    (h % partitions as i32).unsigned_abs()
}

/// The signed 16-bit key hash the service uses.
pub fn key_hash(key: &str) -> i16 {
    let (primary, secondary) = hashlittle2(key.as_bytes(), 0, 0);
    (primary ^ secondary) as u16 as i16
}

#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    // lookup3 `mix()`: six rounds of subtract / xor-rotate / add.
    for (x, y, z, r) in [(0u8, 2u8, 1u8, 4u32), (1, 0, 2, 6), (2, 1, 0, 8), (0, 2, 1, 16), (1, 0, 2, 19), (2, 1, 0, 4)]
    {
        let mut v = [*a, *b, *c];
        let (xi, yi, zi) = (x as usize, y as usize, z as usize);
        v[xi] = v[xi].wrapping_sub(v[yi]);
        v[xi] ^= v[yi].rotate_left(r);
        v[yi] = v[yi].wrapping_add(v[zi]);
        *a = v[0];
        *b = v[1];
        *c = v[2];
    }
}

#[inline]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    // lookup3 `final()`: xor, then subtract a rotation, seven times.
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// lookup3 `hashlittle2`, byte-wise (endianness-independent) reading: returns `(c, b)`.
fn hashlittle2(data: &[u8], seed_c: u32, seed_b: u32) -> (u32, u32) {
    let init = 0xdead_beef_u32.wrapping_add(data.len() as u32).wrapping_add(seed_c);
    let (mut a, mut b, mut c) = (init, init, init.wrapping_add(seed_b));

    // Little-endian word from up to four bytes (missing bytes count as zero).
    let word = |bytes: &[u8]| -> u32 {
        bytes.iter().take(4).enumerate().fold(0u32, |acc, (i, &byte)| acc | (u32::from(byte) << (8 * i)))
    };

    let mut rest = data;
    // Every full 12-byte block except the last one goes through `mix`.
    while rest.len() > 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    if rest.is_empty() {
        // Zero-length tail: no final mixing.
        return (c, b);
    }
    let chunk =
        |from: usize| -> u32 { if rest.len() > from { word(&rest[from..rest.len().min(from + 4)]) } else { 0 } };
    a = a.wrapping_add(chunk(0));
    b = b.wrapping_add(chunk(4));
    c = c.wrapping_add(chunk(8));
    final_mix(&mut a, &mut b, &mut c);
    (c, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cross-SDK vectors (.NET `PartitionResolverTests`, also used by the Rust SDK).
    #[test]
    fn matches_service_vectors() {
        let cases: &[(&str, i16)] = &[
            ("7", -15263),
            ("131", 30562),
            ("7149583486996073602", 12977),
            ("FWfAT", -22341),
            ("sOdeEAsyQoEuEFPGerWO", -6503),
            ("FAyAIctPeCgmiwLKbJcyswoHglHVjQdvtBowLACDNORsYvOcLddNJYDmhAVkbyLOrHTKLneMNcbgWVlasVywOByANjs", 5226),
            (
                "1XYM6!(7(lF5wq4k4m*e$Nc!1ezLJv*1YK1Y-C^*&B$O)lq^iUkG(TNzXG;Zi#z2Og*Qq0#^*k):vXh$3,C7We7%W0meJ;b3,rQCg^J;^twXgs5E$$hWKxqp",
                23950,
            ),
            (
                "E(x;RRIaQcJs*P;D&jTPau-4K04oqr:lF6Z):ERpo&;9040qyV@G1_c9mgOs-8_8/10Fwa-7b7-yP!T-!IH&968)FWuI;(^g$2fN;)HJ^^yTn:",
                -29304,
            ),
            ("!c*_!I@1^c", 15372),
            ("p4*!jioeO/z-!-;w:dh", -3104),
            ("$0cb", 26269),
            ("-4189260826195535198", 453),
        ];
        for (key, want) in cases {
            assert_eq!(key_hash(key), *want, "key {key:?}");
        }
    }

    #[test]
    fn partition_in_range_and_stable() {
        for n in 1..=32 {
            for key in ["", "7", "FWfAT", "$0cb", "p4*!jioeO/z-!-;w:dh", "k1"] {
                let p = partition_for_key(key, n);
                assert!(p < n);
                assert_eq!(p, partition_for_key(key, n));
            }
        }
        // -15263 % 4 = -3 → 3
        assert_eq!(partition_for_key("7", 4), 3);
    }
}
