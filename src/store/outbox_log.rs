//! [`OutboxLog`]: the event gateway's outbox and the dedup marks on the sled backend,
//! kept in an append-only log file of their own ([`LOG_FILE`], beside sled's files in the
//! vault directory) instead of sled trees, so that putting a group of events costs one
//! `write` and one `fdatasync` of a small append (tens of µs on an SSD) rather than a
//! sled transaction per event and a sled flush per group (ms under disk load), and a
//! dedup mark one small `pwrite` instead of a two-tree sled transaction and sled's
//! background page writes (measured: a third of the CPU of a forwarding run).
//!
//! File: an 8-byte magic ([`MAGIC`]), then records `len u32 ‖ crc32 u32 ‖ body` (little
//! endian; `crc32` of the body). Bodies start with a kind byte:
//! - `PUT`: a group of new events (`now u64 ‖ mark_expires u64 ‖ count u32 ‖` per event
//!   `event_id ‖ event_type ‖ ntargets u32 ‖ targets… ‖ payload`, strings and bytes as
//!   `len u32 ‖ bytes`): one pending entry per target, and the event's dedup mark
//!   ([`super::outbox_mark`], kept here by its [`super::mark_key`]) until `mark_expires`.
//!   One record per group, so a crash keeps the whole group or none of it.
//! - `ENTRY`: one entry with its retry state (`target ‖ event_id ‖ event_type ‖
//!   enqueued u64 ‖ attempts u32 ‖ next u64 ‖ dead u64 (u64::MAX = pending) ‖ payload`),
//!   written by compaction and by the migration of sled's outbox tree.
//! - `UPDATE`: a retry state (`target ‖ event_id ‖ attempts u32 ‖ next u64 ‖ dead u64`).
//! - `REMOVE`: delivered entries (`count u32 ‖ (target ‖ event_id)…`).
//! - `MARKS`: dedup marks (`count u32 ‖ (key [16] ‖ expires u64)…`), written by compaction.
//! - `MARK_SET` (`key [16] ‖ expires u64`, [`OutboxLog::mark_once`]), `MARK_VALUE`
//!   (`key ‖ expires ‖ value`, [`OutboxLog::set_mark_value`], compaction, migration) and
//!   `MARK_DROP` (`count u32 ‖ (key ‖ expires)…`, purges and trims; a mark renewed since
//!   under another expiry stays). Marks are keyed by [`super::mark_key`]; not synced on
//!   their own (like sled's writes they become durable with the next sync; unlike sled's
//!   they are in the kernel's page cache at once, so a `kill -9` keeps them).
//!
//! The file is grown ahead in [`GROW`] steps with zeros (written and synced), so an append
//! overwrites blocks the file has and its `fdatasync` needs no journal commit; a zero
//! header with only zeros after it is the end of the log. The append that reaches the
//! end grows it, under the lock: a few ms once per 4 MiB. (Growing on the background
//! thread instead was measured worse: an `fdatasync` of the log during the grow flushes
//! the grow's dirty zeros and its size change, so the ack tail at 5,000 events/s got
//! stalls of 2–140 ms in half the rounds.)
//!
//! Durability: [`OutboxLog::put`] appends without syncing; [`OutboxLog::sync`]
//! (`fdatasync`) makes everything appended so far durable: the gateway acks a group of
//! events after it. Updates and removals are appended and become durable with the next
//! sync (at least once: a removal lost in a crash delivers the event again).
//!
//! At open the log is replayed into an in-memory index (entries by `target 0x00
//! event_id`, the payload left in the file and read back by [`OutboxLog::list`]; marks by
//! key with their expiry). A record that is cut short or fails its checksum (a crash in
//! the middle of a write) ends the log: the valid prefix is kept, the tail is cut off
//! with one warning, never a panic.
//!
//! Compaction: once the file is past [`COMPACT_MIN`] and at least four times what is live,
//! the background thread writes the live marks and entries to a new file, copies the
//! records appended meanwhile after them, syncs it and renames it over the log (atomic),
//! so a crash during compaction leaves the old log or the new one. The lock is held only
//! to take the live set and for the last copy and the rename, not for writing the live
//! set (see `Shared::compact`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::{
    OutboxEntry, OutboxEvent, OutboxRetry, StoreError, mark_bucket_end, mark_key, outbox_mark,
};

/// The log's file name inside the vault directory.
pub const LOG_FILE: &str = "outbox.log";
/// The file a compaction writes before renaming it over [`LOG_FILE`].
const COMPACT_FILE: &str = "outbox.log.compact";
/// The first bytes of the log.
pub const MAGIC: &[u8; 8] = b"LAOUTBX1";
/// The log is compacted only past this size, bytes (32 MiB).
pub const COMPACT_MIN: u64 = 32 << 20;
/// The file is grown by this much at a time, with zeros written and synced (4 MiB), so
/// that an append overwrites blocks the file already has and its `fdatasync` flushes only
/// data: no journal commit for a new size, which made a sync wait for every other
/// metadata change on the filesystem (p90 0.8 ms under a parallel build, measured).
const GROW: u64 = 4 << 20;
/// Largest record body accepted at replay (1 GiB): a larger length is a damaged header.
const MAX_RECORD: u32 = 1 << 30;
/// Marks per `MARKS` record written by compaction.
const MARKS_PER_RECORD: usize = 10_000;
/// The size one live entry or mark is counted for in the garbage estimate, besides its
/// strings and payload.
const ENTRY_OVERHEAD: u64 = 48;
const MARK_BYTES: u64 = 24;

const PUT: u8 = 1;
const ENTRY: u8 = 2;
const UPDATE: u8 = 3;
const REMOVE: u8 = 4;
const MARKS: u8 = 5;
const MARK_SET: u8 = 6;
const MARK_VALUE: u8 = 7;
const MARK_DROP: u8 = 8;

/// A mark to adopt ([`OutboxLog::adopt_marks`]): its key, expiry (unix ms) and value.
pub type AdoptedMark = ([u8; 16], u64, Option<Vec<u8>>);

/// One entry in the index: its state, and where its payload is in the file.
#[derive(Debug, Clone)]
struct Slot {
    event_type: Arc<str>,
    payload_at: u64,
    payload_len: u32,
    enqueued_ms: u64,
    attempts: u32,
    next_attempt_ms: u64,
    dead_at_ms: Option<u64>,
}

impl Slot {
    fn live_bytes(&self, key: &[u8]) -> u64 {
        ENTRY_OVERHEAD + key.len() as u64 + self.event_type.len() as u64 + self.payload_len as u64
    }
}

/// A dedup mark: its expiry (unix ms) and the value attached to it, if any.
#[derive(Debug, Clone)]
struct MarkSlot {
    expires_ms: u64,
    value: Option<Vec<u8>>,
}

