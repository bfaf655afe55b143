"""Config validation: every bad config fails before compute with a one-line error naming the key."""
import pytest

from conftest import load_config
from medmoe_jax import config as cfg_lib


def _bad(mutate, num_devices=8):
  c = load_config("post_moe")
  mutate(c)
  with pytest.raises(cfg_lib.ConfigError) as e:
    cfg_lib.validate(c, num_devices)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_default_configs_validate():
  for name in ("post_moe", "dense"):
    for size in ("tiny", "0.5b", "1.5b", "7b"):
      c = load_config(name, size)
      cfg_lib.validate(c, 1)
      spec = cfg_lib.model_spec(c)
      assert spec.num_layers == c.model.num_layers
  spec = cfg_lib.model_spec(load_config("post_moe", "0.5b"))
  assert spec.segments == (("dense", 22), ("moe", 2))      # the released Apollo-MoE layout
  assert spec.moe.num_experts == 7 and spec.moe.top_k == 2 and not spec.moe.norm_topk
  assert cfg_lib.model_spec(load_config("dense")).segments == (("dense", 4),)


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c.moe.update(top_k=8), "config.moe.top_k"),
    (lambda c: c.moe.update(layers="last:9"), "config.moe.layers"),
    (lambda c: c.moe.update(layers="7"), "config.moe.layers"),
    (lambda c: c.mesh.update(data=3), "config.mesh"),
    (lambda c: c.mesh.update(expert=2), "config.mesh.expert"),
    (lambda c: c.model.update(num_heads=5), "config.model.num_heads"),
    (lambda c: c.model.update(num_kv_heads=3), "config.model.num_kv_heads"),
    (lambda c: c.languages.update(use=["en", "xx"]), "config.languages"),
    (lambda c: c.languages.update(use=["en", "tlh"]), "config.languages"),
    (lambda c: c.moe.update(num_experts=5), "config.moe.num_experts"),
    (lambda c: c.data.update(batch_size=6), "config.data.batch_size"),
    (lambda c: c.moe.update(language_routing="soft"), "config.moe.language_routing"),
    (lambda c: c.moe.update(lpr_loss_weight=0.1), "config.languages.original"),
])
def test_bad_config_raises_naming_key(mutate, key):
  msg = _bad(mutate)
  assert key in msg, msg


def test_unknown_language_is_named():
  msg = _bad(lambda c: c.languages.update(use=["en", "xx"]))
  assert "'xx'" in msg


def test_mesh_minus_one_fills_devices():
  c = load_config("post_moe")
  c.mesh.update(data=-1, fsdp=2)
  assert cfg_lib.mesh_shape(c, 8) == {"data": 4, "fsdp": 2, "expert": 1, "tensor": 1}


def test_train_and_eval_configs_are_not_swapped():
  from medmoe_jax import eval as eval_lib
  with pytest.raises(cfg_lib.ConfigError, match="not a training config .* medmoe_jax.eval"):
    cfg_lib.validate(load_config("eval"), 1)
  with pytest.raises(cfg_lib.ConfigError, match="not an eval config .* configs/eval.py"):
    eval_lib.validate(load_config("post_moe"))


def test_rope_scaling_is_validated_and_reaches_the_spec():
  from conftest import load_config
  c = load_config("dense")
  assert cfg_lib.model_spec(c).rope_scaling == ()
  c.model.rope_scaling.update(dict(rope_type="llama3", factor=8.0, original_max_position_embeddings=64))
  cfg_lib.validate(c)
  assert dict(cfg_lib.model_spec(c).rope_scaling) == dict(
      rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
      original_max_position_embeddings=64.0)
  c.model.rope_scaling.rope_type = "yarn"
  with pytest.raises(cfg_lib.ConfigError, match="config.model.rope_scaling.rope_type: 'yarn'"):
    cfg_lib.validate(c)
