//! A stand-in consumer for the ConnectionActor's output until the RouterActor exists: it
//! logs every event, callback and state change as structured lines, and answers card
//! callbacks with a neutral "Received" toast.
//!
//! Accepts: [`EventReceived`], [`CardActionReceived`], [`ConnectionStateChanged`].

use actix::prelude::*;
use tracing::info;

use crate::connection::{
    CallbackFailed, CardActionReceived, ConnectionOutputs, ConnectionStateChanged, EventReceived,
};
use crate::protocol::event::{CardActionResponse, Toast};

/// Logs what the connection delivers.
#[derive(Debug, Default)]
pub struct EventLogActor;

impl EventLogActor {
    /// Starts the actor and returns the recipients bundle to give the ConnectionActor.
    pub fn start_outputs() -> (Addr<EventLogActor>, ConnectionOutputs) {
        let addr = EventLogActor.start();
        let outputs = ConnectionOutputs {
            events: addr.clone().recipient(),
            card_actions: addr.clone().recipient(),
            states: addr.clone().recipient(),
        };
        (addr, outputs)
    }
}

impl Actor for EventLogActor {
    type Context = Context<Self>;
}

impl Handler<EventReceived> for EventLogActor {
    type Result = ();

    fn handle(&mut self, event: EventReceived, _: &mut Context<Self>) {
        info!(
            event_id = %event.event_id,
            event_type = %event.event_type,
            message_id = %event.message_id,
            trace_id = %event.trace_id,
            conn_id = %event.conn_id,
            bytes = event.payload.len(),
            "event received"
        );
    }
}

impl Handler<CardActionReceived> for EventLogActor {
    type Result = Result<CardActionResponse, CallbackFailed>;

    fn handle(&mut self, action: CardActionReceived, _: &mut Context<Self>) -> Self::Result {
        info!(
            event_id = %action.event_id,
            message_id = %action.message_id,
            trace_id = %action.trace_id,
            conn_id = %action.conn_id,
            open_id = %action.trigger.operator.open_id,
            "card action received"
        );
        Ok(CardActionResponse {
            toast: Some(Toast::info("Received")),
            card: None,
        })
    }
}

impl Handler<ConnectionStateChanged> for EventLogActor {
    type Result = ();

    fn handle(&mut self, _: ConnectionStateChanged, _: &mut Context<Self>) {
        // The ConnectionActor already logs each change with its cause.
    }
}
