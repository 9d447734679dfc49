//! `get_token` with single-flight refresh.
//!
//! [`TokenSource::get_token`] returns an access token valid for at least the margin,
//! refreshing first when needed. The margin is clamped to half the token's lifetime
//! ([`GrantRecord::access_margin_ms`]) and the scheduler's leads to a quarter of it, never
//! below the margin ([`GrantRecord::access_lead_ms`]): a token the platform (or a test)
//! makes live shorter than twice the margin is still served for its first half, and a
//! grant is refreshed about once per token lifetime, never on every call. The refresh
//! itself goes through the [`RefreshGrant`] seam
//! ([`OpenApiRefresher`](super::OpenApiRefresher) implements it for the platform; the seam
//! stays so other token endpoints or test harnesses can be plugged in).
//!
//! Rules, per grant:
//! - **Single flight** (in this process): at most one refresh is in flight; every caller
//!   that finds the token stale joins the flight in progress and gets its result. The
//!   flight table lives on the System's thread (`Rc`/`RefCell`, no locks).
//! - **Write-ahead marker**: before the refresh token is sent, the record is
//!   compare-and-swapped with `refresh_started_ms` set and flushed. A record found with the
//!   marker by a new flight (nothing in flight here) is a leftover of a crash between
//!   sending and storing the answer: the token may be consumed, so it is not sent again;
//!   the grant becomes `refresh_uncertain`.
//! - **Re-read, then compare-and-swap**: the answer is applied to the record as it is
//!   now, only if it still holds the refresh token that was sent (otherwise a new
//!   authorization replaced it and wins), and flushed before the new token is returned.
//! - **Failures**: [`RefreshFailure::Retryable`] → `refresh_failed`, with the failure
//!   counted and the next attempt allowed after a backoff (`retry_initial` doubling up to
//!   `retry_max`, [`TokenSource::set_retry_backoff`]) stored in the record
//!   (`retry_at_ms`): neither the scheduler nor a caller sends the refresh token before
//!   then, so callers cause at most one attempt per backoff step;
//!   [`RefreshFailure::NeedsReauth`] → `needs_reauth` with the code;
//!   [`RefreshFailure::OutcomeUnknown`] → `refresh_uncertain`: its refresh token is never
//!   sent again, and the grant is settled as `needs_reauth` (nothing sent) once its access
//!   token is no longer servable.
//! - **A failure never hides a valid token**: while the stored access token is valid
//!   beyond the (clamped) margin it is served whatever the status — `active`,
//!   `refresh_failed` or `refresh_uncertain` ([`GrantRecord::serves_token`]) — including
//!   to a caller whose joined flight failed. Only without such a token does a caller get
//!   [`GetTokenError::RefreshFailed`] (with the wait until the next attempt).
//! - **Opened-token cache** (optional, [`TokenSource::with_token_cache`]): a fresh token
//!   `get_token` already read is served from memory, without the vault actor, sled or the
//!   AEAD; the vault drops it on every write of the grant (see [`super::cache`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use futures_util::future::{FutureExt as _, LocalBoxFuture, Shared};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::config::RefreshConfig;
use crate::secret::Secret;
use crate::vault::actor::{CompareAndSwapGrant, GetGrant, TokenVaultActor};
use crate::vault::{GrantRecord, GrantStatus, SwapOutcome};

use super::access::{AccessToken, GetTokenError};
use super::cache::TokenCache;
use super::refresher::{NewTokens, RefreshFailure, RefreshGrant};

/// Counts of refresh requests sent through a [`TokenSource`] since it was made, by
/// outcome (one per request that left the process; callers that joined a flight are not
/// counted again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshCounts {
    /// Refresh requests sent.
    pub sent: u64,
    /// Answered with a new pair (stored).
    pub refreshed: u64,
    /// Failed with a retryable error (`refresh_failed`).
    pub retryable: u64,
    /// Refused: the grant needs re-authorization.
    pub needs_reauth: u64,
    /// No answer: the grant became `refresh_uncertain`.
    pub outcome_unknown: u64,
}

