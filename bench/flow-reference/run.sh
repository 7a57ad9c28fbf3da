#!/usr/bin/env bash
# Copied from the flow-overhead harness (shared/bench/flow-overhead/, 2026-12-06) so that
# its figures in BENCHMARKS.md can be reproduced from this repository alone; weft is
# configuration (f): WEFT_ATTACH_CMD=$PWD/../weft_attach.sh (build the release agent first).
# flow-overhead: cost of flow observers attached on the host-side veths of a
# bridge + two workload namespaces, measured side by side, interleaved in rounds.
#
# usage: ./run.sh [ROUNDS=3] [DURATION_S=8]        quick check: ./run.sh 1 3
# env:   AFO_CONFIGS="a b c d e f"  subset/order of configurations
#        AFO_STATS=0                skip the bpf_stats (ns/run) pass for (b), (c) and (f)
#        WEFT_PROG_NAMES="flow_ingress flow_egress"  names of weft's programs for that pass
#        WEFT_ATTACH_CMD=...        enables config (f); run in the host namespace as
#                                   "$WEFT_ATTACH_CMD <host-veth-cli> <host-veth-srv>"
#        WEFT_SETTLE_S=15           max seconds to wait for its TC filters to appear on both
#                                   veths (then 1 s more) before measuring
#        AFO_LOCK=/tmp/weft-bench.lock
#        AFO_OUT=DIR                where results go (default: results/ beside this script)
#        AFO_PIN=1                  pin clients to CPU 0, servers to CPU 1 (0: no pinning)
#        AFO_WORKLOADS="tcp udp sockperf wrk h2"  subset of workloads (weft's addition: h2 is
#                                   h2load -> nginx over h2c, 32 connections x 10 streams,
#                                   the kind of connection weft copies whole)
# Configurations: a none | b bare TC per-CPU counter | c reference C flow observer
#                 (LRU 5-tuple) | d pmacctd (libpcap) | e softflowd (libpcap) | f weft
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROUNDS=${1:-3}
DUR=${2:-8}
LOCK=${AFO_LOCK:-/tmp/weft-bench.lock}
CONFIGS=${AFO_CONFIGS:-"a b c d e f"}
DO_STATS=${AFO_STATS:-1}
WORKLOADS=${AFO_WORKLOADS:-"tcp udp sockperf wrk"}
WEFT_SETTLE_S=${WEFT_SETTLE_S:-15}
WEFT_PROG_NAMES=${WEFT_PROG_NAMES:-flow_ingress flow_egress}
# Pin clients to CPU 0 and servers to CPU 1 (AFO_PIN=0 to disable): removes the
# "same CPU or not" placement lottery that otherwise makes latency bimodal.
if [ "${AFO_PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then CPU_CLI=(taskset -c 0); CPU_SRV=(taskset -c 1); else CPU_CLI=(); CPU_SRV=(); fi

log() { printf '[afo %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 1 ]] || die "ROUNDS must be a positive integer"
[[ "$DUR" =~ ^[0-9]+$ && "$DUR" -ge 1 ]] || die "DURATION_S must be a positive integer"

# ---------------------------------------------------------------- install
need_pkgs=()
chk() { command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2"); }
chk ip iproute2; chk tc iproute2; chk bpftool bpftool; chk clang clang
chk iperf3 iperf3; chk sockperf sockperf; chk wrk wrk; chk nginx nginx; chk h2load nghttp2-client
chk pmacctd pmacct; chk softflowd softflowd; chk jq jq; chk python3 python3
chk flock util-linux; chk ss iproute2
if [ ${#need_pkgs[@]} -gt 0 ]; then
	log "installing: ${need_pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 update -qq
	apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need_pkgs[@]}"
fi
ARCHINC=/usr/include/$(uname -m)-linux-gnu
[ -f /usr/include/linux/bpf.h ] && [ -d "$ARCHINC/asm" ] || {
	apt-get -o DPkg::Lock::Timeout=600 install -y -qq linux-libc-dev; }

# ---------------------------------------------------------------- build (outside the lock)
mkdir -p "$HERE/build"
for p in tc_count tc_flow; do
	clang -O2 -g -Wall -target bpf -I"$HERE" -I"$ARCHINC" -c "$HERE/$p.c" -o "$HERE/build/$p.o"
done

# ---------------------------------------------------------------- names
R=$(printf '%04x' $(( (RANDOM << 1 ^ $$) & 0xffff )))
NS_H=afo-host-$R; NS_C=afo-cli-$R; NS_S=afo-srv-$R
BR=afo-br-$R
IF_HC=afo-hc-$R; IF_HS=afo-hs-$R      # host-side veth ends (observers attach here)
IF_C=afo-c-$R;   IF_S=afo-s-$R        # workload-side ends
CLI4=198.18.0.1; SRV4=198.18.0.2; CLI6=fd00:af0::1; SRV6=fd00:af0::2
TMP=$(mktemp -d /tmp/afo-run-XXXXXX)
BPFFS=$TMP/bpffs
OUT=${AFO_OUT:-$HERE/results}/$(date -u +%Y%m%dT%H%M%SZ)-r${ROUNDS}-d${DUR}
mkdir -p "$OUT"
RAW=$OUT/raw.csv
echo "round,config,metric,value" > "$RAW"
PIDS=()          # long-lived processes we started (servers)
OBS_PIDS=()      # observer process groups of the current configuration
STATS_OLD=$(cat /proc/sys/kernel/bpf_stats_enabled)
STATS_TOUCHED=0
LOCKED=0

cleanup() {
	set +e
	trap - EXIT INT TERM
	if [ "$STATS_TOUCHED" = 1 ]; then echo "$STATS_OLD" > /proc/sys/kernel/bpf_stats_enabled; fi
	[ "$LOCKED" = 1 ] && flock -u 9
	stop_observers 2>/dev/null
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
	sleep 0.5
	for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
	for n in "$NS_C" "$NS_S" "$NS_H"; do ip netns del "$n" 2>/dev/null; done
	mountpoint -q "$BPFFS" && umount "$BPFFS"
	rm -rf "$TMP"
	log "cleaned up (namespaces $NS_H $NS_C $NS_S removed)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- lab
log "lab suffix $R; results in ${OUT#"$HERE"/}"
for n in "$NS_H" "$NS_C" "$NS_S"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n "$NS_H" link add "$BR" type bridge
ip -n "$NS_H" link set "$BR" up
ip -n "$NS_H" link add "$IF_HC" type veth peer name "$IF_C" netns "$NS_C"
ip -n "$NS_H" link add "$IF_HS" type veth peer name "$IF_S" netns "$NS_S"
for i in "$IF_HC" "$IF_HS"; do ip -n "$NS_H" link set "$i" master "$BR" up; done
ip -n "$NS_C" addr add $CLI4/24 dev "$IF_C"; ip -n "$NS_C" addr add $CLI6/64 dev "$IF_C" nodad
ip -n "$NS_S" addr add $SRV4/24 dev "$IF_S"; ip -n "$NS_S" addr add $SRV6/64 dev "$IF_S" nodad
ip -n "$NS_C" link set "$IF_C" up; ip -n "$NS_S" link set "$IF_S" up
ip netns exec "$NS_C" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
mkdir -p "$BPFFS"; mount -t bpf bpf "$BPFFS"

# servers in the server namespace
ns_bg() { # ns_bg NS LOGFILE cmd... ; ip netns exec execs, so $! is the command itself
	local ns=$1 lf=$2; shift 2
	ip netns exec "$ns" "$@" >"$lf" 2>&1 9>&- &
	PIDS+=($!)
}
ns_bg "$NS_S" "$TMP/iperf3.log" "${CPU_SRV[@]}" iperf3 -s -B $SRV4 -p 5201
ns_bg "$NS_S" "$TMP/sp-udp.log" "${CPU_SRV[@]}" sockperf sr -i $SRV4 -p 11111
ns_bg "$NS_S" "$TMP/sp-tcp.log" "${CPU_SRV[@]}" sockperf sr --tcp -i $SRV4 -p 11112
mkdir -p "$TMP/nginx"
cat > "$TMP/nginx/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body; proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fcgi; uwsgi_temp_path $TMP/nginx/uwsgi; scgi_temp_path $TMP/nginx/scgi;
    server {
        listen $SRV4:8080 backlog=4096;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
    server {
        listen $SRV4:8081 http2 backlog=4096;
        keepalive_requests 100000000;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
EOF
ns_bg "$NS_S" "$TMP/nginx/stdout.log" "${CPU_SRV[@]}" nginx -c "$TMP/nginx/nginx.conf" -g 'daemon off;'
for port in 5201 11112 8080; do
	for _ in $(seq 50); do
		ip netns exec "$NS_S" ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.1
	done
	ip netns exec "$NS_S" ss -Hltn "sport = :$port" | grep -q . || die "server on port $port did not start"
done
ip netns exec "$NS_C" ping -c2 -i0.2 -q $SRV4 >/dev/null || die "no IPv4 connectivity"
ip netns exec "$NS_C" ping -6 -c2 -i0.2 -q $SRV6 >/dev/null || die "no IPv6 connectivity"

# ---------------------------------------------------------------- observers
tc_attach() { # tc_attach NAME OBJ PROG
	local d=$BPFFS/$1
	mkdir -p "$d"
	bpftool prog loadall "$HERE/build/$2.o" "$d/progs" pinmaps "$d/maps"
	for i in "$IF_HC" "$IF_HS"; do
		tc -n "$NS_H" qdisc add dev "$i" clsact
		tc -n "$NS_H" filter add dev "$i" ingress bpf direct-action object-pinned "$d/progs/$3"
		tc -n "$NS_H" filter add dev "$i" egress bpf direct-action object-pinned "$d/progs/$3"
	done
}
tc_detach() { # tc_detach NAME
	for i in "$IF_HC" "$IF_HS"; do tc -n "$NS_H" qdisc del dev "$i" clsact 2>/dev/null || true; done
	rm -rf "${BPFFS:?}/$1"
}
grp_start() { # grp_start LOGFILE cmd... : new session in the host ns; records the group id
	local lf=$1; shift
	ip netns exec "$NS_H" setsid "$@" >"$lf" 2>&1 9>&- &
	OBS_PIDS+=($!)
}
stop_observers() {
	local p
	for p in "${OBS_PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
	for p in "${OBS_PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL -- "-$p" 2>/dev/null || true
		kill -KILL "$p" 2>/dev/null || true
	done
	OBS_PIDS=()
}
alive_or_die() { local p; for p in "${OBS_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || die "$1 exited early (see $2)"; done; }

setup_config() { # setup_config CFG ROUND
	local c=$1 r=$2
	case $c in
	a) ;;
	b) tc_attach b tc_count afo_count ;;
	c) tc_attach c tc_flow afo_flow ;;
	d)
		# one pmacctd per interface: pmacctd 1.7.7's pcap_interfaces_map captured nothing here
		for i in "$IF_HC" "$IF_HS"; do
			cat > "$TMP/pmacctd-$i.conf" <<EOF
daemonize: false
pcap_interface: $i
aggregate: src_host, dst_host, src_port, dst_port, proto
plugins: memory
imt_path: $TMP/pmacct-$i.pipe
EOF
			grp_start "$TMP/pmacctd-$i.log" pmacctd -f "$TMP/pmacctd-$i.conf"
		done
		sleep 2; alive_or_die pmacctd "$TMP/pmacctd-*.log" ;;
	e)
		for i in "$IF_HC" "$IF_HS"; do
			grp_start "$OUT/softflowd-$i-r$r.log" softflowd -i "$i" -d -v 9 -m 65536 \
				-n 127.0.0.1:9995 -c "$TMP/sf-$i.ctl" -p "$TMP/sf-$i.pid"
		done
		sleep 2; alive_or_die softflowd "softflowd-*-r$r.log" ;;
	f)
		# the hook: run $WEFT_ATTACH_CMD with the two host-side interface names, in the host ns
		grp_start "$OUT/weft-r$r.log" sh -c "exec $WEFT_ATTACH_CMD \"\$@\"" weft "$IF_HC" "$IF_HS"
		# ready when a TC filter (clsact) or a program named in WEFT_PROG_NAMES (tcx links,
		# not shown by this bpftool's "net show") is seen; otherwise it gets WEFT_SETTLE_S
		local t0=$SECONDS ok=0 i d
		while [ $((SECONDS - t0)) -lt "$WEFT_SETTLE_S" ]; do
			alive_or_die "WEFT_ATTACH_CMD" "weft-r$r.log"
			ok=1
			for i in "$IF_HC" "$IF_HS"; do for d in ingress egress; do
				tc -n "$NS_H" filter show dev "$i" "$d" 2>/dev/null | grep -q bpf || ok=0
			done; done
			if [ $ok = 0 ] && [ "$(prog_stats f | cut -d' ' -f1)" != "" ] &&
				[ "$(bpftool prog show -j | jq --arg names "$WEFT_PROG_NAMES" '[.[] | select(.name as $n | ($names | split(" ") | index($n)))] | length')" -ge 2 ]; then
				ok=1
			fi
			[ $ok = 1 ] && break
			sleep 0.2
		done
		[ $ok = 1 ] || log "(f): neither clsact filters nor programs named '$WEFT_PROG_NAMES' seen after ${WEFT_SETTLE_S}s; measuring anyway"
		sleep 1; alive_or_die "WEFT_ATTACH_CMD" "weft-r$r.log" ;;
	esac
	{ echo "== config $c round $r"; ip netns exec "$NS_H" bpftool net show 2>&1; } >> "$OUT/attachments.log"
}

check_config() { # sanity: did the observer see the traffic?  (outside the lock)
	local c=$1 r=$2 v
	case $c in
	b) v=$(bpftool map dump pinned "$BPFFS/b/maps/afo_cnt" -j | jq '[.[0].formatted.values[].value] | add')
	   echo "$r,$c,check_packets_counted,$v" >> "$RAW" ;;
	c) # a few IPv6 packets so the table shows the v6 path too
	   ip netns exec "$NS_C" ping -6 -c 3 -i 0.2 -q $SRV6 >/dev/null 2>&1 || true
	   bpftool map dump pinned "$BPFFS/c/maps/afo_flows" -j > "$TMP/flows.json" 2>/dev/null || echo '[]' > "$TMP/flows.json"
	   v=$(jq length "$TMP/flows.json")
	   echo "$r,$c,check_flows_in_map,${v:-NA}" >> "$RAW"
	   bpftool map show pinned "$BPFFS/c/maps/afo_flows" -j > "$OUT/flowmap-r$r.json"
	   v=$(jq -r '"\(.bytes_memlock),\(.max_entries)"' "$OUT/flowmap-r$r.json")
	   echo "$r,c,map_memlock_bytes,${v%,*}" >> "$RAW"
	   echo "$r,c,map_max_entries,${v#*,}" >> "$RAW"
	   bpftool map dump pinned "$BPFFS/c/maps/afo_flow_err" -j > "$OUT/flowerr-r$r.json"
	   # keep a small readable sample of the flow table
	   jq -c 'map(.formatted) | sort_by(-.value.packets) | .[:8][]' "$TMP/flows.json" > "$OUT/flowsample-r$r.jsonl" || true
	   echo "$r,c,check_flows_ipv6,$(jq '[.[].formatted.key.src | select(.[10] != 255)] | length' "$TMP/flows.json")" >> "$RAW"
	   rm -f "$TMP/flows.json" ;;
	d) local i tot=0
	   for i in "$IF_HC" "$IF_HS"; do
		v=$(ip netns exec "$NS_H" pmacct -p "$TMP/pmacct-$i.pipe" -s 2>/dev/null | sed -n 's/^For a total of: *\([0-9]*\).*/\1/p')
		tot=$(( tot + ${v:-0} ))
	   done
	   echo "$r,$c,check_flows_in_table,$tot" >> "$RAW"
	   # pmacctd logs millions of repeated lines ("Failed during write" per EAGAIN while it
	   # answers the query, "Missing data detected" when its plugin falls behind): keep counts
	   tot=0
	   for i in "$IF_HC" "$IF_HS"; do
		grep -v "'--build=" "$TMP/pmacctd-$i.log" | sed '/^$/d' | sort | uniq -c | sort -rn > "$OUT/pmacctd-$i-r$r.log" || true
		v=$(grep -c 'Missing data detected' "$TMP/pmacctd-$i.log" || true)
		tot=$(( tot + ${v:-0} ))
	   done
	   echo "$r,$c,check_pmacct_missing_data_warnings,$tot" >> "$RAW" ;;
	e) local i tot=0
	   for i in "$IF_HC" "$IF_HS"; do
		ip netns exec "$NS_H" softflowctl -c "$TMP/sf-$i.ctl" statistics > "$OUT/softflowd-stats-$i-r$r.txt" 2>&1 || true
		v=$(sed -n 's/^Number of active flows: *\([0-9]*\).*/\1/p' "$OUT/softflowd-stats-$i-r$r.txt" | head -1)
		tot=$(( tot + ${v:-0} ))
	   done
	   echo "$r,$c,check_flows_active,$tot" >> "$RAW"
	   tot=0
	   for i in "$IF_HC" "$IF_HS"; do
		v=$(sed -n 's/^Packets dropped by libpcap: *\([0-9]*\).*/\1/p' "$OUT/softflowd-stats-$i-r$r.txt" | head -1)
		tot=$(( tot + ${v:-0} ))
	   done
	   echo "$r,$c,check_pcap_dropped,$tot" >> "$RAW" ;;
	esac
}

