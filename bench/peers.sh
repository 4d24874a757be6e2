#!/usr/bin/env bash
# bench/peers.sh — vmfex beside its peers: the same iperf3 and ping work
# between two network namespaces over five paths, in one table with ratios
# to the Linux bridge.
#
#   (a) veth      ns A <-veth-> ns B                              the upper bound
#   (b) bridge    ns A <-veth-> [ns SW: Linux bridge] <-veth-> ns B
#   (c) ovs       ns A <-veth-> [ns SW: ovs-vswitchd, datapath_type=netdev,
#                                AF_PACKET ports, userspace TSO] <-veth-> ns B
#   (d) vmfex-direct    Linux guest A (esx1) -> VMXNET3 rings -> VIC -> VN-Tag
#                       -> FI -> VIC (esx2) -> Linux guest B; both vNICs direct
#   (e) vmfex-emulated  the same, both vNICs on the hypervisor's emulated
#                       device and the VEM (switched live with `vmfex vnic mode`)
#
# (d) and (e) run `vmfex lab up` on a generated topology of two Linux guests
# on two hosts (cross-host, through the FI), on a loopback port the kernel
# picks, with a token of its own; a Linux guest is the namespace named after
# its VM, with a TAP eth0 (no offloads: TAP without a virtio-net header).
#
# Work per path: ping -c 50 -i 0.01 (avg RTT, idle path), iperf3 TCP -t 5
# (receiver Gbit/s), iperf3 UDP -u -l 64 -b 0 -t 5 (64-byte payloads,
# packets/s received and loss). One iperf3 UDP client offers only a few
# hundred kpps on 2 cores: a UDP figure near that is the load generator's.
#
# Usage: sudo bench/peers.sh            (from anywhere in the repository)
#   DURATION=5      iperf3 seconds per test
#   ROUNDS=3        rounds over all paths; the table shows each figure's median
#   VMFEX=path      a built vmfex binary (default: go build ./cmd/vmfex)
#   SKIP_OVS=1      skip (c)
# Needs root, iproute2 (ip, ss), iperf3, ping, jq; Open vSwitch for (c);
# Go for (d)/(e) unless VMFEX is given. Everything it creates carries a
# random suffix and is removed on exit, also on failure or Ctrl-C.
set -euo pipefail

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
ROUND=0
PING_COUNT=50
PORT=5201
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "peers.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces); run: sudo $0"
for c in ip ss iperf3 ping jq awk; do
	command -v "$c" >/dev/null || die "$c is missing (apt-get install -y iproute2 iperf3 iputils-ping jq)"
done

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
SFX=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
TMP=$(mktemp -d "/tmp/vmfex-peers.$SFX.XXXX")
NAMESPACES=()  # every namespace this script made (or its lab made)
NS_A="" NS_B="" NS_SW="" # the namespaces of the path being set up
OVS_DIR=""     # set while Open vSwitch runs
LAB_PID=""     # set while vmfex lab up runs

# stop_pidfile waits for a detached daemon to go after SIGTERM.
stop_pidfile() {
	local f=$1 pid i
	[[ -s $f ]] || return 0
	pid=$(<"$f")
	kill "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.05
	done
	kill -9 "$pid" 2>/dev/null || true
}

stop_ovs() {
	[[ -n $OVS_DIR ]] || return 0
	stop_pidfile "$OVS_DIR/ovs-vswitchd.pid"
	stop_pidfile "$OVS_DIR/ovsdb-server.pid"
	OVS_DIR=""
}

stop_lab() {
	[[ -n $LAB_PID ]] || return 0
	kill -TERM "$LAB_PID" 2>/dev/null || true
	wait "$LAB_PID" 2>/dev/null || true # it removes its guests' namespaces
	LAB_PID=""
}

del_namespaces() {
	local n
	for n in "${NAMESPACES[@]}"; do
		if [[ -e /var/run/netns/$n ]]; then
			ip netns pids "$n" 2>/dev/null | xargs -r kill 2>/dev/null || true
			ip netns del "$n" 2>/dev/null || true
		fi
	done
	NAMESPACES=()
}