/// What a [`TokenSource`] tells its observer (the refresh scheduler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEvent<'a> {
    /// `get_token` was called for this user (the grant is in use: "hot").
    Used(&'a str),
    /// The stored grant of this user changed (refreshed, failed, settled): re-read it.
    Changed(&'a str),
}

/// The observer callback; see [`TokenSource::set_observer`].
pub type TokenObserver = Box<dyn Fn(TokenEvent<'_>)>;

/// Waits for a token-endpoint slot (resolves when a request may be sent); see
/// [`TokenSource::with_slot_gate`].
pub type SlotGate = Box<dyn Fn() -> LocalBoxFuture<'static, ()>>;

/// What a flight must achieve for its starter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A caller (`get_token`): a token it may be served ([`GrantRecord::serves_token`]
    /// with the source's margin); refresh only without one. Waits at the slot gate, if
    /// any, before sending.
    Serve,
    /// The scheduler (`refresh_ahead`), which already holds a token-endpoint slot:
    /// refresh an `active` grant once `now ≥ access_expires − access_lead` or
    /// `now ≥ refresh_expires − refresh_lead` (each lead clamped as
    /// [`clamp_lead_ms`](crate::vault::clamp_lead_ms) says, the same arithmetic as the
    /// scheduler's deadlines); retry a
    /// `refresh_failed` grant once its backoff has elapsed.
    Ahead {
        /// ms.
        access_lead_ms: u64,
        /// ms.
        refresh_lead_ms: u64,
    },
    /// A caller whose token the platform refused (99991668 / 99991677,
    /// [`TokenSource::refresh_rejected`]): a token other than the rejected one (SHA-256
    /// digest), refreshing when the stored one is still the rejected one. Waits at the
    /// slot gate like `Serve`.
    Replace {
        /// SHA-256 of the rejected access token.
        rejected: [u8; 32],
    },
}

impl Need {
    fn paced(&self) -> bool {
        matches!(self, Need::Ahead { .. })
    }

    /// True when an `active` record needs no refresh for this starter.
    fn satisfied_by(&self, record: &GrantRecord, now_ms: u64, margin_ms: u64) -> bool {
        match *self {
            Need::Serve => record.serves_token(now_ms, margin_ms),
            Need::Replace { rejected } => {
                record.serves_token(now_ms, margin_ms)
                    && token_digest(&record.access_token) != rejected
            }
            Need::Ahead {
                access_lead_ms,
                refresh_lead_ms,
            } => {
                let access_due = record
                    .access_expires_ms
                    .saturating_sub(record.access_lead_ms(access_lead_ms, margin_ms));
                let refresh_due = record
                    .refresh_expires_ms
                    .saturating_sub(record.refresh_lead_ms(refresh_lead_ms));
                record.serves_token(now_ms, margin_ms)
                    && now_ms < access_due
                    && now_ms < refresh_due
            }
        }
    }
}

/// SHA-256 of an access token (compared instead of the token itself).
fn token_digest(token: &Secret<String>) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.expose().as_bytes()).into()
}

fn served(record: GrantRecord) -> AccessToken {
    AccessToken {
        token: record.access_token,
        expires_ms: record.access_expires_ms,
    }
}

type Flight = Shared<LocalBoxFuture<'static, Result<AccessToken, GetTokenError>>>;

/// How many times a flight re-reads after a compare-and-swap conflict before giving up
/// with [`GetTokenError::Contended`].
const MAX_CONFLICTS: usize = 16;

