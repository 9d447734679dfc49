//! The client subcommands of the `lark-auth` binary (`authorize`, `token`, `sessions`,
//! `grants`, `revoke`): their arguments and what each prints, over [`ControlClient`].
//!
//! Contract: `INTERFACE.md` ("Binary"). They reach a running server at `--server URL`
//! (default: `http://` + `[http] listen` of `--config`, or of `./config.toml` when it
//! exists, else `127.0.0.1:8787`) with the bearer token from the environment variable
//! named by `[http] api_token_env` (default `LARK_AUTH_API_TOKEN`).
//!
//! Exit codes: [`EXIT_OK`] 0, [`EXIT_ERROR`] 1 (server unreachable or refused),
//! [`EXIT_USAGE`] 2 (bad arguments or configuration), [`EXIT_NO_GRANT`] 3,
//! [`EXIT_NEEDS_REAUTH`] 4, [`EXIT_NOT_AUTHORIZED`] 5 (`authorize --wait` ended denied,
//! expired or failed).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Args;

use crate::client::{ClientError, ControlClient};
use crate::config::{Config, ConfigError};
use crate::http::resources::SessionResource;
use crate::secret::Secret;
use crate::session::machine::SessionState;

/// Success.
pub const EXIT_OK: u8 = 0;
/// The server could not be reached, refused the token, or answered an error not listed
/// below (rate limited, store unavailable, …).
pub const EXIT_ERROR: u8 = 1;
/// Bad arguments, unreadable configuration, or no API token in the environment.
pub const EXIT_USAGE: u8 = 2;
/// `token`, `revoke`: the user has no grant (authorize first).
pub const EXIT_NO_GRANT: u8 = 3;
/// `token`: the grant needs re-authorization (revoked, refresh token expired or reused).
pub const EXIT_NEEDS_REAUTH: u8 = 4;
/// `authorize --wait`: the session ended `denied`, `expired` or `failed`.
pub const EXIT_NOT_AUTHORIZED: u8 = 5;

/// How often `authorize --wait` asks for the session's state.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Where the client subcommands find the server and its token.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Base URL of the running lark-auth (e.g. http://127.0.0.1:8787). Default: the
    /// `[http] listen` address of the configuration.
    #[arg(long, env = "LARK_AUTH_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Configuration to read `[http] listen` and `[http] api_token_env` from. Default:
    /// ./config.toml when it exists, else the built-in defaults.
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// A command-line failure: the message to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code (see the module docs).
    pub code: u8,
    /// One line naming the cause and the fix.
    pub message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let code = match e.code() {
            Some("no_grant") => EXIT_NO_GRANT,
            Some("needs_reauth") => EXIT_NEEDS_REAUTH,
            _ => EXIT_ERROR,
        };
        let mut message = e.to_string();
        if e.code() == Some("unauthorized") {
            message.push_str(" (check the API token variable: it must match the server's)");
        }
        Failure { code, message }
    }
}

/// Result of one subcommand: `Ok` exits 0.
pub type CommandResult = Result<(), Failure>;