cleanup() {
	stop_lab
	stop_ovs
	del_namespaces
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Results, by row key.
declare -A TCP PPS LOSS RTT NOTE SOCKLOSS
ROWS=(veth bridge ovs vmfex-direct vmfex-emulated)
declare -A LABEL=(
	[veth]="(a) veth pair"
	[bridge]="(b) Linux bridge"
	[ovs]="(c) OVS userspace (netdev)"
	[vmfex-direct]="(d) vmfex direct"
	[vmfex-emulated]="(e) vmfex emulated"
)

# wait_listen polls until something listens on TCP $PORT in namespace $1,
# while the server (pid $2) runs.
wait_listen() {
	local ns=$1 pid=$2 i
	for ((i = 0; i < 400; i++)); do
		if [[ -n $(ss -N "$ns" -Hltn "sport = :$PORT" 2>/dev/null) ]]; then
			return 0
		fi
		kill -0 "$pid" 2>/dev/null || return 1
		sleep 0.025
	done
	return 1
}

# iperf NS_CLIENT NS_SERVER SERVER_IP OUT.json ARGS...: one iperf3 run.
iperf() {
	local cns=$1 sns=$2 ip=$3 out=$4 spid
	shift 4
	ip netns exec "$sns" iperf3 -s -1 -B "$ip" -p "$PORT" >"$out.server" 2>&1 &
	spid=$!
	if ! wait_listen "$sns" "$spid"; then
		kill "$spid" 2>/dev/null || true
		wait "$spid" 2>/dev/null || true
		echo "iperf3 server did not listen: $(tr '\n' ' ' <"$out.server")" >"$out.err"
		return 1
	fi
	if ! timeout $((DURATION + 30)) ip netns exec "$cns" iperf3 -c "$ip" -p "$PORT" -t "$DURATION" -J "$@" >"$out" 2>"$out.err"; then
		kill "$spid" 2>/dev/null || true
		wait "$spid" 2>/dev/null || true
		jq -r '.error // empty' "$out" >>"$out.err" 2>/dev/null || true
		return 1
	fi
	wait "$spid" || true
}

# warm NS IP: one ping answered (ARP resolved, flows learned), or fail.
warm() {
	local i
	for ((i = 0; i < 5; i++)); do
		ip netns exec "$1" ping -c 1 -W 1 "$2" >/dev/null 2>&1 && return 0
	done
	return 1
}

# udp_rcvbuf NS: the UDP datagrams namespace NS dropped because a socket's
# receive buffer was full (Udp RcvbufErrors in its /proc/net/snmp).
udp_rcvbuf() {
	# shellcheck disable=SC2016 # an awk program: its $ are awk's
	ip netns exec "$1" awk '$1 == "Udp:" && !c { for (i = 2; i <= NF; i++) if ($i == "RcvbufErrors") c = i; next }
		$1 == "Udp:" { print $c; exit }' /proc/net/snmp
}

# measure KEY NS_CLIENT NS_SERVER SERVER_IP: fills the row KEY.
measure() {
	local key=$1 cns=$2 sns=$3 ip=$4 out rcvbuf
	echo "peers.sh: measuring ${LABEL[$key]} ..." >&2
	if ! warm "$cns" "$ip"; then
		NOTE[$key]="${NOTE[$key]:-}no ping reply from $ip (round $ROUND); "
		return 0
	fi
	out=$(ip netns exec "$cns" ping -q -c "$PING_COUNT" -i 0.01 -W 1 "$ip" 2>&1) || true
	RTT[$key]+="$(awk -F'[/ ]+' '/^rtt/ {print $7}' <<<"$out") "
	if iperf "$cns" "$sns" "$ip" "$TMP/$key.tcp.json"; then
		TCP[$key]+="$(jq -r '.end.sum_received.bits_per_second / 1e9' "$TMP/$key.tcp.json") "
	else
		NOTE[$key]="${NOTE[$key]:-}TCP failed (round $ROUND): $(head -c 200 "$TMP/$key.tcp.json.err" | tr '\n' ' ')"
	fi
	rcvbuf=$(udp_rcvbuf "$sns")
	if iperf "$cns" "$sns" "$ip" "$TMP/$key.udp.json" -u -l 64 -b 0; then
		PPS[$key]+="$(jq -r '.end.sum | (.packets - .lost_packets) / .seconds' "$TMP/$key.udp.json") "
		LOSS[$key]+="$(jq -r '.end.sum.lost_percent' "$TMP/$key.udp.json") "
		SOCKLOSS[$key]+="$(jq -r --argjson before "$rcvbuf" --argjson after "$(udp_rcvbuf "$sns")" \
			'"\(.end.sum.lost_packets)/\(.end.sum.packets)/\($after - $before)"' "$TMP/$key.udp.json") "
	else
		NOTE[$key]="${NOTE[$key]:-}UDP failed (round $ROUND): $(head -c 200 "$TMP/$key.udp.json.err" | tr '\n' ' ')"
	fi
}

# pair_ns KEY: creates namespaces NS_A=pa-KEY-SFX and NS_B=pb-KEY-SFX.
pair_ns() {
	NS_A="pa-$1-$SFX" NS_B="pb-$1-$SFX"
	NAMESPACES+=("$NS_A" "$NS_B")
	ip netns add "$NS_A"
	ip netns add "$NS_B"
	ip -n "$NS_A" link set lo up
	ip -n "$NS_B" link set lo up
}

# endpoint NS IF ADDR: address and bring up the namespace's side.
endpoint() {
	ip -n "$1" addr add "$3/24" dev "$2"
	ip -n "$1" link set "$2" up
}

# switched KEY: namespaces NS_A and NS_B each cabled by a veth to a switch
# namespace NS_SW, where the cables' ends are s{K}a$SFX and s{K}b$SFX (K:
# the key's first letter).
switched() {
	local key=$1 a b sw="psw-$1-$SFX" tag=${1:0:1}
	pair_ns "$key"
	a=$NS_A b=$NS_B NS_SW=$sw
	NAMESPACES+=("$sw")
	ip netns add "$sw"
	ip -n "$sw" link set lo up
	ip link add "p${tag}a$SFX" netns "$a" type veth peer name "s${tag}a$SFX" netns "$sw"
	ip link add "p${tag}b$SFX" netns "$b" type veth peer name "s${tag}b$SFX" netns "$sw"
	endpoint "$a" "p${tag}a$SFX" 198.18.0.1
	endpoint "$b" "p${tag}b$SFX" 198.18.0.2
	ip -n "$sw" link set "s${tag}a$SFX" up
	ip -n "$sw" link set "s${tag}b$SFX" up
}

run_veth() {
	local a b
	pair_ns veth
	a=$NS_A b=$NS_B
	ip link add "pvA$SFX" netns "$a" type veth peer name "pvB$SFX" netns "$b"
	endpoint "$a" "pvA$SFX" 198.18.0.1
	endpoint "$b" "pvB$SFX" 198.18.0.2
	measure veth "$a" "$b" 198.18.0.2
	del_namespaces
}

run_bridge() {
	local a b sw f
	switched bridge
	a=$NS_A b=$NS_B sw=$NS_SW
	ip -n "$sw" link add br0 type bridge
	ip -n "$sw" link set br0 type bridge forward_delay 0 stp_state 0
	ip -n "$sw" link set "sba$SFX" master br0
	ip -n "$sw" link set "sbb$SFX" master br0
	ip -n "$sw" link set br0 up
	# Keep netfilter out of the path (the knobs exist if br_netfilter is loaded).
	for f in iptables ip6tables arptables; do
		ip netns exec "$sw" sh -c "f=/proc/sys/net/bridge/bridge-nf-call-$f; [ ! -e \$f ] || echo 0 >\$f"
	done
	measure bridge "$a" "$b" 198.18.0.2
	del_namespaces
}

run_ovs() {
	local a b sw why
	if [[ -n ${SKIP_OVS:-} ]]; then
		NOTE[ovs]="n/a (SKIP_OVS set)"
		return 0
	fi
	if ! command -v ovs-vswitchd >/dev/null || ! command -v ovsdb-tool >/dev/null; then
		NOTE[ovs]="n/a (Open vSwitch not installed: apt-get install -y openvswitch-switch)"
		return 0
	fi
	switched ovs
	a=$NS_A b=$NS_B sw=$NS_SW
	OVS_DIR="$TMP/ovs"
	rm -rf "$OVS_DIR" # an earlier round's database
	mkdir -p "$OVS_DIR"
	# Private directories: nothing touches /etc/openvswitch or /run/openvswitch.
	export OVS_RUNDIR=$OVS_DIR OVS_DBDIR=$OVS_DIR OVS_LOGDIR=$OVS_DIR OVS_SYSCONFDIR=$OVS_DIR
	local vsctl=(ovs-vsctl "--db=unix:$OVS_DIR/db.sock" --timeout=20)
	if ! {
		ovsdb-tool create "$OVS_DIR/conf.db" /usr/share/openvswitch/vswitch.ovsschema &&
			ip netns exec "$sw" ovsdb-server "$OVS_DIR/conf.db" --remote="punix:$OVS_DIR/db.sock" \
				--pidfile="$OVS_DIR/ovsdb-server.pid" --detach --log-file="$OVS_DIR/ovsdb-server.log" &&
			"${vsctl[@]}" --no-wait init &&
			"${vsctl[@]}" --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true &&
			ip netns exec "$sw" ovs-vswitchd "unix:$OVS_DIR/db.sock" --pidfile="$OVS_DIR/ovs-vswitchd.pid" \
				--detach --log-file="$OVS_DIR/ovs-vswitchd.log" &&
			"${vsctl[@]}" add-br br0 -- set bridge br0 datapath_type=netdev &&
			"${vsctl[@]}" add-port br0 "soa$SFX" -- add-port br0 "sob$SFX"
	} >"$TMP/ovs.setup" 2>&1; then
		why=$(grep -m1 -iE 'error|fail|cannot' "$TMP/ovs.setup" "$OVS_DIR"/*.log 2>/dev/null | head -c 160 | tr '\n' ' ')
		NOTE[ovs]="n/a (Open vSwitch's userspace datapath did not start: ${why:-see its logs})"
		stop_ovs
		del_namespaces
		return 0
	fi
	ip -n "$sw" link set br0 up 2>/dev/null || true
	measure ovs "$a" "$b" 198.18.0.2
	stop_ovs
	del_namespaces
}

# run_vmfex: (d) and (e) on one `vmfex lab up`.
run_vmfex() {
	local bin=${VMFEX:-} a="pxa-$SFX" b="pxb-$SFX" topo="$TMP/peers.yaml" url="" i vm
	if [[ -z $bin ]]; then
		bin="$TMP/vmfex"
		if [[ -n ${NOTE[vmfex-direct]:-} && ! -x $bin ]]; then
			return 0 # the build failed in an earlier round
		fi
		if [[ ! -x $bin ]]; then
			echo "peers.sh: building vmfex ..." >&2
			if ! (cd "$REPO" && go build -o "$bin" ./cmd/vmfex) >"$TMP/build.log" 2>&1; then
				NOTE[vmfex-direct]="n/a (go build ./cmd/vmfex failed: $(head -c 160 "$TMP/build.log" | tr '\n' ' '))"
				NOTE[vmfex-emulated]=${NOTE[vmfex-direct]}
				return 0
			fi
		fi
	fi
	cat >"$topo" <<-EOF
		# bench/peers.sh: two Linux guests on two hosts, VLAN 100.
		fi: fi-peers
		port_profiles:
		  - name: peers
		    mode: access
		    access_vlan: 100
		    high_performance: true
		hosts:
		  - name: esx1
		    server_port: Ethernet1/1
		  - name: esx2
		    server_port: Ethernet1/2
		vms:
		  - name: $a
		    host: esx1
		    port_profile: peers
		    mac: "00:25:b5:00:0f:01"
		    ip: 198.18.100.1
		    guest: linux
		  - name: $b
		    host: esx2
		    port_profile: peers
		    mac: "00:25:b5:00:0f:02"
		    ip: 198.18.100.2
		    guest: linux
	EOF
	od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$TMP/token"
	chmod 600 "$TMP/token"
	NAMESPACES+=("$a" "$b")
	: >"$TMP/lab.log"
	"$bin" lab up "$topo" --listen 127.0.0.1:0 --token-file "$TMP/token" >"$TMP/lab.log" 2>&1 &
	LAB_PID=$!
	for ((i = 0; i < 600; i++)); do
		url=$(awk '/serving http/ {for (f = 1; f <= NF; f++) if ($f ~ /^http:/) print $f}' "$TMP/lab.log" || true)
		[[ -n $url ]] && break
		if ! kill -0 "$LAB_PID" 2>/dev/null; then
			NOTE[vmfex-direct]="n/a (vmfex lab up exited: $(head -c 160 "$TMP/lab.log" | tr '\n' ' '))"
			NOTE[vmfex-emulated]=${NOTE[vmfex-direct]}
			LAB_PID=""
			return 0
		fi
		sleep 0.05
	done
	[[ -n $url ]] || die "vmfex lab up did not serve within 30 s: $(cat "$TMP/lab.log")"
	measure vmfex-direct "$a" "$b" 198.18.100.2
	: >"$TMP/mode.log"
	for vm in "$a" "$b"; do
		if ! "$bin" vnic mode "$vm" emulated --server "$url" --token-file "$TMP/token" >>"$TMP/mode.log" 2>&1; then
			NOTE[vmfex-emulated]="n/a (vnic mode $vm emulated failed: $(tail -c 160 "$TMP/mode.log" | tr '\n' ' '))"
			stop_lab
			del_namespaces
			return 0
		fi
	done
	echo "peers.sh: $(tr '\n' ';' <"$TMP/mode.log")" >&2
	measure vmfex-emulated "$a" "$b" 198.18.100.2
	stop_lab
	del_namespaces
}

# ratio X BASE: X/BASE with two decimals, or "-".
ratio() {
	if [[ -z ${1:-} || -z ${2:-} ]]; then
		echo -
		return
	fi
	awk -v x="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", x / b; else print "-" }'
}

num() {
	if [[ -z ${1:-} ]]; then
		echo -
		return
	fi
	awk -v x="$1" -v f="$2" 'BEGIN { printf f, x }'
}

# median "V1 V2 ...": the median of the values, or nothing.
median() {
	tr ' ' '\n' <<<"${1:-}" | awk 'NF' | sort -g |
		awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else if (NR) print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

report() {
	local cpu kernel k
	declare -A mTCP mPPS mLOSS mRTT
	for k in "${ROWS[@]}"; do
		mTCP[$k]=$(median "${TCP[$k]:-}")
		mPPS[$k]=$(median "${PPS[$k]:-}")
		mLOSS[$k]=$(median "${LOSS[$k]:-}")
		mRTT[$k]=$(median "${RTT[$k]:-}")
	done
	cpu=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
	kernel=$(uname -r)
	echo
	echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, Linux $kernel; $(iperf3 --version | head -1 | awk '{print $1, $2}')$(command -v ovs-vswitchd >/dev/null && echo ", $(ovs-vswitchd --version | head -1)")"
	echo "Load average (1, 5, 15 min): $LOAD_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after: other work on the machine skews the figures."
	echo "Work: ping -c $PING_COUNT -i 0.01 (idle); iperf3 TCP -t $DURATION (receiver); iperf3 UDP -u -l 64 -b 0 -t $DURATION (received packets/s)."
	echo "Each figure is the median of $ROUNDS rounds; a round measures every path once, (a) to (e), so that load from elsewhere spreads over all of them."
	echo "Ratios are to (b), the Linux bridge: higher is better for TCP and UDP, lower for RTT."
	echo
	printf '| %-26s | %10s | %6s | %13s | %7s | %6s | %11s | %6s |\n' path "TCP Gbit/s" "vs (b)" "UDP64 rx pps" "UDP loss" "vs (b)" "RTT avg ms" "vs (b)"
	printf '|%s|%s|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..28})" "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..8})" \
		"$(printf -- '-%.0s' {1..15})" "$(printf -- '-%.0s' {1..9})" "$(printf -- '-%.0s' {1..8})" "$(printf -- '-%.0s' {1..13})" "$(printf -- '-%.0s' {1..8})"
	for k in "${ROWS[@]}"; do
		if [[ -z ${mTCP[$k]} && -z ${mPPS[$k]} && -z ${mRTT[$k]} ]]; then
			printf '| %-26s | %s |\n' "${LABEL[$k]}" "${NOTE[$k]:-n/a}"
			continue
		fi
		printf '| %-26s | %10s | %6s | %13s | %7s | %6s | %11s | %6s |\n' "${LABEL[$k]}" \
			"$(num "${mTCP[$k]}" %.2f)" "$(ratio "${mTCP[$k]}" "${mTCP[bridge]}")" \
			"$(num "${mPPS[$k]}" %.0f)" "$(num "${mLOSS[$k]}" %.1f%%)" "$(ratio "${mPPS[$k]}" "${mPPS[bridge]}")" \
			"$(num "${mRTT[$k]}" %.3f)" "$(ratio "${mRTT[$k]}" "${mRTT[bridge]}")"
	done
	echo
	echo "Every round (TCP Gbit/s | UDP64 rx pps | RTT avg ms):"
	for k in "${ROWS[@]}"; do
		[[ -n ${TCP[$k]:-}${PPS[$k]:-}${RTT[$k]:-} ]] || continue
		printf '%-26s %s| %s| %s\n' "${LABEL[$k]}" "$(xargs -r printf '%.2f ' <<<"${TCP[$k]:-}")" \
			"$(xargs -r printf '%.0f ' <<<"${PPS[$k]:-}")" "$(xargs -r printf '%.3f ' <<<"${RTT[$k]:-}")"
	done
	echo
	echo "UDP per round: lost (iperf3) / sent / the receiver's UDP RcvbufErrors (full socket buffer, counted by its kernel, also after the test ends):"
	for k in "${ROWS[@]}"; do
		if [[ -n ${SOCKLOSS[$k]:-} ]]; then
			printf '%-26s %s\n' "${LABEL[$k]}" "${SOCKLOSS[$k]}"
		fi
	done
	for k in "${ROWS[@]}"; do
		if [[ -n ${NOTE[$k]:-} && ( -n ${TCP[$k]:-} || -n ${PPS[$k]:-} ) ]]; then
			echo "note ${LABEL[$k]}: ${NOTE[$k]}"
		fi
	done
}

for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
	echo "peers.sh: round $ROUND of $ROUNDS" >&2
	run_veth
	run_bridge
	run_ovs
	run_vmfex
done
report
