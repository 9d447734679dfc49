//! The RefreshScheduler: the actor that keeps grants refreshed ahead of time, driving the
//! pure [`RefreshIndex`]; its calls take slots of the shared [`TokenEndpointPacer`].
//!
//! Accepts: [`GrantChanged`] (a grant was stored, refreshed, revoked or changed status:
//! re-read it), [`GrantUsed`] (a caller used the grant: it is "hot"), [`SetEager`] (keep a
//! grant hot whether used or not), [`GetRefreshStats`], [`GetDispatchLog`]. Sends
//! [`ReauthNeeded`] to the optional recipient given by
//! [`RefreshScheduler::with_reauth_recipient`] when `refresh.reauth_card` is on.
//!
//! Per grant it keeps the two deadlines of DESIGN.md "Refresh policy" in the index
//! (slot ↔ `open_id` map here):
//! - **access refresh** at `access_expires − refresh.ahead_secs`, only while the grant is
//!   hot (used within `refresh.hot_secs`, or marked eager); a cold grant is refreshed by its
//!   next `get_token`;
//! - **keep-alive** at `refresh_expires − refresh.keepalive_secs`, so an idle user stays
//!   authorized;
//! - each lead is clamped to a quarter of the lifetime of the token it protects, but the
//!   access lead never below the (clamped) margin ([`GrantRecord::access_lead_ms`],
//!   [`GrantRecord::refresh_lead_ms`]: the lifetime is the expiry minus the record's
//!   `issued_ms`), so a deadline never falls before half the new token's life and a grant
//!   is refreshed about once per token lifetime even when tokens live shorter than the
//!   leads (a 20 s token with `margin_secs = 5` and the default 600 s lead is refreshed
//!   15 s after it was obtained, not at once and again at once);
//! - a `refresh_failed` grant is retried at the keep-alive slot at the record's
//!   `retry_at_ms` (the backoff the [`TokenSource`] set after the failure:
//!   `refresh.retry_initial_secs` doubling up to `refresh.retry_max_secs`); a
//!   `refresh_uncertain` grant is settled (as `needs_reauth`, nothing sent) once its access
//!   token is no longer servable (until then it is served); `needs_reauth` / `revoked`
//!   grants have no deadline.
//!
//! At start it loads every grant from the vault (pages of summaries, no secrets). Each tick
//! (`run_interval`, plus a timer armed for a deadline sooner than the next tick) looks only
//! at what is due. Every refresh first takes a slot from the token-endpoint pacer
//! ([`TokenEndpointPacer`], `refresh.budget_per_sec` with jitter) — the one shared with the
//! sessions' device polls and code exchanges when `LarkAuth::start` hands it over with
//! [`RefreshScheduler::with_token_endpoint_pacer`], else a private one. The scheduler asks
//! for as many slots as deadlines are due (at most one second of budget at a time) and
//! picks the nearest due deadline only when a slot arrives, so refreshes stay nearest
//! first while they share the queue with polls; a backlog after downtime drains at the
//! budget, never in a burst. Refreshes go through [`TokenSource::refresh_ahead`], the same single
//! flight as `get_token`, so a scheduled refresh and a caller never race; after each one
//! the grant is re-read and its deadlines set again.
//!
//! The [`TokenSource`] reports uses and stored changes to this actor through its observer
//! (installed in `started`), so callers of `get_token` need not send [`GrantUsed`]
//! themselves. The session actors (a later issue) send [`GrantChanged`] after storing a
//! new grant, and connect the [`ReauthNeeded`] recipient to their authorization card.
//!
//! Instants are unix epoch milliseconds.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::config::RefreshConfig;
use crate::metrics::{AttemptCounts, GrantCounts, Metrics, RefreshSnapshot};
use crate::token_endpoint::{AcquireSlot, SlotPriority, TokenEndpointPacer};
use crate::tokens::{GetTokenError, RefreshCounts, RefreshGrant, TokenEvent, TokenSource};
use crate::vault::actor::{CompareAndSwapGrant, GetGrant, ListGrants, TokenVaultActor};
use crate::vault::{
    GrantRecord, GrantStatus, GrantSummary, SwapOutcome, VaultError, clamp_lead_ms, clamp_margin_ms,
};

