//! The README's main job (`lark-auth demo`) completes, and the JSON logs of a full run at
//! the most verbose level contain no secret.

use std::io::Write;
use std::sync::{Arc, Mutex};

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
async fn the_demo_completes_and_its_logs_hold_no_secret() {
    let logs = Captured::default();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(logs.clone())
        .try_init()
        .expect("subscriber installs once in this test process");

    let mut out = Vec::new();
    lark_auth::demo::run(&mut out, lark_auth::config::CardLocale::ZhCn)
        .await
        .expect("demo succeeds");
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("demo OK"), "{out}");
    assert!(
        out.contains("session states seen: created") && out.contains("-> authorized"),
        "{out}"
    );
    assert!(out.contains("refresh: "), "{out}");
    assert!(out.contains("refresh-token reuse 0"), "{out}");

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.lines().count() > 10, "the run was logged");
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
    }
    for secret in [
        "sandbox-secret",          // app secret
        "demo-verification-token", // verification token in the event header
    ] {
        assert!(
            !logs.contains(secret),
            "secret `{secret}` appears in the logs"
        );
    }
    // Tokens, codes and verifiers: a field of that name may appear only redacted.
    for field in [
        "access_token",
        "refresh_token",
        "device_code",
        "code_verifier",
        "app_secret",
    ] {
        for pattern in [format!("\"{field}\":\""), format!("{field}=")] {
            for (i, _) in logs.match_indices(&pattern) {
                let rest = &logs[i + pattern.len()..];
                assert!(
                    rest.starts_with("[redacted]"),
                    "unredacted {field} in logs: {}",
                    &logs[i..(i + 60).min(logs.len())]
                );
            }
        }
    }
    // The wss URL's credentials: any mention must be redacted.
    for key in ["access_key=", "ticket="] {
        for (i, _) in logs.match_indices(key) {
            let rest = &logs[i + key.len()..];
            assert!(
                rest.starts_with("%5Bredacted%5D") || rest.starts_with("[redacted]"),
                "unredacted {key} in logs: {}",
                &logs[i..(i + 60).min(logs.len())]
            );
        }
    }
}
