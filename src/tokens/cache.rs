//! The opened-token cache: access tokens already read from the vault and opened, kept in
//! memory so that `get_token` for a fresh token needs no actor hop, no sled read and no
//! AEAD open (see `docs/performance.md`).
//!
//! One [`TokenCache`] belongs to one [`Vault`] ([`TokenCache::for_vault`] creates it and
//! registers it with [`Vault::on_grant_written`]), and the vault invalidates it on
//! **every** write of a grant: each swapped compare-and-swap (new grants from sessions,
//! refreshes, their write-ahead markers, status changes such as `needs_reauth`,
//! revocations) and each quarantine. The
//! invalidation runs on the vault thread right after the store accepted the write and
//! before the writer gets its reply, so once a revoke (or any other write) has completed,
//! no later lookup serves the token it replaced.
//!
//! The one race left is a lookup that missed, read the old record, and wants to insert it
//! after a write invalidated the entry. [`TokenCache::generation`] closes it: the reader
//! takes the generation before it reads, and [`TokenCache::insert`] refuses when any
//! invalidation happened since (every invalidation bumps the generation under the same
//! lock). A refused insert only costs the next call another vault read.
//!
//! Only tokens somebody asked for are cached (filled by `get_token`'s vault read, never by
//! loading the vault), an entry is dropped when the vault writes its grant and when a
//! lookup finds it inside the margin, and the number of entries is capped
//! (`vault.token_cache_entries`; at the cap an arbitrary entry is evicted).
//!
//! Memory per entry: the map slot (`Box<str>` key 16 B + entry 40 B + 1 control byte,
//! 57 B at a load between 7/16 and 7/8, so 65–130 B), plus the heap copies of the
//! `open_id` and of the access token itself (its length: 1–2 KB for real v2 tokens).
//! `benches/vault_scale.rs` measured 376 B per entry with 256-byte tokens, i.e. about
//! 120 B + the token's length: ≈ 2 KB per entry with real tokens, ≈ 200 MB at the default
//! cap of 100,000 entries.
//!
//! With a store only this process writes (sled's one-open-per-path lock guarantees it)
//! the vault's own invalidations are all there is. With a store shared by several
//! instances (PostgreSQL) the other instances' writes reach the cache as notifications
//! ([`Vault::watch_store_writes`]); when notifications may have been missed (the
//! notification connection was lost) every entry is **set aside**
//! ([`TokenCache::set_aside`]): no longer served as a hit, but kept as the answer of last
//! resort while the store cannot be read ([`TokenCache::fallback`]). A store that cannot
//! be read cannot have been written by another instance either, so such a token is not
//! older than the store's, unless this instance alone lost the database (a network
//! partition); it is still a token the platform issued and that has not expired.
//!
//! Instants are unix epoch milliseconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::secret::Secret;
use crate::vault::Vault;

use super::access::AccessToken;

pub use crate::config::DEFAULT_TOKEN_CACHE_ENTRIES;

/// A point in the cache's invalidation history; see [`TokenCache::generation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

struct Entry {
    token: Secret<String>,
    expires_ms: u64,
    /// The largest margin that applies to this token: half its lifetime.
    margin_cap_ms: u64,
    version: u64,
}

struct State {
    /// Bumped by every invalidation.
    generation: u64,
    entries: HashMap<Box<str>, Entry>,
    /// Entries set aside by [`TokenCache::set_aside`]: served only by
    /// [`TokenCache::fallback`].
    aside: HashMap<Box<str>, Entry>,
}

