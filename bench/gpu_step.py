"""The `0.5b` Post-MoE train step on one GPU, bfloat16: tokens/s and MFU for each MoE kernel,
and HF transformers' Qwen2-MoE of the same shape on the same GPU. Writes one JSON file.

    bash bench/gpu_step.sh            # on a GPU machine: installs bench/wheels, then this
    python bench/gpu_step.py --out results.json [--batch 4] [--seq 4096] [--steps 5]

Shape: configs/post_moe.py at size 0.5b with the paper's training settings (bf16 compute, float32
params, remat save_dots, 7 experts top-2 in the last 2 layers), batch 4 x 4096 (one GPU's share
of the 32-row paper batch on 8 GPUs). Forward + backward + AdamW. Kernels: `tokamax` (dropless,
tokamax.ragged_dot), `dense` (every expert on every token: `auto` without tokamax), `ragged_dot`
(dropless, XLA's own: padded on GPU) and `capacity` (cf 1.25, drops). HF: Qwen2MoeForCausalLM,
float32 weights under bfloat16 autocast (the same mixed precision), AdamW, every experts
implementation that runs. MFU = model FLOPs (bench/train_step.py's count: 6 x active matmul
parameters x tokens + attention) per second / the GPU's dense bf16 peak. Each variant is timed
after two warm-up steps (the first compiles); a variant that fails is recorded with its error and
the rest still run; the JSON is rewritten after every variant, so a timeout keeps what finished.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Dense bf16 peak per GPU (no sparsity), FLOP/s, by a substring of jax's device_kind.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "B200": 2250e12, "A100": 312e12, "L4": 121e12}

KERNELS = {  # name -> (moe.backend, moe.grouped_matmul, capacity factor)
    "tokamax": ("dropless", "tokamax", 4.0),
    "dense": ("dense", "auto", 4.0),
    "ragged_dot": ("dropless", "ragged_dot", 4.0),
    "capacity_cf1.25": ("capacity", "auto", 1.25),
}


SIZE = "0.5b"  # --size tiny: a smoke test of this script on CPU


def config(kernel: str, batch: int, seq: int):
  from medmoe_jax import config as cfg_lib
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "configs"))
  import post_moe
  c = post_moe.get_config(SIZE)
  backend, gmm, cf = KERNELS[kernel]
  c.moe.update(dict(backend=backend, grouped_matmul=gmm, capacity_factor_train=cf))
  c.data.update(dict(batch_size=batch, seq_len=seq))
  cfg_lib.validate(c, 1)
  return c


def peak_flops(kind: str):
  return next((v for k, v in BF16_PEAK.items() if k in kind), None)


def time_steps(run, steps: int):
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    run()
    times.append(time.perf_counter() - t)
  return times


def ours(kernel: str, batch: int, seq: int, steps: int) -> dict:
  import jax

  from bench.common import random_batch
  from bench.train_step import model_flops_per_token
  from medmoe_jax import config as cfg_lib
  from medmoe_jax.training.step import LossWeights, init_train_state, make_train_step
  c = config(kernel, batch, seq)
  spec = cfg_lib.model_spec(c)
  graphdef, state, tx = init_train_state(spec, c.train, seed=0)
  step = jax.jit(make_train_step(graphdef, tx, LossWeights(), len(cfg_lib.language_list(c))),
                 donate_argnums=0)
  b = random_batch(batch, seq, spec.vocab_size)
  rng = jax.random.key(0)
  holder = {"state": state}

  def run():
    holder["state"], m = step(holder["state"], b, rng)
    holder["loss"] = float(m["loss"])  # waits for the step

  t0 = time.perf_counter()
  run()
  compile_and_first = time.perf_counter() - t0
  run()
  times = time_steps(run, steps)
  med = statistics.median(times)
  tokens = batch * seq
  flops = model_flops_per_token(spec, seq) * tokens
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind)
  out = dict(kernel=kernel, backend=KERNELS[kernel][0], grouped_matmul=KERNELS[kernel][1],
             step_s_median=med, step_s_min=min(times), step_s_max=max(times),
             tokens_per_s=tokens / med, model_tflops_per_s=flops / med / 1e12,
             mfu=(flops / med / peak) if peak else None, first_step_s=compile_and_first,
             loss=holder["loss"])
  del holder, state, step
  gc.collect()
  jax.clear_caches()
  return out


def hf(batch: int, seq: int, steps: int, experts_impl: str) -> dict:
  import torch
  import transformers

  from bench.train_step import model_flops_per_token
  from medmoe_jax import config as cfg_lib
  spec = cfg_lib.model_spec(config("dense", batch, seq))
  moe_layers = set(spec.moe_layer_indices)
  cfg = transformers.Qwen2MoeConfig(
      vocab_size=spec.vocab_size, hidden_size=spec.d_model, num_hidden_layers=spec.num_layers,
      num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
      intermediate_size=spec.d_ff, moe_intermediate_size=spec.moe.d_ff,
      num_experts=spec.moe.num_experts, num_experts_per_tok=spec.moe.top_k, norm_topk_prob=False,
      shared_expert_intermediate_size=0, decoder_sparse_step=1,
      mlp_only_layers=[i for i in range(spec.num_layers) if i not in moe_layers],
      tie_word_embeddings=spec.tie_embeddings, max_position_embeddings=seq,
      attn_implementation="sdpa", output_router_logits=False)
  cfg._experts_implementation = experts_impl
  device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: the --size tiny smoke test
  torch.manual_seed(0)
  model = transformers.Qwen2MoeForCausalLM(cfg).to(device).train()
  # Recompute like our remat: HF's gradient checkpointing per decoder layer.
  model.gradient_checkpointing_enable()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
  tokens = torch.randint(4, spec.vocab_size, (batch, seq), device=device)

  out_loss = [None]

  def run():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16):
      out = model(input_ids=tokens, labels=tokens)
    out.loss.backward()
    out_loss[0] = out.loss.detach()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if device == "cuda":
      torch.cuda.synchronize()

  run()
  run()
  times = time_steps(run, steps)
  med = statistics.median(times)
  n = batch * seq
  flops = model_flops_per_token(spec, seq) * n
  peak = peak_flops(torch.cuda.get_device_name()) if device == "cuda" else None
  out = dict(experts_implementation=experts_impl, step_s_median=med, step_s_min=min(times),
             step_s_max=max(times), tokens_per_s=n / med, model_tflops_per_s=flops / med / 1e12,
             mfu=(flops / med / peak) if peak else None,
             max_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
             loss=float(out_loss[0]))
  del model, opt
  gc.collect()
  if device == "cuda":
    torch.cuda.empty_cache()
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_step.json"))
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=4096)
  p.add_argument("--steps", type=int, default=5, help="timed steps per variant")
  p.add_argument("--kernels", default=",".join(KERNELS))
  p.add_argument("--hf", default="grouped_mm,eager", help="HF experts implementations ('' = none)")
  p.add_argument("--size", default="0.5b", help="model size (tiny: a CPU smoke test)")
  args = p.parse_args()
  global SIZE
  SIZE = args.size
  # JAX frees what it cached between variants (jax.clear_caches), but its allocator keeps its
  # pool: take a share of the GPU and leave torch the rest.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")
  import jax
  from medmoe_jax.model import gmm
  record = {"bench": "gpu_step", "size": args.size, "batch": args.batch, "seq": args.seq,
            "device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "tokamax_available": gmm.tokamax_available(), "python": platform.python_version(),
            "peak_bf16_flops": peak_flops(jax.devices()[0].device_kind),
            "ours": {}, "hf": {}}

  def save():
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(record, f, indent=1)
    print(json.dumps(record), flush=True)

  for k in [x for x in args.kernels.split(",") if x]:
    try:
      record["ours"][k] = ours(k, args.batch, args.seq, args.steps)
    except Exception as e:  # a kernel that does not run here is a result too
      record["ours"][k] = {"error": f"{type(e).__name__}: {e}"[:2000]}
      traceback.print_exc()
    save()
  for impl in [x for x in args.hf.split(",") if x]:
    try:
      record["hf"][impl] = hf(args.batch, args.seq, args.steps, impl)
    except Exception as e:
      record["hf"][impl] = {"error": f"{type(e).__name__}: {e}"[:2000]}
      traceback.print_exc()
    save()


if __name__ == "__main__":
  main()
