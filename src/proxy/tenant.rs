//! The app identity's token for the OpenAPI proxy: the `TenantTokenService` actor, on the
//! System's thread where the [`OpenApiClient`] (its cached, single-flight
//! `tenant_access_token`) lives, answering callers on the HTTP worker threads.
//!
//! Accepts: [`GetTenantToken`]. Sends nothing.

use actix::prelude::*;

use crate::openapi::{OpenApiClient, OpenApiError};
use crate::secret::Secret;

/// Answers [`GetTenantToken`] from the OpenAPI client's tenant token cache.
pub struct TenantTokenService {
    client: OpenApiClient,
}

impl TenantTokenService {
    /// A service over `client` (start it on the thread `client` was built on).
    pub fn new(client: OpenApiClient) -> TenantTokenService {
        TenantTokenService { client }
    }
}

impl Actor for TenantTokenService {
    type Context = Context<Self>;
}

/// Asks for the app's `tenant_access_token`. With `rejected` (the platform answered
/// 99991663 to it, §6): a token other than that one, fetching a new one when the cached
/// token is still the rejected one (concurrent callers share the fetch).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Secret<String>, OpenApiError>")]
pub struct GetTenantToken {
    /// The token the platform refused, if any.
    pub rejected: Option<Secret<String>>,
}

impl Handler<GetTenantToken> for TenantTokenService {
    type Result = ResponseFuture<Result<Secret<String>, OpenApiError>>;

    fn handle(&mut self, msg: GetTenantToken, _: &mut Context<Self>) -> Self::Result {
        let client = self.client.clone();
        Box::pin(async move {
            let token = client.tenant_access_token().await?;
            match msg.rejected {
                Some(rejected) if rejected == token => {
                    client.invalidate_tenant_access_token();
                    client.tenant_access_token().await
                }
                _ => Ok(token),
            }
        })
    }
}
