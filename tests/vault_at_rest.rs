//! The vault on real sled files in a temporary directory: restart round trip, no
//! plaintext tokens on disk, wrong key refused with nothing changed, key rotation,
//! quarantine of corrupt records, one open per path.

use std::path::Path;
use std::sync::Arc;

use lark_auth::secret::Secret;
use lark_auth::store::{GrantKey, SledStore, Store, StoreError};
use lark_auth::vault::{
    DuePolicy, GrantRecord, GrantStatus, Keyring, SwapOutcome, UserIdentity, Vault, VaultError,
    VaultKey,
};

const APP: &str = "cli_vault_test";

fn record(open_id: &str, n: u32) -> GrantRecord {
    GrantRecord {
        app_id: APP.into(),
        identity: UserIdentity {
            open_id: open_id.into(),
            union_id: Some(format!("on_{n}")),
            user_id: Some(format!("u{n}")),
            name: Some(format!("User {n}")),
            tenant_key: Some("tenant-1".into()),
        },
        access_token: Secret::new(format!("u-PLAINTEXT-ACCESS-{n:04}-zzzzzzzzzzzzzzzz")),
        refresh_token: Secret::new(format!("ur-PLAINTEXT-REFRESH-{n:04}-yyyyyyyyyyyyyy")),
        access_expires_ms: 1_700_000_000_000 + u64::from(n),
        refresh_expires_ms: 1_700_600_000_000 + u64::from(n),
        issued_ms: 0,
        scopes: vec!["offline_access".into(), "contact:user.base:readonly".into()],
        consent_ms: 1_699_000_000_000,
        last_used_ms: 1_699_000_000_001,
        status: GrantStatus::Active,
        status_code: None,
        failures: 0,
        retry_at_ms: None,
        refresh_started_ms: None,
        reauth_requested_ms: None,
        version: 0,
    }
}

fn open(path: &Path, keyring: Keyring) -> Result<Vault, VaultError> {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(path)?);
    Vault::open(store, APP, keyring, DuePolicy::default())
}

/// Opens the directory with sled directly. A vault dropped a moment ago may still hold
/// the file lock (sled's background threads release it shortly after), so a lock is
/// retried for a few seconds.
fn raw_sled(path: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open {}: {e}", path.display()),
        }
    }
}

/// Every (tree, key, value) in the sled database, read with sled directly.
fn dump(path: &Path) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let db = raw_sled(path);
    let mut out = Vec::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).unwrap();
        for item in tree.iter() {
            let (k, v) = item.unwrap();
            out.push((name.to_vec(), k.to_vec(), v.to_vec()));
        }
    }
    out
}

fn all_file_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_file_bytes(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn grants_survive_a_restart_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let key = VaultKey::generate();
    let stored: Vec<GrantRecord> = {
        let vault = open(dir.path(), Keyring::single(1, key.clone())).unwrap();
        (0..20)
            .map(|n| vault.store_grant(record(&format!("ou_{n:03}"), n)).unwrap())
            .collect()
    };
    let vault = open(dir.path(), Keyring::single(1, key)).unwrap();
    for want in &stored {
        let got = vault.get(&want.identity.open_id).unwrap().unwrap();
        assert_eq!(&got, want);
        assert_eq!(got.version, 1);
    }
    let listed = vault.list(None, 100).unwrap();
    assert_eq!(listed.len(), 20);
    assert_eq!(listed[3], stored[3].summary());
    assert!(
        !format!("{listed:?}").contains("PLAINTEXT"),
        "listing shows no token"
    );
    // The keep-alive index holds every active grant, nearest first.
    let due = vault.due(u64::MAX - 1, 100).unwrap();
    assert_eq!(due.len(), 20);
    assert!(due.windows(2).all(|w| w[0].due_ms <= w[1].due_ms));
    assert_eq!(vault.get("ou_missing").unwrap(), None);
}

#[test]
fn the_sled_files_hold_no_plaintext_token_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<GrantRecord> = (0..50).map(|n| record(&format!("ou_{n:03}"), n)).collect();
    {
        let vault = open(dir.path(), Keyring::single(1, VaultKey::generate())).unwrap();
        for r in &records {
            vault.store_grant(r.clone()).unwrap();
        }
        vault.store().flush().unwrap();
    }
    let files = all_file_bytes(dir.path());
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    assert!(total > 0);
    // The identity is in clear (listing needs it): proves the scan reads the records.
    assert!(
        files.iter().any(|(_, b)| contains(b, b"ou_007")),
        "scan found the clear identity"
    );
    for r in &records {
        for token in [r.access_token.expose(), r.refresh_token.expose()] {
            for (name, bytes) in &files {
                assert!(!contains(bytes, token.as_bytes()), "token bytes in {name}");
            }
        }
    }
    for (name, bytes) in &files {
        assert!(!contains(bytes, b"PLAINTEXT"), "token fragment in {name}");
    }
}

