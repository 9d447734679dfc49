//! Fidelity check of the sandbox against the official Python SDK (lark-oapi 1.7.5).
//!
//! Starts `lark_auth::sandbox::Sandbox`, runs `scripts/official_client.py` (the SDK's
//! `lark.ws.Client`) against it as a child process, pushes a `card.action.trigger`
//! callback and a chunked `im.message.receive_v1` event (3 parts, out of order), and
//! checks what the official client did: connected, pinged with the right `service`,
//! answered both with code 200 (the callback with `data`), echoed the frames exactly.
//!
//! Run: `cargo run --example official_client_check -- --python .venv-check/bin/python`
//! (or `scripts/check-official-client.sh`, which also creates the venv). Exit code 0 only
//! when every check passed. The child's output (which includes the SDK's own log of the
//! full connection URL) goes to a log file, not to this program's output.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use lark_auth::protocol::Frame;
use lark_auth::sandbox::{RecordedAck, Sandbox, SandboxConfig};

/// Command line of the check.
#[derive(Parser, Debug)]
struct Args {
    /// Python interpreter with lark-oapi==1.7.5 installed (e.g. a venv's bin/python).
    #[arg(long)]
    python: PathBuf,
    /// The client script.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/official_client.py"))]
    script: PathBuf,
    /// Where the child's stdout/stderr go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/official_client_check.log"))]
    log: PathBuf,
    /// Bound of each wait (connection, ping, acks), in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Stay connected this many seconds at the end and check that the SDK's `websockets`
    /// keepalive (an RFC 6455 Ping every 20 s, protocol doc §5) got its Pong: the
    /// connection must survive. 0 skips the check.
    #[arg(long, default_value_t = 0)]
    keepalive_secs: u64,
}

/// Kills the child on every exit path.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Report {
    results: Vec<(String, Result<(), String>)>,
}

impl Report {
    fn check(&mut self, name: &str, result: Result<(), String>) -> bool {
        match &result {
            Ok(()) => println!("PASS  {name}"),
            Err(why) => println!("FAIL  {name}: {why}"),
        }
        let ok = result.is_ok();
        self.results.push((name.to_string(), result));
        ok
    }

    fn all_passed(&self) -> bool {
        self.results.iter().all(|(_, r)| r.is_ok())
    }
}

