//! The token vault: typed, sealed grant records on top of a [`Store`].
//!
//! - [`Vault`]: the blocking core (encode and seal, open and verify, quarantine, key
//!   checks, compare-and-swap with flush). Used by the actor's threads and by tests.
//! - [`TokenVaultActor`]: the actor shell that runs the core on a
//!   `SyncArbiter` (see [`actor`] for the messages).
//!
//! The vault is storage and sealing only: `get_token`, its opened-token cache and the
//! refresh live in [`crate::tokens`], above it. Writers of grants are told through
//! [`Vault::on_grant_written`] (the token cache) and [`Vault::on_grant_changed`] (the
//! refresh scheduler), so the vault imports neither.
//!
//! Secrets (access and refresh tokens) are only ever stored sealed (see [`record`] for the
//! format and [`seal`] for keys and rotation); identity and other non-secret fields are in
//! clear so grants can be listed without opening them.
//!
//! Start-up: [`Vault::open`] verifies the keyring against the key-check records before it
//! reads or writes anything else, so a wrong key is refused with nothing overwritten.
//!
//! Corrupt records (unknown format version, truncated, tag that does not verify) are moved
//! to the store's quarantine, logged at `error`, and reported to the caller as
//! [`VaultError::Corrupt`]; [`Vault::quarantined`] lists them. They never crash the actor
//! and are never silently dropped or overwritten.
//!
//! Instants are unix epoch milliseconds (UTC).

pub mod actor;
pub mod record;
pub mod seal;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::store::{
    CasOutcome, DueEntry, GrantKey, GrantWrite, QuarantinedRecord, Store, StoreError,
};

pub use self::actor::TokenVaultActor;
pub use self::record::{
    GrantRecord, GrantStatus, GrantSummary, UserIdentity, clamp_lead_ms, clamp_margin_ms,
};
pub use self::seal::{KeyId, Keyring, VaultKey};

use self::record::Unreadable;

pub use crate::clock::unix_now_ms;

/// Errors of the vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The store failed (see [`StoreError`] for what to do, e.g. another lark-auth holding
    /// the path).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The vault key is not 32 bytes. Give a 32-byte key, base64-encoded, in the variable
    /// named by `vault.key_env` (e.g. `openssl rand -base64 32`).
    #[error("the vault key must be 32 bytes, got {len}")]
    KeyLength {
        /// The length given, bytes.
        len: usize,
    },
    /// The environment variable that should hold a vault key is not set. Set it (32
    /// random bytes, base64: `openssl rand -base64 32`).
    #[error(
        "missing vault key: set the environment variable `{env}` (named by config key `{key}`)"
    )]
    KeyMissing {
        /// The variable.
        env: String,
        /// The config key naming it (`vault.key_env` or `vault.old_keys`).
        key: &'static str,
    },
    /// A vault key from the environment is not 32 bytes of standard base64. Fix the
    /// variable's value.
    #[error(
        "the vault key in `{env}` is invalid: {reason} (it must be 32 random bytes in standard \
         base64: `openssl rand -base64 32`)"
    )]
    KeyInvalid {
        /// The variable.
        env: String,
        /// What is wrong (never the value).
        reason: String,
    },
    /// A vault key is not valid base64 ([`VaultKey::from_base64`]).
    #[error("the vault key is not valid base64")]
    KeyNotBase64,
    /// The keyring names one key id twice. Give each key its own id.
    #[error("key id {key_id} appears twice in the keyring")]
    DuplicateKeyId {
        /// The repeated id.
        key_id: KeyId,
    },
    /// The key given for `key_id` is not the key this vault was sealed with (its key check
    /// does not open). Nothing was read or written. Set the right key for that id; to
    /// rotate, give the new key a new id as current and list the old key under its old id.
    #[error(
        "wrong vault key for key id {key_id}: it does not open this vault's key check; \
         set the right key, or rotate by giving the new key a new id and listing the old \
         key under id {key_id}"
    )]
    WrongKey {
        /// The key id whose key is wrong.
        key_id: KeyId,
    },
    /// None of the keyring's key ids is one this vault was sealed with: the keyring belongs
    /// to another vault, or a rotation forgot the old key. Nothing was read or written.
    /// List the old key (one of `stored`) in the keyring.
    #[error(
        "none of the configured vault key ids opens this vault (it was sealed with key ids \
         {stored:?}); list the old key to rotate"
    )]
    NoKnownKey {
        /// The key ids this vault has key checks for.
        stored: Vec<KeyId>,
    },
    /// The record was sealed with a key id the keyring does not hold (an old key was
    /// dropped too early). The record is left as it is; list that key in
    /// [`Keyring::old`].
    #[error("the grant of {open_id} is sealed with key id {key_id}, which is not in the keyring")]
    KeyNotInKeyring {
        /// The grant's user.
        open_id: String,
        /// The missing key id.
        key_id: KeyId,
    },
    /// The record could not be read (damaged bytes, unknown format version, truncated,
    /// does not authenticate) and was moved to the quarantine. The user has no grant now
    /// and must authorize again; an operator can inspect [`Vault::quarantined`].
    #[error("the grant of {open_id} was corrupt and has been quarantined: {reason}")]
    Corrupt {
        /// The grant's user.
        open_id: String,
        /// What was wrong.
        reason: String,
    },
}

