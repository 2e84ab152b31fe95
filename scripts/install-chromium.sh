#!/usr/bin/env bash
# Debian's Chromium, which tests/test_airflow_running.py drives headless through Playwright
# (no `playwright install`: no browser download). Does nothing when it is already installed.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    echo "chromium already installed: $("$CHROMIUM" --version 2>/dev/null)"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "no apt-get here: install Chromium so that $CHROMIUM exists" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
echo "installed: $("$CHROMIUM" --version 2>/dev/null)"
