#!/usr/bin/env bash
# Debian's PostgreSQL 15, the metadata database of `make airflow` (devtools/stack/postgres.py
# runs its binaries from /usr/lib/postgresql/15/bin; the cluster lives in the stack's home).
# Does nothing when it is already installed.
set -euo pipefail

POSTGRES=/usr/lib/postgresql/15/bin/postgres
if [ -x "$POSTGRES" ]; then
    echo "postgresql 15 already installed: $("$POSTGRES" --version)"
    exit 0
fi
HERE="$(dirname "$0")"
# postgresql-common first, told not to create (and start, on port 5432) Debian's default
# cluster: the stack runs its own, on 127.0.0.1 only.
bash "$HERE/apt-get-install.sh" postgresql-common
CONF=/etc/postgresql-common/createcluster.conf
if ! grep -qs '^create_main_cluster = false' "$CONF"; then
    if [ "$(id -u)" -eq 0 ]; then tee -a "$CONF"; else sudo tee -a "$CONF"; fi \
        <<<'create_main_cluster = false' >/dev/null
fi
bash "$HERE/apt-get-install.sh" postgresql-15
echo "installed: $("$POSTGRES" --version)"
