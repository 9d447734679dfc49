//! The PostgreSQL store's schema: its tables, their versioned migrations, and the SQL of
//! every [`Store`](super::Store) method with the schema name put in.
//!
//! Every table lives in one schema named by `[store] schema` (an identifier checked by
//! [`check_schema_name`], so it can be written into SQL). The schema records its version
//! in `schema_version` (one row per applied migration). [`migrate`] brings it up to
//! [`SCHEMA_VERSION`], one migration per transaction, each under a transaction-scoped
//! advisory lock keyed by the schema name, so several instances starting at once apply each
//! migration once and the others wait, then find it done. A schema whose version is above
//! [`SCHEMA_VERSION`] (migrated by a newer lark-auth) is refused with
//! [`StoreError::SchemaTooNew`], before anything is written.
//!
//! Nothing is created when the schema is already current, so the role lark-auth runs
//! under needs `CREATE` on the database only for the first start (or an upgrade): an
//! operator may create and migrate the schema with an owner role and run with a role that
//! only reads and writes rows.
//!
//! Text keys use the `"C"` collation, so their order is byte order, as in sled.
//! Instants and versions are `bigint`: a `u64` above `i64::MAX` (never a real instant) is
//! stored as `i64::MAX`.

use super::StoreError;

/// The newest schema version this build knows and creates.
pub const SCHEMA_VERSION: i32 = 6;

/// The longest schema name accepted (PostgreSQL's identifier limit, 63 bytes).
pub const MAX_SCHEMA_NAME: usize = 63;

/// Checks a schema name: 1 to 63 bytes of `a-z`, `0-9` and `_`, not starting with a digit,
/// and not starting with `pg_` (reserved by PostgreSQL).
///
/// # Errors
/// What is wrong, as one phrase for a config error (the name itself is not repeated).
pub fn check_schema_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_SCHEMA_NAME {
        return Err("must be 1 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err("may contain only lowercase letters a-z, digits and `_`");
    }
    if name.as_bytes()[0].is_ascii_digit() {
        return Err("must not start with a digit");
    }
    if name.starts_with("pg_") {
        return Err("must not start with `pg_` (reserved by PostgreSQL)");
    }
    Ok(())
}

/// One migration: the version it brings the schema to and its DDL (`{s}` is the schema).
struct Migration {
    version: i32,
    description: &'static str,
    sql: &'static str,
}

/// Every migration, in order; the last one's version is [`SCHEMA_VERSION`].
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "grants, refresh-due index, quarantine, sessions, dedup marks, metadata",
        sql: r#"
