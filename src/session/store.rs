//! Session persistence: the sealed codec of a [`SessionRecord`] and the SessionStoreActor
//! that writes records, dedup marks and prunes through the [`Store`] trait.
//!
//! Accepts: [`PutSession`], [`LoadSession`], [`LoadSessions`], [`PruneSessions`],
//! [`MarkOnce`], [`ClaimClick`], [`KeepClickAnswer`], [`PurgeMarks`], [`TidyStore`],
//! [`FlushSessions`]. Sends nothing. A second instance, the janitor
//! ([`SessionStoreActor::start_janitor`], own thread), takes the upkeep rounds. Its companion, the
//! [`SessionFlusher`] (own thread), accepts [`FlushThrough`]: it makes a given write
//! durable, one fsync for every write made before it (group commit).
//!
//! Encoding (format 1): `0x01 ‖ u32 len ‖ clear JSON ‖ flag` and, when the record holds a
//! secret (device code, PKCE `code_verifier`), `‖ u32 key id ‖ sealed JSON` sealed with
//! the vault keyring's current key (XChaCha20-Poly1305, [`crate::vault::seal`]), bound to
//! the session id and the clear part. The clear part is the record's serde form, whose
//! secrets are redacted, so nothing secret is ever written in clear.
//!
//! Threading: the store blocks, so the actor runs on a one-thread `SyncArbiter`. One
//! thread also keeps writes in the order they were sent: a session's transitions reach the
//! store in the order the session made them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::events::{MarkFailed, SetMarkOnce};
use crate::protocol::event::CardActionResponse;
use crate::secret::Secret;
use crate::store::{SessionClaim, Store, StoreError};
use crate::vault::seal::{self, KeyId, Keyring, VaultKey};

use super::machine::SessionRecord;

/// Format byte of an encoded session record.
pub const SESSION_FORMAT_V1: u8 = 1;

/// Errors of session persistence.
#[derive(Debug, thiserror::Error)]
pub enum SessionStoreError {
    /// The store failed (I/O, disk full): the transition was not recorded; the session
    /// keeps its previous state.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record cannot be read (damaged bytes, unknown format, tag mismatch). It is
    /// skipped; delete it by id once inspected.
    #[error("session {session_id} unreadable: {reason}")]
    Corrupt {
        /// The record's id.
        session_id: String,
        /// What is wrong.
        reason: String,
    },
    /// The record was sealed with a key id that the keyring does not hold: add the old key
    /// to the keyring's `old` keys.
    #[error("session {session_id} sealed with key {key_id}, not in the keyring")]
    UnknownKey {
        /// The record's id.
        session_id: String,
        /// The key id named by the record.
        key_id: KeyId,
    },
    /// The keyring lists a key id twice.
    #[error("the keyring lists a key id twice")]
    BadKeyring,
    /// The session store's thread is gone (the service is stopping).
    #[error("the session store is stopped")]
    Stopped,
    /// Shared store: another instance holds the session now (this one's lease lapsed and
    /// it was taken over); nothing was written. Stop running the session here.
    #[error("session {session_id} is held by another instance now")]
    NotHolder {
        /// The session.
        session_id: String,
    },
}

#[derive(Serialize, Deserialize, Default)]
struct Sealed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code_verifier: Option<String>,
}

