//! The `lark-auth` binary: sets up logging, loads configuration, starts the library on an
//! actix System and waits for a signal. All behaviour lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lark_auth::cli::ServerArgs;
use lark_auth::config::{Config, LogFormat};

/// Gets, stores and keeps fresh the user_access_token of Feishu/Lark users for one
/// self-built app. Events and card callbacks arrive over the Lark long connection, so no
/// public callback URL is needed.
#[derive(Debug, Parser)]
#[command(name = "lark-auth", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: the long connection, authorization sessions, the encrypted token
    /// vault, proactive refresh and the control API.
    ///
    /// Reads from the environment variables the config names: the app id and secret
    /// (LARK_APP_ID / LARK_APP_SECRET), the 32-byte base64 vault key (LARK_AUTH_VAULT_KEY)
    /// and the control API bearer token (LARK_AUTH_API_TOKEN). Logs one JSON object per line
    /// on stdout. Stops gracefully on SIGINT/SIGTERM. Exits 2 on invalid configuration or
    /// environment, 1 on a fatal runtime error (bad credentials, connection limit, vault
    /// locked or wrong key, a vault that lost acknowledged writes), each with one line
    /// naming the cause.
    ///
    /// Example: LARK_APP_ID=cli_xxx LARK_APP_SECRET=yyy LARK_AUTH_VAULT_KEY=$(cat vault.key)
    /// LARK_AUTH_API_TOKEN=zzz lark-auth serve --config config.toml
    Serve {
        /// Path of the TOML configuration. Default: ./config.toml when it exists, else the
        /// built-in defaults (every key has one; the app credentials come from
        /// LARK_APP_ID / LARK_APP_SECRET).
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Start even if the vault lost writes it had acknowledged (damaged files after a
        /// crash, or sled's files restored from an older copy). Without it serve refuses
        /// and exits 1; restore the backup instead when you have one (docs/operations.md,
        /// "Restore a damaged vault"). With it the loss is logged, shown by /healthz and
        /// the lark_auth_vault_loss_detected gauge, and unfinished authorizations expire.
        #[arg(long)]
        accept_loss: bool,
    },
    /// Run the product end to end against the built-in sandbox (a fake Lark platform on
    /// loopback): no credentials, no network. Prints each step; exits 0 on success.
    ///
    /// Logs go to stderr at `warn` (set RUST_LOG=info to see them all).
    ///
    /// Example: lark-auth demo --locale en_us
    Demo {
        /// Language of the demo's card and toasts (what auth.card_locale sets in a real
        /// configuration): zh_cn (default) or en_us.
        #[arg(long, value_parser = ["zh_cn", "en_us"])]
        locale: Option<String>,
    },
    /// Validate the configuration and the environment (including that the vault key opens
    /// an existing vault), then print the effective settings with secrets redacted. Exits
    /// 0 when valid, 2 otherwise.
    ///
    /// Reads the same environment variables as serve (their names are config keys): the
    /// app id and secret (LARK_APP_ID / LARK_APP_SECRET), the 32-byte base64 vault key
    /// (LARK_AUTH_VAULT_KEY), the control API token (LARK_AUTH_API_TOKEN), and with
    /// [store] backend = "postgres" the database URL (LARK_AUTH_DATABASE_URL). Every one
    /// that is missing is named in the error.
    ///
    /// Example: lark-auth check-config --config config.toml
    CheckConfig {
        /// Path of the TOML configuration. Default: ./config.toml when it exists, else the
        /// built-in defaults.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Copy a sled vault into the PostgreSQL store of the configuration ([store] backend =
    /// "postgres"): the key checks, every grant, every session and the event gateway's
    /// outbox, sealed as they are (the same vault key opens both; it is checked on both
    /// sides first). Idempotent: what the PostgreSQL store already holds is left as it is,
    /// so an interrupted copy is finished by running it again. Creates or migrates the
    /// schema as serve does. Stop the sled instance first (its vault is locked while it
    /// runs). Prints what was copied as JSON.
    ///
    /// Exits 0 when copied, 1 when a store cannot be opened or read (or the key does not
    /// open it), 2 on invalid configuration or environment.
    ///
    /// Example: LARK_AUTH_DATABASE_URL=postgres://lark@db/lark lark-auth migrate-store
    /// --config config.toml --from-sled /var/lib/lark-auth/vault
    MigrateStore {
        /// Path of the TOML configuration (with [store] backend = "postgres"). Default:
        /// ./config.toml when it exists.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// The sled vault directory to copy from ([vault] path of the single instance).
        #[arg(long, value_name = "PATH")]
        from_sled: PathBuf,
    },
    /// Ask a running server to start an authorization: the user gets a card in
    /// Feishu/Lark and approves there. Prints the session; with --wait, shows its progress
    /// until it ends.
    ///
    /// Exits 0 when started (with --wait: only when authorized), 5 when the session ended
    /// denied, expired or failed, 1 when refused (e.g. rate_limited: 5 a minute per user)
    /// or the server is unreachable, 2 on bad arguments or no API token.
    ///
    /// Example: lark-auth authorize ou_7d8a6e6df7621556ce0d21922b676706ccs --wait
    #[command(after_help = CLIENT_HELP)]
    Authorize {
        /// The user's open_id (ou_…).
        #[arg(value_parser = parse_open_id)]
        open_id: String,
        /// A scope to request (repeat for several). Default: the server's
        /// auth.default_scopes; offline_access is always added.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Language of the card: zh_cn or en_us. Default: the server's auth.card_locale
        /// (the platform does not tell a user's language before consent).
        #[arg(long, value_name = "LOCALE", value_parser = ["zh_cn", "en_us"])]
        locale: Option<String>,
        /// Follow the session until it ends, with a live progress line on stderr.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print a valid user_access_token of a user (the server refreshes it first when it is
    /// about to expire). Prints only the token, for use in scripts.
    ///
    /// Exits 0 with the token, 3 when the user has no grant (run `authorize`), 4 when the
    /// grant needs re-authorization (revoked or lapsed), 1 when the server is unreachable
    /// or the refresh failed (retry later), 2 on bad arguments or no API token.
    ///
    /// Example: curl -H "Authorization: Bearer $(lark-auth token ou_7d8a…)" https://open.feishu.cn/open-apis/authen/v1/user_info
    #[command(after_help = CLIENT_HELP)]
    Token {
        /// The user's open_id (ou_…).
        #[arg(value_parser = parse_open_id)]
        open_id: String,
        /// Print {"access_token", "expires_at"} as JSON instead of the bare token.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List authorization sessions, most recently changed first: running ones and ended
    /// ones until pruned. No secrets.
    ///
    /// Exits 0, 1 when the server is unreachable or refuses, 2 on bad arguments or no API
    /// token.
    ///
    /// Example: lark-auth sessions --state awaiting_user
    #[command(after_help = CLIENT_HELP)]
    Sessions {
        /// Only sessions in this state: created, card_sent, awaiting_user, exchanging,
        /// authorized, expired, denied, failed.
        #[arg(long, value_parser = lark_auth::cli::parse_state)]
        state: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show the event gateway's outbox per [[events.forward]] target: pending deliveries,
    /// delivered and failed tries since the start, dead deliveries, the oldest pending
    /// event's arrival.
    ///
    /// Exits 0, 1 when the server is unreachable or refuses, 2 on bad arguments or no API
    /// token.
    ///
    /// Example: lark-auth events
    #[command(after_help = CLIENT_HELP)]
    Events {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the stored grants: user, status, expiry of both tokens, scopes. No secrets.
    ///
    /// Exits 0, 1 when the server is unreachable or refuses, 2 on bad arguments or no API
    /// token.
    ///
    /// Example: lark-auth grants
    #[command(after_help = CLIENT_HELP)]
    Grants {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a user's stored tokens (the revocation is recorded). The user must
    /// authorize again before a token can be served.
    ///
    /// Exits 0 when revoked, 3 when the user has no grant, 1 when the server is
    /// unreachable, 2 on bad arguments or no API token.
    ///
    /// Example: lark-auth revoke ou_7d8a6e6df7621556ce0d21922b676706ccs
    #[command(after_help = CLIENT_HELP)]
    Revoke {
        /// The user's open_id (ou_…).
        #[arg(value_parser = parse_open_id)]
        open_id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The sidecar door for sandboxed agents (the official Lark CLI's auth proxy): set up
    /// its clients. The door itself runs inside `serve` when [sidecar] listen is set
    /// (docs/operations.md, "Act as the user from an agent sandbox").
    ///
    /// Example: lark-auth sidecar new-client agent-alice --open-id ou_7d8a6e6df7621556ce0d21922b676706ccs
    #[command(subcommand)]
    Sidecar(SidecarCommand),
    /// Watch a running server live: the long connection, events per second, sessions by
    /// state, grants by status, the refresh backlog, the token endpoint's use against its
    /// budget and the recent failures, from /metrics and the control API, redrawn every
    /// second. Quit with q, Esc or Ctrl-C. With --once, print the same sections once as
    /// plain text (for scripts; rates need the live view).
    ///
    /// Exits 0, 1 when the server is unreachable or refuses the token (--once) or the
    /// terminal cannot be used, 2 on bad arguments or no API token.
    ///
    /// Example: lark-auth top --server http://127.0.0.1:8787
    #[command(after_help = CLIENT_HELP)]
    Top {
        /// Print one snapshot as plain text and exit, instead of the live view.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// `lark-auth sidecar …`.
#[derive(Debug, Subcommand)]
enum SidecarCommand {
    /// Make a new sidecar client: prints a fresh random key (32 bytes from the OS CSPRNG,
    /// 64 hex characters), the line that puts it in lark-auth's environment, the
    /// [[sidecar.clients]] lines to add to config.toml, and the environment of the sandbox
    /// where lark-cli (or an MCP tool) runs: LARKSUITE_CLI_AUTH_PROXY,
    /// LARKSUITE_CLI_PROXY_KEY, LARKSUITE_CLI_APP_ID, LARKSUITE_CLI_BRAND. The sandbox then
    /// acts as that user (and as the app) with no token and no app secret: lark-auth
    /// verifies each signed request and injects a fresh token.
    ///
    /// Nothing is written or sent: add the lines yourself and restart lark-auth. The key
    /// is shown only this once. Exits 0, 2 on bad arguments or an unreadable config.
    ///
    /// Example: lark-auth sidecar new-client agent-alice --open-id ou_7d8a6e6df7621556ce0d21922b676706ccs
    NewClient {
        /// The client's name (letters, digits, `-`, `_`, `.`): shown in audit lines, and
        /// names the key's variable (LARK_AUTH_SIDECAR_KEY_<NAME>).
        #[arg(value_parser = parse_client_name)]
        name: String,
        /// The user this client acts as (ou_…). Without it the client may only use the
        /// app's identity (bot).
        #[arg(long, value_parser = parse_open_id)]
        open_id: Option<String>,
        /// The proxy address as the sandbox reaches lark-auth (LARKSUITE_CLI_AUTH_PROXY),
        /// e.g. http://host.docker.internal:16384. Default: http:// + [sidecar] listen (or
        /// 127.0.0.1:16384).
        #[arg(long, value_name = "URL")]
        proxy_url: Option<String>,
        /// Configuration to read the brand, the app id and [sidecar] listen from.
        /// Default: ./config.toml when it exists, else the built-in defaults.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

/// The configuration read when `--config` is not given and the file exists.
const DEFAULT_CONFIG: &str = "config.toml";

/// Shown after the help of every client subcommand.
const CLIENT_HELP: &str = "The server is reached at --server URL (or LARK_AUTH_SERVER), \
else at http:// + [http] listen of --config (default ./config.toml when present, else \
127.0.0.1:8787). The bearer token is read from the environment variable named by \
[http] api_token_env (default LARK_AUTH_API_TOKEN).";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            accept_loss,
        } => serve(config.as_deref(), accept_loss),
        Command::CheckConfig { config } => check_config(config.as_deref()),
        Command::MigrateStore { config, from_sled } => migrate_store(config.as_deref(), &from_sled),
        Command::Demo { locale } => demo(locale.as_deref()),
        Command::Authorize {
            open_id,
            scopes,
            locale,
            wait,
            server,
        } => client_command(&server, |client| async move {
            let mut stderr = std::io::stderr();
            lark_auth::cli::authorize(
                &client,
                &open_id,
                &scopes,
                locale.as_deref(),
                wait,
                &mut std::io::stdout(),
                &mut stderr,
            )
            .await
        }),
        Command::Token {
            open_id,
            json,
            server,
        } => client_command(&server, |client| async move {
            lark_auth::cli::token(&client, &open_id, json, &mut std::io::stdout()).await
        }),
        Command::Sessions {
            state,
            json,
            server,
        } => client_command(&server, |client| async move {
            lark_auth::cli::sessions(&client, state.as_deref(), json, &mut std::io::stdout()).await
        }),
        Command::Events { json, server } => client_command(&server, |client| async move {
            lark_auth::cli::events(&client, json, &mut std::io::stdout()).await
        }),
        Command::Grants { json, server } => client_command(&server, |client| async move {
            lark_auth::cli::grants(&client, json, &mut std::io::stdout()).await
        }),
        Command::Revoke { open_id, server } => client_command(&server, |client| async move {
            lark_auth::cli::revoke(&client, &open_id, &mut std::io::stdout()).await
        }),
        Command::Sidecar(SidecarCommand::NewClient {
            name,
            open_id,
            proxy_url,
            config,
        }) => sidecar_new_client(name, open_id, proxy_url, config.as_deref()),
        Command::Top { once, server } => client_command(&server, |client| async move {
            if once {
                lark_auth::top::once(&client, &mut std::io::stdout()).await
            } else {
                lark_auth::top::live(&client).await
            }
        }),
    }
}

/// Refuses an `open_id` argument not shaped like the platform's before any request
/// (clap prints the reason and exits 2).
fn parse_open_id(value: &str) -> Result<String, String> {
    lark_auth::openapi::check_open_id(value)
        .map(|()| value.to_string())
        .map_err(|e| e.to_string())
}

/// Refuses a sidecar client name that could not be a config name or a variable suffix.
fn parse_client_name(value: &str) -> Result<String, String> {
    if !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        Ok(value.to_string())
    } else {
        Err("use letters, digits, `-`, `_` or `.`".to_string())
    }
}

/// `sidecar new-client`: prints the key, the config lines and the sandbox's environment.
fn sidecar_new_client(
    name: String,
    open_id: Option<String>,
    proxy_url: Option<String>,
    path: Option<&Path>,
) -> ExitCode {
    let default = Path::new(DEFAULT_CONFIG);
    let config = match path {
        Some(path) => Config::from_file(path),
        None if default.exists() => Config::from_file(default),
        None => Ok(Config::default()),
    };
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("lark-auth: {e}");
            return ExitCode::from(2);
        }
    };
    let request = lark_auth::cli::NewSidecarClient {
        name,
        open_id,
        proxy_url,
    };
    let key = lark_auth::cli::new_sidecar_key();
    print!(
        "{}",
        lark_auth::cli::sidecar_new_client_text(&request, &key, &config, |k| std::env::var(k).ok())
    );
    ExitCode::SUCCESS
}

/// Runs one client subcommand on a fresh actix System; prints a failure on stderr and
/// returns its exit code.
fn client_command<F, Fut>(server: &ServerArgs, run: F) -> ExitCode
where
    F: FnOnce(lark_auth::client::ControlClient) -> Fut,
    Fut: std::future::Future<Output = lark_auth::cli::CommandResult>,
{
    let system = actix::System::new();
    let result = system.block_on(async {
        let client = server.connect(|k| std::env::var(k).ok())?;
        run(client).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("lark-auth: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// The configuration at `path`; without one, `./config.toml` when it exists, else the
/// defaults. Validated, credentials resolved from the environment.
fn load_config(path: Option<&Path>) -> Result<Config, lark_auth::config::ConfigError> {
    let default = Path::new(DEFAULT_CONFIG);
    let mut config = match path {
        Some(path) => Config::from_file(path)?,
        None if default.exists() => Config::from_file(default)?,
        None => Config::default(),
    };
    config.validate()?;
    config.resolve_credentials(|k| std::env::var(k).ok())?;
    config.resolve_store_url(|k| std::env::var(k).ok())?;
    config.resolve_forward_keys(|k| std::env::var(k).ok())?;
    config.resolve_sidecar_keys(|k| std::env::var(k).ok())?;
    Ok(config)
}

/// What `load_config` read, for messages.
fn config_source(path: Option<&Path>) -> String {
    match path {
        Some(path) => path.display().to_string(),
        None if Path::new(DEFAULT_CONFIG).exists() => DEFAULT_CONFIG.to_string(),
        None => "(none: built-in defaults)".to_string(),
    }
}

/// The environment variables `path`'s configuration needs that are unset or empty, as
/// one line naming each with its config key; `None` when all are set (or the file itself
/// does not load: `load_config` reports that).
fn missing_environment(path: Option<&Path>) -> Option<String> {
    let default = Path::new(DEFAULT_CONFIG);
    let config = match path {
        Some(path) => Config::from_file(path).ok()?,
        None if default.exists() => Config::from_file(default).ok()?,
        None => Config::default(),
    };
    let missing: Vec<String> = config
        .required_env()
        .into_iter()
        .filter(|(var, _)| std::env::var(var).map_or(true, |v| v.is_empty()))
        .map(|(var, key)| format!("`{var}` ({key})"))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "missing environment variables (each named by the config key in brackets): {}",
            missing.join(", ")
        )
    })
}

fn check_config(path: Option<&Path>) -> ExitCode {
    if let Some(missing) = missing_environment(path) {
        eprintln!("lark-auth: {missing}");
        return ExitCode::from(2);
    }
    let checked = load_config(path)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            let env = |k: &str| std::env::var(k).ok();
            let keyring = lark_auth::vault::Keyring::from_config(&config.vault, env)
                .map_err(|e| e.to_string())?;
            if env(&config.http.api_token_env).is_none_or(|t| t.is_empty()) {
                return Err(lark_auth::config::ConfigError::MissingEnv {
                    what: "control API token",
                    env: config.http.api_token_env.clone(),
                    key: "http.api_token_env",
                }
                .to_string());
            }
            let vault = check_vault(&config, keyring)?;
            Ok((config, vault))
        });
    match checked {
        Ok((config, vault)) => {
            let shown = serde_json::json!({
                "config_file": config_source(path),
                "vault": vault,
                "app_id": config.app.credentials.as_ref().map(|c| c.app_id.clone()),
                "app_secret": "[redacted]",
                "vault_key": "[redacted]",
                "api_token": "[redacted]",
                "open_base_url": config.open_base_url(),
                "accounts_base_url": config.accounts_base_url(),
                "settings": config,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&shown).unwrap_or_default()
            );
            println!("config OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lark-auth: {e}");
            ExitCode::from(2)
        }
    }
}

/// `migrate-store`: copies the sled vault at `from` into the configured PostgreSQL store.
fn migrate_store(path: Option<&Path>, from: &Path) -> ExitCode {
    use lark_auth::store::{PostgresOptions, PostgresStore, SledStore, Store, migrate};
    let prepared = load_config(path)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            if config.store.backend != lark_auth::config::StoreBackend::Postgres {
                return Err(
                    "migrate-store copies into PostgreSQL: set [store] backend = \"postgres\" in the configuration"
                        .to_string(),
                );
            }
            let keyring = lark_auth::vault::Keyring::from_config(&config.vault, |k| {
                std::env::var(k).ok()
            })
            .map_err(|e| e.to_string())?;
            let app_id = config
                .app
                .credentials
                .as_ref()
                .map(|c| c.app_id.clone())
                .ok_or("missing app id: set LARK_APP_ID (the grants are copied per app)")?;
            if !from.join("conf").exists() && !from.join("db").exists() {
                return Err(format!("{}: not a sled vault (no such store)", from.display()));
            }
            Ok((config, keyring, app_id))
        });
    let (config, keyring, app_id) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("lark-auth: {e}");
            return ExitCode::from(2);
        }
    };
    let copied = (|| {
        let source: std::sync::Arc<dyn Store> = std::sync::Arc::new(
            SledStore::open(from).map_err(|e| format!("cannot open {}: {e}", from.display()))?,
        );
        if let Some(loss) = source.detected_loss() {
            return Err(format!(
                "{}: {}; restore its backup first (docs/operations.md, \"Restore a damaged vault\")",
                from.display(),
                lark_auth::StartError::VaultLoss(loss)
            ));
        }
        open_vault_with_key(&config, source.clone(), keyring.clone())
            .map_err(|e| format!("{}: {e}", from.display()))?;
        let url = config.store.url.clone().ok_or_else(|| {
            format!(
                "missing PostgreSQL connection URL: set `{}`",
                config.store.url_env
            )
        })?;
        let target = PostgresStore::open(&PostgresOptions::new(url, &config.store.schema))
            .map_err(|e| format!("cannot open the PostgreSQL store: {e}"))?;
        let location = target.location().to_string();
        let target: std::sync::Arc<dyn Store> = std::sync::Arc::new(target);
        open_vault_with_key(&config, target.clone(), keyring)
            .map_err(|e| format!("{location}: {e}"))?;
        let report = migrate::copy_store(
            &*source,
            &*target,
            &app_id,
            config.sessions.dedup_ttl.as_millis() as u64,
        )
        .map_err(|e| format!("copy stopped (run again to finish): {e}"))?;
        Ok((location, report))
    })();
    match copied {
        Ok((location, report)) => {
            let shown = serde_json::json!({
                "from": from.display().to_string(),
                "to": location,
                "copied": report,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&shown).unwrap_or_default()
            );
            println!(
                "copied {} grants ({} already there), {} sessions ({} already there), {} outbox entries ({} already there)",
                report.grants_copied,
                report.grants_present,
                report.sessions_copied,
                report.sessions_present,
                report.outbox_copied,
                report.outbox_present
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lark-auth: {e}");
            ExitCode::from(1)
        }
    }
}

/// Opens an existing vault with the configured key (read-only use: nothing is written
/// unless the key is right, and a missing vault is not created). Returns what to show.
///
/// # Errors
/// A wrong key or an unreadable store, as `serve` would report them.
fn check_vault(config: &Config, keyring: lark_auth::vault::Keyring) -> Result<String, String> {
    use lark_auth::store::{SledStore, StoreError};
    if config.store.backend == lark_auth::config::StoreBackend::Postgres {
        return check_postgres_store(config, keyring);
    }
    let path = &config.vault.path;
    if !path.exists() {
        return Ok(format!(
            "{} does not exist yet: serve creates it",
            path.display()
        ));
    }
    let store = match SledStore::open(path) {
        Ok(store) => std::sync::Arc::new(store),
        Err(StoreError::Locked { .. }) => {
            return Ok(format!(
                "{} is in use by a running lark-auth: key not checked",
                path.display()
            ));
        }
        Err(e) => return Err(format!("cannot open the vault store: {e}")),
    };
    if let Some(loss) = lark_auth::store::Store::detected_loss(&*store) {
        return Err(lark_auth::StartError::VaultLoss(loss).to_string());
    }
    open_vault_with_key(config, store, keyring)?;
    Ok(format!("{}: the key opens it", path.display()))
}

/// Opens the vault on `store` with the configured app id and key, as `serve` would.
///
/// # Errors
/// A wrong key (or a store the vault cannot read), as one line.
fn open_vault_with_key(
    config: &Config,
    store: std::sync::Arc<dyn lark_auth::store::Store>,
    keyring: lark_auth::vault::Keyring,
) -> Result<(), String> {
    let app_id = config
        .app
        .credentials
        .as_ref()
        .map(|c| c.app_id.clone())
        .unwrap_or_default();
    lark_auth::vault::Vault::open(
        store,
        app_id,
        keyring,
        lark_auth::vault::DuePolicy {
            keepalive_lead: config.refresh.keepalive,
        },
    )
    .map(|_| ())
    .map_err(|e| format!("cannot open the vault: {e}"))
}

/// `check_vault` on PostgreSQL: connects, checks the schema's version (creating and
/// migrating nothing) and, on a current schema, that the key opens the store's key check.
fn check_postgres_store(
    config: &Config,
    keyring: lark_auth::vault::Keyring,
) -> Result<String, String> {
    use lark_auth::store::{PostgresOptions, PostgresStore, SCHEMA_VERSION};
    let url = config.store.url.clone().ok_or_else(|| {
        format!(
            "missing PostgreSQL connection URL: set `{}`",
            config.store.url_env
        )
    })?;
    let options = PostgresOptions::new(url, &config.store.schema);
    let (store, version) = PostgresStore::connect_and_check(&options)
        .map_err(|e| format!("cannot open the vault store: {e}"))?;
    let location = store.location().to_string();
    if version == 0 {
        return Ok(format!("{location}: no schema yet: serve creates it"));
    }
    if version < SCHEMA_VERSION {
        return Ok(format!(
            "{location}: schema version {version}: serve migrates it to {SCHEMA_VERSION}; key not checked"
        ));
    }
    open_vault_with_key(config, std::sync::Arc::new(store), keyring)?;
    Ok(format!(
        "{location}: schema version {version}, the key opens it"
    ))
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log.format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .init(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .pretty()
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .init(),
    }
}

fn demo(locale: Option<&str>) -> ExitCode {
    // clap has checked the value against the two it accepts.
    let card_locale = locale
        .and_then(lark_auth::config::CardLocale::from_platform)
        .unwrap_or_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let system = actix::System::new();
    let result =
        system.block_on(async { lark_auth::demo::run(&mut std::io::stdout(), card_locale).await });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lark-auth demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: Option<&Path>, accept_loss: bool) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("lark-auth: {e}");
            return ExitCode::from(2);
        }
    };
    let env = |k: &str| std::env::var(k).ok();
    let keyring = match lark_auth::vault::Keyring::from_config(&config.vault, env) {
        Ok(keyring) => keyring,
        Err(e) => {
            eprintln!(
                "lark-auth: {e} (generate a key with `openssl rand -base64 32` and keep it safe: it decrypts the vault)"
            );
            return ExitCode::from(2);
        }
    };
    let api_token = env(&config.http.api_token_env)
        .filter(|t| !t.is_empty())
        .map(lark_auth::secret::Secret::new);
    if api_token.is_none() {
        eprintln!(
            "lark-auth: missing control API token: set the environment variable `{}` (named by config key `http.api_token_env`)",
            config.http.api_token_env
        );
        return ExitCode::from(2);
    }
    init_logging(&config);
    let options = lark_auth::app::StartOptions {
        keyring,
        api_token,
        http: true,
        accept_loss,
    };
    let system = actix::System::new();
    let result = system.block_on(lark_auth::service::run_until_signal(config, options));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "lark-auth stopped on a fatal error");
            eprintln!("lark-auth: {e}");
            ExitCode::FAILURE
        }
    }
}
