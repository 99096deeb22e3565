#!/usr/bin/env bash
# Installs Debian's chromium if it is missing; the report test drives it headless through the
# Chrome DevTools Protocol to check that report.html renders. Use: bash .ci/chromium.sh
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq chromium >&2
fi
chromium --version >&2
