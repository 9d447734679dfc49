//! The TokenEndpointPacer actor: one queue in front of the user token endpoint
//! (`/open-apis/authen/v2/oauth/token`) for every request lark-auth sends there — device
//! polls and code exchanges of the sessions, scheduled refreshes, and refreshes that a
//! `get_token` caller waits for — so they stay together under the app's budget
//! (`refresh.budget_per_sec`, default 40/s; the platform allows about 50/s per app,
//! `lark-openapi-auth.md`). `LarkAuth::start` creates one and hands it to the
//! RouterActor's sessions, the RefreshScheduler and the TokenSource.
//!
//! Accepts: [`AcquireSlot`] (replies when the caller may send one request), [`SetInstances`],
//! [`GetPacerStatus`]. Sends nothing.
//!
//! Built on the pure [`Pacer`] (token bucket of capacity one with jitter; one timer
//! armed for the next free slot). Two queues: [`SlotPriority::Waiting`] requests (someone
//! is waiting for the answer: a `get_token` caller, a user back from the authorization
//! page) are served before [`SlotPriority::Background`] ones (device polls, scheduled
//! refreshes), each first come, first served; so a thousand sessions polling never put a
//! caller's refresh behind their queue. The session's own cadence (slow before the click,
//! the server's `interval` after) is decided by its state machine; the pacer only spaces
//! the requests.

pub mod pacer;
pub mod share;

use std::collections::VecDeque;
use std::time::Duration;

use actix::prelude::*;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

use crate::clock::Clock;

pub use self::pacer::Pacer;

/// Which queue a request waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotPriority {
    /// Someone waits for the answer (a `get_token` caller's refresh, a code exchange):
    /// served before every background request.
    Waiting,
    /// Nobody waits right now (device polls, scheduled refreshes).
    Background,
}

/// Asks for one token-endpoint slot. The reply comes when the request may be sent; if the
/// pacer stops first the reply is an actix `MailboxError`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct AcquireSlot {
    /// The queue to wait in.
    pub priority: SlotPriority,
}

/// Sets how many instances share the budget (several lark-auth processes on one
/// PostgreSQL store, counted by [`BudgetShare`](share::BudgetShare)): from the next slot on
/// this pacer allows `budget_per_sec / instances` (at least 1) requests per second, so
/// the sum stays under the app's budget. `instances` 0 counts as 1.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct SetInstances(pub u32);

/// Asks for a [`PacerStatus`] snapshot.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "PacerStatus")]
pub struct GetPacerStatus;

/// What the pacer is doing (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct PacerStatus {
    /// Callers waiting for a slot now (both queues).
    pub queued: usize,
    /// Slots granted since start.
    pub granted: u64,
    /// The configured budget, requests per second (for all instances together).
    pub budget_per_sec: u32,
    /// This instance's share of it, requests per second (the budget over the instances
    /// sharing the store; the budget itself for one).
    pub share_per_sec: u32,
}

/// The pacer actor; see the module docs.
pub struct TokenEndpointPacer {
    pacer: Pacer,
    budget_per_sec: u32,
    /// Instances sharing the budget (1 unless told by [`SetInstances`]).
    instances: u32,
    share_gauge: Option<Gauge>,
    /// [`SlotPriority::Waiting`] requests, oldest first.
    urgent: VecDeque<oneshot::Sender<()>>,
    /// [`SlotPriority::Background`] requests, oldest first.
    background: VecDeque<oneshot::Sender<()>>,
    timer_armed: bool,
    granted: u64,
    queue_gauge: Option<Gauge>,
    clock: Clock,
}

impl TokenEndpointPacer {
    /// A pacer allowing `budget_per_sec` token-endpoint requests per second (at least 1),
    /// with up to 10 % jitter per slot.
    pub fn new(budget_per_sec: u32) -> TokenEndpointPacer {
        TokenEndpointPacer::with_jitter(budget_per_sec, 0.1)
    }

    /// As [`TokenEndpointPacer::new`] with up to `jitter_fraction` (0.0–1.0) of the slot interval
    /// as jitter per slot.
    pub fn with_jitter(budget_per_sec: u32, jitter_fraction: f64) -> TokenEndpointPacer {
        TokenEndpointPacer {
            pacer: Pacer::new(budget_per_sec, jitter_fraction, rand::random()),
            budget_per_sec: budget_per_sec.max(1),
            instances: 1,
            share_gauge: None,
            urgent: VecDeque::new(),
            background: VecDeque::new(),
            timer_armed: false,
            granted: 0,
            queue_gauge: None,
            clock: Clock::system(),
        }
    }

