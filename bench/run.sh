#!/usr/bin/env bash
# Cairn benchmarks. Builds release binaries, starts what it measures on free loopback
# ports, drives it with `cairn-bench`, prints one line per measurement, and stops it all.
#
#   bash bench/run.sh dns    # DNS queries/s for web.service.consul (A and SRV), and dnsperf if installed
#   bash bench/run.sh http   # /v1/health/service/web?passing reads/s
#   bash bench/run.sh kv     # KV puts and gets at 1, 16, 64 clients; etcd side by side if installed
#   bash bench/run.sh acl    # KV reads with ACLs on (default deny, a key_prefix token) vs off,
#                            # at 1 and 64 clients, with the on/off ratio
#   bash bench/run.sh raft   # the same against 3 Raft servers and a 3-member etcd, with Cairn/etcd ratios,
#                            # then ?consistent against default reads on the leader
#   bash bench/run.sh wan    # a KV read in dc2 directly vs the same read from dc1 (?dc=dc2) through
#                            # one WAN router per side, at 1, 16, 64 clients, with cross/in-DC ratios;
#                            # then a prepared query executed locally vs after one failover
#   bash bench/run.sh blocking  # WATCHERS (10000) idle blocking queries on a dev agent: RSS per query,
#                            # wake-up p50/p99 of one write to their key, RSS after they close
#   bash bench/run.sh all    # everything (default)
#
# Optional peers and tools: `apt-get install etcd-server dnsperf`. Set SECONDS_PER_RUN to
# change the length of each measurement (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
secs=${SECONDS_PER_RUN:-10}
instances=${INSTANCES:-50}

cargo build --release --quiet --bin cairn --bin cairn-bench --bin cairn-wan-router
cairn=$PWD/target/release/cairn
router=$PWD/target/release/cairn-wan-router
bench=target/release/cairn-bench
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_cairn() {
  http_port=$(free_port); dns_port=$(free_port)
  "$cairn" agent -dev -log-level=warn -http-port="$http_port" -dns-port="$dns_port" -node=bench \
    >"$work/cairn.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$http_port/v1/status/leader" >/dev/null && return 0
    sleep 0.1
  done
  echo "cairn did not start:"; cat "$work/cairn.log"; exit 1
}

register_web() {
  for i in $(seq "$instances"); do
    curl -sf -X PUT "http://127.0.0.1:$http_port/v1/catalog/register" -d "{
      \"Node\": \"web-node-$i\", \"Address\": \"10.0.$((i / 250)).$((i % 250 + 1))\",
      \"Service\": {\"Service\": \"web\", \"Port\": 8080},
      \"Check\": {\"CheckID\": \"web-$i\", \"Name\": \"web\", \"ServiceID\": \"web\", \"Status\": \"passing\"}
    }" >/dev/null
  done
}

bench_dns() {
  echo "== DNS ($instances instances of web, ${secs}s per run)"
  for c in 1 16 64; do
    "$bench" --concurrency "$c" --seconds "$secs" dns "127.0.0.1:$dns_port" web.service.consul --qtype A
  done
  "$bench" --concurrency 16 --seconds "$secs" dns "127.0.0.1:$dns_port" web.service.consul --qtype SRV
  if command -v dnsperf >/dev/null; then
    printf 'web.service.consul A\nweb.service.consul SRV\n' >"$work/queries"
    dnsperf -s 127.0.0.1 -p "$dns_port" -d "$work/queries" -l "$secs" -c 16 -Q 1000000 \
      | grep -E "Queries per second|Average Latency"
  fi
}

bench_http() {
  echo "== HTTP /v1/health/service/web?passing ($instances instances, ${secs}s per run)"
  for c in 1 16 64; do
    "$bench" --concurrency "$c" --seconds "$secs" http "127.0.0.1:$http_port" '/v1/health/service/web?passing'
  done
}

bench_kv() {
  echo "== KV (128-byte values, ${secs}s per run)"
  etcd_port=""
  if command -v etcd >/dev/null; then
    etcd_port=$(free_port); peer_port=$(free_port)
    etcd --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
      --advertise-client-urls "http://127.0.0.1:$etcd_port" \
      --listen-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-cluster "default=http://127.0.0.1:$peer_port" >"$work/etcd.log" 2>&1 &
    pids+=($!)
    sleep 2
  fi
  for c in 1 16 64; do
    "$bench" --concurrency "$c" --seconds "$secs" kv "127.0.0.1:$http_port"
    if [ -n "$etcd_port" ]; then
      "$bench" --concurrency "$c" --seconds "$secs" kv "127.0.0.1:$etcd_port" --etcd
    fi
  done
}

