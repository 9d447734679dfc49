//! [`PostgresStore`]: the [`Store`] on a PostgreSQL server, shared by every lark-auth
//! instance of one deployment (`[store] backend = "postgres"`).
//!
//! Tables and migrations are in the `pg_schema` module (one schema per deployment, named by
//! `[store] schema`). Each method is one statement in its own transaction (autocommit), so
//! it is atomic on its own and committed when it returns: with `synchronous_commit = on`
//! (forced on every connection) a returned write is on the server's disk, at least as
//! durable as the sled path's flush before acknowledging. [`Store::flush`] therefore has
//! nothing left to do, and no acknowledged write can be lost without the server losing
//! committed transactions, so the loss checks keep their defaults.
//!
//! - Grant CAS: `INSERT … ON CONFLICT DO NOTHING` for a new record, `UPDATE … SET version
//!   = version + 1 … WHERE version = $v` for a replacement, `DELETE … WHERE version = $v`;
//!   the refresh-due index is a partial index on the `due_ms` column, so it moves with the
//!   row.
//! - Dedup marks: one `INSERT … ON CONFLICT (mark) DO UPDATE … WHERE expires_ms <= now`:
//!   first sighting, or a new life for an expired mark, in one atomic statement; two
//!   instances marking the same event at once get one `true`. A mark is stored under its
//!   16-byte [`mark_key`]; the cap ([`Store::trim_marks`]) counts the table and deletes the
//!   oldest by the `expires_ms` index, whole buckets of [`MARK_BUCKET_MS`].
//! - Outbox leases: each row has an `owner` and `lease_until_ms`; a claim is one `UPDATE
//!   … WHERE (target, event_id) IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING …`, so
//!   instances claiming at once each take different rows.
//!
//! Why a runtime of its own: the [`Store`] trait blocks and is called from `SyncArbiter`
//! threads and, at start, from the System's own thread. The client is tokio-postgres with a
//! deadpool pool; a pool's connections are tasks of the runtime that opened them (actix
//! runs one current-thread runtime per worker, each with its own `LocalSet`). So the store
//! owns one thread running one current-thread tokio runtime: the pool and every connection
//! live there, each call is a task spawned onto it, and the calling thread waits for the
//! answer on a plain channel (which, unlike a runtime's `block_on`, may also be done from
//! inside another runtime). No actix worker's runtime ever holds a database connection.
//!
//! Errors: connection and statement failures are [`StoreError::Backend`] (the operation
//! may or may not have been applied when the answer was lost; as with a failed sled write,
//! nothing is acknowledged). Every call is bounded by
//! [`PostgresOptions::operation_timeout`]. The connection URL is a [`Secret`]: neither it
//! nor its password appears in errors, `Debug` or logs ([`PostgresStore::location`] names
//! host, port, database, user and schema only).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

use super::pg_schema::{self, MigrateError, SCHEMA_VERSION, Sql};
use super::{
    BackendError, CasOutcome, DueEntry, GrantKey, GrantWrite, MARK_BUCKET_MS, NewHeldSession,
    OutboxEntry, OutboxEvent, OutboxRetry, QuarantinedRecord, SessionClaim, SessionInput,
    SessionLiveCheck, SessionStart, Store, StoreError, StoredGrant, mark_key, outbox_mark,
};
use crate::metrics::Metrics;
use crate::secret::Secret;

/// How to reach the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// A libpq connection string (`host=… user=… dbname=…`) or a `postgres://` URL.
    /// Secret: it may carry the password.
    pub url: Secret<String>,
    /// The schema holding lark-auth's tables (see `pg_schema`'s rules for the name).
    pub schema: String,
    /// Most connections open at once. Default 8.
    pub pool_size: usize,
    /// Longest wait to connect (when the URL sets no `connect_timeout`). Default 5 s.
    pub connect_timeout: Duration,
    /// Longest wait for one store call, pool wait included. Default 10 s.
    pub operation_timeout: Duration,
}

impl PostgresOptions {
    /// Options with the defaults for everything but the URL and the schema.
    pub fn new(url: Secret<String>, schema: impl Into<String>) -> Self {
        PostgresOptions {
            url,
            schema: schema.into(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(10),
        }
    }
}

/// The PostgreSQL-backed [`Store`]. Cloning is cheap (one shared pool and runtime).
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: Pool,
    sql: Arc<Sql>,
    runtime: tokio::runtime::Handle,
    /// Ends the runtime thread when the last handle goes.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    location: String,
    operation_timeout: Duration,
    /// For the `LISTEN` connection of [`Store::watch_grants`].
    config: tokio_postgres::Config,
    schema: String,
    /// Where call latencies, pool state and notifications go, once set.
    metrics: std::sync::OnceLock<Metrics>,
}

/// The `NOTIFY` channel of grant writes, shared by every schema of a database (the
/// payload names the schema): `<schema> US <app_id> US <open_id>` (US = 0x1F).
pub const GRANTS_CHANNEL: &str = "lark_auth_grants";

/// The `NOTIFY` channel of the session inbox, shared by every schema of a database: the
/// payload `<schema> US <instance>` wakes that instance (an input for a session it holds,
/// or the answer to an input it sent).
pub const SESSIONS_CHANNEL: &str = "lark_auth_sessions";

/// Wait before the `LISTEN` connection is opened again after it failed.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

impl Drop for Shared {
    fn drop(&mut self) {
        // The thread drops the pool's connections with its runtime. Not joined: the last
        // handle may be dropped on a thread that must not block.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.shared.location)
            .finish_non_exhaustive()
    }
}

