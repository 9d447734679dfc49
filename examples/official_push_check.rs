//! Fidelity check of the event gateway against the official Python SDK (lark-oapi 1.7.5):
//! webhook receivers built on its `lark.EventDispatcherHandler`
//! (`scripts/official_push_receiver.py`) take the events lark-auth forwards unchanged.
//!
//! Starts the sandbox and `LarkAuth` on it with three `[[events.forward]]` targets, each a
//! receiver process built with the app's verification token:
//! - the app's Encrypt Key on both sides: bodies encrypted and signed; the SDK decrypts,
//!   checks the signature and the token, and runs its handlers;
//! - no Encrypt Key on either side: plain envelopes; the SDK checks the token and runs its
//!   handlers;
//! - a receiver with a different Encrypt Key: the SDK must refuse (500), showing that its
//!   checks really run.
//!
//! Pushes an `im.message.receive_v1` (chunked, out of order; the SDK's typed handler) and
//! an `approval.approval.updated_v4` (a customized handler) over the long connection, and
//! checks every receiver's output and the gateway's counters. Then a `card.action.trigger`
//! of a card lark-auth did not send: the SDK's card-action handler runs in the receivers,
//! and the first target's answer (the encrypted one: toast and card) comes back in the
//! click's ack.
//!
//! Run: `cargo run --example official_push_check -- --python .venv-check/bin/python` (or
//! `scripts/check-official-client.sh`). Exit code 0 only when every check passed. The
//! receivers' own logs go to `target/official_push_check.log`.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use lark_auth::config::{Config, ForwardTarget};
use lark_auth::sandbox::{Sandbox, SandboxConfig};
use lark_auth::secret::Secret;
use lark_auth::vault::{Keyring, VaultKey};
use lark_auth::{LarkAuth, StartOptions};

const ENCRYPT_KEY: &str = "fidelity-encrypt-key-of-the-app";
const VERIFICATION_TOKEN: &str = "fidelity-verification-token";

/// Command line of the check.
#[derive(Parser, Debug)]
struct Args {
    /// Python interpreter with lark-oapi==1.7.5 installed (e.g. a venv's bin/python).
    #[arg(long)]
    python: PathBuf,
    /// The receiver script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/official_push_receiver.py"))]
    script: PathBuf,
    /// Bound of each wait, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

/// A receiver process and the JSON lines it printed.
struct Receiver {
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    url: String,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn spawn(args: &Args, encrypt_key: &str) -> Result<Receiver, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut child = Command::new(&args.python)
            .arg("-u")
            .arg(&args.script)
            .args([&port.to_string(), encrypt_key, VERIFICATION_TOKEN])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_log()?)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", args.python.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Ok(Receiver {
            child,
            lines,
            url: format!("http://127.0.0.1:{port}/webhook/event"),
        })
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until `check` holds for the printed lines.
    async fn wait(&self, timeout: Duration, check: impl Fn(&[serde_json::Value]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if check(&self.lines()) {
                return true;
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn handled(&self, event_id: &str) -> Vec<serde_json::Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["event_id"] == event_id)
            .collect()
    }
}

/// The receivers' stderr (the SDK's own log, e.g. the refusals of the wrong-key receiver):
/// appended to `target/official_push_check.log`.
fn stderr_log() -> Result<Stdio, String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/official_push_check.log"
    );
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Stdio::from)
        .map_err(|e| format!("{path}: {e}"))
}

fn envelope(event_id: &str, event_type: &str, event: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "2.0",
        "header": {
            "event_id": event_id,
            "event_type": event_type,
            "create_time": "1767225600000",
            "token": VERIFICATION_TOKEN,
            "app_id": "cli_sandbox_app",
            "tenant_key": "tk"
        },
        "event": event
    }))
    .unwrap()
}

struct Report(Vec<bool>);

