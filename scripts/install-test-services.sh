#!/usr/bin/env bash
# What `make test` needs beyond Python and pip, installed from Debian's packages when missing:
# chromium (the headless-browser test of report.html) and PostgreSQL's server binaries (the
# gateway's ledger tests start a throwaway cluster from them on a loopback port, as the
# `postgres` user; see tests/serve/serve_postgres.py). As root it installs them; otherwise it
# fails naming what to install, so that no test skips for a missing service.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "error: the tests need ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}'" >&2
    exit 1
fi
echo "installing Debian's ${missing[*]} for the tests (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq "${missing[@]}" >/dev/null
command -v chromium >/dev/null 2>&1
ls /usr/lib/postgresql/*/bin/initdb >/dev/null
