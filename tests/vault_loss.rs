//! A vault whose recent writes were lost after they had been acknowledged (a torn log tail
//! after `kill -9`, a disk fault): sled opens it without error, so lark-auth must notice,
//! refuse to start with one line naming the loss, and start only when told to accept it —
//! reporting the loss and never resuming a session whose last change may be lost.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use lark_auth::config::Config;
use lark_auth::sandbox::{Sandbox, SandboxConfig};
use lark_auth::secret::Secret;
use lark_auth::session::machine::{SessionRecord, SessionState};
use lark_auth::session::store::SessionCodec;
use lark_auth::store::{SledStore, Store};
use lark_auth::tokens::GetTokenError;
use lark_auth::vault::{
    DuePolicy, GrantRecord, GrantStatus, Keyring, UserIdentity, Vault, VaultKey, unix_now_ms,
};
use lark_auth::{Handle, LarkAuth, StartError, StartOptions};

const BIN: &str = env!("CARGO_BIN_EXE_lark-auth");
/// 32 bytes, base64.
const VAULT_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const APP_ID: &str = "cli_sandbox_app";
const KEPT: &str = "ou_kept_user";
const LOST: &str = "ou_lost_user";
/// A session pending when the first batch was acknowledged, denied in the lost batch.
const ENDED_SESSION: &str = "as_ended_before_the_crash";

fn keyring() -> Keyring {
    Keyring::single(1, VaultKey::from_base64(VAULT_KEY).unwrap())
}

fn grant(open_id: &str) -> GrantRecord {
    let now = unix_now_ms();
    GrantRecord {
        app_id: APP_ID.into(),
        identity: UserIdentity {
            open_id: open_id.into(),
            union_id: None,
            user_id: None,
            name: None,
            tenant_key: None,
        },
        access_token: Secret::new(format!("u-access-{open_id}")),
        refresh_token: Secret::new(format!("ur-refresh-{open_id}")),
        access_expires_ms: now + 7_200_000,
        refresh_expires_ms: now + 30 * 86_400_000,
        issued_ms: now,
        scopes: vec!["offline_access".into()],
        consent_ms: now,
        last_used_ms: now,
        status: GrantStatus::Active,
        status_code: None,
        failures: 0,
        retry_at_ms: None,
        refresh_started_ms: None,
        reauth_requested_ms: None,
        version: 0,
    }
}

/// Writes through the store (every batch flushed, as acknowledged writes are), then tears
/// sled's log just after the first batch, as a crash in the middle of writing the log
/// can: the grant of [`LOST`] and the end of [`ENDED_SESSION`] were acknowledged and are
/// gone.
fn write_then_tear_the_log(vault_dir: &Path) {
    let keyring = keyring();
    let codec = SessionCodec::new(&keyring).unwrap();
    let mut session = SessionRecord::new(
        ENDED_SESSION.into(),
        KEPT.into(),
        vec!["offline_access".to_string()],
        None,
        unix_now_ms(),
        600_000,
    );
    let log = vault_dir.join("db");
    let first_batch_end = {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(vault_dir).unwrap());
        let vault = Vault::open(store.clone(), APP_ID, keyring, DuePolicy::default()).unwrap();
        vault.store_grant(grant(KEPT)).unwrap();
        store
            .put_session(ENDED_SESSION, &codec.encode(&session))
            .unwrap();
        store.flush().unwrap();
        let first_batch_end = std::fs::metadata(&log).unwrap().len();
        vault.store_grant(grant(LOST)).unwrap();
        session.state = SessionState::Denied;
        session.updated_at_ms = unix_now_ms();
        store
            .put_session(ENDED_SESSION, &codec.encode(&session))
            .unwrap();
        store.flush().unwrap();
        assert!(std::fs::metadata(&log).unwrap().len() > first_batch_end);
        first_batch_end
    };
    // A torn entry: a few bytes of the second batch made it to the file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(first_batch_end + 10)
        .unwrap();
    // sled itself opens the damaged directory without a word, without the second batch.
    let store = SledStore::open(vault_dir).expect("sled opens the torn log");
    let vault = Vault::open(
        Arc::new(store),
        APP_ID,
        self::keyring(),
        DuePolicy::default(),
    )
    .expect("the key still opens it");
    assert!(vault.get(KEPT).unwrap().is_some());
    assert!(
        vault.get(LOST).unwrap().is_none(),
        "the tear lost the grant"
    );
}

fn config(base_url: &str, vault_dir: &Path) -> Config {
    let mut config = Config::for_tests(base_url);
    config.vault.path = vault_dir.to_path_buf();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config
}

fn start(base_url: &str, vault_dir: &Path, accept_loss: bool) -> Result<Handle, StartError> {
    LarkAuth::start_with(
        config(base_url, vault_dir),
        StartOptions {
            keyring: keyring(),
            api_token: Some(Secret::new("vault-loss-test-token".into())),
            http: true,
            accept_loss,
        },
    )
}

/// Runs `phase` on a System of its own on a blocking thread, so that everything the
/// service started (and its hold on the store) is gone when it returns, while the test's
/// System keeps serving the sandbox.
async fn in_own_system<F, Fut>(phase: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    actix_rt::task::spawn_blocking(move || actix::System::new().block_on(phase()))
        .await
        .expect("the phase's assertions hold");
}

