"""The training settings of a run as a plain, frozen spec (medmoe_jax.config.resolve builds it);
the optimizer and the trainer read only this."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  steps: int = 300
  lr: float = 3e-3
  warmup_frac: float = 0.03
  min_lr_ratio: float = 0.1
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  grad_clip: float = 1.0
  freeze: tuple[str, ...] = ()          # regexes over parameter paths and "preset:NAME" items
  freeze_experts: tuple[int, ...] = ()  # expert ids frozen in every MoE layer
  log_every: int = 10
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  async_checkpoint: bool = True
  on_nonfinite: str = "stop"            # "stop" | "skip"
  # Router losses added to the loss (config.moe.*_loss_weight; the load-balancing weight on our
  # per-choice loss, whatever units the config gave it in).
  lb_loss_weight: float = 0.0
  z_loss_weight: float = 0.0
  lpr_loss_weight: float = 0.0
