#!/usr/bin/env bash
# WEFT_ATTACH_CMD for shared/bench/flow-overhead/run.sh: runs weft-agent (release) in the
# current (host) namespace, attached to the interfaces given as arguments, in the
# foreground until SIGTERM. No controller is reachable: the agent keeps observing and
# counts what it cannot send, as in production during an outage.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${WEFT_AGENT_BIN:-$HERE/target/release/weft-agent}
[ -x "$BIN" ] || { echo "build it first: cargo build --release -p weft-agent" >&2; exit 2; }
args=()
for i in "$@"; do args+=(--interfaces "$i"); done
# The harness starts this under `ip netns exec`, which makes a mount namespace of its own
# and remounts /sys there: the agent's node supervisor then finds no cgroup hierarchy and
# the agent refuses to start. Mount the cgroup v1 hierarchies again in that private
# namespace (the host's mounts are not touched); cgroup v2 hosts need nothing.
if [ ! -e /sys/fs/cgroup/cgroup.controllers ] && ! mountpoint -q /sys/fs/cgroup/cpu; then
  mountpoint -q /sys/fs/cgroup || mount -t tmpfs -o mode=755 cgroup_root /sys/fs/cgroup
  while read -r name hier _ enabled; do
    case "$name" in \#*) continue ;; esac
    [ "$enabled" = 1 ] && [ "$hier" != 0 ] || continue
    mkdir -p "/sys/fs/cgroup/$name"
    mount -t cgroup -o "$name" cgroup "/sys/fs/cgroup/$name" 2>/dev/null || rmdir "/sys/fs/cgroup/$name"
  done < /proc/cgroups
fi
exec "$BIN" --host-id bench --controller http://127.0.0.1:9 --insecure --metrics-listen 127.0.0.1:0 \
  --log warn "${args[@]}"
