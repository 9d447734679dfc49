//! The sandbox (fake Lark long-connection side) against a raw awc WebSocket client:
//! discovery, tickets, handshake refusals, ping/pong, pushes, ack recording, closes.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use awc::ws;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use lark_auth::protocol::frame::Header;
use lark_auth::protocol::{AckPayload, Frame, FrameKind};
use lark_auth::sandbox::{
    DiscoveryFault, FloodError, FloodSpec, HandshakeFault, PushError, Sandbox, SandboxConfig,
};

type WsConn = actix_codec::Framed<awc::BoxedSocket, ws::Codec>;

const WAIT: Duration = Duration::from_secs(5);

fn client() -> awc::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    awc::Client::builder().timeout(WAIT).finish()
}

async fn discover(sandbox: &Sandbox, app_id: &str, secret: &str) -> (u16, serde_json::Value) {
    let mut response = client()
        .post(format!("{}/callback/ws/endpoint", sandbox.base_url()))
        .insert_header(("locale", "zh"))
        .send_json(&serde_json::json!({"AppID": app_id, "AppSecret": secret}))
        .await
        .expect("discovery request");
    let body = response.body().await.expect("discovery body");
    (
        response.status().as_u16(),
        serde_json::from_slice(&body).expect("discovery JSON"),
    )
}

async fn discover_url(sandbox: &Sandbox) -> String {
    let (status, body) = discover(sandbox, "cli_sandbox_app", "sandbox-secret").await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], 0, "{body}");
    body["data"]["URL"].as_str().expect("URL").to_string()
}

async fn dial(url: &str) -> Result<WsConn, awc::error::WsClientError> {
    client()
        .ws(url)
        .max_frame_size(1 << 20)
        .connect()
        .await
        .map(|(_, framed)| framed)
}

async fn connect(sandbox: &Sandbox) -> WsConn {
    let url = discover_url(sandbox).await;
    dial(&url).await.expect("handshake")
}

/// Next binary message as a Frame, answering protocol pings on the way.
async fn next_frame(conn: &mut WsConn) -> Frame {
    loop {
        let item = tokio::time::timeout(WAIT, conn.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("ws error");
        match item {
            ws::Frame::Binary(bytes) => return Frame::decode_bytes(bytes).expect("decodes"),
            ws::Frame::Ping(p) => conn.send(ws::Message::Pong(p)).await.expect("pong"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn send_frame(conn: &mut WsConn, frame: &Frame) {
    conn.send(ws::Message::Binary(frame.encode_to_bytes()))
        .await
        .expect("send");
}

/// A blocking raw handshake (the sandbox runs on its own worker thread), returning the
/// status line and the headers, lower-cased.
fn raw_handshake(url: &str) -> (u16, Vec<(String, String)>) {
    let parsed = url::Url::parse(url).unwrap();
    let mut tcp =
        std::net::TcpStream::connect(("127.0.0.1", parsed.port().unwrap())).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let request = format!(
        "GET {}?{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        parsed.path(),
        parsed.query().unwrap_or("")
    );
    tcp.write_all(request.as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).expect("read");
        assert!(n > 0, "closed before the headers");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

fn header<'a>(headers: &'a [(String, String)], key: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn card_action_payload() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/openapi/card_action_trigger.json"
    ))
    .unwrap()
}

#[actix_rt::test]
async fn discovery_issues_a_ws_url_with_the_documented_shape() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let (status, body) = discover(&sandbox, "cli_sandbox_app", "sandbox-secret").await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], 0);
    assert_eq!(body["msg"], "ok");
    assert_eq!(
        body["data"]["ClientConfig"],
        serde_json::json!({"ReconnectCount": -1, "ReconnectInterval": 120, "ReconnectNonce": 30, "PingInterval": 120})
    );
    let url = url::Url::parse(body["data"]["URL"].as_str().unwrap()).unwrap();
    assert_eq!(url.scheme(), "ws");
    assert_eq!(url.path(), "/ws/v2");
    assert_eq!(url.port(), Some(sandbox.port()));
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["device_id"].len(), 19);
    assert!(q["device_id"].bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(q["access_key"].len(), 32);
    assert!(q["access_key"].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(q["service_id"], "33554678");
    assert!(uuid::Uuid::parse_str(&q["ticket"]).is_ok());
    let keys: Vec<_> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
    assert_eq!(
        keys,
        [
            "fpid",
            "aid",
            "device_id",
            "access_key",
            "service_id",
            "ticket"
        ]
    );

    let recorded = sandbox.discoveries();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].locale.as_deref(), Some("zh"));
    assert_eq!(recorded[0].app_id.as_deref(), Some("cli_sandbox_app"));
    assert!(recorded[0].issued_url);
}

