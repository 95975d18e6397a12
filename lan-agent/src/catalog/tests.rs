use cairn_shared::api::{
    CheckStatus, HealthCheck, KvTxnOp, KvVerb, NodeService, RegisterRequest, SERF_CHECK_ID,
    Session, SessionBehavior, TxnOp,
};
use cairn_shared::rpc::{Query, QueryResult, WriteOp, WriteResult};

use super::*;

/// A store with one node (`n1`, passing serfHealth) and a helper to apply at rising indexes.
struct Harness {
    store: Store,
    index: u64,
    now: u64,
}

impl Harness {
    fn new() -> Self {
        let mut h = Self {
            store: Store::new(),
            index: 0,
            now: 1_000_000,
        };
        h.node_check(CheckStatus::Passing);
        h
    }

    fn node_check(&mut self, status: CheckStatus) {
        let check = HealthCheck {
            check_id: SERF_CHECK_ID.into(),
            status,
            ..HealthCheck::default()
        };
        let req = RegisterRequest {
            node: "n1".into(),
            address: "127.0.0.1".into(),
            check: Some(check),
            ..RegisterRequest::default()
        };
        self.apply(CommandOp::Client(WriteOp::CatalogRegister(Box::new(req))))
            .unwrap();
    }

    fn apply(&mut self, op: CommandOp) -> Result<WriteResult, RpcError> {
        self.index += 1;
        self.store.apply(
            self.index,
            &Command {
                now_ms: self.now,
                op,
            },
        )
    }

