#!/usr/bin/env bash
# Delete the TPU VM (or the queued resource and its TPU) so it stops costing money. Checkpoints
# and logs in the GCS workdir stay.
#
# Usage: launch/tpu/delete.sh --name NAME --zone ZONE [--queued] [--project PROJECT] [--dry-run]
#
#   --queued   it was created with create.sh --queued
#   --dry-run  print the command instead of running it
set -euo pipefail
source "$(dirname "$0")/common.sh"

parse_common "$@"
((${#REST[@]} == 0)) || die "unknown option ${REST[0]} (see --help)"
require name "$NAME" --name
require zone "$ZONE" --zone
if ((QUEUED)); then
  run gcloud compute tpus queued-resources delete "$NAME" --zone="$ZONE" $(project_flag) --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" $(project_flag) --quiet
fi
