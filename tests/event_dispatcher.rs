//! The EventDispatcher alone (actor tier): events deduplicated by `event_id` with store
//! marks living the configured TTL on a FakeClock, fanned out to the subscribers of their
//! type; probes stand in for the subscribers (and, in one test, for a failing store).
//! Each `send` of an event replies after its fan-out, and a probe answers [`Seen`] after
//! the events queued before it, so no test sleeps.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use lark_auth::clock::FakeClock;
use lark_auth::connection::{EventReceived, SharedStr};
use lark_auth::events::{EventDispatcher, MarkFailed, SetMarkOnce, Subscribe, event_mark};
use lark_auth::protocol::frame::FrameKind;
use lark_auth::session::store::{SessionCodec, SessionStoreActor};
use lark_auth::store::{SledStore, Store};
use lark_auth::vault::{Keyring, VaultKey};

const MESSAGE: &str = "im.message.receive_v1";
const USER_CREATED: &str = "contact.user.created_v3";
const TTL: Duration = Duration::from_secs(7 * 3600 + 1800);

/// Records the ids of the events it receives.
struct Probe {
    seen: Vec<String>,
}

impl Actor for Probe {
    type Context = Context<Self>;
}

impl Handler<EventReceived> for Probe {
    type Result = ();

    fn handle(&mut self, msg: EventReceived, _: &mut Context<Self>) {
        self.seen.push(msg.event_id.to_string());
    }
}

/// Replies the ids received so far.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
struct Seen;

impl Handler<Seen> for Probe {
    type Result = Vec<String>;

    fn handle(&mut self, _: Seen, _: &mut Context<Self>) -> Vec<String> {
        self.seen.clone()
    }
}

/// Stops the probe.
#[derive(Message)]
#[rtype(result = "()")]
struct Stop;

