//! Reassembly of data messages split into `sum` parts (protocol doc §6.1, defects §8 items
//! 17 and 18).
//!
//! The server may split one message into `sum` data frames sharing a `message_id`, each
//! carrying a byte range of the payload, `seq` = 0…sum−1. Parts may arrive in any order and
//! may be cut inside a UTF-8 character, so [`ChunkAssembler`] joins **bytes** in `seq` order
//! and never decodes text.
//!
//! Unlike the official SDKs this assembler validates `sum`/`seq`, rejects a `sum` that
//! changes between parts, bounds the memory held per message and in total, bounds the number
//! of incomplete messages, expires incomplete messages a fixed time after their first part,
//! and deletes an entry as soon as its message is complete.
//!
//! Time is never read here: every call that needs it takes `now`, so tests drive the clock.
//! The single-part case (`sum == 1`, nearly all messages) neither allocates nor copies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::frame::ChunkPosition;

/// Limits of a [`ChunkAssembler`]. The defaults suit the platform's event sizes with a wide
/// margin; lower them in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Largest accepted `sum` (number of parts of one message). Default 64. Pass the same
    /// value to [`Frame::chunk_position`](super::Frame::chunk_position).
    pub max_parts: u32,
    /// Largest reassembled message, in bytes. Default 4 MiB.
    pub max_message_bytes: usize,
    /// Largest number of bytes held in all incomplete messages together. Default 64 MiB.
    pub max_total_bytes: usize,
    /// Largest number of incomplete messages held at once. Default 1024.
    pub max_incomplete_messages: usize,
    /// Time after the **first** part of a message (not renewed by later parts) after which an
    /// incomplete message is dropped. Default 10 s (the SDKs use 5 s to 5 min, §6.1).
    pub expiry: Duration,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        ChunkLimits {
            max_parts: 64,
            max_message_bytes: 4 * 1024 * 1024,
            max_total_bytes: 64 * 1024 * 1024,
            max_incomplete_messages: 1024,
            expiry: Duration::from_secs(10),
        }
    }
}

/// What [`ChunkAssembler::accept`] did with a part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// The message is complete: its whole payload, parts joined in `seq` order. For
    /// `sum == 1` this is the part itself (no copy). Answer the message now, using the frame
    /// of the part that completed it (§6.1).
    Complete(Bytes),
    /// The part was stored; the message still lacks parts. Send nothing yet.
    Pending,
    /// A part with this `seq` is already held for this incomplete message; the new copy was
    /// ignored (the first copy wins). Send nothing.
    Duplicate,
}

/// Why [`ChunkAssembler::accept`] rejected a part.
///
/// On every error the assembler keeps **nothing** for that `message_id`: an entry it held is
/// dropped with all its parts (such a message can no longer complete correctly), and the
/// rejected part is not stored. Other messages are not affected and the assembler stays
/// usable. The caller drops the frame without answering and logs the error; the platform
/// re-pushes unanswered events (§6.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// `sum` is 0 or above [`ChunkLimits::max_parts`], or `seq >= sum`.
    #[error("bad chunk position seq={seq} sum={sum} (max parts {max_parts})")]
    BadPosition {
        /// The part's `sum`.
        sum: u32,
        /// The part's `seq`.
        seq: u32,
        /// The configured [`ChunkLimits::max_parts`].
        max_parts: u32,
    },
    /// The part's `sum` differs from the `sum` of earlier parts of the same message.
    #[error("chunk sum changed from {expected} to {got} within one message")]
    SumMismatch {
        /// `sum` of the first part held.
        expected: u32,
        /// `sum` of the rejected part.
        got: u32,
    },
    /// The message would exceed [`ChunkLimits::max_message_bytes`].
    #[error("message would hold {bytes} bytes, above the limit of {max} bytes")]
    MessageTooLarge {
        /// Bytes the message would hold with this part, in bytes.
        bytes: usize,
        /// The configured limit, in bytes.
        max: usize,
    },
    /// Starting a new message would exceed [`ChunkLimits::max_incomplete_messages`] (after
    /// dropping expired ones).
    #[error("too many incomplete chunked messages (limit {max})")]
    TooManyIncomplete {
        /// The configured limit, in messages.
        max: usize,
    },
    /// Storing the part would exceed [`ChunkLimits::max_total_bytes`] (after dropping
    /// expired messages).
    #[error("incomplete chunked messages would hold more than {max} bytes")]
    TotalBytesExceeded {
        /// The configured limit, in bytes.
        max: usize,
    },
}

