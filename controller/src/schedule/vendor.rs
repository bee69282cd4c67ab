//! The device families the scheduler places, and what differs between them:
//! which annotations carry a node's inventory and a pod's decision, how a
//! memory request is sized on a device, and how a multi-device request is laid
//! out (see `placement`).

use hami_api::keys::VendorAnnotationKeys;
use hami_api::VendorResources;

/// One vNPU template of an Ascend chip (HAMi's `vnpus[].templates`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub memory_mib: u64,
    pub ai_core: u32,
}

/// An Ascend chip's virtualisation parameters (HAMi's `vnpus[]` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AscendChip {
    /// Sorted by memory, smallest first: a request takes the first that holds it.
    pub templates: Vec<Template>,
    pub ai_core: u32,
    /// 910C: NPUs come in modules of two and multi-NPU jobs take whole modules.
    pub modules_of_two: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Family {
    /// NVIDIA and every vendor without special placement: any fitting devices.
    Shared,
    Ascend(AscendChip),
    /// AWS Neuron: devices hold NeuronCores, multi-device jobs need
    /// contiguous devices.
    AwsNeuron,
    /// Vastai: in die mode devices are dies, grouped on cards (AIC).
    Vastai,
}

/// How a granted share is sized on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sized {
    pub memory_mib: u64,
    pub cores: u32,
    /// The Ascend template applied, if any.
    pub template: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorProfile {
    pub resources: VendorResources,
    pub keys: VendorAnnotationKeys,
    pub family: Family,
}

fn ceil_share(part: u32, whole: u32) -> u32 {
    if whole == 0 {
        return 100;
    }
    (part.saturating_mul(100)).div_ceil(whole).min(100)
}

impl VendorProfile {
    pub fn nvidia() -> Self {
        Self {
            resources: VendorResources::nvidia(),
            keys: VendorAnnotationKeys::nvidia(),
            family: Family::Shared,
        }
    }

    pub fn ascend(common_word: &str, chip: AscendChip) -> Self {
        Self {
            resources: VendorResources::ascend(common_word),
            keys: VendorAnnotationKeys::for_common_word(common_word),
            family: Family::Ascend(chip),
        }
    }

    pub fn aws_neuron() -> Self {
        Self {
            resources: VendorResources::new(
                "awsneuron",
                "aws.amazon.com/neuron",
                None,
                Some("aws.amazon.com/neuroncore"),
            ),
            keys: VendorAnnotationKeys {
                devices_to_allocate: "hami.io/aws-neuron-devices-to-allocate".into(),
                devices_allocated: "hami.io/aws-neuron-devices-allocated".into(),
                // Neuron nodes advertise capacity, not a register annotation.
                node_register: String::new(),
                node_handshake: String::new(),
            },
            family: Family::AwsNeuron,
        }
    }

    pub fn vastai() -> Self {
        Self {
            resources: VendorResources::new("vastai", "vastaitech.com/va", None, None),
            keys: VendorAnnotationKeys::vastai(),
            family: Family::Vastai,
        }
    }

    /// The families placed by the extender, NVIDIA first, with HAMi's
    /// default Ascend templates (the chart's device ConfigMap).
    pub fn defaults() -> Vec<Self> {
        let t = |name: &str, memory_mib: u64, ai_core: u32| Template {
            name: name.into(),
            memory_mib,
            ai_core,
        };
        let chip = |templates: Vec<Template>, ai_core: u32| AscendChip {
            templates,
            ai_core,
            modules_of_two: false,
        };
        let b3 = || {
            chip(
                vec![t("vir05_1c_16g", 16384, 5), t("vir10_3c_32g", 32768, 10)],
                20,
            )
        };
        vec![
            Self::nvidia(),
            Self::ascend(
                "Ascend910A",
                chip(
                    vec![
                        t("vir02", 2184, 2),
                        t("vir04", 4369, 4),
                        t("vir08", 8738, 8),
                        t("vir16", 17476, 16),
                    ],
                    30,
                ),
            ),
            Self::ascend(
                "Ascend910B2",
                chip(
                    vec![
                        t("vir03_1c_8g", 8192, 3),
                        t("vir06_1c_16g", 16384, 6),
                        t("vir12_3c_32g", 32768, 12),
                    ],
                    24,
                ),
            ),
            Self::ascend("Ascend910B3", b3()),
            Self::ascend("Ascend910B4-1", b3()),
            Self::ascend(
                "Ascend910B4",
                chip(
                    vec![t("vir05_1c_8g", 8192, 5), t("vir10_3c_16g", 16384, 10)],
                    20,
                ),
            ),
            Self::ascend(
                "Ascend310P",
                chip(
                    vec![
                        t("vir01", 3072, 1),
                        t("vir02", 6144, 2),
                        t("vir04", 12288, 4),
                    ],
                    8,
                ),
            ),
            Self::ascend(
                "Ascend910C",
                AscendChip {
                    modules_of_two: true,
                    ..chip(
                        vec![t("vir06_1c_16g", 16384, 6), t("vir12_3c_32g", 32768, 12)],
                        24,
                    )
                },
            ),
            Self::aws_neuron(),
            Self::vastai(),
        ]
    }

