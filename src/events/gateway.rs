//! The event gateway: events received over the long connection, other than lark-auth's
//! own card callbacks, go to every `[[events.forward]]` target that takes their type, in
//! the platform's HTTP push form ([`super::push`]), at least once.
//!
//! Accepts: [`HoldEvent`] (from the ConnectionActor, before it acks) on the [`HoldFront`];
//! [`GetForwardStatus`] on the gateway. Sends: HTTP POSTs to the targets; writes to the
//! [`Store`] through a writer thread of its own (`outbox-writer`).
//!
//! - **Before the ack.** A held event goes from the [`HoldFront`] (an actor on the
//!   connection's own thread) straight to the writer thread, which puts it in the outbox
//!   (one entry per target, with the dedup mark `forward/<event_id>` in the same step: a
//!   redelivery is not taken again) and makes it durable ([`Store::outbox_flush`]); only
//!   then does the reply let the connection ack 200. The gateway's thread, busy with the
//!   POSTs, is not on the ack path. Group commit: the writer takes every event waiting
//!   (up to 1,024) and writes and syncs them together, so the ack path pays one sync per
//!   group, not per event; new events then go to the gateway for delivery. A store
//!   failure answers [`HoldRefused::Store`] (ack 500: the platform keeps the event).
//! - **Bounded.** Deliveries not yet taken (pending, in flight, being written) are at most
//!   `events.outbox_capacity` (one counter shared by the front, the writer and the
//!   gateway); past it a new event is refused with [`HoldRefused::Full`] (ack 500,
//!   counted in `lark_auth_forward_outbox_full_total`, one warning per full spell), never
//!   accepted and dropped.
//! - **Delivery.** Per target at most `concurrency` POSTs in flight, oldest first. 2xx: the
//!   entry is removed (in batches; not flushed, so a crash may deliver it again: at least
//!   once). Anything else (status, timeout, connection refused): retried after
//!   `min(retry_max, retry_initial × 2^(tries−1))`, jittered down to half, until
//!   `retry_for` after it was enqueued; then it is kept in the store as dead, counted,
//!   and logged once (event id and type, never the body).
//! - **Restarts.** At start every entry of the store is read back: pending ones are
//!   delivered (with their try count), dead ones counted. Entries of targets no longer
//!   configured stay in the store untouched (logged at start).
//! - **Several instances on one store** (PostgreSQL, [`GatewaySettings::sharing`]). Each
//!   entry belongs to one instance under a lease (`store.lease_secs`): the entries an
//!   instance writes are its own, and at start it claims only the entries without a live
//!   owner ([`Store::outbox_claim`]) instead of reading back everything. Every
//!   [`lease_poll`] it renews the leases of its entries ([`Store::outbox_renew`]) and
//!   claims those whose owner's lease lapsed (the owner died), as many as its capacity
//!   leaves room for, so a dead instance's backlog is carried on by another within
//!   `lease_secs` plus one poll, and an entry is never delivered by two live instances.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::callbacks::{self, CallbackPost, ForwardCallback};
use super::delivery;
use super::push::{self, PushKey};
use crate::clock::Clock;
use crate::config::{Config, ForwardTarget};
use crate::connection::{HoldEvent, HoldRefused};
use crate::metrics::Metrics;
use crate::protocol::event::CardActionResponse;
use crate::store::{OutboxEntry, OutboxEvent, OutboxRetry, Store, StoreError};

/// How often due retries are moved to the ready queues and delivered entries removed.
const TICK: Duration = Duration::from_millis(20);
/// Entries read per page at start.
const LOAD_PAGE: usize = 1000;
/// Largest answer body read from a target (the rest is dropped).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How often an instance sharing the outbox renews its leases and claims orphaned
/// entries: a third of the lease (at least 100 ms), so two renewals may fail before the
/// lease ends.
pub fn lease_poll(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(100))
}

/// How an instance shares the outbox with the other instances on its store.
#[derive(Debug, Clone)]
pub struct OutboxSharing {
    /// This instance's name as entry owner: random per process start (16 hex digits).
    pub owner: String,
    /// How long an entry stays this instance's without renewal (`store.lease_secs`).
    pub lease: Duration,
}

