//! Side-by-side benchmark of long-connection clients against the sandbox (issue 7). Run it
//! through `bench/compare-ws-clients`, which installs the official SDKs and builds the
//! binaries this program spawns.
//!
//! Starts `lark_auth::sandbox::Sandbox` (app id shaped like a real one, as the Node SDK
//! requires; `ReconnectNonce` 0, i.e. no reconnect jitter), then runs each client in turn
//! as a child process:
//!
//! 1. `trivial` (`ws_bench_client trivial`: decode + ack, no reassembly, no parse): the
//!    sandbox's own ceiling;
//! 2. `reference` (`ws_bench_client reference`: decode, chunk reassembly, routing envelope
//!    parse, ack; no actors): the ceiling of lark-auth's stack;
//! 3. `lark-auth` (`ws_bench_client actor`: the ConnectionActor with a no-op consumer);
//! 4. `python` (`bench/python_client.py`: lark-oapi's `lark.ws.Client`);
//! 5. `node` (`bench/node_client.js`: @larksuiteoapi/node-sdk's `WSClient`).
//!
//! For each: time from process start to the first acked event, idle RSS, a warm-up flood,
//! the flood of `--events` small events and the flood of `--chunked-events` events in
//! `--parts` parts sent last part first (all with the same `--window` in flight), CPU time
//! of each flood (utime + stime from `/proc/<pid>/stat`), peak RSS (`VmHWM`), and for the
//! clients that reconnect the time from a TCP drop by the server to the next accepted
//! handshake. Throughput and latency are measured by the sandbox (push of an event's last
//! part → its ack). Then the idle RSS of `lark-auth serve` connected to the sandbox.
//!
//! Prints a table, the ratios (`lark-auth/python: 57.3x`, `lark-auth/node: 12.1x`,
//! `lark-auth/reference: 61%`), whether issue 7's targets are met, and the table again as
//! Markdown. Exits 1 when any client failed to ack every event with code 200 (then no
//! ratio is printed for it), 2 on a setup error.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use lark_auth::sandbox::{FloodReport, FloodSpec, Sandbox, SandboxConfig};
use lark_auth::secret::Secret;

/// Command line (the script passes the paths).
#[derive(Parser, Debug)]
struct Args {
    /// Small events per client.
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// Chunked events per client.
    #[arg(long, default_value_t = 2_000)]
    chunked_events: usize,
    /// Parts per chunked event (sent in reverse order of `seq`).
    #[arg(long, default_value_t = 3)]
    parts: usize,
    /// Events in flight (pushed, not yet acked) at most, for every client.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Warm-up events before the measured floods (not counted).
    #[arg(long, default_value_t = 1_000)]
    warmup: usize,
    /// Give up on one flood after this many seconds (the client then fails).
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// The `ws_bench_client` example binary (release build).
    #[arg(long)]
    client_bin: PathBuf,
    /// The `lark-auth` binary, for the idle RSS of `serve`.
    #[arg(long)]
    serve_bin: PathBuf,
    /// Python interpreter with lark-oapi installed.
    #[arg(long)]
    python: PathBuf,
    /// The Python SDK client script.
    #[arg(long)]
    python_script: PathBuf,
    /// The Node interpreter.
    #[arg(long, default_value = "node")]
    node: PathBuf,
    /// The Node SDK client script.
    #[arg(long)]
    node_script: PathBuf,
    /// Directory for the clients' logs and the `serve` configuration.
    #[arg(long)]
    log_dir: PathBuf,
    /// Clients to leave out (comma-separated names: trivial, reference, lark-auth,
    /// python, node, serve).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

/// App id in the form the Node SDK insists on (`^cli_[0-9a-fA-F]{16}$`).
const APP_ID: &str = "cli_a1b2c3d4e5f60718";
const APP_SECRET: &str = "bench-secret";

/// One client to run.
struct ClientSpec {
    name: &'static str,
    what: &'static str,
    program: PathBuf,
    args: Vec<String>,
    /// A real client: pings after connecting and reconnects after a drop. Events are
    /// pushed only after its first ping on a connection, since the Node SDK (1.74.0) drops
    /// a frame that arrives between the handshake and its `message` listener.
    real: bool,
}

/// What was measured for one client.
#[derive(Default)]
struct Measured {
    name: &'static str,
    first_ack: Option<Duration>,
    idle_rss_kib: Option<u64>,
    small: Option<FloodReport>,
    small_cpu: Option<Duration>,
    /// CPU of this process (the sandbox) during the small flood.
    sandbox_cpu: Option<Duration>,
    chunked: Option<FloodReport>,
    chunked_cpu: Option<Duration>,
    peak_rss_kib: Option<u64>,
    reconnect: Option<Duration>,
    failure: Option<String>,
}

impl Measured {
    fn rate(&self) -> Option<f64> {
        self.failure
            .is_none()
            .then(|| self.small.as_ref().map(FloodReport::acks_per_sec))
            .flatten()
    }
}

/// Kills the child on every exit path.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `Vm*` line of `/proc/<pid>/status`, in KiB.
fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// utime + stime of the process (all its threads) from `/proc/<pid>/stat`.
fn proc_cpu(pid: u32, ticks_per_sec: u64) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_sec as f64,
    ))
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn single_event(tag: &str) -> Vec<u8> {
    format!(
        r#"{{"schema":"2.0","header":{{"event_id":"bench_first_{tag}","event_type":"im.message.receive_v1","create_time":"1767225600000","token":"t","app_id":"{APP_ID}","tenant_key":"tk"}},"event":{{"message":{{"message_id":"om_first_{tag}","chat_id":"oc_bench","chat_type":"p2p","message_type":"text","content":"{{\"text\":\"hi\"}}"}},"sender":{{"sender_id":{{"open_id":"ou_bench"}},"sender_type":"user"}}}}}}"#
    )
    .into_bytes()
}

