#!/usr/bin/env bash
# One job end to end: create the TPU, install, train on all workers while streaming worker 0's
# log, and delete the TPU when training has ended or a step before it failed, unless --keep.
# A dropped connection re-attaches to the log (training runs detached); Ctrl-C stops this
# script and leaves the TPU and the training running (delete it with delete.sh).
#
# Usage: launch/tpu/job.sh --name NAME --zone ZONE --accelerator-type TYPE --workdir gs://BUCKET/RUN
#            [--runtime-version V] [--project P] [--queued] [--spot] [--keep] [--dry-run] -- TRAIN_FLAGS...
#
# Options are those of create.sh and run.sh; --keep leaves the TPU up (delete it with delete.sh).
# Example: launch/tpu/job.sh --name medmoe-v6e --zone us-east5-b --accelerator-type v6e-64 \
#            --workdir gs://my-bucket/1.5b --queued -- --config=configs/post_moe.py:1.5b \
#            --config.mesh.data=1 --config.mesh.fsdp=-1 --config.data.batch_size=64
set -euo pipefail
source "$(dirname "$0")/common.sh"

here="$(dirname "$0")"
KEEP=0
WORKDIR=""
ACCEL=""
RUNTIME=""
SPOT=0
TRAIN=()
args=()
while (($#)); do
  case "$1" in
    --) shift; TRAIN=("$@"); break ;;
    --keep) KEEP=1 ;;
    --workdir) WORKDIR="${2:?}"; shift ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --accelerator-type) ACCEL="${2:?}"; shift ;;
    --accelerator-type=*) ACCEL="${1#*=}" ;;
    --runtime-version) RUNTIME="${2:?}"; shift ;;
    --runtime-version=*) RUNTIME="${1#*=}" ;;
    --spot) SPOT=1 ;;
    *) args+=("$1") ;;
  esac
  shift
done
parse_common ${args[@]+"${args[@]}"}
((${#REST[@]} == 0)) || die "unknown option ${REST[0]} (see --help)"
require name "$NAME" --name
require zone "$ZONE" --zone
require accelerator-type "$ACCEL" --accelerator-type
require workdir "$WORKDIR" --workdir
((${#TRAIN[@]})) || die "no train flags after --; at least --config=... (see --help)"

common=(--name "$NAME" --zone "$ZONE")
[[ -n "$PROJECT" ]] && common+=(--project "$PROJECT")
((DRY_RUN)) && common+=(--dry-run)
create=("${common[@]}" --accelerator-type "$ACCEL")
[[ -n "$RUNTIME" ]] && create+=(--runtime-version "$RUNTIME")
((SPOT)) && create+=(--spot)
delete=("${common[@]}")
((QUEUED)) && { create+=(--queued); delete+=(--queued); }

interrupted=0
cleanup() {
  if ((KEEP || interrupted)); then
    echo "TPU $NAME left running; delete it with: $here/delete.sh ${delete[*]}" >&2
  else
    "$here/delete.sh" "${delete[@]}"
  fi
}
trap 'interrupted=1; exit 130' INT
trap cleanup EXIT

"$here/create.sh" "${create[@]}"
"$here/setup.sh" "${common[@]}"
"$here/run.sh" "${common[@]}" --workdir "$WORKDIR" --detach -- "${TRAIN[@]}"
# Stream until training has ended; if the stream drops while it still runs, attach again.
while :; do
  "$here/logs.sh" "${common[@]}" || true
  ((DRY_RUN)) && break
  tpu_ssh 0 'test -e /proc/$(cat ~/medmoe_train.pid)' >/dev/null 2>&1 || break
  echo "log stream dropped; training still runs; re-attaching in 30 s" >&2
  sleep 30
done
