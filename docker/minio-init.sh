#!/bin/sh
# One-shot set-up of the MinIO lake (docker-compose service `minio-init`, image minio/mc):
# the bucket, encrypted by default, and the pipeline's own user, limited to that bucket.
# Idempotent: `docker compose up` runs it on every start.
set -eu

bucket=fruits-lake
mc alias set lake http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null

mc mb --ignore-existing "lake/$bucket"
# SSE-S3 with MinIO's KMS key (MINIO_KMS_SECRET_KEY): the lake is encrypted at rest, as on AWS.
mc encrypt set sse-s3 "lake/$bucket"

# The credentials Airflow and Spark use (AWS_ACCESS_KEY_ID in .env): not the root user.
mc admin policy create lake fruits-lake /etc/fruits/minio-lake-policy.json
mc admin user add lake "$LAKE_ACCESS_KEY_ID" "$LAKE_SECRET_ACCESS_KEY"
mc admin policy attach lake fruits-lake --user "$LAKE_ACCESS_KEY_ID" 2>/dev/null \
  || echo "policy fruits-lake was already attached to $LAKE_ACCESS_KEY_ID"
mc admin user info lake "$LAKE_ACCESS_KEY_ID" | grep -q fruits-lake

echo "lake ready: s3a://$bucket/lake (user $LAKE_ACCESS_KEY_ID)"
