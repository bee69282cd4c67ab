//! One entry point over everything the hook parses from the outside: the
//! State (stdin), config.json, the annotations, a limits file and a
//! `/proc/<pid>/cgroup` text. The cargo-fuzz target (oci-hook/fuzz) and the
//! bounded run in the test suite both drive it; none of it may panic.

use std::collections::BTreeMap;

use crate::{cgroup, request, state};

/// Splits `data` at 0xFF bytes into the inputs, in the order above.
pub fn hook_input(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0xFF);
    let state_json = parts.next().unwrap_or_default();
    let config_json = parts.next().unwrap_or_default();
    let annotations_text = parts.next().unwrap_or_default();
    let limits_text = parts.next().unwrap_or_default();
    let cgroup_text = parts.next().unwrap_or_default();

    let mut annotations: BTreeMap<String, String> = String::from_utf8_lossy(annotations_text)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if let Ok(s) = state::read_state(state_json) {
        annotations.extend(s.annotations);
        let _ = crate::hook::allocation_name(&s.id);
    }
    if let Ok(config) = serde_json::from_slice::<state::Config>(config_json) {
        let _ = config.has_own_mount_namespace();
        let _ = config.rootfs(std::path::Path::new("/run/bundle"));
        annotations.extend(config.annotations);
    }
    let _ = request::is_requested(&annotations);
    let _ = request::decide(&annotations);
    let _ = hami_api::limits_file::parse(&String::from_utf8_lossy(limits_text));
    let _ = cgroup::devices_cgroup(&String::from_utf8_lossy(cgroup_text));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn joined(parts: &[&[u8]]) -> Vec<u8> {
        parts.join(&0xFF)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The bounded fuzz run of the test suite: arbitrary bytes, and
        /// structured inputs near the real formats.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            hook_input(&data);
        }

        #[test]
        fn near_valid_inputs_never_panic(
            id in "[ -~]{0,12}",
            bundle in "/?[a-z/.]{0,12}",
            pid in any::<i64>(),
            key in prop_oneof![
                Just("hami.io/vgpu-devices-to-allocate"),
                Just("hami.io/gpumem"),
                Just("hami.io/container-names"),
                Just("huawei.com/vnpu-mode"),
            ],
            value in "[A-Za-z0-9,:;.\\- ]{0,40}",
            cgroup_line in "[0-9]{0,2}:[a-z,]{0,12}:[ -~]{0,20}",
        ) {
            let state = format!(
                r#"{{"ociVersion":"1.0.2","id":{},"status":"creating","pid":{pid},"bundle":{},"annotations":{{{}:{}}}}}"#,
                serde_json::Value::from(id), serde_json::Value::from(bundle),
                serde_json::Value::from(key), serde_json::Value::from(value.clone()),
            );
            let config = format!(
                r#"{{"root":{{"path":"rootfs"}},"linux":{{"namespaces":[{{"type":"mount","path":{}}}]}}}}"#,
                serde_json::Value::from(value.clone())
            );
            hook_input(&joined(&[
                state.as_bytes(),
                config.as_bytes(),
                format!("{key}={value}").as_bytes(),
                format!("CUDA_DEVICE_MEMORY_LIMIT_0={value}").as_bytes(),
                cgroup_line.as_bytes(),
            ]));
        }
    }
}
