#!/bin/sh
# tandem hook: move a floating IP address to this server.
#
#   floating-ip.sh up     add the address here and announce it (gratuitous ARP)
#   floating-ip.sh down   remove it from here
#
# tandem.yaml (hooks run with /bin/sh -c, so variables can be set inline):
#   hooks:
#     before_takeover: FLOATING_IP=10.0.0.100/24 FLOATING_DEV=eth0 /usr/local/lib/tandem/hooks/floating-ip.sh up
#     on_fenced:       FLOATING_IP=10.0.0.100/24 FLOATING_DEV=eth0 /usr/local/lib/tandem/hooks/floating-ip.sh down
#
# Needs ip(8) and arping(8) (iputils), and CAP_NET_ADMIN + CAP_NET_RAW: see
# the commented lines in deploy/systemd/tandem.service.
#
# Environment: FLOATING_IP (ADDRESS/PREFIX, required), FLOATING_DEV (required),
# ARP_COUNT (default 3); from tandem: TANDEM_NODE, TANDEM_FAILOVER_ID,
# TANDEM_EPOCH, TANDEM_REASON, TANDEM_OLD_PRIMARY, TANDEM_OLD_PRIMARY_ADDRESS
# (takeover hooks), TANDEM_FENCED_BY, TANDEM_FENCED_BY_EPOCH (on_fenced).
# DRY_RUN=1 prints the commands instead of running them.
#
# Idempotent: adding an address that is already there, or removing one that
# is not, does nothing (a hook may run twice after a crash).
set -eu

run() {
	if [ "${DRY_RUN:-0}" = 1 ]; then
		echo "+ $*"
	else
		"$@"
	fi
}

die() {
	echo "floating-ip: $*" >&2
	exit 2
}

action=${1:-}
[ -n "${FLOATING_IP:-}" ] || die "FLOATING_IP (ADDRESS/PREFIX, e.g. 10.0.0.100/24) is not set"
[ -n "${FLOATING_DEV:-}" ] || die "FLOATING_DEV (e.g. eth0) is not set"
case $FLOATING_IP in
*/*) ;;
*) die "FLOATING_IP=$FLOATING_IP: expected ADDRESS/PREFIX, e.g. 10.0.0.100/24" ;;
esac
addr=${FLOATING_IP%/*}

# present: is the address on the device? (Dry run: assume the opposite of
# what the action wants, so that every command is shown.)
present() {
	if [ "${DRY_RUN:-0}" = 1 ]; then
		[ "$action" = down ]
		return
	fi
	ip -o addr show dev "$FLOATING_DEV" | grep -q " $addr/"
}

case $action in
up)
	echo "floating-ip: taking $FLOATING_IP on $FLOATING_DEV for ${TANDEM_NODE:-?} (epoch ${TANDEM_EPOCH:-?}, ${TANDEM_REASON:-?}; old primary ${TANDEM_OLD_PRIMARY:-unknown} ${TANDEM_OLD_PRIMARY_ADDRESS:-})"
	if present; then
		echo "floating-ip: $addr is already on $FLOATING_DEV"
	else
		run ip addr add "$FLOATING_IP" dev "$FLOATING_DEV"
	fi
	# Tell the neighbours (switches, routers, clients) where the address lives now.
	if [ "${DRY_RUN:-0}" = 1 ] || command -v arping >/dev/null 2>&1; then
		run arping -q -U -c "${ARP_COUNT:-3}" -I "$FLOATING_DEV" "$addr"
	else
		echo "floating-ip: arping not installed: neighbours will learn the move when their ARP caches expire" >&2
	fi
	;;
down)
	echo "floating-ip: releasing $FLOATING_IP on $FLOATING_DEV: ${TANDEM_NODE:-?} (epoch ${TANDEM_EPOCH:-?}) was fenced by ${TANDEM_FENCED_BY:-?} at epoch ${TANDEM_FENCED_BY_EPOCH:-?}"
	if present; then
		run ip addr del "$FLOATING_IP" dev "$FLOATING_DEV"
	else
		echo "floating-ip: $addr is not on $FLOATING_DEV"
	fi
	;;
*)
	die "usage: floating-ip.sh up|down"
	;;
esac
