#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine, skipping what is already there.
# Run as root (CI is); on a developer machine run it once with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v sipp >/dev/null 2>&1 || need_apt+=(sip-tester)
# The browser tests (tests/ui.rs): Debian's Chromium driven by playwright-core from npm, and
# a CJK font so that the Chinese pages render (and screenshot) as operators see them.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
fc-list 2>/dev/null | grep -qi 'CJK' || need_apt+=(fonts-noto-cjk)
# PostgreSQL 14 or later, for the bank's database (tests/sql.rs) and the sink: the tests run
# throw-away clusters from /usr/lib/postgresql/N/bin, never the packaged service.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
# systemd-analyze, for `systemd-analyze verify systemd/sipedge.service` (tests/ops.rs).
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# tshark captures the loopback while SIPp calls go through sipedge (tests/import_pcap.rs);
# answered first so that the package does not ask whether non-root users may capture.
if ! command -v tshark >/dev/null 2>&1; then
  need_apt+=(tshark)
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# PostgreSQL refuses to run as root: as root, the tests run its clusters as this user.
if ! id -u sipedge-test >/dev/null 2>&1; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin sipedge-test
fi

# cargo-deb, for the package test (tests/package.rs), pinned: the test packages the dev
# binary with `--profile dev --no-build`, which later versions may refuse.
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi

# cargo-fuzz, for the short fuzz run of tests/fuzz.rs (on the machine's nightly toolchain).
CARGO_FUZZ_VERSION=0.13.2
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

if [ ! -d tests/e2e/node_modules/playwright-core ]; then
  (cd tests/e2e && npm ci --no-audit --no-fund)
fi
