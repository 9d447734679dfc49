//! Typed configuration: the TOML file of `INTERFACE.md`, with defaults, validation, and the
//! resolution of secrets from the environment.
//!
//! The library never reads files or the environment by itself: the binary calls
//! [`Config::from_toml_str`] and [`Config::resolve_credentials`] with an environment lookup,
//! then passes the result to the library. Durations are whole seconds in TOML (`_secs`
//! keys) and [`Duration`]s in code, so tests can use sub-second values
//! ([`Config::for_tests`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Errors found while loading or validating configuration. Each names the key at fault;
/// fix the file or the environment and start again.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path tried.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or a key has the wrong type (the message names the key).
    #[error("invalid config: {0}")]
    Parse(String),
    /// A key has a value outside its allowed range or form.
    #[error("invalid config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `connection.liveness_margin_secs`.
        key: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A secret or identifier that must come from the environment is not set.
    #[error("missing {what}: set the environment variable `{env}` (named by config key `{key}`)")]
    MissingEnv {
        /// What is missing, e.g. "app secret".
        what: &'static str,
        /// The environment variable name.
        env: String,
        /// The config key naming the variable.
        key: &'static str,
    },
}

/// Which platform's default hosts to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Brand {
    /// Feishu (China): `open.feishu.cn`, `accounts.feishu.cn`.
    #[default]
    Feishu,
    /// Lark (international): `open.larksuite.com`, `accounts.larksuite.com`.
    Lark,
}

/// The whole configuration. Every key has a default except the app credentials.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[app]`: which app, and where its credentials come from.
    pub app: AppConfig,
    /// `[endpoints]`: base URLs (defaults follow `app.brand`).
    pub endpoints: EndpointsConfig,
    /// `[auth]`: how users are asked for consent.
    pub auth: AuthConfig,
    /// `[vault]`: where grants are stored.
    pub vault: VaultConfig,
    /// `[refresh]`: token refresh policy.
    pub refresh: RefreshConfig,
    /// `[http]`: the control API and OAuth landing.
    pub http: HttpConfig,
    /// `[log]`: log format and level.
    pub log: LogConfig,
    /// `[connection]`: long-connection client limits and timeouts.
    pub connection: ConnectionConfig,
    /// `[openapi]`: the HTTP OpenAPI client (tokens, cards, OAuth, user info).
    pub openapi: OpenApiConfig,
    /// `[sessions]`: limits, lifetimes and retries of the authorization sessions.
    pub sessions: SessionsConfig,
    /// `[store]`: which store holds grants, sessions and marks (sled or PostgreSQL).
    pub store: StoreConfig,
    /// `[events]` and its `[[events.forward]]` targets: the event gateway.
    pub events: EventsConfig,
    /// `[proxy]`: the OpenAPI proxy ("Acting as the user", `crate::proxy`).
    pub proxy: ProxyConfig,
    /// `[sidecar]` and its `[[sidecar.clients]]`: the official Lark CLI's auth-proxy door
    /// of the OpenAPI proxy (`crate::proxy::sidecar`).
    pub sidecar: SidecarConfig,
}

/// Shortest sidecar client key accepted, characters (the key is used as text bytes;
/// `lark-auth sidecar new-client` makes 64 hex characters, 32 random bytes).
pub const SIDECAR_MIN_KEY_LEN: usize = 32;

/// `[sidecar]` section: the auth-proxy ("sidecar") listener of the official Lark CLI's
/// protocol v1. Off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SidecarConfig {
    /// Listen address, e.g. `127.0.0.1:16384`. Default `""`: off.
    pub listen: String,
    /// `[[sidecar.clients]]`: who may call, each with its own HMAC key.
    pub clients: Vec<SidecarClientConfig>,
}

/// An identity a sidecar client may ask for (`X-Lark-Proxy-Identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarIdentity {
    /// `user`: the bound user's `user_access_token`.
    User,
    /// `bot`: the app's `tenant_access_token`.
    Bot,
}

impl SidecarIdentity {
    /// `user` or `bot`, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SidecarIdentity::User => "user",
            SidecarIdentity::Bot => "bot",
        }
    }
}

/// One `[[sidecar.clients]]` entry.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SidecarClientConfig {
    /// The client's name, in logs and metrics (unique). Required.
    pub name: String,
    /// Environment variable holding this client's HMAC key (at least
    /// [`SIDECAR_MIN_KEY_LEN`] characters, used as text bytes). Required.
    pub key_env: String,
    /// The user this client acts as (`ou_…`); `""` (the default): the bot identity only.
    pub open_id: String,
    /// The identities it may ask for. Default `["user", "bot"]`.
    pub identities: Vec<SidecarIdentity>,
    /// The key, read from `key_env` by [`Config::resolve_sidecar_keys`]; never in the
    /// file, never printed.
    #[serde(skip)]
    pub key: Option<Secret<String>>,
}

impl Default for SidecarClientConfig {
    fn default() -> Self {
        SidecarClientConfig {
            name: String::new(),
            key_env: String::new(),
            open_id: String::new(),
            identities: vec![SidecarIdentity::User, SidecarIdentity::Bot],
            key: None,
        }
    }
}

impl std::fmt::Debug for SidecarClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarClientConfig")
            .field("name", &self.name)
            .field("key_env", &self.key_env)
            .field("open_id", &self.open_id)
            .field("identities", &self.identities)
            .field("key", &self.key.as_ref().map(|_| crate::secret::REDACTED))
            .finish()
    }
}

impl SidecarConfig {
    /// The listen address when the sidecar door is on (`listen` set).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an address that does not parse.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.listen.trim().is_empty() {
            return Ok(None);
        }
        self.listen
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::Invalid {
                key: "sidecar.listen",
                reason: format!(
                    "`{}` is not an address such as 127.0.0.1:16384 (or \"\" for off)",
                    self.listen.escape_debug()
                ),
            })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                reason: reason.into(),
            }
        }
        self.listen_addr()?;
        let mut names = std::collections::HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            let n = i + 1;
            if c.name.trim().is_empty()
                || !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(invalid(
                    "sidecar.clients.name",
                    format!("client {n}: a name of letters, digits, `-`, `_` or `.` is required"),
                ));
            }
            if !names.insert(c.name.as_str()) {
                return Err(invalid(
                    "sidecar.clients.name",
                    format!("client {n}: `{}` is configured twice", c.name),
                ));
            }
            if c.key_env.trim().is_empty() {
                return Err(invalid(
                    "sidecar.clients.key_env",
                    format!(
                        "client {n} ({}): name the environment variable holding its key",
                        c.name
                    ),
                ));
            }
            // The platform's open_id shape (as `openapi::check_open_id`, a layer above).
            let shaped = c.open_id.len() <= 64
                && c.open_id.strip_prefix("ou_").is_some_and(|rest| {
                    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
            if !c.open_id.is_empty() && !shaped {
                return Err(invalid(
                    "sidecar.clients.open_id",
                    format!(
                        "client {n} ({}): `{}` is not a user's open_id (`ou_` then letters, digits or `_`), or \"\" for the bot identity only",
                        c.name,
                        c.open_id.escape_debug()
                    ),
                ));
            }
            if c.identities.is_empty() {
                return Err(invalid(
                    "sidecar.clients.identities",
                    format!("client {n} ({}): list \"user\", \"bot\" or both", c.name),
                ));
            }
        }
        Ok(())
    }
}

