#!/usr/bin/env bash
# Debian's Chromium, which tests/test_airflow_running.py drives headless through Playwright
# (no `playwright install`: no browser download). Does nothing when it is already installed.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    echo "chromium already installed: $("$CHROMIUM" --version 2>/dev/null)"
    exit 0
fi
bash "$(dirname "$0")/apt-get-install.sh" chromium
echo "installed: $("$CHROMIUM" --version 2>/dev/null)"
