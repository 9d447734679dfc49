//! Endpoint discovery (`POST {open_base_url}/callback/ws/endpoint`), the server's
//! `ClientConfig`, the wss URL, and the classification of connection failures.
//!
//! Source: `lark-ws-protocol.md` §2 (discovery request/response, `ClientConfig` units,
//! URL query parameters), §2.3 and §3 (retryable vs fatal errors), §8 item 15 (config
//! validation).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Path appended to the open platform base URL for discovery (§2.1).
pub const ENDPOINT_PATH: &str = "/callback/ws/endpoint";

/// Discovery `code` meaning "system busy": retryable (§2.3).
pub const CODE_SYSTEM_BUSY: i64 = 1;
/// Discovery `code` meaning an internal platform error: retryable (§2.3).
pub const CODE_INTERNAL_ERROR: i64 = 1_000_040_343;
/// Handshake `handshake-autherrcode` meaning the app's connection limit (50) is exceeded:
/// fatal when paired with `handshake-status: 514` (§3, §9).
pub const AUTHERR_CONNECTION_LIMIT: i64 = 1_000_040_350;
/// `handshake-status` of an authentication refusal (§3).
pub const HANDSHAKE_STATUS_AUTH_FAILED: i64 = 514;
/// `handshake-status` of a forbidden (banned) app: fatal (§3).
pub const HANDSHAKE_STATUS_FORBIDDEN: i64 = 403;

/// Discovery request body: `{"AppID": "...", "AppSecret": "..."}` (exact key spelling, §2.1).
#[derive(Debug, Serialize)]
pub struct EndpointRequest<'a> {
    /// The app id (`cli_…`).
    #[serde(rename = "AppID")]
    pub app_id: &'a str,
    /// The app secret; serialized as its value (this type is only ever sent, never logged:
    /// its `Debug` shows the [`Secret`] wrapper's redaction).
    #[serde(rename = "AppSecret", serialize_with = "expose_secret")]
    pub app_secret: &'a Secret<String>,
}

fn expose_secret<S: serde::Serializer>(secret: &&Secret<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose())
}

/// Discovery response body: `{"code":0,"msg":"…","data":{"URL":"wss://…","ClientConfig":{…}}}`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct EndpointResponse {
    /// 0 on success; see [`classify_discovery`] for the others.
    #[serde(default)]
    pub code: i64,
    /// Human-readable message.
    #[serde(default)]
    pub msg: String,
    /// Present on success.
    #[serde(default)]
    pub data: Option<EndpointData>,
}

/// The `data` object of a discovery response.
#[derive(Clone, Default, Deserialize, Serialize)]
pub struct EndpointData {
    /// The wss URL to dial, opaque apart from `device_id` and `service_id` (§2.2).
    /// Carries the `access_key` and `ticket` credentials.
    #[serde(rename = "URL", default)]
    pub url: Option<String>,
    /// Server-side connection tuning; absent means "keep the current values".
    #[serde(rename = "ClientConfig", default)]
    pub client_config: Option<ClientConfig>,
}

impl fmt::Debug for EndpointData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointData")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("client_config", &self.client_config)
            .finish()
    }
}

/// `ClientConfig` as the server sends it in discovery responses and pong payloads (§2.2).
///
/// Every value is optional because a missing key must not become 0 (§8 item 15); units are
/// seconds, `ReconnectCount` is a number of attempts (negative = unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ClientConfig {
    /// `ReconnectCount`: attempts before giving up; negative (−1) = unlimited.
    #[serde(
        rename = "ReconnectCount",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reconnect_count: Option<i64>,
    /// `ReconnectInterval`, seconds: the cap of the delay between reconnect attempts.
    #[serde(
        rename = "ReconnectInterval",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reconnect_interval: Option<i64>,
    /// `ReconnectNonce`, seconds: upper bound of the random delay before the first attempt.
    #[serde(
        rename = "ReconnectNonce",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reconnect_nonce: Option<i64>,
    /// `PingInterval`, seconds between client pings.
    #[serde(
        rename = "PingInterval",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ping_interval: Option<i64>,
}

