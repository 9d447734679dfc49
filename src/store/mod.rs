//! The storage seam: everything lark-auth keeps across restarts goes through the [`Store`]
//! trait — grant records, the refresh-due index, authorization sessions, dedup marks with
//! an expiry (and an optional value, e.g. a card click's answer), small metadata records (the vault's key checks), the quarantine of corrupt
//! records, and the event gateway's outbox (one delivery per event and target, until the
//! target took it).
//!
//! The trait is byte-oriented and names no backend type, so a shared SQL store can
//! implement it later (several instances sharing grants and sessions). The typed encoding,
//! sealing and status rules live in [`crate::vault`]; this layer only keeps bytes, versions
//! and orderings. [`SledStore`] is the embedded implementation; [`PostgresStore`] the one
//! shared by several instances (`[store] backend = "postgres"`), with the same contract
//! (`tests/store_contract.rs` runs one suite against both).
//!
//! All methods block (disk I/O, and [`Store::flush`] waits for fsync): call them from a
//! `SyncArbiter` thread or another thread that may block, never from the System's thread.
//!
//! Versions: every grant record carries a version kept by the store. The first write makes
//! version 1 and every successful [`Store::compare_and_swap_grant`] adds one, so a writer
//! that read version `v` replaces the record only if nobody wrote in between (a SQL backend
//! does `UPDATE … SET version = version + 1 WHERE version = v`).
//!
//! Lost writes: a backend whose files can be damaged without it noticing (sled drops
//! everything after the first bad entry of its log and opens without error) records, apart
//! from its data, how far the writes it acknowledged reach, and compares at open
//! ([`Store::detected_loss`], [`LossReport`]). The service refuses to start on a loss
//! unless told to accept it ([`Store::accept_loss`]). A backend that cannot lose
//! acknowledged writes (a SQL database) keeps the default methods: no loss detected.
//!
//! Instants are unix epoch milliseconds (`u64`, UTC) throughout this module.

mod mark;
pub mod migrate;
mod outbox_log;
mod pg_schema;
mod postgres_store;
mod sled_store;

use std::path::PathBuf;
use std::sync::Arc;

pub use self::outbox_log::LOG_FILE as OUTBOX_LOG_FILE;
pub use self::pg_schema::{MAX_SCHEMA_NAME, SCHEMA_VERSION, check_schema_name};
pub use self::postgres_store::{PostgresOptions, PostgresStore};
pub use self::sled_store::{DEFAULT_CACHE_MIB, LOCK_WAIT, MARK_FILE, SledStore};

/// The boxed cause of a backend failure (kept opaque so the trait names no backend type).
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the storage layer. A missing record is not an error (`Ok(None)`), nor is a
/// compare-and-swap conflict ([`CasOutcome::Conflict`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store directory is locked by another open handle: another lark-auth process
    /// (or a second open in this process) is using it. Stop the other instance, or point
    /// `vault.path` at another directory. Within one process, open once and clone the
    /// handle.
    #[error(
        "the store at {path} is locked by another open handle: another lark-auth may be \
         running with the same vault.path (stop it, or use another path)"
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The store could not be opened (permissions, missing parent directory, damaged
    /// files). Check the path and the disk; the files are left as they were.
    #[error("cannot open the store at {path}: {source}")]
    Open {
        /// The store directory.
        path: PathBuf,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// A read or write failed in the backend (I/O error, disk full). Nothing was
    /// acknowledged; retry later, and check the disk if it persists.
    #[error("store {op} failed: {source}")]
    Backend {
        /// The operation, e.g. `compare_and_swap_grant`.
        op: &'static str,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// A stored value's framing (the store's own header) is malformed. The caller should
    /// quarantine the record ([`Store::quarantine_grant`]) and carry on with the others.
    #[error("corrupt record {key}: {reason}")]
    CorruptRecord {
        /// The record's key, printable.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The PostgreSQL connection string does not parse. The message names what is wrong
    /// and never quotes the string (it may hold a password).
    #[error("invalid PostgreSQL connection URL: {source}")]
    InvalidUrl {
        /// The parser's complaint.
        #[source]
        source: BackendError,
    },
    /// The configured schema name is not a plain identifier (`[store] schema`).
    #[error("invalid PostgreSQL schema name: {reason}")]
    InvalidSchemaName {
        /// What is wrong.
        reason: &'static str,
    },
    /// The PostgreSQL store could not be reached or prepared: server down or unreachable,
    /// authentication refused, database missing, or the role lacks the privileges to
    /// create or migrate the schema. Nothing was changed by lark-auth.
    #[error("cannot open the PostgreSQL store ({location}): {source}")]
    Connect {
        /// Host, port, database, user and schema (never the password).
        location: String,
        /// The client's error.
        #[source]
        source: BackendError,
    },
    /// The PostgreSQL schema was migrated by a newer lark-auth than this one: running on
    /// it could misread or damage records. Nothing was written. Run the newer lark-auth
    /// (or one at least as new), or point `[store] schema` elsewhere.
    #[error(
        "the PostgreSQL store ({location}) has schema version {found}, newer than this \
         lark-auth supports ({supported}): run a lark-auth at least as new as the one that \
         migrated it"
    )]
    SchemaTooNew {
        /// Host, port, database, user and schema.
        location: String,
        /// The version found in the schema.
        found: i32,
        /// The newest version this build knows.
        supported: i32,
    },
    /// A key part is not storable (empty, or contains a NUL byte). A caller bug: fix the
    /// identifier passed.
    #[error("invalid key part {what}: must be non-empty and contain no NUL byte")]
    InvalidKey {
        /// Which part: `app_id`, `open_id`, `session_id`, …
        what: &'static str,
    },
}

/// Identifies one grant: the app and the user's `open_id` in that app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey {
    /// The app id (`cli_…`).
    pub app_id: String,
    /// The user's `open_id` (`ou_…`) in that app.
    pub open_id: String,
}

impl GrantKey {
    /// Builds a key.
    pub fn new(app_id: impl Into<String>, open_id: impl Into<String>) -> Self {
        GrantKey {
            app_id: app_id.into(),
            open_id: open_id.into(),
        }
    }
}

impl std::fmt::Display for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.app_id, self.open_id)
    }
}

