//! The event gateway against the sandbox, with a real HTTP receiver (an actix-web server in
//! the test) as the `[[events.forward]]` target: events of several types, chunked and out
//! of order, reach it once each with the envelope bytes intact; a redelivered event is
//! delivered once; with an Encrypt Key the body decrypts (independently of the gateway's
//! code) and the signature verifies; a receiver answering 500 or not listening gets every
//! event once it is back; an outbox that is full answers 500 and loses nothing; a backlog
//! survives `kill -9` of `serve`. Clicks on cards lark-auth did not send go to the target
//! at once and its answer comes back in the ack; a target slower than the callback budget
//! leaves the card unchanged.

#[path = "sessions_common/mod.rs"]
mod sessions_common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use aes::cipher::{BlockDecryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine as _;
use bytes::Bytes;
use lark_auth::config::{Config, ForwardTarget};
use lark_auth::sandbox::Sandbox;
use lark_auth::secret::Secret;
use lark_auth::vault::{Keyring, VaultKey};
use lark_auth::{Handle, LarkAuth, StartOptions};
use sessions_common::{WAIT, eventually, sandbox_config};
use sha2::{Digest, Sha256};

// ----- the receiver -----------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Bytes,
    status: u16,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct ReceiverState {
    /// Status answered; 200 when `None`.
    answer: Option<u16>,
    /// Body answered; `{}` when `None`.
    reply: Option<String>,
    /// Wait before answering.
    delay: Duration,
    got: Vec<Received>,
}

/// A webhook receiver on loopback recording every request.
struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
    server: actix_web::dev::ServerHandle,
}

impl Receiver {
    /// Starts on a free port (or `port`).
    fn start(port: u16) -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let shared = state.clone();
        let server = HttpServer::new(move || {
            let shared = shared.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: Bytes| {
                let shared = shared.clone();
                async move {
                    let (status, reply, delay) = {
                        let mut s = shared.lock().unwrap();
                        let status = s.answer.unwrap_or(200);
                        s.got.push(Received {
                            headers: req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                                .collect(),
                            body,
                            status,
                        });
                        (status, s.reply.clone(), s.delay)
                    };
                    actix_rt::time::sleep(delay).await;
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                        .body(reply.unwrap_or_else(|| "{}".into()))
                }
            }))
        })
        .workers(1)
        .bind(("127.0.0.1", port))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Receiver {
            url: format!("http://127.0.0.1:{port}/webhook/event"),
            state,
            server: handle,
        }
    }

    fn answer(&self, status: u16) {
        self.state.lock().unwrap().answer = Some(status);
    }

    /// Answers `body` (after `delay`) from now on.
    fn reply(&self, body: &str, delay: Duration) {
        let mut s = self.state.lock().unwrap();
        s.reply = Some(body.to_string());
        s.delay = delay;
    }

    fn got(&self) -> Vec<Received> {
        self.state.lock().unwrap().got.clone()
    }

    /// The bodies answered 2xx.
    fn delivered(&self) -> Vec<Bytes> {
        self.got()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.body)
            .collect()
    }

    async fn wait_delivered(&self, n: usize) -> Vec<Bytes> {
        eventually(&format!("{n} deliveries"), || async {
            let d = self.delivered();
            (d.len() >= n).then_some(d)
        })
        .await
    }
}

/// A free loopback port nobody listens on (yet).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ----- the service ------------------------------------------------------------------------

const VERIFICATION_TOKEN: &str = "v-token-of-the-app";

/// A schema 2.0 envelope of `event_type` with id `event_id`.
fn envelope(event_id: &str, event_type: &str) -> Vec<u8> {
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
        "event": {"message": {"message_id": format!("om_{event_id}"), "content": "{\"text\":\"hi 你好\"}"}}
    }))
    .unwrap()
}

fn target(url: &str) -> ForwardTarget {
    ForwardTarget {
        url: url.to_string(),
        timeout: Duration::from_secs(2),
        ..ForwardTarget::default()
    }
}

struct Instance {
    sandbox: Sandbox,
    handle: Handle,
    _dir: tempfile::TempDir,
}

