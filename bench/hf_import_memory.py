"""Peak host memory of `python -m medmoe_jax.hf import` against the checkpoint's size on disk.

    python bench/hf_import_memory.py --layers 8 --d_model 1024 --vocab 32000 --dtype bfloat16

Makes a random Qwen3 model with transformers (in a child process, so torch's memory is not
counted), saves it as sharded safetensors, then runs the import CLI in a fresh child for each
--param_dtype and reads that child's peak resident set size (ru_maxrss). A child that only
imports the same modules gives the interpreter's baseline (JAX, Orbax, numpy), reported beside
it: the import's own memory is the difference.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile

MAKE = r'''
import sys, torch, transformers
layers, d, vocab, dtype, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
cfg = transformers.Qwen3Config(vocab_size=vocab, hidden_size=d, intermediate_size=3 * d,
                               num_hidden_layers=layers, num_attention_heads=d // 64,
                               num_key_value_heads=max(1, d // 256), head_dim=64,
                               tie_word_embeddings=False)
model = transformers.Qwen3ForCausalLM(cfg).to(getattr(torch, dtype))
model.save_pretrained(out, max_shard_size="100MB")
'''

BASELINE = ("import jax, numpy, orbax.checkpoint, ml_dtypes; import medmoe_jax.hf, "
            "medmoe_jax.config, medmoe_jax.checkpoint, medmoe_jax.upcycle; "
            "import medmoe_jax.training.step; jax.numpy.zeros(1).block_until_ready()")


def child_peak_mib(cmd: list[str]) -> float:
  """Peak RSS (MiB) of one child process run to completion (its own process group)."""
  proc = subprocess.run(["/usr/bin/env", "python", "-c", _WRAP, *cmd], capture_output=True,
                        text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]


# Runs the command as a grandchild and reports only its own peak (RUSAGE_CHILDREN of a fresh
# parent), so the benchmark driver's memory is never mixed in.
_WRAP = r'''
import json, resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
'''


def dir_mib(path: str) -> float:
  return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
             if f.endswith(".safetensors")) / 2**20


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--layers", type=int, default=8)
  ap.add_argument("--d_model", type=int, default=1024)
  ap.add_argument("--vocab", type=int, default=32000)
  ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  ap.add_argument("--json", default=None)
  args = ap.parse_args()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  root = tempfile.mkdtemp(prefix="hf_import_mem_")
  try:
    hf_dir = os.path.join(root, "hf")
    subprocess.run([sys.executable, "-c", MAKE, str(args.layers), str(args.d_model),
                    str(args.vocab), args.dtype, hf_dir], check=True, env=env,
                   capture_output=True)
    disk = dir_mib(hf_dir)
    shards = len([f for f in os.listdir(hf_dir) if f.endswith(".safetensors")])
    base = child_peak_mib([sys.executable, "-c", BASELINE])
    rows = []
    for param_dtype in ("bfloat16", "float32"):
      out = os.path.join(root, f"ours_{param_dtype}")
      peak = child_peak_mib([sys.executable, "-m", "medmoe_jax.hf", "import", "--hf_dir", hf_dir,
                             "--out", out, "--param_dtype", param_dtype])
      target = disk * (2 if param_dtype == "float32" and args.dtype == "bfloat16" else 1)
      rows.append(dict(param_dtype=param_dtype, peak_mib=round(peak, 1),
                       over_baseline_mib=round(peak - base, 1), target_mib=round(target, 1),
                       ratio_to_disk=round((peak - base) / disk, 3)))
    result = dict(disk_mib=round(disk, 1), shards=shards, source_dtype=args.dtype,
                  baseline_mib=round(base, 1), imports=rows)
    print(json.dumps(result, indent=2))
    if args.json:
      with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
