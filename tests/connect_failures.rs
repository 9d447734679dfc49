//! Failed attempts: retryable ones are retried with a fresh discovery, fatal ones stop
//! the actor with a clear cause, `ReconnectCount` is honoured, and a shutdown during the
//! backoff wait is prompt.

mod common;

use std::time::Duration;

use common::*;
use lark_auth::connection::{ConnectionState, GetConnectionStatus, Shutdown};
use lark_auth::protocol::endpoint::ConnectFailure;
use lark_auth::sandbox::{DiscoveryFault, HandshakeFault};

#[actix_rt::test]
async fn discovery_busy_is_retried_then_succeeds() {
    let sandbox_config = fast_sandbox_config();
    let h = start_with(sandbox_config, |_| {}).await;
    // The fault is queued after start; the first attempt may already have run, so queue
    // two busy answers on a fresh connection cycle instead.
    h.probe.wait_for_state(ConnectionState::Connected, 1).await;
    h.sandbox.inject_discovery_fault(DiscoveryFault::Code {
        code: 1,
        msg: "system busy".into(),
    });
    h.sandbox
        .inject_discovery_fault(DiscoveryFault::HttpStatus(503));
    h.sandbox.close_all();
    h.probe.wait_for_state(ConnectionState::Connected, 2).await;
    let discoveries = h.sandbox.discoveries();
    assert_eq!(discoveries.len(), 4, "initial + busy + 503 + success");
    assert!(discoveries[3].issued_url);
}

#[actix_rt::test]
async fn wrong_credentials_are_fatal_and_not_retried() {
    let h = start_with(fast_sandbox_config(), |config| {
        config.app.credentials.as_mut().unwrap().app_secret =
            lark_auth::secret::Secret::new("wrong-secret".into());
    })
    .await;
    h.probe.wait_for_state(ConnectionState::Failed, 1).await;
    let status = h.actor.send(GetConnectionStatus).await.unwrap();
    assert_eq!(status.state, ConnectionState::Failed);
    assert!(matches!(
        status.last_failure,
        Some(ConnectFailure::DiscoveryCode { code: 10003, .. })
    ));
    let cause = h.probe.cause_of(ConnectionState::Failed).unwrap();
    assert!(
        cause.contains("app secret"),
        "the cause says what to check: {cause}"
    );
    assert!(!cause.contains("wrong-secret"), "no secret in the cause");
    // No further attempt: one discovery only, even after a while.
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.sandbox.discoveries().len(), 1);
}

#[actix_rt::test]
async fn connection_limit_at_handshake_is_fatal() {
    let h = start(fast_sandbox_config()).await;
    h.probe.wait_for_state(ConnectionState::Connected, 1).await;
    h.sandbox
        .inject_handshake_fault(HandshakeFault::connection_limit());
    h.sandbox.close_all();
    h.probe.wait_for_state(ConnectionState::Failed, 1).await;
    let status = h.actor.send(GetConnectionStatus).await.unwrap();
    assert!(matches!(
        status.last_failure,
        Some(ConnectFailure::Handshake {
            handshake_status: Some(514),
            auth_code: Some(1_000_040_350),
            ..
        })
    ));
}

#[actix_rt::test]
async fn forbidden_at_handshake_is_fatal_other_refusals_are_retried() {
    let h = start(fast_sandbox_config()).await;
    h.probe.wait_for_state(ConnectionState::Connected, 1).await;
    h.sandbox
        .inject_handshake_fault(HandshakeFault::server_error(500));
    h.sandbox.close_all();
    h.probe.wait_for_state(ConnectionState::Connected, 2).await;
    h.sandbox
        .inject_handshake_fault(HandshakeFault::forbidden());
    h.sandbox.close_all();
    h.probe.wait_for_state(ConnectionState::Failed, 1).await;
    assert_eq!(h.sandbox.handshakes_refused(), 2);
}

#[actix_rt::test]
async fn reconnect_count_is_honoured_then_the_failure_is_reported() {
    let h = start(sandbox_with(2, 1, 0, 1)).await;
    h.probe.wait_for_state(ConnectionState::Connected, 1).await;
    for _ in 0..5 {
        h.sandbox
            .inject_discovery_fault(DiscoveryFault::HttpStatus(500));
    }
    h.sandbox.close_all();
    h.probe.wait_for_state(ConnectionState::Failed, 1).await;
    assert_eq!(
        h.sandbox.discoveries().len(),
        1 + 2,
        "two attempts, then give up"
    );
    let cause = h.probe.cause_of(ConnectionState::Failed).unwrap();
    assert!(cause.contains("gave up"), "{cause}");
}

#[actix_rt::test]
async fn shutdown_during_the_backoff_wait_is_prompt() {
    // ReconnectNonce 30 s: the first reconnect waits up to 30 s.
    let h = start(sandbox_with(-1, 60, 30, 1)).await;
    h.probe.wait_for_state(ConnectionState::Connected, 1).await;
    // Make sure the wait is not zero: fail the first reconnect discovery too.
    h.sandbox
        .inject_discovery_fault(DiscoveryFault::HttpStatus(500));
    h.sandbox.close_all();
    h.probe
        .wait_for_state(ConnectionState::Reconnecting, 1)
        .await;
    h.actor.send(Shutdown).await.unwrap();
    h.probe.wait_for_state(ConnectionState::Stopped, 1).await;
    let status = h.actor.send(GetConnectionStatus).await.unwrap();
    assert_eq!(status.state, ConnectionState::Stopped);
    assert_eq!(status.connects, 1);
}

#[actix_rt::test]
async fn shutdown_closes_the_live_connection() {
    let h = start_connected().await;
    h.actor.send(Shutdown).await.unwrap();
    h.probe.wait_for_state(ConnectionState::Stopped, 1).await;
    within("server sees the connection close", async {
        while h.sandbox.active_connections() > 0 {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        h.sandbox.connections_accepted(),
        1,
        "no reconnect after shutdown"
    );
}
