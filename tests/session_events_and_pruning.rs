//! The router beyond authorizations, against the sandbox over the long connection: events
//! of a subscribed type reach the `Subscribe` recipient once even when the platform
//! redelivers them, unsubscribed events are acked and dropped, terminal sessions are
//! pruned after their TTL and event-id dedup marks after their lifetime.

mod sessions_common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use lark_auth::config::AuthFlow;
use lark_auth::connection::EventReceived;
use lark_auth::session::machine::SessionState;
use lark_auth::session::{GetPruneStats, GetSession, Subscribe};
use sessions_common::*;

/// Records every event it receives.
struct Collector {
    seen: Arc<Mutex<Vec<EventReceived>>>,
}

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<EventReceived> for Collector {
    type Result = ();

    fn handle(&mut self, msg: EventReceived, _: &mut Context<Self>) {
        self.seen.lock().unwrap().push(msg);
    }
}

const MESSAGE: &str = "im.message.receive_v1";

fn event_json(event_id: &str, event_type: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schema": "2.0",
        "header": {"event_id": event_id, "event_type": event_type,
                   "create_time": "1767225600000", "token": "verification-token",
                   "app_id": "cli_sandbox_app", "tenant_key": "tk_test_tenant_0001"},
        "event": {"message": {"message_id": "om_1", "content": "{\"text\":\"hi\"}"}}
    }))
    .unwrap()
}

async fn subscribe(h: &Harness, event_type: &str) -> Arc<Mutex<Vec<EventReceived>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let collector = Collector { seen: seen.clone() }.start();
    h.router
        .send(Subscribe {
            event_type: event_type.into(),
            recipient: collector.recipient(),
        })
        .await
        .unwrap();
    seen
}

fn ids(seen: &Mutex<Vec<EventReceived>>) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|e| e.event_id.to_string())
        .collect()
}

#[actix_rt::test]
async fn a_subscribed_event_arrives_once_even_when_redelivered_and_others_are_acked_and_dropped() {
    let h = start(AuthFlow::Device, true, |_| {}).await;
    let seen = subscribe(&h, MESSAGE).await;

    // The platform redelivers an event it thinks unacked under a new message id, with the
    // same event id.
    let first = h
        .sandbox
        .push_event(&event_json("ev_msg_1", MESSAGE))
        .unwrap();
    assert_eq!(h.ack_of(&first).await.code(), Some(200));
    let again = h
        .sandbox
        .push_event(&event_json("ev_msg_1", MESSAGE))
        .unwrap();
    assert_ne!(first, again);
    let other = h
        .sandbox
        .push_event(&event_json("ev_contact_1", "contact.user.created_v3"))
        .unwrap();
    let last = h
        .sandbox
        .push_event(&event_json("ev_msg_2", MESSAGE))
        .unwrap();
    for pushed in [&again, &other, &last] {
        assert_eq!(h.ack_of(pushed).await.code(), Some(200), "{pushed} acked");
    }

    // Events reach the router in order; once the last is delivered, the redelivery and
    // the unsubscribed event have been handled before it.
    eventually("the last event delivered", || async {
        ids(&seen).contains(&"ev_msg_2".to_string()).then_some(())
    })
    .await;
    assert_eq!(ids(&seen), ["ev_msg_1", "ev_msg_2"]);
    let delivered = seen.lock().unwrap();
    assert_eq!(delivered[0].event_type, MESSAGE);
    assert_eq!(delivered[0].message_id, first);
}

#[actix_rt::test]
async fn terminal_sessions_are_pruned_after_their_ttl_and_running_ones_are_kept() {
    let h = start(AuthFlow::Device, true, |s| {
        s.terminal_ttl = Duration::from_millis(300);
        s.prune_period = Duration::from_millis(50);
    })
    .await;
    let ended = h.authorize(USER).await;
    let user_code = h.user_code(1).await;
    h.sandbox.deny_device(&user_code, USER).unwrap();
    let view = h
        .wait_for_state(&ended.session_id, SessionState::Denied)
        .await;
    let running = h.authorize(OTHER).await;

    eventually("the denied session pruned", || async {
        let found = h
            .router
            .send(GetSession {
                session_id: ended.session_id.clone(),
            })
            .await
            .unwrap()
            .unwrap();
        found.is_none().then_some(())
    })
    .await;
    // Not before its TTL: every view read so far was at most that old.
    let pruned_at = lark_auth::vault::unix_now_ms();
    assert!(pruned_at >= view.updated_at_ms + 300);
    // The round's totals are added once its mark purge is done too.
    let stats = eventually("the prune round counted", || async {
        let stats = h.router.send(GetPruneStats).await.unwrap();
        (stats.sessions >= 1).then_some(stats)
    })
    .await;
    assert_eq!(stats.sessions, 1);
    assert!(!h.session(&running.session_id).await.state.is_terminal());
}