#[derive(Debug)]
struct State {
    file: Arc<File>,
    /// End of the valid records: the next append goes here.
    len: u64,
    /// The file's size: zeros from `len` on (written and synced ahead, see [`GROW`]).
    allocated: u64,
    /// Entries by `target 0x00 event_id` (the order sled listed them in).
    entries: BTreeMap<Vec<u8>, Slot>,
    /// Dedup marks by key.
    marks: HashMap<[u8; 16], MarkSlot>,
    /// The marks in expiry order.
    by_expiry: BTreeSet<(u64, [u8; 16])>,
    /// What a compaction would write, bytes (estimate).
    live_bytes: u64,
    /// Set after a failed write or sync: the file's state is unknown, writes are refused.
    poisoned: Option<String>,
    /// A compaction is asked of the background thread or running.
    compact_asked: bool,
}

/// The outbox log; see the module docs. All methods block on file I/O; compaction runs on
/// a thread of the log's own (`outbox-log`), ended and joined when the log is dropped.
#[derive(Debug)]
pub struct OutboxLog {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

/// What the log's methods and its background thread share.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    compact_min: u64,
    state: Mutex<State>,
    /// To the background thread.
    chores: Sender<Chore>,
}

/// Work for the log's background thread.
#[derive(Debug)]
enum Chore {
    /// Compact if the file is still worth it, dropping marks expired at this instant
    /// (unix ms).
    Compact { now_ms: u64 },
    /// End the thread.
    Stop,
}

fn io_error(op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

/// The index key of an entry: `target 0x00 event_id`.
pub fn entry_key(target: &str, event_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(target.len() + 1 + event_id.len());
    k.extend_from_slice(target.as_bytes());
    k.push(0);
    k.extend_from_slice(event_id.as_bytes());
    k
}

fn split_key(key: &[u8]) -> (String, String) {
    let at = key.iter().position(|&b| b == 0).unwrap_or(key.len());
    let rest = key.get(at + 1..).unwrap_or_default();
    (
        String::from_utf8_lossy(&key[..at]).into_owned(),
        String::from_utf8_lossy(rest).into_owned(),
    )
}

// ----- encoding ---------------------------------------------------------------------------

/// Builds records in a buffer: `begin`, fields, `end` (which fills in length and checksum).
struct Enc {
    buf: Vec<u8>,
    start: usize,
}

impl Enc {
    fn new() -> Enc {
        Enc {
            buf: Vec::new(),
            start: 0,
        }
    }

    fn begin(&mut self, kind: u8) {
        self.start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; 8]);
        self.buf.push(kind);
    }

    fn end(&mut self) {
        let body = &self.buf[self.start + 8..];
        let len = body.len() as u32;
        let crc = crc32fast::hash(body);
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[self.start + 4..self.start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// Appends `len u32 ‖ bytes`; returns where the bytes start in the buffer.
    fn bytes(&mut self, b: &[u8]) -> usize {
        self.u32(b.len() as u32);
        let at = self.buf.len();
        self.buf.extend_from_slice(b);
        at
    }
}

/// Reads the fields of one record body.
struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// `len u32 ‖ bytes`: the bytes and where they start in the body.
    fn bytes(&mut self) -> Option<(&'a [u8], usize)> {
        let n = self.u32()? as usize;
        let at = self.pos;
        Some((self.take(n)?, at))
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?.0).ok()
    }
}

fn dead_code(dead: Option<u64>) -> u64 {
    dead.unwrap_or(u64::MAX)
}

fn dead_from(code: u64) -> Option<u64> {
    (code != u64::MAX).then_some(code)
}

// ----- the index --------------------------------------------------------------------------

impl State {
    /// Sets the mark `key` until `expires_ms` with `value` (replacing the mark and value
    /// it had).
    fn set_mark(&mut self, key: [u8; 16], expires_ms: u64, value: Option<Vec<u8>>) {
        self.live_bytes += MARK_BYTES + value.as_ref().map_or(0, |v| v.len() as u64);
        let new = MarkSlot { expires_ms, value };
        if let Some(old) = self.marks.insert(key, new) {
            self.by_expiry.remove(&(old.expires_ms, key));
            self.live_bytes = self
                .live_bytes
                .saturating_sub(MARK_BYTES + old.value.map_or(0, |v| v.len() as u64));
        }
        self.by_expiry.insert((expires_ms, key));
    }

    /// Drops the mark `key` if it expires at `expires_ms` (a mark renewed since stays).
    fn drop_mark(&mut self, expires_ms: u64, key: [u8; 16]) {
        if !self.by_expiry.remove(&(expires_ms, key)) {
            return;
        }
        if let Some(old) = self.marks.remove(&key) {
            self.live_bytes = self
                .live_bytes
                .saturating_sub(MARK_BYTES + old.value.map_or(0, |v| v.len() as u64));
        }
    }

    fn mark_alive(&self, key: &[u8; 16], now_ms: u64) -> bool {
        self.marks.get(key).is_some_and(|m| m.expires_ms > now_ms)
    }

    fn insert(&mut self, key: Vec<u8>, slot: Slot) {
        self.live_bytes += slot.live_bytes(&key);
        if let Some(old) = self.entries.insert(key.clone(), slot) {
            self.live_bytes = self.live_bytes.saturating_sub(old.live_bytes(&key));
        }
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        match self.entries.remove(key) {
            Some(old) => {
                self.live_bytes = self.live_bytes.saturating_sub(old.live_bytes(key));
                true
            }
            None => false,
        }
    }

    /// Applies one record body found at file offset `at` (its body at `at + 8`). `None`
    /// when the body does not parse.
    fn apply(&mut self, body: &[u8], at: u64) -> Option<()> {
        let base = at + 8;
        let mut d = Dec { buf: body, pos: 0 };
        match d.u8()? {
            PUT => {
                let now = d.u64()?;
                let mark_expires = d.u64()?;
                let count = d.u32()?;
                for _ in 0..count {
                    let event_id = d.str()?;
                    let event_type: Arc<str> = d.str()?.into();
                    let ntargets = d.u32()?;
                    let mut targets = Vec::new();
                    for _ in 0..ntargets {
                        targets.push(d.str()?);
                    }
                    let (payload, p_at) = d.bytes()?;
                    self.set_mark(mark_key(&outbox_mark(event_id)), mark_expires, None);
                    for t in targets {
                        self.insert(
                            entry_key(t, event_id),
                            Slot {
                                event_type: event_type.clone(),
                                payload_at: base + p_at as u64,
                                payload_len: payload.len() as u32,
                                enqueued_ms: now,
                                attempts: 0,
                                next_attempt_ms: now,
                                dead_at_ms: None,
                            },
                        );
                    }
                }
            }
            ENTRY => {
                let target = d.str()?;
                let event_id = d.str()?;
                let event_type = d.str()?;
                let enqueued_ms = d.u64()?;
                let attempts = d.u32()?;
                let next_attempt_ms = d.u64()?;
                let dead = d.u64()?;
                let (payload, p_at) = d.bytes()?;
                self.insert(
                    entry_key(target, event_id),
                    Slot {
                        event_type: event_type.into(),
                        payload_at: base + p_at as u64,
                        payload_len: payload.len() as u32,
                        enqueued_ms,
                        attempts,
                        next_attempt_ms,
                        dead_at_ms: dead_from(dead),
                    },
                );
            }
            UPDATE => {
                let target = d.str()?;
                let event_id = d.str()?;
                let attempts = d.u32()?;
                let next = d.u64()?;
                let dead = d.u64()?;
                if let Some(slot) = self.entries.get_mut(&entry_key(target, event_id)) {
                    slot.attempts = attempts;
                    slot.next_attempt_ms = next;
                    slot.dead_at_ms = dead_from(dead);
                }
            }
            REMOVE => {
                let count = d.u32()?;
                for _ in 0..count {
                    let target = d.str()?;
                    let event_id = d.str()?;
                    self.remove(&entry_key(target, event_id));
                }
            }
            MARKS => {
                let count = d.u32()?;
                for _ in 0..count {
                    let key: [u8; 16] = d.take(16)?.try_into().ok()?;
                    let expires = d.u64()?;
                    self.set_mark(key, expires, None);
                }
            }
            MARK_SET => {
                let key: [u8; 16] = d.take(16)?.try_into().ok()?;
                let expires = d.u64()?;
                self.set_mark(key, expires, None);
            }
            MARK_VALUE => {
                let key: [u8; 16] = d.take(16)?.try_into().ok()?;
                let expires = d.u64()?;
                let value = d.bytes()?.0.to_vec();
                self.set_mark(key, expires, Some(value));
            }
            MARK_DROP => {
                let count = d.u32()?;
                for _ in 0..count {
                    let key: [u8; 16] = d.take(16)?.try_into().ok()?;
                    let expires = d.u64()?;
                    self.drop_mark(expires, key);
                }
            }
            _ => return None,
        }
        (d.pos == body.len()).then_some(())
    }
}