use super::index::{DeadlineKind, Due, RefreshIndex};

// ----- messages --------------------------------------------------------------------------

/// A grant was stored, replaced, revoked or changed status: the scheduler re-reads it and
/// sets its deadlines again (removing it when it is gone). Sent by the session actors
/// after `StoreGrant` and by the [`TokenSource`] observer; fire and forget.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct GrantChanged {
    /// The user.
    pub open_id: String,
}

/// A caller used the grant (`get_token`): it is hot for `refresh.hot_secs`, so its access
/// token is refreshed ahead of expiry. Sent by the [`TokenSource`] observer.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct GrantUsed {
    /// The user.
    pub open_id: String,
}

/// Marks a grant eager (kept hot whether used or not) or not. In memory only: lost on
/// restart, the caller marks again.
///
/// Why memory-only marks are safe: an eager mark only adds the **access-refresh**
/// deadline (refreshing the access token before it expires, so a caller never waits for
/// a refresh). The deadline that keeps a grant alive — **keep-alive**, before the refresh
/// token lapses — comes from the stored record (`refresh_expires_ms`), which the
/// scheduler reloads at start whatever the marks were. So a lost mark never loses a
/// grant or a refresh token; its only cost is that until the caller marks again (or uses
/// the grant, which makes it hot), the first `get_token` after the access token enters
/// the margin refreshes synchronously, single-flight and paced like any other. Making
/// the mark durable would add a field to the record's clear part and a flushed vault
/// write per mark change (which also drops the grant's opened token from the cache), for
/// a latency benefit only on the first call after a restart; not worth it now.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct SetEager {
    /// The user.
    pub open_id: String,
    /// True to keep the grant hot.
    pub eager: bool,
}

/// Asks for the scheduler's counters and gauges.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "RefreshStats")]
pub struct GetRefreshStats;

/// Asks for the instants (unix ms) at which the last (up to 4096) scheduled refreshes
/// were started, oldest first: the pacer's grant log.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Vec<u64>")]
pub struct GetDispatchLog;

/// Sent (once per grant) to the recipient given with
/// [`RefreshScheduler::with_reauth_recipient`] when a grant becomes `needs_reauth` and
/// `refresh.reauth_card` is on: ask the user to authorize again. Before it is sent the
/// grant records `reauth_requested_ms` durably, so a grant never triggers two. The
/// session actors (a later issue) answer it with one authorization card.
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct ReauthNeeded {
    /// The user.
    pub open_id: String,
    /// The platform code that ended the grant (e.g. 20064), if any.
    pub code: Option<u32>,
}

// ----- settings and stats ----------------------------------------------------------------

/// The scheduler's settings. [`SchedulerSettings::from_config`] takes them from
/// `[refresh]`; tests shorten them.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerSettings {
    /// Token-endpoint calls per second (`refresh.budget_per_sec`).
    pub budget_per_sec: u32,
    /// Jitter added to each pacer slot, as a fraction (0.0–1.0) of the slot interval
    /// (only for the scheduler's private pacer; a shared pacer has its own).
    pub jitter: f64,
    /// Refresh a hot grant's access token when less than this is left (duration;
    /// clamped per grant to a quarter of the access token's lifetime, never below the margin).
    pub ahead: Duration,
    /// Refresh any grant when its refresh token has less than this left (duration;
    /// clamped per grant to a quarter of the refresh token's lifetime).
    pub keepalive_lead: Duration,
    /// A grant used within this long is hot (duration).
    pub hot_window: Duration,
    /// First retry delay after a retryable failure; doubles per failure (duration).
    /// Handed to the [`TokenSource`] ([`TokenSource::set_retry_backoff`]), so callers'
    /// attempts follow it too; also the wait before reloading after a vault error.
    pub retry_initial: Duration,
    /// Largest retry delay (duration).
    pub retry_max: Duration,
    /// Period of the tick (duration).
    pub tick: Duration,
    /// Emit [`ReauthNeeded`] for grants that become `needs_reauth`
    /// (`refresh.reauth_card`).
    pub reauth_card: bool,
    /// Grants read per vault page while loading.
    pub load_page: usize,
}

