"""Dry run: check a job on the machine you have before it runs on the machine you rent.

  python -m medmoe_jax.train --config=configs/post_moe.py:7b --dry_run --topology=v5p-64
  python -m medmoe_jax.train --config=configs/post_moe.py:0.5b --dry_run --num_devices=8

Builds the mesh on fake CPU devices (as many as the topology has JAX devices), builds the real
train step (`Trainer.setup_step`, the same code a run jits), lowers and compiles it on abstract
inputs (nothing is allocated, no data is read), and reports per device:

  parameters, optimizer state   exact, from each array's shard shape under its sharding;
  activations and temporaries   the compiled executable's memory_analysis() (temp_size);
  total                         arguments + outputs not aliased to them + temporaries;
  FLOPs per step                the matmul FLOPs of the step's jaxpr (forward, backward, remat
                                recompute), scanned layer stacks multiplied by their length;
                                MoE layers counted as the kernel the target platform will run
                                (`moe_kernel`, `flops_config`): a grouped matmul counts the
                                active experts, the dense backend every expert on every token,
                                XLA's padded ragged_dot on GPU every group over every row;
  MFU-bound step time           FLOPs per device / the accelerator's peak bf16 FLOP/s: no step
                                can be faster; a good run reaches 40-60% of it.

Why the jaxpr and not cost_analysis() for FLOPs: XLA's cost analysis counts a while loop's body
once, and every segment of layers is a scan (a while loop), so it undercounts by about the layer
count. Its figure is still reported (`xla_flops_per_device`), as a lower bound.

The memory figures come from XLA's CPU compiler: its fusion and buffer assignment differ from
the TPU and GPU compilers', so treat activations as an estimate (usually within tens of percent),
and parameters and optimizer state as exact. Dropless MoE layers compile with the CPU kernel
(chunked), not megablox or ragged_dot, which adds to that uncertainty.

It fails early, with one line naming the fix: an invalid mesh or batch (config validation, before
JAX starts), parameters + optimizer state that cannot fit even before compiling, and a compiled
step whose total does not fit the accelerator's memory. When the mesh does not fit, it looks for
one that does on the same devices (`fitting_mesh`: the smallest fsdp, then expert, the rest
data, tensor as given; each candidate compiled) and prints that mesh's report and flags.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time

from medmoe_jax.errors import ConfigError, InputError  # the CLIs report them in one line

GiB = 1024**3


class DryRunError(InputError):
  """The job cannot run as configured; the message says why and what to change."""


@dataclasses.dataclass(frozen=True)
class Accelerator:
  name: str
  peak_bf16_flops: float   # dense bf16 FLOP/s of one JAX device
  memory_bytes: int        # HBM of one JAX device
  unit: str                # what the N of "<kind>-N" counts
  per_device: int          # how many of those units make one JAX device
  platform: str            # jax.default_backend() there: which MoE kernels `auto` picks


# One JAX device: a v5p chip (two TensorCores run as one "megacore" device), a v6e chip, one GPU.
ACCELERATORS = {
    "v5p": Accelerator("TPU v5p", 459e12, 95 * GiB, "TensorCores", 2, "tpu"),
    "v6e": Accelerator("TPU v6e (Trillium)", 918e12, 32 * GiB, "chips", 1, "tpu"),
    "h100": Accelerator("NVIDIA H100 SXM", 989e12, 80 * GiB, "GPUs", 1, "gpu"),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str
  accelerator: Accelerator | None
  num_devices: int


def parse_topology(topology: str | Topology | None, num_devices: int | None) -> Topology:
  """'v5p-64' -> 32 devices (Cloud TPU names count TensorCores for v5p, chips for v6e);
  'h100-16' -> 16 GPUs; or plain --num_devices=N (no peak: no step-time bound). A Topology
  (any accelerator, e.g. another memory size) is taken as it is."""
  if isinstance(topology, Topology):
    return topology
  if topology:
    m = re.fullmatch(r"(v5p|v6e|h100)-(\d+)", topology.strip().lower())
    if not m:
      raise DryRunError(f"--topology={topology!r}: use v5p-N (N TensorCores, even), v6e-N "
                        f"(N chips) or h100-N (N GPUs), e.g. v5p-64")
    acc = ACCELERATORS[m.group(1)]
    n_units = int(m.group(2))
    if n_units < acc.per_device or n_units % acc.per_device:
      raise DryRunError(f"--topology={topology}: {acc.name} counts {acc.unit}, {acc.per_device} "
                        f"per device; N must be a positive multiple of {acc.per_device}")
    n = n_units // acc.per_device
    if num_devices is not None and num_devices != n:
      raise DryRunError(f"--num_devices={num_devices} disagrees with --topology={topology} "
                        f"({n} JAX devices); pass one of them")
    return Topology(topology, acc, n)
  if num_devices is None or num_devices < 1:
    raise DryRunError("--dry_run needs --topology=v5p-64|v6e-16|h100-8|... or --num_devices=N")
  return Topology(f"{num_devices} devices", None, num_devices)


_FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def use_fake_devices(n: int) -> None:
  """n fake CPU devices. Must run before JAX initialises its backends (train.main calls it first)."""
  import jax
  os.environ["JAX_PLATFORMS"] = "cpu"
  # The executable never runs: skip LLVM's optimisations (compiles ~2x faster; buffer
  # assignment, hence memory_analysis, happens before and is unchanged).
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *_FAST_COMPILE]).strip()
  try:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # backends already up: fine if there are enough CPU devices
    if jax.default_backend() != "cpu" or jax.device_count() < n:
      raise DryRunError(f"the dry run needs {n} fake CPU devices but JAX already started with "
                        f"{jax.device_count()} {jax.default_backend()} devices; run it as its "
                        "own process (python -m medmoe_jax.train ... --dry_run)") from None


# --- FLOPs ------------------------------------------------------------------------------------

def _sub_jaxprs(eqn):
  for v in eqn.params.values():
    for item in (v if isinstance(v, (tuple, list)) else (v,)):
      if hasattr(item, "eqns"):
        yield item
      elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
        yield item.jaxpr


def _dot_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  return 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _ragged_dot_flops(eqn) -> float:
  """Every lhs element meets the rhs's free dims once (each row belongs to one group): 2*M*K*N
  for the forward [M, K] x [G, K, N] and for both of its gradients."""
  dims = eqn.params["ragged_dot_dimension_numbers"]
  (_, rhs_contract), (_, rhs_batch) = dims.dot_dimension_numbers
  lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  bound = set(rhs_contract) | set(rhs_batch) | set(dims.rhs_group_dimensions)
  return 2.0 * math.prod(lhs) * math.prod(n for i, n in enumerate(rhs) if i not in bound)


def _ragged_dot_groups(eqn) -> int:
  """The number of groups (group_sizes' length), in every mode: the forward's and the input
  gradient's (groups of rhs) and the weight gradient's (groups of the output)."""
  return int(eqn.invars[2].aval.shape[-1])


def matmul_flops(jaxpr, mesh_sizes: dict | None = None, *, padded_ragged_dot: bool = False) -> float:
  """Matmul FLOPs of a (closed) jaxpr over the whole mesh: 2*M*N*K per dot_general and per
  ragged_dot_general (rows times their own group's weights; with padded_ragged_dot, every row
  times every group's weights, as XLA computes it on GPU), scan bodies times their length,
  the costlier branch of a cond, shard_map bodies (per-shard shapes) times the number of shards.
  A while loop of unknown length counts once (see `flops_config`)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  count = lambda j: matmul_flops(j, mesh_sizes, padded_ragged_dot=padded_ragged_dot)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "ragged_dot_general":
      total += _ragged_dot_flops(eqn) * (_ragged_dot_groups(eqn) if padded_ragged_dot else 1)
    elif name == "scan":
      total += eqn.params["length"] * count(eqn.params["jaxpr"])
    elif name == "cond":
      total += max(count(b) for b in eqn.params["branches"])
    elif name == "shard_map":
      mesh = eqn.params["mesh"]
      manual = eqn.params.get("manual_axes") or eqn.params.get("axis_names") or mesh.axis_names
      shards = math.prod(mesh.shape[a] for a in manual)
      total += shards * sum(count(j) for j in _sub_jaxprs(eqn))
    else:
      total += sum(count(j) for j in _sub_jaxprs(eqn))
  return total


def moe_kernel(c, platform: str = "cpu") -> str | None:
  """What c's MoE layers run on `platform`: 'dense', 'capacity' or 'dropless/<kernel>' (None
  without MoE layers). `auto` resolves as it will there (model/moe.py): on a GPU, tokamax if it
  is importable here (the dry run's environment stands for the job's), else the dense backend."""
  from medmoe_jax import config as cfg_lib
  from medmoe_jax.model import moe
  spec = cfg_lib.model_spec(c)
  if not spec.moe_layer_indices:
    return None
  m = spec.moe
  backend = moe.resolve_backend(m.backend, platform, m.grouped_matmul)
  if backend != "dropless":
    return backend
  return f"dropless/{moe.resolve_grouped_matmul(m.grouped_matmul, platform)}"


def ragged_dot_is_padded(c, platform: str = "cpu") -> bool:
  """XLA lowers ragged_dot on GPU to one matmul over every row for every group (the zero-padded
  dense form, model/gmm.py): its FLOPs are the group count times the active ones."""
  return platform == "gpu" and moe_kernel(c, platform) == "dropless/ragged_dot"


def flops_config(c, platform: str = "cpu"):
  """The config whose train step the FLOPs are counted on, for what `platform` will run:
  - the dense or capacity backend (what `auto` is there, or what c names): c with that backend
    named, so the fake CPU devices trace it too;
  - dropless: c with the ragged_dot kernel. The chunked CPU kernel (auto on these fake CPU
    devices) loops a data-dependent number of times and megablox and tokamax hide their
    matmuls in kernel tiles, so their jaxprs cannot say how much they compute; ragged_dot
    states it in its shapes, and it is what those grouped matmuls do: the active experts'
    matmuls, forward and backward (on GPU, XLA's own ragged_dot does more:
    `ragged_dot_is_padded`)."""
  kernel = moe_kernel(c, platform)
  if kernel is None:
    return c
  backend, _, impl = kernel.partition("/")
  if backend != "dropless":
    if c.moe.backend == backend:
      return c
    c = c.copy_and_resolve_references()
    c.moe.backend = backend
    return c
  if impl == "ragged_dot" and c.moe.backend == "dropless" and c.moe.grouped_matmul == "ragged_dot":
    return c
  c = c.copy_and_resolve_references()
  c.moe.backend, c.moe.grouped_matmul = "dropless", "ragged_dot"
  return c


# --- memory -----------------------------------------------------------------------------------

def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs carrying shardings (max over devices
  is the same for the even shardings used here)."""
  import jax
  import numpy as np
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return int(total)


def _fmt_bytes(b: float) -> str:
  return f"{b / GiB:.2f} GiB"


def _fmt_time(s: float) -> str:
  return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


_SHARD_STATE = ("shard them with config.mesh.fsdp (e.g. --config.mesh.data=1 "
                "--config.mesh.fsdp=-1) or use more devices")
_SHRINK_ACTIVATIONS = ("set config.model.remat=full, use fewer rows per device (a lower "
                       "config.data.batch_size, or config.mesh.tensor=2 to split each row's "
                       "activations), raise config.mesh.fsdp, or use more devices")
MAX_SEARCH_COMPILES = 4  # candidate meshes compiled at most while looking for one that fits


class DoesNotFit(DryRunError):
  """The job does not fit the devices' memory; `suggestion` is the report of a mesh that does on
  the same devices (None when none does)."""

  def __init__(self, message: str, suggestion: dict | None):
    super().__init__(message)
    self.suggestion = suggestion


@dataclasses.dataclass
class _Prepared:
  """A config's train step on the fake devices, with its exact state bytes (nothing compiled)."""
  config: object
  mesh: object
  trainer: object
  inputs: tuple
  params_bytes: int
  optimizer_bytes: int
  batch_bytes: int

  @property
  def state_bytes(self) -> int:
    return self.params_bytes + self.optimizer_bytes + self.batch_bytes


def _prepare(c, n: int) -> _Prepared:
  import jax

  from medmoe_jax import sharding
  from medmoe_jax.training.trainer import Trainer
  mesh = sharding.make_mesh(c, jax.devices()[:n])
  trainer = Trainer(c, workdir="", mesh=mesh).setup_step()
  state, batch, rng = trainer.abstract_step_inputs()
  return _Prepared(c, mesh, trainer, (state, batch, rng), per_device_bytes(state.params),
                   per_device_bytes(state.opt_state), per_device_bytes(batch))


def _compile_report(p: _Prepared, topo: Topology) -> dict:
  """Trace, count FLOPs, compile: the report of one prepared step."""
  from medmoe_jax.model import moe
  c, acc, n = p.config, topo.accelerator, topo.num_devices
  platform = acc.platform if acc else "cpu"
  b, s = int(c.data.batch_size), int(c.data.seq_len)
  t0 = time.perf_counter()
  traced = p.trainer.train_step.trace(*p.inputs)
  flops = step_flops(c, p.mesh, platform, traced)
  lowered = traced.lower()
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()

  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  total_b = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + mem.temp_size_in_bytes)
  from medmoe_jax import config as cfg_lib
  spec = cfg_lib.model_spec(c)
  report = {
      "config": c.name, "size": c.size, "topology": topo.name, "num_devices": n,
      "accelerator": acc.name if acc else None, "mesh": dict(p.mesh.shape),
      "batch_size": b, "seq_len": s, "tokens_per_step": b * s,
      "remat": c.model.remat, "dtype": c.model.dtype, "param_dtype": c.model.param_dtype,
      "platform": platform, "moe_kernel": moe_kernel(c, platform),
      "moe_kernel_note": moe.kernel_note(spec.moe, platform) if spec.moe_layer_indices else None,
      "params_bytes_per_device": p.params_bytes,
      "optimizer_bytes_per_device": p.optimizer_bytes,
      "batch_bytes_per_device": p.batch_bytes,
      "argument_bytes_per_device": int(mem.argument_size_in_bytes),
      "activation_temp_bytes_per_device": int(mem.temp_size_in_bytes),
      "output_unaliased_bytes_per_device": int(mem.output_size_in_bytes - mem.alias_size_in_bytes),
      "total_bytes_per_device": int(total_b),
      "device_memory_bytes": acc.memory_bytes if acc else None,
      "flops_per_step": flops,
      "flops_per_device": flops / n,
      "xla_flops_per_device": float(cost.get("flops", 0.0)) if cost else None,
      "trace_lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2),
  }
  if acc:
    bound = flops / n / acc.peak_bf16_flops
    report.update(peak_flops_per_device=acc.peak_bf16_flops, mfu_bound_step_s=bound,
                  mfu_bound_tokens_per_s=b * s / bound if bound else None)
  return report


def step_flops(c, mesh, platform: str = "cpu", traced=None) -> float:
  """Matmul FLOPs of c's train step on `mesh` as `platform` runs its MoE layers; `traced`: c's
  own traced step, reused when it is the one to count."""
  from medmoe_jax.training.trainer import Trainer
  fc = flops_config(c, platform)
  if fc is not c or traced is None:
    t = Trainer(fc, workdir="", mesh=mesh).setup_step()
    traced = t.train_step.trace(*t.abstract_step_inputs())
  return matmul_flops(traced.jaxpr, padded_ragged_dot=ragged_dot_is_padded(c, platform))


def _with_mesh(c, shape: dict):
  c = c.copy_and_resolve_references()
  c.mesh.update(shape)
  return c


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def candidate_meshes(c, n: int) -> list[dict]:
  """Meshes of n devices to try, in order: fsdp ascending, then expert ascending, data the rest,
  tensor as c resolves it; only those config validation accepts (batch, d_model and expert
  divisibility)."""
  from medmoe_jax import config as cfg_lib
  tensor = cfg_lib.mesh_shape(c, n)["tensor"]
  rest = n // tensor
  out = []
  for f in _divisors(rest):
    for e in _divisors(rest // f):
      shape = dict(data=rest // (f * e), fsdp=f, expert=e, tensor=tensor)
      try:
        cfg_lib.validate(_with_mesh(c, shape), n)
      except cfg_lib.ConfigError:
        continue
      out.append(shape)
  return out


def fitting_mesh(c, topo: Topology, *, skip: dict | None = None, log=None) -> dict | None:
  """The report of the first mesh of `candidate_meshes` whose compiled step fits the
  accelerator's memory (its parameters, optimizer state and batch, exact, are checked before
  compiling it), with `meshes_tried`: every candidate before it, its state bytes and, where it
  was compiled, its total. None if none fits within MAX_SEARCH_COMPILES compiles."""
  acc, n = topo.accelerator, topo.num_devices
  tried = []
  for shape in candidate_meshes(c, n):
    if shape == skip:
      continue
    p = _prepare(_with_mesh(c, shape), n)
    tried.append({"mesh": shape, "state_bytes_per_device": p.state_bytes,
                  "total_bytes_per_device": None})
    if p.state_bytes > acc.memory_bytes:
      continue
    if sum(t["total_bytes_per_device"] is not None for t in tried) == MAX_SEARCH_COMPILES:
      return None
    if log:
      log(f"trying mesh {shape}")
    report = _compile_report(p, topo)
    tried[-1]["total_bytes_per_device"] = report["total_bytes_per_device"]
    if report["total_bytes_per_device"] <= acc.memory_bytes:
      report["meshes_tried"] = tried
      return report
  return None


def mesh_flags(shape: dict) -> str:
  return " ".join(f"--config.mesh.{a}={shape[a]}" for a in ("data", "fsdp", "expert", "tensor"))


def _suggestion_text(r: dict | None) -> str:
  if r is None:
    return ""
  return (f"; on the same devices the mesh {r['mesh']} fits: "
          f"{_fmt_bytes(r['total_bytes_per_device'])} per device "
          f"({mesh_flags(r['mesh'])})")


def run(c, topology: str | Topology | None = None, num_devices: int | None = None, *,
        check_fit: bool = True, suggest: bool = True, log=None) -> dict:
  """Compile c's train step for the topology on fake devices; returns the report (a dict).
  Raises ConfigError / DryRunError with a one-line reason when the job cannot run; DoesNotFit
  (with the report of a mesh that fits on the same devices, when `suggest` finds one) when it
  does not fit the accelerator's memory."""
  from medmoe_jax import config as cfg_lib

  topo = parse_topology(topology, num_devices)
  n = topo.num_devices
  cfg_lib.validate(c, n)  # mesh / batch / heads errors before JAX starts
  use_fake_devices(n)

  acc = topo.accelerator
  p = _prepare(c, n)
  shape = dict(p.mesh.shape)
  search = lambda: fitting_mesh(c, topo, skip=shape, log=log) if suggest else None
  if check_fit and acc and p.params_bytes + p.optimizer_bytes > acc.memory_bytes:
    found = search()
    raise DoesNotFit(
        f"{c.name} ({c.size}) on {topo.name}: parameters {_fmt_bytes(p.params_bytes)} + optimizer "
        f"state {_fmt_bytes(p.optimizer_bytes)} per device already exceed the "
        f"{_fmt_bytes(acc.memory_bytes)} of a {acc.name} device (mesh {shape}); "
        + (_SHARD_STATE if found is None else "shard them with config.mesh.fsdp")
        + _suggestion_text(found), found)

  report = _compile_report(p, topo)
  total_b = report["total_bytes_per_device"]
  if check_fit and acc and total_b > acc.memory_bytes:
    found = search()
    raise DoesNotFit(
        f"{c.name} ({c.size}) on {topo.name} does not fit: {_fmt_bytes(total_b)} per device "
        f"(parameters {_fmt_bytes(p.params_bytes)}, optimizer {_fmt_bytes(p.optimizer_bytes)}, "
        f"activations and temporaries {_fmt_bytes(report['activation_temp_bytes_per_device'])}) "
        f"> {_fmt_bytes(acc.memory_bytes)} of a {acc.name} device (mesh {shape})"
        + (f"; {_SHRINK_ACTIVATIONS}" if found is None else _suggestion_text(found)), found)
  return report


def format_report(r: dict) -> str:
  lines = [
      f"dry run: {r['config']} ({r['size']}) on {r['topology']}"
      + (f" = {r['num_devices']} x {r['accelerator']}" if r["accelerator"] else ""),
      f"  mesh {r['mesh']}, batch {r['batch_size']} x {r['seq_len']} tokens, "
      f"{r['dtype']} compute, {r['param_dtype']} params, remat {r['remat']}",
      f"  per device: parameters        {_fmt_bytes(r['params_bytes_per_device'])}",
      f"              optimizer state   {_fmt_bytes(r['optimizer_bytes_per_device'])}",
      f"              activations+temp  {_fmt_bytes(r['activation_temp_bytes_per_device'])}"
      "  (memory_analysis, CPU compiler: estimate)",
      f"              total             {_fmt_bytes(r['total_bytes_per_device'])}"
      + (f" of {_fmt_bytes(r['device_memory_bytes'])}"
         f" ({100 * r['total_bytes_per_device'] / r['device_memory_bytes']:.0f}%)"
         if r["device_memory_bytes"] else ""),
      f"  FLOPs per step {r['flops_per_step']:.3e} ({r['flops_per_device']:.3e} per device; "
      f"matmuls incl. backward and remat)",
  ]
  if r.get("moe_kernel"):
    lines.append(f"  MoE layers on {r['platform']}: {r['moe_kernel']} (FLOPs counted as it computes)")
  if r.get("moe_kernel_note"):
    lines.append(f"  {r['moe_kernel_note']}")
  if r.get("mfu_bound_step_s"):
    lines.append(f"  MFU-bound step time {_fmt_time(r['mfu_bound_step_s'])} at "
                 f"{r['peak_flops_per_device'] / 1e12:.0f} TFLOP/s per device "
                 f"(<= {r['mfu_bound_tokens_per_s']:,.0f} tokens/s); expect 2x that at 50% MFU")
  lines.append(f"  traced+lowered in {r['trace_lower_s']} s, compiled in {r['compile_s']} s")
  return "\n".join(lines)


def main(c, topology: str | None, num_devices: int | None) -> int:
  """CLI entry (train.main): prints the report and a JSON line; returns the exit status."""
  import sys

  log = lambda msg: print(f"dry run: {msg}", file=sys.stderr, flush=True)
  try:
    report = run(c, topology, num_devices, log=log)
  except (ConfigError, DryRunError) as e:
    found = getattr(e, "suggestion", None)
    if found:
      print("a mesh that fits on the same devices:\n" + format_report(found), flush=True)
      print("DRYRUN_SUGGESTION_JSON " + json.dumps(found), flush=True)
    print(f"dry run failed: {e}", file=sys.stderr, flush=True)
    return 2
  print(format_report(report), flush=True)
  print("DRYRUN_JSON " + json.dumps(report), flush=True)
  return 0
