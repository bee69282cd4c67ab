//! The decision key's home in the cluster: a Secret beside the controller,
//! made on first start, mounted by the node agents.

use kube::{Api, Client};

/// The decision key from Secret `name` in `namespace` (data `key`), created
/// with 32 random bytes when it does not exist yet. The node agents mount the
/// same Secret; nobody else is given it.
pub async fn ensure_decision_key(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<hami_api::seal::DecisionKey, String> {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::ByteString;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |secret: &Secret| -> Result<hami_api::seal::DecisionKey, String> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get("key"))
            .map(|b| b.0.clone())
            .ok_or_else(|| format!("Secret {namespace}/{name} has no data key \"key\""))?;
        let secret = bytes.trim_ascii();
        if secret.len() < hami_api::seal::MIN_KEY_BYTES {
            return Err(format!(
                "Secret {namespace}/{name}: its key has {} bytes, at least {} are needed",
                secret.len(),
                hami_api::seal::MIN_KEY_BYTES
            ));
        }
        Ok(hami_api::seal::DecisionKey::new(secret))
    };
    if let Some(existing) = api.get_opt(name).await.map_err(|e| e.to_string())? {
        return read(&existing);
    }
    let mut random = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| "no system randomness for the decision key".to_owned())?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "hami-controller".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        data: Some([("key".to_owned(), ByteString(hex.into_bytes()))].into()),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    match api.create(&kube::api::PostParams::default(), &secret).await {
        Ok(created) => {
            tracing::info!("created the decision key Secret {namespace}/{name}");
            read(&created)
        }
        // Another replica created it first: use that one.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let existing = api.get(name).await.map_err(|e| e.to_string())?;
            read(&existing)
        }
        Err(e) => Err(format!("creating Secret {namespace}/{name}: {e}")),
    }
}