/// One incomplete message.
#[derive(Debug)]
struct Partial {
    /// `sum` of the first part.
    sum: u32,
    /// When the first part arrived; expiry counts from here.
    first_seen: Instant,
    /// Parts by `seq`; `None` while missing. An empty part counts as present.
    parts: Vec<Option<Bytes>>,
    /// Number of `Some` entries in `parts`.
    received: u32,
    /// Sum of the lengths of the parts held, in bytes.
    bytes: usize,
}

/// Joins the parts of chunked data messages, keyed by `message_id` (§6.1).
///
/// Not thread-safe by design: one connection owns one assembler and feeds it from one task,
/// which avoids the check-then-set race of the Go and Java SDKs (§8 item 17).
///
/// ```
/// use std::time::Instant;
/// use bytes::Bytes;
/// use lark_auth::protocol::ChunkPosition;
/// use lark_auth::protocol::chunk::{ChunkAssembler, ChunkOutcome};
///
/// let mut assembler = ChunkAssembler::default();
/// let now = Instant::now();
/// let second = ChunkPosition { sum: 2, seq: 1 };
/// let first = ChunkPosition { sum: 2, seq: 0 };
/// assert_eq!(assembler.accept("m1", second, Bytes::from_static(b"\x88"), now), Ok(ChunkOutcome::Pending));
/// assert_eq!(
///     assembler.accept("m1", first, Bytes::from_static(b"\xe6\x8e"), now),
///     Ok(ChunkOutcome::Complete(Bytes::from_static("授".as_bytes())))
/// );
/// assert_eq!(assembler.pending_messages(), 0);
/// ```
#[derive(Debug, Default)]
pub struct ChunkAssembler {
    limits: ChunkLimits,
    pending: HashMap<Box<str>, Partial>,
    /// Sum of `Partial::bytes` over `pending`, in bytes.
    total_bytes: usize,
}

impl ChunkAssembler {
    /// Creates an empty assembler with the given limits.
    pub fn new(limits: ChunkLimits) -> Self {
        ChunkAssembler {
            limits,
            pending: HashMap::new(),
            total_bytes: 0,
        }
    }

    /// The limits this assembler enforces.
    pub fn limits(&self) -> &ChunkLimits {
        &self.limits
    }

    /// Number of incomplete messages held.
    pub fn pending_messages(&self) -> usize {
        self.pending.len()
    }

    /// Bytes held in incomplete messages, in bytes (payload bytes only, not bookkeeping).
    /// Never above [`ChunkLimits::max_total_bytes`].
    pub fn pending_bytes(&self) -> usize {
        self.total_bytes
    }

    /// Accepts one part of the message `message_id` at position `position`, received at
    /// `now`.
    ///
    /// Returns [`ChunkOutcome::Complete`] with the whole payload once every `seq` of the
    /// message has arrived (the entry is then deleted, so a part arriving later starts a new
    /// message), [`ChunkOutcome::Pending`] while parts are missing and
    /// [`ChunkOutcome::Duplicate`] for a `seq` already held. An incomplete message whose first
    /// part is at least [`ChunkLimits::expiry`] older than `now` is dropped before the part is
    /// considered, as [`expire`](Self::expire) would.
    ///
    /// For `sum == 1` the part is returned as is, without allocating or copying.
    ///
    /// # Errors
    /// A [`ChunkError`] when the position is invalid, `sum` changed within the message, or
    /// a limit would be exceeded; see the type for what is then kept (nothing for this
    /// `message_id`).
    pub fn accept(
        &mut self,
        message_id: &str,
        position: ChunkPosition,
        part: Bytes,
        now: Instant,
    ) -> Result<ChunkOutcome, ChunkError> {
        let ChunkPosition { sum, seq } = position;
        if sum == 0 || sum > self.limits.max_parts || seq >= sum {
            self.remove(message_id);
            return Err(ChunkError::BadPosition {
                sum,
                seq,
                max_parts: self.limits.max_parts,
            });
        }

        if sum == 1 {
            // Hot path: no entry, no copy. A live entry for the id means `sum` changed.
            if !self.pending.is_empty()
                && let Some(held) = self.pending.get(message_id)
            {
                let expected = held.sum;
                let expired = self.is_expired(held, now);
                self.remove(message_id);
                if !expired {
                    return Err(ChunkError::SumMismatch { expected, got: sum });
                }
            }
            if part.len() > self.limits.max_message_bytes {
                return Err(ChunkError::MessageTooLarge {
                    bytes: part.len(),
                    max: self.limits.max_message_bytes,
                });
            }
            return Ok(ChunkOutcome::Complete(part));
        }

        if let Some(partial) = self.pending.get(message_id)
            && self.is_expired(partial, now)
        {
            self.remove(message_id);
        }

        match self.pending.get(message_id) {
            Some(partial) => self.add_to_existing(message_id, partial.sum, seq, sum, part, now),
            None => self.start_message(message_id, sum, seq, part, now),
        }
    }