struct Inner<R> {
    vault: Addr<TokenVaultActor>,
    refresher: R,
    margin_ms: u64,
    /// First and largest wait after a retryable failure, ms.
    backoff_ms: Cell<(u64, u64)>,
    clock: Clock,
    flights: RefCell<HashMap<String, Flight>>,
    counts: Cell<RefreshCounts>,
    observer: RefCell<Option<TokenObserver>>,
    cache: std::cell::OnceCell<Arc<TokenCache>>,
    gate: std::cell::OnceCell<SlotGate>,
    metrics: std::cell::OnceCell<crate::metrics::Metrics>,
    /// With a store shared by several instances: how long another instance's
    /// write-ahead marker stands for its refresh in flight, ms.
    claim_lease_ms: Cell<Option<u64>>,
}

/// Serves access tokens with single-flight refresh. Lives on the System's thread (not
/// `Send`); clone it freely (shared state).
pub struct TokenSource<R: RefreshGrant> {
    inner: Rc<Inner<R>>,
}

impl<R: RefreshGrant> Clone for TokenSource<R> {
    fn clone(&self) -> Self {
        TokenSource {
            inner: self.inner.clone(),
        }
    }
}

/// How often a caller waiting for another instance's refresh re-reads the grant.
pub const CLAIM_POLL: Duration = Duration::from_millis(50);

enum Settled {
    Done(Result<AccessToken, GetTokenError>),
    /// The record no longer holds the refresh token that was sent.
    Superseded,
}

impl<R: RefreshGrant> TokenSource<R> {
    /// A source reading grants from `vault`, refreshing through `refresher` when less than
    /// `margin` (`refresh.margin_secs`) remains.
    pub fn new(vault: Addr<TokenVaultActor>, refresher: R, margin: Duration) -> Self {
        Self::with_clock(vault, refresher, margin, Clock::system())
    }

    /// As [`TokenSource::new`] reading the time from `clock` (unix ms; a [`Clock`], or a
    /// `fn() -> u64`), for tests that move time themselves.
    pub fn with_clock(
        vault: Addr<TokenVaultActor>,
        refresher: R,
        margin: Duration,
        clock: impl Into<Clock>,
    ) -> Self {
        TokenSource {
            inner: Rc::new(Inner {
                vault,
                refresher,
                margin_ms: margin.as_millis() as u64,
                backoff_ms: Cell::new({
                    let d = RefreshConfig::default();
                    (
                        d.retry_initial.as_millis() as u64,
                        d.retry_max.as_millis() as u64,
                    )
                }),
                clock: clock.into(),
                flights: RefCell::new(HashMap::new()),
                counts: Cell::new(RefreshCounts::default()),
                observer: RefCell::new(None),
                cache: std::cell::OnceCell::new(),
                gate: std::cell::OnceCell::new(),
                metrics: std::cell::OnceCell::new(),
                claim_lease_ms: Cell::new(None),
            }),
        }
    }

    /// Serves fresh tokens from `cache` (from [`TokenCache::for_vault`]
    /// of the vault behind this source's actor: only that vault's writes invalidate it).
    /// Only the first cache given counts.
    pub fn with_token_cache(self, cache: Arc<TokenCache>) -> Self {
        let _ = self.inner.cache.set(cache);
        self
    }

    /// Awaits `gate` (a slot of the shared token-endpoint pacer) before each refresh
    /// request that `get_token` starts, before the write-ahead marker, then re-reads the
    /// grant; refreshes through [`refresh_ahead`](Self::refresh_ahead) are paced by their
    /// caller (the scheduler takes a slot first). Only the first gate given counts.
    pub fn with_slot_gate(self, gate: SlotGate) -> Self {
        let _ = self.inner.gate.set(gate);
        self
    }

    /// Counts every `get_token` answer in `metrics` by where it came from, with its
    /// latency (`lark_auth_get_token_total{source}`, `lark_auth_get_token_seconds`). Only
    /// the first call counts.
    pub fn with_metrics(self, metrics: crate::metrics::Metrics) -> Self {
        let _ = self.inner.metrics.set(metrics);
        self
    }