/// Bounds applied to server-sent `ClientConfig` values before they are obeyed.
pub mod limits {
    /// Smallest accepted `PingInterval`, seconds (0 would ping in a tight loop).
    pub const MIN_PING_INTERVAL_SECS: i64 = 1;
    /// Largest accepted `PingInterval`, seconds.
    pub const MAX_PING_INTERVAL_SECS: i64 = 3600;
    /// Smallest accepted `ReconnectInterval`, seconds.
    pub const MIN_RECONNECT_INTERVAL_SECS: i64 = 1;
    /// Largest accepted `ReconnectInterval`, seconds.
    pub const MAX_RECONNECT_INTERVAL_SECS: i64 = 3600;
    /// Largest accepted `ReconnectNonce`, seconds (0 is valid: no jitter).
    pub const MAX_RECONNECT_NONCE_SECS: i64 = 3600;
}

/// The connection tuning in force, after validation of every server-sent value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTuning {
    /// Time between pings.
    pub ping_interval: Duration,
    /// Cap of the exponential delay between reconnect attempts.
    pub reconnect_interval: Duration,
    /// Upper bound of the random delay before the first reconnect attempt.
    pub reconnect_nonce: Duration,
    /// Attempts allowed per outage; `None` = unlimited.
    pub reconnect_count: Option<u32>,
}

impl Default for ConnectionTuning {
    /// The SDK defaults before any server config (§2.2): ping 120 s, interval 120 s, nonce
    /// 30 s, unlimited attempts.
    fn default() -> Self {
        ConnectionTuning {
            ping_interval: Duration::from_secs(120),
            reconnect_interval: Duration::from_secs(120),
            reconnect_nonce: Duration::from_secs(30),
            reconnect_count: None,
        }
    }
}

/// A `ClientConfig` value that was refused, with the reason (logged as a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedSetting {
    /// The `ClientConfig` key, e.g. `"PingInterval"`.
    pub key: &'static str,
    /// The refused value.
    pub value: i64,
    /// Why it was refused.
    pub reason: &'static str,
}

impl ConnectionTuning {
    /// Applies the values present in `config` that pass validation and returns the ones
    /// refused. Missing keys keep the current value (unlike the SDKs, §8 item 15).
    pub fn apply(&mut self, config: &ClientConfig) -> Vec<RejectedSetting> {
        use limits::*;
        let mut rejected = Vec::new();
        if let Some(v) = config.ping_interval {
            if (MIN_PING_INTERVAL_SECS..=MAX_PING_INTERVAL_SECS).contains(&v) {
                self.ping_interval = Duration::from_secs(v as u64);
            } else {
                rejected.push(RejectedSetting {
                    key: "PingInterval",
                    value: v,
                    reason: "outside 1..=3600 seconds",
                });
            }
        }
        if let Some(v) = config.reconnect_interval {
            if (MIN_RECONNECT_INTERVAL_SECS..=MAX_RECONNECT_INTERVAL_SECS).contains(&v) {
                self.reconnect_interval = Duration::from_secs(v as u64);
            } else {
                rejected.push(RejectedSetting {
                    key: "ReconnectInterval",
                    value: v,
                    reason: "outside 1..=3600 seconds",
                });
            }
        }
        if let Some(v) = config.reconnect_nonce {
            if (0..=MAX_RECONNECT_NONCE_SECS).contains(&v) {
                self.reconnect_nonce = Duration::from_secs(v as u64);
            } else {
                rejected.push(RejectedSetting {
                    key: "ReconnectNonce",
                    value: v,
                    reason: "outside 0..=3600 seconds",
                });
            }
        }
        if let Some(v) = config.reconnect_count {
            if v < 0 {
                self.reconnect_count = None;
            } else if v == 0 {
                // 0 would disable reconnecting altogether (§8 item 15): refuse it.
                rejected.push(RejectedSetting {
                    key: "ReconnectCount",
                    value: v,
                    reason: "0 would disable reconnecting",
                });
            } else {
                self.reconnect_count = Some(u32::try_from(v).unwrap_or(u32::MAX));
            }
        }
        rejected
    }
}

