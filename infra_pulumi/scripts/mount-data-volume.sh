#!/bin/bash
# Format the data volume only when it holds no filesystem, then mount it by UUID. Safe to re-run.
# Usage: mount-data-volume.sh VOLUME_ID MOUNT_POINT LABEL
set -euo pipefail

volume_id="$1"
mount_point="$2"
label="$3"
# OpenStack gives a virtio disk the first 20 characters of the volume id as its serial.
device="/dev/disk/by-id/virtio-${volume_id:0:20}"

# The volume is attached after the instance boots: wait for it (at most 10 minutes).
for _ in $(seq 1 120); do
  if [ -b "$device" ]; then
    break
  fi
  sleep 5
done
if [ ! -b "$device" ]; then
  echo "data volume $volume_id did not appear as $device" >&2
  exit 1
fi

fstype="$(blkid -p -s TYPE -o value "$device" || true)"
if [ -z "$fstype" ]; then
  echo "formatting empty data volume $device"
  mkfs.ext4 -q -L "$label" "$device"
else
  echo "data volume $device already holds $fstype: keeping its data"
fi

uuid="$(blkid -s UUID -o value "$device")"
mkdir -p "$mount_point"
if ! grep -q "^UUID=$uuid " /etc/fstab; then
  # nofail: a missing volume must not stop the node from booting.
  echo "UUID=$uuid $mount_point ext4 defaults,nofail,x-systemd.device-timeout=60 0 2" >> /etc/fstab
fi
if ! mountpoint -q "$mount_point"; then
  mount "$mount_point"
fi
mkdir -p "$mount_point/k3s-storage"
