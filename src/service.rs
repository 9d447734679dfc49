//! Assembly of the running service: the supervised ConnectionActor and its consumer, a
//! watch on the connection state, and the wait for a stop signal or a fatal failure.
//!
//! [`Service`] is the connection alone (used by the demo); [`run_until_signal`] runs the
//! whole service through [`crate::app::LarkAuth`].

use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;
use tracing::info;

use crate::config::Config;
use crate::connection::{
    ConnectionActor, ConnectionError, ConnectionOutputs, ConnectionState, Shutdown, StateReport,
    StateWatch,
};
use crate::event_log::EventLogActor;

/// Why the service could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration has no resolved credentials or is otherwise unusable.
    #[error("cannot start: {0}")]
    Start(#[from] ConnectionError),
    /// The long connection failed for good (the message names the platform's reason and
    /// what to check: credentials, app type, connection limit, network).
    #[error("long connection failed: {0}")]
    ConnectionFailed(String),
    /// The service could not start (store, vault key, HTTP address, …).
    #[error(transparent)]
    App(#[from] crate::app::StartError),
    /// Installing the signal handlers failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// A started service.
pub struct Service {
    /// The supervised connection actor.
    pub connection: Addr<ConnectionActor>,
    /// The connection state as it changes.
    pub states: watch::Receiver<StateReport>,
    _consumer: Addr<EventLogActor>,
}

impl Service {
    /// Starts the connection (and its logging consumer) on the current actix System.
    ///
    /// # Errors
    /// [`ServeError::Start`] when credentials are missing or TLS cannot be set up.
    pub fn start(config: &Config) -> Result<Service, ServeError> {
        let credentials = config
            .app
            .credentials
            .clone()
            .ok_or(ConnectionError::MissingCredentials)?;
        let (consumer, outputs) = EventLogActor::start_outputs();
        let (watcher, states) = StateWatch::start(Some(outputs.states.clone()));
        let outputs = ConnectionOutputs {
            states: watcher.recipient(),
            ..outputs
        };
        let actor = ConnectionActor::new(
            credentials,
            config.open_base_url(),
            config.connection.clone(),
            outputs,
        )?;
        Ok(Service {
            connection: actor.start_supervised(),
            states,
            _consumer: consumer,
        })
    }

    /// Closes the connection and waits (at most `grace`) for it to report `stopped`.
    pub async fn shutdown(&mut self, grace: Duration) {
        self.connection.do_send(Shutdown);
        let wait = self
            .states
            .wait_for(|r| matches!(r.state, ConnectionState::Stopped | ConnectionState::Failed));
        let _ = tokio::time::timeout(grace, wait).await;
        // Let the Close frame and queued acks leave the socket.
        actix_rt::time::sleep(Duration::from_millis(600)).await;
    }
}

/// Runs the whole service ([`crate::app::LarkAuth::start_with`]) until SIGINT/SIGTERM
/// (graceful stop, `Ok`) or a fatal connection failure (`Err`).
///
/// # Errors
/// [`ServeError`] as above; [`ServeError::App`] when the service cannot start.
pub async fn run_until_signal(
    config: Config,
    options: crate::app::StartOptions,
) -> Result<(), ServeError> {
    let handle = crate::app::LarkAuth::start_with(config, options)?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServeError::Signals)?;
    let mut states = handle.connection_states();
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => { info!(signal = "SIGINT", "stopping"); Ok(()) }
        _ = sigterm.recv() => { info!(signal = "SIGTERM", "stopping"); Ok(()) }
        report = states.wait_for(|r| r.state == ConnectionState::Failed) => {
            let cause = report
                .map(|r| r.cause.clone().unwrap_or_default())
                .unwrap_or_else(|_| "connection actor gone".into());
            Err(ServeError::ConnectionFailed(cause))
        }
    };
    handle.shutdown(Duration::from_secs(3)).await;
    info!("stopped");
    outcome
}