/// A store call that gave up waiting.
#[derive(Debug, thiserror::Error)]
#[error("no answer from PostgreSQL within {0:?}")]
struct TimedOut(Duration);

/// The store's runtime thread is gone (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the PostgreSQL store's runtime thread has stopped")]
struct RuntimeGone;

/// A client error as one line: its message and its causes' (tokio-postgres shows the
/// server's message, e.g. "permission denied for database", only as a cause).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct OneLine(String);

/// Flattens `e` and its sources into one line, as a [`BackendError`].
fn one_line(e: &(dyn std::error::Error + 'static)) -> BackendError {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    Box::new(OneLine(text.replace('\n', "; ")))
}

fn to_db(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn from_db(v: i64) -> u64 {
    v.max(0) as u64
}

fn check_part(what: &'static str, part: &str) -> Result<(), StoreError> {
    if part.is_empty() || part.as_bytes().contains(&0) {
        return Err(StoreError::InvalidKey { what });
    }
    Ok(())
}

/// Parses the connection string; the error never quotes it.
fn parse_url(url: &Secret<String>) -> Result<tokio_postgres::Config, StoreError> {
    url.expose().parse::<tokio_postgres::Config>().map_err(|e| {
        let text = e.to_string();
        // "unexpected character at byte N: expected `x` but got `c`" quotes one
        // character of the string (which may be the password's): cut it.
        let text = match text.find(" but got") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        StoreError::InvalidUrl {
            source: Box::new(OneLine(text)),
        }
    })
}

/// Host, port, database and user of a config, never the password.
fn describe(config: &tokio_postgres::Config, schema: &str) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "postgres host={} port={} dbname={} user={} schema={schema}",
        if hosts.is_empty() {
            "(default)".to_string()
        } else {
            hosts.join(",")
        },
        if ports.is_empty() {
            "5432".to_string()
        } else {
            ports.join(",")
        },
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("(default)"),
        config.get_user().unwrap_or("(default)"),
    )
}

impl PostgresStore {
    /// Connects, creates or migrates the schema to [`SCHEMA_VERSION`] (see `pg_schema`:
    /// one transaction per migration, safe when several instances start at once), and
    /// returns the store. Blocks until done; may be called from any thread.
    ///
    /// # Errors
    /// [`StoreError::InvalidUrl`] (the URL is not quoted), [`StoreError::InvalidSchemaName`],
    /// [`StoreError::Connect`] (server unreachable, authentication refused, missing
    /// privileges for the migration), [`StoreError::SchemaTooNew`] when a newer lark-auth
    /// migrated the schema (nothing is written).
    pub fn open(options: &PostgresOptions) -> Result<PostgresStore, StoreError> {
        Self::start(options, true)
    }

    /// Connects and checks the schema's version without creating or migrating anything
    /// (`check-config`). Returns the store and the version found (0: no schema yet).
    ///
    /// # Errors
    /// As [`PostgresStore::open`].
    pub fn connect_and_check(
        options: &PostgresOptions,
    ) -> Result<(PostgresStore, i32), StoreError> {
        let store = Self::start(options, false)?;
        let schema = options.schema.clone();
        let location = store.shared.location.clone();
        let version = store
            .call("read schema version", move |pool, _| async move {
                let client = pool.get().await?;
                Ok(pg_schema::read_version(&client, &schema).await?)
            })
            .map_err(|e| match e {
                StoreError::Backend { source, .. } => StoreError::Connect { location, source },
                other => other,
            })?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                location: store.shared.location.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok((store, version))
    }