fn aad(session_id: &str, clear: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(24 + session_id.len() + clear.len());
    aad.extend_from_slice(b"lark-auth/session/v1\0");
    aad.extend_from_slice(session_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(clear);
    aad
}

/// Encodes and decodes session records with their secrets sealed.
#[derive(Debug, Clone)]
pub struct SessionCodec {
    current: (KeyId, VaultKey),
    keys: Arc<BTreeMap<KeyId, VaultKey>>,
}

impl SessionCodec {
    /// A codec sealing with `keyring.current` and opening with any keyring key.
    ///
    /// # Errors
    /// [`SessionStoreError::BadKeyring`] when a key id is listed twice.
    pub fn new(keyring: &Keyring) -> Result<SessionCodec, SessionStoreError> {
        let keys = keyring.index().map_err(|_| SessionStoreError::BadKeyring)?;
        Ok(SessionCodec {
            current: keyring.current.clone(),
            keys: Arc::new(keys),
        })
    }

    /// The stored bytes of `record`.
    pub fn encode(&self, record: &SessionRecord) -> Vec<u8> {
        let clear = serde_json::to_vec(record).expect("a session record always serializes");
        let secrets = Sealed {
            device_code: record
                .device
                .as_ref()
                .map(|d| d.device_code.expose().clone()),
            code_verifier: record
                .code_flow
                .as_ref()
                .map(|c| c.code_verifier.expose().clone()),
        };
        let mut out = Vec::with_capacity(96 + clear.len());
        out.push(SESSION_FORMAT_V1);
        out.extend_from_slice(&(clear.len() as u32).to_be_bytes());
        out.extend_from_slice(&clear);
        if secrets.device_code.is_none() && secrets.code_verifier.is_none() {
            out.push(0);
            return out;
        }
        out.push(1);
        let plaintext = serde_json::to_vec(&secrets).expect("secrets serialize");
        let (key_id, key) = &self.current;
        out.extend_from_slice(&key_id.to_be_bytes());
        out.extend_from_slice(&seal::seal(
            key,
            &aad(&record.session_id, &clear),
            &plaintext,
        ));
        out
    }

    /// Reads the clear part only (no key needed): for listings and pruning.
    ///
    /// # Errors
    /// [`SessionStoreError::Corrupt`].
    pub fn decode_clear(
        session_id: &str,
        bytes: &[u8],
    ) -> Result<SessionRecord, SessionStoreError> {
        let (clear, _) = split(session_id, bytes)?;
        serde_json::from_slice(clear).map_err(|e| corrupt(session_id, &e.to_string()))
    }

    /// Decodes a stored record with its secrets.
    ///
    /// # Errors
    /// [`SessionStoreError::Corrupt`], [`SessionStoreError::UnknownKey`].
    pub fn decode(
        &self,
        session_id: &str,
        bytes: &[u8],
    ) -> Result<SessionRecord, SessionStoreError> {
        let (clear, rest) = split(session_id, bytes)?;
        let mut record: SessionRecord =
            serde_json::from_slice(clear).map_err(|e| corrupt(session_id, &e.to_string()))?;
        if record.session_id != session_id {
            return Err(corrupt(session_id, "stored under another id"));
        }
        let secrets = match rest.split_first() {
            Some((0, [])) => Sealed::default(),
            Some((1, sealed)) => {
                let (id, sealed) = sealed
                    .split_first_chunk::<4>()
                    .ok_or_else(|| corrupt(session_id, "truncated key id"))?;
                let key_id = KeyId::from_be_bytes(*id);
                let key = self
                    .keys
                    .get(&key_id)
                    .ok_or_else(|| SessionStoreError::UnknownKey {
                        session_id: session_id.to_string(),
                        key_id,
                    })?;
                let plain = seal::open(key, &aad(session_id, clear), sealed)
                    .ok_or_else(|| corrupt(session_id, "sealed part does not verify"))?;
                serde_json::from_slice(&plain).map_err(|e| corrupt(session_id, &e.to_string()))?
            }
            _ => return Err(corrupt(session_id, "bad secrets flag")),
        };
        if let Some(device) = record.device.as_mut() {
            let code = secrets
                .device_code
                .ok_or_else(|| corrupt(session_id, "device code missing"))?;
            device.device_code = Secret::new(code);
        }
        if let Some(flow) = record.code_flow.as_mut() {
            let verifier = secrets
                .code_verifier
                .ok_or_else(|| corrupt(session_id, "code_verifier missing"))?;
            flow.code_verifier = Secret::new(verifier);
        }
        Ok(record)
    }
}

/// Format byte of a sealed relayed input.
const INPUT_FORMAT_V1: u8 = 1;

/// An input for a session held by another instance, handed to it through the store's
/// session inbox ([`RelayInput`]).
#[derive(Debug, Clone)]
pub enum RelayedInput {
    /// A click on the session's card.
    Click {
        /// `operator.open_id`.
        operator_open_id: String,
        /// Authorize (true) or Decline.
        authorize: bool,
        /// The callback's card-update token (empty when absent).
        card_token: Secret<String>,
    },
    /// The authorization-code redirect (its `state` matched and used).
    Redirect {
        /// The code, `None` for a refusal on the page.
        code: Option<Secret<String>>,
    },
}

impl RelayedInput {
    /// `click` or `redirect` (the metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            RelayedInput::Click { .. } => "click",
            RelayedInput::Redirect { .. } => "redirect",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct RelayedWire {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    operator_open_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    authorize: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    card_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
}

fn input_aad(session_id: &str) -> Vec<u8> {
    let mut aad = b"lark-auth/session-input/v1\0".to_vec();
    aad.extend_from_slice(session_id.as_bytes());
    aad
}

impl SessionCodec {
    /// The inbox bytes of `input` for `session_id`: `0x01 ‖ u32 key id ‖ sealed JSON`
    /// (the card-update token and the authorization code are secrets).
    pub fn seal_input(&self, session_id: &str, input: &RelayedInput) -> Vec<u8> {
        let wire = match input {
            RelayedInput::Click {
                operator_open_id,
                authorize,
                card_token,
            } => RelayedWire {
                kind: "click".into(),
                operator_open_id: Some(operator_open_id.clone()),
                authorize: Some(*authorize),
                card_token: Some(card_token.expose().clone()),
                code: None,
            },
            RelayedInput::Redirect { code } => RelayedWire {
                kind: "redirect".into(),
                operator_open_id: None,
                authorize: None,
                card_token: None,
                code: code.as_ref().map(|c| c.expose().clone()),
            },
        };
        let plaintext = serde_json::to_vec(&wire).expect("an input serializes");
        let (key_id, key) = &self.current;
        let mut out = vec![INPUT_FORMAT_V1];
        out.extend_from_slice(&key_id.to_be_bytes());
        out.extend_from_slice(&seal::seal(key, &input_aad(session_id), &plaintext));
        out
    }

    /// Opens inbox bytes made by [`SessionCodec::seal_input`] for `session_id`.
    ///
    /// # Errors
    /// [`SessionStoreError::Corrupt`], [`SessionStoreError::UnknownKey`].
    pub fn open_input(
        &self,
        session_id: &str,
        bytes: &[u8],
    ) -> Result<RelayedInput, SessionStoreError> {
        let Some((&INPUT_FORMAT_V1, rest)) = bytes.split_first() else {
            return Err(corrupt(session_id, "relayed input of an unknown format"));
        };
        let (id, sealed) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt(session_id, "truncated relayed input"))?;
        let key_id = KeyId::from_be_bytes(*id);
        let key = self
            .keys
            .get(&key_id)
            .ok_or_else(|| SessionStoreError::UnknownKey {
                session_id: session_id.to_string(),
                key_id,
            })?;
        let plain = seal::open(key, &input_aad(session_id), sealed)
            .ok_or_else(|| corrupt(session_id, "relayed input does not verify"))?;
        let wire: RelayedWire =
            serde_json::from_slice(&plain).map_err(|e| corrupt(session_id, &e.to_string()))?;
        match wire.kind.as_str() {
            "click" => Ok(RelayedInput::Click {
                operator_open_id: wire.operator_open_id.unwrap_or_default(),
                authorize: wire.authorize.unwrap_or(false),
                card_token: Secret::new(wire.card_token.unwrap_or_default()),
            }),
            "redirect" => Ok(RelayedInput::Redirect {
                code: wire.code.map(Secret::new),
            }),
            _ => Err(corrupt(session_id, "relayed input of an unknown kind")),
        }
    }
}

fn corrupt(session_id: &str, reason: &str) -> SessionStoreError {
    SessionStoreError::Corrupt {
        session_id: session_id.to_string(),
        reason: reason.to_string(),
    }
}

fn split<'a>(session_id: &str, bytes: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), SessionStoreError> {
    let Some((&SESSION_FORMAT_V1, rest)) = bytes.split_first() else {
        return Err(corrupt(session_id, "unknown format"));
    };
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt(session_id, "truncated"))?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(corrupt(session_id, "truncated"));
    }
    Ok(rest.split_at(len))
}

