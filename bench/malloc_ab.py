"""The MoE block benchmark and the train step under glibc allocator settings, side by side.

  python bench/malloc_ab.py                                # MoE block at 7, 8, 64 experts
  python bench/malloc_ab.py --job=train_step --rounds=3    # bench/train_step.py's Post-MoE step

XLA:CPU allocates each call's temporaries and outputs with malloc. glibc maps a block above its
mmap threshold (32 MB at most) afresh, and gives freed memory above its trim threshold back to the
OS, so such buffers are faulted in again, page by page, on every call (bench/page_faults.py
counts them). How much of a call that is differs between functions: the dense reference of
bench/moe_layer.py has one 160 MB temporary, the MoE block 39-45 MB plus, at 64 experts, 48 MB of
weight gradients. So the benchmark's ratios depend on the allocator. The settings compared:

  default  glibc as the machine has it
  thp      GLIBC_TUNABLES=glibc.malloc.hugetlb=1: malloc's own mappings on transparent huge
           pages, 512 times fewer faults (the kernel zeroes 2 MB pages instead)
  retain   MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=16G: one heap, no
           mappings, nothing given back, so after the first call nothing faults at all

Glibc reads these when a process starts, so every round runs one process per setting, in
turn (the machine's speed drifts by 10-15% from minute to minute). The MoE job times the dense
reference and the blocks rep by rep in each process (bench/block_ab.py's worker). Prints one
JSON line per process and, at the end, one line per setting with the medians over the rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
from bench.common import ALLOCATOR_VARS, machine_info, median_seconds  # noqa: E402

SETTINGS = {
    "default": {},
    "thp": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "retain": {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
               "MALLOC_TRIM_THRESHOLD_": str(16 << 30)},
}


def train_step_worker(steps: int) -> dict:
  """Median seconds of the Post-MoE train step of bench/train_step.py, with faults per step."""
  from bench.train_step import ours
  _, run = ours(dense=False, batch=8, seq=512, backend="auto")
  run()
  run()
  before = resource.getrusage(resource.RUSAGE_SELF)
  step_s = median_seconds(run, steps)
  after = resource.getrusage(resource.RUSAGE_SELF)
  return dict(step_s=round(step_s, 3),
              faults_per_step=(after.ru_minflt - before.ru_minflt) // steps,
              sys_s_per_step=round((after.ru_stime - before.ru_stime) / steps, 3))


def run_setting(name: str, args) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARS}
  env.update(SETTINGS[name])
  if args.job == "moe_layer":  # block_ab's worker: dense and every expert count, rep by rep
    cmd = [sys.executable, os.path.join(HERE, "bench", "block_ab.py"), f"--worker={HERE}",
           f"--experts={args.experts}", f"--reps={args.reps}"]
  else:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"--reps={args.reps}"]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
  row = [json.loads(l) for l in out.splitlines() if l.startswith("{")][-1]
  if args.job == "train_step":
    return row
  res = {f"ratio_{e}": r for e, r in row["ratio"].items()}
  res["dense_ms"] = row["dense_ms"]
  res.update({k: v for k, v in row.items() if "/" in k})  # e.g. "64/8": the two blocks' times
  return res


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--job", choices=("moe_layer", "train_step"), default="moe_layer")
  p.add_argument("--settings", default=",".join(SETTINGS))
  p.add_argument("--experts", default="7,8,64", help="moe_layer: expert counts (the last two "
                 "give the high/low ratio, as the issue's 64 / 8)")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--reps", type=int, default=7, help="timed repetitions (steps) per process")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    print(json.dumps(train_step_worker(args.reps)), flush=True)
    return
  names = args.settings.split(",")
  unknown = sorted(set(names) - set(SETTINGS))
  if unknown:
    p.error(f"--settings: unknown {unknown}; choose from {sorted(SETTINGS)}")
  print(json.dumps(dict(machine_info(), job=args.job, settings={n: SETTINGS[n] for n in names})),
        flush=True)
  results = {n: [] for n in names}
  for r in range(args.rounds):
    for n in names:
      res = run_setting(n, args)
      results[n].append(res)
      print(json.dumps(dict(setting=n, round=r, **res)), flush=True)
  for n, rows in results.items():
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    print(json.dumps(dict(setting=n, median_of_rounds=len(rows),
                          **{k: round(statistics.median(row[k] for row in rows), 3) for k in keys})),
          flush=True)


if __name__ == "__main__":
  main()
