//! Process metrics in the Prometheus/OpenMetrics text format (`prometheus-client`).
//!
//! One [`Metrics`] per service instance (no global registry, so two instances in one
//! process do not mix their numbers). Cheap to clone; every update is an atomic operation
//! or a labelled-family lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label set with one `state` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state name.
    pub state: String,
}

/// Label set with one `cause` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    /// The cause name.
    pub cause: String,
}

/// Label set with one `event_type` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabel {
    /// The event type, e.g. `im.message.receive_v1`.
    pub event_type: String,
}

/// Label set with one `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The outcome name.
    pub outcome: String,
}

/// The service's metrics. Names are prefixed `lark_auth_`.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    /// 1 for the current connection state, 0 for the others.
    connection_state: Family<StateLabel, Gauge>,
    reconnects: Family<CauseLabel, Counter>,
    frames_in: Counter,
    frames_out: Counter,
    ack_latency: Histogram,
    events: Family<EventTypeLabel, Counter>,
    callback_answer: Family<OutcomeLabel, Counter>,
    callback_latency: Histogram,
    /// Token endpoint, refresh and grants (issue 5).
    refresh: RefreshMetrics,
    sessions: SessionMetrics,
    /// `get_token` answers and latency (issue 17).
    get_token: GetTokenMetrics,
    /// Behind the link-age gauges (issue 12).
    link: Arc<LinkActivity>,
    /// 1 when this instance started on a vault that lost acknowledged writes.
    vault_loss: Gauge,
    /// 1 when the store answered the last probe.
    store_up: Gauge,
    store: StoreMetrics,
    /// The event gateway (issue 15).
    forward: ForwardMetrics,
    /// The OpenAPI proxy (issue 16).
    proxy: ProxyMetrics,
    /// Dedup marks and the store's size (issue 18).
    upkeep: UpkeepMetrics,
}

const CONNECTION_STATES: [&str; 5] = [
    "connecting",
    "connected",
    "reconnecting",
    "failed",
    "stopped",
];

/// Causes of `lark_auth_connection_reconnects_total{cause}` exported at 0 from the start
/// (the ConnectionActor's loss causes and `ConnectFailure::cause` of retryable attempts;
/// a cause outside the list still gets its own series when it first happens).
pub const RECONNECT_CAUSES: [&str; 13] = [
    "closed_by_server",
    "silence",
    "stream_ended",
    "protocol_error",
    "write_failed",
    "writer_closed",
    "transport",
    "discovery_http",
    "discovery_code",
    "discovery_no_url",
    "discovery_malformed",
    "handshake_refused",
    "unknown",
];

/// Outcomes of `lark_auth_callback_answers_total{outcome}`, exported at 0 from the start.
pub const CALLBACK_OUTCOMES: [&str; 3] = ["answered", "late", "failed"];

/// Event types of `lark_auth_events_total{event_type}` exported at 0 from the start: the
/// card callbacks lark-auth consumes itself (other types appear when first received).
pub const KNOWN_EVENT_TYPES: [&str; 1] = ["card.action.trigger"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lark_auth");
        let connection_state = Family::<StateLabel, Gauge>::default();
        registry.register(
            "connection_state",
            "Long connection state (1 = current)",
            connection_state.clone(),
        );
        let reconnects = Family::<CauseLabel, Counter>::default();
        registry.register(
            "connection_reconnects",
            "Connection losses and failed attempts that led to a reconnect, by cause",
            reconnects.clone(),
        );
        let frames_in = Counter::default();
        registry.register(
            "frames_in",
            "WebSocket data frames received (chunks count one each)",
            frames_in.clone(),
        );
        let frames_out = Counter::default();
        registry.register(
            "frames_out",
            "Response frames (acks) written",
            frames_out.clone(),
        );
        // Seconds: 0.1 ms .. ~3.3 s.
        let ack_latency = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
        );
        registry.register(
            "ack_latency_seconds",
            "Time from a message's completion to its ack (biz_rt)",
            ack_latency.clone(),
        );
        let events = Family::<EventTypeLabel, Counter>::default();
        registry.register(
            "events",
            "Complete events received, by event type",
            events.clone(),
        );
        let callback_answer = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "callback_answers",
            "Card callbacks answered, by outcome (answered, late, failed)",
            callback_answer.clone(),
        );
        let callback_latency = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 13),
        );
        registry.register(
            "callback_answer_seconds",
            "Time to answer a card callback",
            callback_latency.clone(),
        );
        let refresh = RefreshMetrics::register(&mut registry);
        let sessions = SessionMetrics::register(&mut registry);
        let get_token = GetTokenMetrics::register(&mut registry);
        let link = Arc::new(LinkActivity::new());
        registry.register_collector(Box::new(LinkAgeCollector(link.clone())));
        let vault_loss = Gauge::default();
        registry.register(
            "vault_loss_detected",
            "1 when the service was started with --accept-loss on a vault that lost acknowledged writes",
            vault_loss.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 when the token store (the sled vault or PostgreSQL) answered a read at the last scrape or /healthz, 0 when it failed or took over 2 s",
            store_up.clone(),
        );
        // The service starts only on a store it could open.
        store_up.set(1);
        let store = StoreMetrics::register(&mut registry);
        let forward = ForwardMetrics::register(&mut registry);
        let proxy = ProxyMetrics::register(&mut registry);
        let upkeep = UpkeepMetrics::register(&mut registry);
        let metrics = Metrics {
            inner: Arc::new(Inner {
                registry,
                connection_state,
                reconnects,
                frames_in,
                frames_out,
                ack_latency,
                events,
                callback_answer,
                callback_latency,
                refresh,
                sessions,
                get_token,
                link,
                vault_loss,
                store_up,
                store,
                forward,
                proxy,
                upkeep,
            }),
        };
        metrics.connection_state("connecting");
        metrics.preregister();
        metrics
    }

    /// Creates every known label set at 0, so that each family the dashboard and the
    /// alert rules use is in the first scrape (a series that appears only with its first
    /// increment breaks `rate()`, `increase()` and `absent()`).
    fn preregister(&self) {
        let inner = &self.inner;
        for cause in RECONNECT_CAUSES {
            let _ = inner.reconnects.get_or_create(&CauseLabel {
                cause: cause.to_string(),
            });
        }
        for outcome in CALLBACK_OUTCOMES {
            let _ = inner.callback_answer.get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            });
        }
        for event_type in KNOWN_EVENT_TYPES {
            let _ = inner.events.get_or_create(&EventTypeLabel {
                event_type: event_type.to_string(),
            });
        }
    }

    /// Renders every metric in the OpenMetrics text format (accepted by Prometheus).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }

    /// Sets `lark_auth_vault_loss_detected`: 1 when the instance was started on a vault
    /// that lost acknowledged writes (`serve --accept-loss`).
    pub fn vault_loss_detected(&self, detected: bool) {
        self.inner.vault_loss.set(i64::from(detected));
    }

    /// Sets `lark_auth_store_up`: whether the store answered the last probe (a one-grant
    /// read made by `/metrics` and `/healthz`).
    pub fn store_up(&self, up: bool) {
        self.inner.store_up.set(i64::from(up));
    }

    /// Records the current connection state (`connecting`, `connected`, …).
    pub fn connection_state(&self, state: &str) {
        for s in CONNECTION_STATES {
            self.inner
                .connection_state
                .get_or_create(&StateLabel {
                    state: s.to_string(),
                })
                .set(i64::from(s == state));
        }
    }

    /// Counts a reconnect and its cause (`closed_by_server`, `silence`, `transport`, …).
    pub fn reconnect(&self, cause: &str) {
        self.inner
            .reconnects
            .get_or_create(&CauseLabel {
                cause: cause.to_string(),
            })
            .inc();
    }

    /// Counts a received data frame.
    pub fn frame_in(&self) {
        self.inner.frames_in.inc();
    }

    /// Counts a written ack and observes its latency in seconds.
    pub fn ack_written(&self, latency_secs: f64) {
        self.inner.frames_out.inc();
        self.inner.ack_latency.observe(latency_secs);
    }

    /// Counts a complete event of `event_type`.
    pub fn event(&self, event_type: &str) {
        self.inner
            .events
            .get_or_create(&EventTypeLabel {
                event_type: event_type.to_string(),
            })
            .inc();
    }

    /// The counter of complete events of `event_type`, to keep and increment without a
    /// label lookup (or an allocation) per event.
    pub fn event_counter(&self, event_type: &str) -> Counter {
        self.inner
            .events
            .get_or_create(&EventTypeLabel {
                event_type: event_type.to_string(),
            })
            .clone()
    }

    /// Counts a callback answer (`answered`, `late`, `failed`) and its latency in seconds.
    pub fn callback_answered(&self, outcome: &str, latency_secs: f64) {
        self.inner
            .callback_answer
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
        self.inner.callback_latency.observe(latency_secs);
    }
}