/// How the persisted refresh-due index is computed. Only the keep-alive deadline is
/// persisted: it is the obligation that survives restarts (a refresh token must be used
/// before it lapses). Access-refresh deadlines of hot grants live in the scheduler's
/// in-memory index, because hotness is in-memory state; persisting them would make every
/// cold grant "due" two hours after its last refresh and break O(due) scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuePolicy {
    /// Keep a refresh token alive by refreshing this long before it lapses.
    pub keepalive_lead: Duration,
}

impl Default for DuePolicy {
    fn default() -> Self {
        DuePolicy {
            keepalive_lead: Duration::from_secs(24 * 3600),
        }
    }
}

impl DuePolicy {
    /// The keep-alive deadline of a record (unix ms), or `None` when it cannot be
    /// refreshed (revoked, needs re-authorization, uncertain). The lead is clamped to a
    /// quarter of the refresh token's lifetime ([`GrantRecord::refresh_lead_ms`]).
    pub fn due_ms(&self, record: &GrantRecord) -> Option<u64> {
        record.status.can_refresh().then(|| {
            record
                .refresh_expires_ms
                .saturating_sub(record.refresh_lead_ms(self.keepalive_lead.as_millis() as u64))
        })
    }
}

/// The result of [`Vault::compare_and_swap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapOutcome {
    /// Stored; the record as stored, with its new version.
    Swapped(Box<GrantRecord>),
    /// The stored version was not the record's version: re-read and decide again.
    Conflict,
}

struct Inner {
    store: Arc<dyn Store>,
    app_id: String,
    keyring: Keyring,
    keys: BTreeMap<KeyId, VaultKey>,
    policy: DuePolicy,
    /// Told the `open_id` after a new grant is stored or a grant is revoked (the refresh
    /// scheduler schedules or drops its deadlines). Set once, after start.
    on_grant_changed: std::sync::OnceLock<GrantChangedHook>,
    /// Told the `open_id` after every write of a grant (the opened-token caches drop
    /// it); see [`Vault::on_grant_written`].
    on_grant_written: RwLock<Vec<GrantWrittenHook>>,
    /// Told when writes of other processes may have been missed (see
    /// [`Vault::watch_store_writes`]): forget every cached grant.
    on_grants_reset: RwLock<Vec<GrantsResetHook>>,
}

/// A callback told that any grant may have changed unseen; see [`Vault::on_grants_reset`].
pub type GrantsResetHook = Box<dyn Fn() + Send + Sync>;

/// A callback told the `open_id` of a grant that was stored or revoked.
pub type GrantChangedHook = Box<dyn Fn(&str) + Send + Sync>;

/// A callback told the `open_id` of a grant after any write of it; see
/// [`Vault::on_grant_written`].
pub type GrantWrittenHook = Box<dyn Fn(&str) + Send + Sync>;

/// The blocking vault core. Cheap to clone (shared). Every method blocks on disk I/O;
/// call from a thread that may block (the actor's `SyncArbiter` threads).
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("app_id", &self.inner.app_id)
            .field("current_key_id", &self.inner.keyring.current.0)
            .field("store", &self.inner.store)
            .finish()
    }
}

