//! A typed client of the control API (`INTERFACE.md`, "Control API"): what the CLI
//! subcommands `authorize`, `token`, `sessions`, `grants`, `revoke` and `top` use, and what
//! another Rust process can use to reach a running `lark-auth serve`.
//!
//! Runs on an actix System (it uses `awc`). Every request carries the bearer token; every
//! non-2xx answer becomes [`ClientError::Api`] with the server's stable error code.
//!
//! ```no_run
//! use lark_auth::client::ControlClient;
//! use lark_auth::secret::Secret;
//!
//! # async fn example() -> Result<(), lark_auth::client::ClientError> {
//! let client = ControlClient::new(
//!     "http://127.0.0.1:8787",
//!     Secret::new(std::env::var("LARK_AUTH_API_TOKEN").unwrap_or_default()),
//! )?;
//! let token = client.token("ou_7d8a6e6df7621556ce0d21922b676706ccs").await?;
//! println!("valid until {}", token.expires_at);
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::http::resources::{
    AuthorizationAccepted, AuthorizationRequest, ErrorBody, GrantResource, HealthResource,
    SessionResource, TokenResource,
};
use crate::secret::Secret;

/// How long one request may take, including a refresh the server does before answering
/// the token route (seconds).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer body read (bytes): a full page of grants or sessions fits many times.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Why a control API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not an `http://` or `https://` URL.
    #[error("invalid server URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No answer: the server is not running there, or did not answer within
    /// [`REQUEST_TIMEOUT`].
    #[error(
        "cannot reach lark-auth at {url}: {reason} (is `lark-auth serve` running? pass --server URL)"
    )]
    Unreachable {
        /// The request URL (no secrets: the token travels in a header).
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The server answered with an error status and a JSON error body.
    #[error("{} ({status}): {}", .body.error, .body.message)]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's `{error, message}`.
        body: ErrorBody,
    },
    /// The server answered something this client does not understand (another program
    /// on that port, or a version mismatch).
    #[error("unexpected answer from {url} (HTTP {status}): {reason}")]
    UnexpectedAnswer {
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// What could not be read.
        reason: String,
    },
}

impl ClientError {
    /// The server's stable error code (`no_grant`, `needs_reauth`, `unauthorized`,
    /// `rate_limited`, …) for [`ClientError::Api`]; `None` otherwise.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(body.error.as_str()),
            _ => None,
        }
    }
}

/// A client of one lark-auth server. Cheap to clone.
#[derive(Clone)]
pub struct ControlClient {
    base: url::Url,
    token: Secret<String>,
    http: awc::Client,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient")
            .field("base", &self.base.as_str())
            .field("token", &self.token)
            .finish()
    }
}