/// A service forwarding to `targets`, connected; `adjust` changes the config last.
async fn start(targets: Vec<ForwardTarget>, adjust: impl FnOnce(&mut Config)) -> Instance {
    let sandbox = Sandbox::start(sandbox_config()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(&sandbox.base_url());
    config.vault.path = dir.path().join("vault");
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.events.forward = targets;
    config.events.retry_initial = Duration::from_millis(50);
    config.events.retry_max = Duration::from_millis(200);
    adjust(&mut config);
    let handle = LarkAuth::start_with(
        config,
        StartOptions {
            keyring: Keyring::single(1, VaultKey::generate()),
            api_token: Some(Secret::new("api".into())),
            http: true,
            accept_loss: false,
        },
    )
    .expect("starts");
    handle.wait_connected(WAIT).await.expect("connects in time");
    Instance {
        sandbox,
        handle,
        _dir: dir,
    }
}

impl Instance {
    async fn ack_code(&self, message_id: &str) -> Option<i64> {
        eventually(&format!("ack of {message_id}"), || async {
            self.sandbox
                .acks()
                .into_iter()
                .find(|a| a.message_id == message_id)
        })
        .await
        .code()
    }
}

/// A `card.action.trigger` envelope of a card lark-auth did not send (`value` of another
/// program), or of a lark-auth card when `value` names a session and an action.
fn click_envelope(event_id: &str, value: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "2.0",
        "header": {
            "event_id": event_id,
            "event_type": "card.action.trigger",
            "create_time": "1767225600000",
            "token": VERIFICATION_TOKEN,
            "app_id": "cli_sandbox_app",
            "tenant_key": "tk"
        },
        "event": {
            "operator": {"tenant_key": "tk", "open_id": "ou_clicker"},
            "token": "c-card-token",
            "action": {"tag": "button", "value": value}
        }
    }))
    .unwrap()
}

impl Instance {
    /// The `data` of the (first) ack of `message_id`, as JSON; `None` without data.
    async fn ack_data(&self, message_id: &str) -> Option<serde_json::Value> {
        let ack = eventually(&format!("ack of {message_id}"), || async {
            self.sandbox
                .acks()
                .into_iter()
                .find(|a| a.message_id == message_id)
        })
        .await;
        assert_eq!(ack.code(), Some(200));
        let data = ack.payload.expect("an ack payload").data?;
        Some(serde_json::from_slice(&data).expect("data is JSON"))
    }
}

