//! The node register annotation (`hami.io/node-nvidia-register` and vendor variants).
//!
//! HAMi v2.5+ writes a JSON list of `DeviceInfo` (Go `encoding/json`, every field
//! `omitempty`). Older device plugins wrote a colon form,
//! `id,count,devmem,devcore,type,numa,health[,index,mode]:` per device, which the
//! scheduler still accepts during rolling upgrades; so do we.
//!
//! Fields we do not model (`migProfiles`, `devicevendor`, `custominfo`, …) are kept
//! verbatim in [`DeviceInfo::extra`], so re-encoding a register never drops data.

use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

/// HAMi's default mode when a legacy 7-field entry does not name one.
pub const DEFAULT_MODE: &str = "hami-core";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NodeRegisterError {
    #[error("node register annotation is empty")]
    Empty,
    #[error("node register annotation is not valid JSON: {0}")]
    Json(String),
    #[error("node register annotation: expected a JSON list of device objects, device {device} is {found}")]
    NotAnObject { device: usize, found: &'static str },
    #[error("node register annotation, device {device}: field `{field}` = {value}: {reason}")]
    Field {
        device: usize,
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("node register annotation (legacy form), device {device}: expected 7 or 9 comma-separated fields, found {found} in {segment:?}")]
    LegacyFieldCount {
        device: usize,
        found: usize,
        segment: String,
    },
    #[error("cannot encode node register in the legacy form, device {device}: field `{field}` = {value:?} contains a separator")]
    Unencodable {
        device: usize,
        field: &'static str,
        value: String,
    },
}

/// One device as a node advertises it to the scheduler. Field names and the
/// `omitempty` behaviour follow HAMi's `pkg/device.DeviceInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceInfo {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub index: u32,
    /// Split count: how many containers may share the device.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub count: i32,
    /// Device memory in MiB, after `deviceMemoryScaling`.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub devmem: i32,
    /// Compute units (100 = one whole device), after `deviceCoreScaling`.
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub devcore: i32,
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub device_type: String,
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub numa: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mode: String,
    /// Unmodelled fields, emitted where Go's struct order puts `migProfiles`
    /// (between `mode` and `health`), so re-encoding stays byte-identical.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    #[serde(skip_serializing_if = "is_false")]
    pub health: bool,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// Encodes the JSON list HAMi ≥ 2.5 writes.
pub fn encode(devices: &[DeviceInfo]) -> String {
    serde_json::to_string(devices).expect("DeviceInfo serialization is infallible")
}

/// Encodes the legacy colon form (9 fields), for schedulers older than HAMi 2.5.
pub fn encode_legacy(devices: &[DeviceInfo]) -> Result<String, NodeRegisterError> {
    let mut out = String::new();
    for (device, d) in devices.iter().enumerate() {
        for (field, value) in [("id", &d.id), ("type", &d.device_type), ("mode", &d.mode)] {
            if value.contains([',', ':']) {
                return Err(NodeRegisterError::Unencodable {
                    device,
                    field,
                    value: value.clone(),
                });
            }
        }
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}:",
            d.id, d.count, d.devmem, d.devcore, d.device_type, d.numa, d.health, d.index, d.mode
        ));
    }
    Ok(out)
}

/// Decodes either form. JSON is recognised by its leading `[`.
pub fn decode(value: &str) -> Result<Vec<DeviceInfo>, NodeRegisterError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(NodeRegisterError::Empty);
    }
    if trimmed.starts_with('[') {
        decode_json(trimmed)
    } else {
        decode_legacy(trimmed)
    }
}

