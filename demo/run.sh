#!/usr/bin/env bash
# make demo: a primary (a), a backup (b) and three agents on loopback, with
# short timings (heartbeat every 1s, fail_window 5s). It shows live status,
# kills the primary with SIGKILL, shows the backup counting the silence,
# taking over and every agent's address.yaml moving to it, prints the diff of
# each address.yaml, restarts the old primary (refused: fenced), rejoins it,
# hands the role back with a switchover, prints b's role history (tandem
# history), then stops everything it started. About 20 seconds.
#
# The agents run as on their own hosts: no server can write their files
# (the servers have no agents: globs). Each agent rewrites its own
# address.yaml when the new primary's signed rebind reaches it on its
# standby link (the sidecar way of running tandem next to DataStax agents).
#
#   bash demo/run.sh                 # or: make demo
#   KEEP=1 bash demo/run.sh          # keep the temp dir (configs, data dirs, logs)
#   HEARTBEAT_BROKER=stomp://127.0.0.1:61613 bash demo/run.sh
#                                    # heartbeat channel on an external broker
#   ACTIVEMQ=1 bash demo/run.sh      # make demo-activemq: starts a private ActiveMQ
#                                    # Classic (Debian's activemq package, or
#                                    # ACTIVEMQ_JAR=.../bin/activemq.jar) on port 27613
#                                    # for the heartbeat channel, and stops it at the end
#
# Ports (loopback only; the script stops if one is taken): embedded brokers
# 27620 (a) and 27621 (b), admin APIs 27630 (a) and 27631 (b): below the
# kernel's ephemeral range, so no outgoing connection is ever given one.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${TANDEM_BIN:-$ROOT/bin/tandem}
HB_BROKER=${HEARTBEAT_BROKER:-}
BROKER_A=27620 BROKER_B=27621 ADMIN_A=27630 ADMIN_B=27631
AGENTS=(a1 a2 a3)

# ---- helpers ---------------------------------------------------------------

# shellcheck source=demo/lib.sh
. "$ROOT/demo/lib.sh"

