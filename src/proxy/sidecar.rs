//! The sidecar door: the auth-proxy wire protocol v1 of the official Lark CLI
//! (larksuite/cli, package `sidecar`; `shared/docs/lark-cli-sidecar.md`), server side, on
//! its own listener (`[sidecar] listen`).
//!
//! A sandboxed `lark-cli` (or MCP tool) sends its OpenAPI request line unchanged to this
//! listener with the `X-Lark-Proxy-*` headers and an HMAC-SHA256 signature under its own
//! key; it holds no token. [`verify`] checks the request in the protocol's order, each
//! refusal with its status and nothing sent upstream:
//!
//! 1. `X-Lark-Proxy-Version` is `v1` (400); `X-Lark-Proxy-Timestamp` present (400), unix
//!    seconds within [`MAX_SKEW_SECS`] of now (401);
//! 2. the body (read up to `proxy.max_body_bytes`, else 413) hashes to
//!    `X-Lark-Body-SHA256` (400);
//! 3. `X-Lark-Proxy-Target` is an https origin, no path, query, fragment or userinfo
//!    (403); `X-Lark-Proxy-Identity` and `X-Lark-Proxy-Auth-Header` present (400);
//! 4. the signature over the [`canonical_string`] verifies under one client's key, compared
//!    in constant time (401): that client is the caller;
//! 5. the target host is the brand's open, accounts or mcp host (403), mapped onto the
//!    configured base URL (never a host from the request); the identity is one the client
//!    may use (403; `user` for a client bound to no user: `no_user_bound`); the auth
//!    header is `Authorization`, `X-Lark-MCP-UAT` (with `user`) or `X-Lark-MCP-TAT` (with
//!    `bot`) (403);
//! 6. the path stays in its tree (`/open-apis/…` on the open host; 400).
//!
//! The call then goes through the same [`Forwarder`] as the REST door (door `sidecar`,
//! caller = the client's name): the bound user's token (`user`) or the app's (`bot`),
//! injected into the signed auth header (`Bearer ` only for `Authorization`), the
//! client's own `Authorization` / `X-Lark-MCP-*` / proxy headers dropped, refresh and
//! retry once, scope authorization on 99991679, one audit line, the metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::http::Method;
use actix_web::http::header::HeaderMap;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::forwarder::{AuthHeader, Forwarder, ProxyRequest, ProxySettings, read_body};
use super::{Identity, ProxyError, check_path, check_segments, mask_path};
use crate::config::{Brand, Config, SidecarIdentity};
use crate::secret::Secret;

/// Largest allowed distance between `X-Lark-Proxy-Timestamp` and now, seconds: exactly
/// 60 s passes, 61 s (either way) is refused.
pub const MAX_SKEW_SECS: i64 = 60;

/// The only protocol version served.
pub const PROTOCOL_VERSION: &str = "v1";

/// `X-Lark-Proxy-Version`.
pub const HEADER_VERSION: &str = "X-Lark-Proxy-Version";
/// `X-Lark-Proxy-Target`.
pub const HEADER_TARGET: &str = "X-Lark-Proxy-Target";
/// `X-Lark-Proxy-Identity`.
pub const HEADER_IDENTITY: &str = "X-Lark-Proxy-Identity";
/// `X-Lark-Proxy-Auth-Header`.
pub const HEADER_AUTH_HEADER: &str = "X-Lark-Proxy-Auth-Header";
/// `X-Lark-Proxy-Timestamp`.
pub const HEADER_TIMESTAMP: &str = "X-Lark-Proxy-Timestamp";
/// `X-Lark-Body-SHA256`.
pub const HEADER_BODY_SHA256: &str = "X-Lark-Body-SHA256";
/// `X-Lark-Proxy-Signature`.
pub const HEADER_SIGNATURE: &str = "X-Lark-Proxy-Signature";

/// One `[[sidecar.clients]]` entry with its key resolved.
#[derive(Clone)]
pub struct SidecarClient {
    /// Its name (logs, audit lines).
    pub name: String,
    /// Its HMAC key, used as the bytes of its text.
    pub key: Secret<String>,
    /// The user it acts as; `None`: the bot identity only.
    pub open_id: Option<String>,
    /// The identities it may ask for.
    pub identities: Vec<SidecarIdentity>,
}

impl std::fmt::Debug for SidecarClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SidecarClient")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("open_id", &self.open_id)
            .field("identities", &self.identities)
            .finish()
    }
}

