#!/usr/bin/env bash
# EMR bootstrap action, run on every node before Spark starts.
# Usage: bootstrap.sh s3://<lake>/artifacts/<digest>  (the prefix this script was staged under)
# Installs the job dependencies for Python 3.11, the interpreter Spark is configured to use.
set -euo pipefail

artifacts="${1:?usage: bootstrap.sh <s3 artifacts prefix>}"
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

# EMR 7 (Amazon Linux 2023) ships Python 3.9 by default; 3.11 comes from the distribution.
if ! command -v python3.11 >/dev/null || ! python3.11 -m pip --version >/dev/null 2>&1; then
  sudo dnf install -y python3.11 python3.11-pip
fi

aws s3 cp "$artifacts/requirements-jobs.txt" "$workdir/requirements-jobs.txt"
sudo python3.11 -m pip install --no-cache-dir -r "$workdir/requirements-jobs.txt"
