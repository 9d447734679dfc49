//! The refresh and token-endpoint metrics as an operator scrapes them: the whole service
//! (`LarkAuth::start`) against the sandbox, one device-flow authorization, a token
//! lookup, the scheduled refresh of the 8-second token, then `GET /metrics`.

mod service_common;

use std::time::Duration;

use lark_auth::app::Handle;
use service_common::{API_TOKEN, USER, authorize_user, eventually, start_instance_with};

/// The value of the sample `series` (name with labels, exactly as encoded), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

async fn scrape(handle: &Handle) -> String {
    let mut res = awc::Client::default()
        .get(format!("http://{}/metrics", handle.http_addr().unwrap()))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    String::from_utf8(res.body().await.unwrap().to_vec()).unwrap()
}

#[actix_rt::test]
async fn metrics_show_the_token_endpoint_the_refresh_and_the_grants() {
    let instance = start_instance_with(|sandbox, config| {
        sandbox.openapi.access_token_lifetime = Duration::from_secs(8);
        config.refresh.margin = Duration::from_secs(2);
        config.refresh.ahead = Duration::from_secs(5);
    })
    .await;
    // One device-flow authorization: click reported, user approves.
    authorize_user(&instance).await;
    let handle = &instance.handle;
    let h = handle;

    // A use makes the grant hot: the scheduler refreshes it 5 s before its 8 s expire.
    let first = handle.token(USER).await.expect("a token");
    eventually("a scheduled refresh", || async move {
        h.refresh_stats()
            .await
            .ok()
            .filter(|s| s.attempts.refreshed >= 1 && s.in_flight == 0)
    })
    .await;
    let second = handle.token(USER).await.expect("a token");
    assert_ne!(first.token, second.token, "rotated by the refresh");

    // Published after the refresh and on every tick.
    let text = eventually("the refresh in /metrics", || async move {
        let text = scrape(h).await;
        (sample(&text, "lark_auth_refresh_attempts_total{outcome=\"ok\"}")? >= 1.0).then_some(text)
    })
    .await;
    let calls = |kind: &str, outcome: &str| {
        sample(
            &text,
            &format!(
                "lark_auth_token_endpoint_calls_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(calls("device_poll", "granted"), Some(1.0), "{text}");
    let refreshes = calls("refresh", "ok").expect("refresh calls counted");
    assert!(refreshes >= 1.0, "{text}");
    // The scheduler publishes after each refresh it started; the client counts at once.
    let attempts = sample(&text, "lark_auth_refresh_attempts_total{outcome=\"ok\"}").unwrap();
    assert!((1.0..=refreshes).contains(&attempts), "{text}");
    assert_eq!(
        sample(&text, "lark_auth_grants{status=\"active\"}"),
        Some(1.0),
        "{text}"
    );
    for status in [
        "refresh_failed",
        "refresh_uncertain",
        "needs_reauth",
        "revoked",
    ] {
        assert_eq!(
            sample(&text, &format!("lark_auth_grants{{status=\"{status}\"}}")),
            Some(0.0),
            "{status}: {text}"
        );
    }
    // One grant: at most its next access deadline can be due, never for long.
    let backlog = sample(&text, "lark_auth_refresh_backlog").expect("backlog");
    assert!((0.0..=1.0).contains(&backlog), "{text}");
    let overdue = sample(&text, "lark_auth_refresh_oldest_overdue_seconds").expect("overdue");
    assert!((0.0..8.0).contains(&overdue), "{text}");
    let queue = sample(&text, "lark_auth_token_endpoint_queue").expect("queue");
    assert!(queue >= 0.0, "{text}");
    assert_eq!(instance.sandbox.refresh_token_reuse_violations(), 0);
    instance.handle.shutdown(Duration::from_secs(2)).await;
}