    fn kv(&mut self, verb: KvVerb, key: &str, value: &str, index: u64, session: &str) -> bool {
        let op = KvTxnOp {
            verb,
            key: key.into(),
            value: Some(value.as_bytes().to_vec()),
            flags: 0,
            index,
            session: session.into(),
        };
        match self.apply(CommandOp::Client(WriteOp::Kv(op))) {
            Ok(WriteResult::Bool(b)) => b,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn set(&mut self, key: &str, value: &str) {
        assert!(self.kv(KvVerb::Set, key, value, 0, ""));
    }

    fn session(&mut self, id: &str, behavior: SessionBehavior, lock_delay_s: u64) {
        let s = Session {
            id: id.into(),
            node: "n1".into(),
            behavior,
            lock_delay: lock_delay_s * 1_000_000_000,
            node_checks: Some(vec![SERF_CHECK_ID.into()]),
            ..Session::default()
        };
        self.apply(CommandOp::Client(WriteOp::SessionCreate(s)))
            .unwrap();
    }

    fn get(&self, key: &str) -> Option<KvPair> {
        self.store.kv.get(key).cloned()
    }

    fn query(&self, q: Query) -> (u64, QueryResult) {
        self.store.query(&q, "").unwrap()
    }
}

#[test]
fn set_keeps_create_index_and_cas_zero_only_creates() {
    let mut h = Harness::new();
    h.set("a", "1");
    let first = h.get("a").unwrap();
    assert_eq!(first.create_index, first.modify_index);
    h.set("a", "2");
    let second = h.get("a").unwrap();
    assert_eq!(second.create_index, first.create_index);
    assert!(second.modify_index > first.modify_index);
    assert!(!h.kv(KvVerb::Cas, "a", "x", 0, ""));
    assert!(!h.kv(KvVerb::Cas, "a", "x", first.modify_index, ""));
    assert!(h.kv(KvVerb::Cas, "a", "3", second.modify_index, ""));
    assert!(h.kv(KvVerb::Cas, "new", "v", 0, ""));
    assert!(!h.kv(KvVerb::Cas, "missing", "v", 7, ""));
}

#[test]
fn writing_the_same_value_changes_nothing() {
    let mut h = Harness::new();
    h.set("a", "1");
    let before = h.get("a").unwrap().modify_index;
    h.set("a", "1");
    assert_eq!(h.get("a").unwrap().modify_index, before);
}

#[test]
fn missing_key_reports_table_index_and_deletes_leave_tombstones() {
    let mut h = Harness::new();
    h.set("a/x", "1");
    h.set("b/y", "1");
    let (idx_missing, res) = h.query(Query::KvGet { key: "zzz".into() });
    assert_eq!(res, QueryResult::Kv(vec![]));
    assert_eq!(idx_missing, h.index);
    let (before, _) = h.query(Query::KvList {
        prefix: "a/".into(),
    });
    assert!(h.kv(KvVerb::Delete, "a/x", "", 0, ""));
    let (after, res) = h.query(Query::KvList {
        prefix: "a/".into(),
    });
    assert_eq!(res, QueryResult::Kv(vec![]));
    assert!(after > before, "delete must move the prefix index forward");
    // A write elsewhere does not move a/'s index.
    h.set("b/z", "1");
    assert_eq!(
        h.query(Query::KvList {
            prefix: "a/".into()
        })
        .0,
        after
    );
}

#[test]
fn reaping_tombstones_never_moves_an_index_back() {
    let mut h = Harness::new();
    h.set("a/x", "1");
    h.set("a/y", "1");
    h.kv(KvVerb::Delete, "a/y", "", 0, "");
    let (before, _) = h.query(Query::KvList {
        prefix: "a/".into(),
    });
    let upto = h.index;
    h.apply(CommandOp::ReapTombstones { index: upto }).unwrap();
    assert_eq!(h.store.tombstones.len(), 0);
    let (after, _) = h.query(Query::KvList {
        prefix: "a/".into(),
    });
    assert!(after >= before);
}

#[test]
fn keys_roll_up_at_the_separator() {
    let mut h = Harness::new();
    for k in ["web/a", "web/b/c", "web/b/d", "webx", "other"] {
        h.set(k, "v");
    }
    let (_, res) = h.query(Query::KvKeys {
        prefix: "web".into(),
        separator: "/".into(),
    });
    assert_eq!(res, QueryResult::Keys(vec!["web/".into(), "webx".into()]));
    let (_, res) = h.query(Query::KvKeys {
        prefix: "web/".into(),
        separator: "/".into(),
    });
    assert_eq!(
        res,
        QueryResult::Keys(vec!["web/a".into(), "web/b/".into()])
    );
    let (_, res) = h.query(Query::KvKeys {
        prefix: String::new(),
        separator: String::new(),
    });
    let QueryResult::Keys(all) = res else {
        panic!()
    };
    assert_eq!(all.len(), 5);
}

#[test]
fn lock_semantics_follow_consul() {
    let mut h = Harness::new();
    h.session("s1", SessionBehavior::Release, 0);
    h.session("s2", SessionBehavior::Release, 0);
    assert!(h.kv(KvVerb::Lock, "l", "v", 0, "s1"));
    assert_eq!(h.get("l").unwrap().lock_index, 1);
    // Re-acquire by the holder keeps LockIndex; another session is refused.
    assert!(h.kv(KvVerb::Lock, "l", "v2", 0, "s1"));
    assert_eq!(h.get("l").unwrap().lock_index, 1);
    assert!(!h.kv(KvVerb::Lock, "l", "v", 0, "s2"));
    // A plain set keeps the holder.
    h.set("l", "plain");
    assert_eq!(h.get("l").unwrap().session, "s1");
    // Release by a non-holder fails; by the holder works and keeps LockIndex.
    assert!(!h.kv(KvVerb::Unlock, "l", "", 0, "s2"));
    assert!(h.kv(KvVerb::Unlock, "l", "", 0, "s1"));
    let e = h.get("l").unwrap();
    assert_eq!((e.session.as_str(), e.lock_index), ("", 1));
    assert!(h.kv(KvVerb::Lock, "l", "v", 0, "s2"));
    assert_eq!(h.get("l").unwrap().lock_index, 2);
}

#[test]
fn lock_with_unknown_or_missing_session_is_an_error() {
    let mut h = Harness::new();
    let op = |s: &str| {
        CommandOp::Client(WriteOp::Kv(KvTxnOp {
            verb: KvVerb::Lock,
            key: "k".into(),
            session: s.into(),
            ..KvTxnOp::default()
        }))
    };
    assert_eq!(
        h.apply(op("nope")).unwrap_err().message,
        "invalid session \"nope\""
    );
    assert_eq!(h.apply(op("")).unwrap_err().message, "missing session");
    assert!(h.get("k").is_none());
}

#[test]
fn destroying_a_session_releases_its_keys_and_starts_lock_delay() {
    let mut h = Harness::new();
    h.session("s1", SessionBehavior::Release, 15);
    h.session("s2", SessionBehavior::Release, 15);
    assert!(h.kv(KvVerb::Lock, "l", "v", 0, "s1"));
    h.apply(CommandOp::Client(WriteOp::SessionDestroy {
        id: "s1".into(),
    }))
    .unwrap();
    let e = h.get("l").unwrap();
    assert_eq!(e.session, "");
    assert_eq!(e.value.as_deref(), Some(&b"v"[..]));
    assert!(!h.kv(KvVerb::Lock, "l", "v", 0, "s2"), "lock-delay holds");
    h.now += 14_999;
    assert!(!h.kv(KvVerb::Lock, "l", "v", 0, "s2"));
    h.now += 2;
    assert!(h.kv(KvVerb::Lock, "l", "v", 0, "s2"), "lock-delay over");
}

#[test]
fn delete_behavior_removes_held_keys() {
    let mut h = Harness::new();
    h.session("s1", SessionBehavior::Delete, 0);
    assert!(h.kv(KvVerb::Lock, "l", "v", 0, "s1"));
    h.set("other", "v");
    h.apply(CommandOp::Client(WriteOp::SessionDestroy {
        id: "s1".into(),
    }))
    .unwrap();
    assert!(h.get("l").is_none());
    assert!(h.get("other").is_some());
}

#[test]
fn critical_check_invalidates_bound_sessions_and_blocks_new_ones() {
    let mut h = Harness::new();
    h.session("s1", SessionBehavior::Release, 0);
    assert!(h.kv(KvVerb::Lock, "l", "v", 0, "s1"));
    h.node_check(CheckStatus::Critical);
    assert!(h.store.session("s1").is_none());
    assert_eq!(h.get("l").unwrap().session, "");
    let s = Session {
        id: "s3".into(),
        node: "n1".into(),
        node_checks: Some(vec![SERF_CHECK_ID.into()]),
        ..Session::default()
    };
    let err = h
        .apply(CommandOp::Client(WriteOp::SessionCreate(s)))
        .unwrap_err();
    assert_eq!(err.message, "Check 'serfHealth' is in critical state");
}

#[test]
fn session_needs_a_known_node() {
    let mut h = Harness::new();
    let s = Session {
        id: "s".into(),
        node: "ghost".into(),
        ..Session::default()
    };
    let err = h
        .apply(CommandOp::Client(WriteOp::SessionCreate(s)))
        .unwrap_err();
    assert_eq!(err.message, "Missing node registration");
}

fn txn_op(verb: KvVerb, key: &str, value: &str, index: u64) -> TxnOp {
    TxnOp::Kv(KvTxnOp {
        verb,
        key: key.into(),
        value: Some(value.as_bytes().to_vec()),
        index,
        ..KvTxnOp::default()
    })
}

#[test]
fn failed_transaction_changes_nothing_and_reports_every_error() {
    let mut h = Harness::new();
    h.set("keep", "1");
    h.set("gone", "1");
    h.store.take_changes();
    let before = h.store.clone();
    let res = h
        .apply(CommandOp::Client(WriteOp::Txn(vec![
            txn_op(KvVerb::Set, "keep", "2", 0),
            txn_op(KvVerb::Delete, "gone", "", 0),
            txn_op(KvVerb::Cas, "keep", "3", 999),
            txn_op(KvVerb::Set, "new", "x", 0),
            txn_op(KvVerb::Get, "nope", "", 0),
        ])))
        .unwrap();
    let WriteResult::Txn(resp) = res else {
        panic!()
    };
    assert!(resp.results.is_none());
    let errors = resp.errors.unwrap();
    assert_eq!(
        errors.iter().map(|e| e.op_index).collect::<Vec<_>>(),
        [2, 4]
    );
    assert_eq!(errors[1].what, "key \"nope\" doesn't exist");
    assert_eq!(h.store.kv, before.kv);
    assert_eq!(h.store.tombstones, before.tombstones);
    assert_eq!(h.store.table_index, before.table_index);
    assert!(h.store.take_changes().is_empty());
}

#[test]
fn successful_transaction_returns_entries_without_values_except_get() {
    let mut h = Harness::new();
    let res = h
        .apply(CommandOp::Client(WriteOp::Txn(vec![
            txn_op(KvVerb::Set, "a", "1", 0),
            txn_op(KvVerb::Get, "a", "", 0),
            txn_op(KvVerb::Delete, "a", "", 0),
            txn_op(KvVerb::CheckNotExists, "a", "", 0),
        ])))
        .unwrap();
    let WriteResult::Txn(resp) = res else {
        panic!()
    };
    let results = resp.results.unwrap();
    assert_eq!(results.len(), 2);
    let cairn_shared::api::TxnResult::Kv(set) = &results[0];
    let cairn_shared::api::TxnResult::Kv(got) = &results[1];
    assert_eq!(set.value, None);
    assert_eq!(got.value.as_deref(), Some(&b"1"[..]));
    assert!(h.get("a").is_none());
}

#[test]
fn apply_is_deterministic() {
    let mut a = Harness::new();
    let mut b = Harness::new();
    for h in [&mut a, &mut b] {
        h.session("s", SessionBehavior::Release, 5);
        h.set("x", "1");
        h.kv(KvVerb::Lock, "x", "2", 0, "s");
        h.apply(CommandOp::Client(WriteOp::SessionDestroy {
            id: "s".into(),
        }))
        .unwrap();
    }
    assert_eq!(
        rmp_serde::to_vec(&a.store).unwrap(),
        rmp_serde::to_vec(&b.store).unwrap()
    );
}

fn register(h: &mut Harness, req: RegisterRequest) -> Result<WriteResult, RpcError> {
    h.apply(CommandOp::Client(WriteOp::CatalogRegister(Box::new(req))))
}

fn web(node: &str, id: &str, tags: &[&str]) -> RegisterRequest {
    RegisterRequest {
        node: node.into(),
        address: format!("10.0.0.{}", node.len()),
        service: Some(NodeService {
            id: id.into(),
            service: "web".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            port: 80,
            ..Default::default()
        }),
        ..RegisterRequest::default()
    }
}

#[test]
fn service_index_moves_only_for_its_own_service() {
    let mut h = Harness::new();
    register(&mut h, web("n1", "web1", &["a"])).unwrap();
    let q = Query::HealthService {
        service: "web".into(),
        passing: false,
        select: Default::default(),
    };
    let (web_idx, _) = h.query(q.clone());
    let mut db = web("n2", "db1", &[]);
    db.service.as_mut().unwrap().service = "db".into();
    register(&mut h, db).unwrap();
    assert_eq!(
        h.query(q.clone()).0,
        web_idx,
        "a db change moved web's index"
    );
    // A node-level check on web's node does move it.
    h.node_check(CheckStatus::Warning);
    assert!(h.query(q).0 > web_idx);
}

#[test]
fn a_failed_registration_changes_nothing() {
    let mut h = Harness::new();
    let mut req = web("n9", "web9", &[]);
    req.checks = vec![HealthCheck {
        check_id: "c".into(),
        service_id: "no-such-service".into(),
        ..HealthCheck::default()
    }];
    h.store.take_changes();
    let before = h.store.clone();
    assert!(register(&mut h, req).is_err());
    assert_eq!(h.store.nodes, before.nodes);
    assert_eq!(h.store.services, before.services);
    assert_eq!(h.store.by_service_name, before.by_service_name);
    assert_eq!(h.store.table_index, before.table_index);
    assert!(h.store.take_changes().is_empty());
}

#[test]
fn tags_match_case_insensitively_and_all_are_required() {
    let mut h = Harness::new();
    register(&mut h, web("n1", "web1", &["Rails", "v1"])).unwrap();
    register(&mut h, web("n2", "web2", &["rails"])).unwrap();
    let ids = |tags: &[&str]| {
        let (_, res) = h.query(Query::CatalogService {
            service: "web".into(),
            select: cairn_shared::rpc::Select {
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            },
        });
        let QueryResult::ServiceNodes(list) = res else {
            panic!()
        };
        list.into_iter().map(|s| s.service_id).collect::<Vec<_>>()
    };
    assert_eq!(ids(&["rails"]), ["web1", "web2"]);
    assert_eq!(ids(&["RAILS", "v1"]), ["web1"]);
    assert!(ids(&["nope"]).is_empty());
}

#[test]
fn passing_keeps_only_instances_whose_every_check_passes() {
    let mut h = Harness::new();
    let mut a = web("n1", "web1", &[]);
    a.checks = vec![HealthCheck {
        check_id: "svc".into(),
        service_id: "web1".into(),
        status: CheckStatus::Passing,
        ..HealthCheck::default()
    }];
    register(&mut h, a).unwrap();
    let mut b = web("n2", "web2", &[]);
    b.checks = vec![HealthCheck {
        check_id: "svc".into(),
        service_id: "web2".into(),
        status: CheckStatus::Warning,
        ..HealthCheck::default()
    }];
    register(&mut h, b).unwrap();
    let ids = |passing: bool| {
        let (_, res) = h.query(Query::HealthService {
            service: "web".into(),
            passing,
            select: Default::default(),
        });
        let QueryResult::ServiceEntries(list) = res else {
            panic!()
        };
        list.into_iter().map(|e| e.service.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(false), ["web1", "web2"]);
    assert_eq!(ids(true), ["web1"]);
}

#[test]
fn deregistering_a_node_removes_everything_and_invalidates_sessions() {
    let mut h = Harness::new();
    register(&mut h, web("n1", "web1", &[])).unwrap();
    h.session("s1", SessionBehavior::Release, 0);
    assert!(h.kv(KvVerb::Lock, "l", "v", 0, "s1"));
    h.apply(CommandOp::Client(WriteOp::CatalogDeregister(
        cairn_shared::api::DeregisterRequest {
            node: "n1".into(),
            ..Default::default()
        },
    )))
    .unwrap();
    assert!(h.store.node("n1").is_none());
    assert!(h.store.services.is_empty());
    assert!(h.store.checks.is_empty());
    assert!(h.store.session("s1").is_none());
    assert_eq!(h.get("l").unwrap().session, "");
}

#[test]
fn filter_applies_to_the_listed_element() {
    let mut h = Harness::new();
    register(&mut h, web("n1", "web1", &["a"])).unwrap();
    register(&mut h, web("n22", "web2", &["b"])).unwrap();
    let (_, res) = h.query(Query::CatalogService {
        service: "web".into(),
        select: cairn_shared::rpc::Select {
            filter: r#""b" in ServiceTags and Node matches "^n2""#.into(),
            ..Default::default()
        },
    });
    let QueryResult::ServiceNodes(list) = res else {
        panic!()
    };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].service_id, "web2");
    let bad = h.store.query(
        &Query::CatalogNodes {
            select: cairn_shared::rpc::Select {
                filter: "Node ==".into(),
                ..Default::default()
            },
        },
        "",
    );
    assert!(
        bad.unwrap_err()
            .message
            .starts_with("Failed to create boolean expression evaluator: ")
    );
}

#[test]
fn near_sorts_by_coordinates_and_unknown_nodes_go_last() {
    use cairn_shared::api::CoordinateEntry;
    use cairn_shared::coordinate::{Config, Coordinate};
    let mut h = Harness::new();
    for node in ["n1", "far", "mid", "nocoord"] {
        register(&mut h, web(node, &format!("web-{node}"), &[])).unwrap();
    }
    let at = |x: f64| {
        let mut c = Coordinate::new(&Config::default());
        c.vec[0] = x;
        c
    };
    let entries = [("n1", 0.0), ("far", 0.5), ("mid", 0.1)]
        .iter()
        .map(|(n, x)| CoordinateEntry {
            node: n.to_string(),
            segment: String::new(),
            coord: Some(at(*x)),
        })
        .chain(std::iter::once(CoordinateEntry {
            node: "ghost".into(),
            segment: String::new(),
            coord: Some(at(0.0)),
        }))
        .collect();
    h.apply(CommandOp::Client(WriteOp::CoordinateBatchUpdate(entries)))
        .unwrap();
    let q = Query::CatalogService {
        service: "web".into(),
        select: Default::default(),
    };
    let order = |near: &str| {
        let QueryResult::ServiceNodes(list) = h.store.query(&q, near).unwrap().1 else {
            panic!()
        };
        list.into_iter().map(|s| s.node).collect::<Vec<_>>()
    };
    assert_eq!(order("n1"), ["n1", "mid", "far", "nocoord"]);
    assert_eq!(order("far"), ["far", "mid", "n1", "nocoord"]);
    // No coordinate for the source: catalog order.
    assert_eq!(order("nocoord"), ["far", "mid", "n1", "nocoord"]);
    // Coordinates of unknown nodes are not stored.
    assert!(h.store.coordinate("ghost").is_none());
}

mod prepared_queries {
    use cairn_shared::api::{PreparedQuery, QuerySource, TEMPLATE_NAME_PREFIX_MATCH};
    use cairn_shared::rpc::QueryOp;

