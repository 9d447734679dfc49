//! The binary on `[store] backend = "postgres"`, against a throwaway PostgreSQL server:
//! `check-config` connects and checks the schema (and the key once the schema exists),
//! `serve` creates the schema and runs on it (one instance), and every failure at start
//! is one line on stderr that never shows the URL's password. A database that goes away
//! under a running `serve` shows as `/healthz` 503 and `lark_auth_store_up 0`.

mod pg_common;

use std::process::{Command, Output, Stdio};

use lark_auth::sandbox::{Sandbox, SandboxConfig};

const BIN: &str = env!("CARGO_BIN_EXE_lark-auth");
/// 32 bytes, base64.
const VAULT_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const OTHER_KEY: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
/// Trust authentication ignores it; it must never be printed all the same.
const PASSWORD: &str = "hunter2-secret";

fn command(args: &[&str], key: &str, url: Option<&str>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("LARK_AUTH_DATABASE_URL")
        .env("LARK_APP_ID", "cli_sandbox_app")
        .env("LARK_APP_SECRET", "sandbox-secret")
        .env("LARK_AUTH_VAULT_KEY", key)
        .env("LARK_AUTH_API_TOKEN", "api-token-value");
    if let Some(url) = url {
        cmd.env("LARK_AUTH_DATABASE_URL", url);
    }
    cmd
}

