//! The StateWatch actor: the connection's state as a `watch` channel, for waiters
//! (`/healthz`, `serve`'s exit on a fatal failure, `Handle::shutdown`).
//!
//! Accepts: [`ConnectionStateChanged`] (from the ConnectionActor). Sends: the same
//! message on to a second recipient, if one was given (the RouterActor, or the event log).

use actix::prelude::*;
use tokio::sync::watch;

use super::{ConnectionState, ConnectionStateChanged};

/// The latest connection state and its cause, for waiters.
#[derive(Debug, Clone)]
pub struct StateReport {
    /// The state.
    pub state: ConnectionState,
    /// Why it changed, if known.
    pub cause: Option<String>,
}

/// Forwards [`ConnectionStateChanged`] into a `watch` channel and to a second recipient.
pub struct StateWatch {
    sender: watch::Sender<StateReport>,
    forward: Option<Recipient<ConnectionStateChanged>>,
}

impl StateWatch {
    /// Starts a watch (state `connecting` until the first change) that forwards every
    /// change to `forward`, if given; returns its address (give its recipient to the
    /// ConnectionActor as `ConnectionOutputs::states`) and the receiving end.
    pub fn start(
        forward: Option<Recipient<ConnectionStateChanged>>,
    ) -> (Addr<StateWatch>, watch::Receiver<StateReport>) {
        let (sender, states) = watch::channel(StateReport {
            state: ConnectionState::Connecting,
            cause: None,
        });
        let addr = Actor::start(StateWatch { sender, forward });
        (addr, states)
    }
}

impl Actor for StateWatch {
    type Context = Context<Self>;
}

impl Handler<ConnectionStateChanged> for StateWatch {
    type Result = ();

    fn handle(&mut self, msg: ConnectionStateChanged, _: &mut Context<Self>) {
        self.sender.send_replace(StateReport {
            state: msg.state,
            cause: msg.cause.clone(),
        });
        if let Some(forward) = &self.forward {
            forward.do_send(msg);
        }
    }
}
