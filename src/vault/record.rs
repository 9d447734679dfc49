//! Grant records and their stored format.
//!
//! Stored payload (inside the store's own version/due header), format 1:
//!
//! ```text
//! format u8 = 1
//! clear_len u32 BE, clear: JSON of the non-secret fields (identity, expiries, scopes,
//!                          timestamps, status) — readable for listing without a key
//! sealed u8: 0 = no secrets (revoked), 1 = sealed part follows
//! key_id u32 BE, nonce 24 B, ciphertext ‖ tag 16 B   (only when sealed = 1)
//! ```
//!
//! The sealed plaintext is `len u32 ‖ access_token ‖ len u32 ‖ refresh_token`. Its
//! associated data is `"lark-auth/grant/v1" 0 app_id 0 open_id 0 clear`, so a sealed blob
//! cannot be moved to another user's record, and the clear fields cannot be changed
//! without the key. An unknown format byte, a short buffer or a tag that does not verify
//! is a corrupt record.

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

use super::seal::{self, KeyId, Keyring, NONCE_LEN, TAG_LEN, VaultKey};

/// The format byte written by this version.
pub const FORMAT_V1: u8 = 1;

/// The status of a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    /// Usable: the access token is served and refreshed as needed.
    Active,
    /// The last refresh failed with a retryable error (20050, 20072, another 5xx, rate
    /// limiting, network); it will be retried after a backoff
    /// ([`GrantRecord::retry_at_ms`]). The refresh token has not been consumed; the access
    /// token is still served while valid beyond the margin.
    RefreshFailed,
    /// A refresh was sent and its answer was lost (timeout, or a crash between sending and
    /// storing the answer): the refresh token may have been consumed, so it is never sent
    /// again. The access token is still served while valid beyond the margin; after that
    /// the grant is settled as [`GrantStatus::NeedsReauth`] (nothing sent).
    RefreshUncertain,
    /// The refresh token is dead (20026/20037/20064/20073/20074, or lapsed): the user must
    /// authorize again.
    NeedsReauth,
    /// Revoked on request; the tokens were deleted.
    Revoked,
}

impl GrantStatus {
    /// The snake_case name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Active => "active",
            GrantStatus::RefreshFailed => "refresh_failed",
            GrantStatus::RefreshUncertain => "refresh_uncertain",
            GrantStatus::NeedsReauth => "needs_reauth",
            GrantStatus::Revoked => "revoked",
        }
    }

    /// True when the grant's refresh token may be sent (active or after a retryable
    /// failure).
    pub fn can_refresh(self) -> bool {
        matches!(self, GrantStatus::Active | GrantStatus::RefreshFailed)
    }
}

/// Who the grant belongs to, as `user_info` reports it. Stored in clear.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserIdentity {
    /// `open_id` in this app (`ou_…`); part of the record's key.
    pub open_id: String,
    /// `union_id` across the developer's apps (`on_…`), when known.
    pub union_id: Option<String>,
    /// Tenant `user_id`, when the app may read it.
    pub user_id: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// The tenant the user belongs to.
    pub tenant_key: Option<String>,
}