/// `[proxy]` section: the OpenAPI proxy (`ANY /v1/openapi/{open_id}/open-apis/{path}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Largest request body forwarded, bytes (bodies are held so a retry can resend
    /// them; larger: `413 payload_too_large`, nothing sent). Default 33554432 (32 MiB).
    pub max_body_bytes: u64,
    /// Upper bound from sending a request upstream to its answer's status and headers,
    /// seconds (the answer's body then streams without a bound). Default 60.
    #[serde(with = "duration_secs", rename = "upstream_timeout_secs")]
    pub upstream_timeout: Duration,
    /// On a 99991679 answer (the user lacks a scope), start an authorization for the
    /// missing scopes plus the granted ones (at most one card per user per 30 s) and name
    /// it in the `X-Lark-Auth-Session` answer header. Default true.
    pub scope_authorization: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_body_bytes: 32 << 20,
            upstream_timeout: Duration::from_secs(60),
            scope_authorization: true,
        }
    }
}

impl ProxyConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=(1 << 30)).contains(&self.max_body_bytes) {
            return Err(ConfigError::Invalid {
                key: "proxy.max_body_bytes",
                reason: "must be 1..=1073741824".into(),
            });
        }
        if self.upstream_timeout.is_zero() || self.upstream_timeout > Duration::from_secs(600) {
            return Err(ConfigError::Invalid {
                key: "proxy.upstream_timeout_secs",
                reason: "must be 1..=600".into(),
            });
        }
        Ok(())
    }
}

/// `[app]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// The app id (`cli_…`) written directly; takes precedence over `app_id_env`.
    pub app_id: Option<String>,
    /// Environment variable holding the app id. Default `LARK_APP_ID`.
    pub app_id_env: String,
    /// Environment variable holding the app secret. Default `LARK_APP_SECRET`.
    pub app_secret_env: String,
    /// File holding the app secret (alternative to the environment; trailing newline
    /// trimmed).
    pub app_secret_file: Option<PathBuf>,
    /// `feishu` or `lark`: picks the default hosts.
    pub brand: Brand,
    /// Resolved credentials; never read from or written to TOML.
    #[serde(skip)]
    pub credentials: Option<AppCredentials>,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            app_id: None,
            app_id_env: "LARK_APP_ID".into(),
            app_secret_env: "LARK_APP_SECRET".into(),
            app_secret_file: None,
            brand: Brand::Feishu,
            credentials: None,
        }
    }
}

/// The app's resolved credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCredentials {
    /// The app id, e.g. `cli_a1b2…` (an identifier, not a secret).
    pub app_id: String,
    /// The app secret (redacted in all output).
    pub app_secret: Secret<String>,
}

/// `[endpoints]` section. Empty values mean "the brand's default".
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointsConfig {
    /// OpenAPI and `/callback/ws/endpoint` base, e.g. `https://open.feishu.cn`.
    pub open_base_url: Option<String>,
    /// Accounts host base (device authorization, authorize page).
    pub accounts_base_url: Option<String>,
    /// MCP host base, e.g. `https://mcp.feishu.cn`: where the sidecar door sends calls
    /// whose target is the brand's MCP host.
    pub mcp_base_url: Option<String>,
}

/// `[auth]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `device` (default) or `authorization_code`.
    pub flow: AuthFlow,
    /// Scopes requested when the caller names none; `offline_access` is always added.
    pub default_scopes: Vec<String>,
    /// How long a user has to decide, seconds. Default 600.
    #[serde(with = "duration_secs", rename = "session_timeout_secs")]
    pub session_timeout: Duration,
    /// Registered redirect URI; required for `authorization_code`.
    pub redirect_uri: String,
    /// Language of the cards and toasts when the authorization request names none:
    /// `zh_cn` (default) or `en_us`. The platform does not tell a user's language before
    /// consent, so a caller who knows it passes `locale` with the request.
    pub card_locale: CardLocale,
    /// The app's name as the card shows it to the user. Default `lark-auth`: set it to
    /// the name users know the app by.
    pub app_name: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            flow: AuthFlow::Device,
            default_scopes: vec!["offline_access".into()],
            session_timeout: Duration::from_secs(600),
            redirect_uri: String::new(),
            card_locale: CardLocale::ZhCn,
            app_name: "lark-auth".into(),
        }
    }
}

/// Language of the card text (`auth.card_locale`; the session's cards and toasts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CardLocale {
    /// Simplified Chinese.
    #[default]
    ZhCn,
    /// English.
    EnUs,
}

impl CardLocale {
    /// From a platform locale string such as `zh_cn`, `en_us`, `zh-CN`; unknown → `None`.
    pub fn from_platform(locale: &str) -> Option<CardLocale> {
        let l = locale.to_ascii_lowercase().replace('-', "_");
        if l.starts_with("zh") {
            Some(CardLocale::ZhCn)
        } else if l.starts_with("en") {
            Some(CardLocale::EnUs)
        } else {
            None
        }
    }
}

/// How consent is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthFlow {
    /// OAuth device authorization grant (RFC 8628); needs no inbound HTTP.
    #[default]
    Device,
    /// Authorization-code grant with PKCE; needs `redirect_uri` reachable by the user.
    AuthorizationCode,
}

/// `[vault]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultConfig {
    /// sled directory. Default `data/lark-auth`.
    pub path: PathBuf,
    /// Environment variable holding the current 32-byte vault key, base64
    /// (`openssl rand -base64 32`). Default `LARK_AUTH_VAULT_KEY`.
    pub key_env: String,
    /// Id of the current key, stored with every record it seals. Default 1. Give a new
    /// key a new id when rotating.
    pub key_id: u32,
    /// Keys from before a rotation, still accepted for reading: `[{ key_id = 1, env =
    /// "LARK_AUTH_VAULT_KEY_OLD" }]`. Default none. Drop one only when no record names it.
    pub old_keys: Vec<OldVaultKey>,
    /// Most opened access tokens kept in memory for `get_token` (entries, about 120 B plus
    /// the token's length each; 0 turns the cache off). Default 100,000.
    pub token_cache_entries: usize,
    /// sled's page cache, MiB (`cache_capacity`; `[store] backend = "sled"` only): records
    /// read or written recently stay in memory up to about this much. Less memory means
    /// more disk reads for grants and marks not in it (a token read that misses it, or a
    /// redelivery check of an old mark); sled's other memory (its log buffers, at most a
    /// few tens of MiB) comes on top. Default 64 (sled's own default would be 1024),
    /// 8..=65536.
    pub cache_mib: u64,
}

/// The default `vault.cache_mib`.
pub const DEFAULT_CACHE_MIB: u64 = crate::store::DEFAULT_CACHE_MIB;

/// One entry of `vault.old_keys`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OldVaultKey {
    /// The id the key had while it was current.
    pub key_id: u32,
    /// Environment variable holding that key, base64.
    pub env: String,
}

/// The default cap on cached opened tokens (`vault.token_cache_entries`).
pub const DEFAULT_TOKEN_CACHE_ENTRIES: usize = 100_000;

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            path: PathBuf::from("data/lark-auth"),
            key_env: "LARK_AUTH_VAULT_KEY".into(),
            key_id: 1,
            old_keys: Vec::new(),
            token_cache_entries: DEFAULT_TOKEN_CACHE_ENTRIES,
            cache_mib: DEFAULT_CACHE_MIB,
        }
    }
}

/// `[store] backend`: where grants, sessions and dedup marks are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// sled in `vault.path`: embedded, one process (the default).
    #[default]
    Sled,
    /// A PostgreSQL server (`store.url_env`, `store.schema`), meant to be shared by
    /// several instances.
    Postgres,
}

