//! The Feishu/Lark OpenAPI client: app token, cards, OAuth grants and user info, over awc.
//!
//! One module per API family, typed requests and answers:
//!
//! - [`tenant`]: `tenant_access_token` of the internal app, cached and single-flight;
//! - [`im`]: send an interactive card, PATCH it, and the delayed card update;
//! - [`oauth`]: device authorization and polling, the authorize URL with PKCE, the code
//!   exchange, the refresh grant;
//! - [`authen`]: the `user_info` call;
//! - [`error`]: the one [`OpenApiError`] with its [`RetryAdvice`].
//!
//! [`OpenApiClient`] is a cheap-clone handle (`Rc` inside, like the awc client it holds):
//! build it inside the actix `System` and clone it into actors on the same thread. Every
//! call is bounded by `[openapi] request_timeout_secs` and reads at most
//! [`MAX_RESPONSE_BYTES`] of answer. Section numbers (§) refer to
//! `shared/docs/lark-openapi-auth.md`.

pub mod authen;
pub mod error;
pub mod im;
pub mod oauth;
pub mod tenant;

use std::rc::Rc;
use std::time::Duration;

use awc::error::SendRequestError;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::config::{AppCredentials, Config, ConfigError};
use crate::http_client::{http_client, tls_config};

pub use authen::UserInfo;
pub use error::{ApiFailure, OpenApiError, RetryAdvice};
pub use im::SentMessage;
pub use oauth::{DeviceAuthorization, DevicePoll, PkcePair, UserTokenGrant};
pub use tenant::TenantAccessToken;

/// Largest answer body read, bytes (1 MiB; tokens are 1–4 KB, §2.3).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Response header with the platform's request id (for support tickets).
pub const HEADER_LOG_ID: &str = "x-tt-logid";
/// Response header with the seconds until the rate limit resets (§2.5, §7).
pub const HEADER_RATELIMIT_RESET: &str = "x-ogw-ratelimit-reset";

/// The longest `open_id` accepted, bytes. The platform's are 35 (`ou_` and 32 hex
/// digits); the limit leaves room without letting a caller store kilobytes under a key.
pub const MAX_OPEN_ID_LEN: usize = 64;

/// An `open_id` that is not shaped like the platform's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid open_id: {reason}")]
pub struct InvalidOpenId {
    /// What is wrong, e.g. "must start with `ou_`".
    pub reason: &'static str,
}

/// Checks that `open_id` has the shape of a user's `open_id` in an app: `ou_` followed by
/// 1 or more ASCII letters, digits or `_`, at most [`MAX_OPEN_ID_LEN`] bytes in all (§4.1
/// `receive_id`, §5.1 `event.operator.open_id`: `ou_…`). Anything else (path separators,
/// control characters, spaces, kilobyte strings) is refused before it reaches a store, a
/// card or a log.
///
/// ```
/// use lark_auth::openapi::check_open_id;
///
/// assert!(check_open_id("ou_7d8a6e6df7621556ce0d21922b676706ccs").is_ok());
/// assert!(check_open_id("ou_a/../b").is_err());
/// assert!(check_open_id("on_7d8a6e6df7621556ce0d21922b676706").is_err());
/// ```
///
/// # Errors
/// [`InvalidOpenId`] naming what is wrong.
pub fn check_open_id(open_id: &str) -> Result<(), InvalidOpenId> {
    let Some(rest) = open_id.strip_prefix("ou_") else {
        return Err(InvalidOpenId {
            reason: "must start with `ou_`",
        });
    };
    if open_id.len() > MAX_OPEN_ID_LEN {
        return Err(InvalidOpenId {
            reason: "longer than 64 bytes",
        });
    }
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(InvalidOpenId {
            reason: "must be `ou_` followed by ASCII letters, digits or `_`",
        });
    }
    Ok(())
}

