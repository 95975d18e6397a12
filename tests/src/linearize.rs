//! Checks that a recorded history of concurrent KV operations is linearizable (Wing & Gong / Lowe search with memoisation, as in Porcupine).
//!
//! Record a history with [`History`] (thread-safe: call [`History::begin`] just
//! before sending a request and [`History::end`] just after learning its result),
//! then pass [`History::into_events`] to [`check`].
//!
//! The model is a map where a missing key reads as 0. The history is split by
//! key (linearizability is compositional, so each key can be checked on its own,
//! which keeps the search small), and each key is searched for a valid
//! linearization. An operation whose result the client never learned
//! ([`Outcome::Unknown`]) may have taken effect at any time after its call, or
//! never.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

/// An operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Read { key: String },
    Cas { key: String, expect: u64, new: u64 },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Read { key } | Op::Cas { key, .. } => key,
        }
    }
}

/// What the client learned about an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The read returned this value.
    Read(u64),
    /// Whether the compare-and-set succeeded.
    Cas(bool),
    /// The client never learned the result (timeout, connection reset, crash):
    /// the operation may have taken effect at any time after its call, or never.
    Unknown,
}

/// One completed (or abandoned) operation. Times are nanoseconds since the
/// start of the recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub client: usize,
    pub op: Op,
    pub call: u64,
    /// `None` if the client never got a response; treated as +infinity.
    /// Ignored (also +infinity) when the outcome is [`Outcome::Unknown`],
    /// since a request can still take effect after the client gave up on it.
    pub ret: Option<u64>,
    pub outcome: Outcome,
}

