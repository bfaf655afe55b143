#!/usr/bin/env bash
# Train on every worker of a TPU VM at once, with checkpoints in a GCS bucket, then stream the
# log of worker 0 (process 0 reports) until training ends. The job runs detached on the workers
# (nohup), so closing this terminal does not stop it; stream again with logs.sh. Running the
# same command again resumes from the last checkpoint in --workdir.
#
# Usage: launch/tpu/run.sh --name NAME --zone ZONE --workdir gs://BUCKET/RUN [--project PROJECT]
#            [--detach] [--dry-run] -- TRAIN_FLAGS...
#
#   TRAIN_FLAGS  for python -m medmoe_jax.train, e.g. --config=configs/post_moe.py:7b
#                --config.mesh.fsdp=-1 --config.mesh.data=1 --config.data.batch_size=64
#   --detach     start and return without streaming the log
#   --dry-run    print the commands instead of running them
#
# Check the job first, on your machine: python -m medmoe_jax.train TRAIN_FLAGS --dry_run --topology=v5p-64
# Example: launch/tpu/run.sh --name medmoe-v5p --zone us-east5-a --workdir gs://my-bucket/7b -- \
#            --config=configs/post_moe.py:7b --config.mesh.data=1 --config.mesh.fsdp=-1
set -euo pipefail
source "$(dirname "$0")/common.sh"

WORKDIR=""
DETACH=0
TRAIN=()
args=()
while (($#)); do
  case "$1" in
    --) shift; TRAIN=("$@"); break ;;
    --workdir) WORKDIR="${2:?}"; shift ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --detach) DETACH=1 ;;
    *) args+=("$1") ;;
  esac
  shift
done
parse_common ${args[@]+"${args[@]}"}
((${#REST[@]} == 0)) || die "unknown option ${REST[0]} (train flags go after --; see --help)"
require name "$NAME" --name
require zone "$ZONE" --zone
require workdir "$WORKDIR" --workdir
[[ "$WORKDIR" == gs://* ]] || die "--workdir must be a gs:// URL: every worker writes its checkpoint shards there"
((${#TRAIN[@]})) || die "no train flags after --; at least --config=... (see --help)"

train=""
for a in "${TRAIN[@]}"; do train+=" $(quote "$a")"; done
tpu_ssh all "cd ~/medmoe_jax && nohup bash launch/tpu/worker.sh --workdir=$WORKDIR --$train \
> ~/medmoe_train.log 2>&1 < /dev/null & echo \$! > ~/medmoe_train.pid"
if ((! DETACH)); then
  exec_args=(--name "$NAME" --zone "$ZONE")
  [[ -n "$PROJECT" ]] && exec_args+=(--project "$PROJECT")
  ((DRY_RUN)) && exec_args+=(--dry-run)
  "$(dirname "$0")/logs.sh" "${exec_args[@]}"
fi
