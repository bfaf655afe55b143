"""The launch scripts: --help documents each, --dry-run prints the exact commands (no gcloud,
no TPU, no SLURM needed), and a missing flag is named."""
import os
import shlex
import shutil
import subprocess

import pytest

from conftest import REPO

TPU = REPO / "launch" / "tpu"
GPU = REPO / "launch" / "gpu" / "train.sbatch"
TPU_ARGS = ["--name", "medmoe-v5p", "--zone", "us-east5-a"]
TRAIN = ["--config=configs/post_moe.py:7b", "--config.mesh.data=1", "--config.mesh.fsdp=-1",
         "--config.languages.use=en,zh"]


@pytest.fixture(scope="module")
def path_without_gcloud(tmp_path_factory):
  """A PATH with the few tools the scripts use, and no gcloud or srun: dry runs must not need
  them (a call would fail with 'command not found')."""
  bin_dir = tmp_path_factory.mktemp("bin")
  for tool in ("bash", "sed", "dirname", "basename", "git", "tar", "date", "sleep", "cat"):
    os.symlink(shutil.which(tool), bin_dir / tool)
  return str(bin_dir)


@pytest.fixture(autouse=True)
def _path(path_without_gcloud, monkeypatch):
  monkeypatch.setenv("PATH", path_without_gcloud)


def _sh(script, *args):
  env = dict(os.environ, TMPDIR="/tmp")
  r = subprocess.run([shutil.which("bash"), str(script), *args], capture_output=True, text=True,
                     env=env, timeout=60, cwd=REPO)
  return r.returncode, r.stdout, r.stderr


def _commands(out):
  return [shlex.split(l) for l in out.splitlines() if l and not l.startswith("#")]


@pytest.mark.parametrize("script", ["create.sh", "setup.sh", "run.sh", "logs.sh", "delete.sh",
                                    "job.sh", "worker.sh"])
def test_every_script_has_help(script):
  rc, out, _ = _sh(TPU / script, "--help")
  assert rc == 0 and "Usage: launch/tpu/" + script in out and "--dry-run" in out


def test_create_tpu_vm_and_queued_resource():
  rc, out, _ = _sh(TPU / "create.sh", *TPU_ARGS, "--accelerator-type", "v6e-16", "--project", "p",
                   "--dry-run")
  assert rc == 0
  assert _commands(out) == [["gcloud", "compute", "tpus", "tpu-vm", "create", "medmoe-v5p",
                             "--zone=us-east5-a", "--project=p", "--accelerator-type=v6e-16",
                             "--version=v2-alpha-tpuv6e"]]
  rc, out, _ = _sh(TPU / "create.sh", *TPU_ARGS, "--accelerator-type=v5p-64", "--queued", "--spot",
                   "--dry-run")
  create, describe = _commands(out)
  assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "medmoe-v5p",
                    "--node-id=medmoe-v5p", "--zone=us-east5-a", "--accelerator-type=v5p-64",
                    "--runtime-version=v2-alpha-tpuv5", "--spot"]
  assert describe[:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]
  assert "--format=value(state.state)" in describe and "until the state is ACTIVE" in out


def test_setup_ships_the_checkout_and_installs_on_all_workers():
  rc, out, _ = _sh(TPU / "setup.sh", *TPU_ARGS, "--dry-run")
  assert rc == 0
  lines = out.splitlines()
  assert lines[0].startswith(f"git -C {REPO} ls-files -z | tar -czf /tmp/medmoe_jax-medmoe-v5p.tgz")
  scp, ssh = _commands("\n".join(lines[1:]))
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "medmoe-v5p"]
  assert "--worker=all" in ssh
  remote = ssh[-1].removeprefix("--command=")
  assert "pip install -q -U 'jax[tpu]>=0.7.0'" in remote and "-e ~/medmoe_jax gcsfs" in remote


def test_run_starts_all_workers_then_streams_worker_0():
  rc, out, _ = _sh(TPU / "run.sh", *TPU_ARGS, "--workdir", "gs://bucket/7b", "--dry-run", "--",
                   *TRAIN)
  assert rc == 0
  start, stream = _commands(out)
  assert "--worker=all" in start
  remote = shlex.split(start[-1].removeprefix("--command="))
  i = remote.index("launch/tpu/worker.sh")
  assert remote[i + 1:i + 3 + len(TRAIN)] == ["--workdir=gs://bucket/7b", "--", *TRAIN]
  assert remote[0:2] == ["cd", "~/medmoe_jax"] and "nohup" in remote
  assert "--worker=0" in stream and "tail" in stream[-1]


