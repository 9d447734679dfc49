//! One POST of a push request ([`super::push::PushRequest`]) to a `[[events.forward]]`
//! target, used by the outbox deliveries and the forwarded card callbacks alike.
//!
//! A pooled keep-alive connection may have been closed by the target in the meantime: an
//! HTTP/1.0 server (Python's `http.server`, which the official SDK's samples use) answers
//! without `Connection: close` and then closes, and awc keeps the connection for reuse. A
//! POST on such a connection ends before any answer: "connector has been disconnected"
//! (end of stream) or a reset (the target closed with the request unread). That case is
//! sent again at once, once, on a new connection; every other failure is the caller's to
//! count and retry. (A target that really resets before answering gets the resend too:
//! deliveries are at least once anyway.)

use std::time::{Duration, Instant};

use awc::error::{ConnectError, SendRequestError};
use bytes::Bytes;

use super::push;

/// How a POST failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// No full answer within the bound.
    #[error("timeout after {0} ms")]
    Timeout(u128),
    /// Refused, reset, unreadable answer, ...: the transport's own words.
    #[error("{0}")]
    Failed(String),
}

/// A target's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body; `Err` with the reason when it could not be read in full (longer than
    /// the limit, connection lost).
    pub body: Result<Bytes, String>,
}

/// POSTs `request` to `url` and reads the answer's body (at most `max_answer` bytes),
/// all within `timeout`.
///
/// # Errors
/// [`PostError::Timeout`] past `timeout`; [`PostError::Failed`] for any other failure
/// (after the one resend on a connection found closed before it answered).
pub async fn post(
    client: &awc::Client,
    url: &str,
    request: &push::PushRequest,
    timeout: Duration,
    max_answer: usize,
) -> Result<Answer, PostError> {
    let deadline = Instant::now() + timeout;
    let attempt = async {
        match send(client, url, request, timeout, max_answer).await {
            Err(Sent::Stale) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match send(client, url, request, left, max_answer).await {
                    Err(Sent::Stale) => Err(PostError::Failed(
                        "the connection closed before an answer".into(),
                    )),
                    other => other.map_err(Sent::into_error),
                }
            }
            other => other.map_err(Sent::into_error),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result.map_err(|e| match e {
            PostError::Timeout(_) => PostError::Timeout(timeout.as_millis()),
            other => other,
        }),
        Err(_) => Err(PostError::Timeout(timeout.as_millis())),
    }
}

/// One send's failure.
enum Sent {
    /// The connection closed before the answer's head (a stale pooled connection).
    Stale,
    Timeout,
    Failed(String),
}

impl Sent {
    fn into_error(self) -> PostError {
        match self {
            Sent::Stale => PostError::Failed("the connection closed before an answer".into()),
            Sent::Timeout => PostError::Timeout(0),
            Sent::Failed(e) => PostError::Failed(e),
        }
    }
}

/// A reset or broken connection: the peer closed it (before any answer, here).
fn closed_by_peer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), ConnectionReset | BrokenPipe | ConnectionAborted)
}

async fn send(
    client: &awc::Client,
    url: &str,
    request: &push::PushRequest,
    timeout: Duration,
    max_answer: usize,
) -> Result<Answer, Sent> {
    let mut req = client
        .post(url)
        .camel_case()
        .timeout(timeout)
        .insert_header(("Content-Type", push::CONTENT_TYPE));
    for (name, value) in &request.headers {
        req = req.insert_header((*name, value.clone()));
    }
    let mut resp = match req.send_body(request.body.clone()).await {
        Ok(resp) => resp,
        Err(SendRequestError::Connect(ConnectError::Disconnected)) => return Err(Sent::Stale),
        Err(SendRequestError::Send(e)) if closed_by_peer(&e) => return Err(Sent::Stale),
        Err(SendRequestError::Response(actix_web::error::ParseError::Io(e)))
            if closed_by_peer(&e) =>
        {
            return Err(Sent::Stale);
        }
        Err(SendRequestError::Timeout) => return Err(Sent::Timeout),
        Err(e) => return Err(Sent::Failed(e.to_string())),
    };
    let status = resp.status().as_u16();
    let body = match resp.body().limit(max_answer).await {
        Ok(body) => Ok(body),
        Err(awc::error::PayloadError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            return Err(Sent::Timeout);
        }
        Err(e) => Err(e.to_string()),
    };
    Ok(Answer { status, body })
}
