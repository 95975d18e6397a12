"""Drives a real `cairn agent -dev` with py-consul (PyPI), an independent Consul client.

Usage: python tests/py/py_consul_check.py PATH_TO_CAIRN

Exercises KV put/get/recurse/keys (an empty value reads back as None), check-and-set, a
blocking get woken by a write, check notes reaching the health endpoints, sessions
(create/info/renew/destroy with TTL and lock-delay), acquire/release, transactions,
prepared queries (create, list, get, execute by name and ID, explain, delete) and the
operator endpoints (Raft configuration, usage, autopilot configuration with
check-and-set, autopilot health, leadership transfer) and config entries (write with
check-and-set, read, list with a filter, delete). A second agent with ACLs on (default
deny) is driven through py-consul's ACL API: policies, roles, tokens with clone and
delete, templated policies, the agent token endpoint, and refusals as
`ACLPermissionDenied`. Exits non-zero
on the first failed expectation.
"""

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import consul


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(binary, *extra, token=None):
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="cairn-py-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [binary, "agent", "-dev", f"-http-port={port}", "-dns-port=-1", "-node=py-node", *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    c = consul.Consul(host="127.0.0.1", port=port, token=token)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            if c.status.leader():
                return proc, c, log.name
        except Exception:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    sys.exit("agent did not start:\n" + open(log.name).read())


def check_kv(c):
    assert c.kv.put("py/a", "1") is True
    assert c.kv.put("py/b/c", "2", flags=9) is True
    index, entry = c.kv.get("py/a")
    assert entry["Value"] == b"1", entry
    assert int(index) >= 1
    _, missing = c.kv.get("py/missing")
    assert missing is None
    _, entries = c.kv.get("py/", recurse=True)
    assert [e["Key"] for e in entries] == ["py/a", "py/b/c"], entries
    assert entries[1]["Flags"] == 9
    _, keys = c.kv.get("py/", keys=True, separator="/")
    assert keys == ["py/a", "py/b/"], keys
    # Check-and-set.
    modify = entry["ModifyIndex"]
    assert c.kv.put("py/a", "stale", cas=modify + 1000) is False
    assert c.kv.put("py/a", "fresh", cas=modify) is True
    assert c.kv.put("py/a", "again", cas=0) is False
    assert c.kv.delete("py/b", recurse=True) is True
    _, gone = c.kv.get("py/b/c")
    assert gone is None
    # An empty body is stored as an empty value, which Consul shows as null.
    assert c.kv.put("py/empty", "") is True
    _, empty = c.kv.get("py/empty")
    assert empty is not None and empty["Value"] is None, empty


def check_blocking(c):
    index, _ = c.kv.get("py/watch")
    result = {}

    def wait():
        start = time.time()
        result["answer"] = c.kv.get("py/watch", index=index, wait="20s")
        result["elapsed"] = time.time() - start

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.5)
    c.kv.put("py/unrelated", "x")
    time.sleep(0.5)
    assert t.is_alive(), "an unrelated write woke the watcher"
    c.kv.put("py/watch", "now")
    t.join(10)
    assert not t.is_alive(), "blocking get did not return after the write"
    new_index, entry = result["answer"]
    assert int(new_index) > int(index) and entry["Value"] == b"now", result
    assert result["elapsed"] < 5, result


def check_sessions(c):
    sid = c.session.create(name="py", ttl=10, lock_delay=0)
    _, info = c.session.info(sid)
    assert info["Name"] == "py" and info["TTL"] == "10s" and info["LockDelay"] == 0, info
    renewed = c.session.renew(sid)
    assert renewed["ID"] == sid, renewed
    other = c.session.create(name="other")
    assert c.kv.put("py/lock", "holder", acquire=sid) is True
    assert c.kv.put("py/lock", "thief", acquire=other) is False
    _, entry = c.kv.get("py/lock")
    assert entry["Session"] == sid and entry["LockIndex"] == 1, entry
    assert c.kv.put("py/lock", "bye", release=other) is False
    assert c.kv.put("py/lock", "bye", release=sid) is True
    _, entry = c.kv.get("py/lock")
    assert "Session" not in entry and entry["Value"] == b"bye", entry
    # Destroying a holder releases its key.
    assert c.kv.put("py/lock", "again", acquire=sid) is True
    assert c.session.destroy(sid) is True
    _, entry = c.kv.get("py/lock")
    assert "Session" not in entry, entry
    _, info = c.session.info(sid)
    assert info is None
    _, listed = c.session.list()
    assert [s["ID"] for s in listed] == [other], listed