impl SchedulerSettings {
    /// The settings of `[refresh]`, with a 1 s tick.
    pub fn from_config(config: &RefreshConfig) -> SchedulerSettings {
        SchedulerSettings {
            budget_per_sec: config.budget_per_sec,
            jitter: 0.2,
            ahead: config.ahead.max(config.margin),
            keepalive_lead: config.keepalive,
            hot_window: config.hot,
            retry_initial: config.retry_initial,
            retry_max: config.retry_max,
            tick: Duration::from_secs(1),
            reauth_card: config.reauth_card,
            load_page: 10_000,
        }
    }
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings::from_config(&RefreshConfig::default())
    }
}

/// Grants by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// `active`.
    pub active: u64,
    /// `refresh_failed`.
    pub refresh_failed: u64,
    /// `refresh_uncertain`.
    pub refresh_uncertain: u64,
    /// `needs_reauth`.
    pub needs_reauth: u64,
    /// `revoked`.
    pub revoked: u64,
}

impl StatusCounts {
    fn slot(&mut self, status: GrantStatus) -> &mut u64 {
        match status {
            GrantStatus::Active => &mut self.active,
            GrantStatus::RefreshFailed => &mut self.refresh_failed,
            GrantStatus::RefreshUncertain => &mut self.refresh_uncertain,
            GrantStatus::NeedsReauth => &mut self.needs_reauth,
            GrantStatus::Revoked => &mut self.revoked,
        }
    }
}

/// The scheduler's metrics (a later issue exports them to Prometheus).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshStats {
    /// True once every stored grant has been loaded.
    pub loaded: bool,
    /// Grants known.
    pub grants: u64,
    /// Grants by status.
    pub by_status: StatusCounts,
    /// Deadlines held in the index (up to two per grant).
    pub deadlines: u64,
    /// Deadlines due now and not yet started (the backlog).
    pub backlog: u64,
    /// How long the oldest due deadline has been waiting, ms (0: none overdue).
    pub oldest_overdue_ms: u64,
    /// Scheduled refreshes started since start.
    pub dispatched: u64,
    /// Scheduled refreshes in flight now.
    pub in_flight: u64,
    /// Refresh requests sent (scheduled and by callers), by outcome.
    pub attempts: RefreshCounts,
    /// [`ReauthNeeded`] messages sent.
    pub reauth_requests_sent: u64,
}

impl RefreshStats {
    /// The numbers [`Metrics::refresh_stats`] exports.
    pub fn snapshot(&self) -> RefreshSnapshot {
        let (s, a) = (&self.by_status, &self.attempts);
        RefreshSnapshot {
            backlog: self.backlog,
            oldest_overdue_ms: self.oldest_overdue_ms,
            grants: GrantCounts {
                active: s.active,
                refresh_failed: s.refresh_failed,
                refresh_uncertain: s.refresh_uncertain,
                needs_reauth: s.needs_reauth,
                revoked: s.revoked,
            },
            attempts: AttemptCounts {
                refreshed: a.refreshed,
                retryable: a.retryable,
                needs_reauth: a.needs_reauth,
                outcome_unknown: a.outcome_unknown,
            },
        }
    }
}

// ----- the actor -------------------------------------------------------------------------

#[derive(Debug)]
struct Slot {
    open_id: Arc<str>,
    status: GrantStatus,
    access_expires_ms: u64,
    refresh_expires_ms: u64,
    /// When the tokens were obtained (0: unknown), for the lifetime clamp.
    issued_ms: u64,
    /// `refresh_failed`: the earliest next attempt.
    retry_at_ms: Option<u64>,
    last_used_ms: u64,
    /// Kept hot by [`SetEager`]; memory-only (see there why that is safe).
    eager: bool,
    in_flight: bool,
    reauth_requested: bool,
}