#[actix_rt::test]
async fn wrong_secret_gets_http_200_with_the_configured_code() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let (status, body) = discover(&sandbox, "cli_sandbox_app", "wrong").await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], 10003);
    assert_eq!(body["msg"], "invalid app_id or app_secret");
    assert!(body.get("data").is_none());

    let config = SandboxConfig {
        bad_credentials_code: 99991663,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::start(config).await.unwrap();
    let (_, body) = discover(&sandbox, "cli_other", "sandbox-secret").await;
    assert_eq!(body["code"], 99991663);
}

#[actix_rt::test]
async fn discovery_faults_are_consumed_in_order() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    sandbox.inject_discovery_fault(DiscoveryFault::Code {
        code: 1,
        msg: "system busy".into(),
    });
    sandbox.inject_discovery_fault(DiscoveryFault::HttpStatus(502));
    sandbox.inject_discovery_fault(DiscoveryFault::NoData);
    sandbox.inject_discovery_fault(DiscoveryFault::Delay(Duration::from_millis(300)));

    let (status, body) = discover(&sandbox, "cli_sandbox_app", "sandbox-secret").await;
    assert_eq!((status, body["code"].as_i64()), (200, Some(1)));
    let (status, _) = discover(&sandbox, "cli_sandbox_app", "sandbox-secret").await;
    assert_eq!(status, 502);
    let (status, body) = discover(&sandbox, "cli_sandbox_app", "sandbox-secret").await;
    assert_eq!((status, body["code"].as_i64()), (200, Some(0)));
    assert!(body.get("data").is_none());
    let started = std::time::Instant::now();
    let (_, body) = discover(&sandbox, "cli_sandbox_app", "sandbox-secret").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(body["data"]["URL"].is_string());
    let (_, body) = discover(&sandbox, "cli_sandbox_app", "sandbox-secret").await;
    assert!(body["data"]["URL"].is_string());
    let faults: Vec<_> = sandbox
        .discoveries()
        .into_iter()
        .map(|d| d.fault.is_some())
        .collect();
    assert_eq!(faults, [true, true, true, true, false]);
}

#[actix_rt::test]
async fn tickets_are_single_use() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let url = discover_url(&sandbox).await;
    let conn = dial(&url).await.expect("first use");
    sandbox.wait_for_connections(1, WAIT).await.unwrap();
    let (status, headers) = raw_handshake(&url);
    assert_eq!(status, 400);
    assert_eq!(header(&headers, "handshake-status"), Some("514"));
    assert_eq!(header(&headers, "handshake-msg"), Some("invalid ticket"));
    // A made-up ticket is refused too.
    let forged = url.replace("ticket=", "ticket=0");
    assert_eq!(raw_handshake(&forged).0, 400);
    assert_eq!(sandbox.handshakes_refused(), 2);
    assert_eq!(sandbox.connections_accepted(), 1);
    drop(conn);
}

#[actix_rt::test]
async fn handshake_faults_and_connection_limit_send_the_headers() {
    let sandbox = Sandbox::start(SandboxConfig {
        max_connections: 1,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    sandbox.inject_handshake_fault(HandshakeFault {
        http_status: 403,
        handshake_status: Some("403".into()),
        handshake_msg: "app is banned".into(),
        autherrcode: None,
    });
    sandbox.inject_handshake_fault(HandshakeFault::server_error(500));

    let (status, headers) = raw_handshake(&discover_url(&sandbox).await);
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "handshake-status"), Some("403"));
    assert_eq!(header(&headers, "handshake-msg"), Some("app is banned"));
    assert_eq!(header(&headers, "handshake-autherrcode"), None);
    let (_, headers) = raw_handshake(&discover_url(&sandbox).await);
    assert_eq!(header(&headers, "handshake-status"), Some("500"));

    let _first = connect(&sandbox).await;
    let (_, headers) = raw_handshake(&discover_url(&sandbox).await);
    assert_eq!(header(&headers, "handshake-status"), Some("514"));
    assert_eq!(
        header(&headers, "handshake-autherrcode"),
        Some("1000040350")
    );
    assert_eq!(sandbox.active_connections(), 1);
}