// ----- token endpoint, refresh scheduler and grants (issue 5) ---------------------------
//
// Kept in one block (its own struct, registered by one call in `Metrics::new`) so that
// other families can be added above without touching these lines.

/// Label set of `lark_auth_token_endpoint_calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenCallLabels {
    /// `refresh`, `device_poll` or `code_exchange`.
    pub kind: String,
    /// `ok` (device polls: `granted`, `pending`, `slow_down`, `denied`, `expired`), or an
    /// error class: `rate_limited`, `platform_error`, `transport_error`, `timeout`,
    /// `outcome_unknown`, `invalid_response`, `invalid_request`.
    pub outcome: String,
}

/// Label set with one `status` label (a grant status: `active`, `needs_reauth`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The status name.
    pub status: String,
}

/// The grant status names of `lark_auth_grants{status}` (the vault's `GrantStatus`
/// names), each exported from the start.
const GRANT_STATUSES: [&str; 5] = [
    "active",
    "refresh_failed",
    "refresh_uncertain",
    "needs_reauth",
    "revoked",
];

/// `kind` values of `lark_auth_token_endpoint_calls_total`.
pub const TOKEN_CALL_KINDS: [&str; 3] = ["refresh", "device_poll", "code_exchange"];

/// Error `outcome`s of `lark_auth_token_endpoint_calls_total`, for every kind.
pub const TOKEN_CALL_ERRORS: [&str; 7] = [
    "rate_limited",
    "platform_error",
    "transport_error",
    "timeout",
    "outcome_unknown",
    "invalid_response",
    "invalid_request",
];

/// Successful `outcome`s of device polls (`refresh` and `code_exchange` succeed as `ok`).
pub const DEVICE_POLL_OUTCOMES: [&str; 5] =
    ["granted", "pending", "slow_down", "denied", "expired"];

/// `outcome`s of `lark_auth_refresh_attempts_total`.
pub const REFRESH_ATTEMPT_OUTCOMES: [&str; 4] =
    ["ok", "retryable_error", "needs_reauth", "outcome_unknown"];

/// What [`Metrics::refresh_stats`] publishes: the refresh scheduler's numbers, as plain
/// values (the scheduler builds it from its own statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshSnapshot {
    /// Deadlines due now and not yet started.
    pub backlog: u64,
    /// How long the oldest due deadline has been waiting, ms (0: none overdue).
    pub oldest_overdue_ms: u64,
    /// Grants by status.
    pub grants: GrantCounts,
    /// Refresh requests sent since start, by outcome (cumulative).
    pub attempts: AttemptCounts,
}

/// Grants by status (`lark_auth_grants{status}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantCounts {
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

impl GrantCounts {
    fn by_name(&self, status: &str) -> u64 {
        match status {
            "active" => self.active,
            "refresh_failed" => self.refresh_failed,
            "refresh_uncertain" => self.refresh_uncertain,
            "needs_reauth" => self.needs_reauth,
            "revoked" => self.revoked,
            _ => 0,
        }
    }
}

/// Refresh requests sent, by outcome, counted since start
/// (`lark_auth_refresh_attempts_total{outcome}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttemptCounts {
    /// Answered with a new pair (`ok`).
    pub refreshed: u64,
    /// Failed with a retryable error (`retryable_error`).
    pub retryable: u64,
    /// Refused: the grant needs re-authorization (`needs_reauth`).
    pub needs_reauth: u64,
    /// No answer (`outcome_unknown`).
    pub outcome_unknown: u64,
}

struct RefreshMetrics {
    token_endpoint_calls: Family<TokenCallLabels, Counter>,
    token_endpoint_queue: Gauge,
    token_endpoint_share: Gauge,
    token_endpoint_budget: Gauge,
    backlog: Gauge,
    oldest_overdue: Gauge<f64, AtomicU64>,
    grants: Family<StatusLabel, Gauge>,
    attempts: Family<OutcomeLabel, Counter>,
    /// The scheduler's cumulative attempt counts as last exported (counters move by the
    /// difference).
    exported: Mutex<AttemptCounts>,
}