impl OutboxSharing {
    /// Sharing under `lease` with a new random owner name.
    pub fn new(lease: Duration) -> OutboxSharing {
        OutboxSharing {
            owner: format!("{:016x}", rand::random::<u64>()),
            lease,
        }
    }

    fn until(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(self.lease.as_millis() as u64)
    }
}

/// The gateway's settings (from `[events]`).
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The targets, in configuration order.
    pub targets: Vec<ForwardTarget>,
    /// Most deliveries not yet taken.
    pub capacity: usize,
    /// How long a delivery is retried before it is dead.
    pub retry_for: Duration,
    /// First wait between tries.
    pub retry_initial: Duration,
    /// Longest wait between tries.
    pub retry_max: Duration,
    /// Lifetime of an event's dedup mark (`sessions.dedup_ttl_secs`, ≥ 7 h).
    pub dedup_ttl: Duration,
    /// How long a card callback may wait for its answer
    /// (`connection.callback_budget_secs`); a forwarded callback's POST gets this less
    /// [`callbacks::ANSWER_MARGIN`] at most.
    pub callback_budget: Duration,
    /// Set when other instances may share the store (`store.backend = "postgres"`):
    /// entries are claimed under leases instead of all read back at start.
    pub sharing: Option<OutboxSharing>,
}

impl GatewaySettings {
    /// The settings of `config` (`[events]`, and `sessions.dedup_ttl_secs` for the marks).
    pub fn from_config(config: &Config) -> GatewaySettings {
        let e = &config.events;
        GatewaySettings {
            targets: e.forward.clone(),
            capacity: e.outbox_capacity,
            retry_for: e.retry_for,
            retry_initial: e.retry_initial,
            retry_max: e.retry_max,
            dedup_ttl: config.sessions.dedup_ttl,
            callback_budget: config.connection.callback_budget,
            sharing: (config.store.backend == crate::config::StoreBackend::Postgres)
                .then(|| OutboxSharing::new(config.store.lease)),
        }
    }
}

/// Asks for the outbox's state per target.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<ForwardStatus>")]
pub struct GetForwardStatus;

/// One target's outbox state (`GET /v1/events/forward`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ForwardStatus {
    /// The target's URL.
    pub target: String,
    /// Deliveries not yet taken (waiting, retrying or in flight).
    pub pending: u64,
    /// Deliveries taken (2xx) since the start.
    pub delivered_total: u64,
    /// Failed tries (non-2xx, timeout, refused) since the start.
    pub failed_total: u64,
    /// Deliveries given up and kept as dead (in the store, across restarts).
    pub dead: u64,
    /// When the oldest pending delivery's event arrived, unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_at_ms: Option<u64>,
}

// ----- the writer thread ------------------------------------------------------------------

/// Most events written (and synced) as one group.
const MAX_GROUP: usize = 1024;

/// What the writer thread is asked to do.
enum Job {
    /// Put an event in the outbox (group-committed with the other holds waiting).
    Hold(Held),
    /// Remove delivered entries (not flushed).
    Remove(Vec<(String, String)>),
    /// Write a delivery's retry state (not flushed).
    Update {
        target: String,
        event_id: Arc<str>,
        retry: OutboxRetry,
    },
    /// Renew this instance's leases, then claim up to `limit` orphaned entries.
    RenewAndClaim {
        owner: String,
        lease_until_ms: u64,
        now_ms: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<OutboxEntry>, StoreError>>,
    },
}

/// The events of a group that were new (not redeliveries), for the gateway to deliver.
#[derive(Message)]
#[rtype(result = "()")]
struct Stored(Vec<(Vec<usize>, Delivery)>);

/// Owns the store's outbox writes on one thread of its own. Holds are group-committed:
/// the thread takes every job waiting, writes the held events in one `outbox_put` and one
/// `outbox_flush`, answers each hold (so the connection acks it) and hands the new events
/// to the gateway; then it carries out the other jobs.
struct OutboxWriter {
    store: Arc<dyn Store>,
    jobs: std::sync::mpsc::Receiver<Job>,
    gateway: Addr<EventGateway>,
    sharing: Option<OutboxSharing>,
    dedup_ttl: Duration,
    clock: Clock,
    /// Deliveries accepted and not yet taken (shared with the [`HoldFront`] and gateway).
    outstanding: Arc<AtomicUsize>,
}

