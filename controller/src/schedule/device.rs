//! A node's devices as the scheduler sees them: what the node registered,
//! what is already granted on each, and whether it may take more.

use hami_api::DeviceInfo;

/// Compute units of one whole device (HAMi's `devcore` after scaling).
pub const WHOLE_DEVICE_CORES: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub uuid: String,
    pub index: u32,
    /// HAMi's device type, e.g. `NVIDIA-NVIDIA A100-SXM4-80GB` or `Ascend910B3`.
    pub kind: String,
    pub memory_mib: u64,
    pub cores: u32,
    /// How many containers may share it (HAMi's `count`, the split count).
    pub split: u32,
    pub numa: i32,
    pub healthy: bool,
    /// Taken out of scheduling by an operator (`hami.io/device-cordon`).
    pub cordoned: bool,
    pub used_memory_mib: u64,
    pub used_cores: u32,
    pub tasks: u32,
    /// Which family registered it: its place in the scheduler's vendor profiles.
    pub vendor: u16,
    /// The physical group the device sits in, where placement cares: a
    /// Vastai die's card (AIC), an Ascend 910C NPU's SuperPod network.
    pub group: Option<String>,
}

impl Device {
    /// A whole, healthy, unused device: 100 compute units, HAMi's default
    /// split of 10, NUMA node 0.
    pub fn new(
        uuid: impl Into<String>,
        index: u32,
        kind: impl Into<String>,
        memory_mib: u64,
    ) -> Self {
        Self {
            uuid: uuid.into(),
            index,
            kind: kind.into(),
            memory_mib,
            cores: WHOLE_DEVICE_CORES,
            split: 10,
            numa: 0,
            healthy: true,
            cordoned: false,
            used_memory_mib: 0,
            used_cores: 0,
            tasks: 0,
            vendor: 0,
            group: None,
        }
    }

    /// A device as the node registered it, with nothing granted yet.
    pub fn from_register(info: &DeviceInfo) -> Self {
        Self {
            uuid: info.id.clone(),
            index: info.index,
            kind: info.device_type.clone(),
            memory_mib: u64::try_from(info.devmem).unwrap_or(0),
            cores: u32::try_from(info.devcore).unwrap_or(0),
            split: u32::try_from(info.count).unwrap_or(0),
            numa: info.numa,
            healthy: info.health,
            cordoned: false,
            used_memory_mib: 0,
            used_cores: 0,
            tasks: 0,
            vendor: 0,
            group: None,
        }
    }

    pub fn free_memory_mib(&self) -> u64 {
        self.memory_mib.saturating_sub(self.used_memory_mib)
    }

    pub fn free_cores(&self) -> u32 {
        self.cores.saturating_sub(self.used_cores)
    }

    /// Fraction in use, the larger of memory and compute; 0 for a device
    /// that advertises no cores (it is never a candidate). A device without
    /// memory (AWS Neuron) is loaded by its compute alone.
    pub fn load(&self) -> f64 {
        share(
            self.used_memory_mib,
            self.memory_mib,
            self.used_cores,
            self.cores,
        )
    }

    pub fn grant(&mut self, memory_mib: u64, cores: u32) {
        self.used_memory_mib = self.used_memory_mib.saturating_add(memory_mib);
        self.used_cores = self.used_cores.saturating_add(cores);
        self.tasks = self.tasks.saturating_add(1);
    }
}

fn share(used_memory: u64, memory: u64, used_cores: u32, cores: u32) -> f64 {
    if cores == 0 {
        return 0.0;
    }
    let c = f64::from(used_cores) / f64::from(cores);
    let m = if memory == 0 {
        0.0
    } else {
        used_memory as f64 / memory as f64
    };
    m.max(c).clamp(0.0, 1.0)
}

/// What a node tells about how its devices are wired, for placement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Pair link scores by position in `Node::devices` (empty: unknown).
    pub links: Vec<Vec<u32>>,
    /// AWS Inferentia devices form a ring: any run of neighbours, wrapping.
    pub neuron_ring: bool,
    /// The node allows Ascend `hami-core` mode (`hami-vnpu-core: "true"`).
    pub vnpu_core: bool,
    /// Vastai devices are dies (`DeviceStrategy: die`).
    pub vastai_dies: bool,
}

/// A node's schedulable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub devices: Vec<Device>,
    pub topology: Topology,
}

impl Node {
    pub fn new(name: impl Into<String>, devices: Vec<Device>) -> Self {
        Self {
            name: name.into(),
            devices,
            topology: Topology::default(),
        }
    }

    /// The node's load: device loads averaged over its usable devices.
    pub fn load(&self) -> f64 {
        self.load_with(&[])
    }

    /// The load the node would have with `extra` (device index, memory MiB,
    /// cores) granted on top, without building that node: scoring every
    /// candidate placement stays allocation-free.
    pub fn load_with(&self, extra: &[(usize, u64, u32)]) -> f64 {
        self.load_of(None, extra)
    }

    /// [`Node::load_with`] over one family's devices only (`Some(vendor)`):
    /// a node's idle GPUs say nothing about how full its NPUs are.
    pub fn load_of(&self, vendor: Option<u16>, extra: &[(usize, u64, u32)]) -> f64 {
        let (mut sum, mut usable) = (0.0, 0usize);
        for (i, d) in self.devices.iter().enumerate() {
            if d.cores == 0 || vendor.is_some_and(|v| v != d.vendor) {
                continue;
            }
            let (mut memory, mut cores) = (d.used_memory_mib, d.used_cores);
            for (_, m, c) in extra.iter().filter(|(at, _, _)| *at == i) {
                memory = memory.saturating_add(*m);
                cores = cores.saturating_add(*c);
            }
            sum += share(memory, d.memory_mib, cores, d.cores);
            usable += 1;
        }
        if usable == 0 {
            0.0
        } else {
            sum / usable as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(index: u32, memory_mib: u64) -> Device {
        Device::new(format!("GPU-{index}"), index, "NVIDIA-A100", memory_mib)
    }

    #[test]
    fn load_is_the_larger_share_and_never_nan() {
        let mut d = device(0, 1000);
        d.grant(250, 50);
        assert_eq!(d.load(), 0.5);
        d.grant(500, 0);
        assert_eq!(d.load(), 0.75);
        let mut empty = device(1, 0);
        empty.cores = 0;
        assert_eq!(empty.load(), 0.0);
        let node = Node::new("n", vec![empty]);
        assert_eq!(node.load(), 0.0);
        // No memory (a Neuron device): loaded by its cores.
        let mut neuron = device(2, 0);
        neuron.cores = 2;
        neuron.grant(0, 1);
        assert_eq!(neuron.load(), 0.5);
    }

    #[test]
    fn registered_devices_map_over() {
        let info = DeviceInfo {
            id: "GPU-x".into(),
            index: 3,
            count: 10,
            devmem: 81920,
            devcore: 100,
            device_type: "NVIDIA-A100".into(),
            numa: 1,
            health: true,
            ..DeviceInfo::default()
        };
        let d = Device::from_register(&info);
        assert_eq!(
            (d.index, d.memory_mib, d.cores, d.split, d.numa),
            (3, 81920, 100, 10, 1)
        );
        assert!(d.healthy && !d.cordoned);
        let broken = DeviceInfo { devmem: -5, ..info };
        assert_eq!(Device::from_register(&broken).memory_mib, 0);
    }
}
