"""Train-step throughput: medmoe_jax against HF transformers (PyTorch) on the same machine.

    python bench/train_step.py            # Post-MoE benchmark shape vs Qwen2MoeForCausalLM
    python bench/train_step.py --dense    # dense shape vs Qwen2ForCausalLM

Same model on both sides (about 21M parameters: 8 layers, d_model 256, 4 heads, 2 kv heads, FFN
1024, vocab 8000, 7 experts top-2 in the last 2 layers, no shared expert), batch 8 x 512,
forward + backward + AdamW, float32. Measured alternately in one run after warm-up; medians.
HF's experts implementation: every one that runs on this platform is timed, the fastest counts.

MFU = model FLOPs per second / measured peak of a large float32 matmul in JAX on this machine.
Model FLOPs (PaLM convention): 6 x active matmul parameters x tokens (attention projections,
dense FFNs, the top-k experts' FFNs, routers, the LM head; not the embedding gather) plus
attention 12 x layers x seq x (heads x head_dim) per token (full, non-causal score matrix).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import (emit, machine_info, matmul_peak_gflops, median_seconds,  # noqa: E402
                          random_batch, single_thread_env, use_clock)

SHAPE = dict(vocab_size=8000, d_model=256, num_layers=8, num_heads=4, num_kv_heads=2, d_ff=1024)
NUM_EXPERTS, TOP_K, MOE_LAST = 7, 2, 2


def model_flops_per_token(spec, seq: int) -> float:
  d, h, kv, dh = spec.d_model, spec.num_heads, spec.num_kv_heads, spec.head_dim
  attn_proj = d * h * dh * 2 + d * kv * dh * 2
  dense_ffn = 3 * d * spec.d_ff
  moe_layers = len(spec.moe_layer_indices)
  dense_layers = spec.num_layers - moe_layers
  moe_ffn = spec.moe.top_k * 3 * d * spec.moe.d_ff + d * spec.moe.num_experts
  active = (spec.num_layers * attn_proj + dense_layers * dense_ffn + moe_layers * moe_ffn
            + d * spec.vocab_size)
  attention = 12 * spec.num_layers * seq * h * dh
  return 6 * active + attention


def ours(dense: bool, batch: int, seq: int, backend: str, scan_unroll: int = 1):
  import jax

  from medmoe_jax import config as cfg_lib
  from medmoe_jax.training.step import LossWeights, init_train_state, make_train_step
  c = cfg_lib.base_config()
  c.model.update(SHAPE)
  c.model.scan_unroll = scan_unroll
  c.moe.update(dict(layers="none" if dense else f"last:{MOE_LAST}", num_experts=NUM_EXPERTS,
                    top_k=TOP_K, backend=backend))
  if dense:
    c.moe.language_routing = "none"
  c.train.steps = 1000
  spec = cfg_lib.model_spec(c)
  graphdef, state, tx = init_train_state(spec, c.train, seed=0)
  step = jax.jit(make_train_step(graphdef, tx, LossWeights(), len(cfg_lib.language_list(c))),
                 donate_argnums=0)
  b = random_batch(batch, seq, SHAPE["vocab_size"])
  rng = jax.random.key(0)
  holder = {"state": state}

  def run():
    holder["state"], m = step(holder["state"], b, rng)
    jax.block_until_ready(m["loss"])

  return spec, run


def hf(dense: bool, batch: int, seq: int, experts_impl: str, threads: int):
  import torch
  import transformers
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  common = dict(vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["d_model"],
                num_hidden_layers=SHAPE["num_layers"], num_attention_heads=SHAPE["num_heads"],
                num_key_value_heads=SHAPE["num_kv_heads"], intermediate_size=SHAPE["d_ff"],
                tie_word_embeddings=True, max_position_embeddings=seq, attn_implementation="sdpa")
  if dense:
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
  else:
    cfg = transformers.Qwen2MoeConfig(
        **common, moe_intermediate_size=SHAPE["d_ff"], num_experts=NUM_EXPERTS,
        num_experts_per_tok=TOP_K, norm_topk_prob=False, shared_expert_intermediate_size=0,
        decoder_sparse_step=1, mlp_only_layers=list(range(SHAPE["num_layers"] - MOE_LAST)),
        output_router_logits=False)
    cfg._experts_implementation = experts_impl
    model = transformers.Qwen2MoeForCausalLM(cfg)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
  tokens = torch.randint(4, SHAPE["vocab_size"], (batch, seq))

  def run():
    opt.zero_grad(set_to_none=True)
    out = model(input_ids=tokens, labels=tokens)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  return run


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dense", action="store_true", help="dense shape vs Qwen2ForCausalLM")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=512)
  p.add_argument("--reps", type=int, default=5, help="alternating repetitions")
  p.add_argument("--steps", type=int, default=3, help="train steps per timed repetition")
  p.add_argument("--backend", default="auto", help="our MoE backend")
  p.add_argument("--scan_unroll", type=int, default=1,
                 help="our config.model.scan_unroll (1: rolled scan, the default; 0: unrolled)")
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="compute threads on both sides: all cores, or 1 (XLA single-threaded, "
                      "torch.set_num_threads(1))")
  p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                 help="wall: elapsed time; cpu: process CPU time (use with --threads=1 on a "
                      "shared machine: other jobs then do not count)")
  args = p.parse_args()
  if args.threads not in (1, os.cpu_count()):
    p.error(f"--threads: 1 or {os.cpu_count()} (XLA on CPU offers no other setting)")
  if args.threads == 1:
    single_thread_env()
  use_clock(args.clock)

  spec, our_run = ours(args.dense, args.batch, args.seq, args.backend, args.scan_unroll)
  # HF's "batched_mm" gathers each token's expert weights ([tokens*k, d, f]: 8.6 GB at this
  # shape) and is OOM-killed on a 24 GB machine; it is meant for small decode batches.
  impls = ["eager"] if args.dense else ["eager", "grouped_mm"]
  hf_runs = {}
  for impl in impls:
    try:
      run = hf(args.dense, args.batch, args.seq, impl, args.threads)
      run()  # warm-up; also proves the implementation works on this platform
      hf_runs[impl] = run
    except Exception as e:  # an implementation that needs CUDA
      print(f"# HF experts implementation {impl!r} unavailable here: {type(e).__name__}: {e}",
            file=sys.stderr)
  for _ in range(2):
    our_run()
  steps = args.steps
  times = {"ours": [], **{k: [] for k in hf_runs}}
  peaks = []
  for _ in range(args.reps):  # alternate, so drift hits both sides alike
    times["ours"].append(median_seconds(our_run, steps))
    for k, run in hf_runs.items():
      times[k].append(median_seconds(run, steps))
    peaks.append(matmul_peak_gflops())  # the best of these is the machine's peak
  import statistics
  med = {k: statistics.median(v) for k, v in times.items()}
  best_hf = min((k for k in hf_runs), key=lambda k: med[k])
  tokens = args.batch * args.seq
  flops = model_flops_per_token(spec, args.seq) * tokens
  peak = max(peaks)
  record = {
      "model": "dense" if args.dense else "post_moe",
      "ours_tokens_per_sec": tokens / med["ours"],
      "hf_tokens_per_sec": tokens / med[best_hf],
      "speedup": med[best_hf] / med["ours"],
      "ours_mfu": flops / med["ours"] / 1e9 / peak,
      "hf_mfu": flops / med[best_hf] / 1e9 / peak,
      "matmul_peak_gflops": peak,
      "hf_experts_impl": best_hf,
      "hf_all_tokens_per_sec": {k: tokens / med[k] for k in hf_runs},
      "our_backend": args.backend,
      "scan_unroll": args.scan_unroll,
      "threads": args.threads,
      "clock": args.clock,
      "step_seconds": {k: round(v, 3) for k, v in med.items()},
      "params_active_flops_per_token": model_flops_per_token(spec, args.seq),
      "torch": __import__("torch").__version__,
      "transformers": __import__("transformers").__version__,
      **machine_info(),
  }
  emit(record)


if __name__ == "__main__":
  main()