/// A target host the door serves, and the configured base URL it is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedHost {
    /// The brand's host, e.g. `open.feishu.cn`.
    pub host: String,
    /// The configured base URL, without a trailing `/`.
    pub base_url: String,
    /// Whether paths must be `/open-apis/…` (the open host).
    pub openapi_tree: bool,
}

/// What the sidecar listener's workers are built from (`Send`, cloned per worker).
#[derive(Clone)]
pub struct SidecarSettings {
    /// The clients, each with its key.
    pub clients: Arc<Vec<SidecarClient>>,
    /// The brand's open, accounts and mcp hosts and their configured base URLs.
    pub hosts: Arc<Vec<MappedHost>>,
    /// The forwarder's settings (shared with the REST door).
    pub proxy: ProxySettings,
}

impl SidecarSettings {
    /// Settings from `[sidecar]` (keys resolved), `[app] brand` and `[endpoints]`.
    ///
    /// # Errors
    /// [`crate::config::ConfigError::MissingEnv`] when a client's key is not resolved.
    pub fn new(
        config: &Config,
        proxy: ProxySettings,
    ) -> Result<SidecarSettings, crate::config::ConfigError> {
        config.check_sidecar_keys()?;
        let clients = config
            .sidecar
            .clients
            .iter()
            .map(|c| SidecarClient {
                name: c.name.clone(),
                key: c.key.clone().unwrap_or_default(),
                open_id: Some(c.open_id.clone()).filter(|o| !o.is_empty()),
                identities: c.identities.clone(),
            })
            .collect();
        Ok(SidecarSettings {
            clients: Arc::new(clients),
            hosts: Arc::new(brand_hosts(config)),
            proxy,
        })
    }
}

/// The brand's open, accounts and mcp hosts, each mapped onto its configured base URL.
pub fn brand_hosts(config: &Config) -> Vec<MappedHost> {
    let domain = match config.app.brand {
        Brand::Feishu => "feishu.cn",
        Brand::Lark => "larksuite.com",
    };
    vec![
        MappedHost {
            host: format!("open.{domain}"),
            base_url: config.open_base_url(),
            openapi_tree: true,
        },
        MappedHost {
            host: format!("accounts.{domain}"),
            base_url: config.accounts_base_url(),
            openapi_tree: false,
        },
        MappedHost {
            host: format!("mcp.{domain}"),
            base_url: config.mcp_base_url(),
            openapi_tree: false,
        },
    ]
}

/// The signed fields of a request, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical<'a> {
    /// `X-Lark-Proxy-Version`.
    pub version: &'a str,
    /// The request method as sent (`GET`).
    pub method: &'a str,
    /// The target's authority as sent (`open.feishu.cn`, port included when given).
    pub host: &'a str,
    /// The request URI as received (`/open-apis/im/v1/chats?page_size=20`).
    pub path_and_query: &'a str,
    /// `X-Lark-Body-SHA256`.
    pub body_sha256: &'a str,
    /// `X-Lark-Proxy-Timestamp`.
    pub timestamp: &'a str,
    /// `X-Lark-Proxy-Identity`.
    pub identity: &'a str,
    /// `X-Lark-Proxy-Auth-Header`.
    pub auth_header: &'a str,
}

/// The canonical string: the eight fields joined with `\n` in the protocol's order, no
/// trailing newline.
///
/// ```
/// use lark_auth::proxy::sidecar::{Canonical, canonical_string};
///
/// let text = canonical_string(&Canonical {
///     version: "v1",
///     method: "GET",
///     host: "open.feishu.cn",
///     path_and_query: "/open-apis/authen/v1/user_info",
///     body_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
///     timestamp: "1767225600",
///     identity: "user",
///     auth_header: "Authorization",
/// });
/// assert_eq!(text.lines().count(), 8);
/// assert!(text.ends_with("\nuser\nAuthorization"));
/// ```
pub fn canonical_string(c: &Canonical<'_>) -> String {
    [
        c.version,
        c.method,
        c.host,
        c.path_and_query,
        c.body_sha256,
        c.timestamp,
        c.identity,
        c.auth_header,
    ]
    .join("\n")
}

/// Lowercase hex SHA-256 of `body`.
pub fn body_sha256(body: &[u8]) -> String {
    hex_lower(&Sha256::digest(body))
}

