//! `tenant_access_token` of the internal (self-built) app (§3.1):
//! `POST {open}/open-apis/auth/v3/tenant_access_token/internal`, JSON `{app_id, app_secret}`,
//! answer top-level `{code, msg, tenant_access_token, expire}` where `expire` is the
//! **seconds remaining** (≤ 7200).
//!
//! The platform returns the same token while ≥ 30 minutes remain and a new one after that
//! (the old one stays valid until its own expiry). [`OpenApiClient::tenant_access_token`]
//! therefore caches the token and fetches again only when less than
//! [`REFETCH_MARGIN`] remains, with at most one fetch in flight: every caller that arrives
//! while a fetch runs waits for that fetch and gets its result (token or error).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use futures_util::future::{LocalBoxFuture, Shared};
use serde::{Deserialize, Serialize};

use super::{Call, OpenApiClient, OpenApiError, Transport};
use crate::secret::Secret;

/// Path of the internal-app tenant token endpoint (§3.1).
pub const TENANT_TOKEN_PATH: &str = "/open-apis/auth/v3/tenant_access_token/internal";

/// A cached token is fetched again when less than this remains: 30 minutes (§3.1, §8 item 9).
pub const REFETCH_MARGIN: Duration = Duration::from_secs(30 * 60);

const CALL: Call = Call::new("tenant_access_token", true);

/// A `tenant_access_token` and how long it was valid for when it was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantAccessToken {
    /// The token (`t-…`), for `Authorization: Bearer`.
    pub token: Secret<String>,
    /// Seconds remaining at issue time (the `expire` field, §3.1), as a duration.
    pub expire: Duration,
    /// When the request was sent (the token is valid at least until `sent_at + expire`).
    pub sent_at: Instant,
}

impl TenantAccessToken {
    /// The instant the token expires, counted conservatively from the request's send time.
    pub fn expires_at(&self) -> Instant {
        self.sent_at + self.expire
    }
}

#[derive(Serialize)]
struct Request<'a> {
    app_id: &'a str,
    app_secret: &'a str,
}

#[derive(Deserialize)]
struct Answer {
    tenant_access_token: Secret<String>,
    expire: u64,
}

type Fetch = Shared<LocalBoxFuture<'static, Result<TenantAccessToken, OpenApiError>>>;

/// The cache and the fetch in flight.
#[derive(Default)]
pub(crate) struct TenantTokenCache {
    cached: RefCell<Option<TenantAccessToken>>,
    in_flight: RefCell<Option<Fetch>>,
}

impl Transport {
    /// One request to the tenant token endpoint, no cache.
    pub(crate) async fn fetch_tenant_access_token(
        &self,
    ) -> Result<TenantAccessToken, OpenApiError> {
        let body = Request {
            app_id: &self.credentials.app_id,
            app_secret: self.credentials.app_secret.expose(),
        };
        let sent_at = Instant::now();
        let request = self
            .http
            .post(self.open_url(TENANT_TOKEN_PATH))
            .send_json(&body);
        let answer = self.execute(CALL, request).await?;
        let parsed: Answer = answer.decode(CALL)?;
        Ok(TenantAccessToken {
            token: parsed.tenant_access_token,
            expire: Duration::from_secs(parsed.expire),
            sent_at,
        })
    }
}

impl OpenApiClient {
    /// A `tenant_access_token` valid for at least 30 more minutes: the cached one, or a new
    /// one fetched now. Concurrent callers share one fetch (single flight).
    ///
    /// # Errors
    /// The fetch's [`OpenApiError`] (every waiting caller gets the same one): e.g.
    /// [`OpenApiError::Api`] with `code` 10003 / 99991543 for wrong credentials (§3.1),
    /// [`OpenApiError::Timeout`] or [`OpenApiError::Transport`] (retryable: the call is
    /// idempotent).
    pub async fn tenant_access_token(&self) -> Result<Secret<String>, OpenApiError> {
        let cache = &self.inner.tenant;
        if let Some(cached) = cache.cached.borrow().as_ref()
            && cached.expires_at() > Instant::now() + REFETCH_MARGIN
        {
            return Ok(cached.token.clone());
        }
        let fetch = cache
            .in_flight
            .borrow_mut()
            .get_or_insert_with(|| {
                let transport = self.inner.transport.clone();
                async move { transport.fetch_tenant_access_token().await }
                    .boxed_local()
                    .shared()
            })
            .clone();
        let result = fetch.clone().await;
        {
            let mut in_flight = cache.in_flight.borrow_mut();
            if in_flight.as_ref().is_some_and(|f| f.ptr_eq(&fetch)) {
                *in_flight = None;
                if let Ok(token) = &result {
                    *cache.cached.borrow_mut() = Some(token.clone());
                }
            }
        }
        result.map(|t| t.token)
    }

    /// One uncached request to the tenant token endpoint (the cache is not touched). For
    /// checks and tests; services use [`tenant_access_token`](Self::tenant_access_token).
    ///
    /// # Errors
    /// As [`tenant_access_token`](Self::tenant_access_token).
    pub async fn fetch_tenant_access_token(&self) -> Result<TenantAccessToken, OpenApiError> {
        self.inner.transport.fetch_tenant_access_token().await
    }

    /// Forgets the cached token, e.g. after an API answered 99991663 (tenant token
    /// invalid, §6); the next [`tenant_access_token`](Self::tenant_access_token) fetches.
    pub fn invalidate_tenant_access_token(&self) {
        *self.inner.tenant.cached.borrow_mut() = None;
    }
}