def check_txn(c):
    b64 = lambda s: base64.b64encode(s.encode()).decode()
    ok = c.txn.put([
        {"KV": {"Verb": "set", "Key": "py/t1", "Value": b64("one")}},
        {"KV": {"Verb": "set", "Key": "py/t2", "Value": b64("two")}},
        {"KV": {"Verb": "get", "Key": "py/t1"}},
    ])
    assert ok["Errors"] is None and len(ok["Results"]) == 3, ok
    assert ok["Results"][2]["KV"]["Value"] == b64("one")
    try:
        c.txn.put([
            {"KV": {"Verb": "set", "Key": "py/t3", "Value": b64("three")}},
            {"KV": {"Verb": "check-not-exists", "Key": "py/t1"}},
        ])
        raise AssertionError("a failing transaction must be refused")
    except consul.ConsulException as e:
        assert "409" in str(e) or "exists" in str(e), e
    _, t3 = c.kv.get("py/t3")
    assert t3 is None, "the failed transaction was not rolled back"


def check_queries(c):
    c.agent.service.register("pyweb", port=8080, tags=["v1"])
    # py-consul sends lower-case keys and always a template block: its queries are
    # name-prefix templates, resolved by name.
    created = c.query.create("pyweb", name="py-web", nearestn=1, ttl="7s", tags=["v1"])
    qid = created["ID"]
    listed = c.query.list()
    assert [q["ID"] for q in listed] == [qid], listed
    got = c.query.get(qid)
    assert got[0]["Name"] == "py-web" and got[0]["Service"]["Failover"]["NearestN"] == 1, got
    assert got[0]["DNS"]["TTL"] == "7s" and got[0]["Service"]["Tags"] == ["v1"], got
    ran = c.query.execute("py-web")
    assert ran["Service"] == "pyweb" and ran["Failovers"] == 0, ran
    assert [n["Service"]["Port"] for n in ran["Nodes"]] == [8080], ran
    assert c.query.execute("py-web-extra")["Service"] == "pyweb", "the template's prefix matches"
    explained = c.query.explain("py-web")
    assert explained["Query"]["ID"] == qid, explained
    # A plain (non-template) query, made over the API, executes by ID too.
    body = json.dumps({"Name": "py-plain", "Service": {"Service": "pyweb"}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{c.http.port}/v1/query", data=body, method="POST")
    plain = json.load(urllib.request.urlopen(req))["ID"]
    ran = c.query.execute(plain, limit=1)
    assert len(ran["Nodes"]) == 1 and ran["Datacenter"] == "dc1", ran
    try:
        c.query.create("pyweb", name="py-web")
        raise AssertionError("a duplicate name must be refused")
    except consul.ConsulException as e:
        assert "aliases an existing query name" in str(e), e
    # py-consul turns the 404 for an unknown ID into None.
    assert c.query.get("11111111-2222-3333-4444-555555555555") is None
    assert c.query.delete(qid) is True
    assert c.query.delete(plain) is True
    assert c.query.list() == []


def check_health_notes(c):
    c.agent.service.register("pyhealth", check=consul.Check.ttl("30s"))
    for verb, note, status in (("ttl_pass", "all good", "passing"),
                               ("ttl_warn", "slow", "warning"),
                               ("ttl_fail", "broken", "critical")):
        getattr(c.agent.check, verb)("service:pyhealth", notes=note)
        deadline = time.time() + 5
        while True:
            _, checks = c.health.checks("pyhealth")
            _, nodes = c.health.service("pyhealth")
            in_service = [x["Output"] for x in nodes[0]["Checks"] if x["CheckID"] == "service:pyhealth"]
            if checks and checks[0]["Output"] == note and checks[0]["Status"] == status and in_service == [note]:
                break
            assert time.time() < deadline, (note, checks, nodes)
            time.sleep(0.05)


def check_operator(c):
    config = c.operator.raft_config()
    assert len(config["Servers"]) == 1 and config["Servers"][0]["Leader"] is True, config
    usage = c.operator.usage()
    dc1 = usage["Usage"]["dc1"]
    assert dc1["Nodes"] == 1 and dc1["Services"] >= 1, usage
    assert dc1["BillableServiceInstances"] == dc1["ServiceInstances"] - 1, usage
    ap = c.operator.autopilot_configuration()
    assert ap["CleanupDeadServers"] is True and ap["ServerStabilizationTime"] == "10s", ap
    assert c.operator.update_autopilot_configuration(
        cleanup_dead_servers=True, server_stabilization_time="5s", cas=ap["ModifyIndex"] + 99) is False
    assert c.operator.update_autopilot_configuration(
        cleanup_dead_servers=True, server_stabilization_time="5s", last_contact_threshold="300ms",
        max_trailing_logs=100, cas=ap["ModifyIndex"]) is True
    ap2 = c.operator.autopilot_configuration()
    assert ap2["ServerStabilizationTime"] == "5s" and ap2["MaxTrailingLogs"] == 100, ap2
    assert ap2["LastContactThreshold"] == "300ms" and ap2["ModifyIndex"] > ap["ModifyIndex"], ap2
    health = c.operator.autopilot_health()
    assert health["Healthy"] is True and len(health["Servers"]) == 1, health
    try:
        c.operator.raft_transfer_leader()
        raise AssertionError("a lone server has no one to transfer leadership to")
    except consul.ConsulException as e:
        assert "Failed to transfer leadership" in str(e), e


def check_config_entries(c):
    assert c.config.set("service-defaults", "pyweb", {"Protocol": "http"}) is True
    entry = c.config.get("service-defaults", "pyweb")
    assert entry["Kind"] == "service-defaults" and entry["Protocol"] == "http", entry
    assert c.config.set("service-defaults", "pyweb", {"Protocol": "grpc"}, cas=entry["ModifyIndex"] + 9) is False
    assert c.config.set("service-defaults", "pyweb", {"Protocol": "grpc"}, cas=entry["ModifyIndex"]) is True
    assert c.config.set("proxy-defaults", "global", {"Config": {"protocol": "http"}}) is True
    listed = c.config.list("service-defaults")
    assert [e["Name"] for e in listed] == ["pyweb"] and listed[0]["Protocol"] == "grpc", listed
    assert [e["Name"] for e in c.config.list("service-defaults", filter_expr='Protocol == "http"')] == []
    try:
        c.config.set("proxy-defaults", "not-global")
        raise AssertionError("proxy-defaults must be named global")
    except consul.ConsulException as e:
        assert "only \"global\" is supported" in str(e), e
    current = c.config.get("service-defaults", "pyweb")
    assert c.config.delete("service-defaults", "pyweb", cas=current["ModifyIndex"] + 1) is False
    assert c.config.delete("service-defaults", "pyweb") is True
    assert c.config.list("service-defaults") == []


MGMT = "5e6d3c0a-7f1b-4c2d-9e8f-0a1b2c3d4e5f"


def es256_key(tmp):
    """An ECDSA P-256 key made by openssl: (private PEM path, public PEM text)."""
    key = os.path.join(tmp, "jwt-key.pem")
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                    "-out", key], check=True, capture_output=True)
    public = subprocess.run(["openssl", "ec", "-in", key, "-pubout"], check=True,
                            capture_output=True, text=True).stdout
    return key, public