impl RefreshMetrics {
    fn register(registry: &mut Registry) -> RefreshMetrics {
        let m = RefreshMetrics {
            token_endpoint_calls: Family::default(),
            token_endpoint_queue: Gauge::default(),
            token_endpoint_share: Gauge::default(),
            token_endpoint_budget: Gauge::default(),
            backlog: Gauge::default(),
            oldest_overdue: Gauge::default(),
            grants: Family::default(),
            attempts: Family::default(),
            exported: Mutex::new(AttemptCounts::default()),
        };
        registry.register(
            "token_endpoint_calls",
            "Requests to the user token endpoint, by kind (refresh, device_poll, \
             code_exchange) and outcome",
            m.token_endpoint_calls.clone(),
        );
        registry.register(
            "token_endpoint_queue",
            "Requests waiting for a slot of the shared token-endpoint pacer",
            m.token_endpoint_queue.clone(),
        );
        registry.register(
            "token_endpoint_share_per_second",
            "This instance's share of the token-endpoint budget, calls per second (the budget over the instances on one PostgreSQL store; the whole budget alone)",
            m.token_endpoint_share.clone(),
        );
        registry.register(
            "token_endpoint_budget_per_second",
            "The configured token-endpoint budget (refresh.budget_per_sec), calls per second",
            m.token_endpoint_budget.clone(),
        );
        registry.register(
            "refresh_backlog",
            "Refresh deadlines due now and not yet started",
            m.backlog.clone(),
        );
        registry.register(
            "refresh_oldest_overdue_seconds",
            "How long the oldest due refresh deadline has been waiting (0: none overdue)",
            m.oldest_overdue.clone(),
        );
        registry.register(
            "grants",
            "Grants known to the refresh scheduler, by status",
            m.grants.clone(),
        );
        registry.register(
            "refresh_attempts",
            "Refresh requests sent (scheduled and by get_token), by outcome (ok, \
             retryable_error, needs_reauth, outcome_unknown)",
            m.attempts.clone(),
        );
        for status in GRANT_STATUSES {
            let _ = m.grants.get_or_create(&StatusLabel {
                status: status.to_string(),
            });
        }
        for kind in TOKEN_CALL_KINDS {
            let successes: &[&str] = if kind == "device_poll" {
                &DEVICE_POLL_OUTCOMES
            } else {
                &["ok"]
            };
            for outcome in successes.iter().chain(&TOKEN_CALL_ERRORS) {
                let _ = m.token_endpoint_calls.get_or_create(&TokenCallLabels {
                    kind: kind.to_string(),
                    outcome: outcome.to_string(),
                });
            }
        }
        for outcome in REFRESH_ATTEMPT_OUTCOMES {
            let _ = m.attempts.get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            });
        }
        m
    }
}

impl Metrics {
    /// Counts one request to the user token endpoint: `kind` is `refresh`, `device_poll`
    /// or `code_exchange`; `outcome` as in [`TokenCallLabels`].
    pub fn token_endpoint_call(&self, kind: &str, outcome: &str) {
        self.inner
            .refresh
            .token_endpoint_calls
            .get_or_create(&TokenCallLabels {
                kind: kind.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The gauge of requests waiting at the shared token-endpoint pacer, for the pacer to
    /// keep up to date.
    pub fn token_endpoint_queue_gauge(&self) -> Gauge {
        self.inner.refresh.token_endpoint_queue.clone()
    }

    /// The gauge of this instance's share of the token-endpoint budget (calls per
    /// second), for the pacer to keep up to date.
    pub fn token_endpoint_share_gauge(&self) -> Gauge {
        self.inner.refresh.token_endpoint_share.clone()
    }

    /// Sets `lark_auth_token_endpoint_budget_per_second`: the configured budget
    /// (`refresh.budget_per_sec`, calls per second) the pacer holds every token-endpoint
    /// call to, for dashboards to draw the calls against.
    pub fn token_endpoint_budget(&self, per_sec: u32) {
        self.inner
            .refresh
            .token_endpoint_budget
            .set(i64::from(per_sec));
    }

    /// Publishes the refresh scheduler's numbers: backlog, oldest overdue deadline
    /// (seconds), grants by status, and the attempt counters (moved by what was sent
    /// since the last call). Cheap: a few atomic stores and one short lock.
    pub fn refresh_stats(&self, stats: &RefreshSnapshot) {
        let m = &self.inner.refresh;
        m.backlog.set(stats.backlog as i64);
        m.oldest_overdue
            .set(stats.oldest_overdue_ms as f64 / 1000.0);
        for status in GRANT_STATUSES {
            let count = stats.grants.by_name(status);
            m.grants
                .get_or_create(&StatusLabel {
                    status: status.to_string(),
                })
                .set(count as i64);
        }
        let now = stats.attempts;
        let mut exported = m.exported.lock().unwrap_or_else(|e| e.into_inner());
        for (outcome, new, old) in [
            ("ok", now.refreshed, exported.refreshed),
            ("retryable_error", now.retryable, exported.retryable),
            ("needs_reauth", now.needs_reauth, exported.needs_reauth),
            (
                "outcome_unknown",
                now.outcome_unknown,
                exported.outcome_unknown,
            ),
        ] {
            if new > old {
                m.attempts
                    .get_or_create(&OutcomeLabel {
                        outcome: outcome.to_string(),
                    })
                    .inc_by(new - old);
            }
        }
        *exported = now;
    }
}

// ----- authorization sessions (issue 4) -------------------------------------------------

/// Label set of `lark_auth_sessions_finished_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabels {
    /// `authorized`, `denied`, `expired` or `failed`.
    pub outcome: String,
    /// The failure reason (`card_not_sent`, `wrong_user`, …) for `failed`, else `none`.
    pub reason: String,
}

/// The running states of `lark_auth_sessions{state}` (the terminal ones are counted in
/// `lark_auth_sessions_finished_total`).
pub const RUNNING_SESSION_STATES: [&str; 4] =
    ["created", "card_sent", "awaiting_user", "exchanging"];

/// Terminal outcomes of `lark_auth_sessions_finished_total{outcome}` other than `failed`
/// (their `reason` is `none`).
pub const SESSION_OUTCOMES: [&str; 3] = ["authorized", "denied", "expired"];

/// Failure reasons of `lark_auth_sessions_finished_total{outcome="failed",reason}` (the
/// session machine's `FailureReason` names).
pub const SESSION_FAILURE_REASONS: [&str; 7] = [
    "device_authorization_failed",
    "card_not_sent",
    "exchange_failed",
    "wrong_user",
    "identity_check_failed",
    "vault_failed",
    "interrupted",
];

/// The session families: `lark_auth_sessions{state}` (gauge) and
/// `lark_auth_sessions_finished_total{outcome,reason}` (counter).
struct SessionMetrics {
    by_state: Family<StateLabel, Gauge>,
    finished: Family<FinishedLabels, Counter>,
    /// Seconds from a session's creation to `authorized`.
    authorized_after: Histogram,
}

impl SessionMetrics {
    fn register(registry: &mut Registry) -> SessionMetrics {
        let by_state = Family::<StateLabel, Gauge>::default();
        registry.register(
            "sessions",
            "Authorization sessions running in this process, by state (non-terminal states only)",
            by_state.clone(),
        );
        let finished = Family::<FinishedLabels, Counter>::default();
        registry.register(
            "sessions_finished",
            "Authorization sessions that reached a terminal state, by outcome and failure reason",
            finished.clone(),
        );
        // Seconds: 1 s .. ~34 min (sessions last 10 minutes by default).
        let authorized_after = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 12),
        );
        registry.register(
            "authorization_seconds",
            "Time from an authorization session's creation to authorized (the user's \
             click and approval included)",
            authorized_after.clone(),
        );
        for state in RUNNING_SESSION_STATES {
            let _ = by_state.get_or_create(&StateLabel {
                state: state.to_string(),
            });
        }
        let outcomes = SESSION_OUTCOMES.iter().map(|o| (*o, "none"));
        let failures = SESSION_FAILURE_REASONS.iter().map(|r| ("failed", *r));
        for (outcome, reason) in outcomes.chain(failures) {
            let _ = finished.get_or_create(&FinishedLabels {
                outcome: outcome.to_string(),
                reason: reason.to_string(),
            });
        }
        SessionMetrics {
            by_state,
            finished,
            authorized_after,
        }
    }
}

