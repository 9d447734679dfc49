//! [`SledStore`]: the embedded [`Store`] on sled 0.34.
//!
//! Trees (all keys byte strings, integers big-endian so byte order is numeric order):
//! - `grants`: `app_id 0x00 open_id` → `version u64 ‖ due_ms u64 (u64::MAX = none) ‖
//!   payload`;
//! - `grants_due`: `due_ms u64 ‖ app_id 0x00 open_id` → empty (the refresh-due index);
//! - `quarantine`: `app_id 0x00 open_id 0x00 at_ms u64` → `reason_len u16 ‖ reason ‖ raw`;
//! - `sessions`: `session_id` → value;
//! - `meta`: `name` → value;
//! - `acknowledged`: `generation` → the [`WriteMark`] of the newest [`Store::flush`]
//!   (`generation u64 ‖ at_ms u64`);
//! - trees of older vaults, moved out at open (idempotent: a crash in the middle moves
//!   them again at the next open): `dedup` ([`mark_key`]`(mark)` → `expires_ms u64 ‖
//!   value`) and `dedup_expiry`, whose marks go into the log with their values (both
//!   trees are then emptied); `outbox` (`target 0x00 event_id` → `enqueued_ms u64 ‖
//!   attempts u32 ‖ next_ms u64 ‖ dead_ms u64 ‖ type_len u16 ‖ event_type ‖ payload`),
//!   whose entries go into the log with their retry state (then emptied). Stores from
//!   before fixed-size mark keys had `marks` and `marks_expiry`: they are dropped at open,
//!   so a redelivery of an event seen before that upgrade is handled again once.
//!
//! The dedup marks and the event gateway's outbox are not in sled: they are kept in an
//! append-only log file of their own beside sled's files ([`super::outbox_log`],
//! `outbox.log`; one `write` and one `fdatasync` per group of outbox events,
//! [`Store::outbox_flush`]; one small `pwrite` per mark, not synced). [`Store::flush`]
//! syncs it too. Its index (marks, entries without their payloads) is in memory,
//! rebuilt by replaying the file at open.
//!
//! Multi-tree changes run in one sled transaction, so a crash leaves the state before or
//! after. sled allows one open handle per directory per process and across processes: a
//! second open fails with [`StoreError::Locked`]; clone the [`SledStore`] instead.
//!
//! Lost writes. sled checks each log entry when it opens and silently drops everything
//! from the first damaged one on (a torn write after `kill -9`, a disk fault, sled's files
//! restored from an older copy), so it can come back without writes it had acknowledged.
//! Every [`Store::flush`] therefore takes the next write generation, writes it into the
//! `acknowledged` tree (after every write it acknowledges, so in sled's log after them),
//! flushes sled, then records the generation in the mark file [`MARK_FILE`] next to sled's
//! files (see the `mark` module; synced; concurrent flushes share one mark write). At open a
//! mark newer than the generation sled holds means acknowledged writes are gone:
//! [`Store::detected_loss`] reports it, and flushes move neither the generation nor the
//! mark until [`Store::accept_loss`]. A vault without the file (from before marks, or new) gets one at
//! its first open. Cost per flush: one small sled insert and one 32-byte write with
//! `fdatasync`. Limit: a damaged entry that sled's log order puts after the newest
//! generation (a page its cleaner relocated there) goes unnoticed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Db, Transactional, Tree};

use super::mark::{self, MarkFile, Recorded};
use super::outbox_log::OutboxLog;
use super::{
    BackendError, CasOutcome, DueEntry, GrantKey, GrantWrite, LossReport, OutboxEntry, OutboxEvent,
    OutboxRetry, QuarantinedRecord, Store, StoreError, StoredGrant, WriteMark, mark_key,
};

/// The default size of sled's page cache (`vault.cache_mib`), MiB.
pub const DEFAULT_CACHE_MIB: u64 = 64;
/// Trees of stores from before fixed-size mark keys, dropped at open.
const OLD_MARK_TREES: [&str; 2] = ["marks", "marks_expiry"];

/// The mark file's name inside the store directory: the newest acknowledged write
/// generation, kept apart from sled's files (see the module docs). Back it up and restore
/// it together with the rest of the directory.
pub const MARK_FILE: &str = "lark-auth.acknowledged";
const GENERATION_KEY: &[u8] = b"generation";

const HEADER_LEN: usize = 16;
const NO_DUE: u64 = u64::MAX;
/// How long [`SledStore::open`] keeps retrying a locked directory before
/// [`StoreError::Locked`].
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// The sled-backed [`Store`]. Cloning is cheap (shared handles to one open database).
#[derive(Clone)]
pub struct SledStore {
    path: PathBuf,
    db: Db,
    grants: Tree,
    due: Tree,
    quarantine: Tree,
    sessions: Tree,
    meta: Tree,
    /// The event gateway's outbox and the dedup marks: a log file of their own (see
    /// [`super::outbox_log`]).
    log: Arc<OutboxLog>,
    durability: Arc<Durability>,
}