/// Replays `data` (the whole file) into `state`; returns the end of the valid prefix and,
/// when the log ends in a damaged or partial record, why.
fn replay(state: &mut State, data: &[u8]) -> (u64, Option<&'static str>) {
    let mut pos = MAGIC.len();
    while pos < data.len() {
        let Some(header) = data.get(pos..pos + 8) else {
            return (pos as u64, Some("a record header cut short"));
        };
        let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
        if len == 0 && crc == 0 {
            // The zeros grown ahead: the end, if nothing but zeros follows.
            if data[pos..].iter().all(|&b| b == 0) {
                return (pos as u64, None);
            }
            return (pos as u64, Some("data after the end of the records"));
        }
        if len == 0 || len > MAX_RECORD {
            return (pos as u64, Some("a record length out of range"));
        }
        let Some(body) = data.get(pos + 8..pos + 8 + len as usize) else {
            return (pos as u64, Some("a record cut short"));
        };
        if crc32fast::hash(body) != crc {
            return (pos as u64, Some("a record failing its checksum"));
        }
        if state.apply(body, pos as u64).is_none() {
            return (pos as u64, Some("a record that does not parse"));
        }
        pos += 8 + len as usize;
    }
    (pos as u64, None)
}

// ----- appends, growing, compaction ---------------------------------------------------------

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes zeros over `[from, to)` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// A compaction's tail left to copy under the lock, bytes: past this the copy is done
/// (and synced) without it first.
const CATCH_UP_LOCKED: u64 = 256 << 10;

impl State {
    /// Appends `enc`'s records at the end of the log (not synced), growing the file first
    /// when they do not fit. On a failed write the file is cut back to its previous end;
    /// if that fails too, the log refuses writes.
    fn append(&mut self, enc: &Enc, op: &'static str) -> Result<u64, StoreError> {
        if let Some(why) = &self.poisoned {
            return Err(StoreError::Backend {
                op,
                source: format!("outbox log unusable after an earlier failure: {why}").into(),
            });
        }
        let at = self.len;
        let end = at + enc.buf.len() as u64;
        if end > self.allocated {
            grow(self, end).map_err(io_error(op))?;
        }
        match self.file.write_all_at(&enc.buf, at) {
            Ok(()) => {
                self.len = end;
                Ok(at)
            }
            Err(e) => {
                // Back to zeros, so a replay ends before the failed record.
                if let Err(e2) = self.file.write_all_at(&vec![0u8; enc.buf.len()], at) {
                    self.poisoned = Some(e2.to_string());
                }
                Err(io_error(op)(e))
            }
        }
    }

    /// Drops `victims` (expiry, key) with one appended `MARK_DROP` record.
    fn drop_marks(
        &mut self,
        victims: &[(u64, [u8; 16])],
        op: &'static str,
    ) -> Result<usize, StoreError> {
        if victims.is_empty() {
            return Ok(0);
        }
        let mut enc = Enc::new();
        enc.begin(MARK_DROP);
        enc.u32(victims.len() as u32);
        for (exp, key) in victims {
            enc.buf.extend_from_slice(key);
            enc.u64(*exp);
        }
        enc.end();
        self.append(&enc, op)?;
        for &(exp, key) in victims {
            self.drop_mark(exp, key);
        }
        Ok(victims.len())
    }
}

impl Shared {
    fn worth_compacting(&self, st: &State) -> bool {
        st.len >= self.compact_min && st.len >= st.live_bytes.saturating_mul(4)
    }

    /// Asks the background thread for a compaction when the file is past the minimum and
    /// at least four times what is live (and none is asked or running).
    fn ask_compaction(&self, st: &mut State, now_ms: u64) {
        if !st.compact_asked && self.worth_compacting(st) {
            st.compact_asked = true;
            let _ = self.chores.send(Chore::Compact { now_ms });
        }
    }

    /// The background thread: compactions, one at a time, until [`Chore::Stop`].
    fn run(&self, inbox: Receiver<Chore>) {
        while let Ok(chore) = inbox.recv() {
            match chore {
                Chore::Compact { now_ms } => {
                    if let Err(e) = self.compact(now_ms) {
                        tracing::warn!(error = %e, "outbox log compaction failed; the log is kept as it was and grows until the next one");
                    }
                    lock(&self.state).compact_asked = false;
                }
                Chore::Stop => break,
            }
        }
    }