impl OutboxWriter {
    fn run(self) {
        let mut holds = Vec::new();
        let mut others = Vec::new();
        while let Ok(first) = self.jobs.recv() {
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Hold(h) => holds.push(h),
                    other => others.push(other),
                }
                if holds.len() < MAX_GROUP {
                    next = self.jobs.try_recv().ok();
                }
            }
            if !holds.is_empty() {
                self.write_group(std::mem::take(&mut holds));
            }
            for job in others.drain(..) {
                self.other(job);
            }
        }
    }

    fn put(&self, held: &[Held]) -> Result<Vec<bool>, StoreError> {
        let now = self.clock.now_ms();
        let events: Vec<OutboxEvent> = held.iter().map(|h| h.event.clone()).collect();
        let mark_expires_ms = now + self.dedup_ttl.as_millis() as u64;
        let stored = match &self.sharing {
            Some(sharing) => self.store.outbox_put_owned(
                &events,
                &sharing.owner,
                sharing.until(now),
                mark_expires_ms,
                now,
            )?,
            None => self.store.outbox_put(&events, mark_expires_ms, now)?,
        };
        self.store.outbox_flush()?;
        Ok(stored)
    }

    fn write_group(&self, held: Vec<Held>) {
        match self.put(&held) {
            Ok(stored) => {
                let mut new = Vec::new();
                for (h, is_new) in held.into_iter().zip(stored) {
                    let _ = h.reply.send(Ok(()));
                    if !is_new {
                        debug!(event_id = %h.event.event_id, "redelivered event not forwarded again");
                        self.outstanding
                            .fetch_sub(h.targets.len(), Ordering::Relaxed);
                        continue;
                    }
                    let d = Delivery {
                        event_id: h.event.event_id.as_str().into(),
                        event_type: h.event.event_type.as_str().into(),
                        payload: h.payload,
                        enqueued_ms: h.enqueued_ms,
                        attempts: 0,
                    };
                    new.push((h.targets, d));
                }
                if !new.is_empty() {
                    self.gateway.do_send(Stored(new));
                }
            }
            Err(e) => {
                error!(error = %e, events = held.len(), "outbox write failed; events answered 500");
                for h in held {
                    self.outstanding
                        .fetch_sub(h.targets.len(), Ordering::Relaxed);
                    let _ = h.reply.send(Err(HoldRefused::Store(e.to_string())));
                }
            }
        }
    }

    fn other(&self, job: Job) {
        match job {
            Job::Hold(_) => {}
            Job::Remove(entries) => {
                if let Err(e) = self.store.outbox_remove(&entries) {
                    warn!(error = %e, count = entries.len(), "delivered outbox entries not removed; they may be delivered again after a restart");
                }
            }
            Job::Update {
                target,
                event_id,
                retry,
            } => {
                if let Err(e) = self.store.outbox_update(&target, &event_id, retry) {
                    warn!(event_id = %event_id, error = %e, "outbox retry state not written");
                }
            }
            Job::RenewAndClaim {
                owner,
                lease_until_ms,
                now_ms,
                limit,
                reply,
            } => {
                let result = self
                    .store
                    .outbox_renew(&owner, lease_until_ms)
                    .and_then(|_| {
                        if limit == 0 {
                            return Ok(Vec::new());
                        }
                        self.store
                            .outbox_claim(&owner, lease_until_ms, now_ms, limit)
                    });
                let _ = reply.send(result);
            }
        }
    }
}

// ----- the hold front ---------------------------------------------------------------------

/// Takes [`HoldEvent`]s on the connection's own thread and hands them straight to the
/// writer thread, so the ack path is connection → writer → connection (the gateway's
/// thread, busy with POSTs, is not on it). Refuses with [`HoldRefused::Full`] past the
/// capacity.
pub struct HoldFront {
    jobs: std::sync::mpsc::Sender<Job>,
    targets: Vec<ForwardTarget>,
    capacity: usize,
    outstanding: Arc<AtomicUsize>,
    clock: Clock,
    metrics: Option<Metrics>,
    full_logged: bool,
}

