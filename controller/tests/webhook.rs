//! `/webhook` over HTTP on the AdmissionReviews a real API server sent
//! (golden responses), its errors, and once over real TLS: a self-signed
//! certificate made with openssl, the rustls listener, a rustls client that
//! trusts only that certificate, and a rotation served without a restart.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use common::{cluster_with_quotas, fixture};
use hami_controller::admission::mutate::WebhookConfig;
use hami_controller::admission::tls::{server_config, TlsListener};
use hami_controller::server::webhook_router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A synced cluster with one 80 GB GPU node and a quota in `team`.
fn cluster() -> Arc<common::FakeCluster> {
    let node = json!({"metadata": {"name": "n1", "annotations": {"hami.io/node-nvidia-register":
        r#"[{"id":"GPU-a","count":10,"devmem":81920,"devcore":100,"type":"NVIDIA-A100","health":true}]"#}}});
    let quota = json!({"metadata": {"name": "gpu", "namespace": "team"},
        "spec": {"hard": {"limits.nvidia.com/gpumem": "6000"}}});
    cluster_with_quotas(&[node], &[], &[quota], true, false)
}

/// The captured review, its pod given `limits`, in `namespace`.
fn review_with(limits: Value, namespace: &str) -> Value {
    let mut r = fixture("sample-admission-review-mutate.json");
    r["request"]["namespace"] = json!(namespace);
    r["request"]["object"]["metadata"]["namespace"] = json!(namespace);
    r["request"]["object"]["spec"]["containers"][0]["resources"]["limits"] = limits;
    r
}

async fn post(body: Vec<u8>, limit: usize) -> (StatusCode, Value) {
    let app = webhook_router(cluster(), WebhookConfig::default(), limit);
    let res = app
        .oneshot(
            Request::post("/webhook")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// The response with its base64 patch decoded, for a readable golden file.
fn readable(mut reply: Value) -> Value {
    if let Some(p) = reply["response"]["patch"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        reply["response"]["patch"] = serde_json::from_slice(&bytes).unwrap();
    }
    reply
}

fn golden(name: &str, actual: &Value) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(text, want, "{name} differs from the golden file");
}

#[test]
fn captured_reviews_get_the_golden_responses() {
    runtime().block_on(async {
        // The captured pods ask for no device: allowed, no patch.
        for name in [
            "sample-admission-review-mutate.json",
            "sample-admission-review-validate.json",
        ] {
            let r = fixture(name);
            let (status, reply) = post(serde_json::to_vec(&r).unwrap(), 1 << 20).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                reply,
                json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "response": {"uid": r["request"]["uid"], "allowed": true}})
            );
        }
        let cases = [
            (
                "webhook-gpu-share.json",
                json!({"nvidia.com/gpumem": "3000"}),
                "default",
            ),
            (
                "webhook-whole-gpus.json",
                json!({"nvidia.com/gpu": "2"}),
                "default",
            ),
            (
                "webhook-too-large.json",
                json!({"nvidia.com/gpumem": "90000"}),
                "default",
            ),
            (
                "webhook-over-quota.json",
                json!({"nvidia.com/gpu": "2", "nvidia.com/gpumem": "4000"}),
                "team",
            ),
        ];
        for (name, limits, ns) in cases {
            let body = serde_json::to_vec(&review_with(limits, ns)).unwrap();
            let (status, reply) = post(body, 1 << 20).await;
            assert_eq!(status, StatusCode::OK, "{name}: {reply}");
            golden(name, &readable(reply));
        }
    });
}

#[test]
fn bad_reviews_get_clear_errors() {
    runtime().block_on(async {
        let big = vec![b' '; 4096];
        let (status, reply) = post(big, 1024).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{reply}");
        assert!(reply["error"].as_str().unwrap().contains("request body"));
        let (status, reply) = post(b"{\"apiVersion\":".to_vec(), 1 << 20).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(reply["error"]
            .as_str()
            .unwrap()
            .contains("malformed AdmissionReview"));
        let mut old = fixture("sample-admission-review-mutate.json");
        old["apiVersion"] = json!("admission.k8s.io/v1beta1");
        let (status, reply) = post(serde_json::to_vec(&old).unwrap(), 1 << 20).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            reply["error"].as_str().unwrap().contains("v1beta1"),
            "{reply}"
        );
        let mut empty = fixture("sample-admission-review-mutate.json");
        empty.as_object_mut().unwrap().remove("request");
        let (status, _) = post(serde_json::to_vec(&empty).unwrap(), 1 << 20).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // A pod object that is not a pod is denied, not a crash.
        let mut garbled = fixture("sample-admission-review-mutate.json");
        garbled["request"]["object"]["spec"]["containers"] = json!("nope");
        let (status, reply) = post(serde_json::to_vec(&garbled).unwrap(), 1 << 20).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(reply["response"]["allowed"], false);
        assert!(reply["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not a Pod"));
    });
}

fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (hack/prereqs.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate it signed, as the chart's self-signed job
/// makes them: returns (ca cert, server cert, server key).
fn openssl_cert(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |suffix: &str| dir.join(format!("{name}{suffix}"));
    let s = |path: &std::path::PathBuf| path.to_str().unwrap().to_owned();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca, ca_key, csr, cert, key, ext) = (
        p("-ca.crt"),
        p("-ca.key"),
        p(".csr"),
        p(".crt"),
        p(".key"),
        p(".ext"),
    );
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    let (ca_s, ca_key_s) = (s(&ca), s(&ca_key));
    args.extend([
        "-days",
        "1",
        "-subj",
        "/CN=hami-webhook-ca",
        "-keyout",
        &ca_key_s,
        "-out",
        &ca_s,
    ]);
    openssl(&args);
    let (csr_s, key_s, cert_s, ext_s) = (s(&csr), s(&key), s(&cert), s(&ext));
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-subj",
        "/CN=hami-webhook.kube-system.svc",
        "-keyout",
        &key_s,
        "-out",
        &csr_s,
    ]);
    openssl(&args);
    std::fs::write(
        &ext,
        "subjectAltName=DNS:hami-webhook.kube-system.svc,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr_s,
        "-CA",
        &ca_s,
        "-CAkey",
        &ca_key_s,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext_s,
        "-out",
        &cert_s,
    ]);
    (ca, cert, key)
}