/// A grant record as stored: its version, its refresh-due instant and the opaque payload
/// the vault wrote.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredGrant {
    /// Version, 1 after the first write, +1 per successful compare-and-swap.
    pub version: u64,
    /// Refresh-due instant (unix ms) under which the record is in the due index, if any.
    pub due_ms: Option<u64>,
    /// The vault's encoded record (secrets sealed).
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for StoredGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredGrant")
            .field("version", &self.version)
            .field("due_ms", &self.due_ms)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// The new content of a grant record in a compare-and-swap.
#[derive(Clone)]
pub struct GrantWrite {
    /// The vault's encoded record.
    pub payload: Vec<u8>,
    /// Refresh-due instant (unix ms) to index the record under; `None` takes it out of
    /// the due index (revoked, needs re-authorization).
    pub due_ms: Option<u64>,
}

/// The result of [`Store::compare_and_swap_grant`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// The record was replaced (or created, or deleted); `version` is the new version
    /// (0 after a delete).
    Swapped {
        /// The version now stored.
        version: u64,
    },
    /// The record's version was not the expected one: somebody wrote in between. Re-read
    /// and decide again; nothing was changed.
    Conflict {
        /// The version found (`None`: no record).
        current: Option<u64>,
    },
}

/// One entry of the refresh-due index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueEntry {
    /// Due instant, unix ms.
    pub due_ms: u64,
    /// The grant that is due.
    pub key: GrantKey,
}

/// A record moved aside because it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedRecord {
    /// The grant it was stored under.
    pub key: GrantKey,
    /// When it was moved, unix ms.
    pub at_ms: u64,
    /// Why (format version, authentication failure, truncation…).
    pub reason: String,
    /// The raw stored bytes, kept for inspection (still sealed).
    pub raw: Vec<u8>,
}

/// One acknowledged flush: its write generation (1, 2, … for the life of the store) and
/// when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WriteMark {
    /// The flush's number; every [`Store::flush`] takes the next one.
    pub generation: u64,
    /// When the flush was made, unix ms.
    pub at_ms: u64,
}

/// Acknowledged writes that a store no longer holds, found at open ([`Store::detected_loss`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossReport {
    /// Where the store is (its directory), for messages.
    pub location: String,
    /// The last flush acknowledged, as recorded apart from the data; `None` when that
    /// record itself is damaged (whether anything was lost cannot be told).
    pub acknowledged: Option<WriteMark>,
    /// The last acknowledged flush the data still holds; `None` when it holds none.
    pub found: Option<WriteMark>,
}

fn rfc3339_s(unix_ms: u64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms),
    )
}