/// What the scheduler needs of a grant (from a summary or a full record).
struct View {
    status: GrantStatus,
    access_expires_ms: u64,
    refresh_expires_ms: u64,
    issued_ms: u64,
    retry_at_ms: Option<u64>,
    last_used_ms: u64,
    reauth_requested: bool,
}

impl From<&GrantSummary> for View {
    fn from(s: &GrantSummary) -> View {
        View {
            status: s.status,
            access_expires_ms: s.access_expires_ms,
            refresh_expires_ms: s.refresh_expires_ms,
            issued_ms: s.issued_ms,
            retry_at_ms: s.retry_at_ms,
            last_used_ms: s.last_used_ms,
            reauth_requested: s.reauth_requested_ms.is_some(),
        }
    }
}

impl From<&GrantRecord> for View {
    fn from(r: &GrantRecord) -> View {
        View {
            status: r.status,
            access_expires_ms: r.access_expires_ms,
            refresh_expires_ms: r.refresh_expires_ms,
            issued_ms: r.issued_ms,
            retry_at_ms: r.retry_at_ms,
            last_used_ms: r.last_used_ms,
            reauth_requested: r.reauth_requested_ms.is_some(),
        }
    }
}

const DISPATCH_LOG: usize = 4096;

/// The refresh scheduler; see the module docs. Runs on the System's thread (it shares the
/// [`TokenSource`]).
pub struct RefreshScheduler<R: RefreshGrant> {
    source: TokenSource<R>,
    vault: Addr<TokenVaultActor>,
    settings: SchedulerSettings,
    reauth: Option<Recipient<ReauthNeeded>>,
    clock: Clock,
    index: RefreshIndex,
    /// The token-endpoint pacer (shared, or started privately in `started`).
    pacer: Option<Addr<TokenEndpointPacer>>,
    /// Slot requests waiting at the pacer.
    slot_requests: usize,
    metrics: Option<Metrics>,
    ids: HashMap<Arc<str>, u32>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    by_status: StatusCounts,
    wake_at: Option<u64>,
    loaded: bool,
    dispatched: u64,
    in_flight: u64,
    reauth_sent: u64,
    log: VecDeque<u64>,
}

impl<R: RefreshGrant> RefreshScheduler<R> {
    /// A scheduler refreshing through `source` (whose vault actor is `vault`). Sets the
    /// source's retry backoff to `settings.retry_initial` / `retry_max`.
    pub fn new(
        source: TokenSource<R>,
        vault: Addr<TokenVaultActor>,
        settings: SchedulerSettings,
    ) -> Self {
        source.set_retry_backoff(settings.retry_initial, settings.retry_max);
        RefreshScheduler {
            source,
            vault,
            settings,
            reauth: None,
            clock: Clock::system(),
            index: RefreshIndex::new(),
            pacer: None,
            slot_requests: 0,
            metrics: None,
            ids: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            by_status: StatusCounts::default(),
            wake_at: None,
            loaded: false,
            dispatched: 0,
            in_flight: 0,
            reauth_sent: 0,
            log: VecDeque::new(),
        }
    }