/// A cheap-clone handle on the OpenAPI client. `!Send`: use it on the actix thread that
/// built it.
///
/// ```no_run
/// use lark_auth::openapi::{DevicePoll, OpenApiClient, oauth::next_poll_interval};
///
/// # async fn demo(config: lark_auth::config::Config) -> Result<(), Box<dyn std::error::Error>> {
/// let client = OpenApiClient::new(&config)?;
/// let device = client.request_device_authorization(&["contact:user.id:readonly"]).await?;
/// // … send `device.verification_uri_complete` in a card with `client.send_card(…)` …
/// let mut interval = device.interval;
/// let grant = loop {
///     tokio::time::sleep(interval).await;
///     match client.poll_device_token(&device.device_code).await? {
///         DevicePoll::Granted(grant) => break grant,
///         DevicePoll::Denied | DevicePoll::Expired => return Ok(()),
///         other => interval = next_poll_interval(interval, &other),
///     }
/// };
/// let who = client.user_info(&grant.access_token).await?;
/// assert!(who.open_id.starts_with("ou_"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct OpenApiClient {
    inner: Rc<Inner>,
}

struct Inner {
    transport: Transport,
    tenant: tenant::TenantTokenCache,
    /// Where token-endpoint calls are counted, once set.
    metrics: std::cell::OnceCell<crate::metrics::Metrics>,
}

/// What every call needs: the awc client, base URLs, app credentials, timeout.
#[derive(Clone)]
pub(crate) struct Transport {
    http: awc::Client,
    open_base_url: Rc<str>,
    accounts_base_url: Rc<str>,
    credentials: AppCredentials,
    timeout: Duration,
}

/// Description of one kind of call, for errors and retry advice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub(crate) name: &'static str,
    pub(crate) idempotent: bool,
    /// A refresh grant: an unanswered request becomes [`OpenApiError::RefreshOutcomeUnknown`].
    pub(crate) refresh: bool,
}

impl Call {
    pub(crate) const fn new(name: &'static str, idempotent: bool) -> Call {
        Call {
            name,
            idempotent,
            refresh: false,
        }
    }
}

/// A complete answer: status, the headers we use, and the body.
pub(crate) struct RawAnswer {
    pub(crate) status: u16,
    pub(crate) log_id: Option<String>,
    pub(crate) rate_limit_reset: Option<Duration>,
    pub(crate) body: Bytes,
}

impl OpenApiClient {
    /// Builds the client from the configuration: base URLs from
    /// [`Config::open_base_url`] / [`Config::accounts_base_url`], the resolved app
    /// credentials, `[openapi] request_timeout_secs`. Call inside a running actix `System`.
    ///
    /// # Errors
    /// [`ConfigError::MissingEnv`] when the credentials were not resolved
    /// ([`Config::resolve_credentials`]); [`ConfigError::Invalid`] if TLS cannot be set up.
    pub fn new(config: &Config) -> Result<OpenApiClient, ConfigError> {
        let credentials =
            config
                .app
                .credentials
                .clone()
                .ok_or_else(|| ConfigError::MissingEnv {
                    what: "app credentials",
                    env: config.app.app_secret_env.clone(),
                    key: "app.app_secret_env",
                })?;
        for (key, base) in [
            ("endpoints.open_base_url", config.open_base_url()),
            ("endpoints.accounts_base_url", config.accounts_base_url()),
        ] {
            if url::Url::parse(&base).is_err() {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("`{base}` is not a URL"),
                });
            }
        }
        let tls = tls_config().map_err(|e| ConfigError::Invalid {
            key: "openapi",
            reason: format!("TLS setup failed: {e}"),
        })?;
        let timeout = config.openapi.request_timeout;
        Ok(OpenApiClient {
            inner: Rc::new(Inner {
                transport: Transport {
                    http: http_client(tls, timeout),
                    open_base_url: config.open_base_url().into(),
                    accounts_base_url: config.accounts_base_url().into(),
                    credentials,
                    timeout,
                },
                tenant: tenant::TenantTokenCache::default(),
                metrics: std::cell::OnceCell::new(),
            }),
        })
    }

    /// The app id the client authenticates as.
    pub fn app_id(&self) -> &str {
        &self.inner.transport.credentials.app_id
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// Counts every user-token-endpoint call of this client and its clones (refresh,
    /// device poll, code exchange) in `metrics` as
    /// `lark_auth_token_endpoint_calls_total{kind, outcome}`. Only the first call counts.
    pub fn set_metrics(&self, metrics: crate::metrics::Metrics) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// Counts one token-endpoint call (no-op without metrics).
    pub(crate) fn count_token_call(&self, kind: &str, outcome: &str) {
        if let Some(metrics) = self.inner.metrics.get() {
            metrics.token_endpoint_call(kind, outcome);
        }
    }
}

