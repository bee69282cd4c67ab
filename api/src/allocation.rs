//! The pod allocation annotation (`hami.io/vgpu-devices-to-allocate` and friends).
//!
//! Wire format, unchanged from HAMi: each device is `uuid,type,memMiB,cores:`, each
//! container's devices are followed by `;`. Slots run over init containers first,
//! then app containers, and a container without devices keeps an empty slot so the
//! indexes stay aligned with the pod spec:
//!
//! ```text
//! GPU-a,NVIDIA,3000,30:;;GPU-b,NVIDIA,1024,0:GPU-c,NVIDIA,1024,0:;
//! ^ container 0         ^ 1 (none)  ^ container 2, two devices
//! ```

use std::fmt;

use thiserror::Error;

const DEVICE_END: char = ':';
const CONTAINER_END: char = ';';
const FIELD_SEP: char = ',';

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AllocationError {
    #[error("allocation annotation, container {container}, device {device}: field `{field}` = {value:?}: {reason}")]
    Field {
        container: usize,
        device: usize,
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("allocation annotation, container {container}, device {device}: expected 4 fields `uuid,type,mem,cores`, found {found} in {segment:?}")]
    FieldCount {
        container: usize,
        device: usize,
        found: usize,
        segment: String,
    },
    #[error("cannot encode allocation, container {container}, device {device}: field `{field}` = {value:?} {reason}")]
    Unencodable {
        container: usize,
        device: usize,
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// One device granted to one container.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerDevice {
    pub uuid: String,
    /// HAMi's device type, e.g. `NVIDIA` or `Ascend910B3`.
    pub device_type: String,
    /// Device memory in MiB. HAMi stores an int32, so at most `i32::MAX`.
    pub mem_mib: u32,
    /// Compute share in percent of the device (0 means unlimited / best effort).
    pub cores: u32,
}

/// Per-container device lists, init containers first; empty slots are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAllocation {
    pub containers: Vec<Vec<ContainerDevice>>,
}

impl PodAllocation {
    pub fn new(containers: Vec<Vec<ContainerDevice>>) -> Self {
        Self { containers }
    }

    /// The slot for container `index` (init containers counted first); empty when out of range.
    pub fn container(&self, index: usize) -> &[ContainerDevice] {
        self.containers.get(index).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.containers.iter().all(Vec::is_empty)
    }

    pub fn encode(&self) -> Result<String, AllocationError> {
        let mut out = String::new();
        for (ci, devices) in self.containers.iter().enumerate() {
            for (di, dev) in devices.iter().enumerate() {
                check_encodable(ci, di, "uuid", &dev.uuid)?;
                check_encodable(ci, di, "type", &dev.device_type)?;
                for (field, v) in [("mem", dev.mem_mib), ("cores", dev.cores)] {
                    if v > i32::MAX as u32 {
                        return Err(AllocationError::Unencodable {
                            container: ci,
                            device: di,
                            field,
                            value: v.to_string(),
                            reason: "exceeds HAMi's int32 range",
                        });
                    }
                }
                use fmt::Write;
                let _ = write!(
                    out,
                    "{}{FIELD_SEP}{}{FIELD_SEP}{}{FIELD_SEP}{}{DEVICE_END}",
                    dev.uuid, dev.device_type, dev.mem_mib, dev.cores
                );
            }
            out.push(CONTAINER_END);
        }
        Ok(out)
    }

    /// Decodes the annotation value. HAMi's own encoder ends every container with `;`;
    /// a missing final `;` (hand-written values) is tolerated.
    pub fn decode(value: &str) -> Result<Self, AllocationError> {
        if value.is_empty() {
            return Ok(Self::default());
        }
        let body = value.strip_suffix(CONTAINER_END).unwrap_or(value);
        let containers = body
            .split(CONTAINER_END)
            .enumerate()
            .map(|(ci, container)| decode_container(ci, container))
            .collect::<Result<_, _>>()?;
        Ok(Self { containers })
    }
}

fn check_encodable(
    container: usize,
    device: usize,
    field: &'static str,
    value: &str,
) -> Result<(), AllocationError> {
    let reason = if value.is_empty() {
        "is empty"
    } else if value.contains([FIELD_SEP, DEVICE_END, CONTAINER_END]) {
        "contains a separator (, : ;)"
    } else {
        return Ok(());
    };
    Err(AllocationError::Unencodable {
        container,
        device,
        field,
        value: value.to_owned(),
        reason,
    })
}

fn decode_container(container: usize, text: &str) -> Result<Vec<ContainerDevice>, AllocationError> {
    text.split(DEVICE_END)
        .filter(|segment| !segment.is_empty())
        .enumerate()
        .map(|(device, segment)| decode_device(container, device, segment))
        .collect()
}

