//! Vault and scheduler at scale: loads `VAULT_SCALE_GRANTS` (default 1,000,000) sealed
//! grants into a sled vault in a temporary directory and prints
//! - the RefreshScheduler's memory per grant (index + slot table + open_id map, counted
//!   by a counting allocator while the actor loads the vault) and the pure index's,
//! - the cost of one tick with all grants indexed and 100 due,
//! - `get_token` latency p50/p99 for a fresh token in process: the first call per grant
//!   (a cache miss: vault actor, sled read, AEAD open) and the calls after it (served by
//!   the opened-token cache), and the cache's memory per entry,
//! - sustained flushed refresh-writes per second (compare-and-swap + fsync through the
//!   vault actor, 64 in flight).
//!
//! `cargo bench --bench vault_scale` (`VAULT_SCALE_GRANTS=100000` for a quick run).
//! `VAULT_SCALE_STORE=postgres` runs the same on a throwaway PostgreSQL server started from
//! the machine's binaries (as the tests do; fsync off, unix socket), through the
//! PostgreSQL store with its notification connection (as `serve` runs it), and adds a
//! sustained-read pass: as many `get_token` calls as 16 callers make in 5 s over grants
//! read before, served by the opened-token cache, then by a source without a cache (every
//! read a store read); then the grants table's size on disk, the server's
//! `shared_buffers` and the autovacuum workers running before and after the `get_token`
//! passes (the cache-miss reads depend on them).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lark_auth::refresh::{
    DeadlineKind, GetRefreshStats, RefreshIndex, RefreshScheduler, SchedulerSettings,
};
use lark_auth::secret::Secret;
use lark_auth::store::{PostgresStore, SledStore, Store};
use lark_auth::tokens::{NewTokens, RefreshFailure, RefreshGrant, TokenSource};
use lark_auth::vault::actor::{CompareAndSwapGrant, GetGrant};
use lark_auth::vault::{
    DuePolicy, Keyring, SwapOutcome, TokenVaultActor, Vault, VaultKey, unix_now_ms,
};

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

mod cold_grants;
#[path = "../tests/pg_common/mod.rs"]
mod pg_common;

use cold_grants::{cold_grant, open_id};

const APP: &str = "cli_bench";

/// Fresh tokens never need a refresh; this refresher is never called.
struct NeverCalled;

impl RefreshGrant for NeverCalled {
    async fn refresh(&self, _: Secret<String>) -> Result<NewTokens, RefreshFailure> {
        unreachable!("fresh tokens are not refreshed in this bench")
    }
}

