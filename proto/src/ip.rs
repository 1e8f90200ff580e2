//! Address blocks and IP allow/deny lists: the part of the domain model
//! that says which client addresses may connect.
//!
//! A list compiles into sorted, merged address ranges ([`IpSet`]); a lookup
//! is a binary search — at most 17 comparisons for 100,000 blocks, no
//! allocation, and less memory than a bit trie (two `u128` per merged
//! range). IPv4 and IPv4-mapped IPv6 addresses are one space.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// An address block (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or address/prefix"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0-{max}"))?,
        };
        Ok(Cidr { net, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// One number space for both families: IPv4 as IPv4-mapped IPv6.
fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (lo, hi) = self.range();
        (lo..=hi).contains(&key(ip))
    }

    /// First and last address, in the shared number space.
    fn range(&self) -> (u128, u128) {
        let (net, host_bits) = match self.net {
            IpAddr::V4(v4) => (key(IpAddr::V4(v4)), 32 - u32::from(self.prefix)),
            IpAddr::V6(v6) => (u128::from(v6), 128 - u32::from(self.prefix)),
        };
        let host = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        (net & !host, (net & !host) | host)
    }
}

/// A set of address blocks, compiled for lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    /// Sorted, non-overlapping, non-adjacent `[first, last]` ranges.
    ranges: Vec<(u128, u128)>,
}

impl IpSet {
    pub fn new(blocks: impl IntoIterator<Item = Cidr>) -> IpSet {
        let mut r: Vec<(u128, u128)> = blocks.into_iter().map(|c| c.range()).collect();
        r.sort_unstable();
        let mut ranges: Vec<(u128, u128)> = Vec::with_capacity(r.len());
        for (lo, hi) in r {
            match ranges.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => ranges.push((lo, hi)),
            }
        }
        ranges.shrink_to_fit();
        IpSet { ranges }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Merged ranges held (for sizing and tests).
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let k = key(ip);
        // The last range starting at or before k.
        let i = self.ranges.partition_point(|(lo, _)| *lo <= k);
        i > 0 && self.ranges[i - 1].1 >= k
    }
}

/// Allow and deny lists as written (in a bundle, a config file or gwctl).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpLists {
    /// When non-empty, only these blocks may connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// These blocks may not connect (checked first: deny wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// Most blocks in one list.
pub const MAX_BLOCKS: usize = 1_000_000;

impl IpLists {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Parses every block; problems are pushed to `errs` prefixed with `at`.
    pub fn compile(&self, at: &str, errs: &mut Vec<String>) -> IpFilter {
        let mut set = |name: &str, list: &[String]| {
            if list.len() > MAX_BLOCKS {
                errs.push(format!("{at}.{name}: at most {MAX_BLOCKS} blocks"));
            }
            let mut bad = 0;
            let blocks: Vec<Cidr> = list
                .iter()
                .filter_map(|s| match s.parse() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        // Ten examples are enough to fix a file.
                        bad += 1;
                        if bad <= 10 {
                            errs.push(format!("{at}.{name}: {e}"));
                        }
                        None
                    }
                })
                .collect();
            if bad > 10 {
                errs.push(format!("{at}.{name}: {} more invalid blocks", bad - 10));
            }
            IpSet::new(blocks)
        };
        IpFilter {
            allow: set("allow", &self.allow),
            deny: set("deny", &self.deny),
        }
    }

    /// `+ deny 10.0.0.0/8`, `- allow …`: one line per change.
    pub fn diff(old: &IpLists, new: &IpLists, out: &mut Vec<String>) {
        for (name, o, n) in [
            ("allow", &old.allow, &new.allow),
            ("deny", &old.deny, &new.deny),
        ] {
            for b in n.iter().filter(|b| !o.contains(b)) {
                out.push(format!("+ {name} {b}"));
            }
            for b in o.iter().filter(|b| !n.contains(b)) {
                out.push(format!("- {name} {b}"));
            }
        }
    }

    /// Reads the line format of an IP list file: `allow BLOCK` or
    /// `deny BLOCK` per line, `#` comments, blank lines ignored.
    pub fn parse_lines(text: &str, errs: &mut Vec<String>) -> IpLists {
        let mut lists = IpLists::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match line.split_once(char::is_whitespace) {
                Some(("allow", b)) => lists.allow.push(b.trim().to_string()),
                Some(("deny", b)) => lists.deny.push(b.trim().to_string()),
                _ => errs.push(format!(
                    "line {}: {line:?} is not `allow BLOCK` or `deny BLOCK`",
                    n + 1
                )),
            }
        }
        lists
    }
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRefusal {
    /// In a deny list.
    Denied,
    /// An allow list exists and the address is not in it.
    NotAllowed,
}