wait_http() { # url log
  for _ in $(seq 300); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "not ready: $1"; cat "$2"; exit 1
}

# Three Cairn servers on 127.0.0.11-13 and three etcd members on 127.0.0.21-23, all with
# fsync on every commit; both are driven through member 1 with the same workload.
bench_raft() {
  command -v etcd >/dev/null || { echo "raft benchmark needs etcd (apt-get install etcd-server)"; exit 1; }
  echo "== 3-server Raft KV vs 3-member etcd (128-byte values, ${secs}s per run)"
  for i in 1 2 3; do
    ip=127.0.0.1$i
    join=(); [ "$i" -gt 1 ] && join=(-retry-join=127.0.0.11 -retry-interval=1s)
    "$cairn" agent -server -bootstrap-expect=3 -raft-multiplier=1 -log-level=warn -node="bench$i" \
      -data-dir="$work/cairn$i" -bind=$ip -client=$ip -dns-port=-1 "${join[@]}" >"$work/cairn$i.log" 2>&1 &
    pids+=($!)
  done
  cluster=""
  for i in 1 2 3; do cluster+="e$i=http://127.0.0.2$i:2380,"; done
  for i in 1 2 3; do
    ip=127.0.0.2$i
    etcd --name "e$i" --data-dir "$work/etcd$i" --listen-client-urls "http://$ip:2379" \
      --advertise-client-urls "http://$ip:2379" --listen-peer-urls "http://$ip:2380" \
      --initial-advertise-peer-urls "http://$ip:2380" --initial-cluster "${cluster%,}" \
      --initial-cluster-state new >"$work/etcd$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 300); do
    [ "$(curl -s -XPUT 127.0.0.11:8500/v1/kv/bench-ready -d x)" = true ] && break
    sleep 0.1
  done
  wait_http "http://127.0.0.21:2379/health" "$work/etcd1.log"
  # Group commit at work: log fsyncs per acknowledged put, from each server's counter.
  fsyncs() {
    for i in 1 2 3; do
      curl -s "127.0.0.1$i:8500/v1/agent/metrics?format=prometheus" |
        awk '/^cairn_raft_log_fsyncs_total/ {n = $2} END {print n + 0}'
    done | paste -sd' '
  }
  leader=$(curl -s 127.0.0.11:8500/v1/status/leader | tr -d '"')
  for c in 1 16 64; do
    before=$(fsyncs)
    "$bench" --concurrency "$c" --seconds "$secs" kv "127.0.0.11:8500" | tee -a "$work/raft.out" | tee "$work/last.out"
    after=$(fsyncs)
    python3 - "$before" "$after" "$work/last.out" "$leader" "$c" <<'PY'
import re, sys
before, after = (list(map(float, a.split())) for a in sys.argv[1:3])
puts = next(int(m[1]) for m in (re.match(r"cairn kv put .*: (\d+) ok", l) for l in open(sys.argv[3])) if m)
leader = sys.argv[4].split(":")[0]
per = [f"{'leader' if f'127.0.0.1{i + 1}' == leader else 'follower'} {(a - b) / max(puts, 1):.3f}"
       for i, (b, a) in enumerate(zip(before, after))]
print(f"fsyncs per acknowledged put c={sys.argv[5]}: " + ", ".join(per) + "  (puts and gets; gets fsync nothing)")
PY
    "$bench" --concurrency "$c" --seconds "$secs" kv "127.0.0.21:2379" --etcd | tee -a "$work/raft.out"
  done
  echo "== ratios Cairn/etcd (throughput: higher is better for Cairn; latency: lower is better)"
  python3 - "$work/raft.out" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(cairn|etcd) kv (put|get) c=(\d+): .* ([\d.]+) ops/s, p50 ([\d.]+) ms, p99 ([\d.]+) ms", line)
    if m:
        rows[(m[1], m[2], int(m[3]))] = tuple(float(x) for x in m.group(4, 5, 6))
for (who, op, c), (tput, p50, p99) in sorted(rows.items()):
    if who != "cairn" or ("etcd", op, c) not in rows:
        continue
    et, e50, e99 = rows[("etcd", op, c)]
    r = lambda a, b: f"{a / b:.2f}" if b else "n/a"
    print(f"{op} c={c}: throughput x{r(tput, et)}, p50 x{r(p50, e50)}, p99 x{r(p99, e99)}")
PY
  # ?consistent against default reads of one key on the leader: what a read-index round
  # costs once reads share rounds.
  leader_http=${leader%:*}:8500
  echo "== ?consistent vs default reads on the leader ($leader_http)"
  for c in 1 64; do
    "$bench" --concurrency "$c" --seconds "$secs" http "$leader_http" "/v1/kv/bench/0/0" | tee "$work/def.out"
    "$bench" --concurrency "$c" --seconds "$secs" http "$leader_http" "/v1/kv/bench/0/0?consistent" | tee "$work/con.out"
    python3 - "$work/def.out" "$work/con.out" "$c" <<'PY'
import re, sys
ops = [float(re.search(r"([\d.]+) ops/s", open(f).read())[1]) for f in sys.argv[1:3]]
print(f"consistent/default c={sys.argv[3]}: x{ops[1] / ops[0]:.2f}")
PY
  done
}