/// Autovacuum workers running on the server now.
fn autovacuum_workers(server: &pg_common::TestPostgres) -> String {
    server.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let grants: usize = std::env::var("VAULT_SCALE_GRANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let postgres = std::env::var("VAULT_SCALE_STORE").is_ok_and(|v| v == "postgres");
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = postgres.then(pg_common::TestPostgres::start);
    let store: Arc<dyn Store> = match &server {
        Some(server) => Arc::new(
            PostgresStore::open(&server.options("lark_auth")).expect("PostgreSQL store opens"),
        ),
        None => Arc::new(SledStore::open(dir.path()).expect("sled opens")),
    };
    println!(
        "store: {}",
        if postgres {
            "PostgreSQL (throwaway server, loopback unix socket)"
        } else {
            "sled"
        }
    );
    let vault = Vault::open(
        store,
        APP,
        Keyring::single(1, VaultKey::generate()),
        DuePolicy::default(),
    )
    .expect("vault opens");
    let now = unix_now_ms();

    // ----- load: sealed records written by compare-and-swap (no flush per record), on
    // two threads, one flush at the end.
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2 {
            let vault = vault.clone();
            s.spawn(move || {
                for i in (t..grants).step_by(2) {
                    match vault.compare_and_swap(&cold_grant(APP, "tk_bench", i, now), false) {
                        Ok(SwapOutcome::Swapped(_)) => {}
                        other => panic!("load failed: {other:?}"),
                    }
                }
            });
        }
    });
    vault.store().flush().expect("flush");
    let load = started.elapsed();
    println!(
        "load: {grants} sealed grants in {:.1} s ({:.0} grants/s)",
        load.as_secs_f64(),
        grants as f64 / load.as_secs_f64()
    );

    // ----- the pure index: memory and tick cost.
    {
        let before = LIVE.load(Ordering::Relaxed);
        let mut index = RefreshIndex::new();
        for i in 0..grants {
            let r = cold_grant(APP, "tk_bench", i, now);
            index.set(
                i as u32,
                DeadlineKind::KeepAlive,
                Some(r.refresh_expires_ms - 86_400_000),
            );
        }
        let bytes = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "refresh index alone: {:.1} bytes/grant (one deadline each)",
            bytes as f64 / grants as f64
        );
        let mut times = Vec::new();
        for round in 0..200u64 {
            for k in 0..100u32 {
                let g = (k as usize * 9973 + round as usize * 31) % grants;
                index.set(
                    g as u32,
                    DeadlineKind::AccessRefresh,
                    Some(now - 1000 + u64::from(k)),
                );
            }
            let t = Instant::now();
            let due = index.pop_due(now, usize::MAX);
            times.push(t.elapsed());
            assert_eq!(due.len(), 100);
        }
        times.sort();
        println!(
            "tick with {grants} grants indexed and 100 due: p50 {:?}, p99 {:?} (pop of the due entries)",
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
    }

    // Warm sled's cache with one full scan so the scheduler's measurement below counts
    // the scheduler, not the cache filling.
    let mut after = None;
    loop {
        let page = vault.list(after.as_deref(), 10_000).expect("list");
        if page.len() < 10_000 {
            break;
        }
        after = page.last().map(|g| g.identity.open_id.clone());
    }

    if postgres {
        // As serve runs it: other instances' writes heard, the cache set aside when the
        // notification connection is lost.
        assert!(vault.watch_store_writes());
    }
    let server_ref = server.as_ref();
    let system = actix::System::new();
    system.block_on(async move {
        let addr = TokenVaultActor::start(vault.clone(), 2);
        let cache = lark_auth::tokens::TokenCache::for_vault(&vault, lark_auth::config::DEFAULT_TOKEN_CACHE_ENTRIES);
        let source = TokenSource::new(addr.clone(), NeverCalled, Duration::from_secs(300))
            .with_token_cache(cache.clone());

        // ----- the scheduler's memory per grant.
        let before = LIVE.load(Ordering::Relaxed);
        let started = Instant::now();
        let scheduler = actix::Actor::start(RefreshScheduler::new(
            source.clone(),
            addr.clone(),
            SchedulerSettings::default(),
        ));
        loop {
            let s = scheduler.send(GetRefreshStats).await.unwrap();
            if s.loaded {
                let bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
                println!(
                    "scheduler: loaded {} grants ({} deadlines) in {:.1} s; {:.1} bytes/grant (index + slots + open_id map)",
                    s.grants,
                    s.deadlines,
                    started.elapsed().as_secs_f64(),
                    bytes as f64 / s.grants as f64
                );
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }

        // ----- get_token for a fresh token: 22,000 distinct grants (all of them when
        // fewer) asked for the first time (cache misses), then the same grants again,
        // twice (cache hits).
        let ids: Vec<String> = (0..22_000usize.min(grants))
            .map(|k| open_id((k * 7919) % grants))
            .collect();
        let pass = |label: &'static str| {
            let source = source.clone();
            let ids = ids.clone();
            async move {
                let mut times = Vec::with_capacity(ids.len());
                // The first 2,000 (fewer with fewer grants) warm up and are not counted.
                let warm = (ids.len() / 11).min(2_000);
                for (k, id) in ids.iter().enumerate() {
                    let t = Instant::now();
                    let token = source.get_token(id).await.expect("fresh token");
                    let took = t.elapsed();
                    assert!(!token.token.is_empty());
                    if k >= warm {
                        times.push(took);
                    }
                }
                times.sort();
                println!(
                    "get_token (fresh token, {label}, {} calls): p50 {:?}, p99 {:?}, max {:?}",
                    times.len(),
                    percentile(&times, 0.5),
                    percentile(&times, 0.99),
                    times.last().unwrap()
                );
            }
        };
        // The server's own background work can weigh on the store reads below (an
        // autovacuum of the grants table just loaded).
        let vacuum_before = server_ref.map(autovacuum_workers);
        pass("first call per grant: cache miss, through the vault actor").await;
        assert_eq!(cache.len(), ids.len());
        pass("asked before: served by the opened-token cache").await;
        pass("asked before: served by the opened-token cache, again").await;
        if postgres {
            // Sustained reads: 16 callers for 5 s over the grants read before, served by
            // the opened-token cache, then by a source without a cache (every read a
            // store read and an AEAD open).
            let uncached = TokenSource::new(addr.clone(), NeverCalled, Duration::from_secs(300));
            for (label, source) in [("opened-token cache", &source), ("no cache: every read from the store", &uncached)] {
                let reads = std::rc::Rc::new(std::cell::Cell::new(0u64));
                let deadline = Instant::now() + Duration::from_secs(5);
                let started = Instant::now();
                let callers = (0..16usize).map(|c| {
                    let source = source.clone();
                    let ids = &ids;
                    let reads = reads.clone();
                    async move {
                        let mut k = c;
                        while Instant::now() < deadline {
                            k += 16;
                            source.get_token(&ids[k % ids.len()]).await.expect("fresh token");
                            reads.set(reads.get() + 1);
                        }
                    }
                });
                futures_util::future::join_all(callers).await;
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "sustained get_token, 16 callers, {label}: {:.0} reads/s",
                    reads.get() as f64 / secs
                );
            }
            if let (Some(server), Some(before)) = (server_ref, vacuum_before) {
                println!(
                    "grants table {} on disk (shared_buffers {}); autovacuum workers running: \
                     {before} before the get_token passes, {} after",
                    server.psql(
                        "SELECT pg_size_pretty(pg_total_relation_size('lark_auth.grants'))"
                    ),
                    server.psql("SHOW shared_buffers"),
                    autovacuum_workers(server)
                );
            }
        }
        let held = LIVE.load(Ordering::Relaxed);
        let entries = cache.len();
        cache.clear();
        let freed = held.saturating_sub(LIVE.load(Ordering::Relaxed));
        println!(
            "opened-token cache: {entries} entries held {:.0} bytes/entry (256-byte tokens, \
             map included)",
            freed as f64 / entries as f64
        );
        let s = scheduler.send(GetRefreshStats).await.unwrap();
        assert_eq!(s.attempts.sent, 0);

        // ----- flushed refresh-writes: read, rotate, compare-and-swap durably; 64 in
        // flight for 5 s.
        let deadline = Instant::now() + Duration::from_secs(5);
        let started = Instant::now();
        let writes = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let workers = (0..64usize).map(|w| {
            let addr = addr.clone();
            let writes = writes.clone();
            async move {
                let mut k = w;
                while Instant::now() < deadline {
                    let id = open_id((k * 104_729) % grants);
                    k += 64;
                    let mut r = addr
                        .send(GetGrant { open_id: id })
                        .await
                        .unwrap()
                        .unwrap()
                        .unwrap();
                    r.refresh_token = Secret::new(format!("ur-rotated-{k:0>243}"));
                    r.access_token = Secret::new(format!("u-rotated-{k:0>245}"));
                    if let SwapOutcome::Swapped(_) = addr
                        .send(CompareAndSwapGrant {
                            record: r,
                            durable: true,
                        })
                        .await
                        .unwrap()
                        .unwrap()
                    {
                        writes.set(writes.get() + 1);
                    }
                }
            }
        });
        futures_util::future::join_all(workers).await;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "flushed refresh-writes: {} in {secs:.1} s = {:.0}/s (64 in flight, 2 vault threads)",
            writes.get(),
            writes.get() as f64 / secs
        );
    });
}
