//! Is the link alive but quiet? The dead-link deadline is exact (`PingInterval +
//! liveness_margin` after the last frame, checked on a paused clock), and the link-age
//! gauges tell a quiet app (frames keep coming) from a link that stopped delivering.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use common::*;
use lark_auth::config::Config;
use lark_auth::connection::{
    CallbackFailed, CardActionReceived, ConnectionActor, ConnectionOutputs, ConnectionState,
    ConnectionStateChanged, EventReceived, GetConnectionStatus,
};
use lark_auth::metrics::Metrics;
use lark_auth::protocol::event::CardActionResponse;
use lark_auth::sandbox::Sandbox;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A state change, its cause, and when it was seen.
type Change = (ConnectionState, Option<String>, Instant);

/// Records state changes with the time of tokio's clock on the test's own thread, so
/// they carry the paused clock's time (the common probe runs on another thread).
#[derive(Clone, Default)]
struct StateClock {
    changes: Arc<Mutex<Vec<Change>>>,
    changed: Arc<Notify>,
}

impl StateClock {
    fn outputs(&self) -> ConnectionOutputs {
        let addr = StateClockActor(self.clone()).start();
        ConnectionOutputs {
            events: addr.clone().recipient(),
            card_actions: addr.clone().recipient(),
            states: addr.recipient(),
        }
    }

    /// The first change to `state`, waiting up to `wait` (of the clock in force).
    async fn first(&self, state: ConnectionState, wait: Duration) -> (Option<String>, Instant) {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            if let Some((_, cause, at)) = self
                .changes
                .lock()
                .unwrap()
                .iter()
                .find(|(s, _, _)| *s == state)
            {
                return (cause.clone(), *at);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("no change to {state:?}");
            }
        }
    }
}

struct StateClockActor(StateClock);

impl Actor for StateClockActor {
    type Context = Context<Self>;
}

impl Handler<ConnectionStateChanged> for StateClockActor {
    type Result = ();
    fn handle(&mut self, msg: ConnectionStateChanged, _: &mut Context<Self>) {
        let now = Instant::now();
        self.0
            .changes
            .lock()
            .unwrap()
            .push((msg.state, msg.cause, now));
        self.0.changed.notify_waiters();
    }
}

impl Handler<EventReceived> for StateClockActor {
    type Result = ();
    fn handle(&mut self, _: EventReceived, _: &mut Context<Self>) {}
}

impl Handler<CardActionReceived> for StateClockActor {
    type Result = Result<CardActionResponse, CallbackFailed>;
    fn handle(&mut self, _: CardActionReceived, _: &mut Context<Self>) -> Self::Result {
        Ok(CardActionResponse::default())
    }
}

#[actix_rt::test]
async fn a_silent_link_is_declared_dead_exactly_at_ping_interval_plus_margin() {
    // PingInterval 1 s (sandbox), margin 10 s: dead 11 s after the last frame. A periodic
    // check (every margin/2, at most 5 s) would notice it up to 5 s later.
    let margin = Duration::from_secs(10);
    let limit = Duration::from_secs(1) + margin;
    let sandbox = Sandbox::start(fast_sandbox_config()).await.unwrap();
    let mut config = Config::for_tests(&sandbox.base_url());
    config.connection.liveness_margin = margin;
    let clock = StateClock::default();
    let actor = ConnectionActor::new(
        config.app.credentials.clone().unwrap(),
        config.open_base_url(),
        config.connection.clone(),
        clock.outputs(),
    )
    .unwrap()
    .start_supervised();
    clock.first(ConnectionState::Connected, WAIT).await;
    sandbox.wait_for_pings(1, WAIT).await.unwrap();

    sandbox.go_silent();
    // Once a ping sent after the silence began has reached the sandbox, every pong sent
    // before it has long reached the client: nothing more will arrive.
    let pings = sandbox.ping_count();
    sandbox.wait_for_pings(pings + 1, WAIT).await.unwrap();

    tokio::time::pause();
    let status = actor.send(GetConnectionStatus).await.unwrap();
    let last_frame = Instant::now() - status.since_last_frame.expect("connected");
    // On the paused clock the wait costs nothing; only timers move it.
    let (cause, dead_at) = clock
        .first(ConnectionState::Reconnecting, Duration::from_secs(600))
        .await;
    tokio::time::resume();

    assert_eq!(cause.as_deref(), Some("silence"));
    let after = dead_at - last_frame;
    assert!(
        after >= limit,
        "declared dead {after:?} after the last frame, before {limit:?}"
    );
    assert!(
        after <= limit + Duration::from_millis(100),
        "declared dead {after:?} after the last frame: late by {:?}",
        after - limit
    );
    sandbox.resume();
    clock.first(ConnectionState::Connected, WAIT).await;
}

