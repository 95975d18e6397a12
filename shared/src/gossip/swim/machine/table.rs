//! Member storage: a slab of [`NodeState`]s addressed by slot, plus a
//! name → slot index.
//!
//! Slots are stable for a member's lifetime, so the probe list and random
//! peer selection work on plain indices instead of string lookups. Freed
//! slots are reused. Iteration is in slot order, which depends only on the
//! call sequence, keeping the state machine deterministic.
//!
//! Invariant: `index[name] == slot` iff `slots[slot]` holds the member `name`.

use std::collections::HashMap;

use crate::gossip::swim::member::Member;
use crate::gossip::swim::suspicion::Suspicion;

/// Protocol bookkeeping for one member.
#[derive(Clone, Debug)]
pub(crate) struct NodeState {
    pub(crate) member: Member,
    /// Dropped from protocol bookkeeping (memberlist deletes it); kept for the host.
    pub(crate) reaped: bool,
    /// Present iff the member is suspect: (timer generation, timer).
    pub(crate) suspicion: Option<(u64, Suspicion)>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct MemberTable {
    slots: Vec<Option<NodeState>>,
    index: HashMap<String, usize>,
    free: Vec<usize>,
}

impl MemberTable {
    pub(crate) fn get(&self, name: &str) -> Option<&NodeState> {
        self.index.get(name).and_then(|&i| self.by_slot(i))
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut NodeState> {
        let i = *self.index.get(name)?;
        self.by_slot_mut(i)
    }

    pub(crate) fn slot(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub(crate) fn by_slot(&self, slot: usize) -> Option<&NodeState> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    pub(crate) fn by_slot_mut(&mut self, slot: usize) -> Option<&mut NodeState> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    /// Inserts a member whose name is not present yet; returns its slot.
    pub(crate) fn insert(&mut self, ns: NodeState) -> usize {
        let name = ns.member.name.clone();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(ns);
                slot
            }
            None => {
                self.slots.push(Some(ns));
                self.slots.len() - 1
            }
        };
        self.index.insert(name, slot);
        slot
    }

    /// Removes a member; returns the slot it occupied.
    pub(crate) fn remove(&mut self, name: &str) -> Option<usize> {
        let slot = self.index.remove(name)?;
        self.slots[slot] = None;
        self.free.push(slot);
        Some(slot)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &NodeState> {
        self.slots.iter().filter_map(Option::as_ref)
    }
}