/// Lowercase hex HMAC-SHA256 of `text` under `key` (the key's text as bytes).
pub fn sign(key: &Secret<String>, text: &str) -> String {
    hex_lower(&mac(key, text).finalize().into_bytes())
}

fn mac(key: &Secret<String>, text: &str) -> Hmac<Sha256> {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(text.as_bytes());
    mac
}

/// Whether `signature` (lowercase hex) is the HMAC of `text` under `key`, compared in
/// constant time (`hmac`'s `verify_slice`).
pub fn verifies(key: &Secret<String>, text: &str, signature: &str) -> bool {
    let Some(bytes) = hex_decode_lower(signature) else {
        return false;
    };
    mac(key, text).verify_slice(&bytes).is_ok()
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Decodes lowercase hex of a 32-byte MAC; `None` for anything else.
fn hex_decode_lower(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Parses `X-Lark-Proxy-Target`: an https origin, the authority returned as written
/// (what the client signed).
///
/// # Errors
/// [`ProxyError::InvalidTarget`] for another scheme, a path, query, fragment, userinfo or
/// an empty host.
pub fn parse_target(target: &str) -> Result<&str, ProxyError> {
    let Some((scheme, rest)) = target.split_once("://") else {
        return Err(ProxyError::InvalidTarget("must be https://host"));
    };
    if !scheme.eq_ignore_ascii_case("https") {
        return Err(ProxyError::InvalidTarget("scheme must be https"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(ProxyError::InvalidTarget("path not allowed"));
    }
    if authority.contains('?') {
        return Err(ProxyError::InvalidTarget("query not allowed"));
    }
    if authority.contains('#') {
        return Err(ProxyError::InvalidTarget("fragment not allowed"));
    }
    if authority.contains('@') {
        return Err(ProxyError::InvalidTarget("userinfo not allowed"));
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err(ProxyError::InvalidTarget("missing host"));
    }
    if !authority
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    {
        return Err(ProxyError::InvalidTarget("not a host"));
    }
    Ok(authority)
}

/// A request that passed every check: who sends it, as whom, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The client whose key verified.
    pub client: String,
    /// Whose token is injected.
    pub identity: Identity,
    /// Where the token goes.
    pub auth_header: AuthHeader,
    /// The configured base URL the target host maps onto.
    pub base_url: String,
}

/// The header `name`'s value as text; `None` when absent (or not visible ASCII).
fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Step 1: version and timestamp (`now` in unix seconds).
///
/// # Errors
/// `400 unsupported_version`, `400 missing_header`, `401 invalid_timestamp`.
pub fn check_version_and_time(headers: &HeaderMap, now: i64) -> Result<(), ProxyError> {
    let version = header(headers, HEADER_VERSION).unwrap_or_default();
    if version != PROTOCOL_VERSION {
        return Err(ProxyError::UnsupportedVersion(version.to_string()));
    }
    let timestamp = header(headers, HEADER_TIMESTAMP)
        .filter(|t| !t.is_empty())
        .ok_or(ProxyError::MissingHeader(HEADER_TIMESTAMP))?;
    let seconds: i64 = timestamp
        .parse()
        .map_err(|_| ProxyError::InvalidTimestamp("is not unix seconds"))?;
    if now.saturating_sub(seconds).saturating_abs() > MAX_SKEW_SECS {
        return Err(ProxyError::InvalidTimestamp(
            "is more than 60 s away from the proxy's clock",
        ));
    }
    Ok(())
}

/// Steps 2 to 6, once the body is read (step 1 passed): see the module docs.
///
/// # Errors
/// The [`ProxyError`] of the first check that fails.
pub fn verify(
    settings: &SidecarSettings,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Verified, ProxyError> {
    verify_naming(settings, method, path_and_query, headers, body, &mut None)
}

/// [`verify`], setting `client` to the client's name once its key verified (for the
/// audit line of a refusal after that).
fn verify_naming(
    settings: &SidecarSettings,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    client_name: &mut Option<String>,
) -> Result<Verified, ProxyError> {
    // 2. The body's hash.
    let claimed = header(headers, HEADER_BODY_SHA256)
        .filter(|v| !v.is_empty())
        .ok_or(ProxyError::MissingHeader(HEADER_BODY_SHA256))?;
    if claimed != body_sha256(body) {
        return Err(ProxyError::BodyHashMismatch);
    }
    // 3. The target, identity and auth header present.
    let target = header(headers, HEADER_TARGET)
        .filter(|v| !v.is_empty())
        .ok_or(ProxyError::MissingHeader(HEADER_TARGET))?;
    let host = parse_target(target)?;
    let identity = header(headers, HEADER_IDENTITY)
        .filter(|v| !v.is_empty())
        .ok_or(ProxyError::MissingHeader(HEADER_IDENTITY))?;
    let auth_header = header(headers, HEADER_AUTH_HEADER)
        .filter(|v| !v.is_empty())
        .ok_or(ProxyError::MissingHeader(HEADER_AUTH_HEADER))?;
    // 4. The signature: the client is the one whose key verifies (every key is tried, so
    // the time taken does not tell which one did).
    let signature = header(headers, HEADER_SIGNATURE).unwrap_or_default();
    let text = canonical_string(&Canonical {
        version: PROTOCOL_VERSION,
        method: method.as_str(),
        host,
        path_and_query,
        body_sha256: claimed,
        timestamp: header(headers, HEADER_TIMESTAMP).unwrap_or_default(),
        identity,
        auth_header,
    });
    let client = settings
        .clients
        .iter()
        .fold(None, |found, c| {
            let ok = verifies(&c.key, &text, signature);
            found.or(ok.then_some(c))
        })
        .ok_or(ProxyError::InvalidSignature)?;
    *client_name = Some(client.name.clone());
    // 5. The host, the identity, the auth header.
    let bare = host.to_ascii_lowercase();
    let bare = bare.strip_suffix(":443").unwrap_or(&bare);
    let mapped = settings
        .hosts
        .iter()
        .find(|h| h.host == bare)
        .ok_or_else(|| ProxyError::HostNotAllowed(host.to_string()))?;
    let asked = match identity {
        "user" => SidecarIdentity::User,
        "bot" => SidecarIdentity::Bot,
        other => {
            return Err(ProxyError::IdentityNotAllowed {
                client: client.name.clone(),
                identity: other.to_string(),
            });
        }
    };
    if !client.identities.contains(&asked) {
        return Err(ProxyError::IdentityNotAllowed {
            client: client.name.clone(),
            identity: identity.to_string(),
        });
    }
    let identity = match (asked, &client.open_id) {
        (SidecarIdentity::User, Some(open_id)) => Identity::User(open_id.clone()),
        (SidecarIdentity::User, None) => return Err(ProxyError::NoUserBound(client.name.clone())),
        (SidecarIdentity::Bot, _) => Identity::App,
    };
    let auth = match (AuthHeader::parse(auth_header), asked) {
        (Some(AuthHeader::Authorization), _)
        | (Some(AuthHeader::McpUat), SidecarIdentity::User)
        | (Some(AuthHeader::McpTat), SidecarIdentity::Bot) => {
            AuthHeader::parse(auth_header).unwrap_or_default()
        }
        _ => return Err(ProxyError::AuthHeaderNotAllowed(auth_header.to_string())),
    };
    // 6. The path stays in its tree.
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    if mapped.openapi_tree {
        check_path(path)?;
    } else {
        check_segments(path)?;
    }
    Ok(Verified {
        client: client.name.clone(),
        identity,
        auth_header: auth,
        base_url: mapped.base_url.clone(),
    })
}

/// Unix seconds now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Every request of the sidecar listener: verified, then forwarded.
async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    forwarder: web::Data<Forwarder>,
    settings: web::Data<SidecarSettings>,
) -> HttpResponse {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let refuse = |e: ProxyError, client: Option<&str>| {
        refused(&settings.proxy, &req, &path_and_query, client, &e);
        e.to_response()
    };
    if let Err(e) = check_version_and_time(req.headers(), unix_now()) {
        return refuse(e, None);
    }
    let limit = forwarder.settings().max_body_bytes;
    let body = match read_body(req.headers(), payload, limit).await {
        Ok(body) => body,
        Err(e) => return refuse(e, None),
    };
    let mut client = None;
    let verified = match verify_naming(
        &settings,
        req.method(),
        &path_and_query,
        req.headers(),
        &body,
        &mut client,
    ) {
        Ok(verified) => verified,
        Err(e) => return refuse(e, client.as_deref()),
    };
    let request = ProxyRequest {
        door: "sidecar",
        caller: verified.client,
        identity: verified.identity,
        method: req.method().clone(),
        base_url: Some(verified.base_url),
        auth_header: verified.auth_header,
        path_and_query,
        headers: req.headers().clone(),
        body,
    };
    forwarder
        .forward(request)
        .await
        .unwrap_or_else(|e| e.to_response())
}

/// The audit line and metrics of a request refused before anything was sent upstream.
fn refused(
    proxy: &ProxySettings,
    req: &HttpRequest,
    path_and_query: &str,
    client: Option<&str>,
    e: &ProxyError,
) {
    let identity = match header(req.headers(), HEADER_IDENTITY) {
        Some("user") => "user",
        Some("bot") => "app",
        _ => "unknown",
    };
    tracing::info!(
        target: "lark_auth::audit",
        door = "sidecar",
        caller = client.unwrap_or(""),
        identity,
        method = %req.method(),
        path = %mask_path(path_and_query),
        status = e.status().as_u16(),
        refused = e.code(),
        "sidecar request refused"
    );
    proxy
        .metrics
        .proxy_request("sidecar", identity, e.status().as_u16(), 0.0, false);
}

/// A running sidecar listener.
pub struct SidecarFront {
    /// The address actually bound (port 0 resolved).
    pub local_addr: SocketAddr,
    /// Stops the server.
    pub handle: actix_web::dev::ServerHandle,
}

/// Binds `listen` and serves the sidecar door on 2 worker threads (each with its own
/// [`Forwarder`]), inside the current actix System.
///
/// # Errors
/// The bind error (address in use, permission).
pub fn start(listen: SocketAddr, settings: SidecarSettings) -> std::io::Result<SidecarFront> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(Forwarder::new(settings.proxy.clone())))
            .app_data(web::Data::new(settings.clone()))
            .default_service(web::to(handle))
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(2)
    .bind(listen)?;
    let local_addr = server.addrs().first().copied().unwrap_or(listen);
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(SidecarFront { local_addr, handle })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    #[test]
    fn targets_must_be_https_origins() {
        assert_eq!(
            parse_target("https://open.feishu.cn").unwrap(),
            "open.feishu.cn"
        );
        assert_eq!(
            parse_target("https://open.feishu.cn:443/").unwrap(),
            "open.feishu.cn:443"
        );
        for bad in [
            "http://open.feishu.cn",
            "open.feishu.cn",
            "https://open.feishu.cn/open-apis",
            "https://open.feishu.cn?x=1",
            "https://open.feishu.cn#f",
            "https://u:p@open.feishu.cn",
            "https://",
            "https://open feishu.cn",
        ] {
            assert!(
                matches!(parse_target(bad), Err(ProxyError::InvalidTarget(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_timestamp_window_is_60_seconds_either_way() {
        let headers = |version: &str, ts: &str| {
            let mut h = HeaderMap::new();
            for (k, v) in [(HEADER_VERSION, version), (HEADER_TIMESTAMP, ts)] {
                if !v.is_empty() {
                    h.insert(
                        HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    );
                }
            }
            h
        };
        let now = 1_767_225_600;
        for ok in [now, now - 60, now + 60] {
            check_version_and_time(&headers("v1", &ok.to_string()), now).unwrap();
        }
        for (h, code) in [
            (headers("v1", &(now - 61).to_string()), "invalid_timestamp"),
            (headers("v1", &(now + 61).to_string()), "invalid_timestamp"),
            (headers("v1", "soon"), "invalid_timestamp"),
            (headers("v1", ""), "missing_header"),
            (headers("v2", &now.to_string()), "unsupported_version"),
            (headers("", &now.to_string()), "unsupported_version"),
        ] {
            assert_eq!(
                check_version_and_time(&h, now).unwrap_err().code(),
                code,
                "{h:?}"
            );
        }
    }

    #[test]
    fn signatures_verify_only_under_their_key() {
        let key = Secret::new("k".repeat(64));
        let other = Secret::new("o".repeat(64));
        let signature = sign(&key, "text");
        assert_eq!(signature.len(), 64);
        assert!(verifies(&key, "text", &signature));
        assert!(!verifies(&key, "text2", &signature));
        assert!(!verifies(&other, "text", &signature));
        assert!(!verifies(&key, "text", &signature.to_uppercase()));
        assert!(!verifies(&key, "text", ""));
        assert_eq!(
            body_sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
