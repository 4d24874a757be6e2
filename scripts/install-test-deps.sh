#!/usr/bin/env bash
# Installs the third-party tools the tests use: tshark checks our frames,
# iperf3 and ping run inside Linux guests, ip (iproute2) makes their
# network namespaces. Debian packages only; safe to run again. Needs root
# (or sudo).
set -euo pipefail
missing=()
command -v tshark >/dev/null 2>&1 || missing+=(tshark)
command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	SUDO="sudo"
fi
echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
echo "iperf3 iperf3/start_daemon boolean false" | $SUDO debconf-set-selections
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