impl Metrics {
    /// A running session entered `state` (`created`, `card_sent`, `awaiting_user`,
    /// `exchanging`): `lark_auth_sessions{state}` + 1.
    pub fn session_entered(&self, state: &str) {
        self.session_gauge(state).inc();
    }

    /// A running session left `state` (a transition, its end, or a shutdown):
    /// `lark_auth_sessions{state}` − 1.
    pub fn session_left(&self, state: &str) {
        self.session_gauge(state).dec();
    }

    /// Current value of `lark_auth_sessions{state}` (benches and tests).
    pub fn sessions_in_state(&self, state: &str) -> i64 {
        self.session_gauge(state).get()
    }

    /// Counts a session that ended with `outcome` (`authorized`, `denied`, `expired`,
    /// `failed`) and `reason` (the failure reason, or `none`).
    pub fn session_finished(&self, outcome: &str, reason: &str) {
        self.inner
            .sessions
            .finished
            .get_or_create(&FinishedLabels {
                outcome: outcome.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// A session became `authorized` `secs` seconds after it was created
    /// (`lark_auth_authorization_seconds`).
    pub fn session_authorized_after(&self, secs: f64) {
        self.inner.sessions.authorized_after.observe(secs);
    }

    fn session_gauge(&self, state: &str) -> Gauge {
        self.inner
            .sessions
            .by_state
            .get_or_create(&StateLabel {
                state: state.to_string(),
            })
            .clone()
    }
}

// ----- end of authorization sessions ---------------------------------------------------

// ----- get_token (issue 17) ------------------------------------------------------------

/// `source` values of `lark_auth_get_token_total`: `cache` (the opened-token cache),
/// `vault` (the stored record, opened), `refresh` (after a refresh flight, joined or
/// started), `error` (the call failed).
pub const GET_TOKEN_SOURCES: [&str; 4] = ["cache", "vault", "refresh", "error"];

/// Label set with one `source` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// Where the answer came from (see [`GET_TOKEN_SOURCES`]).
    pub source: String,
}

/// `lark_auth_get_token_total{source}` and `lark_auth_get_token_seconds`.
struct GetTokenMetrics {
    answers: Family<SourceLabel, Counter>,
    latency: Histogram,
}

impl GetTokenMetrics {
    fn register(registry: &mut Registry) -> GetTokenMetrics {
        let answers = Family::<SourceLabel, Counter>::default();
        registry.register(
            "get_token",
            "get_token answers by where the token came from (cache, vault, refresh) or error",
            answers.clone(),
        );
        // Seconds: 10 µs .. ~5 s.
        let latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.00001, 3.0, 15,
        ));
        registry.register(
            "get_token_seconds",
            "Time to answer get_token (a refresh included when one was needed)",
            latency.clone(),
        );
        for source in GET_TOKEN_SOURCES {
            let _ = answers.get_or_create(&SourceLabel {
                source: source.to_string(),
            });
        }
        GetTokenMetrics { answers, latency }
    }
}

impl Metrics {
    /// Counts a `get_token` answer from `source` (see [`GET_TOKEN_SOURCES`]) and
    /// observes its latency in seconds.
    pub fn get_token_answered(&self, source: &str, secs: f64) {
        let m = &self.inner.get_token;
        m.answers
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .inc();
        m.latency.observe(secs);
    }
}

// ----- end of get_token ----------------------------------------------------------------

// ----- link activity: is the long connection alive but quiet? (issue 12) ---------------

/// Label set of the link-age gauges: the long connection's `conn_id` (its `device_id`, as
/// in the logs), `""` before the first connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabel {
    /// `device_id` of the connection the ages refer to.
    pub conn_id: String,
}

/// When the long connection last received a frame and an event: written by the
/// ConnectionActor (a few atomic stores per read batch, none per event), read at scrape
/// time to export `lark_auth_connection_last_frame_age_seconds` and
/// `lark_auth_connection_last_event_age_seconds`.
///
/// Instants are kept as microseconds since this value was created (the service start).
#[derive(Debug)]
pub struct LinkActivity {
    origin: std::time::Instant,
    /// Last inbound WebSocket frame (data, pong, ping, close) on the current connection,
    /// or the connection's establishment; µs since `origin`.
    last_frame_us: AtomicU64,
    /// Last data frame (event or card callback) on any connection; µs since `origin`.
    last_event_us: AtomicU64,
    /// The connection the frame age refers to (`""` before the first one).
    conn_id: Mutex<Arc<str>>,
}

impl LinkActivity {
    fn new() -> LinkActivity {
        LinkActivity {
            origin: std::time::Instant::now(),
            last_frame_us: AtomicU64::new(0),
            last_event_us: AtomicU64::new(0),
            conn_id: Mutex::new(Arc::from("")),
        }
    }

    fn offset_us(&self, at: std::time::Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_micros() as u64
    }