/// The event ids in delivered bodies (plain JSON envelopes).
fn event_ids(bodies: &[Bytes]) -> Vec<String> {
    let mut ids: Vec<String> = bodies
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            v["header"]["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    ids
}

// ----- tests ------------------------------------------------------------------------------

#[actix_rt::test]
async fn events_of_several_types_chunked_and_redelivered_reach_the_receiver_once_intact() {
    let receiver = Receiver::start(0);
    let messages = Receiver::start(0);
    let mut only_messages = target(&messages.url);
    only_messages.event_types = vec!["im.message.receive_v1".into()];
    let i = start(vec![target(&receiver.url), only_messages], |_| {}).await;

    let msg = envelope("ev_a", "im.message.receive_v1");
    let approval = envelope("ev_b", "approval.approval.updated_v4");
    let calendar = envelope("ev_c", "calendar.calendar.event.changed_v4");
    let chunked = envelope("ev_d", "im.message.receive_v1");
    let mut pushed = vec![
        i.sandbox.push_event(&msg).unwrap(),
        i.sandbox.push_event(&approval).unwrap(),
        i.sandbox.push_event(&calendar).unwrap(),
        i.sandbox.push_chunked(&chunked, 3, &[2, 0, 1]).unwrap(),
    ];
    for m in &pushed {
        assert_eq!(i.ack_code(m).await, Some(200));
    }
    // The platform delivers ev_a again under a new message id (its ack was "lost").
    pushed.push(i.sandbox.push_event(&msg).unwrap());
    assert_eq!(i.ack_code(&pushed[4]).await, Some(200));

    let all = receiver.wait_delivered(4).await;
    let only = messages.wait_delivered(2).await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let all_now = receiver.delivered();
    assert_eq!(all_now.len(), 4, "once each: {:?}", event_ids(&all_now));
    assert_eq!(event_ids(&all), ["ev_a", "ev_b", "ev_c", "ev_d"]);
    assert_eq!(event_ids(&messages.delivered()), ["ev_a", "ev_d"]);
    assert_eq!(only.len(), 2);
    // The envelope bytes as received, and the platform's content type.
    for body in [&msg, &approval, &calendar, &chunked] {
        assert!(all.iter().any(|b| b[..] == body[..]), "bytes intact");
    }
    let first = &receiver.got()[0];
    assert_eq!(
        first.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(first.header("x-lark-signature"), None, "plain: unsigned");

    let status = i.handle.forward_status().await.unwrap();
    assert_eq!(status.len(), 2);
    assert_eq!(status[0].target, receiver.url);
    assert_eq!((status[0].pending, status[0].delivered_total), (0, 4));
    assert_eq!((status[1].pending, status[1].delivered_total), (0, 2));
}

/// Decrypts a `{"encrypt": …}` body as the SDKs do, from the Encrypt Key string.
fn decrypt(encrypt_key: &str, body: &[u8]) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(v["encrypt"].as_str().expect("an encrypt field"))
        .unwrap();
    let key: [u8; 32] = Sha256::digest(encrypt_key.as_bytes()).into();
    let (iv, ciphertext) = sealed.split_at(16);
    cbc::Decryptor::<aes::Aes256>::new(&key.into(), iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .unwrap()
}

#[actix_rt::test]
async fn with_an_encrypt_key_the_body_decrypts_to_the_envelope_and_the_signature_verifies() {
    const KEY: &str = "encrypt-key-of-the-app";
    let receiver = Receiver::start(0);
    let mut t = target(&receiver.url);
    t.encrypt_key_env = "UNUSED_IN_START_WITH".into();
    t.encrypt_key = Some(Secret::new(KEY.into()));
    let i = start(vec![t], |_| {}).await;
    let event = envelope("ev_enc", "im.message.receive_v1");
    let m = i.sandbox.push_event(&event).unwrap();
    assert_eq!(i.ack_code(&m).await, Some(200));
    receiver.wait_delivered(1).await;
    let got = &receiver.got()[0];
    assert_eq!(decrypt(KEY, &got.body), event);
    let (ts, nonce, sig) = (
        got.header("X-Lark-Request-Timestamp").unwrap(),
        got.header("X-Lark-Request-Nonce").unwrap(),
        got.header("X-Lark-Signature").unwrap(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts.parse::<u64>().unwrap().abs_diff(now) < 60);
    assert!(!nonce.is_empty());
    let mut h = Sha256::new();
    h.update(format!("{ts}{nonce}{KEY}").as_bytes());
    h.update(&got.body);
    let expected: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sig, expected);
}

#[actix_rt::test]
async fn a_receiver_answering_500_or_not_listening_gets_every_event_once_when_back() {
    let failing = Receiver::start(0);
    failing.answer(500);
    let later_port = free_port();
    let later_url = format!("http://127.0.0.1:{later_port}/webhook/event");
    let i = start(vec![target(&failing.url), target(&later_url)], |_| {}).await;
    let events: Vec<Vec<u8>> = (0..5)
        .map(|n| envelope(&format!("ev_r{n}"), "im.message.receive_v1"))
        .collect();
    for e in &events {
        let m = i.sandbox.push_event(e).unwrap();
        assert_eq!(i.ack_code(&m).await, Some(200), "stored, so acked 200");
    }
    eventually("retries against the failing receiver", || async {
        (failing.got().len() >= 10).then_some(())
    })
    .await;
    let status = i.handle.forward_status().await.unwrap();
    assert_eq!(status[0].pending, 5);
    assert!(status[0].failed_total >= 10, "{status:?}");
    assert_eq!(status[1].pending, 5);
    assert!(status[1].oldest_pending_at_ms.is_some());

    failing.answer(200);
    let later = Receiver::start(later_port);
    failing.wait_delivered(5).await;
    later.wait_delivered(5).await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let expected: Vec<String> = (0..5).map(|n| format!("ev_r{n}")).collect();
    assert_eq!(event_ids(&failing.delivered()), expected);
    assert_eq!(event_ids(&later.delivered()), expected);
    let status = i.handle.forward_status().await.unwrap();
    assert_eq!((status[0].pending, status[0].delivered_total), (0, 5));
    assert_eq!((status[1].pending, status[1].delivered_total), (0, 5));
    assert_eq!(status[1].oldest_pending_at_ms, None);
    let metrics = i.handle.metrics().encode();
    assert!(
        metrics.contains(&format!(
            "lark_auth_forward_deliveries_total{{target=\"{}\",outcome=\"delivered\"}} 5",
            failing.url
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("lark_auth_forward_retries_total"),
        "{metrics}"
    );
}

#[actix_rt::test]
async fn a_full_outbox_answers_500_and_the_event_comes_again_and_is_delivered() {
    let receiver = Receiver::start(0);
    receiver.answer(503);
    let i = start(vec![target(&receiver.url)], |c| {
        c.events.outbox_capacity = 2;
    })
    .await;
    let e: Vec<Vec<u8>> = (0..3)
        .map(|n| envelope(&format!("ev_f{n}"), "im.message.receive_v1"))
        .collect();
    let m0 = i.sandbox.push_event(&e[0]).unwrap();
    let m1 = i.sandbox.push_event(&e[1]).unwrap();
    assert_eq!(i.ack_code(&m0).await, Some(200));
    assert_eq!(i.ack_code(&m1).await, Some(200));
    let m2 = i.sandbox.push_event(&e[2]).unwrap();
    assert_eq!(
        i.ack_code(&m2).await,
        Some(500),
        "full: refused, not dropped"
    );
    assert!(
        i.handle
            .metrics()
            .encode()
            .contains("lark_auth_forward_outbox_full_total 1")
    );
    receiver.answer(200);
    receiver.wait_delivered(2).await;
    // The platform delivers the refused event again; now there is room.
    let again = i.sandbox.push_event(&e[2]).unwrap();
    assert_eq!(i.ack_code(&again).await, Some(200));
    receiver.wait_delivered(3).await;
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        event_ids(&receiver.delivered()),
        ["ev_f0", "ev_f1", "ev_f2"]
    );
}

#[actix_rt::test]
async fn a_delivery_failing_past_retry_for_is_kept_as_dead_and_counted() {
    let receiver = Receiver::start(0);
    receiver.answer(500);
    let i = start(vec![target(&receiver.url)], |c| {
        c.events.retry_for = Duration::from_millis(400);
    })
    .await;
    let m = i
        .sandbox
        .push_event(&envelope("ev_dead", "im.message.receive_v1"))
        .unwrap();
    assert_eq!(i.ack_code(&m).await, Some(200));
    let status = eventually("the delivery given up", || async {
        let s = i.handle.forward_status().await.unwrap();
        (s[0].dead == 1).then_some(s)
    })
    .await;
    assert_eq!(status[0].pending, 0);
    let tries = receiver.got().len();
    assert!(tries >= 2, "retried before giving up: {tries}");
    actix_rt::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.got().len(), tries, "no try after it is dead");
    let metrics = i.handle.metrics().encode();
    assert!(
        metrics.contains(&format!(
            "lark_auth_forward_dead{{target=\"{}\"}} 1",
            receiver.url
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "lark_auth_forward_deliveries_total{{target=\"{}\",outcome=\"dead\"}} 1",
            receiver.url
        )),
        "{metrics}"
    );
}

#[actix_rt::test]
async fn without_targets_events_are_acked_at_once_and_nothing_is_forwarded() {
    let receiver = Receiver::start(0);
    let i = start(Vec::new(), |_| {}).await;
    let m = i
        .sandbox
        .push_event(&envelope("ev_none", "im.message.receive_v1"))
        .unwrap();
    assert_eq!(i.ack_code(&m).await, Some(200));
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.got().is_empty());
    assert!(i.handle.forward_status().await.unwrap().is_empty());
    let _ = &receiver.server;
}

// ----- across a kill -9 of `serve` --------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_lark-auth");
const VAULT_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const API_TOKEN: &str = "api-token-value";

fn spawn_serve(
    dir: &std::path::Path,
    sandbox: &Sandbox,
    port: u16,
    target: &str,
    log: &str,
) -> std::process::Child {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[endpoints]\nopen_base_url = \"{0}\"\naccounts_base_url = \"{0}\"\n\
             [vault]\npath = \"{1}\"\n[http]\nlisten = \"127.0.0.1:{2}\"\n\
             [events]\nretry_initial_secs = 1\nretry_max_secs = 1\n\
             [[events.forward]]\nurl = \"{3}\"\nencrypt_key_env = \"GW_ENCRYPT_KEY\"\n\
             [log]\nlevel = \"info,lark_auth=debug\"\n",
            sandbox.base_url(),
            dir.join("vault").display(),
            port,
            target,
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(log)).unwrap();
    Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("LARK_APP_ID", "cli_sandbox_app")
        .env("LARK_APP_SECRET", "sandbox-secret")
        .env("LARK_AUTH_VAULT_KEY", VAULT_KEY)
        .env("LARK_AUTH_API_TOKEN", API_TOKEN)
        .env("GW_ENCRYPT_KEY", "gw-key")
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

async fn wait_connected(port: u16) {
    let client = awc::Client::default();
    let url = format!("http://127.0.0.1:{port}/healthz");
    eventually("serve connected", || async {
        let mut res = client.get(&url).send().await.ok()?;
        let body: serde_json::Value = res.json().await.ok()?;
        (body["connection"] == "connected").then_some(())
    })
    .await;
}

async fn forward_status(port: u16) -> serde_json::Value {
    awc::Client::default()
        .get(format!("http://127.0.0.1:{port}/v1/events/forward"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[actix_rt::test]
async fn a_backlog_survives_kill_9_of_serve_and_is_delivered_after_the_restart() {
    let sandbox = Sandbox::start(sandbox_config()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(0);
    receiver.answer(500);
    let port = free_port();
    let mut serve = spawn_serve(dir.path(), &sandbox, port, &receiver.url, "first.log");
    wait_connected(port).await;
    let events: Vec<Vec<u8>> = (0..20)
        .map(|n| envelope(&format!("ev_k{n:02}"), "im.message.receive_v1"))
        .collect();
    let mut pushed = Vec::new();
    for e in &events {
        pushed.push(sandbox.push_event(e).unwrap());
    }
    let acks = sandbox.wait_for_acks(20, WAIT).await.unwrap();
    assert!(acks.iter().all(|a| a.code() == Some(200)));
    let status = forward_status(port).await;
    assert_eq!(status[0]["target"], receiver.url.as_str());
    assert_eq!(status[0]["pending"], 20, "{status}");
    assert!(status[0]["oldest_pending_at"].is_string(), "{status}");
    // `lark-auth events` prints the same.
    let events_cli = |json: bool| {
        let server = format!("http://127.0.0.1:{port}");
        let mut args = vec!["events", "--server", server.as_str()];
        if json {
            args.push("--json");
        }
        let out = Command::new(BIN)
            .args(&args)
            .env("LARK_AUTH_API_TOKEN", API_TOKEN)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let table = events_cli(false);
    assert!(
        table.contains("PENDING") && table.contains(&receiver.url) && table.contains(" 20 "),
        "{table}"
    );
    let printed: serde_json::Value = serde_json::from_str(&events_cli(true)).unwrap();
    assert_eq!(printed[0]["pending"], 20, "{printed}");
    serve.kill().unwrap();
    serve.wait().unwrap();

    receiver.answer(200);
    let mut serve = spawn_serve(dir.path(), &sandbox, port, &receiver.url, "second.log");
    wait_connected(port).await;
    // One of them comes again from the platform after the restart: delivered once.
    sandbox.push_duplicate(&pushed[3]).unwrap();
    let delivered = receiver.wait_delivered(20).await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let delivered_now = receiver.delivered();
    assert_eq!(delivered_now.len(), 20, "once each");
    let mut ids: Vec<String> = delivered
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_slice(&decrypt("gw-key", b)).unwrap();
            v["header"]["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    ids.sort();
    let expected: Vec<String> = (0..20).map(|n| format!("ev_k{n:02}")).collect();
    assert_eq!(ids, expected);
    let status = forward_status(port).await;
    assert_eq!(status[0]["pending"], 0, "{status}");
    assert!(status[0].get("oldest_pending_at").is_none(), "{status}");
    let _ = serve.kill();
    let _ = serve.wait();
}

#[actix_rt::test]
async fn clicks_on_other_cards_go_to_the_target_and_its_answer_comes_back_in_the_ack() {
    let approvals = Receiver::start(0);
    approvals.reply(
        r#"{"toast":{"type":"success","content":"Approved #42"}}"#,
        Duration::ZERO,
    );
    let second = Receiver::start(0);
    second.reply(
        r#"{"toast":{"type":"error","content":"not me"}}"#,
        Duration::ZERO,
    );
    let messages = Receiver::start(0);
    let mut only_messages = target(&messages.url);
    only_messages.event_types = vec!["im.message.receive_v1".into()];
    let i = start(
        vec![only_messages, target(&approvals.url), target(&second.url)],
        |_| {},
    )
    .await;

    let click = click_envelope(
        "ev_click_1",
        serde_json::json!({"order": "42", "do": "approve"}),
    );
    let first = i.sandbox.push_event(&click).unwrap();
    assert_eq!(
        i.ack_data(&first).await,
        Some(serde_json::json!({"toast": {"type": "success", "content": "Approved #42"}})),
        "the first target taking callbacks answers"
    );
    let got = approvals.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body[..], click[..], "the envelope bytes as received");
    assert_eq!(
        second.got().len(),
        1,
        "every target taking callbacks gets it"
    );

    // The platform delivers the click again (its ack was "lost"): the same answer, not
    // POSTed again.
    i.sandbox.push_duplicate(&first).unwrap();
    eventually("the copy's ack", || async {
        (i.sandbox
            .acks()
            .iter()
            .filter(|a| a.message_id == first)
            .count()
            == 2)
            .then_some(())
    })
    .await;
    let copy = i
        .sandbox
        .acks()
        .into_iter()
        .filter(|a| a.message_id == first)
        .nth(1)
        .unwrap();
    let data: serde_json::Value =
        serde_json::from_slice(&copy.payload.unwrap().data.unwrap()).unwrap();
    assert_eq!(data["toast"]["content"], "Approved #42");

    // A click on a lark-auth card is lark-auth's: never forwarded.
    let own = click_envelope(
        "ev_click_own",
        serde_json::json!({"action": "authorize", "session_id": "as_unknown"}),
    );
    let own_id = i.sandbox.push_event(&own).unwrap();
    let answer = i.ack_data(&own_id).await.expect("lark-auth's toast");
    assert!(answer["toast"]["content"].is_string(), "{answer}");
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        approvals.got().len(),
        1,
        "not POSTed again, own click not forwarded"
    );
    assert!(
        messages.got().is_empty(),
        "a target not taking callbacks gets none"
    );
    let status = i.handle.forward_status().await.unwrap();
    assert!(
        status
            .iter()
            .all(|s| s.pending == 0 && s.delivered_total == 0),
        "callbacks do not go through the outbox: {status:?}"
    );
    let metrics = i.handle.metrics().encode();
    assert!(
        metrics.contains(&format!(
            "lark_auth_forward_callbacks_total{{target=\"{}\",outcome=\"answered\"}} 1",
            approvals.url
        )),
        "{metrics}"
    );
}

#[actix_rt::test]
async fn a_callback_target_slower_than_the_budget_leaves_the_card_unchanged() {
    let slow = Receiver::start(0);
    slow.reply(
        r#"{"toast":{"type":"info","content":"too late"}}"#,
        Duration::from_secs(3),
    );
    let mut slow_target = target(&slow.url);
    slow_target.timeout = Duration::from_secs(10);
    let i = start(vec![slow_target], |config| {
        config.connection.callback_budget = Duration::from_millis(800);
    })
    .await;

    let click = click_envelope("ev_click_slow", serde_json::json!({"k": "v"}));
    let m = i.sandbox.push_event(&click).unwrap();
    let data = i.ack_data(&m).await;
    assert!(
        data.is_none() || data == Some(serde_json::json!({})),
        "no answer from a late target: {data:?}"
    );
    assert_eq!(slow.got().len(), 1);
    let metrics = eventually("the late callback counted", || async {
        let m = i.handle.metrics().encode();
        m.contains(&format!(
            "lark_auth_forward_callbacks_total{{target=\"{}\",outcome=\"late\"}} 1",
            slow.url
        ))
        .then_some(m)
    })
    .await;
    assert!(
        metrics.contains("lark_auth_callback_answers_total"),
        "{metrics}"
    );
}

/// A target answering as HTTP/1.0 servers do (Python's `http.server`): no `Connection:
/// close`, then the connection is closed. Counts the requests it answered.
fn http10_receiver() -> (String, Arc<Mutex<usize>>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let answered = Arc::new(Mutex::new(0));
    let count = answered.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then Content-Length bytes of body.
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}");
            *count.lock().unwrap() += 1;
            // Closed a moment later, as an HTTP/1.0 server does once its handler returns
            // (the client may have sent the next request on it by then).
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    (url, answered)
}

#[actix_rt::test]
async fn a_target_closing_its_connections_after_each_answer_gets_every_event_without_a_failure() {
    let (url, answered) = http10_receiver();
    let i = start(vec![target(&url)], |_| {}).await;
    for n in 0..5 {
        let m = i
            .sandbox
            .push_event(&envelope(&format!("ev_h10_{n}"), "im.message.receive_v1"))
            .unwrap();
        assert_eq!(i.ack_code(&m).await, Some(200));
        // One at a time, so each POST finds the previous one's connection in the pool.
        eventually("delivered", || async {
            (*answered.lock().unwrap() > n).then_some(())
        })
        .await;
    }
    let status = i.handle.forward_status().await.unwrap();
    assert_eq!(
        (status[0].delivered_total, status[0].failed_total),
        (5, 0),
        "a connection the target closed is not a failed delivery"
    );
}
