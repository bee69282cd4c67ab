//! AdmissionReview `admission.k8s.io/v1` on the wire: the request fields the
//! webhook reads, kept as the API server sent them (`object` stays raw JSON
//! so patch paths address exactly what was sent), and the response with a
//! base64 JSONPatch.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::json_patch::PatchOp;

pub const API_VERSION: &str = "admission.k8s.io/v1";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    pub request: Option<AdmissionRequest>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    pub version: String,
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    pub operation: String,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub old_object: Option<Value>,
    #[serde(default)]
    pub user_info: UserInfo,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// authentication.k8s.io/v1 `UserInfo`: who sent the request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// For a pod's bound service-account token, the API server adds
    /// `authentication.kubernetes.io/node-name` (Kubernetes ≥ 1.30).
    #[serde(default)]
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// The extra key naming the node of the pod whose token made the request.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub code: u16,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// Base64 of the JSON Patch document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl AdmissionResponse {
    /// Allowed; `ops` (possibly none) as the patch. No ops: no patch at all,
    /// so the API server leaves the object byte-for-byte as it was.
    pub fn allow(uid: &str, ops: &[PatchOp]) -> Self {
        let patch = (!ops.is_empty()).then(|| {
            base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(ops).expect("patch serialises"))
        });
        Self {
            uid: uid.to_owned(),
            allowed: true,
            status: None,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: Vec::new(),
        }
    }

    /// Denied with `message` (403, as the API server shows it to the user).
    pub fn deny(uid: &str, message: impl Into<String>) -> Self {
        Self {
            uid: uid.to_owned(),
            allowed: false,
            status: Some(Status {
                code: 403,
                message: message.into(),
            }),
            patch_type: None,
            patch: None,
            warnings: Vec::new(),
        }
    }

    /// The review document to send back.
    pub fn into_review(self) -> Value {
        serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "AdmissionReview",
            "response": self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/fixtures/k8s")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn the_captured_reviews_decode() {
        for name in [
            "sample-admission-review-mutate.json",
            "sample-admission-review-validate.json",
        ] {
            let r: AdmissionReview = serde_json::from_str(&fixture(name)).unwrap();
            assert_eq!(
                (r.api_version.as_str(), r.kind.as_str()),
                (API_VERSION, "AdmissionReview")
            );
            let req = r.request.unwrap();
            assert_eq!(
                (req.kind.kind.as_str(), req.operation.as_str()),
                ("Pod", "CREATE")
            );
            assert!(!req.uid.is_empty());
            assert!(req.object.unwrap()["spec"]["containers"].is_array());
        }
    }

    #[test]
    fn responses_are_what_the_api_server_expects() {
        let ops = [PatchOp::Add {
            path: "/spec/schedulerName".into(),
            value: "hami-scheduler".into(),
        }];
        let v = AdmissionResponse::allow("u1", &ops).into_review();
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["response"]["uid"], "u1");
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&patch).unwrap(),
            serde_json::json!([{"op": "add", "path": "/spec/schedulerName", "value": "hami-scheduler"}])
        );
        let none = AdmissionResponse::allow("u2", &[]).into_review();
        assert_eq!(
            none["response"],
            serde_json::json!({"uid": "u2", "allowed": true})
        );
        let denied = AdmissionResponse::deny("u3", "no").into_review();
        assert_eq!(
            denied["response"],
            serde_json::json!({"uid": "u3", "allowed": false, "status": {"code": 403, "message": "no"}})
        );
    }
}