    /// Drops every incomplete message whose first part arrived at least
    /// [`ChunkLimits::expiry`] before `now`. Returns how many were dropped. Call it
    /// periodically (e.g. every second); [`accept`](Self::accept) also calls it when a limit
    /// is reached.
    pub fn expire(&mut self, now: Instant) -> usize {
        let expiry = self.limits.expiry;
        let before = self.pending.len();
        let mut freed = 0usize;
        self.pending.retain(|_, partial| {
            let keep = now.saturating_duration_since(partial.first_seen) < expiry;
            if !keep {
                freed += partial.bytes;
            }
            keep
        });
        self.total_bytes -= freed;
        before - self.pending.len()
    }

    /// Drops every incomplete message (e.g. when the connection closes). Returns how many
    /// were dropped.
    pub fn clear(&mut self) -> usize {
        let dropped = self.pending.len();
        self.pending.clear();
        self.total_bytes = 0;
        dropped
    }

    fn is_expired(&self, partial: &Partial, now: Instant) -> bool {
        now.saturating_duration_since(partial.first_seen) >= self.limits.expiry
    }

    /// Removes the entry of `message_id`, if any, releasing its bytes.
    fn remove(&mut self, message_id: &str) -> Option<Partial> {
        let partial = self.pending.remove(message_id)?;
        self.total_bytes -= partial.bytes;
        Some(partial)
    }

    /// True when `additional` more bytes fit under the total limit, expiring old messages
    /// first if they do not.
    fn make_room(&mut self, additional: usize, now: Instant) -> bool {
        let max = self.limits.max_total_bytes;
        let fits = |total: usize| total.checked_add(additional).is_some_and(|t| t <= max);
        if fits(self.total_bytes) {
            return true;
        }
        self.expire(now);
        fits(self.total_bytes)
    }

    fn start_message(
        &mut self,
        message_id: &str,
        sum: u32,
        seq: u32,
        part: Bytes,
        now: Instant,
    ) -> Result<ChunkOutcome, ChunkError> {
        if part.len() > self.limits.max_message_bytes {
            return Err(ChunkError::MessageTooLarge {
                bytes: part.len(),
                max: self.limits.max_message_bytes,
            });
        }
        if self.pending.len() >= self.limits.max_incomplete_messages {
            self.expire(now);
            if self.pending.len() >= self.limits.max_incomplete_messages {
                return Err(ChunkError::TooManyIncomplete {
                    max: self.limits.max_incomplete_messages,
                });
            }
        }
        if !self.make_room(part.len(), now) {
            return Err(ChunkError::TotalBytesExceeded {
                max: self.limits.max_total_bytes,
            });
        }
        let len = part.len();
        let mut parts = vec![None; sum as usize];
        parts[seq as usize] = Some(part);
        self.pending.insert(
            message_id.into(),
            Partial {
                sum,
                first_seen: now,
                parts,
                received: 1,
                bytes: len,
            },
        );
        self.total_bytes += len;
        Ok(ChunkOutcome::Pending)
    }

