//! Fitting a pod's device requests onto one node, with the HAMi reason for
//! every device that cannot take it.

use hami_api::reasons;
use hami_api::{ContainerDevice, PodAllocation};

use super::device::{Device, Node, Topology};
use super::placement::{self, Candidates};
use super::request::{ContainerRequest, PodRequest, Selection};
use super::vendor::{Sized, VendorProfile};

/// Which of a node's fitting devices a container gets first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceOrder {
    /// The most loaded device that fits: keeps whole devices free.
    Binpack,
    /// The least loaded: spreads interference.
    Spread,
}

/// One device granted to one container: its place in `Node::devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub device: usize,
    pub memory_mib: u64,
    pub cores: u32,
    /// The Ascend vNPU template the memory was rounded up to, if any.
    pub template: Option<usize>,
}

/// What a fit depends on besides the devices and the request: the family
/// being placed and the policy.
#[derive(Debug, Clone, Copy)]
pub struct FitContext<'a> {
    pub profile: &'a VendorProfile,
    /// The profile's place in the scheduler's list; devices of other
    /// families on the same node are not candidates.
    pub vendor: u16,
    pub order: DeviceOrder,
    /// `topology-aware`: place by link scores where the node publishes them.
    pub topology_aware: bool,
    /// Ascend `hami-core` mode: raw MiB instead of templates.
    pub hami_core: bool,
}

impl FitContext<'_> {
    /// NVIDIA with the given order: the simulator's and most tests' context.
    pub fn nvidia(order: DeviceOrder) -> FitContext<'static> {
        static NVIDIA: std::sync::OnceLock<VendorProfile> = std::sync::OnceLock::new();
        FitContext {
            profile: NVIDIA.get_or_init(VendorProfile::nvidia),
            vendor: 0,
            order,
            topology_aware: false,
            hami_core: false,
        }
    }
}

/// Why `device` cannot take `req` (NVIDIA sizing), or `None` when it can.
pub fn reject(device: &Device, req: &ContainerRequest, sel: &Selection) -> Option<&'static str> {
    size_on(device, req, sel, &FitContext::nvidia(DeviceOrder::Binpack)).err()
}

/// What `device` would grant `req`, or HAMi's reason it cannot.
pub fn size_on(
    device: &Device,
    req: &ContainerRequest,
    sel: &Selection,
    ctx: &FitContext,
) -> Result<Sized, &'static str> {
    if !device.healthy || device.cordoned {
        return Err(reasons::CARD_NOT_HEALTH);
    }
    if !sel.type_allowed(&device.kind) {
        return Err(reasons::CARD_TYPE_MISMATCH);
    }
    if !sel.uuid_allowed(&device.uuid) {
        return Err(reasons::CARD_UUID_MISMATCH);
    }
    // A device that advertises no memory or no compute would divide by zero
    // in every score: it is never a candidate.
    if device.memory_mib == 0 && ctx.profile.manages_memory() {
        return Err(reasons::CARD_INSUFFICIENT_MEMORY);
    }
    if device.cores == 0 {
        return Err(reasons::CARD_INSUFFICIENT_CORE);
    }
    if device.tasks >= device.split {
        return Err(reasons::CARD_TIME_SLICING_EXHAUSTED);
    }
    let sized = ctx
        .profile
        .size(
            req.memory.on(device.memory_mib),
            req.cores,
            device.memory_mib,
            device.cores,
            ctx.hami_core,
        )
        .ok_or(reasons::CARD_INSUFFICIENT_MEMORY)?;
    if sized.memory_mib > device.free_memory_mib() {
        return Err(reasons::CARD_INSUFFICIENT_MEMORY);
    }
    if ctx.profile.cores_are_percent() && req.exclusive() && device.tasks > 0 {
        return Err(reasons::EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT);
    }
    if device.used_cores >= device.cores {
        return Err(reasons::CARD_COMPUTE_UNITS_EXHAUSTED);
    }
    if sized.cores > device.free_cores() {
        return Err(reasons::CARD_INSUFFICIENT_CORE);
    }
    Ok(sized)
}

