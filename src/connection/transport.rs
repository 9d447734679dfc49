//! I/O of one connection attempt: endpoint discovery over awc, then TCP (+ TLS) and the
//! WebSocket handshake, ending in a framed socket. No actor code here.
//!
//! `TCP_NODELAY` is set on the socket: request/ack traffic otherwise meets the delayed-ACK
//! and Nagle stall of about 40 ms (`rust-stack-notes.md` §6). TLS uses rustls with the ring
//! provider passed explicitly (no process-wide provider is installed) and ALPN
//! `http/1.1` only, since a WebSocket upgrade cannot run over h2.

use std::sync::Arc;
use std::time::Duration;

use actix_codec::{AsyncRead, AsyncWrite, Framed, FramedParts};
use actix_http::ws;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::AppCredentials;
use crate::protocol::endpoint::{self, ConnectFailure, EndpointRequest, WsEndpoint};
use crate::protocol::handshake::{self, HandshakeResponse};

/// A byte stream the WebSocket runs over: plain TCP or TLS over TCP.
pub trait WsIo: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> WsIo for T {}

/// The framed WebSocket: frames in, [`Outgoing`] out.
pub type WsFramed = Framed<Box<dyn WsIo>, ClientCodec>;

/// What the connection writes: one message, or WebSocket frames already encoded (masked,
/// as a client must) by [`ws::Parser::write_message`] — e.g. the acks of a whole read
/// batch, so they cost one sink write instead of one each.
#[derive(Debug)]
pub enum Outgoing {
    /// One message, encoded by [`ws::Codec`].
    Message(ws::Message),
    /// Complete, masked WebSocket frames, copied as they are.
    Frames(bytes::Bytes),
}

/// [`ws::Codec`] in client mode, also writing [`Outgoing::Frames`] unchanged.
pub struct ClientCodec(ws::Codec);

impl actix_codec::Decoder for ClientCodec {
    type Item = ws::Frame;
    type Error = ws::ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<ws::Frame>, ws::ProtocolError> {
        self.0.decode(src)
    }
}

impl actix_codec::Encoder<Outgoing> for ClientCodec {
    type Error = ws::ProtocolError;

    fn encode(&mut self, item: Outgoing, dst: &mut BytesMut) -> Result<(), ws::ProtocolError> {
        match item {
            Outgoing::Message(message) => self.0.encode(message, dst),
            Outgoing::Frames(frames) => {
                dst.extend_from_slice(&frames);
                Ok(())
            }
        }
    }
}

/// `POST {open_base_url}/callback/ws/endpoint` with header `locale: zh` and JSON
/// `{"AppID","AppSecret"}` (`lark-ws-protocol.md` §2.1), classified per §2.3.
///
/// # Errors
/// [`ConnectFailure::Transport`] (stage `discovery`) on network errors or timeout, or the
/// discovery kinds of [`endpoint::classify_discovery`].
pub async fn discover(
    client: &awc::Client,
    open_base_url: &str,
    credentials: &AppCredentials,
) -> Result<WsEndpoint, ConnectFailure> {
    let url = format!("{open_base_url}{}", endpoint::ENDPOINT_PATH);
    let body = EndpointRequest {
        app_id: &credentials.app_id,
        app_secret: &credentials.app_secret,
    };
    let transport = |detail: String| ConnectFailure::Transport {
        stage: "discovery",
        detail,
    };
    let mut response = client
        .post(url)
        .insert_header(("locale", "zh"))
        .send_json(&body)
        .await
        .map_err(|e| transport(e.to_string()))?;
    let status = response.status().as_u16();
    let bytes = response
        .body()
        .limit(256 * 1024)
        .await
        .map_err(|e| transport(e.to_string()))?;
    endpoint::classify_discovery(status, &bytes)
}

/// Dials the discovered URL: TCP connect (`TCP_NODELAY`), TLS for `wss`, then the
/// WebSocket handshake. The whole step is bounded by `timeout`.
///
/// # Errors
/// [`ConnectFailure::Transport`] (stage `handshake`) for network, TLS, timeout or protocol
/// errors; [`ConnectFailure::Handshake`] when the server refuses the upgrade.
pub async fn dial(
    endpoint: &WsEndpoint,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    max_frame_bytes: usize,
) -> Result<WsFramed, ConnectFailure> {
    match tokio::time::timeout(timeout, dial_inner(endpoint, tls, max_frame_bytes)).await {
        Ok(result) => result,
        Err(_) => Err(transport_err(format!(
            "no handshake within {} ms",
            timeout.as_millis()
        ))),
    }
}

fn transport_err(detail: String) -> ConnectFailure {
    ConnectFailure::Transport {
        stage: "handshake",
        detail,
    }
}

async fn dial_inner(
    endpoint: &WsEndpoint,
    tls: Arc<rustls::ClientConfig>,
    max_frame_bytes: usize,
) -> Result<WsFramed, ConnectFailure> {
    let url = url::Url::parse(endpoint.url.expose())
        .map_err(|_| transport_err("endpoint URL does not parse".into()))?;
    let host = url
        .host_str()
        .ok_or_else(|| transport_err("endpoint URL has no host".into()))?
        .to_string();
    let secure = match url.scheme() {
        "wss" => true,
        "ws" => false,
        other => return Err(transport_err(format!("unsupported scheme `{other}`"))),
    };
    let port = url
        .port_or_known_default()
        .unwrap_or(if secure { 443 } else { 80 });
    // Square brackets of an IPv6 literal must go for the socket address lookup.
    let lookup_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = tokio::net::TcpStream::connect((lookup_host.as_str(), port))
        .await
        .map_err(|e| transport_err(format!("tcp connect to {host}:{port}: {e}")))?;
    tcp.set_nodelay(true)
        .map_err(|e| transport_err(format!("set TCP_NODELAY: {e}")))?;
    let mut io: Box<dyn WsIo> = if secure {
        let name = rustls::pki_types::ServerName::try_from(lookup_host)
            .map_err(|_| transport_err(format!("`{host}` is not a valid TLS server name")))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| transport_err(format!("tls handshake with {host}: {e}")))?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };

    let (request, key) = handshake::build_request(&url, rand::random());
    io.write_all(&request)
        .await
        .map_err(|e| transport_err(format!("write upgrade request: {e}")))?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let n = io
            .read_buf(&mut buf)
            .await
            .map_err(|e| transport_err(format!("read upgrade response: {e}")))?;
        match handshake::parse_response(&buf, &key) {
            HandshakeResponse::Partial if n == 0 => {
                return Err(transport_err(
                    "connection closed during the handshake".into(),
                ));
            }
            HandshakeResponse::Partial => continue,
            HandshakeResponse::Refused(failure) => return Err(failure),
            HandshakeResponse::Accepted { head_len } => {
                let rest = buf.split_off(head_len);
                let codec = ClientCodec(ws::Codec::new().client_mode().max_size(max_frame_bytes));
                return Ok(Framed::from_parts(FramedParts::with_read_buf(
                    io, codec, rest,
                )));
            }
        }
    }
}