#[actix_rt::test]
async fn ping_gets_a_pong_with_the_client_config() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut conn = connect(&sandbox).await;
    let ping = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/frames/ping.bin"
    ))
    .unwrap();
    conn.send(ws::Message::Binary(Bytes::from(ping)))
        .await
        .unwrap();
    let pong = next_frame(&mut conn).await;
    assert_eq!(pong.kind(), FrameKind::Pong);
    assert_eq!(pong.service, 33554678);
    let config: serde_json::Value = serde_json::from_slice(&pong.payload.unwrap()).unwrap();
    assert_eq!(config["PingInterval"], 120);
    assert_eq!(config["ReconnectCount"], -1);
    let pings = sandbox.wait_for_pings(1, WAIT).await.unwrap();
    assert_eq!(pings[0].service, 33554678);

    // Protocol-level pings (Python's websockets keepalive) get RFC 6455 pongs.
    conn.send(ws::Message::Ping(Bytes::from_static(b"ka")))
        .await
        .unwrap();
    let item = tokio::time::timeout(WAIT, conn.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(item, Ok(ws::Frame::Pong(p)) if &p[..] == b"ka"));
    assert_eq!(sandbox.protocol_pings(), 1);
}

#[actix_rt::test]
async fn pong_without_config_has_no_payload() {
    let sandbox = Sandbox::start(SandboxConfig {
        pong_with_config: false,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let mut conn = connect(&sandbox).await;
    send_frame(&mut conn, &Frame::ping(33554678)).await;
    let pong = next_frame(&mut conn).await;
    assert_eq!(pong.kind(), FrameKind::Pong);
    assert_eq!(pong.payload, None);
}

#[actix_rt::test]
async fn pushed_event_arrives_as_the_exact_frame_and_its_ack_is_recorded() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    assert_eq!(sandbox.push_event(b"{}"), Err(PushError::NoConnection));
    let mut conn = connect(&sandbox).await;
    sandbox.wait_for_connections(1, WAIT).await.unwrap();
    let payload = card_action_payload();
    let message_id = sandbox.push_event(&payload).unwrap();
    let frame = next_frame(&mut conn).await;
    assert_eq!(frame.kind(), FrameKind::Event);
    assert_eq!(frame.method, 1);
    assert_eq!(frame.service, 33554678);
    assert!(frame.seq_id > 1 << 53 && frame.log_id > 1 << 53);
    assert!(frame.log_id_new.as_deref().is_some_and(|s| !s.is_empty()));
    let keys: Vec<_> = frame.headers.iter().map(|h| h.key.as_str()).collect();
    assert_eq!(keys, ["type", "message_id", "sum", "seq", "trace_id"]);
    assert_eq!(frame.message_id(), message_id);
    assert_eq!(frame.header("sum"), Some("1"));
    assert_eq!(frame.header("seq"), Some("0"));
    assert_eq!(frame.payload.as_deref(), Some(&payload[..]));

    let toast = br#"{"toast":{"type":"info","content":"ok"}}"#;
    let ack = frame
        .clone()
        .into_response(3, &AckPayload::ok_with_data(toast));
    send_frame(&mut conn, &ack).await;
    let acks = sandbox.wait_for_acks(1, WAIT).await.unwrap();
    let recorded = &acks[0];
    assert_eq!(recorded.message_id, message_id);
    assert_eq!(recorded.code(), Some(200));
    assert_eq!(recorded.data(), Some(&toast[..]));
    assert_eq!(recorded.biz_rt.as_deref(), Some("3"));
    assert!(
        recorded.fidelity_errors.is_empty(),
        "{:?}",
        recorded.fidelity_errors
    );
    let latency = recorded.latency.expect("latency");
    assert!(latency < WAIT, "{latency:?}");
    assert_eq!(recorded.frame, ack);

    // An ack that rounds LogID like Node (§8 item 7) and drops biz_rt is flagged.
    let mut bad = frame;
    bad.log_id = (bad.log_id as f64) as u64;
    send_frame(&mut conn, &bad).await;
    let acks = sandbox.wait_for_acks(2, WAIT).await.unwrap();
    let errors = &acks[1].fidelity_errors;
    assert!(errors.iter().any(|e| e.starts_with("LogID")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("biz_rt")), "{errors:?}");
}

#[actix_rt::test]
async fn chunked_push_arrives_in_the_given_order_and_duplicates_repeat_it() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut conn = connect(&sandbox).await;
    sandbox.wait_for_connections(1, WAIT).await.unwrap();
    let payload = "{\"text\":\"héllo wörld ✓\"}".as_bytes();
    let id = sandbox.push_chunked(payload, 3, &[2, 0, 1]).unwrap();
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.push(next_frame(&mut conn).await);
    }
    let seqs: Vec<_> = frames.iter().map(|f| f.header("seq").unwrap()).collect();
    assert_eq!(seqs, ["2", "0", "1"]);
    assert!(
        frames
            .iter()
            .all(|f| f.message_id() == id && f.header("sum") == Some("3"))
    );
    let mut parts = frames.clone();
    parts.sort_by_key(|f| f.header("seq").unwrap().to_string());
    let joined: Vec<u8> = parts
        .iter()
        .flat_map(|f| f.payload.clone().unwrap().to_vec())
        .collect();
    assert_eq!(joined, payload);

    // The ack is built from the completing chunk (seq 1 here) and must echo it.
    let ack = frames[2].clone().into_response(0, &AckPayload::OK);
    send_frame(&mut conn, &ack).await;
    let acks = sandbox.wait_for_acks(1, WAIT).await.unwrap();
    assert!(
        acks[0].fidelity_errors.is_empty(),
        "{:?}",
        acks[0].fidelity_errors
    );

    sandbox.push_duplicate(&id).unwrap();
    for expected in &parts {
        assert_eq!(&next_frame(&mut conn).await, expected);
    }
    assert_eq!(
        sandbox.push_chunked(payload, 3, &[3]),
        Err(PushError::BadChunking(
            "order index not below the part count"
        ))
    );
    assert!(matches!(
        sandbox.push_duplicate("nope"),
        Err(PushError::UnknownMessage(_))
    ));
}

