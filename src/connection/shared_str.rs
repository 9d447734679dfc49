//! [`SharedStr`]: a string that shares the bytes it was read from, so forwarding an
//! event's ids costs a reference count, not an allocation each.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// An immutable UTF-8 string backed by [`Bytes`]: usually a slice of the received payload
/// or frame, else its own buffer. Cloning is a reference-count increment.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SharedStr(Bytes);

impl SharedStr {
    /// A string with static contents (no allocation).
    pub const fn from_static(s: &'static str) -> Self {
        SharedStr(Bytes::from_static(s.as_bytes()))
    }

    /// `s` as a slice of `owner` when it lies within `owner`'s bytes, else a copy.
    pub fn within(owner: &Bytes, s: &str) -> Self {
        let base = owner.as_ptr() as usize;
        let start = s.as_ptr() as usize;
        if start >= base && start + s.len() <= base + owner.len() {
            let offset = start - base;
            SharedStr(owner.slice(offset..offset + s.len()))
        } else {
            SharedStr::from(s)
        }
    }

    /// The string. (Checked for UTF-8 on each call, a few ns for an id; the bytes were
    /// valid UTF-8 when built, so this never comes out empty for that reason.)
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::hash::Hash for SharedStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        SharedStr(Bytes::from(s.into_bytes()))
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<std::borrow::Cow<'_, str>> for SharedStr {
    fn from(s: std::borrow::Cow<'_, str>) -> Self {
        match s {
            std::borrow::Cow::Borrowed(s) => SharedStr::from(s),
            std::borrow::Cow::Owned(s) => SharedStr::from(s),
        }
    }
}

impl From<SharedStr> for String {
    fn from(s: SharedStr) -> Self {
        s.as_str().to_owned()
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<String> for SharedStr {
    fn eq(&self, other: &String) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<SharedStr> for str {
    fn eq(&self, other: &SharedStr) -> bool {
        other == self
    }
}

impl PartialEq<SharedStr> for &str {
    fn eq(&self, other: &SharedStr) -> bool {
        other == self
    }
}

impl PartialEq<SharedStr> for String {
    fn eq(&self, other: &SharedStr) -> bool {
        other == self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_share_the_owner_and_others_are_copied() {
        let owner = Bytes::from_static(b"{\"id\":\"ev_1\"}");
        let text = std::str::from_utf8(&owner).unwrap();
        let id = SharedStr::within(&owner, &text[7..11]);
        assert_eq!(id, "ev_1");
        assert_eq!(id.as_bytes().as_ptr(), owner[7..].as_ptr());
        let other = SharedStr::within(&owner, "elsewhere");
        assert_eq!(other, "elsewhere");
        assert_eq!(String::from(other.clone()), "elsewhere".to_string());
        assert_eq!(format!("{other} {other:?}"), "elsewhere \"elsewhere\"");
        assert_eq!(SharedStr::from_static("x").len(), 1);
    }
}
