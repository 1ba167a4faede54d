#!/usr/bin/env bash
# A benchmark with its PostgreSQL rows: starts a throwaway PostgreSQL cluster on a free
# 127.0.0.1 port (Debian's binaries, as the postgres user when run as root, fsync on), runs
# `cargo bench -p sandgraph --bench "${SANDGRAPH_BENCH:-journal}"` against it (`journal`: the
# journal's appends; `replicas`: runs through one and three `sandgraph serve` replicas), and
# removes the cluster.
# Extra arguments go to cargo (e.g. --profile dev for a quick figure).
set -euo pipefail
trap 'echo "bench-postgres.sh: failed at line $LINENO" >&2' ERR
cd "$(dirname "$0")/.."
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/initdb" ] || { echo "PostgreSQL is not installed; run scripts/setup.sh" >&2; exit 1; }
dir=$(mktemp -d)
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$dir"
    as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -U sandgraph --auth=trust -E UTF8 >/dev/null
"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-h 127.0.0.1 -p $port -k $dir -c max_connections=300" start >/dev/null
stop() { "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null || true; rm -rf "$dir"; }
trap stop EXIT
SANDGRAPH_BENCH_POSTGRES="postgres://sandgraph@127.0.0.1:$port/postgres" \
    cargo bench -p sandgraph --bench "${SANDGRAPH_BENCH:-journal}" "$@"