impl Actor for HoldFront {
    type Context = Context<Self>;
}

impl Handler<HoldEvent> for HoldFront {
    type Result = ResponseFuture<Result<(), HoldRefused>>;

    fn handle(&mut self, msg: HoldEvent, _: &mut Context<Self>) -> Self::Result {
        let event = msg.0;
        let targets: Vec<usize> = self
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.takes(&event.event_type))
            .map(|(i, _)| i)
            .collect();
        if targets.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let outstanding = self.outstanding.load(Ordering::Relaxed);
        if outstanding + targets.len() > self.capacity {
            if let Some(m) = &self.metrics {
                m.forward_outbox_full();
            }
            if !self.full_logged {
                self.full_logged = true;
                warn!(
                    capacity = self.capacity,
                    event_id = %event.event_id,
                    "event gateway outbox full: new events are answered 500 (the platform delivers them again later) until deliveries drain"
                );
            }
            return Box::pin(async { Err(HoldRefused::Full) });
        }
        self.full_logged = false;
        // Only this actor adds, so the check above holds.
        self.outstanding.fetch_add(targets.len(), Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let held = Held {
            event: OutboxEvent {
                event_id: event.event_id.to_string(),
                event_type: event.event_type.to_string(),
                targets: targets
                    .iter()
                    .map(|&i| self.targets[i].url.clone())
                    .collect(),
                payload: event.payload.to_vec(),
            },
            targets,
            payload: event.payload.clone(),
            enqueued_ms: self.clock.now_ms(),
            reply,
        };
        if let Err(std::sync::mpsc::SendError(Job::Hold(h))) = self.jobs.send(Job::Hold(held)) {
            self.outstanding
                .fetch_sub(h.targets.len(), Ordering::Relaxed);
            return Box::pin(async { Err(HoldRefused::Store("event gateway stopped".into())) });
        }
        Box::pin(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(HoldRefused::Store("event gateway stopped".into())))
        })
    }
}

/// Stops the gateway (at shutdown): deliveries under way are dropped (their entries stay
/// in the store, delivered again later), delivered entries are removed.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopGateway;

// ----- the gateway ------------------------------------------------------------------------

/// One delivery of an event to one target.
#[derive(Debug, Clone)]
struct Delivery {
    event_id: Arc<str>,
    event_type: Arc<str>,
    payload: Bytes,
    enqueued_ms: u64,
    attempts: u32,
}

struct TargetState {
    config: ForwardTarget,
    key: Option<PushKey>,
    ready: VecDeque<Delivery>,
    /// Retries by due instant (unix ms) and a sequence number.
    waiting: BTreeMap<(u64, u64), Delivery>,
    /// `enqueued_ms` of the deliveries in flight, by sequence number.
    in_flight: HashMap<u64, u64>,
    delivered_total: u64,
    failed_total: u64,
    dead: u64,
}

impl TargetState {
    fn pending(&self) -> usize {
        self.ready.len() + self.waiting.len() + self.in_flight.len()
    }
}

type Reply = oneshot::Sender<Result<(), HoldRefused>>;

/// An event waiting for the next group-committed write.
struct Held {
    event: OutboxEvent,
    targets: Vec<usize>,
    payload: Bytes,
    enqueued_ms: u64,
    reply: Reply,
}

/// The gateway actor; see the module docs. Start it with [`EventGateway::start`].
pub struct EventGateway {
    /// The writer thread's jobs.
    writer: std::sync::mpsc::Sender<Job>,
    settings: GatewaySettings,
    clock: Clock,
    metrics: Option<Metrics>,
    client: Option<awc::Client>,
    targets: Vec<TargetState>,
    /// Deliveries accepted and not yet taken: those in the targets' queues, those being
    /// written (shared with the [`HoldFront`] and the writer thread).
    outstanding: Arc<AtomicUsize>,
    removals: Vec<(String, String)>,
    seq: u64,
    /// A lease renewal and claim is under way.
    claiming: bool,
}

