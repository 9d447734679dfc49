//! A long-connection client run as its own process by `bench/compare-ws-clients` (through
//! `examples/compare_ws_clients.rs`), so its RSS and CPU time can be read from `/proc` like
//! those of the official SDK clients.
//!
//! Run: `cargo run --release --example ws_bench_client -- <mode> <base_url> <app_id>
//! <app_secret>` with `<mode>`:
//!
//! - `actor`: lark-auth's `ConnectionActor` (supervised, the configuration defaults of
//!   `serve`) with a consumer actor that drops every event: what a user of the library
//!   runs. Logs at `warn` to stderr, like the SDK clients at WARNING.
//! - `reference`: the bare stack on one task, no actors: discovery, WebSocket, frame
//!   read in place (`FrameView`, as the actor), chunk reassembly (`ChunkAssembler`), routing parse of the envelope (`EnvelopeHead`, as the actor),
//!   ack encode and write. The ceiling lark-auth's actor could reach with this stack.
//! - `trivial`: decode and ack on the last part, nothing else (no reassembly, no parse): a
//!   measure of the sandbox's own ceiling.
//!
//! `reference` and `trivial` neither ping nor reconnect; they run until the connection
//! ends. `actor` runs until killed.

use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_service::ServiceExt as _;
use awc::ws;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use lark_auth::config::{AppCredentials, Config};
use lark_auth::connection::{
    CallbackFailed, CardActionReceived, ConnectionActor, ConnectionOutputs, ConnectionStateChanged,
    EventReceived,
};
use lark_auth::protocol::chunk::{ChunkAssembler, ChunkLimits, ChunkOutcome};
use lark_auth::protocol::event::{CardActionResponse, EnvelopeHead};
use lark_auth::protocol::{AckPayload, FrameKind, FrameView};
use lark_auth::secret::Secret;

/// Drops every event, like a service whose consumer only enqueues.
struct NoopConsumer;

impl Actor for NoopConsumer {
    type Context = Context<Self>;
}

impl Handler<EventReceived> for NoopConsumer {
    type Result = ();
    fn handle(&mut self, _: EventReceived, _: &mut Context<Self>) {}
}

impl Handler<CardActionReceived> for NoopConsumer {
    type Result = Result<CardActionResponse, CallbackFailed>;
    fn handle(&mut self, _: CardActionReceived, _: &mut Context<Self>) -> Self::Result {
        Ok(CardActionResponse::default())
    }
}

impl Handler<ConnectionStateChanged> for NoopConsumer {
    type Result = ();
    fn handle(&mut self, _: ConnectionStateChanged, _: &mut Context<Self>) {}
}

async fn run_actor(base_url: String, app_id: String, app_secret: String) -> Result<(), String> {
    let config = Config::default();
    let consumer = NoopConsumer.start();
    let outputs = ConnectionOutputs {
        events: consumer.clone().recipient(),
        card_actions: consumer.clone().recipient(),
        states: consumer.clone().recipient(),
    };
    let credentials = AppCredentials {
        app_id,
        app_secret: Secret::new(app_secret),
    };
    let _actor = ConnectionActor::new(credentials, base_url, config.connection, outputs)
        .map_err(|e| e.to_string())?
        .start_supervised();
    // Runs until the benchmark kills the process.
    std::future::pending::<()>().await;
    Ok(())
}

/// Discovery and WebSocket connect with `TCP_NODELAY` (awc does not set it).
async fn connect(
    base_url: &str,
    app_id: &str,
    app_secret: &str,
) -> Result<actix_codec::Framed<awc::BoxedSocket, ws::Codec>, String> {
    let tcp = actix_tls::connect::ConnectorService::default().map(
        |conn: actix_tls::connect::Connection<actix_http::Uri, actix_rt::net::TcpStream>| {
            let _ = conn.io_ref().set_nodelay(true);
            conn
        },
    );
    let client = awc::Client::builder()
        .connector(awc::Connector::new().connector(tcp))
        .timeout(Duration::from_secs(10))
        .finish();
    let mut response = client
        .post(format!("{base_url}/callback/ws/endpoint"))
        .insert_header(("locale", "zh"))
        .send_json(&serde_json::json!({"AppID": app_id, "AppSecret": app_secret}))
        .await
        .map_err(|e| format!("discovery: {e}"))?;
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    let url = body["data"]["URL"]
        .as_str()
        .ok_or_else(|| format!("discovery answered no URL: {body}"))?
        .to_string();
    let (_, conn) = client
        .ws(url)
        .max_frame_size(4 << 20)
        .connect()
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(conn)
}

