//! The OpenAPI proxy's cost (issue 16): the latency it adds over a direct call to the same
//! sandbox route, at a fixed rate, through both doors; and how many small proxied
//! requests per second it serves.
//!
//! Starts the sandbox and `LarkAuth` on it (control API and sidecar door on loopback),
//! authorizes one user, then for `GET /open-apis/authen/v1/user_info` (a small JSON
//! answer) made three ways — directly to the sandbox with the user's token, through the
//! REST door (`/v1/openapi/{open_id}/…`), through the sidecar door (signed as lark-cli
//! signs) —
//! 1. open loop at `--rate` requests/s for `--secs` seconds: each request is sent at its
//!    scheduled time whatever the earlier ones did (requests overlap when answers are
//!    slow), latency from its send to the whole answer; p50 / p99 / p99.9 / max, and the
//!    added p99 of each door over the direct call;
//! 2. closed loop with `--concurrency` requests in flight for `--secs` seconds: requests/s;
//! 3. `--uploads` concurrent uploads of `--upload-mib` MiB through the REST door (the
//!    proxy holds each body for its one retry): the process's resident memory before,
//!    at its peak and after (`/proc/self/status`; the process holds one shared copy of
//!    the client's body).
//!
//! The load generator runs in the same process on its own thread (its own System), the
//! sandbox and lark-auth on the main one: everything shares the machine's cores, so the
//! throughput is a floor. The client sets `TCP_NODELAY`.
//!
//! Run: `cargo run --release --example proxy_bench -- [--rate 1000] [--secs 10]
//! [--concurrency 64]`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_service::ServiceExt as _;
use clap::Parser;
use lark_auth::config::{Config, SidecarClientConfig, SidecarIdentity};
use lark_auth::proxy::sidecar::{Canonical, body_sha256, canonical_string, sign};
use lark_auth::sandbox::{Sandbox, SandboxConfig};
use lark_auth::secret::Secret;
use lark_auth::session::machine::SessionState;
use lark_auth::vault::{Keyring, VaultKey};
use lark_auth::{LarkAuth, StartOptions};

const USER: &str = "ou_test_user_1";
const API_TOKEN: &str = "bench-api-token";
const PATH: &str = "/open-apis/authen/v1/user_info";

/// Command line of the bench.
#[derive(Parser, Debug, Clone)]
struct Args {
    /// Open-loop rate, requests/s.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Requests in flight in the throughput runs.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Concurrent uploads through the REST door in the memory run (0: skip it).
    #[arg(long, default_value_t = 100)]
    uploads: usize,
    /// Size of each upload, MiB.
    #[arg(long, default_value_t = 10)]
    upload_mib: usize,
}

/// How a request is made.
#[derive(Clone)]
enum Way {
    Direct { base: String, token: String },
    Rest { base: String },
    Sidecar { base: String, key: Secret<String> },
}

impl Way {
    fn name(&self) -> &'static str {
        match self {
            Way::Direct { .. } => "direct",
            Way::Rest { .. } => "rest door",
            Way::Sidecar { .. } => "sidecar door",
        }
    }

    fn request(&self, client: &awc::Client) -> awc::ClientRequest {
        match self {
            Way::Direct { base, token } => client
                .get(format!("{base}{PATH}"))
                .insert_header(("Authorization", format!("Bearer {token}"))),
            Way::Rest { base } => client
                .get(format!("{base}/v1/openapi/{USER}{PATH}"))
                .insert_header(("Authorization", format!("Bearer {API_TOKEN}"))),
            Way::Sidecar { base, key } => {
                let timestamp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    .to_string();
                let hash = body_sha256(b"");
                let signature = sign(
                    key,
                    &canonical_string(&Canonical {
                        version: "v1",
                        method: "GET",
                        host: "open.feishu.cn",
                        path_and_query: PATH,
                        body_sha256: &hash,
                        timestamp: &timestamp,
                        identity: "user",
                        auth_header: "Authorization",
                    }),
                );
                client
                    .get(format!("{base}{PATH}"))
                    .insert_header(("X-Lark-Proxy-Version", "v1"))
                    .insert_header(("X-Lark-Proxy-Target", "https://open.feishu.cn"))
                    .insert_header(("X-Lark-Proxy-Identity", "user"))
                    .insert_header(("X-Lark-Proxy-Auth-Header", "Authorization"))
                    .insert_header(("X-Lark-Proxy-Timestamp", timestamp))
                    .insert_header(("X-Lark-Body-SHA256", hash))
                    .insert_header(("X-Lark-Proxy-Signature", signature))
            }
        }
    }
}

