//! Event gateway benchmark: the whole service (`LarkAuth` on a sled store) against the
//! in-process sandbox, forwarding to a local webhook receiver (an actix-web server in
//! this process that answers 200 and records when each event arrived).
//!
//! Run: `cargo bench --bench gateway` (release build). Prints:
//! - **ack cost of the outbox**: ack latency (sandbox: last frame written → ack read) at a
//!   paced 5,000 events/s, forwarding off (no `[[events.forward]]`) and on, same run,
//!   same machine, one service each;
//! - **delivery latency** at a paced 1,000 events/s: time from the event's push to the
//!   receiver's arrival (an upper bound of "ack sent → receiver got it": it includes the
//!   ack path, ~0.3 ms);
//! - **forwarding throughput**: events pushed as fast as a window of 256 unacked allows;
//!   acks/s, and events/s until the receiver got the last one.
//!
//! Environment: `GATEWAY_COUNT` (events of the throughput run, default 100000),
//! `GATEWAY_SECS` (seconds of each paced run, default 5).
//! Exits non-zero when an event is not acked 200 or not delivered.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use bytes::Bytes;
use lark_auth::config::{Config, ForwardTarget};
use lark_auth::sandbox::{FloodReport, FloodSpec, Sandbox, SandboxConfig};
use lark_auth::secret::Secret;
use lark_auth::vault::{Keyring, VaultKey};
use lark_auth::{Handle, LarkAuth, StartOptions};

/// Arrival instants by event number, per run prefix.
#[derive(Default)]
struct Arrivals {
    /// (prefix, n, when)
    got: Vec<(u8, usize, Instant)>,
}

/// The event number and run prefix in `"event_id":"p<prefix>_ev_<n>"`.
fn event_number(body: &[u8]) -> Option<(u8, usize)> {
    const KEY: &[u8] = b"\"event_id\":\"p";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let prefix = body.get(at)? - b'0';
    let digits = body.get(at + 5..)?; // "<prefix>_ev_"
    let n = digits
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    Some((prefix, n))
}