/// The bookkeeping of acknowledged writes (see the module docs).
#[derive(Debug)]
struct Durability {
    /// The `acknowledged` tree.
    tree: Tree,
    /// The last generation handed out (and written into `tree`). Held while writing it,
    /// so the value in sled only grows.
    issued: Mutex<u64>,
    /// The newest mark whose sled flush completed.
    flushed: Mutex<WriteMark>,
    /// The mark file.
    file: Mutex<MarkFile>,
    /// A loss found at open and not accepted yet: flushes leave the mark file alone.
    loss: Mutex<Option<LossReport>>,
}

/// Locks `m`, carrying on after a panic of another holder (the data are plain numbers).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn backend(op: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |e| StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

fn is_lock_error(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
                || io.to_string().contains("WouldBlock")
        }
        _ => false,
    }
}

fn check_part(what: &'static str, part: &str) -> Result<(), StoreError> {
    if part.is_empty() || part.as_bytes().contains(&0) {
        return Err(StoreError::InvalidKey { what });
    }
    Ok(())
}

fn grant_key_bytes(key: &GrantKey) -> Result<Vec<u8>, StoreError> {
    check_part("app_id", &key.app_id)?;
    check_part("open_id", &key.open_id)?;
    let mut k = Vec::with_capacity(key.app_id.len() + 1 + key.open_id.len());
    k.extend_from_slice(key.app_id.as_bytes());
    k.push(0);
    k.extend_from_slice(key.open_id.as_bytes());
    Ok(k)
}

fn parse_grant_key(bytes: &[u8]) -> Option<GrantKey> {
    let nul = bytes.iter().position(|b| *b == 0)?;
    let app_id = std::str::from_utf8(&bytes[..nul]).ok()?;
    let open_id = std::str::from_utf8(&bytes[nul + 1..]).ok()?;
    Some(GrantKey::new(app_id, open_id))
}

fn due_key(due_ms: u64, grant_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + grant_key.len());
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(grant_key);
    k
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

/// The expiry (unix ms) of a stored mark value; 0 (long expired) when the value is too
/// short to hold one.
fn mark_expiry(value: &[u8]) -> u64 {
    if value.len() >= 8 {
        u64_at(value, 0)
    } else {
        0
    }
}

/// Splits a stored grant value into (version, due, payload).
fn parse_grant_value(key: &[u8], value: &[u8]) -> Result<StoredGrant, StoreError> {
    if value.len() < HEADER_LEN {
        return Err(StoreError::CorruptRecord {
            key: String::from_utf8_lossy(key).replace('\0', "/"),
            reason: "value shorter than the store header",
        });
    }
    let due = u64_at(value, 8);
    Ok(StoredGrant {
        version: u64_at(value, 0),
        due_ms: (due != NO_DUE).then_some(due),
        payload: value[HEADER_LEN..].to_vec(),
    })
}

fn encode_grant_value(version: u64, write: &GrantWrite) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + write.payload.len());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(&write.due_ms.unwrap_or(NO_DUE).to_be_bytes());
    v.extend_from_slice(&write.payload);
    v
}