fn decode_json(value: &str) -> Result<Vec<DeviceInfo>, NodeRegisterError> {
    let list: Vec<Value> =
        serde_json::from_str(value).map_err(|e| NodeRegisterError::Json(e.to_string()))?;
    list.into_iter()
        .enumerate()
        .map(|(device, item)| match item {
            Value::Object(map) => decode_json_device(device, map),
            other => Err(NodeRegisterError::NotAnObject {
                device,
                found: json_kind(&other),
            }),
        })
        .collect()
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn decode_json_device(
    device: usize,
    mut map: Map<String, Value>,
) -> Result<DeviceInfo, NodeRegisterError> {
    let mut take = |field: &'static str| map.remove(field).filter(|v| !v.is_null());
    let bad = |field, value: &Value, reason| NodeRegisterError::Field {
        device,
        field,
        value: value.to_string(),
        reason,
    };
    let string = |field, v: Option<Value>| match v {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(bad(field, &other, "expected a string")),
    };
    let int = |field, v: Option<Value>, min: i64, max: i64| -> Result<i64, NodeRegisterError> {
        match v {
            None => Ok(0),
            Some(v) => match v.as_i64() {
                Some(n) if (min..=max).contains(&n) => Ok(n),
                Some(_) => Err(bad(field, &v, "out of range")),
                None => Err(bad(field, &v, "expected a whole number")),
            },
        }
    };
    let i32_field =
        |field, v| int(field, v, i64::from(i32::MIN), i64::from(i32::MAX)).map(|n| n as i32);
    let info = DeviceInfo {
        id: string("id", take("id"))?,
        index: int("index", take("index"), 0, i64::from(u32::MAX))? as u32,
        count: i32_field("count", take("count"))?,
        devmem: i32_field("devmem", take("devmem"))?,
        devcore: i32_field("devcore", take("devcore"))?,
        device_type: string("type", take("type"))?,
        numa: i32_field("numa", take("numa"))?,
        mode: string("mode", take("mode"))?,
        health: match take("health") {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(other) => return Err(bad("health", &other, "expected true or false")),
        },
        extra: Map::new(),
    };
    let info = DeviceInfo { extra: map, ..info };
    if info.id.is_empty() {
        return Err(NodeRegisterError::Field {
            device,
            field: "id",
            value: "\"\"".into(),
            reason: "every device needs an id",
        });
    }
    for (field, v) in [
        ("count", info.count),
        ("devmem", info.devmem),
        ("devcore", info.devcore),
    ] {
        if v < 0 {
            return Err(bad(field, &Value::from(v), "must not be negative"));
        }
    }
    Ok(info)
}

fn decode_legacy(value: &str) -> Result<Vec<DeviceInfo>, NodeRegisterError> {
    value
        .split(':')
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(device, segment)| decode_legacy_device(device, segment))
        .collect()
}