/// Thread-safe history recorder.
pub struct History {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

/// Handle for an operation in flight; pass it back to [`History::end`].
#[derive(Debug)]
pub struct Token(usize);

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        History {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        // A client thread that panicked must not stop the others from recording.
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the invocation. Call it before the request can take effect.
    pub fn begin(&self, client: usize, op: Op) -> Token {
        // Timestamp before taking the lock: an early call time is always safe.
        let call = self.now();
        let mut events = self.lock();
        events.push(Event {
            client,
            op,
            call,
            ret: None,
            outcome: Outcome::Unknown,
        });
        Token(events.len() - 1)
    }

    /// Records the response. Call it after the result is known.
    pub fn end(&self, token: Token, outcome: Outcome) {
        let ret = self.now();
        let mut events = self.lock();
        let event = &mut events[token.0];
        event.ret = Some(ret);
        event.outcome = outcome;
    }

    /// The recorded events; operations never ended stay [`Outcome::Unknown`].
    pub fn into_events(self) -> Vec<Event> {
        self.events.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// Overall result of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    Linearizable,
    NotLinearizable,
    /// The search ran out of its step budget, or the history was malformed:
    /// nothing was proven either way.
    Inconclusive,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub result: CheckResult,
    /// Number of events given.
    pub ops: usize,
    /// Number of distinct keys.
    pub keys: usize,
    /// Why it is not linearizable, or why the check gave up.
    pub detail: Option<String>,
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        self.result == CheckResult::Linearizable
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} ({} ops, {} keys)",
            self.result, self.ops, self.keys
        )?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// Default search budget per key. Realistic histories need a few steps per
/// operation; this only stops pathological searches (and bounds memo memory).
pub const DEFAULT_STEP_BUDGET: u64 = 5_000_000;

/// Checks `events` with [`DEFAULT_STEP_BUDGET`] steps per key.
pub fn check(events: &[Event]) -> Verdict {
    check_with_budget(events, DEFAULT_STEP_BUDGET)
}

/// Checks `events`, giving up on a key after `max_steps` search steps.
pub fn check_with_budget(events: &[Event], max_steps: u64) -> Verdict {
    let mut verdict = Verdict {
        result: CheckResult::Linearizable,
        ops: events.len(),
        keys: 0,
        detail: None,
    };
    let mut by_key: BTreeMap<&str, Vec<KeyOp>> = BTreeMap::new();
    for (index, event) in events.iter().enumerate() {
        let ops = by_key.entry(event.op.key()).or_default();
        match KeyOp::new(index, event) {
            Ok(Some(op)) => ops.push(op),
            Ok(None) => {}
            Err(why) => {
                verdict.result = CheckResult::Inconclusive;
                verdict.detail = Some(format!(
                    "malformed history: {why}: {}",
                    describe(index, event)
                ));
                verdict.keys = by_key.len();
                return verdict;
            }
        }
    }
    verdict.keys = by_key.len();

    for (key, ops) in &by_key {
        match search(ops, max_steps) {
            Search::Linearizable => {}
            Search::GaveUp(steps) => {
                // Keep going: a later key may still be provably broken.
                if verdict.result == CheckResult::Linearizable {
                    verdict.result = CheckResult::Inconclusive;
                    verdict.detail = Some(format!(
                        "key {key:?}: gave up after {steps} steps ({} ops on this key)",
                        ops.len()
                    ));
                }
            }
            Search::Violation(best) => {
                let blocker = best.blocker.map_or_else(
                    || "an operation".to_string(),
                    |i| describe(ops[i].event, &events[ops[i].event]),
                );
                verdict.result = CheckResult::NotLinearizable;
                verdict.detail = Some(format!(
                    "key {key:?}: longest linearizable prefix has {} of {} ops; \
                     could not place {blocker} when the value was {}",
                    best.depth,
                    ops.len(),
                    best.state
                ));
                return verdict;
            }
        }
    }
    verdict
}

fn describe(index: usize, event: &Event) -> String {
    let ret = event
        .ret
        .map_or_else(|| "none".to_string(), |t| t.to_string());
    format!(
        "event #{index} (client {}, {:?} -> {:?}, call {} ns, ret {ret} ns)",
        event.client, event.op, event.outcome, event.call
    )
}

/// An operation on a single key, reduced to what the search needs.
struct KeyOp {
    /// Index into the original events, for reporting.
    event: usize,
    kind: Kind,
    call: u64,
    /// `None` = +infinity.
    ret: Option<u64>,
}

#[derive(Clone, Copy)]
enum Kind {
    Read(u64),
    CasOk {
        expect: u64,
        new: u64,
    },
    CasFailed {
        expect: u64,
    },
    /// Optional: the search may leave it out.
    CasUnknown {
        expect: u64,
        new: u64,
    },
}

impl KeyOp {
    /// `Ok(None)` for operations that cannot constrain the search.
    fn new(event: usize, e: &Event) -> Result<Option<KeyOp>, &'static str> {
        if e.ret.is_some_and(|ret| ret < e.call) {
            return Err("returns before its call");
        }
        let kind = match (&e.op, e.outcome) {
            // An unknown read changes nothing and nobody saw its value.
            (Op::Read { .. }, Outcome::Unknown) => return Ok(None),
            (Op::Read { .. }, Outcome::Read(v)) => Kind::Read(v),
            (Op::Cas { expect, new, .. }, Outcome::Unknown) => {
                if expect == new {
                    // Cannot change the value whether or not it happened.
                    return Ok(None);
                }
                Kind::CasUnknown {
                    expect: *expect,
                    new: *new,
                }
            }
            (Op::Cas { expect, new, .. }, Outcome::Cas(true)) => Kind::CasOk {
                expect: *expect,
                new: *new,
            },
            (Op::Cas { expect, .. }, Outcome::Cas(false)) => Kind::CasFailed { expect: *expect },
            _ => return Err("outcome does not match the operation"),
        };
        let ret = match kind {
            Kind::CasUnknown { .. } => None,
            _ => e.ret,
        };
        Ok(Some(KeyOp {
            event,
            kind,
            call: e.call,
            ret,
        }))
    }

    fn is_optional(&self) -> bool {
        matches!(self.kind, Kind::CasUnknown { .. })
    }

    /// The value after this op, if it can be linearized when the value is `state`.
    fn apply(&self, state: u64) -> Option<u64> {
        match self.kind {
            Kind::Read(v) => (state == v).then_some(state),
            Kind::CasOk { expect, new } => (state == expect).then_some(new),
            Kind::CasFailed { expect } => (state != expect).then_some(state),
            // A failed unknown CAS is indistinguishable from one that never
            // ran, which skipping already covers, so only try the success case.
            Kind::CasUnknown { expect, new } => (state == expect).then_some(new),
        }
    }
}

enum Search {
    Linearizable,
    Violation(Best),
    GaveUp(u64),
}

/// The deepest point the search reached, for the failure report.
struct Best {
    depth: usize,
    /// Index into the key's ops of an op that had to be placed next but could not.
    blocker: Option<usize>,
    state: u64,
}

const NIL: usize = usize::MAX;