    fn add_to_existing(
        &mut self,
        message_id: &str,
        expected_sum: u32,
        seq: u32,
        sum: u32,
        part: Bytes,
        now: Instant,
    ) -> Result<ChunkOutcome, ChunkError> {
        if sum != expected_sum {
            self.remove(message_id);
            return Err(ChunkError::SumMismatch {
                expected: expected_sum,
                got: sum,
            });
        }
        let (held_bytes, duplicate) = match self.pending.get(message_id) {
            Some(p) => (
                p.bytes,
                p.parts.get(seq as usize).is_some_and(Option::is_some),
            ),
            None => (0, false),
        };
        if duplicate {
            return Ok(ChunkOutcome::Duplicate);
        }
        let bytes = held_bytes.saturating_add(part.len());
        if bytes > self.limits.max_message_bytes {
            self.remove(message_id);
            return Err(ChunkError::MessageTooLarge {
                bytes,
                max: self.limits.max_message_bytes,
            });
        }
        if !self.make_room(part.len(), now) {
            self.remove(message_id);
            return Err(ChunkError::TotalBytesExceeded {
                max: self.limits.max_total_bytes,
            });
        }
        // `make_room` only expires messages older than `expiry`, and this one was checked to
        // be younger at `now`, so the entry is still here; `sum == parts.len()` and
        // `seq < sum` were checked, so the slot exists.
        let len = part.len();
        let Some(partial) = self.pending.get_mut(message_id) else {
            return self.start_message(message_id, sum, seq, part, now);
        };
        let Some(slot) = partial.parts.get_mut(seq as usize) else {
            // Unreachable: `seq < sum == parts.len()` was checked. Fail safe, not panic.
            self.remove(message_id);
            return Err(ChunkError::BadPosition {
                sum,
                seq,
                max_parts: self.limits.max_parts,
            });
        };
        *slot = Some(part);
        partial.received += 1;
        partial.bytes += len;
        let complete = partial.received >= partial.sum;
        self.total_bytes += len;
        if !complete {
            return Ok(ChunkOutcome::Pending);
        }
        let Some(partial) = self.remove(message_id) else {
            return Ok(ChunkOutcome::Pending);
        };
        let mut joined = BytesMut::with_capacity(partial.bytes);
        for piece in partial.parts.into_iter().flatten() {
            joined.extend_from_slice(&piece);
        }
        Ok(ChunkOutcome::Complete(joined.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(sum: u32, seq: u32) -> ChunkPosition {
        ChunkPosition { sum, seq }
    }

    fn small() -> ChunkLimits {
        ChunkLimits {
            max_parts: 4,
            max_message_bytes: 10,
            max_total_bytes: 16,
            max_incomplete_messages: 2,
            expiry: Duration::from_secs(10),
        }
    }

    #[test]
    fn single_part_is_returned_without_copy() {
        let mut a = ChunkAssembler::default();
        let part = Bytes::from_static(b"{\"a\":1}");
        let ptr = part.as_ptr();
        match a.accept("m", pos(1, 0), part, Instant::now()) {
            Ok(ChunkOutcome::Complete(b)) => {
                assert_eq!(b.as_ptr(), ptr);
                assert_eq!(&b[..], b"{\"a\":1}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.pending_messages(), 0);
        assert_eq!(a.pending_bytes(), 0);
    }

    #[test]
    fn parts_join_in_seq_order_and_entry_is_deleted() {
        let mut a = ChunkAssembler::default();
        let t = Instant::now();
        assert_eq!(
            a.accept("m", pos(3, 2), Bytes::from_static(b"c"), t),
            Ok(ChunkOutcome::Pending)
        );
        assert_eq!(
            a.accept("m", pos(3, 0), Bytes::from_static(b"a"), t),
            Ok(ChunkOutcome::Pending)
        );
        assert_eq!(a.pending_bytes(), 2);
        assert_eq!(
            a.accept("m", pos(3, 0), Bytes::from_static(b"X"), t),
            Ok(ChunkOutcome::Duplicate)
        );
        assert_eq!(
            a.accept("m", pos(3, 1), Bytes::from_static(b""), t),
            Ok(ChunkOutcome::Complete(Bytes::from_static(b"ac")))
        );
        assert_eq!(a.pending_messages(), 0);
        assert_eq!(a.pending_bytes(), 0);
    }

    #[test]
    fn inconsistent_sum_drops_the_message() {
        let mut a = ChunkAssembler::default();
        let t = Instant::now();
        a.accept("m", pos(2, 0), Bytes::from_static(b"a"), t)
            .unwrap();
        assert_eq!(
            a.accept("m", pos(3, 1), Bytes::from_static(b"b"), t),
            Err(ChunkError::SumMismatch {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(a.pending_messages(), 0);
        a.accept("m", pos(2, 0), Bytes::from_static(b"a"), t)
            .unwrap();
        assert_eq!(
            a.accept("m", pos(1, 0), Bytes::from_static(b"b"), t),
            Err(ChunkError::SumMismatch {
                expected: 2,
                got: 1
            })
        );
        assert_eq!((a.pending_messages(), a.pending_bytes()), (0, 0));
    }

    #[test]
    fn bad_positions_are_rejected() {
        let mut a = ChunkAssembler::new(small());
        let t = Instant::now();
        for (sum, seq) in [(0, 0), (2, 2), (5, 0), (u32::MAX, 1)] {
            assert!(matches!(
                a.accept("m", pos(sum, seq), Bytes::new(), t),
                Err(ChunkError::BadPosition { .. })
            ));
        }
        assert_eq!(a.pending_messages(), 0);
    }

    #[test]
    fn limits_hold_and_assembler_stays_usable() {
        let mut a = ChunkAssembler::new(small());
        let t = Instant::now();
        let b = |n: usize| Bytes::from(vec![b'x'; n]);
        assert_eq!(
            a.accept("big", pos(1, 0), b(11), t),
            Err(ChunkError::MessageTooLarge { bytes: 11, max: 10 })
        );
        assert_eq!(
            a.accept("m1", pos(2, 0), b(8), t),
            Ok(ChunkOutcome::Pending)
        );
        assert_eq!(
            a.accept("m1", pos(2, 1), b(3), t),
            Err(ChunkError::MessageTooLarge { bytes: 11, max: 10 })
        );
        assert_eq!(a.pending_messages(), 0);
        assert_eq!(
            a.accept("m1", pos(2, 0), b(8), t),
            Ok(ChunkOutcome::Pending)
        );
        assert_eq!(
            a.accept("m2", pos(2, 0), b(8), t),
            Ok(ChunkOutcome::Pending)
        );
        assert_eq!(
            a.accept("m3", pos(2, 0), b(1), t),
            Err(ChunkError::TooManyIncomplete { max: 2 })
        );
        assert_eq!(
            a.accept("m2", pos(2, 1), b(1), t),
            Err(ChunkError::TotalBytesExceeded { max: 16 })
        );
        assert_eq!((a.pending_messages(), a.pending_bytes()), (1, 8));
        assert_eq!(
            a.accept("m1", pos(2, 1), b(2), t),
            Ok(ChunkOutcome::Complete(b(10)))
        );
        assert_eq!((a.pending_messages(), a.pending_bytes()), (0, 0));
    }

    #[test]
    fn expiry_counts_from_the_first_part() {
        let mut a = ChunkAssembler::new(small());
        let t0 = Instant::now();
        a.accept("m", pos(3, 0), Bytes::from_static(b"a"), t0)
            .unwrap();
        a.accept(
            "m",
            pos(3, 1),
            Bytes::from_static(b"b"),
            t0 + Duration::from_secs(9),
        )
        .unwrap();
        assert_eq!(a.expire(t0 + Duration::from_millis(9_999)), 0);
        assert_eq!(a.expire(t0 + Duration::from_secs(10)), 1);
        assert_eq!((a.pending_messages(), a.pending_bytes()), (0, 0));

        // A late part of an expired message starts afresh instead of completing it.
        a.accept("n", pos(2, 0), Bytes::from_static(b"a"), t0)
            .unwrap();
        assert_eq!(
            a.accept(
                "n",
                pos(2, 1),
                Bytes::from_static(b"b"),
                t0 + Duration::from_secs(10)
            ),
            Ok(ChunkOutcome::Pending)
        );
        assert_eq!((a.pending_messages(), a.pending_bytes()), (1, 1));
    }

    #[test]
    fn limits_make_room_by_expiring() {
        let mut a = ChunkAssembler::new(small());
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(11);
        a.accept("m1", pos(2, 0), Bytes::from_static(b"a"), t0)
            .unwrap();
        a.accept("m2", pos(2, 0), Bytes::from_static(b"a"), t0)
            .unwrap();
        assert_eq!(
            a.accept("m3", pos(2, 0), Bytes::from_static(b"a"), later),
            Ok(ChunkOutcome::Pending)
        );
        assert_eq!(a.pending_messages(), 1);
    }
}