impl ServerArgs {
    /// The server's base URL and the bearer token, from the flags, the configuration and
    /// the environment (`env` looks a variable up).
    ///
    /// # Errors
    /// [`EXIT_USAGE`] failures: unreadable `--config`, no token in the environment, or an
    /// invalid URL.
    pub fn connect(&self, env: impl Fn(&str) -> Option<String>) -> Result<ControlClient, Failure> {
        let config = match &self.config {
            Some(path) => Config::from_file(path).map_err(|e| Failure::usage(e.to_string()))?,
            None => {
                let default = PathBuf::from("config.toml");
                if default.exists() {
                    Config::from_file(&default).map_err(|e| Failure::usage(e.to_string()))?
                } else {
                    Config::default()
                }
            }
        };
        let base = match &self.server {
            Some(url) if url.contains("://") => url.clone(),
            Some(host_port) => format!("http://{host_port}"),
            None => {
                let mut listen = config.http.listen;
                if listen.ip().is_unspecified() {
                    listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{listen}")
            }
        };
        let var = &config.http.api_token_env;
        let token = env(var).filter(|t| !t.is_empty()).ok_or_else(|| {
            Failure::usage(
                ConfigError::MissingEnv {
                    what: "control API token",
                    env: var.clone(),
                    key: "http.api_token_env",
                }
                .to_string(),
            )
        })?;
        ControlClient::new(&base, Secret::new(token)).map_err(|e| Failure::usage(e.to_string()))
    }
}

/// `lark-auth token`: prints the token alone (for `$(lark-auth token ou_…)`), or the JSON
/// answer `{"access_token", "expires_at"}` with `json`.
///
/// # Errors
/// [`EXIT_NO_GRANT`], [`EXIT_NEEDS_REAUTH`], [`EXIT_ERROR`].
pub async fn token(
    client: &ControlClient,
    open_id: &str,
    json: bool,
    out: &mut impl Write,
) -> CommandResult {
    let token = client.token(open_id).await?;
    let written = if json {
        let body = serde_json::json!({
            "access_token": token.access_token.expose(),
            "expires_at": token.expires_at,
        });
        writeln!(out, "{body}")
    } else {
        writeln!(out, "{}", token.access_token.expose())
    };
    written.map_err(io_failure)
}

/// `lark-auth revoke`: deletes the grant's tokens.
///
/// # Errors
/// [`EXIT_NO_GRANT`], [`EXIT_ERROR`].
pub async fn revoke(client: &ControlClient, open_id: &str, out: &mut impl Write) -> CommandResult {
    client.revoke(open_id).await?;
    writeln!(out, "revoked the grant of {open_id}").map_err(io_failure)
}

/// `lark-auth grants`: a table (or a JSON array) of grants, no secrets.
///
/// # Errors
/// [`EXIT_ERROR`].
pub async fn grants(client: &ControlClient, json: bool, out: &mut impl Write) -> CommandResult {
    let grants = client.grants().await?;
    if json {
        let text = serde_json::to_string_pretty(&grants).unwrap_or_default();
        return writeln!(out, "{text}").map_err(io_failure);
    }
    let rows: Vec<[String; 5]> = grants
        .into_iter()
        .map(|g| {
            [
                g.open_id,
                g.status,
                g.access_expires_at,
                g.refresh_expires_at,
                g.scopes.join(" "),
            ]
        })
        .collect();
    write_table(
        out,
        [
            "OPEN_ID",
            "STATUS",
            "ACCESS_EXPIRES_AT",
            "REFRESH_EXPIRES_AT",
            "SCOPES",
        ],
        &rows,
        "no grants yet: run `lark-auth authorize <open_id>`",
    )
}

/// `lark-auth events`: the event gateway's outbox per target, as a table (or the JSON
/// array of `GET /v1/events/forward`).
///
/// # Errors
/// [`EXIT_ERROR`].
pub async fn events(client: &ControlClient, json: bool, out: &mut impl Write) -> CommandResult {
    let targets = client.forward_status().await?;
    if json {
        let text = serde_json::to_string_pretty(&targets).unwrap_or_default();
        return writeln!(out, "{text}").map_err(io_failure);
    }
    let rows: Vec<[String; 6]> = targets
        .into_iter()
        .map(|t| {
            [
                t.target,
                t.pending.to_string(),
                t.delivered_total.to_string(),
                t.failed_total.to_string(),
                t.dead.to_string(),
                t.oldest_pending_at.unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    write_table(
        out,
        [
            "TARGET",
            "PENDING",
            "DELIVERED",
            "FAILED",
            "DEAD",
            "OLDEST_PENDING_AT",
        ],
        &rows,
        "no [[events.forward]] targets configured: events are not forwarded",
    )
}

/// Checks a `--state` value against the session states.
///
/// # Errors
/// A message listing the states.
pub fn parse_state(name: &str) -> Result<String, String> {
    SessionState::parse(name)
        .map(|s| s.as_str().to_string())
        .ok_or_else(|| {
            format!(
                "unknown state; use one of {}",
                SessionState::ALL.map(|s| s.as_str()).join(", ")
            )
        })
}

/// `lark-auth sessions`: a table (or a JSON array) of sessions, most recent first.
///
/// # Errors
/// [`EXIT_ERROR`].
pub async fn sessions(
    client: &ControlClient,
    state: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> CommandResult {
    let sessions = client.sessions(state).await?;
    if json {
        let text = serde_json::to_string_pretty(&sessions).unwrap_or_default();
        return writeln!(out, "{text}").map_err(io_failure);
    }
    let rows: Vec<[String; 6]> = sessions
        .into_iter()
        .map(|s| {
            [
                s.session_id,
                s.open_id,
                s.state,
                s.reason.unwrap_or_else(|| "-".into()),
                s.updated_at,
                s.expires_at,
            ]
        })
        .collect();
    write_table(
        out,
        [
            "SESSION_ID",
            "OPEN_ID",
            "STATE",
            "REASON",
            "UPDATED_AT",
            "EXPIRES_AT",
        ],
        &rows,
        "no sessions",
    )
}

/// `lark-auth authorize`: starts an authorization and prints its session; with `wait`,
/// follows it until it ends, with a live progress line on `progress` (rewritten in place
/// when `progress` is a terminal, one line per state change otherwise).
///
/// # Errors
/// [`EXIT_NOT_AUTHORIZED`] when the session ends denied, expired or failed;
/// [`EXIT_ERROR`] for a refusal (e.g. `rate_limited`) or a lost server.
pub async fn authorize(
    client: &ControlClient,
    open_id: &str,
    scopes: &[String],
    locale: Option<&str>,
    wait: bool,
    out: &mut impl Write,
    progress: &mut (impl Write + IsTerminal),
) -> CommandResult {
    let accepted = client
        .authorize(open_id, scopes, locale)
        .await
        .map_err(|e| {
            let mut failure = Failure::from(e);
            if failure.message.starts_with("rate_limited") {
                failure
                    .message
                    .push_str(" — a card was sent recently; wait or check `lark-auth sessions`");
            }
            failure
        })?;
    writeln!(
        out,
        "session {} for {open_id}: {}",
        accepted.session_id, accepted.state
    )
    .map_err(io_failure)?;
    if !wait {
        return Ok(());
    }
    let live = progress.is_terminal();
    let mut last_state = String::new();
    let session = loop {
        let session = client.session(&accepted.session_id).await?;
        if live {
            let _ = write!(progress, "\r\x1b[2K{}", progress_line(&session));
            let _ = progress.flush();
        } else if session.state != last_state {
            let _ = writeln!(progress, "{}", progress_line(&session));
        }
        last_state.clone_from(&session.state);
        if session.is_terminal() {
            break session;
        }
        actix_rt::time::sleep(WAIT_POLL).await;
    };
    if live {
        let _ = writeln!(progress);
    }
    let ended = match &session.reason {
        Some(reason) => format!("{} ({reason})", session.state),
        None => session.state.clone(),
    };
    writeln!(out, "session {} ended: {ended}", session.session_id).map_err(io_failure)?;
    if session.state == "authorized" {
        Ok(())
    } else {
        Err(Failure {
            code: EXIT_NOT_AUTHORIZED,
            message: format!("{open_id} did not authorize: {ended}"),
        })
    }
}

/// `as_… awaiting_user — waiting for the user to approve in Feishu (9m41s left)`.
fn progress_line(s: &SessionResource) -> String {
    let what = match s.state.as_str() {
        "created" => "preparing the authorization card",
        "card_sent" => "card sent; waiting for the user to open it",
        "awaiting_user" => "waiting for the user to approve in Feishu/Lark",
        "exchanging" => "user approved; fetching and storing the token",
        "authorized" => "authorized: the token is in the vault",
        "denied" => "the user declined",
        "expired" => "the session expired before the user decided",
        _ => "failed",
    };
    let left = humantime::parse_rfc3339(&s.expires_at)
        .ok()
        .and_then(|at| at.duration_since(SystemTime::now()).ok())
        .filter(|_| !s.is_terminal())
        .map(|d| {
            let secs = d.as_secs();
            format!(" ({}m{:02}s left)", secs / 60, secs % 60)
        })
        .unwrap_or_default();
    format!("{} {} — {what}{left}", s.session_id, s.state)
}

fn io_failure(e: std::io::Error) -> Failure {
    Failure {
        code: EXIT_ERROR,
        message: format!("cannot write the output: {e}"),
    }
}

/// Writes rows under a header, columns padded to their widest cell; `empty` when no rows.
fn write_table<const N: usize>(
    out: &mut impl Write,
    header: [&str; N],
    rows: &[[String; N]],
    empty: &str,
) -> CommandResult {
    if rows.is_empty() {
        return writeln!(out, "{empty}").map_err(io_failure);
    }
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text
    };
    writeln!(out, "{}", line(header.to_vec())).map_err(io_failure)?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect())).map_err(io_failure)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_and_say_when_empty() {
        let mut out = Vec::new();
        write_table(
            &mut out,
            ["A", "LONG_HEADER"],
            &[["wide-cell".into(), "x".into()], ["b".into(), "y".into()]],
            "none",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A          LONG_HEADER\nwide-cell  x\nb          y\n"
        );
        let mut out = Vec::new();
        write_table::<1>(&mut out, ["A"], &[], "none").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "none\n");
    }

    #[test]
    fn the_token_comes_from_the_variable_the_config_names_and_is_required() {
        let args = ServerArgs {
            server: Some("127.0.0.1:9".into()),
            config: None,
        };
        let failure = args.connect(|_| None).unwrap_err();
        assert_eq!(failure.code, EXIT_USAGE);
        assert!(
            failure.message.contains("LARK_AUTH_API_TOKEN"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn states_are_checked() {
        assert_eq!(parse_state("awaiting_user").unwrap(), "awaiting_user");
        assert!(
            parse_state("pending")
                .unwrap_err()
                .contains("awaiting_user")
        );
    }
}

/// What `lark-auth sidecar new-client` is asked for.
#[derive(Debug, Clone)]
pub struct NewSidecarClient {
    /// The client's name (`[[sidecar.clients]] name`).
    pub name: String,
    /// The user it acts as; `None`: the bot identity only.
    pub open_id: Option<String>,
    /// `LARKSUITE_CLI_AUTH_PROXY` as the sandbox reaches lark-auth; `None`: `http://` +
    /// `[sidecar] listen` (or `127.0.0.1:16384`).
    pub proxy_url: Option<String>,
}

/// The listen address suggested when `[sidecar] listen` is not set.
pub const DEFAULT_SIDECAR_LISTEN: &str = "127.0.0.1:16384";

/// A fresh sidecar client key: 32 bytes from the operating system's CSPRNG, as 64
/// lowercase hex characters (the text is the HMAC key on both sides).
pub fn new_sidecar_key() -> Secret<String> {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The environment variable a client's key is read from:
/// `LARK_AUTH_SIDECAR_KEY_<NAME>` (uppercase, `-` and `.` as `_`).
pub fn sidecar_key_env(name: &str) -> String {
    let suffix: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("LARK_AUTH_SIDECAR_KEY_{suffix}")
}

/// `lark-auth sidecar new-client`: the text to print for `request` with `key` — the key
/// in lark-auth's environment, the config lines to add, and the sandbox's environment
/// lines. `config` gives the brand, the app id (`app_id`, or the variable `app_id_env`
/// names, read through `env`) and `[sidecar] listen`. Holds the key: print it, never log
/// it.
pub fn sidecar_new_client_text(
    request: &NewSidecarClient,
    key: &Secret<String>,
    config: &Config,
    env: impl Fn(&str) -> Option<String>,
) -> String {
    let key_env = sidecar_key_env(&request.name);
    let listen = if config.sidecar.listen.trim().is_empty() {
        DEFAULT_SIDECAR_LISTEN.to_string()
    } else {
        config.sidecar.listen.trim().to_string()
    };
    let proxy_url = request
        .proxy_url
        .clone()
        .unwrap_or_else(|| format!("http://{listen}"));
    let app_id = config
        .app
        .app_id
        .clone()
        .filter(|a| !a.is_empty())
        .or_else(|| env(&config.app.app_id_env).filter(|a| !a.is_empty()))
        .unwrap_or_else(|| "cli_xxx  # your app id".to_string());
    let brand = match config.app.brand {
        crate::config::Brand::Feishu => "feishu",
        crate::config::Brand::Lark => "lark",
    };
    let (open_id, identities, acts_as) = match &request.open_id {
        Some(open_id) => (
            open_id.as_str(),
            "[\"user\", \"bot\"]",
            format!("acts as the user {open_id} (identity user) or as the app (identity bot)"),
        ),
        None => (
            "",
            "[\"bot\"]",
            "acts as the app only (identity bot)".to_string(),
        ),
    };
    let section = if config.sidecar.listen.trim().is_empty() {
        format!("# (and under [sidecar]: listen = \"{listen}\")\n")
    } else {
        String::new()
    };
    format!(
        "# Sidecar client `{name}`: {acts_as}.\n\
         #\n\
         # 1. lark-auth's environment (keep the key secret; it is shown only now):\n\
         export {key_env}={key}\n\
         #\n\
         # 2. lark-auth's config.toml (then restart lark-auth):\n\
         {section}[[sidecar.clients]]\n\
         name = \"{name}\"\n\
         key_env = \"{key_env}\"\n\
         open_id = \"{open_id}\"\n\
         identities = {identities}\n\
         #\n\
         # 3. The sandbox's environment (lark-cli, MCP tools); no token or app secret there:\n\
         export LARKSUITE_CLI_AUTH_PROXY={proxy_url}\n\
         export LARKSUITE_CLI_PROXY_KEY={key}\n\
         export LARKSUITE_CLI_APP_ID={app_id}\n\
         export LARKSUITE_CLI_BRAND={brand}\n",
        name = request.name,
        key = key.expose(),
    )
}