impl Transport {
    /// `{open_base_url}{path}`.
    pub(crate) fn open_url(&self, path: &str) -> String {
        format!("{}{path}", self.open_base_url)
    }

    /// `{accounts_base_url}{path}`.
    pub(crate) fn accounts_url(&self, path: &str) -> String {
        format!("{}{path}", self.accounts_base_url)
    }

    /// Sends the request made by `send` and reads the whole answer, all within the timeout.
    pub(crate) async fn execute<F>(&self, call: Call, send: F) -> Result<RawAnswer, OpenApiError>
    where
        F: Future<Output = Result<awc::ClientResponse, SendRequestError>>,
    {
        let work = async {
            let mut response = send.await.map_err(|e| {
                let sent = !matches!(e, SendRequestError::Connect(_) | SendRequestError::Url(_));
                if matches!(e, SendRequestError::Timeout) {
                    timeout_error(call, self.timeout)
                } else {
                    transport_error(call, sent, e.to_string())
                }
            })?;
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let log_id = header(HEADER_LOG_ID);
            let rate_limit_reset = header(HEADER_RATELIMIT_RESET)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let status = response.status().as_u16();
            let body = response
                .body()
                .limit(MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| transport_error(call, true, format!("reading the answer: {e}")))?;
            Ok(RawAnswer {
                status,
                log_id,
                rate_limit_reset,
                body,
            })
        };
        let result = match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(timeout_error(call, self.timeout)),
        };
        match &result {
            Ok(answer) => tracing::debug!(
                call = call.name,
                status = answer.status,
                log_id = answer.log_id.as_deref(),
                "openapi answer"
            ),
            Err(e) => tracing::debug!(call = call.name, error = %e, "openapi call failed"),
        }
        result
    }
}

fn timeout_error(call: Call, after: Duration) -> OpenApiError {
    if call.refresh {
        OpenApiError::RefreshOutcomeUnknown {
            detail: format!("no answer within {} ms", after.as_millis()),
        }
    } else {
        OpenApiError::Timeout {
            call: call.name,
            idempotent: call.idempotent,
            after,
        }
    }
}

fn transport_error(call: Call, sent: bool, detail: String) -> OpenApiError {
    if call.refresh && sent {
        OpenApiError::RefreshOutcomeUnknown {
            detail: format!("network error after sending: {detail}"),
        }
    } else {
        OpenApiError::Transport {
            call: call.name,
            idempotent: call.idempotent,
            sent,
            detail,
        }
    }
}

/// The error-describing fields every answer may carry. `error` is an OAuth string on the
/// token endpoint but an object (`{"log_id": …}`) on IM errors: only strings are kept.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorFields {
    #[serde(default, deserialize_with = "de_code")]
    pub(crate) code: Option<i64>,
    #[serde(default, deserialize_with = "de_lenient_string")]
    pub(crate) msg: Option<String>,
    #[serde(default, deserialize_with = "de_lenient_string")]
    pub(crate) error: Option<String>,
    #[serde(default, deserialize_with = "de_lenient_string")]
    pub(crate) error_description: Option<String>,
}