CREATE TABLE {s}.grants (
    app_id  text COLLATE "C" NOT NULL,
    open_id text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    due_ms  bigint,
    payload bytea NOT NULL,
    PRIMARY KEY (app_id, open_id)
);
CREATE INDEX grants_due ON {s}.grants (due_ms, app_id, open_id) WHERE due_ms IS NOT NULL;
CREATE TABLE {s}.quarantine (
    app_id  text COLLATE "C" NOT NULL,
    open_id text COLLATE "C" NOT NULL,
    at_ms   bigint NOT NULL,
    reason  text NOT NULL,
    raw     bytea NOT NULL,
    PRIMARY KEY (app_id, open_id, at_ms)
);
CREATE TABLE {s}.sessions (
    session_id text COLLATE "C" PRIMARY KEY,
    value      bytea NOT NULL
);
CREATE TABLE {s}.marks (
    mark       bytea PRIMARY KEY,
    expires_ms bigint NOT NULL,
    value      bytea
);
CREATE INDEX marks_expiry ON {s}.marks (expires_ms);
CREATE TABLE {s}.meta (
    name  text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
"#,
    },
    Migration {
        version: 2,
        description: "event gateway outbox",
        sql: r#"
CREATE TABLE {s}.outbox (
    target          text COLLATE "C" NOT NULL,
    event_id        text COLLATE "C" NOT NULL,
    event_type      text NOT NULL,
    payload         bytea NOT NULL,
    enqueued_ms     bigint NOT NULL,
    attempts        integer NOT NULL,
    next_attempt_ms bigint NOT NULL,
    dead_at_ms      bigint,
    PRIMARY KEY (target, event_id)
);
"#,
    },
    Migration {
        version: 3,
        description: "dedup marks under fixed-size keys (old marks dropped)",
        // Marks are dedup state only: the old ones (keyed by the mark's bytes) are dropped,
        // so an event or click seen before the upgrade and redelivered after it is handled
        // again once. Grants, sessions, metadata and the outbox are not touched.
        sql: r#"
DROP TABLE {s}.marks;
CREATE TABLE {s}.marks (
    mark       bytea PRIMARY KEY CHECK (octet_length(mark) = 16),
    expires_ms bigint NOT NULL,
    value      bytea
);
CREATE INDEX marks_expiry ON {s}.marks (expires_ms);
"#,
    },
    Migration {
        version: 4,
        description: "outbox entries owned by one instance under a lease",
        // Entries stored before have no owner: the first instance to claim takes them.
        sql: r#"
ALTER TABLE {s}.outbox ADD COLUMN owner text COLLATE "C", ADD COLUMN lease_until_ms bigint;
"#,
    },
    Migration {
        version: 5,
        description: "sessions held by one instance under a lease; the session inbox",
        // `lease_until_ms`: 0 for sessions stored before (any instance may take them over,
        // and drops the finished ones), NULL for a session released as finished. `open_id`:
        // the session's user, set by a held write (finds a user's session in flight). Inputs
        // (clicks, redirects) received by an instance that does not hold their session
        // wait in `session_inputs` for the holder, which answers there.
        sql: r#"
ALTER TABLE {s}.sessions ADD COLUMN holder text COLLATE "C",
    ADD COLUMN lease_until_ms bigint DEFAULT 0, ADD COLUMN open_id text COLLATE "C";
CREATE INDEX sessions_lease ON {s}.sessions (lease_until_ms) WHERE lease_until_ms IS NOT NULL;
CREATE INDEX sessions_user ON {s}.sessions (open_id) WHERE lease_until_ms IS NOT NULL;
CREATE INDEX sessions_holder ON {s}.sessions (holder) WHERE holder IS NOT NULL;
CREATE TABLE {s}.session_inputs (
    id         bigserial PRIMARY KEY,
    session_id text COLLATE "C" NOT NULL,
    sender     text COLLATE "C" NOT NULL,
    payload    bytea NOT NULL,
    created_ms bigint NOT NULL,
    taken_by   text COLLATE "C",
    answer     bytea
);
CREATE INDEX session_inputs_open ON {s}.session_inputs (session_id) WHERE taken_by IS NULL;
"#,
    },
    Migration {
        version: 6,
        description: "sessions' creation time, for the per-user limit across instances",
        // `created_ms`: set when a session is started on a shared store (NULL for sessions
        // stored before: they are not counted). The per-user limit counts a user's sessions
        // created within the window by this index.
        sql: r#"
ALTER TABLE {s}.sessions ADD COLUMN created_ms bigint;
CREATE INDEX sessions_user_created ON {s}.sessions (open_id, created_ms)
    WHERE created_ms IS NOT NULL;
"#,
    },
];