impl Vault {
    /// Opens the vault of `app_id` on `store` with `keyring`.
    ///
    /// Verifies every keyring key that has a key check in the store before anything else;
    /// then, on first use of the current key id, writes (and flushes) its key check.
    ///
    /// # Errors
    /// [`VaultError::DuplicateKeyId`]; [`VaultError::WrongKey`] or
    /// [`VaultError::NoKnownKey`] (nothing written); [`VaultError::Store`].
    pub fn open(
        store: Arc<dyn Store>,
        app_id: impl Into<String>,
        keyring: Keyring,
        policy: DuePolicy,
    ) -> Result<Vault, VaultError> {
        let keys = keyring.index()?;
        let checks = store.list_meta(seal::key_check_prefix())?;
        let mut stored = Vec::new();
        let mut matched = false;
        for (name, value) in &checks {
            let Some(key_id) = seal::parse_key_check_name(name) else {
                continue;
            };
            stored.push(key_id);
            if let Some(key) = keys.get(&key_id) {
                if !seal::verify_key_check(key_id, key, value) {
                    return Err(VaultError::WrongKey { key_id });
                }
                matched = true;
            }
        }
        if !stored.is_empty() && !matched {
            return Err(VaultError::NoKnownKey { stored });
        }
        let (current_id, current_key) = &keyring.current;
        if !stored.contains(current_id) {
            store.put_meta_if_absent(
                &seal::key_check_name(*current_id),
                &seal::make_key_check(*current_id, current_key),
            )?;
            store.flush()?;
            info!(
                key_id = current_id,
                "vault key check written for a new key id"
            );
        }
        Ok(Vault {
            inner: Arc::new(Inner {
                store,
                app_id: app_id.into(),
                keyring,
                keys,
                policy,
                on_grant_changed: std::sync::OnceLock::new(),
                on_grant_written: RwLock::new(Vec::new()),
                on_grants_reset: RwLock::new(Vec::new()),
            }),
        })
    }

    /// Registers the callback told the `open_id` after [`store_grant`](Self::store_grant)
    /// or [`revoke`](Self::revoke) changed a grant (shared by every clone of this vault).
    /// Only the first registration counts; returns false when one was already set.
    pub fn on_grant_changed(&self, hook: GrantChangedHook) -> bool {
        self.inner.on_grant_changed.set(hook).is_ok()
    }

