//! A kube `Client` backed by a tower-test scenario, for tests that check the
//! exact API calls a component makes: [`pair`] gives the client and the
//! handle, [`next`] reads the next request (method, URI, JSON body), and
//! [`respond`] answers it.

use http_body_util::BodyExt;
use serde_json::{json, Value};

pub type Handle =
    tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>;
pub type Responder = tower_test::mock::SendResponse<http::Response<kube::client::Body>>;

/// Runs a test's async body on a current-thread runtime (timers on).
pub fn block_on<F: std::future::Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(body)
}

/// A client whose default namespace is `namespace`, and the scenario's handle.
pub fn pair(namespace: &str) -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair();
    (kube::Client::new(service, namespace), handle)
}

/// The next request: method, URI (path and query), and its JSON body
/// (`Null` when empty).
pub async fn next(handle: &mut Handle) -> (http::Method, String, Value, Responder) {
    try_next(handle).await.expect("a request")
}

/// [`next`], or `None` once the client is gone (for a scenario that serves
/// until the test ends).
pub async fn try_next(handle: &mut Handle) -> Option<(http::Method, String, Value, Responder)> {
    let (request, send) = handle.next_request().await?;
    let method = request.method().clone();
    let uri = request.uri().to_string();
    let bytes = request
        .into_body()
        .collect()
        .await
        .expect("a request body")
        .to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON request body")
    };
    Some((method, uri, body, send))
}

/// Answers with `status` and the JSON `body`.
pub fn respond(send: Responder, status: u16, body: Value) {
    send.send_response(
        http::Response::builder()
            .status(status)
            .body(kube::client::Body::from(body.to_string().into_bytes()))
            .expect("a response"),
    );
}

/// A `Status` failure as the API server sends it.
pub fn failure(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "message": message, "reason": reason, "code": code})
}
