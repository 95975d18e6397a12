//! Choosing where a request for another datacenter goes, and ordering datacenters by
//! distance.
//!
//! - Targets are tried in random order (Consul picks a random server of the datacenter),
//!   members whose server is alive before those whose router would have to relay to
//!   another server, and members that failed us lately last: a dead router costs one
//!   attempt, then is passed over for [`PENALTY`] (Consul's `NotifyFailedServer` moves a
//!   failed server to the end of its list).
//! - Datacenters sort as Consul's `GetDatacentersByDistance`: by name, then (stably) by the
//!   median estimated round trip to their servers; this datacenter first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cairn_shared::rpc::wire::DatacenterMap;
use rand::seq::SliceRandom;
use tokio::time::Instant;

use crate::federation::Target;

/// How long a member that failed a request is tried only after every other.
pub const PENALTY: Duration = Duration::from_secs(30);

/// The median of `values` as Consul takes it (the upper middle of an even count);
/// `f64::INFINITY` for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::INFINITY;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// This datacenter first, the others by name and then, stably, by distance.
pub fn sort_datacenters(list: &mut [DatacenterMap], local: &str) {
    list.sort_by(|a, b| a.datacenter.cmp(&b.datacenter));
    list.sort_by(|a, b| {
        (a.datacenter != local)
            .cmp(&(b.datacenter != local))
            .then(a.rtt_secs.total_cmp(&b.rtt_secs))
    });
}

/// Members that failed a request lately, and until when they are passed over.
#[derive(Debug, Default)]
pub struct Penalties {
    until: Mutex<HashMap<String, Instant>>,
}

impl Penalties {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // One map operation per critical section; a poisoned map is still usable.
        self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn failed(&self, member: &str) {
        self.lock()
            .insert(member.to_string(), Instant::now() + PENALTY);
    }

    pub fn succeeded(&self, member: &str) {
        self.lock().remove(member);
    }

    fn penalized(&self, member: &str) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, until| *until > now);
        map.contains_key(member)
    }

    /// `targets` in the order to try them.
    pub fn order(&self, mut targets: Vec<Target>) -> Vec<Target> {
        targets.shuffle(&mut rand::rng());
        targets.sort_by_key(|t| (self.penalized(&t.name), !t.server_alive));
        targets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dc(name: &str, rtt: f64) -> DatacenterMap {
        DatacenterMap {
            datacenter: name.into(),
            rtt_secs: rtt,
            coordinates: vec![],
        }
    }

    #[test]
    fn medians_as_consul_takes_them() {
        assert_eq!(median(vec![]), f64::INFINITY);
        assert_eq!(median(vec![3.0]), 3.0);
        assert_eq!(median(vec![5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert_eq!(
            median(vec![1.0, f64::INFINITY, f64::INFINITY]),
            f64::INFINITY
        );
    }

    #[test]
    fn datacenters_sort_local_first_then_by_distance_then_name() {
        let mut l = vec![
            dc("dc3", 0.150),
            dc("dc1", 0.0),
            dc("dc9", f64::INFINITY),
            dc("dc2", 0.050),
            dc("dc0", f64::INFINITY),
            dc("dc4", 0.050),
        ];
        sort_datacenters(&mut l, "dc1");
        let names: Vec<&str> = l.iter().map(|d| d.datacenter.as_str()).collect();
        assert_eq!(names, ["dc1", "dc2", "dc4", "dc3", "dc0", "dc9"]);
    }

    fn target(name: &str, alive: bool) -> Target {
        Target {
            name: name.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            server_alive: alive,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_members_go_last_until_their_penalty_ends() {
        let p = Penalties::default();
        let all = || vec![target("a", true), target("b", true), target("c", false)];
        p.failed("a");
        for _ in 0..20 {
            let order: Vec<String> = p.order(all()).into_iter().map(|t| t.name).collect();
            assert_eq!(order[0], "b", "{order:?}");
            assert_eq!(
                order[1], "c",
                "a server that is down comes after a live one"
            );
            assert_eq!(order[2], "a", "the failed one last");
        }
        tokio::time::advance(PENALTY + Duration::from_secs(1)).await;
        let mut first_a = false;
        for _ in 0..64 {
            first_a |= p.order(all())[0].name == "a";
        }
        assert!(first_a, "after its penalty a member is picked again");
        p.failed("b");
        p.succeeded("b");
        assert!(!p.penalized("b"));
    }
}
