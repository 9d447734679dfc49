//! Card callbacks of cards lark-auth did not send: a `card.action.trigger` whose
//! `action.value` names no lark-auth session is POSTed at once to every
//! `[[events.forward]]` target that takes `card.action.trigger`, in the platform's HTTP
//! push form ([`super::push`]), and the answer of the first such target (in configuration
//! order) goes back to the platform in the callback's ack.
//!
//! Accepted by the [`EventGateway`](super::gateway::EventGateway) as [`ForwardCallback`]
//! (sent by the RouterActor for foreign clicks).
//!
//! - **Inside the 3 s deadline.** Each POST is bounded by the target's `timeout_secs` and
//!   by the callback budget (`connection.callback_budget_secs`, less
//!   [`ANSWER_MARGIN`] for the ack to go out): a slower target's answer is dropped, the
//!   click is acked with an empty answer (`{}`: the card stays as it is), logged at
//!   `warn` and counted as `late`.
//! - **The answer.** A 2xx whose body is the platform's callback answer
//!   (`{"toast": …, "card": …}`, or empty for none) is returned as it is parsed into
//!   [`CardActionResponse`]. Anything else (non-2xx, unreachable, a body that is not a
//!   callback answer) is `failed`: logged, counted, the click acked with an empty answer.
//! - **Not retried, not stored.** The platform does not retry a callback's ack and the
//!   user waits for it: a callback is not put in the outbox. A redelivered copy (same
//!   `event_id`) is answered by the router from the first's answer, never POSTed again.
//!
//! Counted in `lark_auth_forward_callbacks_total{target,outcome}` (`answered`, `failed`,
//! `late`).

use std::time::{Duration, Instant};

use actix::Message;
use bytes::Bytes;
use futures_util::future::join_all;
use tracing::{debug, warn};

use super::delivery::{self, Answer, PostError};
use super::push;
use crate::metrics::Metrics;
use crate::protocol::event::CardActionResponse;

/// Time kept from the callback budget for the ack to reach the platform.
pub const ANSWER_MARGIN: Duration = Duration::from_millis(150);

/// Largest callback answer read from a target, bytes (the platform's own limit for a card
/// is 30 KiB; a toast is much smaller).
pub const MAX_CALLBACK_ANSWER_BYTES: usize = 256 * 1024;

/// Asks the event gateway to forward a `card.action.trigger` of a card lark-auth did not
/// send. Reply: the answer of the first target that takes callbacks (configuration
/// order), `Some(CardActionResponse::default())` when it gave none in time or failed, and
/// `None` when no target takes `card.action.trigger` (nothing was sent).
#[derive(Clone, Message)]
#[rtype(result = "Option<CardActionResponse>")]
pub struct ForwardCallback {
    /// `header.event_id` (for logs).
    pub event_id: String,
    /// The whole JSON envelope as received (schema 2.0).
    pub payload: Bytes,
}

impl std::fmt::Debug for ForwardCallback {
    /// The payload's length only (the envelope holds the card's update `token`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardCallback")
            .field("event_id", &self.event_id)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// One POST of a callback: where, what, for how long.
pub(super) struct CallbackPost {
    /// The target's URL (its name in logs and metrics).
    pub url: String,
    /// The body and headers in the push form (plain or encrypted and signed).
    pub request: push::PushRequest,
    /// Bound of the POST: the target's timeout within the callback budget.
    pub timeout: Duration,
}

/// How one target's POST ended.
enum Outcome {
    Answered(CardActionResponse),
    Failed(String),
    Late,
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Answered(_) => "answered",
            Outcome::Failed(_) => "failed",
            Outcome::Late => "late",
        }
    }
}

/// POSTs `posts` concurrently and returns the first one's answer (an empty answer when it
/// failed or was late). Every target's outcome is counted and the bad ones logged.
pub(super) async fn forward(
    client: awc::Client,
    posts: Vec<CallbackPost>,
    event_id: String,
    metrics: Option<Metrics>,
) -> CardActionResponse {
    let started = Instant::now();
    let outcomes = join_all(posts.iter().map(|p| post(&client, p))).await;
    let mut first = None;
    for (p, outcome) in posts.iter().zip(outcomes) {
        if let Some(m) = &metrics {
            m.forward_callback(&p.url, outcome.label());
        }
        match &outcome {
            Outcome::Answered(_) => debug!(
                target_url = %p.url,
                event_id = %event_id,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "card callback forwarded and answered"
            ),
            Outcome::Failed(cause) => warn!(
                target_url = %p.url,
                event_id = %event_id,
                cause = %cause,
                "card callback target failed; the click is acked with an empty answer"
            ),
            Outcome::Late => warn!(
                target_url = %p.url,
                event_id = %event_id,
                timeout_ms = p.timeout.as_millis() as u64,
                "card callback target too slow for the callback deadline; the click is acked with an empty answer"
            ),
        }
        if first.is_none() {
            first = Some(match outcome {
                Outcome::Answered(answer) => answer,
                _ => CardActionResponse::default(),
            });
        }
    }
    first.unwrap_or_default()
}

async fn post(client: &awc::Client, p: &CallbackPost) -> Outcome {
    match delivery::post(
        client,
        &p.url,
        &p.request,
        p.timeout,
        MAX_CALLBACK_ANSWER_BYTES,
    )
    .await
    {
        Err(PostError::Timeout(_)) => Outcome::Late,
        Err(PostError::Failed(e)) => Outcome::Failed(e),
        Ok(answer) if !(200..300).contains(&answer.status) => {
            Outcome::Failed(format!("status {}", answer.status))
        }
        Ok(Answer {
            body: Err(e),
            status,
        }) => Outcome::Failed(format!("status {status}, answer not read: {e}")),
        Ok(Answer { body: Ok(body), .. }) => {
            parse_answer(&body).map_or_else(Outcome::Failed, Outcome::Answered)
        }
    }
}

/// A target's 2xx body as a callback answer: empty or blank → no toast, no card.
fn parse_answer(body: &[u8]) -> Result<CardActionResponse, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CardActionResponse::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not a callback answer ({{\"toast\", \"card\"}}): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::event::{Toast, ToastKind};

    #[test]
    fn debug_never_shows_the_envelope() {
        let msg = ForwardCallback {
            event_id: "ev_1".into(),
            payload: Bytes::from_static(br#"{"event":{"token":"c-SECRET-card-token"}}"#),
        };
        let shown = format!("{msg:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("ev_1"), "{shown}");
    }

    #[test]
    fn answers_parse_as_the_platform_reads_them() {
        assert_eq!(parse_answer(b"").unwrap(), CardActionResponse::default());
        assert_eq!(parse_answer(b" \n").unwrap(), CardActionResponse::default());
        assert_eq!(parse_answer(b"{}").unwrap(), CardActionResponse::default());
        let toast = parse_answer(br#"{"toast":{"type":"success","content":"Done"}}"#).unwrap();
        assert_eq!(
            toast.toast,
            Some(Toast::new(ToastKind::Success, "Done")),
            "{toast:?}"
        );
        let card = parse_answer(
            br#"{"card":{"type":"raw","data":{"schema":"2.0","body":{"elements":[]}}}}"#,
        )
        .unwrap();
        assert_eq!(card.card.unwrap().data["schema"], "2.0");
        assert!(parse_answer(b"ok").is_err());
        assert!(parse_answer(br#"{"toast":"text"}"#).is_err());
    }
}