def es256_jwt(key, claims):
    """A JWT signed with openssl: its DER signature turned into JOSE's r || s."""
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    head = b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=head + b"." + body,
                         check=True, capture_output=True).stdout
    rlen = der[3]
    r = der[4:4 + rlen]
    s = der[6 + rlen:6 + rlen + der[5 + rlen]]
    sig = r.lstrip(b"\0").rjust(32, b"\0") + s.lstrip(b"\0").rjust(32, b"\0")
    return (head + b"." + body + b"." + b64(sig)).decode()


def check_auth_methods(c, anon):
    """JWT auth methods, binding rules, login and logout through py-consul."""
    tmp = tempfile.mkdtemp()
    key, public = es256_key(tmp)
    config = {"JWTValidationPubKeys": [public], "BoundAudiences": ["py"],
              "ClaimMappings": {"sub": "name"}}
    m = c.acl.auth_method.create("py-jwt", "jwt", description="py", config=config,
                                 max_token_ttl="5m")
    assert m["Name"] == "py-jwt" and m["MaxTokenTTL"] == "5m0s", m
    assert [x["Name"] for x in c.acl.auth_method.list()] == ["py-jwt"]
    m = c.acl.auth_method.update("py-jwt", "jwt", description="py2", config=config)
    assert c.acl.auth_method.read("py-jwt")["Description"] == "py2", m
    rule = c.acl.binding_rule.create("py-jwt", "service", "${value.name}",
                                     selector='value.name != ""')
    assert rule["BindName"] == "${value.name}" and rule["ID"], rule
    assert [r["ID"] for r in c.acl.binding_rule.list(auth_method="py-jwt")] == [rule["ID"]]
    rule = c.acl.binding_rule.update(rule["ID"], "py-jwt", "service", "${value.name}",
                                     description="svc")
    assert c.acl.binding_rule.read(rule["ID"])["Description"] == "svc"
    now = int(time.time())
    bearer = es256_jwt(key, {"sub": "pyweb", "aud": "py", "iat": now, "exp": now + 60})
    logged = anon.acl.login("py-jwt", bearer, meta={"from": "py"})
    assert logged["AuthMethod"] == "py-jwt" and logged["Local"] is True, logged
    assert logged["ServiceIdentities"] == [{"ServiceName": "pyweb"}], logged
    assert anon.acl.logout(logged["SecretID"]) is True
    for call, why in [
        (lambda: anon.acl.login("nope", bearer), "ACL not found"),
        (lambda: anon.acl.logout(MGMT), "Permission denied"),
    ]:
        try:
            call()
            raise AssertionError(f"expected a refusal: {why}")
        except consul.ACLPermissionDenied as e:
            assert why in str(e), e
    try:
        anon.acl.login("py-jwt", "not-a-jwt")
        raise AssertionError("a bad bearer token must be refused")
    except consul.ConsulException as e:
        assert "error parsing token" in str(e), e
    assert c.acl.binding_rule.delete(rule["ID"]) is True
    assert c.acl.auth_method.delete("py-jwt") is True
    assert c.acl.auth_method.list() == []