    /// For a store shared by several instances (`[store] backend = "postgres"`): a
    /// write-ahead marker younger than `lease` (`store.lease_secs`) is another instance's
    /// refresh in flight, not a leftover of a crash. A caller is then served the stored
    /// token while it is valid beyond the margin, else waits (polling the record every
    /// [`CLAIM_POLL`]) until that refresh is stored or the lease runs out; the scheduler
    /// leaves the grant to that instance. Only a marker older than the lease becomes
    /// `refresh_uncertain` (its refresh token is never sent twice). Without this call
    /// (one process per store, sled) every marker found outside a flight of this
    /// process is a leftover and becomes `refresh_uncertain` at once.
    pub fn with_shared_store(self, lease: Duration) -> Self {
        self.inner
            .claim_lease_ms
            .set(Some(lease.as_millis().max(1) as u64));
        self
    }

    /// The opened-token cache, if one was given.
    pub fn token_cache(&self) -> Option<&Arc<TokenCache>> {
        self.inner.cache.get()
    }

    /// The refresher (for tests and metrics).
    pub fn refresher(&self) -> &R {
        &self.inner.refresher
    }

    /// Refresh flights in progress.
    pub fn flights_in_progress(&self) -> usize {
        self.inner.flights.borrow().len()
    }

    /// Refresh requests sent so far, by outcome.
    pub fn refresh_counts(&self) -> RefreshCounts {
        self.inner.counts.get()
    }

    /// The access-token margin of `get_token`, ms (before the clamp to half a token's
    /// lifetime, [`GrantRecord::access_margin_ms`]).
    pub fn margin_ms(&self) -> u64 {
        self.inner.margin_ms
    }

    /// Sets the wait after a retryable refresh failure: `initial` after the first,
    /// doubling per failure in a row up to `max` (durations; default
    /// `refresh.retry_initial_secs` = 5 s and `refresh.retry_max_secs` = 300 s). The
    /// [`RefreshScheduler`](crate::refresh::RefreshScheduler) sets its own settings here
    /// when it is made, so scheduled retries and callers follow one backoff.
    pub fn set_retry_backoff(&self, initial: Duration, max: Duration) {
        self.inner
            .backoff_ms
            .set((initial.as_millis() as u64, max.as_millis() as u64));
    }

    /// Installs the observer told about every use and every stored change (the
    /// [`RefreshScheduler`](crate::refresh::RefreshScheduler) installs one that sends itself
    /// `GrantUsed` / `GrantChanged`). Replaces any previous observer. The callback runs on
    /// the System's thread inside `get_token`: keep it to a non-blocking send.
    pub fn set_observer(&self, observer: TokenObserver) {
        *self.inner.observer.borrow_mut() = Some(observer);
    }

    /// Refreshes `open_id` now if its access token has at most `access_lead` (at least
    /// the margin) left or its refresh token has at most `refresh_lead` left, each lead
    /// clamped to a quarter of that token's lifetime ([`GrantRecord::access_lead_ms`],
    /// [`GrantRecord::refresh_lead_ms`]); retries a `refresh_failed` grant whose backoff
    /// has elapsed; settles a `refresh_uncertain` grant whose access token is no longer
    /// servable as `needs_reauth` (nothing sent). Otherwise returns the stored access
    /// token. Same single flight as [`TokenSource::get_token`] (joins a flight in
    /// progress, whatever started it), so a scheduled refresh and a caller never race.
    /// Does not count as a use. Not paced here: the caller takes a token-endpoint slot
    /// first (the scheduler does).
    ///
    /// # Errors
    /// Every [`GetTokenError`] variant, as for `get_token` (`RefreshFailed` also while a
    /// `refresh_failed` grant's backoff runs, nothing sent).
    pub async fn refresh_ahead(
        &self,
        open_id: &str,
        access_lead: Duration,
        refresh_lead: Duration,
    ) -> Result<AccessToken, GetTokenError> {
        let need = Need::Ahead {
            access_lead_ms: (access_lead.as_millis() as u64).max(self.inner.margin_ms),
            refresh_lead_ms: refresh_lead.as_millis() as u64,
        };
        self.join_flight(open_id, need).await
    }