/// A user's grant: the token pair and what is known about it. `Debug` never shows tokens.
///
/// Instants are unix epoch milliseconds (UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// The app the grant is for.
    pub app_id: String,
    /// The user.
    pub identity: UserIdentity,
    /// The `user_access_token` (empty once revoked).
    pub access_token: Secret<String>,
    /// The single-use `refresh_token` (empty once revoked).
    pub refresh_token: Secret<String>,
    /// When the access token expires, unix ms.
    pub access_expires_ms: u64,
    /// When the refresh token expires, unix ms.
    pub refresh_expires_ms: u64,
    /// When the current token pair was obtained, unix ms: the instant its expiries count
    /// from (a refresh's send instant; for a new grant, when the code exchange or
    /// device-code answer arrived). With the expiries it gives each token's lifetime, to which the refresh leads and the margin are
    /// clamped (see [`clamp_lead_ms`], [`clamp_margin_ms`]). 0: unknown (records written before this field existed; their
    /// leads are not clamped until the next refresh sets it).
    pub issued_ms: u64,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// When the user consented (first authorization of this grant), unix ms. Refreshing
    /// stops 365 days later (20037).
    pub consent_ms: u64,
    /// When the grant was last used or refreshed, unix ms.
    pub last_used_ms: u64,
    /// Status.
    pub status: GrantStatus,
    /// The platform error code that ended the grant (`needs_reauth`), if any.
    pub status_code: Option<u32>,
    /// Retryable refresh failures in a row (`refresh_failed`; 0 once a refresh succeeds).
    /// Each one doubles the wait before the next attempt (`refresh.retry_initial_secs` up
    /// to `refresh.retry_max_secs`).
    pub failures: u32,
    /// After a retryable failure: the earliest instant the refresh may be sent again, unix
    /// ms. Neither the scheduler nor a `get_token` caller sends it before then.
    pub retry_at_ms: Option<u64>,
    /// Set, unix ms, while a refresh with the current refresh token is in flight. Written
    /// (and flushed) before the refresh is sent, so a record found with it set after a
    /// restart means the answer may have been lost: the token is not sent again.
    pub refresh_started_ms: Option<u64>,
    /// When this grant's user was sent a fresh authorization request after it became
    /// `needs_reauth`, unix ms (`refresh.reauth_card`). Set, durably, before the request
    /// is emitted, so a grant triggers at most one; a new authorization stores a new
    /// record without it.
    pub reauth_requested_ms: Option<u64>,
    /// The store's version of this record (0: not stored yet). A compare-and-swap succeeds
    /// only if the stored version still equals it.
    pub version: u64,
}

/// The non-secret view of a grant, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantSummary {
    /// The app the grant is for.
    pub app_id: String,
    /// The user.
    pub identity: UserIdentity,
    /// When the access token expires, unix ms.
    pub access_expires_ms: u64,
    /// When the refresh token expires, unix ms.
    pub refresh_expires_ms: u64,
    /// When the current token pair was obtained, unix ms (0: unknown); see
    /// [`GrantRecord::issued_ms`].
    pub issued_ms: u64,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Consent instant, unix ms.
    pub consent_ms: u64,
    /// Last use or refresh, unix ms.
    pub last_used_ms: u64,
    /// Status.
    pub status: GrantStatus,
    /// The platform error code that ended the grant, if any.
    pub status_code: Option<u32>,
    /// After a retryable failure: the earliest instant of the next attempt, unix ms.
    pub retry_at_ms: Option<u64>,
    /// When a fresh authorization request was emitted for it, unix ms, if one was.
    pub reauth_requested_ms: Option<u64>,
    /// Store version.
    pub version: u64,
}

/// The clear part of a stored record.
#[derive(Serialize, Deserialize)]
struct Clear {
    identity: UserIdentity,
    access_expires_ms: u64,
    refresh_expires_ms: u64,
    /// Absent in records written before it existed: 0 (unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    issued_ms: u64,
    scopes: Vec<String>,
    consent_ms: u64,
    last_used_ms: u64,
    status: GrantStatus,
    #[serde(default)]
    status_code: Option<u32>,
    #[serde(default)]
    refresh_started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reauth_requested_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_at_ms: Option<u64>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// `margin_ms` clamped to half the lifetime of a token obtained at `issued_ms` (unix ms;
/// 0: unknown, `margin_ms` is returned as is) and expiring at `expires_ms` (unix ms): a
/// token the platform (or a test) makes live shorter than twice `refresh.margin_secs` is
/// still served for the first half of its life instead of being refreshed on every call.
pub fn clamp_margin_ms(margin_ms: u64, issued_ms: u64, expires_ms: u64) -> u64 {
    if issued_ms == 0 {
        return margin_ms;
    }
    margin_ms.min(expires_ms.saturating_sub(issued_ms) / 2)
}

/// The lead (ms before `expires_ms`) at which a refresh is planned: `lead_ms` clamped to
/// a quarter of the lifetime of a token obtained at `issued_ms` (unix ms; 0: unknown, no
/// clamp) and expiring at `expires_ms`, but never less than the clamped `margin_ms`
/// ([`clamp_margin_ms`]), so a planned refresh still comes before callers find the token
/// stale. A refresh then never comes before half the token's life, and when the margin is
/// short, not before its life minus the margin: a grant is refreshed about once per
/// lifetime however short the platform makes it. Applied to `refresh.ahead_secs` (with
/// `refresh.margin_secs`, against the access token's lifetime) and to
/// `refresh.keepalive_secs` (margin 0, against the refresh token's).
pub fn clamp_lead_ms(lead_ms: u64, margin_ms: u64, issued_ms: u64, expires_ms: u64) -> u64 {
    let margin_ms = clamp_margin_ms(margin_ms, issued_ms, expires_ms);
    if issued_ms == 0 {
        return lead_ms.max(margin_ms);
    }
    let quarter = expires_ms.saturating_sub(issued_ms) / 4;
    lead_ms.min(quarter).max(margin_ms)
}

/// Why a stored payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unreadable {
    /// The bytes are damaged or of an unknown format: quarantine.
    Corrupt(String),
    /// Sealed with a key id the keyring does not hold: not corrupt, add the key.
    UnknownKey(KeyId),
}