    /// Rewrites the live marks (those alive at `now_ms`) and entries into a new file and
    /// renames it over the log, holding the lock only to take the live set and, at the
    /// end, to copy the last records appended meanwhile (under [`CATCH_UP_LOCKED`]) and
    /// switch files:
    /// 1. under the lock: expired marks dropped, the live marks and entries taken, and the
    ///    end of the log noted (`snap_len`);
    /// 2. the live set written to [`COMPACT_FILE`] with [`GROW`] of zeros after it, synced;
    /// 3. the records appended since `snap_len` copied after it (they do not depend on
    ///    where they are: a payload's place is relative to its record), synced, until
    ///    little is left;
    /// 4. under the lock: the rest copied and synced, the file renamed over the log and
    ///    the directory synced, the index's payload places moved.
    ///
    /// A crash at any point leaves the old log or the new one, each with every record
    /// synced before. On an error before the rename the old log goes on as it was.
    ///
    /// # Errors
    /// [`StoreError::Backend`]: a read, write, sync or rename failed (the new file
    /// removed; after a rename whose directory sync failed the log refuses writes).
    fn compact(&self, now_ms: u64) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let fail = io_error("outbox compaction");
        // 1.
        let (old, snap_len, marks, entries, locked_first) = {
            let mut st = lock(&self.state);
            if st.poisoned.is_some() || !self.worth_compacting(&st) {
                return Ok(());
            }
            let expired: Vec<(u64, [u8; 16])> = st
                .by_expiry
                .iter()
                .take_while(|(exp, _)| *exp <= now_ms)
                .copied()
                .collect();
            for (exp, key) in expired {
                st.drop_mark(exp, key);
            }
            let marks: Vec<([u8; 16], u64, Option<Vec<u8>>)> = st
                .marks
                .iter()
                .map(|(k, m)| (*k, m.expires_ms, m.value.clone()))
                .collect();
            let entries: Vec<(Vec<u8>, Slot)> = st
                .entries
                .iter()
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect();
            (st.file.clone(), st.len, marks, entries, started.elapsed())
        };
        // 2. Payloads below `snap_len` never change: read without the lock.
        let mut enc = Enc::new();
        enc.buf.extend_from_slice(MAGIC);
        let mut bare = Vec::with_capacity(marks.len());
        for (key, expires_ms, value) in marks {
            match value {
                None => bare.push((key, expires_ms)),
                Some(value) => {
                    enc.begin(MARK_VALUE);
                    enc.buf.extend_from_slice(&key);
                    enc.u64(expires_ms);
                    enc.bytes(&value);
                    enc.end();
                }
            }
        }
        for chunk in bare.chunks(MARKS_PER_RECORD) {
            enc.begin(MARKS);
            enc.u32(chunk.len() as u32);
            for (key, exp) in chunk {
                enc.buf.extend_from_slice(key);
                enc.u64(*exp);
            }
            enc.end();
        }
        let mut moved: HashMap<Vec<u8>, u64> = HashMap::with_capacity(entries.len());
        let mut payload = Vec::new();
        for (key, slot) in entries {
            payload.resize(slot.payload_len as usize, 0);
            old.read_exact_at(&mut payload, slot.payload_at)
                .map_err(io_error("outbox compaction"))?;
            let (target, event_id) = split_key(&key);
            enc.begin(ENTRY);
            enc.bytes(target.as_bytes());
            enc.bytes(event_id.as_bytes());
            enc.bytes(slot.event_type.as_bytes());
            enc.u64(slot.enqueued_ms);
            enc.u32(slot.attempts);
            enc.u64(slot.next_attempt_ms);
            enc.u64(dead_code(slot.dead_at_ms));
            moved.insert(key, enc.bytes(&payload) as u64);
            enc.end();
        }
        let snap_end = enc.buf.len() as u64;
        let tmp = self.dir.join(COMPACT_FILE);
        let mut copy = TailCopy {
            old: &old,
            new: None,
            snap_len,
            snap_end,
            copied: snap_len,
            allocated: 0,
        };
        let result = (|| -> std::io::Result<()> {
            let new = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            new.write_all_at(&enc.buf, 0)?;
            write_zeros(&new, snap_end, snap_end + GROW)?;
            new.sync_all()?;
            copy.allocated = snap_end + GROW;
            copy.new = Some(new);
            // 3.
            loop {
                let len = lock(&self.state).len;
                if len - copy.copied <= CATCH_UP_LOCKED {
                    return Ok(());
                }
                copy.to(len)?;
            }
        })();
        drop(enc);
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(e));
        }
        // 4.
        let locked = std::time::Instant::now();
        let mut st = lock(&self.state);
        let old_len = st.len;
        let mut places = Vec::with_capacity(st.entries.len());
        for (key, slot) in &st.entries {
            let at = if slot.payload_at >= snap_len {
                Some(slot.payload_at - snap_len + snap_end)
            } else {
                moved.get(key).copied()
            };
            match at {
                Some(at) => places.push(at),
                None => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(fail(std::io::Error::other(
                        "an entry's payload is in neither the live set nor the records after it",
                    )));
                }
            }
        }
        let new = match copy.to(old_len).and_then(|()| {
            let new = copy
                .new
                .take()
                .ok_or_else(|| std::io::Error::other("no new file"))?;
            std::fs::rename(&tmp, self.dir.join(LOG_FILE))?;
            Ok(new)
        }) {
            Ok(new) => new,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(fail(e));
            }
        };
        // Renamed: the log's name is the new file's now, whatever happens next.
        st.file = Arc::new(new);
        st.len = old_len - snap_len + snap_end;
        st.allocated = copy.allocated;
        for (slot, at) in st.entries.values_mut().zip(places) {
            slot.payload_at = at;
        }
        if let Err(e) = sync_dir(&self.dir) {
            st.poisoned = Some(format!("syncing the directory after a compaction: {e}"));
            return Err(fail(e));
        }
        let (to_bytes, entries, marks) = (st.len, st.entries.len(), st.marks.len());
        drop(st);
        tracing::debug!(
            from_bytes = old_len,
            to_bytes,
            entries,
            marks,
            took_ms = started.elapsed().as_millis() as u64,
            locked_ms = (locked_first + locked.elapsed()).as_millis() as u64,
            "outbox log compacted"
        );
        Ok(())
    }
}

/// Copies the records a compaction's live set is followed by: the old log's bytes from
/// `snap_len` on go to the new file from `snap_end` on.
struct TailCopy<'a> {
    old: &'a File,
    new: Option<File>,
    snap_len: u64,
    snap_end: u64,
    /// The old log is copied up to here.
    copied: u64,
    /// The new file's size (zeros past what is copied).
    allocated: u64,
}

impl TailCopy<'_> {
    /// Copies the old log up to `len` and syncs the new file.
    fn to(&mut self, len: u64) -> std::io::Result<()> {
        let Some(new) = &self.new else {
            return Err(std::io::Error::other("no new file"));
        };
        if len <= self.copied {
            return Ok(());
        }
        let mut buf = vec![0u8; (len - self.copied) as usize];
        self.old.read_exact_at(&mut buf, self.copied)?;
        let at = self.copied - self.snap_len + self.snap_end;
        let end = at + buf.len() as u64;
        let sized = end > self.allocated;
        if sized {
            let to = grown_size(end);
            write_zeros(new, self.allocated, to)?;
            self.allocated = to;
        }
        new.write_all_at(&buf, at)?;
        if sized {
            new.sync_all()?;
        } else {
            new.sync_data()?;
        }
        self.copied = len;
        Ok(())
    }
}

/// The size a file is grown to so that it holds `end` bytes and at least [`GROW`] of
/// zeros after them, in whole [`GROW`] steps.
fn grown_size(end: u64) -> u64 {
    end.div_ceil(GROW).saturating_add(1).saturating_mul(GROW)
}

/// Grows the file with zeros, synced (size included), to hold `end` and [`GROW`] more.
fn grow(st: &mut State, end: u64) -> std::io::Result<()> {
    let target = grown_size(end);
    write_zeros(&st.file, st.allocated, target)?;
    st.file.sync_all()?;
    st.allocated = target;
    Ok(())
}

// ----- the log ----------------------------------------------------------------------------

