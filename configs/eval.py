"""Evaluate a training checkpoint: medical multiple choice, held-out perplexity, routing,
forgetting.

  python -m medmoe_jax.eval --config=configs/eval.py --config.checkpoint=workdir/post_moe --workdir=OUT
  python -m medmoe_jax.eval --config=configs/eval.py:quick ...     # a few items, short outputs
  ... --config.follow=True    # beside a training job: evaluate each new checkpoint as it appears
The model is rebuilt from the run's own config.json; nothing about it needs repeating here.
"""
import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.name = "eval"
  c.checkpoint = ""            # a training workdir (config.json + checkpoints/) or .../checkpoints/<step>
  c.step = -1                  # -1: the latest (or the step named by the path)
  c.baseline_checkpoint = ""   # forgetting: the checkpoint to compare with ("" = none)
  c.baseline_step = -1
  c.tasks = "mcq,perplexity,routing"
  c.languages = ""             # restrict to these languages (comma-separated); "" = all
  c.batch_size = 8             # rounded up to a multiple of the mesh's batch shards
  c.seed = 0                   # exemplar sampling (the paper's is unseeded; ours is reported)
  c.progress = True
  c.follow = False             # watch the training workdir, evaluate each new checkpoint
  c.follow_poll_seconds = 60.0
  c.follow_idle_timeout = 7200.0  # stop following after this long without a new checkpoint

  c.mcq = ml_collections.ConfigDict(dict(
      files="sample",          # "sample" (embedded XMedBench-format sample) or comma-separated paths/globs
      mode="both",             # "generative" (the paper) | "loglikelihood" (lm-eval) | "both"
      # Generative prompts and averages: "apollo" (the official Apollo-MoE code, 12 major
      # languages' templates by source), "apollo50" (its 50-language mode: the English template
      # for every source), "translated" (one translated template per language, pubmedqa out of
      # the averages).
      protocol="apollo",
      shots=3, max_prompt_chars=4096,
      max_new_tokens=256,
      min_new_tokens=2,        # EOS is masked for the first N new tokens (the official setting)
      stop_at_line=True,       # stop decoding after the first non-empty line (all that is scored)
      choices="text",          # log-likelihood continuations: option "text" or "letter"
      max_len=2048,            # log-likelihood: longer sequences lose tokens from the left
      max_per_source=0,        # > 0: only the first N items of each source
      on_bad_item="error",     # "error" | "skip" (skipped items are counted in results.json)
      # Sources left out of the language averages: "protocol" = the protocol's own choice
      # (apollo: only what the official script leaves out; translated: pubmedqa), or a list.
      exclude_from_average="protocol"))

  c.perplexity = ml_collections.ConfigDict(dict(
      data_dir="",             # where the held-out split is built; "" = <workdir>/data
      seq_len=0,               # 0: the run's data.seq_len
      max_batches=0))          # > 0: at most N batches per language (routing shares the pass)

  c.forgetting = ml_collections.ConfigDict(dict(
      original=""))            # the "original" languages; "" = the baseline run's languages.use

  # Inference-only overrides of the run's MoE settings ("" / 0 = keep the run's).
  c.model = ml_collections.ConfigDict(dict(moe_backend="", capacity_factor_eval=0.0))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1))

  if arg == "quick":
    c.mcq.max_per_source = 4
    c.mcq.max_new_tokens = 32
    c.perplexity.max_batches = 2
  elif arg not in (None, ""):
    raise ValueError(f"configs/eval.py: unknown variant {arg!r}; use configs/eval.py or "
                     "configs/eval.py:quick")
  return c
