//! The binary as operators use it: `check-config`, `serve`'s fatal exits, and `--help`.

use std::process::{Command, Output};

use lark_auth::sandbox::{Sandbox, SandboxConfig};

const BIN: &str = env!("CARGO_BIN_EXE_lark-auth");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("LARK_APP_ID")
        .env_remove("LARK_APP_SECRET")
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
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("cli_check"));
    assert!(stdout.contains("https://open.feishu.cn"));
    assert!(stdout.contains("[redacted]"));
    assert!(!stdout.contains("very-secret-value"), "{stdout}");
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
    for sub in ["serve", "check-config", "demo"] {
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
            "[endpoints]\nopen_base_url = \"{}\"\naccounts_base_url = \"{}\"\n",
            sandbox.base_url(),
            sandbox.base_url()
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
