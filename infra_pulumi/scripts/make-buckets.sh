#!/bin/sh
# Run by the Job minio-buckets (infra_pulumi/manifests/object_store.py): make every bucket and point the
# notifying buckets' puts at the minio-source webhook, once. Safe to re-run.
# Environment: MINIO_URL, MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, BUCKETS, NOTIFYING_BUCKETS, WEBHOOK_ARN.
set -eu
until mc alias set local "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null; do
  echo "waiting for MinIO at $MINIO_URL"
  sleep 5
done
for bucket in $BUCKETS; do
  mc mb --ignore-existing "local/$bucket"
done
for bucket in $NOTIFYING_BUCKETS; do
  if mc event ls "local/$bucket" "$WEBHOOK_ARN" | grep -q "$WEBHOOK_ARN"; then
    echo "notification on $bucket already configured"
  else
    mc event add "local/$bucket" "$WEBHOOK_ARN" --event put
  fi
done