/// Compiled lists: deny first, then the allow list when there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpFilter {
    pub allow: IpSet,
    pub deny: IpSet,
}

impl IpFilter {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), IpRefusal> {
        if self.deny.contains(ip) {
            Err(IpRefusal::Denied)
        } else if !self.allow.is_empty() && !self.allow.contains(ip) {
            Err(IpRefusal::NotAllowed)
        } else {
            Ok(())
        }
    }
}

/// `::ffff:a.b.c.d` is the IPv4 address it maps (for display).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(blocks: &[&str]) -> IpSet {
        IpSet::new(blocks.iter().map(|b| b.parse().unwrap()))
    }

    #[test]
    fn blocks_of_both_families_match_what_they_cover() {
        let s = set(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "0.0.0.0/32"]);
        assert!(s.contains(ip("10.255.255.255")));
        assert!(s.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped is IPv4");
        assert!(!s.contains(ip("11.0.0.0")));
        assert!(s.contains(ip("192.168.1.7")));
        assert!(!s.contains(ip("192.168.1.8")));
        assert!(s.contains(ip("2001:db8:ffff::1")));
        assert!(!s.contains(ip("2001:db9::")));
        assert!(!s.contains(ip("::1")));
        let all = set(&["0.0.0.0/0"]);
        assert!(all.contains(ip("255.255.255.255")) && !all.contains(ip("2001::1")));
        let v6all = set(&["::/0"]);
        assert!(v6all.contains(ip("1.2.3.4")) && v6all.contains(ip("2001::1")));
    }

    #[test]
    fn overlapping_and_adjacent_blocks_merge() {
        let s = set(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "10.0.3.0/24"]);
        assert_eq!(s.ranges(), 2);
        assert!(s.contains(ip("10.0.1.255")) && !s.contains(ip("10.0.2.0")));
    }

    #[test]
    fn deny_wins_and_an_allow_list_restricts() {
        let mut errs = Vec::new();
        let f = IpLists {
            allow: vec!["10.0.0.0/8".into()],
            deny: vec!["10.6.0.0/16".into()],
        }
        .compile("ip_lists", &mut errs);
        assert!(errs.is_empty());
        assert_eq!(f.check(ip("10.1.1.1")), Ok(()));
        assert_eq!(f.check(ip("10.6.1.1")), Err(IpRefusal::Denied));
        assert_eq!(f.check(ip("8.8.8.8")), Err(IpRefusal::NotAllowed));
        assert_eq!(IpFilter::default().check(ip("8.8.8.8")), Ok(()));
    }

    #[test]
    fn bad_blocks_and_lines_are_reported() {
        let mut errs = Vec::new();
        IpLists {
            allow: vec!["10.0.0.0/33".into(), "bogus".into()],
            deny: vec![],
        }
        .compile("ip_lists", &mut errs);
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("prefix must be 0-32"), "{errs:?}");
        let mut errs = Vec::new();
        let l = IpLists::parse_lines(
            "# office\nallow 10.0.0.0/8\n\ndeny 1.2.3.4 # abuse\nblock 5.5.5.5\n",
            &mut errs,
        );
        assert_eq!(l.allow, ["10.0.0.0/8"]);
        assert_eq!(l.deny, ["1.2.3.4"]);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("line 5"), "{errs:?}");
    }

    proptest::proptest! {
        #[test]
        fn the_set_agrees_with_checking_every_block(
            blocks in proptest::collection::vec((proptest::prelude::any::<u32>(), 0u8..=32), 0..40),
            probe in proptest::prelude::any::<u32>(),
        ) {
            let cidrs: Vec<Cidr> = blocks
                .iter()
                .map(|(a, p)| format!("{}/{p}", std::net::Ipv4Addr::from(*a)).parse().unwrap())
                .collect();
            let s = IpSet::new(cidrs.iter().copied());
            let ip = IpAddr::V4(probe.into());
            proptest::prop_assert_eq!(s.contains(ip), cidrs.iter().any(|c| c.contains(ip)));
        }
    }
}
