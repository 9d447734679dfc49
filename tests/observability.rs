//! What operators import and load (issue 17): the Prometheus alert rules
//! (`deploy/prometheus/alerts.yml`, checked and unit-tested by `promtool`), the Grafana
//! dashboard (`deploy/grafana/lark-auth.json`), and that every metric either of them names
//! is exported by a running service after an authorization and a refresh.

mod service_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use service_common::{API_TOKEN, USER, authorize_user, eventually, start_instance_with};

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

const RULES: &str = "deploy/prometheus/alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/alerts_test.yml";
const DASHBOARD: &str = "deploy/grafana/lark-auth.json";

/// Runs `promtool args…` from the repository root; a missing promtool fails the test with
/// the line that installs it (never a silent skip).
fn promtool(args: &[&str]) -> std::process::Output {
    match std::process::Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed; install it with \
             `apt-get install -y --no-install-recommends prometheus` (Debian/Ubuntu; \
             .ci/run does this) or from https://prometheus.io/download/"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    for args in [["check", "rules", RULES], ["test", "rules", RULE_TESTS]] {
        let out = promtool(&args);
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One `- alert:` block of the rules file: its name and its lines.
fn alert_blocks(rules: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks: Vec<(String, Vec<String>)> = Vec::new();
    for line in rules.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            blocks.push((name.trim().to_string(), Vec::new()));
        } else if trimmed.starts_with("- name:") {
            continue;
        } else if let Some((_, lines)) = blocks.last_mut() {
            lines.push(trimmed.to_string());
        }
    }
    blocks
}

/// The value of `key: value` among `lines`, quotes removed.
fn field<'l>(lines: &'l [String], key: &str) -> Option<&'l str> {
    lines.iter().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')
            .map(|v| v.trim().trim_matches('"'))
    })
}

/// GitHub's anchor of a Markdown heading: lower case, spaces to `-`, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of the `###` sections under `## Troubleshooting` in docs/operations.md.
fn troubleshooting_anchors() -> BTreeSet<String> {
    let doc = read("docs/operations.md");
    let mut inside = false;
    let mut anchors = BTreeSet::new();
    for line in doc.lines() {
        if let Some(h2) = line.strip_prefix("## ") {
            inside = h2.trim() == "Troubleshooting";
        } else if inside && let Some(h3) = line.strip_prefix("### ") {
            anchors.insert(anchor(h3));
        }
    }
    anchors
}

#[test]
fn every_alert_waits_has_a_severity_and_a_runbook_in_the_troubleshooting_section() {
    let anchors = troubleshooting_anchors();
    assert!(
        anchors.len() >= 5,
        "docs/operations.md has a \"Troubleshooting\" section with ### subsections: {anchors:?}"
    );
    let blocks = alert_blocks(&read(RULES));
    assert!(blocks.len() >= 8, "{blocks:?}");
    let mut names = BTreeSet::new();
    for (name, lines) in &blocks {
        assert!(names.insert(name.clone()), "{name} defined twice");
        assert!(field(lines, "expr").is_some(), "{name}: no expr");
        assert!(field(lines, "for").is_some(), "{name}: no `for:`");
        let severity = field(lines, "severity").unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity `{severity}`"
        );
        for key in ["summary", "description"] {
            assert!(field(lines, key).is_some(), "{name}: no {key}");
        }
        let runbook = field(lines, "runbook_url").unwrap_or_default();
        let section = runbook
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url `{runbook}`"));
        assert!(
            anchors.contains(section),
            "{name}: runbook_url names `#{section}`, not a section of docs/operations.md \
             \"Troubleshooting\" ({anchors:?})"
        );
    }
    for needed in [
        "LarkAuthConnectionDown",
        "LarkAuthConnectionFailed",
        "LarkAuthCallbacksLate",
        "LarkAuthRefreshFailuresRising",
        "LarkAuthGrantsNeedReauth",
        "LarkAuthTokenEndpointRateLimited",
        "LarkAuthRefreshBacklogGrowing",
    ] {
        assert!(names.contains(needed), "{needed} missing");
    }
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every panel of the dashboard, rows' nested panels included (rows themselves excluded).
fn dashboard_panels(dash: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten().cloned());
        } else {
            out.push(p.clone());
        }
    }
    out
}

