//! Authorization sessions: the pure state machine ([`machine`]), the typed cards
//! ([`cards`]), every text a user reads ([`texts`]), the sealed session codec and its
//! store actor ([`store`]), the AuthSessionActor ([`actor`]) and the RouterActor
//! ([`router`], its pure bookkeeping in [`router_state`]) that owns them and consumes the
//! long connection's output; the sessions share the token-endpoint pacer
//! ([`crate::token_endpoint`]).
pub mod actor;
pub mod cards;
pub mod machine;
pub mod router;
pub mod router_state;
pub mod store;
pub mod texts;

use std::time::Duration;

use crate::config::{AuthFlow, Config};

pub use self::actor::SessionView;
pub use self::router::{
    CountRunningSessions, GetPruneStats, GetSession, OAuthRedirect, PruneStats, RedirectError,
    RouterActor, RouterParts, SessionSharing, StartAuthorization, StartAuthorizationWithLocale,
    StartError, StopRouter, Subscribe,
};

/// Everything the router and the sessions need to know from the configuration.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// The app id the grants belong to (`cli_…`).
    pub app_id: String,
    /// The app's name as the cards show it.
    pub app_name: String,
    /// Device (default) or authorization-code flow.
    pub flow: AuthFlow,
    /// Scopes requested when the caller names none (`offline_access` is always added).
    pub default_scopes: Vec<String>,
    /// How long a user has to decide.
    pub session_timeout: Duration,
    /// Registered redirect URI (authorization-code flow).
    pub redirect_uri: String,
    /// Language of cards and toasts when the authorization request names none (the
    /// platform does not tell a user's locale before authorization).
    pub locale: cards::CardLocale,
    /// Open the authorize page inside Feishu through the AppLink wrapper
    /// (`sessions.use_applink`).
    pub use_applink: bool,
    /// Let the Authorize button also report the click (polling speeds up)
    /// (`sessions.report_authorize_click`).
    pub report_authorize_click: bool,
    /// The idle / retry poll cadence (`sessions.poll_*`).
    pub cadence: machine::Cadence,
    /// New authorizations allowed per user within [`per_user_window`](Self::per_user_window).
    /// Default 5.
    pub per_user_limit: usize,
    /// The window of the per-user limit. Default 60 s.
    pub per_user_window: Duration,
    /// Terminal sessions stay readable this long, then are pruned. Default 24 h.
    pub terminal_ttl: Duration,
    /// Lifetime of an event-id dedup mark: at least 7 h, since the platform redelivers an
    /// unacked event after 15 s, 5 min, 1 h and 6 h. Default 7 h 30 min.
    pub dedup_ttl: Duration,
    /// How often old terminal sessions are pruned (expired marks: at least every second).
    /// Default 10 min.
    pub prune_period: Duration,
    /// Most dedup marks kept (`sessions.dedup_max_marks`); over it the oldest are dropped
    /// before their expiry. Default [`crate::store::DEFAULT_MAX_MARKS`].
    pub max_marks: u64,
    /// Token-endpoint requests per second shared by all sessions (`refresh.budget_per_sec`).
    pub poll_budget_per_sec: u32,
    /// Retries of a card send that failed with a retryable error. Default: 5 sends,
    /// backoff 1 s doubling to 30 s, within the session's deadline.
    pub card_send_retry: actor::SendRetry,
}

impl SessionSettings {
    /// Settings from the configuration's `[auth]`, `[sessions]` and `[refresh]` sections.
    /// `app_id` comes from the resolved credentials (empty when unresolved).
    pub fn from_config(config: &Config) -> SessionSettings {
        let app_id = config
            .app
            .credentials
            .as_ref()
            .map(|c| c.app_id.clone())
            .unwrap_or_default();
        let sessions = &config.sessions;
        SessionSettings {
            app_name: config.auth.app_name.clone(),
            app_id,
            flow: config.auth.flow,
            default_scopes: config.auth.default_scopes.clone(),
            session_timeout: config.auth.session_timeout,
            redirect_uri: config.auth.redirect_uri.clone(),
            locale: config.auth.card_locale,
            use_applink: sessions.use_applink,
            report_authorize_click: sessions.report_authorize_click,
            cadence: machine::Cadence {
                idle_factor: sessions.poll_idle_factor,
                idle_min_ms: sessions.poll_idle_min.as_millis() as u64,
                retry_ms: sessions.poll_retry.as_millis() as u64,
            },
            per_user_limit: sessions.per_user_limit,
            per_user_window: sessions.per_user_window,
            terminal_ttl: sessions.terminal_ttl,
            dedup_ttl: sessions.dedup_ttl,
            prune_period: sessions.prune_period,
            max_marks: sessions.dedup_max_marks,
            poll_budget_per_sec: config.refresh.budget_per_sec,
            card_send_retry: actor::SendRetry {
                attempts: sessions.card_send_attempts,
                first_backoff: sessions.card_send_retry_initial,
                max_backoff: sessions.card_send_retry_max,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_sessions_section_gives_the_built_in_settings() {
        let s = SessionSettings::from_config(&Config::default());
        assert_eq!(s.cadence, machine::Cadence::default());
        assert_eq!(s.card_send_retry, actor::SendRetry::default());
        assert_eq!(
            (s.per_user_limit, s.per_user_window),
            (5, Duration::from_secs(60))
        );
        assert_eq!(s.terminal_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(s.dedup_ttl, Duration::from_secs(7 * 3600 + 1800));
        assert_eq!(s.prune_period, Duration::from_secs(600));
        assert!(s.use_applink && s.report_authorize_click);
    }
}