    use super::*;

    const ID1: &str = "11111111-1111-1111-1111-111111111111";
    const ID2: &str = "22222222-2222-2222-2222-222222222222";

    fn pq(id: &str, name: &str, service: &str) -> PreparedQuery {
        let mut q = PreparedQuery {
            id: id.into(),
            name: name.into(),
            ..PreparedQuery::default()
        };
        q.service.service = service.into();
        q
    }

    fn put(h: &mut Harness, op: QueryOp, q: &PreparedQuery) -> Result<WriteResult, RpcError> {
        h.apply(CommandOp::Client(WriteOp::PreparedQuery {
            op,
            query: Box::new(q.clone()),
        }))
    }

    fn resolve(h: &Harness, name: &str) -> Option<PreparedQuery> {
        h.store
            .resolve_query(name, &QuerySource::default())
            .unwrap()
    }

    #[test]
    fn names_are_unique_ignoring_case_and_may_not_alias_an_id() {
        let mut h = Harness::new();
        put(&mut h, QueryOp::Create, &pq(ID1, "web-geo", "web")).unwrap();
        let created = h.store.prepared_query(ID1).unwrap().create_index;
        let e = put(&mut h, QueryOp::Create, &pq(ID2, "WEB-GEO", "web")).unwrap_err();
        assert_eq!(e.message, "name 'WEB-GEO' aliases an existing query name");
        let e = put(&mut h, QueryOp::Create, &pq(ID2, ID1, "web")).unwrap_err();
        assert_eq!(
            e.message,
            format!("name '{ID1}' aliases an existing query ID")
        );
        assert!(h.store.prepared_query(ID2).is_none(), "nothing stored");
        // An update keeps its create index and may keep its own name.
        put(&mut h, QueryOp::Update, &pq(ID1, "web-geo", "db")).unwrap();
        let q = h.store.prepared_query(ID1).unwrap();
        assert_eq!(
            (q.create_index, q.service.service.as_str()),
            (created, "db")
        );
        assert!(q.modify_index > created);
        let e = put(&mut h, QueryOp::Update, &pq(ID2, "x", "web")).unwrap_err();
        assert_eq!(
            e.message,
            format!("Cannot modify non-existent prepared query: '{ID2}'")
        );
        let before = h.store.queries_index();
        put(&mut h, QueryOp::Delete, &pq(ID1, "", "")).unwrap();
        assert!(h.store.prepared_query(ID1).is_none());
        assert!(h.store.queries_index() > before);
    }