/// `[store]` section (`INTERFACE.md`, "Several instances on one shared store").
#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sled` (default) or `postgres`.
    pub backend: StoreBackend,
    /// postgres: environment variable holding the libpq connection string or
    /// `postgres://` URL (it may hold the password, so it is never in the file). Default
    /// `LARK_AUTH_DATABASE_URL`.
    pub url_env: String,
    /// postgres: the schema holding lark-auth's tables, created and migrated at start.
    /// `a-z`, digits and `_`, at most 63, not starting with a digit or `pg_`. Default
    /// `lark_auth`.
    pub schema: String,
    /// How long an instance's claim on a session or a refresh lasts (s, 1..=3600).
    /// Default 15. Used by postgres: another instance's refresh marker younger than this
    /// is its refresh in flight (waited for, never replaced); an authorization session or
    /// an outbox entry whose holder did not renew its lease for this long is taken over.
    #[serde(with = "duration_secs", rename = "lease_secs")]
    pub lease: Duration,
    /// The connection URL, read from `url_env` by [`Config::resolve_store_url`]; never
    /// in the file, never printed.
    #[serde(skip)]
    pub url: Option<Secret<String>>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Sled,
            url_env: "LARK_AUTH_DATABASE_URL".into(),
            schema: "lark_auth".into(),
            lease: Duration::from_secs(15),
            url: None,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("backend", &self.backend)
            .field("url_env", &self.url_env)
            .field("schema", &self.schema)
            .field("lease", &self.lease)
            .field("url", &self.url.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl StoreConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                reason: reason.into(),
            }
        }
        if let Err(reason) = crate::store::check_schema_name(&self.schema) {
            return Err(invalid(
                "store.schema",
                format!("`{}` {reason}", self.schema.escape_debug()),
            ));
        }
        if self.backend == StoreBackend::Postgres && self.url_env.trim().is_empty() {
            return Err(invalid(
                "store.url_env",
                "must name the environment variable holding the PostgreSQL URL",
            ));
        }
        if self.lease.is_zero() || self.lease > Duration::from_secs(3600) {
            return Err(invalid("store.lease_secs", "must be 1..=3600"));
        }
        Ok(())
    }
}

/// `[events]` section: the event gateway (`INTERFACE.md`, "Event gateway"). Without
/// `[[events.forward]]` targets nothing is stored or sent.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// `[[events.forward]]`: where events other than lark-auth's own card callbacks are
    /// POSTed. Default none.
    pub forward: Vec<ForwardTarget>,
    /// Most deliveries (one event for one target) the outbox holds undelivered; when it is
    /// full, new events are acked 500 so the platform keeps them and delivers them again
    /// later. Default 100000 (1..=10000000).
    pub outbox_capacity: usize,
    /// How long a delivery is retried before it is kept as dead, seconds. Default 21600
    /// (6 h, the platform's own retry ladder). 1..=604800.
    #[serde(with = "duration_secs", rename = "retry_for_secs")]
    pub retry_for: Duration,
    /// First wait between two tries of a delivery, seconds; doubled per try, jittered.
    /// Default 1.
    #[serde(with = "duration_secs", rename = "retry_initial_secs")]
    pub retry_initial: Duration,
    /// Longest wait between two tries, seconds. Default 30 (a target that comes back is
    /// fed within half a minute). 1..=30.
    #[serde(with = "duration_secs", rename = "retry_max_secs")]
    pub retry_max: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            forward: Vec::new(),
            outbox_capacity: 100_000,
            retry_for: Duration::from_secs(6 * 3600),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// One `[[events.forward]]` target.
#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardTarget {
    /// The `http(s)` URL events are POSTed to (an existing webhook handler). Also the
    /// target's name in metrics, logs and `GET /v1/events/forward`. Required.
    pub url: String,
    /// `["*"]` (every event, the default) or a list of `header.event_type`s, e.g.
    /// `["im.message.receive_v1"]`.
    pub event_types: Vec<String>,
    /// Environment variable holding the app's Encrypt Key; set, events are sent
    /// encrypted and signed as the platform does. Default `""`: plain, unsigned.
    pub encrypt_key_env: String,
    /// Upper bound of one delivery (connect, send, answer), seconds. Default 3 (1..=60).
    #[serde(with = "duration_secs", rename = "timeout_secs")]
    pub timeout: Duration,
    /// Deliveries to this target in flight at once. Default 16 (1..=1024).
    pub concurrency: usize,
    /// The Encrypt Key, read from `encrypt_key_env` by [`Config::resolve_forward_keys`];
    /// never in the file, never printed.
    #[serde(skip)]
    pub encrypt_key: Option<Secret<String>>,
}

impl Default for ForwardTarget {
    fn default() -> Self {
        ForwardTarget {
            url: String::new(),
            event_types: vec!["*".into()],
            encrypt_key_env: String::new(),
            timeout: Duration::from_secs(3),
            concurrency: 16,
            encrypt_key: None,
        }
    }
}

impl std::fmt::Debug for ForwardTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardTarget")
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("encrypt_key_env", &self.encrypt_key_env)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field(
                "encrypt_key",
                &self.encrypt_key.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl ForwardTarget {
    /// Whether this target takes events of `event_type`.
    pub fn takes(&self, event_type: &str) -> bool {
        self.event_types.iter().any(|t| t == "*" || t == event_type)
    }
}

impl EventsConfig {
    /// Whether any target takes events of `event_type` (false without targets).
    pub fn forwards(&self, event_type: &str) -> bool {
        self.forward.iter().any(|t| t.takes(event_type))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                reason: reason.into(),
            }
        }
        if !(1..=10_000_000).contains(&self.outbox_capacity) {
            return Err(invalid("events.outbox_capacity", "must be 1..=10000000"));
        }
        if self.retry_for.is_zero() || self.retry_for > Duration::from_secs(7 * 86_400) {
            return Err(invalid("events.retry_for_secs", "must be 1..=604800"));
        }
        if self.retry_max.is_zero() || self.retry_max > Duration::from_secs(30) {
            return Err(invalid("events.retry_max_secs", "must be 1..=30"));
        }
        if self.retry_initial.is_zero() || self.retry_initial > self.retry_max {
            return Err(invalid(
                "events.retry_initial_secs",
                "must be at least 1 and at most events.retry_max_secs",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.forward.iter().enumerate() {
            let n = i + 1;
            match url::Url::parse(&t.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return Err(invalid(
                        "events.forward.url",
                        format!(
                            "target {n}: `{}` is not an http(s) URL",
                            t.url.escape_debug()
                        ),
                    ));
                }
            }
            if !seen.insert(t.url.as_str()) {
                return Err(invalid(
                    "events.forward.url",
                    format!("target {n}: `{}` is configured twice", t.url),
                ));
            }
            if t.event_types.is_empty() || t.event_types.iter().any(|e| e.trim().is_empty()) {
                return Err(invalid(
                    "events.forward.event_types",
                    format!(
                        "target {n} ({}): must be [\"*\"] or a list of event types",
                        t.url
                    ),
                ));
            }
            if t.timeout.is_zero() || t.timeout > Duration::from_secs(60) {
                return Err(invalid(
                    "events.forward.timeout_secs",
                    format!("target {n} ({}): must be 1..=60", t.url),
                ));
            }
            if !(1..=1024).contains(&t.concurrency) {
                return Err(invalid(
                    "events.forward.concurrency",
                    format!("target {n} ({}): must be 1..=1024", t.url),
                ));
            }
        }
        Ok(())
    }
}

/// `[refresh]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefreshConfig {
    /// Refresh an access token when less than this remains, seconds. Default 300.
    #[serde(with = "duration_secs", rename = "margin_secs")]
    pub margin: Duration,
    /// Token-endpoint calls per second allowed for refreshes and polls. Default 40
    /// (platform limit about 50).
    pub budget_per_sec: u32,
    /// The scheduler refreshes a hot grant's access token when less than this is left,
    /// seconds (at least `margin_secs`). Default 600.
    #[serde(with = "duration_secs", rename = "ahead_secs")]
    pub ahead: Duration,
    /// The scheduler refreshes any grant when its refresh token has less than this left,
    /// so an idle user stays authorized, seconds. Default 86400 (1 day).
    #[serde(with = "duration_secs", rename = "keepalive_secs")]
    pub keepalive: Duration,
    /// A grant used within this long is hot (its access token is refreshed ahead of
    /// expiry), seconds. Default 7200.
    #[serde(with = "duration_secs", rename = "hot_secs")]
    pub hot: Duration,
    /// First retry delay after a retryable refresh failure (20050/20072/network), doubling
    /// per failure, seconds. Default 5.
    #[serde(with = "duration_secs", rename = "retry_initial_secs")]
    pub retry_initial: Duration,
    /// Largest retry delay, seconds. Default 300.
    #[serde(with = "duration_secs", rename = "retry_max_secs")]
    pub retry_max: Duration,
    /// When a grant becomes `needs_reauth`, ask the user once to authorize again (the
    /// scheduler emits `ReauthNeeded`; the session actors send the card). Default false.
    pub reauth_card: bool,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            margin: Duration::from_secs(300),
            budget_per_sec: 40,
            ahead: Duration::from_secs(600),
            keepalive: Duration::from_secs(86_400),
            hot: Duration::from_secs(7200),
            retry_initial: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            reauth_card: false,
        }
    }
}