    /// After the platform refused `rejected` (99991668 invalid / 99991677 expired, §6): a
    /// token of `open_id` other than `rejected`, refreshing the grant once when the stored
    /// token is still the rejected one. Same single flight as
    /// [`get_token`](Self::get_token): callers refused with the same token at the same
    /// time share one refresh, and a caller whose token was already replaced gets the new
    /// one with nothing sent. Paced at the slot gate like `get_token`.
    ///
    /// Returns `rejected` itself only when it cannot be replaced now without resending a
    /// refresh token whose outcome is unknown (`refresh_uncertain`): the caller should
    /// then not retry.
    ///
    /// # Errors
    /// Every [`GetTokenError`] variant, as for `get_token` (`RefreshFailed` while a
    /// `refresh_failed` grant's backoff runs, nothing sent).
    pub async fn refresh_rejected(
        &self,
        open_id: &str,
        rejected: &Secret<String>,
    ) -> Result<AccessToken, GetTokenError> {
        let digest = token_digest(rejected);
        let need = Need::Replace { rejected: digest };
        let mut token = self.join_flight(open_id, need).await?;
        if token_digest(&token.token) == digest {
            // A flight of another kind (a scheduled one) was joined and kept the token.
            token = self.join_flight(open_id, need).await?;
        }
        Ok(token)
    }

    /// Returns an access token of `open_id` valid for at least the margin (clamped to
    /// half its lifetime), refreshing first when needed (joining the refresh in flight,
    /// if any). A stored token valid beyond the margin is served whatever the grant's
    /// status (`active`, `refresh_failed`, `refresh_uncertain`); without one, a
    /// `refresh_failed` grant is retried only once its backoff has elapsed.
    ///
    /// # Errors
    /// Every [`GetTokenError`] variant; each says what to do.
    pub async fn get_token(&self, open_id: &str) -> Result<AccessToken, GetTokenError> {
        let started = std::time::Instant::now();
        let (result, source) = self.get_token_from(open_id).await;
        if let Some(metrics) = self.inner.metrics.get() {
            let source = if result.is_err() { "error" } else { source };
            metrics.get_token_answered(source, started.elapsed().as_secs_f64());
        }
        result
    }

    /// [`TokenSource::get_token`], and where the answer came from: `cache` (the
    /// opened-token cache), `vault` (the stored record), `refresh` (after a flight).
    async fn get_token_from(
        &self,
        open_id: &str,
    ) -> (Result<AccessToken, GetTokenError>, &'static str) {
        self.inner.notify(TokenEvent::Used(open_id));
        let now = self.inner.clock.now_ms();
        let margin = self.inner.margin_ms;
        let cache = self.inner.cache.get();
        if let Some(cache) = cache
            && let Some(token) = cache.fresh(open_id, now, margin)
        {
            return (Ok(token), "cache");
        }
        // Taken before the read: an insert is refused if any write happened since.
        let since = cache.map(|c| c.generation());
        let stored = match self.inner.get(open_id).await {
            Ok(stored) => stored,
            Err(e) => {
                // The store cannot be read (a shared store's database down): a token set
                // aside when notifications stopped is still served while it is fresh.
                if let Some(token) = cache.and_then(|c| c.fallback(open_id, now, margin)) {
                    return (Ok(token), "cache");
                }
                return (Err(e), "vault");
            }
        };
        if let Some(record) = stored
            && record.refresh_started_ms.is_none()
            && record.serves_token(now, margin)
        {
            if let (Some(cache), Some(since)) = (cache, since) {
                cache.insert(
                    since,
                    open_id,
                    &record.access_token,
                    record.access_expires_ms,
                    record.access_margin_ms(u64::MAX),
                    record.version,
                );
            }
            return (Ok(served(record)), "vault");
        }
        let mut flown = self.join_flight(open_id, Need::Serve).await;
        if matches!(flown, Err(GetTokenError::Contended)) {
            // Maybe a joined scheduler flight that left the grant to another instance's
            // refresh (shared store): wait for that refresh as a caller does.
            flown = self.join_flight(open_id, Need::Serve).await;
        }
        let result = match flown {
            // A flight (maybe the scheduler's, started while the token was still valid)
            // failed without an answer that ends the grant: the stored token, if still
            // valid beyond the margin, is served all the same.
            Err(
                e @ (GetTokenError::RefreshFailed { .. }
                | GetTokenError::RefreshOutcomeUnknown
                | GetTokenError::Contended),
            ) => match self.inner.get(open_id).await {
                Ok(Some(record)) if record.serves_token(self.inner.clock.now_ms(), margin) => {
                    Ok(served(record))
                }
                Ok(_) => Err(e),
                Err(read) => Err(read),
            },
            other => other,
        };
        (result, "refresh")
    }

