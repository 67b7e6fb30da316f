//! Choosing one host from a list, by the cluster's policy: round robin (earliest
//! deadline first when weights differ), least request (the least loaded of a few random
//! hosts, or EDF on weight / (active + 1)^bias when weights differ), random.
use crate::sync::MutexExt;
use std::sync::{
    Arc, Mutex, OnceLock,
    atomic::{AtomicUsize, Ordering},
};

use super::{
    edf::Edf,
    hash::{Maglev, Ring},
};
use crate::{
    config::{LbConfig, LbPolicy},
    upstream::Host,
    workers,
};

#[derive(Debug)]
pub struct Picker {
    hosts: Vec<Arc<Host>>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// Equal weights: in turn, one counter shared by the workers.
    RoundRobin(AtomicUsize),
    /// Each worker keeps its own schedule, as Envoy's per-worker balancers do.
    Weighted(PerWorker),
    LeastRequest {
        choices: u32,
        full_scan: bool,
    },
    WeightedLeast {
        bias: f64,
        edf: PerWorker,
    },
    Random,
    Ring(Ring),
    Maglev(Maglev),
}

/// One EDF schedule per worker, made on the worker's first pick.
#[derive(Debug)]
struct PerWorker(Box<[OnceLock<Mutex<Edf>>]>);

impl PerWorker {
    fn new() -> Self {
        PerWorker((0..workers::count()).map(|_| OnceLock::new()).collect())
    }

    fn mine(&self, init: impl FnOnce() -> Edf) -> &Mutex<Edf> {
        self.0[workers::current() % self.0.len()].get_or_init(|| Mutex::new(init()))
    }
}

impl Picker {
    pub fn new(hosts: Vec<Arc<Host>>, lb: &LbConfig) -> Self {
        let weighted = hosts.windows(2).any(|w| w[0].weight() != w[1].weight());
        let by_name = lb.use_hostname_for_hashing;
        let kind = match lb.policy {
            LbPolicy::RingHash { min_size, max_size } => {
                Kind::Ring(Ring::new(&hosts, min_size, max_size, by_name))
            }
            LbPolicy::Maglev { table_size } => {
                Kind::Maglev(Maglev::new(&hosts, table_size, by_name))
            }
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided if weighted => {
                Kind::Weighted(PerWorker::new())
            }
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided => {
                Kind::RoundRobin(AtomicUsize::new(0))
            }
            LbPolicy::LeastRequest {
                active_request_bias,
                ..
            } if weighted => Kind::WeightedLeast {
                bias: active_request_bias,
                edf: PerWorker::new(),
            },
            LbPolicy::LeastRequest {
                choice_count,
                full_scan,
                ..
            } => Kind::LeastRequest {
                choices: choice_count,
                full_scan,
            },
            LbPolicy::Random => Kind::Random,
        };
        Picker { hosts, kind }
    }

    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// A host; `hash` is the request's (route `hash_policy`), for the hashing policies
    /// (without one they pick at random, as Envoy does).
    pub fn pick(&self, hash: Option<u64>) -> Option<&Arc<Host>> {
        let n = self.hosts.len();
        if n == 0 {
            return None;
        }
        let i = match &self.kind {
            Kind::Ring(r) => r.pick(hash.unwrap_or_else(|| fastrand::u64(..)))?,
            Kind::Maglev(m) => m.pick(hash.unwrap_or_else(|| fastrand::u64(..)))?,
            Kind::RoundRobin(next) => next.fetch_add(1, Ordering::Relaxed) % n,
            Kind::Weighted(edf) => {
                let weight = |i: usize| f64::from(self.hosts[i].weight());
                let mut edf = edf
                    .mine(|| Edf::new((0..n).map(|i| (i, weight(i)))))
                    .locked();
                edf.pick(weight)?
            }
            Kind::LeastRequest { choices, full_scan } => {
                if *full_scan {
                    (0..n).min_by_key(|&i| self.hosts[i].active())?
                } else {
                    let mut best = fastrand::usize(..n);
                    for _ in 1..*choices {
                        let other = fastrand::usize(..n);
                        if self.hosts[other].active() < self.hosts[best].active() {
                            best = other;
                        }
                    }
                    best
                }
            }
            Kind::WeightedLeast { bias, edf } => {
                let weight = |i: usize| {
                    let h = &self.hosts[i];
                    let w = f64::from(h.weight());
                    match *bias {
                        0.0 => w,
                        1.0 => w / f64::from(h.active() + 1),
                        b => w / f64::from(h.active() + 1).powf(b),
                    }
                };
                let mut edf = edf
                    .mine(|| Edf::new((0..n).map(|i| (i, weight(i)))))
                    .locked();
                edf.pick(weight)?
            }
            Kind::Random => fastrand::usize(..n),
        };
        Some(&self.hosts[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointAttrs;

    fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| {
                Host::with(
                    ([127, 0, 0, 1], i as u16 + 1).into(),
                    None,
                    None,
                    EndpointAttrs {
                        weight,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    fn lb(policy: LbPolicy) -> LbConfig {
        LbConfig {
            policy,
            ..Default::default()
        }
    }

    /// A two-choice least-request picker (comparing every host with `full_scan`).
    fn least(hosts: Vec<Arc<Host>>, full_scan: bool) -> Picker {
        Picker::new(
            hosts,
            &lb(LbPolicy::LeastRequest {
                choice_count: 2,
                active_request_bias: 1.0,
                full_scan,
            }),
        )
    }

    fn ports(p: &Picker, n: usize) -> Vec<u16> {
        (0..n).map(|_| p.pick(None).unwrap().addr.port()).collect()
    }

    #[test]
    fn round_robin_takes_turns_and_weights_count() {
        let p = Picker::new(hosts(&[1, 1, 1]), &lb(LbPolicy::RoundRobin));
        assert_eq!(ports(&p, 6), [1, 2, 3, 1, 2, 3]);
        let p = Picker::new(hosts(&[1, 3]), &lb(LbPolicy::RoundRobin));
        let got = ports(&p, 8);
        assert_eq!(got.iter().filter(|&&x| x == 2).count(), 6, "{got:?}");
    }

    #[test]
    fn least_request_prefers_the_idle_host() {
        let hs = hosts(&[1, 1]);
        let busy: Vec<_> = (0..5).map(|_| hs[0].track()).collect();
        let p = least(hs, true);
        assert!(ports(&p, 10).iter().all(|&x| x == 2));
        drop(busy);
    }

    #[test]
    fn weighted_least_request_divides_weight_by_load() {
        let hs = hosts(&[2, 1]);
        // Host 1 (weight 2) with 3 in flight weighs 0.5, host 2 weighs 1.
        let _busy: Vec<_> = (0..3).map(|_| hs[0].track()).collect();
        let p = least(hs, false);
        let got = ports(&p, 30);
        let second = got.iter().filter(|&&x| x == 2).count();
        assert!((18..=22).contains(&second), "{got:?}");
    }

    #[test]
    fn two_choices_favour_the_less_loaded_host() {
        let hs = hosts(&[1, 1, 1, 1]);
        let _busy: Vec<_> = (0..3)
            .flat_map(|i| (0..10).map(move |_| i))
            .map(|i| hs[i].track())
            .collect();
        let p = least(hs, false);
        // The idle host wins whenever it is one of the two sampled: 7 in 16 picks.
        let idle = ports(&p, 4000).iter().filter(|&&x| x == 4).count();
        assert!((1550..=1950).contains(&idle), "{idle}");
    }
}
