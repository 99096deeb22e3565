#!/usr/bin/env bash
# Installs PostgreSQL (Debian's package) if it is missing, starts a throwaway cluster on a
# loopback port as a non-root user, and prints shell lines that export its URL for the tests
# and stop it when the calling shell exits. Use: eval "$(bash .ci/postgres.sh)"
# The tests start such a cluster themselves when this has not run but the binaries exist.
set -euo pipefail

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
fi
bindir=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")

base=$(mktemp -d /tmp/polydistill-ci-pg.XXXXXX)
runas=()
if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$base"
    runas=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cd "$base"
"${runas[@]}" "$bindir/initdb" -D "$base/data" -U postgres --auth=trust -E UTF8 --no-sync >&2
"${runas[@]}" "$bindir/pg_ctl" -D "$base/data" -l "$base/log" -w start \
    -o "-p $port -k $base -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=300" >&2

echo "export POLYDISTILL_TEST_PG_URL=postgresql://postgres@127.0.0.1:$port/postgres"
echo "trap '${runas[*]} $bindir/pg_ctl -D $base/data -m immediate stop >/dev/null 2>&1; rm -rf $base' EXIT"
