//! Grant records for the benches that fill a store with many users: cold grants, fresh
//! tokens, nothing due for days. Shared by `vault_scale` and `shared_refresh`.

use lark_auth::secret::Secret;
use lark_auth::vault::{GrantRecord, GrantStatus, UserIdentity};

/// The `open_id` of cold grant `i`: `ou_` and 32 hex digits, as the platform's.
pub fn open_id(i: usize) -> String {
    format!("ou_{i:032x}")
}

/// Cold grant `i` of app `app_id` at `now_ms` (unix ms): an access token valid 2 h, a
/// refresh token whose keep-alive deadline (a day before its expiry) falls 1–6 days from
/// now, spread by `i`; last used a day ago, so only keep-alive deadlines are indexed.
/// Tokens are 256 B (real ones are ~1 KB JWT-like strings; this keeps the disk moderate)
/// and are never sent anywhere.
pub fn cold_grant(app_id: &str, tenant_key: &str, i: usize, now_ms: u64) -> GrantRecord {
    GrantRecord {
        app_id: app_id.into(),
        identity: UserIdentity {
            open_id: open_id(i),
            union_id: Some(format!("on_{i:032x}")),
            user_id: None,
            name: Some(format!("User {i}")),
            tenant_key: Some(tenant_key.into()),
        },
        access_token: Secret::new(format!("u-{i:0>254}")),
        refresh_token: Secret::new(format!("ur-{i:0>253}")),
        access_expires_ms: now_ms + 7_200_000,
        refresh_expires_ms: now_ms + 2 * 86_400_000 + (i as u64 * 7919) % (5 * 86_400_000),
        issued_ms: now_ms,
        scopes: vec!["offline_access".into()],
        consent_ms: now_ms,
        last_used_ms: now_ms - 86_400_000,
        status: GrantStatus::Active,
        status_code: None,
        failures: 0,
        retry_at_ms: None,
        refresh_started_ms: None,
        reauth_requested_ms: None,
        version: 0,
    }
}
