//! Which of a node's fitting devices a multi-device (or single-device)
//! container gets, where the choice depends on how the devices are wired:
//! NVLink pair scores, AWS Neuron rings and aligned blocks, Vastai dies on one
//! card, Ascend 910C modules of two NPUs in one SuperPod network.
//!
//! Every function takes the fitting devices in the policy's preference order
//! (binpack or spread) and keeps that order among equally good choices.

use hami_api::reasons;

use super::device::{Device, Topology};
use super::vendor::Family;

/// Enumerating more device sets than this falls back to a greedy choice; 16
/// GPUs choose 8 is 12,870, so real nodes are always searched exhaustively.
const MAX_COMBINATIONS: usize = 50_000;

pub struct Candidates<'a> {
    pub devices: &'a [Device],
    pub topology: &'a Topology,
    /// Positions in `devices` that can take the request, best first.
    pub fitting: &'a [usize],
    pub count: usize,
    pub numa_bind: bool,
}

/// The chosen positions, or HAMi's reason the node cannot lay them out.
pub fn choose(
    c: &Candidates,
    family: &Family,
    topology_aware: bool,
) -> Result<Vec<usize>, &'static str> {
    match family {
        Family::Shared if topology_aware && !c.topology.links.is_empty() => by_links(c),
        Family::Ascend(chip) if chip.modules_of_two => by_modules(c),
        Family::AwsNeuron => by_neuron_block(c),
        Family::Vastai if c.topology.vastai_dies => by_card(c),
        _ => in_order(c),
    }
}

/// The first `count` in preference order, on one NUMA node when asked.
fn in_order(c: &Candidates) -> Result<Vec<usize>, &'static str> {
    if !c.numa_bind {
        return Ok(c.fitting[..c.count].to_vec());
    }
    for &first in c.fitting {
        let numa = c.devices[first].numa;
        let same: Vec<usize> = c
            .fitting
            .iter()
            .copied()
            .filter(|i| c.devices[*i].numa == numa)
            .take(c.count)
            .collect();
        if same.len() == c.count {
            return Ok(same);
        }
    }
    Err(reasons::NUMA_NOT_FIT)
}

fn link(c: &Candidates, a: usize, b: usize) -> u64 {
    c.topology
        .links
        .get(a)
        .and_then(|row| row.get(b))
        .map_or(0, |s| u64::from(*s))
}

/// Topology-aware NVIDIA placement. A single GPU goes where it disturbs the
/// least: the fitting GPU with the weakest links to the node's idle GPUs, so
/// well-connected groups stay whole for multi-GPU jobs. Several GPUs take the
/// set with the highest sum of pair scores (best NVLink fit).
fn by_links(c: &Candidates) -> Result<Vec<usize>, &'static str> {
    if c.count == 1 {
        let idle: Vec<usize> = (0..c.devices.len())
            .filter(|i| c.devices[*i].tasks == 0 && c.devices[*i].healthy)
            .collect();
        let disruption = |i: usize| -> u64 {
            idle.iter()
                .filter(|j| **j != i)
                .map(|j| link(c, i, *j))
                .sum()
        };
        // min_by_key keeps the first of equals: preference order breaks ties.
        return c
            .fitting
            .iter()
            .copied()
            .min_by_key(|i| disruption(*i))
            .map(|i| vec![i])
            .ok_or(reasons::ALLOCATED_CARDS_INSUFFICIENT_REQUEST);
    }
    let connectivity = |set: &[usize]| -> u64 {
        let mut sum = 0;
        for (k, a) in set.iter().enumerate() {
            for b in &set[k + 1..] {
                sum += link(c, *a, *b);
            }
        }
        sum
    };
    let same_numa = |set: &[usize]| {
        !c.numa_bind
            || set
                .iter()
                .all(|i| c.devices[*i].numa == c.devices[set[0]].numa)
    };
    let mut best: Option<(u64, Vec<usize>)> = None;
    if binomial(c.fitting.len(), c.count) <= MAX_COMBINATIONS {
        for_each_combination(c.fitting, c.count, &mut |set| {
            if !same_numa(set) {
                return;
            }
            let s = connectivity(set);
            if best.as_ref().is_none_or(|(b, _)| s > *b) {
                best = Some((s, set.to_vec()));
            }
        });
    } else {
        // Greedy: grow from each start by the GPU that adds the most.
        for &start in c.fitting {
            let mut set = vec![start];
            while set.len() < c.count {
                let next = c
                    .fitting
                    .iter()
                    .copied()
                    .filter(|i| !set.contains(i))
                    .filter(|i| !c.numa_bind || c.devices[*i].numa == c.devices[start].numa)
                    .max_by_key(|i| {
                        (
                            set.iter().map(|s| link(c, *s, *i)).sum::<u64>(),
                            usize::MAX - i,
                        )
                    });
                match next {
                    Some(n) => set.push(n),
                    None => break,
                }
            }
            if set.len() == c.count {
                let s = connectivity(&set);
                if best.as_ref().is_none_or(|(b, _)| s > *b) {
                    best = Some((s, set));
                }
            }
        }
    }
    best.map(|(_, set)| set).ok_or(reasons::NUMA_NOT_FIT)
}