fn most_common(rejections: &[&'static str]) -> Option<&'static str> {
    let mut best: Option<(&'static str, usize)> = None;
    for r in rejections {
        let n = rejections.iter().filter(|x| *x == r).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((r, n));
        }
    }
    best.map(|(r, _)| r)
}

/// The devices one container gets on `devices`, in the order's preference,
/// laid out as the family needs (see `placement`).
pub fn fit_container(
    devices: &[Device],
    topology: &Topology,
    req: &ContainerRequest,
    sel: &Selection,
    ctx: &FitContext,
) -> Result<Vec<Grant>, &'static str> {
    let count = req.count as usize;
    if count == 0 {
        return Ok(Vec::new());
    }
    let ours = |d: &&Device| d.vendor == ctx.vendor;
    if devices.iter().filter(ours).count() < count {
        return Err(reasons::NODE_INSUFFICIENT_DEVICE);
    }
    let mut fitting: Vec<(usize, Sized)> = devices
        .iter()
        .enumerate()
        .filter(|(_, d)| d.vendor == ctx.vendor)
        .filter_map(|(i, d)| size_on(d, req, sel, ctx).ok().map(|s| (i, s)))
        .collect();
    // Stable sort: equal loads keep the node's device order.
    fitting.sort_by(|(a, _), (b, _)| {
        let (la, lb) = (devices[*a].load(), devices[*b].load());
        match ctx.order {
            DeviceOrder::Binpack => lb.total_cmp(&la),
            DeviceOrder::Spread => la.total_cmp(&lb),
        }
    });
    if fitting.len() < count {
        // The reasons are only worth collecting for a node that fails.
        let rejections: Vec<&'static str> = devices
            .iter()
            .filter(ours)
            .filter_map(|d| size_on(d, req, sel, ctx).err())
            .collect();
        return Err(
            most_common(&rejections).unwrap_or(reasons::ALLOCATED_CARDS_INSUFFICIENT_REQUEST)
        );
    }
    let positions: Vec<usize> = fitting.iter().map(|(i, _)| *i).collect();
    let chosen = placement::choose(
        &Candidates {
            devices,
            topology,
            fitting: &positions,
            count,
            numa_bind: sel.numa_bind,
        },
        &ctx.profile.family,
        ctx.topology_aware,
    )?;
    Ok(chosen
        .into_iter()
        .map(|i| {
            let sized = fitting
                .iter()
                .find(|(at, _)| *at == i)
                .map(|(_, s)| *s)
                .expect("placement chooses among the fitting devices");
            Grant {
                device: i,
                memory_mib: sized.memory_mib,
                cores: sized.cores,
                template: sized.template,
            }
        })
        .collect())
}

/// A pod placed on one node: grants per container slot, init containers first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFit {
    pub slots: Vec<Vec<Grant>>,
    /// How many of the slots are init containers.
    pub init_slots: usize,
}

impl PodFit {
    /// What stays on the node while the pod runs: the app containers' grants
    /// as (device, memory MiB, cores).
    pub fn lasting(&self) -> Vec<(usize, u64, u32)> {
        self.slots[self.init_slots..]
            .iter()
            .flatten()
            .map(|g| (g.device, g.memory_mib, g.cores))
            .collect()
    }

    /// Records the pod's lasting grants on `node`.
    pub fn apply(&self, node: &mut Node) {
        for (d, m, c) in self.lasting() {
            node.devices[d].grant(m, c);
        }
    }

    /// The decision in HAMi's annotation encoding.
    pub fn allocation(&self, before: &Node) -> PodAllocation {
        PodAllocation::new(
            self.slots
                .iter()
                .map(|grants| {
                    grants
                        .iter()
                        .map(|g| {
                            let d = &before.devices[g.device];
                            ContainerDevice {
                                uuid: d.uuid.clone(),
                                device_type: d.kind.clone(),
                                mem_mib: u32::try_from(g.memory_mib).unwrap_or(u32::MAX),
                                cores: g.cores,
                            }
                        })
                        .collect()
                })
                .collect(),
        )
    }
}