fn decode_legacy_device(device: usize, segment: &str) -> Result<DeviceInfo, NodeRegisterError> {
    let f: Vec<&str> = segment.split(',').collect();
    if f.len() != 7 && f.len() != 9 {
        return Err(NodeRegisterError::LegacyFieldCount {
            device,
            found: f.len(),
            segment: segment.to_owned(),
        });
    }
    let bad = |field, value: &str, reason| NodeRegisterError::Field {
        device,
        field,
        value: format!("{value:?}"),
        reason,
    };
    let num = |field, v: &str| -> Result<i32, NodeRegisterError> {
        let digits = v.strip_prefix('-').unwrap_or(v);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(field, v, "expected a whole number"));
        }
        v.parse().map_err(|_| bad(field, v, "out of range"))
    };
    let non_negative = |field, v: &str| -> Result<i32, NodeRegisterError> {
        let n = num(field, v)?;
        if n < 0 {
            return Err(bad(field, v, "must not be negative"));
        }
        Ok(n)
    };
    if f[0].is_empty() {
        return Err(bad("id", f[0], "every device needs an id"));
    }
    let health = match f[6] {
        // Go's strconv.ParseBool spellings.
        "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
        "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
        other => return Err(bad("health", other, "expected true or false")),
    };
    let (index, mode) = if f.len() == 9 {
        let index = if f[7].bytes().all(|b| b.is_ascii_digit()) {
            f[7].parse::<u32>().ok()
        } else {
            None
        };
        let index =
            index.ok_or_else(|| bad("index", f[7], "expected a non-negative whole number"))?;
        (index, f[8].to_owned())
    } else {
        (0, DEFAULT_MODE.to_owned())
    };
    Ok(DeviceInfo {
        id: f[0].to_owned(),
        count: non_negative("count", f[1])?,
        devmem: non_negative("devmem", f[2])?,
        devcore: non_negative("devcore", f[3])?,
        device_type: f[4].to_owned(),
        numa: num("numa", f[5])?,
        health,
        index,
        mode,
        extra: Map::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HAMI_JSON: &str = r#"[{"id":"GPU-8dcd427f-483b-b48f-d7e5-75fb19a52b76","count":10,"devmem":81559,"devcore":100,"type":"NVIDIA-NVIDIA H100 80GB HBM3","mode":"hami-core","health":true},{"id":"GPU-2","index":1,"count":10,"devmem":81559,"devcore":100,"type":"NVIDIA-NVIDIA H100 80GB HBM3","numa":1,"mode":"hami-core","migProfiles":[{"name":"1g.10gb","memoryMB":9856,"core":14,"sliceCount":1,"placements":[{"start":0,"size":1}]}]},{"id":"GPU-3","index":2,"count":7,"devmem":40960,"devcore":100,"type":"NVIDIA-A100-SXM4-40GB","mode":"mig","migProfiles":[{"name":"1g.5gb","memoryMB":4864,"core":14,"sliceCount":1,"placements":[{"start":0,"size":1}]}],"health":true}]"#;

    #[test]
    fn decodes_hami_json_and_keeps_unknown_fields() {
        let devs = decode(HAMI_JSON).unwrap();
        assert_eq!(devs.len(), 3);
        assert_eq!(devs[0].id, "GPU-8dcd427f-483b-b48f-d7e5-75fb19a52b76");
        assert_eq!(devs[0].index, 0);
        assert_eq!(devs[0].devmem, 81559);
        assert_eq!(devs[0].device_type, "NVIDIA-NVIDIA H100 80GB HBM3");
        assert!(devs[0].health);
        assert_eq!(devs[1].numa, 1);
        // Go omits false: the second device is unhealthy.
        assert!(!devs[1].health);
        assert!(devs[1].extra.contains_key("migProfiles"));
        assert!(devs[2].health);
        assert_eq!(devs[2].mode, "mig");
        // Re-encoding is byte-identical to what Go's encoding/json wrote.
        assert_eq!(encode(&devs), HAMI_JSON);
    }

    #[test]
    fn decodes_legacy_colon_form() {
        let devs = decode("GPU-a,10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,0,true:GPU-b,10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,1,false,1,hami-core:").unwrap();
        assert_eq!(devs.len(), 2);
        assert_eq!(devs[0].mode, DEFAULT_MODE);
        assert_eq!(devs[0].device_type, "NVIDIA-Tesla V100-PCIE-32GB");
        assert_eq!(devs[1].index, 1);
        assert!(!devs[1].health);
        assert_eq!(encode_legacy(&devs).unwrap().split(':').count(), 3);
    }

    #[test]
    fn malformed_inputs_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("[", "not valid JSON"),
            ("[1]", "device 0 is a number"),
            (r#"[{"id":"a","devmem":"big"}]"#, "`devmem`"),
            (r#"[{"id":"a","devmem":1.5}]"#, "`devmem`"),
            (r#"[{"id":"a","devmem":4294967296}]"#, "`devmem`"),
            (r#"[{"id":"a","count":-1}]"#, "`count`"),
            (r#"[{"id":"a","index":-1}]"#, "`index`"),
            (r#"[{"id":"a","health":"yes"}]"#, "`health`"),
            (r#"[{"id":7}]"#, "`id`"),
            (r#"[{"devmem":1}]"#, "`id`"),
            (
                r#"[{"id":"a"},{"id":"b","type":5}]"#,
                "device 1: field `type`",
            ),
            ("GPU-a,10,32768,100,T,0:", "expected 7 or 9"),
            ("GPU-a,x,32768,100,T,0,true:", "`count`"),
            ("GPU-a,10,32768,100,T,0,maybe:", "`health`"),
            ("GPU-a,10,32768,100,T,zero,true:", "`numa`"),
            ("GPU-a,10,32768,100,T,0,true,-1,hami-core:", "`index`"),
            (",10,32768,100,T,0,true:", "`id`"),
        ];
        for (input, needle) in cases {
            let err = decode(input).expect_err(input).to_string();
            assert!(err.contains(needle), "{input:?} -> {err}");
        }
    }

    fn arb_device() -> impl Strategy<Value = DeviceInfo> {
        (
            "[A-Za-z0-9-]{1,40}",
            any::<u32>(),
            0i32..=i32::MAX,
            0i32..=i32::MAX,
            0i32..=i32::MAX,
            "[A-Za-z0-9 -]{0,24}",
            -1i32..8,
            "(hami-core|mig|mps)?",
            any::<bool>(),
        )
            .prop_map(
                |(id, index, count, devmem, devcore, device_type, numa, mode, health)| DeviceInfo {
                    id,
                    index,
                    count,
                    devmem,
                    devcore,
                    device_type,
                    numa,
                    mode,
                    health,
                    extra: Map::new(),
                },
            )
    }

    proptest! {
        #[test]
        fn json_round_trips(devs in prop::collection::vec(arb_device(), 0..6)) {
            prop_assert_eq!(decode(&encode(&devs)).unwrap(), devs);
        }

        #[test]
        fn legacy_round_trips(devs in prop::collection::vec(arb_device(), 1..6)) {
            let devs: Vec<DeviceInfo> = devs
                .into_iter()
                .map(|mut d| { if d.mode.is_empty() { d.mode = DEFAULT_MODE.into(); } d })
                .collect();
            prop_assert_eq!(decode(&encode_legacy(&devs).unwrap()).unwrap(), devs);
        }

        #[test]
        fn decoder_never_panics(s in ".{0,80}") {
            let _ = decode(&s);
        }
    }
}