    /// A connection `conn_id` was established at `at`: the frame age restarts from there
    /// (the handshake answer is its first inbound frame).
    pub fn connected(&self, conn_id: Arc<str>, at: std::time::Instant) {
        *self.conn_id.lock().unwrap_or_else(|e| e.into_inner()) = conn_id;
        self.last_frame_us
            .store(self.offset_us(at), Ordering::Relaxed);
    }

    /// Frames were received at `at`.
    pub fn frame_received(&self, at: std::time::Instant) {
        self.last_frame_us
            .fetch_max(self.offset_us(at), Ordering::Relaxed);
    }

    /// An event or card callback frame was received at `at`.
    pub fn event_received(&self, at: std::time::Instant) {
        self.last_event_us
            .fetch_max(self.offset_us(at), Ordering::Relaxed);
    }

    /// (`conn_id`, seconds since the last frame, seconds since the last event) at `now`.
    /// Before the first frame or event the age counts from the service start.
    pub fn ages(&self, now: std::time::Instant) -> (Arc<str>, f64, f64) {
        let now = self.offset_us(now);
        let age = |at: &AtomicU64| now.saturating_sub(at.load(Ordering::Relaxed)) as f64 / 1e6;
        let conn_id = self
            .conn_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (conn_id, age(&self.last_frame_us), age(&self.last_event_us))
    }
}

/// Exports the link ages at scrape time.
#[derive(Debug)]
struct LinkAgeCollector(Arc<LinkActivity>);

impl Collector for LinkAgeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (conn_id, frame_age, event_age) = self.0.ages(std::time::Instant::now());
        let label = ConnLabel {
            conn_id: conn_id.to_string(),
        };
        for (name, help, value) in [
            (
                "connection_last_frame_age_seconds",
                "Seconds since the long connection last received a frame (pong, event, \
                 any), or since it was established; grows past PingInterval only when the \
                 link stopped delivering",
                frame_age,
            ),
            (
                "connection_last_event_age_seconds",
                "Seconds since the last event or card callback arrived over the long \
                 connection (across reconnects), or since the start",
                event_age,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            metric.encode_family(&label)?.encode_gauge(&value)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// The link activity the ConnectionActor updates, behind the link-age gauges.
    pub fn link_activity(&self) -> Arc<LinkActivity> {
        self.inner.link.clone()
    }
}

// ----- end of link activity ------------------------------------------------------------

// ----- the PostgreSQL store (issue 14) ----------------------------------------------------

/// Label set with one `op` label (a store operation: `get_grant`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// The `Store` method.
    pub op: String,
}

/// Store operations whose latency series exist from the first scrape (the hot ones).
pub const STORE_OPERATIONS: [&str; 2] = ["get_grant", "compare_and_swap_grant"];

/// The PostgreSQL store's families (zero with sled).
struct StoreMetrics {
    seconds: Family<OpLabel, Histogram>,
    pool_busy: Gauge,
    pool_idle: Gauge,
    pool_waiting: Gauge,
    notifications: Counter,
    /// Sessions this instance took over from a holder whose lease lapsed (issue 14).
    lease_takeovers: Counter,
    /// Inputs handed to another instance's session, by kind (issue 14).
    inputs_relayed: Family<KindLabel, Counter>,
}

/// Label set with one `kind` label (`click`, `redirect`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// What was relayed.
    pub kind: String,
}

impl StoreMetrics {
    fn register(registry: &mut Registry) -> StoreMetrics {
        let seconds = Family::<OpLabel, Histogram>::new_with_constructor(|| {
            // Seconds: 50 µs .. ~3 s.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.00005, 3.0, 11,
            ))
        });
        registry.register(
            "store_operation_seconds",
            "PostgreSQL store: time of one store call (pool wait and the statements), by operation",
            seconds.clone(),
        );
        let pool_busy = Gauge::default();
        registry.register(
            "store_pool_busy",
            "PostgreSQL store: pooled connections in use",
            pool_busy.clone(),
        );
        let pool_idle = Gauge::default();
        registry.register(
            "store_pool_idle",
            "PostgreSQL store: pooled connections open and idle",
            pool_idle.clone(),
        );
        let pool_waiting = Gauge::default();
        registry.register(
            "store_pool_waiting",
            "PostgreSQL store: calls waiting for a pooled connection",
            pool_waiting.clone(),
        );
        let notifications = Counter::default();
        registry.register(
            "store_notifications",
            "PostgreSQL store: grant-write notifications heard from the instances on the store (this one's included)",
            notifications.clone(),
        );
        for op in STORE_OPERATIONS {
            let _ = seconds.get_or_create(&OpLabel { op: op.to_string() });
        }
        let lease_takeovers = Counter::default();
        registry.register(
            "session_lease_takeovers",
            "Authorization sessions this instance took over because their holder's lease lapsed (shared store)",
            lease_takeovers.clone(),
        );
        let inputs_relayed = Family::<KindLabel, Counter>::default();
        registry.register(
            "session_inputs_relayed",
            "Clicks and OAuth redirects received for a session another instance holds, handed to it through the store, by kind",
            inputs_relayed.clone(),
        );
        for kind in ["click", "redirect"] {
            let _ = inputs_relayed.get_or_create(&KindLabel {
                kind: kind.to_string(),
            });
        }
        StoreMetrics {
            seconds,
            pool_busy,
            pool_idle,
            pool_waiting,
            notifications,
            lease_takeovers,
            inputs_relayed,
        }
    }
}

impl Metrics {
    /// Records one store call `op` that took `secs` seconds.
    pub fn store_operation(&self, op: &str, secs: f64) {
        self.inner
            .store
            .seconds
            .get_or_create(&OpLabel { op: op.to_string() })
            .observe(secs);
    }

    /// Sets the pool gauges: connections in use, idle, and calls waiting.
    pub fn store_pool(&self, busy: usize, idle: usize, waiting: usize) {
        let s = &self.inner.store;
        s.pool_busy.set(busy as i64);
        s.pool_idle.set(idle as i64);
        s.pool_waiting.set(waiting as i64);
    }

    /// Counts one grant-write notification heard.
    pub fn store_notification(&self) {
        self.inner.store.notifications.inc();
    }

    /// Counts `n` sessions taken over from a holder whose lease lapsed
    /// (`lark_auth_session_lease_takeovers_total`).
    pub fn session_lease_takeovers(&self, n: u64) {
        self.inner.store.lease_takeovers.inc_by(n);
    }

    /// Counts one input (`click`, `redirect`) handed to the instance holding its session
    /// (`lark_auth_session_inputs_relayed_total{kind}`).
    pub fn session_input_relayed(&self, kind: &str) {
        self.inner
            .store
            .inputs_relayed
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }
}

