"""Multi-process start-up: one JAX process per host (TPU pods, GPU nodes) or per GPU.

`initialize()` calls `jax.distributed.initialize` when more than one process takes part, and
must run before anything touches a JAX device. How the processes find each other, first match:

  explicit   --coordinator_address=HOST:PORT --num_processes=N --process_id=I (any cluster;
             the CPU multi-process test uses 127.0.0.1)
  slurm      srun with SLURM_NTASKS > 1: the coordinator is the first host of the step's node
             list (SLURM_STEP_NODELIST), port JAX_COORDINATOR_PORT or one derived from the job id
             (the rule JAX's own SLURM detection uses); with several tasks per node each task
             drives the GPU whose index is its SLURM_LOCALID.
  tpu        a Cloud TPU VM (Google PCI devices present): `jax.distributed.initialize()` with no
             arguments; JAX reads the workers and this host's id from the TPU metadata (a
             single-host slice comes out as one process).
  none       anything else: a single process, nothing to initialise.

`data_shard()` says which block of the global batch's rows this process feeds.
"""
from __future__ import annotations

import dataclasses
import glob
import os

from medmoe_jax.errors import InputError  # a ValueError the CLIs report in one line


class DistributedError(InputError):
  """The multi-process settings are inconsistent; the message names the flag or variable."""


@dataclasses.dataclass(frozen=True)
class Plan:
  mode: str                                 # "explicit" | "slurm" | "tpu" | "none"
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None

  def kwargs(self) -> dict:
    """Arguments for jax.distributed.initialize (none for TPU: JAX detects the pod)."""
    if self.mode in ("tpu", "none"):
      return {}
    out = dict(coordinator_address=self.coordinator_address, num_processes=self.num_processes,
               process_id=self.process_id)
    if self.local_device_ids is not None:
      out["local_device_ids"] = list(self.local_device_ids)
    return out


def first_slurm_host(nodelist: str) -> str:
  """First host of a SLURM hostlist: 'gpu[003-010,012],login1' -> 'gpu003',
  'rack[1-2]-n[07-08]' -> 'rack1-n07'."""
  head, depth = [], 0
  for ch in nodelist:           # the first top-level comma ends the first host expression
    if ch == "," and depth == 0:
      break
    depth += ch == "["
    depth -= ch == "]"
    head.append(ch)
  expr, out, i = "".join(head).strip(), [], 0
  while i < len(expr):
    if expr[i] == "[":
      j = expr.index("]", i)
      first = expr[i + 1:j].split(",")[0].split("-")[0]  # first element of the bracket's range
      out.append(first)
      i = j + 1
    else:
      out.append(expr[i])
      i += 1
  if not out:
    raise DistributedError(f"SLURM_STEP_NODELIST={nodelist!r} names no host")
  return "".join(out)


def slurm_plan(env) -> Plan:
  ntasks = int(env["SLURM_NTASKS"])
  nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
  if not nodelist:
    raise DistributedError("SLURM_NTASKS>1 but neither SLURM_STEP_NODELIST nor "
                           "SLURM_JOB_NODELIST is set; launch with srun inside the allocation")
  port = env.get("JAX_COORDINATOR_PORT") or str(int(env.get("SLURM_JOB_ID", "0")) % 4096 + 61440)
  nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 1)
  local = None
  if ntasks > nodes:  # several tasks per node: one GPU each, unless SLURM already bound one
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if len(visible) != 1:
      local = (int(env["SLURM_LOCALID"]),)
  return Plan("slurm", f"{first_slurm_host(nodelist)}:{port}", ntasks, int(env["SLURM_PROCID"]),
              local)


def on_cloud_tpu_vm() -> bool:
  """Google (vendor 0x1ae0) PCI devices are TPU chips; JAX checks the same."""
  for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(path, encoding="ascii") as f:
        if f.read().strip() == "0x1ae0":
          return True
    except OSError:
      continue
  return False