impl OutboxLog {
    /// Opens (or creates) the log [`LOG_FILE`] in `dir` and replays it (expired marks
    /// included: [`OutboxLog::purge`] drops them). A damaged or partial tail is cut off (one warning); a file
    /// without the magic (a crash while creating it) is started anew when it holds nothing
    /// else, and refused otherwise.
    ///
    /// # Errors
    /// [`StoreError::Open`]: the file cannot be read or written, or is not an outbox log.
    pub fn open(dir: &Path) -> Result<OutboxLog, StoreError> {
        OutboxLog::open_with(dir, COMPACT_MIN)
    }

    /// [`OutboxLog::open`] compacting past `compact_min` bytes (tests).
    pub fn open_with(dir: &Path, compact_min: u64) -> Result<OutboxLog, StoreError> {
        let path = dir.join(LOG_FILE);
        let open_error = |e: std::io::Error| StoreError::Open {
            path: path.clone(),
            source: Box::new(e),
        };
        // A compaction cut short by a crash: the log itself is intact.
        let _ = std::fs::remove_file(dir.join(COMPACT_FILE));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(open_error)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(open_error)?;
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            if data.len() >= MAGIC.len() || !MAGIC.starts_with(&data) {
                return Err(open_error(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not an outbox log (bad magic)",
                )));
            }
            file.set_len(0).map_err(open_error)?;
            file.write_all_at(MAGIC, 0).map_err(open_error)?;
            file.sync_all().map_err(open_error)?;
            sync_dir(dir).map_err(open_error)?;
            data = MAGIC.to_vec();
        }
        let mut state = State {
            file: Arc::new(file),
            len: 0,
            entries: BTreeMap::new(),
            marks: HashMap::new(),
            by_expiry: BTreeSet::new(),
            live_bytes: 0,
            allocated: 0,
            poisoned: None,
            compact_asked: false,
        };
        let (valid, damage) = replay(&mut state, &data);
        state.allocated = data.len() as u64;
        if let Some(what) = damage {
            tracing::warn!(
                path = %path.display(),
                kept_bytes = valid,
                dropped_bytes = data.len() as u64 - valid,
                "outbox log ends in {what} (a write cut short by a crash): the valid prefix is kept, the tail dropped"
            );
            state.file.set_len(valid).map_err(open_error)?;
            state.file.sync_all().map_err(open_error)?;
            state.allocated = valid;
        }
        state.len = valid;
        let (chores, inbox) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            compact_min,
            state: Mutex::new(state),
            chores,
        });
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("outbox-log".into())
                .spawn(move || shared.run(inbox))
                .map_err(open_error)?
        };
        Ok(OutboxLog {
            shared,
            worker: Some(worker),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// Puts `events` (validated by the caller) as one record: per event, one entry per
    /// target and its mark until `mark_expires_ms`, unless its mark is alive at `now_ms`
    /// or `seen_before[i]` (a mark kept elsewhere). Returns per event whether it was
    /// stored. Not synced ([`OutboxLog::sync`]).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the write fails (nothing stored).
    pub fn put(
        &self,
        events: &[OutboxEvent],
        seen_before: &[bool],
        mark_expires_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<bool>, StoreError> {
        let mut st = self.lock();
        let mut stored = Vec::with_capacity(events.len());
        let mut in_batch = HashSet::new();
        let mut enc = Enc::new();
        enc.begin(PUT);
        enc.u64(now_ms);
        enc.u64(mark_expires_ms);
        enc.u32(0);
        let mut count = 0u32;
        let mut payloads = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let key = mark_key(&outbox_mark(&e.event_id));
            let new = !seen_before.get(i).copied().unwrap_or(false)
                && !st.mark_alive(&key, now_ms)
                && in_batch.insert(key);
            stored.push(new);
            if !new {
                continue;
            }
            count += 1;
            enc.bytes(e.event_id.as_bytes());
            enc.bytes(e.event_type.as_bytes());
            enc.u32(e.targets.len() as u32);
            for t in &e.targets {
                enc.bytes(t.as_bytes());
            }
            payloads.push((i, key, enc.bytes(&e.payload)));
        }
        if count == 0 {
            return Ok(stored);
        }
        // The count after kind, now and expiry.
        let at = enc.start + 8 + 1 + 16;
        enc.buf[at..at + 4].copy_from_slice(&count.to_le_bytes());
        enc.end();
        let base = st.append(&enc, "outbox_put")?;
        for (i, key, p_at) in payloads {
            let e = &events[i];
            st.set_mark(key, mark_expires_ms, None);
            let event_type: Arc<str> = e.event_type.as_str().into();
            for t in &e.targets {
                st.insert(
                    entry_key(t, &e.event_id),
                    Slot {
                        event_type: event_type.clone(),
                        payload_at: base + p_at as u64,
                        payload_len: e.payload.len() as u32,
                        enqueued_ms: now_ms,
                        attempts: 0,
                        next_attempt_ms: now_ms,
                        dead_at_ms: None,
                    },
                );
            }
        }
        Ok(stored)
    }

    /// Adds `entries` as they are (their retry state kept; an entry already in the log is
    /// replaced), then syncs: the migration of an older outbox into the log.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub fn adopt(&self, entries: &[OutboxEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        {
            let mut st = self.lock();
            let mut enc = Enc::new();
            let mut slots = Vec::with_capacity(entries.len());
            for e in entries {
                enc.begin(ENTRY);
                enc.bytes(e.target.as_bytes());
                enc.bytes(e.event_id.as_bytes());
                enc.bytes(e.event_type.as_bytes());
                enc.u64(e.enqueued_ms);
                enc.u32(e.attempts);
                enc.u64(e.next_attempt_ms);
                enc.u64(dead_code(e.dead_at_ms));
                let p_at = enc.bytes(&e.payload);
                enc.end();
                slots.push(p_at);
            }
            let base = st.append(&enc, "outbox migration")?;
            for (e, p_at) in entries.iter().zip(slots) {
                st.insert(
                    entry_key(&e.target, &e.event_id),
                    Slot {
                        event_type: e.event_type.as_str().into(),
                        payload_at: base + p_at as u64,
                        payload_len: e.payload.len() as u32,
                        enqueued_ms: e.enqueued_ms,
                        attempts: e.attempts,
                        next_attempt_ms: e.next_attempt_ms,
                        dead_at_ms: e.dead_at_ms,
                    },
                );
            }
        }
        self.sync()
    }

    /// Makes everything appended so far durable (`fdatasync`). The log lock is not held
    /// while syncing, so appends go on meanwhile.
    ///
    /// # Errors
    /// [`StoreError::Backend`]: the appends may not be durable; after it the log refuses
    /// writes (what the file holds is unknown).
    pub fn sync(&self) -> Result<(), StoreError> {
        let file = {
            let st = self.lock();
            if let Some(why) = &st.poisoned {
                return Err(StoreError::Backend {
                    op: "outbox sync",
                    source: format!("outbox log unusable after an earlier failure: {why}").into(),
                });
            }
            st.file.clone()
        };
        file.sync_data().map_err(|e| {
            self.lock().poisoned = Some(e.to_string());
            io_error("outbox sync")(e)
        })
    }

    /// Up to `limit` entries in key order after the entry `after` (exclusive).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when a payload cannot be read.
    pub fn list(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        use std::ops::Bound;
        let st = self.lock();
        let start = match after {
            Some((t, e)) => Bound::Excluded(entry_key(t, e)),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for (key, slot) in st.entries.range((start, Bound::Unbounded)).take(limit) {
            let mut payload = vec![0u8; slot.payload_len as usize];
            st.file
                .read_exact_at(&mut payload, slot.payload_at)
                .map_err(io_error("outbox_list"))?;
            let (target, event_id) = split_key(key);
            out.push(OutboxEntry {
                target,
                event_id,
                event_type: slot.event_type.to_string(),
                payload,
                enqueued_ms: slot.enqueued_ms,
                attempts: slot.attempts,
                next_attempt_ms: slot.next_attempt_ms,
                dead_at_ms: slot.dead_at_ms,
            });
        }
        Ok(out)
    }

    /// Records the retry state of the entry `(target, event_id)`; false when there is no
    /// such entry. Not synced.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub fn update(
        &self,
        target: &str,
        event_id: &str,
        retry: OutboxRetry,
    ) -> Result<bool, StoreError> {
        let mut st = self.lock();
        let key = entry_key(target, event_id);
        if !st.entries.contains_key(&key) {
            return Ok(false);
        }
        let mut enc = Enc::new();
        enc.begin(UPDATE);
        enc.bytes(target.as_bytes());
        enc.bytes(event_id.as_bytes());
        enc.u32(retry.attempts);
        enc.u64(retry.next_attempt_ms);
        enc.u64(dead_code(retry.dead_at_ms));
        enc.end();
        st.append(&enc, "outbox_update")?;
        if let Some(slot) = st.entries.get_mut(&key) {
            slot.attempts = retry.attempts;
            slot.next_attempt_ms = retry.next_attempt_ms;
            slot.dead_at_ms = retry.dead_at_ms;
        }
        Ok(true)
    }

    /// Removes the entries (delivered); returns how many existed. Not synced. Compacts
    /// the log when enough of it is garbage.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub fn remove(&self, entries: &[(String, String)], now_ms: u64) -> Result<usize, StoreError> {
        let mut st = self.lock();
        let mut enc = Enc::new();
        enc.begin(REMOVE);
        enc.u32(0);
        let mut found = Vec::new();
        for (target, event_id) in entries {
            let key = entry_key(target, event_id);
            if st.entries.contains_key(&key) {
                enc.bytes(target.as_bytes());
                enc.bytes(event_id.as_bytes());
                found.push(key);
            }
        }
        if found.is_empty() {
            return Ok(0);
        }
        let at = enc.start + 8 + 1;
        enc.buf[at..at + 4].copy_from_slice(&(found.len() as u32).to_le_bytes());
        enc.end();
        st.append(&enc, "outbox_remove")?;
        for key in &found {
            st.remove(key);
        }
        self.shared.ask_compaction(&mut st, now_ms);
        Ok(found.len())
    }

    /// How many dedup marks the log holds (expired ones not purged yet included).
    pub fn mark_count(&self) -> u64 {
        self.lock().marks.len() as u64
    }

    /// Sets the mark `key` until `expires_ms` unless it is alive at `now_ms` (a fresh
    /// mark, without value); true when set. Appended, not synced.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the write fails (nothing set).
    pub fn mark_once(
        &self,
        key: [u8; 16],
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut st = self.lock();
        if st.mark_alive(&key, now_ms) {
            return Ok(false);
        }
        let mut enc = Enc::new();
        enc.begin(MARK_SET);
        enc.buf.extend_from_slice(&key);
        enc.u64(expires_ms);
        enc.end();
        st.append(&enc, "mark_once")?;
        st.set_mark(key, expires_ms, None);
        Ok(true)
    }

    /// The value of the mark `key` when it is alive at `now_ms` and has one.
    pub fn mark_value(&self, key: &[u8; 16], now_ms: u64) -> Option<Vec<u8>> {
        let st = self.lock();
        st.marks
            .get(key)
            .filter(|m| m.expires_ms > now_ms)
            .and_then(|m| m.value.clone())
            .filter(|v| !v.is_empty())
    }

    /// Attaches `value` to the mark `key`, keeping its expiry; false (nothing written)
    /// when the mark is not alive at `now_ms`. Appended, not synced.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the write fails.
    pub fn set_mark_value(
        &self,
        key: [u8; 16],
        value: &[u8],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut st = self.lock();
        let Some(expires_ms) = st
            .marks
            .get(&key)
            .filter(|m| m.expires_ms > now_ms)
            .map(|m| m.expires_ms)
        else {
            return Ok(false);
        };
        let mut enc = Enc::new();
        enc.begin(MARK_VALUE);
        enc.buf.extend_from_slice(&key);
        enc.u64(expires_ms);
        enc.bytes(value);
        enc.end();
        st.append(&enc, "set_mark_value")?;
        st.set_mark(key, expires_ms, Some(value.to_vec()));
        Ok(true)
    }

    /// Sets marks as they are (with their values), then syncs: the migration of marks
    /// kept elsewhere into the log.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub fn adopt_marks(&self, marks: &[AdoptedMark]) -> Result<(), StoreError> {
        if marks.is_empty() {
            return Ok(());
        }
        {
            let mut st = self.lock();
            let mut enc = Enc::new();
            for (key, expires_ms, value) in marks {
                enc.begin(MARK_VALUE);
                enc.buf.extend_from_slice(key);
                enc.u64(*expires_ms);
                enc.bytes(value.as_deref().unwrap_or_default());
                enc.end();
            }
            st.append(&enc, "mark migration")?;
            for (key, expires_ms, value) in marks {
                st.set_mark(*key, *expires_ms, value.clone().filter(|v| !v.is_empty()));
            }
        }
        self.sync()
    }

    /// Drops up to `limit` marks expired at `now_ms`, oldest first (with their values);
    /// returns how many. Costs O(dropped).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the write fails (nothing dropped).
    pub fn purge(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let mut st = self.lock();
        let expired: Vec<(u64, [u8; 16])> = st
            .by_expiry
            .iter()
            .take_while(|(exp, _)| *exp <= now_ms)
            .take(limit)
            .copied()
            .collect();
        let dropped = st.drop_marks(&expired, "purge_marks")?;
        // Without forwarding, marks are all the log holds: this is where it is kept small.
        self.shared.ask_compaction(&mut st, now_ms);
        Ok(dropped)
    }

    /// Drops the oldest marks while more than `max_marks` are held, whole time buckets
    /// first (as [`super::Store::trim_marks`]), at most `limit`; returns how many.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the write fails (nothing dropped).
    pub fn trim(&self, max_marks: u64, limit: usize) -> Result<usize, StoreError> {
        let mut st = self.lock();
        let over = (st.marks.len() as u64).saturating_sub(max_marks);
        if over == 0 || limit == 0 {
            return Ok(0);
        }
        let mut victims = Vec::new();
        let mut bucket_end = 0;
        for &(exp, key) in &st.by_expiry {
            if victims.len() as u64 >= over && exp >= bucket_end {
                break;
            }
            bucket_end = bucket_end.max(mark_bucket_end(exp));
            victims.push((exp, key));
            if victims.len() >= limit {
                break;
            }
        }
        let dropped = st.drop_marks(&victims, "trim_marks")?;
        self.shared.ask_compaction(&mut st, 0);
        Ok(dropped)
    }

    /// The log's size on disk, bytes (zeros grown ahead included).
    pub fn disk_bytes(&self) -> u64 {
        self.lock().allocated
    }

    /// Where the valid records end (tests).
    #[cfg(test)]
    fn end(&self) -> u64 {
        self.lock().len
    }
}

