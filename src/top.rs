//! `lark-auth top`: what a running server is doing, at a glance, from its control API
//! (`/healthz`, the failed sessions) and its `/metrics`: the long connection, events per
//! second, sessions by state, grants by status, the refresh backlog, the token endpoint's
//! use against its budget, and the recent failures.
//!
//! [`live`] redraws a full-screen terminal view (ratatui on crossterm) every
//! [`REFRESH_EVERY`] until `q`, `Esc` or Ctrl-C; [`once`] prints the same sections once as
//! plain text, for scripts. Rates (events/s, token-endpoint calls/s) need two scrapes: the
//! live view shows them from its second refresh on, `--once` prints the totals.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph};

use crate::cli::{CommandResult, EXIT_ERROR, Failure};
use crate::client::{ClientError, ControlClient};
use crate::http::resources::{HealthResource, SessionResource};

/// How often the live view asks the server again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// How long one refresh of the live view may take before it shows the server as
/// unreachable (and answers keys again).
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// How many failed sessions "recent failures" lists.
const RECENT_FAILURES: usize = 5;

/// One sample of a scrape: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of one `/metrics` answer (OpenMetrics text).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(Vec<Sample>);

impl Samples {
    /// Parses the sample lines of the text format; comments and lines it cannot read are
    /// skipped.
    pub fn parse(text: &str) -> Samples {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(parts) => parts,
                None => continue,
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Samples(samples)
    }

    /// Sum of the samples of `name` whose labels include every `(label, value)` of
    /// `matching`; 0 when there are none.
    pub fn sum(&self, name: &str, matching: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                matching
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .fold(0.0, |a, b| a + b)
    }

    /// The samples of `name` summed by the value of `label`, in label order.
    pub fn by_label(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for s in self.0.iter().filter(|s| s.name == name) {
            let key = s.labels.get(label).cloned().unwrap_or_default();
            *sums.entry(key).or_default() += s.value;
        }
        sums.into_iter().collect()
    }
}

/// `a="x",b="y \"q\""` → {a: x, b: y "q"}.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

/// What one refresh read from the server.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken (for rates).
    taken: Instant,
    /// When it was taken, RFC 3339 UTC (shown).
    at: String,
    /// `/healthz`, or why it could not be read.
    health: Result<HealthResource, String>,
    /// `/metrics`.
    metrics: Samples,
    /// Sessions that ended `failed`, newest first (at most [`RECENT_FAILURES`]).
    failures: Vec<SessionResource>,
}

/// Reads `/metrics`, `/healthz` and the failed sessions at once.
///
/// # Errors
/// The `/metrics` request's error (unreachable, `unauthorized`, …); a failed `/healthz`
/// or session listing is shown in the view instead.
pub async fn snapshot(client: &ControlClient) -> Result<Snapshot, ClientError> {
    let (metrics, health, failed) = tokio::join!(
        client.metrics(),
        client.health(),
        client.sessions(Some("failed"))
    );
    let metrics = Samples::parse(&metrics?);
    let mut failures = failed.unwrap_or_default();
    failures.truncate(RECENT_FAILURES);
    Ok(Snapshot {
        taken: Instant::now(),
        at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        health: health.map_err(|e| e.to_string()),
        metrics,
        failures,
    })
}

/// One block of the view: a title and its lines; `alert` when something needs a look
/// (drawn in red).
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// `CONNECTION`, `EVENTS`, `SESSIONS`, `GRANTS`, `REFRESH`, `TOKEN ENDPOINT` or
    /// `RECENT FAILURES`.
    pub title: &'static str,
    /// The lines under it.
    pub lines: Vec<String>,
    /// Something in it needs attention.
    pub alert: bool,
}

