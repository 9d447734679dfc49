//! End-to-end benchmark of the ConnectionActor against the in-process sandbox.
//!
//! Run: `cargo bench --bench e2e` (release build). Prints, for the actor's full hot path
//! (WebSocket read, frame decode, chunk reassembly, envelope parse, duplicate filter, ack
//! encode and write, forward to a consumer actor):
//! - throughput: events/s with a window of in-flight messages, and the ack latency
//!   percentiles measured by the sandbox (push of the last part → ack received);
//! - the same for chunked events (3 parts each);
//! - ack latency at a paced 5,000 events/s.
//!
//! Environment: `E2E_COUNT` (default 100000), `E2E_WINDOW` (default 256).
//! Exits non-zero when any event is left unacked or answered other than 200.

use std::time::Duration;

use actix::prelude::*;
use lark_auth::config::Config;
use lark_auth::connection::{
    CallbackFailed, CardActionReceived, ConnectionActor, ConnectionOutputs, ConnectionState,
    ConnectionStateChanged, EventReceived,
};
use lark_auth::protocol::event::CardActionResponse;
use lark_auth::sandbox::{FloodReport, FloodSpec, Sandbox, SandboxConfig};
use tokio::sync::watch;

/// Counts forwarded events, like a router that only enqueues.
struct Consumer {
    events: u64,
    connected: watch::Sender<bool>,
}

impl Actor for Consumer {
    type Context = Context<Self>;
}

impl Handler<EventReceived> for Consumer {
    type Result = ();
    fn handle(&mut self, _: EventReceived, _: &mut Context<Self>) {
        self.events += 1;
    }
}

impl Handler<CardActionReceived> for Consumer {
    type Result = Result<CardActionResponse, CallbackFailed>;
    fn handle(&mut self, _: CardActionReceived, _: &mut Context<Self>) -> Self::Result {
        Ok(CardActionResponse::default())
    }
}

impl Handler<ConnectionStateChanged> for Consumer {
    type Result = ();
    fn handle(&mut self, msg: ConnectionStateChanged, _: &mut Context<Self>) {
        let _ = self.connected.send(msg.state == ConnectionState::Connected);
    }
}

fn print_report(name: &str, report: &FloodReport) {
    println!(
        "{name}: {:.0} events/s ({} acked of {} in {:.3} s), ack latency p50 {} us, p99 {} us, max {} us{}",
        report.acks_per_sec(),
        report.acked,
        report.sent,
        report.elapsed.as_secs_f64(),
        report.p50_latency.as_micros(),
        report.p99_latency.as_micros(),
        report.max_latency.as_micros(),
        if report.timed_out { " (TIMED OUT)" } else { "" }
    );
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run() -> Result<(), String> {
    let count = env_usize("E2E_COUNT", 100_000);
    let window = env_usize("E2E_WINDOW", 256);
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let config = Config::for_tests(&sandbox.base_url());
    let (connected_tx, mut connected) = watch::channel(false);
    let consumer = Consumer {
        events: 0,
        connected: connected_tx,
    }
    .start();
    let outputs = ConnectionOutputs {
        events: consumer.clone().recipient(),
        card_actions: consumer.clone().recipient(),
        states: consumer.clone().recipient(),
    };
    let actor = ConnectionActor::new(
        config.app.credentials.clone().ok_or("no credentials")?,
        config.open_base_url(),
        config.connection.clone(),
        outputs,
    )
    .map_err(|e| e.to_string())?
    .start_supervised();
    tokio::time::timeout(Duration::from_secs(10), connected.wait_for(|c| *c))
        .await
        .map_err(|_| "not connected within 10 s")?
        .map_err(|e| e.to_string())?;

    // Warm-up.
    sandbox
        .flood(FloodSpec {
            count: 10_000,
            window,
            ..FloodSpec::default()
        })
        .await
        .map_err(|e| e.to_string())?;

    let mut failures = Vec::new();
    for run in 1..=3 {
        let report = sandbox
            .flood(FloodSpec {
                count,
                window,
                ..FloodSpec::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        print_report(&format!("events (window {window}) run {run}"), &report);
        if report.acked != count || report.non_200 != 0 {
            failures.push(format!(
                "run {run}: {} acked, {} non-200",
                report.acked, report.non_200
            ));
        }
    }

    let report = sandbox
        .flood(FloodSpec {
            count: 20_000,
            window,
            chunked_parts: Some(3),
            ..FloodSpec::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    print_report(
        &format!("chunked events, 3 parts (window {window})"),
        &report,
    );
    if report.acked != 20_000 {
        failures.push(format!("chunked: {} acked", report.acked));
    }

    let rate = 5_000;
    let report = sandbox
        .flood(FloodSpec {
            count: rate as usize * 5,
            window,
            rate_per_sec: Some(rate),
            ..FloodSpec::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    print_report(&format!("paced at {rate} events/s"), &report);
    if report.acked != rate as usize * 5 {
        failures.push(format!("paced: {} acked", report.acked));
    }

    drop(actor);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn main() {
    let system = actix::System::new();
    if let Err(e) = system.block_on(run()) {
        eprintln!("e2e bench failed: {e}");
        std::process::exit(1);
    }
}
