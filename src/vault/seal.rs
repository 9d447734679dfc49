//! Sealing: the vault keys ([`VaultKey`], [`Keyring`]), the AEAD (XChaCha20-Poly1305 from
//! RustCrypto `chacha20poly1305` 0.10, 24-byte random nonces so random nonces never
//! collide in practice), and the key-check records that catch a wrong key at start.
//!
//! Every sealed blob names the key id that sealed it, so keys rotate: records sealed with
//! an old key stay readable while that key is listed in [`Keyring::old`], and every write
//! seals with [`Keyring::current`] (a record is re-sealed with the current key the next time
//! it is written).

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::secret::Secret;

use super::VaultError;

/// Length of a vault key, bytes.
pub const KEY_LEN: usize = 32;
/// Length of the nonce stored with each sealed blob, bytes.
pub const NONCE_LEN: usize = 24;
/// Length of the authentication tag appended to each ciphertext, bytes.
pub const TAG_LEN: usize = 16;

/// Identifies a vault key. Chosen by the operator (e.g. 1, 2, 3 as keys rotate); stored in
/// clear in every sealed record and key check.
pub type KeyId = u32;

/// A 32-byte vault key. `Debug` never shows it.
#[derive(Clone)]
pub struct VaultKey(Secret<[u8; KEY_LEN]>);

impl VaultKey {
    /// Wraps 32 key bytes (the caller decodes them, e.g. from base64 in the environment
    /// variable named by `vault.key_env`; the library never reads the environment).
    ///
    /// # Errors
    /// [`VaultError::KeyLength`] when `bytes` is not exactly 32 bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Result<VaultKey, VaultError> {
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| VaultError::KeyLength { len: bytes.len() })?;
        Ok(VaultKey(Secret::new(key)))
    }

    /// Decodes a key from standard base64 (padding optional; surrounding whitespace is
    /// ignored), as `openssl rand -base64 32` prints it.
    ///
    /// # Errors
    /// [`VaultError::KeyNotBase64`]; [`VaultError::KeyLength`] when it does not decode to
    /// 32 bytes.
    pub fn from_base64(encoded: &str) -> Result<VaultKey, VaultError> {
        use base64::Engine as _;
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let bytes = Secret::new(
            engine
                .decode(encoded.trim())
                .map_err(|_| VaultError::KeyNotBase64)?,
        );
        VaultKey::from_bytes(bytes.expose())
    }

    /// A fresh random key (for tests and for generating a key to give an operator).
    pub fn generate() -> VaultKey {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        VaultKey(Secret::new(key.into()))
    }

    /// The key bytes. Only for handing the key to an operator once; never log them.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        self.0.expose()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.expose().into())
    }
}

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::secret::REDACTED)
    }
}

/// The keys of a vault: `current` seals every write; `old` keys only open records sealed
/// before a rotation.
///
/// To rotate: give the new key a new id as `current` and move the previous current key into
/// `old`. Records are re-sealed with the new key as they are written; drop an old key only
/// once no record names it (a read of such a record fails with
/// [`VaultError::KeyNotInKeyring`], it is not quarantined).
#[derive(Debug, Clone)]
pub struct Keyring {
    /// The key id and key used for every new seal.
    pub current: (KeyId, VaultKey),
    /// Keys still accepted for reading.
    pub old: Vec<(KeyId, VaultKey)>,
}

impl Keyring {
    /// A keyring with one key and no old keys.
    pub fn single(key_id: KeyId, key: VaultKey) -> Keyring {
        Keyring {
            current: (key_id, key),
            old: Vec::new(),
        }
    }

    /// The keyring `config` describes: the current key from `vault.key_env` under
    /// `vault.key_id`, and each of `vault.old_keys`. `env` looks a variable up (a binary
    /// passes `|k| std::env::var(k).ok()`; the library never reads the environment).
    ///
    /// # Errors
    /// [`VaultError::KeyMissing`] or [`VaultError::KeyInvalid`], naming the variable;
    /// [`VaultError::DuplicateKeyId`].
    pub fn from_config(
        config: &crate::config::VaultConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Keyring, VaultError> {
        let load = |var: &str, key: &'static str| -> Result<VaultKey, VaultError> {
            let value = Secret::new(env(var).ok_or_else(|| VaultError::KeyMissing {
                env: var.to_string(),
                key,
            })?);
            VaultKey::from_base64(value.expose()).map_err(|e| VaultError::KeyInvalid {
                env: var.to_string(),
                reason: match e {
                    VaultError::KeyLength { len } => {
                        format!("it decodes to {len} bytes, 32 are needed")
                    }
                    _ => "it is not base64".to_string(),
                },
            })
        };
        let ring = Keyring {
            current: (config.key_id, load(&config.key_env, "vault.key_env")?),
            old: config
                .old_keys
                .iter()
                .map(|old| Ok((old.key_id, load(&old.env, "vault.old_keys")?)))
                .collect::<Result<_, VaultError>>()?,
        };
        ring.index()?;
        Ok(ring)
    }

    /// Checks that key ids are unique.
    ///
    /// # Errors
    /// [`VaultError::DuplicateKeyId`].
    pub(crate) fn index(&self) -> Result<BTreeMap<KeyId, VaultKey>, VaultError> {
        let mut map = BTreeMap::new();
        for (id, key) in std::iter::once(&self.current).chain(self.old.iter()) {
            if map.insert(*id, key.clone()).is_some() {
                return Err(VaultError::DuplicateKeyId { key_id: *id });
            }
        }
        Ok(map)
    }
}

