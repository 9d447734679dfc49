//! The platform's HTTP push form of an event (`lark-event-push.md`), as the event gateway
//! POSTs it to a `[[events.forward]]` target: pure code, no I/O.
//!
//! - Plain: the body is the schema 2.0 envelope bytes exactly as the long connection
//!   carried them; no signature headers.
//! - With the app's Encrypt Key: the body is `{"encrypt":"<base64>"}`, the base64 of a
//!   random 16-byte IV followed by the AES-256-CBC ciphertext (PKCS#7 padding) of the
//!   envelope bytes, under the key SHA-256(Encrypt Key as UTF-8); and the headers
//!   `X-Lark-Request-Timestamp` (unix seconds), `X-Lark-Request-Nonce` (random) and
//!   `X-Lark-Signature` = lowercase hex SHA-256 of `timestamp ‖ nonce ‖ encrypt_key ‖
//!   body` (the body as sent), which the official SDKs' dispatchers check.
//!
//! Crypto comes from RustCrypto (`aes`, `cbc`, `sha2`); nothing is hand-written.

use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// `X-Lark-Request-Timestamp`: unix seconds, decimal.
pub const HEADER_TIMESTAMP: &str = "X-Lark-Request-Timestamp";
/// `X-Lark-Request-Nonce`: a random string.
pub const HEADER_NONCE: &str = "X-Lark-Request-Nonce";
/// `X-Lark-Signature`: lowercase hex SHA-256 of timestamp, nonce, Encrypt Key and body.
pub const HEADER_SIGNATURE: &str = "X-Lark-Signature";
/// The content type the platform sends.
pub const CONTENT_TYPE: &str = "application/json; charset=utf-8";

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

/// An app's Encrypt Key, ready to encrypt and sign with. `Debug` never shows it.
#[derive(Clone)]
pub struct PushKey {
    /// The Encrypt Key as configured (signatures hash it as text).
    key: Secret<String>,
    /// SHA-256 of the key: the AES-256 key.
    aes_key: [u8; 32],
}

impl std::fmt::Debug for PushKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PushKey([redacted])")
    }
}

impl PushKey {
    /// The key for the Encrypt Key string `encrypt_key` (as the app's console shows it).
    pub fn new(encrypt_key: &Secret<String>) -> PushKey {
        let aes_key: [u8; 32] = Sha256::digest(encrypt_key.expose().as_bytes()).into();
        PushKey {
            key: encrypt_key.clone(),
            aes_key,
        }
    }
}

/// One HTTP push: the body to POST and the headers to send with it (besides
/// `Content-Type: application/json; charset=utf-8`, [`CONTENT_TYPE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    /// The request body.
    pub body: Bytes,
    /// `(name, value)` pairs: empty for a plain push; timestamp, nonce and signature for
    /// an encrypted one.
    pub headers: Vec<(&'static str, String)>,
}

/// The plain push of `envelope` (the envelope bytes as received): the bytes themselves,
/// no headers.
pub fn plain(envelope: Bytes) -> PushRequest {
    PushRequest {
        body: envelope,
        headers: Vec::new(),
    }
}

/// The encrypted push of `envelope` with a fresh random IV and nonce, signed at
/// `timestamp_s` (unix seconds).
pub fn encrypted(envelope: &[u8], key: &PushKey, timestamp_s: u64) -> PushRequest {
    let iv: [u8; 16] = rand::random();
    let nonce = format!("{:016x}", rand::random::<u64>());
    encrypted_with(envelope, key, timestamp_s, &nonce, iv)
}