// ----- end of the PostgreSQL store --------------------------------------------------------

// ----- event gateway (issue 15) -----------------------------------------------------------

/// Label set with one `target` label (a `[[events.forward]]` URL).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    /// The target's URL.
    pub target: String,
}

/// Label set with `target` and `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetOutcomeLabels {
    /// The target's URL.
    pub target: String,
    /// Deliveries: `delivered` (2xx), `failed` (anything else; retried) or `dead` (given
    /// up). Callbacks: `answered`, `failed`, `late`.
    pub outcome: String,
}

/// The outcomes of `lark_auth_forward_deliveries_total{target,outcome}`.
pub const FORWARD_OUTCOMES: [&str; 3] = ["delivered", "failed", "dead"];

/// The outcomes of `lark_auth_forward_callbacks_total{target,outcome}`.
pub const FORWARD_CALLBACK_OUTCOMES: [&str; 3] = ["answered", "failed", "late"];

/// The event gateway's families.
struct ForwardMetrics {
    deliveries: Family<TargetOutcomeLabels, Counter>,
    retries: Family<TargetLabel, Counter>,
    pending: Family<TargetLabel, Gauge>,
    dead: Family<TargetLabel, Gauge>,
    latency: Family<TargetLabel, Histogram>,
    outbox_full: Counter,
    callbacks: Family<TargetOutcomeLabels, Counter>,
}

impl ForwardMetrics {
    fn register(registry: &mut Registry) -> ForwardMetrics {
        let deliveries = Family::<TargetOutcomeLabels, Counter>::default();
        registry.register(
            "forward_deliveries",
            "Event gateway delivery tries, by target and outcome (delivered, failed, dead)",
            deliveries.clone(),
        );
        let retries = Family::<TargetLabel, Counter>::default();
        registry.register(
            "forward_retries",
            "Event gateway tries after a delivery's first, by target",
            retries.clone(),
        );
        let pending = Family::<TargetLabel, Gauge>::default();
        registry.register(
            "forward_pending",
            "Deliveries in the event gateway's outbox not yet taken by their target",
            pending.clone(),
        );
        let dead = Family::<TargetLabel, Gauge>::default();
        registry.register(
            "forward_dead",
            "Deliveries given up after events.retry_for_secs, kept in the outbox",
            dead.clone(),
        );
        let latency = Family::<TargetLabel, Histogram>::new_with_constructor(|| {
            // Seconds: 0.5 ms .. ~4.6 h.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0005, 3.0, 18,
            ))
        });
        registry.register(
            "forward_delivery_seconds",
            "Time from an event's arrival to its target's 2xx answer, by target",
            latency.clone(),
        );
        let outbox_full = Counter::default();
        registry.register(
            "forward_outbox_full",
            "Events acked 500 because the event gateway's outbox was full",
            outbox_full.clone(),
        );
        let callbacks = Family::<TargetOutcomeLabels, Counter>::default();
        registry.register(
            "forward_callbacks",
            "Card callbacks of cards lark-auth did not send, POSTed to a target, by target and outcome (answered, failed, late)",
            callbacks.clone(),
        );
        ForwardMetrics {
            callbacks,
            deliveries,
            retries,
            pending,
            dead,
            latency,
            outbox_full,
        }
    }
}