impl std::fmt::Display for LossReport {
    /// One line: what was lost (the time window), never a record's content.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(acknowledged) = self.acknowledged else {
            return write!(
                f,
                "the vault at {} cannot tell whether acknowledged writes were lost: its record \
                 of the last acknowledged write is damaged",
                self.location
            );
        };
        write!(
            f,
            "the vault at {} lost acknowledged writes: ",
            self.location
        )?;
        match self.found {
            Some(found) => write!(
                f,
                "its data ends at the write acknowledged at {} (write generation {}), but \
                 writes up to {} (generation {}) had been acknowledged",
                rfc3339_s(found.at_ms),
                found.generation,
                rfc3339_s(acknowledged.at_ms),
                acknowledged.generation
            )?,
            None => write!(
                f,
                "its data holds none of the writes acknowledged up to {} (write generation {})",
                rfc3339_s(acknowledged.at_ms),
                acknowledged.generation
            )?,
        }
        write!(
            f,
            "; grants stored, refreshed or revoked and sessions changed in that window are gone"
        )
    }
}

/// One event to put in the outbox ([`Store::outbox_put`]): one delivery per target.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// `header.event_id`: the id platform redeliveries share.
    pub event_id: String,
    /// `header.event_type`.
    pub event_type: String,
    /// The targets (their URLs) that take it; at least one.
    pub targets: Vec<String>,
    /// The envelope bytes as received.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for OutboxEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxEvent")
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("targets", &self.targets)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// One delivery in the outbox: an event for one target, with its retry state.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The target's URL.
    pub target: String,
    /// `header.event_id`.
    pub event_id: String,
    /// `header.event_type`.
    pub event_type: String,
    /// The envelope bytes as received.
    pub payload: Vec<u8>,
    /// When it was put in the outbox, unix ms.
    pub enqueued_ms: u64,
    /// Tries made so far.
    pub attempts: u32,
    /// When the next try is due, unix ms.
    pub next_attempt_ms: u64,
    /// When it was given up (retried for `events.retry_for_secs`); `None` while pending.
    pub dead_at_ms: Option<u64>,
}

impl std::fmt::Debug for OutboxEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxEntry")
            .field("target", &self.target)
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("payload_len", &self.payload.len())
            .field("enqueued_ms", &self.enqueued_ms)
            .field("attempts", &self.attempts)
            .field("next_attempt_ms", &self.next_attempt_ms)
            .field("dead_at_ms", &self.dead_at_ms)
            .finish()
    }
}

/// The retry state written by [`Store::outbox_update`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxRetry {
    /// Tries made so far.
    pub attempts: u32,
    /// When the next try is due, unix ms.
    pub next_attempt_ms: u64,
    /// Set: the delivery was given up at this instant (kept as dead).
    pub dead_at_ms: Option<u64>,
}

/// The dedup mark of an event in the outbox: `forward/<event_id>` (apart from the
/// dispatcher's `event/` marks, so subscribers and targets dedup independently).
pub fn outbox_mark(event_id: &str) -> Vec<u8> {
    let mut mark = b"forward/".to_vec();
    mark.extend_from_slice(event_id.as_bytes());
    mark
}

/// Width of a dedup mark's time bucket, ms (one minute). Marks are grouped by the bucket
/// their expiry falls in; when more than the cap are stored, [`Store::trim_marks`] drops
/// the oldest bucket whole before touching the next one.
pub const MARK_BUCKET_MS: u64 = 60_000;

/// The default cap on stored dedup marks (`sessions.dedup_max_marks`): 100,000. With
/// sled under sustained traffic each stored mark costs about 450 B of resident memory and
/// 550 B of disk (its pages, not its 48 bytes of data), so this keeps a process at 5,000
/// events/s near 120 MiB (see `docs/operations.md`, "Memory and disk").
pub const DEFAULT_MAX_MARKS: u64 = 100_000;