/// Why a grant transaction stopped without writing.
enum Abort {
    Conflict(Option<u64>),
    Corrupt(&'static str),
}

const OUTBOX_HEADER: usize = 8 + 4 + 8 + 8 + 2;

/// Moves the dedup marks of sled's `dedup` tree (where they were kept before the log) into
/// `log` with their values, synced, then empties `dedup` and `dedup_expiry`, flushed.
/// Idempotent like [`migrate_outbox_tree`].
fn migrate_marks(
    db: &Db,
    marks: &Tree,
    expiry: &Tree,
    log: &OutboxLog,
) -> Result<(), BackendError> {
    if marks.is_empty() && expiry.is_empty() {
        return Ok(());
    }
    let mut moved = Vec::new();
    for item in marks.iter() {
        let (k, v) = item?;
        let Ok(key) = <[u8; 16]>::try_from(k.as_ref()) else {
            continue;
        };
        let value = (v.len() > 8).then(|| v[8..].to_vec());
        moved.push((key, mark_expiry(&v), value));
    }
    log.adopt_marks(&moved)?;
    marks.clear()?;
    expiry.clear()?;
    db.flush()?;
    tracing::info!(
        moved = moved.len(),
        "dedup marks moved from sled into the outbox log"
    );
    Ok(())
}

/// Moves the entries of sled's `outbox` tree (where the outbox was kept before it had a
/// log of its own) into `log`, synced, then empties the tree, flushed. Idempotent: a crash
/// in between moves them again (an entry already in the log is replaced by the same one).
/// Their dedup marks stay in sled's `dedup` tree, which [`Store::outbox_put`] still reads.
fn migrate_outbox_tree(db: &Db, log: &OutboxLog) -> Result<(), BackendError> {
    if !db.tree_names().iter().any(|n| n.as_ref() == b"outbox") {
        return Ok(());
    }
    let tree = db.open_tree("outbox")?;
    if tree.is_empty() {
        return Ok(());
    }
    let mut entries = Vec::new();
    let mut damaged = 0usize;
    for item in tree.iter() {
        let (k, v) = item?;
        match parse_outbox(&k, &v) {
            Ok(e) => entries.push(e),
            Err(_) => damaged += 1,
        }
    }
    log.adopt(&entries)?;
    tree.clear()?;
    db.flush()?;
    tracing::info!(
        moved = entries.len(),
        damaged_dropped = damaged,
        "outbox entries moved from sled into the outbox log"
    );
    Ok(())
}

#[cfg(test)]
fn encode_outbox_value(
    enqueued_ms: u64,
    retry: OutboxRetry,
    event_type: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(OUTBOX_HEADER + event_type.len() + payload.len());
    v.extend_from_slice(&enqueued_ms.to_be_bytes());
    v.extend_from_slice(&retry.attempts.to_be_bytes());
    v.extend_from_slice(&retry.next_attempt_ms.to_be_bytes());
    v.extend_from_slice(&retry.dead_at_ms.unwrap_or(u64::MAX).to_be_bytes());
    let type_len = event_type.len().min(u16::MAX as usize);
    v.extend_from_slice(&(type_len as u16).to_be_bytes());
    v.extend_from_slice(&event_type.as_bytes()[..type_len]);
    v.extend_from_slice(payload);
    v
}

fn parse_outbox(key: &[u8], value: &[u8]) -> Result<OutboxEntry, StoreError> {
    let corrupt = |reason| StoreError::CorruptRecord {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        reason,
    };
    let split = key
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| corrupt("outbox key without separator"))?;
    if value.len() < OUTBOX_HEADER {
        return Err(corrupt("outbox entry shorter than its header"));
    }
    let type_len = u16::from_be_bytes([value[28], value[29]]) as usize;
    if value.len() < OUTBOX_HEADER + type_len {
        return Err(corrupt("outbox entry shorter than its event type"));
    }
    let dead = u64_at(value, 20);
    Ok(OutboxEntry {
        target: String::from_utf8_lossy(&key[..split]).into_owned(),
        event_id: String::from_utf8_lossy(&key[split + 1..]).into_owned(),
        event_type: String::from_utf8_lossy(&value[OUTBOX_HEADER..OUTBOX_HEADER + type_len])
            .into_owned(),
        payload: value[OUTBOX_HEADER + type_len..].to_vec(),
        enqueued_ms: u64_at(value, 0),
        attempts: u32::from_be_bytes([value[8], value[9], value[10], value[11]]),
        next_attempt_ms: u64_at(value, 12),
        dead_at_ms: (dead != u64::MAX).then_some(dead),
    })
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`. Blocks up to [`LOCK_WAIT`] while
    /// the directory is locked (a handle being dropped releases its lock a moment later).
    /// Compares the newest write generation sled holds with the mark file [`MARK_FILE`]:
    /// a loss of acknowledged writes is not an error here but is reported by
    /// [`Store::detected_loss`] (nothing is written then). Without a mark file (a new
    /// store, or one from before marks), creates it.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another handle (another lark-auth process, or a second
    /// open in this process) holds the directory; [`StoreError::Open`] for any other
    /// failure (permissions, damaged files, an unreadable mark file).
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore, StoreError> {
        SledStore::open_with_cache(path, DEFAULT_CACHE_MIB << 20)
    }

    /// [`SledStore::open`] with sled's page cache capped at `cache_bytes`
    /// (`cache_capacity`): the records read or written recently stay in memory up to about
    /// that much; less memory means more reads from disk for records not in it.
    ///
    /// # Errors
    /// As [`SledStore::open`].
    pub fn open_with_cache(
        path: impl AsRef<Path>,
        cache_bytes: u64,
    ) -> Result<SledStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new()
                .path(&path)
                .cache_capacity(cache_bytes)
                .open()
            {
                Ok(db) => break db,
                // sled's background I/O threads can hold the previous handle's file lock
                // for a moment after it was dropped (seen as flaky reopen in tests), so a
                // lock is retried briefly before it is reported.
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(e) if is_lock_error(&e) => {
                    return Err(StoreError::Locked { path: path.clone() });
                }
                Err(e) => {
                    return Err(StoreError::Open {
                        path: path.clone(),
                        source: Box::new(e),
                    });
                }
            }
        };
        let tree = |name: &str| {
            db.open_tree(name).map_err(|e| StoreError::Open {
                path: path.clone(),
                source: Box::new(e),
            })
        };
        let acknowledged = tree("acknowledged")?;
        let open_error = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.clone(),
            source: e,
        };
        let found = acknowledged
            .get(GENERATION_KEY)
            .map_err(|e| open_error(Box::new(e)))?
            .and_then(|v| mark::from_value(&v));
        let mark_path = path.join(MARK_FILE);
        let recorded = mark::read(&mark_path).map_err(|e| open_error(Box::new(e)))?;
        let found_generation = found.map_or(0, |m| m.generation);
        let loss = match recorded {
            Recorded::Missing => None,
            Recorded::Found(m) if m.generation <= found_generation => None,
            Recorded::Found(m) => Some(Some(m)),
            Recorded::Damaged => Some(None),
        }
        .map(|acknowledged| LossReport {
            location: path.display().to_string(),
            acknowledged,
            found,
        });
        let initial = found.unwrap_or(WriteMark {
            generation: 0,
            at_ms: now_ms(),
        });
        let file =
            MarkFile::open(&mark_path, recorded, initial).map_err(|e| open_error(Box::new(e)))?;
        let durability = Arc::new(Durability {
            tree: acknowledged,
            issued: Mutex::new(found_generation.max(recorded.generation())),
            flushed: Mutex::new(initial),
            file: Mutex::new(file),
            loss: Mutex::new(loss),
        });
        for old in OLD_MARK_TREES {
            if db.tree_names().iter().any(|n| n.as_ref() == old.as_bytes()) {
                db.drop_tree(old).map_err(|e| open_error(Box::new(e)))?;
                tracing::info!(tree = old, "dedup marks of the old format dropped");
            }
        }
        let marks = tree("dedup")?;
        let marks_expiry = tree("dedup_expiry")?;
        let log = Arc::new(OutboxLog::open(&path)?);
        migrate_outbox_tree(&db, &log).map_err(open_error)?;
        migrate_marks(&db, &marks, &marks_expiry, &log).map_err(open_error)?;
        Ok(SledStore {
            durability,
            grants: tree("grants")?,
            due: tree("grants_due")?,
            quarantine: tree("quarantine")?,
            sessions: tree("sessions")?,
            meta: tree("meta")?,
            log,
            db,
            path,
        })
    }

    /// The directory this store was opened in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes without blocking the calling task: resolves once the writes so far are
    /// durable. Unlike [`Store::flush`], it does not record them as acknowledged, so their
    /// later loss goes unnoticed: acknowledge writes after [`Store::flush`].
    ///
    /// # Errors
    /// [`StoreError::Backend`]: the writes may not be durable.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(backend("flush_async"))
    }
}

impl Store for SledStore {
    fn get_grant(&self, key: &GrantKey) -> Result<Option<StoredGrant>, StoreError> {
        let k = grant_key_bytes(key)?;
        match self.grants.get(&k).map_err(backend("get_grant"))? {
            None => Ok(None),
            Some(v) => parse_grant_value(&k, &v).map(Some),
        }
    }

    fn compare_and_swap_grant(
        &self,
        key: &GrantKey,
        expected_version: Option<u64>,
        new: Option<GrantWrite>,
    ) -> Result<CasOutcome, StoreError> {
        let k = grant_key_bytes(key)?;
        let result = (&self.grants, &self.due).transaction(|(grants, due)| {
            let current = match grants.get(&k)? {
                None => None,
                Some(v) => match parse_grant_value(&k, &v) {
                    Ok(g) => Some(g),
                    Err(_) => {
                        return Err(ConflictableTransactionError::Abort(Abort::Corrupt(
                            "value shorter than the store header",
                        )));
                    }
                },
            };
            let current_version = current.as_ref().map(|g| g.version);
            if current_version != expected_version {
                return Err(ConflictableTransactionError::Abort(Abort::Conflict(
                    current_version,
                )));
            }
            if let Some(due_ms) = current.as_ref().and_then(|g| g.due_ms) {
                due.remove(due_key(due_ms, &k))?;
            }
            match &new {
                None => {
                    grants.remove(k.as_slice())?;
                    Ok(0)
                }
                Some(write) => {
                    let version = current_version.unwrap_or(0) + 1;
                    grants.insert(k.as_slice(), encode_grant_value(version, write))?;
                    if let Some(due_ms) = write.due_ms {
                        due.insert(due_key(due_ms, &k), &[] as &[u8])?;
                    }
                    Ok(version)
                }
            }
        });
        match result {
            Ok(version) => Ok(CasOutcome::Swapped { version }),
            Err(TransactionError::Abort(Abort::Conflict(current))) => {
                Ok(CasOutcome::Conflict { current })
            }
            Err(TransactionError::Abort(Abort::Corrupt(reason))) => {
                Err(StoreError::CorruptRecord {
                    key: key.to_string(),
                    reason,
                })
            }
            Err(TransactionError::Storage(e)) => Err(backend("compare_and_swap_grant")(e)),
        }
    }

    fn list_grants(
        &self,
        app_id: &str,
        after_open_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(GrantKey, Result<StoredGrant, StoreError>)>, StoreError> {
        check_part("app_id", app_id)?;
        let mut prefix = app_id.as_bytes().to_vec();
        prefix.push(0);
        let mut start = prefix.clone();
        if let Some(after) = after_open_id {
            start.extend_from_slice(after.as_bytes());
            // The smallest key strictly greater than `prefix ‖ after`.
            start.push(0);
        }
        let mut out = Vec::new();
        for item in self.grants.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(backend("list_grants"))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some(key) = parse_grant_key(&k) else {
                continue;
            };
            out.push((key, parse_grant_value(&k, &v)));
        }
        Ok(out)
    }

    fn due_grants(&self, until_ms: u64, limit: usize) -> Result<Vec<DueEntry>, StoreError> {
        let end = (until_ms.saturating_add(1)).to_be_bytes();
        let mut out = Vec::new();
        for item in self.due.range(..end.as_slice()) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(backend("due_grants"))?;
            if k.len() < 8 {
                continue;
            }
            if let Some(key) = parse_grant_key(&k[8..]) {
                out.push(DueEntry {
                    due_ms: u64_at(&k, 0),
                    key,
                });
            }
        }
        Ok(out)
    }

    fn quarantine_grant(
        &self,
        key: &GrantKey,
        reason: &str,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let k = grant_key_bytes(key)?;
        let reason = &reason.as_bytes()[..reason.len().min(u16::MAX as usize)];
        let result =
            (&self.grants, &self.due, &self.quarantine).transaction(|(grants, due, quarantine)| {
                let Some(raw) = grants.remove(k.as_slice())? else {
                    return Ok(false);
                };
                if let Ok(StoredGrant {
                    due_ms: Some(due_ms),
                    ..
                }) = parse_grant_value(&k, &raw)
                {
                    due.remove(due_key(due_ms, &k))?;
                }
                let mut qk = k.clone();
                qk.push(0);
                qk.extend_from_slice(&at_ms.to_be_bytes());
                let mut qv = Vec::with_capacity(2 + reason.len() + raw.len());
                qv.extend_from_slice(&(reason.len() as u16).to_be_bytes());
                qv.extend_from_slice(reason);
                qv.extend_from_slice(&raw);
                quarantine.insert(qk, qv)?;
                Ok(true)
            });
        result.map_err(|e: TransactionError<()>| match e {
            TransactionError::Storage(e) => backend("quarantine_grant")(e),
            TransactionError::Abort(()) => unreachable!("the quarantine transaction never aborts"),
        })
    }

    fn quarantined(&self) -> Result<Vec<QuarantinedRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.quarantine.iter() {
            let (k, v) = item.map_err(backend("quarantined"))?;
            if k.len() < 9 || v.len() < 2 {
                continue;
            }
            let Some(key) = parse_grant_key(&k[..k.len() - 9]) else {
                continue;
            };
            let reason_len = u16::from_be_bytes([v[0], v[1]]) as usize;
            if v.len() < 2 + reason_len {
                continue;
            }
            out.push(QuarantinedRecord {
                key,
                at_ms: u64_at(&k, k.len() - 8),
                reason: String::from_utf8_lossy(&v[2..2 + reason_len]).into_owned(),
                raw: v[2 + reason_len..].to_vec(),
            });
        }
        Ok(out)
    }

    fn put_session(&self, session_id: &str, value: &[u8]) -> Result<(), StoreError> {
        check_part("session_id", session_id)?;
        self.sessions
            .insert(session_id.as_bytes(), value)
            .map(|_| ())
            .map_err(backend("put_session"))
    }

    fn get_session(&self, session_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.sessions
            .get(session_id.as_bytes())
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(backend("get_session"))
    }

    fn delete_session(&self, session_id: &str) -> Result<bool, StoreError> {
        self.sessions
            .remove(session_id.as_bytes())
            .map(|v| v.is_some())
            .map_err(backend("delete_session"))
    }

    fn list_sessions(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.sessions
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(backend("list_sessions"))?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    fn mark_once(&self, mark: &[u8], expires_at_ms: u64, now_ms: u64) -> Result<bool, StoreError> {
        self.log.mark_once(mark_key(mark), expires_at_ms, now_ms)
    }

    fn mark_value(&self, mark: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.log.mark_value(&mark_key(mark), now_ms))
    }

    fn set_mark_value(&self, mark: &[u8], value: &[u8], now_ms: u64) -> Result<bool, StoreError> {
        self.log.set_mark_value(mark_key(mark), value, now_ms)
    }

    fn purge_marks(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        self.log.purge(now_ms, limit)
    }

    fn trim_marks(&self, max_marks: u64, limit: usize) -> Result<usize, StoreError> {
        self.log.trim(max_marks, limit)
    }

    fn mark_count(&self) -> Result<u64, StoreError> {
        Ok(self.log.mark_count())
    }

    fn disk_bytes(&self) -> Result<Option<u64>, StoreError> {
        self.db
            .size_on_disk()
            .map(|sled| Some(sled + self.log.disk_bytes()))
            .map_err(backend("disk_bytes"))
    }

    fn outbox_put(
        &self,
        events: &[OutboxEvent],
        mark_expires_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<bool>, StoreError> {
        for e in events {
            check_part("event_id", &e.event_id)?;
            for t in &e.targets {
                check_part("target", t)?;
            }
        }
        self.log.put(events, &[], mark_expires_ms, now_ms)
    }

    fn outbox_flush(&self) -> Result<(), StoreError> {
        self.log.sync()
    }

    fn outbox_list(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        if let Some((target, event_id)) = after {
            check_part("target", target)?;
            check_part("event_id", event_id)?;
        }
        self.log.list(after, limit)
    }

    fn outbox_update(
        &self,
        target: &str,
        event_id: &str,
        retry: OutboxRetry,
    ) -> Result<bool, StoreError> {
        check_part("target", target)?;
        check_part("event_id", event_id)?;
        self.log.update(target, event_id, retry)
    }

    fn outbox_remove(&self, entries: &[(String, String)]) -> Result<usize, StoreError> {
        for (target, event_id) in entries {
            check_part("target", target)?;
            check_part("event_id", event_id)?;
        }
        self.log.remove(entries, now_ms())
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta
            .get(name.as_bytes())
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(backend("get_meta"))
    }

    fn put_meta_if_absent(&self, name: &str, value: &[u8]) -> Result<bool, StoreError> {
        self.meta
            .compare_and_swap(name.as_bytes(), None as Option<&[u8]>, Some(value))
            .map_err(backend("put_meta_if_absent"))
            .map(|r| r.is_ok())
    }

    fn list_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.meta
            .scan_prefix(prefix.as_bytes())
            .map(|item| {
                let (k, v) = item.map_err(backend("list_meta"))?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.log.sync()?;
        let d = &self.durability;
        if lock(&d.loss).is_some() {
            // Neither generation nor mark moves: the loss stays visible until accepted.
            return self.db.flush().map(|_| ()).map_err(backend("flush"));
        }
        let mark = {
            let mut issued = lock(&d.issued);
            let mark = WriteMark {
                generation: *issued + 1,
                at_ms: now_ms(),
            };
            d.tree
                .insert(GENERATION_KEY, &mark::to_value(mark))
                .map_err(backend("flush"))?;
            *issued = mark.generation;
            mark
        };
        self.db.flush().map_err(backend("flush"))?;
        {
            let mut flushed = lock(&d.flushed);
            *flushed = (*flushed).max(mark);
        }
        let mut file = lock(&d.file);
        let newest = *lock(&d.flushed);
        file.record(newest).map_err(|e| StoreError::Backend {
            op: "flush (mark file)",
            source: Box::new(e),
        })
    }

    fn detected_loss(&self) -> Option<LossReport> {
        lock(&self.durability.loss).clone()
    }

    fn accept_loss(&self) -> Result<(), StoreError> {
        let Some(loss) = lock(&self.durability.loss).take() else {
            return Ok(());
        };
        // The next generation is above the recorded mark: the flush records it.
        self.flush().inspect_err(|_| {
            *lock(&self.durability.loss) = Some(loss);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::outbox_mark;
    use super::*;

    fn write(payload: &[u8], due_ms: Option<u64>) -> Option<GrantWrite> {
        Some(GrantWrite {
            payload: payload.to_vec(),
            due_ms,
        })
    }

    #[test]
    fn a_second_open_of_the_same_path_is_a_clear_locked_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, StoreError::Locked { path } if path == dir.path()),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("another lark-auth"), "{text}");
    }

    /// Copies the files of directory `from` into `to` (created), recursively.
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    fn grant(store: &SledStore, open_id: &str) {
        store
            .compare_and_swap_grant(&GrantKey::new("cli_a", open_id), None, write(b"g", None))
            .unwrap();
    }

    #[test]
    fn a_new_store_and_one_from_before_marks_open_without_loss_and_get_a_mark() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(store.detected_loss(), None);
            assert!(dir.path().join(MARK_FILE).exists());
            grant(&store, "ou_1");
            store.flush().unwrap();
        }
        // A vault written before marks existed: no file.
        std::fs::remove_file(dir.path().join(MARK_FILE)).unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(store.detected_loss(), None);
            assert!(dir.path().join(MARK_FILE).exists(), "written at first open");
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.detected_loss(), None);
        assert!(
            store
                .get_grant(&GrantKey::new("cli_a", "ou_1"))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn older_sled_files_under_a_newer_mark_are_a_loss_until_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let old = dir.path().join("old");
        {
            let store = SledStore::open(&live).unwrap();
            grant(&store, "ou_1");
            store.flush().unwrap();
        }
        copy_dir(&live, &old);
        {
            let store = SledStore::open(&live).unwrap();
            grant(&store, "ou_2");
            store.flush().unwrap();
            store.put_session("as_1", b"s").unwrap();
            store.flush().unwrap();
        }
        // sled's files from the older copy, the mark file of the newer state.
        std::fs::copy(live.join(MARK_FILE), old.join(MARK_FILE)).unwrap();
        {
            let store = SledStore::open(&old).unwrap();
            let loss = store.detected_loss().expect("loss detected");
            let (acknowledged, found) = (loss.acknowledged.unwrap(), loss.found.unwrap());
            assert!(acknowledged.generation > found.generation, "{loss:?}");
            assert_eq!(loss.location, old.display().to_string());
            let line = loss.to_string();
            assert!(line.contains("lost acknowledged writes"), "{line}");
            assert!(!line.contains('\n'), "{line}");
            // sled itself opened fine and is missing the newer writes.
            assert!(
                store
                    .get_grant(&GrantKey::new("cli_a", "ou_2"))
                    .unwrap()
                    .is_none()
            );
            // Flushes before the loss is accepted leave the mark as it was.
            store.flush().unwrap();
        }
        let store = SledStore::open(&old).unwrap();
        assert!(
            store.detected_loss().is_some(),
            "reported again until accepted"
        );
        store.accept_loss().unwrap();
        assert_eq!(store.detected_loss(), None);
        drop(store);
        let store = SledStore::open(&old).unwrap();
        assert_eq!(store.detected_loss(), None, "accepted for good");
        assert!(
            store
                .get_grant(&GrantKey::new("cli_a", "ou_1"))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_damaged_log_tail_that_sled_opens_without_error_is_a_loss() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            for i in 0..50 {
                grant(&store, &format!("ou_{i:03}"));
            }
            store.flush().unwrap();
            for i in 50..100 {
                grant(&store, &format!("ou_{i:03}"));
            }
            store.flush().unwrap();
        }
        // Cut sled's log inside the second batch (a torn tail).
        let log = dir.path().join("db");
        let len = std::fs::metadata(&log).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(len * 3 / 4)
            .unwrap();
        let store = SledStore::open(dir.path()).expect("sled opens without error");
        let kept = store.list_grants("cli_a", None, 1000).unwrap().len();
        assert!((50..100).contains(&kept), "sled dropped the tail: {kept}");
        let loss = store.detected_loss().expect("the loss is noticed");
        assert!(
            loss.found.is_some() && loss.acknowledged.is_some(),
            "{loss:?}"
        );
    }

    #[test]
    fn marks_of_the_old_format_are_dropped_at_open_and_keys_are_fixed_size() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let old = db.open_tree("marks").unwrap();
            old.insert(b"event/ev_1", &u64::MAX.to_be_bytes()).unwrap();
            db.open_tree("marks_expiry").unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let names = store.db.tree_names();
        assert!(!names.iter().any(|n| n.as_ref() == b"marks"), "dropped");
        assert!(!names.iter().any(|n| n.as_ref() == b"marks_expiry"));
        assert_eq!(store.mark_count().unwrap(), 0);
        // Seen before the upgrade: new again, once.
        let long = format!("event/{}", "e".repeat(200));
        assert!(store.mark_once(b"event/ev_1", 1_000, 0).unwrap());
        assert!(store.mark_once(long.as_bytes(), 1_000, 0).unwrap());
        assert!(!store.mark_once(b"event/ev_1", 1_000, 0).unwrap());
        for key in store.db.open_tree("dedup").unwrap().iter().keys() {
            assert_eq!(key.unwrap().len(), 16);
        }
        for key in store.db.open_tree("dedup_expiry").unwrap().iter().keys() {
            assert_eq!(key.unwrap().len(), 8 + 16);
        }
        assert_eq!(store.mark_count().unwrap(), 2);
        assert!(store.disk_bytes().unwrap().unwrap() > 0);
    }

    fn outbox_event(event_id: &str, target: &str) -> OutboxEvent {
        OutboxEvent {
            event_id: event_id.into(),
            event_type: "im.message.receive_v1".into(),
            targets: vec![target.into()],
            payload: event_id.as_bytes().to_vec(),
        }
    }

    /// A vault from before the outbox log: its `outbox` tree's entries (pending and dead)
    /// move into the log at open, once, and the marks sled holds still catch redeliveries.
    #[test]
    fn outbox_entries_kept_in_sled_move_into_the_log_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = "http://127.0.0.1:9/a";
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("outbox").unwrap();
            let pending = OutboxRetry {
                attempts: 2,
                next_attempt_ms: 3_000,
                dead_at_ms: None,
            };
            let dead = OutboxRetry {
                attempts: 9,
                next_attempt_ms: u64::MAX,
                dead_at_ms: Some(4_000),
            };
            for (id, retry) in [("ev_1", pending), ("ev_2", dead)] {
                let mut k = t.as_bytes().to_vec();
                k.push(0);
                k.extend_from_slice(id.as_bytes());
                tree.insert(
                    k,
                    encode_outbox_value(1_000, retry, "im.message.receive_v1", id.as_bytes()),
                )
                .unwrap();
            }
            let expiry = u64::MAX - 1;
            let dedup = db.open_tree("dedup").unwrap();
            dedup
                .insert(mark_key(&outbox_mark("ev_1")), &expiry.to_be_bytes())
                .unwrap();
            let mut with_value = expiry.to_be_bytes().to_vec();
            with_value.extend_from_slice(b"answer");
            dedup
                .insert(mark_key(b"event/ev_click"), with_value)
                .unwrap();
            db.flush().unwrap();
        }
        for _ in 0..2 {
            let store = SledStore::open(dir.path()).unwrap();
            let all = store.outbox_list(None, 10).unwrap();
            assert_eq!(all.len(), 2);
            assert_eq!((all[0].event_id.as_str(), all[0].attempts), ("ev_1", 2));
            assert_eq!(all[0].payload, b"ev_1");
            assert_eq!(all[1].dead_at_ms, Some(4_000));
            assert!(store.db.open_tree("outbox").unwrap().is_empty());
            assert_eq!(
                store
                    .outbox_put(&[outbox_event("ev_1", t)], u64::MAX, 5_000)
                    .unwrap(),
                [false],
                "the mark moved from sled still dedups"
            );
            assert_eq!(
                store
                    .mark_value(b"event/ev_click", 5_000)
                    .unwrap()
                    .as_deref(),
                Some(&b"answer"[..]),
                "a mark's value moves with it"
            );
            assert!(store.db.open_tree("dedup").unwrap().is_empty());
            assert_eq!(store.mark_count().unwrap(), 2);
        }
    }

    /// The store is dropped without `flush` (as at `kill -9` after the ack): the group
    /// synced by `outbox_flush` is there, and a redelivery is not taken again.
    #[test]
    fn outbox_entries_and_marks_survive_a_stop_without_flush() {
        let dir = tempfile::tempdir().unwrap();
        let t = "http://127.0.0.1:9/a";
        // Marks alive whatever the clock (the log drops expired marks at open by it).
        const FAR: u64 = u64::MAX / 2;
        {
            let store = SledStore::open(dir.path()).unwrap();
            let stored = store
                .outbox_put(
                    &[outbox_event("ev_1", t), outbox_event("ev_2", t)],
                    FAR,
                    1_000,
                )
                .unwrap();
            assert_eq!(stored, [true, true]);
            store.outbox_flush().unwrap();
            assert_eq!(
                store.outbox_remove(&[(t.into(), "ev_1".into())]).unwrap(),
                1
            );
            assert_eq!(store.mark_count().unwrap(), 2);
        }
        let store = SledStore::open(dir.path()).unwrap();
        let left: Vec<String> = store
            .outbox_list(None, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(left, ["ev_2"]);
        assert_eq!(
            store
                .outbox_put(
                    &[outbox_event("ev_1", t), outbox_event("ev_2", t)],
                    FAR,
                    2_000
                )
                .unwrap(),
            [false, false]
        );
        assert_eq!(store.mark_count().unwrap(), 2);
        assert!(dir.path().join(super::super::OUTBOX_LOG_FILE).exists());
    }

    #[test]
    fn a_damaged_mark_file_is_reported_as_a_possible_loss() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        std::fs::write(dir.path().join(MARK_FILE), [0x55u8; 64]).unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let loss = store.detected_loss().expect("cannot be told");
        assert_eq!(loss.acknowledged, None);
        assert!(loss.to_string().contains("cannot tell"), "{loss}");
        store.accept_loss().unwrap();
        drop(store);
        assert_eq!(SledStore::open(dir.path()).unwrap().detected_loss(), None);
    }
}