/// A discovered long-connection endpoint.
#[derive(Clone)]
pub struct WsEndpoint {
    /// The full wss URL including `access_key` and `ticket`; use only to dial.
    pub url: Secret<String>,
    /// `device_id` query parameter: the connection id, kept as a string (19 digits, §2.2).
    pub device_id: String,
    /// `service_id` query parameter as int32; goes into every ping's `service` field.
    pub service_id: i32,
    /// The `ClientConfig` that came with the endpoint, if any.
    pub client_config: Option<ClientConfig>,
}

impl fmt::Debug for WsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsEndpoint")
            .field("url", &redact_url(self.url.expose()))
            .field("device_id", &self.device_id)
            .field("service_id", &self.service_id)
            .field("client_config", &self.client_config)
            .finish()
    }
}

impl WsEndpoint {
    /// The URL with `access_key` and `ticket` replaced by `[redacted]`, fit for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose())
    }
}

/// Replaces the values of the credential query parameters (`access_key`, `ticket`) of a
/// URL with `[redacted]`. Unparsable input is redacted whole.
pub fn redact_url(raw: &str) -> String {
    const SECRET_KEYS: [&str; 2] = ["access_key", "ticket"];
    let Ok(mut url) = url::Url::parse(raw) else {
        return crate::secret::REDACTED.to_string();
    };
    if url.query().is_none() {
        return url.to_string();
    }
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if SECRET_KEYS.contains(&k.as_ref()) {
                crate::secret::REDACTED.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.to_string()
}

/// Whether a failed connection attempt may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Try again after the reconnect delay (the SDKs' "server error").
    Retryable,
    /// Stop reconnecting and report (the SDKs' "client error"): bad credentials, app not
    /// allowed, banned app, connection limit exceeded.
    Fatal,
}

/// Why discovery or the WebSocket handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectFailure {
    /// Discovery answered with a non-200 HTTP status. Retryable.
    #[error("endpoint discovery answered HTTP {status}: {msg}")]
    DiscoveryHttp {
        /// HTTP status.
        status: u16,
        /// `msg` from a JSON body if any, else empty.
        msg: String,
    },
    /// Discovery answered a non-zero `code`. Retryable for 1 and 1000040343, fatal otherwise
    /// (bad credentials, app not allowed): check `app_id` / `app_secret` and that the app is
    /// a self-built app with long-connection events enabled.
    #[error("endpoint discovery refused with code {code}: {msg}")]
    DiscoveryCode {
        /// Platform `code`.
        code: i64,
        /// Platform `msg`.
        msg: String,
    },
    /// Discovery answered code 0 but no usable `data.URL`. Retryable.
    #[error("endpoint discovery returned no usable URL: {reason}")]
    DiscoveryNoUrl {
        /// What was wrong.
        reason: &'static str,
    },
    /// Discovery's body was not the expected JSON. Retryable.
    #[error("endpoint discovery returned malformed JSON: {detail}")]
    DiscoveryMalformed {
        /// Parser message (contains no secret: the body never holds one on error).
        detail: String,
    },
    /// The WebSocket handshake was refused. Fatal for 514 + 1000040350 (connection limit:
    /// stop other clients of this app) and for 403 (app banned); retryable otherwise.
    #[error(
        "websocket handshake refused: HTTP {http_status}, handshake-status {handshake_status:?}, autherrcode {auth_code:?}: {msg}"
    )]
    Handshake {
        /// HTTP status of the refusal.
        http_status: u16,
        /// `handshake-status` header, when present and numeric.
        handshake_status: Option<i64>,
        /// `handshake-autherrcode` header, when present and numeric.
        auth_code: Option<i64>,
        /// `handshake-msg` header.
        msg: String,
    },
    /// Transport failure (connect, TLS, timeout) during discovery or handshake. Retryable.
    #[error("transport error during {stage}: {detail}")]
    Transport {
        /// `"discovery"` or `"handshake"`.
        stage: &'static str,
        /// Error text (URLs in it are redacted by the caller).
        detail: String,
    },
}