/// Seals `plaintext` under `key`, binding `aad`. Output: `nonce ‖ ciphertext ‖ tag`.
pub(crate) fn seal(key: &VaultKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let ciphertext = key
        .cipher()
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// Opens `nonce ‖ ciphertext ‖ tag`; `None` when the tag does not verify (wrong key, wrong
/// associated data, or damaged bytes) or the blob is too short.
pub(crate) fn open(key: &VaultKey, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    key.cipher()
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

/// Name of the key-check metadata record of a key id.
pub(crate) fn key_check_name(key_id: KeyId) -> String {
    format!("keycheck/{key_id:010}")
}

const KEY_CHECK_PREFIX: &str = "keycheck/";
const KEY_CHECK_PLAINTEXT: &[u8] = b"lark-auth vault key check v1";

fn key_check_aad(key_id: KeyId) -> Vec<u8> {
    let mut aad = b"lark-auth/keycheck/v1\0".to_vec();
    aad.extend_from_slice(&key_id.to_be_bytes());
    aad
}

/// A sealed key check for `key_id`.
pub(crate) fn make_key_check(key_id: KeyId, key: &VaultKey) -> Vec<u8> {
    seal(key, &key_check_aad(key_id), KEY_CHECK_PLAINTEXT)
}

/// True when `sealed` is the key check of `key_id` under `key`.
pub(crate) fn verify_key_check(key_id: KeyId, key: &VaultKey, sealed: &[u8]) -> bool {
    open(key, &key_check_aad(key_id), sealed).as_deref() == Some(KEY_CHECK_PLAINTEXT)
}

/// Parses a key-check record name back into its key id.
pub(crate) fn parse_key_check_name(name: &str) -> Option<KeyId> {
    name.strip_prefix(KEY_CHECK_PREFIX)?.parse().ok()
}

/// The metadata prefix of all key checks.
pub(crate) const fn key_check_prefix() -> &'static str {
    KEY_CHECK_PREFIX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let key = VaultKey::generate();
        let sealed = seal(&key, b"ad-1", b"token");
        assert_eq!(open(&key, b"ad-1", &sealed).as_deref(), Some(&b"token"[..]));
        assert_eq!(open(&key, b"ad-2", &sealed), None, "other associated data");
        assert_eq!(
            open(&VaultKey::generate(), b"ad-1", &sealed),
            None,
            "other key"
        );
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert_eq!(open(&key, b"ad-1", &damaged), None, "damaged");
        assert_eq!(open(&key, b"ad-1", &sealed[..10]), None, "truncated");
    }

    #[test]
    fn key_length_and_duplicate_ids_are_refused() {
        assert!(matches!(
            VaultKey::from_bytes(&[0; 31]),
            Err(VaultError::KeyLength { len: 31 })
        ));
        let k = VaultKey::from_bytes(&[7; 32]).unwrap();
        assert_eq!(format!("{k:?}"), crate::secret::REDACTED);
        let ring = Keyring {
            current: (1, k.clone()),
            old: vec![(1, k)],
        };
        assert!(matches!(
            ring.index(),
            Err(VaultError::DuplicateKeyId { key_id: 1 })
        ));
    }

    #[test]
    fn keys_come_from_base64_in_the_named_variables() {
        use base64::Engine as _;
        let raw = [9u8; 32];
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(
            VaultKey::from_base64(&format!(" {b64}\n"))
                .unwrap()
                .expose(),
            &raw
        );
        assert!(matches!(
            VaultKey::from_base64("not base64!"),
            Err(VaultError::KeyNotBase64)
        ));
        assert!(matches!(
            VaultKey::from_base64("AAAA"),
            Err(VaultError::KeyLength { len: 3 })
        ));

        let mut config = crate::config::VaultConfig::default();
        config.key_id = 2;
        config.old_keys = vec![crate::config::OldVaultKey {
            key_id: 1,
            env: "OLD_KEY".into(),
        }];
        let old = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        let ring = Keyring::from_config(&config, |k| match k {
            "LARK_AUTH_VAULT_KEY" => Some(b64.clone()),
            "OLD_KEY" => Some(old.clone()),
            _ => None,
        })
        .unwrap();
        assert_eq!(ring.current.0, 2);
        assert_eq!(ring.old[0].0, 1);
        assert_eq!(ring.old[0].1.expose(), &[1u8; 32]);

        let err = Keyring::from_config(&config, |_| None).unwrap_err();
        assert!(err.to_string().contains("LARK_AUTH_VAULT_KEY"), "{err}");
        let err = Keyring::from_config(&config, |k| {
            (k == "LARK_AUTH_VAULT_KEY").then(|| "c2hvcnQ=".to_string())
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("LARK_AUTH_VAULT_KEY") && text.contains("5 bytes"),
            "{text}"
        );
        assert!(!text.contains("c2hvcnQ"), "{text}");
    }

    #[test]
    fn key_check_detects_the_wrong_key() {
        let key = VaultKey::generate();
        let check = make_key_check(3, &key);
        assert!(verify_key_check(3, &key, &check));
        assert!(!verify_key_check(3, &VaultKey::generate(), &check));
        assert!(!verify_key_check(4, &key, &check));
        assert_eq!(parse_key_check_name(&key_check_name(42)), Some(42));
    }
}
