//! The RouterActor's bookkeeping as a plain value: the per-user limit of new
//! authorizations, the session in flight per user, the cache of click answers and the
//! OAuth `state` table. No actix, no I/O, no clock: every method that depends on the time
//! takes `now_ms` (unix epoch milliseconds), so the rules are tested alone (see the tests
//! at the bottom) and the actor only moves messages.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use crate::protocol::event::CardActionResponse;

/// How many new authorizations one user may start within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerUserLimit {
    /// New sessions allowed per user within [`window`](Self::window).
    pub limit: usize,
    /// The sliding window the starts are counted in.
    pub window: Duration,
}

/// What the router keeps per user (one entry, so a pending session costs one key).
#[derive(Debug, Default)]
struct UserEntry {
    /// The session in flight.
    in_flight: Option<Rc<str>>,
    /// Start times (unix ms) within the per-user window, oldest first.
    starts: VecDeque<u64>,
}

/// Where an OAuth `state` leads ([`RouterState::lookup_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLookup<'a> {
    /// Issued to this session and not used yet.
    Pending(&'a str),
    /// Already used by a redirect (accepted once).
    Used,
    /// Never issued, or forgotten (session pruned).
    Unknown,
}

/// The router's pure state; see the module docs.
#[derive(Debug)]
pub struct RouterState {
    per_user: PerUserLimit,
    /// Per user: the session in flight and the recent starts.
    users: HashMap<Box<str>, UserEntry>,
    /// OAuth `state` → session id, for code-flow sessions waiting for their redirect.
    oauth_states: HashMap<String, String>,
    /// OAuth `state`s already used → session id (kept until that session is not running).
    used_states: HashMap<String, String>,
    /// Click answers by `event_id`, at most `answers_kept`, oldest evicted first.
    answers: HashMap<String, CardActionResponse>,
    answer_order: VecDeque<String>,
    answers_kept: usize,
}

impl RouterState {
    /// Empty state with the per-user limit and room for `answers_kept` click answers.
    pub fn new(per_user: PerUserLimit, answers_kept: usize) -> RouterState {
        RouterState {
            per_user,
            users: HashMap::new(),
            oauth_states: HashMap::new(),
            used_states: HashMap::new(),
            answers: HashMap::new(),
            answer_order: VecDeque::new(),
            answers_kept,
        }
    }

    /// The session in flight for `open_id`, if any.
    pub fn in_flight(&self, open_id: &str) -> Option<&str> {
        self.users.get(open_id).and_then(|u| u.in_flight.as_deref())
    }

    /// Counts a new authorization of `open_id` at `now_ms` against the per-user limit.
    ///
    /// # Errors
    /// The user already started [`PerUserLimit::limit`] sessions within the window: how
    /// long until the oldest of them leaves it (nothing is counted then).
    pub fn admit(&mut self, open_id: &str, now_ms: u64) -> Result<(), Duration> {
        let window = self.per_user.window.as_millis() as u64;
        let starts = &mut self.users.entry(Box::from(open_id)).or_default().starts;
        while starts.front().is_some_and(|t| t + window <= now_ms) {
            starts.pop_front();
        }
        if starts.len() >= self.per_user.limit {
            let oldest = starts.front().copied().unwrap_or(now_ms);
            return Err(Duration::from_millis(
                (oldest + window).saturating_sub(now_ms),
            ));
        }
        starts.push_back(now_ms);
        Ok(())
    }

    /// A session of `open_id` is running (new, resumed or reloaded): it is the user's
    /// session in flight, and its OAuth `state` (code flow) leads to it.
    pub fn session_running(
        &mut self,
        open_id: &str,
        session_id: Rc<str>,
        oauth_state: Option<&str>,
    ) {
        if let Some(state) = oauth_state {
            self.oauth_states
                .insert(state.to_string(), session_id.to_string());
        }
        self.users.entry(Box::from(open_id)).or_default().in_flight = Some(session_id);
    }

    /// The session ended: it is no longer in flight and its unused `state` leads nowhere.
    pub fn session_finished(&mut self, open_id: &str, session_id: &str) {
        if let Some(user) = self.users.get_mut(open_id)
            && user.in_flight.as_deref() == Some(session_id)
        {
            user.in_flight = None;
        }
        self.oauth_states.retain(|_, id| id != session_id);
    }

    /// Every session stopped (the router stops): none is in flight any more.
    pub fn all_stopped(&mut self) {
        for user in self.users.values_mut() {
            user.in_flight = None;
        }
    }

