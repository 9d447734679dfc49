//! An actix-web app that embeds lark-auth: the actors run on the app's own System, and a
//! handler asks the [`Handle`] for a user's `user_access_token` before calling Feishu on
//! the user's behalf.
//!
//! Against the real platform (the secrets come from the variables config.toml names):
//!
//! ```sh
//! LARK_APP_ID=cli_xxx LARK_APP_SECRET=yyy LARK_AUTH_VAULT_KEY=$(openssl rand -base64 32) \
//!   cargo run --example embed_actix_web -- config.toml
//! ```
//!
//! Without arguments it starts the built-in sandbox (a fake Lark on loopback) instead, so
//! it runs anywhere: `cargo run --example embed_actix_web`, then
//!
//! ```sh
//! curl localhost:8080/users/ou_test_user_1/calendar            # 404: no grant yet
//! curl -X POST localhost:8080/users/ou_test_user_1/authorize   # sends the card
//! curl -X POST localhost:8080/sandbox/users/ou_test_user_1/approve  # the simulated
//! #   user approves (sandbox only: a real user clicks Authorize on the card)
//! curl localhost:8080/users/ou_test_user_1/calendar            # 200 within ~15 s
//! ```
//!
//! (The simulated user approves without clicking Authorize on the card, so the session
//! polls at its slower pre-click cadence: up to 15 s. A real user's click speeds it up.)
//!
//! The app listens on 127.0.0.1:8080; lark-auth's own control API is not started (the app
//! is the front).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use lark_auth::sandbox::{Sandbox, SandboxConfig};
use lark_auth::tokens::GetTokenError;
use lark_auth::vault::{Keyring, VaultKey};
use lark_auth::{Config, Handle, LarkAuth, StartOptions};

/// `GET /users/{open_id}/calendar`: what a feature of the app looks like. It needs the
/// user's token; lark-auth hands out a valid one (refreshing first when due) or says why
/// there is none.
async fn calendar(path: web::Path<String>, auth: web::Data<Handle>) -> HttpResponse {
    let open_id = path.into_inner();
    match auth.token(&open_id).await {
        Ok(token) => {
            // Here the app would call e.g. GET /open-apis/calendar/v4/calendars with
            // `Authorization: Bearer {token.token.expose()}`. Never log the token itself.
            HttpResponse::Ok().json(serde_json::json!({
                "open_id": open_id,
                "token_expires_at_unix_ms": token.expires_ms,
                "next": "call the Feishu API with the token as bearer",
            }))
        }
        Err(GetTokenError::NoGrant) => HttpResponse::NotFound().json(serde_json::json!({
            "error": "no_grant",
            "message": format!("{open_id} has not authorized the app: POST /users/{open_id}/authorize"),
        })),
        Err(e @ (GetTokenError::NeedsReauth { .. } | GetTokenError::Revoked)) => {
            HttpResponse::Conflict().json(serde_json::json!({
                "error": "needs_reauth",
                "message": e.to_string(),
            }))
        }
        Err(e) => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "error": "token_unavailable",
            "message": e.to_string(),
        })),
    }
}

/// `POST /users/{open_id}/authorize`: sends the user an authorization card (or returns
/// the authorization already in flight).
async fn authorize(path: web::Path<String>, auth: web::Data<Handle>) -> HttpResponse {
    match auth.authorize(&path.into_inner(), Vec::new()).await {
        Ok(session) => HttpResponse::Accepted().json(serde_json::json!({
            "session_id": session.session_id,
            "state": session.state.as_str(),
        })),
        Err(e) => HttpResponse::TooManyRequests().json(serde_json::json!({
            "error": "not_started",
            "message": e.to_string(),
        })),
    }
}

/// `POST /sandbox/users/{open_id}/approve` (sandbox mode only): the simulated user
/// approves the authorization of the last card they received.
async fn sandbox_approve(path: web::Path<String>, sandbox: web::Data<Sandbox>) -> HttpResponse {
    match sandbox.approve_last_card(&path.into_inner()) {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({"approved": true})),
        Err(e) => HttpResponse::NotFound().json(serde_json::json!({
            "error": "nothing_to_approve",
            "message": format!("{e}: POST /users/{{open_id}}/authorize first"),
        })),
    }
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs on stderr, stdout stays for the app's own lines.
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stderr)
        .init();

    // With a config path: the real platform, secrets from the environment. Without: the
    // sandbox, with a throw-away vault key.
    let mut sandbox = None;
    let handle = match std::env::args().nth(1) {
        Some(path) => {
            let mut config = Config::from_file(path.as_ref())?;
            config.http.listen = "127.0.0.1:0".parse()?;
            LarkAuth::start(config)?
        }
        None => {
            let sandbox_server = Sandbox::start(SandboxConfig::default()).await?;
            let mut config = Config::for_tests(&sandbox_server.base_url());
            let dir = std::env::temp_dir().join(format!("embed-example-{}", std::process::id()));
            config.vault.path = dir;
            sandbox = Some(web::Data::new(sandbox_server));
            LarkAuth::start_with(
                config,
                StartOptions {
                    keyring: Keyring::single(1, VaultKey::generate()),
                    api_token: None,
                    http: false,
                    accept_loss: false,
                },
            )?
        }
    };

    // `web::Data` is an `Arc`: every worker shares the one handle.
    let auth = web::Data::new(handle);
    let app_auth = auth.clone();
    println!("listening on http://127.0.0.1:8080 (Ctrl-C stops)");
    HttpServer::new(move || {
        let app = App::new()
            .app_data(app_auth.clone())
            .route("/users/{open_id}/calendar", web::get().to(calendar))
            .route("/users/{open_id}/authorize", web::post().to(authorize));
        match &sandbox {
            Some(sandbox) => app.app_data(sandbox.clone()).route(
                "/sandbox/users/{open_id}/approve",
                web::post().to(sandbox_approve),
            ),
            None => app,
        }
    })
    .bind(("127.0.0.1", 8080))?
    .run()
    .await?;

    // The server stopped (Ctrl-C): stop lark-auth gracefully, sessions persisted.
    if let Some(handle) = Arc::into_inner(auth.into_inner()) {
        handle.shutdown(Duration::from_secs(3)).await;
    }
    Ok(())
}
