//! The store contract: one suite of [`Store`] tests run against both backends, the
//! embedded [`SledStore`] and the shared [`PostgresStore`] (on a throwaway PostgreSQL
//! server started by the test, `pg_common`), so the two cannot drift apart. Behaviour that
//! belongs to one backend only is tested beside it: sled's lock and lost-write checks in
//! `src/store/sled_store.rs`; PostgreSQL's migrations, several instances on one schema, a
//! schema newer than the binary and connection failures at the end of this file.
//!
//! The cases under `cases` (the first seven moved from `sled_store.rs`'s unit tests with
//! their assertions unchanged) take a [`Backend`] that opens the store under test; opening
//! again after the previous handle was dropped must find the same data (a restart).

mod pg_common;

use std::sync::Arc;
use std::time::Duration;

use lark_auth::clock::FakeClock;
use lark_auth::store::{
    CasOutcome, DueEntry, GrantKey, GrantWrite, MARK_BUCKET_MS, OutboxEntry, OutboxEvent,
    OutboxRetry, PostgresStore, SledStore, Store, StoreError,
};

/// Opens the store under test; every open sees what earlier handles wrote.
pub trait Backend {
    /// A new handle on the store (drop the previous one first for sled: one handle per
    /// directory).
    fn open(&self) -> Arc<dyn Store>;

    /// Whether other processes may share the store (outbox entries have owners).
    fn shared(&self) -> bool {
        false
    }
}

/// sled in a temporary directory.
pub struct Sled {
    dir: tempfile::TempDir,
}

impl Sled {
    fn new() -> Sled {
        Sled {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Backend for Sled {
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(SledStore::open(self.dir.path()).unwrap())
    }
}

/// Schema `lark_auth` on a throwaway PostgreSQL server.
pub struct Postgres {
    server: pg_common::TestPostgres,
}

impl Postgres {
    fn new() -> Postgres {
        Postgres {
            server: pg_common::TestPostgres::start(),
        }
    }
}

impl Backend for Postgres {
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(PostgresStore::open(&self.server.options("lark_auth")).unwrap())
    }

    fn shared(&self) -> bool {
        true
    }
}

/// Runs every case of [`cases`] against the backend `$make` builds, as module `$name`.
macro_rules! contract_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn grants_survive_reopen_with_versions_and_due_index() {
                cases::grants_survive_reopen_with_versions_and_due_index(&$make);
            }
            #[test]
            fn compare_and_swap_detects_a_stale_version() {
                cases::compare_and_swap_detects_a_stale_version(&$make);
            }
            #[test]
            fn quarantine_moves_a_record_out_of_grants_and_index() {
                cases::quarantine_moves_a_record_out_of_grants_and_index(&$make);
            }
            #[test]
            fn marks_dedup_until_expiry_and_purge_costs_only_the_expired() {
                cases::marks_dedup_until_expiry_and_purge_costs_only_the_expired(&$make);
            }
            #[test]
            fn a_value_lives_and_dies_with_its_mark() {
                cases::a_value_lives_and_dies_with_its_mark(&$make);
            }
            #[test]
            fn sessions_and_meta() {
                cases::sessions_and_meta(&$make);
            }
            #[test]
            fn invalid_key_parts_are_refused() {
                cases::invalid_key_parts_are_refused(&$make);
            }
            #[test]
            fn creating_twice_and_deleting_nothing() {
                cases::creating_twice_and_deleting_nothing(&$make);
            }
            #[test]
            fn listings_are_in_key_order_and_paged() {
                cases::listings_are_in_key_order_and_paged(&$make);
            }
            #[test]
            fn concurrent_writers_one_wins() {
                cases::concurrent_writers_one_wins(&$make);
            }
            #[test]
            fn the_outbox_takes_an_event_once_per_event_id_and_survives_reopen() {
                cases::the_outbox_takes_an_event_once_per_event_id_and_survives_reopen(&$make);
            }
            #[test]
            fn outbox_retry_state_paging_and_invalid_keys() {
                cases::outbox_retry_state_paging_and_invalid_keys(&$make);
            }
            #[test]
            fn outbox_entries_are_claimed_under_leases_when_the_store_is_shared() {
                cases::outbox_entries_are_claimed_under_leases_when_the_store_is_shared(&$make);
            }
            #[test]
            fn over_the_cap_the_oldest_bucket_is_dropped_whole_first() {
                cases::over_the_cap_the_oldest_bucket_is_dropped_whole_first(&$make);
            }
            #[test]
            fn buckets_expire_with_the_clock_and_the_count_follows() {
                cases::buckets_expire_with_the_clock_and_the_count_follows(&$make);
            }
            #[test]
            fn a_redelivery_inside_the_window_is_caught_with_its_value_under_the_cap() {
                cases::a_redelivery_inside_the_window_is_caught_with_its_value_under_the_cap(
                    &$make,
                );
            }
        }
    };
}

contract_suite!(sled, Sled::new());
contract_suite!(postgres, Postgres::new());

fn write(payload: &[u8], due_ms: Option<u64>) -> Option<GrantWrite> {
    Some(GrantWrite {
        payload: payload.to_vec(),
        due_ms,
    })
}

mod cases {
    use super::*;