fn flood_template() -> Vec<u8> {
    let default = String::from_utf8(FloodSpec::default().payload_template).unwrap_or_default();
    default.replace("cli_sandbox_app", APP_ID).into_bytes()
}

fn spawn(spec: &ClientSpec, log_dir: &Path, base_url: &str) -> Result<ChildGuard, String> {
    let log_path = log_dir.join(format!("{}.log", spec.name));
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(&spec.program)
        .args(&spec.args)
        .args([base_url, APP_ID, APP_SECRET])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", spec.program.display()))?;
    Ok(ChildGuard(child))
}

/// Pushes one event and returns the instant its ack arrived (code 200 required).
async fn one_acked_event(
    sandbox: &Sandbox,
    tag: &str,
    within: Duration,
) -> Result<Instant, String> {
    let before = sandbox.acks().len();
    let id = sandbox
        .push_event(&single_event(tag))
        .map_err(|e| e.to_string())?;
    let acks = sandbox
        .wait_for_acks(before + 1, within)
        .await
        .map_err(|e| e.to_string())?;
    let ack = acks
        .iter()
        .find(|a| a.message_id == id)
        .ok_or("the ack names another message")?;
    match ack.code() {
        Some(200) => Ok(ack.at),
        other => Err(format!("ack code {other:?}")),
    }
}

async fn flood_checked(
    sandbox: &Sandbox,
    spec: FloodSpec,
    what: &str,
) -> Result<FloodReport, String> {
    let count = spec.count;
    let report = sandbox
        .flood(spec)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    if report.acked != count || report.non_200 != 0 || report.timed_out {
        return Err(format!(
            "{what}: {} of {count} acked, {} not 200{}",
            report.acked,
            report.non_200,
            if report.timed_out { ", timed out" } else { "" }
        ));
    }
    Ok(report)
}

