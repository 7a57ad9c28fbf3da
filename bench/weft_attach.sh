#!/usr/bin/env bash
# WEFT_ATTACH_CMD for bench/flow-reference/run.sh (the flow-overhead harness): runs weft-agent (release) in the
# current (host) namespace, attached to the interfaces given as arguments, in the
# foreground until SIGTERM. No controller is reachable: the agent keeps observing and
# counts what it cannot send, as in production during an outage.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${WEFT_AGENT_BIN:-$HERE/target/release/weft-agent}
[ -x "$BIN" ] || { echo "build it first: cargo build --release -p weft-agent" >&2; exit 2; }
args=()
for i in "$@"; do args+=(--interfaces "$i"); done
# The harness starts this under `ip netns exec`, which remounts /sys in a mount namespace
# of its own: no cgroup hierarchy is visible there. The agent only observes here, so it
# starts anyway (it logs that node processes cannot run on this host).
exec "$BIN" --host-id bench --controller http://127.0.0.1:9 --insecure --metrics-listen 127.0.0.1:0 \
  --log warn "${args[@]}"