#[actix_rt::test]
async fn raw_frames_card_frames_and_targeting() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut first = connect(&sandbox).await;
    let mut second = connect(&sandbox).await;
    let conns = sandbox.wait_for_connections(2, WAIT).await.unwrap();
    assert_eq!(conns.len(), 2);
    // Default target: the most recent connection.
    sandbox.push_raw(Bytes::from_static(b"\x08\x01")).unwrap();
    let item = tokio::time::timeout(WAIT, second.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(item, ws::Frame::Binary(b) if &b[..] == b"\x08\x01"));
    sandbox.set_push_target(Some(conns[0].id));
    sandbox.push_card_frame(b"{}").unwrap();
    assert_eq!(next_frame(&mut first).await.kind(), FrameKind::Card);
    let mut hand_made = Frame::ping(7);
    hand_made.method = 1;
    hand_made.headers = vec![
        Header::new("type", "event"),
        Header::new("message_id", "m1"),
    ];
    sandbox.push_frame(hand_made.clone()).unwrap();
    assert_eq!(next_frame(&mut first).await, hand_made);
    let ack = hand_made.into_response(1, &AckPayload::FAILED);
    send_frame(&mut first, &ack).await;
    let acks = sandbox.wait_for_acks(1, WAIT).await.unwrap();
    assert_eq!(acks[0].code(), Some(500));
    assert!(acks[0].fidelity_errors.is_empty());
    assert_eq!(acks[0].connection, conns[0].id);
}

#[actix_rt::test]
async fn close_all_sends_a_close_frame() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut conn = connect(&sandbox).await;
    sandbox.wait_for_connections(1, WAIT).await.unwrap();
    sandbox.close_all();
    let item = tokio::time::timeout(WAIT, conn.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(item, Ok(ws::Frame::Close(Some(_)))), "{item:?}");
    conn.send(ws::Message::Close(None)).await.unwrap();
    sandbox.wait_for_active_connections(0, WAIT).await.unwrap();
}