#[actix_rt::test]
async fn dedup_marks_are_purged_after_their_lifetime_and_the_event_id_is_new_again() {
    let h = start(AuthFlow::Device, true, |s| {
        s.dedup_ttl = Duration::from_millis(200);
        s.prune_period = Duration::from_millis(50);
    })
    .await;
    let seen = subscribe(&h, MESSAGE).await;
    let first = h
        .sandbox
        .push_event(&event_json("ev_old", MESSAGE))
        .unwrap();
    h.ack_of(&first).await;
    eventually("the event delivered", || async {
        (ids(&seen).len() == 1).then_some(())
    })
    .await;

    let stats = eventually("the mark purged", || async {
        let stats = h.router.send(GetPruneStats).await.unwrap();
        (stats.marks >= 1).then_some(stats)
    })
    .await;
    assert_eq!(stats.marks, 1, "one event, one mark");

    // Past the mark's lifetime the platform no longer redelivers; an event with that id is
    // treated as new.
    let again = h
        .sandbox
        .push_event(&event_json("ev_old", MESSAGE))
        .unwrap();
    h.ack_of(&again).await;
    eventually("the event delivered again", || async {
        (ids(&seen).len() == 2).then_some(())
    })
    .await;
}

/// Counts the events it receives, and those with one event id apart.
struct Counter {
    total: Arc<std::sync::atomic::AtomicUsize>,
    watched: Arc<std::sync::atomic::AtomicUsize>,
    watched_id: &'static str,
}

impl Actor for Counter {
    type Context = Context<Self>;
}

impl Handler<EventReceived> for Counter {
    type Result = ();

    fn handle(&mut self, msg: EventReceived, _: &mut Context<Self>) {
        use std::sync::atomic::Ordering;
        self.total.fetch_add(1, Ordering::Relaxed);
        if &*msg.event_id == self.watched_id {
            self.watched.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[actix_rt::test]
async fn a_redelivery_inside_the_window_is_handled_once_after_100000_other_events() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const OTHERS: usize = 100_000;
    // The window is the mark cap (`sessions.dedup_max_marks`) as much as the TTL: with the
    // default cap of 100,000 the first event's mark is the 100,001st and the upkeep drops
    // it as designed whenever its round falls before the redelivery. A cap above the
    // count keeps the redelivery inside the window.
    let h = start(AuthFlow::Device, true, |s| s.max_marks = 2 * OTHERS as u64).await;
    let (total, watched) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counter = Counter {
        total: total.clone(),
        watched: watched.clone(),
        watched_id: "ev_early",
    }
    .start();
    h.router
        .send(Subscribe {
            event_type: MESSAGE.into(),
            recipient: counter.recipient(),
        })
        .await
        .unwrap();
    let first = h
        .sandbox
        .push_event(&event_json("ev_early", MESSAGE))
        .unwrap();
    assert_eq!(h.ack_of(&first).await.code(), Some(200));

    let template = String::from_utf8(event_json("ev_other_NUM", MESSAGE))
        .unwrap()
        .replace("NUM", "{n}");
    let report = h
        .sandbox
        .flood(lark_auth::sandbox::FloodSpec {
            count: OTHERS,
            window: 256,
            payload_template: template.into_bytes(),
            timeout: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((report.acked, report.non_200), (OTHERS, 0));
    // Deliveries may trail the acks (each sets its mark first): a longer wait than
    // `eventually`'s.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while total.load(Ordering::Relaxed) < OTHERS + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} delivered",
            total.load(Ordering::Relaxed),
            OTHERS + 1
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }

    // Redelivered within the window, after 100,000 other events: caught.
    let again = h
        .sandbox
        .push_event(&event_json("ev_early", MESSAGE))
        .unwrap();
    assert_eq!(h.ack_of(&again).await.code(), Some(200));
    let last = h
        .sandbox
        .push_event(&event_json("ev_after", MESSAGE))
        .unwrap();
    h.ack_of(&last).await;
    eventually("the event after the redelivery delivered", || async {
        (total.load(Ordering::Relaxed) >= OTHERS + 2).then_some(())
    })
    .await;
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(watched.load(Ordering::Relaxed), 1, "handled once");
    assert_eq!(total.load(Ordering::Relaxed), OTHERS + 2);
}
