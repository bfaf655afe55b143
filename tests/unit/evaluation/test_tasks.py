"""The evaluation task registry: the tasks it lists, the one-line error for a name it does not
know, which tasks a config selects, and that a task added to it runs through the Evaluator with
nothing else changed."""
import dataclasses

import jax
import pytest

import method_runs
from conftest import load_config
from medmoe_jax import config as cfg_lib
from medmoe_jax import sharding
from medmoe_jax.config import ConfigError
from medmoe_jax.evaluation import tasks
from medmoe_jax.evaluation.evaluator import Evaluator, validate
from medmoe_jax.evaluation.lm import LanguageModel
from medmoe_jax.evaluation.tasks.base import Task


def _eval_config(**kw):
  c = load_config("eval")
  c.checkpoint = "workdir/run"
  c.update(kw)
  return c


def test_registry_lists_the_tasks_in_running_order():
  assert list(tasks.REGISTRY) == ["mcq", "perplexity", "routing", "forgetting"]
  assert tasks.named() == ("mcq", "perplexity", "routing")  # forgetting: by baseline_checkpoint
  for name, task in tasks.REGISTRY.items():
    assert issubclass(task, Task) and task.name == name
    assert task.evaluate is not Task.evaluate  # each implements the interface's one must


@pytest.mark.parametrize("value", ["mcq,bogus", "forgetting", ""])
def test_an_unknown_task_is_one_line_naming_the_choices(value):
  with pytest.raises(ConfigError) as e:
    validate(_eval_config(tasks=value))
  assert str(e.value) == (f"config.tasks: {value!r}: use a comma-separated subset of "
                          "mcq, perplexity, routing")


def test_the_config_selects_the_tasks():
  names = lambda c: [t.name for t in tasks.select(tasks.resolve(c))]
  assert names(_eval_config()) == ["mcq", "perplexity", "routing"]
  assert names(_eval_config(tasks="routing,mcq")) == ["mcq", "routing"]  # running order
  assert names(_eval_config(tasks="perplexity", baseline_checkpoint="workdir/dense")) == [
      "perplexity", "forgetting"]


def test_each_task_checks_its_own_settings():
  c = _eval_config(tasks="perplexity")  # mcq's settings are checked though mcq does not run
  c.mcq.mode = "sampling"
  with pytest.raises(ConfigError, match=r"^config\.mcq\.mode: 'sampling'; use one of "
                     r"generative, loglikelihood, both$"):
    validate(c)
  c = _eval_config()
  c.perplexity.max_batches = -1  # the held-out pass's (perplexity and routing)
  with pytest.raises(ConfigError, match=r"^config\.perplexity\.max_batches: must be >= 0, got -1$"):
    validate(c)


class _Languages(Task):
  """A task as a new one would be written: the model's languages and step."""
  name = "languages"

  def evaluate(self, m):
    return {"languages": {"step": m.lm.step, "codes": m.lm.languages, "with": sorted(m.names)}}


def test_a_registered_task_runs_through_the_evaluator(monkeypatch, tmp_path):
  c = load_config("dense")
  c.model.update(dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64))
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text(cfg_lib.to_json(c))
  params = method_runs.random_params(cfg_lib.model_spec(c), seed=0)
  lm = LanguageModel.from_params(cfg_lib.resolve(c), params, step=7,
                                 mesh=sharding.make_mesh(c, jax.devices()[:1]))

  monkeypatch.setattr(tasks, "TASKS", (*tasks.TASKS, _Languages))  # the one registration
  assert tasks.named()[-1] == "languages"
  ev = Evaluator(_eval_config(checkpoint=str(tmp_path / "run"), tasks="languages"),
                 str(tmp_path / "out"))
  assert [t.name for t in ev.tasks] == ["languages"]
  assert ev.evaluate_model(lm) == {"languages": {"step": 7, "codes": cfg_lib.language_list(c),
                                                 "with": ["languages"]}}
  assert ev.evaluate_model(lm, baseline=True) == {}  # not a task the baseline runs


def test_the_eval_config_resolves_into_frozen_settings():
  c = _eval_config(languages="zh, sw", tasks="mcq")
  c.model.capacity_factor_eval = 1.5
  c.mcq.exclude_from_average = "pubmedqa,cmexam"
  spec = tasks.resolve(c)
  assert spec.languages == ("zh", "sw") and spec.tasks == ("mcq",) and spec.step == -1
  assert spec.overrides == (("moe.capacity_factor_eval", 1.5),)
  s = spec.settings["mcq"]
  assert (s.mode, s.protocol, s.shots, s.exclude_from_average) == (
      "both", "apollo", 3, ("pubmedqa", "cmexam"))
  assert spec.settings["forgetting"].baseline == "" and spec.heldout.max_batches == 0
  assert spec.settings["perplexity"] is None  # its settings are the held-out pass's
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.shots = 1
