//! Consistent hashing by rendezvous (highest random weight): each endpoint
//! scores `mix(user ^ hash(endpoint))` and the highest score wins.
//!
//! Why rendezvous rather than a ring with virtual nodes: services have few
//! endpoints (O(N) scoring is cheaper than a ring lookup's cache misses at
//! N < ~50), the result is exactly "1/N of users move" when an endpoint is
//! added or removed, and a failed endpoint's users spread evenly over the
//! rest via the second-ranked choice. The hash is fixed (FNV-1a + a
//! SplitMix64 finaliser), so every gateway process agrees on the mapping.

/// FNV-1a 64 of an endpoint key (its `host:port`).
pub(crate) fn key_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64 finaliser: a fast bijective mixer with good avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Score of one endpoint for one user.
pub(crate) fn score(user: u64, endpoint_hash: u64) -> u64 {
    mix(mix(user) ^ endpoint_hash)
}

/// Endpoints ordered best-first for `user`. Ties (practically impossible)
/// break on the endpoint hash so the order is total and deterministic.
pub(crate) fn rank<T>(user: u64, endpoints: &[T], hash_of: impl Fn(&T) -> u64) -> Vec<&T> {
    let mut scored: Vec<(u64, u64, &T)> = endpoints
        .iter()
        .map(|e| {
            let h = hash_of(e);
            (score(user, h), h, e)
        })
        .collect();
    scored.sort_unstable_by_key(|e| std::cmp::Reverse((e.0, e.1)));
    scored.into_iter().map(|(_, _, e)| e).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owner(user: u64, eps: &[String]) -> String {
        rank(user, eps, |e| key_hash(e))[0].clone()
    }

    fn eps(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:7000")).collect()
    }

    #[test]
    fn adding_one_of_n_moves_about_one_nth_and_only_to_the_new_one() {
        let (before, after) = (eps(4), eps(5));
        let users = 20_000u64;
        let mut moved = 0;
        for u in 0..users {
            let (a, b) = (owner(u, &before), owner(u, &after));
            if a != b {
                assert_eq!(b, after[4], "a user may only move to the added endpoint");
                moved += 1;
            }
        }
        let frac = moved as f64 / users as f64;
        assert!((0.17..0.23).contains(&frac), "moved {frac}, expected ~0.2");
    }

    #[test]
    fn load_is_balanced() {
        let e = eps(4);
        let mut counts = std::collections::HashMap::new();
        for u in 0..40_000u64 {
            *counts.entry(owner(u, &e)).or_insert(0u32) += 1;
        }
        for (_, c) in counts {
            assert!((8_500..11_500).contains(&c), "unbalanced: {c}");
        }
    }

    proptest! {
        #[test]
        fn removing_an_endpoint_moves_only_its_users(user in any::<u64>(), n in 2usize..12, gone in 0usize..12) {
            let all = eps(n);
            let gone = gone % n;
            let mut rest = all.clone();
            rest.remove(gone);
            let before = owner(user, &all);
            let after = owner(user, &rest);
            if before != all[gone] {
                prop_assert_eq!(before, after);
            }
        }
    }
}
