#!/usr/bin/env bash
# Install medmoe_jax on every worker of a TPU VM: ship this checkout (its git-tracked files, with
# your uncommitted edits), then install JAX for TPU, the project and gcsfs (Orbax and etils read
# and write gs:// checkpoints through it) on all workers at once.
#
# Usage: launch/tpu/setup.sh --name NAME --zone ZONE [--project PROJECT] [--src DIR]
#            [--jax-spec SPEC] [--dry-run]
#
#   --src       the checkout to ship; default: the repository this script lives in
#   --jax-spec  pip requirement for JAX on TPU; default 'jax[tpu]>=0.7.0'
#   --dry-run   print the commands instead of running them
#
# Example: launch/tpu/setup.sh --name medmoe-v5p --zone us-east5-a
set -euo pipefail
source "$(dirname "$0")/common.sh"

SRC="$(cd "$(dirname "$0")/../.." && pwd)"
JAX_SPEC='jax[tpu]>=0.7.0'
parse_common "$@"
set -- ${REST[@]+"${REST[@]}"}
while (($#)); do
  case "$1" in
    --src) SRC="${2:?}"; shift ;;
    --src=*) SRC="${1#*=}" ;;
    --jax-spec) JAX_SPEC="${2:?}"; shift ;;
    --jax-spec=*) JAX_SPEC="${1#*=}" ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
require name "$NAME" --name
require zone "$ZONE" --zone

TARBALL="${TMPDIR:-/tmp}/medmoe_jax-$NAME.tgz"
if ((DRY_RUN)); then
  echo "git -C $SRC ls-files -z | tar -czf $TARBALL -C $SRC --null -T -"
else
  git -C "$SRC" ls-files -z | tar -czf "$TARBALL" -C "$SRC" --null -T -
fi
run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:medmoe_jax.tgz" --zone="$ZONE" \
  $(project_flag) --worker=all
tpu_ssh all "rm -rf ~/medmoe_jax && mkdir -p ~/medmoe_jax && tar -xzf ~/medmoe_jax.tgz -C ~/medmoe_jax \
&& python3 -m pip install -q -U '$JAX_SPEC' && python3 -m pip install -q -e ~/medmoe_jax gcsfs \
&& python3 -c 'import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0].device_kind)'"
