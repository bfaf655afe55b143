"""MoE-LPR stage 1 (post-pretraining): every layer's FFN becomes an MoE whose expert 0 is the
original FFN (frozen); the new experts (copies of it) and the routers train, with load balancing
0.01 in Hugging Face's units (the official script's), on new-language text only. Top-2 of 4
experts, renormalised.

  python -m medmoe_jax.train --config=configs/dense.py                # the base model (or import one)
  python -m medmoe_jax.train --config=configs/moe_lpr_stage1.py       # upcycles workdir/dense
  python -m medmoe_jax.train --config=configs/moe_lpr_stage2.py       # review with LPR
Sizes: tiny (default), small, 0.5b, 1.5b, 7b (Qwen2 shapes; the paper used Qwen1.5-1.8B with new
languages el, hu, tr and original en, zh, es: the real sizes select those, bring their data).
"""
from medmoe_jax.config import apply_size, base_config
from medmoe_jax.presets import PAPER_TRAINING

# Tiny: minor languages of the embedded sample from families en/zh/es do not cover.
SAMPLE_NEW, SAMPLE_ORIGINAL = ["sw", "ha", "mg"], ["en", "zh", "es"]
PAPER_NEW, PAPER_ORIGINAL = ["el", "hu", "tr"], ["en", "zh", "es"]


def get_config(arg=None):
  c = base_config()
  c.name = "moe_lpr_stage1"
  apply_size(c, arg or "tiny")
  c.moe.layers = "all"
  c.moe.num_experts = 4
  c.moe.top_k = 2
  c.moe.norm_topk = True
  c.moe.language_routing = "none"
  # 0.01 as the official stage-1 script (--aux_loss_coef 0.01), in Hugging Face's units (its
  # load_balancing_loss_func, summed over the k choices): the trainer applies 0.01 x top_k to
  # our per-choice lb_loss, i.e. 0.02 at top-2.
  c.moe.lb_loss_weight = 0.01
  c.moe.lb_loss_units = "hf"
  # As the official code and scripts: xavier-normal routers (peft moe layer), no weight decay
  # and no warm-up (HF TrainingArguments defaults), cosine decay to 0.
  c.moe.router_init = "xavier_normal"
  c.train.weight_decay = 0.0
  c.train.warmup_frac = 0.0
  c.train.min_lr_ratio = 0.0
  c.upcycle.method = "lpr"
  c.upcycle["from"] = "workdir/dense"
  # Only the new experts and the routers train; expert 0 (the original FFN) is frozen.
  c.train.freeze = "preset:lpr_stage1"
  c.languages.use = list(SAMPLE_NEW)
  if c.size not in ("tiny", "small"):
    c.languages.table = "glottolog"  # has el, hu, tr
    c.languages.use = list(PAPER_NEW)
    c.data.seq_len = 1024
    c.data.batch_size = PAPER_TRAINING["batch_size"]
    c.train.lr = 5e-5
    c.model.dtype = PAPER_TRAINING["dtype"]
    c.model.remat = PAPER_TRAINING["remat"]
    c.data.tokenizer = ""  # the base model's tokenizer
    c.train.steps = 20000
    c.train.checkpoint_every = 1000
  return c
