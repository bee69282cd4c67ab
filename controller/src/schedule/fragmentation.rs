//! Fragmentation-aware placement (FGD, Weng et al., USENIX ATC '23).
//!
//! A node's fragmentation for a kind of task is the free GPU capacity that
//! kind cannot use there; its expected fragmentation weighs that over the
//! workload's mix of tasks. A placement is chosen to grow the expected
//! fragmentation least, which keeps capacity usable for the tasks that are
//! likely to come.

use std::collections::HashMap;

/// One kind of task in the expected workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskClass {
    /// GPUs per task; 0 for CPU-only tasks.
    pub count: u32,
    /// Percent of each GPU (100 for whole GPUs).
    pub cores: u32,
    /// Node CPU (milli) and memory (MiB) the task needs besides GPUs.
    pub cpu_milli: u64,
    pub memory_mib: u64,
    /// Share of the workload.
    pub weight: f64,
}

/// The expected mix of tasks: at most 64 classes (a feasibility mask is a u64).
#[derive(Debug, Clone, Default)]
pub struct Workload {
    classes: Vec<TaskClass>,
}

pub const MAX_CLASSES: usize = 64;

impl Workload {
    /// Groups `(count, cores, cpu, memory)` task samples by `(count, cores)`;
    /// CPU and memory are the class means. CPU-only tasks leave GPUs idle,
    /// not fragmented, and are left out. The rarest classes beyond
    /// [`MAX_CLASSES`] are dropped.
    pub fn from_tasks(tasks: impl IntoIterator<Item = (u32, u32, u64, u64)>) -> Self {
        let mut groups: HashMap<(u32, u32), (u64, u64, u64)> = HashMap::new();
        let mut total = 0u64;
        for (count, cores, cpu, mem) in tasks {
            if count == 0 {
                continue;
            }
            let g = groups.entry((count, cores)).or_default();
            g.0 += 1;
            g.1 += cpu;
            g.2 += mem;
            total += 1;
        }
        let mut classes: Vec<TaskClass> = groups
            .into_iter()
            .map(|((count, cores), (n, cpu, mem))| TaskClass {
                count,
                cores,
                cpu_milli: cpu / n,
                memory_mib: mem / n,
                weight: n as f64 / total.max(1) as f64,
            })
            .collect();
        classes.sort_by(|a, b| {
            b.weight
                .total_cmp(&a.weight)
                .then((a.count, a.cores).cmp(&(b.count, b.cores)))
        });
        classes.truncate(MAX_CLASSES);
        Self { classes }
    }

    pub fn classes(&self) -> &[TaskClass] {
        &self.classes
    }

    /// Bit i set when class i's CPU and memory fit in what the node has free.
    pub fn host_fit_mask(&self, cpu_free: u64, memory_free: u64) -> u64 {
        self.classes
            .iter()
            .enumerate()
            .filter(|(_, c)| c.cpu_milli <= cpu_free && c.memory_mib <= memory_free)
            .fold(0, |m, (i, _)| m | (1 << i))
    }

    /// Expected fragmentation, in percent-of-a-GPU units, of a node whose GPUs
    /// have `free` percent free each.
    pub fn fragmentation(&self, free: &[u32], host_fit: u64) -> f64 {
        let total: u32 = free.iter().sum();
        self.classes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let unusable = if host_fit & (1 << i) == 0 {
                    // The task cannot run here at all: every free GPU share is lost to it.
                    total
                } else if c.cores >= 100 {
                    let whole = free.iter().filter(|f| **f >= 100).count() as u32;
                    if whole < c.count {
                        total
                    } else {
                        free.iter().filter(|f| **f < 100).sum()
                    }
                } else {
                    free.iter().filter(|f| **f < c.cores).sum()
                };
                c.weight * f64::from(unusable)
            })
            .sum()
    }
}

/// Nodes with more GPUs than this are computed directly, not memoised.
const CACHED_GPUS: usize = 16;

/// [`Workload::fragmentation`] memoised on the node's sorted free vector:
/// most nodes of a cluster share a handful of states (empty, one task, …).
#[derive(Debug, Default)]
pub struct FragmentationCache {
    memo: HashMap<([u8; CACHED_GPUS], u64), f64>,
}

impl FragmentationCache {
    pub fn get(&mut self, workload: &Workload, free: &[u32], host_fit: u64) -> f64 {
        if free.len() > CACHED_GPUS || free.iter().any(|f| *f > 100) {
            return workload.fragmentation(free, host_fit);
        }
        let mut key = [u8::MAX; CACHED_GPUS];
        for (k, f) in key.iter_mut().zip(free) {
            *k = *f as u8;
        }
        key[..free.len()].sort_unstable();
        *self
            .memo
            .entry((key, host_fit))
            .or_insert_with(|| workload.fragmentation(free, host_fit))
    }

    pub fn len(&self) -> usize {
        self.memo.len()
    }

    pub fn is_empty(&self) -> bool {
        self.memo.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        // Half the tasks want half a GPU, half want one whole GPU.
        Workload::from_tasks([(1, 50, 1000, 1000), (1, 100, 1000, 1000), (0, 0, 1, 1)])
    }

    #[test]
    fn classes_are_grouped_and_weighted() {
        let w = workload();
        assert_eq!(w.classes().len(), 2, "CPU-only tasks are not a class");
        assert!((w.classes()[0].weight - 0.5).abs() < 1e-9);
    }

    #[test]
    fn fragmentation_counts_what_each_class_cannot_use() {
        let w = workload();
        let all = w.host_fit_mask(u64::MAX, u64::MAX);
        // Two empty GPUs: nothing is lost to either class.
        assert_eq!(w.fragmentation(&[100, 100], all), 0.0);
        // 30% left on one GPU: lost to both classes (too small for 50%).
        assert_eq!(w.fragmentation(&[30, 100], all), 30.0);
        // 60% left: usable by half-GPU tasks, lost to whole-GPU ones.
        assert_eq!(w.fragmentation(&[60, 100], all), 30.0);
        // No CPU left: every free share is lost to every class.
        assert_eq!(w.fragmentation(&[60, 100], 0), 160.0);
    }

    #[test]
    fn a_placement_that_splits_a_second_gpu_costs_more() {
        let w = workload();
        let all = w.host_fit_mask(u64::MAX, u64::MAX);
        // A 50% task onto a GPU that already has 50% free closes it; onto the
        // empty GPU it leaves 50% + 50% split.
        let before = w.fragmentation(&[50, 100], all);
        let onto_half = w.fragmentation(&[0, 100], all) - before;
        let onto_empty = w.fragmentation(&[50, 50], all) - before;
        assert!(onto_half < onto_empty, "{onto_half} vs {onto_empty}");
    }

    #[test]
    fn the_cache_agrees_with_the_direct_computation() {
        let w = workload();
        let mut cache = FragmentationCache::default();
        for free in [[30u32, 100], [100, 30], [0, 0]] {
            assert_eq!(cache.get(&w, &free, 3), w.fragmentation(&free, 3));
        }
        assert_eq!(cache.len(), 2, "[30,100] and [100,30] are one state");
    }
}