teardown_config() {
	case $1 in
	b|c) tc_detach "$1" ;;
	d|e) stop_observers ;;
	f) stop_observers
	   # weft is expected to detach itself; make sure nothing is left for the next config
	   for i in "$IF_HC" "$IF_HS"; do tc -n "$NS_H" qdisc del dev "$i" clsact 2>/dev/null || true; done ;;
	esac
}

# ---------------------------------------------------------------- workloads
# Every workload runs while this shell holds $LOCK (see the rounds loop).
rec() { echo "$1,$2,$3,$4" >> "$RAW"; }
w_tcp() { local c=$1 r=$2 f=$OUT/iperf-tcp-$1-r$2.json
	ip netns exec "$NS_C" "${CPU_CLI[@]}" iperf3 -c $SRV4 -p 5201 -t "$DUR" -O 1 -J > "$f" 2>&1 || true
	rec "$r" "$c" tcp_gbps "$(jq -r '(.end.sum_received.bits_per_second/1e9*1000|round)/1000 // "NA"' "$f" 2>/dev/null || echo NA)"
}
w_udp() { local c=$1 r=$2 f=$OUT/iperf-udp-$1-r$2.json
	ip netns exec "$NS_C" "${CPU_CLI[@]}" iperf3 -c $SRV4 -p 5201 -u -b 0 -l 64 -t "$DUR" -J > "$f" 2>&1 || true
	# end.sum is the receiver's view for UDP: packets sent (by sequence), lost
	rec "$r" "$c" udp_rx_kpps "$(jq -r '.end.sum | (((.packets-.lost_packets)/.seconds/1000)*10|round)/10' "$f" 2>/dev/null || echo NA)"
	rec "$r" "$c" udp_loss_pct "$(jq -r '.end.sum.lost_percent*100|round/100' "$f" 2>/dev/null || echo NA)"
}
w_sockperf() { local proto=$1 c=$2 r=$3 f=$OUT/sockperf-$1-$2-r$3.txt port=11111 extra=()
	[ "$proto" = tcp ] && { port=11112; extra=(--tcp); }
	ip netns exec "$NS_C" "${CPU_CLI[@]}" sockperf ping-pong "${extra[@]}" -i $SRV4 -p $port -m 64 -t "$DUR" \
		--full-rtt --no-rdtsc > "$f" 2>&1 || true
	rec "$r" "$c" "sp_${proto}_p50_us" "$(sed -n 's/.*percentile 50.000 = *\([0-9.]*\).*/\1/p' "$f" | head -1)"
	rec "$r" "$c" "sp_${proto}_p99_us" "$(sed -n 's/.*percentile 99.000 = *\([0-9.]*\).*/\1/p' "$f" | head -1)"
}
w_wrk() { local c=$1 r=$2 f=$OUT/wrk-$1-r$2.txt
	ip netns exec "$NS_C" "${CPU_CLI[@]}" wrk -t1 -c32 -d"${DUR}s" -H 'Connection: close' "http://$SRV4:8080/" > "$f" 2>&1 || true
	rec "$r" "$c" wrk_close_rps "$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$f")"
	rec "$r" "$c" wrk_errors "$(awk '/Socket errors:/ {gsub(/,/,""); s=$4+$6+$8+$10} END {print s+0}' "$f")"
}