/// After an accepted loss of acknowledged writes ([`Store::accept_loss`]), ends every
/// stored session that is not terminal, before any is resumed: its newest transitions may
/// be among the lost writes, and a session that had ended (denied, authorized, expired)
/// would otherwise resume polling or re-send its card as if alive. Each becomes `expired`
/// at `now_ms` (unix ms); cards are left as they are, and the caller or the user starts a
/// new authorization. Records that cannot be opened are left alone (they are never resumed
/// either). Not flushed: flush the store afterwards. Returns how many were expired.
///
/// # Errors
/// [`SessionStoreError::BadKeyring`], [`SessionStoreError::Store`].
pub fn expire_unsure_sessions(
    store: &dyn Store,
    keyring: &Keyring,
    now_ms: u64,
) -> Result<usize, SessionStoreError> {
    let codec = SessionCodec::new(keyring)?;
    let mut expired = 0;
    for (id, bytes) in store.list_sessions()? {
        let mut record = match codec.decode(&id, &bytes) {
            Ok(record) if !record.state.is_terminal() => record,
            Ok(_) => continue,
            Err(e) => {
                warn!(session_id = %id, error = %e, "session record skipped");
                continue;
            }
        };
        record.state = super::machine::SessionState::Expired;
        record.reason = None;
        record.platform_code = None;
        record.next_poll_at_ms = None;
        record.updated_at_ms = now_ms;
        record.deadline_ms = record.deadline_ms.min(now_ms);
        store.put_session(&id, &codec.encode(&record))?;
        expired += 1;
    }
    Ok(expired)
}

// ----- messages ------------------------------------------------------------------------

/// Writes a session record (the session actor, before it performs a transition's actions;
/// the router, before it answers a new session). Not flushed: sled writes it out within
/// its flush interval; [`FlushThrough`] with the replied [`WriteSeq`] (or
/// [`FlushSessions`]) makes it durable.
#[derive(Debug, Message)]
#[rtype(result = "Result<WriteSeq, SessionStoreError>")]
pub struct PutSession {
    /// The record (secrets are sealed on the store thread).
    pub record: SessionRecord,
}

/// Reads one session record with its secrets. `Ok(None)`: no such session.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<SessionRecord>, SessionStoreError>")]
pub struct LoadSession {
    /// The session.
    pub session_id: String,
}

/// Reads every session record (on start, to resume). Unreadable records are logged and
/// skipped.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Vec<SessionRecord>, SessionStoreError>")]
pub struct LoadSessions;

/// Deletes terminal sessions last changed before `terminal_before_ms` (unix ms), at most
/// `limit` (the rest at the next round). Replies how many were deleted.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<usize, SessionStoreError>")]
pub struct PruneSessions {
    /// Cut-off, unix ms.
    pub terminal_before_ms: u64,
    /// Most sessions deleted by this call.
    pub limit: usize,
}

/// One round of the store's upkeep, every part bounded: purges up to `mark_batch` expired
/// marks ([`Store::purge_marks`]), then drops up to `mark_batch` of the oldest marks while
/// more than `max_marks` are stored ([`Store::trim_marks`]), then, when
/// `terminal_before_ms` is set, prunes up to `session_batch` terminal sessions
/// ([`PruneSessions`]); reads the mark count and the store's size on disk. Sent to the
/// janitor ([`SessionStoreActor::start_janitor`]), a thread of its own, so the round never
/// delays the marks and sessions the ack path waits for.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<TidyReport, SessionStoreError>")]
pub struct TidyStore {
    /// Now, unix ms.
    pub now_ms: u64,
    /// The cap on stored marks (`sessions.dedup_max_marks`).
    pub max_marks: u64,
    /// Most marks purged, and most dropped for the cap, by this round.
    pub mark_batch: usize,
    /// Prune terminal sessions last changed before this instant (unix ms); `None`: not
    /// in this round.
    pub terminal_before_ms: Option<u64>,
    /// Most sessions pruned by this round.
    pub session_batch: usize,
}

/// What a [`TidyStore`] round did and found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TidyReport {
    /// Expired marks purged.
    pub expired: usize,
    /// Marks dropped before their expiry because more than the cap were stored.
    pub evicted: usize,
    /// Marks stored after the round.
    pub marks: u64,
    /// Terminal sessions pruned.
    pub sessions: usize,
    /// The store's size on disk, bytes (`None`: the backend cannot tell).
    pub disk_bytes: Option<u64>,
}

/// Sets a dedup mark unless set ([`Store::mark_once`]). Replies true on first sighting.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<bool, SessionStoreError>")]
pub struct MarkOnce {
    /// The mark's key.
    pub mark: Vec<u8>,
    /// Expiry, unix ms.
    pub expires_at_ms: u64,
    /// Now, unix ms.
    pub now_ms: u64,
}

/// Claims a card click by its dedup mark: sets the mark unless set
/// ([`Store::mark_once`]), else reads the answer kept with it ([`KeepClickAnswer`]).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<ClickClaim, SessionStoreError>")]
pub struct ClaimClick {
    /// The mark's key.
    pub mark: Vec<u8>,
    /// Expiry of a new mark, unix ms.
    pub expires_at_ms: u64,
    /// Now, unix ms.
    pub now_ms: u64,
}

/// What [`ClaimClick`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum ClickClaim {
    /// First sighting: the mark is now set; handle the click.
    First,
    /// A copy of a click handled before: replay this answer.
    Answered(CardActionResponse),
    /// A copy of a click handled before whose answer was not kept (the process stopped
    /// between the mark and the answer, or the mark predates answers being kept, or the
    /// kept answer is unreadable).
    Unanswered,
}

/// Keeps the answer of a handled click with its dedup mark (same lifetime), so a
/// redelivered copy is answered the same, after a restart too. Replies false when the mark
/// is gone (expired, or its write failed). Stored as `0x01 ‖ answer JSON`, in clear: an
/// answer is what the clicking user is shown (toast, card) and holds no secret.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<bool, SessionStoreError>")]
pub struct KeepClickAnswer {
    /// The mark's key, as claimed.
    pub mark: Vec<u8>,
    /// The answer sent in the click's ack.
    pub answer: CardActionResponse,
    /// Now, unix ms.
    pub now_ms: u64,
}