/// `[http]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address of the control API. Default `127.0.0.1:8787`.
    pub listen: SocketAddr,
    /// Environment variable holding the control API bearer token.
    pub api_token_env: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            api_token_env: "LARK_AUTH_API_TOKEN".into(),
        }
    }
}

/// `[log]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `json` (one object per line, default) or `pretty`.
    pub format: LogFormat,
    /// A `tracing` filter directive: `info`, `debug`, `lark_auth=debug,info`, …
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable, multi-line.
    Pretty,
}

/// `[connection]` section: the long-connection client's own limits. The server's
/// `ClientConfig` (ping and reconnect timing) is applied on top at run time.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Timeout of the endpoint discovery request, seconds. Default 10.
    #[serde(with = "duration_secs", rename = "discovery_timeout_secs")]
    pub discovery_timeout: Duration,
    /// Timeout of TCP connect + TLS + WebSocket handshake, seconds. Default 10.
    #[serde(with = "duration_secs", rename = "handshake_timeout_secs")]
    pub handshake_timeout: Duration,
    /// The link counts as dead when nothing arrives within `PingInterval` + this margin,
    /// seconds. Default 30.
    #[serde(with = "duration_secs", rename = "liveness_margin_secs")]
    pub liveness_margin: Duration,
    /// First delay of the exponential reconnect backoff (after the random `ReconnectNonce`
    /// wait), seconds. Default 1. Capped by the server's `ReconnectInterval`.
    #[serde(with = "duration_secs", rename = "backoff_initial_secs")]
    pub backoff_initial: Duration,
    /// Time a card callback's answer may take before the ack goes out without it,
    /// seconds. Default 2 (the platform waits 3).
    #[serde(with = "duration_secs", rename = "callback_budget_secs")]
    pub callback_budget: Duration,
    /// Window in which a data message with an already-seen `message_id` is acked but
    /// not forwarded again, seconds. Default 600.
    #[serde(with = "duration_secs", rename = "dedup_window_secs")]
    pub dedup_window: Duration,
    /// Largest WebSocket message accepted, bytes. Default 4 MiB.
    pub max_frame_bytes: usize,
    /// Incomplete chunked messages are dropped after this long, seconds. Default 10.
    #[serde(with = "duration_secs", rename = "chunk_expiry_secs")]
    pub chunk_expiry: Duration,
    /// Server values used before the first discovery answer; `None` keeps the SDK
    /// defaults (ping 120 s, reconnect interval 120 s, nonce 30 s). Not in TOML.
    #[serde(skip)]
    pub initial_tuning: Option<crate::protocol::endpoint::ConnectionTuning>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            discovery_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            liveness_margin: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(1),
            callback_budget: Duration::from_secs(2),
            dedup_window: Duration::from_secs(600),
            max_frame_bytes: 4 << 20,
            chunk_expiry: Duration::from_secs(10),
            initial_tuning: None,
        }
    }
}

/// `[openapi]` section: the OpenAPI client (`crate::openapi`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenApiConfig {
    /// Upper bound of one OpenAPI call (connect, send, and reading the whole answer),
    /// seconds. Default 10. A refresh that runs into it has an unknown outcome and is not
    /// resent (`OpenApiError::RefreshOutcomeUnknown`).
    #[serde(with = "duration_secs", rename = "request_timeout_secs")]
    pub request_timeout: Duration,
}

impl Default for OpenApiConfig {
    fn default() -> Self {
        OpenApiConfig {
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The shortest [`SessionsConfig::dedup_ttl`]: the platform redelivers an unacked event
/// 15 s, 5 min, 1 h and 6 h after the first delivery, so a mark must outlive 6 h (with a
/// margin) or a late redelivery would be handled twice.
pub const MIN_DEDUP_TTL: Duration = Duration::from_secs(7 * 3600);

/// `[sessions]` section: the authorization sessions' limits, lifetimes, retries and poll
/// cadence (`crate::session::SessionSettings` is built from it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// New authorizations one user may start within `per_user_window_secs` (more are
    /// answered `429`). Default 5.
    pub per_user_limit: usize,
    /// The sliding window of `per_user_limit`, seconds. Default 60.
    #[serde(with = "duration_secs", rename = "per_user_window_secs")]
    pub per_user_window: Duration,
    /// Ended sessions stay readable (`GET /v1/authorizations/{id}`, a click on their card
    /// answered with the outcome) this long, then are pruned, seconds. Default 86400.
    #[serde(with = "duration_secs", rename = "terminal_ttl_secs")]
    pub terminal_ttl: Duration,
    /// Lifetime of an event-id dedup mark (events and card clicks; a click's answer is
    /// kept as long), seconds, at least 25200 (7 h, see [`MIN_DEDUP_TTL`]). Default 27000.
    #[serde(with = "duration_secs", rename = "dedup_ttl_secs")]
    pub dedup_ttl: Duration,
    /// How often old ended sessions are pruned, seconds (expired dedup marks are purged
    /// at least every second). Default 600.
    #[serde(with = "duration_secs", rename = "prune_period_secs")]
    pub prune_period: Duration,
    /// Most dedup marks kept (events, card clicks and their answers, and the event
    /// gateway's marks). Over it, the oldest are dropped before `dedup_ttl_secs`, a
    /// minute of expiry at a time (`lark_auth_dedup_marks_evicted_total`), so above
    /// `dedup_max_marks / dedup_ttl_secs` events/s (3.7/s by default) a redelivery later
    /// than `dedup_max_marks / rate` seconds (20 s at 5,000/s) is handled twice. With
    /// sled, each mark kept costs about 450 B of memory and 550 B of disk. Default
    /// 100,000 (10,000..=1,000,000,000).
    pub dedup_max_marks: u64,
    /// Sends of an authorization card in all when they fail for a retryable reason
    /// (network, 5xx, rate limit), the first included; 1 = no retry. Default 5.
    pub card_send_attempts: u32,
    /// Wait before the second card send, doubling per failed send (±20 % jitter),
    /// seconds. Default 1.
    #[serde(with = "duration_secs", rename = "card_send_retry_initial_secs")]
    pub card_send_retry_initial: Duration,
    /// Longest wait between two card sends, seconds. Default 30.
    #[serde(with = "duration_secs", rename = "card_send_retry_max_secs")]
    pub card_send_retry_max: Duration,
    /// Device flow, before the user clicked Authorize: the token endpoint is polled every
    /// server `interval` × this factor. Default 3.
    pub poll_idle_factor: u64,
    /// Smallest poll interval before the click, seconds. Default 15.
    #[serde(with = "duration_secs", rename = "poll_idle_min_secs")]
    pub poll_idle_min: Duration,
    /// Wait after a poll that failed for a retryable reason, seconds. Default 10.
    #[serde(with = "duration_secs", rename = "poll_retry_secs")]
    pub poll_retry: Duration,
    /// Open the authorization page inside Feishu (AppLink sidebar) rather than the
    /// system browser. Default true.
    pub use_applink: bool,
    /// The Authorize button also reports its click, so polling speeds up at once (else
    /// it only opens the page). Default true.
    pub report_authorize_click: bool,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            per_user_limit: 5,
            per_user_window: Duration::from_secs(60),
            terminal_ttl: Duration::from_secs(24 * 3600),
            dedup_ttl: Duration::from_secs(7 * 3600 + 1800),
            prune_period: Duration::from_secs(600),
            dedup_max_marks: crate::store::DEFAULT_MAX_MARKS,
            card_send_attempts: 5,
            card_send_retry_initial: Duration::from_secs(1),
            card_send_retry_max: Duration::from_secs(30),
            poll_idle_factor: 3,
            poll_idle_min: Duration::from_secs(15),
            poll_retry: Duration::from_secs(10),
            use_applink: true,
            report_authorize_click: true,
        }
    }
}

