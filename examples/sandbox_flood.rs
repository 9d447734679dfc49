//! Measures the sandbox's flood mode against a minimal awc echo client (decode, ack,
//! encode, write: no chunk reassembly, no event parsing), i.e. the ceiling the sandbox
//! itself allows a client benchmark to reach.
//!
//! Run: `cargo run --release --example sandbox_flood -- [count] [window] [parts]`
//! (defaults 200000, 512, 1). Prints one report line per run. The client socket gets
//! `TCP_NODELAY` unless the environment variable `CLIENT_NAGLE` is set (to show the
//! 40 ms delayed-ACK stalls of rust-stack-notes §6).

use std::time::Duration;

use actix_service::ServiceExt as _;
use awc::ws;
use futures_util::{SinkExt as _, StreamExt as _};
use lark_auth::protocol::{AckPayload, Frame, FrameKind};
use lark_auth::sandbox::{FloodSpec, Sandbox, SandboxConfig};

async fn run(count: usize, window: usize, parts: usize) -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    // awc never sets TCP_NODELAY (rust-stack-notes §6): wrap its TCP step to set it, so
    // the client's acks are not held back by Nagle meeting the server's delayed ACK.
    let nodelay = std::env::var_os("CLIENT_NAGLE").is_none();
    let tcp = actix_tls::connect::ConnectorService::default().map(
        move |conn: actix_tls::connect::Connection<actix_http::Uri, actix_rt::net::TcpStream>| {
            let _ = conn.io_ref().set_nodelay(nodelay);
            conn
        },
    );
    let client = awc::Client::builder()
        .connector(awc::Connector::new().connector(tcp))
        .timeout(Duration::from_secs(10))
        .finish();
    let mut response = client
        .post(format!("{}/callback/ws/endpoint", sandbox.base_url()))
        .send_json(&serde_json::json!({"AppID": "cli_sandbox_app", "AppSecret": "sandbox-secret"}))
        .await
        .map_err(|e| e.to_string())?;
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    let url = body["data"]["URL"].as_str().ok_or("no URL")?.to_string();
    let (_, mut conn) = client
        .ws(url)
        .max_frame_size(1 << 20)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    sandbox
        .wait_for_connections(1, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;

    let echo = async move {
        while let Some(Ok(item)) = conn.next().await {
            if let ws::Frame::Binary(bytes) = item {
                let Ok(frame) = Frame::decode_bytes(bytes) else {
                    continue;
                };
                // Chunked floods are acked on the last part, without reassembly.
                let last = frame.header("seq").and_then(|s| s.parse::<usize>().ok())
                    == frame
                        .header("sum")
                        .and_then(|s| s.parse::<usize>().ok())
                        .map(|s| s - 1);
                if frame.kind() == FrameKind::Event && last {
                    let ack = frame.into_response(0, &AckPayload::OK);
                    if conn
                        .send(ws::Message::Binary(ack.encode_to_bytes()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let flood = sandbox.flood(FloodSpec {
        count,
        window,
        chunked_parts: (parts > 1).then_some(parts),
        ..FloodSpec::default()
    });
    let report =
        match futures_util::future::select(std::pin::pin!(flood), std::pin::pin!(echo)).await {
            futures_util::future::Either::Left((report, _)) => report.map_err(|e| e.to_string())?,
            futures_util::future::Either::Right(_) => return Err("client ended".into()),
        };
    println!(
        "count={count} window={window} parts={parts}: acked {} in {:.3} s = {:.0} events/s, p50 {:?}, p99 {:?}, max {:?}, non_200 {}, timed_out {}",
        report.acked,
        report.elapsed.as_secs_f64(),
        report.acks_per_sec(),
        report.p50_latency,
        report.p99_latency,
        report.max_latency,
        report.non_200,
        report.timed_out
    );
    sandbox.stop().await;
    Ok(())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut next = |default: usize| args.next().and_then(|a| a.parse().ok()).unwrap_or(default);
    let (count, window, parts) = (next(200_000), next(512), next(1));
    if let Err(e) = actix_rt::System::new().block_on(run(count, window, parts)) {
        eprintln!("sandbox_flood: {e}");
        std::process::exit(1);
    }
}