impl ConnectFailure {
    /// Retryable or fatal, per the table of §2.3 and §3.
    pub fn class(&self) -> FailureClass {
        match self {
            ConnectFailure::DiscoveryCode { code, .. }
                if *code != CODE_SYSTEM_BUSY && *code != CODE_INTERNAL_ERROR =>
            {
                FailureClass::Fatal
            }
            ConnectFailure::Handshake {
                handshake_status: Some(HANDSHAKE_STATUS_AUTH_FAILED),
                auth_code: Some(AUTHERR_CONNECTION_LIMIT),
                ..
            } => FailureClass::Fatal,
            ConnectFailure::Handshake {
                handshake_status: Some(HANDSHAKE_STATUS_FORBIDDEN),
                ..
            } => FailureClass::Fatal,
            _ => FailureClass::Retryable,
        }
    }

    /// True when [`ConnectFailure::class`] is [`FailureClass::Fatal`].
    pub fn is_fatal(&self) -> bool {
        self.class() == FailureClass::Fatal
    }

    /// A stable short name for metrics and logs.
    pub fn cause(&self) -> &'static str {
        match self {
            ConnectFailure::DiscoveryHttp { .. } => "discovery_http",
            ConnectFailure::DiscoveryCode { .. } => "discovery_code",
            ConnectFailure::DiscoveryNoUrl { .. } => "discovery_no_url",
            ConnectFailure::DiscoveryMalformed { .. } => "discovery_malformed",
            ConnectFailure::Handshake { .. } => "handshake_refused",
            ConnectFailure::Transport { .. } => "transport",
        }
    }
}

/// Interprets a discovery answer (HTTP status and body).
///
/// # Errors
/// A [`ConnectFailure`] of the discovery kinds; use [`ConnectFailure::class`] to decide
/// whether to retry.
pub fn classify_discovery(http_status: u16, body: &[u8]) -> Result<WsEndpoint, ConnectFailure> {
    if http_status != 200 {
        let msg = serde_json::from_slice::<EndpointResponse>(body)
            .map(|r| r.msg)
            .unwrap_or_default();
        return Err(ConnectFailure::DiscoveryHttp {
            status: http_status,
            msg,
        });
    }
    let response: EndpointResponse =
        serde_json::from_slice(body).map_err(|e| ConnectFailure::DiscoveryMalformed {
            detail: e.to_string(),
        })?;
    if response.code != 0 {
        return Err(ConnectFailure::DiscoveryCode {
            code: response.code,
            msg: response.msg,
        });
    }
    let data = response.data.ok_or(ConnectFailure::DiscoveryNoUrl {
        reason: "data is missing",
    })?;
    let raw_url = data
        .url
        .filter(|u| !u.is_empty())
        .ok_or(ConnectFailure::DiscoveryNoUrl {
            reason: "data.URL is missing or empty",
        })?;
    let parsed = url::Url::parse(&raw_url).map_err(|_| ConnectFailure::DiscoveryNoUrl {
        reason: "data.URL is not a URL",
    })?;
    if !matches!(parsed.scheme(), "ws" | "wss") {
        return Err(ConnectFailure::DiscoveryNoUrl {
            reason: "data.URL is not a ws:// or wss:// URL",
        });
    }
    let mut device_id = String::new();
    let mut service_id = None;
    for (k, v) in parsed.query_pairs() {
        match k.as_ref() {
            "device_id" if device_id.is_empty() => device_id = v.into_owned(),
            "service_id" if service_id.is_none() => service_id = v.parse::<i32>().ok(),
            _ => {}
        }
    }
    Ok(WsEndpoint {
        url: Secret::new(raw_url),
        device_id,
        // A missing service_id leaves pings with service 0, as the SDKs do.
        service_id: service_id.unwrap_or(0),
        client_config: data.client_config,
    })
}