# status ADMIN_PORT: one line "ROLE EPOCH CONNECTED BACKUP_CONFIGURED
# LAST_HEARTBEAT_AGE_MS SILENT_FOR_MS" from the server's status JSON, or
# "down" when it does not answer. One tandem and one awk per call: the demo
# polls often and may run on a busy machine.
status() {
	{ "$BIN" status --admin "127.0.0.1:$1" --json 2>/dev/null || true; } | awk '
		function val(line) { sub(/^[^:]*: */, "", line); gsub(/[",]/, "", line); return line }
		/^  "role":/ { role = val($0) }
		/^  "epoch":/ { epoch = val($0) }
		/^  "backup_configured":/ { bc = val($0) }
		/^  "agents": \{/ { inag = 1 }
		inag && /^    "connected":/ { conn = val($0); inag = 0 }
		/"last_heartbeat_age_ms":/ { age = val($0) }
		/"silent_for_ms":/ { silent = val($0) }
		END {
			if (role == "") { print "down"; exit }
			print role, epoch, (conn == "" ? 0 : conn), (bc == "" ? "false" : bc), (age == "" ? -1 : age), (silent == "" ? 0 : silent)
		}'
}

agent_file() { echo "$DIR/agents/$1/conf/address.yaml"; }
# agent_views: "a1=PORT@EPOCH a2=..." read from each address.yaml in one pass
# (each file read once, so a rewrite is never seen half old, half new).
agent_views() {
	local a files=()
	for a in "${AGENTS[@]}"; do files+=("$(agent_file "$a")"); done
	awk '
		FNR == 1 { if (NR > 1) out = (out == "" ? view : out " " view); n = FILENAME; sub(/\/conf\/address\.yaml$/, "", n); sub(/.*\//, "", n); port = "-"; epoch = "-" }
		/^stomp_port:/ { port = $2 }
		/^failover_epoch:/ { epoch = $2 }
		{ view = n "=" port "@" epoch }
		END { print (out == "" ? view : out " " view) }' "${files[@]}"
}

secs() { printf '%d.%ds' $(($1 / 1000)) $(($1 % 1000 / 100)); }
upper() { tr '[:lower:]' '[:upper:]' <<<"$1"; }

# server_line NAME STATUS: "a: PRIMARY epoch 1" (or "a: down").
server_line() {
	local role epoch conn bc age silent
	read -r role epoch conn bc age silent <<<"$2"
	if [ "$role" = down ]; then
		echo "$1: down"
	elif [ "$role" = backup ] && [ "$age" -ge 0 ]; then
		echo "$1: BACKUP epoch $epoch (last heartbeat ${age}ms ago)"
	else
		echo "$1: $(upper "$role") epoch $epoch"
	fi
}

# live: one status line for both servers and every agent file. It leaves
# the status lines of a and b in SA and SB.
SA="" SB=""
live() {
	SA=$(status $ADMIN_A)
	SB=$(status $ADMIN_B)
	local conn=0 r
	for r in "$SA" "$SB"; do
		set -- $r
		if [ "$1" = primary ]; then conn=$3; fi
	done
	say "$(server_line a "$SA") | $(server_line b "$SB") | agents connected $conn | files (port@epoch): $(agent_views)"
}

# wait_role ADMIN ROLE SECONDS
wait_role() {
	local deadline=$(($(now_ms) + $3 * 1000))
	while [ "$(now_ms)" -lt "$deadline" ]; do
		[ "$(status "$1" | cut -d' ' -f1)" = "$2" ] && return 0
		sleep 0.1
	done
	return 1
}

# ---- build -------------------------------------------------------------------

T0=$(now_ms)
if [ ! -x "$BIN" ] || [ -n "$(find . -name '*.go' -newer "$BIN" -print -quit 2>/dev/null)" ]; then
	command -v go >/dev/null || die "Go is needed to build $BIN (https://go.dev/dl/)"
	say "building $BIN"
	mkdir -p "$(dirname "$BIN")"
	go build -o "$BIN" ./cmd/tandem
	say "built $BIN"
	T0=$(now_ms) # the demo's clock starts after the build
fi
say "$("$BIN" version)"

for p in $BROKER_A $BROKER_B $ADMIN_A $ADMIN_B; do
	port_free "$p" || die "port 127.0.0.1:$p is in use (another demo still running?); free it and retry"
done

DIR=$(mktemp -d "${TMPDIR:-/tmp}/tandem-demo.XXXXXX")
mkdir -p "$DIR/logs" "$DIR/a" "$DIR/b/data" "$DIR/before"

# ---- optional: a private ActiveMQ for the heartbeat channel ---------------------

if [ "${ACTIVEMQ:-0}" = 1 ]; then
	AMQ_JAR=${ACTIVEMQ_JAR:-/usr/share/activemq/bin/activemq.jar}
	AMQ_HOME=$(dirname "$(dirname "$AMQ_JAR")")
	AMQ_PORT=27613
	[ -f "$AMQ_JAR" ] || die "ActiveMQ not found at $AMQ_JAR (apt-get install activemq, or set ACTIVEMQ_JAR)"
	command -v java >/dev/null || die "ActiveMQ needs java"
	port_free $AMQ_PORT || die "port 127.0.0.1:$AMQ_PORT is in use"
	A=$DIR/activemq
	mkdir -p "$A/conf" "$A/data" "$A/tmp"
	# persistent=false: nothing kept on disk. hbGracePeriodMultiplier=1.5:
	# with ActiveMQ's default (1.0) it drops STOMP clients whose heart-beats
	# are on time.
	cat >"$A/conf/activemq.xml" <<EOF
<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="tandem-demo"
          persistent="false" useJmx="false" advisorySupport="false" dataDirectory="$A/data">
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:$AMQ_PORT?transport.hbGracePeriodMultiplier=1.5"/>
    </transportConnectors>
  </broker>
</beans>
EOF
	printf '%s\n' 'log4j.rootLogger=WARN, stdout' 'log4j.logger.org.apache.activemq.broker.BrokerService=INFO' \
		'log4j.appender.stdout=org.apache.log4j.ConsoleAppender' 'log4j.appender.stdout.layout=org.apache.log4j.PatternLayout' \
		'log4j.appender.stdout.layout.ConversionPattern=%d %-5p %c{1} - %m%n' >"$A/conf/log4j.properties"
	# The JVM directly (Debian's wrapper overrides the base dir), with the
	# module flags Java 17 needs.
	(cd "$A" && exec java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
		--add-opens java.base/java.security=ALL-UNNAMED --add-opens java.base/java.net=ALL-UNNAMED \
		--add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/java.util=ALL-UNNAMED \
		--add-opens java.naming/javax.naming.spi=ALL-UNNAMED --add-opens java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED \
		--add-opens java.base/java.util.concurrent=ALL-UNNAMED --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED \
		-Dactivemq.home="$AMQ_HOME" -Dactivemq.base="$A" -Dactivemq.conf="$A/conf" -Dactivemq.data="$A/data" \
		-Dactivemq.classpath="$A/conf" -Djava.io.tmpdir="$A/tmp" \
		-jar "$AMQ_JAR" start "xbean:file:$A/conf/activemq.xml") >"$DIR/logs/activemq.log" 2>&1 &
	AMQ_PID=$!
	PIDS+=("$AMQ_PID")
	say "starting ActiveMQ (pid $AMQ_PID) on 127.0.0.1:$AMQ_PORT for the heartbeat channel"
	deadline=$(($(now_ms) + 60000))
	while port_free $AMQ_PORT; do
		[ "$(now_ms)" -lt "$deadline" ] || die "ActiveMQ did not listen within 60s (see $DIR/logs/activemq.log)"
		kill -0 "$AMQ_PID" 2>/dev/null || die "ActiveMQ exited (see $DIR/logs/activemq.log)"
		sleep 0.2
	done
	say "ActiveMQ is up"
	HB_BROKER=stomp://127.0.0.1:$AMQ_PORT
fi

# ---- configs -------------------------------------------------------------------

# The group key: servers sign every message with signing.key, agents verify
# with signing.pub (secure by default: a server without a key refuses to start).
"$BIN" keygen --out "$DIR/keys" >/dev/null || die "tandem keygen failed"
say "group key: $DIR/keys/signing.key (servers), $DIR/keys/signing.pub (agents)"

server_config() { # NAME BROKER_PORT ADMIN_PORT
	cat <<EOF
# tandem demo: server $1
node: $1
data_dir: $DIR/$1/data
listen: 127.0.0.1:$2          # embedded broker: agents (and the backup) connect here
advertise: 127.0.0.1:$2       # what agents are told while $1 is active
admin: 127.0.0.1:$3           # tandem status --admin 127.0.0.1:$3
heartbeat: {period: 1s, reply_period: 5s, fail_window: 5s}
signing_key: $DIR/keys/signing.key   # the group key (tandem keygen)
# No agents: globs — the agents' files are theirs (on their own hosts);
# the servers reach them over the bus.
log: {format: text, level: info}
EOF
	if [ -n "$HB_BROKER" ]; then echo "heartbeat_broker: $HB_BROKER"; fi
}
server_config a $BROKER_A $ADMIN_A >"$DIR/a/tandem.yaml"
server_config b $BROKER_B $ADMIN_B >"$DIR/b/tandem.yaml"
# b is a backup of a: its data dir names the primary.
echo "127.0.0.1:$BROKER_A" >"$DIR/b/data/primary_location"

for a in "${AGENTS[@]}"; do
	mkdir -p "$DIR/agents/$a/conf"
	cat >"$(agent_file "$a")" <<EOF
# Agent $a (tandem demo). An OpsCenter-style address.yaml. It needs only
# where to connect: the primary rebinds a new agent (failover_id,
# failover_epoch, failover_sig) and names its failover servers; the agent
# rewrites stomp_interface, stomp_port and those keys in place; every other
# key, the key order and every comment stay byte for byte.
stomp_interface: 127.0.0.1   # the server this agent reports to
stomp_port: $BROKER_A
use_ssl: 0

# Keys tandem never touches:
agent_rpc_interface: 127.0.0.1
cassandra_conf: /etc/cassandra/cassandra.yaml
EOF
done
say "demo dir $DIR (configs, data dirs, logs in logs/)"

# ---- start ---------------------------------------------------------------------

"$BIN" server --config "$DIR/a/tandem.yaml" >"$DIR/logs/a.log" 2>&1 &
PID_A=$!
PIDS+=("$PID_A")
say "started server a (pid $PID_A): no primary_location, so it is the primary"
wait_role $ADMIN_A primary 15 || die "server a did not become primary (see $DIR/logs/a.log)"
say "a is PRIMARY at epoch 1: it rebinds the agents, whose files name no token yet"

"$BIN" server --config "$DIR/b/tandem.yaml" >"$DIR/logs/b.log" 2>&1 &
PID_B=$!
PIDS+=("$PID_B")
say "started server b (pid $PID_B): primary_location = 127.0.0.1:$BROKER_A, so it is a backup of a"
wait_role $ADMIN_B backup 15 || die "server b did not become backup (see $DIR/logs/b.log)"
say "b is BACKUP"

for a in "${AGENTS[@]}"; do
	"$BIN" agent --config "$(agent_file "$a")" --server-key "$DIR/keys/signing.pub" --id "$a" >"$DIR/logs/$a.log" 2>&1 &
	PIDS+=("$!")
done
say "started agents ${AGENTS[*]}"

# Live status until a sees all three agents, the backup is heard, and a bit more.
deadline=$(($(now_ms) + 15000))
steady=0
while [ "$(now_ms)" -lt "$deadline" ]; do
	t=$(now_ms)
	live
	read -r _ _ conn bc _ _ <<<"$SA"
	if [ "$conn" = "${#AGENTS[@]}" ] && [ "$bc" = true ]; then
		steady=$((steady + 1))
		[ "$steady" -ge 3 ] && break
	fi
	left=$((1000 - ($(now_ms) - t)))
	if [ "$left" -gt 0 ]; then sleep "0.$(printf '%03d' "$left")"; fi
done
[ "$steady" -ge 3 ] || die "the pair did not settle (agents connected to a, backup replying) within 15s"
echo
"$BIN" status --admin 127.0.0.1:$ADMIN_A | sed 's/^/    a| /'
echo
"$BIN" status --admin 127.0.0.1:$ADMIN_B | sed 's/^/    b| /'
echo

for a in "${AGENTS[@]}"; do cp "$(agent_file "$a")" "$DIR/before/$a.address.yaml"; done

# ---- failover --------------------------------------------------------------------

kill -KILL "$PID_A"
wait "$PID_A" 2>/dev/null || true
T_KILL=$(now_ms)
say ">>> kill -9 the primary a (pid $PID_A)"

seen_files=$(agent_views)
last_role="backup"
last_tick=0
last_conn=""
last_silent=0
done_at=0
deadline=$(($(now_ms) + 30000))
while [ "$(now_ms)" -lt "$deadline" ]; do
	read -r role epoch conn _ _ silent <<<"$(status $ADMIN_B)"
	t=$(now_ms)
	if [ "$role" = taking-over ] && [ "$last_role" != taking-over ]; then
		say "b: TAKING-OVER: new epoch persisted, rewriting the agent files"
		last_role=$role
	fi
	views=$(agent_views)
	if [ "$views" != "$seen_files" ]; then
		read -ra old <<<"$seen_files"
		read -ra cur <<<"$views"
		for i in "${!cur[@]}"; do
			if [ "${cur[$i]}" != "${old[$i]:-}" ]; then
				say "${cur[$i]%%=*}: address.yaml rewritten: stomp_port@epoch ${old[$i]#*=} -> ${cur[$i]#*=}"
			fi
		done
		seen_files=$views
	fi
	if [ "$role" != down ] && [ "$role" != "$last_role" ]; then
		case "$role" in
		primary) say "b: PRIMARY at epoch $epoch, $(secs $((t - T_KILL))) after the kill" ;;
		*) say "b: $(upper "$role") epoch $epoch" ;;
		esac
		last_role=$role
	fi
	if [ "$role" = backup ] && [ $((t - last_tick)) -ge 1000 ]; then
		if [ "$silent" -lt "$last_silent" ]; then
			say "b: silence window restarted: b's own loop was paused (a loaded machine?); it never blames the primary for its own stall"
		fi
		say "b: no heartbeat for $(secs "$silent") (takes over at fail_window 5.0s)"
		last_tick=$t last_silent=$silent
	fi
	if [ "$role" = primary ]; then
		if [ "$conn" != "$last_conn" ]; then
			say "b: $conn of ${#AGENTS[@]} agents report to b"
			last_conn=$conn
		fi
		if [ "$conn" = "${#AGENTS[@]}" ]; then
			done_at=$t
			break
		fi
	fi
	sleep 0.2
done
[ "$done_at" -gt 0 ] || die "b did not take over with every agent within 30s of the kill"
say ">>> failover done: b is primary at epoch $epoch with all ${#AGENTS[@]} agents, $(secs $((done_at - T_KILL))) after the kill"
echo
"$BIN" status --admin 127.0.0.1:$ADMIN_B | sed 's/^/    b| /'
echo
"$BIN" status --admin 127.0.0.1:$ADMIN_B --json | grep -E "\"(remote|bound)\"" | sed "s/^ */    b agents /"
echo

# ---- the files, before and after -------------------------------------------------

for a in "${AGENTS[@]}"; do
	echo "--- $a/conf/address.yaml: before and after the failover"
	diff -u --label "before" --label "after" "$DIR/before/$a.address.yaml" "$(agent_file "$a")" || true
	echo
done

# ---- the old primary comes back: fenced, rejoined, then a switchover -------------

say ">>> restart a as it was (no primary_location): it must not act as primary"
set +e
"$BIN" server --config "$DIR/a/tandem.yaml" >"$DIR/logs/a-restart.log" 2>&1
code=$?
set -e
[ "$code" = 3 ] || die "a restarted with exit $code, want 3 (fenced: a higher epoch exists); see $DIR/logs/a-restart.log"
say "a refused to start (exit 3, fenced): $(tail -n 1 "$DIR/logs/a-restart.log" | cut -c1-160)..."
say ">>> the runbook's way back: tandem rejoin, then start a as b's backup"
"$BIN" rejoin --config "$DIR/a/tandem.yaml" --primary "127.0.0.1:$BROKER_B" | sed 's/^/    /'
"$BIN" server --config "$DIR/a/tandem.yaml" >"$DIR/logs/a.log" 2>&1 &
PID_A=$!
PIDS+=("$PID_A")
wait_role $ADMIN_A backup 15 || die "a did not come back as backup (see $DIR/logs/a.log)"
deadline=$(($(now_ms) + 15000))
until "$BIN" status --admin 127.0.0.1:$ADMIN_B --json 2>/dev/null | grep -q '"backup_configured": true'; do
	[ "$(now_ms)" -lt "$deadline" ] || die "b never heard its new backup a"
	sleep 0.2
done
say "a is b's BACKUP"
say ">>> planned switchover back to a: tandem switchover --config b/tandem.yaml"
"$BIN" switchover --config "$DIR/b/tandem.yaml" | sed 's/^/    /'
T_SW=$(now_ms)
wait_role $ADMIN_A primary 20 || die "a did not become primary after the switchover"
wait_role $ADMIN_B backup 20 || die "b did not become a's backup after the switchover"
read -r _ epoch _ _ _ _ <<<"$(status $ADMIN_A)"
say "switchover done in $(secs $(($(now_ms) - T_SW))): a is PRIMARY at epoch $epoch, b its BACKUP (no rejoin needed)"
echo
"$BIN" members --config "$DIR/a/tandem.yaml" | sed 's/^/    /'
echo

# ---- what b's event log recorded ------------------------------------------------

echo "--- tandem history --config b/tandem.yaml: every role change of b, from its event log"
"$BIN" history --config "$DIR/b/tandem.yaml" | sed 's/^/    /'
echo

say "stopping every process the demo started"
