//! The EventDispatcher: long-connection events other than card callbacks, deduplicated by
//! `event_id` and fanned out to the subscribers of their `event_type`.
//!
//! Accepts: [`Subscribe`], [`EventReceived`] (from the RouterActor, which receives the
//! ConnectionActor's output and forwards every non-auth event here).
//! Sends: [`EventReceived`] to the subscribers of its type; [`SetMarkOnce`] to the mark
//! store (the session store actor in the service).
//!
//! Layer: this module sits below `session` (it names no session type); the mark store is
//! reached through [`SetMarkOnce`], which the session store actor handles.
//!
//! - Each event sets a dedup mark `event/<event_id>` ([`event_mark`], shared with the
//!   router's click marks) living [`EventDispatcher::new`]'s `dedup_ttl` (≥ 7 h in the
//!   service: the platform redelivers an unacked event after 15 s, 5 min, 1 h and 6 h).
//!   An event whose mark was already set is a redelivery and is dropped; when the mark
//!   cannot be set (store failing), the event is forwarded anyway (maybe twice), never
//!   lost.
//! - Events nobody subscribed to are logged at debug and dropped (the connection acked
//!   them already). Subscribers that stopped are forgotten at their type's next event.
//!
//! The time of a mark comes from the injected [`Clock`]. The event gateway (forwarding to
//! `[[events.forward]]` HTTP targets) is [`gateway`], with the push form in [`push`]; it
//! takes events from the connection before their ack, apart from this dispatcher, and
//! the card callbacks of cards lark-auth did not send from the router ([`callbacks`]).

pub mod callbacks;
pub mod delivery;
pub mod gateway;
pub mod push;

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, warn};

use crate::clock::Clock;
use crate::connection::EventReceived;

/// Registers `recipient` for every event of `event_type` (e.g. `im.message.receive_v1`)
/// received over the long connection (after dedup). Replies once registered: events
/// forwarded after the reply reach it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// `header.event_type`.
    pub event_type: String,
    /// Receives each event.
    pub recipient: Recipient<EventReceived>,
}

/// Sets the dedup mark `mark` unless it is set (`Store::mark_once`). Replies `Ok(true)` on
/// the first sighting, `Ok(false)` when the mark was set already.
///
/// # Errors
/// [`MarkFailed`] when the store could not be read or written.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<bool, MarkFailed>")]
pub struct SetMarkOnce {
    /// The mark's key ([`event_mark`]).
    pub mark: Vec<u8>,
    /// Expiry, unix ms.
    pub expires_at_ms: u64,
    /// Now, unix ms.
    pub now_ms: u64,
}

/// The mark store could not set a mark; the text says why (no secret in it: marks hold
/// event ids only).
#[derive(Debug, Clone, thiserror::Error)]
#[error("dedup mark not set: {0}")]
pub struct MarkFailed(pub String);

/// The store key of the dedup mark of `event_id`: `event/<event_id>` (events and card
/// clicks share the namespace; an `event_id` is unique across both).
pub fn event_mark(event_id: &str) -> Vec<u8> {
    let mut mark = b"event/".to_vec();
    mark.extend_from_slice(event_id.as_bytes());
    mark
}

/// The dispatcher; see the module docs.
pub struct EventDispatcher {
    marks: Recipient<SetMarkOnce>,
    dedup_ttl: Duration,
    clock: Clock,
    subscribers: HashMap<String, Vec<Recipient<EventReceived>>>,
}

impl EventDispatcher {
    /// A dispatcher that sets its dedup marks through `marks` (replying whether the mark
    /// was new), each living `dedup_ttl` from the `clock`'s now.
    pub fn new(
        marks: Recipient<SetMarkOnce>,
        dedup_ttl: Duration,
        clock: Clock,
    ) -> EventDispatcher {
        EventDispatcher {
            marks,
            dedup_ttl,
            clock,
            subscribers: HashMap::new(),
        }
    }
}

impl Actor for EventDispatcher {
    type Context = Context<Self>;
}

impl Handler<Subscribe> for EventDispatcher {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        self.subscribers
            .entry(msg.event_type)
            .or_default()
            .push(msg.recipient);
    }
}

impl Handler<EventReceived> for EventDispatcher {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: EventReceived, _: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now_ms();
        let mark = self.marks.send(SetMarkOnce {
            mark: event_mark(&msg.event_id),
            expires_at_ms: now + self.dedup_ttl.as_millis() as u64,
            now_ms: now,
        });
        Box::pin(mark.into_actor(self).map(move |res, act, _| {
            match res {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    debug!(event_id = %msg.event_id, "redelivered event dropped");
                    return;
                }
                // A failing store must not drop events: forward (maybe twice).
                _ => warn!(event_id = %msg.event_id, "dedup mark not set"),
            }
            match act.subscribers.get_mut(msg.event_type.as_str()) {
                Some(list) => {
                    list.retain(|r| r.connected());
                    for r in list.iter() {
                        r.do_send(msg.clone());
                    }
                }
                None => debug!(event_id = %msg.event_id, event_type = %msg.event_type, "event without subscriber"),
            }
        }))
    }
}
