//! The PollPacer actor: one queue in front of the token endpoint for every session's
//! device poll and code exchange, so thousands of sessions in flight stay under the app's
//! budget (`refresh.budget_per_sec`, default 40/s; the platform allows about 50/s).
//! `LarkAuth::start` creates one and hands it to the RouterActor's sessions and to the
//! RefreshScheduler, so polls and refreshes together stay under that one budget (the
//! scheduler asks for a slot first and picks the nearest due refresh when it gets one).
//!
//! Accepts: [`AcquirePollSlot`] (replies when the caller may send one request),
//! [`GetPacerStatus`]. Sends nothing.
//!
//! Built on [`crate::refresh::Pacer`] (token bucket of capacity one with jitter): waiting
//! callers are served first come, first served; one timer is armed for the next free slot.
//! The session's own cadence (slow before the click, the server's `interval` after) is
//! decided by the state machine; the pacer only spaces the requests.

use std::collections::VecDeque;
use std::time::Duration;

use actix::prelude::*;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

use crate::refresh::Pacer;
use crate::vault::unix_now_ms;

/// Asks for one token-endpoint slot. The reply comes when the request may be sent; if the
/// pacer stops first the reply is an actix `MailboxError`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct AcquirePollSlot;

/// Asks for a [`PacerStatus`] snapshot.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "PacerStatus")]
pub struct GetPacerStatus;

/// What the pacer is doing (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct PacerStatus {
    /// Callers waiting for a slot now.
    pub queued: usize,
    /// Slots granted since start.
    pub granted: u64,
    /// The budget, requests per second.
    pub budget_per_sec: u32,
}

/// The pacer actor; see the module docs.
pub struct PollPacer {
    pacer: Pacer,
    budget_per_sec: u32,
    waiting: VecDeque<oneshot::Sender<()>>,
    timer_armed: bool,
    granted: u64,
    queue_gauge: Option<Gauge>,
}

impl PollPacer {
    /// A pacer allowing `budget_per_sec` token-endpoint requests per second (at least 1),
    /// with up to 10 % jitter per slot.
    pub fn new(budget_per_sec: u32) -> PollPacer {
        PollPacer::with_jitter(budget_per_sec, 0.1)
    }

    /// As [`PollPacer::new`] with up to `jitter_fraction` (0.0–1.0) of the slot interval
    /// as jitter per slot.
    pub fn with_jitter(budget_per_sec: u32, jitter_fraction: f64) -> PollPacer {
        PollPacer {
            pacer: Pacer::new(budget_per_sec, jitter_fraction, rand::random()),
            budget_per_sec: budget_per_sec.max(1),
            waiting: VecDeque::new(),
            timer_armed: false,
            granted: 0,
            queue_gauge: None,
        }
    }

    /// Keeps `gauge` set to the number of callers waiting for a slot (the
    /// `lark_auth_token_endpoint_queue` metric).
    pub fn with_queue_gauge(mut self, gauge: Gauge) -> PollPacer {
        self.queue_gauge = Some(gauge);
        self
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        self.grant_free_slots(ctx);
        if let Some(gauge) = &self.queue_gauge {
            gauge.set(self.waiting.len() as i64);
        }
    }

    fn grant_free_slots(&mut self, ctx: &mut Context<Self>) {
        while let Some(front) = self.waiting.front() {
            if front.is_closed() {
                self.waiting.pop_front();
                continue;
            }
            let now = unix_now_ms();
            match self.pacer.try_acquire(now) {
                Ok(()) => {
                    if let Some(tx) = self.waiting.pop_front() {
                        self.granted += 1;
                        let _ = tx.send(());
                    }
                }
                Err(at) => {
                    if !self.timer_armed {
                        self.timer_armed = true;
                        ctx.run_later(Duration::from_millis(at.saturating_sub(now)), |act, ctx| {
                            act.timer_armed = false;
                            act.drain(ctx);
                        });
                    }
                    return;
                }
            }
        }
    }
}

impl Actor for PollPacer {
    type Context = Context<Self>;
}

impl Handler<AcquirePollSlot> for PollPacer {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: AcquirePollSlot, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.waiting.push_back(tx);
        self.drain(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<GetPacerStatus> for PollPacer {
    type Result = PacerStatus;

    fn handle(&mut self, _: GetPacerStatus, _: &mut Context<Self>) -> PacerStatus {
        PacerStatus {
            queued: self.waiting.len(),
            granted: self.granted,
            budget_per_sec: self.budget_per_sec,
        }
    }
}
