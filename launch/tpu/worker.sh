#!/usr/bin/env bash
# Runs on every TPU worker (run.sh starts it): train with checkpoints in a GCS bucket shared by
# all workers, and process 0's logs (metrics.jsonl, TensorBoard, config.json) kept on local disk
# and mirrored to <workdir>/logs every --sync-every seconds and at the end. On a restart (same
# command, e.g. after preemption) the logs are first copied back, so the history continues.
#
# Usage: launch/tpu/worker.sh --workdir gs://BUCKET/RUN [--logdir DIR] [--sync-every S]
#            [--dry-run] -- TRAIN_FLAGS...
#
#   TRAIN_FLAGS  passed to python -m medmoe_jax.train (--config=..., --config.KEY=VALUE, ...)
#   --dry-run    print the commands instead of running them
#
# Example (on a worker): bash launch/tpu/worker.sh --workdir gs://my-bucket/7b -- --config=configs/post_moe.py:7b
set -euo pipefail
source "$(dirname "$0")/common.sh"

WORKDIR=""
LOGDIR="/tmp/medmoe_jax/logs"
SYNC_EVERY=300
TRAIN=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --workdir) WORKDIR="${2:?}"; shift ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --logdir) LOGDIR="${2:?}"; shift ;;
    --logdir=*) LOGDIR="${1#*=}" ;;
    --sync-every) SYNC_EVERY="${2:?}"; shift ;;
    --sync-every=*) SYNC_EVERY="${1#*=}" ;;
    --) shift; TRAIN=("$@"); break ;;
    *) die "unknown option $1 (train flags go after --; see --help)" ;;
  esac
  shift
done
require workdir "$WORKDIR" --workdir
[[ "$WORKDIR" == gs://* ]] || die "--workdir must be a gs:// URL shared by all workers, got $WORKDIR"

sync_logs() {  # local -> bucket; only process 0 has logs, elsewhere the directory is empty
  if ((DRY_RUN)) || [[ -d "$LOGDIR" ]]; then
    run gcloud storage rsync --recursive "$LOGDIR" "$WORKDIR/logs" || true
  fi
}

mkdir_cmd=(mkdir -p "$LOGDIR")
if ((DRY_RUN)); then run "${mkdir_cmd[@]}"; else "${mkdir_cmd[@]}"; fi
# Resume: bring back the logs of an earlier attempt (absent on the first run).
run gcloud storage rsync --recursive "$WORKDIR/logs" "$LOGDIR" 2>/dev/null || true
if ((DRY_RUN)); then
  echo "# every ${SYNC_EVERY} s while training:"
  sync_logs
else
  (while sleep "$SYNC_EVERY"; do sync_logs >/dev/null 2>&1; done) &
  syncer=$!
  trap 'kill $syncer 2>/dev/null || true' EXIT
fi
status=0
run python3 -m medmoe_jax.train --workdir="$WORKDIR" --logdir="$LOGDIR" ${TRAIN[@]+"${TRAIN[@]}"} \
  || status=$?
sync_logs
exit "$status"
