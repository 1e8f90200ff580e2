#!/usr/bin/env bash
# The whole system on this machine, in the foreground: a private Redis, the
# control plane, two gateways in control-plane mode and four sample
# backends; the routing bundle deploy/routing.local.yaml applied with gwctl,
# and a gwctl context so plain `gwctl fleet list` works. Ctrl-C (or SIGTERM)
# stops everything it started (gateways drain first). `--standalone` runs the
# older demo: one gateway with its routes in a file, no control plane.
#
#   ./deploy/run-local.sh               # ports below (GG_BASE=7000)
#   GG_BASE=17000 ./deploy/run-local.sh # every port shifted by +10000
#
# Environment: GG_BASE (port base), GG_DIR (state: Redis data, configs,
# logs, snapshots; default target/local), GG_BIN (prebuilt binaries; default:
# build release), GWCTL_CONFIG (where the context is written; default
# $XDG_CONFIG_HOME/gwctl/config.yaml, or ~/.config/gwctl/config.yaml — an
# existing file is left alone and the context written beside the state).
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/env
B=${GG_BASE:-7000}
if [ -z "${GG_BIN:-}" ]; then
  cargo build --release --locked -p gateway -p gg-backend -p controlplane -p gwctl --bins
  GG_BIN="$CARGO_TARGET_DIR/release"
fi
BIN=$GG_BIN
pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped"
}
trap cleanup EXIT
trap 'exit 0' INT TERM
backends() {
  local d=$1
  for spec in account-a:$((B + 101)) account-b:$((B + 102)) realm-1:$((B + 201)) realm-2:$((B + 202)); do
    "$BIN/sample-backend" --listen "127.0.0.1:${spec#*:}" --name "${spec%%:*}" >>"$d/backends.log" 2>&1 &
    pids+=($!)
  done
}

if [ "${1:-}" = "--standalone" ]; then
  d=${GG_DIR:-$CARGO_TARGET_DIR/local-standalone}; mkdir -p "$d"
  backends "$d"
  "$BIN/gateway" --config deploy/gateway.local.yaml &
  pids+=($!)
  echo "standalone demo running; try: curl -s -XPOST localhost:7000/v1/call/account -H 'x-user-id: 42' -d whoami"
  wait "${pids[-1]}"
  exit 0
fi