def test_worker_trains_with_checkpoints_in_the_bucket():
  rc, out, _ = _sh(TPU / "worker.sh", "--workdir=gs://bucket/7b", "--dry-run", "--", *TRAIN)
  assert rc == 0
  cmds = _commands(out)
  train = [c for c in cmds if c[:3] == ["python3", "-m", "medmoe_jax.train"]]
  assert train == [["python3", "-m", "medmoe_jax.train", "--workdir=gs://bucket/7b",
                    "--logdir=/tmp/medmoe_jax/logs", *TRAIN]]
  # Logs are restored before and mirrored after.
  assert cmds.index(["gcloud", "storage", "rsync", "--recursive", "gs://bucket/7b/logs",
                     "/tmp/medmoe_jax/logs"]) < cmds.index(train[0])
  assert cmds[-1] == ["gcloud", "storage", "rsync", "--recursive", "/tmp/medmoe_jax/logs",
                      "gs://bucket/7b/logs"]


def test_job_creates_installs_runs_streams_and_deletes():
  rc, out, _ = _sh(TPU / "job.sh", *TPU_ARGS, "--accelerator-type", "v5p-64", "--queued",
                   "--workdir", "gs://bucket/7b", "--dry-run", "--", *TRAIN)
  assert rc == 0
  verbs = [" ".join(c[3:5]) for c in _commands(out) if c[0] == "gcloud"]
  assert verbs == ["queued-resources create", "queued-resources describe", "tpu-vm scp",
                   "tpu-vm ssh", "tpu-vm ssh", "tpu-vm ssh", "queued-resources delete"]
  rc, out, _ = _sh(TPU / "job.sh", *TPU_ARGS, "--accelerator-type", "v5p-64", "--keep",
                   "--workdir", "gs://bucket/7b", "--dry-run", "--", *TRAIN)
  assert rc == 0 and "delete" not in out


def test_delete():
  rc, out, _ = _sh(TPU / "delete.sh", *TPU_ARGS, "--queued", "--dry-run")
  assert _commands(out) == [["gcloud", "compute", "tpus", "queued-resources", "delete",
                             "medmoe-v5p", "--zone=us-east5-a", "--force", "--quiet"]]


@pytest.mark.parametrize("script, args, err", [
    ("create.sh", ["--zone", "z", "--accelerator-type", "v5p-8"], "missing --name"),
    ("create.sh", [*TPU_ARGS, "--accelerator-type", "tpu9-8"], "no default runtime version"),
    ("run.sh", [*TPU_ARGS, "--workdir", "/local/dir", "--", *TRAIN], "must be a gs:// URL"),
    ("run.sh", [*TPU_ARGS, "--workdir", "gs://b/r"], "no train flags"),
    ("delete.sh", [*TPU_ARGS, "--bogus"], "unknown option --bogus"),
])
def test_bad_arguments_are_named(script, args, err):
  rc, _, errout = _sh(TPU / script, *args, "--dry-run")
  assert rc == 2 and err in errout


def test_sbatch_template():
  rc, out, _ = _sh(GPU, "--help")
  assert rc == 0 and "SLURM_STEP_NODELIST" in out and "#SBATCH" not in out
  rc, out, _ = _sh(GPU, "--dry-run", "--", *TRAIN, "--workdir=/shared/7b")
  assert rc == 0
  env, flags, cmd = out.splitlines()
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.92" in env
  assert shlex.split(cmd) == ["srun", "--kill-on-bad-exit=1", "--gpu-bind=none", "python3", "-m",
                              "medmoe_jax.train", *TRAIN, "--workdir=/shared/7b"]
  rc, out, _ = _sh(GPU, "--per-node", "--dry-run", "--", *TRAIN)
  assert "--ntasks-per-node=1" in out.splitlines()[-1]


def test_without_dry_run_a_missing_gcloud_is_named():
  rc, out, err = _sh(TPU / "delete.sh", *TPU_ARGS)
  assert rc == 2 and "gcloud not found: install the Google Cloud CLI" in err and out == ""