/// sled rewrites its own segment bookkeeping on every open (even one that reads nothing),
/// so the file bytes differ after any open; "nothing overwritten" is checked on every
/// stored key and value instead, read with sled directly before and after.
#[test]
fn a_wrong_key_is_refused_and_nothing_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    let right = VaultKey::generate();
    {
        let vault = open(dir.path(), Keyring::single(1, right.clone())).unwrap();
        vault.store_grant(record("ou_1", 1)).unwrap();
        vault.store_grant(record("ou_2", 2)).unwrap();
    }
    let before = dump(dir.path());

    let err = open(dir.path(), Keyring::single(1, VaultKey::generate())).unwrap_err();
    assert!(matches!(err, VaultError::WrongKey { key_id: 1 }), "{err:?}");
    assert!(err.to_string().contains("wrong vault key"), "{err}");
    assert_eq!(dump(dir.path()), before);

    let err = open(dir.path(), Keyring::single(2, VaultKey::generate())).unwrap_err();
    assert!(
        matches!(&err, VaultError::NoKnownKey { stored } if stored == &[1]),
        "{err:?}"
    );
    assert_eq!(dump(dir.path()), before);

    // A wrong old key is refused as well, even with the right current key.
    let ring = Keyring {
        current: (2, VaultKey::generate()),
        old: vec![(1, VaultKey::generate())],
    };
    assert!(matches!(
        open(dir.path(), ring),
        Err(VaultError::WrongKey { key_id: 1 })
    ));
    assert_eq!(dump(dir.path()), before);

    let vault = open(dir.path(), Keyring::single(1, right)).unwrap();
    assert_eq!(
        vault.get("ou_2").unwrap().unwrap(),
        GrantRecord {
            version: 1,
            ..record("ou_2", 2)
        }
    );
}

#[test]
fn rotation_reads_old_records_and_seals_new_writes_with_the_current_key() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = VaultKey::generate();
    let k2 = VaultKey::generate();
    let key_id_of = |vault: &Vault, open_id: &str| {
        let stored = vault
            .store()
            .get_grant(&GrantKey::new(APP, open_id))
            .unwrap()
            .unwrap();
        GrantRecord::sealed_key_id(&stored.payload)
    };
    {
        let vault = open(dir.path(), Keyring::single(1, k1.clone())).unwrap();
        vault.store_grant(record("ou_old", 1)).unwrap();
        vault.store_grant(record("ou_rewritten", 2)).unwrap();
        assert_eq!(key_id_of(&vault, "ou_old"), Some(1));
    }
    {
        let ring = Keyring {
            current: (2, k2.clone()),
            old: vec![(1, k1.clone())],
        };
        let vault = open(dir.path(), ring).unwrap();
        let old = vault.get("ou_old").unwrap().unwrap();
        assert_eq!(old.refresh_token, record("ou_old", 1).refresh_token);
        assert_eq!(
            key_id_of(&vault, "ou_old"),
            Some(1),
            "reading does not rewrite"
        );
        vault.store_grant(record("ou_new", 3)).unwrap();
        assert_eq!(key_id_of(&vault, "ou_new"), Some(2));
        let mut r = vault.get("ou_rewritten").unwrap().unwrap();
        r.last_used_ms += 1;
        assert!(matches!(
            vault.compare_and_swap(&r, true).unwrap(),
            SwapOutcome::Swapped(_)
        ));
        assert_eq!(key_id_of(&vault, "ou_rewritten"), Some(2));
    }
    {
        // Without key 1, the record still sealed with it is reported, not quarantined.
        let vault = open(dir.path(), Keyring::single(2, k2)).unwrap();
        assert!(vault.get("ou_new").unwrap().is_some());
        assert!(vault.get("ou_rewritten").unwrap().is_some());
        assert!(matches!(
            vault.get("ou_old"),
            Err(VaultError::KeyNotInKeyring { key_id: 1, .. })
        ));
        assert!(vault.quarantined().unwrap().is_empty());
    }
    // Key 1 alone still opens the vault (its check matches) and its records.
    let vault = open(dir.path(), Keyring::single(1, k1)).unwrap();
    assert!(vault.get("ou_old").unwrap().is_some());
}

