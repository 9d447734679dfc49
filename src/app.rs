//! `LarkAuth::start`: the whole actor tree on the caller's actix System, and the
//! [`Handle`] to use it.
//!
//! Started here, in order: the sled store and the sealed vault (`TokenVaultActor` on a
//! `SyncArbiter`), the OpenAPI client, the `TokenSource` (single-flight `get_token`) with
//! its `TokenService` actor, the `TenantTokenService` (the app identity of the OpenAPI
//! proxy), the `RefreshScheduler`, the `RouterActor` (sessions), the supervised
//! `ConnectionActor` feeding the router, the `ScopeAuthorizer` (missing-scope
//! authorizations, when `proxy.scope_authorization`), the sidecar listener (the proxy's
//! lark-cli door, when `[sidecar] listen` is set) and the HTTP front with the proxy's
//! REST door (a `Forwarder` per worker). No globals: two
//! instances (different stores and ports) live side by side in one process.
//!
//! Two ways in: [`LarkAuth::start`] reads the secrets from the environment variables the
//! configuration names (as `lark-auth serve` does); [`LarkAuth::start_with`] takes them
//! resolved by the caller (from a secret manager, or generated in tests) and never reads
//! the environment.
//!
//! ```no_run
//! use std::time::Duration;
//! use lark_auth::{Config, LarkAuth};
//!
//! #[actix_web::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // LARK_APP_ID, LARK_APP_SECRET, LARK_AUTH_VAULT_KEY (and LARK_AUTH_API_TOKEN for
//!     // the control API) come from the environment, as config.toml names them.
//!     let config = Config::from_file("config.toml".as_ref())?;
//!     let handle = LarkAuth::start(config)?;
//!     // Card clicks and events arrive once the long connection is up.
//!     handle.wait_connected(Duration::from_secs(30)).await?;
//!     match handle.token("ou_7d8a6e6df7621556ce0d21922b676706ccs").await {
//!         Ok(token) => println!("token valid until {} (unix ms)", token.expires_ms),
//!         Err(e) => eprintln!("no token: {e}"),
//!     }
//!     handle.shutdown(Duration::from_secs(5)).await;
//!     Ok(())
//! }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;

use crate::config::{Config, StoreBackend};
use crate::connection::{
    ConnectionActor, ConnectionError, ConnectionOutputs, ConnectionState, EventReceived, Shutdown,
    StateReport, StateWatch,
};
use crate::events::gateway::{
    EventGateway, ForwardStatus, GatewaySettings, GetForwardStatus, StopGateway,
};
use crate::http::{self, ControlState, HttpFront};
use crate::metrics::Metrics;
use crate::openapi::OpenApiClient;
use crate::refresh::scheduler::{GrantChanged, ReauthNeeded, RefreshScheduler, SchedulerSettings};
use crate::secret::Secret;
use crate::session::router::{
    ForwardForeignClicks, GetSession, StartAuthorization, StartError as SessionStartError,
    StopRouter, Subscribe,
};
use crate::session::store::{SessionStoreError, expire_unsure_sessions};
use crate::session::{RouterActor, RouterParts, SessionSettings, SessionView};
use crate::store::{LossReport, PostgresOptions, PostgresStore, SledStore, Store, StoreError};
use crate::token_endpoint::{AcquireSlot, SlotPriority, TokenEndpointPacer};
use crate::tokens::{
    AccessToken, GetToken, GetTokenError, OpenApiRefresher, TokenCache, TokenService, TokenSource,
};
use crate::vault::actor::Revoke;
use crate::vault::{DuePolicy, GrantSummary, Keyring, TokenVaultActor, Vault, VaultError};

/// Threads of the vault's `SyncArbiter` (sled reads, sealing, fsync).
const VAULT_THREADS: usize = 2;

