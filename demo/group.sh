#!/usr/bin/env bash
# make demo-group: a group of three servers on loopback — a (the primary,
# priority 100), b (priority 150) and c (priority 100) — with short timings
# (heartbeat every 1s, reply_period 5s, fail_window 5s), a health check and a
# service on each, and three agents on their own hosts. It shows:
#
#   1. the group settling: tandem members on a, c's rank in the election;
#   2. a failing health check on the primary (touch DIR/down-a): a hands over
#      to the best healthy backup (b), the services stop and start, c follows b
#      by itself (tandem rewrites c's primary_location);
#   3. kill -9 of b with a still unhealthy: c takes over (a is not eligible),
#      the agents follow c; a's check comes back and a is c's healthy backup;
#   4. a planned tandem switchover --to a, the final members and c's history;
#
# then stops everything it started. Exit 0 only if every step happened as
# expected (each one waited for with a deadline). About 40 seconds.
#
#   bash demo/group.sh               # or: make demo-group
#   KEEP=1 bash demo/group.sh        # keep the temp dir (configs, data dirs, logs)
#
# Ports (loopback only; the script stops if one is taken): embedded brokers
# 27640 (a), 27641 (b), 27642 (c), admin APIs 27650 (a), 27651 (b), 27652 (c):
# below the kernel's ephemeral range, and apart from make demo's.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${TANDEM_BIN:-$ROOT/bin/tandem}
NODES=(a b c)
declare -A BROKER=([a]=27640 [b]=27641 [c]=27642) ADMIN=([a]=27650 [b]=27651 [c]=27652) PRIO=([a]=100 [b]=150 [c]=100)
declare -A PID=()
AGENTS=(a1 a2 a3)

# ---- helpers ---------------------------------------------------------------

# shellcheck source=demo/lib.sh
. "$ROOT/demo/lib.sh"

