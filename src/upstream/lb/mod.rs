//! Load balancing: a cluster's hosts grouped by priority (and locality), with the load
//! each level takes and a [`Picker`] per group, rebuilt as one immutable snapshot when
//! hosts or their health change; a pick reads the snapshot and touches no lock but the
//! worker's own schedule.
pub mod edf;
pub mod hash;
pub mod picker;
pub mod priority;

use crate::sync::MutexExt;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, OnceLock},
};

pub use picker::Picker;
use priority::{Counts, Loads, Source};

use crate::{
    config::{LbConfig, Locality},
    upstream::{Host, host::Health},
    workers,
};

/// The hosts of a cluster as the balancer sees them.
#[derive(Debug)]
pub struct HostSet {
    /// Every host, in the order they were given (`/clusters`).
    pub all: Vec<Arc<Host>>,
    levels: Vec<Level>,
    loads: Loads,
    /// Per level, and the overprovisioning factor (for `previous_priorities`).
    level_counts: Vec<Counts>,
    overprovisioning: u32,
    pub counts: Counts,
    /// The policy balances by the request's hash.
    hashing: bool,
}

#[derive(Debug)]
struct Level {
    all: Arc<Picker>,
    healthy: Group,
    degraded: Group,
}

/// A level's healthy (or degraded) hosts: picked among directly, or by locality first.
#[derive(Debug)]
struct Group {
    hosts: Arc<Picker>,
    localities: Option<Localities>,
}

/// Locality-weighted balancing: each locality's hosts, and its effective weight.
#[derive(Debug)]
struct Localities {
    pickers: Vec<Picker>,
    weights: Vec<f64>,
    edf: Box<[OnceLock<Mutex<edf::Edf>>]>,
}

impl HostSet {
    pub fn empty() -> Self {
        Self::build(Vec::new(), &LbConfig::default(), 140)
    }

    pub fn build(all: Vec<Arc<Host>>, lb: &LbConfig, overprovisioning: u32) -> Self {
        let levels_n = all
            .iter()
            .map(|h| h.attrs().priority as usize + 1)
            .max()
            .unwrap_or(1);
        let mut by_level: Vec<Vec<Arc<Host>>> = vec![Vec::new(); levels_n];
        for h in all.iter().filter(|h| h.health() != Health::Excluded) {
            by_level[h.attrs().priority as usize].push(h.clone());
        }
        let mut counts = Vec::with_capacity(levels_n);
        let mut levels = Vec::with_capacity(levels_n);
        for hosts in by_level {
            let healthy: Vec<_> = hosts
                .iter()
                .filter(|h| h.health() == Health::Healthy)
                .cloned()
                .collect();
            let degraded: Vec<_> = hosts
                .iter()
                .filter(|h| h.health() == Health::Degraded)
                .cloned()
                .collect();
            counts.push(Counts {
                total: hosts.len() as u32,
                healthy: healthy.len() as u32,
                degraded: degraded.len() as u32,
            });
            let all_picker = Arc::new(Picker::new(hosts.clone(), lb));
            let group = |members: Vec<Arc<Host>>| {
                let localities = lb
                    .locality_weighted
                    .then(|| Localities::new(&hosts, &members, lb, overprovisioning));
                // When every host is in the group, one picker serves both.
                let picker = if members.len() == hosts.len() {
                    all_picker.clone()
                } else {
                    Arc::new(Picker::new(members, lb))
                };
                Group {
                    hosts: picker,
                    localities,
                }
            };
            levels.push(Level {
                healthy: group(healthy),
                degraded: group(degraded),
                all: all_picker,
            });
        }
        let total = Counts {
            total: counts.iter().map(|c| c.total).sum(),
            healthy: counts.iter().map(|c| c.healthy).sum(),
            degraded: counts.iter().map(|c| c.degraded).sum(),
        };
        HostSet {
            all,
            loads: Loads::compute(&counts, overprovisioning, lb.panic_threshold),
            level_counts: counts.clone(),
            overprovisioning,
            levels,
            counts: total,
            hashing: lb.policy.hashes(),
        }
    }

    /// A host for a request with the request's `hash` (for the hashing policies, which
    /// also choose the priority by it, as Envoy's do); `panicked` is set when the chosen
    /// level was in panic.
    pub fn pick(&self, hash: Option<u64>, panicked: &mut bool) -> Option<&Arc<Host>> {
        self.pick_excluding(hash, &[], panicked)
    }

    /// [`pick`](Self::pick) with the `excluded` priority levels' load moved to the
    /// others (a retry's `previous_priorities`).
    pub fn pick_excluding(
        &self,
        hash: Option<u64>,
        excluded: &[bool],
        panicked: &mut bool,
    ) -> Option<&Arc<Host>> {
        if self.all.is_empty() {
            return None;
        }
        let adjusted = if excluded.iter().any(|&e| e) {
            self.loads
                .excluding(&self.level_counts, self.overprovisioning, excluded)
        } else {
            None
        };
        let loads = adjusted.as_ref().unwrap_or(&self.loads);
        let (level, source) = loads.choose(
            hash.filter(|_| self.hashing)
                .unwrap_or_else(|| fastrand::u64(..)),
        );
        let level = &self.levels[level];
        match source {
            Source::All => {
                *panicked = true;
                level.all.pick(hash)
            }
            Source::Healthy => level.healthy.pick(hash),
            Source::Degraded => level.degraded.pick(hash),
        }
    }

