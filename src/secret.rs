//! Redacting wrappers for secrets.
//!
//! Everything that grants access (the app secret, tokens, authorization codes, PKCE
//! `code_verifier`s, device codes, the vault key, and the `ticket` / `access_key` inside the
//! long-connection URL) is held in a [`Secret`] so that `Debug`, `Display` and `Serialize`
//! can never print it. The value is only reachable through [`Secret::expose`], which makes
//! every use greppable.

use std::fmt;

/// The text printed instead of a secret value.
pub const REDACTED: &str = "[redacted]";

/// A value that must never be logged.
///
/// `Debug` and `Display` print `[redacted]`; `Serialize` writes `"[redacted]"`. Equality
/// compares the values so tests can assert on them through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// Returns the secret value. Call it only where the value goes on the wire or into the
    /// vault, never into a log line or an error message.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Consumes the wrapper and returns the value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl Secret<String> {
    /// True when the secret is the empty string (e.g. an unset environment variable).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Secret(value)
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> serde::Serialize for Secret<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Secret<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_display_and_serialize_never_show_the_value() {
        let secret = Secret::new("app-secret-value-123".to_string());
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(format!("{secret:#?}"), REDACTED);
        let json = serde_json::to_string(&secret).unwrap();
        assert!(!json.contains("app-secret-value-123"), "{json}");

        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            name: &'static str,
            secret: Secret<String>,
        }
        let holder = Holder {
            name: "visible",
            secret: secret.clone(),
        };
        let printed = format!("{holder:?}");
        assert!(printed.contains("visible"));
        assert!(!printed.contains("app-secret-value-123"), "{printed}");
        assert_eq!(secret.expose(), "app-secret-value-123");
    }

    #[test]
    fn deserializes_the_plain_value() {
        let secret: Secret<String> = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(secret.expose(), "abc");
    }
}