    #[test]
    fn resolution_by_id_name_and_longest_template_prefix() {
        let mut h = Harness::new();
        put(&mut h, QueryOp::Create, &pq(ID1, "web-geo", "web")).unwrap();
        let mut t = pq(ID2, "geo-", "${name.suffix}");
        t.template.kind = TEMPLATE_NAME_PREFIX_MATCH.into();
        put(&mut h, QueryOp::Create, &t).unwrap();
        let mut longer = pq(
            "33333333-3333-3333-3333-333333333333",
            "geo-db-",
            "db-${name.suffix}",
        );
        longer.template.kind = TEMPLATE_NAME_PREFIX_MATCH.into();
        put(&mut h, QueryOp::Create, &longer).unwrap();

        assert_eq!(resolve(&h, ID1).unwrap().name, "web-geo");
        assert_eq!(resolve(&h, "Web-Geo").unwrap().id, ID1);
        assert_eq!(resolve(&h, "geo-web").unwrap().service.service, "web");
        assert_eq!(
            resolve(&h, "geo-db-main").unwrap().service.service,
            "db-main"
        );
        assert!(resolve(&h, "other").is_none());
        let e = h
            .store
            .resolve_query(ID2, &QuerySource::default())
            .unwrap_err();
        assert!(
            e.message.contains("only be resolved up by name"),
            "{}",
            e.message
        );
        // A second nameless template is refused; a bad one is never stored.
        let mut anon = pq("44444444-4444-4444-4444-444444444444", "", "x");
        anon.template.kind = TEMPLATE_NAME_PREFIX_MATCH.into();
        put(&mut h, QueryOp::Create, &anon).unwrap();
        anon.id = "55555555-5555-5555-5555-555555555555".into();
        let e = put(&mut h, QueryOp::Create, &anon).unwrap_err();
        assert_eq!(
            e.message,
            "a query template with an empty name already exists"
        );
        let mut bad = pq("66666666-6666-6666-6666-666666666666", "bad-", "x");
        bad.template.kind = TEMPLATE_NAME_PREFIX_MATCH.into();
        bad.template.regexp = "([".into();
        let e = put(&mut h, QueryOp::Create, &bad).unwrap_err();
        assert!(
            e.message
                .starts_with("failed compiling template: Bad Regexp:"),
            "{}",
            e.message
        );
        assert!(h.store.prepared_query(&bad.id).is_none());
    }

