//! Bad input at the running binary: every request gets Consul's status and a one-line
//! message, nothing panics, and the store is unchanged afterwards.

#![allow(clippy::unwrap_used)]

use cairn_tests::Agent;
use reqwest::Method;
use serde_json::Value;

struct Case {
    method: Method,
    path: &'static str,
    body: Vec<u8>,
    status: u16,
    /// The body must start with this (empty: the body must be empty).
    message: &'static str,
}

fn case(
    method: Method,
    path: &'static str,
    body: &str,
    status: u16,
    message: &'static str,
) -> Case {
    Case {
        method,
        path,
        body: body.as_bytes().to_vec(),
        status,
        message,
    }
}

/// Sends every case and checks its status and one-line message.
async fn check(http: &reqwest::Client, agent: &Agent, cases: &[Case]) {
    for c in cases {
        let r = http
            .request(c.method.clone(), agent.url(c.path))
            .body(c.body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, c.status, "{} {}: {text}", c.method, c.path);
        if c.message.is_empty() {
            assert!(text.is_empty(), "{} {}: {text}", c.method, c.path);
        } else {
            assert!(
                text.starts_with(c.message),
                "{} {}: got {text:?}, want {:?}",
                c.method,
                c.path,
                c.message
            );
        }
        assert!(
            !text.trim_end().contains('\n'),
            "one-line message: {text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_consuls_answers_and_change_nothing() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    http.put(agent.url("/v1/kv/keep/a"))
        .body("1")
        .send()
        .await
        .unwrap();
    http.put(agent.url("/v1/kv/keep/b"))
        .body("2")
        .send()
        .await
        .unwrap();
    let before: Value = http
        .get(agent.url("/v1/kv/?recurse"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let ops_129 = format!(
        "[{}]",
        vec![r#"{"KV":{"Verb":"set","Key":"t","Value":"eA=="}}"#; 129].join(",")
    );
    let big_value = format!(
        r#"[{{"KV":{{"Verb":"set","Key":"big","Value":"{}"}}}}]"#,
        "A".repeat(700 * 1024)
    );
    let mut cases = vec![
        case(
            Method::GET,
            "/v1/kv/keep/a?index=-1",
            "",
            400,
            "Invalid index",
        ),
        case(
            Method::GET,
            "/v1/kv/keep/a?index=abc",
            "",
            400,
            "Invalid index",
        ),
        case(
            Method::GET,
            "/v1/kv/keep/a?index=5&wait=soon",
            "",
            400,
            "Invalid wait time",
        ),
        case(
            Method::GET,
            "/v1/kv/keep/a?wait=10",
            "",
            400,
            "Invalid wait time",
        ),
        case(
            Method::GET,
            "/v1/kv/keep/a?stale&consistent",
            "",
            400,
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ),
        case(Method::GET, "/v1/kv/", "", 400, "Missing key name"),
        case(Method::PUT, "/v1/kv/", "x", 400, "Missing key name"),
        case(Method::DELETE, "/v1/kv/", "", 400, "Missing key name"),
        case(
            Method::PUT,
            "/v1/kv/keep/a?flags=abc",
            "x",
            500,
            "strconv.ParseUint: parsing \"abc\": invalid syntax",
        ),
        case(
            Method::PUT,
            "/v1/kv/keep/a?flags=-1",
            "x",
            500,
            "strconv.ParseUint: parsing \"-1\": invalid syntax",
        ),
        case(
            Method::PUT,
            "/v1/kv/keep/a?cas=x",
            "x",
            500,
            "strconv.ParseUint: parsing \"x\": invalid syntax",
        ),
        case(
            Method::PUT,
            "/v1/kv/keep/a?cas=1&acquire=abc",
            "x",
            400,
            "Conflicting flags: acquire=abc&cas=1",
        ),
        case(
            Method::DELETE,
            "/v1/kv/keep/?recurse&cas=1",
            "",
            400,
            "Conflicting flags:",
        ),
        case(
            Method::PUT,
            "/v1/kv/keep/a?acquire=not-a-uuid",
            "x",
            500,
            "raft apply failed: invalid session \"not-a-uuid\"",
        ),
        case(Method::GET, "/v1/kv/keep%0aa", "", 400, ""),
        case(Method::PUT, "/v1/kv/keep%0aa", "x", 400, ""),
        case(
            Method::PUT,
            "/v1/session/create",
            "{not json",
            400,
            "Request decode failed:",
        ),
        case(
            Method::PUT,
            "/v1/session/create",
            r#"{"TTL":"1s"}"#,
            500,
            "Invalid Session TTL '1000000000', must be between [10s=24h0m0s]",
        ),
        case(
            Method::PUT,
            "/v1/session/create",
            r#"{"TTL":"soon"}"#,
            500,
            "Session TTL 'soon' invalid: time: invalid duration \"soon\"",
        ),
        case(
            Method::PUT,
            "/v1/session/create",
            r#"{"TTL":10}"#,
            400,
            "Request decode failed:",
        ),
        case(
            Method::PUT,
            "/v1/session/create",
            r#"{"LockDelay":"fast"}"#,
            400,
            "Request decode failed: time: invalid duration \"fast\"",
        ),
        case(
            Method::PUT,
            "/v1/session/create",
            r#"{"Behavior":"explode"}"#,
            500,
            "Invalid Behavior setting 'explode'",
        ),
        case(
            Method::PUT,
            "/v1/session/create",
            r#"{"Node":"ghost"}"#,
            500,
            "apply failed: Missing node registration",
        ),
        case(
            Method::PUT,
            "/v1/session/renew/not-a-uuid",
            "",
            404,
            "Session id 'not-a-uuid' not found",
        ),
        case(
            Method::PUT,
            "/v1/session/destroy/",
            "",
            400,
            "Missing session",
        ),
        case(Method::GET, "/v1/session/info/", "", 400, "Missing session"),
        case(Method::PUT, "/v1/txn", "[{", 400, "Failed to parse body:"),
        case(Method::PUT, "/v1/txn", "", 400, "Failed to parse body: EOF"),
        case(
            Method::PUT,
            "/v1/txn",
            r#"[{"KV":{"Verb":"set","Key":"x","Bogus":1}}]"#,
            400,
            "Failed to parse body: json: unknown field \"Bogus\"",
        ),
        case(
            Method::PUT,
            "/v1/txn",
            r#"[{"KV":{"Verb":"set","Key":"x","Value":"!!notbase64"}}]"#,
            400,
            "Failed to parse body:",
        ),
        case(
            Method::PATCH,
            "/v1/kv/keep/a",
            "",
            405,
            "method PATCH not allowed",
        ),
        case(
            Method::GET,
            "/v1/nothing/here",
            "",
            404,
            "Invalid URL path: not a recognized HTTP API endpoint",
        ),
    ];
    cases.push(Case {
        method: Method::PUT,
        path: "/v1/txn",
        body: ops_129.into_bytes(),
        status: 413,
        message: "Transaction contains too many operations (129 > 128)",
    });
    cases.push(Case {
        method: Method::PUT,
        path: "/v1/txn",
        body: big_value.into_bytes(),
        status: 413,
        message: "Request body(",
    });
    cases.push(Case {
        method: Method::PUT,
        path: "/v1/kv/keep/a",
        body: vec![0u8; 600 * 1024],
        status: 413,
        message: "Request body(614400 bytes) too large, max size: 524288 bytes.",
    });

    check(&http, &agent, &cases).await;

    // A transaction that fails a check is rolled back: 409 and nothing written.
    let r = http
        .put(agent.url("/v1/txn"))
        .body(
            r#"[{"KV":{"Verb":"set","Key":"keep/c","Value":"eA=="}},
                {"KV":{"Verb":"check-index","Key":"keep/a","Index":99999}},
                {"KV":{"Verb":"frob","Key":"keep/a"}}]"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["Results"], Value::Null);
    assert_eq!(body["Errors"][0]["OpIndex"], 1);
    assert_eq!(body["Errors"][1]["What"], "unknown KV verb \"frob\"");

    let after: Value = http
        .get(agent.url("/v1/kv/?recurse"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before, after, "bad input changed the store");
    let leader = http
        .get(agent.url("/v1/status/leader"))
        .send()
        .await
        .unwrap();
    assert_eq!(leader.status(), 200);
}

/// Prepared queries that Consul refuses: its status and message, and nothing stored.
#[tokio::test(flavor = "multi_thread")]
async fn bad_prepared_queries_get_consuls_answers_and_store_nothing() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    let r = http
        .post(agent.url("/v1/query"))
        .body(r#"{"Name":"a","Service":{"Service":"web"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before: Value = agent.get_json("/v1/query").await;
    let ghost = "/v1/query/8d1c2b66-57b0-4ac4-a4c4-1ea5d0f0f5f1";
    let cases = [
        case(
            Method::POST,
            "/v1/query",
            "{not json",
            400,
            "Request decode failed:",
        ),
        case(
            Method::POST,
            "/v1/query",
            r#"{"Name":"x"}"#,
            500,
            "Invalid prepared query: Must provide a Service name to query",
        ),
        case(
            Method::POST,
            "/v1/query",
            r#"{"Name":"t","Template":{"Type":"name_prefix_match","Regexp":"^(["},"Service":{"Service":"w"}}"#,
            500,
            "failed compiling template: Bad Regexp:",
        ),
        case(
            Method::POST,
            "/v1/query",
            r#"{"Name":"t","Template":{"Type":"glob"},"Service":{"Service":"w"}}"#,
            500,
            "failed compiling template: Bad Template.Type 'glob'",
        ),
        case(
            Method::POST,
            "/v1/query",
            r#"{"Name":"a","Service":{"Service":"other"}}"#,
            500,
            "name 'a' aliases an existing query name",
        ),
        case(
            Method::POST,
            "/v1/query",
            r#"{"Name":"n","Service":{"Service":"w","Failover":{"NearestN":-1}}}"#,
            500,
            "Invalid prepared query: Bad NearestN '-1', must be >= 0",
        ),
        case(
            Method::POST,
            "/v1/query",
            r#"{"Name":"d","Service":{"Service":"w"},"DNS":{"TTL":"soon"}}"#,
            500,
            "Invalid prepared query: Bad DNS TTL 'soon'",
        ),
        case(Method::GET, ghost, "", 404, "Query not found"),
        case(
            Method::GET,
            "/v1/query/nope/execute",
            "",
            404,
            "Query not found",
        ),
        case(
            Method::GET,
            "/v1/query/nope/explain",
            "",
            404,
            "Query not found",
        ),
        case(
            Method::PUT,
            ghost,
            r#"{"Service":{"Service":"w"}}"#,
            500,
            "Cannot modify non-existent prepared query: '8d1c2b66-57b0-4ac4-a4c4-1ea5d0f0f5f1'",
        ),
        case(
            Method::DELETE,
            ghost,
            "",
            500,
            "Cannot modify non-existent prepared query: '8d1c2b66-57b0-4ac4-a4c4-1ea5d0f0f5f1'",
        ),
        case(
            Method::GET,
            "/v1/query/a/execute?limit=x",
            "",
            500,
            "strconv.Atoi: parsing \"x\": invalid syntax",
        ),
        case(
            Method::GET,
            "/v1/query/a/execute?connect=true",
            "",
            400,
            "Connect-capable prepared queries are not supported",
        ),
        case(
            Method::POST,
            "/v1/query/a",
            "",
            405,
            "method POST not allowed",
        ),
    ];
    check(&http, &agent, &cases).await;
    assert_eq!(
        agent.get_json("/v1/query").await,
        before,
        "bad input stored a query"
    );
}

/// A query bound to a session goes when the session does.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_bound_to_a_session_ends_with_it() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    let session: Value = http
        .put(agent.url("/v1/session/create"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = session["ID"].as_str().unwrap().to_string();
    let body = format!(r#"{{"Name":"bound","Session":"{sid}","Service":{{"Service":"w"}}}}"#);
    let r = http
        .post(agent.url("/v1/query"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(agent.url("/v1/query"))
        .body(r#"{"Name":"ghostly","Session":"8d1c2b66-57b0-4ac4-a4c4-1ea5d0f0f5f1","Service":{"Service":"w"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.text().await.unwrap(),
        "invalid session \"8d1c2b66-57b0-4ac4-a4c4-1ea5d0f0f5f1\""
    );
    assert_eq!(
        agent.get_json("/v1/query").await.as_array().unwrap().len(),
        1
    );
    let r = http
        .put(agent.url(&format!("/v1/session/destroy/{sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(agent.get_json("/v1/query").await, serde_json::json!([]));
}