    pub fn grants_survive_reopen_with_versions_and_due_index(backend: &dyn Backend) {
        let a = GrantKey::new("cli_a", "ou_1");
        let b = GrantKey::new("cli_a", "ou_2");
        {
            let store = backend.open();
            assert_eq!(
                store
                    .compare_and_swap_grant(&a, None, write(b"one", Some(500)))
                    .unwrap(),
                CasOutcome::Swapped { version: 1 }
            );
            store
                .compare_and_swap_grant(&b, None, write(b"two", Some(100)))
                .unwrap();
            assert_eq!(
                store
                    .compare_and_swap_grant(&a, Some(1), write(b"one-b", Some(300)))
                    .unwrap(),
                CasOutcome::Swapped { version: 2 }
            );
            store.flush().unwrap();
        }
        let store = backend.open();
        let got = store.get_grant(&a).unwrap().unwrap();
        assert_eq!(
            (got.version, got.due_ms, got.payload.as_slice()),
            (2, Some(300), &b"one-b"[..])
        );
        // The old due entry (500) moved with the record: exactly one entry per grant.
        let due = store.due_grants(u64::MAX - 1, 10).unwrap();
        assert_eq!(
            due,
            vec![
                DueEntry {
                    due_ms: 100,
                    key: b.clone()
                },
                DueEntry {
                    due_ms: 300,
                    key: a.clone()
                },
            ]
        );
        assert_eq!(store.due_grants(200, 10).unwrap().len(), 1);
        let listed = store.list_grants("cli_a", None, 10).unwrap();
        assert_eq!(listed.len(), 2);
        let page = store.list_grants("cli_a", Some("ou_1"), 10).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].0, b);
        assert!(store.list_grants("cli_other", None, 10).unwrap().is_empty());
    }

    pub fn compare_and_swap_detects_a_stale_version(backend: &dyn Backend) {
        let store = backend.open();
        let a = GrantKey::new("cli_a", "ou_1");
        store
            .compare_and_swap_grant(&a, None, write(b"v1", None))
            .unwrap();
        store
            .compare_and_swap_grant(&a, Some(1), write(b"v2", None))
            .unwrap();
        // A writer that read version 1 loses and changes nothing.
        assert_eq!(
            store
                .compare_and_swap_grant(&a, Some(1), write(b"stale", None))
                .unwrap(),
            CasOutcome::Conflict { current: Some(2) }
        );
        // Creating over an existing record is a conflict too.
        assert_eq!(
            store
                .compare_and_swap_grant(&a, None, write(b"new", None))
                .unwrap(),
            CasOutcome::Conflict { current: Some(2) }
        );
        assert_eq!(store.get_grant(&a).unwrap().unwrap().payload, b"v2");
        assert_eq!(
            store.compare_and_swap_grant(&a, Some(2), None).unwrap(),
            CasOutcome::Swapped { version: 0 }
        );
        assert_eq!(store.get_grant(&a).unwrap(), None);
    }

    pub fn quarantine_moves_a_record_out_of_grants_and_index(backend: &dyn Backend) {
        let store = backend.open();
        let a = GrantKey::new("cli_a", "ou_1");
        store
            .compare_and_swap_grant(&a, None, write(b"bad", Some(10)))
            .unwrap();
        assert!(store.quarantine_grant(&a, "unknown format", 77).unwrap());
        assert_eq!(store.get_grant(&a).unwrap(), None);
        assert!(store.due_grants(u64::MAX - 1, 10).unwrap().is_empty());
        let q = store.quarantined().unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(
            (q[0].key.clone(), q[0].at_ms, q[0].reason.as_str()),
            (a.clone(), 77, "unknown format")
        );
        assert!(q[0].raw.ends_with(b"bad"));
        assert!(!store.quarantine_grant(&a, "again", 78).unwrap());
    }

    pub fn marks_dedup_until_expiry_and_purge_costs_only_the_expired(backend: &dyn Backend) {
        let store = backend.open();
        assert!(store.mark_once(b"m1", 100, 0).unwrap());
        assert!(!store.mark_once(b"m1", 200, 50).unwrap());
        assert!(store.mark_once(b"m2", 1_000, 50).unwrap());
        // Expired: may be set again.
        assert!(store.mark_once(b"m1", 300, 100).unwrap());
        assert_eq!(store.purge_marks(299, 10).unwrap(), 0);
        assert_eq!(store.purge_marks(300, 10).unwrap(), 1);
        assert!(store.mark_once(b"m1", 400, 301).unwrap());
        assert!(!store.mark_once(b"m2", 2_000, 301).unwrap());
    }

    pub fn a_value_lives_and_dies_with_its_mark(backend: &dyn Backend) {
        let store = backend.open();
        assert!(
            !store.set_mark_value(b"m1", b"answer", 0).unwrap(),
            "no mark yet"
        );
        assert!(store.mark_once(b"m1", 100, 0).unwrap());
        assert_eq!(store.mark_value(b"m1", 10).unwrap(), None, "no value yet");
        assert!(store.set_mark_value(b"m1", b"answer", 10).unwrap());
        assert_eq!(
            store.mark_value(b"m1", 10).unwrap().as_deref(),
            Some(&b"answer"[..])
        );
        // The value neither extends nor shortens the mark.
        assert!(!store.mark_once(b"m1", 500, 99).unwrap());
        assert_eq!(
            store.mark_value(b"m1", 100).unwrap(),
            None,
            "expired with the mark"
        );
        assert!(!store.set_mark_value(b"m1", b"late", 100).unwrap());
        // Set again after expiry: a fresh mark without the old value.
        assert!(store.mark_once(b"m1", 300, 100).unwrap());
        assert_eq!(store.mark_value(b"m1", 100).unwrap(), None);
        assert!(store.set_mark_value(b"m1", b"second", 100).unwrap());
        assert_eq!(store.purge_marks(300, 10).unwrap(), 1);
        assert_eq!(
            store.mark_value(b"m1", 0).unwrap(),
            None,
            "purged with the mark"
        );
        assert!(
            store.mark_once(b"m1", 400, 0).unwrap(),
            "nothing left of it"
        );
    }

    /// Marks of three buckets (one minute of expiry each); a cap below the count drops the
    /// oldest bucket whole, then the next, never a newer mark first; values go with
    /// their marks.
    pub fn over_the_cap_the_oldest_bucket_is_dropped_whole_first(backend: &dyn Backend) {
        let store = backend.open();
        let clock = FakeClock::new(10 * MARK_BUCKET_MS);
        let ttl = 100 * MARK_BUCKET_MS;
        let mark = |b: u64, i: u64| format!("event/ev_{b}_{i}").into_bytes();
        for b in 0..3 {
            for i in 0..4 {
                assert!(
                    store
                        .mark_once(&mark(b, i), clock.now_ms() + ttl, clock.now_ms())
                        .unwrap()
                );
            }
            assert!(
                store
                    .set_mark_value(&mark(b, 0), b"answer", clock.now_ms())
                    .unwrap()
            );
            clock.advance(Duration::from_millis(MARK_BUCKET_MS));
        }
        let now = clock.now_ms();
        assert_eq!(store.mark_count().unwrap(), 12);
        assert_eq!(store.trim_marks(12, 100).unwrap(), 0, "at the cap: nothing");
        // One over: the whole oldest bucket goes (4 marks), nothing newer.
        assert_eq!(store.trim_marks(11, 100).unwrap(), 4);
        assert_eq!(store.mark_count().unwrap(), 8);
        assert_eq!(store.mark_value(&mark(0, 0), now).unwrap(), None);
        assert_eq!(
            store.mark_value(&mark(1, 0), now).unwrap().as_deref(),
            Some(&b"answer"[..])
        );
        for i in 0..4 {
            assert!(!store.mark_once(&mark(1, i), now + ttl, now).unwrap());
            assert!(!store.mark_once(&mark(2, i), now + ttl, now).unwrap());
        }
        // A limit smaller than the bucket: the oldest marks of it first.
        assert_eq!(store.trim_marks(5, 2).unwrap(), 2);
        assert_eq!(
            store.trim_marks(5, 100).unwrap(),
            2,
            "the rest of the bucket"
        );
        assert_eq!(store.mark_count().unwrap(), 4);
        for i in 0..4 {
            assert!(!store.mark_once(&mark(2, i), now + ttl, now).unwrap());
        }
        // The dropped ones are new again (evicted before their expiry).
        assert!(store.mark_once(&mark(0, 1), now + ttl, now).unwrap());
        assert!(store.mark_once(&mark(1, 3), now + ttl, now).unwrap());
        assert_eq!(store.mark_count().unwrap(), 6);
    }

    /// Expiry drives purges bucket by bucket as a fake clock moves on.
    pub fn buckets_expire_with_the_clock_and_the_count_follows(backend: &dyn Backend) {
        let store = backend.open();
        let clock = FakeClock::new(1_000 * MARK_BUCKET_MS);
        let ttl = 5 * MARK_BUCKET_MS;
        for b in 0..3u64 {
            for i in 0..3u64 {
                let m = format!("event/e{b}_{i}");
                assert!(
                    store
                        .mark_once(m.as_bytes(), clock.now_ms() + ttl, clock.now_ms())
                        .unwrap()
                );
            }
            clock.advance(Duration::from_millis(MARK_BUCKET_MS));
        }
        assert_eq!(store.mark_count().unwrap(), 9);
        assert_eq!(store.purge_marks(clock.now_ms(), 100).unwrap(), 0);
        // The first bucket's marks expire 5 buckets after they were set.
        clock.set(1_000 * MARK_BUCKET_MS + ttl);
        assert_eq!(store.purge_marks(clock.now_ms(), 100).unwrap(), 3);
        assert_eq!(store.mark_count().unwrap(), 6);
        assert!(
            !store
                .mark_once(b"event/e1_0", clock.now_ms() + ttl, clock.now_ms())
                .unwrap(),
            "the next bucket is still alive"
        );
        clock.advance(Duration::from_millis(2 * MARK_BUCKET_MS));
        assert_eq!(store.purge_marks(clock.now_ms(), 100).unwrap(), 6);
        assert_eq!(store.mark_count().unwrap(), 0);
        // Reopened (a restart): the count is the store's.
        drop(store);
        let store = backend.open();
        assert_eq!(store.mark_count().unwrap(), 0);
        assert!(store.mark_once(b"event/x", u64::MAX / 2, 0).unwrap());
        drop(store);
        assert_eq!(backend.open().mark_count().unwrap(), 1);
    }

    /// 2,000 other marks later, with a cap of 1,000 kept by trims, a redelivery of a
    /// recent event is still caught and its kept value read back; keys are fixed-size.
    pub fn a_redelivery_inside_the_window_is_caught_with_its_value_under_the_cap(
        backend: &dyn Backend,
    ) {
        let store = backend.open();
        let clock = FakeClock::new(5_000 * MARK_BUCKET_MS);
        let ttl = 450 * MARK_BUCKET_MS;
        let long = format!("event/{}", "x".repeat(300));
        for i in 0..2_000u64 {
            let m = format!("event/other_{i}");
            assert!(
                store
                    .mark_once(m.as_bytes(), clock.now_ms() + ttl, clock.now_ms())
                    .unwrap()
            );
            if i == 1_900 {
                assert!(
                    store
                        .mark_once(long.as_bytes(), clock.now_ms() + ttl, clock.now_ms())
                        .unwrap()
                );
                assert!(
                    store
                        .set_mark_value(long.as_bytes(), b"kept", clock.now_ms())
                        .unwrap()
                );
            }
            if i % 100 == 99 {
                store.trim_marks(1_000, 10_000).unwrap();
                assert!(store.mark_count().unwrap() <= 1_000);
            }
            clock.advance(Duration::from_millis(100));
        }
        assert!(
            !store
                .mark_once(long.as_bytes(), clock.now_ms() + ttl, clock.now_ms())
                .unwrap(),
            "redelivery caught"
        );
        assert_eq!(
            store
                .mark_value(long.as_bytes(), clock.now_ms())
                .unwrap()
                .as_deref(),
            Some(&b"kept"[..])
        );
        assert!(
            store
                .mark_once(b"event/other_0", clock.now_ms() + ttl, clock.now_ms())
                .unwrap(),
            "the oldest were dropped for the cap"
        );
    }

    pub fn sessions_and_meta(backend: &dyn Backend) {
        let store = backend.open();
        store.put_session("s1", b"x").unwrap();
        assert_eq!(store.get_session("s1").unwrap(), Some(b"x".to_vec()));
        assert_eq!(store.list_sessions().unwrap().len(), 1);
        assert!(store.delete_session("s1").unwrap());
        assert!(!store.delete_session("s1").unwrap());
        assert!(store.put_meta_if_absent("keycheck/1", b"a").unwrap());
        assert!(!store.put_meta_if_absent("keycheck/1", b"b").unwrap());
        assert_eq!(store.get_meta("keycheck/1").unwrap(), Some(b"a".to_vec()));
        assert_eq!(store.list_meta("keycheck/").unwrap().len(), 1);
    }

    pub fn invalid_key_parts_are_refused(backend: &dyn Backend) {
        let store = backend.open();
        let err = store
            .get_grant(&GrantKey::new("cli\0a", "ou_1"))
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidKey { what: "app_id" }),
            "{err:?}"
        );
    }

    /// Creating over a record conflicts; deleting where there is nothing is done (version 0);
    /// deleting with a stale version conflicts.
    pub fn creating_twice_and_deleting_nothing(backend: &dyn Backend) {
        let store = backend.open();
        let a = GrantKey::new("cli_a", "ou_1");
        assert_eq!(
            store.compare_and_swap_grant(&a, None, None).unwrap(),
            CasOutcome::Swapped { version: 0 }
        );
        assert_eq!(
            store.compare_and_swap_grant(&a, Some(1), None).unwrap(),
            CasOutcome::Conflict { current: None }
        );
        assert_eq!(
            store
                .compare_and_swap_grant(&a, Some(3), write(b"x", None))
                .unwrap(),
            CasOutcome::Conflict { current: None }
        );
        store
            .compare_and_swap_grant(&a, None, write(b"v1", Some(5)))
            .unwrap();
        assert_eq!(
            store.compare_and_swap_grant(&a, None, None).unwrap(),
            CasOutcome::Conflict { current: Some(1) }
        );
        assert_eq!(
            store.compare_and_swap_grant(&a, Some(2), None).unwrap(),
            CasOutcome::Conflict { current: Some(1) }
        );
        // Out of the due index, still stored.
        assert_eq!(
            store
                .compare_and_swap_grant(&a, Some(1), write(b"v2", None))
                .unwrap(),
            CasOutcome::Swapped { version: 2 }
        );
        assert!(store.due_grants(u64::MAX - 1, 10).unwrap().is_empty());
        let got = store.get_grant(&a).unwrap().unwrap();
        assert_eq!((got.version, got.due_ms), (2, None));
    }

    /// Grants page in `open_id` byte order per app, due entries come nearest first (ties by
    /// key), sessions in id order, metadata by prefix, quarantine by key then time.
    pub fn listings_are_in_key_order_and_paged(backend: &dyn Backend) {
        let store = backend.open();
        for (app, open, due) in [
            ("cli_b", "ou_Z", Some(7)),
            ("cli_a", "ou_b", Some(7)),
            ("cli_a", "ou_a", Some(9)),
            ("cli_a", "ou_B", None),
            ("cli_a", "ou_aa", Some(1)),
        ] {
            store
                .compare_and_swap_grant(&GrantKey::new(app, open), None, write(b"g", due))
                .unwrap();
        }
        let ids = |page: Vec<(GrantKey, Result<lark_auth::store::StoredGrant, StoreError>)>| {
            page.into_iter().map(|(k, _)| k.open_id).collect::<Vec<_>>()
        };
        assert_eq!(
            ids(store.list_grants("cli_a", None, 2).unwrap()),
            ["ou_B", "ou_a"]
        );
        assert_eq!(
            ids(store.list_grants("cli_a", Some("ou_a"), 2).unwrap()),
            ["ou_aa", "ou_b"]
        );
        assert!(ids(store.list_grants("cli_a", Some("ou_b"), 2).unwrap()).is_empty());
        let due: Vec<(u64, String)> = store
            .due_grants(8, 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.due_ms, e.key.to_string()))
            .collect();
        assert_eq!(
            due,
            [
                (1, "cli_a/ou_aa".to_string()),
                (7, "cli_a/ou_b".to_string()),
                (7, "cli_b/ou_Z".to_string()),
            ]
        );
        assert_eq!(store.due_grants(8, 1).unwrap().len(), 1);

        for id in ["s_b", "s_A", "s_a"] {
            store.put_session(id, id.as_bytes()).unwrap();
        }
        store.put_session("s_a", b"replaced").unwrap();
        let sessions = store.list_sessions().unwrap();
        assert_eq!(
            sessions,
            [
                ("s_A".to_string(), b"s_A".to_vec()),
                ("s_a".to_string(), b"replaced".to_vec()),
                ("s_b".to_string(), b"s_b".to_vec()),
            ]
        );

        assert!(store.put_meta_if_absent("keycheck/2", b"k2").unwrap());
        assert!(store.put_meta_if_absent("keycheck/1", b"k1").unwrap());
        assert!(store.put_meta_if_absent("other", b"o").unwrap());
        assert_eq!(
            store.list_meta("keycheck/").unwrap(),
            [
                ("keycheck/1".to_string(), b"k1".to_vec()),
                ("keycheck/2".to_string(), b"k2".to_vec()),
            ]
        );
        assert_eq!(store.list_meta("").unwrap().len(), 3);
        assert_eq!(store.get_meta("missing").unwrap(), None);

        let b = GrantKey::new("cli_a", "ou_b");
        let a = GrantKey::new("cli_a", "ou_a");
        assert!(store.quarantine_grant(&b, "second", 20).unwrap());
        assert!(store.quarantine_grant(&a, "first", 30).unwrap());
        let q: Vec<(String, u64)> = store
            .quarantined()
            .unwrap()
            .into_iter()
            .map(|r| (r.key.to_string(), r.at_ms))
            .collect();
        assert_eq!(
            q,
            [
                ("cli_a/ou_a".to_string(), 30),
                ("cli_a/ou_b".to_string(), 20)
            ]
        );
    }

    fn outbox_event(event_id: &str, targets: &[&str]) -> OutboxEvent {
        OutboxEvent {
            event_id: event_id.into(),
            event_type: "im.message.receive_v1".into(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            payload: format!("{{\"event_id\":\"{event_id}\"}}").into_bytes(),
        }
    }

    fn keys(entries: &[OutboxEntry]) -> Vec<(String, String)> {
        entries
            .iter()
            .map(|e| (e.target.clone(), e.event_id.clone()))
            .collect()
    }

    /// Shared (PostgreSQL): entries written by an instance are its own; a claim takes the
    /// entries without owner and those whose owner's lease lapsed, never an instance's own
    /// or a live one's, and hands them over with their retry state; a renewal keeps them.
    /// One process (sled): a claim is the whole outbox, as the start reads it back today.
    pub fn outbox_entries_are_claimed_under_leases_when_the_store_is_shared(backend: &dyn Backend) {
        let (t1, t2) = ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b");
        let store = backend.open();
        assert_eq!(
            store
                .outbox_put_owned(
                    &[outbox_event("ev_1", &[t1, t2])],
                    "a",
                    10_000,
                    90_000,
                    1_000
                )
                .unwrap(),
            [true]
        );
        // A redelivery is not stored again, whoever writes it.
        assert_eq!(
            store
                .outbox_put_owned(&[outbox_event("ev_1", &[t1])], "b", 10_000, 90_000, 1_500)
                .unwrap(),
            [false]
        );
        // Written without owner (e.g. copied by `store migrate`).
        assert_eq!(
            store
                .outbox_put(&[outbox_event("ev_0", &[t1])], 90_000, 500)
                .unwrap(),
            [true]
        );
        let retry = OutboxRetry {
            attempts: 2,
            next_attempt_ms: 4_000,
            dead_at_ms: None,
        };
        assert!(store.outbox_update(t1, "ev_0", retry).unwrap());
        let all = store.outbox_list(None, 100).unwrap();
        assert_eq!(all.len(), 3);

        if !backend.shared() {
            for owner in ["a", "b"] {
                assert_eq!(store.outbox_claim(owner, 20_000, 5_000, 100).unwrap(), all);
            }
            assert_eq!(store.outbox_claim("b", 20_000, 5_000, 2).unwrap(), all[..2]);
            assert_eq!(store.outbox_renew("a", 30_000).unwrap(), 0);
            return;
        }

        // B takes the entry without owner (with its retry state), not A's live ones.
        let claimed = store.outbox_claim("b", 20_000, 5_000, 100).unwrap();
        assert_eq!(keys(&claimed), [(t1.to_string(), "ev_0".to_string())]);
        assert_eq!(
            (claimed[0].attempts, claimed[0].next_attempt_ms),
            (2, 4_000)
        );
        assert_eq!(claimed[0].payload, b"{\"event_id\":\"ev_0\"}");
        // Nothing more for B (its own entry is not handed back) nor for C (all live).
        assert!(
            store
                .outbox_claim("b", 20_000, 5_000, 100)
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .outbox_claim("c", 20_000, 9_999, 100)
                .unwrap()
                .is_empty()
        );
        // A renews its two entries past the end of its first lease: still its own.
        assert_eq!(store.outbox_renew("a", 30_000).unwrap(), 2);
        assert_eq!(store.outbox_renew("nobody", 30_000).unwrap(), 0);
        assert!(
            store
                .outbox_claim("c", 40_000, 15_000, 100)
                .unwrap()
                .is_empty()
        );
        // B's lease lapsed (20 000 < 25 000): C takes its entry.
        let claimed = store.outbox_claim("c", 40_000, 25_000, 100).unwrap();
        assert_eq!(keys(&claimed), [(t1.to_string(), "ev_0".to_string())]);
        assert_eq!(store.outbox_renew("b", 50_000).unwrap(), 0, "B lost it");
        // A's lapsed too (30 000 < 31 000): taken oldest first, `limit` at a time.
        let first = store.outbox_claim("c", 60_000, 31_000, 1).unwrap();
        let second = store.outbox_claim("c", 60_000, 31_000, 1).unwrap();
        assert_eq!(
            [keys(&first), keys(&second)].concat(),
            [
                (t1.to_string(), "ev_1".to_string()),
                (t2.to_string(), "ev_1".to_string())
            ]
        );
        assert!(
            store
                .outbox_claim("c", 60_000, 31_000, 1)
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.outbox_renew("c", 70_000).unwrap(), 3);
        assert_eq!(
            store.outbox_list(None, 100).unwrap().len(),
            3,
            "nothing lost"
        );
    }

    /// One entry per target; a redelivery (same event id, mark alive) is not stored again,
    /// even after its entries were delivered and removed; entries outlive a reopen.
    pub fn the_outbox_takes_an_event_once_per_event_id_and_survives_reopen(backend: &dyn Backend) {
        let (t1, t2) = ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b");
        {
            let store = backend.open();
            let stored = store
                .outbox_put(
                    &[
                        outbox_event("ev_1", &[t1, t2]),
                        outbox_event("ev_2", &[t1]),
                        outbox_event("ev_1", &[t1, t2]),
                    ],
                    10_000,
                    1_000,
                )
                .unwrap();
            assert_eq!(stored, [true, true, false]);
            assert_eq!(
                store
                    .outbox_put(&[outbox_event("ev_2", &[t1])], 10_000, 2_000)
                    .unwrap(),
                [false]
            );
            let all = store.outbox_list(None, 100).unwrap();
            assert_eq!(
                keys(&all),
                [
                    (t1.to_string(), "ev_1".to_string()),
                    (t1.to_string(), "ev_2".to_string()),
                    (t2.to_string(), "ev_1".to_string()),
                ]
            );
            let first = &all[0];
            assert_eq!(first.event_type, "im.message.receive_v1");
            assert_eq!(first.payload, br#"{"event_id":"ev_1"}"#);
            assert_eq!(
                (
                    first.enqueued_ms,
                    first.attempts,
                    first.next_attempt_ms,
                    first.dead_at_ms
                ),
                (1_000, 0, 1_000, None)
            );
            assert_eq!(
                store
                    .outbox_remove(&[
                        (t1.to_string(), "ev_1".to_string()),
                        (t1.to_string(), "ev_unknown".to_string()),
                    ])
                    .unwrap(),
                1
            );
            // Delivered and removed: a redelivery is still not taken again.
            assert_eq!(
                store
                    .outbox_put(&[outbox_event("ev_1", &[t1])], 10_000, 3_000)
                    .unwrap(),
                [false]
            );
            store.flush().unwrap();
        }
        let store = backend.open();
        assert_eq!(
            keys(&store.outbox_list(None, 100).unwrap()),
            [
                (t1.to_string(), "ev_2".to_string()),
                (t2.to_string(), "ev_1".to_string()),
            ]
        );
        // Once its mark expired, the same event id is a new event.
        assert_eq!(
            store
                .outbox_put(&[outbox_event("ev_1", &[t1])], 30_000, 10_000)
                .unwrap(),
            [true]
        );
        assert_eq!(store.outbox_list(None, 100).unwrap().len(), 3);
        // The same event twice in one batch (a redelivery gathered with the first): once.
        assert_eq!(
            store
                .outbox_put(
                    &[outbox_event("ev_9", &[t1]), outbox_event("ev_9", &[t1])],
                    30_000,
                    10_000
                )
                .unwrap(),
            [true, false]
        );
        assert_eq!(store.outbox_list(None, 100).unwrap().len(), 4);
        // The marks expire with the other marks.
        assert!(store.purge_marks(20_000, 100).unwrap() >= 1);
    }

    pub fn outbox_retry_state_paging_and_invalid_keys(backend: &dyn Backend) {
        let store = backend.open();
        let t = "http://127.0.0.1:9/a";
        let events: Vec<_> = (0..5)
            .map(|i| outbox_event(&format!("ev_{i}"), &[t]))
            .collect();
        assert_eq!(store.outbox_put(&events, 10_000, 100).unwrap(), [true; 5]);
        let retry = OutboxRetry {
            attempts: 3,
            next_attempt_ms: 5_000,
            dead_at_ms: None,
        };
        assert!(store.outbox_update(t, "ev_1", retry).unwrap());
        let dead = OutboxRetry {
            attempts: 9,
            next_attempt_ms: u64::MAX,
            dead_at_ms: Some(7_000),
        };
        assert!(store.outbox_update(t, "ev_2", dead).unwrap());
        assert!(!store.outbox_update(t, "ev_none", retry).unwrap());
        let page1 = store.outbox_list(None, 2).unwrap();
        assert_eq!(
            page1
                .iter()
                .map(|e| e.event_id.as_str())
                .collect::<Vec<_>>(),
            ["ev_0", "ev_1"]
        );
        assert_eq!(
            (
                page1[1].attempts,
                page1[1].next_attempt_ms,
                page1[1].dead_at_ms
            ),
            (3, 5_000, None)
        );
        assert_eq!(page1[1].payload, br#"{"event_id":"ev_1"}"#);
        let last = page1.last().unwrap();
        let page2 = store
            .outbox_list(Some((&last.target, &last.event_id)), 10)
            .unwrap();
        assert_eq!(
            page2
                .iter()
                .map(|e| e.event_id.as_str())
                .collect::<Vec<_>>(),
            ["ev_2", "ev_3", "ev_4"]
        );
        assert_eq!(page2[0].dead_at_ms, Some(7_000));
        assert_eq!(page2[0].attempts, 9);
        for bad in [
            outbox_event("", &[t]),
            outbox_event("ev_x", &[""]),
            outbox_event("e\0", &[t]),
        ] {
            assert!(matches!(
                store.outbox_put(&[bad], 10_000, 100),
                Err(StoreError::InvalidKey { .. })
            ),);
        }
        assert_eq!(store.outbox_list(None, 100).unwrap().len(), 5);
    }

    /// Writers racing on one grant version or one dedup mark: exactly one wins, the others
    /// see a conflict or a duplicate.
    pub fn concurrent_writers_one_wins(backend: &dyn Backend) {
        let store = backend.open();
        let key = GrantKey::new("cli_a", "ou_race");
        store
            .compare_and_swap_grant(&key, None, write(b"v1", Some(10)))
            .unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                let key = key.clone();
                std::thread::spawn(move || {
                    let payload = format!("writer-{i}");
                    let cas = store
                        .compare_and_swap_grant(&key, Some(1), write(payload.as_bytes(), Some(20)))
                        .unwrap();
                    let marked = store.mark_once(b"event-1", 1_000, 0).unwrap();
                    (cas, marked)
                })
            })
            .collect();
        let results: Vec<(CasOutcome, bool)> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let swapped = results
            .iter()
            .filter(|(cas, _)| *cas == CasOutcome::Swapped { version: 2 })
            .count();
        let conflicts = results
            .iter()
            .filter(|(cas, _)| *cas == CasOutcome::Conflict { current: Some(2) })
            .count();
        assert_eq!((swapped, conflicts), (1, 7), "{results:?}");
        assert_eq!(results.iter().filter(|(_, marked)| *marked).count(), 1);
        assert_eq!(store.due_grants(u64::MAX - 1, 10).unwrap().len(), 1);
    }
}