/// The advisory lock key of a schema's migrations: FNV-1a of `lark-auth schema <name>`,
/// stable across builds.
fn lock_key(schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "lark-auth schema ".bytes().chain(schema.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

/// The advisory lock key of one user's session starts in `schema`: FNV-1a of
/// `lark-auth session <schema> <open_id>`, stable across builds. Held for the transaction
/// of [`Store::start_session_held`](super::Store::start_session_held), so two instances
/// starting a session for one user take turns (a collision of two users only makes them
/// take turns too).
pub(super) fn session_user_lock_key(schema: &str, open_id: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "lark-auth session "
        .bytes()
        .chain(schema.bytes())
        .chain(std::iter::once(b' '))
        .chain(open_id.bytes())
    {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

/// Why a migration step failed.
pub(super) enum MigrateError {
    /// The schema is newer than this build.
    TooNew(i32),
    /// The database refused (privileges, connection lost …).
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Db(e)
    }
}

/// Brings `schema` to [`SCHEMA_VERSION`], one migration per transaction under the schema's
/// advisory lock; returns the version found before (0: new schema).
pub(super) async fn migrate(
    client: &mut tokio_postgres::Client,
    schema: &str,
) -> Result<i32, MigrateError> {
    let key = lock_key(schema);
    let mut found = None;
    loop {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])
            .await?;
        let exists = tx
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
            .await?
            .is_some();
        if !exists {
            tx.batch_execute(&format!("CREATE SCHEMA {schema}")).await?;
        }
        let versioned = tx
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{schema}.schema_version")],
            )
            .await?
            .get::<_, bool>(0);
        if !versioned {
            tx.batch_execute(&format!(
                "CREATE TABLE {schema}.schema_version (
                    version     integer PRIMARY KEY,
                    applied_at  timestamptz NOT NULL DEFAULT now(),
                    description text NOT NULL
                )"
            ))
            .await?;
        }
        let current: i32 = tx
            .query_one(
                &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_version"),
                &[],
            )
            .await?
            .get(0);
        found.get_or_insert(current);
        if current > SCHEMA_VERSION {
            return Err(MigrateError::TooNew(current));
        }
        let Some(next) = MIGRATIONS.iter().find(|m| m.version == current + 1) else {
            // Current. Committing only releases the lock (and keeps a schema created above).
            tx.commit().await?;
            return Ok(found.unwrap_or(current));
        };
        tx.batch_execute(&next.sql.replace("{s}", schema)).await?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_version (version, description) VALUES ($1, $2)"),
            &[&next.version, &next.description],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(schema, version = next.version, "store schema migrated");
    }
}

/// Reads the schema's version without changing anything (0: no schema or no version table).
pub(super) async fn read_version(
    client: &tokio_postgres::Client,
    schema: &str,
) -> Result<i32, tokio_postgres::Error> {
    let versioned = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{schema}.schema_version")],
        )
        .await?
        .get::<_, bool>(0);
    if !versioned {
        return Ok(0);
    }
    Ok(client
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_version"),
            &[],
        )
        .await?
        .get(0))
}

/// The SQL of the store's operations, with the schema name written in.
#[derive(Debug)]
pub(super) struct Sql {
    pub get_grant: String,
    pub grant_version: String,
    pub insert_grant: String,
    pub update_grant: String,
    pub delete_grant: String,
    pub list_grants: String,
    pub due_grants: String,
    pub quarantine_grant: String,
    pub quarantined: String,
    pub put_session: String,
    pub get_session: String,
    pub delete_session: String,
    pub list_sessions: String,
    pub mark_once: String,
    pub mark_value: String,
    pub set_mark_value: String,
    pub purge_marks: String,
    pub mark_count: String,
    pub trim_marks: String,
    pub disk_bytes: String,
    pub get_meta: String,
    pub put_meta_if_absent: String,
    pub list_meta: String,
    pub outbox_insert: String,
    pub outbox_insert_owned: String,
    pub outbox_claim: String,
    pub outbox_renew: String,
    pub outbox_list: String,
    pub outbox_update: String,
    pub outbox_remove: String,
    pub put_session_held: String,
    pub claim_session: String,
    pub session_lease: String,
    pub claim_lapsed_sessions: String,
    pub renew_sessions: String,
    pub release_session: String,
    pub release_sessions: String,
    pub put_session_input: String,
    pub take_session_inputs: String,
    pub answer_session_input: String,
    pub take_input_answer: String,
    pub purge_session_inputs: String,
    pub sessions_in_flight: String,
    pub put_session_if_held: String,
    pub start_session_held: String,
    pub user_starts: String,
}

