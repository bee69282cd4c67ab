//! Renders charts/hami for the default values and three other value sets
//! and validates what it would install: every object through k8s-openapi's
//! types (a field the type does not have fails the round trip), the
//! KubeSchedulerConfiguration's extender stanza, the webhook's TLS and
//! caBundle wiring, the node DaemonSet, least-privilege RBAC, and the
//! dashboard's metric names. yamllint checks values.yaml.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hami_chart::{documents, render};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde_json::{json, Value};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hami")
}

const NAMESPACE: &str = "hami-system";

fn value_sets() -> Vec<(&'static str, Value)> {
    vec![
        ("defaults", json!({})),
        (
            "cert-manager, DRA and monitoring",
            json!({"scheduler": {"certManager": {"enabled": true}}, "dra": {"enabled": true},
                   "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}}}),
        ),
        (
            "a HAMi values.yaml carried over",
            json!({"schedulerName": "gpu-scheduler", "resourceName": "nvidia.com/vgpu",
                   "global": {"imageRegistry": "images.corp.internal"},
                   "scheduler": {"defaultSchedulerPolicy": {"nodeSchedulerPolicy": "spread", "gpuSchedulerPolicy": "topology-aware"},
                                 "admissionWebhook": {"failurePolicy": "Ignore", "whitelistNamespaces": ["kube-system", "monitoring"]}},
                   "devicePlugin": {"deviceSplitCount": 4, "deviceMemoryScaling": 2, "nodeSelector": {"gpu": "on", "zone": "a"}}}),
        ),
        (
            "controller alone, hami-core vNPU, CRI-O, no CDI",
            json!({"scheduler": {"kubeScheduler": {"enabled": false}, "admissionWebhook": {"enabled": false}, "leaderElect": false},
                   "ascend": {"hamiVnpuCore": true}, "devicePlugin": {"cdiEnabled": false, "runtime": "crio"}}),
        ),
    ]
}

fn values_with(overrides: &Value) -> Value {
    let mut v = hami_chart::read_yaml(&chart().join("values.yaml")).unwrap();
    hami_chart::merge(&mut v, overrides);
    v
}

/// Drops nulls, which k8s-openapi never writes back.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: {} does not deserialize: {e}", doc["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        normalized(&back),
        normalized(doc),
        "{file}: {} {} has fields its type does not know (or wrong types)",
        doc["kind"],
        doc["metadata"]["name"]
    );
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .collect()
}

fn one<'a>(docs: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found = find(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn args(c: &Value) -> Vec<String> {
    c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

fn flag(args: &[String], name: &str) -> Option<String> {
    let prefix = format!("--{name}=");
    args.iter()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
}

/// Every resource name hami-rs manages by default, with `resourceName`
/// overridden the way the value set does.
fn managed_names(values: &Value) -> BTreeSet<String> {
    let catalog = hami_api::ResourceCatalog::hami_defaults();
    let mut names = BTreeSet::new();
    for v in &catalog.vendors {
        for n in [
            Some(&v.resource_count_name),
            v.resource_memory_name.as_ref(),
            v.resource_memory_percentage_name.as_ref(),
            v.resource_core_name.as_ref(),
            v.resource_priority_name.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            names.insert(n.clone());
        }
    }
    names.remove("nvidia.com/gpu");
    names.insert(values["resourceName"].as_str().unwrap().to_owned());
    names
}

