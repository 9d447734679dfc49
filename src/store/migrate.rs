//! Copying one store into another (`lark-auth migrate-store --from-sled PATH`: a sled
//! vault into PostgreSQL when a deployment grows to several instances).
//!
//! Records are copied as stored: grants and sessions stay sealed with the vault key, so
//! the target needs the same key (the caller checks it on both sides). Idempotent: a
//! record the target already holds is left as it is and counted as present, so a copy
//! interrupted half-way is finished by running it again, and a target that has been
//! serving since is never overwritten with older data.
//!
//! What is copied: the key checks (metadata), every grant of the app (with its refresh
//! due instant; versions restart at 1 in the target), every session record, and every
//! outbox entry of the event gateway (pending and dead, with their arrival instant, try
//! count and next try, and their dedup mark). Not copied: quarantined records (listed for
//! the operator) and the dedup marks of events and clicks (a redelivery of an event
//! handled just before the switch may be handled again).

use std::collections::BTreeMap;

use super::{CasOutcome, GrantWrite, OutboxEvent, OutboxRetry, Store, StoreError};

/// Grants read per page.
const PAGE: usize = 500;

/// An outbox event gathered from the source: the event with all its targets, its arrival
/// (unix ms), and each target's retry state.
type HeldEvent = (OutboxEvent, u64, Vec<(String, OutboxRetry)>);

/// What a copy did, per kind of record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    /// Grants written to the target.
    pub grants_copied: u64,
    /// Grants the target already held (left as they are).
    pub grants_present: u64,
    /// Session records written to the target.
    pub sessions_copied: u64,
    /// Session records the target already held.
    pub sessions_present: u64,
    /// Metadata records (key checks) written to the target.
    pub meta_copied: u64,
    /// Outbox entries written to the target.
    pub outbox_copied: u64,
    /// Outbox entries whose event the target already held.
    pub outbox_present: u64,
    /// Quarantined records in the source, not copied.
    pub quarantined_skipped: u64,
    /// Grant records of the source that could not be read (damaged framing), not copied.
    pub grants_unreadable: u64,
}

/// Copies `from` into `to` for the app `app_id` (see the module docs), then flushes
/// `to`. `dedup_ttl_ms` is the lifetime given to the copied outbox entries' dedup marks
/// (from their arrival), milliseconds.
///
/// # Errors
/// The first [`StoreError`] of either store; what was copied before stays copied (run
/// again to finish).
pub fn copy_store(
    from: &dyn Store,
    to: &dyn Store,
    app_id: &str,
    dedup_ttl_ms: u64,
) -> Result<CopyReport, StoreError> {
    let mut report = CopyReport::default();
    for (name, value) in from.list_meta("")? {
        if to.put_meta_if_absent(&name, &value)? {
            report.meta_copied += 1;
        }
    }
    let mut after: Option<String> = None;
    loop {
        let page = from.list_grants(app_id, after.as_deref(), PAGE)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.open_id.clone());
        let full = page.len() == PAGE;
        for (key, grant) in page {
            let Ok(grant) = grant else {
                report.grants_unreadable += 1;
                continue;
            };
            let write = GrantWrite {
                payload: grant.payload,
                due_ms: grant.due_ms,
            };
            match to.compare_and_swap_grant(&key, None, Some(write))? {
                CasOutcome::Swapped { .. } => report.grants_copied += 1,
                CasOutcome::Conflict { .. } => report.grants_present += 1,
            }
        }
        if !full {
            break;
        }
    }
    for (session_id, value) in from.list_sessions()? {
        if to.get_session(&session_id)?.is_some() {
            report.sessions_present += 1;
        } else {
            to.put_session(&session_id, &value)?;
            report.sessions_copied += 1;
        }
    }
    // Gathered by event first: the target's dedup mark is set by the first put of an
    // event, so all of an event's targets go in one put. (Bounded by the source's
    // `events.outbox_capacity`.)
    let mut events: BTreeMap<String, HeldEvent> = BTreeMap::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let page = from.outbox_list(after.as_ref().map(|(t, e)| (t.as_str(), e.as_str())), PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some((last.target.clone(), last.event_id.clone()));
        let full = page.len() == PAGE;
        for entry in page {
            let retry = OutboxRetry {
                attempts: entry.attempts,
                next_attempt_ms: entry.next_attempt_ms,
                dead_at_ms: entry.dead_at_ms,
            };
            let (event, _, targets) = events.entry(entry.event_id.clone()).or_insert_with(|| {
                (
                    OutboxEvent {
                        event_id: entry.event_id,
                        event_type: entry.event_type,
                        targets: Vec::new(),
                        payload: entry.payload,
                    },
                    entry.enqueued_ms,
                    Vec::new(),
                )
            });
            event.targets.push(entry.target.clone());
            targets.push((entry.target, retry));
        }
        if !full {
            break;
        }
    }
    for (_, (event, enqueued_ms, targets)) in events {
        let stored = to.outbox_put(
            std::slice::from_ref(&event),
            enqueued_ms.saturating_add(dedup_ttl_ms),
            enqueued_ms,
        )?;
        if stored.first() == Some(&true) {
            for (target, retry) in targets {
                to.outbox_update(&target, &event.event_id, retry)?;
                report.outbox_copied += 1;
            }
        } else {
            report.outbox_present += targets.len() as u64;
        }
    }
    report.quarantined_skipped = from.quarantined()?.len() as u64;
    to.flush()?;
    Ok(report)
}
