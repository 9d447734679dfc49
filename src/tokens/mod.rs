//! The `get_token` feature, above the vault: valid access tokens with single-flight
//! refresh.
//!
//! - [`TokenSource`]: `get_token` with single-flight refresh against
//!   the [`RefreshGrant`] seam, implemented for the platform by
//!   [`OpenApiRefresher`].
//! - [`TokenCache`]: opened access tokens kept in memory, invalidated
//!   by every vault write of the grant ([`TokenCache::for_vault`]).
//! - [`TokenService`]: the actor answering [`GetToken`] for other
//!   threads (the HTTP workers, [`Handle::token`](crate::app::Handle::token)).
//! - [`access`]: what `get_token` answers ([`AccessToken`], [`GetTokenError`]).
//!
//! The vault underneath ([`crate::vault`]) stores and seals grants and knows nothing of
//! this module. Instants are unix epoch milliseconds (UTC).

pub mod access;
pub mod cache;
pub mod refresher;
pub mod service;
pub mod source;

pub use self::access::{AccessToken, GetTokenError};
pub use self::cache::{DEFAULT_TOKEN_CACHE_ENTRIES, TokenCache};
pub use self::refresher::{
    NewTokens, OpenApiRefresher, RefreshFailure, RefreshGrant, refresh_failure_of,
};
pub use self::service::{GetToken, RefreshRejected, TokenService};
pub use self::source::{RefreshCounts, SlotGate, TokenEvent, TokenObserver, TokenSource};
