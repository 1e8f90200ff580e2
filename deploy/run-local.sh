#!/usr/bin/env bash
# Local demo stack: three sample backends and one gateway, in the foreground.
# Ctrl-C stops everything (the gateway drains first).
#
#   client port  127.0.0.1:7000  (TCP frames, WebSocket /v1/ws, HTTP /v1/call/{service})
#   ops port     127.0.0.1:9100  (/health, /ready, /metrics)
#
# Try:  curl -s -XPOST localhost:7000/v1/call/account -H 'x-user-id: 42' -d whoami
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/env
cargo build --release --locked -p gateway --bins
BIN="$CARGO_TARGET_DIR/release"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for spec in account-a:7101 account-b:7102 realm-1:7201 realm-2:7202; do
  "$BIN/sample-backend" --listen "127.0.0.1:${spec#*:}" --name "${spec%%:*}" &
  pids+=($!)
done
"$BIN/gateway" --config deploy/gateway.local.yaml &
pids+=($!)
echo "demo running; try: curl -s -XPOST localhost:7000/v1/call/account -H 'x-user-id: 42' -d whoami"
wait "${pids[-1]}"