/// PostgreSQL only: the schema's migrations, several instances on one schema, and the
/// failures `serve` reports at start.
mod postgres_only {
    use std::time::{Duration, Instant};

    use lark_auth::secret::Secret;
    use lark_auth::store::{PostgresOptions, SCHEMA_VERSION};

    use super::*;

    /// Version 3 (fixed-size mark keys) on a schema of version 2: the old marks are
    /// dropped (dedup state only), grants and sessions are kept.
    #[test]
    fn the_upgrade_to_fixed_size_mark_keys_drops_old_marks_and_keeps_grants() {
        let server = pg_common::TestPostgres::start();
        let store = PostgresStore::open(&server.options("lark_auth")).unwrap();
        let key = GrantKey::new("cli_a", "ou_1");
        store
            .compare_and_swap_grant(&key, None, write(b"kept", Some(5)))
            .unwrap();
        store.put_session("as_1", b"s").unwrap();
        drop(store);
        // Back to version 2's marks table, holding a mark in the old form.
        server.psql(
            "BEGIN; DELETE FROM lark_auth.schema_version WHERE version >= 3; \
             ALTER TABLE lark_auth.outbox DROP COLUMN owner, DROP COLUMN lease_until_ms; \
             DROP TABLE lark_auth.session_inputs; \
             ALTER TABLE lark_auth.sessions DROP COLUMN holder, DROP COLUMN lease_until_ms, \
             DROP COLUMN open_id, DROP COLUMN created_ms; \
             DROP TABLE lark_auth.marks; \
             CREATE TABLE lark_auth.marks (mark bytea PRIMARY KEY, expires_ms bigint NOT NULL, value bytea); \
             CREATE INDEX marks_expiry ON lark_auth.marks (expires_ms); \
             INSERT INTO lark_auth.marks VALUES ('\\x6576656e742f65765f6f6c64', 9000000000000, NULL); \
             COMMIT;",
        );
        assert_eq!(
            server.psql("SELECT max(version) FROM lark_auth.schema_version"),
            "2"
        );
        let store = PostgresStore::open(&server.options("lark_auth")).unwrap();
        assert_eq!(
            server.psql("SELECT max(version) FROM lark_auth.schema_version"),
            SCHEMA_VERSION.to_string()
        );
        assert_eq!(store.mark_count().unwrap(), 0, "old marks dropped");
        assert!(
            store
                .mark_once(b"event/ev_old", 9_000_000_000_000, 0)
                .unwrap()
        );
        let grant = store.get_grant(&key).unwrap().expect("grant kept");
        assert_eq!((grant.version, grant.payload.as_slice()), (1, &b"kept"[..]));
        assert_eq!(store.get_session("as_1").unwrap(), Some(b"s".to_vec()));
        assert!(store.disk_bytes().unwrap().unwrap() > 0);
    }