impl RawAnswer {
    /// The error fields of the body (all `None` when the body is not a JSON object).
    pub(crate) fn error_fields(&self) -> ErrorFields {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The answer as an [`OpenApiError::Api`] built from `fields`.
    pub(crate) fn failure(&self, call: Call, fields: ErrorFields) -> OpenApiError {
        OpenApiError::Api(Box::new(ApiFailure {
            call: call.name,
            idempotent: call.idempotent,
            status: self.status,
            code: fields.code,
            msg: fields.msg,
            error: fields.error,
            error_description: fields.error_description,
            log_id: self.log_id.clone(),
            rate_limit_reset: self.rate_limit_reset,
        }))
    }

    /// Success is a 2xx status with `code` absent or 0 and no OAuth `error` (§2.3: token
    /// errors come with HTTP 400/500/503 *and* a body, so the body is read first).
    /// On success the body is parsed as `T`.
    pub(crate) fn decode<T: DeserializeOwned>(&self, call: Call) -> Result<T, OpenApiError> {
        let fields = self.error_fields();
        let ok = (200..300).contains(&self.status)
            && fields.code.unwrap_or(0) == 0
            && fields.error.is_none();
        if !ok {
            return Err(self.failure(call, fields));
        }
        serde_json::from_slice(&self.body).map_err(|e| self.invalid(call, &e))
    }

    /// An [`OpenApiError::InvalidResponse`] that names the position but never echoes a
    /// value (a serde message may quote the offending value, which could be a token).
    pub(crate) fn invalid(&self, call: Call, e: &serde_json::Error) -> OpenApiError {
        let text = e.to_string();
        let detail = if text.starts_with("missing field") {
            text
        } else {
            format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            )
        };
        OpenApiError::InvalidResponse {
            call: call.name,
            status: self.status,
            detail,
            log_id: self.log_id.clone(),
        }
    }
}

/// Deserializes a platform `code` given as a JSON number or a numeric string (`"0"`, as the
/// Lark EN pages show, §2.3). `null` or absent is `None`.
///
/// # Errors
/// A string that is not an integer, or another JSON type.
pub fn de_code<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| D::Error::custom("code is not an integer")),
        serde_json::Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| D::Error::custom("code string is not an integer")),
        _ => Err(D::Error::custom("code is neither a number nor a string")),
    }
}

/// A string field, or `None` for any other JSON type.
fn de_lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> RawAnswer {
        RawAnswer {
            status,
            log_id: None,
            rate_limit_reset: None,
            body: Bytes::from(body.to_string()),
        }
    }

    const CALL: Call = Call::new("test", true);

    #[test]
    fn code_parses_as_number_or_string() {
        let f: ErrorFields = serde_json::from_str(r#"{"code":"0"}"#).unwrap();
        assert_eq!(f.code, Some(0));
        let f: ErrorFields = serde_json::from_str(r#"{"code":"20050"}"#).unwrap();
        assert_eq!(f.code, Some(20050));
        let f: ErrorFields = serde_json::from_str(r#"{"code":20073}"#).unwrap();
        assert_eq!(f.code, Some(20073));
        let f: ErrorFields = serde_json::from_str(r#"{"msg":"x"}"#).unwrap();
        assert_eq!(f.code, None);
    }

    #[test]
    fn an_error_object_is_not_an_oauth_error() {
        let a = answer(
            400,
            r#"{"code":230013,"msg":"no availability","error":{"log_id":"x"}}"#,
        );
        let err = a.decode::<serde_json::Value>(CALL).unwrap_err();
        assert_eq!(err.code(), Some(230013));
    }

    #[test]
    fn invalid_answers_never_echo_values() {
        let a = answer(200, r#"{"code":0,"access_token":12345678}"#);
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            access_token: String,
        }
        let err = a.decode::<T>(CALL).unwrap_err();
        assert!(!err.to_string().contains("12345678"), "{err}");
    }
}
