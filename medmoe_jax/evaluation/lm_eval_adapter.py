"""lm-evaluation-harness adapter: run its tasks on our checkpoints.

    pip install 'medmoe_jax[lm_eval]'
    python -m medmoe_jax.evaluation.lm_eval_adapter --model_args checkpoint=workdir/post_moe \\
        --tasks belebele_eng_Latn --batch_size 8

or from Python:

    import lm_eval
    from medmoe_jax.evaluation.lm_eval_adapter import MedMoELM
    lm_eval.simple_evaluate(model=MedMoELM(checkpoint="workdir/post_moe"), tasks=[...])

The model is registered with the harness as "medmoe_jax". Scoring and decoding are
`evaluation.lm.LanguageModel`'s (batched, jitted, sharded over all devices, greedy decoding with
a KV cache); this class only translates the harness's requests.
"""
from __future__ import annotations

import sys

try:
  from lm_eval.api.model import LM
  from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - exercised only without the extra
  raise ImportError("medmoe_jax.evaluation.lm_eval_adapter needs lm-evaluation-harness: "
                    "pip install 'medmoe_jax[lm_eval]' (or pip install lm_eval)") from e

from medmoe_jax.evaluation.lm import LanguageModel


@register_model("medmoe_jax")
class MedMoELM(LM):
  """checkpoint: a training workdir or one of its checkpoints/<step>; step: -1 = latest (or the
  path's). max_length: the longest sequence fed to the model (longer inputs lose tokens from
  the left; rolling log-likelihoods use windows of it). lang: the language code to route with
  (matters only to models with hard language routing)."""

  def __init__(self, checkpoint: str = "", step: int = -1, batch_size=8, max_length: int = 2048,
               max_gen_toks: int = 256, lang: str | None = None, lm: LanguageModel | None = None,
               **unused):
    super().__init__()
    if lm is None:
      if not checkpoint:
        raise ValueError("MedMoELM: pass checkpoint=<training workdir or checkpoints/<step>>")
      bs = 8 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
      lm = LanguageModel.load(checkpoint, step=None if int(step) < 0 else int(step), batch_size=bs)
    self.lm = lm
    self.max_length = int(max_length)
    self.max_gen_toks = int(max_gen_toks)
    self.lang = lang
    del unused  # the harness passes device / max_batch_size, which JAX decides for itself

  @property
  def tokenizer_name(self) -> str:
    return str(getattr(self.lm.tokenizer, "name", type(self.lm.tokenizer).__name__))

  def loglikelihood(self, requests) -> list[tuple[float, bool]]:
    reqs = [(r.args[0], r.args[1], self.lang) for r in requests]
    return self.lm.loglikelihood(reqs, max_len=self.max_length)

  def loglikelihood_rolling(self, requests) -> list[float]:
    return self.lm.loglikelihood_rolling([r.args[0] for r in requests], self.lang,
                                         max_len=self.max_length)

  def generate_until(self, requests) -> list[str]:
    reqs = []
    for r in requests:
      context, kwargs = r.args[0], dict(r.args[1] if len(r.args) > 1 and r.args[1] else {})
      if kwargs.get("do_sample") and float(kwargs.get("temperature", 1.0) or 0.0) > 0:
        raise ValueError("MedMoELM decodes greedily only; the task asks for sampling "
                         f"(do_sample={kwargs.get('do_sample')}, temperature={kwargs.get('temperature')})")
      until = kwargs.get("until") or []
      until = [until] if isinstance(until, str) else list(until)
      reqs.append((context, until, int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.lang))
    return self.lm.generate_until(reqs, default_max_tokens=self.max_gen_toks)


def main(argv=None) -> None:
  """The harness's own command line with `--model medmoe_jax` (this module registers it)."""
  from lm_eval.__main__ import cli_evaluate
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--model" not in argv:
    argv = ["--model", "medmoe_jax"] + argv
  sys.argv = [sys.argv[0]] + argv
  cli_evaluate()


if __name__ == "__main__":
  main()
