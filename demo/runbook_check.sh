#!/usr/bin/env bash
# Runs every procedure of docs/runbook.md, as written there, against real
# tandem processes on loopback, and checks the outcome of each.
#
#   bash demo/runbook_check.sh            # about 90 seconds
#   KEEP=1 bash demo/runbook_check.sh     # keep the temp dir (configs, logs)
#
# The runbook's ```sh blocks are extracted by section ("## N.") and order,
# and run with bash -e after these substitutions: opsc-a's advertise
# 10.0.0.1:61620 -> 127.0.0.1:27720, opsc-b's 10.0.0.2:61620 ->
# 127.0.0.1:27721, the admin address 127.0.0.1:61630 -> the host's admin
# port (27730 / 27731), and in procedure 5b the example epoch 4 -> the epoch
# the previous block printed. `systemctl stop|start tandem` stops/starts the
# host's server process (start returns once the admin API answers, like
# Type=notify); `install` is a no-op. CONF and DATA are set per host.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${TANDEM_BIN:-$ROOT/bin/tandem}
RUNBOOK=$ROOT/docs/runbook.md
declare -A BPORT=([a]=27720 [b]=27721) APORT=([a]=27730 [b]=27731)

if [ ! -x "$BIN" ] || [ -n "$(find . -name '*.go' -newer "$BIN" -print -quit 2>/dev/null)" ]; then
	go build -o "$BIN" ./cmd/tandem
fi
for p in "${BPORT[@]}" "${APORT[@]}"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
		echo "runbook_check: port $p is in use" >&2
		exit 1
	fi
done

