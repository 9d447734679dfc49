//! `lark-auth demo`: the product working end to end without credentials or network.
//!
//! Starts the sandbox (the fake Lark platform) on loopback, then the real service stack
//! against it, and narrates what happens: connection, a card callback answered within the
//! deadline, a chunked event reassembled and acked, a redelivery acked but not forwarded
//! twice, a server-side disconnect and the reconnect, and a graceful stop.

use std::io::Write;
use std::time::Duration;

use crate::config::Config;
use crate::connection::{ConnectionState, GetConnectionStatus};
use crate::protocol::endpoint::ClientConfig;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::service::{ServeError, Service};

/// Longest wait for any one step of the demo.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the demo failed. Each names the step that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The sandbox could not bind a loopback port.
    #[error("cannot start the sandbox: {0}")]
    Sandbox(#[source] std::io::Error),
    /// The service stack could not start.
    #[error(transparent)]
    Service(#[from] ServeError),
    /// A step did not complete in time.
    #[error("step `{0}` did not complete within 15 s")]
    Timeout(&'static str),
    /// A step completed with an unexpected result.
    #[error("step `{step}` went wrong: {detail}")]
    Unexpected {
        /// The step.
        step: &'static str,
        /// What was seen.
        detail: String,
    },
    /// Writing the narration failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

async fn step<T, E: std::fmt::Debug>(
    name: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, DemoError> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(DemoError::Unexpected {
            step: name,
            detail: format!("{e:?}"),
        }),
        Err(_) => Err(DemoError::Timeout(name)),
    }
}

/// Runs the demo inside the current actix System, narrating to `out`.
///
/// # Errors
/// [`DemoError`] naming the step that failed.
pub async fn run(out: &mut impl Write) -> Result<(), DemoError> {
    let sandbox = Sandbox::start(SandboxConfig {
        client_config: ClientConfig {
            reconnect_count: Some(-1),
            reconnect_interval: Some(2),
            reconnect_nonce: Some(1),
            ping_interval: Some(5),
        },
        ..SandboxConfig::default()
    })
    .await
    .map_err(DemoError::Sandbox)?;
    writeln!(
        out,
        "sandbox: fake Lark platform listening on {}",
        sandbox.base_url()
    )?;

    let mut config = Config::for_tests(&sandbox.base_url());
    config.connection.callback_budget = Duration::from_secs(2);
    config.connection.liveness_margin = Duration::from_secs(5);
    let mut service = Service::start(&config)?;
    let mut states = service.states.clone();
    step(
        "connect",
        states.wait_for(|r| r.state == ConnectionState::Connected),
    )
    .await?;
    let status = step("status", service.connection.send(GetConnectionStatus)).await?;
    writeln!(
        out,
        "connection: discovered the endpoint, WebSocket up, conn_id {}, ping every {} s",
        status.conn_id.as_deref().unwrap_or("?"),
        status.tuning.ping_interval.as_secs()
    )?;
    step("first ping", sandbox.wait_for_pings(1, STEP_TIMEOUT)).await?;
    writeln!(
        out,
        "ping: sent at once after connecting, answered with a pong"
    )?;

    let click = serde_json::json!({
        "schema": "2.0",
        "header": {"event_id": "demo_event_click", "event_type": "card.action.trigger",
                   "create_time": "1767225600000000", "token": "demo-verification-token",
                   "app_id": "cli_sandbox_app", "tenant_key": "demo_tenant"},
        "event": {"operator": {"tenant_key": "demo_tenant", "open_id": "ou_demo_user"},
                  "token": "c-demo-card-update-token",
                  "action": {"tag": "button", "value": {"action": "authorize", "session_id": "demo"}},
                  "host": "im_message",
                  "context": {"open_message_id": "om_demo", "open_chat_id": "oc_demo"}}
    });
    let click_id = sandbox
        .push_event(click.to_string().as_bytes())
        .map_err(|e| DemoError::Unexpected {
            step: "push card click",
            detail: e.to_string(),
        })?;
    let acks = step("card click acked", sandbox.wait_for_acks(1, STEP_TIMEOUT)).await?;
    let ack = &acks[0];
    writeln!(
        out,
        "callback: card.action.trigger from ou_demo_user acked code {} (biz_rt {} ms, message {click_id}), answer {}",
        ack.code().unwrap_or(0),
        ack.biz_rt.as_deref().unwrap_or("?"),
        ack.data()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .unwrap_or_else(|| "none".into())
    )?;

    let event = serde_json::json!({
        "schema": "2.0",
        "header": {"event_id": "demo_event_message", "event_type": "im.message.receive_v1",
                   "create_time": "1767225600000", "token": "demo-verification-token",
                   "app_id": "cli_sandbox_app", "tenant_key": "demo_tenant"},
        "event": {"message": {"message_id": "om_demo_2", "message_type": "text",
                              "content": "{\"text\":\"授权一下 please\"}"}}
    });
    let chunked_id = sandbox
        .push_chunked(event.to_string().as_bytes(), 3, &[2, 0, 1])
        .map_err(|e| DemoError::Unexpected {
            step: "push chunked event",
            detail: e.to_string(),
        })?;
    let acks = step(
        "chunked event acked",
        sandbox.wait_for_acks(2, STEP_TIMEOUT),
    )
    .await?;
    writeln!(
        out,
        "event: im.message.receive_v1 in 3 parts (sent 2,0,1) reassembled and acked code {} (message {chunked_id})",
        acks[1].code().unwrap_or(0)
    )?;

    sandbox
        .push_duplicate(&chunked_id)
        .map_err(|e| DemoError::Unexpected {
            step: "redeliver",
            detail: e.to_string(),
        })?;
    step("redelivery acked", sandbox.wait_for_acks(3, STEP_TIMEOUT)).await?;
    let status = step("status", service.connection.send(GetConnectionStatus)).await?;
    writeln!(
        out,
        "redelivery: the same message again was acked and not forwarded ({} duplicate)",
        status.duplicates
    )?;
    let unfaithful: usize = sandbox.acks().iter().map(|a| a.fidelity_errors.len()).sum();
    if unfaithful > 0 {
        return Err(DemoError::Unexpected {
            step: "ack fidelity",
            detail: format!("{unfaithful} echo differences"),
        });
    }

    sandbox.close_all();
    writeln!(out, "outage: the platform closes the connection")?;
    step("reconnect", sandbox.wait_for_connections(2, STEP_TIMEOUT)).await?;
    step(
        "reconnected",
        states.wait_for(|r| r.state == ConnectionState::Connected),
    )
    .await?;
    writeln!(
        out,
        "reconnect: discovery repeated ({} calls so far), connected again",
        sandbox.discoveries().len()
    )?;

    service.shutdown(Duration::from_secs(3)).await;
    writeln!(out, "stop: connection closed gracefully")?;
    writeln!(
        out,
        "demo OK: {} acks, all exact echoes with biz_rt, none lost",
        sandbox.acks().len()
    )?;
    writeln!(
        out,
        "not yet in this build: authorization sessions, token vault, refresh, control API"
    )?;
    sandbox.stop().await;
    Ok(())
}