    /// One session in flight per user across instances (issue 14): sixteen starts for one
    /// user at once, half on each of two instances (stores) sharing the schema: one is
    /// started, every other finds it in flight; the per-user limit counts the starts of
    /// both instances within the window, and answers how long until the oldest leaves it.
    #[test]
    fn a_users_session_starts_are_atomic_and_counted_across_instances() {
        use lark_auth::store::{NewHeldSession, SessionLiveCheck, SessionStart};

        const RACERS: usize = 16;
        let server = pg_common::TestPostgres::start();
        let a: Arc<dyn Store> =
            Arc::new(PostgresStore::open(&server.options("lark_auth")).unwrap());
        let b: Arc<dyn Store> =
            Arc::new(PostgresStore::open(&server.options("lark_auth")).unwrap());
        // A record reading `done` is terminal (the caller decodes the state).
        let live: SessionLiveCheck = Arc::new(|_, value| value != b"done");
        let new = |id: &'static str, holder: &'static str, user: &'static str, now: u64| {
            move |value: &'static [u8]| NewHeldSession {
                session_id: id,
                value,
                holder,
                lease_until_ms: now + 60_000,
                open_id: user,
                now_ms: now,
                limit: 3,
                window_ms: 60_000,
            }
        };

        let barrier = Arc::new(std::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|i| {
                let (store, live, barrier) = (
                    if i % 2 == 0 { a.clone() } else { b.clone() },
                    live.clone(),
                    barrier.clone(),
                );
                std::thread::spawn(move || {
                    let id = format!("as_race_{i:02}");
                    let holder = if i % 2 == 0 { "inst_a" } else { "inst_b" };
                    barrier.wait();
                    let start = NewHeldSession {
                        session_id: &id,
                        value: b"live",
                        holder,
                        lease_until_ms: 61_000,
                        open_id: "ou_race",
                        now_ms: 1_000,
                        limit: 3,
                        window_ms: 60_000,
                    };
                    (id.clone(), store.start_session_held(&start, live).unwrap())
                })
            })
            .collect();
        let results: Vec<(String, SessionStart)> =
            racers.into_iter().map(|t| t.join().unwrap()).collect();
        let started: Vec<&String> = results
            .iter()
            .filter(|(_, r)| *r == SessionStart::Started)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(started.len(), 1, "one session started: {results:?}");
        for (_, result) in &results {
            assert!(
                *result == SessionStart::Started
                    || *result == SessionStart::InFlight(started[0].clone(), b"live".to_vec()),
                "every other start finds it in flight: {result:?}"
            );
        }
        assert_eq!(
            server.psql("SELECT count(*) FROM lark_auth.sessions WHERE open_id = 'ou_race'"),
            "1"
        );

        // The limit (3 a minute) counts the starts of both instances.
        for (i, (store, at)) in [(&a, 1_000), (&b, 2_000), (&a, 3_000)]
            .into_iter()
            .enumerate()
        {
            let id: &'static str = ["as_lim_1", "as_lim_2", "as_lim_3"][i];
            let holder = if i % 2 == 0 { "inst_a" } else { "inst_b" };
            assert_eq!(
                store
                    .start_session_held(&new(id, holder, "ou_lim", at)(b"done"), live.clone())
                    .unwrap(),
                SessionStart::Started,
                "{id}: the user's earlier sessions ended"
            );
        }
        assert_eq!(
            b.start_session_held(
                &new("as_lim_4", "inst_b", "ou_lim", 4_000)(b"done"),
                live.clone()
            )
            .unwrap(),
            SessionStart::Limited {
                retry_after_ms: 57_000
            },
            "the fourth within the minute, on the other instance"
        );
        assert_eq!(b.get_session("as_lim_4").unwrap(), None, "nothing written");
        assert_eq!(
            a.start_session_held(
                &new("as_other", "inst_a", "ou_other", 4_000)(b"live"),
                live.clone()
            )
            .unwrap(),
            SessionStart::Started,
            "another user is not counted"
        );
        assert_eq!(
            b.start_session_held(
                &new("as_lim_5", "inst_b", "ou_lim", 61_000)(b"done"),
                live.clone()
            )
            .unwrap(),
            SessionStart::Started,
            "the oldest left the window"
        );
        // A session released as finished is never in flight, whatever its record says.
        a.release_sessions("inst_a", Some("as_other"), true)
            .unwrap();
        assert_eq!(
            a.start_session_held(
                &new("as_other_2", "inst_a", "ou_other", 5_000)(b"live"),
                live
            )
            .unwrap(),
            SessionStart::Started
        );
    }

    /// Session leases (issue 14): a held session is claimed by one instance at a time
    /// (compare-and-swap), taken over once its lease lapsed, renewed and released; inputs
    /// handed to the holder through the inbox are taken once and answered to the sender;
    /// the user's sessions in flight are found by `open_id`.
    #[test]
    fn sessions_are_held_under_leases_and_inputs_reach_their_holder() {
        use lark_auth::store::SessionClaim;

        let server = pg_common::TestPostgres::start();
        let store = PostgresStore::open(&server.options("lark_auth")).unwrap();
        store
            .put_session_held("as_1", b"one", "inst_a", 10_000, "ou_1")
            .unwrap();
        store.put_session("as_old", b"old").unwrap();
        assert_eq!(store.get_session("as_1").unwrap(), Some(b"one".to_vec()));

        // B cannot take A's live session; A can (it holds it); B can once it lapsed.
        assert_eq!(
            store
                .claim_session("as_1", "inst_b", 20_000, 5_000)
                .unwrap(),
            SessionClaim::Held {
                holder: "inst_a".into(),
                until_ms: 10_000
            }
        );
        assert_eq!(
            store
                .claim_session("as_1", "inst_a", 12_000, 5_000)
                .unwrap(),
            SessionClaim::Claimed
        );
        assert_eq!(
            store
                .claim_session("as_nope", "inst_a", 12_000, 5_000)
                .unwrap(),
            SessionClaim::Missing
        );
        // A session stored without a holder (before leases, or copied) is free.
        assert_eq!(
            store
                .claim_session("as_old", "inst_a", 12_000, 5_000)
                .unwrap(),
            SessionClaim::Claimed
        );
        assert_eq!(
            store.renew_sessions("inst_a", 15_000).unwrap(),
            vec!["as_1".to_string(), "as_old".to_string()]
        );
        assert!(
            store
                .claim_lapsed_sessions("inst_b", 30_000, 14_000, 10)
                .unwrap()
                .is_empty(),
            "nothing lapsed yet"
        );
        let taken = store
            .claim_lapsed_sessions("inst_b", 30_000, 16_000, 10)
            .unwrap();
        assert_eq!(
            taken,
            vec![
                ("as_1".to_string(), b"one".to_vec()),
                ("as_old".to_string(), b"old".to_vec())
            ]
        );
        assert!(
            store.renew_sessions("inst_a", 40_000).unwrap().is_empty(),
            "A lost them"
        );
        // A's writes no longer land; B's do.
        assert!(
            !store
                .put_session_if_held("as_1", b"stale", "inst_a")
                .unwrap()
        );
        assert!(store.put_session_if_held("as_1", b"one", "inst_b").unwrap());
        assert_eq!(store.get_session("as_1").unwrap(), Some(b"one".to_vec()));
        assert_eq!(store.sessions_in_flight("ou_1").unwrap().len(), 1);

        // Inputs: put by A for B's session, taken once by B, answered to A.
        let id = store
            .put_session_input("as_1", "inst_a", b"sealed", 16_000)
            .unwrap()
            .expect("an inbox");
        assert!(store.take_session_inputs("inst_a", 10).unwrap().is_empty());
        let inputs = store.take_session_inputs("inst_b", 10).unwrap();
        assert_eq!(inputs.len(), 1);
        assert_eq!(
            (
                inputs[0].id,
                inputs[0].session_id.as_str(),
                inputs[0].payload.as_slice()
            ),
            (id, "as_1", &b"sealed"[..])
        );
        assert!(
            store.take_session_inputs("inst_b", 10).unwrap().is_empty(),
            "taken once"
        );
        assert_eq!(
            store.take_input_answer(id).unwrap(),
            None,
            "not answered yet"
        );
        assert!(store.answer_session_input(id, b"toast").unwrap());
        assert_eq!(
            store.take_input_answer(id).unwrap(),
            Some(b"toast".to_vec())
        );
        assert_eq!(store.take_input_answer(id).unwrap(), None, "read once");
        let stale = store
            .put_session_input("as_1", "inst_a", b"x", 1_000)
            .unwrap()
            .unwrap();
        assert_eq!(store.purge_session_inputs(2_000, 10).unwrap(), 1);
        assert!(!store.answer_session_input(stale, b"late").unwrap());

        // Released as finished: never taken over, no longer in flight; handed back:
        // taken over at once.
        assert_eq!(
            store
                .release_sessions("inst_b", Some("as_1"), true)
                .unwrap(),
            1
        );
        assert_eq!(store.release_sessions("inst_b", None, false).unwrap(), 1);
        let taken = store
            .claim_lapsed_sessions("inst_c", 90_000, 41_000, 10)
            .unwrap();
        assert_eq!(taken, vec![("as_old".to_string(), b"old".to_vec())]);
        assert!(store.sessions_in_flight("ou_1").unwrap().is_empty());
    }

    /// Version 4 (outbox owners and leases) on a schema of version 3: the entries are
    /// kept, without owner, and the first instance to claim takes them.
    #[test]
    fn the_upgrade_to_outbox_leases_keeps_entries_for_the_first_claim() {
        let server = pg_common::TestPostgres::start();
        let store = PostgresStore::open(&server.options("lark_auth")).unwrap();
        let event = OutboxEvent {
            event_id: "ev_old".into(),
            event_type: "im.message.receive_v1".into(),
            targets: vec!["http://127.0.0.1:9/a".into()],
            payload: b"{}".to_vec(),
        };
        store
            .outbox_put_owned(&[event], "old", 9_000_000_000_000, 9_000_000_000_000, 1)
            .unwrap();
        drop(store);
        server.psql(
            "BEGIN; DELETE FROM lark_auth.schema_version WHERE version >= 4; \
             ALTER TABLE lark_auth.outbox DROP COLUMN owner, DROP COLUMN lease_until_ms; \
             DROP TABLE lark_auth.session_inputs; \
             ALTER TABLE lark_auth.sessions DROP COLUMN holder, DROP COLUMN lease_until_ms, \
             DROP COLUMN open_id, DROP COLUMN created_ms; \
             COMMIT;",
        );
        let store = PostgresStore::open(&server.options("lark_auth")).unwrap();
        // Migrated up to the newest version (4, then the later ones).
        assert_eq!(
            server.psql("SELECT max(version) FROM lark_auth.schema_version"),
            SCHEMA_VERSION.to_string()
        );
        let claimed = store.outbox_claim("new", 20_000, 10, 100).unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].event_id, "ev_old");
        assert!(
            store
                .outbox_claim("other", 20_000, 10, 100)
                .unwrap()
                .is_empty()
        );
    }

    /// Two instances claiming one backlog at once, a few entries at a time: each entry is
    /// taken by exactly one of them.
    #[test]
    fn instances_claiming_at_once_never_take_the_same_entry() {
        let server = pg_common::TestPostgres::start();
        let store = PostgresStore::open(&server.options("lark_auth")).unwrap();
        let events: Vec<OutboxEvent> = (0..300)
            .map(|i| OutboxEvent {
                event_id: format!("ev_{i:03}"),
                event_type: "im.message.receive_v1".into(),
                targets: vec!["http://127.0.0.1:9/a".into()],
                payload: b"{}".to_vec(),
            })
            .collect();
        store.outbox_put(&events, 9_000_000_000_000, 1).unwrap();
        drop(store);
        let threads: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|owner| {
                let options = server.options("lark_auth");
                std::thread::spawn(move || {
                    let store = PostgresStore::open(&options).unwrap();
                    let mut taken = Vec::new();
                    loop {
                        let page = store.outbox_claim(owner, 9_000_000, 1_000, 7).unwrap();
                        if page.is_empty() {
                            break taken;
                        }
                        taken.extend(page.into_iter().map(|e| e.event_id));
                    }
                })
            })
            .collect();
        let mut all: Vec<String> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(all.len(), 300, "no entry taken twice");
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 300, "every entry taken once");
    }

    #[test]
    fn instances_starting_at_once_migrate_the_schema_once() {
        let server = pg_common::TestPostgres::start();
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let options = server.options("shared_deploy");
                std::thread::spawn(move || PostgresStore::open(&options).map(|_| ()))
            })
            .collect();
        for t in threads {
            t.join().unwrap().expect("every instance opens");
        }
        assert_eq!(
            server.psql("SELECT count(*), max(version) FROM shared_deploy.schema_version"),
            format!("{SCHEMA_VERSION}|{SCHEMA_VERSION}")
        );
        // Opening a current schema changes nothing.
        drop(PostgresStore::open(&server.options("shared_deploy")).unwrap());
        assert_eq!(
            server.psql("SELECT count(*) FROM shared_deploy.schema_version"),
            SCHEMA_VERSION.to_string()
        );
    }

    #[test]
    fn two_instances_share_grants_sessions_and_marks() {
        let server = pg_common::TestPostgres::start();
        let a = PostgresStore::open(&server.options("lark_auth")).unwrap();
        let b = PostgresStore::open(&server.options("lark_auth")).unwrap();
        let key = GrantKey::new("cli_a", "ou_1");
        a.compare_and_swap_grant(&key, None, write(b"from-a", Some(5)))
            .unwrap();
        assert_eq!(b.get_grant(&key).unwrap().unwrap().payload, b"from-a");
        // B read version 1 and writes first: A's write of version 1 is fenced off.
        b.compare_and_swap_grant(&key, Some(1), write(b"from-b", Some(6)))
            .unwrap();
        assert_eq!(
            a.compare_and_swap_grant(&key, Some(1), write(b"stale", None))
                .unwrap(),
            CasOutcome::Conflict { current: Some(2) }
        );
        a.put_session("as_1", b"s").unwrap();
        assert_eq!(b.get_session("as_1").unwrap().as_deref(), Some(&b"s"[..]));
        assert!(a.mark_once(b"evt", 100, 0).unwrap());
        assert!(!b.mark_once(b"evt", 100, 0).unwrap(), "one sighting in all");
        assert!(b.set_mark_value(b"evt", b"answer", 1).unwrap());
        assert_eq!(
            a.mark_value(b"evt", 1).unwrap().as_deref(),
            Some(&b"answer"[..])
        );
    }

    #[test]
    fn the_schema_comes_from_the_options_and_keeps_deployments_apart() {
        let server = pg_common::TestPostgres::start();
        let one = PostgresStore::open(&server.options("deploy_one")).unwrap();
        let two = PostgresStore::open(&server.options("deploy_two")).unwrap();
        one.put_session("as_1", b"one").unwrap();
        assert_eq!(two.get_session("as_1").unwrap(), None);
        assert_eq!(server.psql("SELECT count(*) FROM deploy_one.sessions"), "1");
        assert_eq!(server.psql("SELECT count(*) FROM deploy_two.sessions"), "0");
        let err = PostgresStore::open(&server.options("Bad-Name")).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidSchemaName { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_schema_migrated_by_a_newer_lark_auth_is_refused_before_any_write() {
        let server = pg_common::TestPostgres::start();
        drop(PostgresStore::open(&server.options("lark_auth")).unwrap());
        let newer = SCHEMA_VERSION + 1;
        server.psql(&format!(
            "INSERT INTO lark_auth.schema_version (version, description) VALUES ({newer}, 'from the future')"
        ));
        let err = PostgresStore::open(&server.options("lark_auth")).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found, supported, .. }
                if found == newer && supported == SCHEMA_VERSION),
            "{err:?}"
        );
        let line = err.to_string();
        assert!(line.contains("newer than this lark-auth"), "{line}");
        assert!(line.contains("schema=lark_auth"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        let err = PostgresStore::connect_and_check(&server.options("lark_auth")).unwrap_err();
        assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err:?}");
        assert_eq!(
            server.psql("SELECT max(version) FROM lark_auth.schema_version"),
            newer.to_string()
        );
    }

    #[test]
    fn check_reports_the_version_without_creating_anything() {
        let server = pg_common::TestPostgres::start();
        let (_, version) = PostgresStore::connect_and_check(&server.options("lark_auth")).unwrap();
        assert_eq!(version, 0);
        assert_eq!(
            server.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'lark_auth'"),
            "0"
        );
        drop(PostgresStore::open(&server.options("lark_auth")).unwrap());
        let (_, version) = PostgresStore::connect_and_check(&server.options("lark_auth")).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn an_unreachable_server_is_one_clear_line_without_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = PostgresOptions::new(
            Secret::new(format!(
                "host={} port=5432 user=lark password=hunter2-secret dbname=auth",
                dir.path().display()
            )),
            "lark_auth",
        );
        options.connect_timeout = Duration::from_secs(2);
        let err = PostgresStore::open(&options).unwrap_err();
        let line = err.to_string();
        eprintln!("{line}");
        assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
        assert!(line.contains("cannot open the PostgreSQL store"), "{line}");
        assert!(line.contains("dbname=auth user=lark"), "{line}");
        assert!(!format!("{line} {err:?}").contains("hunter2"), "{line}");
        let url = PostgresOptions::new(
            Secret::new("postgres://lark:hunter2-secret@[::1".to_string()),
            "lark_auth",
        );
        let err = PostgresStore::open(&url).unwrap_err();
        assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
    }

    #[test]
    fn a_role_without_create_privilege_gets_a_clear_error() {
        let server = pg_common::TestPostgres::start();
        server.psql("CREATE ROLE reader LOGIN");
        let options = PostgresOptions::new(
            Secret::new(format!(
                "host={} port=5432 user=reader dbname=postgres",
                server.socket_dir().display()
            )),
            "lark_auth",
        );
        let err = PostgresStore::open(&options).unwrap_err();
        let line = err.to_string();
        eprintln!("{line}");
        assert!(matches!(err, StoreError::Connect { .. }), "{err:?}");
        assert!(line.contains("permission denied"), "{line}");
        assert!(line.contains("user=reader"), "{line}");
    }

    /// Latency of the hot store calls on a loopback socket (debug build; numbers on
    /// stderr with `--no-capture`), with a generous bound that only catches a pathology
    /// (a per-call connect, a lost pool).
    #[test]
    fn mark_once_and_cas_latency_on_loopback() {
        let server = pg_common::TestPostgres::start();
        let store = PostgresStore::open(&server.options("lark_auth")).unwrap();
        let key = GrantKey::new("cli_a", "ou_1");
        store
            .compare_and_swap_grant(&key, None, write(b"v", Some(1)))
            .unwrap();
        let mut marks = Vec::new();
        let mut cas = Vec::new();
        for i in 0..500u64 {
            let start = Instant::now();
            assert!(store.mark_once(&i.to_be_bytes(), 1_000, 0).unwrap());
            marks.push(start.elapsed());
            let start = Instant::now();
            let outcome = store
                .compare_and_swap_grant(&key, Some(i + 1), write(b"v", Some(i)))
                .unwrap();
            cas.push(start.elapsed());
            assert_eq!(outcome, CasOutcome::Swapped { version: i + 2 });
        }
        for (name, mut samples) in [("mark_once", marks), ("cas", cas)] {
            samples.sort();
            let p50 = samples[samples.len() / 2];
            let p99 = samples[samples.len() * 99 / 100];
            eprintln!(
                "{name}: p50 {p50:?} p99 {p99:?} over {} calls",
                samples.len()
            );
            assert!(p99 < Duration::from_millis(200), "{name} p99 {p99:?}");
        }
    }
}