    /// Keeps `gauge` set to the number of callers waiting for a slot (the
    /// `lark_auth_token_endpoint_queue` metric).
    pub fn with_queue_gauge(mut self, gauge: Gauge) -> TokenEndpointPacer {
        self.queue_gauge = Some(gauge);
        self
    }

    /// Keeps `gauge` set to this instance's share of the budget, requests per second (the
    /// `lark_auth_token_endpoint_share_per_second` metric).
    pub fn with_share_gauge(mut self, gauge: Gauge) -> TokenEndpointPacer {
        gauge.set(i64::from(self.share()));
        self.share_gauge = Some(gauge);
        self
    }

    /// This instance's share of the budget, requests per second.
    fn share(&self) -> u32 {
        (self.budget_per_sec / self.instances.max(1)).max(1)
    }

    /// Reads the time (unix ms) from `clock` instead of the system clock, for tests that
    /// move time themselves (the timer for the next slot still runs on the runtime's
    /// clock).
    pub fn with_clock(mut self, clock: impl Into<Clock>) -> TokenEndpointPacer {
        self.clock = clock.into();
        self
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        self.grant_free_slots(ctx);
        if let Some(gauge) = &self.queue_gauge {
            gauge.set(self.queued() as i64);
        }
    }

    fn queued(&self) -> usize {
        self.urgent.len() + self.background.len()
    }

    /// The queue to serve next: the oldest live urgent request, else the oldest live
    /// background one (callers that gave up are dropped on the way).
    fn next_queue(&mut self) -> Option<&mut VecDeque<oneshot::Sender<()>>> {
        for queue in [&mut self.urgent, &mut self.background] {
            while queue.front().is_some_and(|tx| tx.is_closed()) {
                queue.pop_front();
            }
        }
        if !self.urgent.is_empty() {
            Some(&mut self.urgent)
        } else if !self.background.is_empty() {
            Some(&mut self.background)
        } else {
            None
        }
    }

    fn grant_free_slots(&mut self, ctx: &mut Context<Self>) {
        while self.next_queue().is_some() {
            let now = self.clock.now_ms();
            match self.pacer.try_acquire(now) {
                Ok(()) => {
                    if let Some(tx) = self.next_queue().and_then(VecDeque::pop_front) {
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

impl Actor for TokenEndpointPacer {
    type Context = Context<Self>;
}

impl Handler<AcquireSlot> for TokenEndpointPacer {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: AcquireSlot, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        match msg.priority {
            SlotPriority::Waiting => self.urgent.push_back(tx),
            SlotPriority::Background => self.background.push_back(tx),
        }
        self.drain(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<GetPacerStatus> for TokenEndpointPacer {
    type Result = PacerStatus;

    fn handle(&mut self, _: GetPacerStatus, _: &mut Context<Self>) -> PacerStatus {
        PacerStatus {
            queued: self.queued(),
            granted: self.granted,
            budget_per_sec: self.budget_per_sec,
            share_per_sec: self.share(),
        }
    }
}

impl Handler<SetInstances> for TokenEndpointPacer {
    type Result = ();

    fn handle(&mut self, msg: SetInstances, _: &mut Context<Self>) {
        let instances = msg.0.max(1);
        if instances == self.instances {
            return;
        }
        self.instances = instances;
        let share = self.share();
        self.pacer.set_budget(share);
        if let Some(gauge) = &self.share_gauge {
            gauge.set(i64::from(share));
        }
        tracing::info!(
            instances,
            share_per_sec = share,
            budget_per_sec = self.budget_per_sec,
            "token-endpoint budget shared by the instances on the store"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;

    #[actix_rt::test]
    async fn waiting_requests_are_served_before_queued_background_ones() {
        let pacer = TokenEndpointPacer::with_jitter(20, 0.0).start();
        let order = Rc::new(RefCell::new(Vec::new()));
        let ask = |name: &'static str, priority: SlotPriority| {
            let slot = pacer.send(AcquireSlot { priority });
            let order = order.clone();
            actix_rt::spawn(async move {
                slot.await.unwrap();
                order.borrow_mut().push(name);
            })
        };
        // The mailbox takes them in this order; the first gets the free slot at once.
        let tasks = [
            ask("background 1", SlotPriority::Background),
            ask("background 2", SlotPriority::Background),
            ask("background 3", SlotPriority::Background),
            ask("waiting", SlotPriority::Waiting),
        ];
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            *order.borrow(),
            ["background 1", "waiting", "background 2", "background 3"]
        );
        let status = pacer.send(GetPacerStatus).await.unwrap();
        assert_eq!((status.queued, status.granted), (0, 4));
    }
}