#[test]
fn every_value_set_renders_to_valid_objects() {
    for (set, overrides) in value_sets() {
        let values = values_with(&overrides);
        let rendered = render(&chart(), &overrides, "hami", NAMESPACE)
            .unwrap_or_else(|e| panic!("{set}: {e}"));
        let docs = documents(&rendered).unwrap_or_else(|e| panic!("{set}: {e}"));
        assert!(docs.len() > 10, "{set}: only {} objects", docs.len());
        let mut seen = BTreeSet::new();
        for (file, d) in &docs {
            let key = (
                d["kind"].as_str().unwrap().to_owned(),
                d["metadata"]["name"].as_str().unwrap().to_owned(),
            );
            assert!(seen.insert(key.clone()), "{set}: {key:?} twice");
            match d["kind"].as_str().unwrap() {
                "ConfigMap" => round_trip::<ConfigMap>(file, d),
                "Deployment" => round_trip::<Deployment>(file, d),
                "DaemonSet" => round_trip::<DaemonSet>(file, d),
                "Service" => round_trip::<Service>(file, d),
                "ServiceAccount" => round_trip::<ServiceAccount>(file, d),
                "ClusterRole" => round_trip::<ClusterRole>(file, d),
                "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(file, d),
                "Role" => round_trip::<Role>(file, d),
                "RoleBinding" => round_trip::<RoleBinding>(file, d),
                "MutatingWebhookConfiguration" => {
                    round_trip::<MutatingWebhookConfiguration>(file, d)
                }
                "Job" => round_trip::<Job>(file, d),
                "ValidatingWebhookConfiguration" => {
                    round_trip::<ValidatingWebhookConfiguration>(file, d)
                }
                "NetworkPolicy" => round_trip::<NetworkPolicy>(file, d),
                // Not in k8s-openapi's 1.33 types: checked where they matter.
                "DeviceClass" | "ServiceMonitor" | "Issuer" | "Certificate" => {}
                other => panic!("{set}: {file}: unexpected kind {other}"),
            }
            // Namespaced objects land in the release namespace (the auth
            // reader binding lives where its Role does).
            if let Some(ns) = d["metadata"]["namespace"].as_str() {
                assert!(
                    ns == NAMESPACE || (d["kind"] == "RoleBinding" && ns == "kube-system"),
                    "{set}: {file} in {ns}"
                );
            }
        }
        check_scheduler(set, &values, &docs);
        check_webhook(set, &values, &docs);
        check_node(set, &values, &docs);
        check_rbac(set, &values, &docs);
        check_optional(set, &values, &docs);
    }
}

fn check_scheduler(set: &str, values: &Value, docs: &[(String, Value)]) {
    let deployment = one(docs, "Deployment");
    let spec = &deployment["spec"]["template"]["spec"];
    let controller = container(spec, "controller");
    let a = args(controller);
    assert_eq!(a[0], "serve", "{set}");
    let policies = &values["scheduler"]["defaultSchedulerPolicy"];
    assert_eq!(
        flag(&a, "node-policy").as_deref(),
        policies["nodeSchedulerPolicy"].as_str(),
        "{set}"
    );
    assert_eq!(
        flag(&a, "gpu-policy").as_deref(),
        policies["gpuSchedulerPolicy"].as_str(),
        "{set}"
    );
    assert_eq!(
        flag(&a, "scheduler-name").as_deref(),
        values["schedulerName"].as_str(),
        "{set}"
    );
    let listen = flag(&a, "listen").unwrap();
    // /filter and /bind bind pods: only the kube-scheduler beside them may call.
    assert!(listen.starts_with("127.0.0.1:"), "{set}: --listen={listen}");
    let listen_port = listen.rsplit(':').next().unwrap().to_owned();
    let metrics_port = flag(&a, "metrics-listen")
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(metrics_port, listen_port, "{set}");
    // Nothing outside the pod reaches the extender's port: not the Service,
    // not the NetworkPolicy, not a declared container port.
    let declared: Vec<String> = controller["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].to_string())
        .collect();
    assert!(!declared.contains(&listen_port), "{set}: {declared:?}");
    let service = find(docs, "Service")
        .into_iter()
        .find(|s| s["metadata"]["labels"]["app.kubernetes.io/component"] == "scheduler")
        .unwrap();
    for p in service["spec"]["ports"].as_array().unwrap() {
        let target = p["targetPort"].as_str().unwrap();
        let port = controller["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == target)
            .unwrap_or_else(|| panic!("{set}: Service targets unknown port {target}"));
        assert_ne!(port["containerPort"].to_string(), listen_port, "{set}");
    }
    if values["networkPolicy"]["enabled"] == true {
        let policy = one(docs, "NetworkPolicy");
        let open: Vec<String> = policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["ports"].as_array().unwrap().iter())
            .map(|p| p["port"].to_string())
            .collect();
        assert!(open.contains(&metrics_port), "{set}: {open:?}");
        assert!(!open.contains(&listen_port), "{set}: {open:?}");
        assert_eq!(
            policy["spec"]["podSelector"]["matchLabels"],
            deployment["spec"]["selector"]["matchLabels"],
            "{set}"
        );
    }
    let with_scheduler = values["scheduler"]["kubeScheduler"]["enabled"] == true;
    let kube_scheduler = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kube-scheduler");
    assert_eq!(kube_scheduler.is_some(), with_scheduler, "{set}");
    assert_eq!(
        a.contains(&"--follow-scheduler-lease".to_owned()),
        with_scheduler,
        "{set}"
    );
    assert_eq!(
        flag(&a, "leader-elect").unwrap(),
        values["scheduler"]["leaderElect"].to_string(),
        "{set}"
    );

    let cm = one(docs, "ConfigMap");
    let config: Value = serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        config["apiVersion"], "kubescheduler.config.k8s.io/v1",
        "{set}"
    );
    assert_eq!(config["kind"], "KubeSchedulerConfiguration");
    assert_eq!(
        config["profiles"][0]["schedulerName"], values["schedulerName"],
        "{set}"
    );
    assert_eq!(
        config["leaderElection"]["resourceName"].as_str(),
        flag(&a, "lease-name").as_deref(),
        "{set}"
    );
    let ext = &config["extenders"][0];
    assert_eq!(
        ext["urlPrefix"],
        format!("http://127.0.0.1:{listen_port}"),
        "{set}"
    );
    assert_eq!(
        (ext["filterVerb"].as_str(), ext["bindVerb"].as_str()),
        (Some("filter"), Some("bind"))
    );
    assert_eq!(ext["nodeCacheCapable"], true);
    assert_eq!(ext["enableHTTPS"], false);
    let mut listed = BTreeSet::new();
    for r in ext["managedResources"].as_array().unwrap() {
        assert_eq!(r["ignoredByScheduler"], true, "{set}: {r}");
        listed.insert(r["name"].as_str().unwrap().to_owned());
    }
    let want = managed_names(values);
    let missing: Vec<_> = want.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "{set}: not managed by the extender: {missing:?}"
    );
    // The scheduler's config file is the mounted ConfigMap.
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "scheduler-config")
        .unwrap();
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);
}