command -v redis-server >/dev/null || {
  echo "redis-server not found; installing it with apt"
  $(command -v sudo || true) apt-get install -y -q redis-server >/dev/null
}
D=${GG_DIR:-$CARGO_TARGET_DIR/local}
mkdir -p "$D/redis"
RP=$((B + 379)); CP=$((B + 400)); CPO=$((B + 2400))
wait_port() {  # $1 port, $2 what
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "$2 did not start on port $1; see $D/*.log" >&2; exit 1
}
wait_ready() {  # $1 ops port, $2 what: /ready answers 200 once the first snapshot from the control plane applied
  for _ in $(seq 300); do
    (
      exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
      printf 'GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
      read -r -t 2 _ status _ <&3 && [ "$status" = 200 ]
    ) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not become ready (port $1); see $D/*.log" >&2; exit 1
}

redis-server --port "$RP" --bind 127.0.0.1 --dir "$D/redis" --save "" --appendonly yes >"$D/redis.log" 2>&1 &
pids+=($!)
wait_port "$RP" "redis-server"
cat >"$D/controlplane.yaml" <<YAML
id: cp-local
listen: 127.0.0.1:$CP
ops_listen: 127.0.0.1:$CPO
redis: { url: "redis://127.0.0.1:$RP/0" }
YAML
"$BIN/controlplane" --config "$D/controlplane.yaml" >"$D/controlplane.log" 2>&1 &
pids+=($!)
wait_port "$CP" "the control plane"
backends "$D"
for i in 0 1; do
  cat >"$D/gateway-$i.yaml" <<YAML
gateway_id: gw-local-$i
listen: 127.0.0.1:$((B + i))
ops_listen: 127.0.0.1:$((B + 2100 + i))
admin: { listen: "127.0.0.1:$((B + 2200 + i))" }
controlplane: { url: "http://127.0.0.1:$CP", snapshot_path: "$D/gateway-$i.snapshot" }
drain: { deadline_ms: 10000, spread_ms: 3000, reconnect_after_ms: 500 }
YAML
  "$BIN/gateway" --config "$D/gateway-$i.yaml" >"$D/gateway-$i.log" 2>&1 &
  pids+=($!)
done

# The context: plain gwctl talks to this stack.
ctx_file=${GWCTL_CONFIG:-${XDG_CONFIG_HOME:-$HOME/.config}/gwctl/config.yaml}
ctx_yaml="# written by deploy/run-local.sh
current_context: local
contexts:
  - name: local
    controlplane: http://127.0.0.1:$CP
    gateway: http://127.0.0.1:$((B + 2200))
"
if [ -e "$ctx_file" ] && ! grep -q "written by deploy/run-local.sh" "$ctx_file"; then
  ctx_file="$D/gwctl.yaml"
  echo "$ctx_yaml" >"$ctx_file"
  echo "(your gwctl config has other contexts; this stack's is in $ctx_file: export GWCTL_CONFIG=$ctx_file)"
else
  mkdir -p "$(dirname "$ctx_file")"
  echo "$ctx_yaml" >"$ctx_file"
fi
export GWCTL_CONFIG=$ctx_file

# The routing bundle, with its ports shifted to this base.
bundle="$D/routing.yaml"
: >"$bundle"
while IFS= read -r line; do
  while [[ $line =~ (.*)127\.0\.0\.1:([0-9]+)(.*) ]]; do
    line="${BASH_REMATCH[1]}127.0.0.1:@$((BASH_REMATCH[2] - 7000 + B))${BASH_REMATCH[3]}"
  done
  echo "${line//@/}" >>"$bundle"
done <deploy/routing.local.yaml
"$BIN/gwctl" apply -f "$bundle" --comment "run-local" >/dev/null
# Ready means connected to the control plane (so in the fleet) with a config
# applied; then no gateway may still be behind the bundle's revision.
wait_ready "$((B + 2100))" "gateway 0"; wait_ready "$((B + 2101))" "gateway 1"
# A snapshot left on disk by an earlier run makes a gateway ready before it
# has connected, so also wait for both in the fleet registry.
for _ in $(seq 300); do
  fleet=$("$BIN/gwctl" fleet list -o json 2>/dev/null || true)
  [[ $fleet == *'"gw-local-0"'* && $fleet == *'"gw-local-1"'* ]] && break
  sleep 0.1
done
"$BIN/gwctl" rollout status --wait --wait-timeout 30s >/dev/null

cat <<TXT
stack running (state and logs in $D):
  redis          127.0.0.1:$RP
  control plane  127.0.0.1:$CP (gRPC)   127.0.0.1:$CPO (ops)
  gw-local-0     127.0.0.1:$B (clients)   127.0.0.1:$((B + 2100)) (ops)   127.0.0.1:$((B + 2200)) (admin)
  gw-local-1     127.0.0.1:$((B + 1)) (clients)   127.0.0.1:$((B + 2101)) (ops)   127.0.0.1:$((B + 2201)) (admin)
  backends       account-a :$((B + 101))  account-b :$((B + 102))  realm-1 :$((B + 201))  realm-2 :$((B + 202))
try:
  curl -s -XPOST localhost:$B/v1/call/account -H 'x-user-id: 42' -d whoami
  $BIN/gwctl fleet list
  $BIN/gwctl routes list
  $BIN/gwctl routes set version --id 2 --strategy round_robin --endpoint 127.0.0.1:$((B + 102)) && $BIN/gwctl rollout status --wait
  $BIN/gwctl drain start gw-local-0 --wait     # clients move to gw-local-1
Ctrl-C stops everything.
TXT
wait