fn der(cert: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(cert).unwrap()
}

/// One HTTPS POST with a client that trusts only the CA `ca`; returns the status
/// line, the body and the certificate the server presented.
async fn https_post(
    addr: std::net::SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    body: &[u8],
) -> (String, Value, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("hami-webhook.kube-system.svc").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let head = format!(
        "POST /webhook HTTP/1.1\r\nHost: hami-webhook.kube-system.svc\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_owned();
    (status, serde_json::from_str(body).unwrap(), presented)
}

#[test]
fn the_webhook_answers_over_tls_and_serves_a_rotated_certificate() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = openssl_cert(dir.path(), "first");
        let config = server_config(&cert, &key).unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = TlsListener::new(tcp, config).unwrap();
        let addr = axum::serve::Listener::local_addr(&listener).unwrap();
        let app = webhook_router(cluster(), WebhookConfig::default(), 1 << 20);
        tokio::spawn(async move { axum::serve(listener, app).await });

        let body = serde_json::to_vec(&review_with(
            json!({"nvidia.com/gpumem": "3000"}),
            "default",
        ))
        .unwrap();
        let first = der(&cert);
        let (status, reply, presented) = https_post(addr, &der(&ca), &body).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(presented, first.to_vec());
        assert_eq!(reply["response"]["allowed"], true);
        assert_eq!(reply["response"]["patchType"], "JSONPatch");

        // A client that does not trust the certificate is refused.
        let (other_ca, _, _) = openssl_cert(dir.path(), "other");
        let refused = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(der(&other_ca)).unwrap();
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(
                    rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                    tcp,
                )
                .await
        })
        .await
        .unwrap();
        assert!(
            refused.is_err(),
            "an untrusted certificate must fail the handshake"
        );

        // cert-manager rotates the Secret: the next handshake gets the new pair.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let (new_ca, new_cert, new_key) = openssl_cert(dir.path(), "second");
        std::fs::copy(&new_key, &key).unwrap();
        std::fs::copy(&new_cert, &cert).unwrap();
        let second = der(&cert);
        assert_ne!(first.to_vec(), second.to_vec());
        let (status, _, presented) = https_post(addr, &der(&new_ca), &body).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(presented, second.to_vec());
    });
}