/// Format byte of a kept click answer.
const CLICK_ANSWER_V1: u8 = 1;

/// Deletes up to `limit` expired marks ([`Store::purge_marks`]); replies how many.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<usize, SessionStoreError>")]
pub struct PurgeMarks {
    /// Now, unix ms.
    pub now_ms: u64,
    /// Most marks deleted by this call.
    pub limit: usize,
}

/// Makes every write so far durable (fsync).
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(), SessionStoreError>")]
pub struct FlushSessions;

/// The sequence number of a [`PutSession`] write (1, 2, … in store order).
pub type WriteSeq = u64;

/// Makes the write numbered `seq` (and every earlier one) durable. Replies once it is on
/// disk; at once when an earlier flush already covered it.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(), SessionStoreError>")]
pub struct FlushThrough {
    /// The write, as [`PutSession`] replied.
    pub seq: WriteSeq,
}

/// Write and flush positions shared by the store actor and the flusher.
#[derive(Debug, Default)]
struct Positions {
    /// Last write applied to the store.
    written: AtomicU64,
    /// Every write up to this one is durable.
    flushed: AtomicU64,
}

/// The session store actor; see the module docs.
pub struct SessionStoreActor {
    store: Arc<dyn Store>,
    codec: SessionCodec,
    positions: Arc<Positions>,
}

/// Flushes the session store on its own thread so that durable writes are group-committed:
/// a [`FlushThrough`] waits for at most one fsync that started after its write, and all the
/// writes queued meanwhile share the next one.
pub struct SessionFlusher {
    store: Arc<dyn Store>,
    positions: Arc<Positions>,
}

impl SessionStoreActor {
    /// Starts the actor on its own thread.
    pub fn start(store: Arc<dyn Store>, codec: SessionCodec) -> Addr<SessionStoreActor> {
        Self::start_with_flusher(store, codec).0
    }

    /// Starts a second actor on the same store, on its own thread, for the store's upkeep
    /// ([`TidyStore`], [`PruneSessions`], [`PurgeMarks`]): long rounds there never queue
    /// ahead of the marks and session writes of the first one.
    pub fn start_janitor(store: Arc<dyn Store>, codec: SessionCodec) -> Addr<SessionStoreActor> {
        Self::start(store, codec)
    }

    /// Starts the actor and its [`SessionFlusher`], each on its own thread.
    pub fn start_with_flusher(
        store: Arc<dyn Store>,
        codec: SessionCodec,
    ) -> (Addr<SessionStoreActor>, Addr<SessionFlusher>) {
        let positions = Arc::new(Positions::default());
        let (s, p) = (store.clone(), positions.clone());
        let flusher = SyncArbiter::start(1, move || SessionFlusher {
            store: s.clone(),
            positions: p.clone(),
        });
        let actor = SyncArbiter::start(1, move || SessionStoreActor {
            store: store.clone(),
            codec: codec.clone(),
            positions: positions.clone(),
        });
        (actor, flusher)
    }
}

impl Actor for SessionFlusher {
    type Context = SyncContext<Self>;
}

impl Handler<FlushThrough> for SessionFlusher {
    type Result = Result<(), SessionStoreError>;

    fn handle(&mut self, msg: FlushThrough, _: &mut Self::Context) -> Self::Result {
        if self.positions.flushed.load(Ordering::Acquire) >= msg.seq {
            return Ok(());
        }
        // Every write numbered up to `target` was applied before this load, so the flush
        // below covers it.
        let target = self.positions.written.load(Ordering::Acquire);
        self.store.flush()?;
        self.positions.flushed.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }
}

impl Actor for SessionStoreActor {
    type Context = SyncContext<Self>;
}

impl Handler<PutSession> for SessionStoreActor {
    type Result = Result<WriteSeq, SessionStoreError>;

    fn handle(&mut self, msg: PutSession, _: &mut Self::Context) -> Self::Result {
        let bytes = self.codec.encode(&msg.record);
        self.store.put_session(&msg.record.session_id, &bytes)?;
        // One store thread: numbers follow the order of the writes.
        Ok(self.positions.written.fetch_add(1, Ordering::AcqRel) + 1)
    }
}

impl Handler<LoadSession> for SessionStoreActor {
    type Result = Result<Option<SessionRecord>, SessionStoreError>;

    fn handle(&mut self, msg: LoadSession, _: &mut Self::Context) -> Self::Result {
        match self.store.get_session(&msg.session_id)? {
            Some(bytes) => self.codec.decode(&msg.session_id, &bytes).map(Some),
            None => Ok(None),
        }
    }
}

impl Handler<LoadSessions> for SessionStoreActor {
    type Result = Result<Vec<SessionRecord>, SessionStoreError>;

    fn handle(&mut self, _: LoadSessions, _: &mut Self::Context) -> Self::Result {
        let mut out = Vec::new();
        for (id, bytes) in self.store.list_sessions()? {
            match self.codec.decode(&id, &bytes) {
                Ok(record) => out.push(record),
                Err(e) => warn!(session_id = %id, error = %e, "session record skipped"),
            }
        }
        Ok(out)
    }
}

impl Handler<PruneSessions> for SessionStoreActor {
    type Result = Result<usize, SessionStoreError>;

    fn handle(&mut self, msg: PruneSessions, _: &mut Self::Context) -> Self::Result {
        let mut pruned = 0;
        for (id, bytes) in self.store.list_sessions()? {
            let Ok(record) = SessionCodec::decode_clear(&id, &bytes) else {
                continue;
            };
            if pruned >= msg.limit {
                break;
            }
            if record.state.is_terminal()
                && record.updated_at_ms < msg.terminal_before_ms
                && self.store.delete_session(&id)?
            {
                pruned += 1;
            }
        }
        Ok(pruned)
    }
}

impl Handler<TidyStore> for SessionStoreActor {
    type Result = Result<TidyReport, SessionStoreError>;