w_h2() { local c=$1 r=$2 f=$OUT/h2load-$1-r$2.txt
	ip netns exec "$NS_C" "${CPU_CLI[@]}" h2load -c32 -m10 -D "$DUR" "http://$SRV4:8081/" > "$f" 2>&1 || true
	rec "$r" "$c" h2_rps "$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$f")"
	rec "$r" "$c" h2_errors "$(sed -n 's/^requests: .* \([0-9]*\) errored.*/\1/p' "$f")"
}

LOCKED=0
lock_acquire() { # hold the shared measurement lock (fd 9 of this shell; children get 9>&-)
	log "waiting for $LOCK"
	exec 9>"$LOCK"
	flock 9
	LOCKED=1
	STATS_TOUCHED=1
	log "lock held"
}
lock_release() {
	echo "$STATS_OLD" > /proc/sys/kernel/bpf_stats_enabled
	flock -u 9; exec 9>&-
	LOCKED=0
}
set_stats() { echo "$1" > /proc/sys/kernel/bpf_stats_enabled; }
run_all_workloads() { local c=$1 r=$2 w
	for w in $WORKLOADS; do
		case $w in
		tcp) w_tcp "$c" "$r" ;;
		udp) w_udp "$c" "$r" ;;
		sockperf) w_sockperf udp "$c" "$r"; w_sockperf tcp "$c" "$r" ;;
		wrk) w_wrk "$c" "$r" ;;
		h2) w_h2 "$c" "$r" ;;
		*) die "unknown workload $w (AFO_WORKLOADS)" ;;
		esac
	done
}

