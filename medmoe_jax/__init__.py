"""medmoe_jax: multilingual medical LLMs with language-family mixture-of-experts layers."""

__version__ = "0.1.0"