fn fixture_frame(name: &str) -> Result<Frame, String> {
    let path = format!(
        "{}/tests/fixtures/frames/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    Frame::decode_bytes(Bytes::from(bytes)).map_err(|e| format!("{path}: {e}"))
}

fn fixture_payload(names: &[&str]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for name in names {
        let frame = fixture_frame(name)?;
        out.extend_from_slice(frame.payload.as_deref().unwrap_or_default());
    }
    Ok(out)
}

fn ack_checks(report: &mut Report, what: &str, ack: Option<&RecordedAck>, needs_data: bool) {
    let Some(ack) = ack else {
        report.check(&format!("{what}: acked"), Err("no ack recorded".into()));
        return;
    };
    report.check(
        &format!("{what}: ack code 200"),
        match ack.code() {
            Some(200) => Ok(()),
            other => Err(format!("code {other:?}, payload {:?}", ack.payload)),
        },
    );
    if needs_data {
        report.check(
            &format!("{what}: ack carries data (the handler's toast)"),
            match ack.data().map(serde_json::from_slice::<serde_json::Value>) {
                Some(Ok(v)) if v.get("toast").is_some() => Ok(()),
                other => Err(format!("data {other:?}")),
            },
        );
    }
    report.check(
        &format!("{what}: frame echoed exactly, biz_rt appended"),
        if ack.fidelity_errors.is_empty() {
            Ok(())
        } else {
            Err(ack.fidelity_errors.join("; "))
        },
    );
    if let Some(latency) = ack.latency {
        println!(
            "      {what}: ack latency {:.1} ms",
            latency.as_secs_f64() * 1e3
        );
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut config = SandboxConfig::default();
    // Short reconnect timings (seconds, §2.2) so the reconnect check does not wait for the
    // default random 0–30 s first delay.
    config.client_config.reconnect_nonce = Some(1);
    config.client_config.reconnect_interval = Some(1);
    let sandbox = Sandbox::start(config.clone())
        .await
        .map_err(|e| format!("sandbox start: {e}"))?;
    println!("sandbox listening on {}", sandbox.base_url());

    if let Some(dir) = args.log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let log =
        std::fs::File::create(&args.log).map_err(|e| format!("{}: {e}", args.log.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(&args.python)
        .arg("-u")
        .arg(&args.script)
        .args(["--domain", &sandbox.base_url()])
        .args(["--app-id", &config.app_id])
        .args(["--app-secret", config.app_secret.expose()])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", args.python.display()))?;
    let _child = ChildGuard(child);
    println!("official client started, log in {}", args.log.display());

    let mut report = Report {
        results: Vec::new(),
    };
    let connected = sandbox.wait_for_connections(1, timeout).await;
    if !report.check(
        "official client connects (discovery + handshake)",
        connected.map(|_| ()).map_err(|e| e.to_string()),
    ) {
        println!("official client check: FAIL (the client never connected; see its log)");
        return Ok(false);
    }
    let discoveries = sandbox.discoveries();
    report.check(
        "discovery sent `locale: zh`",
        match discoveries.first().and_then(|d| d.locale.as_deref()) {
            Some("zh") => Ok(()),
            other => Err(format!("locale {other:?}")),
        },
    );
    let pings = sandbox.wait_for_pings(1, timeout).await;
    report.check(
        "first ping carries service_id",
        match pings.as_ref().map(|p| p[0].service) {
            Ok(s) if s == config.service_id => Ok(()),
            Ok(s) => Err(format!("service {s}, want {}", config.service_id)),
            Err(e) => Err(e.to_string()),
        },
    );

    let card_payload = fixture_payload(&["event_card_action.bin"])?;
    let card_id = sandbox
        .push_event(&card_payload)
        .map_err(|e| format!("push card action: {e}"))?;
    let message_payload = fixture_payload(&["event_chunk_1_of_2.bin", "event_chunk_2_of_2.bin"])?;
    let message_id = sandbox
        .push_chunked(&message_payload, 3, &[2, 0, 1])
        .map_err(|e| format!("push chunked message: {e}"))?;

    let acks = match sandbox.wait_for_acks(2, timeout).await {
        Ok(acks) => acks,
        Err(e) => {
            report.check("both pushes acknowledged", Err(e.to_string()));
            sandbox.acks()
        }
    };
    ack_checks(
        &mut report,
        "card.action.trigger",
        acks.iter().find(|a| a.message_id == card_id),
        true,
    );
    ack_checks(
        &mut report,
        "chunked im.message.receive_v1 (3 parts, order 2,0,1)",
        acks.iter().find(|a| a.message_id == message_id),
        false,
    );

    // Reconnect path: a server Close makes the SDK rediscover (fresh single-use ticket)
    // and dial again (§7.2, §7.3).
    sandbox.close_all();
    let reconnected = sandbox.wait_for_connections(2, timeout).await;
    report.check(
        "official client reconnects after a server Close (new discovery and ticket)",
        match reconnected {
            Ok(_) if sandbox.discoveries().len() >= 2 && sandbox.handshakes_refused() == 0 => {
                Ok(())
            }
            Ok(_) => Err(format!(
                "{} discoveries, {} refused handshakes",
                sandbox.discoveries().len(),
                sandbox.handshakes_refused()
            )),
            Err(e) => Err(e.to_string()),
        },
    );

    if args.keepalive_secs > 0 {
        println!(
            "      holding the connection {} s for the websockets keepalive",
            args.keepalive_secs
        );
        actix_rt::time::sleep(Duration::from_secs(args.keepalive_secs)).await;
        let accepted = sandbox.connections_accepted();
        report.check(
            "RFC 6455 keepalive pings answered, connection kept",
            if sandbox.protocol_pings() == 0 {
                Err("no protocol ping arrived (hold longer than 20 s)".into())
            } else if accepted != 2 || sandbox.active_connections() != 1 {
                Err(format!(
                    "{accepted} accepted, {} open",
                    sandbox.active_connections()
                ))
            } else {
                Ok(())
            },
        );
    }

    report.check(
        "no unexpected client frames",
        match sandbox.unexpected_frames().as_slice() {
            [] => Ok(()),
            frames => Err(format!(
                "{} unexpected: {:?}",
                frames.len(),
                frames[0].reason
            )),
        },
    );
    let passed = report.results.iter().filter(|(_, r)| r.is_ok()).count();
    println!(
        "official client check: {} ({passed}/{} checks passed)",
        if report.all_passed() { "PASS" } else { "FAIL" },
        report.results.len()
    );
    sandbox.stop().await;
    Ok(report.all_passed())
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let args = Args::parse();
    let outcome = actix_rt::System::new().block_on(run(args));
    match outcome {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            println!("FAIL  setup: {e}");
            println!("official client check: FAIL");
            std::process::exit(2);
        }
    }
}
