//! lark-auth: gets, stores and keeps fresh the `user_access_token` of Feishu/Lark users for
//! one self-built app, with events and card callbacks received over the Lark long
//! connection.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod connection;
#[cfg(feature = "sandbox")]
pub mod demo;
pub mod event_log;
pub mod events;
pub mod http;
pub mod http_client;
pub mod metrics;
pub mod openapi;
pub mod protocol;
pub mod proxy;
pub mod refresh;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod secret;
pub mod service;
pub mod session;
pub mod store;
pub mod token_endpoint;
pub mod tokens;
pub mod top;
pub mod vault;

pub use app::{Handle, LarkAuth, StartError, StartOptions};
pub use config::Config;