impl Drop for OutboxLog {
    /// Ends the background thread once its chore in flight is done (a compaction
    /// finishes), so that a log opened again on the directory is alone with its file.
    fn drop(&mut self) {
        let _ = self.shared.chores.send(Chore::Stop);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Syncs directory `dir` (a rename or create in it becomes durable).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "http://127.0.0.1:9/a";
    const T2: &str = "http://127.0.0.1:9/b";

    fn event(id: &str, targets: &[&str]) -> OutboxEvent {
        OutboxEvent {
            event_id: id.into(),
            event_type: "im.message.receive_v1".into(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            payload: format!("{{\"event_id\":\"{id}\"}}").into_bytes(),
        }
    }

    fn ids(log: &OutboxLog) -> Vec<(String, String)> {
        log.list(None, 1000)
            .unwrap()
            .into_iter()
            .map(|e| (e.target, e.event_id))
            .collect()
    }

    fn pair(t: &str, e: &str) -> (String, String) {
        (t.to_string(), e.to_string())
    }

    /// Dropped without a clean close (as after `kill -9`: what was written is in the file,
    /// nothing else happens): the replay gives back entries, retry states, removals and
    /// marks, and a redelivery is not taken again.
    #[test]
    fn a_replay_after_an_unclean_stop_restores_entries_retries_removals_and_marks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = OutboxLog::open(dir.path()).unwrap();
            let stored = log
                .put(
                    &[event("ev_1", &[T1, T2]), event("ev_2", &[T1])],
                    &[false, false],
                    10_000,
                    100,
                )
                .unwrap();
            assert_eq!(stored, [true, true]);
            log.sync().unwrap();
            let retry = OutboxRetry {
                attempts: 2,
                next_attempt_ms: 900,
                dead_at_ms: None,
            };
            assert!(log.update(T1, "ev_2", retry).unwrap());
            assert_eq!(
                log.remove(&[pair(T2, "ev_1"), pair(T2, "ev_x")], 200)
                    .unwrap(),
                1
            );
            std::mem::forget(log);
        }
        let log = OutboxLog::open(dir.path()).unwrap();
        assert_eq!(ids(&log), [pair(T1, "ev_1"), pair(T1, "ev_2")]);
        let entries = log.list(None, 10).unwrap();
        assert_eq!(entries[0].payload, br#"{"event_id":"ev_1"}"#);
        assert_eq!((entries[0].enqueued_ms, entries[0].attempts), (100, 0));
        assert_eq!((entries[1].attempts, entries[1].next_attempt_ms), (2, 900));
        // The redelivery of a delivered event and of a pending one: neither taken again.
        assert_eq!(
            log.put(
                &[event("ev_1", &[T2]), event("ev_2", &[T1])],
                &[false, false],
                20_000,
                400
            )
            .unwrap(),
            [false, false]
        );
        assert_eq!(log.mark_count(), 2);
        // After the marks' expiry, the same id is new.
        drop(log);
        let log = OutboxLog::open(dir.path()).unwrap();
        assert_eq!(log.purge(10_000, 100).unwrap(), 2);
        assert_eq!(log.mark_count(), 0);
        assert_eq!(
            log.put(&[event("ev_1", &[T2])], &[false], 20_000, 10_001)
                .unwrap(),
            [true]
        );
    }

    /// A crash in the middle of a write leaves a partial or garbled last record: the
    /// valid prefix is kept, the tail cut off, and the log goes on from there.
    #[test]
    fn a_torn_or_garbled_tail_is_dropped_and_the_prefix_kept() {
        for damage in ["cut", "garble", "zeros", "stray"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(LOG_FILE);
            let (before, end);
            {
                let log = OutboxLog::open(dir.path()).unwrap();
                log.put(&[event("ev_1", &[T1])], &[false], 10_000, 100)
                    .unwrap();
                log.sync().unwrap();
                before = log.end();
                log.put(
                    &[event("ev_2", &[T1]), event("ev_3", &[T1])],
                    &[false, false],
                    10_000,
                    200,
                )
                .unwrap();
                log.sync().unwrap();
                end = log.end();
                assert!(std::fs::metadata(&path).unwrap().len() > end, "grown ahead");
            }
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            match damage {
                // The last group's record cut short.
                "cut" => file.set_len(end - 5).unwrap(),
                "garble" => file.write_all_at(b"XX", before + 20).unwrap(),
                // Zeros where the next record would go: the end, as grown.
                "zeros" => file.write_all_at(&[0u8; 64], end).unwrap(),
                // A header of zeros followed by something: the tail is dropped.
                _ => file.write_all_at(b"junk", end + 100).unwrap(),
            }
            drop(file);
            let log = OutboxLog::open(dir.path()).unwrap();
            match damage {
                "zeros" | "stray" => {
                    assert_eq!(ids(&log).len(), 3, "{damage}");
                    assert_eq!(log.end(), end, "{damage}");
                    if damage == "stray" {
                        assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
                    }
                }
                _ => {
                    assert_eq!(ids(&log), [pair(T1, "ev_1")], "{damage}");
                    assert_eq!(std::fs::metadata(&path).unwrap().len(), before, "{damage}");
                    // The lost group was never acknowledged: taken when delivered again.
                    assert_eq!(
                        log.put(&[event("ev_2", &[T1])], &[false], 10_000, 400)
                            .unwrap(),
                        [true]
                    );
                }
            }
            log.put(&[event("ev_4", &[T1])], &[false], 10_000, 500)
                .unwrap();
            log.sync().unwrap();
            let kept = ids(&log);
            drop(log);
            let log = OutboxLog::open(dir.path()).unwrap();
            assert_eq!(ids(&log), kept, "{damage}: appends after the repair replay");
        }
    }

    #[test]
    fn a_half_written_magic_starts_anew_and_a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), &MAGIC[..3]).unwrap();
        let log = OutboxLog::open(dir.path()).unwrap();
        assert!(ids(&log).is_empty());
        drop(log);
        std::fs::write(dir.path().join(LOG_FILE), b"something else entirely").unwrap();
        let err = OutboxLog::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not an outbox log"), "{err}");
    }

    /// Compaction keeps pending entries (with their retry state), dead ones and the live
    /// marks, drops removed entries and expired marks, and shrinks the file.
    #[test]
    fn compaction_keeps_pending_dead_and_marks_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let log = OutboxLog::open_with(dir.path(), 64 << 10).unwrap();
        // One mark that expires early, the rest late.
        log.put(&[event("ev_early", &[T1])], &[false], 1_000, 10)
            .unwrap();
        log.remove(&[pair(T1, "ev_early")], 20).unwrap();
        log.put(&[event("ev_pending", &[T1, T2])], &[false], 90_000, 20)
            .unwrap();
        log.put(&[event("ev_dead", &[T1])], &[false], 90_000, 30)
            .unwrap();
        let dead = OutboxRetry {
            attempts: 7,
            next_attempt_ms: u64::MAX,
            dead_at_ms: Some(5_000),
        };
        assert!(log.update(T1, "ev_dead", dead).unwrap());
        let retry = OutboxRetry {
            attempts: 3,
            next_attempt_ms: 6_000,
            dead_at_ms: None,
        };
        assert!(log.update(T2, "ev_pending", retry).unwrap());
        let mut i = 0;
        let mut peak = 0;
        // Churn until a compaction happened (the file shrank).
        loop {
            let id = format!("ev_churn_{i}");
            log.put(&[event(&id, &[T1])], &[false], 90_000, 2_000)
                .unwrap();
            log.remove(&[pair(T1, &id)], 2_000).unwrap();
            let len = std::fs::metadata(&path).unwrap().len();
            if len < peak {
                break;
            }
            peak = len;
            i += 1;
            assert!(i < 100_000, "no compaction");
        }
        log.sync().unwrap();
        let check = |log: &OutboxLog| {
            let entries = log.list(None, 100).unwrap();
            let got: Vec<_> = entries
                .iter()
                .map(|e| {
                    (
                        e.target.as_str(),
                        e.event_id.as_str(),
                        e.attempts,
                        e.dead_at_ms,
                    )
                })
                .collect();
            assert_eq!(
                got,
                [
                    (T1, "ev_dead", 7, Some(5_000)),
                    (T1, "ev_pending", 0, None),
                    (T2, "ev_pending", 3, None)
                ]
            );
            assert_eq!(entries[1].payload, br#"{"event_id":"ev_pending"}"#);
            assert_eq!(entries[2].next_attempt_ms, 6_000);
        };
        check(&log);
        // Churned events' marks survive compaction (all but the one expired at 1 000).
        assert_eq!(log.mark_count(), i as u64 + 1 + 2);
        assert_eq!(
            log.put(&[event("ev_churn_0", &[T1])], &[false], 90_000, 3_000)
                .unwrap(),
            [false]
        );
        drop(log);
        let log = OutboxLog::open(dir.path()).unwrap();
        check(&log);
        assert_eq!(log.mark_count(), i as u64 + 1 + 2);
        assert_eq!(
            log.put(&[event("ev_early", &[T1])], &[false], 90_000, 3_000)
                .unwrap(),
            [true]
        );
        assert!(!dir.path().join(COMPACT_FILE).exists());
    }

    /// Compaction runs on the log's own thread beside appends: what two writers append
    /// while the live set is written is carried into the new file; every kept entry,
    /// payload and mark is there, a reopen included.
    #[test]
    fn appends_beside_background_compactions_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let log = Arc::new(OutboxLog::open_with(dir.path(), 256 << 10).unwrap());
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        let id = format!("ev_{w}_{i}");
                        log.put(&[event(&id, &[T1])], &[false], 90_000, 10).unwrap();
                        // Every 100th stays pending.
                        if i % 100 != 0 {
                            log.remove(&[pair(T1, &id)], 10).unwrap();
                        }
                        if i % 64 == 0 {
                            log.sync().unwrap();
                        }
                    }
                })
            })
            .collect();
        let mut shrank = 0;
        let mut last = 0;
        while writers.iter().any(|w| !w.is_finished()) {
            let len = std::fs::metadata(&path).unwrap().len();
            if len < last {
                shrank += 1;
            }
            last = len;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        for w in writers {
            w.join().unwrap();
        }
        assert!(shrank > 0, "no compaction happened");
        log.sync().unwrap();
        let expected: Vec<(String, String)> = {
            let mut v: Vec<_> = (0..2)
                .flat_map(|w| {
                    (0..20_000)
                        .step_by(100)
                        .map(move |i| pair(T1, &format!("ev_{w}_{i}")))
                })
                .collect();
            v.sort();
            v
        };
        let check = |log: &OutboxLog| {
            let entries = log.list(None, 10_000).unwrap();
            let got: Vec<_> = entries
                .iter()
                .map(|e| pair(&e.target, &e.event_id))
                .collect();
            assert_eq!(got, expected);
            for e in &entries {
                assert_eq!(
                    e.payload,
                    format!("{{\"event_id\":\"{}\"}}", e.event_id).into_bytes()
                );
            }
            assert_eq!(log.mark_count(), 40_000);
        };
        check(&log);
        drop(Arc::into_inner(log).unwrap());
        let log = OutboxLog::open(dir.path()).unwrap();
        check(&log);
    }

    /// Marks alone (a service without forward targets) do not grow the file for ever:
    /// purges compact it; the live marks and their values survive, a reopen included.
    #[test]
    fn marks_alone_are_compacted_by_the_purges() {
        let dir = tempfile::tempdir().unwrap();
        let log = OutboxLog::open_with(dir.path(), 64 << 10).unwrap();
        let kept = mark_key(b"event/kept");
        assert!(log.mark_once(kept, u64::MAX, 0).unwrap());
        assert!(log.set_mark_value(kept, b"answer", 0).unwrap());
        let mut peak = 0;
        let mut i = 0u64;
        loop {
            let key = mark_key(format!("event/ev_{i}").as_bytes());
            assert!(log.mark_once(key, i + 1, i).unwrap());
            log.purge(i + 1, 100).unwrap();
            let len = log.end();
            if len < peak {
                break;
            }
            peak = len;
            i += 1;
            assert!(i < 100_000, "no compaction");
        }
        assert_eq!(log.mark_count(), 1);
        drop(log);
        let log = OutboxLog::open(dir.path()).unwrap();
        assert_eq!(log.mark_count(), 1);
        assert_eq!(log.mark_value(&kept, 5).as_deref(), Some(&b"answer"[..]));
        // Smaller than before the compaction (what was appended while it ran is kept
        // after the live set, so how much smaller depends on the background thread).
        assert!(log.end() < peak, "{} >= {peak}", log.end());
    }

    #[test]
    fn marks_are_purged_and_trimmed_by_bucket_and_a_batch_takes_an_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = OutboxLog::open(dir.path()).unwrap();
        let events: Vec<_> = (0..6).map(|i| event(&format!("ev_{i}"), &[T1])).collect();
        for (i, e) in events.iter().enumerate() {
            // Two per minute bucket.
            let exp = 60_000 * (1 + i as u64 / 2);
            log.put(std::slice::from_ref(e), &[false], exp, 0).unwrap();
        }
        assert_eq!(log.trim(5, 100).unwrap(), 2, "the oldest bucket whole");
        assert_eq!(log.mark_count(), 4);
        assert_eq!(log.purge(120_000, 100).unwrap(), 2);
        assert_eq!(log.mark_count(), 2);
        let twice = [event("ev_9", &[T1]), event("ev_9", &[T1])];
        assert_eq!(
            log.put(&twice, &[false, false], 1_000, 0).unwrap(),
            [true, false]
        );
        assert_eq!(
            log.put(&[event("ev_8", &[T1])], &[true], 1_000, 0).unwrap(),
            [false]
        );
    }
}