L=$(mktemp -d "${TMPDIR:-/tmp}/tandem-runbook.XXXXXX")
PASS=0
cleanup() {
	local rc=$?
	stop_all
	if [ "$rc" -ne 0 ]; then
		echo "runbook_check: FAILED; logs in $L/logs" >&2
	elif [ "${KEEP:-0}" != 1 ]; then
		rm -rf "$L"
	fi
	exit "$rc"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# block SECTION N: the Nth ```sh block (1-based) under "## SECTION".
block() {
	awk -v sec="## $1" -v want="$2" '
		/^## / { in_sec = (index($0, sec) == 1) }
		in_sec && /^```sh[[:space:]]*$/ { n++; grab = (n == want); next }
		grab && /^```[[:space:]]*$/ { grab = 0; exit }
		grab { print }' "$RUNBOOK"
}

server_config() { # HOST
	[ -f "$L/keys/signing.key" ] || "$BIN" keygen --out "$L/keys" >/dev/null || fail "tandem keygen"
	cat <<EOF
node: opsc-$1
data_dir: $L/$1/data
listen: 127.0.0.1:${BPORT[$1]}
advertise: 127.0.0.1:${BPORT[$1]}
admin: 127.0.0.1:${APORT[$1]}
heartbeat: {period: 1s, reply_period: 5s, fail_window: 5s}
signing_key: $L/keys/signing.key
agents: ["$L/agents/*/conf/address.yaml"]
EOF
}

start_server() { # HOST
	"$BIN" server --config "$L/$1.yaml" >>"$L/logs/$1.log" 2>&1 &
	echo $! >"$L/$1.pid"
	local i
	for i in $(seq 150); do
		"$BIN" status --admin "127.0.0.1:${APORT[$1]}" >/dev/null 2>&1 && return 0
		kill -0 "$(cat "$L/$1.pid")" 2>/dev/null || {
			wait "$(cat "$L/$1.pid")" || echo "server $1 exited with $?" >&2
			rm -f "$L/$1.pid"
			return 1
		}
		sleep 0.2
	done
	return 1
}
stop_pidfile() {
	[ -f "$1" ] || return 0
	local p i
	p=$(cat "$1")
	kill "$p" 2>/dev/null || true
	for i in $(seq 50); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
	rm -f "$1"
}
stop_server() { stop_pidfile "$L/$1.pid"; }
stop_all() {
	local f
	for f in "$L"/*.pid; do stop_pidfile "$f"; done
}
start_agents() {
	local a
	for a in a1 a2; do
		"$BIN" agent --config "$L/agents/$a/conf/address.yaml" --server-key "$L/keys/signing.pub" --id "$a" >>"$L/logs/$a.log" 2>&1 &
		echo $! >"$L/agent-$a.pid"
	done
}

field() { # HOST KEY: a top-level field of the status JSON
	"$BIN" status --admin "127.0.0.1:${APORT[$1]}" --json 2>/dev/null |
		sed -n "s/^  \"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p"
}
wait_role() { # HOST ROLE
	local i
	for i in $(seq 150); do
		[ "$(field "$1" role)" = "$2" ] && return 0
		sleep 0.2
	done
	fail "$1 did not become $2 (it is '$(field "$1" role)')"
}
expect_role() { # HOST ROLE
	local r
	r=$(field "$1" role)
	[ "$r" = "$2" ] || fail "$1 is '$r', want '$2'"
}

fresh_pair() {
	stop_all
	rm -rf "$L/a" "$L/b" "$L/agents"
	mkdir -p "$L/a/data" "$L/b/data" "$L/logs"
	server_config a >"$L/a.yaml"
	server_config b >"$L/b.yaml"
	echo "127.0.0.1:${BPORT[a]}" >"$L/b/data/primary_location"
	local a
	for a in a1 a2; do
		mkdir -p "$L/agents/$a/conf"
		printf '# agent %s\nstomp_interface: 127.0.0.1\nstomp_port: %s\nuse_ssl: 0\n' "$a" "${BPORT[a]}" >"$L/agents/$a/conf/address.yaml"
	done
	start_server a
	wait_role a primary
	start_server b
	wait_role b backup
	start_agents
	sleep 3
}

# run SECTION N HOST [SED]: run a runbook block on a host; its output goes
# to stdout and to $L/out.
run() {
	local sec=$1 n=$2 host=$3 extra=${4:-} body
	body=$(block "$sec" "$n")
	[ -n "$body" ] || fail "runbook: no sh block $n in section $sec"
	body=$(sed -e "s/10\.0\.0\.2:61620/127.0.0.1:${BPORT[b]}/g" \
		-e "s/10\.0\.0\.1:61620/127.0.0.1:${BPORT[a]}/g" \
		-e "s/127\.0\.0\.1:61630/127.0.0.1:${APORT[$host]}/g" \
		${extra:+-e "$extra"} <<<"$body")
	echo "== procedure $sec block $n on opsc-$host"
	sed 's/^/   $ /' <<<"$body"
	if ! (
		CONF=$L/$host.yaml DATA=$L/$host/data H=$host
		systemctl() {
			case "$1 $2" in
			"stop tandem") stop_server "$H" ;;
			"start tandem") start_server "$H" ;;
			*) echo "systemctl $*: not emulated" >&2 && return 1 ;;
			esac
		}
		install() { :; }
		tandem() { "$BIN" "$@"; }
		set -e
		eval "$body"
	) 2>&1 | tee "$L/out" | sed 's/^/     /'; then
		fail "procedure $sec block $n failed"
	fi
}
ok() {
	PASS=$((PASS + 1))
	echo "ok - $*"
}

# 1. After an automatic failover: a dies, b takes over; a rejoins.
fresh_pair
kill -9 "$(cat "$L/a.pid")"
wait_role b primary
sleep 1
run 1. 1 b
grep -q "2 at this server's epoch (2)" "$L/out" || fail "agents not at epoch 2 after the failover"
run 1. 2 a
expect_role a backup
expect_role b primary
ok "1. after an automatic failover: opsc-a is the backup of opsc-b"

# 2. After a network split: a is frozen past fail_window, b takes over, a
# wakes up fenced; a is recognised and rejoined.
fresh_pair
kill -STOP "$(cat "$L/a.pid")"
wait_role b primary
sleep 1
kill -CONT "$(cat "$L/a.pid")"
wait_role a fenced
run 2. 1 a
grep -q "FENCED" "$L/out" && grep -q "^503$" "$L/out" || fail "fenced status or 503 not shown"
run 2. 2 b
grep -q "PRIMARY" "$L/out" || fail "opsc-b not primary"
run 2. 3 a
expect_role a backup
ok "2. after a network split: fenced opsc-a recognised (FENCED, 503) and rejoined"

# 3. Planned switchover, run on the primary (opsc-b here).
epoch_before=$(field b epoch)
run 3. 1 b
run 3. 2 b
wait_role a primary
wait_role b backup
[ "$(field a epoch)" -gt "$epoch_before" ] || fail "switchover did not raise the epoch"
ok "3. planned switchover: opsc-a primary at epoch $(field a epoch), opsc-b its backup"

# 4. Upgrade with maintenance mode: b (backup) paused, a restarted, b
# restarted, maintenance off; no takeover happened.
epoch_before=$(field a epoch)
run 4. 1 b
grep -q "ON (automatic failover paused)" "$L/out" || fail "maintenance not shown ON"
run 4. 2 a
run 4. 3 b
expect_role a primary
expect_role b backup
[ "$(field a epoch)" = "$epoch_before" ] || fail "the epoch changed during the upgrade"
[ "$(field b maintenance)" = false ] || fail "maintenance still on"
ok "4. upgrade in maintenance mode: no takeover, maintenance off again"

# 5a. a's data dir is lost while b is primary: rebuild and rejoin.
"$BIN" switchover --config "$L/a.yaml" >/dev/null
wait_role b primary
wait_role a backup
old_id=$(field a failover_id)
run 5. 1 a
run 5. 2 a
expect_role a backup
[ "$(field a failover_id)" != "$old_id" ] || fail "expected a new failover id"
ok "5a. lost data dir on the backup side: rebuilt and rejoined"

# 5b. b's state.json is corrupt and the peer is gone: restore the epoch.
stop_server a
stop_server b
echo '{"epoch": 4' >"$L/b/data/state.json"
run 5. 3 b
E=$(tail -n 1 "$L/out")
[[ $E =~ ^[0-9]+$ ]] || fail "expected the highest epoch, got '$E'"
run 5. 4 b "s/ 4 > \"\$DATA/ $E > \"\$DATA/"
expect_role b primary
[ "$(field b epoch)" = "$E" ] || fail "opsc-b epoch $(field b epoch), want $E"
ok "5b. corrupt state.json on the primary: back at epoch $E"

# 6. a is a clone of b (same failover_id), started later: it stops by
# itself with exit 2; then regenerate and rejoin.
cp "$L/b/data/failover_id" "$L/a/data/failover_id"
start_server a
pid=$(cat "$L/a.pid")
for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "the clone kept running with a duplicate failover_id"
rc=0
wait "$pid" || rc=$?
rm -f "$L/a.pid"
[ "$rc" = 2 ] || fail "the clone exited $rc, want 2"
grep -q "duplicate failover_id" "$L/logs/a.log" || fail "no duplicate failover_id message"
run 6. 1 a
expect_role a backup
[ "$(field a failover_id)" != "$(field b failover_id)" ] || fail "ids still equal"
ok "6. duplicate failover_id: the clone stopped by itself (exit 2), got a new id and is the backup"

# 7. Agents not rewritten: a stale file and a broken one, fixed and repointed.
mkdir -p "$L/agents/a3/conf" "$L/agents/a4/conf"
printf 'stomp_interface: 127.0.0.1\nstomp_port: %s\nfailover_epoch: 1\n' "${BPORT[a]}" >"$L/agents/a3/conf/address.yaml"
printf 'stomp_interface: [oops\n' >"$L/agents/a4/conf/address.yaml"
run 7. 1 b
grep -q "1 invalid" "$L/out" || fail "the invalid file is not reported"
printf '# fixed by hand\nstomp_interface: 127.0.0.1\n' >"$L/agents/a4/conf/address.yaml"
run 7. 2 b
"$BIN" agents list --config "$L/b.yaml" | tail -n 1 | grep -q "4 managed, 4 at this server's epoch" || fail "not every file repointed"
ok "7. agents not rewritten: listed, repaired and repointed"

echo "runbook_check: all $PASS procedures passed"
