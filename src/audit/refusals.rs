//! Refusals without a credential, counted instead of written one by one.
//!
//! A request that presents no usable credential (a 401, a throttled 429, a refused unseal
//! share or enrolment token) must not make Tessera write a durable entry per request: one
//! anonymous source could otherwise grow the log without bound. Such refusals are tallied in
//! memory per (source, principal, action, outcome) and written as **one entry per tally per
//! window** with the count, the first request id and the window's span in `detail`. While the
//! server is sealed the tallies wait (bounded) and are written after the unseal.
//!
//! Memory is bounded: past [`MAX_TALLIES`] distinct tallies in a window, further ones are
//! folded into one per outcome (source, principal and action `*`), so a spread-out flood costs
//! a bounded number of entries too.

use crate::sync::Locked;
use std::{collections::HashMap, sync::Mutex};

use super::Event;
use crate::clock::Timestamp;

/// Distinct tallies kept per window before folding sources together.
pub const MAX_TALLIES: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    source: String,
    principal: String,
    action: String,
    outcome: String,
}

#[derive(Debug)]
struct Tally {
    count: u64,
    first: Event,
    last: Timestamp,
}

/// The refusals of the current window.
#[derive(Debug, Default)]
pub struct Refusals {
    tallies: Mutex<HashMap<Key, Tally>>,
    /// Entries drained but not yet written.
    pending: Mutex<Vec<Event>>,
}

impl Refusals {
    /// Counts one refusal.
    pub fn note(&self, event: Event) {
        let mut t = self.tallies.write_locked();
        let mut key = Key {
            source: event.source.clone(),
            principal: event.principal.clone(),
            action: event.action.clone(),
            outcome: event.outcome.clone(),
        };
        if !t.contains_key(&key) && t.len() >= MAX_TALLIES {
            // One per outcome past the cap, whatever varies (sources, names, actions).
            key.source = "*".to_owned();
            key.principal = "*".to_owned();
            key.action = "*".to_owned();
        }
        let time = event.time;
        t.entry(key.clone())
            .and_modify(|e| {
                e.count += 1;
                e.last = time;
            })
            .or_insert_with(|| Tally {
                count: 1,
                last: time,
                first: Event {
                    source: key.source.clone(),
                    principal: key.principal.clone(),
                    // Folded tallies speak for many requests: no single object or tenant.
                    object: if key.source == "*" {
                        None
                    } else {
                        event.object
                    },
                    tenant: if key.source == "*" {
                        None
                    } else {
                        event.tenant
                    },
                    ..event
                },
            });
    }

    /// Takes the window's tallies as entries to write: one per tally, with its count.
    pub fn drain(&self) -> Vec<Event> {
        let tallies = std::mem::take(&mut *self.tallies.write_locked());
        let mut out = std::mem::take(&mut *self.pending.write_locked());
        let mut new: Vec<Event> = tallies
            .into_values()
            .map(|t| {
                let mut e = t.first;
                e.detail = Some(format!(
                    "refused {} time{} from {} to {}",
                    t.count,
                    if t.count == 1 { "" } else { "s" },
                    e.time,
                    t.last
                ));
                e
            })
            .collect();
        new.sort_by_key(|e| e.time);
        out.extend(new);
        out
    }

    /// Puts back entries that could not be written (sealed, or the store failed): the next
    /// drain returns them first. At most [`MAX_TALLIES`] wait; the oldest are kept.
    pub fn restore(&self, mut events: Vec<Event>) {
        events.truncate(MAX_TALLIES);
        *self.pending.write_locked() = events;
    }

    pub fn is_empty(&self) -> bool {
        self.tallies.write_locked().is_empty() && self.pending.write_locked().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(source: &str, t: i64) -> Event {
        Event {
            time: Timestamp::from_unix(t),
            request_id: format!("req_{t}"),
            principal: "anonymous".into(),
            tenant: None,
            action: "POST /v1/apis".into(),
            object: None,
            outcome: "unauthenticated".into(),
            source: source.into(),
            detail: None,
        }
    }

    #[test]
    fn a_flood_from_one_source_is_one_entry_with_its_count() {
        let r = Refusals::default();
        for t in 0..1000 {
            r.note(refusal("10.0.0.1", 1_000 + t));
        }
        r.note(refusal("10.0.0.2", 1_500));
        let out = r.drain();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].source, "10.0.0.1");
        assert_eq!(out[0].request_id, "req_1000");
        assert!(
            out[0]
                .detail
                .as_deref()
                .unwrap()
                .starts_with("refused 1000 times")
        );
        assert!(r.drain().is_empty(), "a window is written once");
    }

    #[test]
    fn many_actions_fold_too() {
        let r = Refusals::default();
        for i in 0..(MAX_TALLIES + 5000) {
            let mut e = refusal("10.0.0.1", 1_000);
            e.action = format!("X{i} /v1/apis");
            r.note(e);
        }
        assert_eq!(r.drain().len(), MAX_TALLIES + 1);
    }

    #[test]
    fn many_sources_fold_into_a_bounded_number_of_entries() {
        let r = Refusals::default();
        for i in 0..(MAX_TALLIES + 5000) {
            r.note(refusal(&format!("src{i}"), 1_000));
        }
        let out = r.drain();
        assert_eq!(out.len(), MAX_TALLIES + 1);
        assert!(out.iter().any(|e| {
            e.source == "*"
                && e.detail
                    .as_deref()
                    .unwrap()
                    .starts_with("refused 5000 times")
        }));
    }
}
