#!/usr/bin/env bash
# The test command: installs the third-party tools the tests use (tshark,
# iperf3, ping, ip; from Debian's packages), then runs every test, fuzz seed
# corpus and example under the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh
go vet ./...
go test -race -count=1 ./...