/// The gateway's two addresses, from [`EventGateway::start`].
pub struct StartedGateway {
    /// The gateway: [`GetForwardStatus`], [`StopGateway`], [`ForwardCallback`].
    pub gateway: Addr<EventGateway>,
    /// Where the connection sends [`HoldEvent`] (on the calling thread's arbiter).
    pub hold: Recipient<HoldEvent>,
}

/// Takes `entries` read from the store into the targets' queues (oldest first): pending
/// ones are delivered (retries when due), dead ones counted, those of unknown targets left
/// alone. Returns (pending taken, entries of unknown targets).
fn adopt(targets: &mut [TargetState], seq: &mut u64, entries: Vec<OutboxEntry>) -> (usize, usize) {
    let mut unknown = 0usize;
    let mut loaded: Vec<(usize, OutboxEntry)> = Vec::new();
    for entry in entries {
        match targets.iter().position(|t| t.config.url == entry.target) {
            Some(i) if entry.dead_at_ms.is_some() => targets[i].dead += 1,
            Some(i) => loaded.push((i, entry)),
            None => unknown += 1,
        }
    }
    // Oldest first.
    loaded.sort_by_key(|(_, e)| e.enqueued_ms);
    let pending = loaded.len();
    for (i, e) in loaded {
        let d = Delivery {
            event_id: e.event_id.into(),
            event_type: e.event_type.into(),
            payload: Bytes::from(e.payload),
            enqueued_ms: e.enqueued_ms,
            attempts: e.attempts,
        };
        if e.attempts == 0 {
            targets[i].ready.push_back(d);
        } else {
            *seq += 1;
            targets[i].waiting.insert((e.next_attempt_ms, *seq), d);
        }
    }
    (pending, unknown)
}

