//! Which priority level serves a request, computed as Envoy's load balancer base does:
//! each level's health (healthy share × overprovisioning factor, capped at 100 %), load
//! spilling to lower levels as higher ones lose health, degraded hosts taking what
//! healthy ones cannot, and panic when a level's healthy share falls below the
//! threshold (then it balances over all its hosts).

/// One level's host counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u32,
    pub healthy: u32,
    pub degraded: u32,
}

/// Per level: the percent of requests sent to its healthy and degraded hosts, and
/// whether it is in panic. Loads add up to 100.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loads {
    pub healthy: Vec<u32>,
    pub degraded: Vec<u32>,
    pub panic: Vec<bool>,
}

/// Which hosts of a level a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Healthy,
    Degraded,
    /// Panic: every host of the level, whatever its health.
    All,
}

impl Loads {
    /// `overprovisioning` in percent (Envoy's 140), `panic_threshold` in percent.
    pub fn compute(levels: &[Counts], overprovisioning: u32, panic_threshold: f64) -> Loads {
        let n = levels.len().max(1);
        let mut out = Loads {
            healthy: vec![0; n],
            degraded: vec![0; n],
            panic: vec![false; n],
        };
        let (health, degraded) = availability(levels, overprovisioning, &[]);
        let availability = health.iter().chain(&degraded).sum::<u32>().min(100);
        if availability > 0 {
            let (first_healthy, left) = distribute(&mut out.healthy, &health, 100, availability);
            let (first_degraded, left) =
                distribute(&mut out.degraded, &degraded, left, availability);
            // Rounding leftovers go to the first level with any availability.
            if left > 0 {
                match (first_healthy, first_degraded) {
                    (Some(i), _) => out.healthy[i] += left,
                    (None, Some(i)) => out.degraded[i] += left,
                    (None, None) => {}
                }
            }
        }
        if panic_threshold <= 0.0 && availability == 0 {
            // Panic disabled and nothing healthy: the load stays on P0, which has no
            // host to give.
            out.healthy[0] = 100;
            return out;
        }
        if availability < 100 {
            for (i, c) in levels.iter().enumerate() {
                out.panic[i] = in_panic(c, panic_threshold);
            }
        }
        if out.panic.iter().all(|&p| p) {
            // Every level in panic: load by each level's share of all hosts.
            let total: u32 = levels.iter().map(|c| c.total).sum();
            out.degraded.iter_mut().for_each(|d| *d = 0);
            if total == 0 {
                out.healthy.iter_mut().for_each(|h| *h = 0);
                out.healthy[0] = 100;
                return out;
            }
            let mut left = 100;
            let mut first = None;
            for (i, c) in levels.iter().enumerate() {
                if first.is_none() && c.total > 0 {
                    first = Some(i);
                }
                out.healthy[i] = 100 * c.total / total;
                left -= out.healthy[i];
            }
            if let Some(i) = first {
                out.healthy[i] += left;
            }
        }
        out
    }

    /// The loads with the `excluded` levels left out, as Envoy's `previous_priorities`
    /// spreads them: the remaining levels' health and degraded shares (capped at 100 %
    /// in sum) split 100 %; `None` when nothing remains (then the loads stand).
    pub fn excluding(
        &self,
        levels: &[Counts],
        overprovisioning: u32,
        excluded: &[bool],
    ) -> Option<Loads> {
        let (health, degraded) = availability(levels, overprovisioning, excluded);
        let total = health.iter().chain(&degraded).sum::<u32>().min(100);
        if total == 0 {
            return None;
        }
        let mut out = Loads {
            healthy: vec![0; levels.len()],
            degraded: vec![0; levels.len()],
            panic: self.panic.clone(),
        };
        let mut left = 100u32;
        while left > 0 {
            let before = left;
            for (i, &h) in health.iter().enumerate() {
                let d = left.min(h * 100 / total);
                out.healthy[i] += d;
                left -= d;
            }
            for (i, &h) in degraded.iter().enumerate() {
                let d = left.min(h * 100 / total);
                out.degraded[i] += d;
                left -= d;
            }
            if left == before {
                // Rounding left a remainder no level's share reaches: the first
                // available level takes it.
                if let Some(i) = health.iter().position(|&h| h > 0) {
                    out.healthy[i] += left;
                } else if let Some(i) = degraded.iter().position(|&h| h > 0) {
                    out.degraded[i] += left;
                }
                left = 0;
            }
        }
        Some(out)
    }

    /// The level and hosts for a request, from `roll` (uniform; only `roll % 100`
    /// counts).
    pub fn choose(&self, roll: u64) -> (usize, Source) {
        let mut r = (roll % 100) as u32;
        let source = |i: usize, s| if self.panic[i] { Source::All } else { s };
        for (i, &l) in self.healthy.iter().enumerate() {
            if r < l {
                return (i, source(i, Source::Healthy));
            }
            r -= l;
        }
        for (i, &l) in self.degraded.iter().enumerate() {
            if r < l {
                return (i, source(i, Source::Degraded));
            }
            r -= l;
        }
        (0, source(0, Source::Healthy))
    }
}

