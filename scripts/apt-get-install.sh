#!/usr/bin/env bash
# `apt-get install` of Debian packages (no recommends, no questions), through sudo when not
# root; used by the install-*.sh scripts for what the tests and `make airflow` need.
set -euo pipefail

if ! command -v apt-get >/dev/null; then
    echo "no apt-get here: install $* yourself" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