    /// Reads the time from `clock` (unix ms; a [`Clock`], or a `fn() -> u64`) instead of
    /// the system clock, for tests that move time themselves (give the [`TokenSource`]
    /// the same clock with [`TokenSource::with_clock`]). Timers still run on real time: a
    /// deadline that the clock jumps past is picked up by the next tick.
    pub fn with_clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = clock.into();
        self
    }

    /// Where [`ReauthNeeded`] goes when `reauth_card` is on (the session actors, once they
    /// exist). Without a recipient nothing is sent and nothing is recorded.
    pub fn with_reauth_recipient(mut self, recipient: Recipient<ReauthNeeded>) -> Self {
        self.reauth = Some(recipient);
        self
    }

    /// Takes token-endpoint slots from `pacer` (the one the sessions' polls use), so
    /// refreshes and polls share one budget. Without it the scheduler starts its own
    /// pacer with `budget_per_sec`.
    pub fn with_token_endpoint_pacer(mut self, pacer: Addr<TokenEndpointPacer>) -> Self {
        self.pacer = Some(pacer);
        self
    }

    /// Publishes [`RefreshStats`] to `metrics` on every tick and after every scheduled
    /// refresh (`lark_auth_refresh_backlog`, `lark_auth_refresh_oldest_overdue_seconds`,
    /// `lark_auth_grants`, `lark_auth_refresh_attempts_total`).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn hot(&self, slot: &Slot, now: u64) -> bool {
        slot.eager
            || now.saturating_sub(slot.last_used_ms) < self.settings.hot_window.as_millis() as u64
    }

    /// Sets both deadlines of `grant` from its slot. Each lead is clamped to a quarter of
    /// the lifetime of its token, the access lead never below the margin ([`clamp_lead_ms`]); [`TokenSource::refresh_ahead`] applies
    /// the same arithmetic, so a due deadline always finds its refresh due.
    fn plan(&mut self, grant: u32, now: u64) {
        let Some(slot) = self.slots[grant as usize].as_ref() else {
            self.index.remove(grant);
            return;
        };
        let (access, keep) = match slot.status {
            GrantStatus::Active => {
                let access = self.hot(slot, now).then(|| {
                    let lead = clamp_lead_ms(
                        self.settings.ahead.as_millis() as u64,
                        self.source.margin_ms(),
                        slot.issued_ms,
                        slot.access_expires_ms,
                    );
                    slot.access_expires_ms.saturating_sub(lead)
                });
                let lead = clamp_lead_ms(
                    self.settings.keepalive_lead.as_millis() as u64,
                    0,
                    slot.issued_ms,
                    slot.refresh_expires_ms,
                );
                (access, Some(slot.refresh_expires_ms.saturating_sub(lead)))
            }
            GrantStatus::RefreshFailed => (None, Some(slot.retry_at_ms.unwrap_or(now))),
            GrantStatus::RefreshUncertain => {
                // Served while its access token is valid beyond the margin; settled just
                // after.
                let margin = clamp_margin_ms(
                    self.source.margin_ms(),
                    slot.issued_ms,
                    slot.access_expires_ms,
                );
                (
                    None,
                    Some(slot.access_expires_ms.saturating_sub(margin) + 1),
                )
            }
            GrantStatus::NeedsReauth | GrantStatus::Revoked => (None, None),
        };
        self.index.set(grant, DeadlineKind::AccessRefresh, access);
        self.index.set(grant, DeadlineKind::KeepAlive, keep);
    }

    /// Records what the vault holds for `open_id` (`None`: no grant) and plans it.
    fn apply(&mut self, open_id: &str, view: Option<View>, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        let grant = match (self.ids.get(open_id).copied(), view) {
            (Some(grant), None) => {
                if let Some(slot) = self.slots[grant as usize].take() {
                    *self.by_status.slot(slot.status) -= 1;
                    self.ids.remove(&slot.open_id);
                }
                self.index.remove(grant);
                self.free.push(grant);
                return;
            }
            (None, None) => return,
            (Some(grant), Some(view)) => {
                let slot = self.slots[grant as usize]
                    .as_mut()
                    .expect("mapped slots are in use");
                *self.by_status.slot(slot.status) -= 1;
                *self.by_status.slot(view.status) += 1;
                slot.status = view.status;
                slot.access_expires_ms = view.access_expires_ms;
                slot.refresh_expires_ms = view.refresh_expires_ms;
                slot.issued_ms = view.issued_ms;
                slot.retry_at_ms = view.retry_at_ms;
                slot.last_used_ms = slot.last_used_ms.max(view.last_used_ms);
                slot.reauth_requested |= view.reauth_requested;
                if view.status != GrantStatus::NeedsReauth {
                    slot.reauth_requested = view.reauth_requested;
                }
                grant
            }
            (None, Some(view)) => {
                let open_id: Arc<str> = Arc::from(open_id);
                let slot = Slot {
                    open_id: open_id.clone(),
                    status: view.status,
                    access_expires_ms: view.access_expires_ms,
                    refresh_expires_ms: view.refresh_expires_ms,
                    issued_ms: view.issued_ms,
                    retry_at_ms: view.retry_at_ms,
                    last_used_ms: view.last_used_ms,
                    eager: false,
                    in_flight: false,
                    reauth_requested: view.reauth_requested,
                };
                *self.by_status.slot(view.status) += 1;
                let grant = match self.free.pop() {
                    Some(g) => {
                        self.slots[g as usize] = Some(slot);
                        g
                    }
                    None => {
                        self.slots.push(Some(slot));
                        (self.slots.len() - 1) as u32
                    }
                };
                self.ids.insert(open_id, grant);
                grant
            }
        };
        self.plan(grant, now);
        self.maybe_request_reauth(grant, ctx);
    }

    /// Emits one [`ReauthNeeded`] for a `needs_reauth` grant that has not had one, after
    /// recording it in the grant (durably), when the switch is on.
    fn maybe_request_reauth(&mut self, grant: u32, ctx: &mut Context<Self>) {
        if !self.settings.reauth_card {
            return;
        }
        let Some(recipient) = self.reauth.clone() else {
            return;
        };
        let Some(slot) = self.slots[grant as usize].as_mut() else {
            return;
        };
        if slot.status != GrantStatus::NeedsReauth || slot.reauth_requested {
            return;
        }
        slot.reauth_requested = true;
        let open_id = slot.open_id.to_string();
        let vault = self.vault.clone();
        let clock = self.clock.clone();
        let work = async move {
            for _ in 0..8 {
                let Some(mut record) = vault
                    .send(GetGrant {
                        open_id: open_id.clone(),
                    })
                    .await??
                else {
                    return Ok(false);
                };
                if record.status != GrantStatus::NeedsReauth || record.reauth_requested_ms.is_some()
                {
                    return Ok(false);
                }
                record.reauth_requested_ms = Some(clock.now_ms());
                let code = record.status_code;
                match vault
                    .send(CompareAndSwapGrant {
                        record,
                        durable: true,
                    })
                    .await??
                {
                    SwapOutcome::Swapped(_) => {
                        info!(open_id, ?code, "grant needs re-authorization: request sent");
                        recipient.do_send(ReauthNeeded { open_id, code });
                        return Ok(true);
                    }
                    SwapOutcome::Conflict => continue,
                }
            }
            Ok::<bool, GetTokenError>(false)
        };
        ctx.spawn(work.into_actor(self).map(|result, act, _| match result {
            Ok(true) => act.reauth_sent += 1,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "recording a re-authorization request failed"),
        }));
    }

    fn reload(&mut self, open_id: String, ctx: &mut Context<Self>) {
        let read = self.vault.send(GetGrant {
            open_id: open_id.clone(),
        });
        ctx.spawn(read.into_actor(self).map(move |answer, act, ctx| {
            match answer {
                Ok(Ok(record)) => act.apply(&open_id, record.as_ref().map(View::from), ctx),
                Ok(Err(VaultError::Corrupt { .. })) => act.apply(&open_id, None, ctx),
                Ok(Err(e)) => warn!(open_id, error = %e, "scheduler could not read a grant"),
                Err(_) => warn!(open_id, "vault actor gone"),
            }
            act.drain(ctx);
        }));
    }

    fn load_page(&mut self, after: Option<String>, ctx: &mut Context<Self>) {
        let page = self.settings.load_page;
        let list = self.vault.send(ListGrants {
            after_open_id: after,
            limit: page,
        });
        ctx.spawn(
            list.into_actor(self)
                .map(move |answer, act, ctx| match answer {
                    Ok(Ok(grants)) => {
                        let last = grants.last().map(|g| g.identity.open_id.clone());
                        for g in &grants {
                            act.apply(&g.identity.open_id, Some(View::from(g)), ctx);
                        }
                        if grants.len() < page {
                            act.loaded = true;
                            info!(grants = act.ids.len(), "refresh scheduler loaded the vault");
                            act.drain(ctx);
                        } else {
                            act.load_page(last, ctx);
                        }
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "loading grants failed; retrying");
                        let after = act.ids.keys().max().map(|k| k.to_string());
                        ctx.run_later(act.settings.retry_initial, move |act, ctx| {
                            act.load_page(after, ctx)
                        });
                    }
                    Err(_) => warn!("vault actor gone while loading"),
                }),
        );
    }

    fn arm(&mut self, at: u64, now: u64, ctx: &mut Context<Self>) {
        if self.wake_at.is_some_and(|w| w <= at && w > now) {
            return;
        }
        self.wake_at = Some(at);
        ctx.run_later(Duration::from_millis(at.saturating_sub(now)), |act, ctx| {
            act.wake_at = None;
            act.drain(ctx);
        });
    }

    /// True when a due deadline needs no call: its grant is gone or in flight (the
    /// completion plans it again), or it is an access deadline of a grant that went cold
    /// (refreshed on its next use).
    fn needs_no_call(&self, due: &Due, now: u64) -> bool {
        match self.slots[due.grant as usize].as_ref() {
            None => true,
            Some(slot) => {
                slot.in_flight || (due.kind == DeadlineKind::AccessRefresh && !self.hot(slot, now))
            }
        }
    }

    /// Most slot requests waiting at the pacer at once: one second of budget.
    fn max_slot_requests(&self) -> usize {
        self.settings.budget_per_sec.max(1) as usize
    }

    /// Drops due deadlines that need no call, asks the pacer for a slot per remaining due
    /// deadline (up to [`max_slot_requests`](Self::max_slot_requests) waiting), and arms
    /// a timer for a deadline sooner than the next tick.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        while let Some(due) = self.index.first_due(now) {
            if !self.needs_no_call(&due, now) {
                break;
            }
            self.index.pop_due(now, 1);
        }
        let wanted = self.index.count_due_at_most(now, self.max_slot_requests());
        while self.slot_requests < wanted {
            self.request_slot(ctx);
        }
        if let Some(next) = self.index.next_due_ms()
            && next > now
            && next < now + self.settings.tick.as_millis() as u64
        {
            self.arm(next, now, ctx);
        }
    }

    /// Asks the pacer for one slot; when it comes, the nearest due deadline is started.
    fn request_slot(&mut self, ctx: &mut Context<Self>) {
        let Some(pacer) = self.pacer.clone() else {
            return;
        };
        self.slot_requests += 1;
        ctx.spawn(
            async move {
                pacer
                    .send(AcquireSlot {
                        priority: SlotPriority::Background,
                    })
                    .await
            }
            .into_actor(self)
            .map(|granted, act, ctx| {
                act.slot_requests -= 1;
                match granted {
                    Ok(()) => act.use_slot(ctx),
                    Err(_) => warn!("token-endpoint pacer gone; refreshes stop"),
                }
            }),
        );
    }

    /// Starts the nearest due deadline that needs a call with the slot just granted (if
    /// none is left the slot goes unused), then asks again for what is still due.
    fn use_slot(&mut self, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        while let Some(due) = self.index.first_due(now) {
            self.index.pop_due(now, 1);
            if !self.needs_no_call(&due, now) {
                self.dispatch(due.grant, ctx);
                break;
            }
        }
        self.drain(ctx);
    }

    fn publish(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.refresh_stats(&self.stats().snapshot());
        }
    }

    fn dispatch(&mut self, grant: u32, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        let slot = self.slots[grant as usize]
            .as_mut()
            .expect("due grants have slots");
        slot.in_flight = true;
        let open_id = slot.open_id.to_string();
        self.dispatched += 1;
        self.in_flight += 1;
        if self.log.len() == DISPATCH_LOG {
            self.log.pop_front();
        }
        self.log.push_back(now);
        debug!(open_id, "scheduled refresh");
        let source = self.source.clone();
        let ahead = self.settings.ahead;
        let keepalive = self.settings.keepalive_lead;
        let id = open_id.clone();
        let flight = async move { source.refresh_ahead(&id, ahead, keepalive).await };
        ctx.spawn(flight.into_actor(self).map(move |result, act, ctx| {
            act.in_flight -= 1;
            if let Some(slot) = act
                .ids
                .get(open_id.as_str())
                .and_then(|g| act.slots[*g as usize].as_mut())
            {
                slot.in_flight = false;
            }
            if let Err(e) = &result {
                debug!(open_id, error = %e, "scheduled refresh did not produce a token");
            }
            act.reload(open_id, ctx);
            act.publish();
        }));
    }

    fn stats(&self) -> RefreshStats {
        let now = self.clock.now_ms();
        RefreshStats {
            loaded: self.loaded,
            grants: self.ids.len() as u64,
            by_status: self.by_status,
            deadlines: self.index.len() as u64,
            backlog: self.index.count_due(now) as u64,
            oldest_overdue_ms: self
                .index
                .next_due_ms()
                .filter(|d| *d <= now)
                .map_or(0, |d| now - d),
            dispatched: self.dispatched,
            in_flight: self.in_flight,
            attempts: self.source.refresh_counts(),
            reauth_requests_sent: self.reauth_sent,
        }
    }

    fn slot_of(&mut self, open_id: &str) -> Option<(u32, &mut Slot)> {
        let grant = *self.ids.get(open_id)?;
        self.slots[grant as usize].as_mut().map(|s| (grant, s))
    }
}

