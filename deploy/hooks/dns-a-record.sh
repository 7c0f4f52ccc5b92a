#!/bin/sh
# tandem hook: point a DNS A record at this server (RFC 2136 dynamic update
# with nsupdate(1), e.g. BIND or any server that accepts TSIG-signed updates).
#
# tandem.yaml:
#   hooks:
#     after_takeover: /usr/local/lib/tandem/hooks/dns-a-record.sh
#
# with, e.g. in /etc/tandem/hooks.env (EnvironmentFile= of the unit):
#   DNS_SERVER=10.0.0.53
#   DNS_ZONE=example.com
#   DNS_NAME=opscenter.example.com
#   DNS_ADDRESS=10.0.0.2            # this server's address
#   DNS_TTL=30
#   DNS_KEY_FILE=/etc/tandem/tandem-update.key   # TSIG key, readable by tandem
#
# Clients cache the old answer for up to the previous TTL: keep it short.
# Nothing to do on on_fenced: the new primary updates the record.
#
# Environment from tandem: TANDEM_NODE, TANDEM_FAILOVER_ID, TANDEM_EPOCH,
# TANDEM_REASON, TANDEM_OLD_PRIMARY, TANDEM_OLD_PRIMARY_ADDRESS.
# DRY_RUN=1 prints the nsupdate command and its input instead of running it.
#
# Idempotent: the update replaces the record set with this one address.
set -eu

die() {
	echo "dns-a-record: $*" >&2
	exit 2
}

[ -n "${DNS_SERVER:-}" ] || die "DNS_SERVER is not set"
[ -n "${DNS_ZONE:-}" ] || die "DNS_ZONE is not set"
[ -n "${DNS_NAME:-}" ] || die "DNS_NAME (the record's fully qualified name) is not set"
[ -n "${DNS_ADDRESS:-}" ] || die "DNS_ADDRESS (this server's IPv4 address) is not set"
ttl=${DNS_TTL:-30}
name=${DNS_NAME%.}

set -- nsupdate
if [ -n "${DNS_KEY_FILE:-}" ]; then
	set -- "$@" -k "$DNS_KEY_FILE"
fi

script="server $DNS_SERVER
zone $DNS_ZONE
update delete $name. A
update add $name. $ttl A $DNS_ADDRESS
send"

echo "dns-a-record: $DNS_NAME -> $DNS_ADDRESS (ttl $ttl) for ${TANDEM_NODE:-?} (epoch ${TANDEM_EPOCH:-?}, ${TANDEM_REASON:-?}; old primary ${TANDEM_OLD_PRIMARY:-unknown} ${TANDEM_OLD_PRIMARY_ADDRESS:-})"
if [ "${DRY_RUN:-0}" = 1 ]; then
	echo "+ $* <<EOF"
	printf '%s\n' "$script"
	echo "EOF"
	exit 0
fi
printf '%s\n' "$script" | "$@"
echo "dns-a-record: done"