fn run(args: &[&str], key: &str, url: Option<&str>) -> Output {
    command(args, key, url).output().expect("binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config for `sandbox` on PostgreSQL schema `schema`, the HTTP front on `port`.
fn write_config(dir: &std::path::Path, sandbox: &Sandbox, schema: &str, port: u16) -> String {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[endpoints]\nopen_base_url = \"{0}\"\naccounts_base_url = \"{0}\"\n\
             [vault]\npath = \"{1}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [store]\nbackend = \"postgres\"\nschema = \"{schema}\"\n",
            sandbox.base_url(),
            dir.join("vault").display(),
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn assert_one_line_without_password(out: &Output) -> String {
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(
        !format!("{stderr}{}", text(&out.stdout)).contains(PASSWORD),
        "{stderr}"
    );
    stderr
}

/// `/healthz` once it answers 200 with a connected link, within 15 s.
async fn wait_healthy(port: u16) -> Option<serde_json::Value> {
    let client = awc::Client::default();
    let health = format!("http://127.0.0.1:{port}/healthz");
    for _ in 0..300 {
        if let Ok(mut res) = client.get(&health).send().await {
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            if res.status().as_u16() == 200 && body["connection"] == "connected" {
                return Some(body);
            }
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}

/// `GET path` on the control API with the API token: (status, body).
async fn get(port: u16, path: &str) -> (u16, String) {
    let mut res = awc::Client::default()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth("api-token-value")
        .send()
        .await
        .unwrap();
    let body = res.body().limit(1 << 22).await.unwrap();
    (res.status().as_u16(), text(&body))
}

#[actix_rt::test]
async fn check_config_and_serve_run_on_postgresql() {
    let server = pg_common::TestPostgres::start();
    let url = format!("{} password={PASSWORD}", server.url());
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &sandbox, "lark_auth", port);
    let check = ["check-config", "--config", config.as_str()];

    // No URL in the environment.
    let out = run(&check, VAULT_KEY, None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = assert_one_line_without_password(&out);
    assert!(
        stderr.contains("LARK_AUTH_DATABASE_URL") && stderr.contains("store.url_env"),
        "{stderr}"
    );

    // Reachable, no schema yet: nothing created.
    let out = run(&check, VAULT_KEY, Some(&url));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("no schema yet"), "{stdout}");
    assert!(stdout.contains("\"backend\": \"postgres\""), "{stdout}");
    assert!(!stdout.contains(PASSWORD), "{stdout}");
    assert_eq!(
        server.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'lark_auth'"),
        "0"
    );

    // serve creates the schema and runs on it.
    let child = command(&["serve", "--config", &config], VAULT_KEY, Some(&url))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let healthy = wait_healthy(port).await;
    let pid = child.id().to_string();
    let stop = move || {
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        child.wait_with_output().unwrap()
    };
    let Some(healthy) = healthy else {
        let out = actix_rt::task::spawn_blocking(stop).await.unwrap();
        panic!(
            "serve on PostgreSQL never became healthy: {}{}",
            text(&out.stderr),
            text(&out.stdout)
        );
    };
    assert_eq!(healthy["vault"], "ok");
    let out = actix_rt::task::spawn_blocking(stop).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let logs = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!logs.contains(PASSWORD), "{logs}");
    // Sessions are shared (issue 14): no "run a single instance" warning any more.
    assert!(!logs.contains("run a single instance"), "{logs}");
    assert!(!dir.path().join("vault").exists(), "no sled vault made");
    assert_eq!(
        server.psql("SELECT max(version) FROM lark_auth.schema_version"),
        lark_auth::store::SCHEMA_VERSION.to_string()
    );
    assert_eq!(
        server.psql("SELECT count(*) > 0 FROM lark_auth.meta WHERE name LIKE 'keycheck%'"),
        "t",
        "serve wrote the key check into PostgreSQL"
    );

    // check-config now opens the store's key check with the key, and refuses another.
    let out = run(&check, VAULT_KEY, Some(&url));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("the key opens it"),
        "{}",
        text(&out.stdout)
    );
    let out = run(&check, OTHER_KEY, Some(&url));
    assert_eq!(out.status.code(), Some(2));
    let stderr = assert_one_line_without_password(&out);
    assert!(stderr.contains("wrong vault key"), "{stderr}");
    let out = run(&["serve", "--config", &config], OTHER_KEY, Some(&url));
    let stderr = assert_one_line_without_password(&out);
    assert!(stderr.contains("key"), "{stderr}");
}

#[actix_rt::test]
async fn failures_at_start_are_one_line_without_the_password() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sandbox, "lark_auth", free_port());
    // Nothing listens in an empty directory.
    let unreachable = format!(
        "host={} port=5432 user=lark password={PASSWORD} dbname=auth connect_timeout=2",
        dir.path().display()
    );
    for args in [
        ["serve", "--config", config.as_str()],
        ["check-config", "--config", config.as_str()],
    ] {
        let out = run(&args, VAULT_KEY, Some(&unreachable));
        let stderr = assert_one_line_without_password(&out);
        assert!(
            stderr.contains("cannot open the PostgreSQL store") && stderr.contains("user=lark"),
            "{args:?}: {stderr}"
        );
        let out = run(
            &args,
            VAULT_KEY,
            Some(&format!("postgres://lark:{PASSWORD}@[::1")),
        );
        let stderr = assert_one_line_without_password(&out);
        assert!(
            stderr.contains("invalid PostgreSQL connection URL"),
            "{args:?}: {stderr}"
        );
    }
    let bad_schema = write_config(dir.path(), &sandbox, "Lark-Auth", free_port());
    let out = run(
        &["check-config", "--config", &bad_schema],
        VAULT_KEY,
        Some(&unreachable),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = assert_one_line_without_password(&out);
    assert!(stderr.contains("store.schema"), "{stderr}");
}

#[actix_rt::test]
async fn a_database_that_goes_away_shows_in_healthz_and_store_up() {
    let mut server = pg_common::TestPostgres::start();
    let url = format!("{} password={PASSWORD}", server.url());
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &sandbox, "lark_auth", port);
    let mut child = command(&["serve", "--config", &config], VAULT_KEY, Some(&url))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let healthy = wait_healthy(port).await;
    let up = get(port, "/metrics").await;

    server.stop();
    let health_down = get(port, "/healthz").await;
    let metrics_down = get(port, "/metrics").await;
    let grants_down = get(port, "/v1/grants").await;
    let _ = child.kill();
    let _ = child.wait();

    let healthy = healthy.expect("healthy on PostgreSQL");
    assert_eq!(healthy["vault"], "ok");
    assert_eq!(healthy["store"], "ok");
    assert_eq!(up.0, 200);
    assert!(up.1.contains("lark_auth_store_up 1"), "{}", up.1);
    assert_eq!(health_down.0, 503, "{}", health_down.1);
    let body: serde_json::Value = serde_json::from_str(&health_down.1).unwrap();
    assert_eq!(body["vault"], "unavailable", "{body}");
    assert_eq!(body["store"], "unreachable", "{body}");
    assert_eq!(grants_down.0, 503, "{}", grants_down.1);
    assert!(
        grants_down.1.contains("store_unavailable"),
        "{}",
        grants_down.1
    );
    assert!(!grants_down.1.contains(PASSWORD), "{}", grants_down.1);
    assert_eq!(metrics_down.0, 200);
    assert!(
        metrics_down.1.contains("lark_auth_store_up 0"),
        "{}",
        metrics_down.1
    );
}

