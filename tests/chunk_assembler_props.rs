//! Properties of the chunk assembler (protocol doc §6.1, §8 item 18): any split delivered in
//! any order with duplicates reassembles exactly once to the original bytes; invalid input
//! never panics; memory stays within the limits; incomplete messages expire.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lark_auth::protocol::ChunkPosition;
use lark_auth::protocol::chunk::{ChunkAssembler, ChunkError, ChunkLimits, ChunkOutcome};
use proptest::prelude::*;

/// Splits `payload` at the sorted, de-duplicated `cuts` (empty parts allowed).
fn split(payload: &[u8], cuts: &[usize]) -> Vec<Bytes> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (payload.len() + 1)).collect();
    cuts.sort_unstable();
    let mut parts = Vec::new();
    let mut start = 0;
    for cut in cuts {
        parts.push(Bytes::copy_from_slice(&payload[start..cut]));
        start = cut;
    }
    parts.push(Bytes::copy_from_slice(&payload[start..]));
    parts
}

/// A payload, its parts, and a delivery schedule: each part at least once, plus duplicates,
/// shuffled; all duplicates of a part come before the last first-delivery (so the message
/// completes exactly at the end of the schedule).
fn scenario() -> impl Strategy<Value = (Vec<u8>, Vec<Bytes>, Vec<usize>)> {
    (
        proptest::collection::vec(any::<u8>(), 0..2048),
        proptest::collection::vec(any::<usize>(), 0..20),
    )
        .prop_flat_map(|(payload, cuts)| {
            let parts = split(&payload, &cuts);
            let n = parts.len();
            let deliveries = (0..n).collect::<Vec<_>>();
            let extra = proptest::collection::vec(0..n, 0..(2 * n));
            (Just(payload), Just(parts), Just(deliveries), extra)
        })
        .prop_flat_map(|(payload, parts, deliveries, extra)| {
            let mut all = deliveries;
            all.extend(extra);
            (Just(payload), Just(parts), Just(all).prop_shuffle())
        })
        .prop_map(|(payload, parts, schedule)| {
            // Move the completing delivery (the last first-occurrence) to the end.
            let n = parts.len();
            let mut seen = vec![false; n];
            let mut firsts = 0;
            let mut completing = 0;
            for (i, &p) in schedule.iter().enumerate() {
                if !seen[p] {
                    seen[p] = true;
                    firsts += 1;
                    if firsts == n {
                        completing = i;
                    }
                }
            }
            // Later copies of that part would otherwise become its first delivery.
            let last = schedule[completing];
            let mut reordered: Vec<usize> = schedule[..completing].to_vec();
            reordered.extend(schedule[completing + 1..].iter().filter(|&&p| p != last));
            reordered.push(last);
            let schedule = reordered;
            (payload, parts, schedule)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_split_in_any_order_reassembles_exactly_once((payload, parts, schedule) in scenario()) {
        let mut assembler = ChunkAssembler::default();
        let now = Instant::now();
        let sum = parts.len() as u32;
        let mut seen = vec![false; parts.len()];
        let mut completed = Vec::new();
        for (i, &p) in schedule.iter().enumerate() {
            let position = ChunkPosition { sum, seq: p as u32 };
            let outcome = assembler.accept("msg", position, parts[p].clone(), now).unwrap();
            let last = i + 1 == schedule.len();
            match outcome {
                ChunkOutcome::Complete(bytes) => {
                    prop_assert!(last, "completed early at {i}");
                    completed.push(bytes);
                }
                ChunkOutcome::Duplicate => prop_assert!(seen[p], "fresh part reported duplicate"),
                ChunkOutcome::Pending => {
                    prop_assert!(!seen[p], "duplicate reported pending");
                    prop_assert!(!last);
                }
            }
            seen[p] = true;
        }
        prop_assert_eq!(completed.len(), 1);
        prop_assert_eq!(&completed[0][..], &payload[..]);
        prop_assert_eq!(assembler.pending_messages(), 0);
        prop_assert_eq!(assembler.pending_bytes(), 0);
    }

    #[test]
    fn interleaved_messages_do_not_mix(
        a in proptest::collection::vec(any::<u8>(), 0..256),
        b in proptest::collection::vec(any::<u8>(), 0..256),
        cut_a in any::<usize>(),
        cut_b in any::<usize>(),
    ) {
        let pa = split(&a, &[cut_a]);
        let pb = split(&b, &[cut_b]);
        let mut assembler = ChunkAssembler::default();
        let now = Instant::now();
        let pos = |seq| ChunkPosition { sum: 2, seq };
        prop_assert_eq!(assembler.accept("a", pos(1), pa[1].clone(), now), Ok(ChunkOutcome::Pending));
        prop_assert_eq!(assembler.accept("b", pos(0), pb[0].clone(), now), Ok(ChunkOutcome::Pending));
        prop_assert_eq!(assembler.accept("a", pos(0), pa[0].clone(), now), Ok(ChunkOutcome::Complete(Bytes::from(a))));
        prop_assert_eq!(assembler.accept("b", pos(1), pb[1].clone(), now), Ok(ChunkOutcome::Complete(Bytes::from(b))));
    }

    /// Arbitrary operations (any sum/seq, ids, sizes, times) never panic, keep the
    /// accounting exact and stay within every limit.
    #[test]
    fn arbitrary_input_never_panics_and_respects_limits(
        ops in proptest::collection::vec(
            (0u8..6, 0u32..8, 0u32..8, 0usize..40, 0u64..30_000, any::<bool>()),
            1..200,
        )
    ) {
        let limits = ChunkLimits {
            max_parts: 5,
            max_message_bytes: 64,
            max_total_bytes: 100,
            max_incomplete_messages: 4,
            expiry: Duration::from_secs(10),
        };
        let mut assembler = ChunkAssembler::new(limits);
        let start = Instant::now();
        let mut clock = 0u64;
        for (id, sum, seq, len, advance_ms, sweep) in ops {
            clock += advance_ms / 10;
            let now = start + Duration::from_millis(clock);
            if sweep {
                assembler.expire(now);
            }
            let id = format!("m{id}");
            let result = assembler.accept(&id, ChunkPosition { sum, seq }, Bytes::from(vec![0u8; len]), now);
            match result {
                Ok(ChunkOutcome::Complete(bytes)) => prop_assert!(bytes.len() <= limits.max_message_bytes),
                Ok(_) => {}
                Err(ChunkError::BadPosition { .. }) => prop_assert!(sum == 0 || seq >= sum || sum > limits.max_parts),
                Err(_) => {}
            }
            prop_assert!(assembler.pending_bytes() <= limits.max_total_bytes);
            prop_assert!(assembler.pending_messages() <= limits.max_incomplete_messages);
        }
        // Everything left is incomplete and expires at most `expiry` after the last step.
        let end = start + Duration::from_millis(clock) + limits.expiry;
        let left = assembler.pending_messages();
        prop_assert_eq!(assembler.expire(end), left);
        prop_assert_eq!(assembler.pending_bytes(), 0);
    }

    /// An incomplete message is dropped once `expiry` has passed since its first part, and
    /// a late part cannot complete it.
    #[test]
    fn expiry_drops_incomplete_messages(
        sum in 2u32..10,
        delay_ms in 0u64..20_000,
    ) {
        let mut assembler = ChunkAssembler::default();
        let t0 = Instant::now();
        let expiry = assembler.limits().expiry;
        for seq in 0..sum - 1 {
            let outcome = assembler.accept("m", ChunkPosition { sum, seq }, Bytes::from_static(b"x"), t0);
            prop_assert_eq!(outcome, Ok(ChunkOutcome::Pending));
        }
        let later = t0 + Duration::from_millis(delay_ms);
        let last = assembler.accept("m", ChunkPosition { sum, seq: sum - 1 }, Bytes::from_static(b"y"), later);
        if Duration::from_millis(delay_ms) < expiry {
            prop_assert_eq!(last, Ok(ChunkOutcome::Complete(Bytes::from(
                [vec![b'x'; (sum - 1) as usize], vec![b'y']].concat()
            ))));
            prop_assert_eq!(assembler.pending_messages(), 0);
        } else {
            prop_assert_eq!(last, Ok(ChunkOutcome::Pending));
            prop_assert_eq!(assembler.pending_messages(), 1);
            prop_assert_eq!(assembler.expire(later + expiry), 1);
        }
        prop_assert_eq!(assembler.expire(later + expiry * 2), 0);
        prop_assert_eq!(assembler.pending_bytes(), 0);
    }

    /// A `sum` that changes within a message is rejected and nothing is kept for the id.
    #[test]
    fn inconsistent_sum_is_rejected(first in 2u32..8, second in 1u32..8) {
        prop_assume!(first != second);
        let mut assembler = ChunkAssembler::default();
        let now = Instant::now();
        assembler.accept("m", ChunkPosition { sum: first, seq: 0 }, Bytes::from_static(b"a"), now).unwrap();
        let result = assembler.accept("m", ChunkPosition { sum: second, seq: second - 1 }, Bytes::from_static(b"b"), now);
        prop_assert_eq!(result, Err(ChunkError::SumMismatch { expected: first, got: second }));
        prop_assert_eq!(assembler.pending_messages(), 0);
        prop_assert_eq!(assembler.pending_bytes(), 0);
    }
}