#[test]
fn corrupt_records_are_quarantined_and_the_others_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let key = VaultKey::generate();
    {
        let vault = open(dir.path(), Keyring::single(1, key.clone())).unwrap();
        for n in 1..=4 {
            vault.store_grant(record(&format!("ou_{n}"), n)).unwrap();
        }
    }
    {
        // Damage records behind the vault's back, with sled directly.
        let db = raw_sled(dir.path());
        let grants = db.open_tree("grants").unwrap();
        let k = |open_id: &str| [APP.as_bytes(), b"\0", open_id.as_bytes()].concat();
        let mut v = grants.get(k("ou_2")).unwrap().unwrap().to_vec();
        *v.last_mut().unwrap() ^= 0x55; // bad ciphertext tag
        grants.insert(k("ou_2"), v).unwrap();
        let mut v = grants.get(k("ou_3")).unwrap().unwrap().to_vec();
        v[16] = 9; // unknown format version (after the 16-byte store header)
        grants.insert(k("ou_3"), v).unwrap();
        let v = grants.get(k("ou_4")).unwrap().unwrap().to_vec();
        grants.insert(k("ou_4"), &v[..40]).unwrap(); // truncated
        db.flush().unwrap();
    }
    let vault = open(dir.path(), Keyring::single(1, key)).unwrap();
    let err = vault.get("ou_2").unwrap_err();
    assert!(
        matches!(&err, VaultError::Corrupt { open_id, .. } if open_id == "ou_2"),
        "{err:?}"
    );
    assert!(err.to_string().contains("quarantined"), "{err}");
    // Listing reads the clear parts: the unknown format and the truncation are caught.
    let listed = vault.list(None, 10).unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|s| s.identity.open_id.as_str())
            .collect::<Vec<_>>(),
        ["ou_1"]
    );
    assert_eq!(
        vault.get("ou_1").unwrap().unwrap().access_token,
        record("ou_1", 1).access_token
    );
    let q = vault.quarantined().unwrap();
    let mut ids: Vec<&str> = q.iter().map(|r| r.key.open_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["ou_2", "ou_3", "ou_4"]);
    let reason_of = |id: &str| {
        q.iter()
            .find(|r| r.key.open_id == id)
            .unwrap()
            .reason
            .clone()
    };
    assert!(
        reason_of("ou_2").contains("authenticate"),
        "{}",
        reason_of("ou_2")
    );
    assert!(
        reason_of("ou_3").contains("unknown format version 9"),
        "{}",
        reason_of("ou_3")
    );
    assert!(
        reason_of("ou_4").contains("truncated"),
        "{}",
        reason_of("ou_4")
    );
    // The damaged bytes are kept, and the grants are gone (not half-readable).
    assert!(q.iter().all(|r| !r.raw.is_empty()));
    assert_eq!(vault.get("ou_2").unwrap(), None);
    // The user can authorize again; the quarantine is not overwritten.
    vault.store_grant(record("ou_2", 22)).unwrap();
    assert_eq!(vault.quarantined().unwrap().len(), 3);
}

#[test]
fn compare_and_swap_refuses_a_stale_version() {
    let dir = tempfile::tempdir().unwrap();
    let vault = open(dir.path(), Keyring::single(1, VaultKey::generate())).unwrap();
    let first = vault.store_grant(record("ou_1", 1)).unwrap();
    let mut a = first.clone();
    a.access_token = Secret::new("from-writer-a".into());
    let mut b = first.clone();
    b.access_token = Secret::new("from-writer-b".into());
    assert!(
        matches!(vault.compare_and_swap(&a, true).unwrap(), SwapOutcome::Swapped(s) if s.version == 2)
    );
    assert_eq!(
        vault.compare_and_swap(&b, true).unwrap(),
        SwapOutcome::Conflict
    );
    assert_eq!(
        vault.get("ou_1").unwrap().unwrap().access_token.expose(),
        "from-writer-a"
    );
    // Marking with a stale expected version is a conflict too.
    assert_eq!(
        vault
            .mark_status("ou_1", Some(1), GrantStatus::NeedsReauth, Some(20073))
            .unwrap(),
        Some(SwapOutcome::Conflict)
    );
}

#[test]
fn revoke_deletes_the_tokens_and_records_the_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let key = VaultKey::generate();
    {
        let vault = open(dir.path(), Keyring::single(1, key.clone())).unwrap();
        vault.store_grant(record("ou_1", 1)).unwrap();
        let summary = vault.revoke("ou_1", 1_800_000_000_000).unwrap().unwrap();
        assert_eq!(summary.status, GrantStatus::Revoked);
        assert_eq!(vault.revoke("ou_missing", 0).unwrap(), None);
    }
    let vault = open(dir.path(), Keyring::single(1, key)).unwrap();
    let r = vault.get("ou_1").unwrap().unwrap();
    assert_eq!(r.status, GrantStatus::Revoked);
    assert!(r.access_token.is_empty() && r.refresh_token.is_empty());
    assert_eq!(r.last_used_ms, 1_800_000_000_000);
    let stored = vault
        .store()
        .get_grant(&GrantKey::new(APP, "ou_1"))
        .unwrap()
        .unwrap();
    assert_eq!(
        GrantRecord::sealed_key_id(&stored.payload),
        None,
        "no sealed part"
    );
    assert!(
        vault.due(u64::MAX - 1, 10).unwrap().is_empty(),
        "out of the due index"
    );
}

#[test]
fn a_second_vault_on_the_same_path_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let key = VaultKey::generate();
    let _first = open(dir.path(), Keyring::single(1, key.clone())).unwrap();
    let err = open(dir.path(), Keyring::single(1, key)).unwrap_err();
    assert!(
        matches!(&err, VaultError::Store(StoreError::Locked { path }) if path == dir.path()),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("another lark-auth may be running"),
        "{err}"
    );
}