    /// Where the OAuth `state` leads.
    pub fn lookup_state(&self, state: &str) -> StateLookup<'_> {
        match self.oauth_states.get(state) {
            Some(id) => StateLookup::Pending(id),
            None if self.used_states.contains_key(state) => StateLookup::Used,
            None => StateLookup::Unknown,
        }
    }

    /// Uses the OAuth `state` (one redirect per state): returns its session id; the next
    /// lookup finds it [`StateLookup::Used`]. `None` when it was not pending.
    pub fn use_state(&mut self, state: &str) -> Option<String> {
        let session_id = self.oauth_states.remove(state)?;
        self.used_states
            .insert(state.to_string(), session_id.clone());
        Some(session_id)
    }

    /// The answer given to the click `event_id`, if still kept.
    pub fn answer(&self, event_id: &str) -> Option<&CardActionResponse> {
        self.answers.get(event_id)
    }

    /// Keeps the answer to the click `event_id` for its redeliveries (the oldest answers
    /// go when more than the capacity are kept).
    pub fn remember_answer(&mut self, event_id: String, answer: CardActionResponse) {
        if self.answers.insert(event_id.clone(), answer).is_none() {
            self.answer_order.push_back(event_id);
        }
        while self.answer_order.len() > self.answers_kept {
            if let Some(old) = self.answer_order.pop_front() {
                self.answers.remove(&old);
            }
        }
    }

    /// Forgets, at `now_ms`, users with no session in flight and no start within the
    /// window, and used `state`s whose session is not running (`is_running`).
    pub fn prune(&mut self, now_ms: u64, is_running: impl Fn(&str) -> bool) {
        let window = self.per_user.window.as_millis() as u64;
        self.users.retain(|_, u| {
            u.in_flight.is_some() || u.starts.back().is_some_and(|t| t + window > now_ms)
        });
        self.used_states.retain(|_, id| is_running(id));
    }

    /// Users with an entry (in flight or recent starts), for tests and metrics.
    pub fn users_tracked(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::event::{Toast, ToastKind};

    const MIN: u64 = 60_000;

    fn state(limit: usize) -> RouterState {
        RouterState::new(
            PerUserLimit {
                limit,
                window: Duration::from_secs(60),
            },
            2,
        )
    }

    fn answer(text: &str) -> CardActionResponse {
        CardActionResponse {
            toast: Some(Toast::new(ToastKind::Info, text)),
            card: None,
        }
    }

    #[test]
    fn the_per_user_limit_slides_with_the_window() {
        let mut s = state(2);
        assert_eq!(s.admit("ou_a", 1_000), Ok(()));
        assert_eq!(s.admit("ou_a", 21_000), Ok(()));
        // The oldest start leaves the window at 61 s.
        assert_eq!(s.admit("ou_a", 31_000), Err(Duration::from_secs(30)));
        assert_eq!(
            s.admit("ou_b", 31_000),
            Ok(()),
            "another user has own count"
        );
        // A refused request is not counted.
        assert_eq!(s.admit("ou_a", 60_999), Err(Duration::from_millis(1)));
        assert_eq!(s.admit("ou_a", 61_000), Ok(()));
        assert_eq!(s.admit("ou_a", 61_000), Err(Duration::from_secs(20)));
        assert_eq!(s.admit("ou_a", 1_000 + 3 * MIN), Ok(()));
    }

    #[test]
    fn a_limit_of_zero_refuses_every_start() {
        let mut s = state(0);
        assert_eq!(s.admit("ou_a", 5), Err(Duration::from_secs(60)));
    }

    #[test]
    fn the_session_in_flight_is_cleared_only_by_its_own_end() {
        let mut s = state(5);
        s.session_running("ou_a", Rc::from("as_1"), None);
        assert_eq!(s.in_flight("ou_a"), Some("as_1"));
        s.session_running("ou_a", Rc::from("as_2"), None);
        s.session_finished("ou_a", "as_1");
        assert_eq!(s.in_flight("ou_a"), Some("as_2"), "an older session ending");
        s.session_finished("ou_a", "as_2");
        assert_eq!(s.in_flight("ou_a"), None);
        s.session_running("ou_b", Rc::from("as_3"), None);
        s.all_stopped();
        assert_eq!(s.in_flight("ou_b"), None);
    }

    #[test]
    fn an_oauth_state_is_used_once_and_dies_with_its_session() {
        let mut s = state(5);
        s.session_running("ou_a", Rc::from("as_1"), Some("st_1"));
        s.session_running("ou_b", Rc::from("as_2"), Some("st_2"));
        assert_eq!(s.lookup_state("st_1"), StateLookup::Pending("as_1"));
        assert_eq!(s.lookup_state("forged"), StateLookup::Unknown);
        assert_eq!(s.use_state("st_1").as_deref(), Some("as_1"));
        assert_eq!(s.lookup_state("st_1"), StateLookup::Used);
        assert_eq!(s.use_state("st_1"), None);
        // A session that ends unredirected takes its state with it.
        s.session_finished("ou_b", "as_2");
        assert_eq!(s.lookup_state("st_2"), StateLookup::Unknown);
        // A used state is remembered while its session runs, then forgotten.
        s.prune(0, |id| id == "as_1");
        assert_eq!(s.lookup_state("st_1"), StateLookup::Used);
        s.prune(0, |_| false);
        assert_eq!(s.lookup_state("st_1"), StateLookup::Unknown);
    }

    #[test]
    fn pruning_keeps_users_in_flight_or_within_the_window() {
        let mut s = state(5);
        s.admit("ou_recent", 50_000).unwrap();
        s.admit("ou_old", 1_000).unwrap();
        s.session_running("ou_running", Rc::from("as_1"), None);
        s.prune(61_000, |_| true);
        assert_eq!(s.users_tracked(), 2);
        assert_eq!(s.in_flight("ou_running"), Some("as_1"));
        // ou_old was forgotten: a full new window of starts.
        for _ in 0..5 {
            s.admit("ou_old", 61_000).unwrap();
        }
    }

    #[test]
    fn click_answers_are_kept_up_to_the_capacity_oldest_evicted_first() {
        let mut s = state(5);
        s.remember_answer("ev_1".into(), answer("one"));
        s.remember_answer("ev_2".into(), answer("two"));
        s.remember_answer("ev_1".into(), answer("one again"));
        assert_eq!(s.answer("ev_1"), Some(&answer("one again")));
        s.remember_answer("ev_3".into(), answer("three"));
        assert_eq!(s.answer("ev_1"), None, "the oldest went");
        assert_eq!(s.answer("ev_2"), Some(&answer("two")));
        assert_eq!(s.answer("ev_3"), Some(&answer("three")));
    }
}
