# Shared by the demos (run.sh, group.sh): timestamps, say/die, and the
# cleanup trap that stops every PID a demo started (PIDS) and keeps or
# removes its temp dir (DIR; KEEP=1 keeps it). Sourced, not run.
# shellcheck shell=bash

T0=""
now_ms() {
	if [ -n "${EPOCHREALTIME:-}" ]; then
		local t=${EPOCHREALTIME/[.,]/}
		echo $((t / 1000))
	else
		echo $(($(date +%s) * 1000))
	fi
}
# say prints a line stamped with the time since the demo started.
say() {
	local ms=$(($(now_ms) - T0))
	printf '[%3d.%ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"
}
die() {
	echo "demo: $*" >&2
	exit 1
}

PIDS=()
DIR=""
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	local p
	for p in ${PIDS[@]+"${PIDS[@]}"}; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in ${PIDS[@]+"${PIDS[@]}"}; do
		for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	if [ -n "$DIR" ]; then
		if [ "$rc" -ne 0 ]; then
			echo "demo: FAILED (exit $rc); last lines of each log:" >&2
			for f in "$DIR"/logs/*.log; do
				[ -f "$f" ] || continue
				echo "--- $f" >&2
				tail -n 15 "$f" >&2
			done
		fi
		if [ "${KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
			echo "demo: files kept in $DIR" >&2
		else
			rm -rf "$DIR"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
