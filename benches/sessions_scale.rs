//! Authorization sessions at scale: starts `SESSIONS_SCALE_N` (default 100,000) device-flow
//! sessions through the RouterActor against the sandbox and leaves them pending (card sent,
//! waiting for the user), then prints
//! - the time to create them (router replies) and to get every card out (sessions/s),
//! - the resident memory per session beyond the session store.
//!
//! `cargo bench --bench sessions_scale` (`SESSIONS_SCALE_N=20000` for a quick run,
//! `SESSIONS_SCALE_WINDOW` authorizations requested at once, default 100).
//!
//! Method. Every part runs as its own process (this binary, chosen by
//! `SESSIONS_SCALE_ROLE`), so a measured process holds only the service side (router,
//! session actors, OpenAPI client, session store):
//! - the sandbox, with an open tenant (every `ou_…` is a user) and without keeping the sent
//!   cards;
//! - run 1, sessions on sled as in production. Snapshots (after a sled flush and a
//!   2-second settle) before the first session and once every card was delivered (all N in
//!   `card_sent`, counted by `lark_auth_sessions{state}`), then after writing the same N
//!   records three times each (the session's three transitions: created, device code, card
//!   sent), same sizes, into a fresh sled store in that process: Δ1 = sessions + store,
//!   Δ2 = the store alone, beyond the store = Δ1 − Δ2.
//! - run 2, the same sessions on a store that drops session records (grants and marks still
//!   go to sled): its Δ is the sessions' memory directly, without a subtraction.
//!
//! Each Δ is measured twice: VmRSS (`/proc/self/status`, after glibc's `malloc_trim`
//! returned the freed request buffers) and live heap bytes (a counting global allocator),
//! divided by N. The poll cadence is lengthened so that no poll is due
//! during the run: the numbers are for sessions waiting for their user, not for polls
//! queued in the pacer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use lark_auth::config::Config;
use lark_auth::metrics::Metrics;
use lark_auth::openapi::OpenApiClient;
use lark_auth::openapi::oauth::OFFLINE_ACCESS;
use lark_auth::sandbox::{Sandbox, SandboxConfig};
use lark_auth::secret::Secret;
use lark_auth::session::machine::{DeviceProgress, SessionRecord, SessionState};
use lark_auth::session::store::SessionCodec;
use lark_auth::session::{
    CountRunningSessions, RouterActor, RouterParts, SessionSettings, StartAuthorization,
};
use lark_auth::store::{
    CasOutcome, DueEntry, GrantKey, GrantWrite, QuarantinedRecord, SledStore, Store, StoreError,
    StoredGrant,
};
use lark_auth::vault::{DuePolicy, Keyring, TokenVaultActor, Vault, VaultKey, unix_now_ms};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged and only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROLE: &str = "SESSIONS_SCALE_ROLE";
const SANDBOX_URL: &str = "SESSIONS_SCALE_SANDBOX_URL";
const STORE_KIND: &str = "SESSIONS_SCALE_STORE";
const FIRST_USER: &str = "SESSIONS_SCALE_FIRST_USER";

/// Sled for everything but session records, which it drops (run 2).
#[derive(Debug)]
struct DropSessions(SledStore);