fn aad(app_id: &str, open_id: &str, clear: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(24 + app_id.len() + open_id.len() + clear.len());
    aad.extend_from_slice(b"lark-auth/grant/v1\0");
    aad.extend_from_slice(app_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(open_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(clear);
    aad
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    let (head, rest) = buf.split_first_chunk::<4>()?;
    *buf = rest;
    Some(u32::from_be_bytes(*head))
}

fn take_bytes<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = take_u32(buf)? as usize;
    if buf.len() < len {
        return None;
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Some(head)
}

impl GrantRecord {
    /// The non-secret view.
    pub fn summary(&self) -> GrantSummary {
        GrantSummary {
            app_id: self.app_id.clone(),
            identity: self.identity.clone(),
            access_expires_ms: self.access_expires_ms,
            refresh_expires_ms: self.refresh_expires_ms,
            issued_ms: self.issued_ms,
            scopes: self.scopes.clone(),
            consent_ms: self.consent_ms,
            last_used_ms: self.last_used_ms,
            status: self.status,
            status_code: self.status_code,
            retry_at_ms: self.retry_at_ms,
            reauth_requested_ms: self.reauth_requested_ms,
            version: self.version,
        }
    }

    /// `margin_ms` clamped to half the access token's lifetime ([`clamp_margin_ms`]).
    pub fn access_margin_ms(&self, margin_ms: u64) -> u64 {
        clamp_margin_ms(margin_ms, self.issued_ms, self.access_expires_ms)
    }

    /// The access refresh's lead: `lead_ms` clamped to a quarter of the access token's
    /// lifetime, at least the clamped `margin_ms` ([`clamp_lead_ms`]).
    pub fn access_lead_ms(&self, lead_ms: u64, margin_ms: u64) -> u64 {
        clamp_lead_ms(lead_ms, margin_ms, self.issued_ms, self.access_expires_ms)
    }

    /// The keep-alive's lead: `lead_ms` clamped to a quarter of the refresh token's
    /// lifetime ([`clamp_lead_ms`]).
    pub fn refresh_lead_ms(&self, lead_ms: u64) -> u64 {
        clamp_lead_ms(lead_ms, 0, self.issued_ms, self.refresh_expires_ms)
    }

    /// True when the stored access token may be handed out at `now_ms`: the grant is
    /// `active`, `refresh_failed` or `refresh_uncertain` (a failed or unanswered refresh
    /// does not touch the access token) and the token stays valid for at least
    /// `margin_ms` clamped to half its lifetime ([`access_margin_ms`](Self::access_margin_ms)).
    pub fn serves_token(&self, now_ms: u64, margin_ms: u64) -> bool {
        matches!(
            self.status,
            GrantStatus::Active | GrantStatus::RefreshFailed | GrantStatus::RefreshUncertain
        ) && !self.access_token.is_empty()
            && self.access_expires_ms >= now_ms.saturating_add(self.access_margin_ms(margin_ms))
    }

    fn clear(&self) -> Clear {
        Clear {
            identity: self.identity.clone(),
            access_expires_ms: self.access_expires_ms,
            refresh_expires_ms: self.refresh_expires_ms,
            issued_ms: self.issued_ms,
            scopes: self.scopes.clone(),
            consent_ms: self.consent_ms,
            last_used_ms: self.last_used_ms,
            status: self.status,
            status_code: self.status_code,
            refresh_started_ms: self.refresh_started_ms,
            reauth_requested_ms: self.reauth_requested_ms,
            failures: self.failures,
            retry_at_ms: self.retry_at_ms,
        }
    }

    /// Encodes the record, sealing the tokens with the keyring's current key. A record
    /// with both tokens empty is stored without a sealed part.
    pub(crate) fn encode(&self, keyring: &Keyring) -> Vec<u8> {
        let clear = serde_json::to_vec(&self.clear()).expect("the clear part always serializes");
        let mut out = Vec::with_capacity(64 + clear.len() + self.access_token.expose().len() * 2);
        out.push(FORMAT_V1);
        put_bytes(&mut out, &clear);
        if self.access_token.is_empty() && self.refresh_token.is_empty() {
            out.push(0);
            return out;
        }
        out.push(1);
        let (key_id, key) = &keyring.current;
        let mut plaintext = Vec::with_capacity(
            8 + self.access_token.expose().len() + self.refresh_token.expose().len(),
        );
        put_bytes(&mut plaintext, self.access_token.expose().as_bytes());
        put_bytes(&mut plaintext, self.refresh_token.expose().as_bytes());
        out.extend_from_slice(&key_id.to_be_bytes());
        out.extend_from_slice(&seal::seal(
            key,
            &aad(&self.app_id, &self.identity.open_id, &clear),
            &plaintext,
        ));
        out
    }

    fn parse_clear(payload: &[u8]) -> Result<(Clear, &[u8], &[u8]), Unreadable> {
        let corrupt = |why: &str| Unreadable::Corrupt(why.to_string());
        let (&format, mut rest) = payload
            .split_first()
            .ok_or_else(|| corrupt("empty record"))?;
        if format != FORMAT_V1 {
            return Err(Unreadable::Corrupt(format!(
                "unknown format version {format}"
            )));
        }
        let clear_bytes = take_bytes(&mut rest).ok_or_else(|| corrupt("truncated clear part"))?;
        let clear: Clear = serde_json::from_slice(clear_bytes)
            .map_err(|e| Unreadable::Corrupt(format!("clear part does not parse: {e}")))?;
        Ok((clear, clear_bytes, rest))
    }

    /// Reads only the clear fields (for listing; no key needed, tokens not checked).
    pub(crate) fn decode_summary(
        app_id: &str,
        version: u64,
        payload: &[u8],
    ) -> Result<GrantSummary, Unreadable> {
        let (c, _, rest) = Self::parse_clear(payload)?;
        if rest.first().is_none_or(|s| *s > 1) {
            return Err(Unreadable::Corrupt("bad sealed-part marker".into()));
        }
        Ok(GrantSummary {
            app_id: app_id.to_string(),
            identity: c.identity,
            access_expires_ms: c.access_expires_ms,
            refresh_expires_ms: c.refresh_expires_ms,
            issued_ms: c.issued_ms,
            scopes: c.scopes,
            consent_ms: c.consent_ms,
            last_used_ms: c.last_used_ms,
            status: c.status,
            status_code: c.status_code,
            retry_at_ms: c.retry_at_ms,
            reauth_requested_ms: c.reauth_requested_ms,
            version,
        })
    }

    /// Decodes and opens a stored record. `open_id` is the key it was stored under: the
    /// associated data binds it, so a record copied under another user fails to open.
    pub(crate) fn decode(
        app_id: &str,
        open_id: &str,
        version: u64,
        payload: &[u8],
        keys: &std::collections::BTreeMap<KeyId, VaultKey>,
    ) -> Result<GrantRecord, Unreadable> {
        let corrupt = |why: &str| Unreadable::Corrupt(why.to_string());
        let (c, clear_bytes, rest) = Self::parse_clear(payload)?;
        if c.identity.open_id != open_id {
            return Err(corrupt("record names another open_id"));
        }
        let (&sealed, mut rest) = rest
            .split_first()
            .ok_or_else(|| corrupt("truncated before the sealed-part marker"))?;
        let (access, refresh) = match sealed {
            0 => (String::new(), String::new()),
            1 => {
                let key_id = take_u32(&mut rest).ok_or_else(|| corrupt("truncated key id"))?;
                if rest.len() < NONCE_LEN + TAG_LEN {
                    return Err(corrupt("truncated sealed part"));
                }
                let key = keys.get(&key_id).ok_or(Unreadable::UnknownKey(key_id))?;
                let plain = seal::open(key, &aad(app_id, open_id, clear_bytes), rest)
                    .ok_or_else(|| corrupt("sealed part does not authenticate"))?;
                let mut p = plain.as_slice();
                let access = take_bytes(&mut p).ok_or_else(|| corrupt("bad sealed plaintext"))?;
                let refresh = take_bytes(&mut p).ok_or_else(|| corrupt("bad sealed plaintext"))?;
                (
                    String::from_utf8(access.to_vec()).map_err(|_| corrupt("token not UTF-8"))?,
                    String::from_utf8(refresh.to_vec()).map_err(|_| corrupt("token not UTF-8"))?,
                )
            }
            _ => return Err(corrupt("bad sealed-part marker")),
        };
        Ok(GrantRecord {
            app_id: app_id.to_string(),
            identity: c.identity,
            access_token: Secret::new(access),
            refresh_token: Secret::new(refresh),
            access_expires_ms: c.access_expires_ms,
            refresh_expires_ms: c.refresh_expires_ms,
            issued_ms: c.issued_ms,
            scopes: c.scopes,
            consent_ms: c.consent_ms,
            last_used_ms: c.last_used_ms,
            status: c.status,
            status_code: c.status_code,
            failures: c.failures,
            retry_at_ms: c.retry_at_ms,
            refresh_started_ms: c.refresh_started_ms,
            reauth_requested_ms: c.reauth_requested_ms,
            version,
        })
    }

    /// The key id that sealed a stored payload, if it has a sealed part.
    pub fn sealed_key_id(payload: &[u8]) -> Option<KeyId> {
        let (_, _, rest) = Self::parse_clear(payload).ok()?;
        let (&sealed, mut rest) = rest.split_first()?;
        (sealed == 1).then(|| take_u32(&mut rest)).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(open_id: &str) -> GrantRecord {
        GrantRecord {
            app_id: "cli_test".into(),
            identity: UserIdentity {
                open_id: open_id.into(),
                union_id: Some("on_1".into()),
                user_id: None,
                name: Some("Ada".into()),
                tenant_key: Some("t1".into()),
            },
            access_token: Secret::new("u-ACCESS-plaintext-token".into()),
            refresh_token: Secret::new("ur-REFRESH-plaintext-token".into()),
            access_expires_ms: 10_000,
            refresh_expires_ms: 20_000,
            issued_ms: 4_000,
            scopes: vec!["offline_access".into()],
            consent_ms: 1,
            last_used_ms: 2,
            status: GrantStatus::Active,
            status_code: None,
            failures: 0,
            retry_at_ms: None,
            refresh_started_ms: None,
            reauth_requested_ms: None,
            version: 0,
        }
    }

    #[test]
    fn debug_never_shows_tokens() {
        let printed = format!("{:?}", sample("ou_1"));
        assert!(printed.contains("ou_1"), "{printed}");
        assert!(!printed.contains("plaintext-token"), "{printed}");
    }

    #[test]
    fn encode_decode_round_trip_and_binding_to_the_user() {
        let ring = Keyring::single(1, VaultKey::generate());
        let keys = ring.index().unwrap();
        let rec = sample("ou_1");
        let payload = rec.encode(&ring);
        let back = GrantRecord::decode("cli_test", "ou_1", 7, &payload, &keys).unwrap();
        assert_eq!(
            back,
            GrantRecord {
                version: 7,
                ..rec.clone()
            }
        );
        assert_eq!(GrantRecord::sealed_key_id(&payload), Some(1));
        // The same bytes under another user (or app) do not open.
        assert!(matches!(
            GrantRecord::decode("cli_test", "ou_2", 7, &payload, &keys),
            Err(Unreadable::Corrupt(_))
        ));
        assert!(matches!(
            GrantRecord::decode("cli_other", "ou_1", 7, &payload, &keys),
            Err(Unreadable::Corrupt(_))
        ));
        // Unknown format, truncation, unknown key id.
        let mut v2 = payload.clone();
        v2[0] = 2;
        assert!(matches!(
            GrantRecord::decode("cli_test", "ou_1", 7, &v2, &keys),
            Err(Unreadable::Corrupt(why)) if why.contains("unknown format version 2")
        ));
        for cut in [0, 3, 20, payload.len() - 1] {
            assert!(
                matches!(
                    GrantRecord::decode("cli_test", "ou_1", 7, &payload[..cut], &keys),
                    Err(Unreadable::Corrupt(_))
                ),
                "cut at {cut}"
            );
        }
        let other = Keyring::single(2, VaultKey::generate()).index().unwrap();
        assert_eq!(
            GrantRecord::decode("cli_test", "ou_1", 7, &payload, &other),
            Err(Unreadable::UnknownKey(1))
        );
    }

    /// A record written before `issued_ms`, `failures` and `retry_at_ms` existed (its
    /// clear JSON lacks them) still opens, with the lifetime unknown (leads unclamped).
    #[test]
    fn records_without_the_new_fields_still_open() {
        let ring = Keyring::single(1, VaultKey::generate());
        let keys = ring.index().unwrap();
        let rec = GrantRecord {
            issued_ms: 0,
            ..sample("ou_1")
        };
        let payload = rec.encode(&ring);
        let (clear, _, _) = GrantRecord::parse_clear(&payload).unwrap();
        let json = serde_json::to_value(&clear).unwrap();
        for absent in ["issued_ms", "failures", "retry_at_ms"] {
            assert!(json.get(absent).is_none(), "{absent} written when unset");
        }
        let back = GrantRecord::decode("cli_test", "ou_1", 3, &payload, &keys).unwrap();
        assert_eq!(
            (back.issued_ms, back.failures, back.retry_at_ms),
            (0, 0, None)
        );
        assert_eq!(
            back.access_lead_ms(600_000, 300_000),
            600_000,
            "unknown lifetime: no clamp"
        );
        let summary = GrantRecord::decode_summary("cli_test", 3, &payload).unwrap();
        assert_eq!((summary.issued_ms, summary.retry_at_ms), (0, None));

        // Set, they round-trip.
        let rec = GrantRecord {
            failures: 2,
            retry_at_ms: Some(9_000),
            ..sample("ou_1")
        };
        let back = GrantRecord::decode("cli_test", "ou_1", 3, &rec.encode(&ring), &keys).unwrap();
        assert_eq!(back, GrantRecord { version: 3, ..rec });
    }

    #[test]
    fn leads_are_clamped_to_a_quarter_of_the_lifetime_and_never_below_the_margin() {
        // Issued at 4 s: the access token lives 6 s, the refresh token 16 s.
        let rec = sample("ou_1");
        // A long margin is clamped to half the life, and the lead never goes below it.
        assert_eq!(rec.access_margin_ms(300_000), 3_000);
        assert_eq!(rec.access_lead_ms(600_000, 300_000), 3_000);
        // A short margin: the lead is a quarter of the life (refreshed at 3/4 of it)...
        assert_eq!(rec.access_lead_ms(600_000, 1_000), 1_500);
        // ...or the margin when that is longer: refreshed at the life minus the margin.
        assert_eq!(rec.access_lead_ms(600_000, 2_000), 2_000);
        assert_eq!(
            rec.access_lead_ms(1_000, 500),
            1_000,
            "a short lead is kept"
        );
        assert_eq!(rec.refresh_lead_ms(86_400_000), 4_000);
        assert_eq!(
            clamp_lead_ms(5, 0, 10, 5),
            0,
            "expiry before issue: no lead"
        );
        // The 20 s token of issue 12 with margin 5 s: refreshed 15 s after it was issued.
        assert_eq!(clamp_lead_ms(600_000, 5_000, 1_000, 21_000), 5_000);
        // The platform's 2 h token with the defaults: no clamp.
        assert_eq!(clamp_lead_ms(600_000, 300_000, 1, 7_200_001), 600_000);
        // The margin too: served while at least half the life is left.
        assert!(rec.serves_token(7_000, 300_000));
        assert!(!rec.serves_token(7_001, 300_000));
        for status in [GrantStatus::RefreshFailed, GrantStatus::RefreshUncertain] {
            assert!(
                GrantRecord {
                    status,
                    ..rec.clone()
                }
                .serves_token(7_000, 300_000)
            );
        }
        for status in [GrantStatus::NeedsReauth, GrantStatus::Revoked] {
            assert!(
                !GrantRecord {
                    status,
                    ..rec.clone()
                }
                .serves_token(5_000, 0)
            );
        }
    }
}
