#!/usr/bin/env bash
# Create a Cloud TPU VM (or a queued resource, which waits for capacity) for medmoe_jax.
#
# Usage: launch/tpu/create.sh --name NAME --zone ZONE --accelerator-type TYPE
#            [--runtime-version VERSION] [--project PROJECT] [--queued] [--spot] [--dry-run]
#
#   --name              TPU name (also the queued resource's id and its node id)
#   --zone              e.g. us-east5-a (v5p), us-east5-b or europe-west4-a (v6e)
#   --accelerator-type  v5p-8 ... v5p-12288 (N = TensorCores, 2 per chip), v6e-1 ... v6e-256 (chips)
#   --runtime-version   TPU software version; default from the type: v5p -> v2-alpha-tpuv5,
#                       v6e -> v2-alpha-tpuv6e, v5e (v5litepod) -> v2-alpha-tpuv5-lite
#   --queued            request a queued resource and wait until it is ACTIVE (large slices,
#                       spot capacity); without it, a TPU VM is created directly
#   --spot              spot (preemptible) capacity; training resumes from its last checkpoint
#   --dry-run           print the gcloud commands instead of running them
#
# Example: launch/tpu/create.sh --name medmoe-v5p --zone us-east5-a --accelerator-type v5p-64 --queued
set -euo pipefail
source "$(dirname "$0")/common.sh"

ACCEL=""
RUNTIME=""
SPOT=0
parse_common "$@"
set -- ${REST[@]+"${REST[@]}"}
while (($#)); do
  case "$1" in
    --accelerator-type) ACCEL="${2:?}"; shift ;;
    --accelerator-type=*) ACCEL="${1#*=}" ;;
    --runtime-version) RUNTIME="${2:?}"; shift ;;
    --runtime-version=*) RUNTIME="${1#*=}" ;;
    --spot) SPOT=1 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
require name "$NAME" --name
require zone "$ZONE" --zone
require accelerator-type "$ACCEL" --accelerator-type
if [[ -z "$RUNTIME" ]]; then
  case "$ACCEL" in
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    v5litepod-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    v4-*) RUNTIME=tpu-ubuntu2204-base ;;
    *) die "no default runtime version for --accelerator-type=$ACCEL; pass --runtime-version" ;;
  esac
fi
spot=()
((SPOT)) && spot=(--spot)

if ((QUEUED)); then
  run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" --zone="$ZONE" \
    $(project_flag) --accelerator-type="$ACCEL" --runtime-version="$RUNTIME" ${spot[@]+"${spot[@]}"}
  # Wait for capacity: WAITING_FOR_RESOURCES -> PROVISIONING -> ACTIVE.
  if ((DRY_RUN)); then
    run gcloud compute tpus queued-resources describe "$NAME" --zone="$ZONE" $(project_flag) \
      --format='value(state.state)'
    echo "# ... repeated every 60 s until the state is ACTIVE"
  else
    while :; do
      state=$(run gcloud compute tpus queued-resources describe "$NAME" --zone="$ZONE" \
        $(project_flag) --format='value(state.state)')
      echo "$(date +%H:%M:%S) queued resource $NAME: $state"
      case "$state" in
        ACTIVE) break ;;
        FAILED|SUSPENDED) die "queued resource $NAME is $state; see: gcloud compute tpus queued-resources describe $NAME --zone=$ZONE" ;;
      esac
      sleep 60
    done
  fi
else
  run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" $(project_flag) \
    --accelerator-type="$ACCEL" --version="$RUNTIME" ${spot[@]+"${spot[@]}"}
fi
