#!/usr/bin/env bash
# Installs the third-party tools the tests check our frames with (tshark).
# Debian packages only; safe to run again. Needs root (or sudo).
set -euo pipefail
if command -v tshark >/dev/null 2>&1; then
	exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	SUDO="sudo"
fi
echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark >/dev/null
tshark --version | head -1