    fn handle(&mut self, msg: TidyStore, ctx: &mut Self::Context) -> Self::Result {
        let expired = self.store.purge_marks(msg.now_ms, msg.mark_batch)?;
        let evicted = self.store.trim_marks(msg.max_marks, msg.mark_batch)?;
        self.store
            .purge_session_inputs(msg.now_ms.saturating_sub(INPUT_KEPT_MS), msg.mark_batch)?;
        let sessions = match msg.terminal_before_ms {
            Some(terminal_before_ms) => self.handle(
                PruneSessions {
                    terminal_before_ms,
                    limit: msg.session_batch,
                },
                ctx,
            )?,
            None => 0,
        };
        Ok(TidyReport {
            expired,
            evicted,
            marks: self.store.mark_count()?,
            sessions,
            disk_bytes: self.store.disk_bytes()?,
        })
    }
}

impl Handler<MarkOnce> for SessionStoreActor {
    type Result = Result<bool, SessionStoreError>;

    fn handle(&mut self, msg: MarkOnce, _: &mut Self::Context) -> Self::Result {
        Ok(self
            .store
            .mark_once(&msg.mark, msg.expires_at_ms, msg.now_ms)?)
    }
}

impl Handler<SetMarkOnce> for SessionStoreActor {
    type Result = Result<bool, MarkFailed>;

    /// The event dispatcher's marks ([`crate::events`]).
    fn handle(&mut self, msg: SetMarkOnce, _: &mut Self::Context) -> Self::Result {
        self.store
            .mark_once(&msg.mark, msg.expires_at_ms, msg.now_ms)
            .map_err(|e| MarkFailed(e.to_string()))
    }
}

impl Handler<ClaimClick> for SessionStoreActor {
    type Result = Result<ClickClaim, SessionStoreError>;

    fn handle(&mut self, msg: ClaimClick, _: &mut Self::Context) -> Self::Result {
        if self
            .store
            .mark_once(&msg.mark, msg.expires_at_ms, msg.now_ms)?
        {
            return Ok(ClickClaim::First);
        }
        let Some(kept) = self.store.mark_value(&msg.mark, msg.now_ms)? else {
            return Ok(ClickClaim::Unanswered);
        };
        match kept.split_first() {
            Some((&CLICK_ANSWER_V1, json)) => match serde_json::from_slice(json) {
                Ok(answer) => Ok(ClickClaim::Answered(answer)),
                Err(e) => {
                    warn!(error = %e, "kept click answer unreadable; not replayed");
                    Ok(ClickClaim::Unanswered)
                }
            },
            _ => {
                warn!("kept click answer of an unknown format; not replayed");
                Ok(ClickClaim::Unanswered)
            }
        }
    }
}

impl Handler<KeepClickAnswer> for SessionStoreActor {
    type Result = Result<bool, SessionStoreError>;

    fn handle(&mut self, msg: KeepClickAnswer, _: &mut Self::Context) -> Self::Result {
        let mut value = vec![CLICK_ANSWER_V1];
        if let Err(e) = serde_json::to_writer(&mut value, &msg.answer) {
            warn!(error = %e, "click answer does not serialize; not kept");
            return Ok(false);
        }
        let kept = self
            .store
            .set_mark_value(&msg.mark, &value, msg.now_ms)
            .inspect_err(|e| warn!(error = %e, "click answer not kept"))?;
        Ok(kept)
    }
}

impl Handler<PurgeMarks> for SessionStoreActor {
    type Result = Result<usize, SessionStoreError>;

    fn handle(&mut self, msg: PurgeMarks, _: &mut Self::Context) -> Self::Result {
        Ok(self.store.purge_marks(msg.now_ms, msg.limit)?)
    }
}

impl Handler<FlushSessions> for SessionStoreActor {
    type Result = Result<(), SessionStoreError>;

    fn handle(&mut self, _: FlushSessions, _: &mut Self::Context) -> Self::Result {
        Ok(self.store.flush()?)
    }
}

/// Lists sessions from the store without opening their secrets, most recently changed
/// first: every stored session (running ones included, since each transition is stored
/// before it becomes visible; terminal ones until pruned). Unreadable records are skipped
/// with a warning.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Vec<SessionRecord>, SessionStoreError>")]
pub struct ListSessions {
    /// Only sessions in this state; `None`: all.
    pub state: Option<super::machine::SessionState>,
    /// At most this many (the most recently changed).
    pub limit: usize,
}

impl Handler<ListSessions> for SessionStoreActor {
    type Result = Result<Vec<SessionRecord>, SessionStoreError>;

    fn handle(&mut self, msg: ListSessions, _: &mut Self::Context) -> Self::Result {
        let mut out = Vec::new();
        for (id, bytes) in self.store.list_sessions()? {
            match SessionCodec::decode_clear(&id, &bytes) {
                Ok(record) if msg.state.is_none_or(|s| s == record.state) => out.push(record),
                Ok(_) => {}
                Err(e) => warn!(session_id = %id, error = %e, "session record skipped"),
            }
        }
        out.sort_unstable_by(|a, b| {
            b.updated_at_ms
                .cmp(&a.updated_at_ms)
                .then_with(|| a.session_id.cmp(&b.session_id))
        });
        out.truncate(msg.limit);
        Ok(out)
    }
}

// ----- sessions shared by several instances (issue 14) ----------------------------------

/// How long a relayed input stays in the store's inbox (answered and given up by its
/// sender, or never taken) before the upkeep deletes it: one hour.
pub const INPUT_KEPT_MS: u64 = 3_600_000;

/// Like [`PutSession`] for a new session this instance holds until `lease_until_ms`
/// ([`Store::put_session_held`]).
#[derive(Debug, Message)]
#[rtype(result = "Result<WriteSeq, SessionStoreError>")]
pub struct PutSessionHeld {
    /// The record.
    pub record: SessionRecord,
    /// This instance's name.
    pub holder: String,
    /// End of the lease, unix ms.
    pub lease_until_ms: u64,
}