def check_acl(binary):
    """ACLs on with default deny, through py-consul's ACL API."""
    cfg = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    json.dump({"acl": {"enabled": True, "default_policy": "deny",
                       "tokens": {"initial_management": MGMT}}}, cfg)
    cfg.close()
    proc, c, log = start_agent(binary, f"-config-file={cfg.name}", token=MGMT)
    anon = consul.Consul(host=c.http.host, port=c.http.port)
    try:
        me = c.acl.token.read_self()
        assert me["Policies"][0]["Name"] == "global-management", me
        # initial_management used up the bootstrap, as Consul's does.
        try:
            anon.acl.bootstrap()
            raise AssertionError("a second bootstrap must be refused")
        except consul.ACLPermissionDenied as e:
            assert "ACL bootstrap no longer allowed" in str(e), e
        try:
            anon.kv.put("py/x", "1")
            raise AssertionError("an anonymous write must be refused")
        except consul.ACLPermissionDenied as e:
            assert "Permission denied" in str(e), e
        # py-consul sends rules as JSON.
        policy = c.acl.policy.create("py-kv", rules={"key_prefix": {"py/": {"policy": "write"}}})
        assert policy["Name"] == "py-kv" and policy["ID"], policy
        assert "py-kv" in [p["Name"] for p in c.acl.policy.list()]
        role = c.acl.role.create("py-role", policies_name=["py-kv"])
        assert c.acl.role.read_by_name("py-role")["ID"] == role["ID"]
        token = c.acl.token.create(description="py", roles_name=["py-role"])
        user = consul.Consul(host=c.http.host, port=c.http.port, token=token["SecretID"])
        assert user.kv.put("py/x", "1") is True
        try:
            user.kv.put("other/x", "1")
            raise AssertionError("a write outside the policy must be refused")
        except consul.ACLPermissionDenied:
            pass
        copy = c.acl.token.clone(token["AccessorID"], description="py copy")
        assert copy["SecretID"] != token["SecretID"] and copy["Description"] == "py copy"
        listed = [t["AccessorID"] for t in c.acl.token.list()]
        assert token["AccessorID"] in listed and copy["AccessorID"] in listed, listed
        assert c.acl.token.delete(copy["AccessorID"]) is True
        try:
            c.acl.token.read(copy["AccessorID"])
            raise AssertionError("a deleted token must be gone")
        except consul.ACLPermissionDenied as e:
            assert "ACL not found" in str(e), e
        tps = c.acl.templated_policy.list()
        assert sorted(tps) == ["builtin/dns", "builtin/node", "builtin/service"], tps
        assert "{{.Name}}" in c.acl.templated_policy.read("builtin/service")["Template"]
        preview = c.acl.templated_policy.preview("builtin/service", {"Name": "api"})
        assert 'service "api"' in preview["Rules"], preview
        templated = c.acl.token.create(
            templated_policies=[{"builtin/service": {"Name": "pyweb"}}])
        assert templated["TemplatedPolicies"][0]["TemplateName"] == "builtin/service", templated
        check_auth_methods(c, anon)
        assert c.agent.token.set("default", token["SecretID"]) is True
        _, entry = anon.kv.get("py/x")
        assert entry["Value"] == b"1", entry
        try:
            user.acl.policy.create("sneaky")
            raise AssertionError("a key token must not manage ACLs")
        except consul.ACLPermissionDenied:
            pass
    except Exception:
        print(open(log).read(), file=sys.stderr)
        raise
    finally:
        proc.kill()
        proc.wait()
        os.unlink(log)
        os.unlink(cfg.name)


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/cairn"
    proc, c, log = start_agent(binary)
    try:
        checks = (check_kv, check_blocking, check_health_notes, check_sessions, check_txn,
                  check_queries, check_operator, check_config_entries)
        for check in checks:
            check(c)
            print(f"ok   {check.__name__}")
    except Exception:
        print(open(log).read(), file=sys.stderr)
        raise
    finally:
        proc.kill()
        proc.wait()
        os.unlink(log)
    check_acl(binary)
    print("ok   check_acl")
    print("py-consul: all checks passed")


if __name__ == "__main__":
    main()