/// `a 1, b 0` from labelled values (whole numbers).
fn counts(values: &[(String, f64)]) -> String {
    if values.is_empty() {
        return "none".into();
    }
    values
        .iter()
        .map(|(k, v)| format!("{k} {v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The values of `name` by `label`, in the order of `order` (absent ones at 0), then any
/// other label value.
fn ordered(m: &Samples, name: &str, label: &str, order: &[&str]) -> Vec<(String, f64)> {
    let all = m.by_label(name, label);
    let mut out: Vec<(String, f64)> = order
        .iter()
        .map(|k| {
            let v = all.iter().find(|(l, _)| l == k).map_or(0.0, |(_, v)| *v);
            (k.to_string(), v)
        })
        .collect();
    out.extend(
        all.into_iter()
            .filter(|(l, _)| !order.contains(&l.as_str())),
    );
    out
}

/// Seconds as `4s`, `3m12s`, `2h05m`.
fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The sections of the view for `now`; rates when the previous snapshot `prev` is given.
pub fn sections(now: &Snapshot, prev: Option<&Snapshot>) -> Vec<Section> {
    let m = &now.metrics;
    let rate = |name: &str, matching: &[(&str, &str)]| {
        let prev = prev?;
        let secs = now.taken.duration_since(prev.taken).as_secs_f64();
        (secs > 0.0)
            .then(|| ((m.sum(name, matching) - prev.metrics.sum(name, matching)) / secs).max(0.0))
    };

    // The long connection.
    let state = match &now.health {
        Ok(h) => h.connection.clone(),
        Err(_) => m
            .by_label("lark_auth_connection_state", "state")
            .into_iter()
            .find(|(_, v)| *v == 1.0)
            .map_or_else(|| "unknown".into(), |(s, _)| s),
    };
    let vault = match &now.health {
        Ok(h) => h.vault.clone(),
        Err(e) => format!("unknown ({e})"),
    };
    let reconnects: Vec<(String, f64)> = m
        .by_label("lark_auth_connection_reconnects_total", "cause")
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let total_reconnects = reconnects.iter().fold(0.0, |a, (_, v)| a + v);
    let mut connection = vec![
        format!("state {state}, vault {vault}"),
        format!(
            "reconnects {total_reconnects:.0}{}",
            if reconnects.is_empty() {
                String::new()
            } else {
                format!(" ({})", counts(&reconnects))
            }
        ),
        format!(
            "last frame {} ago, last event {} ago",
            age(m.sum("lark_auth_connection_last_frame_age_seconds", &[])),
            age(m.sum("lark_auth_connection_last_event_age_seconds", &[]))
        ),
    ];
    if let Ok(HealthResource {
        vault_loss: Some(loss),
        ..
    }) = &now.health
    {
        connection.push(format!("vault lost writes: {loss}"));
    }

    // Events.
    let by_type: Vec<(String, f64)> = m
        .by_label("lark_auth_events_total", "event_type")
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let events_total = by_type.iter().fold(0.0, |a, (_, v)| a + v);
    let events_rate = match rate("lark_auth_events_total", &[]) {
        Some(r) => format!("{r:.2}/s"),
        None => "-/s (needs two refreshes)".into(),
    };
    let events = vec![
        format!("events {events_rate}, {events_total:.0} since start"),
        format!("by type: {}", counts(&by_type)),
        format!(
            "frames in {:.0}, acks out {:.0}",
            m.sum("lark_auth_frames_in_total", &[]),
            m.sum("lark_auth_frames_out_total", &[])
        ),
    ];

    // Sessions.
    let running = ordered(
        m,
        "lark_auth_sessions",
        "state",
        &crate::metrics::RUNNING_SESSION_STATES,
    );
    let finished = ordered(
        m,
        "lark_auth_sessions_finished_total",
        "outcome",
        &["authorized", "denied", "expired", "failed"],
    );
    let sessions = vec![
        format!("running: {}", counts(&running)),
        format!("finished: {}", counts(&finished)),
    ];

    // Grants.
    let grants = ordered(
        m,
        "lark_auth_grants",
        "status",
        &[
            "active",
            "refresh_failed",
            "refresh_uncertain",
            "needs_reauth",
            "revoked",
        ],
    );
    let grants_alert = grants
        .iter()
        .any(|(s, v)| *v > 0.0 && matches!(s.as_str(), "refresh_failed" | "refresh_uncertain"));

    // Refresh.
    let backlog = m.sum("lark_auth_refresh_backlog", &[]);
    let overdue = m.sum("lark_auth_refresh_oldest_overdue_seconds", &[]);
    let attempts = ordered(
        m,
        "lark_auth_refresh_attempts_total",
        "outcome",
        &crate::metrics::REFRESH_ATTEMPT_OUTCOMES,
    );
    let refresh = vec![
        format!("backlog {backlog:.0}, oldest overdue {}", age(overdue)),
        format!("attempts: {}", counts(&attempts)),
    ];

    // Token endpoint.
    let calls = "lark_auth_token_endpoint_calls_total";
    let budget = m.sum("lark_auth_token_endpoint_budget_per_second", &[]);
    let calls_rate = match rate(calls, &[]) {
        Some(r) => format!("{r:.2}/s"),
        None => "-/s".into(),
    };
    let by_kind: Vec<(String, f64)> = m.by_label(calls, "kind");
    let limited = m.sum(calls, &[("outcome", "rate_limited")]);
    let errors: Vec<(String, f64)> = m
        .by_label(calls, "outcome")
        .into_iter()
        .filter(|(o, v)| *v > 0.0 && crate::metrics::TOKEN_CALL_ERRORS.contains(&o.as_str()))
        .collect();
    let token_endpoint = vec![
        format!(
            "calls {calls_rate} of a budget of {budget:.0}/s, queue {:.0}",
            m.sum("lark_auth_token_endpoint_queue", &[])
        ),
        format!("since start: {}", counts(&by_kind)),
        format!(
            "rate limited {limited:.0}, errors {}",
            if errors.is_empty() {
                "0".to_string()
            } else {
                counts(&errors)
            }
        ),
        format!(
            "get_token answers: {}",
            counts(&ordered(
                m,
                "lark_auth_get_token_total",
                "source",
                &crate::metrics::GET_TOKEN_SOURCES
            ))
        ),
    ];

    // Recent failures.
    let mut failures: Vec<String> = now
        .failures
        .iter()
        .map(|s| {
            format!(
                "{} session {} of {} failed ({})",
                s.updated_at,
                s.session_id,
                s.open_id,
                s.reason.as_deref().unwrap_or("no reason")
            )
        })
        .collect();
    let late = ordered(
        m,
        "lark_auth_callback_answers_total",
        "outcome",
        &["late", "failed"],
    );
    let late: Vec<(String, f64)> = late
        .into_iter()
        .filter(|(o, v)| *v > 0.0 && o != "answered")
        .collect();
    if !late.is_empty() {
        failures.push(format!(
            "card callbacks not answered in time: {}",
            counts(&late)
        ));
    }
    if !errors.is_empty() {
        failures.push(format!("token-endpoint errors: {}", counts(&errors)));
    }
    let failed_refreshes: Vec<(String, f64)> = attempts
        .iter()
        .filter(|(o, v)| *v > 0.0 && o != "ok")
        .cloned()
        .collect();
    if !failed_refreshes.is_empty() {
        failures.push(format!("refreshes not ok: {}", counts(&failed_refreshes)));
    }
    let failures_alert = !failures.is_empty();
    if failures.is_empty() {
        failures.push("none".into());
    }

    vec![
        Section {
            title: "CONNECTION",
            lines: connection,
            alert: state != "connected" || vault != "ok",
        },
        Section {
            title: "EVENTS",
            lines: events,
            alert: false,
        },
        Section {
            title: "SESSIONS",
            lines: sessions,
            alert: false,
        },
        Section {
            title: "GRANTS",
            lines: vec![counts(&grants)],
            alert: grants_alert,
        },
        Section {
            title: "REFRESH",
            lines: refresh,
            alert: overdue > 300.0,
        },
        Section {
            title: "TOKEN ENDPOINT",
            lines: token_endpoint,
            alert: limited > 0.0,
        },
        Section {
            title: "RECENT FAILURES",
            lines: failures,
            alert: failures_alert,
        },
    ]
}

/// The first line of the view.
fn header(server: &str, at: &str) -> String {
    format!("lark-auth top — {} — {at}", server.trim_end_matches('/'))
}

/// Writes the sections as plain text: the header, then each title and its indented
/// lines.
///
/// # Errors
/// The writer's.
pub fn write_text(
    out: &mut impl Write,
    server: &str,
    at: &str,
    sections: &[Section],
) -> std::io::Result<()> {
    writeln!(out, "{}", header(server, at))?;
    for s in sections {
        writeln!(out, "\n{}{}", s.title, if s.alert { " (!)" } else { "" })?;
        for line in &s.lines {
            writeln!(out, "  {line}")?;
        }
    }
    Ok(())
}

/// `lark-auth top --once`: one snapshot as plain text.
///
/// # Errors
/// [`EXIT_ERROR`] when the server cannot be reached or refuses the token.
pub async fn once(client: &ControlClient, out: &mut impl Write) -> CommandResult {
    let now = snapshot(client).await?;
    write_text(out, client.base_url(), &now.at, &sections(&now, None)).map_err(|e| Failure {
        code: EXIT_ERROR,
        message: format!("cannot write the output: {e}"),
    })
}

/// `lark-auth top`: the live view on the terminal, redrawn every [`REFRESH_EVERY`] until
/// `q`, `Esc` or Ctrl-C. An unreachable server is shown (with the last numbers read) and
/// asked again at the next refresh.
///
/// # Errors
/// [`EXIT_ERROR`] when the terminal cannot be set up (not a terminal: use `--once`).
pub async fn live(client: &ControlClient) -> CommandResult {
    let terminal_failure = |e: std::io::Error| Failure {
        code: EXIT_ERROR,
        message: format!("cannot use the terminal ({e}); use `lark-auth top --once`"),
    };
    let mut terminal = ratatui::try_init().map_err(terminal_failure)?;
    let result = run_live(&mut terminal, client).await;
    ratatui::restore();
    result.map_err(terminal_failure)
}

async fn run_live(
    terminal: &mut ratatui::DefaultTerminal,
    client: &ControlClient,
) -> std::io::Result<()> {
    let (tx, mut keys) = tokio::sync::mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match event::poll(Duration::from_millis(100)) {
                    Ok(true) => {
                        let sent = event::read().map(|ev| tx.send(ev).is_ok());
                        if !matches!(sent, Ok(true)) {
                            break;
                        }
                    }
                    Ok(false) => {}
                    Err(_) => break,
                }
            }
        })
    };
    let server = client.base_url().to_string();
    let mut prev: Option<Snapshot> = None;
    let mut shown: Vec<Section> = Vec::new();
    let mut at = String::new();
    let mut error: Option<String> = None;
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    let result = loop {
        tokio::select! {
            _ = tick.tick() => {
                match tokio::time::timeout(FETCH_TIMEOUT, snapshot(client)).await {
                    Ok(Ok(now)) => {
                        shown = sections(&now, prev.as_ref());
                        at.clone_from(&now.at);
                        prev = Some(now);
                        error = None;
                    }
                    Ok(Err(e)) => error = Some(e.to_string()),
                    Err(_) => error = Some(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())),
                }
            }
            key = keys.recv() => match key {
                Some(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                    let ctrl_c = k.code == KeyCode::Char('c')
                        && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) {
                        break Ok(());
                    }
                }
                Some(_) => {}
                None => break Ok(()),
            },
        }
        if let Err(e) = terminal.draw(|frame| draw(frame, &server, &at, error.as_deref(), &shown)) {
            break Err(e);
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    result
}