/// Opened access tokens by `open_id`; see the module docs. Shared between the System's
/// thread (lookups) and the vault threads (invalidations); every operation takes one
/// short lock.
pub struct TokenCache {
    state: Mutex<State>,
    capacity: usize,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl TokenCache {
    /// An empty cache of at most `capacity` entries (`vault.token_cache_entries`; 0:
    /// caches nothing) that `vault` invalidates on every write of a grant (registered
    /// with [`Vault::on_grant_written`], and emptied on [`Vault::on_grants_reset`]; the
    /// vault keeps it as long as it lives; with a shared store, other instances' writes
    /// count too: [`Vault::watch_store_writes`]). Hand it
    /// to [`TokenSource::with_token_cache`](super::TokenSource::with_token_cache). Each
    /// call makes a new cache, each invalidated by the vault.
    pub fn for_vault(vault: &Vault, capacity: usize) -> Arc<TokenCache> {
        let cache = Arc::new(TokenCache::new(capacity));
        let hooked = cache.clone();
        vault.on_grant_written(Box::new(move |open_id| hooked.invalidate(open_id)));
        let hooked = cache.clone();
        vault.on_grants_reset(Box::new(move || hooked.set_aside()));
        cache
    }

    /// An empty cache of at most `capacity` entries (0: caches nothing). Only
    /// [`for_vault`](Self::for_vault) makes one for use, so that every cache is
    /// invalidated by its vault's writes.
    fn new(capacity: usize) -> TokenCache {
        TokenCache {
            state: Mutex::new(State {
                generation: 0,
                entries: HashMap::new(),
                aside: HashMap::new(),
            }),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave an entry half-written (each
        // operation is one map call), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached token of `open_id` if it stays valid for at least `margin_ms` (clamped
    /// to the entry's cap, half the token's lifetime) after `now_ms`. An entry inside the
    /// margin is dropped (the caller goes to the vault).
    pub fn fresh(&self, open_id: &str, now_ms: u64, margin_ms: u64) -> Option<AccessToken> {
        let mut state = self.lock();
        let entry = state.entries.get(open_id)?;
        if entry.expires_ms >= now_ms.saturating_add(margin_ms.min(entry.margin_cap_ms)) {
            return Some(AccessToken {
                token: entry.token.clone(),
                expires_ms: entry.expires_ms,
            });
        }
        state.entries.remove(open_id);
        None
    }

    /// The current generation: take it **before** reading a record from the vault and
    /// give it to [`insert`](Self::insert).
    pub fn generation(&self) -> Generation {
        Generation(self.lock().generation)
    }

    /// Caches the opened access token of `open_id` (record `version`, expiring at
    /// `expires_ms`; `margin_cap_ms` is the most margin [`fresh`](Self::fresh) applies to
    /// it, half its lifetime as [`GrantRecord::access_margin_ms`](crate::vault::GrantRecord::access_margin_ms)
    /// gives it, `u64::MAX` when unknown), read from the vault after `since` was taken.
    /// Refused (false) when any grant was written since then — the record read may
    /// already be replaced — or when the cache holds a newer version, or when the
    /// capacity is 0.
    pub fn insert(
        &self,
        since: Generation,
        open_id: &str,
        token: &Secret<String>,
        expires_ms: u64,
        margin_cap_ms: u64,
        version: u64,
    ) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let mut state = self.lock();
        if state.generation != since.0 {
            return false;
        }
        // Read from the store since: the set-aside copy is no longer needed.
        state.aside.remove(open_id);
        if let Some(held) = state.entries.get_mut(open_id) {
            if held.version > version {
                return false;
            }
            held.token = token.clone();
            held.expires_ms = expires_ms;
            held.margin_cap_ms = margin_cap_ms;
            held.version = version;
            return true;
        }
        if state.entries.len() >= self.capacity {
            let victim = state.entries.keys().next().cloned();
            if let Some(victim) = victim {
                state.entries.remove(&victim);
            }
        }
        state.entries.insert(
            open_id.into(),
            Entry {
                token: token.clone(),
                expires_ms,
                margin_cap_ms,
                version,
            },
        );
        true
    }

    /// Drops the entry of `open_id` and bumps the generation. Called by the vault after
    /// every write of that grant.
    pub(crate) fn invalidate(&self, open_id: &str) {
        let mut state = self.lock();
        state.generation = state.generation.wrapping_add(1);
        state.entries.remove(open_id);
        state.aside.remove(open_id);
    }

    /// Sets every entry aside: lookups ([`fresh`](Self::fresh)) miss and read the store
    /// again, but while the store cannot be read a set-aside token still valid beyond the
    /// margin is served by [`fallback`](Self::fallback). Counts as an invalidation of
    /// every grant. Called when writes of other instances may have been missed (see the
    /// module docs). At most [`capacity`](Self::capacity) entries are kept aside.
    pub fn set_aside(&self) {
        let mut state = self.lock();
        state.generation = state.generation.wrapping_add(1);
        let entries = std::mem::take(&mut state.entries);
        for (open_id, entry) in entries {
            if state.aside.len() >= self.capacity {
                break;
            }
            state.aside.insert(open_id, entry);
        }
    }

    /// The set-aside token of `open_id` if it stays valid for at least `margin_ms`
    /// (clamped as in [`fresh`](Self::fresh)) after `now_ms`: for a caller whose store
    /// read just failed. `None` otherwise.
    pub fn fallback(&self, open_id: &str, now_ms: u64, margin_ms: u64) -> Option<AccessToken> {
        let state = self.lock();
        let entry = state.aside.get(open_id)?;
        (entry.expires_ms >= now_ms.saturating_add(margin_ms.min(entry.margin_cap_ms))).then(|| {
            AccessToken {
                token: entry.token.clone(),
                expires_ms: entry.expires_ms,
            }
        })
    }

    /// Drops every entry and frees the map (e.g. to give memory back); the next lookups
    /// read the vault again. Counts as an invalidation of every grant.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.generation = state.generation.wrapping_add(1);
        state.entries = HashMap::new();
        state.aside = HashMap::new();
    }

    /// Tokens cached now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cap on entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> Secret<String> {
        Secret::new(s.to_string())
    }

    #[test]
    fn serves_until_the_margin_then_drops_the_entry() {
        let cache = TokenCache::new(10);
        let since = cache.generation();
        assert!(cache.insert(since, "ou_1", &token("t1"), 10_000, u64::MAX, 3));
        let hit = cache.fresh("ou_1", 1_000, 500).expect("fresh");
        assert_eq!(hit.token.expose(), "t1");
        assert_eq!(hit.expires_ms, 10_000);
        assert!(cache.fresh("ou_1", 9_600, 500).is_none());
        assert!(cache.is_empty());
        // A token living 4 s: a 300 s margin counts as 2 s.
        let since = cache.generation();
        assert!(cache.insert(since, "ou_1", &token("t2"), 10_000, 2_000, 4));
        assert!(cache.fresh("ou_1", 8_000, 300_000).is_some());
        assert!(cache.fresh("ou_1", 8_001, 300_000).is_none());
    }

    #[test]
    fn an_invalidation_after_the_read_refuses_the_insert() {
        let cache = TokenCache::new(10);
        let since = cache.generation();
        // A write lands between the reader's vault read and its insert.
        cache.invalidate("ou_1");
        assert!(!cache.insert(since, "ou_1", &token("old"), 10_000, u64::MAX, 3));
        assert!(cache.fresh("ou_1", 0, 0).is_none());
        // A read that starts after the write may insert.
        let since = cache.generation();
        assert!(cache.insert(since, "ou_1", &token("new"), 10_000, u64::MAX, 4));
        cache.invalidate("ou_1");
        assert!(cache.fresh("ou_1", 0, 0).is_none());
    }

    #[test]
    fn never_replaces_a_newer_version_and_keeps_to_the_cap() {
        let cache = TokenCache::new(2);
        let since = cache.generation();
        assert!(cache.insert(since, "ou_1", &token("v5"), 10_000, u64::MAX, 5));
        assert!(!cache.insert(since, "ou_1", &token("v4"), 10_000, u64::MAX, 4));
        assert_eq!(cache.fresh("ou_1", 0, 0).unwrap().token.expose(), "v5");
        assert!(cache.insert(since, "ou_2", &token("b"), 10_000, u64::MAX, 1));
        assert!(cache.insert(since, "ou_3", &token("c"), 10_000, u64::MAX, 1));
        assert_eq!(cache.len(), 2);
        assert!(cache.fresh("ou_3", 0, 0).is_some());

        let since = cache.generation();
        cache.clear();
        assert!(cache.is_empty());
        assert!(!cache.insert(since, "ou_4", &token("d"), 10_000, u64::MAX, 1));

        let off = TokenCache::new(0);
        assert!(!off.insert(off.generation(), "ou_1", &token("a"), 10_000, u64::MAX, 1));
        assert!(off.is_empty());
    }

    #[test]
    fn set_aside_entries_are_served_only_as_a_fallback_until_read_again_or_written() {
        let cache = TokenCache::new(10);
        let since = cache.generation();
        assert!(cache.insert(since, "ou_1", &token("t1"), 10_000, u64::MAX, 3));
        assert!(cache.insert(since, "ou_2", &token("t2"), 10_000, u64::MAX, 1));
        cache.set_aside();
        assert!(cache.fresh("ou_1", 1_000, 500).is_none(), "no longer a hit");
        let kept = cache.fallback("ou_1", 1_000, 500).expect("kept aside");
        assert_eq!(kept.token.expose(), "t1");
        assert!(
            cache.fallback("ou_1", 9_600, 500).is_none(),
            "inside the margin"
        );
        // A read of the store puts the verified token back and drops the copy.
        let since = cache.generation();
        assert!(cache.insert(since, "ou_1", &token("t1b"), 20_000, u64::MAX, 4));
        assert!(cache.fallback("ou_1", 1_000, 500).is_none());
        assert_eq!(
            cache.fresh("ou_1", 1_000, 500).unwrap().token.expose(),
            "t1b"
        );
        // A write of the grant drops the set-aside copy too.
        assert!(cache.fallback("ou_2", 1_000, 500).is_some());
        cache.invalidate("ou_2");
        assert!(cache.fallback("ou_2", 1_000, 500).is_none());
    }

    #[test]
    fn debug_shows_no_token() {
        let cache = TokenCache::new(2);
        cache.insert(
            cache.generation(),
            "ou_1",
            &token("secret-token"),
            10,
            u64::MAX,
            1,
        );
        let printed = format!("{cache:?}");
        assert!(!printed.contains("secret-token"), "{printed}");
    }
}