def plan(coordinator_address: str | None = None, num_processes: int | None = None,
         process_id: int | None = None, env=None, tpu: bool | None = None) -> Plan:
  """Decide how this process joins the job (see the module docstring). No side effects."""
  env = os.environ if env is None else env
  if coordinator_address or num_processes is not None or process_id is not None:
    missing = [f"--{n}" for n, v in (("coordinator_address", coordinator_address),
                                    ("num_processes", num_processes),
                                    ("process_id", process_id)) if v is None or v == ""]
    if missing:
      raise DistributedError(f"multi-process flags are all-or-nothing: also pass {', '.join(missing)}")
    if ":" not in coordinator_address:
      raise DistributedError(f"--coordinator_address={coordinator_address!r} needs a port: HOST:PORT")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedError(f"--process_id={process_id} must be in [0, --num_processes="
                             f"{num_processes})")
    if num_processes == 1:
      return Plan("none")
    return Plan("explicit", coordinator_address, int(num_processes), int(process_id))
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    return slurm_plan(env)
  if on_cloud_tpu_vm() if tpu is None else tpu:
    return Plan("tpu")
  return Plan("none")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> Plan:
  """Join the multi-process job if there is one. Call before any JAX computation."""
  p = plan(coordinator_address, num_processes, process_id)
  if p.mode == "none":
    return p
  import jax
  if p.mode == "explicit" and jax.config.jax_platforms == "cpu":
    # Cross-process collectives on CPU (tests, laptops) go through gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**p.kwargs())
  return p


def data_shard(mesh, global_batch: int, *, process_of=None, process: int | None = None
               ) -> tuple[int, int]:
  """(shard_index, shard_count): this process feeds rows [i*B/n, (i+1)*B/n) of each global batch.

  Processes whose devices hold the same rows (the batch replicated over a tensor axis that spans
  hosts) get the same shard. Requires each process's rows to be one contiguous block, which holds
  for meshes built by sharding.make_mesh (devices ordered by process). process_of(device) and
  process (default: each device's process_index and this process) let tests lay out processes
  over one host's devices."""
  import jax

  from medmoe_jax import sharding

  index_map = sharding.batch_sharding(mesh).devices_indices_map((global_batch, 1))
  rows: dict[int, set] = {}
  for dev, idx in index_map.items():
    r = idx[0]
    owner = dev.process_index if process_of is None else process_of(dev)
    rows.setdefault(owner, set()).add((r.start or 0, global_batch if r.stop is None else r.stop))
  blocks = {}
  for proc, ranges in rows.items():
    ranges = sorted(ranges)
    start, stop = ranges[0]
    for a, b in ranges[1:]:
      if a > stop:
        raise DistributedError(
            f"process {proc} holds non-contiguous batch rows {ranges} on mesh "
            f"{dict(mesh.shape)}; order the mesh's devices by process (sharding.make_mesh does)")
      stop = max(stop, b)
    blocks[proc] = (start, stop)
  distinct = sorted(set(blocks.values()))
  sizes = {b - a for a, b in distinct}
  if len(sizes) != 1 or sum(sizes) * len(distinct) != global_batch:
    raise DistributedError(f"processes hold unequal or overlapping batch blocks {distinct} of "
                           f"{global_batch} rows on mesh {dict(mesh.shape)}")
  return distinct.index(blocks[jax.process_index() if process is None else process]), len(distinct)


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Wait until every process gets here. Uses the coordination service (a key-value barrier
  with a long timeout), not a device collective: CPU collectives (gloo) give up after 30 s,
  too short while another process is still compiling or building data."""
  import jax
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # the coordination client; no public API
  client = jax_distributed.global_state.client
  if client is None:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
  else:
    client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)


_shared_calls: dict[str, int] = {}


def share_from_process_0(name: str, value: str, timeout_s: int = 1800) -> str:
  """Process 0's `value` on every process: a decision one process
  makes (which checkpoint steps are damaged) and all must follow. Coordination-service key-value
  store, like barrier(): no device collective, no compile."""
  import jax
  if jax.process_count() == 1:
    return value
  from jax._src import distributed as jax_distributed
  client = jax_distributed.global_state.client
  # Every process makes the same calls in the same order: a count makes each key new.
  _shared_calls[name] = _shared_calls.get(name, 0) + 1
  name = f"{name} #{_shared_calls[name]}"
  if jax.process_index() == 0:
    client.key_value_set(name, value)
    return value
  return client.blocking_key_value_get(name, timeout_s * 1000)


def share_from_every_process(name: str, value: str, timeout_s: int = 1800) -> list[str]:
  """Every process's `value`, in process order, on every process (an all-gather through the
  coordination service's key-value store, like share_from_process_0): what each process found
  (did its part of a checkpoint restore), for all to act on the same facts. Also a barrier."""
  import jax
  if jax.process_count() == 1:
    return [value]
  from jax._src import distributed as jax_distributed
  client = jax_distributed.global_state.client
  _shared_calls[name] = _shared_calls.get(name, 0) + 1
  name = f"{name} #{_shared_calls[name]}"
  client.key_value_set(f"{name}/{jax.process_index()}", value)
  return [client.blocking_key_value_get(f"{name}/{i}", timeout_s * 1000)
          for i in range(jax.process_count())]