#[actix_rt::test]
async fn drop_all_ends_the_stream_without_a_close_frame() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut conn = connect(&sandbox).await;
    sandbox.wait_for_connections(1, WAIT).await.unwrap();
    let started = std::time::Instant::now();
    sandbox.drop_all();
    let item = tokio::time::timeout(WAIT, conn.next()).await.unwrap();
    assert!(
        !matches!(item, Some(Ok(ws::Frame::Close(_)))),
        "got a Close frame: {item:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    sandbox.wait_for_active_connections(0, WAIT).await.unwrap();
}

#[actix_rt::test]
async fn silent_sandbox_answers_nothing_until_resumed() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut conn = connect(&sandbox).await;
    sandbox.go_silent();
    send_frame(&mut conn, &Frame::ping(33554678)).await;
    sandbox.wait_for_pings(1, WAIT).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), conn.next())
            .await
            .is_err(),
        "the silent sandbox answered"
    );
    sandbox.resume();
    send_frame(&mut conn, &Frame::ping(33554678)).await;
    assert_eq!(next_frame(&mut conn).await.kind(), FrameKind::Pong);
    assert_eq!(sandbox.active_connections(), 1);
}

#[actix_rt::test]
async fn stop_ends_connections() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut conn = connect(&sandbox).await;
    sandbox.stop().await;
    let item = tokio::time::timeout(WAIT, conn.next()).await.unwrap();
    assert!(!matches!(item, Some(Ok(ws::Frame::Binary(_)))));
}

#[actix_rt::test]
async fn flood_measures_acks_on_the_server_side() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut conn = connect(&sandbox).await;
    sandbox.wait_for_connections(1, WAIT).await.unwrap();
    // A tiny echo client on this task; the flood runs on the server's worker.
    let echo = async move {
        loop {
            let frame = next_frame(&mut conn).await;
            if frame.kind() == FrameKind::Event {
                let ack = frame.into_response(0, &AckPayload::OK);
                send_frame(&mut conn, &ack).await;
            }
        }
    };
    let flood = sandbox.flood(FloodSpec {
        count: 500,
        window: 32,
        chunked_parts: None,
        ..FloodSpec::default()
    });
    let report =
        match futures_util::future::select(std::pin::pin!(flood), std::pin::pin!(echo)).await {
            futures_util::future::Either::Left((report, _)) => report.unwrap(),
            futures_util::future::Either::Right(((), _)) => unreachable!(),
        };
    assert_eq!(report.sent, 500);
    assert_eq!(report.acked, 500);
    assert_eq!(report.non_200, 0);
    assert!(!report.timed_out);
    assert!(report.p50_latency <= report.p99_latency);
    assert!(sandbox.acks().is_empty());
}

#[actix_rt::test]
async fn accepted_sockets_have_tcp_nodelay() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let _conn = connect(&sandbox).await;
    sandbox.wait_for_connections(1, WAIT).await.unwrap();
    assert_eq!(sandbox.connection_nodelay(), vec![true]);
}

#[actix_rt::test]
async fn silence_also_withholds_protocol_pongs_and_pushes() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut conn = connect(&sandbox).await;
    sandbox.wait_for_connections(1, WAIT).await.unwrap();
    sandbox.go_silent();
    conn.send(ws::Message::Ping(Bytes::from_static(b"ka")))
        .await
        .unwrap();
    sandbox.push_event(b"{}").unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), conn.next())
            .await
            .is_err(),
        "the silent sandbox sent something"
    );
    assert_eq!(sandbox.protocol_pings(), 1);
    let timeout = sandbox
        .wait_for_acks(1, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(timeout.what, "1 acks (got 0)");
}

#[actix_rt::test]
async fn flood_without_acks_times_out_with_a_partial_report() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let _conn = connect(&sandbox).await;
    sandbox.wait_for_connections(1, WAIT).await.unwrap();
    let report = sandbox
        .flood(FloodSpec {
            count: 100,
            window: 10,
            chunked_parts: Some(2),
            timeout: Duration::from_millis(200),
            ..FloodSpec::default()
        })
        .await
        .unwrap();
    assert!(report.timed_out);
    assert_eq!((report.sent, report.acked), (10, 0));
}