/// The fixed-size key a dedup mark is stored under: the first 16 bytes (128 bits) of the
/// SHA-256 of the mark (namespace prefix included, e.g. `event/<event_id>`). Two different
/// marks share a key with probability about n²/2¹²⁹ among n marks (≈ 10⁻²⁷ at the default
/// cap), so a collision, which would drop one event as a redelivery, is negligible.
pub fn mark_key(mark: &[u8]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(mark);
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// The end (exclusive, unix ms) of the time bucket holding `expires_ms`: marks expiring
/// before it belong to that bucket or an older one.
pub fn mark_bucket_end(expires_ms: u64) -> u64 {
    (expires_ms / MARK_BUCKET_MS)
        .saturating_add(1)
        .saturating_mul(MARK_BUCKET_MS)
}

/// Everything persistent. Implementations must make each method atomic on its own: a
/// crash leaves either the state before or the state after a call, never a mix.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Reads one grant record.
    ///
    /// # Errors
    /// [`StoreError::Backend`]; [`StoreError::CorruptRecord`] when the store's framing is
    /// damaged (quarantine it); [`StoreError::InvalidKey`].
    fn get_grant(&self, key: &GrantKey) -> Result<Option<StoredGrant>, StoreError>;

    /// Replaces the grant record if its version is `expected_version` (`None`: only if
    /// there is no record), moving its due-index entry in the same atomic step. `new =
    /// None` deletes the record. Not flushed: call [`Store::flush`] before acknowledging a
    /// write that must survive a crash.
    ///
    /// # Errors
    /// [`StoreError::Backend`], [`StoreError::CorruptRecord`], [`StoreError::InvalidKey`].
    fn compare_and_swap_grant(
        &self,
        key: &GrantKey,
        expected_version: Option<u64>,
        new: Option<GrantWrite>,
    ) -> Result<CasOutcome, StoreError>;

    /// Lists up to `limit` grants of `app_id` in `open_id` order, starting after
    /// `after_open_id` (for paging). Records whose framing is damaged are returned as
    /// `Err` entries so the caller can quarantine them and go on.
    ///
    /// # Errors
    /// [`StoreError::Backend`], [`StoreError::InvalidKey`].
    #[allow(clippy::type_complexity)]
    fn list_grants(
        &self,
        app_id: &str,
        after_open_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(GrantKey, Result<StoredGrant, StoreError>)>, StoreError>;

    /// The due-index entries with `due_ms <= until_ms`, nearest first, at most `limit`.
    /// Costs O(returned entries), not O(grants).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn due_grants(&self, until_ms: u64, limit: usize) -> Result<Vec<DueEntry>, StoreError>;

    /// Moves the grant record (whatever its bytes) to the quarantine, out of the grants
    /// and the due index, in one atomic step. Returns false when there was no record.
    ///
    /// # Errors
    /// [`StoreError::Backend`], [`StoreError::InvalidKey`].
    fn quarantine_grant(
        &self,
        key: &GrantKey,
        reason: &str,
        at_ms: u64,
    ) -> Result<bool, StoreError>;

    /// Every quarantined record, oldest key first.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn quarantined(&self) -> Result<Vec<QuarantinedRecord>, StoreError>;

    /// Writes an authorization session record (replacing any with that id).
    ///
    /// # Errors
    /// [`StoreError::Backend`], [`StoreError::InvalidKey`].
    fn put_session(&self, session_id: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Reads a session record.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn get_session(&self, session_id: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Deletes a session record; true when it existed.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn delete_session(&self, session_id: &str) -> Result<bool, StoreError>;

    /// Every session record, in id order.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn list_sessions(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Sets the dedup mark `mark` until `expires_at_ms` unless it is already set and not
    /// expired at `now_ms`. Returns true when this call set it (first sighting), false
    /// for a duplicate.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn mark_once(&self, mark: &[u8], expires_at_ms: u64, now_ms: u64) -> Result<bool, StoreError>;

    /// The value attached to the dedup mark `mark` by [`Store::set_mark_value`].
    /// `Ok(None)` when the mark is not set, has expired at `now_ms`, or carries no value.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn mark_value(&self, mark: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Attaches `value` to the dedup mark `mark` (replacing any value it had), keeping the
    /// mark's expiry, so the value lives and is purged with the mark. Returns false, and
    /// stores nothing, when the mark is not set or has expired at `now_ms`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn set_mark_value(&self, mark: &[u8], value: &[u8], now_ms: u64) -> Result<bool, StoreError>;

    /// Deletes up to `limit` marks that expired at or before `now_ms`, oldest first, and
    /// returns how many. Costs O(deleted).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn purge_marks(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError>;

    /// Drops the oldest dedup marks, expired or not, while more than `max_marks` are
    /// stored: whole time buckets ([`MARK_BUCKET_MS`] of expiry), oldest first, so the
    /// count ends at or below `max_marks` (a mark of the bucket being dropped survives
    /// only when `limit` ran out). At most `limit` marks per call; returns how many were
    /// dropped (marks dropped before their expiry, with their values). Costs
    /// O(dropped), plus, on PostgreSQL, a count of the marks.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn trim_marks(&self, max_marks: u64, limit: usize) -> Result<usize, StoreError>;

    /// How many dedup marks are stored (expired ones not purged yet included).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn mark_count(&self) -> Result<u64, StoreError>;

    /// The store's size on disk, bytes (`None` when the backend cannot tell). sled: its
    /// files; PostgreSQL: the schema's tables with their indexes and TOAST.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn disk_bytes(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Puts each event of `events` in the outbox, one entry per target (due at `now_ms`,
    /// no try made), unless its dedup mark [`outbox_mark`] is set and not expired at
    /// `now_ms` (a redelivery of an event already taken). The mark is set until
    /// `mark_expires_ms` in the same atomic step, per event. Returns, per event in order,
    /// true when it was stored, false for a redelivery. Not flushed: call
    /// [`Store::flush`] before acknowledging the events.
    ///
    /// # Errors
    /// [`StoreError::Backend`]; [`StoreError::InvalidKey`] for an empty or NUL-holding
    /// event id or target (nothing of the batch is stored then).
    fn outbox_put(
        &self,
        events: &[OutboxEvent],
        mark_expires_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<bool>, StoreError>;

    /// Makes the outbox writes so far durable, so the events they hold may be acked.
    /// Default: [`Store::flush`]. sled keeps the outbox in a log file of its own and syncs
    /// only that (one `fdatasync`).
    ///
    /// # Errors
    /// [`StoreError::Backend`]: the writes may not be durable; do not ack their events.
    fn outbox_flush(&self) -> Result<(), StoreError> {
        self.flush()
    }

    /// Up to `limit` outbox entries (pending and dead) in `(target, event_id)` order,
    /// starting after `after` (for paging).
    ///
    /// # Errors
    /// [`StoreError::Backend`]; [`StoreError::CorruptRecord`] for a damaged entry.
    fn outbox_list(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Writes the retry state of the entry `(target, event_id)`; false (nothing written)
    /// when there is no such entry. Not flushed.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn outbox_update(
        &self,
        target: &str,
        event_id: &str,
        retry: OutboxRetry,
    ) -> Result<bool, StoreError>;

    /// Removes the entries `(target, event_id)` (delivered); returns how many existed.
    /// Their dedup marks stay until they expire. Not flushed.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn outbox_remove(&self, entries: &[(String, String)]) -> Result<usize, StoreError>;

    /// Like [`Store::outbox_put`], and the new entries belong to the instance `owner`
    /// until `lease_until_ms` (unix ms), so no other instance sharing the store claims
    /// them ([`Store::outbox_claim`]) while `owner` renews its lease
    /// ([`Store::outbox_renew`]). A store one process uses (sled, the default) keeps no
    /// owner: this is [`Store::outbox_put`].
    ///
    /// # Errors
    /// As [`Store::outbox_put`].
    fn outbox_put_owned(
        &self,
        events: &[OutboxEvent],
        owner: &str,
        lease_until_ms: u64,
        mark_expires_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<bool>, StoreError> {
        let _ = (owner, lease_until_ms);
        self.outbox_put(events, mark_expires_ms, now_ms)
    }

    /// Takes up to `limit` outbox entries (pending and dead) for the instance `owner`,
    /// oldest first: those without owner (stored before owners existed, or copied by
    /// `lark-auth store migrate`) and those whose owner's lease ended before `now_ms`
    /// (the owner died or lost the store). They belong to `owner` until `lease_until_ms`
    /// (unix ms) from then on. Entries `owner` holds already are not returned. Atomic
    /// against other instances claiming at once: an entry is taken by one of them.
    ///
    /// A store one process uses (sled, the default) has nothing to share: the first
    /// `limit` entries in `(target, event_id)` order, every call ([`Store::outbox_list`]).
    ///
    /// # Errors
    /// [`StoreError::Backend`] (nothing claimed); [`StoreError::CorruptRecord`] for a
    /// damaged entry.
    fn outbox_claim(
        &self,
        owner: &str,
        lease_until_ms: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let _ = (owner, lease_until_ms, now_ms);
        self.outbox_list(None, limit)
    }

    /// Extends the lease of every outbox entry `owner` holds to `lease_until_ms` (unix
    /// ms); returns how many it holds. Renewing before the lease ends keeps the entries
    /// from being claimed by another instance. Nothing to renew on a store one process
    /// uses (sled, the default: 0).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn outbox_renew(&self, owner: &str, lease_until_ms: u64) -> Result<usize, StoreError> {
        let _ = (owner, lease_until_ms);
        Ok(0)
    }

    /// Reads a metadata record (e.g. the vault's key checks).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes a metadata record only if `name` is absent; true when written.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn put_meta_if_absent(&self, name: &str, value: &[u8]) -> Result<bool, StoreError>;

    /// Every metadata record whose name starts with `prefix`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn list_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Makes every write so far durable (fsync) and records that they were acknowledged,
    /// so that losing them later is detected at open ([`Store::detected_loss`]). Blocks
    /// until done.
    ///
    /// # Errors
    /// [`StoreError::Backend`]: the writes may not be durable; do not acknowledge them.
    fn flush(&self) -> Result<(), StoreError>;

    /// Acknowledged writes found missing when the store was opened, until
    /// [`Store::accept_loss`]. `None`: nothing missing (and always for a backend that
    /// cannot lose acknowledged writes, the default).
    fn detected_loss(&self) -> Option<LossReport> {
        None
    }

    /// Accepts the loss [`Store::detected_loss`] reported: the store's record of
    /// acknowledged writes is reset to what the data holds (flushed), so the next open
    /// finds no loss. Until then, flushes leave that record as it was. Does nothing when
    /// no loss was detected (the default).
    ///
    /// # Errors
    /// [`StoreError::Backend`]: the record could not be reset; the next open reports the
    /// loss again.
    fn accept_loss(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Starts telling `hook` about grant writes made through this store by **other
    /// processes** sharing it (PostgreSQL: `LISTEN`/`NOTIFY`; this process's own writes
    /// may be told too): `Some(key)` for a written grant, `None` when writes may have been
    /// missed (at the start of the watch and after a lost connection to the server: forget
    /// everything cached). The hook runs on the store's own thread: quick, never blocking.
    /// Returns false (and never calls the hook) for a store no other process can write
    /// (sled, the default).
    fn watch_grants(&self, hook: GrantWatchHook) -> bool {
        drop(hook);
        false
    }

    /// How many processes are using this store now, counting those that called
    /// [`Store::watch_grants`] (PostgreSQL: their notification connections, which end
    /// with their process). `None` for a store one process uses (sled, the default).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn live_instances(&self) -> Result<Option<u32>, StoreError> {
        Ok(None)
    }

    // ----- sessions shared by several instances (issue 14) -----------------------------

    /// Like [`Store::put_session`] for a session of user `open_id`, and the session
    /// belongs to the instance `holder` until `lease_until_ms` (unix ms): no other
    /// instance sharing the store carries it on
    /// ([`Store::claim_session`], [`Store::claim_lapsed_sessions`]) while `holder` renews
    /// the lease ([`Store::renew_sessions`]). A store one process uses (sled, the default)
    /// keeps no holder: this is [`Store::put_session`].
    ///
    /// # Errors
    /// As [`Store::put_session`].
    fn put_session_held(
        &self,
        session_id: &str,
        value: &[u8],
        holder: &str,
        lease_until_ms: u64,
        open_id: &str,
    ) -> Result<(), StoreError> {
        let _ = (holder, lease_until_ms, open_id);
        self.put_session(session_id, value)
    }

    /// Starts a session of user `new.open_id` held by `new.holder`, unless the user has one
    /// in flight or reached the per-user limit, in one atomic step whatever the number of
    /// instances sharing the store: of the user's sessions in flight (as
    /// [`Store::sessions_in_flight`] lists them) the first `live` accepts (given the id and
    /// the stored bytes: the caller decodes and checks the state) is returned
    /// ([`SessionStart::InFlight`]); else, when `new.limit` sessions of the user were
    /// created within `new.window_ms` before `new.now_ms`, [`SessionStart::Limited`] with
    /// the wait until the oldest leaves the window; else the session is written as by
    /// [`Store::put_session_held`], its creation time recorded, and
    /// [`SessionStart::Started`]. A store one process uses (sled, the default: the router
    /// serializes the starts and counts them itself) writes with
    /// [`Store::put_session_held`] and answers [`SessionStart::Started`].
    ///
    /// # Errors
    /// As [`Store::put_session`] (nothing written).
    fn start_session_held(
        &self,
        new: &NewHeldSession<'_>,
        live: SessionLiveCheck,
    ) -> Result<SessionStart, StoreError> {
        drop(live);
        self.put_session_held(
            new.session_id,
            new.value,
            new.holder,
            new.lease_until_ms,
            new.open_id,
        )?;
        Ok(SessionStart::Started)
    }

    /// Like [`Store::put_session`], but only while the instance `holder` holds the session
    /// (its lease may have lapsed, as long as nobody took it over): false, and nothing
    /// written, when another instance holds it now (or there is no record), so an
    /// instance that lost a session never overwrites its new holder's transitions. A store
    /// one process uses (sled, the default): [`Store::put_session`], true.
    ///
    /// # Errors
    /// As [`Store::put_session`].
    fn put_session_if_held(
        &self,
        session_id: &str,
        value: &[u8],
        holder: &str,
    ) -> Result<bool, StoreError> {
        let _ = holder;
        self.put_session(session_id, value)?;
        Ok(true)
    }

    /// The records of the sessions of user `open_id` written by
    /// [`Store::put_session_held`] and not released as finished, in id order: the user's
    /// sessions in flight on any instance (the caller checks their state). Nothing on a
    /// store one process uses (sled, the default: the router knows its own).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    #[allow(clippy::type_complexity)]
    fn sessions_in_flight(&self, open_id: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let _ = open_id;
        Ok(Vec::new())
    }

    /// Takes the lease of one session for `holder` until `lease_until_ms` when nobody
    /// holds it, its holder's lease ended before `now_ms`, or `holder` holds it already
    /// (compare-and-swap: of instances claiming at once, one wins). A store one process
    /// uses (sled, the default) has nothing to share: always [`SessionClaim::Claimed`].
    ///
    /// # Errors
    /// [`StoreError::Backend`] (nothing claimed).
    fn claim_session(
        &self,
        session_id: &str,
        holder: &str,
        lease_until_ms: u64,
        now_ms: u64,
    ) -> Result<SessionClaim, StoreError> {
        let _ = (session_id, holder, lease_until_ms, now_ms);
        Ok(SessionClaim::Claimed)
    }

    /// Takes, for `holder` until `lease_until_ms`, up to `limit` sessions still to be
    /// carried on whose holder's lease ended before `now_ms` (the holder died or stopped),
    /// and returns their records. A session released as finished
    /// ([`Store::release_session`]) is never returned. Nothing on a store one process
    /// uses (sled, the default: it resumes every stored session at start).
    ///
    /// # Errors
    /// [`StoreError::Backend`] (nothing claimed).
    #[allow(clippy::type_complexity)]
    fn claim_lapsed_sessions(
        &self,
        holder: &str,
        lease_until_ms: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let _ = (holder, lease_until_ms, now_ms, limit);
        Ok(Vec::new())
    }

    /// Extends to `lease_until_ms` the lease of every session `holder` holds and returns
    /// their ids (a session missing from the answer was taken by another instance: stop
    /// running it). Nothing on sled (the default).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn renew_sessions(&self, holder: &str, lease_until_ms: u64) -> Result<Vec<String>, StoreError> {
        let _ = (holder, lease_until_ms);
        Ok(Vec::new())
    }

    /// Gives up `holder`'s lease of one session (`None`: of every session it holds):
    /// `finished` — the session ended, nobody carries it on; else another instance may
    /// take it over at once. Returns how many leases were given up (0 on sled, the
    /// default).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn release_sessions(
        &self,
        holder: &str,
        session_id: Option<&str>,
        finished: bool,
    ) -> Result<usize, StoreError> {
        let _ = (holder, session_id, finished);
        Ok(0)
    }

    /// Hands an input for a session held by another instance (a click, an OAuth redirect)
    /// to that instance through the store: stores `payload` (sealed by the caller) in the
    /// session inbox from `sender` at `now_ms`, and wakes the session's holder
    /// ([`Store::watch_sessions`]). Returns the input's id, to read its answer by
    /// ([`Store::take_input_answer`]); `None` on a store one process uses (sled, the
    /// default: nothing to hand on).
    ///
    /// # Errors
    /// [`StoreError::Backend`], [`StoreError::InvalidKey`].
    fn put_session_input(
        &self,
        session_id: &str,
        sender: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let _ = (session_id, sender, payload, now_ms);
        Ok(None)
    }

    /// Takes up to `limit` unanswered inputs for sessions `holder` holds, oldest first:
    /// those not taken yet, and those taken by another instance that held the session
    /// before and never answered (it died after taking them; the session is `holder`'s
    /// now, so they are carried on with it). Each is taken by one call, whatever the
    /// number of instances. Nothing on sled.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn take_session_inputs(
        &self,
        holder: &str,
        limit: usize,
    ) -> Result<Vec<SessionInput>, StoreError> {
        let _ = (holder, limit);
        Ok(Vec::new())
    }

    /// Stores the answer of the taken input `id` and wakes its sender. False when the
    /// input is gone (purged). Nothing on sled.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn answer_session_input(&self, id: u64, answer: &[u8]) -> Result<bool, StoreError> {
        let _ = (id, answer);
        Ok(false)
    }

    /// The answer of input `id` once given, removing the input; `None` while unanswered.
    /// Nothing on sled.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn take_input_answer(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = id;
        Ok(None)
    }

    /// Deletes up to `limit` inputs stored before `before_ms` (answered and given up by
    /// their sender, or never taken); returns how many. Nothing on sled.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn purge_session_inputs(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let _ = (before_ms, limit);
        Ok(0)
    }

    /// Starts calling `hook` whenever something may wait for `instance` in the session
    /// inbox (an input for a session it holds, an answer to an input it sent), and once
    /// at the start of the watch and after a lost connection (look at everything then).
    /// The hook runs on the store's own thread: quick, never blocking. Returns false (and
    /// never calls the hook) on a store no other process shares (sled, the default).
    fn watch_sessions(&self, instance: &str, hook: SessionWatchHook) -> bool {
        let _ = instance;
        drop(hook);
        false
    }
}