fn start_receiver(arrivals: Arc<Mutex<Arrivals>>) -> Result<String, String> {
    let server = HttpServer::new(move || {
        let arrivals = arrivals.clone();
        App::new().default_service(web::to(move |body: Bytes| {
            let arrivals = arrivals.clone();
            async move {
                let now = Instant::now();
                if let Some((prefix, n)) = event_number(&body) {
                    arrivals.lock().unwrap().got.push((prefix, n, now));
                }
                HttpResponse::Ok().body("{}")
            }
        }))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .map_err(|e| e.to_string())?;
    let port = server.addrs()[0].port();
    actix_rt::spawn(server.run());
    Ok(format!("http://127.0.0.1:{port}/webhook/event"))
}

struct Service {
    sandbox: Sandbox,
    handle: Handle,
    _dir: tempfile::TempDir,
}

async fn start_service(target: Option<&str>) -> Result<Service, String> {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut config = Config::for_tests(&sandbox.base_url());
    config.vault.path = dir.path().join("vault");
    if let Some(url) = target {
        config.events.forward = vec![ForwardTarget {
            url: url.to_string(),
            concurrency: 64,
            ..ForwardTarget::default()
        }];
    }
    let handle = LarkAuth::start_with(
        config,
        StartOptions {
            keyring: Keyring::single(1, VaultKey::generate()),
            api_token: Some(Secret::new("bench".into())),
            http: false,
            accept_loss: false,
        },
    )
    .map_err(|e| e.to_string())?;
    handle
        .wait_connected(Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Service {
        sandbox,
        handle,
        _dir: dir,
    })
}

/// The default flood payload with event ids `p<prefix>_ev_<n>` (distinct per run: the
/// gateway delivers an `event_id` once).
fn template(prefix: u8) -> Vec<u8> {
    String::from_utf8(FloodSpec::default().payload_template)
        .unwrap()
        .replace("flood_ev_", &format!("p{prefix}_ev_"))
        .into_bytes()
}

fn print_report(name: &str, report: &FloodReport) {
    println!(
        "{name}: {:.0} events/s acked ({} of {} in {:.3} s), ack latency p50 {} us, p99 {} us, max {} us",
        report.acks_per_sec(),
        report.acked,
        report.sent,
        report.elapsed.as_secs_f64(),
        report.p50_latency.as_micros(),
        report.p99_latency.as_micros(),
        report.max_latency.as_micros(),
    );
}

fn check(report: &FloodReport, count: usize, what: &str, failures: &mut Vec<String>) {
    if report.acked != count || report.non_200 != 0 {
        failures.push(format!(
            "{what}: {} acked of {count}, {} not 200",
            report.acked, report.non_200
        ));
    }
}

/// Waits until the receiver holds `count` events of `prefix` (at most `within`).
async fn wait_delivered(
    arrivals: &Arc<Mutex<Arrivals>>,
    prefix: u8,
    count: usize,
    within: Duration,
) -> Vec<(usize, Instant)> {
    let deadline = Instant::now() + within;
    loop {
        let got: Vec<(usize, Instant)> = arrivals
            .lock()
            .unwrap()
            .got
            .iter()
            .filter(|(p, _, _)| *p == prefix)
            .map(|(_, n, at)| (*n, *at))
            .collect();
        if got.len() >= count || Instant::now() > deadline {
            return got;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run() -> Result<(), String> {
    let count = env_usize("GATEWAY_COUNT", 100_000);
    let secs = env_usize("GATEWAY_SECS", 5);
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let url = start_receiver(arrivals.clone())?;
    let off = start_service(None).await?;
    let on = start_service(Some(&url)).await?;
    let mut failures = Vec::new();

    // Warm-up of both.
    for (s, prefix) in [(&off, 0), (&on, 1)] {
        s.sandbox
            .flood(FloodSpec {
                count: 5_000,
                payload_template: template(prefix),
                ..FloodSpec::default()
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    wait_delivered(&arrivals, 1, 5_000, Duration::from_secs(30)).await;

    // 1. The outbox's cost on the ack path at 5,000 events/s, off and on, twice each,
    //    interleaved.
    let rate = 5_000u32;
    let paced = rate as usize * secs;
    for round in 0..2u8 {
        for (s, name, prefix) in [(&off, "off", 2 + round * 2), (&on, "on", 3 + round * 2)] {
            let report = s
                .sandbox
                .flood(FloodSpec {
                    count: paced,
                    rate_per_sec: Some(rate),
                    payload_template: template(prefix),
                    timeout: Duration::from_secs(secs as u64 + 60),
                    ..FloodSpec::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            print_report(
                &format!("paced {rate}/s, forwarding {name}, round {}", round + 1),
                &report,
            );
            check(&report, paced, "paced", &mut failures);
        }
    }
    for prefix in [3, 5] {
        let got = wait_delivered(&arrivals, prefix, paced, Duration::from_secs(60)).await;
        if got.len() != paced {
            failures.push(format!("paced on: {} of {paced} delivered", got.len()));
        }
    }

    // 2. Delivery latency at 1,000 events/s (push → receiver).
    let rate = 1_000u32;
    let n = rate as usize * secs;
    let started = Instant::now();
    let report = on
        .sandbox
        .flood(FloodSpec {
            count: n,
            rate_per_sec: Some(rate),
            payload_template: template(7),
            timeout: Duration::from_secs(secs as u64 + 60),
            ..FloodSpec::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    print_report(&format!("paced {rate}/s, forwarding on"), &report);
    check(&report, n, "latency run", &mut failures);
    let got = wait_delivered(&arrivals, 7, n, Duration::from_secs(60)).await;
    let mut latencies: Vec<Duration> = got
        .iter()
        .map(|(i, at)| {
            let pushed = started + Duration::from_secs_f64(*i as f64 / f64::from(rate));
            at.saturating_duration_since(pushed)
        })
        .collect();
    latencies.sort();
    println!(
        "delivery latency at {rate}/s (push -> receiver, {} events): p50 {} us, p99 {} us, max {} us",
        latencies.len(),
        percentile(&latencies, 0.50).as_micros(),
        percentile(&latencies, 0.99).as_micros(),
        latencies.last().copied().unwrap_or_default().as_micros(),
    );
    if got.len() != n {
        failures.push(format!("latency run: {} of {n} delivered", got.len()));
    }

    // 3. Forwarding throughput.
    let started = Instant::now();
    let report = on
        .sandbox
        .flood(FloodSpec {
            count,
            payload_template: template(8),
            timeout: Duration::from_secs(300),
            ..FloodSpec::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    print_report("throughput (window 256), forwarding on", &report);
    check(&report, count, "throughput", &mut failures);
    let got = wait_delivered(&arrivals, 8, count, Duration::from_secs(300)).await;
    let last = got.iter().map(|(_, at)| *at).max().unwrap_or(started);
    println!(
        "forwarding throughput: {} events delivered in {:.3} s = {:.0} events/s",
        got.len(),
        (last - started).as_secs_f64(),
        got.len() as f64 / (last - started).as_secs_f64().max(1e-9),
    );
    if got.len() != count {
        failures.push(format!("throughput: {} of {count} delivered", got.len()));
    }
    let status = on
        .handle
        .forward_status()
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "gateway: delivered_total {}, failed_total {}, pending {}",
        status[0].delivered_total, status[0].failed_total, status[0].pending
    );

    on.handle.shutdown(Duration::from_secs(2)).await;
    off.handle.shutdown(Duration::from_secs(2)).await;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn main() {
    let system = actix::System::new();
    if let Err(e) = system.block_on(run()) {
        eprintln!("gateway bench failed: {e}");
        std::process::exit(1);
    }
}