impl Store for DropSessions {
    fn get_grant(&self, key: &GrantKey) -> Result<Option<StoredGrant>, StoreError> {
        self.0.get_grant(key)
    }
    fn compare_and_swap_grant(
        &self,
        key: &GrantKey,
        expected_version: Option<u64>,
        new: Option<GrantWrite>,
    ) -> Result<CasOutcome, StoreError> {
        self.0.compare_and_swap_grant(key, expected_version, new)
    }
    #[allow(clippy::type_complexity)]
    fn list_grants(
        &self,
        app_id: &str,
        after_open_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(GrantKey, Result<StoredGrant, StoreError>)>, StoreError> {
        self.0.list_grants(app_id, after_open_id, limit)
    }
    fn due_grants(&self, until_ms: u64, limit: usize) -> Result<Vec<DueEntry>, StoreError> {
        self.0.due_grants(until_ms, limit)
    }
    fn quarantine_grant(
        &self,
        key: &GrantKey,
        reason: &str,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        self.0.quarantine_grant(key, reason, at_ms)
    }
    fn quarantined(&self) -> Result<Vec<QuarantinedRecord>, StoreError> {
        self.0.quarantined()
    }
    fn put_session(&self, _: &str, _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn get_session(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    fn delete_session(&self, _: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn list_sessions(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(Vec::new())
    }
    fn mark_once(&self, mark: &[u8], expires_at_ms: u64, now_ms: u64) -> Result<bool, StoreError> {
        self.0.mark_once(mark, expires_at_ms, now_ms)
    }
    fn trim_marks(&self, max_marks: u64, limit: usize) -> Result<usize, StoreError> {
        self.0.trim_marks(max_marks, limit)
    }
    fn mark_count(&self) -> Result<u64, StoreError> {
        self.0.mark_count()
    }
    fn outbox_put(
        &self,
        events: &[lark_auth::store::OutboxEvent],
        mark_expires_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<bool>, StoreError> {
        self.0.outbox_put(events, mark_expires_ms, now_ms)
    }
    fn outbox_list(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<lark_auth::store::OutboxEntry>, StoreError> {
        self.0.outbox_list(after, limit)
    }
    fn outbox_update(
        &self,
        target: &str,
        event_id: &str,
        retry: lark_auth::store::OutboxRetry,
    ) -> Result<bool, StoreError> {
        self.0.outbox_update(target, event_id, retry)
    }
    fn outbox_remove(&self, entries: &[(String, String)]) -> Result<usize, StoreError> {
        self.0.outbox_remove(entries)
    }
    fn mark_value(&self, mark: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.mark_value(mark, now_ms)
    }
    fn set_mark_value(&self, mark: &[u8], value: &[u8], now_ms: u64) -> Result<bool, StoreError> {
        self.0.set_mark_value(mark, value, now_ms)
    }
    fn purge_marks(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        self.0.purge_marks(now_ms, limit)
    }
    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get_meta(name)
    }
    fn put_meta_if_absent(&self, name: &str, value: &[u8]) -> Result<bool, StoreError> {
        self.0.put_meta_if_absent(name, value)
    }
    fn list_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.0.list_meta(prefix)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.0.flush()
    }
}
/// Authorizations requested at once, unless `SESSIONS_SCALE_WINDOW` says otherwise.
const WINDOW: usize = 100;
const APP: &str = "cli_sandbox_app";

fn open_id(i: usize) -> String {
    format!("ou_{i:032x}")
}

/// Resident set size of this process, bytes (`VmRSS`).
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .expect("VmRSS")
        * 1024
}

#[derive(Clone, Copy)]
struct Snapshot {
    rss: usize,
    heap: usize,
}

unsafe extern "C" {
    /// glibc: returns free heap memory to the system where possible.
    fn malloc_trim(pad: usize) -> i32;
}

async fn snapshot(store: &dyn Store) -> Snapshot {
    store.flush().expect("flush");
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    // Freed buffers of the requests that are done stay resident until glibc gives them
    // back; count what is still in use (and the fragmentation it cannot give back).
    // SAFETY: malloc_trim only releases free memory; no pointer is handed over.
    unsafe { malloc_trim(0) };
    Snapshot {
        rss: rss(),
        heap: LIVE.load(Ordering::Relaxed),
    }
}

fn per(delta_from: Snapshot, to: Snapshot, n: usize) -> (f64, f64) {
    (
        (to.rss as f64 - delta_from.rss as f64) / n as f64,
        (to.heap as f64 - delta_from.heap as f64) / n as f64,
    )
}

/// The child: the sandbox until stdin closes.
fn run_sandbox() {
    actix_rt::System::new().block_on(async {
        let mut config = SandboxConfig::default();
        config.openapi.open_tenant = true;
        config.openapi.keep_cards = false;
        config.openapi.device_code_lifetime = Duration::from_secs(3600);
        config.openapi.device_poll_interval = Duration::from_secs(60);
        let sandbox = Sandbox::start(config).await.expect("sandbox starts");
        println!("{}", sandbox.base_url());
        std::io::stdout().flush().expect("stdout");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = tx.send(());
        });
        let _ = rx.await;
        eprintln!("sandbox: {} cards accepted", sandbox.sent_card_count());
    });
}

/// The records one pending session writes, in order, with realistic sizes.
fn transitions(i: usize, settings: &SessionSettings, port: u16, now: u64) -> [SessionRecord; 3] {
    let mut scopes = settings.default_scopes.clone();
    scopes.push(OFFLINE_ACCESS.to_string());
    let created = SessionRecord::new(
        format!("as_{}", uuid::Uuid::new_v4().simple()),
        open_id(i),
        scopes,
        None,
        now,
        settings.session_timeout.as_millis() as u64,
    );
    let mut granted = created.clone();
    granted.device = Some(DeviceProgress {
        device_code: Secret::new(format!("sandbox_device_{}", uuid::Uuid::new_v4().simple())),
        verification_uri_complete: format!(
            "http://127.0.0.1:{port}/oauth/v1/device/verify?user_code=ABCD-EFGH"
        ),
        interval_secs: 60,
        expires_at_ms: now + 3_600_000,
    });
    let mut sent = granted.clone();
    sent.state = SessionState::CardSent;
    if let Some(device) = sent.device.as_mut() {
        device.verification_uri_complete = String::new();
    }
    sent.card_message_id = Some(format!("om_sandbox_{}", uuid::Uuid::new_v4().simple()));
    sent.next_poll_at_ms = Some(now + 600_000);
    [created, granted, sent]
}

fn sessions_count() -> usize {
    std::env::var("SESSIONS_SCALE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("sandbox") => return run_sandbox(),
        Ok("measure") => return measure(),
        _ => {}
    }
    let n = sessions_count();
    let this = std::env::current_exe().expect("this binary");
    let mut sandbox = Command::new(&this)
        .env(ROLE, "sandbox")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sandbox process starts");
    let mut base_url = String::new();
    BufReader::new(sandbox.stdout.take().expect("child stdout"))
        .read_line(&mut base_url)
        .expect("sandbox prints its URL");
    for (run, kind) in [(1, "sled"), (2, "drop")] {
        println!("--- run {run}: session records on {kind} ---");
        let status = Command::new(&this)
            .env(ROLE, "measure")
            .env(SANDBOX_URL, base_url.trim())
            .env(STORE_KIND, kind)
            .env(FIRST_USER, ((run - 1) * n).to_string())
            .status()
            .expect("measurement runs");
        assert!(status.success(), "run {run} failed");
    }
    drop(sandbox.stdin.take());
    let _ = sandbox.wait();
}

/// One measurement process; see the module docs.
fn measure() {
    let n = sessions_count();
    let base_url = std::env::var(SANDBOX_URL).expect("sandbox URL");
    let drop_sessions = std::env::var(STORE_KIND).as_deref() == Ok("drop");
    let first_user: usize = std::env::var(FIRST_USER)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let port: u16 = base_url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");

    let window: usize = std::env::var("SESSIONS_SCALE_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(WINDOW)
        .max(1);
    actix_rt::System::new().block_on(async move {
        let mut config = Config::for_tests(&base_url);
        config.openapi.request_timeout = Duration::from_secs(60);
        let mut settings = SessionSettings::from_config(&config);
        settings.app_name = "Bench App".into();
        // Idle polls every 10 minutes: none is due during the run.
        settings.cadence.idle_factor = 10;

        let dir = tempfile::tempdir().expect("temporary directory");
        let sled = SledStore::open(dir.path()).expect("sled opens");
        let store: Arc<dyn Store> = if drop_sessions {
            Arc::new(DropSessions(sled))
        } else {
            Arc::new(sled)
        };
        let keyring = Keyring::single(1, VaultKey::generate());
        let vault = Vault::open(store.clone(), APP, keyring.clone(), DuePolicy::default())
            .expect("vault opens");
        let vault = TokenVaultActor::start(vault, 1);
        let metrics = Metrics::new();
        let router = RouterActor::start(RouterParts {
            client: OpenApiClient::new(&config).expect("client builds"),
            store: store.clone(),
            keyring: keyring.clone(),
            vault,
            settings: settings.clone(),
            metrics: metrics.clone(),
            clock: lark_auth::clock::Clock::system(),
        })
        .expect("router starts");
        router.send(CountRunningSessions).await.expect("router up");

        let before = snapshot(store.as_ref()).await;
        let started = Instant::now();
        for first in (0..n).step_by(window) {
            let sends = (first..(first + window).min(n)).map(|i| {
                router.send(StartAuthorization {
                    open_id: open_id(first_user + i),
                    scopes: Vec::new(),
                })
            });
            for reply in join_all(sends).await {
                reply.expect("router alive").expect("session starts");
            }
        }
        let created = started.elapsed();
        loop {
            let sent = metrics.sessions_in_state("card_sent")
                + metrics.sessions_in_state("awaiting_user");
            let running: i64 = ["created", "card_sent", "awaiting_user", "exchanging"]
                .iter()
                .map(|s| metrics.sessions_in_state(s))
                .sum();
            if running < n as i64 {
                panic!(
                    "only {running} of {n} sessions running:\n{}",
                    metrics
                        .encode()
                        .lines()
                        .filter(|l| l.starts_with("lark_auth_sessions"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            if sent == n as i64 {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        let all_sent = started.elapsed();
        let with_sessions = snapshot(store.as_ref()).await;
        println!(
            "{n} pending device-flow sessions ({window} requested at once): router replies after {:.1} s ({:.0} sessions/s), every card delivered after {:.1} s ({:.0} sessions/s)",
            created.as_secs_f64(),
            n as f64 / created.as_secs_f64(),
            all_sent.as_secs_f64(),
            n as f64 / all_sent.as_secs_f64()
        );
        let (rss_total, heap_total) = per(before, with_sessions, n);
        println!(
            "process RSS {:.1} MiB before, {:.1} MiB with the sessions",
            before.rss as f64 / 1048576.0,
            with_sessions.rss as f64 / 1048576.0,
        );
        if drop_sessions {
            println!(
                "memory per session, session records dropped: RSS {rss_total:.0} B, heap {heap_total:.0} B (target ≤ 2048 B)"
            );
        } else {
            // The store alone: the same records into a fresh sled store.
            let dir2 = tempfile::tempdir().expect("temporary directory");
            let store2 = SledStore::open(dir2.path()).expect("sled opens");
            let codec = SessionCodec::new(&keyring).expect("codec");
            let now = unix_now_ms();
            for i in 0..n {
                for record in transitions(first_user + i, &settings, port, now) {
                    store2
                        .put_session(&record.session_id, &codec.encode(&record))
                        .expect("written");
                }
            }
            let with_store = snapshot(&store2).await;
            let (rss_store, heap_store) = per(with_sessions, with_store, n);
            println!(
                "memory per session, sessions + store: RSS {rss_total:.0} B, heap {heap_total:.0} B"
            );
            println!(
                "memory per session, store alone:      RSS {rss_store:.0} B, heap {heap_store:.0} B"
            );
            println!(
                "memory per session beyond the store:  RSS {:.0} B, heap {:.0} B (target ≤ 2048 B)",
                rss_total - rss_store,
                heap_total - heap_store
            );
        }
        let running = router.send(CountRunningSessions).await.expect("router up");
        assert_eq!(running, n, "every session still running");
    });
}