/// A grant of the sandbox app for `open_id` (secrets sealed by the vault).
fn grant(open_id: &str) -> lark_auth::vault::GrantRecord {
    use lark_auth::secret::Secret;
    use lark_auth::vault::{GrantRecord, GrantStatus, UserIdentity};
    GrantRecord {
        app_id: "cli_sandbox_app".into(),
        identity: UserIdentity {
            open_id: open_id.into(),
            union_id: None,
            user_id: None,
            name: Some("Migrated User".into()),
            tenant_key: None,
        },
        access_token: Secret::new("u-ACCESS".into()),
        refresh_token: Secret::new("ur-REFRESH".into()),
        access_expires_ms: 4_102_444_800_000,
        refresh_expires_ms: 4_103_049_600_000,
        issued_ms: 0,
        scopes: vec!["offline_access".into()],
        consent_ms: 1_767_218_400_000,
        last_used_ms: 1_767_218_400_000,
        status: GrantStatus::Active,
        status_code: None,
        failures: 0,
        retry_at_ms: None,
        refresh_started_ms: None,
        reauth_requested_ms: None,
        version: 0,
    }
}

#[actix_rt::test]
async fn migrate_store_copies_a_sled_vault_into_postgresql_once() {
    use lark_auth::store::{OutboxEvent, SledStore, Store};
    use lark_auth::vault::{DuePolicy, Keyring, Vault};
    let server = pg_common::TestPostgres::start();
    let url = format!("{} password={PASSWORD}", server.url());
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &sandbox, "lark_auth", port);
    let sled_path = dir.path().join("old-vault");
    {
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(SledStore::open(&sled_path).unwrap());
        let keyring = Keyring::from_config(&lark_auth::config::VaultConfig::default(), |_| {
            Some(VAULT_KEY.to_string())
        })
        .unwrap();
        let vault = Vault::open(
            store.clone(),
            "cli_sandbox_app",
            keyring,
            DuePolicy {
                keepalive_lead: std::time::Duration::from_secs(3600),
            },
        )
        .unwrap();
        vault.store_grant(grant("ou_migrated_one")).unwrap();
        vault.store_grant(grant("ou_migrated_two")).unwrap();
        store
            .put_session("as_migrated", b"sealed session bytes")
            .unwrap();
        let event = OutboxEvent {
            event_id: "ev_pending".into(),
            event_type: "im.message.receive_v1".into(),
            targets: vec!["http://a/hook".into(), "http://b/hook".into()],
            payload: b"{}".to_vec(),
        };
        store.outbox_put(&[event], u64::MAX / 2, 1_000).unwrap();
        store.flush().unwrap();
    }
    let from = sled_path.to_str().unwrap();
    let migrate = [
        "migrate-store",
        "--config",
        config.as_str(),
        "--from-sled",
        from,
    ];

    // A wrong key is refused before anything is copied.
    let out = run(&migrate, OTHER_KEY, Some(&url));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_one_line_without_password(&out);

    let out = run(&migrate, VAULT_KEY, Some(&url));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(!stdout.contains(PASSWORD), "{stdout}");
    assert!(stdout.contains("\"grants_copied\": 2"), "{stdout}");
    assert!(stdout.contains("\"sessions_copied\": 1"), "{stdout}");
    assert!(stdout.contains("\"outbox_copied\": 2"), "{stdout}");

    // Again: nothing new, nothing overwritten.
    let out = run(&migrate, VAULT_KEY, Some(&url));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("\"grants_copied\": 0"), "{stdout}");
    assert!(stdout.contains("\"grants_present\": 2"), "{stdout}");
    assert!(stdout.contains("\"outbox_present\": 2"), "{stdout}");

    // serve on PostgreSQL serves the copied grants with the same key.
    let mut child = command(&["serve", "--config", &config], VAULT_KEY, Some(&url))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let healthy = wait_healthy(port).await;
    let grants = get(port, "/v1/grants").await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(healthy.is_some(), "serve on the migrated store");
    assert_eq!(grants.0, 200, "{}", grants.1);
    assert!(
        grants.1.contains("ou_migrated_one") && grants.1.contains("ou_migrated_two"),
        "{}",
        grants.1
    );
}