    pub fn name(&self) -> &str {
        &self.resources.name
    }

    /// Whether a device of this family must advertise memory to be placed on.
    pub fn manages_memory(&self) -> bool {
        !matches!(self.family, Family::AwsNeuron)
    }

    /// Whether `cores` in a request is a percentage (NVIDIA, Ascend) or a
    /// count of compute units (NeuronCores).
    pub fn cores_are_percent(&self) -> bool {
        !matches!(self.family, Family::AwsNeuron)
    }

    /// What a request of `memory_mib` and `cores` takes on a device of
    /// `device_memory_mib` and `device_cores`; `None` when nothing the device
    /// offers can hold it. Ascend without `hami-core` mode rounds up to the
    /// smallest template that holds the memory (and takes its AI cores); a
    /// request larger than every template takes the whole NPU.
    pub fn size(
        &self,
        memory_mib: u64,
        cores: u32,
        device_memory_mib: u64,
        device_cores: u32,
        hami_core: bool,
    ) -> Option<Sized> {
        match &self.family {
            Family::Ascend(chip) if !hami_core => {
                let template = chip
                    .templates
                    .iter()
                    .position(|t| memory_mib <= t.memory_mib && t.memory_mib <= device_memory_mib);
                match template {
                    Some(i) => Some(Sized {
                        memory_mib: chip.templates[i].memory_mib,
                        cores: ceil_share(chip.templates[i].ai_core, chip.ai_core),
                        template: Some(i),
                    }),
                    None => (memory_mib <= device_memory_mib).then_some(Sized {
                        memory_mib: device_memory_mib,
                        cores: device_cores.min(100),
                        template: None,
                    }),
                }
            }
            _ => Some(Sized {
                memory_mib,
                cores: cores.min(device_cores),
                template: None,
            }),
        }
    }

    /// The template of an Ascend grant, for the `huawei.com/<word>` annotation.
    pub fn template_name(&self, index: Option<usize>) -> Option<&str> {
        match (&self.family, index) {
            (Family::Ascend(chip), Some(i)) => chip.templates.get(i).map(|t| t.name.as_str()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b3() -> VendorProfile {
        VendorProfile::defaults()
            .into_iter()
            .find(|p| p.name() == "Ascend910B3")
            .unwrap()
    }

    #[test]
    fn ascend_requests_round_up_to_the_smallest_template() {
        let p = b3();
        // (request MiB, hami-core mode) -> (granted MiB, cores %, template)
        let cases = [
            ((1000, false), Some((16384, 25, Some("vir05_1c_16g")))),
            ((16384, false), Some((16384, 25, Some("vir05_1c_16g")))),
            ((16385, false), Some((32768, 50, Some("vir10_3c_32g")))),
            ((40000, false), Some((65536, 100, None))),
            ((65536, false), Some((65536, 100, None))),
            ((70000, false), None),
            ((1000, true), Some((1000, 30, None))),
        ];
        for ((mib, hami_core), want) in cases {
            let got = p
                .size(mib, 30, 65536, 100, hami_core)
                .map(|s| (s.memory_mib, s.cores, p.template_name(s.template)));
            assert_eq!(got, want, "{mib} MiB, hami-core {hami_core}");
        }
    }

    #[test]
    fn template_cores_are_the_ai_core_share_rounded_up() {
        let a = VendorProfile::defaults()
            .into_iter()
            .find(|p| p.name() == "Ascend910A")
            .unwrap();
        // vir02 = 2 of 30 AI cores: 6.67% -> 7, as HAMi charges it.
        assert_eq!(a.size(2000, 0, 32768, 100, false).unwrap().cores, 7);
        assert_eq!(ceil_share(3, 0), 100);
    }

    #[test]
    fn other_families_take_the_request_as_is() {
        let n = VendorProfile::nvidia();
        let s = n.size(3000, 130, 81920, 100, false).unwrap();
        assert_eq!((s.memory_mib, s.cores, s.template), (3000, 100, None));
        assert!(!VendorProfile::aws_neuron().manages_memory());
        assert!(!VendorProfile::aws_neuron().cores_are_percent());
    }
}