impl EventGateway {
    /// Reads the outbox back from `store` (pending entries are delivered again, dead ones
    /// counted; when [`GatewaySettings::sharing`] is set, only the entries without a live
    /// owner, claimed for this instance) and starts the gateway on a thread (arbiter) of
    /// its own, its writer thread, and the [`HoldFront`] on the calling thread's arbiter
    /// (the connection's), in the current System. Reads the store on the calling thread
    /// (start-up only).
    ///
    /// # Errors
    /// [`StoreError`] when the outbox cannot be read.
    pub fn start(
        store: Arc<dyn Store>,
        settings: GatewaySettings,
        clock: Clock,
        metrics: Option<Metrics>,
    ) -> Result<StartedGateway, StoreError> {
        let mut targets: Vec<TargetState> = settings
            .targets
            .iter()
            .map(|t| TargetState {
                config: t.clone(),
                key: t.encrypt_key.as_ref().map(PushKey::new),
                ready: VecDeque::new(),
                waiting: BTreeMap::new(),
                in_flight: HashMap::new(),
                delivered_total: 0,
                failed_total: 0,
                dead: 0,
            })
            .collect();
        let mut seq = 0u64;
        let (mut pending, mut unknown) = (0, 0);
        let mut after: Option<(String, String)> = None;
        loop {
            let page = match &settings.sharing {
                Some(sharing) => {
                    let now = clock.now_ms();
                    store.outbox_claim(&sharing.owner, sharing.until(now), now, LOAD_PAGE)?
                }
                None => store.outbox_list(
                    after.as_ref().map(|(t, e)| (t.as_str(), e.as_str())),
                    LOAD_PAGE,
                )?,
            };
            let Some(last) = page.last() else { break };
            after = Some((last.target.clone(), last.event_id.clone()));
            let full = page.len() == LOAD_PAGE;
            let (p, u) = adopt(&mut targets, &mut seq, page);
            pending += p;
            unknown += u;
            if !full {
                break;
            }
        }
        if pending > 0 || unknown > 0 {
            info!(
                pending,
                unknown_target_entries = unknown,
                "event gateway outbox read back: pending deliveries resume"
            );
        }
        let outstanding = Arc::new(AtomicUsize::new(pending));
        let (jobs, queue) = std::sync::mpsc::channel();
        let front = HoldFront {
            jobs: jobs.clone(),
            targets: settings.targets.clone(),
            capacity: settings.capacity,
            outstanding: outstanding.clone(),
            clock: clock.clone(),
            metrics: metrics.clone(),
            full_logged: false,
        };
        let (sharing, dedup_ttl, writer_clock) =
            (settings.sharing.clone(), settings.dedup_ttl, clock.clone());
        let writer_outstanding = outstanding.clone();
        // Its own thread: the POSTs to the targets (HTTP client work per event) do not
        // take turns with the long connection's reads and acks.
        let arbiter = Arbiter::new();
        let gateway = EventGateway::start_in_arbiter(&arbiter.handle(), move |_| EventGateway {
            writer: jobs,
            settings,
            clock,
            metrics,
            client: None,
            targets,
            outstanding,
            removals: Vec::new(),
            seq,
            claiming: false,
        });
        let writer = OutboxWriter {
            store,
            jobs: queue,
            gateway: gateway.clone(),
            sharing,
            dedup_ttl,
            clock: writer_clock,
            outstanding: writer_outstanding,
        };
        std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Backend {
                op: "start the outbox writer",
                source: Box::new(e),
            })?;
        Ok(StartedGateway {
            gateway,
            hold: front.start().recipient(),
        })
    }

    fn pending(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    fn publish_backlog(&self, i: usize) {
        if let Some(m) = &self.metrics {
            let t = &self.targets[i];
            m.forward_backlog(&t.config.url, t.pending() as u64, t.dead);
        }
    }

    /// Starts deliveries of target `i` up to its concurrency.
    fn pump(&mut self, i: usize, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        loop {
            let t = &mut self.targets[i];
            if t.in_flight.len() >= t.config.concurrency {
                break;
            }
            let Some(d) = t.ready.pop_front() else { break };
            self.seq += 1;
            let seq = self.seq;
            t.in_flight.insert(seq, d.enqueued_ms);
            let request = match &t.key {
                Some(key) => push::encrypted(&d.payload, key, self.clock.now_ms() / 1000),
                None => push::plain(d.payload.clone()),
            };
            let fut = post(
                client.clone(),
                t.config.url.clone(),
                request,
                t.config.timeout,
            );
            ctx.spawn(fut.into_actor(self).map(move |outcome, act, ctx| {
                act.delivered(i, seq, d, outcome, ctx);
            }));
        }
        self.publish_backlog(i);
    }

    fn delivered(
        &mut self,
        i: usize,
        seq: u64,
        mut d: Delivery,
        outcome: Result<u16, String>,
        ctx: &mut Context<Self>,
    ) {
        let now = self.clock.now_ms();
        let retry = d.attempts > 0;
        d.attempts += 1;
        let t = &mut self.targets[i];
        t.in_flight.remove(&seq);
        let url = t.config.url.clone();
        match outcome {
            Ok(status) if (200..300).contains(&status) => {
                t.delivered_total += 1;
                self.outstanding.fetch_sub(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.forward_try(&url, "delivered", retry);
                    m.forward_latency(&url, now.saturating_sub(d.enqueued_ms) as f64 / 1000.0);
                }
                self.removals.push((url, d.event_id.to_string()));
            }
            failure => {
                t.failed_total += 1;
                let cause = match &failure {
                    Ok(status) => format!("status {status}"),
                    Err(e) => e.clone(),
                };
                let give_up = now >= d.enqueued_ms + self.settings.retry_for.as_millis() as u64;
                if give_up {
                    t.dead += 1;
                    self.outstanding.fetch_sub(1, Ordering::Relaxed);
                    if let Some(m) = &self.metrics {
                        m.forward_try(&url, "dead", retry);
                    }
                    error!(
                        target_url = %url,
                        event_id = %d.event_id,
                        event_type = %d.event_type,
                        attempts = d.attempts,
                        cause = %cause,
                        "event delivery given up after events.retry_for_secs; kept in the outbox as dead"
                    );
                    let _ = self.writer.send(Job::Update {
                        target: url,
                        event_id: d.event_id.clone(),
                        retry: OutboxRetry {
                            attempts: d.attempts,
                            next_attempt_ms: u64::MAX,
                            dead_at_ms: Some(now),
                        },
                    });
                } else {
                    if let Some(m) = &self.metrics {
                        m.forward_try(&url, "failed", retry);
                    }
                    let delay = backoff(
                        d.attempts,
                        self.settings.retry_initial,
                        self.settings.retry_max,
                        rand::random::<f64>(),
                    );
                    let due = now + delay.as_millis() as u64;
                    debug!(
                        target_url = %url,
                        event_id = %d.event_id,
                        attempts = d.attempts,
                        cause = %cause,
                        retry_in_ms = delay.as_millis() as u64,
                        "event delivery failed; retrying"
                    );
                    let _ = self.writer.send(Job::Update {
                        target: url,
                        event_id: d.event_id.clone(),
                        retry: OutboxRetry {
                            attempts: d.attempts,
                            next_attempt_ms: due,
                            dead_at_ms: None,
                        },
                    });
                    self.seq += 1;
                    self.targets[i].waiting.insert((due, self.seq), d);
                }
            }
        }
        self.pump(i, ctx);
    }

    /// Moves due retries to the ready queues, delivers, and removes delivered entries.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        for i in 0..self.targets.len() {
            let t = &mut self.targets[i];
            while let Some(entry) = t.waiting.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let d = entry.remove();
                t.ready.push_back(d);
            }
            self.pump(i, ctx);
        }
        if !self.removals.is_empty() {
            let _ = self
                .writer
                .send(Job::Remove(std::mem::take(&mut self.removals)));
        }
    }
}