prog_stats() { # prints "run_cnt run_time_ns" of config $1's programs
	if [ "$1" = f ]; then # weft's programs, found by name (WEFT_PROG_NAMES), summed
		bpftool prog show -j | jq -r --arg names "$WEFT_PROG_NAMES" \
			'[.[] | select(.name as $n | ($names | split(" ") | index($n)))] |
			 "\(map(.run_cnt // 0) | add // 0) \(map(.run_time_ns // 0) | add // 0)"'
		return
	fi
	local p; p=$(ls "$BPFFS/$1/progs/")
	bpftool prog show pinned "$BPFFS/$1/progs/$p" -j | jq -r '"\(.run_cnt // 0) \(.run_time_ns // 0)"'
}
stats_workloads() { # per-workload ns/run with kernel.bpf_stats_enabled=1 (separate pass)
	local c=$1 r=$2 w b a n t
	for w in $WORKLOADS; do
		[ "$w" = sockperf ] && continue
		b=$(prog_stats "$c")
		case $w in
		tcp) ip netns exec "$NS_C" "${CPU_CLI[@]}" iperf3 -c $SRV4 -p 5201 -t "$DUR" -J > "$OUT/stats-$c-tcp-r$r.json" 2>&1 || true ;;
		udp) ip netns exec "$NS_C" "${CPU_CLI[@]}" iperf3 -c $SRV4 -p 5201 -u -b 0 -l 64 -t "$DUR" -J > "$OUT/stats-$c-udp-r$r.json" 2>&1 || true ;;
		wrk) ip netns exec "$NS_C" "${CPU_CLI[@]}" wrk -t1 -c32 -d"${DUR}s" -H 'Connection: close' "http://$SRV4:8080/" > "$OUT/stats-$c-wrk-r$r.txt" 2>&1 || true ;;
		h2) ip netns exec "$NS_C" "${CPU_CLI[@]}" h2load -c32 -m10 -D "$DUR" "http://$SRV4:8081/" > "$OUT/stats-$c-h2-r$r.txt" 2>&1 || true ;;
		esac
		a=$(prog_stats "$c")
		n=$(( ${a% *} - ${b% *} )); t=$(( ${a#* } - ${b#* } ))
		rec "$r" "$c" "bpf_runs_${w}_M" "$(awk -v n="$n" 'BEGIN {printf "%.3f", n/1e6}')"
		if [ "$n" -gt 0 ]; then rec "$r" "$c" "bpf_ns_per_run_${w}" "$(awk -v n="$n" -v t="$t" 'BEGIN {printf "%.1f", t/n}')"; fi
	done
}

# ---------------------------------------------------------------- meta
{
	echo "date_utc: $(date -u +%FT%TZ)"
	echo "kernel: $(uname -r)"; echo "nproc: $(nproc)"
	echo "cpu: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
	echo "rounds: $ROUNDS  duration_s: $DUR  configs: $CONFIGS"
	w=${WEFT_ATTACH_CMD:-<unset: config f skipped>}; echo "weft_attach_cmd: ${w//$HERE/.}"
	echo "clang: $(clang --version | head -1)"; echo "bpftool: $(bpftool version | head -1)"
	echo "iperf3: $(iperf3 --version | head -1)"; echo "sockperf: $(sockperf --version 2>&1 | head -1)"
	echo "wrk: $(wrk -v 2>&1 | head -1)"; echo "nginx: $(nginx -v 2>&1)"
	echo "pmacctd: $(pmacctd -V 2>&1 | head -1)"; echo "softflowd: $(softflowd -h 2>&1 | sed -n 's/.*version \([0-9.]*\).*/\1/p')"
	echo "lab: ns $NS_H (bridge $BR, host veths $IF_HC $IF_HS), $NS_C ($IF_C $CLI4 $CLI6), $NS_S ($IF_S $SRV4 $SRV6)"
	echo "lock: $LOCK"
	echo "pinning: clients ${CPU_CLI[*]:-none}, servers ${CPU_SRV[*]:-none}; observers unpinned"
} > "$OUT/meta.txt"

# ---------------------------------------------------------------- rounds
cfgs=()
for c in $CONFIGS; do
	if [ "$c" = f ] && [ -z "${WEFT_ATTACH_CMD:-}" ]; then log "WEFT_ATTACH_CMD unset: skipping (f)"; continue; fi
	cfgs+=("$c")
done
[ ${#cfgs[@]} -gt 0 ] || die "no configuration to run"
n=${#cfgs[@]}
# Lock scope: a whole round (observer setup included, a few seconds) when it fits well
# under the 10-minute rule, otherwise one configuration at a time.
est=$(( n * 5 * (DUR + 3) + 2 * 3 * (DUR + 2) + n * 6 ))
SCOPE=${AFO_LOCK_SCOPE:-$([ "$est" -le 480 ] && echo round || echo config)}
log "configs: ${cfgs[*]}; lock scope: $SCOPE (~${est}s per round)"
echo "lock_scope: $SCOPE" >> "$OUT/meta.txt"
for r in $(seq 1 "$ROUNDS"); do
	[ "$SCOPE" = round ] && lock_acquire
	for k in $(seq 0 $((n - 1))); do
		c=${cfgs[$(( (k + r - 1) % n ))]}      # rotate the start each round
		log "round $r/$ROUNDS config ($c)"
		[ "$SCOPE" = config ] && lock_acquire
		setup_config "$c" "$r"
		set_stats 0
		run_all_workloads "$c" "$r"
		set_stats "$STATS_OLD"
		check_config "$c" "$r"
		teardown_config "$c"
		[ "$SCOPE" = config ] && lock_release
	done
	if [ "$DO_STATS" = 1 ]; then
		for c in b c f; do
			case " ${cfgs[*]} " in *" $c "*) ;; *) continue ;; esac
			log "round $r/$ROUNDS config ($c): bpf_stats pass"
			[ "$SCOPE" = config ] && lock_acquire
			setup_config "$c" "$r"
			set_stats 1
			stats_workloads "$c" "$r"
			set_stats "$STATS_OLD"
			teardown_config "$c"
			[ "$SCOPE" = config ] && lock_release
		done
	fi
	[ "$SCOPE" = round ] && lock_release
done

python3 "$HERE/summarize.py" "$RAW" "$OUT/meta.txt" > "$OUT/summary.md"
cat "$OUT/summary.md"
log "raw data: ${RAW#"$HERE"/}; summary: ${OUT#"$HERE"/}/summary.md"