#[test]
fn the_dashboard_has_its_variables_and_every_panel_a_title_the_datasource_and_a_query() {
    let dash = dashboard();
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36, "Grafana 10+");
    assert_eq!(dash["uid"], "lark-auth");
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let instance = var("instance");
    assert_eq!(instance["type"], "query");
    assert_eq!(instance["datasource"]["uid"], "${datasource}");
    assert_eq!(instance["multi"], true);

    let panels = dashboard_panels(&dash);
    assert!(panels.len() >= 15, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(
            titles.insert(title.to_string()),
            "two panels titled {title}"
        );
        assert!(ids.insert(p["id"].as_u64().expect("an id")), "{title}: id");
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}: no description"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(expr.contains("lark_auth_"), "{title}: query `{expr}`");
            assert!(
                expr.contains("instance=~\"$instance\""),
                "{title}: `{expr}` ignores the instance variable"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
    for needed in [
        "Connection state",
        "Reconnects by cause",
        "Events/s by type",
        "Ack latency",
        "Callback answers by outcome",
        "Callback answer latency vs the 3 s deadline",
        "Sessions by state",
        "Session outcomes",
        "Grants by status",
        "Refreshes by outcome",
        "Refresh backlog and oldest overdue",
        "Token-endpoint calls vs budget",
        "Token-endpoint errors and 429s",
        "Authorization latency (created → authorized)",
        "get_token latency",
        "get_token cache hit rate",
    ] {
        assert!(titles.contains(needed), "no panel `{needed}`: {titles:?}");
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // promtool parses each query as a recording rule, with the variables given values.
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (n, p) in dashboard_panels(&dashboard()).iter().enumerate() {
        for (m, t) in p["targets"].as_array().into_iter().flatten().enumerate() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_default()
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*");
            let quoted = serde_json::to_string(&expr).unwrap();
            rules.push_str(&format!(
                "      - record: dashboard:panel{n}:query{m}\n        expr: {quoted}\n"
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `lark_auth_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("lark_auth_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The metric names the rules' expressions and the dashboard's queries use.
fn names_in_use() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (alert, lines) in alert_blocks(&read(RULES)) {
        let expr = field(&lines, "expr").unwrap_or_else(|| panic!("{alert}: expr"));
        names.extend(metric_names(expr));
    }
    let dash = dashboard();
    for p in dashboard_panels(&dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            names.extend(metric_names(t["expr"].as_str().unwrap_or_default()));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        names.extend(metric_names(&v["definition"].to_string()));
    }
    names
}

/// Sample names in a scrape (`name{labels} value` or `name value`).
fn exported_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[actix_rt::test]
async fn every_metric_the_dashboard_and_the_rules_use_is_exported_by_a_running_service() {
    let used = names_in_use();
    assert!(used.len() >= 15, "{used:?}");

    let instance = start_instance_with(|sandbox, config| {
        sandbox.openapi.access_token_lifetime = Duration::from_secs(8);
        config.refresh.margin = Duration::from_secs(2);
        config.refresh.ahead = Duration::from_secs(5);
        // A configured event target: its gateway series are in the first scrape at 0.
        config.events.forward = vec![lark_auth::config::ForwardTarget {
            url: "http://127.0.0.1:9/hook".into(),
            ..Default::default()
        }];
    })
    .await;
    let base = instance.base_url();
    let scrape = || {
        let url = format!("{base}/metrics");
        async move {
            let mut res = awc::Client::default()
                .get(url)
                .bearer_auth(API_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 200);
            String::from_utf8(res.body().await.unwrap().to_vec()).unwrap()
        }
    };
    // Before anything happened, already every name is there.
    let fresh = exported_names(&scrape().await);
    let missing: Vec<_> = used.difference(&fresh).collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or the rules but not in the first scrape: {missing:?}"
    );

    authorize_user(&instance).await;
    let h = &instance.handle;
    h.token(USER).await.expect("a token");
    eventually("a scheduled refresh", || async move {
        h.refresh_stats()
            .await
            .ok()
            .filter(|s| s.attempts.refreshed >= 1 && s.in_flight == 0)
    })
    .await;
    let text = eventually("the refresh in /metrics", || async {
        let text = scrape().await;
        (!text.contains("lark_auth_refresh_attempts_total{outcome=\"ok\"} 0")).then_some(text)
    })
    .await;
    let exported = exported_names(&text);
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or the rules but not exported: {missing:?}\n{text}"
    );
    assert!(
        text.contains("lark_auth_token_endpoint_budget_per_second 40"),
        "the configured budget: {text}"
    );
    assert!(
        text.contains("lark_auth_authorization_seconds_count 1"),
        "one authorization timed: {text}"
    );
    assert!(
        !text.contains("lark_auth_get_token_seconds_count 0"),
        "the token lookup timed: {text}"
    );
    instance.handle.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn the_preregistered_session_states_are_the_running_states_of_the_machine() {
    use lark_auth::session::machine::SessionState;
    let running: Vec<&str> = SessionState::ALL
        .into_iter()
        .filter(|s| !s.is_terminal())
        .map(|s| s.as_str())
        .collect();
    assert_eq!(running, lark_auth::metrics::RUNNING_SESSION_STATES);
}

/// The store's size on disk and the dedup-mark families (issue 18) are in the first
/// scrape; the mark count follows the events within an upkeep round.
#[actix_rt::test]
async fn the_store_size_and_the_dedup_mark_families_are_exported_from_the_start() {
    let instance = start_instance_with(|_, _| {}).await;
    let url = format!("{}/metrics", instance.base_url());
    let scrape = || {
        let url = url.clone();
        async move {
            let mut res = awc::Client::default()
                .get(url)
                .bearer_auth(API_TOKEN)
                .send()
                .await
                .unwrap();
            String::from_utf8(res.body().await.unwrap().to_vec()).unwrap()
        }
    };
    let first = scrape().await;
    let value = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    assert!(
        value(&first, "lark_auth_store_disk_bytes").is_some_and(|b| b > 0.0),
        "{first}"
    );
    assert_eq!(
        value(&first, "lark_auth_dedup_marks_evicted_total"),
        Some(0.0)
    );
    assert!(value(&first, "lark_auth_dedup_marks").is_some(), "{first}");

    let pushed = instance
        .sandbox
        .push_event(
            br#"{"schema":"2.0","header":{"event_id":"ev_obs_1","event_type":"im.message.receive_v1","create_time":"1767225600000","token":"t","app_id":"cli_sandbox_app","tenant_key":"tk"},"event":{}}"#,
        )
        .unwrap();
    assert!(!pushed.is_empty());
    eventually("the mark counted", || async {
        let text = scrape().await;
        (value(&text, "lark_auth_dedup_marks") >= Some(1.0)).then_some(())
    })
    .await;
}
