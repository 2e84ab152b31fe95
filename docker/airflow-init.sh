#!/bin/bash
# One-shot set-up of the Airflow stack (docker-compose service `airflow-init`, run as root):
# folders of the named volumes owned by the airflow user, the admin's password for the simple
# auth manager, then the metadata database migration (the image's entrypoint does it, because
# _AIRFLOW_DB_MIGRATE=true). Idempotent: `docker compose up` runs it on every start.
set -euo pipefail

airflow_uid=50000  # the official image's airflow user
mkdir -p /opt/airflow/logs /opt/airflow/state/clusters /opt/airflow/auth

# The simple auth manager keeps "user: password" in this JSON file and only generates a password
# for users missing from it: the admin's comes from .env (AIRFLOW_ADMIN_PASSWORD).
python3 - <<'PY'
import json
import os

path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
with open(path, "w") as out:
    json.dump({"admin": os.environ["AIRFLOW_ADMIN_PASSWORD"]}, out)
    out.write("\n")
PY
chown -R "${airflow_uid}:0" /opt/airflow/logs /opt/airflow/state /opt/airflow/auth
chmod 600 "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE}"

/entrypoint airflow version