impl Sql {
    /// The statements for `schema` (already checked by [`check_schema_name`]).
    pub(super) fn for_schema(schema: &str) -> Result<Sql, StoreError> {
        check_schema_name(schema).map_err(|reason| StoreError::InvalidSchemaName { reason })?;
        let s = schema;
        Ok(Sql {
            get_grant: format!(
                "SELECT version, due_ms, payload FROM {s}.grants WHERE app_id = $1 AND open_id = $2"
            ),
            grant_version: format!(
                "SELECT version FROM {s}.grants WHERE app_id = $1 AND open_id = $2"
            ),
            insert_grant: format!(
                "INSERT INTO {s}.grants (app_id, open_id, version, due_ms, payload) \
                 VALUES ($1, $2, 1, $3, $4) ON CONFLICT DO NOTHING"
            ),
            update_grant: format!(
                "UPDATE {s}.grants SET version = version + 1, due_ms = $4, payload = $5 \
                 WHERE app_id = $1 AND open_id = $2 AND version = $3 RETURNING version"
            ),
            delete_grant: format!(
                "DELETE FROM {s}.grants WHERE app_id = $1 AND open_id = $2 AND version = $3"
            ),
            list_grants: format!(
                "SELECT open_id, version, due_ms, payload FROM {s}.grants \
                 WHERE app_id = $1 AND open_id > $2 ORDER BY open_id LIMIT $3"
            ),
            due_grants: format!(
                "SELECT due_ms, app_id, open_id FROM {s}.grants \
                 WHERE due_ms IS NOT NULL AND due_ms <= $1 \
                 ORDER BY due_ms, app_id, open_id LIMIT $2"
            ),
            quarantine_grant: format!(
                "WITH moved AS (DELETE FROM {s}.grants WHERE app_id = $1 AND open_id = $2 \
                 RETURNING app_id, open_id, payload) \
                 INSERT INTO {s}.quarantine (app_id, open_id, at_ms, reason, raw) \
                 SELECT app_id, open_id, $3, $4, payload FROM moved \
                 ON CONFLICT (app_id, open_id, at_ms) \
                 DO UPDATE SET reason = EXCLUDED.reason, raw = EXCLUDED.raw"
            ),
            quarantined: format!(
                "SELECT app_id, open_id, at_ms, reason, raw FROM {s}.quarantine \
                 ORDER BY app_id, open_id, at_ms"
            ),
            put_session: format!(
                "INSERT INTO {s}.sessions (session_id, value) VALUES ($1, $2) \
                 ON CONFLICT (session_id) DO UPDATE SET value = EXCLUDED.value"
            ),
            get_session: format!("SELECT value FROM {s}.sessions WHERE session_id = $1"),
            delete_session: format!("DELETE FROM {s}.sessions WHERE session_id = $1"),
            list_sessions: format!(
                "SELECT session_id, value FROM {s}.sessions ORDER BY session_id"
            ),
            // A new mark, or one whose expiry passed (it starts afresh, without value).
            mark_once: format!(
                "INSERT INTO {s}.marks (mark, expires_ms, value) VALUES ($1, $2, NULL) \
                 ON CONFLICT (mark) DO UPDATE SET expires_ms = EXCLUDED.expires_ms, value = NULL \
                 WHERE {s}.marks.expires_ms <= $3"
            ),
            mark_value: format!("SELECT value FROM {s}.marks WHERE mark = $1 AND expires_ms > $2"),
            set_mark_value: format!(
                "UPDATE {s}.marks SET value = $2 WHERE mark = $1 AND expires_ms > $3"
            ),
            purge_marks: format!(
                "DELETE FROM {s}.marks WHERE mark IN (SELECT mark FROM {s}.marks \
                 WHERE expires_ms <= $1 ORDER BY expires_ms LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
            mark_count: format!("SELECT count(*) FROM {s}.marks"),
            // The `$1` oldest marks, then the rest of the last one's bucket (`$3` ms wide),
            // at most `$2`.
            trim_marks: format!(
                "WITH bound AS (SELECT max(expires_ms) AS e FROM (SELECT expires_ms \
                 FROM {s}.marks ORDER BY expires_ms LIMIT $1) oldest) \
                 DELETE FROM {s}.marks WHERE mark IN (SELECT mark FROM {s}.marks \
                 WHERE expires_ms < (SELECT (e / $3 + 1) * $3 FROM bound) \
                 ORDER BY expires_ms LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
            // The schema name is a checked identifier: safe as a literal.
            disk_bytes: format!(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = '{s}' AND c.relkind = 'r'"
            ),
            get_meta: format!("SELECT value FROM {s}.meta WHERE name = $1"),
            put_meta_if_absent: format!(
                "INSERT INTO {s}.meta (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            ),
            list_meta: format!(
                "SELECT name, value FROM {s}.meta WHERE starts_with(name, $1) ORDER BY name"
            ),
            outbox_insert: format!(
                "INSERT INTO {s}.outbox (target, event_id, event_type, payload, enqueued_ms, \
                 attempts, next_attempt_ms, dead_at_ms) VALUES ($1, $2, $3, $4, $5, 0, $5, NULL) \
                 ON CONFLICT (target, event_id) DO NOTHING"
            ),
            outbox_insert_owned: format!(
                "INSERT INTO {s}.outbox (target, event_id, event_type, payload, enqueued_ms, \
                 attempts, next_attempt_ms, dead_at_ms, owner, lease_until_ms) \
                 VALUES ($1, $2, $3, $4, $5, 0, $5, NULL, $6, $7) \
                 ON CONFLICT (target, event_id) DO NOTHING"
            ),
            // Entries without owner or whose owner's lease lapsed, oldest first; rows
            // another transaction is claiming are skipped, so two instances never take
            // the same one.
            outbox_claim: format!(
                "UPDATE {s}.outbox SET owner = $1, lease_until_ms = $2 \
                 WHERE (target, event_id) IN (SELECT target, event_id FROM {s}.outbox \
                 WHERE owner IS NULL OR (owner <> $1 AND lease_until_ms < $3) \
                 ORDER BY enqueued_ms, target, event_id LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 RETURNING target, event_id, event_type, payload, enqueued_ms, attempts, \
                 next_attempt_ms, dead_at_ms"
            ),
            outbox_renew: format!("UPDATE {s}.outbox SET lease_until_ms = $2 WHERE owner = $1"),
            outbox_list: format!(
                "SELECT target, event_id, event_type, payload, enqueued_ms, attempts, \
                 next_attempt_ms, dead_at_ms FROM {s}.outbox WHERE (target, event_id) > ($1, $2) \
                 ORDER BY target, event_id LIMIT $3"
            ),
            outbox_update: format!(
                "UPDATE {s}.outbox SET attempts = $3, next_attempt_ms = $4, dead_at_ms = $5 \
                 WHERE target = $1 AND event_id = $2"
            ),
            outbox_remove: format!("DELETE FROM {s}.outbox WHERE target = $1 AND event_id = $2"),
            put_session_held: format!(
                "INSERT INTO {s}.sessions (session_id, value, holder, lease_until_ms, open_id) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id) DO UPDATE \
                 SET value = EXCLUDED.value, holder = EXCLUDED.holder, \
                 lease_until_ms = EXCLUDED.lease_until_ms, open_id = EXCLUDED.open_id"
            ),
            // Compare-and-swap: free, lapsed, or already ours.
            claim_session: format!(
                "UPDATE {s}.sessions SET holder = $2, lease_until_ms = $3 WHERE session_id = $1 \
                 AND (holder IS NULL OR holder = $2 OR lease_until_ms IS NULL \
                 OR lease_until_ms < $4)"
            ),
            session_lease: format!(
                "SELECT holder, lease_until_ms FROM {s}.sessions WHERE session_id = $1"
            ),
            // Sessions to carry on (not released as finished) whose lease lapsed; rows
            // another instance is claiming are skipped.
            claim_lapsed_sessions: format!(
                "UPDATE {s}.sessions SET holder = $1, lease_until_ms = $2 \
                 WHERE session_id IN (SELECT session_id FROM {s}.sessions \
                 WHERE lease_until_ms IS NOT NULL AND lease_until_ms < $3 \
                 ORDER BY lease_until_ms LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 RETURNING session_id, value"
            ),
            renew_sessions: format!(
                "UPDATE {s}.sessions SET lease_until_ms = $2 \
                 WHERE holder = $1 AND lease_until_ms IS NOT NULL RETURNING session_id"
            ),
            // $3: finished (NULL: nobody carries it on) or handed back (0: lapsed now).
            release_session: format!(
                "UPDATE {s}.sessions SET lease_until_ms = CASE WHEN $3 THEN NULL ELSE 0 END \
                 WHERE session_id = $2 AND holder = $1"
            ),
            release_sessions: format!(
                "UPDATE {s}.sessions SET lease_until_ms = CASE WHEN $2 THEN NULL ELSE 0 END \
                 WHERE holder = $1 AND lease_until_ms IS NOT NULL"
            ),
            put_session_input: format!(
                "INSERT INTO {s}.session_inputs (session_id, sender, payload, created_ms) \
                 VALUES ($1, $2, $3, $4) RETURNING id, \
                 (SELECT holder FROM {s}.sessions WHERE session_id = $1)"
            ),
            take_session_inputs: format!(
                "UPDATE {s}.session_inputs SET taken_by = $1 WHERE id IN (SELECT i.id \
                 FROM {s}.session_inputs i JOIN {s}.sessions s ON s.session_id = i.session_id \
                 WHERE (i.taken_by IS NULL OR i.taken_by <> $1) AND i.answer IS NULL \
                 AND s.holder = $1 ORDER BY i.id LIMIT $2 \
                 FOR UPDATE OF i SKIP LOCKED) RETURNING id, session_id, sender, payload"
            ),
            answer_session_input: format!(
                "UPDATE {s}.session_inputs SET answer = $2 WHERE id = $1 RETURNING sender"
            ),
            take_input_answer: format!(
                "DELETE FROM {s}.session_inputs WHERE id = $1 AND answer IS NOT NULL \
                 RETURNING answer"
            ),
            put_session_if_held: format!(
                "UPDATE {s}.sessions SET value = $2 WHERE session_id = $1 AND holder = $3"
            ),
            sessions_in_flight: format!(
                "SELECT session_id, value FROM {s}.sessions \
                 WHERE open_id = $1 AND lease_until_ms IS NOT NULL ORDER BY session_id"
            ),
            start_session_held: format!(
                "INSERT INTO {s}.sessions (session_id, value, holder, lease_until_ms, open_id, \
                 created_ms) VALUES ($1, $2, $3, $4, $5, $6)"
            ),
            // The user's sessions created after `$2` (within the window), oldest first.
            user_starts: format!(
                "SELECT created_ms FROM {s}.sessions WHERE open_id = $1 AND created_ms > $2 \
                 ORDER BY created_ms"
            ),
            purge_session_inputs: format!(
                "DELETE FROM {s}.session_inputs WHERE id IN (SELECT id FROM {s}.session_inputs \
                 WHERE created_ms < $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["lark_auth", "a", "_x1", &"a".repeat(63)] {
            assert_eq!(check_schema_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Lark",
            "lark-auth",
            "1abc",
            "pg_lark",
            "a b",
            "x;drop",
            "lark\"",
            &"a".repeat(64),
        ] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn migrations_are_numbered_one_by_one_up_to_the_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
        assert_ne!(lock_key("a"), lock_key("b"));
        assert_ne!(
            session_user_lock_key("a", "ou_1"),
            session_user_lock_key("b", "ou_1")
        );
        assert_ne!(
            session_user_lock_key("a", "ou_1"),
            session_user_lock_key("a", "ou_2")
        );
    }
}
