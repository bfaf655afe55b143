# Shared by the launch/tpu scripts (sourced, not run). Each script documents itself in its
# header comment, which --help prints; every gcloud call goes through `run`, which --dry-run
# turns into printing the command (nothing is executed and gcloud need not be installed).

set -euo pipefail

DRY_RUN=0
PROJECT=""
ZONE=""
NAME=""
QUEUED=0

usage() {  # the script's header comment, without the leading '# '
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
}

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# Parse the options every script shares; sets REST to the unparsed arguments.
parse_common() {
  REST=()
  while (($#)); do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      --name) NAME="${2:?--name needs a value}"; shift ;;
      --name=*) NAME="${1#*=}" ;;
      --zone) ZONE="${2:?--zone needs a value}"; shift ;;
      --zone=*) ZONE="${1#*=}" ;;
      --project) PROJECT="${2:?--project needs a value}"; shift ;;
      --project=*) PROJECT="${1#*=}" ;;
      --queued) QUEUED=1 ;;
      *) REST+=("$1") ;;
    esac
    shift
  done
}

require() {  # require NAME VALUE FLAG
  [[ -n "$2" ]] || die "missing $3 (see --help)"
}

project_flag() {
  if [[ -n "$PROJECT" ]]; then printf -- '--project=%s' "$PROJECT"; fi
}

# One shell word: as is when safe, else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
    printf '%s' "$1"
  else
    local q="'\''"
    printf "'%s'" "${1//\'/$q}"
  fi
}

# Print (dry run) or execute a command. Arguments are printed shell-quoted, one command a line,
# so the output can be pasted into a shell.
run() {
  if ((DRY_RUN)); then
    local out="" a
    for a in "$@"; do out+="$(quote "$a") "; done
    echo "${out% }"
    return 0
  fi
  if [[ "$1" == gcloud ]] && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) or use --dry-run"
  fi
  "$@"
}

# gcloud ssh/scp to the TPU's workers ("all" or an index).
tpu_ssh() {  # tpu_ssh WORKER COMMAND
  run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" $(project_flag) --worker="$1" --command="$2"
}