/// Interprets a refused WebSocket handshake from its HTTP status and the three
/// `handshake-*` headers (§3). Header values that are not decimal count as absent.
pub fn classify_handshake(
    http_status: u16,
    handshake_status: Option<&str>,
    handshake_msg: Option<&str>,
    auth_code: Option<&str>,
) -> ConnectFailure {
    ConnectFailure::Handshake {
        http_status,
        handshake_status: handshake_status.and_then(|s| s.trim().parse().ok()),
        auth_code: auth_code.and_then(|s| s.trim().parse().ok()),
        msg: handshake_msg.unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "wss://msg-frontier.example.test/ws/v2?fpid=493&aid=552564&device_id=7390000000000000123&access_key=0123456789abcdef0123456789abcdef&service_id=33554678&ticket=5a1e2c1f-0000-4000-8000-000000000001";

    fn ok_body(url: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"code":0,"msg":"ok","data":{"URL":url,
            "ClientConfig":{"ReconnectCount":-1,"ReconnectInterval":120,"ReconnectNonce":30,"PingInterval":120}}}))
        .unwrap()
    }

    #[test]
    fn discovery_success_reads_ids_and_keeps_device_id_a_string() {
        let ep = classify_discovery(200, &ok_body(URL)).unwrap();
        assert_eq!(ep.device_id, "7390000000000000123");
        assert_eq!(ep.service_id, 33554678);
        assert_eq!(ep.client_config.unwrap().ping_interval, Some(120));
        assert_eq!(ep.url.expose(), URL);
    }

    #[test]
    fn endpoint_debug_and_redacted_url_hide_credentials() {
        let ep = classify_discovery(200, &ok_body(URL)).unwrap();
        for printed in [format!("{ep:?}"), ep.redacted_url()] {
            assert!(!printed.contains("0123456789abcdef"), "{printed}");
            assert!(!printed.contains("5a1e2c1f"), "{printed}");
            assert!(
                printed.contains("device_id=7390000000000000123"),
                "{printed}"
            );
        }
    }

    #[test]
    fn discovery_classification_follows_the_table() {
        let retry = |status, body: &str| {
            let e = classify_discovery(status, body.as_bytes()).unwrap_err();
            assert_eq!(e.class(), FailureClass::Retryable, "{e}");
        };
        let fatal = |body: &str| {
            let e = classify_discovery(200, body.as_bytes()).unwrap_err();
            assert_eq!(e.class(), FailureClass::Fatal, "{e}");
        };
        retry(500, "");
        retry(502, r#"{"code":1,"msg":"busy"}"#);
        retry(200, r#"{"code":1,"msg":"system busy"}"#);
        retry(200, r#"{"code":1000040343,"msg":"internal error"}"#);
        retry(200, r#"{"code":0,"msg":"ok"}"#);
        retry(200, r#"{"code":0,"data":{"URL":""}}"#);
        retry(200, "not json");
        fatal(r#"{"code":10003,"msg":"invalid app secret"}"#);
        fatal(r#"{"code":1000040350,"msg":"too many connections"}"#);
    }

    #[test]
    fn handshake_classification_follows_the_table() {
        let c = |s, a| classify_handshake(400, s, Some("m"), a).class();
        assert_eq!(c(Some("514"), Some("1000040350")), FailureClass::Fatal);
        assert_eq!(c(Some("514"), Some("1000040351")), FailureClass::Retryable);
        assert_eq!(c(Some("403"), None), FailureClass::Fatal);
        assert_eq!(c(Some("500"), None), FailureClass::Retryable);
        assert_eq!(c(None, None), FailureClass::Retryable);
    }

    #[test]
    fn client_config_is_validated_before_use() {
        let mut tuning = ConnectionTuning::default();
        let rejected = tuning.apply(&ClientConfig {
            ping_interval: Some(0),
            reconnect_interval: Some(5),
            reconnect_nonce: Some(-3),
            reconnect_count: Some(0),
        });
        assert_eq!(tuning.ping_interval, Duration::from_secs(120));
        assert_eq!(tuning.reconnect_interval, Duration::from_secs(5));
        assert_eq!(tuning.reconnect_nonce, Duration::from_secs(30));
        assert_eq!(tuning.reconnect_count, None);
        let keys: Vec<_> = rejected.iter().map(|r| r.key).collect();
        assert_eq!(keys, ["PingInterval", "ReconnectNonce", "ReconnectCount"]);

        let rejected = tuning.apply(&ClientConfig {
            ping_interval: Some(1_000_000),
            reconnect_count: Some(3),
            ..Default::default()
        });
        assert_eq!(rejected.len(), 1);
        assert_eq!(tuning.reconnect_count, Some(3));
    }
}