# Two datacenters of one server and one router each, on 127.0.7.x and 127.0.8.x. The same
# key is read in dc2 directly and from dc1 with ?dc=dc2 (server → router → QUIC → router →
# server and back); the added latency and the throughput ratio are what forwarding costs.
bench_wan() {
  echo "== cross-datacenter reads: GET /v1/kv/bench in dc2, directly and from dc1 (${secs}s per run)"
  (cd "$work" && "$cairn" tls ca create >/dev/null && "$cairn" tls cert create -server -dc dc1 >/dev/null \
    && "$cairn" tls cert create -server -dc dc2 >/dev/null)
  for k in 1 2; do
    ip=127.0.$((6 + k)).1
    "$cairn" agent -server -bootstrap -log-level=warn -datacenter="dc$k" -node=s1 -data-dir="$work/dc$k" \
      -bind=$ip -client=$ip -dns-port=-1 >"$work/dc$k.log" 2>&1 &
    pids+=($!)
    join=(); [ "$k" = 2 ] && join=(-retry-join-wan 127.0.7.11 -retry-interval-wan 1s)
    "$router" -dc "dc$k" -node s1 -bind 127.0.$((6 + k)).11 -join-lan $ip "${join[@]}" -log-level warn \
      -ca-file "$work/consul-agent-ca.pem" -cert-file "$work/dc$k-server-consul-0.pem" \
      -key-file "$work/dc$k-server-consul-0-key.pem" >"$work/router$k.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 300); do
    [ "$(curl -s -XPUT '127.0.8.1:8500/v1/kv/bench' -d "$(head -c 128 /dev/zero | tr '\0' x)")" = true ] && break
    sleep 0.1
  done
  wait_http "http://127.0.7.1:8500/v1/kv/bench?dc=dc2" "$work/router1.log"
  for c in 1 16 64; do
    "$bench" --concurrency "$c" --seconds "$secs" http 127.0.8.1:8500 /v1/kv/bench | tee -a "$work/wan.out"
    "$bench" --concurrency "$c" --seconds "$secs" http 127.0.7.1:8500 '/v1/kv/bench?dc=dc2' | tee -a "$work/wan.out"
  done
  echo "== cross-DC / in-DC (throughput: higher is better; added latency: lower is better)"
  python3 - "$work/wan.out" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"http GET (\S+) c=(\d+): .* ([\d.]+) ops/s, p50 ([\d.]+) ms, p99 ([\d.]+) ms", line)
    if m:
        rows[("cross" if "dc=" in m[1] else "in", int(m[2]))] = tuple(float(x) for x in m.group(3, 4, 5))
for c in sorted({c for _, c in rows}):
    if ("in", c) not in rows or ("cross", c) not in rows:
        continue
    (it, i50, i99), (ct, c50, c99) = rows[("in", c)], rows[("cross", c)]
    print(f"c={c}: throughput x{ct / it:.2f}, p50 +{(c50 - i50) * 1000:.0f} us, p99 +{(c99 - i99) * 1000:.0f} us")