impl EventGateway {
    /// Renews this instance's leases and claims orphaned entries (as many as the capacity
    /// leaves room for); see the module docs.
    fn renew_and_claim(&mut self, ctx: &mut Context<Self>) {
        let Some(sharing) = &self.settings.sharing else {
            return;
        };
        if self.claiming {
            return;
        }
        self.claiming = true;
        let now = self.clock.now_ms();
        let (reply, claim) = oneshot::channel();
        let _ = self.writer.send(Job::RenewAndClaim {
            owner: sharing.owner.clone(),
            lease_until_ms: sharing.until(now),
            now_ms: now,
            limit: self
                .settings
                .capacity
                .saturating_sub(self.pending())
                .min(LOAD_PAGE),
            reply,
        });
        ctx.spawn(claim.into_actor(self).map(|result, act, ctx| {
            act.claiming = false;
            match result {
                Ok(Ok(entries)) if entries.is_empty() => {}
                Ok(Ok(entries)) => {
                    let claimed = entries.len();
                    let (pending, unknown) = adopt(&mut act.targets, &mut act.seq, entries);
                    act.outstanding.fetch_add(pending, Ordering::Relaxed);
                    info!(
                        claimed,
                        pending,
                        unknown_target_entries = unknown,
                        "event gateway took over outbox entries whose instance's lease lapsed"
                    );
                    for i in 0..act.targets.len() {
                        act.pump(i, ctx);
                    }
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "outbox leases not renewed; past store.lease_secs another instance may take over this instance's entries");
                }
                Err(_) => warn!("outbox writer gone; leases not renewed"),
            }
        }));
    }
}

/// The wait before try `attempts + 1` of a delivery that failed `attempts` times:
/// `min(max, initial × 2^(attempts−1))`, scaled by `0.5 + jitter / 2` (`jitter` in
/// `[0, 1)`), so never above `max`.
pub fn backoff(attempts: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exp).min(max);
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0).min(max)
}

/// POSTs one push; the answer's status, or why there was none.
async fn post(
    client: awc::Client,
    url: String,
    request: push::PushRequest,
    timeout: Duration,
) -> Result<u16, String> {
    delivery::post(&client, &url, &request, timeout, MAX_ANSWER_BYTES)
        .await
        .map(|answer| answer.status)
        .map_err(|e| e.to_string())
}

