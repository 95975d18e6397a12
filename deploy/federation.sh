#!/usr/bin/env bash
# Starts (or stops) a federation of datacenters on this machine's loopback addresses:
# per datacenter 3 Raft servers, a WAN router beside each and one client agent, with a CA
# and certificates made by `cairn tls`.
#
#   deploy/federation.sh up DIR [-dcs 2]    start, wait until every datacenter sees the
#                                           others, print where everything listens
#   deploy/federation.sh down DIR           stop everything `up` started in DIR
#
# Datacenter k lives on 127.(10+k).0.x: servers .1-.3, routers .11-.13, the client .21,
# each on Consul's default ports (every process has an address of its own). Binaries come
# from $CAIRN_BIN_DIR, else target/release or target/debug of this checkout, else $PATH.
set -euo pipefail

usage() {
  echo "usage: $0 up DIR [-dcs N] | down DIR" >&2
  exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
shift 2
dcs=2
while [ $# -gt 0 ]; do
  case $1 in
    -dcs | --dcs) dcs=${2:?-dcs needs a number}; shift 2 ;;
    -dcs=* | --dcs=*) dcs=${1#*=}; shift ;;
    *) usage ;;
  esac
done
case $dcs in [1-9]) ;; *) echo "-dcs must be 1 to 9" >&2; exit 2 ;; esac

find_bins() {
  local here
  here=$(cd "$(dirname "$0")/.." && pwd)
  for d in "${CAIRN_BIN_DIR:-}" "$here/target/release" "$here/target/debug"; do
    if [ -n "$d" ] && [ -x "$d/cairn" ] && [ -x "$d/cairn-wan-router" ]; then
      d=$(cd "$d" && pwd)
      CAIRN="$d/cairn"
      ROUTER="$d/cairn-wan-router"
      return
    fi
  done
  CAIRN=$(command -v cairn) || true
  ROUTER=$(command -v cairn-wan-router) || true
  if [ -z "$CAIRN" ] || [ -z "$ROUTER" ]; then
    echo "cairn and cairn-wan-router not found: run 'cargo build --release --bins' first" >&2
    exit 1
  fi
}

ip_of() { echo "127.$((10 + $1)).0.$2"; }

start() { # name, command...
  local name=$1
  shift
  "$@" >"$dir/logs/$name.log" 2>&1 &
  echo "$! $name" >>"$dir/pids"
}

wait_for() { # what, seconds, command...
  local what=$1 secs=$2
  shift 2
  for _ in $(seq $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "timed out waiting for $what (logs in $dir/logs)" >&2
  return 1
}

# Whether the client agent at $1 lists every datacenter.
sees_all() {
  local body
  body=$(curl -sf "http://$1:8500/v1/catalog/datacenters") || return 1
  for j in $(seq "$dcs"); do
    grep -q "\"dc$j\"" <<<"$body" || return 1
  done
}

up() {
  find_bins
  if [ -s "$dir/pids" ]; then
    echo "$dir already holds a running federation; '$0 down $dir' first" >&2
    exit 1
  fi
  mkdir -p "$dir/logs" "$dir/certs" "$dir/data"
  dir=$(cd "$dir" && pwd)
  : >"$dir/pids"
  (cd "$dir/certs" && "$CAIRN" tls ca create >/dev/null)
  for k in $(seq "$dcs"); do
    local dc=dc$k
    for i in 1 2 3; do
      local ip
      ip=$(ip_of "$k" "$i")
      start "$dc-s$i" "$CAIRN" agent -server -bootstrap-expect=3 -datacenter="$dc" \
        -node="s$i" -bind="$ip" -client="$ip" -data-dir="$dir/data/$dc-s$i" \
        -retry-join="$(ip_of "$k" 1)" -retry-interval=1s
      (cd "$dir/certs" && "$CAIRN" tls cert create -server -dc "$dc" -node "s$i" >"$dc-s$i.out")
      local cert key
      cert=$(sed -n 's/^==> Saved \(.*[0-9]\.pem\)$/\1/p' "$dir/certs/$dc-s$i.out")
      key=${cert%.pem}-key.pem
      local join_wan=()
      [ "$k" -gt 1 ] && [ "$i" = 1 ] && join_wan=(-retry-join-wan "$(ip_of 1 11)")
      start "$dc-r$i" "$ROUTER" -dc "$dc" -node "s$i" -bind "$(ip_of "$k" $((10 + i)))" \
        -join-lan "$ip" "${join_wan[@]}" -retry-interval-wan 2s -http-port 8501 \
        -ca-file "$dir/certs/consul-agent-ca.pem" -cert-file "$dir/certs/$cert" \
        -key-file "$dir/certs/$key"
    done
    local cip
    cip=$(ip_of "$k" 21)
    start "$dc-c1" "$CAIRN" agent -datacenter="$dc" -node=c1 -bind="$cip" -client="$cip" \
      -data-dir="$dir/data/$dc-c1" -retry-join="$(ip_of "$k" 1)" -retry-interval=1s
  done
  for k in $(seq "$dcs"); do
    wait_for "dc$k to see every datacenter" 90 sees_all "$(ip_of "$k" 21)"
  done
  printf '%-5s %-7s %-8s %-18s %-18s %s\n' DC ROLE NAME HTTP DNS WAN
  for k in $(seq "$dcs"); do
    for i in 1 2 3; do
      local ip
      ip=$(ip_of "$k" "$i")
      printf '%-5s %-7s %-8s %-18s %-18s %s\n' "dc$k" server "s$i" "$ip:8500" "$ip:8600" -
    done
    for i in 1 2 3; do
      local ip
      ip=$(ip_of "$k" $((10 + i)))
      printf '%-5s %-7s %-8s %-18s %-18s %s\n' "dc$k" router "s$i.dc$k" "$ip:8501" - "$ip:8302/udp"
    done
    local cip
    cip=$(ip_of "$k" 21)
    printf '%-5s %-7s %-8s %-18s %-18s %s\n' "dc$k" client c1 "$cip:8500" "$cip:8600" -
  done
  echo
  echo "try: CAIRN_HTTP_ADDR=$(ip_of 1 21):8500 $CAIRN catalog services -datacenter=dc2"
  echo "     dig @$(ip_of 1 21) -p 8600 consul.service.dc2.consul SRV"
  echo "stop: $0 down $dir"
}

down() {
  [ -f "$dir/pids" ] || { echo "nothing started in $dir" >&2; exit 0; }
  local pids=()
  while read -r pid _; do pids+=("$pid"); done <"$dir/pids"
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    local left=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
    [ $left = 0 ] && break
    sleep 0.1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
  : >"$dir/pids"
  echo "stopped ${#pids[@]} processes"
}

case $cmd in
  up) up ;;
  down) down ;;
  *) usage ;;
esac