/// Told that the session inbox may hold something for this instance; see
/// [`Store::watch_sessions`].
pub type SessionWatchHook = Box<dyn Fn() + Send + Sync>;

/// Tells whether a stored session record (id, bytes) is still in flight (not terminal);
/// see [`Store::start_session_held`]. Runs on the store's own thread: quick, no I/O.
pub type SessionLiveCheck = Arc<dyn Fn(&str, &[u8]) -> bool + Send + Sync>;

/// A new session for [`Store::start_session_held`].
#[derive(Clone, Copy)]
pub struct NewHeldSession<'a> {
    /// The session's id.
    pub session_id: &'a str,
    /// Its stored bytes.
    pub value: &'a [u8],
    /// The instance starting it (its lease holder).
    pub holder: &'a str,
    /// End of the lease, unix ms.
    pub lease_until_ms: u64,
    /// The session's user.
    pub open_id: &'a str,
    /// Now (the creation time recorded), unix ms.
    pub now_ms: u64,
    /// Most sessions of the user created within the window (`sessions.per_user_limit`).
    pub limit: usize,
    /// The window of `limit`, ms (`sessions.per_user_window_secs`).
    pub window_ms: u64,
}

impl std::fmt::Debug for NewHeldSession<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The value is sealed but large: its length only.
        f.debug_struct("NewHeldSession")
            .field("session_id", &self.session_id)
            .field("value_len", &self.value.len())
            .field("holder", &self.holder)
            .field("lease_until_ms", &self.lease_until_ms)
            .field("open_id", &self.open_id)
            .field("now_ms", &self.now_ms)
            .field("limit", &self.limit)
            .field("window_ms", &self.window_ms)
            .finish()
    }
}

