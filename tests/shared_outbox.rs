//! Two instances on one PostgreSQL store sharing the event gateway's outbox (INTERFACE.md,
//! "Several instances on one shared store": "redelivered events whose instance died are
//! carried on by another within lease_secs plus a poll interval; a redelivered event is
//! forwarded once in all"): while both live, each delivers only the events it took; when
//! one stops with a backlog, the other takes it over once its lease lapses and delivers
//! each event once.

mod pg_common;
#[path = "sessions_common/mod.rs"]
mod sessions_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use bytes::Bytes;
use lark_auth::config::{Config, ForwardTarget, StoreBackend};
use lark_auth::sandbox::Sandbox;
use lark_auth::secret::Secret;
use lark_auth::vault::{Keyring, VaultKey};
use lark_auth::{Handle, LarkAuth, StartOptions};
use sessions_common::{WAIT, eventually, sandbox_config};

/// `store.lease_secs` here.
const LEASE: Duration = Duration::from_secs(2);

/// A webhook receiver on loopback recording the event id of every body (answers 200).
struct Receiver {
    got: Arc<Mutex<Vec<String>>>,
    _server: actix_web::dev::ServerHandle,
}

impl Receiver {
    fn start(port: u16) -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let shared = got.clone();
        let server = HttpServer::new(move || {
            let shared = shared.clone();
            App::new().default_service(web::to(move |body: Bytes| {
                let shared = shared.clone();
                async move {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let id = v["header"]["event_id"].as_str().unwrap().to_string();
                    shared.lock().unwrap().push(id);
                    HttpResponse::Ok().body("{}")
                }
            }))
        })
        .workers(1)
        .bind(("127.0.0.1", port))
        .unwrap()
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Receiver {
            got,
            _server: handle,
        }
    }

    /// The event ids received, sorted.
    fn ids(&self) -> Vec<String> {
        let mut ids = self.got.lock().unwrap().clone();
        ids.sort();
        ids
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

fn envelope(event_id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "2.0",
        "header": {
            "event_id": event_id,
            "event_type": "im.message.receive_v1",
            "create_time": "1767225600000",
            "token": "v-token-of-the-app",
            "app_id": "cli_sandbox_app",
            "tenant_key": "tk"
        },
        "event": {"message": {"message_id": format!("om_{event_id}")}}
    }))
    .unwrap()
}

/// The config of an instance on `sandbox` with the store on `server`, forwarding every
/// event to `127.0.0.1:port`.
fn config(sandbox: &Sandbox, server: &pg_common::TestPostgres, port: u16) -> Config {
    let mut config = Config::for_tests(&sandbox.base_url());
    // Unused on PostgreSQL (nothing is created there).
    config.vault.path = std::env::temp_dir().join("lark-auth-unused-sled");
    config.store.backend = StoreBackend::Postgres;
    config.store.url = Some(Secret::new(server.url()));
    config.store.lease = LEASE;
    config.events.forward = vec![ForwardTarget {
        url: format!("http://127.0.0.1:{port}/webhook/event"),
        timeout: Duration::from_secs(2),
        ..ForwardTarget::default()
    }];
    config.events.retry_initial = Duration::from_millis(50);
    config.events.retry_max = Duration::from_millis(200);
    config
}

async fn start(config: Config, keyring: Keyring) -> Handle {
    let handle = LarkAuth::start_with(
        config,
        StartOptions {
            keyring,
            api_token: None,
            http: false,
            accept_loss: false,
        },
    )
    .expect("starts on PostgreSQL");
    handle.wait_connected(WAIT).await.expect("connects in time");
    handle
}

/// Pushes `ids` to the newest connection and waits for their acks (200: in the outbox).
async fn push(sandbox: &Sandbox, ids: &[&str]) {
    for id in ids {
        let message_id = sandbox.push_event(&envelope(id)).unwrap();
        let ack = eventually(&format!("ack of {id}"), || async {
            sandbox
                .acks()
                .into_iter()
                .find(|a| a.message_id == message_id)
        })
        .await;
        assert_eq!(ack.code(), Some(200), "{id} taken");
    }
}

/// The instance's pending deliveries (one target).
async fn pending(handle: &Handle) -> u64 {
    handle.forward_status().await.unwrap()[0].pending
}

#[actix_rt::test]
async fn while_both_live_each_instance_delivers_only_the_events_it_took() {
    let server = pg_common::TestPostgres::start();
    let sandbox = Sandbox::start(sandbox_config()).await.unwrap();
    let port = free_port();
    let keyring = Keyring::single(1, VaultKey::generate());

    // The receiver is down: both instances hold a backlog.
    let a = start(config(&sandbox, &server, port), keyring.clone()).await;
    push(&sandbox, &["ev_a1", "ev_a2", "ev_a3"]).await;
    let b = start(config(&sandbox, &server, port), keyring).await;
    push(&sandbox, &["ev_b1", "ev_b2"]).await;
    assert_eq!((pending(&a).await, pending(&b).await), (3, 2));
    // Past several leases, each still holds only its own (renewed, never taken over).
    actix_rt::time::sleep(LEASE * 2).await;
    assert_eq!((pending(&a).await, pending(&b).await), (3, 2));

    let receiver = Receiver::start(port);
    eventually("5 deliveries", || async {
        (receiver.ids().len() >= 5).then_some(())
    })
    .await;
    // Another lease and poll: nothing is delivered a second time.
    actix_rt::time::sleep(LEASE * 2).await;
    assert_eq!(
        receiver.ids(),
        ["ev_a1", "ev_a2", "ev_a3", "ev_b1", "ev_b2"],
        "each event once"
    );
    assert_eq!((pending(&a).await, pending(&b).await), (0, 0));
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}

#[actix_rt::test]
async fn a_stopped_instances_backlog_is_carried_on_by_the_other_after_its_lease() {
    let server = pg_common::TestPostgres::start();
    let sandbox = Sandbox::start(sandbox_config()).await.unwrap();
    let port = free_port();
    let keyring = Keyring::single(1, VaultKey::generate());

    // A takes three events while the receiver is down, then stops with them undelivered.
    let a = start(config(&sandbox, &server, port), keyring.clone()).await;
    push(&sandbox, &["ev_1", "ev_2", "ev_3"]).await;
    assert_eq!(pending(&a).await, 3);
    a.shutdown(Duration::from_secs(2)).await;
    let stopped = Instant::now();

    let b = start(config(&sandbox, &server, port), keyring).await;
    let receiver = Receiver::start(port);
    // A's lease is still running: B does not take the entries at start.
    if stopped.elapsed() < LEASE / 2 {
        assert_eq!(pending(&b).await, 0, "A's entries are still A's");
    }
    eventually("3 deliveries by B", || async {
        (receiver.ids().len() >= 3).then_some(())
    })
    .await;
    // Within the lease and one poll (and the time to deliver).
    let took = stopped.elapsed();
    assert!(
        took < LEASE + LEASE / 3 + Duration::from_secs(2),
        "taken over after {took:?}"
    );
    actix_rt::time::sleep(LEASE * 2).await;
    assert_eq!(receiver.ids(), ["ev_1", "ev_2", "ev_3"], "each event once");
    let status = b.forward_status().await.unwrap();
    assert_eq!((status[0].pending, status[0].delivered_total), (0, 3));
    b.shutdown(Duration::from_secs(2)).await;
}