PY
  # A prepared query for `web` (registered in dc2 only), executed in dc2 where it answers
  # locally, and in dc1 where it fails over to dc2 once.
  curl -sf -XPUT 127.0.8.1:8500/v1/catalog/register -d '{"Node":"web1","Address":"10.0.0.1",
    "Service":{"Service":"web","Port":80}}' >/dev/null
  for ip in 127.0.7.1 127.0.8.1; do
    curl -sf -XPOST "$ip:8500/v1/query" -d '{"Name":"geo","Service":{"Service":"web","Failover":{"NearestN":1}}}' >/dev/null
  done
  curl -s 127.0.7.1:8500/v1/query/geo/execute | grep -q '"Failovers":1' || { echo "no failover"; exit 1; }
  echo "== prepared query execute: local (dc2) vs one failover (dc1 -> dc2)"
  for c in 1 16; do
    printf 'local     '
    "$bench" --concurrency "$c" --seconds "$secs" http 127.0.8.1:8500 /v1/query/geo/execute
    printf 'failover  '
    "$bench" --concurrency "$c" --seconds "$secs" http 127.0.7.1:8500 /v1/query/geo/execute
  done
}

# The cost of ACLs on a KV read: the same key read at 1 and 64 clients from a dev agent
# without ACLs and from one with default deny, whose default token (used for requests
# without one, so the path is the same as a client's own token) holds a key_prefix policy.
bench_acl() {
  echo "== KV reads with ACLs (default deny, a key_prefix token) vs without (${secs}s per run)"
  local mgmt=11111111-2222-3333-4444-555555555555
  acl_port=$(free_port)
  printf '{"acl":{"enabled":true,"default_policy":"deny","tokens":{"initial_management":"%s"}}}' \
    "$mgmt" >"$work/acl.json"
  "$cairn" agent -dev -log-level=warn -http-port="$acl_port" -dns-port=-1 -node=bench-acl \
    -server-port="$(free_port)" -serf-lan-port="$(free_port)" \
    -config-file="$work/acl.json" >"$work/cairn-acl.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$acl_port/v1/status/leader" "$work/cairn-acl.log"
  local h=(-sf -H "X-Consul-Token: $mgmt")
  sleep 1
  curl "${h[@]}" -X PUT "127.0.0.1:$acl_port/v1/acl/policy" \
    -d '{"Name":"bench","Rules":"key_prefix \"bench/\" { policy = \"write\" }"}' >/dev/null
  local token
  token=$(curl "${h[@]}" -X PUT "127.0.0.1:$acl_port/v1/acl/token" -d '{"Policies":[{"Name":"bench"}]}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["SecretID"])')
  curl "${h[@]}" -X PUT "127.0.0.1:$acl_port/v1/agent/token/default" -d "{\"Token\":\"$token\"}" >/dev/null
  for port in "$http_port" "$acl_port"; do
    curl -sf -X PUT "127.0.0.1:$port/v1/kv/bench/x" -d value >/dev/null
  done
  for c in 1 64; do
    "$bench" --concurrency "$c" --seconds "$secs" http "127.0.0.1:$http_port" /v1/kv/bench/x | tee "$work/off.out"
    "$bench" --concurrency "$c" --seconds "$secs" http "127.0.0.1:$acl_port" /v1/kv/bench/x | tee "$work/on.out"
    python3 - "$work/off.out" "$work/on.out" "$c" <<'PY'
import re, sys
ok, ops = [], []
for f in sys.argv[1:3]:
    t = open(f).read()
    ok.append(int(re.search(r"(\d+) errors", t)[1]) == 0)
    ops.append(float(re.search(r"([\d.]+) ops/s", t)[1]))
assert all(ok), "errors in a run"
print(f"acl on/off c={sys.argv[3]}: x{ops[1] / ops[0]:.2f}")
PY
  done
}

# Idle blocking queries: what each costs the agent in memory, whether it is given back,
# and how fast one write wakes every watcher of its key (and no other).
bench_blocking() {
  local n=${WATCHERS:-10000}
  echo "== $n idle blocking queries on one dev agent"
  "$bench" blocking "127.0.0.1:$http_port" --pid "${pids[-1]}" --watchers "$n"
}

if [ "$what" = raft ]; then
  bench_raft
  exit 0
fi
if [ "$what" = wan ]; then
  bench_wan
  exit 0
fi
# The agent and the load generator hold one socket per blocking query.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
start_cairn
case "$what" in
  dns) register_web; bench_dns ;;
  http) register_web; bench_http ;;
  kv) bench_kv ;;
  acl) bench_acl ;;
  blocking) bench_blocking ;;
  all) register_web; bench_dns; bench_http; bench_kv; bench_acl; bench_blocking ;;
  *) echo "usage: $0 [dns|http|kv|acl|blocking|raft|wan|all]"; exit 2 ;;
esac