/// The link ages of one scrape: (`conn_id` label, frame age, event age).
fn ages(metrics: &Metrics) -> (String, f64, f64) {
    let text = metrics.encode();
    let series = |metric: &str| {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{metric}{{")))
            .unwrap_or_else(|| panic!("{metric} not exported:\n{text}"));
        let (labels, value) = line.rsplit_once(' ').unwrap();
        let conn_id = labels
            .split("conn_id=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a conn_id label")
            .to_string();
        (conn_id, value.parse::<f64>().unwrap())
    };
    let (conn_id, frame_age) = series(FRAME_AGE);
    let (event_conn_id, event_age) = series(EVENT_AGE);
    assert_eq!(conn_id, event_conn_id, "both name the same connection");
    (conn_id, frame_age, event_age)
}

const FRAME_AGE: &str = "lark_auth_connection_last_frame_age_seconds";
const EVENT_AGE: &str = "lark_auth_connection_last_event_age_seconds";

#[actix_rt::test]
async fn the_link_age_gauges_tell_a_quiet_app_from_a_link_that_stopped_delivering() {
    let before_start = std::time::Instant::now();
    let metrics = Metrics::new();
    // Exported from the start, counting from the start, before any connection.
    let (conn_id, frame_age, event_age) = ages(&metrics);
    let bound = before_start.elapsed().as_secs_f64();
    assert_eq!(conn_id, "", "no connection yet");
    for age in [frame_age, event_age] {
        assert!(
            (0.0..=bound).contains(&age),
            "{age} s, started {bound} s ago"
        );
    }

    let sandbox = Sandbox::start(fast_sandbox_config()).await.unwrap();
    let mut config = Config::for_tests(&sandbox.base_url());
    // Long enough that the silent link below is not replaced while observed.
    config.connection.liveness_margin = Duration::from_secs(30);
    let probe = Probe::new();
    let actor = ConnectionActor::new(
        config.app.credentials.clone().unwrap(),
        config.open_base_url(),
        config.connection.clone(),
        probe.outputs(),
    )
    .unwrap()
    .with_metrics(metrics.clone())
    .start_supervised();
    probe.wait_for_state(ConnectionState::Connected, 1).await;
    let status = actor.send(GetConnectionStatus).await.unwrap();
    let conn_id = status.conn_id.expect("connected").to_string();
    assert!(status.since_last_event.is_none(), "no event yet");
    assert_eq!(ages(&metrics).0, conn_id, "per connection");

    // An event resets the event age; it is also a frame.
    let pushed_at = std::time::Instant::now();
    sandbox
        .push_event(&event_json("ev_gauge", "im.message.receive_v1"))
        .unwrap();
    probe.wait_until("the event", |s| s.events.len() == 1).await;
    let (labelled, frame_age, event_age) = ages(&metrics);
    let bound = pushed_at.elapsed().as_secs_f64();
    assert_eq!(labelled, conn_id);
    assert!(
        event_age <= bound,
        "event age {event_age} s, pushed {bound} s ago"
    );
    assert!(
        frame_age <= event_age,
        "frame age {frame_age} s, event age {event_age} s"
    );

    // A quiet app: no more events, but pongs keep the frame age below the event age.
    eventually("a pong after the event", || async {
        let (_, frame_age, event_age) = ages(&metrics);
        frame_age < event_age
    })
    .await;

    // A link that stopped delivering: the frame age grows past the ping interval (1 s),
    // which a live link never lets happen.
    sandbox.go_silent();
    eventually("the frame age past twice the ping interval", || async {
        ages(&metrics).1 > 2.0
    })
    .await;
    let status = actor.send(GetConnectionStatus).await.unwrap();
    assert_eq!(
        status.state,
        ConnectionState::Connected,
        "not yet declared dead"
    );
    assert!(status.since_last_frame.unwrap() > Duration::from_secs(2));
}