/// Each level's healthy and degraded availability in percent: its share of the level's
/// hosts times the overprovisioning factor, capped at 100; 0 for `excluded` levels.
fn availability(
    levels: &[Counts],
    overprovisioning: u32,
    excluded: &[bool],
) -> (Vec<u32>, Vec<u32>) {
    let share = |i: usize, part: u32, total: u32| -> u32 {
        if total == 0 || excluded.get(i).copied().unwrap_or(false) {
            return 0;
        }
        (u64::from(overprovisioning) * u64::from(part) / u64::from(total)).min(100) as u32
    };
    levels
        .iter()
        .enumerate()
        .map(|(i, c)| (share(i, c.healthy, c.total), share(i, c.degraded, c.total)))
        .unzip()
}

/// Gives each level as much of `total` as its availability allows, highest first.
/// Returns the first level with any availability and what is left.
fn distribute(out: &mut [u32], availability: &[u32], total: u32, sum: u32) -> (Option<usize>, u32) {
    let mut left = total;
    let mut first = None;
    for (i, &a) in availability.iter().enumerate() {
        if first.is_none() && a > 0 {
            first = Some(i);
        }
        out[i] = left.min(a * 100 / sum);
        left -= out[i];
    }
    (first, left)
}

fn in_panic(c: &Counts, threshold: f64) -> bool {
    if c.total == 0 {
        return threshold > 0.0;
    }
    let ok = 100.0 * f64::from(c.healthy + c.degraded) / f64::from(c.total);
    ok < threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(total: u32, healthy: u32, degraded: u32) -> Counts {
        Counts {
            total,
            healthy,
            degraded,
        }
    }

    #[test]
    fn a_healthy_first_level_takes_everything() {
        let l = Loads::compute(&[c(4, 4, 0), c(4, 4, 0)], 140, 50.0);
        assert_eq!(l.healthy, [100, 0]);
        assert_eq!(l.panic, [false, false]);
    }

    #[test]
    fn load_spills_over_as_envoy_documents() {
        // Envoy's priority-levels table: P0 at 50 % healthy → 70 % / 30 %.
        let l = Loads::compute(&[c(10, 5, 0), c(10, 10, 0)], 140, 50.0);
        assert_eq!(l.healthy, [70, 30]);
        // 71 % healthy × 1.4 ≥ 100: no spill.
        let l = Loads::compute(&[c(100, 72, 0), c(10, 10, 0)], 140, 50.0);
        assert_eq!(l.healthy, [100, 0]);
        // P0 at 20 %, P1 at 20 %: 28/28 normalised to 56 → 50/50.
        let l = Loads::compute(&[c(10, 2, 0), c(10, 2, 0)], 140, 50.0);
        assert_eq!(l.healthy, [50, 50]);
        assert_eq!(l.panic, [true, true]);
    }

    #[test]
    fn degraded_hosts_take_what_healthy_ones_cannot() {
        // Envoy's degraded table: P0 50 % healthy, 50 % degraded → 70 % healthy,
        // 30 % to P0's degraded hosts.
        let l = Loads::compute(&[c(10, 5, 5)], 140, 50.0);
        assert_eq!((l.healthy[0], l.degraded[0]), (70, 30));
        assert_eq!(l.choose(69), (0, Source::Healthy));
        assert_eq!(l.choose(70), (0, Source::Degraded));
    }

    #[test]
    fn panic_below_the_threshold_routes_to_all_hosts() {
        let l = Loads::compute(&[c(4, 1, 0)], 140, 50.0);
        assert_eq!(l.panic, [true]);
        assert_eq!(l.choose(3), (0, Source::All));
        // A threshold of 0 disables panic: no healthy host means no host.
        let l = Loads::compute(&[c(4, 0, 0)], 140, 0.0);
        assert_eq!((l.healthy[0], l.panic[0]), (100, false));
        assert_eq!(l.choose(0), (0, Source::Healthy));
    }

    #[test]
    fn total_panic_spreads_load_by_host_count() {
        let l = Loads::compute(&[c(1, 0, 0), c(3, 0, 0)], 140, 50.0);
        assert_eq!(l.healthy, [25, 75]);
        assert_eq!(l.panic, [true, true]);
    }

    #[test]
    fn previous_priorities_moves_the_load_off_tried_levels() {
        let levels = [c(2, 2, 0), c(2, 2, 0), c(2, 2, 0)];
        let l = Loads::compute(&levels, 140, 50.0);
        assert_eq!(l.healthy, [100, 0, 0]);
        // Envoy caps the remaining availability at 100 %: the next level takes it all.
        let next = l.excluding(&levels, 140, &[true]).unwrap();
        assert_eq!(next.healthy, [0, 100, 0]);
        let next = l.excluding(&levels, 140, &[true, true]).unwrap();
        assert_eq!(next.healthy, [0, 0, 100]);
        assert!(l.excluding(&levels, 140, &[true, true, true]).is_none());
    }

    #[test]
    fn an_empty_first_level_passes_everything_down() {
        let l = Loads::compute(&[c(0, 0, 0), c(2, 2, 0)], 140, 50.0);
        assert_eq!(l.healthy, [0, 100]);
        assert_eq!(l.choose(99), (1, Source::Healthy));
    }
}
