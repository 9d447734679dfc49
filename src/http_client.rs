//! The one HTTP/TLS client setup shared by the long connection (discovery, `wss`) and the
//! OpenAPI client: rustls with the ring provider passed explicitly (no process-wide
//! provider is installed), webpki roots, ALPN `http/1.1` only (a WebSocket upgrade cannot
//! run over h2), and an awc client over it.

use std::sync::Arc;
use std::time::Duration;

/// The rustls client configuration used for https discovery and wss: ring provider,
/// webpki roots, ALPN `http/1.1`.
///
/// # Errors
/// Only if the ring provider rejects the default protocol versions (not expected).
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Builds an awc client (HTTP/1.1, the TLS config `tls`, `timeout` per request and for
/// connecting), as used for discovery and the OpenAPI.
pub fn http_client(tls: Arc<rustls::ClientConfig>, timeout: Duration) -> awc::Client {
    let connector = awc::Connector::new()
        .max_http_version(awc::http::Version::HTTP_11)
        .rustls_0_23(tls)
        .timeout(timeout)
        .handshake_timeout(timeout);
    awc::Client::builder()
        .connector(connector)
        .timeout(timeout)
        .finish()
}