    /// Registers a callback told the `open_id` after **every** write of a grant: each
    /// swapped compare-and-swap (new grants, refreshes and their write-ahead markers,
    /// status changes, revocations), each quarantine, and each write whose outcome the
    /// store could not tell. It runs on the writing thread after the store accepted the
    /// write and before the writer is answered, so it must be quick and must not block
    /// (the opened-token cache, `crate::tokens::TokenCache::for_vault`, drops the
    /// entry). Shared by every clone of this vault; every registration counts.
    pub fn on_grant_written(&self, hook: GrantWrittenHook) {
        self.inner
            .on_grant_written
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Registers a callback told that grants may have been written by another process
    /// unseen (a store shared by several instances lost its notification connection):
    /// whatever is cached of any grant must be read again. Every registration counts.
    pub fn on_grants_reset(&self, hook: GrantsResetHook) {
        self.inner
            .on_grants_reset
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// For a store shared by several instances (PostgreSQL): grant writes of the other
    /// instances reach this vault's [`on_grant_written`](Self::on_grant_written) hooks
    /// (their opened-token caches drop the grant) and its
    /// [`on_grant_changed`](Self::on_grant_changed) hook (the refresh scheduler re-reads
    /// it), and a missed stretch of them reaches the
    /// [`on_grants_reset`](Self::on_grants_reset) hooks. Returns false for a store only
    /// this process writes (sled): nothing to watch. The store holds a weak reference to
    /// this vault: watching does not keep it alive.
    pub fn watch_store_writes(&self) -> bool {
        let weak = Arc::downgrade(&self.inner);
        self.inner.store.watch_grants(Box::new(move |key| {
            let Some(inner) = weak.upgrade() else { return };
            let vault = Vault { inner };
            match key {
                Some(key) if key.app_id == vault.inner.app_id => {
                    vault.invalidate(&key.open_id);
                    vault.grant_changed(&key.open_id);
                }
                Some(_) => {}
                None => {
                    let hooks = vault
                        .inner
                        .on_grants_reset
                        .read()
                        .unwrap_or_else(|e| e.into_inner());
                    for hook in hooks.iter() {
                        hook();
                    }
                }
            }
        }))
    }

    /// Tells the [`on_grant_written`](Self::on_grant_written) hooks that `open_id`'s grant
    /// was written. Runs after every write of the grant, before the writer is answered.
    fn invalidate(&self, open_id: &str) {
        let hooks = self
            .inner
            .on_grant_written
            .read()
            .unwrap_or_else(|e| e.into_inner());
        for hook in hooks.iter() {
            hook(open_id);
        }
    }

    fn grant_changed(&self, open_id: &str) {
        if let Some(hook) = self.inner.on_grant_changed.get() {
            hook(open_id);
        }
    }

    /// The app whose grants this vault holds.
    pub fn app_id(&self) -> &str {
        &self.inner.app_id
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    fn key(&self, open_id: &str) -> GrantKey {
        GrantKey::new(self.inner.app_id.clone(), open_id)
    }

    fn quarantine(&self, open_id: &str, reason: String) -> VaultError {
        let key = self.key(open_id);
        let quarantined = self
            .inner
            .store
            .quarantine_grant(&key, &reason, unix_now_ms());
        self.invalidate(open_id);
        match quarantined {
            Ok(_) => error!(open_id, %reason, "corrupt grant record quarantined"),
            Err(e) => {
                error!(open_id, %reason, error = %e, "corrupt grant record could not be quarantined")
            }
        }
        VaultError::Corrupt {
            open_id: open_id.to_string(),
            reason,
        }
    }

    /// Reads and opens a grant. A missing grant is `Ok(None)`.
    ///
    /// # Errors
    /// [`VaultError::Corrupt`] (the record is now quarantined),
    /// [`VaultError::KeyNotInKeyring`], [`VaultError::Store`].
    pub fn get(&self, open_id: &str) -> Result<Option<GrantRecord>, VaultError> {
        let stored = match self.inner.store.get_grant(&self.key(open_id)) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(None),
            Err(StoreError::CorruptRecord { reason, .. }) => {
                return Err(self.quarantine(open_id, reason.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        match GrantRecord::decode(
            &self.inner.app_id,
            open_id,
            stored.version,
            &stored.payload,
            &self.inner.keys,
        ) {
            Ok(record) => Ok(Some(record)),
            Err(Unreadable::Corrupt(reason)) => Err(self.quarantine(open_id, reason)),
            Err(Unreadable::UnknownKey(key_id)) => Err(VaultError::KeyNotInKeyring {
                open_id: open_id.to_string(),
                key_id,
            }),
        }
    }

    /// Replaces `record` if the stored version still equals `record.version` (0: only if
    /// there is no record). Seals with the current key. When `durable`, the write is
    /// flushed (fsync) before this returns — use it for every write that rotates a
    /// refresh token or changes the status.
    ///
    /// # Errors
    /// [`VaultError::Store`]: nothing acknowledged (the write may or may not be on disk;
    /// re-read before deciding).
    pub fn compare_and_swap(
        &self,
        record: &GrantRecord,
        durable: bool,
    ) -> Result<SwapOutcome, VaultError> {
        let key = self.key(&record.identity.open_id);
        let write = GrantWrite {
            payload: record.encode(&self.inner.keyring),
            due_ms: self.inner.policy.due_ms(record),
        };
        let expected = (record.version != 0).then_some(record.version);
        let outcome = self
            .inner
            .store
            .compare_and_swap_grant(&key, expected, Some(write));
        // Before the flush and the reply (and also when the store failed, since the write
        // may have landed): a completed write never leaves the token it replaced in the
        // cache.
        if !matches!(outcome, Ok(CasOutcome::Conflict { .. })) {
            self.invalidate(&record.identity.open_id);
        }
        match outcome? {
            CasOutcome::Swapped { version } => {
                if durable {
                    self.inner.store.flush()?;
                }
                Ok(SwapOutcome::Swapped(Box::new(GrantRecord {
                    version,
                    ..record.clone()
                })))
            }
            CasOutcome::Conflict { .. } => Ok(SwapOutcome::Conflict),
        }
    }

    /// Stores a new grant from an authorization, replacing any previous grant of that user
    /// (whatever its state), and flushes before returning. `record.version` is ignored.
    ///
    /// # Errors
    /// [`VaultError::Store`].
    pub fn store_grant(&self, record: GrantRecord) -> Result<GrantRecord, VaultError> {
        let key = self.key(&record.identity.open_id);
        loop {
            let current = match self.inner.store.get_grant(&key) {
                Ok(current) => current.map(|s| s.version),
                Err(StoreError::CorruptRecord { reason, .. }) => {
                    // Keep the damaged bytes for inspection, then write the new grant.
                    let _ = self.quarantine(&record.identity.open_id, reason.to_string());
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let attempt = GrantRecord {
                version: current.unwrap_or(0),
                ..record.clone()
            };
            match self.compare_and_swap(&attempt, true)? {
                SwapOutcome::Swapped(stored) => {
                    self.grant_changed(&stored.identity.open_id);
                    return Ok(*stored);
                }
                SwapOutcome::Conflict => continue,
            }
        }
    }

    /// Lists up to `limit` grants in `open_id` order after `after_open_id`, without
    /// secrets. Records that cannot be read are quarantined and left out (logged).
    ///
    /// # Errors
    /// [`VaultError::Store`].
    pub fn list(
        &self,
        after_open_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<GrantSummary>, VaultError> {
        let page = self
            .inner
            .store
            .list_grants(&self.inner.app_id, after_open_id, limit)?;
        let mut out = Vec::with_capacity(page.len());
        for (key, stored) in page {
            let decoded = stored
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    GrantRecord::decode_summary(&self.inner.app_id, s.version, &s.payload).map_err(
                        |u| match u {
                            Unreadable::Corrupt(r) => r,
                            Unreadable::UnknownKey(id) => format!("unknown key id {id}"),
                        },
                    )
                })
                .and_then(|s| {
                    if s.identity.open_id == key.open_id {
                        Ok(s)
                    } else {
                        Err("record names another open_id".to_string())
                    }
                });
            match decoded {
                Ok(summary) => out.push(summary),
                Err(reason) => {
                    let _ = self.quarantine(&key.open_id, reason);
                }
            }
        }
        Ok(out)
    }

    /// Revokes a grant: deletes its tokens, sets status `revoked`, takes it out of the due
    /// index, and flushes. Returns the revoked grant's summary, or `None` when there was
    /// no grant. (sled is log-structured: the old sealed bytes stay in its log until its
    /// segments are rewritten; they remain sealed.)
    ///
    /// # Errors
    /// [`VaultError::Corrupt`], [`VaultError::KeyNotInKeyring`], [`VaultError::Store`].
    pub fn revoke(&self, open_id: &str, at_ms: u64) -> Result<Option<GrantSummary>, VaultError> {
        loop {
            let Some(mut record) = self.get(open_id)? else {
                return Ok(None);
            };
            record.access_token = Default::default();
            record.refresh_token = Default::default();
            record.status = GrantStatus::Revoked;
            record.status_code = None;
            record.refresh_started_ms = None;
            record.last_used_ms = record.last_used_ms.max(at_ms);
            if let SwapOutcome::Swapped(stored) = self.compare_and_swap(&record, true)? {
                self.grant_changed(open_id);
                return Ok(Some(stored.summary()));
            }
        }
    }

    /// Sets a grant's status (and the platform code behind it), durably. With
    /// `expected_version`, only if the record is still at that version. Returns `None`
    /// when there is no grant.
    ///
    /// # Errors
    /// [`VaultError::Corrupt`], [`VaultError::KeyNotInKeyring`], [`VaultError::Store`].
    pub fn mark_status(
        &self,
        open_id: &str,
        expected_version: Option<u64>,
        status: GrantStatus,
        status_code: Option<u32>,
    ) -> Result<Option<SwapOutcome>, VaultError> {
        loop {
            let Some(mut record) = self.get(open_id)? else {
                return Ok(None);
            };
            if expected_version.is_some_and(|v| v != record.version) {
                return Ok(Some(SwapOutcome::Conflict));
            }
            record.status = status;
            record.status_code = status_code;
            if !status.can_refresh() {
                record.refresh_started_ms = None;
            }
            match self.compare_and_swap(&record, true)? {
                SwapOutcome::Conflict if expected_version.is_none() => {
                    warn!(open_id, "grant changed while marking its status; retrying");
                    continue;
                }
                outcome => return Ok(Some(outcome)),
            }
        }
    }

    /// The persisted keep-alive index: grants due at or before `until_ms`, nearest first.
    ///
    /// # Errors
    /// [`VaultError::Store`].
    pub fn due(&self, until_ms: u64, limit: usize) -> Result<Vec<DueEntry>, VaultError> {
        Ok(self.inner.store.due_grants(until_ms, limit)?)
    }

    /// Every quarantined record.
    ///
    /// # Errors
    /// [`VaultError::Store`].
    pub fn quarantined(&self) -> Result<Vec<QuarantinedRecord>, VaultError> {
        Ok(self.inner.store.quarantined()?)
    }
}