/// Draws the view: a header line (server, time, keys, the last error) and one bordered
/// block per section.
fn draw(
    frame: &mut ratatui::Frame,
    server: &str,
    at: &str,
    error: Option<&str>,
    sections: &[Section],
) {
    let mut rows = vec![Constraint::Length(if error.is_some() { 2 } else { 1 })];
    rows.extend(
        sections
            .iter()
            .map(|s| Constraint::Length(s.lines.len() as u16 + 2)),
    );
    rows.push(Constraint::Min(0));
    let areas = Layout::vertical(rows).split(frame.area());
    let mut head = vec![Line::styled(
        format!("{}   (q: quit)", header(server, at)),
        Style::default().add_modifier(Modifier::BOLD),
    )];
    if let Some(e) = error {
        head.push(Line::styled(
            format!("cannot refresh: {e}"),
            Style::default().fg(Color::Red),
        ));
    }
    frame.render_widget(Paragraph::new(head), areas[0]);
    for (s, area) in sections.iter().zip(areas.iter().skip(1)) {
        let style = if s.alert {
            Style::default().fg(Color::Red)
        } else {
            Style::default()
        };
        let block = Block::bordered().title(s.title).border_style(style);
        let lines: Vec<Line> = s.lines.iter().map(|l| Line::raw(l.as_str())).collect();
        frame.render_widget(Paragraph::new(lines).block(block), *area);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# TYPE lark_auth_connection_state gauge\n\
lark_auth_connection_state{state=\"connected\"} 1\n\
lark_auth_connection_state{state=\"reconnecting\"} 0\n\
lark_auth_connection_reconnects_total{cause=\"silence\"} 2\n\
lark_auth_connection_reconnects_total{cause=\"transport\"} 0\n\
lark_auth_events_total{event_type=\"card.action.trigger\"} 3\n\
lark_auth_events_total{event_type=\"a \\\"quoted\\\" type\"} 1\n\
lark_auth_sessions{state=\"awaiting_user\"} 2\n\
lark_auth_grants{status=\"active\"} 5\n\
lark_auth_grants{status=\"refresh_failed\"} 1\n\
lark_auth_refresh_oldest_overdue_seconds 12.5\n\
lark_auth_token_endpoint_calls_total{kind=\"refresh\",outcome=\"ok\"} 7\n\
lark_auth_token_endpoint_calls_total{kind=\"refresh\",outcome=\"rate_limited\"} 1\n\
lark_auth_token_endpoint_budget_per_second 40\n\
# EOF\n";

    fn snap(text: &str, taken: Instant) -> Snapshot {
        Snapshot {
            taken,
            at: "2026-01-01T00:00:00Z".into(),
            health: Err("not asked".into()),
            metrics: Samples::parse(text),
            failures: vec![],
        }
    }

    #[test]
    fn samples_parse_labels_with_escapes_and_sum_by_label() {
        let m = Samples::parse(SCRAPE);
        assert_eq!(m.sum("lark_auth_connection_reconnects_total", &[]), 2.0);
        assert_eq!(
            m.sum(
                "lark_auth_events_total",
                &[("event_type", "a \"quoted\" type")]
            ),
            1.0
        );
        assert_eq!(
            m.by_label("lark_auth_token_endpoint_calls_total", "outcome"),
            vec![("ok".into(), 7.0), ("rate_limited".into(), 1.0)]
        );
        assert_eq!(m.sum("lark_auth_refresh_oldest_overdue_seconds", &[]), 12.5);
        assert_eq!(m.sum("missing", &[]).to_string(), "0", "not -0");
    }

    #[test]
    fn sections_show_state_counts_rates_and_failures() {
        let t0 = Instant::now();
        let prev = snap(SCRAPE, t0);
        let later = SCRAPE.replace(
            "event_type=\"card.action.trigger\"} 3",
            "event_type=\"card.action.trigger\"} 5",
        );
        let now = snap(&later, t0 + Duration::from_secs(2));
        let s = sections(&now, Some(&prev));
        let titles: Vec<_> = s.iter().map(|s| s.title).collect();
        assert_eq!(
            titles,
            [
                "CONNECTION",
                "EVENTS",
                "SESSIONS",
                "GRANTS",
                "REFRESH",
                "TOKEN ENDPOINT",
                "RECENT FAILURES"
            ]
        );
        let text = |i: usize| s[i].lines.join("\n");
        assert!(text(0).contains("state connected"), "{}", text(0));
        assert!(text(0).contains("reconnects 2 (silence 2)"), "{}", text(0));
        assert!(
            text(1).starts_with("events 1.00/s, 6 since start"),
            "{}",
            text(1)
        );
        assert!(text(2).contains("awaiting_user 2"), "{}", text(2));
        assert!(
            text(3).contains("active 5, refresh_failed 1"),
            "{}",
            text(3)
        );
        assert!(s[3].alert, "a refresh_failed grant");
        assert!(text(4).contains("oldest overdue 12s"), "{}", text(4));
        assert!(text(5).contains("budget of 40/s"), "{}", text(5));
        assert!(s[5].alert, "rate limited");
        assert!(
            text(6).contains("token-endpoint errors: rate_limited 1"),
            "{}",
            text(6)
        );

        // Nothing counted yet reads 0, not -0 (an empty f64 sum is -0.0).
        let empty = sections(&snap("", t0), None);
        assert_eq!(empty[0].lines[1], "reconnects 0");
        assert!(
            empty[1].lines[0].ends_with(", 0 since start"),
            "{:?}",
            empty[1]
        );

        // Without a previous snapshot there is no rate.
        let once = sections(&now, None);
        assert!(once[1].lines[0].starts_with("events -/s"), "{:?}", once[1]);
    }

    #[test]
    fn ages_read_as_durations() {
        assert_eq!(age(4.9), "4s");
        assert_eq!(age(192.0), "3m12s");
        assert_eq!(age(7500.0), "2h05m");
        assert_eq!(age(-1.0), "0s");
    }

    #[test]
    fn the_text_form_lists_every_section_under_a_header() {
        let now = snap(SCRAPE, Instant::now());
        let mut out = Vec::new();
        write_text(&mut out, "http://h:1/", &now.at, &sections(&now, None)).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("lark-auth top — http://h:1 — 2026-01-01T00:00:00Z\n"),
            "{text}"
        );
        assert!(text.contains("\nTOKEN ENDPOINT (!)\n  calls -/s"), "{text}");
        assert!(text.contains("\nRECENT FAILURES (!)\n"), "{text}");
    }
}
