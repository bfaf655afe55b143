"""Model size presets. Qwen2 shapes for the paper's sizes (Apollo-MoE upcycles Qwen2-0.5B/1.5B/7B);
`tiny` trains in minutes on a laptop CPU."""
from __future__ import annotations

# Keys are config.model fields; d_ff is also each expert's width (Apollo-MoE: full-size experts).
MODEL_SIZES = {
    "tiny": dict(vocab_size=4096, d_model=128, num_layers=4, num_heads=4, num_kv_heads=2,
                 d_ff=384, tie_embeddings=True, rope_theta=10000.0, norm_eps=1e-6),
    "small": dict(vocab_size=4096, d_model=256, num_layers=8, num_heads=4, num_kv_heads=2,
                  d_ff=1024, tie_embeddings=True, rope_theta=10000.0, norm_eps=1e-6),
    "0.5b": dict(vocab_size=151936, d_model=896, num_layers=24, num_heads=14, num_kv_heads=2,
                 d_ff=4864, tie_embeddings=True, rope_theta=1000000.0, norm_eps=1e-6),
    "1.5b": dict(vocab_size=151936, d_model=1536, num_layers=28, num_heads=12, num_kv_heads=2,
                 d_ff=8960, tie_embeddings=True, rope_theta=1000000.0, norm_eps=1e-6),
    "7b": dict(vocab_size=152064, d_model=3584, num_layers=28, num_heads=28, num_kv_heads=4,
               d_ff=18944, tie_embeddings=False, rope_theta=1000000.0, norm_eps=1e-6),
}

# The paper's training settings (Apollo-MoE, arXiv 2410.10626, its training setup) for the
# real sizes: bf16, packed 4096-token rows, 32 rows a step, lr 1e-4, remat.
PAPER_TRAINING = dict(seq_len=4096, batch_size=32, lr=1e-4, dtype="bfloat16", remat="save_dots")

# Default meshes of the real sizes: ones that fit the hardware launch/README.md recommends for
# them (dry run, paper settings). 0.5b: its 7.3 GiB of state fits one device, so pure data
# parallelism (8 x H100 or v5p-16). 1.5b and 7b: FSDP over every device (16 x H100 or v5p-32;
# v5p-64), since 23 GiB and 113 GiB of state leave too little room for activations, or do not
# fit at all, on one device. Data parallelism for 7b on 64 devices would need 113 GiB a device
# before any activation; the dry run names a mesh that fits when the one given does not.
PAPER_MESH = {
    "0.5b": dict(data=-1, fsdp=1, expert=1, tensor=1),
    "1.5b": dict(data=1, fsdp=-1, expert=1, tensor=1),
    "7b": dict(data=1, fsdp=-1, expert=1, tensor=1),
}


def apollo_moe(c, *, num_experts: int = 7, top_k: int = 2, routing: str = "hybrid",
               table: str = "apollo50", assignment: str = "family") -> None:
  """Apollo-MoE (arXiv 2410.10626), what its variants share: MoE in the last 2 layers, one
  expert per language family (or language), upcycled by copying the FFN into every expert when
  config.upcycle.from is set."""
  c.moe.layers = "last:2"
  c.moe.num_experts = num_experts
  c.moe.top_k = top_k
  c.moe.language_routing = routing
  c.languages.table = table
  c.languages.assignment = assignment
  c.upcycle.method = "apollo"  # used when upcycle.from is set: every expert a copy of the FFN


# MoE-LPR (arXiv 2408.11396). The tiny and small sizes train on minor languages of the embedded
# sample that families en/zh/es do not cover; the real sizes on the paper's languages (Qwen1.5-1.8B
# with new el, hu, tr and original en, zh, es: bring their data).
MOE_LPR_SAMPLE_LANGUAGES = dict(new=["sw", "ha", "mg"], original=["en", "zh", "es"])
MOE_LPR_PAPER_LANGUAGES = dict(new=["el", "hu", "tr"], original=["en", "zh", "es"])


def moe_lpr(c, *, stage: int) -> None:
  """MoE-LPR, what its two stages share: every layer's FFN an MoE of 4 experts (top-2,
  renormalised, no language routing), xavier-normal routers, and the official scripts' HF
  optimizer defaults (AdamW betas 0.9/0.999, no weight decay, no warm-up, cosine to 0); at the
  real sizes the paper's
  languages (glottolog table), batch, lr 5e-5, bf16 and remat, and the base model's tokenizer.
  Stage 1 trains on the new languages; stage 2 on the new and the original ones."""
  c.moe.layers = "all"
  c.moe.num_experts = 4
  c.moe.top_k = 2
  c.moe.norm_topk = True
  c.moe.language_routing = "none"
  # As the official code and scripts: xavier-normal routers (peft moe layer), no weight decay,
  # no warm-up and Adam's beta2 0.999 (HF TrainingArguments defaults: its DeepSpeed config names
  # no optimizer), cosine decay to 0.
  c.moe.router_init = "xavier_normal"
  c.train.b2 = 0.999
  c.train.weight_decay = 0.0
  c.train.warmup_frac = 0.0
  c.train.min_lr_ratio = 0.0
  real = c.size not in ("tiny", "small")
  langs = MOE_LPR_PAPER_LANGUAGES if real else MOE_LPR_SAMPLE_LANGUAGES
  c.languages.use = list(langs["new"]) + (list(langs["original"]) if stage == 2 else [])
  if stage == 2:
    c.languages.original = list(langs["original"])
  if real:
    c.languages.table = "glottolog"  # has el, hu, tr
    c.data.batch_size = PAPER_TRAINING["batch_size"]
    c.train.lr = 5e-5
    c.model.dtype = PAPER_TRAINING["dtype"]
    c.model.remat = PAPER_TRAINING["remat"]
    c.data.tokenizer = ""  # the base model's tokenizer