/// A lease to take ([`Store::claim_session`]).
#[derive(Debug, Clone)]
pub struct LeaseClaim {
    /// This instance's name.
    pub holder: String,
    /// End of the lease, unix ms.
    pub lease_until_ms: u64,
    /// Now, unix ms.
    pub now_ms: u64,
}

/// Reads a session with its secrets and, when it is not terminal and `claim` is given,
/// takes its lease. `Ok(None)`: no such session, or (`oauth_state` given) not the session
/// that issued that `state`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<(SessionRecord, SessionClaim)>, SessionStoreError>")]
pub struct FindSession {
    /// The session.
    pub session_id: String,
    /// Take its lease (shared store); `None`: it is ours ([`SessionClaim::Claimed`]).
    pub claim: Option<LeaseClaim>,
    /// The OAuth `state` the session must have issued.
    pub oauth_state: Option<String>,
}

/// One lease round of a shared store: renews this instance's leases, reports the running
/// sessions it lost, and takes over up to `limit` sessions whose holder's lease lapsed
/// (finished or unreadable ones are released as finished, never carried on).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<LeaseReport, SessionStoreError>")]
pub struct LeaseRound {
    /// This instance's name.
    pub holder: String,
    /// End of the renewed and new leases, unix ms.
    pub lease_until_ms: u64,
    /// Now, unix ms.
    pub now_ms: u64,
    /// The sessions running here (and stored held) when the round was sent.
    pub running: Vec<String>,
    /// Most sessions taken over by this round.
    pub limit: usize,
}

/// What a [`LeaseRound`] did.
#[derive(Debug, Default)]
pub struct LeaseReport {
    /// Running sessions whose lease another instance holds now: stop them.
    pub lost: Vec<String>,
    /// Sessions taken over, to carry on.
    pub taken: Vec<SessionRecord>,
    /// Lapsed sessions found finished (or unreadable) and released.
    pub released: usize,
}

/// Gives up this instance's leases ([`Store::release_sessions`]).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<usize, SessionStoreError>")]
pub struct ReleaseSessions {
    /// This instance's name.
    pub holder: String,
    /// One session, or `None` for all.
    pub session_id: Option<String>,
    /// Finished: nobody carries it on.
    pub finished: bool,
}

/// Hands `input` to the instance holding `session_id` ([`Store::put_session_input`],
/// sealed). Replies the input's id (`None`: nothing to hand on, sled).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<u64>, SessionStoreError>")]
pub struct RelayInput {
    /// The session.
    pub session_id: String,
    /// This instance's name.
    pub sender: String,
    /// The input.
    pub input: RelayedInput,
    /// Now, unix ms.
    pub now_ms: u64,
}

/// Takes the inputs waiting for the sessions this instance holds
/// ([`Store::take_session_inputs`]), opened.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<TakenInput>, SessionStoreError>")]
pub struct TakeInputs {
    /// This instance's name.
    pub holder: String,
    /// At most this many.
    pub limit: usize,
}

/// An input taken from the inbox.
#[derive(Debug)]
pub struct TakenInput {
    /// Its id, to answer by.
    pub id: u64,
    /// The session.
    pub session_id: String,
    /// The input, or why it cannot be opened.
    pub input: Result<RelayedInput, SessionStoreError>,
}

/// Stores the answer of a taken input and wakes its sender.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<bool, SessionStoreError>")]
pub struct AnswerInput {
    /// The input.
    pub id: u64,
    /// The answer's bytes.
    pub answer: Vec<u8>,
}

/// Reads (and removes) the answer of an input this instance relayed; `None` while
/// unanswered.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Option<Vec<u8>>, SessionStoreError>")]
pub struct TakeInputAnswer {
    /// The input.
    pub id: u64,
}

/// Like [`PutSession`] on a shared store: written only while `holder` holds the session
/// ([`Store::put_session_if_held`]), else [`SessionStoreError::NotHolder`].
#[derive(Debug, Message)]
#[rtype(result = "Result<WriteSeq, SessionStoreError>")]
pub struct PutSessionIfHeld {
    /// The record.
    pub record: SessionRecord,
    /// This instance's name.
    pub holder: String,
}

impl Handler<PutSessionIfHeld> for SessionStoreActor {
    type Result = Result<WriteSeq, SessionStoreError>;

    fn handle(&mut self, msg: PutSessionIfHeld, _: &mut Self::Context) -> Self::Result {
        let bytes = self.codec.encode(&msg.record);
        if !self
            .store
            .put_session_if_held(&msg.record.session_id, &bytes, &msg.holder)?
        {
            return Err(SessionStoreError::NotHolder {
                session_id: msg.record.session_id,
            });
        }
        Ok(self.positions.written.fetch_add(1, Ordering::AcqRel) + 1)
    }
}

/// The user's sessions in flight on any instance of a shared store
/// ([`Store::sessions_in_flight`]), not terminal, opened; unreadable ones are skipped.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<SessionRecord>, SessionStoreError>")]
pub struct SessionsInFlight {
    /// The user.
    pub open_id: String,
}

impl Handler<SessionsInFlight> for SessionStoreActor {
    type Result = Result<Vec<SessionRecord>, SessionStoreError>;

    fn handle(&mut self, msg: SessionsInFlight, _: &mut Self::Context) -> Self::Result {
        let mut out = Vec::new();
        for (id, bytes) in self.store.sessions_in_flight(&msg.open_id)? {
            match self.codec.decode(&id, &bytes) {
                Ok(record) if !record.state.is_terminal() && record.open_id == msg.open_id => {
                    out.push(record)
                }
                Ok(_) => {}
                Err(e) => warn!(session_id = %id, error = %e, "session record skipped"),
            }
        }
        Ok(out)
    }
}

impl Handler<PutSessionHeld> for SessionStoreActor {
    type Result = Result<WriteSeq, SessionStoreError>;

    fn handle(&mut self, msg: PutSessionHeld, _: &mut Self::Context) -> Self::Result {
        let bytes = self.codec.encode(&msg.record);
        self.store.put_session_held(
            &msg.record.session_id,
            &bytes,
            &msg.holder,
            msg.lease_until_ms,
            &msg.record.open_id,
        )?;
        Ok(self.positions.written.fetch_add(1, Ordering::AcqRel) + 1)
    }
}