impl Metrics {
    /// Counts one delivery try to `target` ending `outcome` (`delivered`, `failed`,
    /// `dead`); `retry` when it was not the delivery's first try.
    pub fn forward_try(&self, target: &str, outcome: &str, retry: bool) {
        let f = &self.inner.forward;
        f.deliveries
            .get_or_create(&TargetOutcomeLabels {
                target: target.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        if retry {
            f.retries
                .get_or_create(&TargetLabel {
                    target: target.to_string(),
                })
                .inc();
        }
    }

    /// Records a delivery's latency (arrival to 2xx), seconds.
    pub fn forward_latency(&self, target: &str, secs: f64) {
        self.inner
            .forward
            .latency
            .get_or_create(&TargetLabel {
                target: target.to_string(),
            })
            .observe(secs);
    }

    /// Sets the pending and dead gauges of `target`.
    pub fn forward_backlog(&self, target: &str, pending: u64, dead: u64) {
        let label = TargetLabel {
            target: target.to_string(),
        };
        let f = &self.inner.forward;
        f.pending.get_or_create(&label).set(pending as i64);
        f.dead.get_or_create(&label).set(dead as i64);
    }

    /// Creates every series of `target` at 0 (deliveries by outcome, retries, pending,
    /// dead, the latency histogram), so a configured target is in the first scrape and
    /// `rate()`/`increase()` alerts see its first failure.
    pub fn forward_target_known(&self, target: &str) {
        let f = &self.inner.forward;
        for outcome in FORWARD_OUTCOMES {
            let _ = f.deliveries.get_or_create(&TargetOutcomeLabels {
                target: target.to_string(),
                outcome: outcome.to_string(),
            });
        }
        let label = TargetLabel {
            target: target.to_string(),
        };
        let _ = f.retries.get_or_create(&label);
        let _ = f.pending.get_or_create(&label);
        let _ = f.dead.get_or_create(&label);
        let _ = f.latency.get_or_create(&label);
        for outcome in FORWARD_CALLBACK_OUTCOMES {
            let _ = f.callbacks.get_or_create(&TargetOutcomeLabels {
                target: target.to_string(),
                outcome: outcome.to_string(),
            });
        }
    }

    /// Counts one card callback POSTed to `target` ending `outcome` (`answered`,
    /// `failed`, `late`).
    pub fn forward_callback(&self, target: &str, outcome: &str) {
        self.inner
            .forward
            .callbacks
            .get_or_create(&TargetOutcomeLabels {
                target: target.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts an event acked 500 because the outbox was full.
    pub fn forward_outbox_full(&self) {
        self.inner.forward.outbox_full.inc();
    }
}

// ----- end of event gateway --------------------------------------------------------------

// ----- OpenAPI proxy (issue 16) ----------------------------------------------------------

/// `door` values of the proxy's families, exported at 0 from the start: `rest` (the
/// control API route), `sidecar` (the Lark CLI's auth-proxy protocol).
pub const PROXY_DOORS: [&str; 2] = ["rest", "sidecar"];
/// `identity` values of the proxy's families: `user`, `app`.
pub const PROXY_IDENTITIES: [&str; 2] = ["user", "app"];
/// `status` values of `lark_auth_openapi_proxy_requests_total`: the answer's status class.
pub const PROXY_STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Label set of the proxied requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyRequestLabels {
    /// See [`PROXY_DOORS`].
    pub door: String,
    /// See [`PROXY_IDENTITIES`].
    pub identity: String,
    /// See [`PROXY_STATUS_CLASSES`].
    pub status: String,
}

/// Label set with `door` and `identity`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DoorIdentityLabels {
    /// See [`PROXY_DOORS`].
    pub door: String,
    /// See [`PROXY_IDENTITIES`].
    pub identity: String,
}

/// The OpenAPI proxy's families.
struct ProxyMetrics {
    requests: Family<ProxyRequestLabels, Counter>,
    retries: Family<DoorIdentityLabels, Counter>,
    upstream: Histogram,
    scope_authorizations: Counter,
}

impl ProxyMetrics {
    fn register(registry: &mut Registry) -> ProxyMetrics {
        let requests = Family::<ProxyRequestLabels, Counter>::default();
        registry.register(
            "openapi_proxy_requests",
            "OpenAPI calls through the proxy, by door, identity and answer status class",
            requests.clone(),
        );
        let retries = Family::<DoorIdentityLabels, Counter>::default();
        registry.register(
            "openapi_proxy_retries",
            "Proxied calls retried once after a token-expired answer (after a refresh or a tenant token renewal)",
            retries.clone(),
        );
        // Seconds: 0.5 ms .. ~50 s.
        let upstream = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.0005, 2.5, 14,
        ));
        registry.register(
            "openapi_proxy_upstream_seconds",
            "Time from sending a proxied call upstream to its answer's headers (both tries when retried)",
            upstream.clone(),
        );
        let scope_authorizations = Counter::default();
        registry.register(
            "openapi_proxy_scope_authorizations",
            "Authorizations started for scopes a proxied call lacked (99991679)",
            scope_authorizations.clone(),
        );
        for door in PROXY_DOORS {
            for identity in PROXY_IDENTITIES {
                let _ = retries.get_or_create(&DoorIdentityLabels {
                    door: door.to_string(),
                    identity: identity.to_string(),
                });
                for status in PROXY_STATUS_CLASSES {
                    let _ = requests.get_or_create(&ProxyRequestLabels {
                        door: door.to_string(),
                        identity: identity.to_string(),
                        status: status.to_string(),
                    });
                }
            }
        }
        ProxyMetrics {
            requests,
            retries,
            upstream,
            scope_authorizations,
        }
    }
}

impl Metrics {
    /// Counts one proxied call answered `status` (HTTP) through `door` as `identity`;
    /// `upstream_secs` (zero when nothing was sent) goes into the latency histogram,
    /// `retried` counts a retry.
    pub fn proxy_request(
        &self,
        door: &str,
        identity: &str,
        status: u16,
        upstream_secs: f64,
        retried: bool,
    ) {
        let p = &self.inner.proxy;
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        p.requests
            .get_or_create(&ProxyRequestLabels {
                door: door.to_string(),
                identity: identity.to_string(),
                status: class.to_string(),
            })
            .inc();
        if upstream_secs > 0.0 {
            p.upstream.observe(upstream_secs);
        }
        if retried {
            p.retries
                .get_or_create(&DoorIdentityLabels {
                    door: door.to_string(),
                    identity: identity.to_string(),
                })
                .inc();
        }
    }
}

impl Metrics {
    /// Counts an authorization started for missing scopes.
    pub fn proxy_scope_authorization(&self) {
        self.inner.proxy.scope_authorizations.inc();
    }
}

// ----- end of OpenAPI proxy ----------------------------------------------------------------

// ----- dedup marks and the store's size (issue 18) --------------------------------------

/// The store's upkeep families, all present (at 0) from the first scrape.
struct UpkeepMetrics {
    marks: Gauge,
    evicted: Counter,
    disk_bytes: Gauge,
}

impl UpkeepMetrics {
    fn register(registry: &mut Registry) -> UpkeepMetrics {
        let marks = Gauge::default();
        registry.register(
            "dedup_marks",
            "Dedup marks stored (events and card clicks), as of the last upkeep round",
            marks.clone(),
        );
        let evicted = Counter::default();
        registry.register(
            "dedup_marks_evicted",
            "Dedup marks dropped before their expiry because more than sessions.dedup_max_marks were stored",
            evicted.clone(),
        );
        let disk_bytes = Gauge::default();
        registry.register(
            "store_disk_bytes",
            "The store's size on disk, bytes (sled: its files; postgres: the schema's tables with indexes)",
            disk_bytes.clone(),
        );
        UpkeepMetrics {
            marks,
            evicted,
            disk_bytes,
        }
    }
}

impl Metrics {
    /// Records an upkeep round: `marks` stored after it, `evicted` dropped by it before
    /// their expiry, and the store's size on disk (`None`: unknown, left as it was).
    pub fn store_upkeep(&self, marks: u64, evicted: u64, disk_bytes: Option<u64>) {
        let m = &self.inner.upkeep;
        m.marks.set(marks.min(i64::MAX as u64) as i64);
        m.evicted.inc_by(evicted);
        if let Some(bytes) = disk_bytes {
            self.store_disk_bytes(bytes);
        }
    }

    /// Sets `lark_auth_store_disk_bytes` (at start, then by each upkeep round).
    pub fn store_disk_bytes(&self, bytes: u64) {
        self.inner
            .upkeep
            .disk_bytes
            .set(bytes.min(i64::MAX as u64) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_in_the_text_format_with_labels() {
        let m = Metrics::new();
        m.connection_state("connected");
        m.reconnect("silence");
        m.event("im.message.receive_v1");
        m.ack_written(0.0002);
        let text = m.encode();
        assert!(
            text.contains("lark_auth_connection_state{state=\"connected\"} 1"),
            "{text}"
        );
        assert!(text.contains("lark_auth_connection_state{state=\"connecting\"} 0"));
        assert!(text.contains("lark_auth_connection_reconnects_total{cause=\"silence\"} 1"));
        assert!(text.contains("lark_auth_events_total{event_type=\"im.message.receive_v1\"} 1"));
        assert!(text.contains("lark_auth_frames_out_total 1"));
        assert!(text.contains("lark_auth_ack_latency_seconds_count 1"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn refresh_families_are_exported() {
        let m = Metrics::new();
        m.token_endpoint_call("refresh", "ok");
        m.token_endpoint_queue_gauge().set(3);
        let mut stats = RefreshSnapshot {
            backlog: 2,
            oldest_overdue_ms: 1500,
            ..RefreshSnapshot::default()
        };
        stats.grants.active = 7;
        stats.attempts.refreshed = 4;
        m.refresh_stats(&stats);
        stats.attempts.refreshed = 5;
        m.refresh_stats(&stats);
        let text = m.encode();
        for line in [
            "lark_auth_token_endpoint_calls_total{kind=\"refresh\",outcome=\"ok\"} 1",
            "lark_auth_token_endpoint_queue 3",
            "lark_auth_refresh_backlog 2",
            "lark_auth_refresh_oldest_overdue_seconds 1.5",
            "lark_auth_grants{status=\"active\"} 7",
            "lark_auth_grants{status=\"needs_reauth\"} 0",
            "lark_auth_refresh_attempts_total{outcome=\"ok\"} 5",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn a_fresh_registry_exports_every_known_label_set_at_zero() {
        let text = Metrics::new().encode();
        let mut expected: Vec<String> = Vec::new();
        for cause in RECONNECT_CAUSES {
            expected.push(format!(
                "lark_auth_connection_reconnects_total{{cause=\"{cause}\"}} 0"
            ));
        }
        for outcome in CALLBACK_OUTCOMES {
            expected.push(format!(
                "lark_auth_callback_answers_total{{outcome=\"{outcome}\"}} 0"
            ));
        }
        expected.push("lark_auth_events_total{event_type=\"card.action.trigger\"} 0".to_string());
        for (kind, outcome) in [
            ("refresh", "ok"),
            ("refresh", "rate_limited"),
            ("refresh", "outcome_unknown"),
            ("device_poll", "granted"),
            ("device_poll", "slow_down"),
            ("device_poll", "rate_limited"),
            ("code_exchange", "ok"),
            ("code_exchange", "platform_error"),
        ] {
            expected.push(format!(
                "lark_auth_token_endpoint_calls_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} 0"
            ));
        }
        for state in RUNNING_SESSION_STATES {
            expected.push(format!("lark_auth_sessions{{state=\"{state}\"}} 0"));
        }
        for outcome in SESSION_OUTCOMES {
            expected.push(format!(
                "lark_auth_sessions_finished_total{{outcome=\"{outcome}\",reason=\"none\"}} 0"
            ));
        }
        for reason in SESSION_FAILURE_REASONS {
            expected.push(format!(
                "lark_auth_sessions_finished_total{{outcome=\"failed\",reason=\"{reason}\"}} 0"
            ));
        }
        for status in GRANT_STATUSES {
            expected.push(format!("lark_auth_grants{{status=\"{status}\"}} 0"));
        }
        for outcome in REFRESH_ATTEMPT_OUTCOMES {
            expected.push(format!(
                "lark_auth_refresh_attempts_total{{outcome=\"{outcome}\"}} 0"
            ));
        }
        for line in [
            "lark_auth_refresh_backlog 0",
            "lark_auth_refresh_oldest_overdue_seconds 0",
            "lark_auth_token_endpoint_queue 0",
            "lark_auth_token_endpoint_budget_per_second 0",
            "lark_auth_vault_loss_detected 0",
            "lark_auth_frames_in_total 0",
            "lark_auth_ack_latency_seconds_count 0",
            "lark_auth_callback_answer_seconds_count 0",
            "lark_auth_authorization_seconds_count 0",
            "lark_auth_get_token_seconds_count 0",
            "lark_auth_get_token_total{source=\"cache\"} 0",
            "lark_auth_get_token_total{source=\"error\"} 0",
        ] {
            expected.push(line.to_string());
        }
        for line in expected {
            assert!(text.contains(&line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn a_preregistered_counter_counts_from_zero() {
        let m = Metrics::new();
        m.reconnect("silence");
        m.callback_answered("late", 3.0);
        m.token_endpoint_call("refresh", "rate_limited");
        m.get_token_answered("cache", 0.0001);
        m.session_authorized_after(42.0);
        let text = m.encode();
        for line in [
            "lark_auth_connection_reconnects_total{cause=\"silence\"} 1",
            "lark_auth_connection_reconnects_total{cause=\"transport\"} 0",
            "lark_auth_callback_answers_total{outcome=\"late\"} 1",
            "lark_auth_token_endpoint_calls_total{kind=\"refresh\",outcome=\"rate_limited\"} 1",
            "lark_auth_get_token_total{source=\"cache\"} 1",
            "lark_auth_get_token_total{source=\"vault\"} 0",
            "lark_auth_get_token_seconds_count 1",
            "lark_auth_authorization_seconds_count 1",
            "lark_auth_authorization_seconds_sum 42.0",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn two_instances_do_not_share_numbers() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.frame_in();
        assert!(a.encode().contains("lark_auth_frames_in_total 1"));
        assert!(b.encode().contains("lark_auth_frames_in_total 0"));
    }

    #[test]
    fn link_ages_count_from_the_start_then_from_the_last_frame_and_event() {
        use std::time::Duration;

        let m = Metrics::new();
        let link = m.link_activity();
        let t0 = link.origin;
        let secs = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            link.ages(secs(4)),
            (Arc::from(""), 4.0, 4.0),
            "since the start"
        );
        link.connected(Arc::from("conn_a"), secs(5));
        link.frame_received(secs(6));
        link.event_received(secs(6));
        link.frame_received(secs(8));
        assert_eq!(link.ages(secs(10)), (Arc::from("conn_a"), 2.0, 4.0));
        // A new connection: the frame age restarts, the event age goes on.
        link.connected(Arc::from("conn_b"), secs(20));
        assert_eq!(link.ages(secs(21)), (Arc::from("conn_b"), 1.0, 15.0));
        // A clock read before an update it raced with never gives a negative age.
        assert_eq!(link.ages(secs(19)).1, 0.0);

        let text = m.encode();
        for line in [
            "# TYPE lark_auth_connection_last_frame_age_seconds gauge",
            "# TYPE lark_auth_connection_last_event_age_seconds gauge",
            "lark_auth_connection_last_frame_age_seconds{conn_id=\"conn_b\"} ",
            "lark_auth_connection_last_event_age_seconds{conn_id=\"conn_b\"} ",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn session_families_encode_by_state_and_outcome() {
        let m = Metrics::new();
        m.session_entered("created");
        m.session_entered("created");
        m.session_left("created");
        m.session_finished("failed", "card_not_sent");
        let text = m.encode();
        assert!(
            text.contains("lark_auth_sessions{state=\"created\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "lark_auth_sessions_finished_total{outcome=\"failed\",reason=\"card_not_sent\"} 1"
        ));
        assert_eq!(m.sessions_in_state("created"), 1);
    }
}
