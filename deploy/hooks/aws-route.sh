#!/bin/sh
# tandem hook: point a cloud route table entry at this server (AWS VPC).
# The "floating IP" of a VPC: a route for a virtual address (a /32 outside
# the subnets) whose target is the active server's network interface.
#
# tandem.yaml:
#   hooks:
#     before_takeover: /usr/local/lib/tandem/hooks/aws-route.sh
#
# with, e.g. in /etc/tandem/hooks.env (EnvironmentFile= of the unit):
#   ROUTE_TABLE_ID=rtb-0123456789abcdef0
#   DEST_CIDR=10.0.255.10/32
#   NETWORK_INTERFACE_ID=eni-0123456789abcdef0   # this server's ENI
#   AWS_REGION=eu-west-1
#
# Needs the aws CLI and ec2:ReplaceRoute / ec2:CreateRoute permission (an
# instance role is best: no keys on disk). The instance's ENI must have
# source/destination checking disabled. Nothing to do on on_fenced: the new
# primary moves the route.
#
# Environment from tandem: TANDEM_NODE, TANDEM_FAILOVER_ID, TANDEM_EPOCH,
# TANDEM_REASON, TANDEM_OLD_PRIMARY, TANDEM_OLD_PRIMARY_ADDRESS.
# DRY_RUN=1 prints the commands instead of running them.
#
# Idempotent: replacing a route with the same target is a no-op.
set -eu

run() {
	if [ "${DRY_RUN:-0}" = 1 ]; then
		echo "+ $*"
	else
		"$@"
	fi
}

die() {
	echo "aws-route: $*" >&2
	exit 2
}

[ -n "${ROUTE_TABLE_ID:-}" ] || die "ROUTE_TABLE_ID (rtb-...) is not set"
[ -n "${DEST_CIDR:-}" ] || die "DEST_CIDR (e.g. 10.0.255.10/32) is not set"
[ -n "${NETWORK_INTERFACE_ID:-}" ] || die "NETWORK_INTERFACE_ID (this server's eni-...) is not set"

echo "aws-route: $DEST_CIDR in $ROUTE_TABLE_ID -> $NETWORK_INTERFACE_ID for ${TANDEM_NODE:-?} (epoch ${TANDEM_EPOCH:-?}, ${TANDEM_REASON:-?}; old primary ${TANDEM_OLD_PRIMARY:-unknown} ${TANDEM_OLD_PRIMARY_ADDRESS:-})"
if [ "${DRY_RUN:-0}" = 1 ]; then
	run aws ec2 replace-route --route-table-id "$ROUTE_TABLE_ID" \
		--destination-cidr-block "$DEST_CIDR" --network-interface-id "$NETWORK_INTERFACE_ID"
	echo "(if the route does not exist yet:)"
	run aws ec2 create-route --route-table-id "$ROUTE_TABLE_ID" \
		--destination-cidr-block "$DEST_CIDR" --network-interface-id "$NETWORK_INTERFACE_ID"
	exit 0
fi
if ! aws ec2 replace-route --route-table-id "$ROUTE_TABLE_ID" \
	--destination-cidr-block "$DEST_CIDR" --network-interface-id "$NETWORK_INTERFACE_ID"; then
	echo "aws-route: replace-route failed; creating the route"
	aws ec2 create-route --route-table-id "$ROUTE_TABLE_ID" \
		--destination-cidr-block "$DEST_CIDR" --network-interface-id "$NETWORK_INTERFACE_ID"
fi
echo "aws-route: done"