/// Node of the doubly linked list of call and return entries, in time order.
/// Index 0 is a sentinel head.
#[derive(Clone, Copy)]
struct Node {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

struct EntryList {
    nodes: Vec<Node>,
    /// Per op, the index of its return node, or NIL for +infinity.
    ret_node: Vec<usize>,
}

impl EntryList {
    fn new(ops: &[KeyOp]) -> Self {
        let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            entries.push((op.call, true, i));
            if let Some(ret) = op.ret {
                entries.push((ret, false, i));
            }
        }
        // On equal times put calls first: treating touching ops as concurrent
        // is the lenient choice, so clock granularity cannot cause false alarms.
        entries.sort_by_key(|&(time, is_call, op)| (time, !is_call, op));

        let mut nodes = Vec::with_capacity(entries.len() + 1);
        nodes.push(Node {
            op: NIL,
            is_call: false,
            prev: NIL,
            next: if entries.is_empty() { NIL } else { 1 },
        });
        let mut ret_node = vec![NIL; ops.len()];
        let last = entries.len();
        for (i, &(_, is_call, op)) in entries.iter().enumerate() {
            let index = i + 1;
            if !is_call {
                ret_node[op] = index;
            }
            nodes.push(Node {
                op,
                is_call,
                prev: index - 1,
                next: if index == last { NIL } else { index + 1 },
            });
        }
        EntryList { nodes, ret_node }
    }

    fn first(&self) -> usize {
        self.nodes[0].next
    }

    fn unlink(&mut self, i: usize) {
        let Node { prev, next, .. } = self.nodes[i];
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, i: usize) {
        let Node { prev, next, .. } = self.nodes[i];
        self.nodes[prev].next = i;
        if next != NIL {
            self.nodes[next].prev = i;
        }
    }

    /// Removes a call and its return; undone by `unlift` in LIFO order.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        let ret = self.ret_node[self.nodes[call].op];
        if ret != NIL {
            self.unlink(ret);
        }
    }

    fn unlift(&mut self, call: usize) {
        let ret = self.ret_node[self.nodes[call].op];
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(call);
    }
}

/// Set of (linearized ops, value) configurations already explored.
///
/// Bitsets are stored with leading all-ones and trailing all-zero words
/// trimmed: the linearized set is usually a dense prefix plus a small
/// frontier, so this keeps entries to a word or two.
#[derive(Default)]
struct Memo {
    /// Hash -> most recent entry with that hash; entries chain via `next`.
    heads: HashMap<u64, usize>,
    entries: Vec<MemoEntry>,
    words: Vec<u64>,
}

struct MemoEntry {
    state: u64,
    full_words: usize,
    start: usize,
    len: usize,
    next: usize,
}

