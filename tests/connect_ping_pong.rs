//! Connecting: discovery, handshake, the first ping at once, and the server's ClientConfig
//! applied (or refused when absurd).

mod common;

use std::time::Duration;

use common::*;
use lark_auth::connection::{ConnectionState, GetConnectionStatus};
use lark_auth::protocol::endpoint::ClientConfig;
use lark_auth::sandbox::SandboxConfig;

#[actix_rt::test]
async fn connects_pings_at_once_and_applies_the_pong_config() {
    let h = start_connected().await;
    let discoveries = h.sandbox.discoveries();
    assert_eq!(discoveries.len(), 1);
    assert_eq!(discoveries[0].locale.as_deref(), Some("zh"));
    assert_eq!(discoveries[0].app_id.as_deref(), Some("cli_sandbox_app"));

    let pings = h.sandbox.wait_for_pings(2, WAIT).await.expect("two pings");
    assert!(
        pings
            .iter()
            .all(|p| p.service == 33_554_678 && p.ids == (0, 0))
    );
    let gap = pings[1].at - pings[0].at;
    assert!(
        gap >= Duration::from_millis(800),
        "second ping follows PingInterval (1 s), came after {gap:?}"
    );

    let status = h.actor.send(GetConnectionStatus).await.unwrap();
    assert_eq!(status.state, ConnectionState::Connected);
    assert_eq!(status.tuning.ping_interval, Duration::from_secs(1));
    assert_eq!(status.tuning.reconnect_nonce, Duration::ZERO);
    assert!(status.conn_id.is_some_and(|id| id.len() == 19));
    assert!(h.sandbox.connection_nodelay().iter().all(|n| *n));
}

#[actix_rt::test]
async fn a_zero_or_absurd_interval_from_the_server_is_not_obeyed() {
    let h = start(SandboxConfig {
        client_config: ClientConfig {
            ping_interval: Some(0),
            reconnect_interval: Some(-5),
            reconnect_nonce: Some(0),
            reconnect_count: Some(0),
        },
        ..SandboxConfig::default()
    })
    .await;
    h.probe.wait_for_state(ConnectionState::Connected, 1).await;
    h.sandbox.wait_for_pings(1, WAIT).await.unwrap();
    let status = h.actor.send(GetConnectionStatus).await.unwrap();
    assert_eq!(status.tuning.ping_interval, Duration::from_secs(120));
    assert_eq!(status.tuning.reconnect_interval, Duration::from_secs(120));
    assert_eq!(
        status.tuning.reconnect_count, None,
        "0 would disable reconnects"
    );
    assert_eq!(
        status.tuning.reconnect_nonce,
        Duration::ZERO,
        "0 is a valid nonce"
    );
}