impl SessionsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                reason: reason.into(),
            }
        }
        if self.per_user_limit == 0 {
            return Err(invalid(
                "sessions.per_user_limit",
                "must be at least 1 (0 would refuse every authorization)",
            ));
        }
        for (key, d) in [
            ("sessions.per_user_window_secs", self.per_user_window),
            ("sessions.terminal_ttl_secs", self.terminal_ttl),
            ("sessions.prune_period_secs", self.prune_period),
            (
                "sessions.card_send_retry_initial_secs",
                self.card_send_retry_initial,
            ),
            ("sessions.poll_retry_secs", self.poll_retry),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.dedup_ttl < MIN_DEDUP_TTL {
            return Err(invalid(
                "sessions.dedup_ttl_secs",
                format!(
                    "must be at least {} (7 h): the platform redelivers an unacked event up to 6 h after the first delivery, and a redelivery whose mark expired would be handled twice",
                    MIN_DEDUP_TTL.as_secs()
                ),
            ));
        }
        if !(10_000..=1_000_000_000).contains(&self.dedup_max_marks) {
            return Err(invalid(
                "sessions.dedup_max_marks",
                "must be 10000..=1000000000",
            ));
        }
        if self.card_send_attempts == 0 {
            return Err(invalid(
                "sessions.card_send_attempts",
                "must be at least 1 (the first send counts)",
            ));
        }
        if self.card_send_retry_max < self.card_send_retry_initial {
            return Err(invalid(
                "sessions.card_send_retry_max_secs",
                "must be at least sessions.card_send_retry_initial_secs",
            ));
        }
        if self.poll_idle_factor == 0 {
            return Err(invalid(
                "sessions.poll_idle_factor",
                "must be at least 1 (the platform's interval is the fastest allowed)",
            ));
        }
        Ok(())
    }
}

/// Default OpenAPI base of a brand.
pub fn default_open_base_url(brand: Brand) -> &'static str {
    match brand {
        Brand::Feishu => "https://open.feishu.cn",
        Brand::Lark => "https://open.larksuite.com",
    }
}

/// Default accounts base of a brand.
pub fn default_accounts_base_url(brand: Brand) -> &'static str {
    match brand {
        Brand::Feishu => "https://accounts.feishu.cn",
        Brand::Lark => "https://accounts.larksuite.com",
    }
}

/// Default MCP base of a brand.
pub fn default_mcp_base_url(brand: Brand) -> &'static str {
    match brand {
        Brand::Feishu => "https://mcp.feishu.cn",
        Brand::Lark => "https://mcp.larksuite.com",
    }
}

