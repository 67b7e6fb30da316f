//! Consistent hashing: Envoy's ring hash (each host hashed onto a ring in proportion to
//! its weight; a request goes to the first host at or after its hash) and Maglev (a
//! lookup table filled by each host's permutation, weight-proportionally). Hosts are
//! keyed by `ip:port` (or their hostname with `use_hostname_for_hashing`) with xxHash64,
//! as Envoy keys them, so a key lands on the same host as it would in Envoy, and when
//! one of n hosts leaves only about 1/n of keys move.
use std::sync::Arc;

use xxhash_rust::xxh64::xxh64;

use crate::upstream::Host;

/// How a host is named on the ring or in the table.
pub fn host_key(h: &Host, use_hostname: bool) -> String {
    if use_hostname && let Some(name) = &h.hostname {
        return name.to_string();
    }
    match &h.pipe {
        Some(p) => p.display().to_string(),
        None => h.addr.to_string(),
    }
}

/// Each host's share of the total weight.
fn normalized(hosts: &[Arc<Host>]) -> Vec<f64> {
    let total: f64 = hosts.iter().map(|h| f64::from(h.weight())).sum();
    hosts
        .iter()
        .map(|h| f64::from(h.weight()) / total)
        .collect()
}

#[derive(Debug)]
pub struct Ring {
    /// (hash, index into the host list), sorted by hash.
    entries: Vec<(u64, u32)>,
}

impl Ring {
    pub fn new(hosts: &[Arc<Host>], min_size: u64, max_size: u64, use_hostname: bool) -> Self {
        if hosts.is_empty() {
            return Ring {
                entries: Vec::new(),
            };
        }
        let weights = normalized(hosts);
        let min_weight = weights.iter().copied().fold(f64::INFINITY, f64::min);
        // Enough entries that the lightest host gets a whole number of them, within
        // the maximum ring size.
        let scale = ((min_weight * min_size as f64).ceil() / min_weight).min(max_size as f64);
        let mut entries = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0, 0.0);
        for (i, (h, w)) in hosts.iter().zip(&weights).enumerate() {
            let key = host_key(h, use_hostname);
            target += scale * w;
            let mut n = 0u64;
            while current < target {
                let hash = xxh64(format!("{key}_{n}").as_bytes(), 0);
                entries.push((hash, i as u32));
                n += 1;
                current += 1.0;
            }
        }
        entries.sort_by_key(|e| e.0);
        Ring { entries }
    }

    /// The index of the host for `hash`: the first entry at or after it, wrapping.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let i = self.entries.partition_point(|e| e.0 < hash);
        let e = self.entries.get(i).unwrap_or(&self.entries[0]);
        Some(e.1 as usize)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[derive(Debug)]
pub struct Maglev {
    /// Host index per slot.
    table: Vec<u32>,
}

impl Maglev {
    /// `size` must be prime (checked when the config is compiled).
    pub fn new(hosts: &[Arc<Host>], size: u64, use_hostname: bool) -> Self {
        if hosts.is_empty() {
            return Maglev { table: Vec::new() };
        }
        struct Entry {
            /// The host's index in `hosts`.
            host: u32,
            offset: u64,
            skip: u64,
            weight: f64,
            target: f64,
            next: u64,
        }
        let weights = normalized(hosts);
        let max_weight = weights.iter().copied().fold(0.0, f64::max);
        // Hosts take their turns in the order of their hash keys, as in Envoy: the table
        // must not depend on the order the hosts were listed or discovered in.
        let mut keyed: Vec<(String, usize)> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (host_key(h, use_hostname), i))
            .collect();
        keyed.sort();
        let mut entries: Vec<Entry> = keyed
            .iter()
            .map(|(key, i)| Entry {
                host: *i as u32,
                offset: xxh64(key.as_bytes(), 0) % size,
                skip: xxh64(key.as_bytes(), 1) % (size - 1) + 1,
                weight: weights[*i],
                target: 0.0,
                next: 0,
            })
            .collect();
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; size as usize];
        let mut filled = 0u64;
        let mut iteration = 1u64;
        while filled < size {
            for e in entries.iter_mut() {
                if filled >= size {
                    break;
                }
                // A host of the heaviest weight takes a slot every round; one of a third
                // of it every third round.
                if (iteration as f64) * e.weight < e.target {
                    continue;
                }
                e.target += max_weight;
                let mut slot = (e.offset + e.skip * e.next) % size;
                while table[slot as usize] != EMPTY {
                    e.next += 1;
                    slot = (e.offset + e.skip * e.next) % size;
                }
                table[slot as usize] = e.host;
                e.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Maglev { table }
    }

    pub fn pick(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(hash % self.table.len() as u64) as usize] as usize)
    }
}