    fn start(options: &PostgresOptions, migrate: bool) -> Result<PostgresStore, StoreError> {
        let sql = Sql::for_schema(&options.schema)?;
        let mut config = parse_url(&options.url)?;
        let location = describe(&config, &options.schema);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("lark-auth");
        }
        // A returned write must be committed to disk, whatever the server's default.
        let extra = config.get_options().unwrap_or("").to_string();
        config.options(format!("{extra} -c synchronous_commit=on").trim());

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("lark-auth-pg".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            });
        let open_error = |source: BackendError| StoreError::Connect {
            location: location.clone(),
            source,
        };
        spawned.map_err(|e| open_error(Box::new(e)))?;
        let runtime = handle_rx
            .recv()
            .map_err(|_| open_error(Box::new(RuntimeGone)))?
            .map_err(|e| open_error(Box::new(e)))?;

        let listen_config = config.clone();
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            // Building the pool needs the runtime entered (it names tokio for its timers).
            let _entered = runtime.enter();
            Pool::builder(manager)
                .max_size(options.pool_size.max(1))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(options.operation_timeout))
                .create_timeout(Some(options.connect_timeout))
                .build()
                .map_err(|e| open_error(Box::new(e)))?
        };
        let store = PostgresStore {
            shared: Arc::new(Shared {
                pool,
                sql: Arc::new(sql),
                runtime,
                stop: Some(stop),
                location: location.clone(),
                operation_timeout: options.operation_timeout.max(options.connect_timeout * 2),
                config: listen_config,
                schema: options.schema.clone(),
                metrics: std::sync::OnceLock::new(),
            }),
        };
        let schema = options.schema.clone();
        let outcome = store.call_raw(move |pool, _| async move {
            let mut client = pool.get().await.map_err(MigrateFailure::Pool)?;
            if migrate {
                pg_schema::migrate(&mut client, &schema)
                    .await
                    .map_err(MigrateFailure::Migrate)?;
            } else {
                client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| MigrateFailure::Migrate(MigrateError::Db(e)))?;
            }
            Ok::<(), MigrateFailure>(())
        });
        match outcome {
            Ok(Ok(())) => Ok(store),
            Ok(Err(MigrateFailure::Migrate(MigrateError::TooNew(found)))) => {
                Err(StoreError::SchemaTooNew {
                    location,
                    found,
                    supported: SCHEMA_VERSION,
                })
            }
            Ok(Err(MigrateFailure::Migrate(MigrateError::Db(e)))) => Err(open_error(one_line(&e))),
            Ok(Err(MigrateFailure::Pool(e))) => Err(open_error(one_line(&e))),
            Err(e) => Err(open_error(e)),
        }
    }

    /// Records every call's latency by operation, the pool's state and the notifications
    /// heard in `metrics` (`lark_auth_store_*`). Only the first call counts.
    pub fn set_metrics(&self, metrics: Metrics) {
        let _ = self.shared.metrics.set(metrics);
    }

    /// Where the store is, for messages: host, port, database, user and schema (never the
    /// password).
    pub fn location(&self) -> &str {
        &self.shared.location
    }

    /// Runs `f` on the store's runtime and waits for its result (bounded by the operation
    /// timeout). The outer error is the wait's (timeout, runtime gone).
    /// [`Store::outbox_put`], the new rows owned by `owner` (name, lease end unix ms)
    /// when given.
    fn put_outbox(
        &self,
        events: &[OutboxEvent],
        owner: Option<(String, u64)>,
        mark_expires_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<bool>, StoreError> {
        for e in events {
            check_part("event_id", &e.event_id)?;
            for t in &e.targets {
                check_part("target", t)?;
            }
        }
        let events = events.to_vec();
        let (expires, now) = (to_db(mark_expires_ms), to_db(now_ms));
        let owner = owner.map(|(o, until)| (o, to_db(until)));
        self.call("outbox_put", move |pool, sql| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let mark_stmt = tx.prepare_cached(&sql.mark_once).await?;
            let insert = match owner {
                Some(_) => tx.prepare_cached(&sql.outbox_insert_owned).await?,
                None => tx.prepare_cached(&sql.outbox_insert).await?,
            };
            let mut stored = Vec::with_capacity(events.len());
            for e in &events {
                let mark = mark_key(&outbox_mark(&e.event_id)).to_vec();
                if tx.execute(&mark_stmt, &[&mark, &expires, &now]).await? != 1 {
                    stored.push(false);
                    continue;
                }
                for t in &e.targets {
                    match &owner {
                        Some((o, until)) => {
                            tx.execute(
                                &insert,
                                &[t, &e.event_id, &e.event_type, &e.payload, &now, o, until],
                            )
                            .await?
                        }
                        None => {
                            tx.execute(&insert, &[t, &e.event_id, &e.event_type, &e.payload, &now])
                                .await?
                        }
                    };
                }
                stored.push(true);
            }
            tx.commit().await?;
            Ok(stored)
        })
    }

    fn call_raw<T, F, Fut>(&self, f: F) -> Result<T, BackendError>
    where
        F: FnOnce(Pool, Arc<Sql>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let pool = self.shared.pool.clone();
        let sql = self.shared.sql.clone();
        let timeout = self.shared.operation_timeout;
        self.shared.runtime.spawn(async move {
            let outcome = tokio::time::timeout(timeout, f(pool, sql)).await;
            let _ = tx.send(outcome);
        });
        match rx.recv() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_elapsed)) => Err(Box::new(TimedOut(timeout))),
            Err(_) => Err(Box::new(RuntimeGone)),
        }
    }

    /// [`PostgresStore::call_raw`] for an operation whose failures are backend errors.
    fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Pool, Arc<Sql>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, BackendError>> + Send + 'static,
        T: Send + 'static,
    {
        let started = std::time::Instant::now();
        let result = self.call_raw(f);
        if let Some(m) = self.shared.metrics.get() {
            m.store_operation(op, started.elapsed().as_secs_f64());
            let status = self.shared.pool.status();
            m.store_pool(
                status.size.saturating_sub(status.available),
                status.available,
                status.waiting,
            );
        }
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) | Err(source) => Err(StoreError::Backend {
                op,
                source: one_line(&*source),
            }),
        }
    }
}

/// The `application_name` of an instance's `LISTEN` connection on `schema`: one per live
/// instance, so counting them counts the instances.
fn listen_application_name(schema: &str) -> String {
    format!("lark-auth-listen {schema}")
}