    /// Per level: the percent of load to healthy and to degraded hosts.
    pub fn loads(&self) -> &Loads {
        &self.loads
    }
}

impl Group {
    fn pick(&self, hash: Option<u64>) -> Option<&Arc<Host>> {
        if let Some(l) = &self.localities
            && let Some(h) = l.pick()
        {
            return Some(h);
        }
        self.hosts.pick(hash)
    }
}

impl Localities {
    /// `level` is every host of the level, `members` the healthy (or degraded) ones.
    fn new(level: &[Arc<Host>], members: &[Arc<Host>], lb: &LbConfig, overprov: u32) -> Self {
        let mut by: BTreeMap<Locality, (u32, usize, Vec<Arc<Host>>)> = BTreeMap::new();
        for h in level {
            let a = h.attrs();
            let e = by.entry(a.locality.clone()).or_default();
            e.0 = a.locality_weight;
            e.1 += 1;
        }
        for h in members {
            if let Some(e) = by.get_mut(&h.attrs().locality) {
                e.2.push(h.clone());
            }
        }
        let mut pickers = Vec::new();
        let mut weights = Vec::new();
        for (_, (weight, total, hosts)) in by {
            let ratio = (f64::from(overprov) / 100.0 * hosts.len() as f64 / total as f64).min(1.0);
            weights.push(f64::from(weight) * ratio);
            pickers.push(Picker::new(hosts, lb));
        }
        Localities {
            pickers,
            weights,
            edf: (0..workers::count()).map(|_| OnceLock::new()).collect(),
        }
    }

    fn pick(&self) -> Option<&Arc<Host>> {
        let weights = &self.weights;
        let slot = &self.edf[workers::current() % self.edf.len()];
        let i = slot
            .get_or_init(|| Mutex::new(edf::Edf::new(weights.iter().copied().enumerate())))
            .locked()
            .pick(|i| weights[i])?;
        self.pickers[i].pick(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EdsHealth, EndpointAttrs, LbPolicy};

    fn host(port: u16, attrs: EndpointAttrs) -> Arc<Host> {
        Host::with(([127, 0, 0, 1], port).into(), None, None, attrs)
    }

    fn at(priority: u32, health: EdsHealth) -> EndpointAttrs {
        EndpointAttrs {
            priority,
            health,
            ..Default::default()
        }
    }

    fn share(set: &HostSet, port: u16, n: usize) -> usize {
        let mut p = false;
        (0..n)
            .filter(|_| set.pick(None, &mut p).unwrap().addr.port() == port)
            .count()
    }

    #[test]
    fn unhealthy_hosts_get_nothing_until_panic() {
        let lb = LbConfig::default();
        let set = HostSet::build(
            vec![
                host(1, at(0, EdsHealth::Healthy)),
                host(2, at(0, EdsHealth::Unhealthy)),
            ],
            &lb,
            140,
        );
        assert_eq!(share(&set, 2, 100), 0);
        let set = HostSet::build(
            vec![
                host(1, at(0, EdsHealth::Unhealthy)),
                host(2, at(0, EdsHealth::Unhealthy)),
            ],
            &lb,
            140,
        );
        let mut panicked = false;
        assert!(set.pick(None, &mut panicked).is_some());
        assert!(panicked);
    }

    #[test]
    fn a_lower_priority_serves_when_the_first_is_down() {
        let set = HostSet::build(
            vec![
                host(1, at(0, EdsHealth::Unhealthy)),
                host(2, at(1, EdsHealth::Healthy)),
            ],
            &LbConfig::default(),
            140,
        );
        assert_eq!(share(&set, 2, 50), 50);
    }

    #[test]
    fn localities_share_by_weight_and_health() {
        let lb = LbConfig {
            locality_weighted: true,
            policy: LbPolicy::RoundRobin,
            ..Default::default()
        };
        let loc = |zone: &str, weight, health| EndpointAttrs {
            locality: Locality {
                zone: zone.into(),
                ..Default::default()
            },
            locality_weight: weight,
            health,
            ..Default::default()
        };
        // Envoy's table: X weight 1, Y weight 2, both available → 33 % / 67 %.
        let set = HostSet::build(
            vec![
                host(1, loc("x", 1, EdsHealth::Healthy)),
                host(2, loc("y", 2, EdsHealth::Healthy)),
            ],
            &lb,
            140,
        );
        assert_eq!(share(&set, 1, 300), 100);
        // X with half its hosts healthy: 1 × 0.7 against 2 → 26 %.
        let set = HostSet::build(
            vec![
                host(1, loc("x", 1, EdsHealth::Healthy)),
                host(3, loc("x", 1, EdsHealth::Unhealthy)),
                host(2, loc("y", 2, EdsHealth::Healthy)),
            ],
            &lb,
            140,
        );
        let x = share(&set, 1, 2700);
        assert_eq!(x, 700, "0.7 / 2.7 of the picks");
    }
}