/// What to do with one WebSocket frame.
enum Step {
    Reply(ws::Message),
    Nothing,
    End,
}

/// The per-frame work of `reference` (reassemble, parse, ack) or `trivial` (ack the last
/// part).
fn answer(frame: ws::Frame, reference: bool, assembler: &mut ChunkAssembler) -> Step {
    let bytes = match frame {
        ws::Frame::Binary(bytes) => bytes,
        ws::Frame::Ping(p) => return Step::Reply(ws::Message::Pong(p)),
        ws::Frame::Close(_) => return Step::End,
        _ => return Step::Nothing,
    };
    // The same in-place read and ack as the actor's (the sandbox writes frames it takes).
    let Some(frame) = FrameView::parse(bytes) else {
        return Step::Nothing;
    };
    if frame.kind() != FrameKind::Event {
        return Step::Nothing;
    }
    let Ok(position) = frame.chunk_position(assembler.limits().max_parts) else {
        return Step::Nothing;
    };
    let ack = if reference {
        let part = frame.payload().unwrap_or_default();
        let payload = match assembler.accept(frame.message_id(), position, part, Instant::now()) {
            Ok(ChunkOutcome::Complete(payload)) => payload,
            _ => return Step::Nothing,
        };
        match EnvelopeHead::parse(&payload) {
            Ok(envelope) => {
                std::hint::black_box(&envelope);
                AckPayload::OK
            }
            Err(_) => AckPayload::FAILED,
        }
    } else {
        // Chunked events are acked on the last part, without reassembly.
        if position.seq + 1 != position.sum {
            return Step::Nothing;
        }
        AckPayload::OK
    };
    let mut out = bytes::BytesMut::new();
    frame.write_response(0, &ack, &mut out);
    Step::Reply(ws::Message::Binary(out.freeze()))
}

async fn run_bare(
    reference: bool,
    base_url: String,
    app_id: String,
    app_secret: String,
) -> Result<(), String> {
    let mut conn = connect(&base_url, &app_id, &app_secret).await?;
    let mut assembler = ChunkAssembler::new(ChunkLimits::default());
    // Answers every frame already received, then flushes the acks in one write (as the
    // actor's SinkWrite does), then waits for more.
    while let Some(item) = conn.next().await {
        let mut next = Some(item);
        while let Some(item) = next.take() {
            match answer(item.map_err(|e| e.to_string())?, reference, &mut assembler) {
                Step::Reply(message) => conn.feed(message).await.map_err(|e| e.to_string())?,
                Step::Nothing => {}
                Step::End => return conn.flush().await.map_err(|e| e.to_string()),
            }
            next = conn.next().now_or_never().flatten();
        }
        conn.flush().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, base_url, app_id, app_secret] = args.as_slice() else {
        eprintln!(
            "usage: ws_bench_client actor|reference|trivial <base_url> <app_id> <app_secret>"
        );
        std::process::exit(2);
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (base_url, app_id, app_secret) = (base_url.clone(), app_id.clone(), app_secret.clone());
    let result = actix::System::new().block_on(async move {
        match mode.as_str() {
            "actor" => run_actor(base_url, app_id, app_secret).await,
            "reference" => run_bare(true, base_url, app_id, app_secret).await,
            "trivial" => run_bare(false, base_url, app_id, app_secret).await,
            other => Err(format!("unknown mode {other:?}")),
        }
    });
    if let Err(e) = result {
        eprintln!("ws_bench_client: {e}");
        std::process::exit(1);
    }
}