impl Report {
    fn check(&mut self, name: &str, result: Result<(), String>) {
        match &result {
            Ok(()) => println!("PASS  {name}"),
            Err(why) => println!("FAIL  {name}: {why}"),
        }
        self.0.push(result.is_ok());
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let encrypted = Receiver::spawn(&args, ENCRYPT_KEY)?;
    let plain = Receiver::spawn(&args, "")?;
    let wrong = Receiver::spawn(&args, "another-key")?;
    for r in [&encrypted, &plain, &wrong] {
        if !r
            .wait(timeout, |l| l.iter().any(|v| v.get("listening").is_some()))
            .await
        {
            return Err("a receiver did not start (is lark-oapi installed?)".into());
        }
    }
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .map_err(|e| format!("sandbox start: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut config = Config::for_tests(&sandbox.base_url());
    config.vault.path = dir.path().join("vault");
    let keyed = |url: &str, key: &str| ForwardTarget {
        url: url.to_string(),
        encrypt_key_env: "FIDELITY_ENCRYPT_KEY".into(),
        encrypt_key: Some(Secret::new(key.to_string())),
        ..ForwardTarget::default()
    };
    config.events.forward = vec![
        keyed(&encrypted.url, ENCRYPT_KEY),
        ForwardTarget {
            url: plain.url.clone(),
            ..ForwardTarget::default()
        },
        keyed(&wrong.url, ENCRYPT_KEY),
    ];
    config.events.retry_initial = Duration::from_secs(10);
    let handle = LarkAuth::start_with(
        config,
        StartOptions {
            keyring: Keyring::single(1, VaultKey::generate()),
            api_token: None,
            http: false,
            accept_loss: false,
        },
    )
    .map_err(|e| format!("start: {e}"))?;
    handle
        .wait_connected(timeout)
        .await
        .map_err(|e| e.to_string())?;

    let message = envelope(
        "ev_fidelity_msg",
        "im.message.receive_v1",
        serde_json::json!({
            "sender": {"sender_id": {"open_id": "ou_x"}, "sender_type": "user", "tenant_key": "tk"},
            "message": {"message_id": "om_fidelity", "chat_id": "oc_1", "chat_type": "p2p",
                        "message_type": "text", "content": "{\"text\":\"hello 你好\"}", "create_time": "1767225600000"}
        }),
    );
    let approval = envelope(
        "ev_fidelity_approval",
        "approval.approval.updated_v4",
        serde_json::json!({"object": {"approval_id": "7", "approval_code": "A1"}}),
    );
    sandbox
        .push_chunked(&message, 3, &[2, 0, 1])
        .map_err(|e| e.to_string())?;
    sandbox.push_event(&approval).map_err(|e| e.to_string())?;
    let click = envelope(
        "ev_fidelity_click",
        "card.action.trigger",
        serde_json::json!({
            "operator": {"tenant_key": "tk", "open_id": "ou_clicker", "union_id": "on_1"},
            "token": "c-fidelity-card-token",
            "action": {"tag": "button", "value": {"order": "42"}},
            "context": {"open_message_id": "om_card", "open_chat_id": "oc_1"}
        }),
    );
    let click_id = sandbox.push_event(&click).map_err(|e| e.to_string())?;

    let mut report = Report(Vec::new());
    for (name, r) in [("encrypted and signed", &encrypted), ("plain", &plain)] {
        let both = r
            .wait(timeout, |l| {
                [
                    "ev_fidelity_msg",
                    "ev_fidelity_approval",
                    "ev_fidelity_click",
                ]
                .iter()
                .all(|id| {
                    l.iter()
                        .any(|v| v["event_id"] == *id && v.get("handled").is_some())
                })
            })
            .await;
        report.check(
            &format!("{name}: the SDK's handlers ran for both events and the click"),
            if both {
                Ok(())
            } else {
                Err(format!("receiver printed {:?}", r.lines()))
            },
        );
        let msg = r.handled("ev_fidelity_msg");
        report.check(
            &format!("{name}: typed im.message.receive_v1 handler saw the message id"),
            match msg.first() {
                Some(v) if v["message_id"] == "om_fidelity" => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
        report.check(
            &format!("{name}: every request answered 200 by the SDK"),
            match r
                .lines()
                .iter()
                .filter(|v| v.get("status").is_some())
                .collect::<Vec<_>>()
            {
                s if s.len() == 3 && s.iter().all(|v| v["status"] == 200) => Ok(()),
                s => Err(format!("{s:?}")),
            },
        );
        report.check(
            &format!("{name}: each event handled once"),
            if msg.len() == 1
                && r.handled("ev_fidelity_approval").len() == 1
                && r.handled("ev_fidelity_click").len() == 1
            {
                Ok(())
            } else {
                Err(format!("{:?}", r.lines()))
            },
        );
    }
    let refused = wrong
        .wait(timeout, |l| {
            l.iter().filter(|v| v["status"] == 500).count() >= 3
        })
        .await;
    report.check(
        "a receiver with another Encrypt Key refuses (the SDK's checks run)",
        if refused && wrong.lines().iter().all(|v| v.get("handled").is_none()) {
            Ok(())
        } else {
            Err(format!("{:?}", wrong.lines()))
        },
    );
    let ack = sandbox
        .acks()
        .into_iter()
        .find(|a| a.message_id == click_id)
        .and_then(|a| a.payload.ok());
    let answer: Option<serde_json::Value> = ack
        .as_ref()
        .and_then(|p| p.data.as_ref())
        .and_then(|d| serde_json::from_slice(d).ok());
    report.check(
        "the click's ack carries the SDK handler's answer (toast and card)",
        match &answer {
            Some(a)
                if a["toast"]["content"] == "order 42 approved"
                    && a["card"]["data"]["body"]["elements"][0]["content"] == "Approved"
                    && ack.as_ref().and_then(|p| p.code) == Some(200) =>
            {
                Ok(())
            }
            _ => Err(format!("ack payload {ack:?}")),
        },
    );
    let status = handle.forward_status().await.map_err(|e| e.to_string())?;
    report.check(
        "gateway counters: 2 delivered to each good target, none failed; the wrong one failing",
        match &status[..] {
            [a, b, c]
                if (a.delivered_total, a.failed_total) == (2, 0)
                    && (b.delivered_total, b.failed_total) == (2, 0)
                    && c.delivered_total == 0
                    && c.failed_total >= 2 =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        },
    );
    handle.shutdown(Duration::from_secs(2)).await;
    let ok = report.0.iter().all(|&ok| ok);
    println!(
        "official push check: {}",
        if ok { "all checks passed" } else { "FAIL" }
    );
    Ok(ok)
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let args = Args::parse();
    match actix_rt::System::new().block_on(run(args)) {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            println!("FAIL  setup: {e}");
            println!("official push check: FAIL");
            std::process::exit(2);
        }
    }
}