    async fn join_flight(&self, open_id: &str, need: Need) -> Result<AccessToken, GetTokenError> {
        let flight = {
            let mut flights = self.inner.flights.borrow_mut();
            match flights.get(open_id) {
                Some(flight) => flight.clone(),
                None => {
                    let inner = self.inner.clone();
                    let id = open_id.to_string();
                    let flight = async move {
                        let result = Inner::fly(&inner, &id, need).await;
                        inner.flights.borrow_mut().remove(&id);
                        result
                    }
                    .boxed_local()
                    .shared();
                    flights.insert(open_id.to_string(), flight.clone());
                    flight
                }
            }
        };
        flight.await
    }
}

impl<R: RefreshGrant> Inner<R> {
    fn notify(&self, event: TokenEvent<'_>) {
        if let Some(observer) = self.observer.borrow().as_ref() {
            observer(event);
        }
    }

    fn count(&self, f: impl FnOnce(&mut RefreshCounts)) {
        let mut c = self.counts.get();
        f(&mut c);
        self.counts.set(c);
    }

    /// The wait after the `failures`-th retryable failure in a row, ms.
    fn backoff_ms(&self, failures: u32) -> u64 {
        let (initial, max) = self.backoff_ms.get();
        let factor = 1u64 << failures.saturating_sub(1).min(20);
        initial.saturating_mul(factor).min(max)
    }

    async fn get(&self, open_id: &str) -> Result<Option<GrantRecord>, GetTokenError> {
        Ok(self
            .vault
            .send(GetGrant {
                open_id: open_id.to_string(),
            })
            .await??)
    }

    async fn swap(&self, record: GrantRecord) -> Result<SwapOutcome, GetTokenError> {
        Ok(self
            .vault
            .send(CompareAndSwapGrant {
                record,
                durable: true,
            })
            .await??)
    }

    /// Polls the record every [`CLAIM_POLL`] until the marker set at `started` (another
    /// instance's refresh) is gone or older than `lease_ms`.
    async fn wait_for_claim(
        &self,
        open_id: &str,
        started: u64,
        lease_ms: u64,
    ) -> Result<(), GetTokenError> {
        loop {
            let left = (started + lease_ms).saturating_sub(self.clock.now_ms());
            if left == 0 {
                return Ok(());
            }
            tokio::time::sleep(CLAIM_POLL.min(Duration::from_millis(left))).await;
            match self.get(open_id).await? {
                Some(record) if record.refresh_started_ms == Some(started) => {}
                _ => return Ok(()),
            }
        }
    }

