//! The client side of the RFC 6455 opening handshake, as pure functions.
//!
//! Owned here rather than taken from awc because a refused Lark handshake carries its
//! reason in the `handshake-status`, `handshake-msg` and `handshake-autherrcode` response
//! headers (`lark-ws-protocol.md` §3), and awc's WebSocket client drops the response
//! headers of a non-101 answer. Framing after the handshake is actix-http's `ws::Codec`.

use base64::Engine as _;

use super::endpoint::{ConnectFailure, classify_handshake};

/// Largest response head accepted, bytes.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// The request head for `url` with the given 16-byte `Sec-WebSocket-Key` nonce.
///
/// No extra headers, cookies, subprotocols or extensions are sent, like every SDK (§3).
/// Returns the bytes to write and the base64 key to verify the answer with.
pub fn build_request(url: &url::Url, key_nonce: [u8; 16]) -> (Vec<u8>, String) {
    let key = base64::engine::general_purpose::STANDARD.encode(key_nonce);
    let host = url.host_str().unwrap_or_default();
    let host_header = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let mut target = url.path().to_string();
    if target.is_empty() {
        target.push('/');
    }
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    (request.into_bytes(), key)
}

/// Outcome of parsing the bytes received so far.
#[derive(Debug)]
pub enum HandshakeResponse {
    /// More bytes are needed.
    Partial,
    /// `101 Switching Protocols`, verified. `head_len` bytes belong to the head; anything
    /// after them is already WebSocket data.
    Accepted {
        /// Length of the response head in bytes.
        head_len: usize,
    },
    /// Refused or invalid; see [`ConnectFailure::class`] for whether to retry.
    Refused(ConnectFailure),
}

/// Parses the response head in `buf` and checks it against the request's `key`.
pub fn parse_response(buf: &[u8], key: &str) -> HandshakeResponse {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => {
            return HandshakeResponse::Partial;
        }
        Ok(httparse::Status::Partial) => {
            return invalid("response head larger than 16 KiB");
        }
        Err(_) => return invalid("response is not HTTP/1.1"),
    };
    let status = response.code.unwrap_or(0);
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    if status != 101 {
        return HandshakeResponse::Refused(classify_handshake(
            status,
            header("handshake-status"),
            header("handshake-msg"),
            header("handshake-autherrcode"),
        ));
    }
    if !header("upgrade").is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket")) {
        return invalid("101 without `Upgrade: websocket`");
    }
    let expected = actix_http::ws::hash_key(key.as_bytes());
    let accept_ok =
        header("sec-websocket-accept").is_some_and(|v| v.trim().as_bytes() == expected.as_slice());
    if !accept_ok {
        return invalid("Sec-WebSocket-Accept does not match the key");
    }
    HandshakeResponse::Accepted { head_len }
}

fn invalid(reason: &str) -> HandshakeResponse {
    HandshakeResponse::Refused(ConnectFailure::Transport {
        stage: "handshake",
        detail: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::endpoint::FailureClass;

    #[test]
    fn request_has_the_exact_target_and_no_extras() {
        let url = url::Url::parse("ws://127.0.0.1:8080/ws/v2?device_id=1&ticket=t").unwrap();
        let (req, key) = build_request(&url, [7; 16]);
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("GET /ws/v2?device_id=1&ticket=t HTTP/1.1\r\n"));
        assert!(text.contains("Host: 127.0.0.1:8080\r\n"));
        assert!(text.contains(&format!("Sec-WebSocket-Key: {key}\r\n")));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn accepted_response_is_verified() {
        // RFC 6455 §1.3 example key and accept value.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x82\x00";
        match parse_response(ok, key) {
            HandshakeResponse::Accepted { head_len } => assert_eq!(head_len, ok.len() - 2),
            other => panic!("{other:?}"),
        }
        let bad = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: AAAA\r\n\r\n";
        assert!(matches!(
            parse_response(bad, key),
            HandshakeResponse::Refused(_)
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 101 Swi", key),
            HandshakeResponse::Partial
        ));
    }

    #[test]
    fn refusal_headers_are_classified() {
        let limit = b"HTTP/1.1 400 Bad Request\r\nhandshake-status: 514\r\nhandshake-msg: limit\r\nhandshake-autherrcode: 1000040350\r\ncontent-length: 0\r\n\r\n";
        let HandshakeResponse::Refused(f) = parse_response(limit, "k") else {
            panic!()
        };
        assert_eq!(f.class(), FailureClass::Fatal);
        let retry = b"HTTP/1.1 400 Bad Request\r\nHandshake-Status: 514\r\nHandshake-Autherrcode: 1\r\n\r\n";
        let HandshakeResponse::Refused(f) = parse_response(retry, "k") else {
            panic!()
        };
        assert_eq!(f.class(), FailureClass::Retryable);
    }
}