async fn measure(
    sandbox: &Sandbox,
    spec: &ClientSpec,
    args: &Args,
    ticks: u64,
    m: &mut Measured,
) -> Result<(), String> {
    let accepted = sandbox.connections_accepted() as usize;
    let pings = sandbox.ping_count();
    let started = Instant::now();
    let mut child = spawn(spec, &args.log_dir, &sandbox.base_url())?;
    let pid = child.0.id();
    // Fails fast when the client exits (missing SDK, bad arguments): see its log.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (sandbox.connections_accepted() as usize) <= accepted {
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!(
                "exited before connecting ({status}); see {}",
                args.log_dir.join(format!("{}.log", spec.name)).display()
            ));
        }
        if Instant::now() > deadline {
            return Err("did not connect within 60 s".into());
        }
        let _ = sandbox
            .wait_for_connections(accepted + 1, Duration::from_millis(100))
            .await;
    }
    if spec.real {
        sandbox
            .wait_for_pings(pings + 1, Duration::from_secs(30))
            .await
            .map_err(|e| format!("no ping after connecting: {e}"))?;
    }
    let first = one_acked_event(sandbox, spec.name, Duration::from_secs(30)).await?;
    m.first_ack = Some(first.saturating_duration_since(started));
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    m.idle_rss_kib = proc_status_kib(pid, "VmRSS:");

    let timeout = Duration::from_secs(args.timeout_secs);
    let base = FloodSpec {
        window: args.window,
        payload_template: flood_template(),
        timeout,
        ..FloodSpec::default()
    };
    if args.warmup > 0 {
        flood_checked(
            sandbox,
            FloodSpec {
                count: args.warmup,
                ..base.clone()
            },
            "warm-up",
        )
        .await?;
    }
    let me = std::process::id();
    let cpu0 = proc_cpu(pid, ticks);
    let own0 = proc_cpu(me, ticks);
    let small = flood_checked(
        sandbox,
        FloodSpec {
            count: args.events,
            ..base.clone()
        },
        "small events",
    )
    .await;
    let cpu1 = proc_cpu(pid, ticks);
    let own1 = proc_cpu(me, ticks);
    m.small_cpu = cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a));
    m.sandbox_cpu = own0.zip(own1).map(|(a, b)| b.saturating_sub(a));
    m.small = Some(small?);
    let chunked = flood_checked(
        sandbox,
        FloodSpec {
            count: args.chunked_events,
            chunked_parts: Some(args.parts),
            chunk_order: (0..args.parts).rev().collect(),
            ..base.clone()
        },
        "chunked events",
    )
    .await;
    let cpu2 = proc_cpu(pid, ticks);
    m.chunked_cpu = cpu1.zip(cpu2).map(|(a, b)| b.saturating_sub(a));
    m.chunked = Some(chunked?);
    m.peak_rss_kib = proc_status_kib(pid, "VmHWM:");

    if spec.real {
        let accepted = sandbox.connections_accepted() as usize;
        let pings = sandbox.ping_count();
        let dropped = Instant::now();
        sandbox.drop_all();
        let conns = sandbox
            .wait_for_connections(accepted + 1, Duration::from_secs(30))
            .await
            .map_err(|e| format!("no reconnect after a drop: {e}"))?;
        let at = conns
            .iter()
            .map(|c| c.connected_at)
            .max()
            .ok_or("reconnected but no connection open")?;
        m.reconnect = Some(at.saturating_duration_since(dropped));
        // Node pings on every new connection (and must, before a push: see `real`);
        // Python runs one ping loop for its whole life and pings again only after
        // PingInterval, so a missing ping is not an error here.
        let _ = sandbox
            .wait_for_pings(pings + 1, Duration::from_secs(3))
            .await;
        one_acked_event(
            sandbox,
            &format!("{}_after_reconnect", spec.name),
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| format!("after the reconnect: {e}"))?;
    }
    drop(child);
    sandbox
        .wait_for_active_connections(0, Duration::from_secs(10))
        .await
        .map_err(|e| format!("connection left open after the kill: {e}"))?;
    Ok(())
}