fn binomial(n: usize, k: usize) -> usize {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut r: usize = 1;
    for i in 0..k {
        r = r.saturating_mul(n - i) / (i + 1);
    }
    r
}

/// Calls `f` with every `k`-subset of `items`, in lexicographic order of
/// positions (so earlier items, the preferred ones, come first).
fn for_each_combination(items: &[usize], k: usize, f: &mut dyn FnMut(&[usize])) {
    let n = items.len();
    if k == 0 || k > n {
        return;
    }
    let mut idx: Vec<usize> = (0..k).collect();
    let mut set = vec![0; k];
    loop {
        for (s, i) in set.iter_mut().zip(&idx) {
            *s = items[*i];
        }
        f(&set);
        let Some(pos) = (0..k).rev().find(|p| idx[*p] != p + n - k) else {
            return;
        };
        idx[pos] += 1;
        for p in pos + 1..k {
            idx[p] = idx[p - 1] + 1;
        }
    }
}

/// AWS Neuron: a multi-device job needs idle devices next to each other.
/// On Inferentia (`inf*` instance types) the devices form a ring, so any run
/// of neighbours works, wrapping around; on Trainium the collective needs
/// blocks of 4, 8 or 16 aligned to their size.
fn by_neuron_block(c: &Candidates) -> Result<Vec<usize>, &'static str> {
    if c.count == 1 {
        return Ok(vec![c.fitting[0]]);
    }
    // Position of each device index among this family's devices (the
    // neighbour relation is by index, not by place in the register).
    let mut by_index: Vec<(u32, usize)> = c
        .devices
        .iter()
        .enumerate()
        .filter(|(i, d)| c.fitting.contains(i) || d.vendor == c.devices[c.fitting[0]].vendor)
        .map(|(i, d)| (d.index, i))
        .collect();
    by_index.sort_unstable();
    let n = by_index.len();
    let usable = |pos: usize| {
        let at = by_index[pos].1;
        c.fitting.contains(&at) && c.devices[at].tasks == 0
    };
    let window = |start: usize| -> Option<Vec<usize>> {
        (0..c.count)
            .map(|k| {
                let pos = (start + k) % n;
                // Neighbours must be consecutive device indexes.
                let expected = (by_index[start].0 as usize + k) % n;
                (usable(pos) && by_index[pos].0 as usize == expected).then_some(by_index[pos].1)
            })
            .collect()
    };
    if c.count > n {
        return Err(reasons::NODE_INSUFFICIENT_DEVICE);
    }
    let starts: Vec<usize> = if c.topology.neuron_ring {
        (0..n).collect()
    } else if matches!(c.count, 4 | 8 | 16) {
        (0..n)
            .step_by(c.count)
            .filter(|s| s + c.count <= n)
            .collect()
    } else {
        Vec::new()
    };
    // HAMi reports a failed Neuron layout as NumaNotFit; kept for the
    // dashboards that count it.
    starts
        .into_iter()
        .find_map(window)
        .ok_or(reasons::NUMA_NOT_FIT)
}