/// [`encrypted`] with the IV and nonce given (deterministic: for tests and known-answer
/// checks).
pub fn encrypted_with(
    envelope: &[u8],
    key: &PushKey,
    timestamp_s: u64,
    nonce: &str,
    iv: [u8; 16],
) -> PushRequest {
    let ciphertext = Aes256CbcEnc::new(&key.aes_key.into(), &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(envelope);
    let mut sealed = Vec::with_capacity(16 + ciphertext.len());
    sealed.extend_from_slice(&iv);
    sealed.extend_from_slice(&ciphertext);
    let encoded = base64::engine::general_purpose::STANDARD.encode(sealed);
    // Base64 needs no JSON escaping.
    let body = Bytes::from(format!("{{\"encrypt\":\"{encoded}\"}}"));
    let timestamp = timestamp_s.to_string();
    let signature = signature(&timestamp, nonce, key, &body);
    PushRequest {
        body,
        headers: vec![
            (HEADER_TIMESTAMP, timestamp),
            (HEADER_NONCE, nonce.to_string()),
            (HEADER_SIGNATURE, signature),
        ],
    }
}

/// `X-Lark-Signature` of `body`: lowercase hex SHA-256 of `timestamp ‖ nonce ‖
/// encrypt_key ‖ body`.
pub fn signature(timestamp: &str, nonce: &str, key: &PushKey, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(timestamp.as_bytes());
    h.update(nonce.as_bytes());
    h.update(key.key.expose().as_bytes());
    h.update(body);
    let digest = h.finalize();
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

#[cfg(test)]
mod tests {
    use aes::cipher::BlockDecryptMut;

    use super::*;

    const ENVELOPE: &[u8] = br#"{"schema":"2.0","header":{"event_id":"ev_1","event_type":"im.message.receive_v1","create_time":"1700000000000","token":"vtok","app_id":"cli_x","tenant_key":"t"},"event":{"message":{"text":"\u4f60\u597d"}}}"#;

    /// Decrypts as the SDKs do (base64 → IV ‖ ciphertext → AES-256-CBC, key SHA-256 of the
    /// Encrypt Key, PKCS#7), from the key string, not from a `PushKey`.
    fn decrypt(encrypt_key: &str, body: &[u8]) -> Vec<u8> {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(v["encrypt"].as_str().unwrap())
            .unwrap();
        let key: [u8; 32] = Sha256::digest(encrypt_key.as_bytes()).into();
        let (iv, ct) = sealed.split_at(16);
        cbc::Decryptor::<aes::Aes256>::new(&key.into(), iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(ct)
            .unwrap()
    }

    #[test]
    fn plain_is_the_envelope_bytes_without_headers() {
        let push = plain(Bytes::from_static(ENVELOPE));
        assert_eq!(&push.body[..], ENVELOPE);
        assert!(push.headers.is_empty());
    }

    #[test]
    fn encrypted_decrypts_to_the_envelope_and_the_signature_is_the_documented_hash() {
        let key = PushKey::new(&Secret::new("test-encrypt-key".into()));
        let push = encrypted(ENVELOPE, &key, 1_700_000_123);
        assert_eq!(decrypt("test-encrypt-key", &push.body), ENVELOPE);
        let header = |n: &str| {
            push.headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(header("X-Lark-Request-Timestamp"), "1700000123");
        let nonce = header("X-Lark-Request-Nonce");
        assert!(!nonce.is_empty());
        let mut expected = Sha256::new();
        expected.update(format!("1700000123{nonce}test-encrypt-key").as_bytes());
        expected.update(&push.body);
        let expected: String = expected
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(header("X-Lark-Signature"), expected);
        // A fresh IV and nonce each time.
        let again = encrypted(ENVELOPE, &key, 1_700_000_123);
        assert_ne!(again.body, push.body);
    }

    #[test]
    fn known_answer_iv_first_pkcs7_base64() {
        // AES-256-CBC of 16 bytes of 0x10 padding alone (empty plaintext) under
        // SHA-256("k") with a zero IV: body is base64(IV ‖ one block).
        let key = PushKey::new(&Secret::new("k".into()));
        let push = encrypted_with(b"", &key, 1, "n", [0; 16]);
        let v: serde_json::Value = serde_json::from_slice(&push.body).unwrap();
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(v["encrypt"].as_str().unwrap())
            .unwrap();
        assert_eq!(sealed.len(), 32);
        assert_eq!(&sealed[..16], &[0u8; 16]);
        assert_eq!(decrypt("k", &push.body), b"");
        // Exactly one block of padding for a 16-byte plaintext too.
        let push = encrypted_with(&[7u8; 16], &key, 1, "n", [1; 16]);
        assert_eq!(decrypt("k", &push.body), [7u8; 16]);
    }

    #[test]
    fn known_answer_from_openssl() {
        // Expected values made independently: `openssl enc -aes-256-cbc -K
        // $(printf test-encrypt-key | sha256sum) -iv 000102…0f` and `sha256sum` of
        // `1700000123nonce-1test-encrypt-key{"encrypt":"…"}`.
        let key = PushKey::new(&Secret::new("test-encrypt-key".into()));
        let iv: [u8; 16] = std::array::from_fn(|i| i as u8);
        let push = encrypted_with(
            br#"{"schema":"2.0","header":{"event_id":"ev_1"}}"#,
            &key,
            1_700_000_123,
            "nonce-1",
            iv,
        );
        assert_eq!(
            std::str::from_utf8(&push.body).unwrap(),
            r#"{"encrypt":"AAECAwQFBgcICQoLDA0OD6VqgEYsGxsuO1CMI5TRI8YCAILXiJT7bws/K+9Xo1uyZSe0cFS6bKh5Pus94igvQQ=="}"#
        );
        assert_eq!(
            push.headers,
            vec![
                ("X-Lark-Request-Timestamp", "1700000123".to_string()),
                ("X-Lark-Request-Nonce", "nonce-1".to_string()),
                (
                    "X-Lark-Signature",
                    "b7e76ef75e17822c11fdf48c4a356aecd2ab2110e943f76448698859c89c7c9a".to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_key_is_never_shown() {
        let key = PushKey::new(&Secret::new("ek-s3cr3t".into()));
        assert!(!format!("{key:?}").contains("ek-s3cr3t"));
    }
}
