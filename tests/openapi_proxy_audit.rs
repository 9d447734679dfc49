//! The OpenAPI proxy's audit: one JSON log line per proxied call with the door, caller,
//! identity, open_id, method, masked path, status, upstream latency and retry flag, and
//! no token anywhere in the logs (issue 16).

mod service_common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use service_common::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[actix_rt::test]
async fn each_proxied_call_has_one_audit_line_and_no_token_is_logged() {
    let logs = Captured::default();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(logs.clone())
        .try_init()
        .expect("subscriber installs once in this test process");

    let i = start_instance().await;
    authorize_user(&i).await;
    let client = awc::Client::default();
    let call = |open_id: &str, path: &str| {
        client
            .get(format!("{}/v1/openapi/{open_id}{path}", i.base_url()))
            .bearer_auth(API_TOKEN)
            .send()
    };
    let first = i.handle.token(USER).await.unwrap().token;
    i.sandbox.expire_access_tokens(USER);
    let download = "/open-apis/drive/v1/medias/sandbox_bytes_42/download?name=secret-ish";
    assert_eq!(call(USER, download).await.unwrap().status().as_u16(), 200);
    assert_eq!(
        call("@app", "/open-apis/tenant/v2/tenant/query")
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        call("ou_test_user_2", "/open-apis/authen/v1/user_info")
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    let second = i.handle.token(USER).await.unwrap().token;
    let tenant = i.sandbox.api_requests()[2].bearer().unwrap().to_string();

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let audit: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON object a line"))
        .filter(|l| l["message"] == "openapi call proxied")
        .collect();
    assert_eq!(audit.len(), 3, "one line per call: {audit:#?}");
    let user = &audit[0];
    assert_eq!(user["target"], "lark_auth::audit");
    assert_eq!(user["door"], "rest");
    assert_eq!(user["caller"], "api_token");
    assert_eq!(user["identity"], "user");
    assert_eq!(user["open_id"], USER);
    assert_eq!(user["method"], "GET");
    assert_eq!(user["path"], "/open-apis/drive/v1/medias/:id/download");
    assert_eq!(user["status"], 200);
    assert_eq!(user["retried"], true);
    assert!(user["upstream_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(audit[1]["identity"], "app");
    assert_eq!(audit[1]["path"], "/open-apis/tenant/v2/tenant/query");
    assert_eq!(audit[1]["retried"], false);
    assert_eq!(audit[2]["status"], 404);
    assert_eq!(audit[2]["upstream_ms"], 0.0);

    for secret in [
        first.expose().as_str(),
        second.expose().as_str(),
        tenant.as_str(),
        API_TOKEN,
        "secret-ish",
    ] {
        assert!(!logs.contains(secret), "`{secret}` was logged");
    }
}