#[test]
fn dra_mode_creates_the_templates_and_patches_the_pod() {
    runtime().block_on(async {
        let config = WebhookConfig {
            dra: true,
            ..WebhookConfig::default()
        };
        let body = serde_json::to_vec(&review_with(
            json!({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000"}),
            "default",
        ))
        .unwrap();
        let c = cluster();
        let post_with = |c: Arc<common::FakeCluster>, body: Vec<u8>| {
            let app = webhook_router(c, config.clone(), 1 << 20);
            async move {
                let res = app
                    .oneshot(Request::post("/webhook").body(Body::from(body)).unwrap())
                    .await
                    .unwrap();
                let bytes = res.into_body().collect().await.unwrap().to_bytes();
                serde_json::from_slice::<Value>(&bytes).unwrap()
            }
        };
        let reply = readable(post_with(c.clone(), body.clone()).await);
        assert_eq!(reply["response"]["allowed"], true, "{reply}");
        let templates = c.templates.lock().unwrap().clone();
        assert_eq!(templates.len(), 1);
        let (ns, t) = &templates[0];
        assert_eq!(ns, "default");
        let claims = reply["response"]["patch"]
            .as_array()
            .unwrap()
            .iter()
            .find(|op| op["path"] == "/spec/resourceClaims")
            .unwrap();
        assert_eq!(
            claims["value"][0]["resourceClaimTemplateName"],
            t["metadata"]["name"]
        );
        // A dry-run admission creates nothing.
        let mut dry = review_with(json!({"nvidia.com/gpu": "1"}), "default");
        dry["request"]["dryRun"] = json!(true);
        let c = cluster();
        let reply = post_with(c.clone(), serde_json::to_vec(&dry).unwrap()).await;
        assert_eq!(reply["response"]["allowed"], true);
        assert!(c.templates.lock().unwrap().is_empty());
        // The API refusing the template refuses the pod, saying why.
        let failing = cluster_with_quotas(&[], &[], &[], true, true);
        let reply = post_with(failing, body).await;
        assert_eq!(reply["response"]["allowed"], false);
        assert!(reply["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("ResourceClaimTemplate"));
    });
}

#[test]
fn the_shipped_device_class_is_the_one_claims_name() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/dra-deviceclass.json");
    let shipped: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(shipped, hami_controller::admission::dra::device_class());
}

/// `/validate` on the validating review a real API server sent: a pod
/// author's hand-written decision (a device, a node, a bind time) is denied
/// on CREATE and on UPDATE; the controller's service account may write it.
#[test]
fn validate_keeps_the_scheduler_annotations_the_controllers() {
    const CONTROLLER: &str = "system:serviceaccount:kube-system:hami-scheduler";
    const AGENT: &str = "system:serviceaccount:kube-system:hami-node";
    runtime().block_on(async {
        let config = WebhookConfig {
            trusted_users: vec![CONTROLLER.to_owned()],
            node_agent_user: Some(AGENT.to_owned()),
            ..WebhookConfig::default()
        };
        let send = |review: Value| {
            let app = webhook_router(cluster(), config.clone(), 1 << 20);
            async move {
                let res = app
                    .oneshot(
                        Request::post("/validate")
                            .header("content-type", "application/json")
                            .body(Body::from(serde_json::to_vec(&review).unwrap()))
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                let bytes = res.into_body().collect().await.unwrap().to_bytes();
                serde_json::from_slice::<Value>(&bytes).unwrap()["response"].clone()
            }
        };
        let captured = fixture("sample-admission-review-validate.json");
        // As captured (an admin creating a plain pod): allowed.
        let reply = send(captured.clone()).await;
        assert_eq!(reply["allowed"], true, "{reply}");
        assert_eq!(reply["uid"], captured["request"]["uid"]);

        let mut forged = captured.clone();
        forged["request"]["object"]["metadata"]["annotations"] = json!({
            "hami.io/vgpu-devices-allocated": "GPU-a,NVIDIA-A100,81920,100:;",
            "hami.io/vgpu-node": "n1",
            "hami.io/bind-phase": "success"
        });
        let reply = send(forged.clone()).await;
        assert_eq!(reply["allowed"], false, "{reply}");
        let message = reply["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("hami.io/vgpu-node") && message.contains("admin"),
            "{message}"
        );

        let mut by_controller = forged.clone();
        by_controller["request"]["userInfo"]["username"] = json!(CONTROLLER);
        assert_eq!(send(by_controller).await["allowed"], true);

        // UPDATE: the author patches the node of a decided pod.
        let mut update = forged.clone();
        update["request"]["operation"] = json!("UPDATE");
        update["request"]["oldObject"] = forged["request"]["object"].clone();
        update["request"]["object"]["metadata"]["annotations"]["hami.io/vgpu-node"] = json!("n2");
        let reply = send(update.clone()).await;
        assert_eq!(reply["allowed"], false, "{reply}");
        // ... or changes only what is theirs: allowed.
        update["request"]["object"] = forged["request"]["object"].clone();
        update["request"]["object"]["metadata"]["labels"] = json!({"team": "a"});
        assert_eq!(send(update.clone()).await["allowed"], true);

        // The node agent of node-a, by its bound token, on a pod of node-b.
        let mut agent = update.clone();
        agent["request"]["userInfo"] = json!({"username": AGENT,
            "extra": {"authentication.kubernetes.io/node-name": ["node-a"]}});
        agent["request"]["object"]["spec"]["nodeName"] = json!("node-b");
        let reply = send(agent.clone()).await;
        assert_eq!(reply["allowed"], false, "{reply}");
        assert!(
            reply["status"]["message"]
                .as_str()
                .unwrap()
                .contains("node-a"),
            "{reply}"
        );
        agent["request"]["object"]["spec"]["nodeName"] = json!("node-a");
        assert_eq!(send(agent).await["allowed"], true);
    });
}
