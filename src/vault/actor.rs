//! The TokenVaultActor: the actor shell around [`Vault`].
//!
//! Accepts: [`StoreGrant`], [`GetGrant`], [`ListGrants`], [`Revoke`],
//! [`CompareAndSwapGrant`], [`MarkStatus`], [`ListQuarantined`]. Sends nothing.
//!
//! Threading: the store blocks (disk reads, and `flush` waits for fsync, milliseconds on a
//! real disk), so the actor runs on a `SyncArbiter` ([`TokenVaultActor::start`]): a few
//! dedicated threads share one opened [`Vault`] (sled allows one open per path; the vault
//! is cloned, never reopened). The System's thread only enqueues messages and awaits the
//! replies, so a flush never stalls the connection actor. `flush_async` was the other
//! option, but it still needs the blocking encode/seal/read work off the System's thread,
//! and concurrent writers on several threads give group commit for free. Ordering
//! between concurrent writers is by compare-and-swap on the record version, never by
//! message order.

use actix::prelude::*;

use crate::clock::unix_now_ms;
use crate::store::QuarantinedRecord;

use super::{GrantRecord, GrantStatus, GrantSummary, SwapOutcome, Vault, VaultError};

/// Stores a new grant from an authorization (session actor, after `user_info` confirmed
/// the user), replacing any previous grant of that user. Replies once the record is
/// flushed, with the record as stored (its version set).
#[derive(Debug, Message)]
#[rtype(result = "Result<GrantRecord, VaultError>")]
pub struct StoreGrant {
    /// The new grant (`version` ignored).
    pub record: GrantRecord,
}

/// Reads one grant with its tokens. `Ok(None)`: no grant for that user.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<GrantRecord>, VaultError>")]
pub struct GetGrant {
    /// The user.
    pub open_id: String,
}

/// Lists grants without secrets, one page in `open_id` order.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<GrantSummary>, VaultError>")]
pub struct ListGrants {
    /// Start after this `open_id` (`None`: from the first).
    pub after_open_id: Option<String>,
    /// Page size.
    pub limit: usize,
}

/// Revokes a grant: its tokens are deleted and its status becomes `revoked` (flushed).
/// Replies with the revoked grant's summary, `None` when there was no grant.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<GrantSummary>, VaultError>")]
pub struct Revoke {
    /// The user.
    pub open_id: String,
}

/// Replaces a grant only if its stored version still equals `record.version` (the
/// refresh path, after re-reading). Replies [`SwapOutcome::Conflict`] when somebody wrote
/// in between; re-read and decide again.
#[derive(Debug, Message)]
#[rtype(result = "Result<SwapOutcome, VaultError>")]
pub struct CompareAndSwapGrant {
    /// The new record, carrying the version it was read at.
    pub record: GrantRecord,
    /// Flush before replying (required for writes that rotate a refresh token).
    pub durable: bool,
}

/// Sets a grant's status, durably. With `expected_version`, only if unchanged since that
/// version. Replies `None` when there is no grant.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<SwapOutcome>, VaultError>")]
pub struct MarkStatus {
    /// The user.
    pub open_id: String,
    /// Required current version, if any.
    pub expected_version: Option<u64>,
    /// The new status.
    pub status: GrantStatus,
    /// The platform error code behind it (e.g. 20073), if any.
    pub status_code: Option<u32>,
}

/// Lists the quarantined (corrupt) records.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Vec<QuarantinedRecord>, VaultError>")]
pub struct ListQuarantined;

/// The vault actor; see the module docs.
pub struct TokenVaultActor {
    vault: Vault,
}

impl TokenVaultActor {
    /// Starts `threads` vault threads (2 is plenty: the work is short, and flushes of
    /// concurrent writers overlap) sharing `vault`.
    pub fn start(vault: Vault, threads: usize) -> Addr<TokenVaultActor> {
        SyncArbiter::start(threads.max(1), move || TokenVaultActor {
            vault: vault.clone(),
        })
    }
}

impl Actor for TokenVaultActor {
    type Context = SyncContext<Self>;
}

impl Handler<StoreGrant> for TokenVaultActor {
    type Result = Result<GrantRecord, VaultError>;

    fn handle(&mut self, msg: StoreGrant, _: &mut Self::Context) -> Self::Result {
        self.vault.store_grant(msg.record)
    }
}

impl Handler<GetGrant> for TokenVaultActor {
    type Result = Result<Option<GrantRecord>, VaultError>;

    fn handle(&mut self, msg: GetGrant, _: &mut Self::Context) -> Self::Result {
        self.vault.get(&msg.open_id)
    }
}

impl Handler<ListGrants> for TokenVaultActor {
    type Result = Result<Vec<GrantSummary>, VaultError>;

    fn handle(&mut self, msg: ListGrants, _: &mut Self::Context) -> Self::Result {
        self.vault.list(msg.after_open_id.as_deref(), msg.limit)
    }
}

impl Handler<Revoke> for TokenVaultActor {
    type Result = Result<Option<GrantSummary>, VaultError>;

    fn handle(&mut self, msg: Revoke, _: &mut Self::Context) -> Self::Result {
        self.vault.revoke(&msg.open_id, unix_now_ms())
    }
}

impl Handler<CompareAndSwapGrant> for TokenVaultActor {
    type Result = Result<SwapOutcome, VaultError>;

    fn handle(&mut self, msg: CompareAndSwapGrant, _: &mut Self::Context) -> Self::Result {
        self.vault.compare_and_swap(&msg.record, msg.durable)
    }
}

impl Handler<MarkStatus> for TokenVaultActor {
    type Result = Result<Option<SwapOutcome>, VaultError>;

    fn handle(&mut self, msg: MarkStatus, _: &mut Self::Context) -> Self::Result {
        self.vault.mark_status(
            &msg.open_id,
            msg.expected_version,
            msg.status,
            msg.status_code,
        )
    }
}

impl Handler<ListQuarantined> for TokenVaultActor {
    type Result = Result<Vec<QuarantinedRecord>, VaultError>;

    fn handle(&mut self, _: ListQuarantined, _: &mut Self::Context) -> Self::Result {
        self.vault.quarantined()
    }
}