/// The result of [`Store::start_session_held`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionStart {
    /// The session was written; the caller runs it.
    Started,
    /// The user has this session in flight (id, stored bytes); nothing was written.
    InFlight(String, Vec<u8>),
    /// The user reached the limit; nothing was written. Retry after this many ms (the
    /// oldest counted session leaves the window then).
    Limited {
        /// Wait, ms.
        retry_after_ms: u64,
    },
}

/// The result of [`Store::claim_session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionClaim {
    /// The caller holds the session now.
    Claimed,
    /// Another instance holds it, until `until_ms` (unix ms).
    Held {
        /// The holder's instance name.
        holder: String,
        /// The end of its lease, unix ms.
        until_ms: u64,
    },
    /// No such session.
    Missing,
}

/// An input handed to a session's holder ([`Store::take_session_inputs`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SessionInput {
    /// The input's id (for [`Store::answer_session_input`]).
    pub id: u64,
    /// The session it is for.
    pub session_id: String,
    /// The instance that received it.
    pub sender: String,
    /// The sealed input, as the sender stored it.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for SessionInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionInput")
            .field("id", &self.id)
            .field("session_id", &self.session_id)
            .field("sender", &self.sender)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Told about grant writes of other processes; see [`Store::watch_grants`].
pub type GrantWatchHook = Box<dyn Fn(Option<&GrantKey>) + Send + Sync>;