/// Starts a session on a shared store, unless its user has one in flight (on any
/// instance) or reached the per-user limit, atomically across instances
/// ([`Store::start_session_held`]).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<HeldStart, SessionStoreError>")]
pub struct StartSessionHeld {
    /// The new session's record (its `open_id` is the user, its `created_at_ms` now).
    pub record: SessionRecord,
    /// This instance's name.
    pub holder: String,
    /// End of the lease, unix ms.
    pub lease_until_ms: u64,
    /// Now, unix ms (the creation time counted by the limit).
    pub now_ms: u64,
    /// Most new sessions per user within `window` ([`super::SessionSettings::per_user_limit`]).
    pub limit: usize,
    /// The window of `limit`.
    pub window: std::time::Duration,
}

/// The answer to [`StartSessionHeld`].
#[derive(Debug)]
pub enum HeldStart {
    /// Written (the position of the write, for [`FlushThrough`]); the caller runs it.
    Started(WriteSeq),
    /// The user's session in flight (not terminal), held by this or another instance;
    /// nothing written.
    InFlight(Box<SessionRecord>),
    /// The user reached the limit; retry after this long. Nothing written.
    Limited(std::time::Duration),
}

impl Handler<StartSessionHeld> for SessionStoreActor {
    type Result = Result<HeldStart, SessionStoreError>;

    fn handle(&mut self, msg: StartSessionHeld, _: &mut Self::Context) -> Self::Result {
        let bytes = self.codec.encode(&msg.record);
        let user = msg.record.open_id.clone();
        // The clear part tells the state: no decryption on the store's thread.
        let live: crate::store::SessionLiveCheck =
            Arc::new(
                move |id, bytes| match SessionCodec::decode_clear(id, bytes) {
                    Ok(record) => !record.state.is_terminal() && record.open_id == user,
                    Err(e) => {
                        warn!(session_id = %id, error = %e, "session record skipped");
                        false
                    }
                },
            );
        let new = crate::store::NewHeldSession {
            session_id: &msg.record.session_id,
            value: &bytes,
            holder: &msg.holder,
            lease_until_ms: msg.lease_until_ms,
            open_id: &msg.record.open_id,
            now_ms: msg.now_ms,
            limit: msg.limit,
            window_ms: msg.window.as_millis() as u64,
        };
        match self.store.start_session_held(&new, live)? {
            crate::store::SessionStart::Started => Ok(HeldStart::Started(
                self.positions.written.fetch_add(1, Ordering::AcqRel) + 1,
            )),
            crate::store::SessionStart::InFlight(id, bytes) => Ok(HeldStart::InFlight(Box::new(
                self.codec.decode(&id, &bytes)?,
            ))),
            crate::store::SessionStart::Limited { retry_after_ms } => Ok(HeldStart::Limited(
                std::time::Duration::from_millis(retry_after_ms),
            )),
        }
    }
}

impl Handler<FindSession> for SessionStoreActor {
    type Result = Result<Option<(SessionRecord, SessionClaim)>, SessionStoreError>;

    fn handle(&mut self, msg: FindSession, _: &mut Self::Context) -> Self::Result {
        let Some(bytes) = self.store.get_session(&msg.session_id)? else {
            return Ok(None);
        };
        let record = self.codec.decode(&msg.session_id, &bytes)?;
        if let Some(state) = &msg.oauth_state
            && record
                .code_flow
                .as_ref()
                .is_none_or(|f| f.oauth_state != *state)
        {
            return Ok(None);
        }
        let claim = match &msg.claim {
            Some(c) if !record.state.is_terminal() => {
                self.store
                    .claim_session(&msg.session_id, &c.holder, c.lease_until_ms, c.now_ms)?
            }
            _ => SessionClaim::Claimed,
        };
        Ok(Some((record, claim)))
    }
}

impl Handler<LeaseRound> for SessionStoreActor {
    type Result = Result<LeaseReport, SessionStoreError>;

    fn handle(&mut self, msg: LeaseRound, _: &mut Self::Context) -> Self::Result {
        let held: std::collections::HashSet<String> = self
            .store
            .renew_sessions(&msg.holder, msg.lease_until_ms)?
            .into_iter()
            .collect();
        let mut report = LeaseReport {
            lost: msg
                .running
                .into_iter()
                .filter(|id| !held.contains(id))
                .collect(),
            ..LeaseReport::default()
        };
        let lapsed = self.store.claim_lapsed_sessions(
            &msg.holder,
            msg.lease_until_ms,
            msg.now_ms,
            msg.limit,
        )?;
        for (id, bytes) in lapsed {
            match self.codec.decode(&id, &bytes) {
                Ok(record) if !record.state.is_terminal() => report.taken.push(record),
                outcome => {
                    if let Err(e) = outcome {
                        warn!(session_id = %id, error = %e, "lapsed session unreadable; not carried on");
                    }
                    self.store.release_sessions(&msg.holder, Some(&id), true)?;
                    report.released += 1;
                }
            }
        }
        Ok(report)
    }
}

impl Handler<ReleaseSessions> for SessionStoreActor {
    type Result = Result<usize, SessionStoreError>;

    fn handle(&mut self, msg: ReleaseSessions, _: &mut Self::Context) -> Self::Result {
        Ok(self
            .store
            .release_sessions(&msg.holder, msg.session_id.as_deref(), msg.finished)?)
    }
}

impl Handler<RelayInput> for SessionStoreActor {
    type Result = Result<Option<u64>, SessionStoreError>;

    fn handle(&mut self, msg: RelayInput, _: &mut Self::Context) -> Self::Result {
        let payload = self.codec.seal_input(&msg.session_id, &msg.input);
        Ok(self
            .store
            .put_session_input(&msg.session_id, &msg.sender, &payload, msg.now_ms)?)
    }
}

impl Handler<TakeInputs> for SessionStoreActor {
    type Result = Result<Vec<TakenInput>, SessionStoreError>;