#[actix_rt::test]
async fn start_refuses_a_vault_that_lost_acknowledged_writes_unless_told_to_accept_it() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let base_url = sandbox.base_url();
    let dir = tempfile::tempdir().unwrap();
    let vault_dir = dir.path().join("vault");
    write_then_tear_the_log(&vault_dir);

    // Refused, with one line that says what was lost and what to do.
    let err = start(&base_url, &vault_dir, false).err().expect("refused");
    assert!(matches!(err, StartError::VaultLoss(_)), "{err:?}");
    let line = err.to_string();
    assert!(!line.contains('\n'), "one line: {line}");
    for needle in [
        "lost acknowledged writes",
        vault_dir.to_str().unwrap(),
        "docs/operations.md",
        "--accept-loss",
    ] {
        assert!(line.contains(needle), "names {needle:?}: {line}");
    }
    // Refusing wrote nothing: refused again.
    assert!(matches!(
        start(&base_url, &vault_dir, false).err(),
        Some(StartError::VaultLoss(_))
    ));

    // Accepted: starts, and says so.
    let (url, path) = (base_url.clone(), vault_dir.clone());
    in_own_system(move || async move {
        let handle = start(&url, &path, true).expect("starts with accept_loss");
        let loss = handle
            .vault_loss()
            .expect("the handle reports the loss")
            .clone();
        assert!(loss.acknowledged.unwrap().generation > loss.found.unwrap().generation);
        let metrics = handle.metrics().encode();
        assert!(
            metrics.contains("lark_auth_vault_loss_detected 1"),
            "{metrics}"
        );
        let mut res = awc::Client::default()
            .get(format!("http://{}/healthz", handle.http_addr().unwrap()))
            .send()
            .await
            .unwrap();
        let health: serde_json::Value = res.json().await.unwrap();
        assert_eq!(health["vault"], "ok");
        assert!(
            health["vault_loss"]
                .as_str()
                .is_some_and(|s| s.contains("lost acknowledged writes")),
            "{health}"
        );
        // What is left is served; what was lost is gone.
        assert!(handle.token(KEPT).await.is_ok());
        assert!(matches!(
            handle.token(LOST).await,
            Err(GetTokenError::NoGrant)
        ));
        // The session had ended, but its end was lost: it is expired, not resumed.
        let view = handle
            .session(ENDED_SESSION)
            .await
            .unwrap()
            .expect("still listed");
        assert_eq!(view.state, SessionState::Expired);
        handle.shutdown(std::time::Duration::from_secs(2)).await;
    })
    .await;
    assert!(sandbox.sent_cards().is_empty(), "no card re-sent");

    // Accepted once: the next start finds the vault whole again.
    let (url, path) = (base_url.clone(), vault_dir.clone());
    in_own_system(move || async move {
        let handle = start(&url, &path, false).expect("starts after the loss was accepted");
        assert!(handle.vault_loss().is_none());
        let metrics = handle.metrics().encode();
        assert!(
            metrics.contains("lark_auth_vault_loss_detected 0"),
            "{metrics}"
        );
        let view = handle.session(ENDED_SESSION).await.unwrap().unwrap();
        assert_eq!(view.state, SessionState::Expired);
        handle.shutdown(std::time::Duration::from_secs(2)).await;
    })
    .await;
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env("LARK_APP_ID", APP_ID)
        .env("LARK_APP_SECRET", "sandbox-secret")
        .env("LARK_AUTH_VAULT_KEY", VAULT_KEY)
        .env("LARK_AUTH_API_TOKEN", "api-token-value")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// Runs the binary to its end; a run that has not ended after a minute (a `serve` that
/// started instead of refusing) is killed and reported.
fn run(args: &[&str]) -> Output {
    let mut child = command(args).spawn().expect("binary runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{args:?} did not exit: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A serve config for `sandbox` with the vault at `vault_dir` and the control API on
/// `port`.
fn serve_config(dir: &Path, sandbox: &Sandbox, vault_dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[endpoints]\nopen_base_url = \"{0}\"\naccounts_base_url = \"{0}\"\n[vault]\npath = \"{1}\"\n[http]\nlisten = \"127.0.0.1:{2}\"\n",
            sandbox.base_url(),
            vault_dir.display(),
            port,
        ),
    )
    .unwrap();
    path
}

#[actix_rt::test]
async fn serve_exits_with_one_line_on_a_lost_write_and_starts_with_accept_loss() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault_dir = dir.path().join("vault");
    write_then_tear_the_log(&vault_dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = serve_config(dir.path(), &sandbox, &vault_dir, port);
    let config = config.to_str().unwrap().to_string();

    let out = {
        let config = config.clone();
        actix_rt::task::spawn_blocking(move || run(&["serve", "--config", &config]))
            .await
            .unwrap()
    };
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("lost acknowledged writes"), "{stderr}");
    assert!(stderr.contains("--accept-loss"), "{stderr}");
    // check-config tells the same.
    let out = run(&["check-config", "--config", &config]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("lost acknowledged writes"),
        "{}",
        text(&out.stderr)
    );

    let child = command(&["serve", "--accept-loss", "--config", &config])
        .spawn()
        .unwrap();
    let client = awc::Client::default();
    let mut health = None;
    for _ in 0..200 {
        if let Ok(mut res) = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            if res.status().as_u16() == 200 {
                health = Some(body);
                break;
            }
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = child.id().to_string();
    let out = actix_rt::task::spawn_blocking(move || {
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let health = health.expect("serve --accept-loss became healthy");
    assert!(health["vault_loss"].is_string(), "{health}");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let logged = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("lost acknowledged writes"))
        })
        .expect("the loss is logged");
    assert_eq!(logged["level"], "ERROR", "{logged}");
}
