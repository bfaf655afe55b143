"""Model: a Qwen2/Llama-style decoder whose layers are segments of dense or MoE blocks."""
from medmoe_jax.model.spec import ModelSpec, MoESpec
from medmoe_jax.model.transformer import Transformer

__all__ = ["ModelSpec", "MoESpec", "Transformer"]
