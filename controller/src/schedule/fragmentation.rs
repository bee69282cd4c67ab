//! Fragmentation-aware placement (FGD, Weng et al., USENIX ATC '23).
//!
//! A node's fragmentation for a kind of task is the free GPU capacity that
//! kind cannot use there; its expected fragmentation weighs that over the
//! workload's mix of tasks. A placement is chosen to grow the expected
//! fragmentation least, which keeps capacity usable for the tasks that are
//! likely to come.

use std::collections::HashMap;

use super::request::contains_ignore_case;

/// One kind of task in the expected workload.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskClass {
    /// GPUs per task; 0 for CPU-only tasks.
    pub count: u32,
    /// Percent of each GPU (100 for whole GPUs).
    pub cores: u32,
    /// Node CPU (milli) and memory (MiB) the task needs besides GPUs.
    pub cpu_milli: u64,
    pub memory_mib: u64,
    /// GPU types the task accepts (empty: any), matched as the pod's
    /// `use-gputype` is.
    pub models: Vec<String>,
    /// Share of the workload.
    pub weight: f64,
}

/// What tells two classes apart: GPUs per task, share of each, accepted types.
type ClassKey = (u32, u32, Vec<String>);

/// One task of the workload, as a sample for [`Workload::from_tasks`].
#[derive(Debug, Clone, Copy)]
pub struct TaskSample<'a> {
    pub count: u32,
    pub cores: u32,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub models: &'a [String],
}

/// The expected mix of tasks: at most 64 classes (a feasibility mask is a u64).
#[derive(Debug, Clone, Default)]
pub struct Workload {
    classes: Vec<TaskClass>,
}

pub const MAX_CLASSES: usize = 64;

impl Workload {
    /// Groups task samples by `(count, cores, accepted types)`; CPU and
    /// memory are the class means. CPU-only tasks leave GPUs idle, not
    /// fragmented, and are left out. The rarest classes beyond
    /// [`MAX_CLASSES`] are dropped.
    pub fn from_tasks<'t>(tasks: impl IntoIterator<Item = TaskSample<'t>>) -> Self {
        // (count, cores, accepted types) -> (tasks, summed CPU, summed memory)
        let mut groups: HashMap<ClassKey, (u64, u64, u64)> = HashMap::new();
        let mut total = 0u64;
        for t in tasks {
            if t.count == 0 {
                continue;
            }
            let mut models = t.models.to_vec();
            models.sort();
            let g = groups.entry((t.count, t.cores, models)).or_default();
            g.0 += 1;
            g.1 += t.cpu_milli;
            g.2 += t.memory_mib;
            total += 1;
        }
        let mut classes: Vec<TaskClass> = groups
            .into_iter()
            .map(|((count, cores, models), (n, cpu, mem))| TaskClass {
                count,
                cores,
                cpu_milli: cpu / n,
                memory_mib: mem / n,
                models,
                weight: n as f64 / total.max(1) as f64,
            })
            .collect();
        classes.sort_by(|a, b| {
            b.weight
                .total_cmp(&a.weight)
                .then((a.count, a.cores, &a.models).cmp(&(b.count, b.cores, &b.models)))
        });
        classes.truncate(MAX_CLASSES);
        Self { classes }
    }

    pub fn classes(&self) -> &[TaskClass] {
        &self.classes
    }

    /// Bit i set when class i can run on a node of GPU type `model` with
    /// this much CPU and memory free.
    pub fn fit_mask(&self, cpu_free: u64, memory_free: u64, model: &str) -> u64 {
        self.classes
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.cpu_milli <= cpu_free
                    && c.memory_mib <= memory_free
                    && (c.models.is_empty()
                        || c.models.iter().any(|m| contains_ignore_case(model, m)))
            })
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
                    // The task cannot run here at all (CPU, memory or GPU type):
                    // every free GPU share is lost to it.
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

    fn sample(count: u32, cores: u32, models: &[String]) -> TaskSample<'_> {
        TaskSample {
            count,
            cores,
            cpu_milli: 1000,
            memory_mib: 1000,
            models,
        }
    }

    fn workload() -> Workload {
        // Half the tasks want half a GPU, half want one whole GPU.
        Workload::from_tasks([sample(1, 50, &[]), sample(1, 100, &[]), sample(0, 0, &[])])
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
        let all = w.fit_mask(u64::MAX, u64::MAX, "V100");
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
        let all = w.fit_mask(u64::MAX, u64::MAX, "V100");
        // A 50% task onto a GPU that already has 50% free closes it; onto the
        // empty GPU it leaves 50% + 50% split.
        let before = w.fragmentation(&[50, 100], all);
        let onto_half = w.fragmentation(&[0, 100], all) - before;
        let onto_empty = w.fragmentation(&[50, 50], all) - before;
        assert!(onto_half < onto_empty, "{onto_half} vs {onto_empty}");
    }

    #[test]
    fn a_node_of_another_type_is_all_fragment_for_a_typed_class() {
        let v100 = vec!["V100M32".to_owned()];
        let w = Workload::from_tasks([sample(1, 50, &v100), sample(1, 50, &[])]);
        assert_eq!(w.classes().len(), 2);
        let on_t4 = w.fit_mask(u64::MAX, u64::MAX, "T4");
        let on_v100 = w.fit_mask(u64::MAX, u64::MAX, "v100m32");
        assert_eq!(on_v100.count_ones(), 2);
        assert_eq!(on_t4.count_ones(), 1);
        // 100% free on a T4 is lost to the V100-only half of the workload.
        assert_eq!(w.fragmentation(&[100], on_t4), 50.0);
        assert_eq!(w.fragmentation(&[100], on_v100), 0.0);
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