impl Handler<Stop> for Probe {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

fn probe() -> Addr<Probe> {
    Probe { seen: Vec::new() }.start()
}

fn event(event_id: &str, event_type: &'static str) -> EventReceived {
    EventReceived {
        event_id: SharedStr::from(event_id),
        event_type: SharedStr::from_static(event_type),
        message_id: SharedStr::from(format!("msg_{event_id}")),
        trace_id: SharedStr::from_static("trace"),
        frame_kind: FrameKind::Event,
        payload: bytes::Bytes::from_static(b"{\"schema\":\"2.0\"}"),
        conn_id: Arc::from("conn_1"),
    }
}

/// A dispatcher over a sled mark store in a temporary directory.
fn dispatcher(clock: &FakeClock) -> (Addr<EventDispatcher>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let codec = SessionCodec::new(&Keyring::single(1, VaultKey::generate())).unwrap();
    let marks = SessionStoreActor::start(store, codec);
    let dispatcher = EventDispatcher::new(marks.recipient(), TTL, clock.clock()).start();
    (dispatcher, dir)
}

async fn subscribe(dispatcher: &Addr<EventDispatcher>, event_type: &str, to: &Addr<Probe>) {
    dispatcher
        .send(Subscribe {
            event_type: event_type.into(),
            recipient: to.clone().recipient(),
        })
        .await
        .unwrap();
}

#[actix_rt::test]
async fn each_subscriber_gets_each_event_once_under_redelivery() {
    let clock = FakeClock::starting_now();
    let (dispatcher, _dir) = dispatcher(&clock);
    let (a, b, c) = (probe(), probe(), probe());
    subscribe(&dispatcher, MESSAGE, &a).await;
    subscribe(&dispatcher, MESSAGE, &b).await;
    subscribe(&dispatcher, USER_CREATED, &c).await;

    // The platform redelivers after 15 s, 5 min, 1 h and 6 h.
    dispatcher.send(event("ev_1", MESSAGE)).await.unwrap();
    dispatcher.send(event("ev_2", USER_CREATED)).await.unwrap();
    let t0 = clock.now_ms();
    for after_secs in [15, 300, 3600, 6 * 3600] {
        clock.set(t0 + after_secs * 1000);
        dispatcher.send(event("ev_1", MESSAGE)).await.unwrap();
        dispatcher.send(event("ev_2", USER_CREATED)).await.unwrap();
    }
    dispatcher.send(event("ev_3", MESSAGE)).await.unwrap();

    assert_eq!(a.send(Seen).await.unwrap(), ["ev_1", "ev_3"]);
    assert_eq!(b.send(Seen).await.unwrap(), ["ev_1", "ev_3"]);
    assert_eq!(c.send(Seen).await.unwrap(), ["ev_2"]);
}

#[actix_rt::test]
async fn a_mark_lives_its_ttl_on_the_clock_then_the_id_is_new_again() {
    let clock = FakeClock::starting_now();
    let (dispatcher, _dir) = dispatcher(&clock);
    let a = probe();
    subscribe(&dispatcher, MESSAGE, &a).await;
    dispatcher.send(event("ev_1", MESSAGE)).await.unwrap();
    clock.advance(TTL - Duration::from_millis(1));
    dispatcher.send(event("ev_1", MESSAGE)).await.unwrap();
    assert_eq!(a.send(Seen).await.unwrap(), ["ev_1"], "within the TTL");
    clock.advance(Duration::from_millis(1));
    dispatcher.send(event("ev_1", MESSAGE)).await.unwrap();
    assert_eq!(
        a.send(Seen).await.unwrap(),
        ["ev_1", "ev_1"],
        "the mark expired at its TTL"
    );
}

#[actix_rt::test]
async fn an_unsubscribed_event_is_dropped_yet_marked() {
    let clock = FakeClock::starting_now();
    let (dispatcher, _dir) = dispatcher(&clock);
    let a = probe();
    subscribe(&dispatcher, MESSAGE, &a).await;
    // Nobody takes this type: the reply comes (the event is done with) and nobody gets it.
    dispatcher.send(event("ev_9", USER_CREATED)).await.unwrap();
    assert!(a.send(Seen).await.unwrap().is_empty());

    // It was consumed, not parked: a subscriber arriving later does not get its
    // redelivery, only new events.
    let late = probe();
    subscribe(&dispatcher, USER_CREATED, &late).await;
    dispatcher.send(event("ev_9", USER_CREATED)).await.unwrap();
    dispatcher.send(event("ev_10", USER_CREATED)).await.unwrap();
    assert_eq!(late.send(Seen).await.unwrap(), ["ev_10"]);
}

#[actix_rt::test]
async fn a_stopped_subscriber_is_dropped_and_the_others_still_served() {
    let clock = FakeClock::starting_now();
    let (dispatcher, _dir) = dispatcher(&clock);
    let a = probe();
    subscribe(&dispatcher, MESSAGE, &a).await;
    let gone = probe();
    subscribe(&dispatcher, MESSAGE, &gone).await;
    gone.send(Stop).await.unwrap();
    dispatcher.send(event("ev_1", MESSAGE)).await.unwrap();
    dispatcher.send(event("ev_2", MESSAGE)).await.unwrap();
    assert_eq!(a.send(Seen).await.unwrap(), ["ev_1", "ev_2"]);
}

/// A mark store that always fails.
struct BrokenMarks;

impl Actor for BrokenMarks {
    type Context = Context<Self>;
}

impl Handler<SetMarkOnce> for BrokenMarks {
    type Result = Result<bool, MarkFailed>;

    fn handle(&mut self, msg: SetMarkOnce, _: &mut Context<Self>) -> Self::Result {
        assert!(
            msg.mark.starts_with(b"event/"),
            "marks share the event/ namespace"
        );
        Err(MarkFailed("store stopped".into()))
    }
}

#[actix_rt::test]
async fn a_failing_mark_store_never_loses_an_event() {
    let clock = FakeClock::starting_now();
    let dispatcher =
        EventDispatcher::new(BrokenMarks.start().recipient(), TTL, clock.clock()).start();
    let a = probe();
    subscribe(&dispatcher, MESSAGE, &a).await;
    dispatcher.send(event("ev_1", MESSAGE)).await.unwrap();
    dispatcher.send(event("ev_1", MESSAGE)).await.unwrap();
    assert_eq!(
        a.send(Seen).await.unwrap(),
        ["ev_1", "ev_1"],
        "forwarded (maybe twice) rather than dropped"
    );
    assert_eq!(event_mark("ev_1"), b"event/ev_1");
}
