//! Reconnecting: after a server Close, a dropped TCP connection and a silent (half-open)
//! link; discovery is repeated on every attempt.

mod common;

use common::*;
use lark_auth::connection::{ConnectionState, GetConnectionStatus};

#[actix_rt::test]
async fn reconnects_after_the_server_closes() {
    let h = start_connected().await;
    h.sandbox.close_all();
    h.probe
        .wait_for_state(ConnectionState::Reconnecting, 1)
        .await;
    h.probe.wait_for_state(ConnectionState::Connected, 2).await;
    h.sandbox.wait_for_connections(2, WAIT).await.unwrap();
    assert_eq!(
        h.sandbox.discoveries().len(),
        2,
        "discovery before every attempt"
    );
    // The new connection works: an event is acked on it.
    h.sandbox
        .push_event(&event_json("ev_after_reconnect", "im.message.receive_v1"))
        .unwrap();
    h.probe
        .wait_until("event on the new connection", |s| s.events.len() == 1)
        .await;
    // The probe may see the event before the sandbox has read the ack off the socket.
    let acks = h.sandbox.wait_for_acks(1, WAIT).await.unwrap();
    let connections = h.sandbox.connections();
    assert_eq!(connections.len(), 1, "the old connection is gone");
    assert_eq!(acks[0].connection, connections[0].id);
}

#[actix_rt::test]
async fn reconnects_after_the_tcp_connection_drops_without_close() {
    let h = start_connected().await;
    h.sandbox.drop_all();
    h.probe.wait_for_state(ConnectionState::Connected, 2).await;
    let status = h.actor.send(GetConnectionStatus).await.unwrap();
    assert_eq!(status.connects, 2);
}

#[actix_rt::test]
async fn a_silent_link_is_detected_and_replaced() {
    // Ping interval 1 s, liveness margin 300 ms: silence is noticed after about 1.3 s.
    let h = start_connected().await;
    h.sandbox.go_silent();
    h.probe
        .wait_for_state(ConnectionState::Reconnecting, 1)
        .await;
    let cause = h
        .probe
        .seen
        .lock()
        .unwrap()
        .states
        .iter()
        .find(|s| s.state == ConnectionState::Reconnecting)
        .and_then(|s| s.cause.clone());
    assert_eq!(cause.as_deref(), Some("silence"));
    h.sandbox.resume();
    h.probe.wait_for_state(ConnectionState::Connected, 2).await;
}