impl Actor for EventGateway {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let timeout = self
            .settings
            .targets
            .iter()
            .map(|t| t.timeout)
            .max()
            .unwrap_or(Duration::from_secs(3));
        match crate::http_client::tls_config() {
            Ok(tls) => self.client = Some(crate::http_client::http_client(tls, timeout)),
            Err(e) => error!(error = %e, "event gateway: TLS setup failed; nothing is delivered"),
        }
        ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
        if let Some(sharing) = &self.settings.sharing {
            ctx.run_interval(lease_poll(sharing.lease), |act, ctx| {
                act.renew_and_claim(ctx)
            });
        }
        if let Some(m) = &self.metrics {
            for t in &self.targets {
                m.forward_target_known(&t.config.url);
            }
        }
        for i in 0..self.targets.len() {
            self.publish_backlog(i);
            self.pump(i, ctx);
        }
    }
}

impl Handler<StopGateway> for EventGateway {
    type Result = ();

    fn handle(&mut self, _: StopGateway, ctx: &mut Context<Self>) {
        if !self.removals.is_empty() {
            let _ = self
                .writer
                .send(Job::Remove(std::mem::take(&mut self.removals)));
        }
        ctx.stop();
        // The gateway's own thread ends with it.
        Arbiter::current().stop();
    }
}

impl Handler<Stored> for EventGateway {
    type Result = ();

    /// Takes the new events of a written group into the targets' queues and delivers.
    fn handle(&mut self, msg: Stored, ctx: &mut Context<Self>) {
        for (targets, d) in msg.0 {
            for &i in &targets {
                self.targets[i].ready.push_back(d.clone());
            }
        }
        for i in 0..self.targets.len() {
            self.pump(i, ctx);
        }
    }
}

impl Handler<ForwardCallback> for EventGateway {
    type Result = ResponseFuture<Option<CardActionResponse>>;

    /// POSTs the callback to the targets taking `card.action.trigger` (see
    /// [`callbacks`]); `None` at once when none does.
    fn handle(&mut self, msg: ForwardCallback, _: &mut Context<Self>) -> Self::Result {
        let within = self
            .settings
            .callback_budget
            .saturating_sub(callbacks::ANSWER_MARGIN)
            .max(Duration::from_millis(100));
        let now_s = self.clock.now_ms() / 1000;
        let posts: Vec<CallbackPost> = self
            .targets
            .iter()
            .filter(|t| {
                t.config
                    .takes(crate::protocol::event::EVENT_TYPE_CARD_ACTION_TRIGGER)
            })
            .map(|t| CallbackPost {
                url: t.config.url.clone(),
                request: match &t.key {
                    Some(key) => push::encrypted(&msg.payload, key, now_s),
                    None => push::plain(msg.payload.clone()),
                },
                timeout: t.config.timeout.min(within),
            })
            .collect();
        let Some(client) = self.client.clone().filter(|_| !posts.is_empty()) else {
            return Box::pin(async { None });
        };
        let metrics = self.metrics.clone();
        Box::pin(
            async move { Some(callbacks::forward(client, posts, msg.event_id, metrics).await) },
        )
    }
}

impl Handler<GetForwardStatus> for EventGateway {
    type Result = Vec<ForwardStatus>;

    fn handle(&mut self, _: GetForwardStatus, _: &mut Context<Self>) -> Vec<ForwardStatus> {
        self.targets
            .iter()
            .map(|t| {
                let oldest = t
                    .ready
                    .iter()
                    .map(|d| d.enqueued_ms)
                    .chain(t.waiting.values().map(|d| d.enqueued_ms))
                    .chain(t.in_flight.values().copied())
                    .min();
                ForwardStatus {
                    target: t.config.url.clone(),
                    pending: t.pending() as u64,
                    delivered_total: t.delivered_total,
                    failed_total: t.failed_total,
                    dead: t.dead,
                    oldest_pending_at_ms: oldest,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped_at_the_maximum() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(backoff(1, i, m, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(1, i, m, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(3, i, m, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(5, i, m, 1.0), Duration::from_secs(16));
        for attempts in [6, 7, 20, 1000, u32::MAX] {
            for jitter in [0.0, 0.3, 0.99, 1.0] {
                let d = backoff(attempts, i, m, jitter);
                assert!(d <= m && d >= m / 2, "{attempts} {jitter}: {d:?}");
            }
        }
    }
}