/// Fits every container: init containers one at a time against the node as it
/// is (they run before the app containers and one after another, so the pod
/// needs their peak), app containers cumulatively.
pub fn fit_pod(node: &Node, pod: &PodRequest, ctx: &FitContext) -> Result<PodFit, &'static str> {
    if pod.hami_core && !node.topology.vnpu_core {
        // hami-core mode needs the node's interposer, which it advertises.
        return Err(reasons::NODE_UNFIT_POD);
    }
    let ctx = &FitContext {
        hami_core: pod.hami_core,
        ..*ctx
    };
    let mut slots = Vec::with_capacity(pod.init.len() + pod.app.len());
    for req in &pod.init {
        match req {
            None => slots.push(Vec::new()),
            Some(r) => slots.push(fit_container(
                &node.devices,
                &node.topology,
                r,
                &pod.selection,
                ctx,
            )?),
        }
    }
    // Only a second device-using app container needs to see the first one's
    // grants; the common single-container pod fits without copying the node.
    let mut working: Option<Vec<Device>> = None;
    for req in &pod.app {
        let grants = match req {
            None => Vec::new(),
            Some(r) => {
                let devices = working.as_deref().unwrap_or(&node.devices);
                fit_container(devices, &node.topology, r, &pod.selection, ctx)?
            }
        };
        if !grants.is_empty() {
            let devices = working.get_or_insert_with(|| node.devices.clone());
            for g in &grants {
                devices[g.device].grant(g.memory_mib, g.cores);
            }
        }
        slots.push(grants);
    }
    Ok(PodFit {
        slots,
        init_slots: pod.init.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::request::MemoryRequest;

    fn fit_nvidia(
        devices: &[Device],
        r: &ContainerRequest,
        sel: &Selection,
        order: DeviceOrder,
    ) -> Result<Vec<Grant>, &'static str> {
        fit_container(
            devices,
            &Topology::default(),
            r,
            sel,
            &FitContext::nvidia(order),
        )
    }

    fn device(index: u32, memory_mib: u64) -> Device {
        Device::new(format!("GPU-{index}"), index, "NVIDIA-A100", memory_mib)
    }

    fn node(devices: Vec<Device>) -> Node {
        Node::new("n", devices)
    }

    fn req(count: u32, mib: u64, cores: u32) -> ContainerRequest {
        ContainerRequest {
            count,
            memory: MemoryRequest::Mib(mib),
            cores,
        }
    }

    fn one(r: ContainerRequest) -> PodRequest {
        PodRequest {
            app: vec![Some(r)],
            ..PodRequest::default()
        }
    }

    /// A change to a fresh device that makes it reject the request.
    type Tweak = Box<dyn Fn(&mut Device)>;

    #[test]
    fn every_rejection_has_its_reason() {
        let sel = Selection::default();
        let r = req(1, 1000, 30);
        let cases: Vec<(Tweak, ContainerRequest, &str)> = vec![
            (Box::new(|d| d.healthy = false), r, reasons::CARD_NOT_HEALTH),
            (Box::new(|d| d.cordoned = true), r, reasons::CARD_NOT_HEALTH),
            (
                Box::new(|d| d.memory_mib = 0),
                r,
                reasons::CARD_INSUFFICIENT_MEMORY,
            ),
            (
                Box::new(|d| d.cores = 0),
                r,
                reasons::CARD_INSUFFICIENT_CORE,
            ),
            (
                Box::new(|d| d.tasks = 10),
                r,
                reasons::CARD_TIME_SLICING_EXHAUSTED,
            ),
            (
                Box::new(|d| d.used_memory_mib = 7500),
                r,
                reasons::CARD_INSUFFICIENT_MEMORY,
            ),
            (
                Box::new(|d| d.tasks = 1),
                req(1, 10, 100),
                reasons::EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT,
            ),
            (
                Box::new(|d| {
                    d.used_cores = 100;
                    d.tasks = 1
                }),
                req(1, 10, 0),
                reasons::CARD_COMPUTE_UNITS_EXHAUSTED,
            ),
            (
                Box::new(|d| {
                    d.used_cores = 80;
                    d.tasks = 1
                }),
                r,
                reasons::CARD_INSUFFICIENT_CORE,
            ),
        ];
        for (i, (tweak, r, want)) in cases.into_iter().enumerate() {
            let mut d = device(0, 8000);
            tweak(&mut d);
            assert_eq!(reject(&d, &r, &sel), Some(want), "case {i}");
            assert_eq!(
                fit_nvidia(&[d], &r, &sel, DeviceOrder::Binpack),
                Err(want),
                "case {i}"
            );
        }
        let typed = Selection {
            use_types: vec!["H100".into()],
            ..Selection::default()
        };
        assert_eq!(
            reject(&device(0, 8000), &r, &typed),
            Some(reasons::CARD_TYPE_MISMATCH)
        );
        let uuid = Selection {
            nouse_uuids: vec!["GPU-0".into()],
            ..Selection::default()
        };
        assert_eq!(
            reject(&device(0, 8000), &r, &uuid),
            Some(reasons::CARD_UUID_MISMATCH)
        );
        assert_eq!(
            fit_nvidia(
                &[device(0, 8000)],
                &req(2, 1, 1),
                &Selection::default(),
                DeviceOrder::Binpack
            ),
            Err(reasons::NODE_INSUFFICIENT_DEVICE)
        );
    }

    #[test]
    fn binpack_fills_the_loaded_device_and_spread_the_empty_one() {
        let mut devices = vec![device(0, 8000), device(1, 8000)];
        devices[1].grant(4000, 50);
        let sel = Selection::default();
        let r = req(1, 1000, 10);
        let b = fit_nvidia(&devices, &r, &sel, DeviceOrder::Binpack).unwrap();
        assert_eq!(b[0].device, 1);
        let s = fit_nvidia(&devices, &r, &sel, DeviceOrder::Spread).unwrap();
        assert_eq!(s[0].device, 0);
    }

    #[test]
    fn numa_bind_keeps_a_container_on_one_numa_node() {
        let mut devices: Vec<Device> = (0..4).map(|i| device(i, 8000)).collect();
        devices[0].numa = 0;
        devices[1].numa = 1;
        devices[2].numa = 1;
        devices[3].numa = 0;
        devices[3].healthy = false;
        let sel = Selection {
            numa_bind: true,
            ..Selection::default()
        };
        let g = fit_nvidia(&devices, &req(2, 1000, 10), &sel, DeviceOrder::Binpack).unwrap();
        assert_eq!(g.iter().map(|g| g.device).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            fit_nvidia(&devices, &req(3, 1000, 10), &sel, DeviceOrder::Binpack),
            Err(reasons::NUMA_NOT_FIT)
        );
        assert!(fit_nvidia(
            &devices,
            &req(3, 1000, 10),
            &Selection::default(),
            DeviceOrder::Binpack
        )
        .is_ok());
    }

    #[test]
    fn percentages_and_exclusive_use() {
        let devices = vec![device(0, 80000)];
        let r = ContainerRequest {
            count: 1,
            memory: MemoryRequest::Percent(25),
            cores: 100,
        };
        let g = fit_nvidia(&devices, &r, &Selection::default(), DeviceOrder::Binpack).unwrap();
        assert_eq!((g[0].memory_mib, g[0].cores), (20000, 100));
    }

    #[test]
    fn init_containers_peak_app_containers_add_up() {
        let n = node(vec![device(0, 8000)]);
        // Two init containers of 6000 each fit (one at a time); two app
        // containers of 5000 do not (5000 + 5000 > 8000).
        let pod = PodRequest {
            init: vec![Some(req(1, 6000, 0)), None, Some(req(1, 6000, 0))],
            app: vec![Some(req(1, 3000, 0)), None, Some(req(1, 4000, 0))],
            ..PodRequest::default()
        };
        let fit = fit_pod(&n, &pod, &FitContext::nvidia(DeviceOrder::Binpack)).unwrap();
        assert_eq!(fit.slots.len(), 6);
        assert!(
            fit.slots[1].is_empty() && fit.slots[4].is_empty(),
            "empty slots keep the indexes"
        );
        let mut after = n.clone();
        fit.apply(&mut after);
        assert_eq!(
            after.devices[0].used_memory_mib, 7000,
            "init usage is not kept"
        );
        let alloc = fit.allocation(&n).encode().unwrap();
        assert_eq!(
            alloc,
            "GPU-0,NVIDIA-A100,6000,0:;;GPU-0,NVIDIA-A100,6000,0:;GPU-0,NVIDIA-A100,3000,0:;;GPU-0,NVIDIA-A100,4000,0:;"
        );
        let too_much = PodRequest {
            app: vec![Some(req(1, 5000, 0)), Some(req(1, 5000, 0))],
            ..PodRequest::default()
        };
        assert_eq!(
            fit_pod(&n, &too_much, &FitContext::nvidia(DeviceOrder::Binpack)),
            Err(reasons::CARD_INSUFFICIENT_MEMORY)
        );
        assert!(fit_pod(
            &n,
            &one(req(1, 8000, 100)),
            &FitContext::nvidia(DeviceOrder::Spread)
        )
        .is_ok());
    }
}
