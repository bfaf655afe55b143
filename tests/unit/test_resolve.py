"""config.resolve: one validated Run whose specs equal what each module derived on its own."""
import pytest

from conftest import load_config
from medmoe_jax import config as cfg_lib
from medmoe_jax.data.specs import DataSpec
from medmoe_jax.training.spec import TrainSpec


def test_resolve_derives_every_spec_once(tmp_path):
  c = load_config("moe_lpr_stage2")
  c.mesh.update(dict(data=-1, fsdp=2))
  c.data.replay_share = 0.5
  run = cfg_lib.resolve(c, workdir=str(tmp_path / "run"), num_devices=8)
  assert run.model == cfg_lib.model_spec(c)
  assert run.mesh_shape == {"data": 4, "fsdp": 2, "expert": 1, "tensor": 1}
  assert run.languages == ("sw", "ha", "mg", "en", "zh", "es")
  assert isinstance(run.data, DataSpec) and isinstance(run.train, TrainSpec)
  assert run.data.data_dir == str(tmp_path / "run" / "data")
  assert run.data.replay == (("en", "zh", "es"), 0.5)
  assert [s.name for s in run.data.sources] == ["sample"]
  assert (run.train.freeze, run.train.lpr_loss_weight) == (("preset:lpr_stage2",), 0.1)
  assert run.train.steps == c.train.steps
  assert (run.upcycle_method, run.upcycle_from) == ("none", "workdir/moe_lpr_stage1")
  with pytest.raises(Exception):
    run.train.steps = 3  # frozen


def test_resolve_validates(tmp_path):
  c = load_config("post_moe")
  c.moe.top_k = 9
  with pytest.raises(cfg_lib.ConfigError, match="config.moe.top_k"):
    cfg_lib.resolve(c, workdir=str(tmp_path))
  c = load_config("post_moe")
  with pytest.raises(cfg_lib.ConfigError, match="config.mesh"):
    c.mesh.update(dict(data=3))
    cfg_lib.resolve(c, num_devices=8)


def test_data_dir_from_config_wins(tmp_path):
  c = load_config("dense")
  c.data.data_dir = str(tmp_path / "shared")
  assert cfg_lib.resolve(c, workdir=str(tmp_path / "run")).data.data_dir == str(tmp_path / "shared")