    #[test]
    fn a_query_bound_to_a_session_goes_with_it() {
        let mut h = Harness::new();
        let mut q = pq(ID1, "", "web");
        q.session = "s1".into();
        let e = put(&mut h, QueryOp::Create, &q).unwrap_err();
        assert_eq!(e.message, "invalid session \"s1\"");
        h.session("s1", SessionBehavior::Release, 0);
        put(&mut h, QueryOp::Create, &q).unwrap();
        put(&mut h, QueryOp::Create, &pq(ID2, "free", "web")).unwrap();
        h.apply(CommandOp::Client(WriteOp::SessionDestroy {
            id: "s1".into(),
        }))
        .unwrap();
        assert!(h.store.prepared_query(ID1).is_none());
        assert!(h.store.prepared_query(ID2).is_some());
    }

    #[test]
    fn execution_filters_health_tags_and_meta_as_consul() {
        let mut h = Harness::new();
        let mut a = web("n1", "a", &["v1", "blue"]);
        a.check = Some(HealthCheck {
            check_id: "flaky".into(),
            service_id: "a".into(),
            status: CheckStatus::Warning,
            ..HealthCheck::default()
        });
        register(&mut h, a).unwrap();
        let mut b = web("n2", "b", &["v1", "green"]);
        b.address = "127.0.0.2".into();
        register(&mut h, b).unwrap();
        let mut c = web("n3", "c", &["v1"]);
        c.address = "127.0.0.3".into();
        c.check = Some(HealthCheck {
            check_id: "down".into(),
            service_id: "c".into(),
            status: CheckStatus::Critical,
            ..HealthCheck::default()
        });
        register(&mut h, c).unwrap();
        let ids = |q: &PreparedQuery| {
            let mut v: Vec<String> = h
                .store
                .run_query(q)
                .into_iter()
                .map(|e| e.service.id)
                .collect();
            v.sort();
            v
        };
        let mut q = pq(ID1, "q", "web");
        assert_eq!(ids(&q), ["a", "b"], "critical is always out");
        q.service.only_passing = true;
        assert_eq!(ids(&q), ["b"], "warning out with OnlyPassing");
        q.service.ignore_check_ids = Some(vec!["flaky".into(), "down".into()]);
        assert_eq!(ids(&q), ["a", "b", "c"], "ignored checks do not count");
        q.service.tags = Some(vec!["V1".into(), "!blue".into()]);
        assert_eq!(ids(&q), ["b", "c"], "tags ignore case; !tag excludes");
        q.service.tags = None;
        q.service.node_meta = Some([("rack".to_string(), "r1".to_string())].into());
        assert!(ids(&q).is_empty(), "no node has the meta");
        assert_eq!(h.store.node_at_address("127.0.0.2").as_deref(), Some("n2"));
    }
}

/// A batch entry applies its commands in order at one index, each with its own result: a
/// CAS that the earlier command of the same batch invalidated fails, the rest succeed.
#[test]
fn a_batch_applies_in_order_with_a_result_each() {
    let mut h = Harness::new();
    h.set("k", "old");
    let seen = h.get("k").unwrap().modify_index;
    let kv = |verb, value: &str, index| Command {
        now_ms: 1_000_000,
        op: CommandOp::Client(WriteOp::Kv(KvTxnOp {
            verb,
            key: "k".into(),
            value: Some(value.as_bytes().to_vec()),
            flags: 0,
            index,
            session: String::new(),
        })),
    };
    let batch = Command {
        now_ms: 1_000_000,
        op: CommandOp::Batch(vec![
            kv(KvVerb::Cas, "first", seen),
            kv(KvVerb::Cas, "second", seen),
            kv(KvVerb::Set, "third", 0),
        ]),
    };
    let results = h.store.apply_each(h.index + 1, &batch);
    assert_eq!(
        results,
        vec![
            Ok(WriteResult::Bool(true)),
            Ok(WriteResult::Bool(false)),
            Ok(WriteResult::Bool(true)),
        ]
    );
    let k = h.get("k").unwrap();
    assert_eq!(k.value.as_deref(), Some(&b"third"[..]));
    assert_eq!(k.modify_index, h.index + 1);
    // A restore inside a batch wakes every watcher, as one outside does.
    assert!(!Store::is_restore(&batch));
    let restore = Command {
        now_ms: 0,
        op: CommandOp::RestoreCommit {
            restore: "r".into(),
            len: 0,
        },
    };
    assert!(Store::is_restore(&Command {
        now_ms: 0,
        op: CommandOp::Batch(vec![restore]),
    }));
}

/// A restore arrives as pieces and a commit; a piece or commit proposed again after an
/// ambiguous failure changes nothing, and a missing piece makes the commit fail.
#[test]
fn restore_pieces_and_commit_are_safe_to_apply_twice() {
    let mut source = Harness::new();
    assert!(source.kv(KvVerb::Set, "restored", "yes", 0, ""));
    let file = crate::raft::snapshot::SnapshotFile {
        last_log_id: None,
        membership: Default::default(),
        snapshot_id: "t".into(),
        datacenter: "dc1".into(),
        store: source.store.clone(),
    }
    .encode()
    .unwrap();
    let (a, b) = file.split_at(file.len() / 2);
    let part = |offset: usize, data: &[u8]| CommandOp::RestorePart {
        restore: "r1".into(),
        offset: offset as u64,
        data: data.to_vec(),
    };
    let commit = || CommandOp::RestoreCommit {
        restore: "r1".into(),
        len: file.len() as u64,
    };
    let mut h = Harness::new();
    h.apply(part(0, a)).unwrap();
    h.apply(part(0, a)).unwrap();
    h.apply(part(a.len(), b)).unwrap();
    h.apply(commit()).unwrap();
    h.apply(commit()).unwrap();
    assert!(h.store.kv.contains_key("restored"));
    assert!(h.store.restoring.is_none());

    // A gap: the second half never arrived, only a piece after it.
    let mut gap = Harness::new();
    gap.apply(part(0, a)).unwrap();
    gap.apply(part(a.len() + 1, b)).unwrap();
    assert!(gap.apply(commit()).is_err());
    assert!(!gap.store.kv.contains_key("restored"));
}
