#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine, skipping what is already there.
# Run as root (CI is); on a developer machine run it once with sudo.
set -euo pipefail

need_apt=()
command -v sipp >/dev/null 2>&1 || need_apt+=(sip-tester)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# systemd-analyze, for `systemd-analyze verify systemd/sipedge.service` (tests/ops.rs).
if ! command -v systemd-analyze >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends systemd
fi
