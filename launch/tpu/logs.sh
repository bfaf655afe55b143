#!/usr/bin/env bash
# Stream a worker's training log (worker 0 by default: process 0 writes the reports) until its
# training ends; Ctrl-C stops streaming, not training.
#
# Usage: launch/tpu/logs.sh --name NAME --zone ZONE [--worker N|all] [--project PROJECT] [--dry-run]
#
#   --worker   which worker's log; "all" interleaves every worker's (errors on one host show there)
#   --dry-run  print the command instead of running it
set -euo pipefail
source "$(dirname "$0")/common.sh"

WORKER=0
parse_common "$@"
set -- ${REST[@]+"${REST[@]}"}
while (($#)); do
  case "$1" in
    --worker) WORKER="${2:?}"; shift ;;
    --worker=*) WORKER="${1#*=}" ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
require name "$NAME" --name
require zone "$ZONE" --zone
tpu_ssh "$WORKER" 'tail -n +1 --pid=$(cat ~/medmoe_train.pid) -F ~/medmoe_train.log'