impl Config {
    /// Parses TOML text. Unknown keys are errors (a typo must not be silently ignored).
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming the line and key.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text)
    }

    /// Every environment variable this configuration needs to start, with the config key
    /// naming it: `(variable, key)`, e.g. `("LARK_APP_ID", "app.app_id_env")`. The app id
    /// and secret, the vault key, the control API token; the database URL with
    /// `store.backend = "postgres"`; each `[[events.forward]]` Encrypt Key that is named;
    /// each `[[sidecar.clients]]` key when the sidecar listens. (`check-config` names all
    /// the missing ones at once.)
    pub fn required_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (self.app.app_id_env.clone(), "app.app_id_env".to_string()),
            (
                self.app.app_secret_env.clone(),
                "app.app_secret_env".to_string(),
            ),
            (self.vault.key_env.clone(), "vault.key_env".to_string()),
            (
                self.http.api_token_env.clone(),
                "http.api_token_env".to_string(),
            ),
        ];
        if self.store.backend == StoreBackend::Postgres {
            env.push((self.store.url_env.clone(), "store.url_env".to_string()));
        }
        for (i, target) in self.events.forward.iter().enumerate() {
            if !target.encrypt_key_env.is_empty() {
                env.push((
                    target.encrypt_key_env.clone(),
                    format!("events.forward[{i}].encrypt_key_env"),
                ));
            }
        }
        if !self.sidecar.listen.is_empty() {
            for (i, client) in self.sidecar.clients.iter().enumerate() {
                env.push((
                    client.key_env.clone(),
                    format!("sidecar.clients[{i}].key_env"),
                ));
            }
        }
        env
    }

    /// The effective OpenAPI base URL, without a trailing `/`.
    pub fn open_base_url(&self) -> String {
        self.endpoints
            .open_base_url
            .clone()
            .unwrap_or_else(|| default_open_base_url(self.app.brand).to_string())
            .trim_end_matches('/')
            .to_string()
    }

    /// The effective accounts base URL, without a trailing `/`.
    pub fn accounts_base_url(&self) -> String {
        self.endpoints
            .accounts_base_url
            .clone()
            .unwrap_or_else(|| default_accounts_base_url(self.app.brand).to_string())
            .trim_end_matches('/')
            .to_string()
    }

    /// The effective MCP base URL, without a trailing `/`.
    pub fn mcp_base_url(&self) -> String {
        self.endpoints
            .mcp_base_url
            .clone()
            .unwrap_or_else(|| default_mcp_base_url(self.app.brand).to_string())
            .trim_end_matches('/')
            .to_string()
    }

    /// Fills [`AppConfig::credentials`] from `app_id` / the environment / the secret file.
    /// `env` looks a variable up (pass `|k| std::env::var(k).ok()` in a binary).
    ///
    /// # Errors
    /// [`ConfigError::MissingEnv`] when the id or secret is not set or empty;
    /// [`ConfigError::Read`] when the secret file cannot be read.
    pub fn resolve_credentials(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let app_id = match &self.app.app_id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => env(&self.app.app_id_env)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| ConfigError::MissingEnv {
                    what: "app id",
                    env: self.app.app_id_env.clone(),
                    key: "app.app_id_env",
                })?,
        };
        let app_secret = if let Some(path) = &self.app.app_secret_file {
            std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?
                .trim_end()
                .to_string()
        } else {
            env(&self.app.app_secret_env)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| ConfigError::MissingEnv {
                    what: "app secret",
                    env: self.app.app_secret_env.clone(),
                    key: "app.app_secret_env",
                })?
        };
        self.app.credentials = Some(AppCredentials {
            app_id,
            app_secret: Secret::new(app_secret),
        });
        Ok(())
    }

    /// With `store.backend = "postgres"`, fills [`StoreConfig::url`] from the variable
    /// `store.url_env` names (sled: nothing to do). `env` looks a variable up.
    ///
    /// # Errors
    /// [`ConfigError::MissingEnv`] when the variable is unset or empty (the message names
    /// the variable, never a value).
    pub fn resolve_store_url(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if self.store.backend != StoreBackend::Postgres {
            return Ok(());
        }
        let url = env(&self.store.url_env)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| ConfigError::MissingEnv {
                what: "PostgreSQL connection URL",
                env: self.store.url_env.clone(),
                key: "store.url_env",
            })?;
        self.store.url = Some(Secret::new(url));
        Ok(())
    }

    /// Fills [`ForwardTarget::encrypt_key`] of every `[[events.forward]]` target that
    /// names an `encrypt_key_env`, from that variable. `env` looks a variable up.
    ///
    /// # Errors
    /// [`ConfigError::MissingEnv`] when a named variable is unset or empty (the message
    /// names the variable, never a value).
    pub fn resolve_forward_keys(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for target in &mut self.events.forward {
            if target.encrypt_key_env.is_empty() {
                continue;
            }
            let key = env(&target.encrypt_key_env)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| ConfigError::MissingEnv {
                    what: "event forward Encrypt Key",
                    env: target.encrypt_key_env.clone(),
                    key: "events.forward.encrypt_key_env",
                })?;
            target.encrypt_key = Some(Secret::new(key));
        }
        Ok(())
    }

    /// Fills [`SidecarClientConfig::key`] of every `[[sidecar.clients]]` entry from the
    /// variable its `key_env` names. `env` looks a variable up.
    ///
    /// # Errors
    /// [`ConfigError::MissingEnv`] when a variable is unset or empty;
    /// [`ConfigError::Invalid`] when a key is shorter than [`SIDECAR_MIN_KEY_LEN`] or two
    /// clients have the same key (the client is the one whose key verifies). Messages
    /// name the variable, never a value.
    pub fn resolve_sidecar_keys(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for client in &mut self.sidecar.clients {
            let key = env(&client.key_env)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| ConfigError::MissingEnv {
                    what: "sidecar client key",
                    env: client.key_env.clone(),
                    key: "sidecar.clients.key_env",
                })?;
            client.key = Some(Secret::new(key));
        }
        self.check_sidecar_keys()
    }

    /// Checks that every `[[sidecar.clients]]` entry has its key resolved
    /// ([`Config::resolve_sidecar_keys`], or set by an embedder), long enough, and unlike
    /// every other client's.
    ///
    /// # Errors
    /// [`ConfigError::MissingEnv`] or [`ConfigError::Invalid`] for the first client at
    /// fault.
    pub fn check_sidecar_keys(&self) -> Result<(), ConfigError> {
        let clients = &self.sidecar.clients;
        for (i, client) in clients.iter().enumerate() {
            let Some(key) = &client.key else {
                return Err(ConfigError::MissingEnv {
                    what: "sidecar client key",
                    env: client.key_env.clone(),
                    key: "sidecar.clients.key_env",
                });
            };
            if key.expose().chars().count() < SIDECAR_MIN_KEY_LEN {
                return Err(ConfigError::Invalid {
                    key: "sidecar.clients.key_env",
                    reason: format!(
                        "client {} ({}): the key in `{}` is shorter than {SIDECAR_MIN_KEY_LEN} characters (make one with `lark-auth sidecar new-client`)",
                        i + 1,
                        client.name,
                        client.key_env
                    ),
                });
            }
            if let Some(other) = clients[..i].iter().find(|o| o.key == client.key) {
                return Err(ConfigError::Invalid {
                    key: "sidecar.clients.key_env",
                    reason: format!(
                        "clients `{}` and `{}` have the same key: each client needs its own",
                        other.name, client.name
                    ),
                });
            }
        }
        Ok(())
    }

    /// Checks that every `[[events.forward]]` target naming an `encrypt_key_env` has its
    /// key resolved ([`Config::resolve_forward_keys`], or set by an embedder).
    ///
    /// # Errors
    /// [`ConfigError::MissingEnv`] for the first target without its key.
    pub fn check_forward_keys(&self) -> Result<(), ConfigError> {
        match self
            .events
            .forward
            .iter()
            .find(|t| !t.encrypt_key_env.is_empty() && t.encrypt_key.is_none())
        {
            Some(t) => Err(ConfigError::MissingEnv {
                what: "event forward Encrypt Key",
                env: t.encrypt_key_env.clone(),
                key: "events.forward.encrypt_key_env",
            }),
            None => Ok(()),
        }
    }

    /// Checks every value before anything starts.
    ///
    /// # Errors
    /// The first [`ConfigError::Invalid`] found, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                reason: reason.into(),
            }
        }
        for (key, value) in [
            ("endpoints.open_base_url", self.open_base_url()),
            ("endpoints.accounts_base_url", self.accounts_base_url()),
            ("endpoints.mcp_base_url", self.mcp_base_url()),
        ] {
            match url::Url::parse(&value) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => return Err(invalid(key, format!("`{value}` is not an http(s) URL"))),
            }
        }
        if self.auth.flow == AuthFlow::AuthorizationCode && self.auth.redirect_uri.is_empty() {
            return Err(invalid(
                "auth.redirect_uri",
                "required when auth.flow = \"authorization_code\"",
            ));
        }
        if self.auth.app_name.trim().is_empty() {
            return Err(invalid(
                "auth.app_name",
                "must name the app (the card shows it to the user)",
            ));
        }
        if self.auth.session_timeout < Duration::from_secs(1) {
            return Err(invalid("auth.session_timeout_secs", "must be at least 1"));
        }
        if self.refresh.budget_per_sec == 0 || self.refresh.budget_per_sec > 50 {
            return Err(invalid(
                "refresh.budget_per_sec",
                "must be 1..=50 (the platform allows about 50 token requests/s per app)",
            ));
        }
        let r = &self.refresh;
        if r.ahead < r.margin {
            return Err(invalid(
                "refresh.ahead_secs",
                "must be at least refresh.margin_secs",
            ));
        }
        for (key, d) in [
            ("refresh.keepalive_secs", r.keepalive),
            ("refresh.retry_initial_secs", r.retry_initial),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if r.retry_max < r.retry_initial {
            return Err(invalid(
                "refresh.retry_max_secs",
                "must be at least refresh.retry_initial_secs",
            ));
        }
        let c = &self.connection;
        for (key, d) in [
            ("connection.discovery_timeout_secs", c.discovery_timeout),
            ("connection.handshake_timeout_secs", c.handshake_timeout),
            ("connection.callback_budget_secs", c.callback_budget),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if c.callback_budget >= Duration::from_secs(3) {
            return Err(invalid(
                "connection.callback_budget_secs",
                "must be below 3 (the platform's callback deadline)",
            ));
        }
        if c.backoff_initial.is_zero() {
            return Err(invalid(
                "connection.backoff_initial_secs",
                "must be greater than 0",
            ));
        }
        if !(1024..=(64 << 20)).contains(&c.max_frame_bytes) {
            return Err(invalid(
                "connection.max_frame_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        if self.openapi.request_timeout.is_zero() {
            return Err(invalid(
                "openapi.request_timeout_secs",
                "must be greater than 0",
            ));
        }
        if self.openapi.request_timeout > Duration::from_secs(300) {
            return Err(invalid(
                "openapi.request_timeout_secs",
                "must be at most 300 (no unbounded waits)",
            ));
        }
        if !(8..=65_536).contains(&self.vault.cache_mib) {
            return Err(invalid(
                "vault.cache_mib",
                "must be 8..=65536 (MiB of sled page cache)",
            ));
        }
        self.sessions.validate()?;
        self.store.validate()?;
        self.events.validate()?;
        self.proxy.validate()?;
        self.sidecar.validate()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("`{}` is not a tracing filter", self.log.level),
            ));
        }
        Ok(())
    }

    /// A configuration for tests: loopback base URLs, sub-second timings, fake credentials.
    pub fn for_tests(open_base_url: &str) -> Config {
        let mut config = Config::default();
        config.endpoints.open_base_url = Some(open_base_url.to_string());
        config.endpoints.accounts_base_url = Some(open_base_url.to_string());
        config.app.credentials = Some(AppCredentials {
            app_id: "cli_sandbox_app".into(),
            app_secret: Secret::new("sandbox-secret".into()),
        });
        config.connection.discovery_timeout = Duration::from_secs(2);
        config.connection.handshake_timeout = Duration::from_secs(2);
        config.connection.liveness_margin = Duration::from_millis(300);
        config.connection.backoff_initial = Duration::from_millis(20);
        config.connection.callback_budget = Duration::from_millis(500);
        config.connection.chunk_expiry = Duration::from_secs(2);
        config.openapi.request_timeout = Duration::from_secs(2);
        config
    }
}