fn client() -> awc::Client {
    let tcp = actix_tls::connect::ConnectorService::default().map(
        |conn: actix_tls::connect::Connection<actix_http::Uri, actix_rt::net::TcpStream>| {
            let _ = conn.io_ref().set_nodelay(true);
            conn
        },
    );
    awc::Client::builder()
        .connector(awc::Connector::new().connector(tcp).limit(0))
        .timeout(Duration::from_secs(30))
        .finish()
}

/// One request; `true` when answered 200 with its whole body read.
async fn once(client: &awc::Client, way: &Way) -> bool {
    match way.request(client).send().await {
        Ok(mut res) => res.status().as_u16() == 200 && res.body().await.is_ok(),
        Err(_) => false,
    }
}

/// Open loop: each request sent at its scheduled time (the timer's 1 ms granularity
/// aside) whatever the earlier ones did; latencies from its send, and the failures.
async fn open_loop(way: &Way, rate: u64, secs: u64) -> (Vec<Duration>, usize) {
    let client = client();
    let n = rate * secs;
    let gap = Duration::from_nanos(1_000_000_000 / rate);
    let latencies = Rc::new(RefCell::new(Vec::with_capacity(n as usize)));
    let failures = Rc::new(RefCell::new(0usize));
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = start + gap * i as u32;
        actix_rt::time::sleep_until(at.into()).await;
        let (client, way) = (client.clone(), way.clone());
        let (latencies, failures) = (latencies.clone(), failures.clone());
        tasks.push(actix_rt::spawn(async move {
            let sent = Instant::now();
            if once(&client, &way).await {
                latencies.borrow_mut().push(sent.elapsed());
            } else {
                *failures.borrow_mut() += 1;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut latencies = latencies.take();
    latencies.sort();
    let failures = *failures.borrow();
    (latencies, failures)
}

/// Closed loop: requests/s with `concurrency` in flight.
async fn closed_loop(way: &Way, concurrency: usize, secs: u64) -> (f64, usize) {
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, way) = (client.clone(), way.clone());
        workers.push(actix_rt::spawn(async move {
            let (mut ok, mut failed) = (0usize, 0usize);
            while Instant::now() < deadline {
                if once(&client, &way).await {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.await.unwrap_or((0, 0));
        ok += o;
        failed += f;
    }
    (ok as f64 / started.elapsed().as_secs_f64(), failed)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// The load generator (on its own thread and System).
async fn load(args: Args, ways: Vec<Way>) {
    let warm = client();
    for way in &ways {
        for _ in 0..500 {
            once(&warm, way).await;
        }
    }
    println!(
        "open loop: {} requests/s for {} s each (latency from send to the whole answer, ms)",
        args.rate, args.secs
    );
    println!("| way | p50 | p99 | p99.9 | max | failed | added p99 |");
    println!("|---|---|---|---|---|---|---|");
    let mut direct_p99 = Duration::ZERO;
    for way in &ways {
        let (lat, failed) = open_loop(way, args.rate, args.secs).await;
        let p99 = quantile(&lat, 0.99);
        if matches!(way, Way::Direct { .. }) {
            direct_p99 = p99;
        }
        let added = if matches!(way, Way::Direct { .. }) {
            "–".to_string()
        } else {
            ms(p99.saturating_sub(direct_p99))
        };
        println!(
            "| {} | {} | {} | {} | {} | {failed} | {added} |",
            way.name(),
            ms(quantile(&lat, 0.50)),
            ms(p99),
            ms(quantile(&lat, 0.999)),
            ms(lat.last().copied().unwrap_or_default()),
        );
    }
    println!();
    println!(
        "closed loop: {} requests in flight for {} s each",
        args.concurrency, args.secs
    );
    println!("| way | requests/s | failed |");
    println!("|---|---|---|");
    for way in &ways {
        let (rate, failed) = closed_loop(way, args.concurrency, args.secs).await;
        println!("| {} | {rate:.0} | {failed} |", way.name());
    }
    if args.uploads > 0
        && let Some(rest) = ways.iter().find(|w| matches!(w, Way::Rest { .. }))
    {
        uploads(rest, args.uploads, args.upload_mib).await;
    }
}

/// `VmRSS` and `VmHWM` of this process, MiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Concurrent uploads through the REST door, with the memory they take.
async fn uploads(rest: &Way, count: usize, mib: usize) {
    let Way::Rest { base } = rest else { return };
    let body = bytes::Bytes::from(vec![7u8; mib << 20]);
    let client = client();
    let (before, _) = memory();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..count {
        let (client, body) = (client.clone(), body.clone());
        let url = format!("{base}/v1/openapi/{USER}/open-apis/drive/v1/medias/upload_all");
        tasks.push(actix_rt::spawn(async move {
            match client
                .post(url)
                .insert_header(("Authorization", format!("Bearer {API_TOKEN}")))
                .insert_header(("Content-Type", "application/octet-stream"))
                // Slices of the one shared body, so the client adds no copy of its own.
                .send_body(actix_web::body::SizedStream::new(
                    body.len() as u64,
                    futures_util::stream::iter((0..body.len()).step_by(64 << 10).map(move |at| {
                        Ok::<_, std::convert::Infallible>(
                            body.slice(at..(at + (64 << 10)).min(body.len())),
                        )
                    })),
                ))
                .await
            {
                Ok(mut res) => res.status().as_u16() == 200 && res.body().await.is_ok(),
                Err(_) => false,
            }
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap_or(false));
    }
    let elapsed = started.elapsed();
    let (after, peak) = memory();
    println!();
    println!(
        "uploads: {count} concurrent × {mib} MiB through the REST door: {ok} answered 200 in {:.2} s; resident memory {before} MiB before, {peak} MiB at the peak, {after} MiB after",
        elapsed.as_secs_f64()
    );
}

async fn authorize(handle: &lark_auth::Handle, sandbox: &Sandbox) -> Result<(), String> {
    let view = handle
        .authorize(USER, vec![])
        .await
        .map_err(|e| e.to_string())?;
    let cards = sandbox
        .wait_for_sent_cards(1, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let card = &cards[0];
    let link = card.card["body"]["elements"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["behaviors"].as_array().into_iter().flatten())
        .find_map(|b| b["default_url"].as_str())
        .ok_or("no link")?;
    let param = |url: &str, name: &str| {
        url::Url::parse(url).ok().and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        })
    };
    let page = param(link, "url").unwrap_or_else(|| link.to_string());
    let user_code = param(&page, "user_code").ok_or("no user_code")?;
    let card_token = sandbox.issue_card_update_token(&card.message_id);
    let click = serde_json::json!({
        "schema": "2.0",
        "header": {"event_id": "ev_bench_click", "event_type": "card.action.trigger",
                   "create_time": "1767225600000", "token": "verification-token",
                   "app_id": "cli_sandbox_app", "tenant_key": "tk_test_tenant_0001"},
        "event": {"operator": {"tenant_key": "tk_test_tenant_0001", "open_id": USER},
                  "token": card_token.expose(),
                  "action": {"tag": "button", "value": {"action": "authorize", "session_id": view.session_id}},
                  "host": "im_message",
                  "context": {"open_message_id": card.message_id, "open_chat_id": "oc_1"}}
    });
    sandbox
        .push_event(click.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    sandbox
        .approve_device(&user_code, USER)
        .map_err(|e| format!("{e:?}"))?;
    for _ in 0..500 {
        if let Ok(Some(v)) = handle.session(&view.session_id).await
            && v.state == SessionState::Authorized
        {
            return Ok(());
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    Err("not authorized in time".into())
}

async fn run(args: Args) -> Result<(), String> {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .map_err(|e| format!("sandbox start: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut config = Config::for_tests(&sandbox.base_url());
    config.vault.path = dir.path().join("vault");
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.sidecar.listen = "127.0.0.1:0".into();
    config.log.level = "warn".into();
    let key = lark_auth::cli::new_sidecar_key();
    config.sidecar.clients = vec![SidecarClientConfig {
        name: "bench".into(),
        key_env: "BENCH_KEY".into(),
        open_id: USER.into(),
        identities: vec![SidecarIdentity::User],
        key: Some(key.clone()),
    }];
    let handle = LarkAuth::start_with(
        config,
        StartOptions {
            keyring: Keyring::single(1, VaultKey::generate()),
            api_token: Some(Secret::new(API_TOKEN.into())),
            http: true,
            accept_loss: false,
        },
    )
    .map_err(|e| format!("start: {e}"))?;
    handle
        .wait_connected(Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    authorize(&handle, &sandbox).await?;
    let token = handle
        .token(USER)
        .await
        .map_err(|e| e.to_string())?
        .token
        .expose()
        .clone();
    let ways = vec![
        Way::Direct {
            base: sandbox.base_url(),
            token,
        },
        Way::Rest {
            base: format!("http://{}", handle.http_addr().ok_or("no control API")?),
        },
        Way::Sidecar {
            base: format!("http://{}", handle.sidecar_addr().ok_or("no sidecar")?),
            key,
        },
    ];
    let generator = std::thread::spawn(move || {
        actix_rt::System::new().block_on(load(args, ways));
    });
    actix_rt::task::spawn_blocking(move || generator.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the load generator panicked".to_string())?;
    handle.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = actix_rt::System::new().block_on(run(args)) {
        eprintln!("proxy bench: {e}");
        std::process::exit(1);
    }
}