impl<R: RefreshGrant> Actor for RefreshScheduler<R> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let me = ctx.address().downgrade();
        self.source.set_observer(Box::new(move |event| {
            let Some(addr) = me.upgrade() else { return };
            match event {
                TokenEvent::Used(id) => addr.do_send(GrantUsed {
                    open_id: id.to_string(),
                }),
                TokenEvent::Changed(id) => addr.do_send(GrantChanged {
                    open_id: id.to_string(),
                }),
            }
        }));
        if self.pacer.is_none() {
            self.pacer = Some(
                TokenEndpointPacer::with_jitter(self.settings.budget_per_sec, self.settings.jitter)
                    .start(),
            );
        }
        ctx.run_interval(self.settings.tick, |act, ctx| {
            act.drain(ctx);
            act.publish();
        });
        self.load_page(None, ctx);
    }
}

impl<R: RefreshGrant> Handler<GrantChanged> for RefreshScheduler<R> {
    type Result = ();

    fn handle(&mut self, msg: GrantChanged, ctx: &mut Context<Self>) {
        self.reload(msg.open_id, ctx);
    }
}

impl<R: RefreshGrant> Handler<GrantUsed> for RefreshScheduler<R> {
    type Result = ();

    fn handle(&mut self, msg: GrantUsed, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        let Some((grant, slot)) = self.slot_of(&msg.open_id) else {
            return;
        };
        slot.last_used_ms = now;
        let plan = slot.status == GrantStatus::Active && !slot.in_flight;
        if plan
            && self
                .index
                .deadline(grant, DeadlineKind::AccessRefresh)
                .is_none()
        {
            self.plan(grant, now);
            self.drain(ctx);
        }
    }
}

impl<R: RefreshGrant> Handler<SetEager> for RefreshScheduler<R> {
    type Result = ();

    fn handle(&mut self, msg: SetEager, ctx: &mut Context<Self>) {
        let now = self.clock.now_ms();
        let Some((grant, slot)) = self.slot_of(&msg.open_id) else {
            return;
        };
        slot.eager = msg.eager;
        if !slot.in_flight {
            self.plan(grant, now);
            self.drain(ctx);
        }
    }
}

impl<R: RefreshGrant> Handler<GetRefreshStats> for RefreshScheduler<R> {
    type Result = MessageResult<GetRefreshStats>;

    fn handle(&mut self, _: GetRefreshStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats())
    }
}

impl<R: RefreshGrant> Handler<GetDispatchLog> for RefreshScheduler<R> {
    type Result = MessageResult<GetDispatchLog>;

    fn handle(&mut self, _: GetDispatchLog, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.log.iter().copied().collect())
    }
}