    /// Sets `status` if the record is still `record.version`; true when stored.
    async fn set_status(
        &self,
        mut record: GrantRecord,
        status: GrantStatus,
        code: Option<u32>,
    ) -> Result<bool, GetTokenError> {
        record.status = status;
        record.status_code = code;
        record.refresh_started_ms = None;
        let open_id = record.identity.open_id.clone();
        let stored = matches!(self.swap(record).await?, SwapOutcome::Swapped(_));
        if stored {
            self.notify(TokenEvent::Changed(&open_id));
        }
        Ok(stored)
    }

    /// One flight: re-read under the gate, refresh if still needed, store the answer.
    async fn fly(this: &Rc<Self>, open_id: &str, need: Need) -> Result<AccessToken, GetTokenError> {
        let mut paced = need.paced();
        for _ in 0..MAX_CONFLICTS {
            let now = this.clock.now_ms();
            let Some(record) = this.get(open_id).await? else {
                return Err(GetTokenError::NoGrant);
            };
            match record.status {
                GrantStatus::Revoked => return Err(GetTokenError::Revoked),
                GrantStatus::NeedsReauth => {
                    return Err(GetTokenError::NeedsReauth {
                        code: record.status_code,
                    });
                }
                GrantStatus::RefreshUncertain => {
                    // The refresh token may be consumed: never resend it. Its access token
                    // is served while valid; after that the grant is settled.
                    if record.serves_token(now, this.margin_ms) {
                        return Ok(served(record));
                    }
                    if this
                        .set_status(record, GrantStatus::NeedsReauth, None)
                        .await?
                    {
                        info!(open_id, "refresh_uncertain grant settled as needs_reauth");
                        return Err(GetTokenError::NeedsReauth { code: None });
                    }
                    continue;
                }
                GrantStatus::RefreshFailed => {
                    if !need.paced() && need.satisfied_by(&record, now, this.margin_ms) {
                        return Ok(served(record));
                    }
                    if let Some(at) = record.retry_at_ms
                        && now < at
                    {
                        // One attempt per backoff step: nothing is sent before it ends.
                        return Err(GetTokenError::RefreshFailed {
                            code: record.status_code,
                            retry_after: Duration::from_millis(at - now),
                        });
                    }
                }
                GrantStatus::Active => {}
            }
            if let (Some(started), Some(lease)) =
                (record.refresh_started_ms, this.claim_lease_ms.get())
                && now.saturating_sub(started) < lease
            {
                // Another instance's refresh in flight.
                if need == Need::Serve && record.serves_token(now, this.margin_ms) {
                    return Ok(served(record));
                }
                if need.paced() {
                    // The scheduler leaves the grant to that instance.
                    return Err(GetTokenError::Contended);
                }
                this.wait_for_claim(open_id, started, lease).await?;
                continue;
            }
            if record.refresh_started_ms.is_some() {
                // No flight of ours was in progress (we hold the gate): a previous process
                // sent this refresh token and its answer was not stored.
                warn!(
                    open_id,
                    "refresh marker left by an earlier run: refresh_uncertain"
                );
                if this
                    .set_status(record, GrantStatus::RefreshUncertain, None)
                    .await?
                {
                    return Err(GetTokenError::RefreshOutcomeUnknown);
                }
                continue;
            }
            if record.status == GrantStatus::Active
                && need.satisfied_by(&record, now, this.margin_ms)
            {
                return Ok(served(record));
            }
            if record.refresh_token.is_empty() || record.refresh_expires_ms <= now {
                if this
                    .set_status(record, GrantStatus::NeedsReauth, None)
                    .await?
                {
                    return Err(GetTokenError::NeedsReauth { code: None });
                }
                continue;
            }
            if !paced && let Some(gate) = this.gate.get() {
                // Wait for a slot before the marker (a crash while queued must not leave
                // one), then decide again on the record as it is after the wait.
                gate().await;
                paced = true;
                continue;
            }
            // Write-ahead marker, flushed before the token leaves the process.
            let mut marked = record;
            marked.refresh_started_ms = Some(now);
            let marked = match this.swap(marked).await? {
                SwapOutcome::Swapped(m) => *m,
                SwapOutcome::Conflict => continue,
            };
            let sent_at = this.clock.now_ms();
            this.count(|c| c.sent += 1);
            let answer = this.refresher.refresh(marked.refresh_token.clone()).await;
            this.count(|c| match &answer {
                Ok(_) => c.refreshed += 1,
                Err(RefreshFailure::Retryable { .. }) => c.retryable += 1,
                Err(RefreshFailure::NeedsReauth { .. }) => c.needs_reauth += 1,
                Err(RefreshFailure::OutcomeUnknown) => c.outcome_unknown += 1,
            });
            match this
                .settle(open_id, &marked.refresh_token, sent_at, answer)
                .await?
            {
                Settled::Done(result) => return result,
                Settled::Superseded => continue,
            }
        }
        Err(GetTokenError::Contended)
    }