/// One `LISTEN` connection: tells `hook` `None` once listening (and sets `listened`),
/// then every grant write of `schema` until the connection ends.
async fn listen(
    config: &tokio_postgres::Config,
    schema: &str,
    hook: &super::GrantWatchHook,
    listened: &mut bool,
) -> Result<(), tokio_postgres::Error> {
    use futures_util::StreamExt as _;
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN {GRANTS_CHANNEL}"))
        .await?;
    *listened = true;
    // Writes made before this point were not heard: forget what is cached.
    hook(None);
    while let Some(payload) = rx.recv().await {
        let mut parts = payload.split('\u{1f}');
        if let (Some(s), Some(app_id), Some(open_id)) = (parts.next(), parts.next(), parts.next())
            && s == schema
        {
            hook(Some(&GrantKey::new(app_id, open_id)));
        }
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// Wakes `instance` (its [`Store::watch_sessions`] hook); a lost notification only delays
/// it until its next poll.
async fn notify_instance(client: &deadpool_postgres::Client, schema: &str, instance: &str) {
    let payload = format!("{schema}\u{1f}{instance}");
    if let Err(e) = client
        .execute("SELECT pg_notify($1, $2)", &[&SESSIONS_CHANNEL, &payload])
        .await
    {
        tracing::warn!(error = %e, "session inbox notification not sent (the inbox poll makes up for it)");
    }
}

/// One `LISTEN` connection on the session inbox channel: calls `hook` once listening (and
/// sets `listened`), then for every notification whose payload is `wanted`.
async fn listen_sessions(
    config: &tokio_postgres::Config,
    wanted: &str,
    hook: &super::SessionWatchHook,
    listened: &mut bool,
) -> Result<(), tokio_postgres::Error> {
    use futures_util::StreamExt as _;
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN {SESSIONS_CHANNEL}"))
        .await?;
    *listened = true;
    hook();
    while let Some(payload) = rx.recv().await {
        if payload == wanted {
            hook();
        }
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// Why the start-up step failed, before it is told apart.
enum MigrateFailure {
    Pool(deadpool_postgres::PoolError),
    Migrate(MigrateError),
}

/// An outbox row (`target, event_id, event_type, payload, enqueued_ms, attempts,
/// next_attempt_ms, dead_at_ms`).
fn outbox_entry(r: tokio_postgres::Row) -> OutboxEntry {
    OutboxEntry {
        target: r.get(0),
        event_id: r.get(1),
        event_type: r.get(2),
        payload: r.get(3),
        enqueued_ms: from_db(r.get(4)),
        attempts: r.get::<_, i32>(5).max(0) as u32,
        next_attempt_ms: from_db(r.get(6)),
        dead_at_ms: r.get::<_, Option<i64>>(7).map(from_db),
    }
}

fn stored_grant(version: i64, due_ms: Option<i64>, payload: Vec<u8>) -> StoredGrant {
    StoredGrant {
        version: from_db(version),
        due_ms: due_ms.map(from_db),
        payload,
    }
}

impl Store for PostgresStore {
    fn get_grant(&self, key: &GrantKey) -> Result<Option<StoredGrant>, StoreError> {
        check_part("app_id", &key.app_id)?;
        check_part("open_id", &key.open_id)?;
        let key = key.clone();
        self.call("get_grant", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.get_grant).await?;
            let row = client
                .query_opt(&stmt, &[&key.app_id, &key.open_id])
                .await?;
            Ok(row.map(|r| stored_grant(r.get(0), r.get(1), r.get(2))))
        })
    }

    fn compare_and_swap_grant(
        &self,
        key: &GrantKey,
        expected_version: Option<u64>,
        new: Option<GrantWrite>,
    ) -> Result<CasOutcome, StoreError> {
        check_part("app_id", &key.app_id)?;
        check_part("open_id", &key.open_id)?;
        let key = key.clone();
        let schema = self.shared.schema.clone();
        self.call("compare_and_swap_grant", move |pool, sql| async move {
            let client = pool.get().await?;
            let (app, open) = (&key.app_id, &key.open_id);
            let changed = match (expected_version, &new) {
                (None, Some(write)) => {
                    let stmt = client.prepare_cached(&sql.insert_grant).await?;
                    let due = write.due_ms.map(to_db);
                    let n = client
                        .execute(&stmt, &[app, open, &due, &write.payload])
                        .await?;
                    (n == 1).then_some(1)
                }
                (Some(v), Some(write)) => {
                    let stmt = client.prepare_cached(&sql.update_grant).await?;
                    let due = write.due_ms.map(to_db);
                    client
                        .query_opt(&stmt, &[app, open, &to_db(v), &due, &write.payload])
                        .await?
                        .map(|r| from_db(r.get(0)))
                }
                (Some(v), None) => {
                    let stmt = client.prepare_cached(&sql.delete_grant).await?;
                    let n = client.execute(&stmt, &[app, open, &to_db(v)]).await?;
                    (n == 1).then_some(0)
                }
                // Delete where there is no record: done if there is none.
                (None, None) => None,
            };
            if let Some(version) = changed {
                // Committed: tell the other instances (their token caches and
                // schedulers). A lost notification is made up for when their LISTEN
                // connection comes back (they forget everything then).
                let payload = format!("{schema}\u{1f}{app}\u{1f}{open}");
                if let Err(e) = client
                    .execute("SELECT pg_notify($1, $2)", &[&GRANTS_CHANNEL, &payload])
                    .await
                {
                    tracing::warn!(error = %e, "grant write not announced to other instances");
                }
                return Ok(CasOutcome::Swapped { version });
            }
            let stmt = client.prepare_cached(&sql.grant_version).await?;
            let current = client
                .query_opt(&stmt, &[app, open])
                .await?
                .map(|r| from_db(r.get(0)));
            Ok(match (expected_version, new.is_none(), current) {
                (None, true, None) => CasOutcome::Swapped { version: 0 },
                _ => CasOutcome::Conflict { current },
            })
        })
    }

    fn list_grants(
        &self,
        app_id: &str,
        after_open_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(GrantKey, Result<StoredGrant, StoreError>)>, StoreError> {
        check_part("app_id", app_id)?;
        let app_id = app_id.to_string();
        // Every stored open_id is non-empty, so "" is below all of them.
        let after = after_open_id.unwrap_or("").replace('\0', "");
        let limit = to_db(limit as u64);
        self.call("list_grants", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.list_grants).await?;
            let rows = client.query(&stmt, &[&app_id, &after, &limit]).await?;
            Ok(rows
                .into_iter()
                .map(|r| {
                    let key = GrantKey::new(app_id.clone(), r.get::<_, String>(0));
                    (key, Ok(stored_grant(r.get(1), r.get(2), r.get(3))))
                })
                .collect())
        })
    }

    fn due_grants(&self, until_ms: u64, limit: usize) -> Result<Vec<DueEntry>, StoreError> {
        let (until, limit) = (to_db(until_ms), to_db(limit as u64));
        self.call("due_grants", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.due_grants).await?;
            let rows = client.query(&stmt, &[&until, &limit]).await?;
            Ok(rows
                .into_iter()
                .map(|r| DueEntry {
                    due_ms: from_db(r.get(0)),
                    key: GrantKey::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                })
                .collect())
        })
    }

    fn quarantine_grant(
        &self,
        key: &GrantKey,
        reason: &str,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        check_part("app_id", &key.app_id)?;
        check_part("open_id", &key.open_id)?;
        let key = key.clone();
        // PostgreSQL text holds no NUL.
        let reason = reason.replace('\0', "");
        let at = to_db(at_ms);
        self.call("quarantine_grant", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.quarantine_grant).await?;
            let n = client
                .execute(&stmt, &[&key.app_id, &key.open_id, &at, &reason])
                .await?;
            Ok(n == 1)
        })
    }

    fn quarantined(&self) -> Result<Vec<QuarantinedRecord>, StoreError> {
        self.call("quarantined", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.quarantined).await?;
            let rows = client.query(&stmt, &[]).await?;
            Ok(rows
                .into_iter()
                .map(|r| QuarantinedRecord {
                    key: GrantKey::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                    at_ms: from_db(r.get(2)),
                    reason: r.get(3),
                    raw: r.get(4),
                })
                .collect())
        })
    }

    fn put_session(&self, session_id: &str, value: &[u8]) -> Result<(), StoreError> {
        check_part("session_id", session_id)?;
        let (id, value) = (session_id.to_string(), value.to_vec());
        self.call("put_session", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.put_session).await?;
            client.execute(&stmt, &[&id, &value]).await?;
            Ok(())
        })
    }

    fn get_session(&self, session_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if session_id.as_bytes().contains(&0) {
            return Ok(None);
        }
        let id = session_id.to_string();
        self.call("get_session", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.get_session).await?;
            Ok(client.query_opt(&stmt, &[&id]).await?.map(|r| r.get(0)))
        })
    }

    fn delete_session(&self, session_id: &str) -> Result<bool, StoreError> {
        if session_id.as_bytes().contains(&0) {
            return Ok(false);
        }
        let id = session_id.to_string();
        self.call("delete_session", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.delete_session).await?;
            Ok(client.execute(&stmt, &[&id]).await? == 1)
        })
    }

    fn list_sessions(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.call("list_sessions", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.list_sessions).await?;
            let rows = client.query(&stmt, &[]).await?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn mark_once(&self, mark: &[u8], expires_at_ms: u64, now_ms: u64) -> Result<bool, StoreError> {
        let mark = mark_key(mark).to_vec();
        let (expires, now) = (to_db(expires_at_ms), to_db(now_ms));
        self.call("mark_once", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.mark_once).await?;
            Ok(client.execute(&stmt, &[&mark, &expires, &now]).await? == 1)
        })
    }

    fn mark_value(&self, mark: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mark = mark_key(mark).to_vec();
        let now = to_db(now_ms);
        self.call("mark_value", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.mark_value).await?;
            let value: Option<Vec<u8>> = client
                .query_opt(&stmt, &[&mark, &now])
                .await?
                .and_then(|r| r.get(0));
            // An empty value reads as none, as in sled.
            Ok(value.filter(|v| !v.is_empty()))
        })
    }

    fn set_mark_value(&self, mark: &[u8], value: &[u8], now_ms: u64) -> Result<bool, StoreError> {
        let (mark, value) = (mark_key(mark).to_vec(), value.to_vec());
        let now = to_db(now_ms);
        self.call("set_mark_value", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.set_mark_value).await?;
            Ok(client.execute(&stmt, &[&mark, &value, &now]).await? == 1)
        })
    }

    fn purge_marks(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let (now, limit) = (to_db(now_ms), to_db(limit as u64));
        self.call("purge_marks", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.purge_marks).await?;
            Ok(client.execute(&stmt, &[&now, &limit]).await? as usize)
        })
    }

    fn trim_marks(&self, max_marks: u64, limit: usize) -> Result<usize, StoreError> {
        let (max, limit) = (to_db(max_marks), to_db(limit as u64));
        let bucket = to_db(MARK_BUCKET_MS);
        self.call("trim_marks", move |pool, sql| async move {
            let client = pool.get().await?;
            let count = client.prepare_cached(&sql.mark_count).await?;
            let over = client.query_one(&count, &[]).await?.get::<_, i64>(0) - max;
            if over <= 0 || limit == 0 {
                return Ok(0);
            }
            let trim = client.prepare_cached(&sql.trim_marks).await?;
            Ok(client.execute(&trim, &[&over, &limit, &bucket]).await? as usize)
        })
    }

    fn mark_count(&self) -> Result<u64, StoreError> {
        self.call("mark_count", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.mark_count).await?;
            Ok(client.query_one(&stmt, &[]).await?.get::<_, i64>(0).max(0) as u64)
        })
    }

    fn disk_bytes(&self) -> Result<Option<u64>, StoreError> {
        self.call("disk_bytes", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.disk_bytes).await?;
            let bytes: i64 = client.query_one(&stmt, &[]).await?.get(0);
            Ok(Some(bytes.max(0) as u64))
        })
    }

    fn outbox_put(
        &self,
        events: &[OutboxEvent],
        mark_expires_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<bool>, StoreError> {
        self.put_outbox(events, None, mark_expires_ms, now_ms)
    }

    fn outbox_put_owned(
        &self,
        events: &[OutboxEvent],
        owner: &str,
        lease_until_ms: u64,
        mark_expires_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<bool>, StoreError> {
        self.put_outbox(
            events,
            Some((owner.to_string(), lease_until_ms)),
            mark_expires_ms,
            now_ms,
        )
    }

    fn outbox_claim(
        &self,
        owner: &str,
        lease_until_ms: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let owner = owner.to_string();
        let (until, now) = (to_db(lease_until_ms), to_db(now_ms));
        let limit = to_db(limit as u64);
        self.call("outbox_claim", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.outbox_claim).await?;
            let rows = client.query(&stmt, &[&owner, &until, &now, &limit]).await?;
            let mut entries: Vec<OutboxEntry> = rows.into_iter().map(outbox_entry).collect();
            entries.sort_by(|a, b| {
                (a.enqueued_ms, &a.target, &a.event_id).cmp(&(
                    b.enqueued_ms,
                    &b.target,
                    &b.event_id,
                ))
            });
            Ok(entries)
        })
    }

    fn outbox_renew(&self, owner: &str, lease_until_ms: u64) -> Result<usize, StoreError> {
        let owner = owner.to_string();
        let until = to_db(lease_until_ms);
        self.call("outbox_renew", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.outbox_renew).await?;
            Ok(client.execute(&stmt, &[&owner, &until]).await? as usize)
        })
    }

    fn outbox_list(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let (target, event_id) = after
            .map(|(t, e)| (t.to_string(), e.to_string()))
            .unwrap_or_default();
        let limit = to_db(limit as u64);
        self.call("outbox_list", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.outbox_list).await?;
            let rows = client.query(&stmt, &[&target, &event_id, &limit]).await?;
            Ok(rows.into_iter().map(outbox_entry).collect())
        })
    }

    fn outbox_update(
        &self,
        target: &str,
        event_id: &str,
        retry: OutboxRetry,
    ) -> Result<bool, StoreError> {
        let (target, event_id) = (target.to_string(), event_id.to_string());
        let attempts = retry.attempts.min(i32::MAX as u32) as i32;
        let next = to_db(retry.next_attempt_ms);
        let dead = retry.dead_at_ms.map(to_db);
        self.call("outbox_update", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.outbox_update).await?;
            Ok(client
                .execute(&stmt, &[&target, &event_id, &attempts, &next, &dead])
                .await?
                == 1)
        })
    }

    fn outbox_remove(&self, entries: &[(String, String)]) -> Result<usize, StoreError> {
        let entries = entries.to_vec();
        self.call("outbox_remove", move |pool, sql| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let stmt = tx.prepare_cached(&sql.outbox_remove).await?;
            let mut removed = 0;
            for (target, event_id) in &entries {
                removed += tx.execute(&stmt, &[target, event_id]).await? as usize;
            }
            tx.commit().await?;
            Ok(removed)
        })
    }

    fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if name.as_bytes().contains(&0) {
            return Ok(None);
        }
        let name = name.to_string();
        self.call("get_meta", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.get_meta).await?;
            Ok(client.query_opt(&stmt, &[&name]).await?.map(|r| r.get(0)))
        })
    }

    fn put_meta_if_absent(&self, name: &str, value: &[u8]) -> Result<bool, StoreError> {
        if name.as_bytes().contains(&0) {
            return Err(StoreError::InvalidKey { what: "meta name" });
        }
        let (name, value) = (name.to_string(), value.to_vec());
        self.call("put_meta_if_absent", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.put_meta_if_absent).await?;
            Ok(client.execute(&stmt, &[&name, &value]).await? == 1)
        })
    }

    fn list_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        if prefix.as_bytes().contains(&0) {
            return Ok(Vec::new());
        }
        let prefix = prefix.to_string();
        self.call("list_meta", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.list_meta).await?;
            let rows = client.query(&stmt, &[&prefix]).await?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    /// Every call above committed its own transaction (with `synchronous_commit = on`)
    /// before returning: nothing is pending, so there is nothing to do.
    fn live_instances(&self) -> Result<Option<u32>, StoreError> {
        let name = listen_application_name(&self.shared.schema);
        self.call("live_instances", move |pool, _| async move {
            let client = pool.get().await?;
            let row = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name = $1",
                    &[&name],
                )
                .await?;
            let n: i64 = row.get(0);
            Ok(Some(u32::try_from(n).unwrap_or(u32::MAX)))
        })
    }

    fn watch_grants(&self, hook: super::GrantWatchHook) -> bool {
        let mut config = self.shared.config.clone();
        // Also how the instances are counted (`live_instances`).
        config.application_name(listen_application_name(&self.shared.schema));
        let schema = self.shared.schema.clone();
        let location = self.shared.location.clone();
        let metrics = self.shared.metrics.get().cloned();
        let hook: super::GrantWatchHook = Box::new(move |key| {
            if let (Some(m), Some(_)) = (&metrics, key) {
                m.store_notification();
            }
            hook(key);
        });
        self.shared.runtime.spawn(async move {
            // Logged once per outage (a down server is retried every second), not per try.
            let mut failing = false;
            loop {
                let mut listened = false;
                let result = listen(&config, &schema, &hook, &mut listened).await;
                if listened && failing {
                    tracing::info!(store = %location, "grant notifications heard again");
                    failing = false;
                }
                if !failing {
                    let error = result.err().map(|e| one_line(&e).to_string());
                    tracing::warn!(
                        store = %location,
                        error = error.as_deref().unwrap_or("connection closed"),
                        "grant notifications interrupted; listening again every second (cached tokens forgotten)"
                    );
                    failing = true;
                }
                hook(None);
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        });
        true
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn put_session_held(
        &self,
        session_id: &str,
        value: &[u8],
        holder: &str,
        lease_until_ms: u64,
        open_id: &str,
    ) -> Result<(), StoreError> {
        check_part("session_id", session_id)?;
        check_part("holder", holder)?;
        check_part("open_id", open_id)?;
        let (id, value, holder) = (session_id.to_string(), value.to_vec(), holder.to_string());
        let open_id = open_id.to_string();
        let until = to_db(lease_until_ms);
        self.call("put_session_held", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.put_session_held).await?;
            client
                .execute(&stmt, &[&id, &value, &holder, &until, &open_id])
                .await?;
            Ok(())
        })
    }

    fn put_session_if_held(
        &self,
        session_id: &str,
        value: &[u8],
        holder: &str,
    ) -> Result<bool, StoreError> {
        check_part("session_id", session_id)?;
        check_part("holder", holder)?;
        let (id, value, holder) = (session_id.to_string(), value.to_vec(), holder.to_string());
        self.call("put_session_if_held", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.put_session_if_held).await?;
            Ok(client.execute(&stmt, &[&id, &value, &holder]).await? == 1)
        })
    }

    fn sessions_in_flight(&self, open_id: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        if open_id.as_bytes().contains(&0) {
            return Ok(Vec::new());
        }
        let open_id = open_id.to_string();
        self.call("sessions_in_flight", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.sessions_in_flight).await?;
            let rows = client.query(&stmt, &[&open_id]).await?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn start_session_held(
        &self,
        new: &NewHeldSession<'_>,
        live: SessionLiveCheck,
    ) -> Result<SessionStart, StoreError> {
        check_part("session_id", new.session_id)?;
        check_part("holder", new.holder)?;
        check_part("open_id", new.open_id)?;
        let (id, value) = (new.session_id.to_string(), new.value.to_vec());
        let (holder, open_id) = (new.holder.to_string(), new.open_id.to_string());
        let (until, now) = (to_db(new.lease_until_ms), to_db(new.now_ms));
        let since = to_db(new.now_ms.saturating_sub(new.window_ms));
        let (limit, window_ms, now_ms) = (new.limit, new.window_ms, new.now_ms);
        let key = pg_schema::session_user_lock_key(&self.shared.schema, new.open_id);
        self.call("start_session_held", move |pool, sql| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            // One start per user at a time across instances: the check and the write below
            // see every start committed before (READ COMMITTED: each statement reads the
            // latest commits).
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])
                .await?;
            let stmt = tx.prepare_cached(&sql.sessions_in_flight).await?;
            for row in tx.query(&stmt, &[&open_id]).await? {
                let (other, bytes): (String, Vec<u8>) = (row.get(0), row.get(1));
                if live(&other, &bytes) {
                    tx.commit().await?;
                    return Ok(SessionStart::InFlight(other, bytes));
                }
            }
            let stmt = tx.prepare_cached(&sql.user_starts).await?;
            let starts: Vec<i64> = tx
                .query(&stmt, &[&open_id, &since])
                .await?
                .into_iter()
                .map(|r| r.get(0))
                .collect();
            if starts.len() >= limit {
                let oldest = starts.first().copied().map(from_db).unwrap_or(now_ms);
                tx.commit().await?;
                return Ok(SessionStart::Limited {
                    retry_after_ms: (oldest + window_ms).saturating_sub(now_ms),
                });
            }
            let stmt = tx.prepare_cached(&sql.start_session_held).await?;
            tx.execute(&stmt, &[&id, &value, &holder, &until, &open_id, &now])
                .await?;
            tx.commit().await?;
            Ok(SessionStart::Started)
        })
    }

    fn claim_session(
        &self,
        session_id: &str,
        holder: &str,
        lease_until_ms: u64,
        now_ms: u64,
    ) -> Result<SessionClaim, StoreError> {
        check_part("session_id", session_id)?;
        check_part("holder", holder)?;
        let (id, holder) = (session_id.to_string(), holder.to_string());
        let (until, now) = (to_db(lease_until_ms), to_db(now_ms));
        self.call("claim_session", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.claim_session).await?;
            if client.execute(&stmt, &[&id, &holder, &until, &now]).await? == 1 {
                return Ok(SessionClaim::Claimed);
            }
            let stmt = client.prepare_cached(&sql.session_lease).await?;
            Ok(match client.query_opt(&stmt, &[&id]).await? {
                None => SessionClaim::Missing,
                Some(row) => SessionClaim::Held {
                    holder: row.get::<_, Option<String>>(0).unwrap_or_default(),
                    until_ms: row.get::<_, Option<i64>>(1).map(from_db).unwrap_or(0),
                },
            })
        })
    }

    fn claim_lapsed_sessions(
        &self,
        holder: &str,
        lease_until_ms: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        check_part("holder", holder)?;
        let holder = holder.to_string();
        let (until, now, limit) = (to_db(lease_until_ms), to_db(now_ms), to_db(limit as u64));
        self.call("claim_lapsed_sessions", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.claim_lapsed_sessions).await?;
            let rows = client
                .query(&stmt, &[&holder, &until, &now, &limit])
                .await?;
            let mut out: Vec<(String, Vec<u8>)> =
                rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        })
    }

    fn renew_sessions(&self, holder: &str, lease_until_ms: u64) -> Result<Vec<String>, StoreError> {
        check_part("holder", holder)?;
        let holder = holder.to_string();
        let until = to_db(lease_until_ms);
        self.call("renew_sessions", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.renew_sessions).await?;
            let rows = client.query(&stmt, &[&holder, &until]).await?;
            Ok(rows.into_iter().map(|r| r.get(0)).collect())
        })
    }

    fn release_sessions(
        &self,
        holder: &str,
        session_id: Option<&str>,
        finished: bool,
    ) -> Result<usize, StoreError> {
        check_part("holder", holder)?;
        let holder = holder.to_string();
        let id = session_id.map(str::to_string);
        self.call("release_sessions", move |pool, sql| async move {
            let client = pool.get().await?;
            let n = match id {
                Some(id) => {
                    let stmt = client.prepare_cached(&sql.release_session).await?;
                    client.execute(&stmt, &[&holder, &id, &finished]).await?
                }
                None => {
                    let stmt = client.prepare_cached(&sql.release_sessions).await?;
                    client.execute(&stmt, &[&holder, &finished]).await?
                }
            };
            Ok(n as usize)
        })
    }

    fn put_session_input(
        &self,
        session_id: &str,
        sender: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        check_part("session_id", session_id)?;
        check_part("sender", sender)?;
        let (id, sender, payload) = (session_id.to_string(), sender.to_string(), payload.to_vec());
        let now = to_db(now_ms);
        let schema = self.shared.schema.clone();
        self.call("put_session_input", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.put_session_input).await?;
            let row = client
                .query_one(&stmt, &[&id, &sender, &payload, &now])
                .await?;
            let input: i64 = row.get(0);
            if let Some(holder) = row.get::<_, Option<String>>(1) {
                notify_instance(&client, &schema, &holder).await;
            }
            Ok(Some(from_db(input)))
        })
    }

    fn take_session_inputs(
        &self,
        holder: &str,
        limit: usize,
    ) -> Result<Vec<SessionInput>, StoreError> {
        check_part("holder", holder)?;
        let holder = holder.to_string();
        let limit = to_db(limit as u64);
        self.call("take_session_inputs", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.take_session_inputs).await?;
            let rows = client.query(&stmt, &[&holder, &limit]).await?;
            let mut out: Vec<SessionInput> = rows
                .into_iter()
                .map(|r| SessionInput {
                    id: from_db(r.get(0)),
                    session_id: r.get(1),
                    sender: r.get(2),
                    payload: r.get(3),
                })
                .collect();
            out.sort_by_key(|i| i.id);
            Ok(out)
        })
    }

    fn answer_session_input(&self, id: u64, answer: &[u8]) -> Result<bool, StoreError> {
        let (id, answer) = (to_db(id), answer.to_vec());
        let schema = self.shared.schema.clone();
        self.call("answer_session_input", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.answer_session_input).await?;
            let Some(row) = client.query_opt(&stmt, &[&id, &answer]).await? else {
                return Ok(false);
            };
            let sender: String = row.get(0);
            notify_instance(&client, &schema, &sender).await;
            Ok(true)
        })
    }

    fn take_input_answer(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let id = to_db(id);
        self.call("take_input_answer", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.take_input_answer).await?;
            Ok(client
                .query_opt(&stmt, &[&id])
                .await?
                .and_then(|r| r.get::<_, Option<Vec<u8>>>(0)))
        })
    }

    fn purge_session_inputs(&self, before_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let (before, limit) = (to_db(before_ms), to_db(limit as u64));
        self.call("purge_session_inputs", move |pool, sql| async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(&sql.purge_session_inputs).await?;
            Ok(client.execute(&stmt, &[&before, &limit]).await? as usize)
        })
    }

    fn watch_sessions(&self, instance: &str, hook: super::SessionWatchHook) -> bool {
        let mut config = self.shared.config.clone();
        // Not `listen_application_name`: that one counts the instances.
        config.application_name(format!("lark-auth-sessions {}", self.shared.schema));
        let wanted = format!("{}\u{1f}{instance}", self.shared.schema);
        let location = self.shared.location.clone();
        self.shared.runtime.spawn(async move {
            let mut failing = false;
            loop {
                let mut listened = false;
                let result = listen_sessions(&config, &wanted, &hook, &mut listened).await;
                if listened && failing {
                    tracing::info!(store = %location, "session inbox notifications heard again");
                    failing = false;
                }
                if !failing {
                    let error = result.err().map(|e| one_line(&e).to_string());
                    tracing::warn!(
                        store = %location,
                        error = error.as_deref().unwrap_or("connection closed"),
                        "session inbox notifications interrupted; listening again every second (the inbox is polled meanwhile)"
                    );
                    failing = true;
                }
                hook();
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_is_refused_without_quoting_it() {
        for url in [
            "postgres://lark:hunter2-secret@[::1",
            "host=/tmp password='hunter2-secret",
            "host=/tmp port=hunter2-secret",
            "postgres://lark:hunter2-secret@localhost/db?bogus_option=hunter2-secret",
            "host=/tmp password=hunter2-secret ^",
        ] {
            let err = parse_url(&Secret::new(url.to_string())).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains("hunter2"), "{url}: {text}");
            assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err:?}");
        }
    }

    #[test]
    fn the_location_names_everything_but_the_password() {
        let config = parse_url(&Secret::new(
            "postgres://lark:hunter2-secret@db.example:6543/auth".to_string(),
        ))
        .unwrap();
        let text = describe(&config, "lark_auth");
        assert_eq!(
            text,
            "postgres host=db.example port=6543 dbname=auth user=lark schema=lark_auth"
        );
        let options = PostgresOptions::new(
            Secret::new("postgres://lark:hunter2-secret@db/auth".to_string()),
            "lark_auth",
        );
        assert!(!format!("{options:?}").contains("hunter2"));
    }

    #[test]
    fn instants_beyond_i64_are_clamped_not_wrapped() {
        assert_eq!(to_db(u64::MAX), i64::MAX);
        assert_eq!(from_db(to_db(1_700_000_000_000)), 1_700_000_000_000);
        assert_eq!(from_db(-5), 0);
    }
}