/// Idle RSS (KiB) and start → first ack of `lark-auth serve` connected to the sandbox.
async fn measure_serve(sandbox: &Sandbox, args: &Args) -> Result<(u64, Duration), String> {
    use base64::Engine as _;
    let config_path = args.log_dir.join("serve-config.toml");
    // A fresh vault per run: `serve` needs a vault key and refuses a vault sealed with
    // another one. It also needs a control API token; its API listens on a free port.
    let vault_path = args.log_dir.join("serve-vault");
    let _ = std::fs::remove_dir_all(&vault_path);
    let vault_key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let config = format!(
        "[app]\napp_id_env = \"LARK_APP_ID\"\napp_secret_env = \"LARK_APP_SECRET\"\n\n[endpoints]\nopen_base_url = \"{base}\"\naccounts_base_url = \"{base}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[vault]\npath = {vault:?}\n\n[log]\nlevel = \"warn\"\n",
        base = sandbox.base_url(),
        vault = vault_path.display().to_string(),
    );
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let log_path = args.log_dir.join("serve.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let accepted = sandbox.connections_accepted() as usize;
    let pings = sandbox.ping_count();
    let started = Instant::now();
    let child = Command::new(&args.serve_bin)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("LARK_APP_ID", APP_ID)
        .env("LARK_APP_SECRET", APP_SECRET)
        .env("LARK_AUTH_VAULT_KEY", vault_key)
        .env(
            "LARK_AUTH_API_TOKEN",
            format!("{:032x}", rand::random::<u128>()),
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", args.serve_bin.display()))?;
    let child = ChildGuard(child);
    sandbox
        .wait_for_connections(accepted + 1, Duration::from_secs(30))
        .await
        .map_err(|e| format!("serve never connected: {e}"))?;
    sandbox
        .wait_for_pings(pings + 1, Duration::from_secs(30))
        .await
        .map_err(|e| format!("serve sent no ping: {e}"))?;
    let first = one_acked_event(sandbox, "serve", Duration::from_secs(30)).await?;
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let rss = proc_status_kib(child.0.id(), "VmRSS:").ok_or("no VmRSS")?;
    drop(child);
    Ok((rss, first.saturating_duration_since(started)))
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
}

fn mib(k: Option<u64>) -> String {
    k.map_or("–".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn rate(r: Option<&FloodReport>) -> String {
    r.map_or("–".into(), |r| format!("{:.0}", r.acks_per_sec()))
}

fn lat(r: Option<&FloodReport>, pick: fn(&FloodReport) -> Duration) -> String {
    r.map_or("–".into(), |r| {
        let d = pick(r);
        if d < Duration::from_millis(10) {
            format!("{:.2} ms", d.as_secs_f64() * 1e3)
        } else {
            format!("{:.0} ms", d.as_secs_f64() * 1e3)
        }
    })
}

fn cpu(d: Option<Duration>, events: usize) -> String {
    d.map_or("–".into(), |d| {
        if d.is_zero() {
            // Below one clock tick (10 ms): no per-event figure.
            return "< 1 tick".into();
        }
        format!(
            "{:.2} s ({:.1} µs/event)",
            d.as_secs_f64(),
            d.as_secs_f64() * 1e6 / events.max(1) as f64
        )
    })
}

const COLUMNS: [&str; 12] = [
    "client",
    "events/s",
    "p50",
    "p99",
    "CPU",
    "sandbox CPU",
    "chunked events/s",
    "chunked p99",
    "chunked CPU",
    "peak RSS",
    "idle RSS",
    "start → first ack",
];

fn rows(results: &[Measured], args: &Args) -> Vec<Vec<String>> {
    results
        .iter()
        .map(|m| {
            let mut row = vec![
                m.name.to_string(),
                rate(m.small.as_ref()),
                lat(m.small.as_ref(), |r| r.p50_latency),
                lat(m.small.as_ref(), |r| r.p99_latency),
                cpu(m.small_cpu, args.events),
                cpu(m.sandbox_cpu, args.events),
                rate(m.chunked.as_ref()),
                lat(m.chunked.as_ref(), |r| r.p99_latency),
                cpu(m.chunked_cpu, args.chunked_events),
                mib(m.peak_rss_kib),
                mib(m.idle_rss_kib),
                ms(m.first_ack),
                ms(m.reconnect),
            ];
            if let Some(f) = &m.failure {
                row[0] = format!("{} (FAILED: {f})", m.name);
            }
            row
        })
        .collect()
}

fn print_table(results: &[Measured], args: &Args) {
    let mut header: Vec<String> = COLUMNS.iter().map(|s| s.to_string()).collect();
    header.push("reconnect".into());
    let rows = rows(results, args);
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn markdown(results: &[Measured], args: &Args) -> String {
    let mut out = String::new();
    let mut header: Vec<String> = COLUMNS.iter().map(|s| s.to_string()).collect();
    header.push("reconnect after a drop".into());
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for row in rows(results, args) {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

async fn run(args: Args) -> Result<bool, String> {
    std::fs::create_dir_all(&args.log_dir)
        .map_err(|e| format!("{}: {e}", args.log_dir.display()))?;
    let ticks = clock_ticks();
    let mut config = SandboxConfig {
        app_id: APP_ID.to_string(),
        app_secret: Secret::new(APP_SECRET.to_string()),
        ..SandboxConfig::default()
    };
    // No reconnect jitter (the reconnect time is the client's own), and a short retry
    // interval in case a first attempt fails.
    config.client_config.reconnect_nonce = Some(0);
    config.client_config.reconnect_interval = Some(5);
    let sandbox = Sandbox::start(config)
        .await
        .map_err(|e| format!("sandbox start: {e}"))?;
    println!(
        "sandbox on {}; {} small events and {} chunked events ({} parts, sent last part first) per client, window {}, warm-up {}",
        sandbox.base_url(),
        args.events,
        args.chunked_events,
        args.parts,
        args.window,
        args.warmup
    );
    println!(
        "client logs in {}; CPU = utime+stime of the client process during the flood (sandbox CPU: of this process, which runs the sandbox); RSS from /proc/<pid>/status",
        args.log_dir.display()
    );

    if args.events < 10_000 {
        println!(
            "note: with fewer than 10,000 events the runs are too short for stable ratios (Node's JIT is still warming up, the Rust clients finish within a few CPU ticks)"
        );
    }

    let bare = |mode: &str| vec![mode.to_string()];
    let specs = [
        ClientSpec {
            name: "trivial",
            what: "sandbox ceiling: decode + ack, no reassembly or parse",
            program: args.client_bin.clone(),
            args: bare("trivial"),
            real: false,
        },
        ClientSpec {
            name: "reference",
            what: "bare stack: decode, reassembly, routing envelope parse (EnvelopeHead), ack; no actors",
            program: args.client_bin.clone(),
            args: bare("reference"),
            real: false,
        },
        ClientSpec {
            name: "lark-auth",
            what: "ConnectionActor, no-op consumer",
            program: args.client_bin.clone(),
            args: bare("actor"),
            real: true,
        },
        ClientSpec {
            name: "python",
            what: "lark-oapi lark.ws.Client, no-op im.message.receive_v1 handler",
            program: args.python.clone(),
            args: vec![args.python_script.display().to_string()],
            real: true,
        },
        ClientSpec {
            name: "node",
            what: "@larksuiteoapi/node-sdk WSClient, no-op im.message.receive_v1 handler",
            program: args.node.clone(),
            args: vec![args.node_script.display().to_string()],
            real: true,
        },
    ];

    let mut results = Vec::new();
    for spec in specs
        .iter()
        .filter(|s| !args.skip.iter().any(|k| k == s.name))
    {
        println!("-- {} ({})", spec.name, spec.what);
        let t = Instant::now();
        let mut m = Measured {
            name: spec.name,
            ..Measured::default()
        };
        if let Err(e) = measure(&sandbox, spec, &args, ticks, &mut m).await {
            println!("   FAILED: {e}");
            m.failure = Some(e);
            // A failed client may still hold its connection: make room for the next one.
            sandbox.drop_all();
        }
        if let Some(r) = &m.small {
            let per_event = |d: Option<Duration>| {
                d.map_or("–".to_string(), |d| {
                    format!("{:.2}", d.as_secs_f64() * 1e6 / args.events.max(1) as f64)
                })
            };
            println!(
                "   {:.0} events/s, p50 {:?}, p99 {:?}, max {:?} ({:.1} s); CPU µs/event: client {}, sandbox {}",
                r.acks_per_sec(),
                r.p50_latency,
                r.p99_latency,
                r.max_latency,
                t.elapsed().as_secs_f64(),
                per_event(m.small_cpu),
                per_event(m.sandbox_cpu)
            );
        }
        results.push(m);
    }

    let serve = if args.skip.iter().any(|k| k == "serve") {
        None
    } else {
        println!("-- serve (lark-auth serve, connected, idle)");
        match measure_serve(&sandbox, &args).await {
            Ok(v) => Some(v),
            Err(e) => {
                println!("   FAILED: {e}");
                return Err(format!("serve: {e}"));
            }
        }
    };

    println!();
    print_table(&results, &args);
    println!();
    if let Some((rss, first)) = serve {
        println!(
            "lark-auth serve: idle RSS {}, start → first ack {}",
            mib(Some(rss)),
            ms(Some(first))
        );
    }

    let get = |name: &str| results.iter().find(|m| m.name == name);
    let ours = get("lark-auth");
    let ratio = |other: &str, percent: bool| {
        let label = format!("lark-auth/{other}");
        match (ours, get(other)) {
            (Some(a), Some(b)) => match (a.rate(), b.rate()) {
                (Some(x), Some(y)) if y > 0.0 => {
                    let r = x / y;
                    if percent {
                        println!("{label}: {:.0}%", r * 100.0);
                    } else {
                        println!("{label}: {r:.1}x");
                    }
                    Some(r)
                }
                _ => {
                    println!("{label}: n/a (a client failed)");
                    None
                }
            },
            _ => {
                println!("{label}: n/a (not run)");
                None
            }
        }
    };
    let vs_python = ratio("python", false);
    let vs_node = ratio("node", false);
    let vs_reference = ratio("reference", true);
    let vs_ceiling = ours
        .and_then(Measured::rate)
        .zip(get("trivial").and_then(Measured::rate));
    if let Some((x, y)) = vs_ceiling {
        println!(
            "lark-auth at {:.0}% of the sandbox's ceiling (trivial client){}",
            x / y * 100.0,
            if x / y > 0.8 {
                ": the server may be limiting lark-auth's rate and ratios"
            } else {
                ""
            }
        );
    }
    for other in ["python", "node"] {
        if let (Some(a), Some(b)) = (ours, get(other))
            && let (Some(x), Some(y)) = (a.chunked.as_ref(), b.chunked.as_ref())
            && a.failure.is_none()
            && b.failure.is_none()
        {
            println!(
                "chunked lark-auth/{other}: {:.1}x",
                x.acks_per_sec() / y.acks_per_sec()
            );
        }
    }

    // CPU per event is steadier than throughput on a shared machine (it does not depend
    // on who else got the cores during the run).
    let cpu_per_event = |m: &Measured| {
        m.failure
            .is_none()
            .then(|| {
                m.small_cpu
                    .map(|c| c.as_secs_f64() / args.events.max(1) as f64)
            })
            .flatten()
            .filter(|c| *c > 0.0)
    };
    for other in ["python", "node"] {
        if let (Some(a), Some(b)) = (
            ours.and_then(cpu_per_event),
            get(other).and_then(cpu_per_event),
        ) {
            println!("CPU per event {other}/lark-auth: {:.1}x", b / a);
        }
    }

    println!();
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "NOT MET",
        None => "unknown (a client failed or was skipped)",
    };
    println!(
        "target lark-auth/python >= 50x: {}",
        verdict(vs_python.map(|r| r >= 50.0))
    );
    println!(
        "target lark-auth/node >= 10x: {}",
        verdict(vs_node.map(|r| r >= 10.0))
    );
    println!(
        "target lark-auth/reference >= 50%: {}",
        verdict(vs_reference.map(|r| r >= 0.5))
    );
    let lower = |f: fn(&Measured) -> Option<u64>| -> Option<bool> {
        let ours = ours.filter(|m| m.failure.is_none()).and_then(f)?;
        let mut all = true;
        for other in ["python", "node"] {
            let theirs = get(other).filter(|m| m.failure.is_none()).and_then(f)?;
            all &= ours < theirs;
        }
        Some(all)
    };
    println!(
        "target p99 ack latency lower than both official clients: {}",
        verdict(lower(|m| m
            .small
            .as_ref()
            .map(|r| r.p99_latency.as_micros() as u64)))
    );
    println!(
        "target peak RSS lower than both official clients: {}",
        verdict(lower(|m| m.peak_rss_kib))
    );

    println!();
    println!("markdown:");
    print!("{}", markdown(&results, &args));
    sandbox.stop().await;

    let failed: Vec<&str> = results
        .iter()
        .filter(|m| m.failure.is_some())
        .map(|m| m.name)
        .collect();
    if failed.is_empty() {
        Ok(true)
    } else {
        println!(
            "FAILED: {}: not every event was acked with code 200 (see above)",
            failed.join(", ")
        );
        Ok(false)
    }
}

fn main() {
    let args = Args::parse();
    match actix_rt::System::new().block_on(run(args)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("compare_ws_clients: {e}");
            std::process::exit(2);
        }
    }
}