impl ControlClient {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:8787`) using the
    /// bearer `api_token`. Must be called on an actix System.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] when `base_url` is not an http(s) URL.
    pub fn new(base_url: &str, api_token: Secret<String>) -> Result<ControlClient, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let mut base = url::Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid("use http://host:port"));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = awc::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .disable_redirects()
            .finish();
        Ok(ControlClient {
            base,
            token: api_token,
            http,
        })
    }

    /// The server's base URL, as given (with a trailing `/`).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `base` + `segments` (each percent-encoded as one path segment).
    fn url(&self, segments: &[&str]) -> url::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends `req` (with the bearer token and optional JSON body) and reads a JSON answer
    /// of type `T` on 2xx.
    async fn call<T: DeserializeOwned>(
        &self,
        req: awc::ClientRequest,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Option<T>), ClientError> {
        let url = req.get_uri().to_string();
        let req = req.bearer_auth(self.token.expose());
        let sent = match body {
            Some(body) => req.send_json(body).await,
            None => req.send().await,
        };
        let mut res = sent.map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let status = res.status().as_u16();
        let bytes = res
            .body()
            .limit(BODY_LIMIT)
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let unexpected = |reason: String| ClientError::UnexpectedAnswer {
            url: url.clone(),
            status,
            reason,
        };
        if !(200..300).contains(&status) {
            let body: ErrorBody = serde_json::from_slice(&bytes)
                .map_err(|e| unexpected(format!("not a lark-auth error body: {e}")))?;
            return Err(ClientError::Api { status, body });
        }
        if status == 204 || bytes.is_empty() {
            return Ok((status, None));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| unexpected(e.to_string()))?;
        Ok((status, Some(value)))
    }

    async fn get<T: DeserializeOwned>(&self, url: url::Url) -> Result<T, ClientError> {
        let shown = url.to_string();
        match self.call(self.http.get(url.as_str()), None).await? {
            (_, Some(value)) => Ok(value),
            (status, None) => Err(ClientError::UnexpectedAnswer {
                url: shown,
                status,
                reason: "empty body".into(),
            }),
        }
    }

    /// `POST /v1/authorizations`: starts an authorization of `open_id` (or returns the
    /// one in flight). `scopes` empty: the server's defaults; `locale` (`zh_cn`, `en_us`)
    /// `None`: the server's card language.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `rate_limited` (429, `retry_after_secs` set),
    /// `invalid_open_id` or `invalid_locale` (400), `unauthorized` (401); transport errors.
    pub async fn authorize(
        &self,
        open_id: &str,
        scopes: &[String],
        locale: Option<&str>,
    ) -> Result<AuthorizationAccepted, ClientError> {
        let url = self.url(&["v1", "authorizations"]);
        let body = serde_json::to_value(AuthorizationRequest {
            open_id: open_id.to_string(),
            scopes: scopes.to_vec(),
            locale: locale.map(str::to_string),
        })
        .unwrap_or_default();
        match self.call(self.http.post(url.as_str()), Some(&body)).await? {
            (_, Some(accepted)) => Ok(accepted),
            (status, None) => Err(ClientError::UnexpectedAnswer {
                url: url.to_string(),
                status,
                reason: "empty body".into(),
            }),
        }
    }

    /// `GET /v1/authorizations/{session_id}`.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `no_session` (404); transport errors.
    pub async fn session(&self, session_id: &str) -> Result<SessionResource, ClientError> {
        self.get(self.url(&["v1", "authorizations", session_id]))
            .await
    }

    /// `GET /v1/authorizations[?state=S]`: sessions, most recently changed first (at most
    /// 1,000).
    ///
    /// # Errors
    /// [`ClientError::Api`] with `invalid_state` (400); transport errors.
    pub async fn sessions(&self, state: Option<&str>) -> Result<Vec<SessionResource>, ClientError> {
        let mut url = self.url(&["v1", "authorizations"]);
        if let Some(state) = state {
            url.query_pairs_mut().append_pair("state", state);
        }
        self.get(url).await
    }

    /// `GET /v1/grants` (no secrets).
    ///
    /// # Errors
    /// [`ClientError::Api`]; transport errors.
    pub async fn grants(&self) -> Result<Vec<GrantResource>, ClientError> {
        self.get(self.url(&["v1", "grants"])).await
    }

    /// `GET /v1/events/forward`: the event gateway's outbox per `[[events.forward]]`
    /// target (empty without targets).
    ///
    /// # Errors
    /// [`ClientError::Api`]; transport errors.
    pub async fn forward_status(
        &self,
    ) -> Result<Vec<crate::http::resources::ForwardTargetResource>, ClientError> {
        self.get(self.url(&["v1", "events", "forward"])).await
    }

    /// `GET /v1/grants/{open_id}/token`: a valid `user_access_token` (the server refreshes
    /// first when it is inside the margin).
    ///
    /// # Errors
    /// [`ClientError::Api`] with `no_grant` (404), `needs_reauth` (409), `refresh_failed`
    /// (503, retry later); transport errors.
    pub async fn token(&self, open_id: &str) -> Result<TokenResource, ClientError> {
        self.get(self.url(&["v1", "grants", open_id, "token"]))
            .await
    }

    /// `DELETE /v1/grants/{open_id}`: deletes the grant's tokens.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `no_grant` (404); transport errors.
    pub async fn revoke(&self, open_id: &str) -> Result<(), ClientError> {
        let url = self.url(&["v1", "grants", open_id]);
        self.call::<serde_json::Value>(self.http.delete(url.as_str()), None)
            .await
            .map(|_| ())
    }

    /// `GET /metrics`: the server's metrics in the OpenMetrics text format, as Prometheus
    /// scrapes them.
    ///
    /// # Errors
    /// [`ClientError::Api`] with `unauthorized` (401); transport errors;
    /// [`ClientError::UnexpectedAnswer`] when the body is not UTF-8.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = self.url(&["metrics"]);
        let shown = url.to_string();
        let req = self.http.get(url.as_str()).bearer_auth(self.token.expose());
        let mut res = req.send().await.map_err(|e| ClientError::Unreachable {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        let status = res.status().as_u16();
        let bytes = res
            .body()
            .limit(BODY_LIMIT)
            .await
            .map_err(|e| ClientError::Unreachable {
                url: shown.clone(),
                reason: e.to_string(),
            })?;
        if !(200..300).contains(&status) {
            let body: ErrorBody =
                serde_json::from_slice(&bytes).map_err(|e| ClientError::UnexpectedAnswer {
                    url: shown.clone(),
                    status,
                    reason: format!("not a lark-auth error body: {e}"),
                })?;
            return Err(ClientError::Api { status, body });
        }
        String::from_utf8(bytes.to_vec()).map_err(|e| ClientError::UnexpectedAnswer {
            url: shown,
            status,
            reason: e.to_string(),
        })
    }

    /// `GET /healthz` (the token is sent but not needed). A `503` answer is returned as
    /// `Ok` too: its body says what is down.
    ///
    /// # Errors
    /// Transport errors; [`ClientError::UnexpectedAnswer`].
    pub async fn health(&self) -> Result<HealthResource, ClientError> {
        let url = self.url(&["healthz"]);
        let shown = url.to_string();
        let mut res =
            self.http
                .get(url.as_str())
                .send()
                .await
                .map_err(|e| ClientError::Unreachable {
                    url: shown.clone(),
                    reason: e.to_string(),
                })?;
        let status = res.status().as_u16();
        res.json::<HealthResource>()
            .await
            .map_err(|e| ClientError::UnexpectedAnswer {
                url: shown,
                status,
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn urls_encode_each_segment_and_keep_a_base_path() {
        let c = ControlClient::new("http://127.0.0.1:8787", Secret::new("t".into())).unwrap();
        assert_eq!(
            c.url(&["v1", "grants", "ou_a/b?c", "token"]).as_str(),
            "http://127.0.0.1:8787/v1/grants/ou_a%2Fb%3Fc/token"
        );
        let c = ControlClient::new("http://h:1/lark", Secret::new("t".into())).unwrap();
        assert_eq!(c.url(&["healthz"]).as_str(), "http://h:1/lark/healthz");
    }

    #[actix_rt::test]
    async fn bad_urls_are_refused_and_the_token_is_not_in_debug() {
        for bad in ["127.0.0.1:8787", "ftp://h/", "not a url"] {
            assert!(matches!(
                ControlClient::new(bad, Secret::new("t".into())),
                Err(ClientError::InvalidUrl { .. })
            ));
        }
        let c = ControlClient::new("http://h:1", Secret::new("api-token-value".into())).unwrap();
        assert!(!format!("{c:?}").contains("api-token-value"));
    }
}