    /// Applies a refresh answer to the record as it is now (re-read), by compare-and-swap.
    async fn settle(
        &self,
        open_id: &str,
        sent_token: &Secret<String>,
        sent_at: u64,
        answer: Result<NewTokens, RefreshFailure>,
    ) -> Result<Settled, GetTokenError> {
        for _ in 0..MAX_CONFLICTS {
            let Some(mut record) = self.get(open_id).await? else {
                return Ok(Settled::Done(Err(GetTokenError::NoGrant)));
            };
            if record.refresh_token != *sent_token {
                warn!(
                    open_id,
                    "grant replaced during a refresh; its answer is dropped"
                );
                return Ok(Settled::Superseded);
            }
            record.refresh_started_ms = None;
            let result = match &answer {
                Ok(new) => {
                    record.access_token = new.access_token.clone();
                    record.refresh_token = new.refresh_token.clone();
                    record.access_expires_ms =
                        sent_at.saturating_add(new.access_expires_in.as_millis() as u64);
                    record.refresh_expires_ms =
                        sent_at.saturating_add(new.refresh_expires_in.as_millis() as u64);
                    record.issued_ms = sent_at;
                    if let Some(scopes) = &new.scopes {
                        record.scopes = scopes.clone();
                    }
                    record.status = GrantStatus::Active;
                    record.status_code = None;
                    record.failures = 0;
                    record.retry_at_ms = None;
                    record.last_used_ms = record.last_used_ms.max(self.clock.now_ms());
                    Ok(AccessToken {
                        token: new.access_token.clone(),
                        expires_ms: record.access_expires_ms,
                    })
                }
                Err(RefreshFailure::Retryable { code }) => {
                    let wait = self.backoff_ms(record.failures.saturating_add(1));
                    record.status = GrantStatus::RefreshFailed;
                    record.status_code = *code;
                    record.failures = record.failures.saturating_add(1);
                    record.retry_at_ms = Some(self.clock.now_ms().saturating_add(wait));
                    Err(GetTokenError::RefreshFailed {
                        code: *code,
                        retry_after: Duration::from_millis(wait),
                    })
                }
                Err(RefreshFailure::NeedsReauth { code }) => {
                    record.status = GrantStatus::NeedsReauth;
                    record.status_code = Some(*code);
                    Err(GetTokenError::NeedsReauth { code: Some(*code) })
                }
                Err(RefreshFailure::OutcomeUnknown) => {
                    record.status = GrantStatus::RefreshUncertain;
                    record.status_code = None;
                    Err(GetTokenError::RefreshOutcomeUnknown)
                }
            };
            match self.swap(record).await? {
                SwapOutcome::Swapped(_) => {
                    self.notify(TokenEvent::Changed(open_id));
                    return Ok(Settled::Done(result));
                }
                SwapOutcome::Conflict => continue,
            }
        }
        Ok(Settled::Done(Err(GetTokenError::Contended)))
    }
}
