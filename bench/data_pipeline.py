"""Data pipeline throughput against what the 0.5b training step consumes on one H100.

  python bench/data_pipeline.py [--seconds 15] [--docs 20000] [--json OUT.json]

Measures, on this machine's CPU:
  - build: records/s and MB/s of `sources.build_source` (JSONL -> ArrayRecord), with every record
    tagged and with no record tagged (the language detector runs on each);
  - pipeline: real (non-padding) tokens/s delivered by the training pipeline at the 0.5b config's
    batch shape (32 rows x 4096 tokens), consumed as fast as possible, for short documents (the
    sample's, ~270 tokens), long ones (~2,200 tokens; both packings), supervised records, two
    tokenizers (the shipped sentencepiece model; a byte-level BPE tokenizer.json built here with
    the `tokenizers` library), and a sweep over the number of read/tokenize threads.
and computes the tokens/s the `0.5b` Post-MoE training step consumes on one H100 at 40% MFU:

  model FLOPs/token = 6 * N_active + 12 * L * S * H * Q      (PaLM appendix B convention)
  N_active = weights a token's forward pass multiplies by: attention and dense MLP of every layer,
             top_k of num_experts experts and the router in MoE layers, the LM head (tied to
             the embedding; the embedding lookup itself is not a matmul)
  12 L S H Q: attention scores and values (L layers, S = seq_len, H heads of width Q), forward
             and backward, without halving for the causal mask. The causal-halved count (6 L S H Q)
             is reported too; the target is the larger tokens/s of the two (the stricter one).
  peak = 989.4e12 FLOP/s (H100 SXM dense bf16), MFU = 0.40
  tokens/s = MFU * peak / FLOPs per token

The corpus is the embedded sample, replicated: throughput depends on document lengths and the
tokenizer, not on which text it is. This machine is shared: numbers vary run to run; the JSON
records the load average at the start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import random
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

H100_BF16_PEAK = 989.4e12
MFU = 0.40


def _config(arg: str):
  import importlib.util

  spec = importlib.util.spec_from_file_location("cfg", REPO / "configs" / "post_moe.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def required_tokens_per_sec(size: str = "0.5b") -> dict:
  from medmoe_jax import config as cfg_lib

  c = _config(size)
  s = cfg_lib.model_spec(c)
  moe_layers = set(s.moe_layer_indices)
  q_dim, kv_dim = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
  attn = s.d_model * q_dim + 2 * s.d_model * kv_dim + q_dim * s.d_model
  dense_mlp = 3 * s.d_model * s.d_ff
  moe_mlp = s.moe.top_k * 3 * s.d_model * s.moe.d_ff + s.d_model * s.moe.num_experts
  n_active = sum(attn + (moe_mlp if i in moe_layers else dense_mlp) for i in range(s.num_layers))
  n_active += s.d_model * s.vocab_size  # LM head
  seq = int(c.data.seq_len)
  attn_flops = 12 * s.num_layers * seq * q_dim
  full = 6 * n_active + attn_flops
  causal = 6 * n_active + attn_flops // 2
  rate = lambda f: MFU * H100_BF16_PEAK / f  # noqa: E731
  return {"config": f"post_moe:{size}", "seq_len": seq, "batch_size": int(c.data.batch_size),
          "moe_layers": sorted(moe_layers), "n_active_params": n_active,
          "flops_per_token": full, "flops_per_token_causal": causal,
          "tokens_per_sec": rate(full), "tokens_per_sec_causal": rate(causal),
          "target_tokens_per_sec": max(rate(full), rate(causal)),
          "steps_per_sec": max(rate(full), rate(causal)) / (seq * int(c.data.batch_size))}


def _sample_records():
  from medmoe_jax.data import sources

  return [r for p in sources.sample_files() for r in sources.read_jsonl(p)]


def write_corpora(root: pathlib.Path, n_docs: int) -> dict[str, pathlib.Path]:
  """short: sample documents; long: 8 same-language documents joined; sft: question/answer;
  untagged: short without `lang` (only detectable languages)."""
  from medmoe_jax.data import langid

  rng = random.Random(0)
  recs = _sample_records()
  by_lang: dict[str, list[str]] = {}
  for r in recs:
    by_lang.setdefault(r["lang"], []).append(r["text"])
  out = {k: root / f"{k}.jsonl" for k in ("short", "long", "sft", "untagged")}
  detectable = [r for r in recs if r["lang"] in langid.detectable()]
  with open(out["short"], "w") as s, open(out["long"], "w") as lg, open(out["sft"], "w") as q, \
       open(out["untagged"], "w") as u:
    for i in range(n_docs):
      r = recs[rng.randrange(len(recs))]
      s.write(json.dumps(r, ensure_ascii=False) + "\n")
      t = r["text"]
      q.write(json.dumps({"question": t[: len(t) // 3], "answer": t[len(t) // 3 :],
                          "lang": r["lang"]}, ensure_ascii=False) + "\n")
      d = detectable[rng.randrange(len(detectable))]
      u.write(json.dumps({"text": d["text"]}, ensure_ascii=False) + "\n")
      if i % 8 == 0:
        lang = r["lang"]
        joined = "\n\n".join(rng.choice(by_lang[lang]) for _ in range(8))
        lg.write(json.dumps({"text": joined, "lang": lang}, ensure_ascii=False) + "\n")
  return out


def hf_tokenizer(path: pathlib.Path, vocab_size: int = 8000):
  from tokenizers import Tokenizer as HF, decoders, models, pre_tokenizers, trainers

  from medmoe_jax.data import tokenizer

  hf = HF(models.BPE())
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  hf.train_from_iterator([r["text"] for r in _sample_records()], trainer)
  hf.save(str(path))
  return tokenizer.load_tokenizer(str(path))


def bench_build(files: dict, data_dir: pathlib.Path, languages) -> dict:
  from medmoe_jax.data import langid, sources, specs

  out = {}
  for key in ("short", "untagged"):
    spec = specs.SourceSpec(name=f"build_{key}", paths=(str(files[key]),))
    t0 = time.perf_counter()
    b = sources.build_source(spec, data_dir, detect=[l for l in languages if l in langid.detectable()])
    dt = time.perf_counter() - t0
    n = sum(sum(d.values()) for d in b.stats["documents"].values())
    out[key] = {"records": n, "seconds": dt, "records_per_sec": n / dt,
                "mb_per_sec": os.path.getsize(files[key]) / dt / 1e6,
                "detected": sum(b.stats["detected"].values())}
  return out


def bench_pipeline(source, tok, languages, seq_len, batch_size, seconds, **kw) -> dict:
  import numpy as np

  from medmoe_jax.data import pipeline

  t0 = time.perf_counter()
  ds = pipeline.make_lm_dataset(source, languages=languages, tokenizer=tok, seq_len=seq_len,
                                batch_size=batch_size, seed=0, **kw)
  it = iter(ds)
  next(it)
  first = time.perf_counter() - t0
  real = slots = n = 0
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    b = next(it)
    real += int(np.sum(b["segment_ids"] > 0))
    slots += b["tokens"].size
    n += 1
  dt = time.perf_counter() - t0
  if hasattr(it, "close"):
    it.close()
  return {"tokens_per_sec": real / dt, "batches_per_sec": n / dt, "fill": real / slots,
          "first_batch_seconds": first, "batches": n}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--seconds", type=float, default=15.0, help="measurement time per case")
  ap.add_argument("--docs", type=int, default=20000, help="records per synthetic corpus")
  ap.add_argument("--json", default=None, help="write the results here")
  ap.add_argument("--workdir", default=None, help="where corpora are written (default: temp)")
  args = ap.parse_args()

  from medmoe_jax import config as cfg_lib
  from medmoe_jax.data import pipeline, sources, specs, tokenizer

  load = [os.getloadavg()[0]]
  need = required_tokens_per_sec("0.5b")
  seq_len, batch = need["seq_len"], need["batch_size"]
  languages = cfg_lib.language_list(_config("tiny"))
  results = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                         "python": platform.python_version()},
             "required": need, "defaults": {"num_threads": pipeline.NUM_THREADS,
                                            "prefetch": pipeline.PREFETCH,
                                            "read_batch": pipeline.READ_BATCH}}
  print(f"0.5b on one H100 at {MFU:.0%} MFU: {need['flops_per_token'] / 1e9:.2f} GFLOP/token "
        f"({need['flops_per_token_causal'] / 1e9:.2f} causal) -> {need['tokens_per_sec']:,.0f} "
        f"tokens/s ({need['tokens_per_sec_causal']:,.0f} causal); target "
        f"{need['target_tokens_per_sec']:,.0f} tokens/s", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(args.workdir or tmp)
    root.mkdir(parents=True, exist_ok=True)
    files = write_corpora(root, args.docs)
    results["build"] = bench_build(files, root / "data", languages)
    for k, v in results["build"].items():
      print(f"build {k:<9} {v['records']:>7,} records in {v['seconds']:.1f} s: "
            f"{v['records_per_sec']:,.0f} records/s, {v['mb_per_sec']:.2f} MB/s", flush=True)
    built = {k: sources.build_source(specs.SourceSpec(name=k, paths=(str(files[k]),)), root / "data")
             for k in ("short", "long", "sft")}
    sp = tokenizer.load_tokenizer("sample")
    hf = hf_tokenizer(root / "tokenizer.json")
    cases = [
        ("short docs, sentencepiece", "short", sp, {}),
        ("long docs, sentencepiece", "long", sp, {}),
        ("long docs, sentencepiece, concat packing", "long", sp, {"packing": "concat"}),
        ("supervised q/a, sentencepiece", "sft", sp, {}),
        ("short docs, HF byte-level BPE", "short", hf, {}),
        ("short docs, sentencepiece, 0 threads", "short", sp, {"num_threads": 0}),
        ("short docs, sentencepiece, 1 thread", "short", sp, {"num_threads": 1}),
        ("short docs, sentencepiece, 4 threads", "short", sp, {"num_threads": 4}),
        ("short docs, sentencepiece, no prefetch", "short", sp, {"prefetch": 0}),
    ]
    results["pipeline"] = {}
    for name, corpus, tok, kw in cases:
      r = bench_pipeline(built[corpus]["train"], tok, languages, seq_len, batch, args.seconds, **kw)
      r["x_target"] = r["tokens_per_sec"] / need["target_tokens_per_sec"]
      results["pipeline"][name] = r
      print(f"{name:<40} {r['tokens_per_sec']:>10,.0f} tokens/s  {r['x_target']:5.2f}x target  "
            f"fill {r['fill']:.3f}  first batch {r['first_batch_seconds']:.1f} s", flush=True)
  load.append(os.getloadavg()[0])
  results["machine"]["load_average_1min"] = load
  print(f"load average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f} on "
        f"{os.cpu_count()} CPUs")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