# status NODE: one line "ROLE EPOCH CONNECTED EFFECTIVE RANK PRIMARY_NODE
# BACKUPS" from the node's status JSON (RANK "-" when not a ranked backup,
# PRIMARY_NODE "-" when it watches none, BACKUPS the group's backups it
# lists, comma-separated, "-" for none), or "down" when it does not answer.
# One tandem and one awk per call, no jq: the same reading as demo/run.sh.
status() {
	{ "$BIN" status --admin "127.0.0.1:${ADMIN[$1]}" --json 2>/dev/null || true; } | awk '
		function val(line) { sub(/^[^:]*: */, "", line); gsub(/[",]/, "", line); return line }
		/^  [^ ]/ { sect = "" }
		/^  "role":/ { role = val($0) }
		/^  "epoch":/ { epoch = val($0) }
		/^  "effective_priority":/ { eff = val($0) }
		/^  "rank":/ { rank = val($0) }
		/^  "agents": \{/ { sect = "agents" }
		/^  "primary": \{/ { sect = "primary" }
		/^  "backups": \[/ { sect = "backups" }
		sect == "agents" && /^    "connected":/ { conn = val($0) }
		sect == "primary" && /^    "node":/ { prim = val($0) }
		sect == "backups" && /^      "node":/ { bk = (bk == "" ? "" : bk ",") val($0) }
		END {
			if (role == "") { print "down"; exit }
			print role, epoch, (conn == "" ? 0 : conn), (eff == "" ? "-" : eff), (rank == "" ? "-" : rank), (prim == "" ? "-" : prim), (bk == "" ? "-" : bk)
		}'
}
# field NODE N: field N (1-based) of status NODE.
field() { status "$1" | cut -d' ' -f"$2"; }
# ineligible NODE: why NODE is not eligible for takeover ("" when it is).
ineligible() {
	{ "$BIN" status --admin "127.0.0.1:${ADMIN[$1]}" --json 2>/dev/null || true; } | awk '
		/^  "ineligible":/ { sub(/^[^:]*: *"/, ""); sub(/",?$/, ""); print }'
}

# wait_for SECONDS WHAT CMD...: poll CMD every 0.2s until it succeeds; die
# saying WHAT (with the three servers' status lines) at the deadline.
wait_for() {
	local secs=$1 what=$2
	shift 2
	local deadline=$(($(now_ms) + secs * 1000))
	while [ "$(now_ms)" -lt "$deadline" ]; do
		"$@" && return 0
		sleep 0.2
	done
	local n
	for n in "${NODES[@]}"; do echo "demo: status $n: $(status "$n")" >&2; done
	die "$what (not within ${secs}s)"
}
is_role() { [ "$(field "$1" 1)" = "$2" ]; }
# follows NODE PRIMARY: NODE is a backup watching PRIMARY.
follows() {
	local s
	s=$(status "$1")
	set -- $s "$2"
	[ "$1" = backup ] && [ "$6" = "$8" ]
}
# serves PRIMARY N BACKUPS: PRIMARY is primary with N agents reporting and
# lists every backup named (comma-separated) with effective priority > 0
# when the last word is "healthy".
serves() {
	local s
	s=$(status "$1")
	set -- $s "$2" "$3"
	[ "$1" = primary ] && [ "$3" -ge "$8" ] || return 1
	local b
	for b in ${9//,/ }; do
		[[ ",$7," == *",$b,"* ]] || return 1
	done
}
# silent NODE: how long NODE (a backup) has heard no heartbeat, in ms.
silent() {
	{ "$BIN" status --admin "127.0.0.1:${ADMIN[$1]}" --json 2>/dev/null || true; } | awk '
		/^  "primary": \{/ { p = 1 } /^  [^ ]/ && !/"primary"/ { p = 0 }
		p && /^    "silent_for_ms":/ { sub(/^[^:]*: */, ""); gsub(/[",]/, ""); print; exit }'
}
eff_is() { [ "$(field "$1" 4)" = "$2" ]; }
agents_on() { # PORT [EPOCH]: every agent's address.yaml names PORT (and EPOCH)
	local a
	for a in "${AGENTS[@]}"; do
		grep -q "^stomp_port: $1\$" "$(agent_file "$a")" || return 1
		[ $# = 1 ] || grep -q "^failover_epoch: $2\$" "$(agent_file "$a")" || return 1
	done
}
agent_file() { echo "$DIR/agents/$1/conf/address.yaml"; }
agent_views() {
	local a out=""
	for a in "${AGENTS[@]}"; do
		out+="$a=$(awk '/^stomp_port:/ { p = $2 } /^failover_epoch:/ { e = $2 } END { print (p == "" ? "-" : p) "@" (e == "" ? "-" : e) }' "$(agent_file "$a")") "
	done
	echo "${out% }"
}
line() { # one status line for the three servers and the agent files
	local n s out=""
	for n in "${NODES[@]}"; do
		s=$(status "$n")
		set -- $s
		if [ "$1" = down ]; then
			out+="$n: down | "
		else
			out+="$n: $(tr '[:lower:]' '[:upper:]' <<<"$1") e$2 eff $4 | "
		fi
	done
	say "${out}files (port@epoch): $(agent_views)"
}
members() { "$BIN" members --admin "127.0.0.1:${ADMIN[$1]}" | sed "s/^/    $1| /"; }
service_logs() {
	local n
	for n in "${NODES[@]}"; do
		printf '    service-%s.log: %s\n' "$n" "$({ tr '\n' ' ' <"$DIR/service-$n.log"; } 2>/dev/null || echo '(empty)')"
	done
}
service_is() { # NODE [WORDS...]: the service log of NODE is exactly WORDS (no WORDS: empty or absent)
	local n=$1
	shift
	[ "$({ tr '\n' ' ' <"$DIR/service-$n.log"; } 2>/dev/null || true)" = "$(printf '%s ' "$@")" ] || { [ $# = 0 ] && [ ! -s "$DIR/service-$n.log" ]; }
}
secs() { printf '%d.%ds' $(($1 / 1000)) $(($1 % 1000 / 100)); }
start_server() {
	"$BIN" server --config "$DIR/$1/tandem.yaml" >>"$DIR/logs/$1.log" 2>&1 &
	PID[$1]=$!
	PIDS+=("$!")
}

# ---- build -------------------------------------------------------------------

T0=$(now_ms)
if [ ! -x "$BIN" ] || [ -n "$(find . -name '*.go' -newer "$BIN" -print -quit 2>/dev/null)" ]; then
	command -v go >/dev/null || die "Go is needed to build $BIN (https://go.dev/dl/)"
	say "building $BIN"
	mkdir -p "$(dirname "$BIN")"
	go build -o "$BIN" ./cmd/tandem
	T0=$(now_ms)
fi
say "$("$BIN" version)"

for n in "${NODES[@]}"; do
	for p in "${BROKER[$n]}" "${ADMIN[$n]}"; do
		port_free "$p" || die "port 127.0.0.1:$p is in use (another demo still running?); free it and retry"
	done
done

DIR=$(mktemp -d "${TMPDIR:-/tmp}/tandem-group.XXXXXX")
mkdir -p "$DIR/logs"

# ---- configs -------------------------------------------------------------------

"$BIN" keygen --out "$DIR/keys" >/dev/null || die "tandem keygen failed"

for n in "${NODES[@]}"; do
	mkdir -p "$DIR/$n/data"
	cat >"$DIR/$n/tandem.yaml" <<EOF
# tandem group demo: server $n
node: $n
data_dir: $DIR/$n/data
listen: 127.0.0.1:${BROKER[$n]}
advertise: 127.0.0.1:${BROKER[$n]}
admin: 127.0.0.1:${ADMIN[$n]}
heartbeat: {period: 1s, reply_period: 5s, fail_window: 5s}
signing_key: $DIR/keys/signing.key
priority: ${PRIO[$n]}
# healthy while $DIR/down-$n does not exist
checks: [{name: svc, command: "test ! -e $DIR/down-$n", interval: 1s, timeout: 1s, fall: 2, rise: 1}]
# run when $n becomes primary / stops being primary
service: {start: "echo started >> $DIR/service-$n.log", stop: "echo stopped >> $DIR/service-$n.log"}
# No agents: globs (the agents are on their own hosts).
log: {format: text, level: info}
EOF
done
# b and c are backups of a.
echo "127.0.0.1:${BROKER[a]}" >"$DIR/b/data/primary_location"
echo "127.0.0.1:${BROKER[a]}" >"$DIR/c/data/primary_location"

for a in "${AGENTS[@]}"; do
	mkdir -p "$DIR/agents/$a/conf"
	cat >"$(agent_file "$a")" <<EOF
# Agent $a (tandem group demo): it needs only where to connect.
stomp_interface: 127.0.0.1
stomp_port: ${BROKER[a]}
use_ssl: 0
EOF
done
say "demo dir $DIR: servers a (priority 100, primary), b (150), c (100); check svc = test ! -e DIR/down-NODE"

# ---- 1. the group ----------------------------------------------------------------

start_server a
wait_for 15 "a did not become primary" is_role a primary
start_server b
start_server c
wait_for 15 "b did not become a backup" is_role b backup
wait_for 15 "c did not become a backup" is_role c backup
for a in "${AGENTS[@]}"; do
	"$BIN" agent --config "$(agent_file "$a")" --server-key "$DIR/keys/signing.pub" --id "$a" >"$DIR/logs/$a.log" 2>&1 &
	PIDS+=("$!")
done
say "started a (pid ${PID[a]}), b (pid ${PID[b]}), c (pid ${PID[c]}) and agents ${AGENTS[*]}"
wait_for 20 "the group did not settle (a primary with 3 agents and backups b and c)" serves a 3 b,c
wait_for 10 "the agents were not bound to a at epoch 1" agents_on "${BROKER[a]}" 1
wait_for 10 "a's service did not start" service_is a started
# b (150) ranks first, c second; both know the primary.
wait_for 10 "b is not rank 0 or c not rank 1" eval '[ "$(field b 5)" = 0 ] && [ "$(field c 5)" = 1 ]'
line
say ">>> 1. tandem members --admin 127.0.0.1:${ADMIN[a]} (the primary's view)"
members a
say ">>> tandem status of c: its rank in the election (b, priority 150, goes first)"
"$BIN" status --admin "127.0.0.1:${ADMIN[c]}" | grep -Ei '^(role|priority|effective|rank|eligible|primary|backups?|  )' | sed 's/^/    c| /' || true
echo

# ---- 2. a health check fails on the primary ----------------------------------------

touch "$DIR/down-a"
T=$(now_ms)
say ">>> 2. touch down-a: a's check svc fails (fall 2, every 1s)"
wait_for 10 "a's effective priority did not drop to 0" eff_is a 0
say "a: check svc DOWN, effective priority 0: it hands over to the best healthy backup"
wait_for 20 "b did not take over from the unhealthy a" is_role b primary
say "b: PRIMARY at epoch $(field b 2), $(secs $(($(now_ms) - T))) after the check failed"
wait_for 15 "a did not become b's backup" follows a b
wait_for 15 "c did not follow b" follows c b
wait_for 15 "the agents did not move to b" agents_on "${BROKER[b]}"
wait_for 15 "b does not serve 3 agents with backups a and c" serves b 3 a,c
wait_for 10 "the services did not move (a: started stopped, b: started)" eval 'service_is a started stopped && service_is b started && service_is c'
line
service_logs
say "c's primary_location (rewritten by tandem): $(cat "$DIR/c/data/primary_location")"
[ "$(cat "$DIR/c/data/primary_location")" = "127.0.0.1:${BROKER[b]}" ] || die "c's primary_location does not name b"
say "a's primary_location (written by a itself): $(cat "$DIR/a/data/primary_location")"
members b
echo

# ---- 3. kill -9 the new primary while a is still unhealthy ---------------------------

kill -KILL "${PID[b]}"
wait "${PID[b]}" 2>/dev/null || true
T=$(now_ms)
say ">>> 3. kill -9 b (pid ${PID[b]}); a is still unhealthy (down-a exists)"
why=$(ineligible a)
say "a: ${why:-eligible?!}"
[ -n "$why" ] || die "a is unhealthy but its status does not say it is not eligible"
# c counts the silence (fail_window 5s); a, unhealthy, never takes over.
deadline=$(($(now_ms) + 30000))
last=0
until is_role c primary; do
	[ "$(now_ms)" -lt "$deadline" ] || wait_for 0 "c did not take over from the dead b" false
	if [ $(($(now_ms) - last)) -ge 1000 ]; then
		last=$(now_ms)
		ms=$(silent c)
		say "c: no heartbeat from b for $(secs "${ms:-0}") (rank $(field c 5); takes over at fail_window 5.0s) | a: $(field a 1), effective $(field a 4)"
	fi
	sleep 0.2
done
say "c: PRIMARY at epoch $(field c 2), $(secs $(($(now_ms) - T))) after the kill"
wait_for 15 "a did not follow c" follows a c
wait_for 15 "the agents did not move to c" agents_on "${BROKER[c]}"
wait_for 15 "c does not serve 3 agents with backup a" serves c 3 a
is_role a backup || die "a took over although unhealthy"
line
service_logs
members c
why=$(ineligible a)
say "tandem status of a: ${why:-eligible?!}"
[ -n "$why" ] || die "a is unhealthy but its status does not say it is not eligible"
"$BIN" status --admin "127.0.0.1:${ADMIN[a]}" | grep -Ei 'eligible|check|svc' | sed 's/^/    a| /' || true

rm -f "$DIR/down-a"
say ">>> rm down-a: a's check svc comes back (rise 1)"
wait_for 10 "a's effective priority did not come back to 100" eff_is a 100
wait_for 10 "c does not list a healthy" eval '"$BIN" members --admin 127.0.0.1:${ADMIN[c]} | grep -Eq "^a +BACKUP .* 100 +100 +ok"'
say "a: healthy again, effective 100, c's backup"
members c
echo

# ---- 4. planned switchover back to a -----------------------------------------------

say ">>> 4. tandem switchover --to a --admin 127.0.0.1:${ADMIN[c]} --token-file c/data/admin.token"
"$BIN" switchover --to a --admin "127.0.0.1:${ADMIN[c]}" --token-file "$DIR/c/data/admin.token" | sed 's/^/    /'
T=$(now_ms)
wait_for 20 "a did not become primary after the switchover" is_role a primary
wait_for 20 "c did not become a's backup" follows c a
wait_for 15 "the agents did not move back to a" agents_on "${BROKER[a]}"
wait_for 15 "a does not serve 3 agents with backup c" serves a 3 c
wait_for 10 "the services did not move (a: started stopped started, c: started stopped)" eval 'service_is a started stopped started && service_is c started stopped'
say "switchover done in $(secs $(($(now_ms) - T))): a PRIMARY at epoch $(field a 2), c its backup"
line
service_logs
members a
echo
echo "--- tandem history --config c/tandem.yaml: every role change of c"
"$BIN" history --config "$DIR/c/tandem.yaml" | sed 's/^/    /'
echo

say "every step happened as expected; stopping every process the demo started"