fn check_webhook(set: &str, values: &Value, docs: &[(String, Value)]) {
    let enabled = values["scheduler"]["admissionWebhook"]["enabled"] == true;
    let hooks = find(docs, "MutatingWebhookConfiguration");
    assert_eq!(hooks.len(), usize::from(enabled), "{set}");
    if !enabled {
        return;
    }
    let mwc = hooks[0];
    let hook = &mwc["webhooks"][0];
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(
        hook["failurePolicy"], values["scheduler"]["admissionWebhook"]["failurePolicy"],
        "{set}"
    );
    assert_eq!(hook["rules"][0]["operations"], json!(["CREATE"]));
    assert_eq!(hook["rules"][0]["resources"], json!(["pods"]));
    let ignore = json!({"key": "hami.io/webhook", "operator": "NotIn", "values": ["ignore"]});
    // The opt-out is a namespace's, never a pod author's label.
    assert!(
        hook["objectSelector"].is_null(),
        "{set}: {}",
        hook["objectSelector"]
    );
    assert_eq!(hook["namespaceSelector"]["matchExpressions"][0], ignore);

    // The scheduler's annotations: validated on CREATE and UPDATE, with
    // exactly the two service accounts that write them trusted.
    let vwc = one(docs, "ValidatingWebhookConfiguration");
    let owned = &vwc["webhooks"][0];
    assert_eq!(owned["failurePolicy"], "Fail", "{set}");
    assert_eq!(owned["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
    assert_eq!(owned["clientConfig"]["service"]["path"], "/validate");
    assert!(owned["objectSelector"].is_null(), "{set}");
    let deployment = one(docs, "Deployment");
    let pod_spec = &deployment["spec"]["template"]["spec"];
    let trusted: Vec<String> = args(container(pod_spec, "controller"))
        .iter()
        .filter_map(|a| a.strip_prefix("--trusted-user=").map(str::to_owned))
        .collect();
    let daemonset = one(docs, "DaemonSet");
    let sa = |spec: &Value, ns: &Value| {
        format!(
            "system:serviceaccount:{}:{}",
            ns.as_str().unwrap(),
            spec["serviceAccountName"].as_str().unwrap()
        )
    };
    let controller_sa = sa(pod_spec, &deployment["metadata"]["namespace"]);
    let node_sa = sa(
        &daemonset["spec"]["template"]["spec"],
        &daemonset["metadata"]["namespace"],
    );
    assert_eq!(trusted, std::slice::from_ref(&controller_sa), "{set}");
    assert_eq!(
        flag(&args(container(pod_spec, "controller")), "node-agent-user"),
        Some(node_sa.clone()),
        "{set}"
    );
    let condition = owned["matchConditions"][0]["expression"].as_str().unwrap();
    for user in [&controller_sa, &node_sa] {
        assert!(
            condition.contains(&format!("\"{user}\"")),
            "{set}: {condition}"
        );
    }
    let resources: Vec<&Value> = owned["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["resources"][0])
        .collect();
    assert_eq!(resources, [&json!("pods"), &json!("nodes")], "{set}");
    // The node agents mount the very Secret the controller seals with.
    let secret = flag(
        &args(container(pod_spec, "controller")),
        "decision-key-secret",
    )
    .unwrap();
    let ds_spec = &daemonset["spec"]["template"]["spec"];
    let volume = ds_spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "decision-key")
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], json!(secret), "{set}");
    let mount = container(ds_spec, "node")["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "decision-key")
        .unwrap()
        .clone();
    assert_eq!(
        flag(&args(container(ds_spec, "node")), "decision-key-file").unwrap(),
        format!("{}/key", mount["mountPath"].as_str().unwrap()),
        "{set}"
    );
    // kube-system and the release's namespace always, then the whitelist.
    let mut excluded = vec![json!("kube-system"), json!(NAMESPACE)];
    excluded.extend(
        values["scheduler"]["admissionWebhook"]["whitelistNamespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| *n != "kube-system")
            .cloned(),
    );
    assert_eq!(
        hook["namespaceSelector"]["matchExpressions"][1]["values"],
        Value::Array(excluded),
        "{set}"
    );
    let expression = hook["matchConditions"][0]["expression"].as_str().unwrap();
    for name in managed_names(values) {
        assert!(
            expression.contains(&format!("\"{name}\"")),
            "{set}: matchConditions lacks {name}"
        );
    }

    // The service the API server calls is the controller's webhook port.
    let svc_ref = &hook["clientConfig"]["service"];
    assert_eq!(svc_ref["path"], "/webhook");
    let svc = find(docs, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == svc_ref["name"])
        .expect("the webhook's Service");
    assert_eq!(svc["metadata"]["namespace"], svc_ref["namespace"]);
    let port = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == svc_ref["port"])
        .expect("the webhook port on the Service");
    let deployment = one(docs, "Deployment");
    let spec = &deployment["spec"]["template"]["spec"];
    let controller = container(spec, "controller");
    let container_port = controller["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port["targetPort"])
        .expect("the Service's targetPort on the controller");
    let a = args(controller);
    assert_eq!(
        flag(&a, "webhook-listen").unwrap(),
        format!("0.0.0.0:{}", container_port["containerPort"]),
        "{set}"
    );
    // The TLS files come from the Secret the certificate lands in.
    assert_eq!(flag(&a, "tls-cert").as_deref(), Some("/tls/tls.crt"));
    let secret = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tls")
        .unwrap()["secret"]["secretName"]
        .clone();
    let host = format!(
        "{}.{}.svc",
        svc["metadata"]["name"].as_str().unwrap(),
        NAMESPACE
    );
    if values["scheduler"]["certManager"]["enabled"] == true {
        let cert = one(docs, "Certificate");
        assert_eq!(cert["spec"]["secretName"], secret, "{set}");
        assert!(
            cert["spec"]["dnsNames"]
                .as_array()
                .unwrap()
                .contains(&json!(host)),
            "{set}"
        );
        assert_eq!(
            mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            format!("{NAMESPACE}/{}", cert["metadata"]["name"].as_str().unwrap()),
            "{set}: caBundle injection"
        );
        let issuer = one(docs, "Issuer");
        assert_eq!(
            cert["spec"]["issuerRef"]["name"],
            issuer["metadata"]["name"]
        );
        assert!(find(docs, "Job").is_empty());
    } else {
        assert!(mwc["metadata"]["annotations"]
            .get("cert-manager.io/inject-ca-from")
            .is_none());
        let jobs = find(docs, "Job");
        let job_args = |verb: &str| -> Vec<String> {
            let job = jobs
                .iter()
                .find(|j| j["spec"]["template"]["spec"]["containers"][0]["args"][0] == verb)
                .unwrap_or_else(|| panic!("{set}: no certgen {verb} job"));
            args(&job["spec"]["template"]["spec"]["containers"][0])
        };
        let create = job_args("create");
        assert_eq!(
            flag(&create, "secret-name").map(Value::from),
            Some(secret.clone()),
            "{set}"
        );
        assert!(
            flag(&create, "host").unwrap().split(',').any(|h| h == host),
            "{set}"
        );
        let patch = job_args("patch");
        assert_eq!(
            flag(&patch, "webhook-name").map(Value::from),
            Some(mwc["metadata"]["name"].clone()),
            "{set}: caBundle patch target"
        );
        assert_eq!(
            flag(&patch, "secret-name").map(Value::from),
            Some(secret),
            "{set}"
        );
    }
}

fn check_node(set: &str, values: &Value, docs: &[(String, Value)]) {
    let ds = one(docs, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["nodeSelector"], values["devicePlugin"]["nodeSelector"],
        "{set}"
    );
    let paths: BTreeSet<String> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str().map(str::to_owned))
        .collect();
    for want in [
        "/var/lib/kubelet/device-plugins",
        "/var/lib/kubelet/plugins_registry",
        "/etc/cdi",
        "/var/run/cdi",
        "/usr/local/vgpu",
        "/var/run/hami/vgpu",
    ] {
        assert!(paths.contains(want), "{set}: no hostPath {want}");
    }
    let init = &spec["initContainers"][0];
    let script = init["command"][2].as_str().unwrap();
    assert!(
        script.contains(&format!(
            "hami-oci-hook install --runtime {}",
            values["devicePlugin"]["runtime"].as_str().unwrap()
        )),
        "{set}: {script}"
    );
    assert!(
        script.contains("chroot /host"),
        "the hook installs with the host's root, nothing from the image"
    );
    let node = container(spec, "node");
    let a = args(node);
    assert_eq!(a[0], "run", "{set}: hami-node's subcommand");
    assert_eq!(
        flag(&a, "device-split-count"),
        Some(values["devicePlugin"]["deviceSplitCount"].to_string()),
        "{set}"
    );
    assert_eq!(
        flag(&a, "device-memory-scaling"),
        Some(values["devicePlugin"]["deviceMemoryScaling"].to_string())
    );
    assert_eq!(
        flag(&a, "cdi"),
        Some(values["devicePlugin"]["cdiEnabled"].to_string())
    );
    assert_eq!(
        flag(&a, "hami-vnpu-core"),
        Some(values["ascend"]["hamiVnpuCore"].to_string())
    );
    assert_eq!(flag(&a, "dra"), Some(values["dra"]["enabled"].to_string()));
}

fn check_rbac(set: &str, values: &Value, docs: &[(String, Value)]) {
    for kind in ["ClusterRole", "Role"] {
        for role in find(docs, kind) {
            for rule in role["rules"].as_array().unwrap() {
                for field in ["verbs", "resources", "apiGroups"] {
                    assert!(
                        !rule[field].as_array().unwrap().contains(&json!("*")),
                        "{set}: {} grants * in {field}",
                        role["metadata"]["name"]
                    );
                }
            }
        }
    }
    let scheduler = find(docs, "ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "hami-scheduler")
        .unwrap();
    let verbs = |resource: &str| -> Vec<String> {
        scheduler["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["resources"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(resource))
            })
            .flat_map(|r| {
                r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
            })
            .collect()
    };
    assert_eq!(verbs("nodes"), ["get", "list", "watch", "patch"]);
    assert_eq!(verbs("pods"), ["get", "list", "watch", "patch"]);
    assert_eq!(verbs("pods/binding"), ["create"]);
    assert_eq!(verbs("resourcequotas"), ["get", "list", "watch"]);
    assert_eq!(verbs("events"), ["create", "patch"]);
    assert_eq!(
        !verbs("resourceclaimtemplates").is_empty(),
        values["dra"]["enabled"] == true,
        "{set}"
    );
    // Leases: create any, but update only the scheduler's own.
    let lease = find(docs, "Role")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "hami-scheduler-lease")
        .unwrap();
    assert_eq!(
        lease["rules"][1]["resourceNames"],
        json!(["hami-scheduler"])
    );
}