    fn handle(&mut self, msg: TakeInputs, _: &mut Self::Context) -> Self::Result {
        Ok(self
            .store
            .take_session_inputs(&msg.holder, msg.limit)?
            .into_iter()
            .map(|i| TakenInput {
                id: i.id,
                input: self.codec.open_input(&i.session_id, &i.payload),
                session_id: i.session_id,
            })
            .collect())
    }
}

impl Handler<AnswerInput> for SessionStoreActor {
    type Result = Result<bool, SessionStoreError>;

    fn handle(&mut self, msg: AnswerInput, _: &mut Self::Context) -> Self::Result {
        Ok(self.store.answer_session_input(msg.id, &msg.answer)?)
    }
}

impl Handler<TakeInputAnswer> for SessionStoreActor {
    type Result = Result<Option<Vec<u8>>, SessionStoreError>;

    fn handle(&mut self, msg: TakeInputAnswer, _: &mut Self::Context) -> Self::Result {
        Ok(self.store.take_input_answer(msg.id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::machine::{CodeFlowProgress, DeviceProgress};

    fn record() -> SessionRecord {
        let mut r = SessionRecord::new(
            "as_1".into(),
            "ou_1".into(),
            vec!["offline_access".into()],
            Some(CodeFlowProgress {
                oauth_state: "st".into(),
                code_verifier: Secret::new("verifier-secret-value".into()),
            }),
            1,
            1000,
        );
        r.device = Some(DeviceProgress {
            device_code: Secret::new("device-secret-value".into()),
            verification_uri_complete: "https://x.test/v?user_code=AB".into(),
            interval_secs: 5,
            expires_at_ms: 9,
        });
        r
    }

    #[actix_rt::test]
    async fn a_flush_through_one_write_covers_every_earlier_one_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        let codec = SessionCodec::new(&Keyring::single(1, VaultKey::generate())).unwrap();
        let (actor, flusher) = SessionStoreActor::start_with_flusher(store, codec);
        let mut seqs = Vec::new();
        for i in 0..3 {
            let mut r = record();
            r.session_id = format!("as_{i}");
            seqs.push(actor.send(PutSession { record: r }).await.unwrap().unwrap());
        }
        assert_eq!(seqs, [1, 2, 3], "numbered in store order");
        flusher
            .send(FlushThrough { seq: 2 })
            .await
            .unwrap()
            .unwrap();
        // The flush for write 2 started after write 3 was applied: it covered both.
        assert!(flusher_position(&actor).await >= 3);
        flusher
            .send(FlushThrough { seq: 3 })
            .await
            .unwrap()
            .unwrap();
    }

    #[actix_rt::test]
    async fn a_kept_click_answer_is_replayed_and_a_damaged_one_is_not() {
        use crate::protocol::event::Toast;

        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        let codec = SessionCodec::new(&Keyring::single(1, VaultKey::generate())).unwrap();
        let actor = SessionStoreActor::start(store.clone(), codec);
        let claim = |mark: &[u8]| ClaimClick {
            mark: mark.to_vec(),
            expires_at_ms: 10_000,
            now_ms: 1_000,
        };
        let answer = CardActionResponse {
            toast: Some(Toast::success("Declined")),
            card: None,
        };
        assert_eq!(
            actor.send(claim(b"event/e1")).await.unwrap().unwrap(),
            ClickClaim::First
        );
        assert_eq!(
            actor.send(claim(b"event/e1")).await.unwrap().unwrap(),
            ClickClaim::Unanswered,
            "a copy before the answer is kept"
        );
        let kept = KeepClickAnswer {
            mark: b"event/e1".to_vec(),
            answer: answer.clone(),
            now_ms: 1_000,
        };
        assert!(actor.send(kept).await.unwrap().unwrap());
        assert_eq!(
            actor.send(claim(b"event/e1")).await.unwrap().unwrap(),
            ClickClaim::Answered(answer)
        );

        // Damaged or unknown kept bytes: not replayed, no panic.
        for (mark, bytes) in [
            (&b"event/e2"[..], &b"\x01{not json"[..]),
            (b"event/e3", b"\x09{}"),
        ] {
            assert_eq!(
                actor.send(claim(mark)).await.unwrap().unwrap(),
                ClickClaim::First
            );
            assert!(store.set_mark_value(mark, bytes, 1_000).unwrap());
            assert_eq!(
                actor.send(claim(mark)).await.unwrap().unwrap(),
                ClickClaim::Unanswered
            );
        }
    }

    /// The flushed position, read through a probe message on the store thread.
    async fn flusher_position(actor: &Addr<SessionStoreActor>) -> u64 {
        actor.send(ProbeFlushed).await.unwrap()
    }

    #[derive(Message)]
    #[rtype(result = "u64")]
    struct ProbeFlushed;

    impl Handler<ProbeFlushed> for SessionStoreActor {
        type Result = u64;

        fn handle(&mut self, _: ProbeFlushed, _: &mut Self::Context) -> u64 {
            self.positions.flushed.load(Ordering::Acquire)
        }
    }

    #[test]
    fn secrets_are_sealed_and_round_trip() {
        let keyring = Keyring::single(1, VaultKey::generate());
        let codec = SessionCodec::new(&keyring).unwrap();
        let r = record();
        let bytes = codec.encode(&r);
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("device-secret-value"));
        assert!(!text.contains("verifier-secret-value"));
        assert_eq!(codec.decode("as_1", &bytes).unwrap(), r);
        let clear = SessionCodec::decode_clear("as_1", &bytes).unwrap();
        assert_eq!(clear.state, r.state);

        let other = SessionCodec::new(&Keyring::single(1, VaultKey::generate())).unwrap();
        assert!(matches!(
            other.decode("as_1", &bytes),
            Err(SessionStoreError::Corrupt { .. })
        ));
        assert!(matches!(
            codec.decode("as_2", &bytes),
            Err(SessionStoreError::Corrupt { .. })
        ));
        let rotated = SessionCodec::new(&Keyring::single(2, VaultKey::generate())).unwrap();
        assert!(matches!(
            rotated.decode("as_1", &bytes),
            Err(SessionStoreError::UnknownKey { key_id: 1, .. })
        ));
    }
}
