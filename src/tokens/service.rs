//! The TokenService actor: `get_token` for callers on other threads (the HTTP workers,
//! [`Handle::token`](crate::app::Handle::token)), answered through the shared
//! single-flight [`TokenSource`] on the System's thread.
//!
//! Accepts: [`GetToken`], [`RefreshRejected`]. Sends nothing.

use actix::prelude::*;

use super::access::{AccessToken, GetTokenError};
use super::refresher::OpenApiRefresher;
use super::source::TokenSource;
use crate::secret::Secret;

/// Answers `get_token` through the shared single-flight [`TokenSource`], for callers on
/// other threads (the HTTP workers).
pub struct TokenService {
    source: TokenSource<OpenApiRefresher>,
}

impl TokenService {
    /// A service answering through `source` (start it on the thread `source` lives on).
    pub fn new(source: TokenSource<OpenApiRefresher>) -> TokenService {
        TokenService { source }
    }
}

impl Actor for TokenService {
    type Context = Context<Self>;
}

/// Asks for a valid access token of `open_id` (refreshing first when inside the margin).
/// Sent by the HTTP front and [`Handle::token`](crate::app::Handle::token); the reply is
/// the token or why there is none ([`GetTokenError`]).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<AccessToken, GetTokenError>")]
pub struct GetToken {
    /// The user.
    pub open_id: String,
}

impl Handler<GetToken> for TokenService {
    type Result = ResponseFuture<Result<AccessToken, GetTokenError>>;

    fn handle(&mut self, msg: GetToken, _: &mut Context<Self>) -> Self::Result {
        let source = self.source.clone();
        Box::pin(async move { source.get_token(&msg.open_id).await })
    }
}

/// The platform refused `rejected` (99991668 / 99991677): asks for a token of `open_id`
/// other than it, refreshing once (single flight with [`GetToken`]; see
/// [`TokenSource::refresh_rejected`]). Sent by the OpenAPI proxy before its one retry.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<AccessToken, GetTokenError>")]
pub struct RefreshRejected {
    /// The user.
    pub open_id: String,
    /// The access token the platform refused.
    pub rejected: Secret<String>,
}

impl Handler<RefreshRejected> for TokenService {
    type Result = ResponseFuture<Result<AccessToken, GetTokenError>>;

    fn handle(&mut self, msg: RefreshRejected, _: &mut Context<Self>) -> Self::Result {
        let source = self.source.clone();
        Box::pin(async move { source.refresh_rejected(&msg.open_id, &msg.rejected).await })
    }
}
