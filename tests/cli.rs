//! The binary as operators use it: `check-config`, `serve`'s fatal exits, and `--help`.

use std::process::{Command, Output};

use lark_auth::sandbox::{Sandbox, SandboxConfig};

const BIN: &str = env!("CARGO_BIN_EXE_lark-auth");
/// 32 bytes, base64.
const VAULT_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("LARK_APP_ID")
        .env_remove("LARK_APP_SECRET")
        .env_remove("LARK_AUTH_VAULT_KEY")
        .env_remove("LARK_AUTH_API_TOKEN")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_prints_effective_settings_with_the_secret_redacted() {
    let out = run(
        &["check-config", "--config", "config.toml"],
        &[
            ("LARK_APP_ID", "cli_check"),
            ("LARK_APP_SECRET", "very-secret-value"),
            ("LARK_AUTH_VAULT_KEY", VAULT_KEY),
            ("LARK_AUTH_API_TOKEN", "api-token-value"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("cli_check"));
    assert!(stdout.contains("https://open.feishu.cn"));
    assert!(stdout.contains("[redacted]"));
    for secret in ["very-secret-value", VAULT_KEY, "api-token-value"] {
        assert!(!stdout.contains(secret), "{stdout}");
    }
}

#[test]
fn without_a_config_file_the_defaults_and_the_environment_suffice() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .current_dir(empty.path())
        .env("LARK_APP_ID", "cli_check")
        .env("LARK_APP_SECRET", "very-secret-value")
        .env("LARK_AUTH_VAULT_KEY", VAULT_KEY)
        .env("LARK_AUTH_API_TOKEN", "api-token-value")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("built-in defaults"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:8787"), "{stdout}");
    // Given explicitly, a missing file is an error that names it.
    let out = Command::new(BIN)
        .args(["check-config", "--config", "missing.toml"])
        .current_dir(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("missing.toml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_config_names_every_missing_variable_at_once() {
    let out = run(&["check-config", "--config", "config.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    for var in [
        "LARK_APP_ID",
        "LARK_APP_SECRET",
        "LARK_AUTH_VAULT_KEY",
        "LARK_AUTH_API_TOKEN",
    ] {
        assert!(stderr.contains(var), "{var} named: {stderr}");
    }
    assert!(stderr.contains("app.app_id_env"), "{stderr}");
}

#[test]
fn authorize_refuses_an_unknown_locale_before_any_request() {
    let out = run(
        &[
            "authorize",
            "ou_abc",
            "--locale",
            "fr",
            "--server",
            "http://127.0.0.1:1",
        ],
        &[("LARK_AUTH_API_TOKEN", "t")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("en_us"), "{}", text(&out.stderr));
}

#[test]
fn check_config_names_what_is_missing_or_wrong() {
    let out = run(
        &["check-config", "--config", "config.toml"],
        &[("LARK_APP_ID", "cli_check")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("LARK_APP_SECRET"),
        "{}",
        text(&out.stderr)
    );

    let out = run(
        &["check-config", "--config", "config.toml"],
        &[("LARK_APP_ID", "cli_check"), ("LARK_APP_SECRET", "s")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("LARK_AUTH_VAULT_KEY"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &["check-config", "--config", "config.toml"],
        &[
            ("LARK_APP_ID", "cli_check"),
            ("LARK_APP_SECRET", "s"),
            ("LARK_AUTH_VAULT_KEY", "too-short"),
            ("LARK_AUTH_API_TOKEN", "t"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("LARK_AUTH_VAULT_KEY"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !text(&out.stderr).contains("too-short"),
        "the key value is never echoed"
    );
    let out = run(
        &["check-config", "--config", "config.toml"],
        &[
            ("LARK_APP_ID", "cli_check"),
            ("LARK_APP_SECRET", "s"),
            ("LARK_AUTH_VAULT_KEY", VAULT_KEY),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("LARK_AUTH_API_TOKEN"),
        "{}",
        text(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "[connection]\nping_intervall_secs = 3\n").unwrap();
    let out = run(
        &["check-config", "--config", path.to_str().unwrap()],
        &[("LARK_APP_ID", "a"), ("LARK_APP_SECRET", "b")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("ping_intervall_secs"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["serve", "--config", "/nonexistent/lark-auth.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/lark-auth.toml"));
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    // The subcommands as `--help` lists them, so a new one cannot be forgotten here.
    let top = run(&["--help"], &[]);
    let listing = text(&top.stdout);
    let subs: Vec<&str> = listing
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .collect();
    for expected in [
        "serve",
        "demo",
        "check-config",
        "authorize",
        "token",
        "sessions",
        "grants",
        "revoke",
    ] {
        assert!(subs.contains(&expected), "{expected} missing from {subs:?}");
    }
    for sub in subs {
        let out = run(&[sub, "--help"], &[]);
        assert!(out.status.success());
        assert!(
            text(&out.stdout).contains("Example:"),
            "{sub} --help lacks an example"
        );
    }
}

#[actix_rt::test]
async fn serve_exits_non_zero_with_the_cause_on_bad_credentials() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[endpoints]\nopen_base_url = \"{}\"\naccounts_base_url = \"{}\"\n[vault]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            sandbox.base_url(),
            sandbox.base_url(),
            dir.path().join("vault").display()
        ),
    )
    .unwrap();
    let path = path.to_str().unwrap().to_string();
    let out = actix_rt::task::spawn_blocking(move || {
        run(
            &["serve", "--config", &path],
            &[
                ("LARK_APP_ID", "cli_sandbox_app"),
                ("LARK_APP_SECRET", "not-the-secret"),
                ("LARK_AUTH_VAULT_KEY", VAULT_KEY),
                ("LARK_AUTH_API_TOKEN", "api-token-value"),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("10003"), "{stderr}");
    assert!(
        stderr.contains("app secret"),
        "names what to check: {stderr}"
    );
    assert!(!stderr.contains("not-the-secret"));
    assert!(!text(&out.stdout).contains("not-the-secret"));
    // stdout is JSON lines.
    for line in text(&out.stdout).lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("JSON log line");
    }
}

#[actix_rt::test]
async fn serve_answers_health_and_stops_gracefully_on_sigterm() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[endpoints]\nopen_base_url = \"{0}\"\naccounts_base_url = \"{0}\"\n[vault]\npath = \"{1}\"\n[http]\nlisten = \"127.0.0.1:{2}\"\n",
            sandbox.base_url(),
            dir.path().join("vault").display(),
            port
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("LARK_APP_ID", "cli_sandbox_app")
        .env("LARK_APP_SECRET", "sandbox-secret")
        .env("LARK_AUTH_VAULT_KEY", VAULT_KEY)
        .env("LARK_AUTH_API_TOKEN", "api-token-value")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = awc::Client::default();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let mut healthy = None;
    for _ in 0..200 {
        if let Ok(mut res) = client.get(&url).send().await {
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            if res.status().as_u16() == 200 && body["connection"] == "connected" {
                healthy = Some(body);
                break;
            }
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let healthy = healthy.expect("serve became healthy and connected");
    assert_eq!(healthy["vault"], "ok");
    let res = client
        .get(format!("http://127.0.0.1:{port}/v1/grants"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        401,
        "the control API needs the token"
    );

    let pid = child.id().to_string();
    let out = actix_rt::task::spawn_blocking(move || {
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("\"stopping\""), "logs the stop: {stdout}");
    for secret in ["sandbox-secret", VAULT_KEY, "api-token-value"] {
        assert!(!stdout.contains(secret));
    }
}

/// Writes a serve config for `sandbox` with the vault at `vault`.
fn serve_config(dir: &std::path::Path, sandbox: &Sandbox, vault: &std::path::Path) -> String {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[endpoints]\nopen_base_url = \"{0}\"\naccounts_base_url = \"{0}\"\n[vault]\npath = \"{1}\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            sandbox.base_url(),
            vault.display(),
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// The environment `serve` needs against the sandbox, with `key` as the vault key.
fn service_env(key: &'static str) -> [(&'static str, &'static str); 4] {
    [
        ("LARK_APP_ID", "cli_sandbox_app"),
        ("LARK_APP_SECRET", "sandbox-secret"),
        ("LARK_AUTH_VAULT_KEY", key),
        ("LARK_AUTH_API_TOKEN", "api-token-value"),
    ]
}

/// Creates a vault at `vault_dir` sealed under [`VAULT_KEY`] (its key check written and
/// flushed), then closes it.
fn write_vault(vault_dir: &std::path::Path) {
    use std::sync::Arc;

    use lark_auth::store::{SledStore, Store};
    use lark_auth::vault::{DuePolicy, Keyring, Vault, VaultKey};

    let key = VaultKey::from_base64(VAULT_KEY).unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(vault_dir).unwrap());
    Vault::open(
        store.clone(),
        "cli_sandbox_app",
        Keyring::single(1, key),
        DuePolicy::default(),
    )
    .unwrap();
    store.flush().unwrap();
}

async fn serve_with_key(config: String, key: &'static str) -> Output {
    actix_rt::task::spawn_blocking(move || run(&["serve", "--config", &config], &service_env(key)))
        .await
        .unwrap()
}

#[actix_rt::test]
async fn serve_refuses_a_wrong_vault_key_and_a_vault_in_use_with_one_clear_line() {
    use std::sync::Arc;

    use lark_auth::store::{SledStore, Store};
    use lark_auth::vault::{DuePolicy, Keyring, Vault, VaultKey};

    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault_dir = dir.path().join("vault");
    let config = serve_config(dir.path(), &sandbox, &vault_dir);
    // A vault written under VAULT_KEY.
    write_vault(&vault_dir);

    // Another 32-byte key.
    let out = serve_with_key(
        config.clone(),
        "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=",
    )
    .await;
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("key"), "names the key: {stderr}");
    assert!(!stderr.contains("ZmVkY2Jh"), "never the key itself");
    {
        // Nothing was rewritten under the wrong key: the right key still opens the vault.
        let key = VaultKey::from_base64(VAULT_KEY).unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&vault_dir).unwrap());
        Vault::open(
            store,
            "cli_sandbox_app",
            Keyring::single(1, key),
            DuePolicy::default(),
        )
        .expect("the right key still opens the vault");
    }

    // The right key while another process holds the store.
    let held = SledStore::open(&vault_dir).unwrap();
    let out = serve_with_key(config, VAULT_KEY).await;
    drop(held);
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("locked"), "names the cause: {stderr}");
}

#[actix_rt::test]
async fn check_config_opens_an_existing_vault_with_the_key() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault_dir = dir.path().join("vault");
    let config = serve_config(dir.path(), &sandbox, &vault_dir);
    let out = run(
        &["check-config", "--config", &config],
        &service_env(VAULT_KEY),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("does not exist yet"));
    assert!(!vault_dir.exists(), "check-config creates no vault");
    write_vault(&vault_dir);
    let out = run(
        &["check-config", "--config", &config],
        &service_env(VAULT_KEY),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("the key opens it"),
        "{}",
        text(&out.stdout)
    );
    let out = run(
        &["check-config", "--config", &config],
        &service_env("ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("wrong vault key"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn client_commands_refuse_a_malformed_open_id_before_any_request() {
    // A server that is not there: a request would exit 1 (unreachable).
    for args in [
        ["authorize", "ou_a/../b"],
        ["token", "ou_a\nb"],
        ["revoke", "on_7d8a6e6df7621556ce0d21922b676706"],
    ] {
        let mut full = args.to_vec();
        full.extend(["--server", "http://127.0.0.1:9"]);
        let out = run(&full, &[("LARK_AUTH_API_TOKEN", "api-token-value")]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("invalid open_id"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

/// `demo --locale en_us` runs the whole demo with the English card; a locale the cards do
/// not have is refused with exit 2 before anything starts, naming the accepted values.
#[test]
fn demo_shows_the_card_in_the_locale_asked_for_and_refuses_others() {
    let out = run(&["demo", "--locale", "en_us"], &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("demo OK"), "{stdout}");
    assert!(stdout.contains("asks to act on your behalf"), "{stdout}");
    assert!(!stdout.contains("请求以你的身份"), "{stdout}");

    let out = run(&["demo", "--locale", "fr"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("zh_cn") && stderr.contains("en_us"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing ran: {}", text(&out.stdout));
}