/// What [`LarkAuth::start_with`] needs besides the configuration: resolved secrets.
pub struct StartOptions {
    /// The vault keyring (`Keyring::from_config` with an environment lookup).
    pub keyring: Keyring,
    /// The control API's bearer token; `None` makes every protected route answer 401.
    pub api_token: Option<Secret<String>>,
    /// Start the HTTP front on `config.http.listen`. Default true.
    pub http: bool,
    /// Start even when the vault has lost writes it had acknowledged (`serve
    /// --accept-loss`): the loss is logged at `error`, shown by `/healthz` (`vault_loss`),
    /// the `lark_auth_vault_loss_detected` gauge and [`Handle::vault_loss`], every
    /// authorization session that was not finished is expired, and the store's record of
    /// acknowledged writes is reset so the next start does not refuse again. Default false:
    /// [`StartError::VaultLoss`].
    pub accept_loss: bool,
}

/// Why the service could not start. Each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid or a variable it names is unset (the message names
    /// the key and the variable).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The app id / secret were not resolved: call `Config::resolve_credentials` first.
    #[error("no app credentials: set the app id and secret (see [app] in config.toml)")]
    MissingCredentials,
    /// The store directory cannot be opened (another lark-auth holds it, permissions).
    #[error("cannot open the vault store: {0}")]
    Store(#[from] StoreError),
    /// The vault refused the key or the data (wrong key: nothing was written).
    #[error("cannot open the vault: {0}")]
    Vault(#[from] VaultError),
    /// The vault no longer holds writes it had acknowledged (damaged files after a crash
    /// or a disk fault, or sled's files restored from an older copy). Nothing was written.
    /// Restore the latest backup of the vault directory (`docs/operations.md`, "Restore a
    /// damaged vault"), or start with [`StartOptions::accept_loss`] (`serve
    /// --accept-loss`) to run on what is left.
    #[error(
        "{0}. Restore the latest backup of the vault directory (docs/operations.md, \
         \"Restore a damaged vault\"), or start with `lark-auth serve --accept-loss` to run \
         on what is left"
    )]
    VaultLoss(LossReport),
    /// The session store could not be read.
    #[error("cannot load sessions: {0}")]
    Sessions(#[from] SessionStoreError),
    /// TLS setup failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The HTTP front could not bind `http.listen`.
    #[error("cannot listen on {addr}: {source} (change http.listen or stop what uses it)")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// The sidecar door could not bind `sidecar.listen`.
    #[error("cannot listen on {addr}: {source} (change sidecar.listen or stop what uses it)")]
    Sidecar {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a [`Handle`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The service is stopping or stopped.
    #[error("lark-auth is not running")]
    Stopped,
    /// The vault refused the operation.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// [`Handle::wait_connected`]: the long connection was not connected within the time
    /// given (the states it went through are in [`Handle::connection_states`] and in the
    /// log, with their causes).
    #[error("lark-auth's long connection did not connect within {} s", .within.as_secs_f64())]
    NotConnected {
        /// The time waited.
        within: Duration,
    },
}

/// Turns the scheduler's [`ReauthNeeded`] (sent once per grant, only when
/// `refresh.reauth_card` is on) into a fresh authorization: one new card to the user.
struct ReauthRelay {
    router: Addr<RouterActor>,
}

impl Actor for ReauthRelay {
    type Context = Context<Self>;
}

impl Handler<ReauthNeeded> for ReauthRelay {
    type Result = ();

    fn handle(&mut self, msg: ReauthNeeded, _: &mut Context<Self>) {
        tracing::info!(
            open_id = %msg.open_id,
            code = msg.code,
            "grant needs re-authorization; sending the user a new authorization card"
        );
        self.router.do_send(StartAuthorization {
            open_id: msg.open_id,
            scopes: Vec::new(),
        });
    }
}

/// Entry point of the library.
pub struct LarkAuth;

impl LarkAuth {
    /// Starts everything on the current actix System (call it inside `System::block_on`,
    /// `#[actix_rt::main]` or `#[actix_web::main]`), reading the secrets from the
    /// environment variables `config` names: the app id and secret (`[app]`, unless
    /// already resolved), the vault key(s) (`[vault] key_env`, `old_keys`) and the control
    /// API bearer token (`[http] api_token_env`; when unset, the control API still starts
    /// but every protected route answers 401, and a warning is logged).
    ///
    /// # Errors
    /// [`StartError::Config`] for an invalid config or an unset id/secret variable,
    /// [`StartError::Vault`] for a missing or malformed vault key, and everything
    /// [`LarkAuth::start_with`] returns.
    pub fn start(mut config: Config) -> Result<Handle, StartError> {
        let env = |k: &str| std::env::var(k).ok();
        config.validate()?;
        if config.app.credentials.is_none() {
            config.resolve_credentials(env)?;
        }
        if config.store.url.is_none() {
            config.resolve_store_url(env)?;
        }
        if config.check_forward_keys().is_err() {
            config.resolve_forward_keys(env)?;
        }
        if config.check_sidecar_keys().is_err() {
            config.resolve_sidecar_keys(env)?;
        }
        let keyring = Keyring::from_config(&config.vault, env)?;
        let api_token = env(&config.http.api_token_env)
            .filter(|t| !t.is_empty())
            .map(Secret::new);
        if api_token.is_none() {
            tracing::warn!(
                env = %config.http.api_token_env,
                "no control API token in the environment: protected routes answer 401"
            );
        }
        LarkAuth::start_with(
            config,
            StartOptions {
                keyring,
                api_token,
                http: true,
                accept_loss: false,
            },
        )
    }

    /// Starts everything on the current actix System with secrets the caller resolved;
    /// never reads the environment.
    ///
    /// # Errors
    /// [`StartError`]: invalid config, missing credentials, the store locked or
    /// unreadable, a wrong vault key (nothing is overwritten), a vault that lost
    /// acknowledged writes ([`StartError::VaultLoss`] unless
    /// [`StartOptions::accept_loss`]), the HTTP address in use.
    pub fn start_with(config: Config, options: StartOptions) -> Result<Handle, StartError> {
        config.validate()?;
        config.check_forward_keys()?;
        config.check_sidecar_keys()?;
        let credentials = config
            .app
            .credentials
            .clone()
            .ok_or(StartError::MissingCredentials)?;
        let metrics = Metrics::new();

        let store = open_store(&config, &metrics)?;
        let vault_loss = store.detected_loss();
        if let Some(loss) = &vault_loss
            && !options.accept_loss
        {
            return Err(StartError::VaultLoss(loss.clone()));
        }
        let vault = Vault::open(
            store.clone(),
            credentials.app_id.clone(),
            options.keyring.clone(),
            DuePolicy {
                keepalive_lead: config.refresh.keepalive,
            },
        )?;
        if let Some(loss) = &vault_loss {
            accept_loss(&*store, loss, &options.keyring, &metrics)?;
        }
        // The size on disk (after the vault's first writes, flushed) and the mark count
        // from the first scrape (the upkeep rounds keep them current).
        if let Ok(Some(bytes)) = store.disk_bytes() {
            metrics.store_disk_bytes(bytes);
        }
        if let Ok(marks) = store.mark_count() {
            metrics.store_upkeep(marks, 0, None);
        }
        let vault_core = vault.clone();
        let vault = TokenVaultActor::start(vault, VAULT_THREADS);
        let client = OpenApiClient::new(&config)?;
        client.set_metrics(metrics.clone());
        // One token-endpoint budget for device polls, code exchanges and refreshes.
        metrics.token_endpoint_budget(config.refresh.budget_per_sec);
        let endpoint_pacer = TokenEndpointPacer::new(config.refresh.budget_per_sec)
            .with_queue_gauge(metrics.token_endpoint_queue_gauge())
            .with_share_gauge(metrics.token_endpoint_share_gauge())
            .start();
        if config.store.backend == crate::config::StoreBackend::Postgres {
            // Several instances on the store share the budget.
            crate::token_endpoint::share::BudgetShare::new(store.clone(), endpoint_pacer.clone())
                .start();
        }
        let mut source = TokenSource::new(
            vault.clone(),
            OpenApiRefresher::new(client.clone()),
            config.refresh.margin,
        );
        if config.store.backend == crate::config::StoreBackend::Postgres {
            // Another instance's write-ahead marker is its refresh in flight.
            source = source.with_shared_store(config.store.lease);
        }
        let source = source
            .with_metrics(metrics.clone())
            .with_token_cache(TokenCache::for_vault(
                &vault_core,
                config.vault.token_cache_entries,
            ))
            .with_slot_gate({
                let pacer = endpoint_pacer.clone();
                Box::new(move || {
                    // A get_token caller waits for this refresh: ahead of polls.
                    let slot = pacer.send(AcquireSlot {
                        priority: SlotPriority::Waiting,
                    });
                    Box::pin(async move {
                        let _ = slot.await;
                    })
                })
            });
        let (gateway, hold) = if config.events.forward.is_empty() {
            (None, None)
        } else {
            let started = EventGateway::start(
                store.clone(),
                GatewaySettings::from_config(&config),
                crate::clock::Clock::system(),
                Some(metrics.clone()),
            )?;
            (Some(started.gateway), Some(started.hold))
        };
        let tenant = crate::proxy::TenantTokenService::new(client.clone()).start();
        let router_parts = RouterParts {
            client,
            store,
            keyring: options.keyring,
            vault: vault.clone(),
            settings: SessionSettings::from_config(&config),
            metrics: metrics.clone(),
            clock: crate::clock::Clock::system(),
        };
        let router = if config.store.backend == StoreBackend::Postgres {
            // Sessions held under leases, inputs handed to their holder, takeover.
            RouterActor::start_shared(
                router_parts,
                endpoint_pacer.clone(),
                crate::session::SessionSharing::new(config.store.lease)
                    .within_callback_budget(config.connection.callback_budget),
            )?
        } else {
            RouterActor::start_with_pacer(router_parts, endpoint_pacer.clone())?
        };
        let reauth = ReauthRelay {
            router: router.clone(),
        }
        .start();
        let scheduler = RefreshScheduler::new(
            source.clone(),
            vault.clone(),
            SchedulerSettings::from_config(&config.refresh),
        )
        .with_reauth_recipient(reauth.recipient())
        .with_token_endpoint_pacer(endpoint_pacer)
        .with_metrics(metrics.clone())
        .start();
        // New grants (from sessions) and revocations reach the scheduler, so a grant is
        // kept alive even if nobody asks for its token before the refresh token lapses.
        let changes = scheduler.clone().recipient::<GrantChanged>();
        vault_core.on_grant_changed(Box::new(move |open_id| {
            changes.do_send(GrantChanged {
                open_id: open_id.to_string(),
            })
        }));
        // Several instances on one store: their grant writes reach this instance's token
        // cache and scheduler too (PostgreSQL LISTEN/NOTIFY; nothing to watch on sled).
        vault_core.watch_store_writes();
        let tokens = TokenService::new(source).start();

        if let Some(gateway) = &gateway {
            router.do_send(ForwardForeignClicks(gateway.clone().recipient()));
        }
        let router_outputs = RouterActor::outputs(&router);
        let (watcher, states) = StateWatch::start(Some(router_outputs.states.clone()));
        let outputs = ConnectionOutputs {
            states: watcher.recipient(),
            ..router_outputs
        };
        let mut connection = ConnectionActor::new(
            credentials,
            config.open_base_url(),
            config.connection.clone(),
            outputs,
        )?
        .with_metrics(metrics.clone());
        if let Some(hold) = hold {
            let events = config.events.clone();
            connection = connection.with_outbox(
                hold,
                Arc::new(move |event_type: &str| events.forwards(event_type)),
            );
        }
        let connection = connection.start_supervised();

        let mut proxy =
            crate::proxy::ProxySettings::new(&config, tokens.clone(), tenant, metrics.clone())
                .map_err(|e| crate::config::ConfigError::Invalid {
                    key: "proxy",
                    reason: e.to_string(),
                })?;
        if config.proxy.scope_authorization {
            proxy.scopes = Some(
                crate::proxy::ScopeAuthorizer::new(router.clone(), vault.clone(), metrics.clone())
                    .start(),
            );
        }
        let sidecar = match config.sidecar.listen_addr()? {
            Some(listen) => {
                let settings = crate::proxy::sidecar::SidecarSettings::new(&config, proxy.clone())?;
                let front = crate::proxy::sidecar::start(listen, settings).map_err(|source| {
                    StartError::Sidecar {
                        addr: listen,
                        source,
                    }
                })?;
                tracing::info!(
                    listen = %front.local_addr,
                    clients = config.sidecar.clients.len(),
                    "sidecar (lark-cli auth proxy) listening"
                );
                Some(front)
            }
            None => None,
        };
        let http = if options.http {
            let mut state = ControlState::new(options.api_token.as_ref(), metrics.clone());
            state.connection = Some(connection.clone());
            state.vault = Some(vault.clone());
            state.router = Some(router.clone());
            state.tokens = Some(tokens.clone());
            state.vault_loss = vault_loss.as_ref().map(|l| l.to_string());
            state.gateway = gateway.clone();
            state.proxy = Some(proxy);
            let front =
                http::start(config.http.listen, state).map_err(|source| StartError::Http {
                    addr: config.http.listen,
                    source,
                })?;
            tracing::info!(listen = %front.local_addr, "control API listening");
            Some(front)
        } else {
            None
        };
        Ok(Handle {
            connection,
            router,
            vault,
            tokens,
            scheduler: scheduler.recipient(),
            states,
            http,
            sidecar,
            metrics,
            vault_loss,
            gateway,
        })
    }
}

/// Opens the configured store: sled in `vault.path`, or PostgreSQL (`[store]`; the URL
/// resolved into `store.url`), whose schema is created or migrated here.
fn open_store(config: &Config, metrics: &Metrics) -> Result<Arc<dyn Store>, StartError> {
    match config.store.backend {
        StoreBackend::Sled => Ok(Arc::new(SledStore::open_with_cache(
            &config.vault.path,
            config.vault.cache_mib << 20,
        )?)),
        StoreBackend::Postgres => {
            let url =
                config
                    .store
                    .url
                    .clone()
                    .ok_or_else(|| crate::config::ConfigError::MissingEnv {
                        what: "PostgreSQL connection URL",
                        env: config.store.url_env.clone(),
                        key: "store.url_env",
                    })?;
            let store = PostgresStore::open(&PostgresOptions::new(url, &config.store.schema))?;
            store.set_metrics(metrics.clone());
            Ok(Arc::new(store))
        }
    }
}

/// Starts on a vault that lost acknowledged writes ([`StartOptions::accept_loss`]):
/// reports the loss, expires the sessions that were not finished (their newest
/// transitions may be lost; see [`expire_unsure_sessions`]), and resets the store's record
/// of acknowledged writes (flushed).
fn accept_loss(
    store: &dyn Store,
    loss: &LossReport,
    keyring: &Keyring,
    metrics: &Metrics,
) -> Result<(), StartError> {
    tracing::error!(
        loss = %loss,
        "starting on a vault that lost acknowledged writes (--accept-loss): users whose grant is \
         gone or stale must authorize again"
    );
    metrics.vault_loss_detected(true);
    let expired = expire_unsure_sessions(store, keyring, crate::clock::unix_now_ms())?;
    if expired > 0 {
        tracing::warn!(
            expired,
            "authorization sessions that were not finished were expired instead of resumed \
             (their last changes may be among the lost writes)"
        );
    }
    store.accept_loss()?;
    Ok(())
}

/// The running service. Cheap to clone parts of; `shutdown` stops it.
pub struct Handle {
    connection: Addr<ConnectionActor>,
    router: Addr<RouterActor>,
    vault: Addr<TokenVaultActor>,
    tokens: Addr<TokenService>,
    scheduler: Recipient<crate::refresh::scheduler::GetRefreshStats>,
    states: watch::Receiver<StateReport>,
    http: Option<HttpFront>,
    sidecar: Option<crate::proxy::sidecar::SidecarFront>,
    metrics: Metrics,
    vault_loss: Option<LossReport>,
    gateway: Option<Addr<EventGateway>>,
}

impl Handle {
    /// Starts (or returns the in-flight) authorization of `open_id` for `scopes` (the
    /// configured defaults when empty; `offline_access` is always added).
    ///
    /// # Errors
    /// [`SessionStartError::RateLimited`] past the per-user limit (5 a minute by default),
    /// `InvalidOpenId`, `Store`, `Stopping`.
    pub async fn authorize(
        &self,
        open_id: &str,
        scopes: Vec<String>,
    ) -> Result<SessionView, SessionStartError> {
        self.router
            .send(StartAuthorization {
                open_id: open_id.to_string(),
                scopes,
            })
            .await
            .map_err(|_| SessionStartError::Stopping)?
    }

    /// The session's current view; `Ok(None)` when unknown or pruned.
    ///
    /// # Errors
    /// The session store's error; [`SessionStoreError`] when stopped.
    pub async fn session(&self, session_id: &str) -> Result<Option<SessionView>, HandleError> {
        match self
            .router
            .send(GetSession {
                session_id: session_id.to_string(),
            })
            .await
        {
            Ok(Ok(view)) => Ok(view),
            Ok(Err(_)) | Err(_) => Err(HandleError::Stopped),
        }
    }

    /// A valid `user_access_token` for `open_id` (at least `refresh.margin_secs` left),
    /// refreshing first when needed; at most one refresh per grant runs at a time.
    ///
    /// ```no_run
    /// use lark_auth::tokens::GetTokenError;
    ///
    /// # async fn example(handle: &lark_auth::Handle) {
    /// let open_id = "ou_7d8a6e6df7621556ce0d21922b676706ccs";
    /// match handle.token(open_id).await {
    ///     Ok(token) => {
    ///         // Call the OpenAPI with it; never log it.
    ///         let _bearer = format!("Bearer {}", token.token.expose());
    ///     }
    ///     // No consent yet: send the user an authorization card.
    ///     Err(GetTokenError::NoGrant) => drop(handle.authorize(open_id, vec![]).await),
    ///     Err(e) => eprintln!("no token for {open_id}: {e}"),
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`GetTokenError`]: `NoGrant` (authorize first), `NeedsReauth`, `Revoked`,
    /// `RefreshOutcomeUnknown`, `RefreshFailed` (retry after its `retry_after`; only when
    /// no stored token is valid beyond the margin), vault errors.
    pub async fn token(&self, open_id: &str) -> Result<AccessToken, GetTokenError> {
        self.tokens
            .send(GetToken {
                open_id: open_id.to_string(),
            })
            .await
            .map_err(|_| GetTokenError::VaultUnavailable)?
    }

    /// Deletes the grant's tokens and records the revocation. `Ok(None)`: no grant.
    ///
    /// # Errors
    /// [`HandleError`].
    pub async fn revoke(&self, open_id: &str) -> Result<Option<GrantSummary>, HandleError> {
        Ok(self
            .vault
            .send(Revoke {
                open_id: open_id.to_string(),
            })
            .await
            .map_err(|_| HandleError::Stopped)??)
    }

    /// Delivers every long-connection event of `event_type` (e.g. `im.message.receive_v1`)
    /// to `recipient`, after it was acked and deduplicated.
    ///
    /// ```no_run
    /// use actix::prelude::*;
    /// use lark_auth::connection::EventReceived;
    ///
    /// struct Messages;
    ///
    /// impl Actor for Messages {
    ///     type Context = Context<Self>;
    /// }
    ///
    /// impl Handler<EventReceived> for Messages {
    ///     type Result = ();
    ///
    ///     fn handle(&mut self, event: EventReceived, _: &mut Context<Self>) {
    ///         // `payload` is the event's whole JSON envelope.
    ///         println!("{} {} ({} bytes)", event.event_type, event.event_id, event.payload.len());
    ///     }
    /// }
    ///
    /// # fn example(handle: &lark_auth::Handle) {
    /// handle.subscribe("im.message.receive_v1", Messages.start().recipient());
    /// # }
    /// ```
    pub fn subscribe(&self, event_type: &str, recipient: Recipient<EventReceived>) {
        self.router.do_send(Subscribe {
            event_type: event_type.to_string(),
            recipient,
        });
    }

    /// The refresh scheduler's counters: grants and deadlines tracked, backlog, oldest
    /// overdue deadline, refresh attempts by outcome, grants by status.
    ///
    /// # Errors
    /// [`HandleError::Stopped`].
    pub async fn refresh_stats(
        &self,
    ) -> Result<crate::refresh::scheduler::RefreshStats, HandleError> {
        self.scheduler
            .send(crate::refresh::scheduler::GetRefreshStats)
            .await
            .map_err(|_| HandleError::Stopped)
    }

    /// The event gateway's outbox per `[[events.forward]]` target (empty without
    /// targets).
    ///
    /// # Errors
    /// [`HandleError::Stopped`].
    pub async fn forward_status(&self) -> Result<Vec<ForwardStatus>, HandleError> {
        match &self.gateway {
            None => Ok(Vec::new()),
            Some(g) => g
                .send(GetForwardStatus)
                .await
                .map_err(|_| HandleError::Stopped),
        }
    }

    /// The connection state as it changes.
    pub fn connection_states(&self) -> watch::Receiver<StateReport> {
        self.states.clone()
    }

    /// Waits until the long connection is connected (returns at once when it is), at
    /// most `within`: what an embedding program awaits after [`LarkAuth::start_with`]
    /// before it relies on events and card clicks arriving.
    ///
    /// # Errors
    /// [`HandleError::NotConnected`] after `within`; [`HandleError::Stopped`] when the
    /// service stopped meanwhile.
    pub async fn wait_connected(&self, within: Duration) -> Result<(), HandleError> {
        let mut states = self.states.clone();
        let connected = states.wait_for(|r| r.state == ConnectionState::Connected);
        match tokio::time::timeout(within, connected).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(HandleError::Stopped),
            Err(_) => Err(HandleError::NotConnected { within }),
        }
    }

    /// The address the control API listens on, when started.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.local_addr)
    }

    /// The address the sidecar door listens on, when `[sidecar] listen` is set.
    pub fn sidecar_addr(&self) -> Option<SocketAddr> {
        self.sidecar.as_ref().map(|h| h.local_addr)
    }

    /// This instance's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The loss of acknowledged writes this instance was started on with
    /// [`StartOptions::accept_loss`]; `None` when the vault was whole.
    pub fn vault_loss(&self) -> Option<&LossReport> {
        self.vault_loss.as_ref()
    }

    /// Stops this instance's long connection and its authorization sessions **without**
    /// handing their leases back, as if the process had been killed: on a shared store
    /// the other instances take the sessions over once the leases lapse. For tests of the
    /// takeover; the rest of the instance (HTTP, refreshes) keeps running until dropped
    /// with the System.
    #[doc(hidden)]
    pub async fn abandon_sessions(mut self, grace: Duration) {
        self.connection.do_send(Shutdown);
        let stopped = self
            .states
            .wait_for(|r| matches!(r.state, ConnectionState::Stopped | ConnectionState::Failed));
        let _ = tokio::time::timeout(grace, stopped).await;
        let _ = self
            .router
            .send(crate::session::router::AbandonSessions)
            .await;
    }

    /// Stops gracefully within about `grace`: the connection closes after its queued
    /// acks, sessions are persisted (they resume on the next start), the store is flushed,
    /// the event gateway stops (undelivered entries stay in the outbox), the HTTP front
    /// stops. On a shared store the sessions' leases are handed back, so another
    /// instance carries them on at once.
    pub async fn shutdown(mut self, grace: Duration) {
        self.connection.do_send(Shutdown);
        let stopped = self
            .states
            .wait_for(|r| matches!(r.state, ConnectionState::Stopped | ConnectionState::Failed));
        let _ = tokio::time::timeout(grace, stopped).await;
        let _ = tokio::time::timeout(grace, self.router.send(StopRouter)).await;
        if let Some(gateway) = &self.gateway {
            // Its entries stay in the store (on PostgreSQL, another instance takes them
            // over once their lease lapses).
            let _ = tokio::time::timeout(grace, gateway.send(StopGateway)).await;
        }
        if let Some(http) = self.http.take() {
            http.handle.stop(true).await;
        }
        if let Some(sidecar) = self.sidecar.take() {
            sidecar.handle.stop(true).await;
        }
        // Let the Close frame and the last acks leave the socket.
        actix_rt::time::sleep(Duration::from_millis(300)).await;
    }
}
