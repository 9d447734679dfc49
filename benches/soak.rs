//! Sustained event traffic into a running `lark-auth serve` (issue 18): pushes
//! `SOAK_EVENTS` events (default 2,000,000) at `SOAK_RATE` events/s (default 5,000)
//! through the in-process sandbox into the service, a child process, and samples the
//! child's resident memory (VmRSS) and the store's size on disk (the vault directory's
//! allocated blocks) every second. Prints the series summary: RSS first, last, max and the
//! slope over the second half (linear fit, MiB/min), disk max and last, and the ack
//! latency percentiles the sandbox measured (push → ack).
//!
//! Run: `cargo bench --bench soak` (release build). `SOAK_BIN` names another `lark-auth`
//! binary to drive (e.g. one built from an older commit: same bench, both binaries), by
//! default the one cargo built with this bench. The service runs with its default
//! configuration (sled store, default caches and caps), only pointed at the sandbox.
//! `SOAK_SERIES=1` also prints every sample. `SOAK_CONFIG` is appended to the service's
//! configuration file (`\n` for a new line), e.g.
//! `SOAK_CONFIG='[sessions]\ndedup_max_marks = 100000'`. Exits non-zero when an event is left
//! unacked or answered other than 200, or when the service exits early.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lark_auth::sandbox::{FloodSpec, Sandbox, SandboxConfig};

const VAULT_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// One sample: seconds since the flood started, RSS in KiB, disk bytes.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    rss_kib: u64,
    disk: u64,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Bytes allocated on disk under `dir` (st_blocks × 512, as `du`).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Service {
    child: Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_service(bin: &Path, base_url: &str, dir: &Path, port: u16) -> Result<Service, String> {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[endpoints]\nopen_base_url = \"{0}\"\naccounts_base_url = \"{0}\"\n[vault]\npath = \"{1}\"\n[http]\nlisten = \"127.0.0.1:{2}\"\n[log]\nlevel = \"warn\"\n",
            base_url,
            dir.join("vault").display(),
            port
        ),
    )
    .map_err(|e| e.to_string())?;
    if let Some(extra) = std::env::var_os("SOAK_CONFIG") {
        let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
        let extra = extra.to_string_lossy().replace("\\n", "\n");
        std::fs::write(&config, format!("{text}{extra}\n")).map_err(|e| e.to_string())?;
    }
    let child = Command::new(bin)
        .args(["serve", "--config", config.to_str().ok_or("path")?])
        .env("LARK_APP_ID", "cli_sandbox_app")
        .env("LARK_APP_SECRET", "sandbox-secret")
        .env("LARK_AUTH_VAULT_KEY", VAULT_KEY)
        .env("LARK_AUTH_API_TOKEN", "api-token-value")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    Ok(Service { child })
}

async fn run() -> Result<(), String> {
    let count = env_u64("SOAK_EVENTS", 2_000_000) as usize;
    let rate = env_u64("SOAK_RATE", 5_000) as u32;
    let bin = std::env::var_os("SOAK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lark-auth")));
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut service = start_service(&bin, &sandbox.base_url(), dir.path(), port)?;
    let pid = service.child.id();
    let client = awc::Client::default();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let mut connected = false;
    for _ in 0..400 {
        if let Ok(Some(status)) = service.child.try_wait() {
            return Err(format!("the service exited at start: {status}"));
        }
        if let Ok(mut res) = client.get(&url).send().await {
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            if res.status().as_u16() == 200 && body["connection"] == "connected" {
                connected = true;
                break;
            }
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    if !connected {
        return Err("the service did not connect within 20 s".into());
    }

    // The sampler: one sample per second, on its own thread.
    let stop = Arc::new(AtomicBool::new(false));
    let vault = dir.path().join("vault");
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = rss_kib(pid) {
                    samples.push(Sample {
                        t: start.elapsed().as_secs_f64(),
                        rss_kib: rss,
                        disk: disk_bytes(&vault),
                    });
                }
                let next = Duration::from_secs(samples.len() as u64);
                if let Some(wait) = next.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            samples
        })
    };
    let template = br#"{"schema":"2.0","header":{"event_id":"soak_ev_{n}","event_type":"im.message.receive_v1","create_time":"1767225600000","token":"t","app_id":"cli_sandbox_app","tenant_key":"tk"},"event":{"message":{"message_id":"om_soak_{n}","chat_id":"oc_soak","chat_type":"p2p","message_type":"text","content":"{\"text\":\"hi\"}"},"sender":{"sender_id":{"open_id":"ou_soak"},"sender_type":"user"}}}"#;
    let report = sandbox
        .flood(FloodSpec {
            count,
            window: 4096,
            payload_template: template.to_vec(),
            rate_per_sec: Some(rate),
            timeout: Duration::from_secs(count as u64 / u64::from(rate.max(1)) + 300),
            ..FloodSpec::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    // Two more samples after the last ack (the upkeep catching up).
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().map_err(|_| "sampler panicked")?;
    let exited = service.child.try_wait().ok().flatten();
    drop(service);

    println!(
        "soak {}: {} events at {rate}/s: {} acked, {} non-200 in {:.1} s ({:.0}/s); ack latency p50 {} us, p99 {} us, max {} us{}",
        bin.display(),
        count,
        report.acked,
        report.non_200,
        report.elapsed.as_secs_f64(),
        report.acks_per_sec(),
        report.p50_latency.as_micros(),
        report.p99_latency.as_micros(),
        report.max_latency.as_micros(),
        if report.timed_out { " (TIMED OUT)" } else { "" }
    );
    if std::env::var_os("SOAK_SERIES").is_some() {
        for s in &samples {
            println!(
                "  t={:6.1}s rss={:7.1}MiB disk={:7.1}MiB",
                s.t,
                mib(s.rss_kib),
                s.disk as f64 / 1048576.0
            );
        }
    }
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        let half: Vec<(f64, f64)> = samples[samples.len() / 2..]
            .iter()
            .map(|s| (s.t / 60.0, mib(s.rss_kib)))
            .collect();
        let max_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let max_disk = samples.iter().map(|s| s.disk).max().unwrap_or(0);
        println!(
            "soak series ({} samples, 1/s): RSS first {:.1} MiB, last {:.1} MiB, max {:.1} MiB, second-half slope {:+.2} MiB/min; disk max {:.1} MiB, last {:.1} MiB; ack p99 {} us",
            samples.len(),
            mib(first.rss_kib),
            mib(last.rss_kib),
            mib(max_rss),
            slope(&half),
            max_disk as f64 / 1048576.0,
            last.disk as f64 / 1048576.0,
            report.p99_latency.as_micros()
        );
    }
    if let Some(status) = exited {
        return Err(format!("the service exited during the run: {status}"));
    }
    if report.acked != count || report.non_200 != 0 {
        return Err(format!(
            "{} acked of {count}, {} non-200",
            report.acked, report.non_200
        ));
    }
    Ok(())
}

fn main() {
    let system = actix::System::new();
    if let Err(e) = system.block_on(run()) {
        eprintln!("soak bench failed: {e}");
        std::process::exit(1);
    }
}