/// Whether `n` is prime (Maglev's `table_size` must be).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointAttrs;

    fn hosts(n: u16) -> Vec<Arc<Host>> {
        (0..n)
            .map(|i| {
                Host::with(
                    ([10, 0, 0, i as u8 + 1], 80).into(),
                    None,
                    None,
                    EndpointAttrs::default(),
                )
            })
            .collect()
    }

    type Pick = Box<dyn Fn(u64) -> usize>;

    /// The share of 10,000 keys that move when the last of `n` hosts leaves.
    fn moved(build: impl Fn(&[Arc<Host>]) -> Pick, n: u16) -> f64 {
        let all = hosts(n);
        let fewer = &all[..n as usize - 1];
        let (before, after) = (build(&all), build(fewer));
        let keys = 10_000;
        let moved = (0..keys)
            .filter(|k| {
                let hash = xxh64(format!("user-{k}").as_bytes(), 0);
                !Arc::ptr_eq(&all[before(hash)], &fewer[after(hash)])
            })
            .count();
        moved as f64 / keys as f64
    }

    fn ring(hosts: &[Arc<Host>]) -> Pick {
        let r = Ring::new(hosts, 1024, 8 << 20, false);
        Box::new(move |k| r.pick(k).unwrap())
    }

    fn maglev(hosts: &[Arc<Host>]) -> Pick {
        let m = Maglev::new(hosts, 65537, false);
        Box::new(move |k| m.pick(k).unwrap())
    }

    #[test]
    fn ring_hash_moves_the_departed_hosts_keys_and_a_few_more() {
        // Envoy's ring gives each remaining host more entries (1024 / 4 rather than
        // 1024 / 5), so beyond the departed host's fifth some keys change hands.
        let m = moved(ring, 5);
        assert!(m > 0.2 - 0.03 && m < 0.2 + 0.15, "{m}");
    }

    #[test]
    fn maglev_moves_about_one_nth_of_keys() {
        let m = moved(maglev, 5);
        assert!(m < 0.2 + 0.05, "{m}");
    }

    #[test]
    fn ring_size_follows_the_minimum_and_weights() {
        let hs = hosts(3);
        assert_eq!(Ring::new(&hs, 1024, 8 << 20, false).len(), 1026);
        assert_eq!(Ring::new(&hs, 1024, 512, false).len(), 512);
    }

    #[test]
    fn maglev_table_shares_slots_by_weight() {
        let hs: Vec<_> = [1u32, 3]
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                Host::with(
                    ([10, 0, 0, i as u8 + 1], 80).into(),
                    None,
                    None,
                    EndpointAttrs {
                        weight,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let m = Maglev::new(&hs, 65537, false);
        let heavy = m.table.iter().filter(|&&i| i == 1).count() as f64 / 65537.0;
        assert!((heavy - 0.75).abs() < 0.01, "{heavy}");
        assert!(is_prime(65537) && !is_prime(65536));
    }

    #[test]
    fn maglev_table_does_not_depend_on_host_order() {
        // Ports whose text order differs from the list order, as ephemeral test ports
        // do: Envoy builds from hosts sorted by their hash key.
        let hs: Vec<Arc<Host>> = [40001u16, 3999, 52000, 41000]
            .iter()
            .map(|&p| {
                Host::with(
                    ([127, 0, 0, 1], p).into(),
                    None,
                    None,
                    EndpointAttrs::default(),
                )
            })
            .collect();
        let mut reversed = hs.clone();
        reversed.reverse();
        let a = Maglev::new(&hs, 257, false);
        let b = Maglev::new(&reversed, 257, false);
        for slot in 0..257 {
            let (x, y) = (a.table[slot] as usize, b.table[slot] as usize);
            assert_eq!(hs[x].addr, reversed[y].addr, "slot {slot}");
        }
    }
}