fn decode_device(
    container: usize,
    device: usize,
    segment: &str,
) -> Result<ContainerDevice, AllocationError> {
    let fields: Vec<&str> = segment.split(FIELD_SEP).collect();
    let [uuid, device_type, mem, cores] = fields[..] else {
        return Err(AllocationError::FieldCount {
            container,
            device,
            found: fields.len(),
            segment: segment.to_owned(),
        });
    };
    let field_err = |field, value: &str, reason| AllocationError::Field {
        container,
        device,
        field,
        value: value.to_owned(),
        reason,
    };
    if uuid.is_empty() {
        return Err(field_err("uuid", uuid, "missing device UUID"));
    }
    if device_type.is_empty() {
        return Err(field_err("type", device_type, "missing device type"));
    }
    let number = |field, v: &str| -> Result<u32, AllocationError> {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(field_err(field, v, "expected a non-negative whole number"));
        }
        v.parse::<i32>()
            .map(|n| n as u32)
            .map_err(|_| field_err(field, v, "exceeds HAMi's int32 range"))
    };
    Ok(ContainerDevice {
        uuid: uuid.to_owned(),
        device_type: device_type.to_owned(),
        mem_mib: number("mem", mem)?,
        cores: number("cores", cores)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev(uuid: &str, mem: u32, cores: u32) -> ContainerDevice {
        ContainerDevice {
            uuid: uuid.into(),
            device_type: "NVIDIA".into(),
            mem_mib: mem,
            cores,
        }
    }

    #[test]
    fn decodes_hami_written_values() {
        // Single container, single device, as HAMi's EncodePodSingleDevice writes it.
        let a = PodAllocation::decode("GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448,NVIDIA,3000,30:;")
            .unwrap();
        assert_eq!(
            a.containers,
            vec![vec![dev(
                "GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448",
                3000,
                30
            )]]
        );

        // Init container without devices, then a two-GPU app container, then an empty one.
        let a = PodAllocation::decode(";GPU-a,NVIDIA,1024,0:GPU-b,NVIDIA,2048,50:;;").unwrap();
        assert_eq!(a.containers.len(), 3);
        assert!(a.container(0).is_empty());
        assert_eq!(
            a.container(1),
            &[dev("GPU-a", 1024, 0), dev("GPU-b", 2048, 50)]
        );
        assert!(a.container(2).is_empty());
        assert!(a.container(7).is_empty());

        let ascend = PodAllocation::decode("Ascend910B3-0,Ascend910B3,16384,25:;").unwrap();
        assert_eq!(ascend.container(0)[0].device_type, "Ascend910B3");
    }

    #[test]
    fn encodes_exactly_like_hami() {
        let a = PodAllocation::new(vec![
            vec![],
            vec![dev("GPU-a", 3000, 30), dev("GPU-b", 0, 100)],
            vec![],
        ]);
        assert_eq!(
            a.encode().unwrap(),
            ";GPU-a,NVIDIA,3000,30:GPU-b,NVIDIA,0,100:;;"
        );
        assert_eq!(PodAllocation::default().encode().unwrap(), "");
        assert!(PodAllocation::decode("").unwrap().is_empty());
    }

    #[test]
    fn tolerates_missing_final_separator() {
        let a = PodAllocation::decode("GPU-a,NVIDIA,10,0").unwrap();
        assert_eq!(a.containers, vec![vec![dev("GPU-a", 10, 0)]]);
    }

    #[test]
    fn every_malformed_input_names_the_field() {
        let cases: &[(&str, &str)] = &[
            ("GPU-a,NVIDIA,3000:;", "expected 4 fields"),
            ("GPU-a,NVIDIA,3000,30,extra:;", "expected 4 fields"),
            ("GPU-a:;", "found 1"),
            (",NVIDIA,3000,30:;", "`uuid`"),
            ("GPU-a,,3000,30:;", "`type`"),
            ("GPU-a,NVIDIA,,30:;", "`mem`"),
            ("GPU-a,NVIDIA,-1,30:;", "`mem`"),
            ("GPU-a,NVIDIA,3g,30:;", "`mem`"),
            ("GPU-a,NVIDIA, 3000,30:;", "`mem`"),
            ("GPU-a,NVIDIA,2147483648,30:;", "int32"),
            ("GPU-a,NVIDIA,3000,x:;", "`cores`"),
            ("GPU-a,NVIDIA,3000,1.5:;", "`cores`"),
            (
                "GPU-ok,NVIDIA,1,1:;GPU-b,NVIDIA,1,bad:;",
                "container 1, device 0",
            ),
            (
                "GPU-ok,NVIDIA,1,1:GPU-b,NVIDIA,1,bad:;",
                "container 0, device 1",
            ),
        ];
        for (input, needle) in cases {
            let err = PodAllocation::decode(input).expect_err(input).to_string();
            assert!(err.contains(needle), "{input:?} -> {err}");
        }
    }

    #[test]
    fn refuses_to_encode_values_that_would_corrupt_the_annotation() {
        for (uuid, ty) in [
            ("GPU:a", "NVIDIA"),
            ("GPU-a", "NV,IDIA"),
            ("", "NVIDIA"),
            ("GPU;a", "NVIDIA"),
        ] {
            let mut d = dev(uuid, 1, 1);
            d.device_type = ty.into();
            let err = PodAllocation::new(vec![vec![d]]).encode().unwrap_err();
            assert!(matches!(err, AllocationError::Unencodable { .. }), "{err}");
        }
        let err = PodAllocation::new(vec![vec![dev("GPU-a", u32::MAX, 0)]])
            .encode()
            .unwrap_err();
        assert!(err.to_string().contains("`mem`"), "{err}");
    }

    fn arb_device() -> impl Strategy<Value = ContainerDevice> {
        (
            "[A-Za-z0-9-]{1,40}",
            "[A-Za-z0-9 -]{1,16}",
            0u32..=i32::MAX as u32,
            0u32..=100,
        )
            .prop_map(|(uuid, device_type, mem_mib, cores)| ContainerDevice {
                uuid,
                device_type,
                mem_mib,
                cores,
            })
    }

    proptest! {
        #[test]
        fn round_trips(containers in prop::collection::vec(prop::collection::vec(arb_device(), 0..4), 1..6)) {
            let a = PodAllocation::new(containers);
            let text = a.encode().unwrap();
            prop_assert_eq!(PodAllocation::decode(&text).unwrap(), a);
        }

        #[test]
        fn decoder_never_panics(s in "[A-Za-z0-9,:;-]{0,64}") {
            let _ = PodAllocation::decode(&s);
        }

        #[test]
        fn decoder_never_panics_on_any_unicode(s in ".{0,64}") {
            let _ = PodAllocation::decode(&s);
        }
    }
}
