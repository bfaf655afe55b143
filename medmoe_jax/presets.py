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