fn check_optional(set: &str, values: &Value, docs: &[(String, Value)]) {
    let monitors = find(docs, "ServiceMonitor");
    if values["serviceMonitor"]["enabled"] == true {
        assert_eq!(monitors.len(), 2, "{set}");
        for m in monitors {
            assert_eq!(m["metadata"]["labels"]["release"], "prometheus");
            let port = m["spec"]["endpoints"][0]["port"].clone();
            let component =
                m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"].clone();
            let svc = find(docs, "Service")
                .into_iter()
                .find(|s| s["spec"]["selector"]["app.kubernetes.io/component"] == component)
                .unwrap();
            assert!(
                svc["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == port),
                "{set}"
            );
            assert_eq!(
                svc["metadata"]["labels"]["app.kubernetes.io/component"],
                component
            );
        }
    } else {
        assert!(monitors.is_empty(), "{set}");
    }
    let classes = find(docs, "DeviceClass");
    if values["dra"]["enabled"] == true {
        let shipped: Value = serde_json::from_str(
            &std::fs::read_to_string(chart().join("../../controller/deploy/dra-deviceclass.json"))
                .unwrap(),
        )
        .unwrap();
        let mut class = one(docs, "DeviceClass").clone();
        class["metadata"].as_object_mut().unwrap().remove("labels");
        assert_eq!(
            class, shipped,
            "{set}: the chart's DeviceClass is the controller's"
        );
    } else {
        assert!(classes.is_empty(), "{set}");
    }
}

#[test]
fn the_dashboard_uses_metric_names_hami_rs_exports() {
    let text = std::fs::read_to_string(chart().join("dashboards/hami-rs.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    // The controller's /metrics names and the node agent's contract names.
    let known = [
        "GPUDeviceCoreLimit",
        "GPUDeviceMemoryLimit",
        "GPUDeviceCoreAllocated",
        "GPUDeviceMemoryAllocated",
        "GPUDeviceSharedNum",
        "vGPUCoreAllocated",
        "vGPUMemoryAllocated",
        "hami_gpu_memory_allocated_bytes",
        "hami_vgpu_memory_allocated_bytes",
        "hami_resource_quota_used",
        "hami_resource_quota_limit",
        "hami_vgpu_memory_used_bytes",
        "hami_vgpu_memory_limit_bytes",
        "hami_container_device_utilization_ratio",
        "hami_host_gpu_memory_used_bytes",
    ];
    let mut used = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("hami_") || w.starts_with("GPU") || w.starts_with("vGPU"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                assert!(
                    known.contains(&n),
                    "the dashboard queries {n}, which nothing exports"
                );
                used += 1;
            }
        }
    }
    assert!(used >= 8);
}

#[test]
fn values_pass_yamllint() {
    let dir = chart();
    let out = std::process::Command::new("yamllint")
        .arg("-c")
        .arg(dir.join(".yamllint"))
        .arg(dir.join("values.yaml"))
        .arg(dir.join("Chart.yaml"))
        .output();
    match out {
        Ok(o) => assert!(
            o.status.success(),
            "yamllint:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) if std::env::var_os("HAMI_TEST_REQUIRE_RUNTIMES").is_none() => {
            println!(
                "SKIP values_pass_yamllint: yamllint not found ({e}); hack/prereqs.sh installs it"
            );
        }
        Err(e) => panic!("yamllint: {e} (hack/prereqs.sh installs it)"),
    }
}

/// The images the chart deploys are built from deploy/images: the node
/// image holds what the install init container copies, at the paths the
/// script copies from, and each image runs the binary the chart's args are
/// for.
#[test]
fn the_images_hold_what_the_chart_runs() {
    let root = chart().join("../..");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let node = read("deploy/images/Containerfile.node");
    let controller = read("deploy/images/Containerfile.controller");
    let rendered = render(&chart(), &json!({}), "hami", NAMESPACE).unwrap();
    let docs = documents(&rendered).unwrap();
    let ds = one(&docs, "DaemonSet");
    let script = ds["spec"]["template"]["spec"]["initContainers"][0]["command"][2]
        .as_str()
        .unwrap()
        .to_owned();
    for file in ["/opt/hami/libhami_core.so", "/opt/hami/hami-oci-hook"] {
        assert!(script.contains(file), "the install script copies {file}");
        assert!(
            node.contains(&format!(" {file}\n")),
            "Containerfile.node puts {file} in the image"
        );
    }
    assert!(
        node.contains("hack/build-static-hook.sh"),
        "the hook in the image is the static build"
    );
    assert!(node.contains(r#"ENTRYPOINT ["/usr/local/bin/hami-node"]"#));
    assert!(controller.contains(r#"ENTRYPOINT ["/usr/local/bin/hami-controller"]"#));
    // The images are tagged with the chart's appVersion, the chart's default tag.
    let chart_yaml = read("charts/hami/Chart.yaml");
    let script = read("hack/build-images.sh");
    assert!(chart_yaml.contains("appVersion: \"0.1.0\""));
    assert!(script.contains("appVersion") && script.contains("hami-rs/hami-$image:$version"));
    let deployment = one(&docs, "Deployment");
    let image = container(&deployment["spec"]["template"]["spec"], "controller")["image"].clone();
    assert_eq!(image, "hami-rs/hami-controller:0.1.0");
}

/// What each Kubernetes version accepts: the scheduler configuration API it
/// serves, webhooks without matchConditions (and so not failing every pod
/// when unreachable) before 1.28, the namespace-name label from 1.21 only,
/// DRA's v1 DeviceClass from 1.34 only; and Chart.yaml's range enforced.
#[test]
fn each_kubernetes_version_gets_what_its_api_server_accepts() {
    let docs_for = |version: &str, overrides: Value| {
        documents(
            &hami_chart::render_for(&chart(), &overrides, "hami", NAMESPACE, version).unwrap(),
        )
        .unwrap()
        .into_iter()
        .map(|(_, d)| d)
        .collect::<Vec<_>>()
    };
    let scheduler_api = |docs: &[Value]| {
        let cm = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "hami-scheduler-config")
            .unwrap();
        let config: Value =
            serde_yaml::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
        config["apiVersion"].as_str().unwrap().to_owned()
    };
    let dra = json!({"dra": {"enabled": true}});
    for (version, api) in [
        ("v1.18.20", "kubescheduler.config.k8s.io/v1alpha2"),
        ("v1.20.2", "kubescheduler.config.k8s.io/v1beta1"),
        ("v1.21.14", "kubescheduler.config.k8s.io/v1beta1"),
        ("v1.23.17", "kubescheduler.config.k8s.io/v1beta2"),
        ("v1.27.3", "kubescheduler.config.k8s.io/v1"),
        ("v1.28.0", "kubescheduler.config.k8s.io/v1"),
        ("v1.34.1", "kubescheduler.config.k8s.io/v1"),
    ] {
        let docs = docs_for(version, dra.clone());
        assert_eq!(scheduler_api(&docs), api, "{version}");
        let minor: u32 = version.split('.').nth(1).unwrap().parse().unwrap();
        for kind in [
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ] {
            let hook = &docs.iter().find(|d| d["kind"] == kind).unwrap()["webhooks"][0];
            let scoped = minor >= 28;
            assert_eq!(
                hook.get("matchConditions").is_some(),
                scoped,
                "{version} {kind}"
            );
            let policy = hook["failurePolicy"].as_str().unwrap();
            assert_eq!(
                policy,
                if scoped { "Fail" } else { "Ignore" },
                "{version} {kind}"
            );
            let by_name = hook["namespaceSelector"]["matchExpressions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["key"] == "kubernetes.io/metadata.name");
            assert_eq!(by_name, minor >= 21, "{version} {kind}");
            if kind == "ValidatingWebhookConfiguration" {
                let rules = hook["rules"].as_array().unwrap();
                let on_nodes = rules.iter().any(|r| r["resources"][0] == "nodes");
                assert_eq!(
                    on_nodes, scoped,
                    "{version}: node status updates stay off the webhook"
                );
            }
        }
        let class = docs.iter().any(|d| d["kind"] == "DeviceClass");
        assert_eq!(class, minor >= 34, "{version}");
    }
    let too_old = hami_chart::render_for(&chart(), &json!({}), "hami", NAMESPACE, "v1.17.17");
    let message = too_old.unwrap_err().to_string();
    assert!(
        message.contains("incompatible with Kubernetes v1.17.17"),
        "{message}"
    );
}