/// Groups `fitting` by a key, groups in first-seen (preference) order.
fn grouped<K: PartialEq>(fitting: &[usize], key: impl Fn(usize) -> K) -> Vec<(K, Vec<usize>)> {
    let mut groups: Vec<(K, Vec<usize>)> = Vec::new();
    for &i in fitting {
        let k = key(i);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, members)) => members.push(i),
            None => groups.push((k, vec![i])),
        }
    }
    groups
}

/// Vastai die mode: dies of one card (AIC) share its memory bus, so a
/// multi-die job takes dies from the cards with the most free dies first; a
/// single die goes to the card with the fewest, keeping whole cards free.
fn by_card(c: &Candidates) -> Result<Vec<usize>, &'static str> {
    let mut groups = grouped(c.fitting, |i| c.devices[i].group.clone());
    if c.count == 1 {
        groups.sort_by_key(|(_, m)| m.len());
    } else {
        groups.sort_by_key(|(_, m)| std::cmp::Reverse(m.len()));
    }
    Ok(groups
        .into_iter()
        .flat_map(|(_, m)| m)
        .take(c.count)
        .collect())
}

/// Ascend 910C: two NPUs (indexes 2m, 2m+1) make one module. A multi-NPU job
/// takes whole modules, all in one SuperPod network when one has room (the
/// network with the fewest free modules that suffices); a single NPU goes
/// where its module partner is already busy, keeping whole modules free.
fn by_modules(c: &Candidates) -> Result<Vec<usize>, &'static str> {
    let module = |i: usize| c.devices[i].index / 2;
    let partner_fits = |i: usize| c.fitting.iter().any(|j| *j != i && module(*j) == module(i));
    if c.count == 1 {
        let lone = c.fitting.iter().copied().find(|i| !partner_fits(*i));
        return Ok(vec![lone.unwrap_or(c.fitting[0])]);
    }
    if c.count % 2 != 0 {
        return Err(reasons::ALLOCATED_CARDS_INSUFFICIENT_REQUEST);
    }
    let whole: Vec<usize> = c
        .fitting
        .iter()
        .copied()
        .filter(|i| partner_fits(*i))
        .collect();
    let modules = grouped(&whole, module);
    let networks = grouped(
        &modules.iter().map(|(_, m)| m[0]).collect::<Vec<_>>(),
        |i| c.devices[i].group.clone(),
    );
    let need = c.count / 2;
    let pick = |firsts: &[usize]| -> Vec<usize> {
        firsts
            .iter()
            .take(need)
            .flat_map(|f| {
                modules
                    .iter()
                    .find(|(m, _)| *m == module(*f))
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default()
            })
            .collect()
    };
    if let Some((_, firsts)) = networks
        .iter()
        .filter(|(_, f)| f.len() >= need)
        .min_by_key(|(_, f)| f.len())
    {
        return Ok(pick(firsts));
    }
    // No single network holds the job: spread over the largest ones.
    let mut all: Vec<&(Option<String>, Vec<usize>)> = networks.iter().collect();
    all.sort_by_key(|(_, f)| std::cmp::Reverse(f.len()));
    let firsts: Vec<usize> = all.iter().flat_map(|(_, f)| f.iter().copied()).collect();
    if firsts.len() < need {
        return Err(reasons::ALLOCATED_CARDS_INSUFFICIENT_REQUEST);
    }
    Ok(pick(&firsts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::vendor::AscendChip;

    fn devices(n: u32) -> Vec<Device> {
        (0..n)
            .map(|i| Device::new(format!("D{i}"), i, "T", 1000))
            .collect()
    }

    fn run(
        devs: &[Device],
        topo: &Topology,
        fitting: &[usize],
        count: usize,
        family: &Family,
        aware: bool,
    ) -> Result<Vec<usize>, &'static str> {
        choose(
            &Candidates {
                devices: devs,
                topology: topo,
                fitting,
                count,
                numa_bind: false,
            },
            family,
            aware,
        )
    }

    /// 8 GPUs: two NVLink islands {0,1,2,3} (600 each pair) and {4,5,6}
    /// (300), GPU 7 on PCIe only (10 to everyone).
    fn islands() -> Topology {
        let island = |i: usize| match i {
            0..=3 => 0,
            4..=6 => 1,
            _ => 2,
        };
        let links = (0..8)
            .map(|a| {
                (0..8)
                    .map(|b| match (a == b, island(a), island(b)) {
                        (true, _, _) => 0,
                        (_, 0, 0) => 600,
                        (_, 1, 1) => 300,
                        _ => 10,
                    })
                    .collect()
            })
            .collect();
        Topology {
            links,
            ..Topology::default()
        }
    }

    #[test]
    fn topology_aware_nvidia_placement() {
        let devs = devices(8);
        let topo = islands();
        let all: Vec<usize> = (0..8).collect();
        let shared = Family::Shared;
        // (fitting, count) -> chosen
        let cases: [(&[usize], usize, Vec<usize>); 5] = [
            // One GPU: the poorly linked GPU 7 disturbs nothing.
            (&all, 1, vec![7]),
            // Two: the best pair, inside the strong island.
            (&all, 2, vec![0, 1]),
            // Four: the whole strong island.
            (&all, 4, vec![0, 1, 2, 3]),
            // Three with the strong island partly busy: the 300 island.
            (&[0, 4, 5, 6, 7], 3, vec![4, 5, 6]),
            // Preference order breaks ties: same score, first preferred.
            (&[5, 4, 6], 2, vec![5, 4]),
        ];
        for (fitting, count, want) in cases {
            let got = run(&devs, &topo, fitting, count, &shared, true).unwrap();
            assert_eq!(got, want, "{fitting:?} x{count}");
        }
        // Without topology-aware policy, or without link data: preference order.
        assert_eq!(run(&devs, &topo, &all, 1, &shared, false).unwrap(), vec![0]);
        assert_eq!(
            run(&devs, &Topology::default(), &all, 2, &shared, true).unwrap(),
            vec![0, 1]
        );
    }

    #[test]
    fn greedy_fallback_still_finds_an_island() {
        // 32 GPUs choose 8 is past the exhaustive limit.
        let devs = devices(32);
        let links = (0..32)
            .map(|a: usize| {
                (0..32)
                    .map(|b: usize| {
                        if a != b && a / 8 == b / 8 && (8..16).contains(&a) {
                            900
                        } else {
                            5
                        }
                    })
                    .collect()
            })
            .collect();
        let topo = Topology {
            links,
            ..Topology::default()
        };
        let all: Vec<usize> = (0..32).collect();
        assert!(binomial(32, 8) > MAX_COMBINATIONS);
        let got = run(&devs, &topo, &all, 8, &Family::Shared, true).unwrap();
        assert_eq!(
            got.iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            (8..16).collect()
        );
    }

    #[test]
    fn neuron_blocks_are_aligned_on_trainium_and_a_ring_on_inferentia() {
        let mut devs = devices(16);
        for d in &mut devs {
            d.cores = 2;
            d.memory_mib = 0;
        }
        // Device 1 busy.
        devs[1].grant(0, 1);
        let fitting: Vec<usize> = (0..16).collect();
        let trn = Topology::default();
        let ring = Topology {
            neuron_ring: true,
            ..Topology::default()
        };
        let f = Family::AwsNeuron;
        // Trainium: 4 aligned skips block 0-3 (device 1 busy) -> 4..8.
        assert_eq!(
            run(&devs, &trn, &fitting, 4, &f, false).unwrap(),
            vec![4, 5, 6, 7]
        );
        assert_eq!(
            run(&devs, &trn, &fitting, 8, &f, false).unwrap(),
            (8..16).collect::<Vec<_>>()
        );
        assert_eq!(
            run(&devs, &trn, &fitting, 16, &f, false),
            Err(reasons::NUMA_NOT_FIT)
        );
        assert_eq!(
            run(&devs, &trn, &fitting, 3, &f, false),
            Err(reasons::NUMA_NOT_FIT)
        );
        // Inferentia ring: 3 is fine, right after the busy device.
        assert_eq!(
            run(&devs, &ring, &fitting, 3, &f, false).unwrap(),
            vec![2, 3, 4]
        );
        // The ring wraps: 2..16 busy except 14, 15, 0.
        let mut wrap = devices(16);
        for (i, d) in wrap.iter_mut().enumerate() {
            d.cores = 2;
            if (1..14).contains(&i) {
                d.grant(0, 1);
            }
        }
        let free: Vec<usize> = vec![14, 15, 0];
        assert_eq!(
            run(&wrap, &ring, &free, 3, &f, false).unwrap(),
            vec![14, 15, 0]
        );
        assert_eq!(
            run(&wrap, &trn, &free, 3, &f, false),
            Err(reasons::NUMA_NOT_FIT)
        );
    }

    #[test]
    fn vastai_dies_group_by_card() {
        // Cards: A has dies 0,1,2; B has 3,4; C has 5.
        let mut devs = devices(6);
        for (i, card) in ["A", "A", "A", "B", "B", "C"].iter().enumerate() {
            devs[i].group = Some((*card).to_owned());
        }
        let topo = Topology {
            vastai_dies: true,
            ..Topology::default()
        };
        let f = Family::Vastai;
        let fitting = [5, 3, 0, 4, 1, 2];
        assert_eq!(
            run(&devs, &topo, &fitting, 3, &f, false).unwrap(),
            vec![0, 1, 2]
        );
        assert_eq!(
            run(&devs, &topo, &fitting, 2, &f, false).unwrap(),
            vec![0, 1]
        );
        // One die: the card with the fewest free dies.
        assert_eq!(run(&devs, &topo, &fitting, 1, &f, false).unwrap(), vec![5]);
        // Not in die mode: plain preference order.
        let plain = Topology::default();
        assert_eq!(
            run(&devs, &plain, &fitting, 2, &f, false).unwrap(),
            vec![5, 3]
        );
    }

    #[test]
    fn ascend_910c_takes_whole_modules_in_one_network() {
        let mut devs = devices(8);
        // Modules 0,1 in network n1; modules 2,3 in n2.
        for (i, d) in devs.iter_mut().enumerate() {
            d.group = Some(if i < 4 { "n1" } else { "n2" }.to_owned());
        }
        let f = Family::Ascend(AscendChip {
            templates: vec![],
            ai_core: 24,
            modules_of_two: true,
        });
        let topo = Topology::default();
        // NPU 1 busy: module 0 is partial.
        let fitting = [0, 2, 3, 4, 5, 6, 7];
        // One NPU: the one whose partner is busy.
        assert_eq!(run(&devs, &topo, &fitting, 1, &f, false).unwrap(), vec![0]);
        // Two: a whole module, in the network with the fewest that suffice (n1).
        assert_eq!(
            run(&devs, &topo, &fitting, 2, &f, false).unwrap(),
            vec![2, 3]
        );
        // Four: n2 alone has two whole modules.
        assert_eq!(
            run(&devs, &topo, &fitting, 4, &f, false).unwrap(),
            vec![4, 5, 6, 7]
        );
        // Six: no network holds three modules; spread over both.
        assert_eq!(
            run(&devs, &topo, &fitting, 6, &f, false).unwrap(),
            vec![4, 5, 6, 7, 2, 3]
        );
        // Odd counts above one are never laid out.
        assert_eq!(
            run(&devs, &topo, &fitting, 3, &f, false),
            Err(reasons::ALLOCATED_CARDS_INSUFFICIENT_REQUEST)
        );
        // Partial modules only (0 and 2 of different modules): no pair.
        assert_eq!(
            run(&devs, &topo, &[0, 2], 2, &f, false),
            Err(reasons::ALLOCATED_CARDS_INSUFFICIENT_REQUEST)
        );
    }

    #[test]
    fn numa_bind_keeps_one_numa_node() {
        let mut devs = devices(4);
        devs[2].numa = 1;
        devs[3].numa = 1;
        let c = Candidates {
            devices: &devs,
            topology: &Topology::default(),
            fitting: &[0, 2, 3],
            count: 2,
            numa_bind: true,
        };
        assert_eq!(choose(&c, &Family::Shared, false).unwrap(), vec![2, 3]);
        let c = Candidates {
            fitting: &[0, 2],
            ..c
        };
        assert_eq!(
            choose(&c, &Family::Shared, false),
            Err(reasons::NUMA_NOT_FIT)
        );
    }
}