fn trim(bits: &[u64]) -> (usize, &[u64]) {
    let lo = bits
        .iter()
        .position(|&w| w != u64::MAX)
        .unwrap_or(bits.len());
    let hi = bits
        .iter()
        .rposition(|&w| w != 0)
        .map_or(lo, |i| (i + 1).max(lo));
    (lo, &bits[lo..hi])
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Memo {
    /// Adds the configuration; false if it was already there.
    fn insert(&mut self, bits: &[u64], state: u64) -> bool {
        let (full_words, mid) = trim(bits);
        let mut hash = mix(state ^ mix(full_words as u64));
        for &w in mid {
            hash = mix(hash ^ w);
        }
        let head = self.heads.get(&hash).copied().unwrap_or(NIL);
        let mut i = head;
        while i != NIL {
            let e = &self.entries[i];
            if e.state == state
                && e.full_words == full_words
                && self.words[e.start..e.start + e.len] == *mid
            {
                return false;
            }
            i = e.next;
        }
        self.entries.push(MemoEntry {
            state,
            full_words,
            start: self.words.len(),
            len: mid.len(),
            next: head,
        });
        self.words.extend_from_slice(mid);
        self.heads.insert(hash, self.entries.len() - 1);
        true
    }
}

/// Wing & Gong search with Lowe's memoisation, over one key's operations.
fn search(ops: &[KeyOp], max_steps: u64) -> Search {
    let mut remaining = ops.iter().filter(|op| !op.is_optional()).count();
    if remaining == 0 {
        return Search::Linearizable;
    }
    let mut list = EntryList::new(ops);
    let mut memo = Memo::default();
    let mut bits = vec![0u64; ops.len().div_ceil(64)];
    let mut state = 0u64;
    // Linearized calls, with the value before each, for backtracking.
    let mut stack: Vec<(usize, u64)> = Vec::new();
    let mut best: Option<Best> = None;
    let mut entry = list.first();
    let mut steps = 0u64;

    loop {
        if steps == max_steps {
            return Search::GaveUp(steps);
        }
        steps += 1;

        if entry != NIL && list.nodes[entry].is_call {
            let op = list.nodes[entry].op;
            if let Some(next_state) = ops[op].apply(state) {
                bits[op / 64] |= 1 << (op % 64);
                if memo.insert(&bits, next_state) {
                    stack.push((entry, state));
                    state = next_state;
                    list.lift(entry);
                    if !ops[op].is_optional() {
                        remaining -= 1;
                        if remaining == 0 {
                            return Search::Linearizable;
                        }
                    }
                    entry = list.first();
                    continue;
                }
                // Already explored from here and it led nowhere.
                bits[op / 64] &= !(1 << (op % 64));
            }
            entry = list.nodes[entry].next;
            continue;
        }

        // Either a return whose op is not yet linearized (it must come before
        // everything later, but nothing left fits), or the end of the list
        // with mandatory ops unplaced: backtrack.
        if best.as_ref().is_none_or(|b| stack.len() > b.depth) {
            let blocker = if entry != NIL {
                Some(list.nodes[entry].op)
            } else {
                (0..ops.len())
                    .find(|&i| !ops[i].is_optional() && bits[i / 64] & (1 << (i % 64)) == 0)
            };
            best = Some(Best {
                depth: stack.len(),
                blocker,
                state,
            });
        }
        let Some((call, prev_state)) = stack.pop() else {
            return Search::Violation(best.expect("recorded just above"));
        };
        let op = list.nodes[call].op;
        bits[op / 64] &= !(1 << (op % 64));
        state = prev_state;
        list.unlift(call);
        if !ops[op].is_optional() {
            remaining += 1;
        }
        entry = list.nodes[call].next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::thread;

    fn read(client: usize, key: &str, call: u64, ret: u64, value: u64) -> Event {
        Event {
            client,
            op: Op::Read {
                key: key.to_string(),
            },
            call,
            ret: Some(ret),
            outcome: Outcome::Read(value),
        }
    }

    fn cas(
        client: usize,
        key: &str,
        call: u64,
        ret: u64,
        expect: u64,
        new: u64,
        ok: bool,
    ) -> Event {
        Event {
            client,
            op: Op::Cas {
                key: key.to_string(),
                expect,
                new,
            },
            call,
            ret: Some(ret),
            outcome: Outcome::Cas(ok),
        }
    }

    fn cas_unknown(client: usize, key: &str, call: u64, expect: u64, new: u64) -> Event {
        Event {
            client,
            op: Op::Cas {
                key: key.to_string(),
                expect,
                new,
            },
            call,
            // The client timed out here; the request may still land later.
            ret: Some(call + 5),
            outcome: Outcome::Unknown,
        }
    }

    fn assert_ok(events: &[Event]) {
        let v = check(events);
        assert_eq!(v.result, CheckResult::Linearizable, "{v}");
    }

    fn assert_violation(events: &[Event]) -> Verdict {
        let v = check(events);
        assert_eq!(v.result, CheckResult::NotLinearizable, "{v}");
        v
    }

    #[test]
    fn empty_history_passes() {
        let v = check(&[]);
        assert!(v.is_linearizable());
        assert_eq!((v.ops, v.keys), (0, 0));
    }

    #[test]
    fn sequential_history_passes() {
        assert_ok(&[
            read(0, "a", 0, 1, 0),
            cas(0, "a", 2, 3, 0, 5, true),
            read(1, "a", 4, 5, 5),
            cas(1, "a", 6, 7, 0, 9, false),
            cas(0, "a", 8, 9, 5, 6, true),
            read(0, "a", 10, 11, 6),
            read(0, "b", 12, 13, 0),
        ]);
    }

    #[test]
    fn overlapping_writes_pass_in_either_order() {
        // Effect order matches call order.
        assert_ok(&[
            cas(0, "k", 0, 20, 0, 1, true),
            cas(1, "k", 5, 15, 1, 2, true),
            read(2, "k", 30, 40, 2),
        ]);
        // Effect order is the reverse of call order; still fine since they overlap.
        assert_ok(&[
            cas(0, "k", 0, 20, 1, 2, true),
            cas(1, "k", 5, 15, 0, 1, true),
            read(2, "k", 30, 40, 2),
        ]);
        // The same reversal without overlap is impossible.
        assert_violation(&[
            cas(0, "k", 0, 4, 1, 2, true),
            cas(1, "k", 5, 15, 0, 1, true),
            read(2, "k", 30, 40, 2),
        ]);
    }

    #[test]
    fn stale_read_after_completed_write_fails() {
        let v = assert_violation(&[cas(0, "x", 0, 10, 0, 5, true), read(1, "x", 20, 30, 0)]);
        let detail = v.detail.unwrap();
        assert!(detail.contains("\"x\""), "{detail}");
        assert!(detail.contains("event #1"), "{detail}");
    }

    #[test]
    fn lost_ack_fails() {
        // The CAS to 4 was acknowledged, but later the value is still 3.
        assert_violation(&[
            cas(0, "k", 0, 10, 0, 3, true),
            cas(1, "k", 20, 30, 3, 4, true),
            read(2, "k", 40, 50, 3),
        ]);
        // Same, observed by a later CAS that should have failed.
        assert_violation(&[
            cas(0, "k", 0, 10, 0, 3, true),
            cas(1, "k", 20, 30, 3, 4, true),
            cas(2, "k", 40, 50, 3, 9, true),
        ]);
    }

    #[test]
    fn failed_cas_must_see_a_different_value() {
        assert_ok(&[cas(0, "k", 0, 10, 1, 2, false), read(0, "k", 20, 30, 0)]);
        assert_violation(&[cas(0, "k", 0, 10, 0, 2, false), read(0, "k", 20, 30, 0)]);
    }

    #[test]
    fn unknown_cas_that_took_effect_passes() {
        assert_ok(&[cas_unknown(0, "k", 0, 0, 1), read(1, "k", 20, 30, 1)]);
    }

    #[test]
    fn unknown_cas_that_did_not_take_effect_passes() {
        assert_ok(&[
            cas_unknown(0, "k", 0, 0, 1),
            read(1, "k", 20, 30, 0),
            cas(1, "k", 40, 50, 0, 2, true),
            read(1, "k", 60, 70, 2),
        ]);
    }

    #[test]
    fn unknown_cas_may_land_after_the_client_gave_up() {
        assert_ok(&[
            cas_unknown(0, "k", 0, 0, 1),
            read(1, "k", 20, 30, 0),
            read(1, "k", 40, 50, 1),
        ]);
    }

    #[test]
    fn unknown_cas_cannot_take_effect_twice_or_early() {
        // Once observed it cannot be undone.
        assert_violation(&[
            cas_unknown(0, "k", 0, 0, 1),
            read(1, "k", 20, 30, 1),
            read(1, "k", 40, 50, 0),
        ]);
        // Nor can it be observed before it was called.
        assert_violation(&[read(1, "k", 0, 5, 1), cas_unknown(0, "k", 10, 0, 1)]);
    }

    #[test]
    fn unknown_reads_are_ignored() {
        let mut e = read(0, "k", 0, 10, 12345);
        e.outcome = Outcome::Unknown;
        assert_ok(&[e]);
    }

    #[test]
    fn keys_are_checked_independently() {
        let v = assert_violation(&[
            cas(0, "good", 0, 10, 0, 1, true),
            read(0, "good", 20, 30, 1),
            cas(1, "bad", 0, 10, 0, 1, true),
            read(1, "bad", 20, 30, 7),
        ]);
        assert_eq!((v.ops, v.keys), (4, 2));
        let detail = v.detail.unwrap();
        assert!(detail.contains("\"bad\""), "{detail}");
    }

    #[test]
    fn mismatched_outcome_is_inconclusive() {
        let mut e = read(0, "k", 0, 10, 0);
        e.outcome = Outcome::Cas(true);
        let v = check(&[e]);
        assert_eq!(v.result, CheckResult::Inconclusive, "{v}");
    }

    #[test]
    fn pathological_search_gives_up() {
        // Many concurrent optional flips 0 <-> 1 and an impossible read: the
        // memo still has exponentially many (subset, value) states to visit.
        let mut events = Vec::new();
        for i in 0..40 {
            let (expect, new) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
            events.push(cas_unknown(i, "k", 0, expect, new));
        }
        events.push(read(99, "k", 1, 100, 2));
        let v = check_with_budget(&events, 10_000);
        assert_eq!(v.result, CheckResult::Inconclusive, "{v}");
        assert!(v.detail.unwrap().contains("gave up after 10000 steps"));
    }

    #[test]
    fn recorder_marks_unfinished_ops_unknown() {
        let h = History::new();
        let t = h.begin(0, Op::Read { key: "k".into() });
        h.end(t, Outcome::Read(0));
        let _abandoned = h.begin(
            1,
            Op::Cas {
                key: "k".into(),
                expect: 0,
                new: 1,
            },
        );
        let events = h.into_events();
        assert_eq!(events.len(), 2);
        assert!(events[0].ret.is_some_and(|r| r >= events[0].call));
        assert_eq!(events[1].outcome, Outcome::Unknown);
        assert_eq!(events[1].ret, None);
        assert!(check(&events).is_linearizable());
    }

    /// xorshift64*, enough randomness for interleavings.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Occasionally yields or spins so that threads overlap in varied ways.
    fn jitter(rng: &mut Rng) {
        match rng.below(8) {
            0 => thread::yield_now(),
            1 => {
                for i in 0..rng.below(2000) {
                    std::hint::black_box(i);
                }
            }
            _ => {}
        }
    }

    /// Runs clients against a Mutex-protected map, which is linearizable by
    /// construction, recording call/return around the critical section. About
    /// 2% of responses are "lost" (the op may or may not have been applied).
    fn simulate(clients: usize, ops_per_client: usize, keys: &[&str], seed: u64) -> Vec<Event> {
        let store: Mutex<HashMap<String, u64>> = Mutex::new(HashMap::new());
        let history = History::new();
        // Unique written values, so every read pins down which write it saw.
        let next_value = AtomicU64::new(1);
        thread::scope(|s| {
            for client in 0..clients {
                let (store, history, next_value) = (&store, &history, &next_value);
                s.spawn(move || {
                    let mut rng = Rng(mix(seed ^ (client as u64 + 1)) | 1);
                    let mut seen = vec![0u64; keys.len()];
                    for _ in 0..ops_per_client {
                        let k = rng.below(keys.len() as u64) as usize;
                        let key = keys[k].to_string();
                        let op = if rng.below(2) == 0 {
                            Op::Read { key }
                        } else {
                            // Mostly expect the last value seen, so many CASes succeed.
                            let expect = if rng.below(4) == 0 {
                                rng.below(3)
                            } else {
                                seen[k]
                            };
                            let new = next_value.fetch_add(1, Ordering::Relaxed);
                            Op::Cas { key, expect, new }
                        };
                        let lost = rng.below(50) == 0;
                        let applied = !lost || rng.below(2) == 0;
                        jitter(&mut rng);
                        let token = history.begin(client, op.clone());
                        jitter(&mut rng);
                        let outcome = if applied {
                            let mut map = store.lock().unwrap();
                            let value = map.entry(op.key().to_string()).or_insert(0);
                            match &op {
                                Op::Read { .. } => Outcome::Read(*value),
                                Op::Cas { expect, new, .. } => {
                                    let ok = *value == *expect;
                                    if ok {
                                        *value = *new;
                                    }
                                    Outcome::Cas(ok)
                                }
                            }
                        } else {
                            Outcome::Unknown
                        };
                        jitter(&mut rng);
                        let reported = if lost { Outcome::Unknown } else { outcome };
                        history.end(token, reported);
                        match (&op, reported) {
                            (_, Outcome::Read(v)) => seen[k] = v,
                            (Op::Cas { new, .. }, Outcome::Cas(true)) => seen[k] = *new,
                            _ => {}
                        }
                    }
                });
            }
        });
        history.into_events()
    }

    #[test]
    fn concurrent_mutex_register_passes_and_corruption_fails() {
        let mut events = simulate(8, 300, &["a", "b", "c"], 42);
        assert_eq!(events.len(), 2400);
        let started = Instant::now();
        let v = check(&events);
        // Generous bound (debug build, busy machine); it takes milliseconds.
        assert!(
            started.elapsed().as_secs() < 5,
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(v.result, CheckResult::Linearizable, "{v}");
        assert_eq!(v.keys, 3);

        // Corrupt one read in the middle to a value that was never written.
        let reads: Vec<usize> = (0..events.len())
            .filter(|&i| matches!(events[i].outcome, Outcome::Read(_)))
            .collect();
        let victim = reads[reads.len() / 2];
        events[victim].outcome = Outcome::Read(u64::MAX);
        let v = check(&events);
        assert_eq!(v.result, CheckResult::NotLinearizable, "{v}");
        let detail = v.detail.unwrap();
        assert!(detail.contains(events[victim].op.key()), "{detail}");
    }

    #[test]
    fn hot_key_with_3200_ops_passes() {
        let events = simulate(8, 400, &["hot"], 7);
        let v = check(&events);
        assert_eq!(v.result, CheckResult::Linearizable, "{v}");
    }
}