/// Serde adapter: a [`Duration`] as whole seconds.
pub mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes whole seconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    /// Reads whole seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    const SIDECAR: &str = r#"
[sidecar]
listen = "127.0.0.1:16384"
[[sidecar.clients]]
name = "agent-alice"
key_env = "KEY_ALICE"
open_id = "ou_alice_1"
identities = ["user", "bot"]
[[sidecar.clients]]
name = "agent-bot"
key_env = "KEY_BOT"
"#;

    #[test]
    fn sidecar_clients_parse_with_defaults_and_keys_never_show() {
        let mut config = Config::from_toml_str(SIDECAR).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.sidecar.listen_addr().unwrap(),
            Some("127.0.0.1:16384".parse().unwrap())
        );
        let bot = &config.sidecar.clients[1];
        assert_eq!(bot.open_id, "");
        assert_eq!(
            bot.identities,
            vec![SidecarIdentity::User, SidecarIdentity::Bot]
        );
        let alice_key = "a".repeat(64);
        let bot_key = "b".repeat(64);
        config
            .resolve_sidecar_keys(|k| match k {
                "KEY_ALICE" => Some(alice_key.clone()),
                "KEY_BOT" => Some(bot_key.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            config.sidecar.clients[0].key.as_ref().unwrap().expose(),
            &alice_key
        );
        let debug = format!("{config:?}");
        let shown = serde_json::to_string(&config).unwrap();
        for text in [&debug, &shown] {
            assert!(!text.contains("aaaa"), "a key leaked: {text}");
            assert!(!text.contains("bbbb"), "a key leaked: {text}");
        }
        assert!(debug.contains("agent-alice") && shown.contains("KEY_ALICE"));
        // Off by default.
        assert_eq!(Config::default().sidecar.listen_addr().unwrap(), None);
    }

    #[test]
    fn bad_sidecar_settings_are_refused_naming_the_key() {
        let refused = |text: String| match Config::from_toml_str(&text).unwrap().validate() {
            Err(ConfigError::Invalid { key, reason }) => format!("{key}: {reason}"),
            other => panic!("accepted {text}: {other:?}"),
        };
        assert!(
            refused(SIDECAR.replace("127.0.0.1:16384", "localhost")).starts_with("sidecar.listen")
        );
        assert!(refused(SIDECAR.replace("agent-bot", "agent-alice")).contains("configured twice"));
        assert!(
            refused(SIDECAR.replace("ou_alice_1", "alice")).starts_with("sidecar.clients.open_id")
        );
        assert!(
            refused(SIDECAR.replace("\"user\", \"bot\"", ""))
                .starts_with("sidecar.clients.identities")
        );
        assert!(refused(SIDECAR.replace("KEY_BOT", "")).starts_with("sidecar.clients.key_env"));
        assert!(Config::from_toml_str(&SIDECAR.replace("\"user\", \"bot\"", "\"admin\"")).is_err());

        let mut config = Config::from_toml_str(SIDECAR).unwrap();
        let missing = config
            .resolve_sidecar_keys(env_of(&[("KEY_ALICE", "0123456789abcdef0123456789abcdef")]))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("KEY_BOT"), "{missing}");
        let short = config
            .resolve_sidecar_keys(env_of(&[
                ("KEY_ALICE", "0123456789abcdef0123456789abcdef"),
                ("KEY_BOT", "short-key"),
            ]))
            .unwrap_err()
            .to_string();
        assert!(
            short.contains("shorter than 32") && !short.contains("short-key"),
            "{short}"
        );
        let same = config
            .resolve_sidecar_keys(env_of(&[
                ("KEY_ALICE", "0123456789abcdef0123456789abcdef"),
                ("KEY_BOT", "0123456789abcdef0123456789abcdef"),
            ]))
            .unwrap_err()
            .to_string();
        assert!(
            same.contains("same key") && !same.contains("0123"),
            "{same}"
        );
    }

    #[test]
    fn the_committed_example_parses_and_validates() {
        let text = include_str!("../config.toml");
        let config = Config::from_toml_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.open_base_url(), "https://open.feishu.cn");
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(config.openapi.request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str("[connection]\nliveness_margn_secs = 3\n").unwrap_err();
        assert!(err.to_string().contains("liveness_margn_secs"), "{err}");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let config = Config::from_toml_str("[refresh]\nbudget_per_sec = 80\n").unwrap();
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("refresh.budget_per_sec"), "{err}");
        let config = Config::from_toml_str("[auth]\nflow = \"authorization_code\"\n").unwrap();
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("auth.redirect_uri"), "{err}");
        let config = Config::from_toml_str("[openapi]\nrequest_timeout_secs = 0\n").unwrap();
        let err = config.validate().unwrap_err();
        assert!(
            err.to_string().contains("openapi.request_timeout_secs"),
            "{err}"
        );
    }

    #[test]
    fn the_sessions_section_has_todays_values_and_is_checked() {
        let config = Config::from_toml_str("").unwrap();
        let s = &config.sessions;
        assert_eq!(s.per_user_limit, 5);
        assert_eq!(s.per_user_window, Duration::from_secs(60));
        assert_eq!(s.terminal_ttl, Duration::from_secs(86_400));
        assert_eq!(s.dedup_ttl, Duration::from_secs(27_000));
        assert_eq!(s.prune_period, Duration::from_secs(600));
        assert_eq!(s.card_send_attempts, 5);
        assert_eq!(
            (s.card_send_retry_initial, s.card_send_retry_max),
            (Duration::from_secs(1), Duration::from_secs(30))
        );
        assert_eq!(
            (s.poll_idle_factor, s.poll_idle_min, s.poll_retry),
            (3, Duration::from_secs(15), Duration::from_secs(10))
        );
        assert!(s.use_applink && s.report_authorize_click);

        let config = Config::from_toml_str("[sessions]\ndedup_ttl_secs = 3600\n").unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("sessions.dedup_ttl_secs") && err.contains("6 h"),
            "{err}"
        );
        for bad in [
            "per_user_limit = 0",
            "prune_period_secs = 0",
            "card_send_attempts = 0",
            "card_send_retry_initial_secs = 40",
            "poll_idle_factor = 0",
        ] {
            let config = Config::from_toml_str(&format!("[sessions]\n{bad}\n")).unwrap();
            let err = config.validate().unwrap_err().to_string();
            let key = bad.split(' ').next().unwrap();
            let key = if key == "card_send_retry_initial_secs" {
                "card_send_retry_max_secs"
            } else {
                key
            };
            assert!(err.contains(&format!("sessions.{key}")), "{bad}: {err}");
        }
        let err = Config::from_toml_str("[sessions]\ndedup_tll_secs = 30000\n").unwrap_err();
        assert!(err.to_string().contains("dedup_tll_secs"), "{err}");
    }

    #[test]
    fn the_sled_cache_and_the_mark_cap_have_small_defaults_and_are_checked() {
        let config = Config::default();
        assert_eq!(config.vault.cache_mib, 64);
        assert_eq!(config.sessions.dedup_max_marks, 100_000);
        let config =
            Config::from_toml_str("[vault]\ncache_mib = 16\n[sessions]\ndedup_max_marks = 50000\n")
                .unwrap();
        assert_eq!(
            (config.vault.cache_mib, config.sessions.dedup_max_marks),
            (16, 50_000)
        );
        for (toml, key) in [
            ("[vault]\ncache_mib = 0\n", "vault.cache_mib"),
            ("[vault]\ncache_mib = 70000\n", "vault.cache_mib"),
            (
                "[sessions]\ndedup_max_marks = 10\n",
                "sessions.dedup_max_marks",
            ),
        ] {
            let err = Config::from_toml_str(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn credentials_come_from_the_environment_and_stay_redacted() {
        let mut config = Config::default();
        let err = config.resolve_credentials(env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("LARK_APP_ID"), "{err}");
        let err = config
            .resolve_credentials(env_of(&[("LARK_APP_ID", "cli_x")]))
            .unwrap_err();
        assert!(err.to_string().contains("LARK_APP_SECRET"), "{err}");
        config
            .resolve_credentials(env_of(&[
                ("LARK_APP_ID", "cli_x"),
                ("LARK_APP_SECRET", "s3cr3t-value"),
            ]))
            .unwrap();
        let printed = format!("{config:?}");
        assert!(printed.contains("cli_x"));
        assert!(!printed.contains("s3cr3t-value"), "{printed}");
    }

    #[test]
    fn forward_targets_have_the_interface_defaults_and_are_checked() {
        let config = Config::from_toml_str("").unwrap();
        assert!(config.events.forward.is_empty());
        assert!(!config.events.forwards("im.message.receive_v1"));
        let config = Config::from_toml_str(
            "[[events.forward]]\nurl = \"http://127.0.0.1:9000/webhook/event\"\n\
             [[events.forward]]\nurl = \"https://bot.example/hook\"\n\
             event_types = [\"im.message.receive_v1\"]\nencrypt_key_env = \"BOT_KEY\"\n\
             timeout_secs = 5\n",
        )
        .unwrap();
        config.validate().unwrap();
        let [all, one] = &config.events.forward[..] else {
            panic!("two targets expected")
        };
        assert_eq!(all.event_types, vec!["*".to_string()]);
        assert_eq!(all.timeout, Duration::from_secs(3));
        assert_eq!(all.encrypt_key_env, "");
        assert!(all.takes("anything.at_all"));
        assert!(one.takes("im.message.receive_v1") && !one.takes("approval.instance"));
        assert_eq!(one.timeout, Duration::from_secs(5));
        assert_eq!(config.events.outbox_capacity, 100_000);
        assert_eq!(config.events.retry_for, Duration::from_secs(21_600));
        assert_eq!(config.events.retry_max, Duration::from_secs(30));

        for (bad, key) in [
            ("url = \"ftp://x/\"", "events.forward.url"),
            ("url = \"not a url\"", "events.forward.url"),
            ("url = \"\"", "events.forward.url"),
            (
                "url = \"http://x/\"\nevent_types = []",
                "events.forward.event_types",
            ),
            (
                "url = \"http://x/\"\ntimeout_secs = 0",
                "events.forward.timeout_secs",
            ),
            (
                "url = \"http://x/\"\nconcurrency = 0",
                "events.forward.concurrency",
            ),
        ] {
            let config = Config::from_toml_str(&format!("[[events.forward]]\n{bad}\n")).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        let config = Config::from_toml_str("[events]\nretry_max_secs = 60\n").unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("events.retry_max_secs"), "{err}");
        let err =
            Config::from_toml_str("[[events.forward]]\nurl = \"http://x/\"\nencrypt_key = \"k\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("encrypt_key"), "{err}");
    }

    #[test]
    fn the_forward_encrypt_key_comes_from_the_environment_and_stays_redacted() {
        let mut config = Config::from_toml_str(
            "[[events.forward]]\nurl = \"http://127.0.0.1:9000/\"\nencrypt_key_env = \"BOT_KEY\"\n",
        )
        .unwrap();
        let err = config.check_forward_keys().unwrap_err().to_string();
        assert!(err.contains("BOT_KEY"), "{err}");
        let err = config
            .resolve_forward_keys(env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BOT_KEY") && err.contains("events.forward.encrypt_key_env"),
            "{err}"
        );
        config
            .resolve_forward_keys(env_of(&[("BOT_KEY", "ek-s3cr3t-value")]))
            .unwrap();
        config.check_forward_keys().unwrap();
        let key = config.events.forward[0].encrypt_key.as_ref().unwrap();
        assert_eq!(key.expose(), "ek-s3cr3t-value");
        let printed = format!("{config:?}");
        assert!(printed.contains("BOT_KEY"), "{printed}");
        assert!(!printed.contains("ek-s3cr3t-value"), "{printed}");
        let serialized = serde_json::to_string(&config).unwrap();
        assert!(!serialized.contains("ek-s3cr3t-value"), "{serialized}");
    }

    #[test]
    fn the_store_section_has_the_interface_defaults_and_is_checked() {
        let config = Config::from_toml_str("").unwrap();
        let s = &config.store;
        assert_eq!(s.backend, StoreBackend::Sled);
        assert_eq!(s.url_env, "LARK_AUTH_DATABASE_URL");
        assert_eq!(s.schema, "lark_auth");
        assert_eq!(s.lease, Duration::from_secs(15));
        let config = Config::from_toml_str(
            "[store]\nbackend = \"postgres\"\nurl_env = \"DB\"\nschema = \"deploy_1\"\nlease_secs = 20\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.store.backend, StoreBackend::Postgres);
        assert_eq!(config.store.lease, Duration::from_secs(20));

        let err = Config::from_toml_str("[store]\nbackend = \"mysql\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("mysql") && text.contains("postgres") && text.contains("sled"),
            "{text}"
        );
        let err = Config::from_toml_str("[store]\nurl = \"postgres://x\"\n").unwrap_err();
        assert!(err.to_string().contains("url"), "{err}");
        for (bad, key) in [
            ("schema = \"Lark-Auth\"", "store.schema"),
            ("schema = \"\"", "store.schema"),
            ("schema = \"x; drop table y\"", "store.schema"),
            ("lease_secs = 0", "store.lease_secs"),
            ("backend = \"postgres\"\nurl_env = \"\"", "store.url_env"),
        ] {
            let config = Config::from_toml_str(&format!("[store]\n{bad}\n")).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn the_database_url_comes_from_the_environment_and_is_never_printed() {
        let mut config = Config::from_toml_str("[store]\nbackend = \"postgres\"\n").unwrap();
        let err = config
            .resolve_store_url(env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("LARK_AUTH_DATABASE_URL") && err.contains("store.url_env"),
            "{err}"
        );
        config
            .resolve_store_url(env_of(&[(
                "LARK_AUTH_DATABASE_URL",
                "postgres://lark:hunter2-secret@db/auth",
            )]))
            .unwrap();
        assert_eq!(
            config.store.url.as_ref().map(|u| u.expose().as_str()),
            Some("postgres://lark:hunter2-secret@db/auth")
        );
        let shown = format!("{config:?} {}", serde_json::to_string(&config).unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        // sled needs no URL.
        let mut config = Config::default();
        config.resolve_store_url(env_of(&[])).unwrap();
        assert!(config.store.url.is_none());
    }

    #[test]
    fn brand_picks_default_hosts_and_trailing_slash_is_trimmed() {
        let mut config = Config::from_toml_str("[app]\nbrand = \"lark\"\n").unwrap();
        assert_eq!(config.open_base_url(), "https://open.larksuite.com");
        config.endpoints.open_base_url = Some("http://127.0.0.1:9/".into());
        assert_eq!(config.open_base_url(), "http://127.0.0.1:9");
    }
}