#[actix_rt::test]
async fn flood_sends_chunks_in_the_given_order() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut conn = connect(&sandbox).await;
    sandbox.wait_for_connections(1, WAIT).await.unwrap();
    // Records the `seq` of every frame and acks a message once all its parts arrived,
    // with the frame of the completing part (§6.1).
    let seqs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = seqs.clone();
    let client = async move {
        let mut parts: std::collections::HashMap<String, usize> = Default::default();
        loop {
            let frame = next_frame(&mut conn).await;
            if frame.kind() != FrameKind::Event {
                continue;
            }
            let seq: usize = frame.header("seq").unwrap().parse().unwrap();
            let sum: usize = frame.header("sum").unwrap().parse().unwrap();
            seen.lock().unwrap().push(seq);
            let got = parts.entry(frame.message_id().to_string()).or_default();
            *got += 1;
            if *got == sum {
                let ack = frame.into_response(0, &AckPayload::OK);
                send_frame(&mut conn, &ack).await;
            }
        }
    };
    let flood = sandbox.flood(FloodSpec {
        count: 50,
        window: 8,
        chunked_parts: Some(3),
        chunk_order: vec![2, 0, 1],
        ..FloodSpec::default()
    });
    let report =
        match futures_util::future::select(std::pin::pin!(flood), std::pin::pin!(client)).await {
            futures_util::future::Either::Left((report, _)) => report.unwrap(),
            futures_util::future::Either::Right(((), _)) => unreachable!(),
        };
    assert_eq!((report.sent, report.acked, report.non_200), (50, 50, 0));
    let seqs = seqs.lock().unwrap().clone();
    assert_eq!(seqs.len(), 150);
    assert!(seqs.chunks(3).all(|c| c == [2, 0, 1]), "{seqs:?}");
}

#[actix_rt::test]
async fn flood_refuses_a_chunk_order_that_is_not_a_permutation() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let _conn = connect(&sandbox).await;
    sandbox.wait_for_connections(1, WAIT).await.unwrap();
    for order in [vec![0, 1], vec![0, 0, 1], vec![0, 1, 3]] {
        let err = sandbox
            .flood(FloodSpec {
                count: 10,
                chunked_parts: Some(3),
                chunk_order: order.clone(),
                ..FloodSpec::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err, FloodError::BadChunkOrder(order));
    }
}

#[actix_rt::test]
async fn random_push_gives_each_message_to_one_connection_of_several() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let mut conns = vec![
        connect(&sandbox).await,
        connect(&sandbox).await,
        connect(&sandbox).await,
    ];
    sandbox.wait_for_connections(3, WAIT).await.unwrap();
    sandbox.set_random_push(Some(7));
    let mut pushed = std::collections::BTreeSet::new();
    for n in 0..60 {
        pushed.insert(
            sandbox
                .push_event(format!("{{\"n\":{n}}}").as_bytes())
                .unwrap(),
        );
    }
    // Every message reaches exactly one connection; each connection gets some.
    let mut got = Vec::new();
    for conn in &mut conns {
        let mut ids = Vec::new();
        while let Ok(item) = tokio::time::timeout(Duration::from_millis(300), conn.next()).await {
            if let Some(Ok(ws::Frame::Binary(bytes))) = item {
                let frame = Frame::decode_bytes(bytes).unwrap();
                ids.push(frame.header("message_id").unwrap().to_string());
            }
        }
        got.push(ids);
    }
    assert!(
        got.iter().all(|ids| !ids.is_empty()),
        "spread: {:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let all: Vec<&String> = got.iter().flatten().collect();
    assert_eq!(all.len(), 60, "each message once");
    let distinct: std::collections::BTreeSet<String> = all.into_iter().cloned().collect();
    assert_eq!(distinct, pushed);
    // Back to the newest connection.
    sandbox.set_random_push(None);
    sandbox.push_event(b"{}").unwrap();
    assert_eq!(next_frame(&mut conns[2]).await.kind(), FrameKind::Event);
}
