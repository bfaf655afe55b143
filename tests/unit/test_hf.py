"""Hugging Face interop against transformers (PyTorch CPU, fp32), on tiny random models made here:
Qwen2/2.5, Qwen3, Llama 3 (llama3 RoPE), Qwen2-MoE with a shared expert and Qwen3-MoE import with
HF's logits, export as themselves with ours, and round-trip exactly; the sentencepiece tokenizer
exports as tokenizer.json; an upcycled Qwen3 exports as Qwen3-MoE and generates our tokens; bad
input is refused in one line naming the file and key."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from conftest import load_config
from helpers import decode_in_steps
from medmoe_jax import config as cfg_lib
from medmoe_jax import hf
from medmoe_jax.checkpoint import Checkpointer
from medmoe_jax.model import Transformer
from medmoe_jax.training.step import TrainState
from method_runs import random_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOKENS = np.random.RandomState(0).randint(0, 128, (2, 12)).astype(np.int32)
TOL = 1e-4


@functools.partial(jax.jit, static_argnums=0)
def _forward(spec, params, tokens):
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0))))
  b, s = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
  logits, _ = nnx.merge(graphdef, params)(tokens, jnp.ones((b, s), jnp.int32), positions,
                                          -jnp.ones((b, s), jnp.int32), train=False)
  return logits


def _ours(spec, params):
  return np.asarray(_forward(spec, jax.tree.map(jnp.asarray, params), jnp.asarray(TOKENS)))


def _hf_logits(model):
  with torch.no_grad():
    return model(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()


def _randomize(model, seed):
  """Weights well away from init (norms != 1, biases != 0), so a layout mistake shows."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      p.copy_(1.0 + 0.2 * noise if name.endswith("norm.weight") else 0.15 * noise)
  return model


def _save_hf(cls, cfg, path, seed, **save_kw):
  torch.manual_seed(seed)
  model = _randomize(cls(cfg).eval(), seed)
  model.save_pretrained(str(path), **save_kw)
  return model


def _imported(out):
  c, spec, params, _ = hf.load_checkpoint(str(out))
  return c, spec, params


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
  root = tmp_path_factory.mktemp("qwen2")
  cfg = transformers.Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 rope_theta=5000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)
  model = _save_hf(transformers.Qwen2ForCausalLM, cfg, root / "hf", seed=0)
  from tokenizers import Tokenizer, models
  vocab = {"<unk>": 0, "<|endoftext|>": 1, **{f"w{i}": i + 2 for i in range(100)}}
  Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(root / "hf" / "tokenizer.json"))
  hf.import_hf(str(root / "hf"), str(root / "ours"))
  return root, model


def test_qwen2_import_matches_transformers(qwen2):
  root, model = qwen2
  c, spec, params = _imported(root / "ours")
  assert spec.tie_embeddings and spec.qkv_bias and spec.rope_theta == 5000.0
  assert spec.segments == (("dense", 2),) and c.upcycle["from"] == str(root / "ours")
  assert c.data.tokenizer == str(root / "ours" / "tokenizer")  # the model's own vocabulary
  assert (root / "ours" / "tokenizer" / "tokenizer.json").is_file()
  ref = _hf_logits(model)
  assert np.abs(ref).max() > 1.0
  assert np.abs(_ours(spec, params) - ref).max() <= TOL
  # The generated config file reproduces the shapes.
  assert cfg_lib.model_spec(load_config_file(root / "ours" / "config.py")) == spec


def load_config_file(path):
  import importlib.util
  mod_spec = importlib.util.spec_from_file_location("imported_cfg", str(path))
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod.get_config()


def test_round_trip_import_export_import_is_exact(qwen2, monkeypatch):
  root, model = qwen2
  monkeypatch.chdir(root)  # paths as a user types them, relative to the shell's directory
  assert hf.main(["export", "--checkpoint", "ours", "--out", "exp_relative"]) == 0
  assert (root / "exp_relative" / "model.safetensors").is_file()
  assert hf.main(["export", "--checkpoint", str(root / "ours"), "--out", str(root / "exp")]) == 0
  cfg = json.load(open(root / "exp" / "config.json"))
  assert cfg["model_type"] == "qwen2" and cfg["tie_word_embeddings"] is True
  assert (root / "exp" / "tokenizer.json").is_file()
  again = transformers.AutoModelForCausalLM.from_pretrained(str(root / "exp"), dtype=torch.float32)
  np.testing.assert_array_equal(_hf_logits(again), _hf_logits(model))
  hf.import_hf(str(root / "exp"), str(root / "ours2"))
  _, spec1, p1 = _imported(root / "ours")
  _, spec2, p2 = _imported(root / "ours2")
  assert spec1 == spec2
  jax.tree.map(np.testing.assert_array_equal, p1, p2)


def test_llama_sharded_import_matches_transformers(tmp_path):
  cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 head_dim=24, rope_theta=10000.0, rms_norm_eps=1e-5,
                                 tie_word_embeddings=False)
  model = _save_hf(transformers.LlamaForCausalLM, cfg, tmp_path / "hf", seed=1,
                   max_shard_size="40KB")
  assert os.path.isfile(tmp_path / "hf" / "model.safetensors.index.json")  # sharded
  hf.import_hf(str(tmp_path / "hf"), str(tmp_path / "ours"))
  _, spec, params = _imported(tmp_path / "ours")
  assert not spec.qkv_bias and not spec.tie_embeddings and spec.head_dim == 24
  assert np.abs(_ours(spec, params) - _hf_logits(model)).max() <= TOL
  hf.export_hf(str(tmp_path / "ours"), str(tmp_path / "exp"))  # no q/k/v bias: Llama again
  assert json.load(open(tmp_path / "exp" / "config.json"))["model_type"] == "llama"


def test_moe_export_loads_in_qwen2_moe_with_our_logits(tmp_path):
  """Apollo-MoE's routing (softmax, top-2, no renormalisation); norm_topk=True is the same code
  path on both sides plus a division, checked through the config it writes."""
  c = load_config("post_moe")
  c.model.update(dict(vocab_size=128, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2,
                      d_ff=48, tie_embeddings=False))
  c.moe.update(dict(layers="last:2", num_experts=4, top_k=2, d_ff=40, norm_topk=False,
                    language_routing="hybrid", backend="dense"))
  spec = cfg_lib.model_spec(c)
  # A decisive router, so top-k choices are far from ties that float rounding could flip.
  params = random_params(spec, seed=3, std=0.06, router_std=0.8)
  run = tmp_path / "run"
  ck = Checkpointer(str(run / "checkpoints"), async_save=False)
  ck.save(3, TrainState(jnp.zeros((), jnp.int32), params, {}), {})
  ck.close()
  (run / "config.json").write_text(cfg_lib.to_json(c))

  hf.export_hf(str(run), str(tmp_path / "exp"))
  cfg = json.load(open(tmp_path / "exp" / "config.json"))
  assert cfg["model_type"] == "qwen2_moe" and cfg["mlp_only_layers"] == [0]
  assert cfg["norm_topk_prob"] is False and cfg["shared_expert_intermediate_size"] == 0
  assert cfg["num_experts"] == 4 and cfg["num_experts_per_tok"] == 2
  model = transformers.Qwen2MoeForCausalLM.from_pretrained(str(tmp_path / "exp"),
                                                            dtype=torch.float32).eval()
  ours = _ours(spec, params)
  assert np.abs(ours).max() > 1.0
  assert np.abs(_hf_logits(model) - ours).max() <= TOL
  # And back: the Qwen2-MoE directory imports to exactly our params.
  hf.import_hf(str(tmp_path / "exp"), str(tmp_path / "back"))
  _, spec2, p2 = _imported(tmp_path / "back")
  assert spec2.segments == spec.segments and spec2.moe.norm_topk is False
  jax.tree.map(np.testing.assert_array_equal, p2, params)
  normed = cfg_lib.model_spec(load_config("moe_lpr_stage1"))
  assert hf.hf_config(normed, dtype="float32")["norm_topk_prob"] is True


def test_pickles_are_refused(tmp_path, capsys):
  d = tmp_path / "hf"
  d.mkdir()
  (d / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
  (d / "pytorch_model.bin").write_bytes(b"not even opened")
  with pytest.raises(hf.HFError, match=r"pytorch_model.bin.*pickle"):
    hf.import_hf(str(d), str(tmp_path / "out"))
  assert hf.main(["import", "--hf_dir", str(d / "pytorch_model.bin"), "--out", str(tmp_path / "o")]) == 2
  assert "refusing to load" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_unexportable_models_are_refused():
  ct = cfg_lib.model_spec(load_config("moe_ct"))
  with pytest.raises(hf.HFError, match="appended"):
    hf.check_exportable(ct)
  with pytest.raises(hf.HFError, match="hard"):
    hf.check_exportable(cfg_lib.model_spec(load_config("language_specific")))
  with pytest.raises(hf.HFError, match="rope_type='yarn'"):
    hf.model_overrides({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2,
                        "num_hidden_layers": 1, "vocab_size": 8, "intermediate_size": 8,
                        "rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5}})
  # A shared expert exports only where the architecture has one, gated as Qwen2-MoE gates it.
  c = load_config("post_moe")
  c.moe.update(dict(language_routing="none", shared_expert_d_ff=32))
  with pytest.raises(hf.HFError, match="moe.shared_expert_gate=False"):
    hf.check_exportable(cfg_lib.model_spec(c))
  c.moe.shared_expert_gate, c.model.qk_norm = True, True
  with pytest.raises(hf.HFError, match="Qwen3-MoE has no shared expert"):
    hf.check_exportable(cfg_lib.model_spec(c))
  c.model.qk_norm = False
  hf.check_exportable(cfg_lib.model_spec(c))


# ------------------------------------------------------- every architecture: in, out, and back

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=40)


def _arch_configs():
  """name -> (transformers model class, config): random tiny models of each architecture."""
  T = transformers
  return {
      # Qwen2 and Qwen2.5 share model_type qwen2; 2.5's configs untie the head (>= 3B), use
      # theta 1e6 and, at 0.5B/1.5B, a single... several kv heads: both shapes are covered.
      "qwen2.5": (T.Qwen2ForCausalLM, T.Qwen2Config(
          **{**SMALL, "num_key_value_heads": 1}, rope_theta=1e6, tie_word_embeddings=False,
          rms_norm_eps=1e-6, max_position_embeddings=32768)),
      "qwen3": (T.Qwen3ForCausalLM, T.Qwen3Config(
          **SMALL, head_dim=24, rope_theta=1e6, tie_word_embeddings=True, rms_norm_eps=1e-6)),
      "llama3": (T.LlamaForCausalLM, T.LlamaConfig(
          **SMALL, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
          max_position_embeddings=128, rope_parameters={**LLAMA3_ROPE, "rope_theta": 500000.0})),
      "qwen2_moe": (T.Qwen2MoeForCausalLM, T.Qwen2MoeConfig(
          **{**SMALL, "num_hidden_layers": 3}, **MOE, shared_expert_intermediate_size=56,
          norm_topk_prob=False, mlp_only_layers=[0], tie_word_embeddings=False)),
      "qwen3_moe": (T.Qwen3MoeForCausalLM, T.Qwen3MoeConfig(
          **{**SMALL, "num_hidden_layers": 4}, **MOE, head_dim=16, norm_topk_prob=True,
          decoder_sparse_step=2, mlp_only_layers=[3], tie_word_embeddings=False)),
  }


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory):
  """Each architecture saved, imported, exported and imported again (shared by the tests)."""
  out = {}
  for seed, (name, (cls, cfg)) in enumerate(_arch_configs().items()):
    root = tmp_path_factory.mktemp(name)
    model = _save_hf(cls, cfg, root / "hf", seed=10 + seed)
    hf.import_hf(str(root / "hf"), str(root / "ours"))
    hf.export_hf(str(root / "ours"), str(root / "exp"))
    hf.import_hf(str(root / "exp"), str(root / "again"))
    out[name] = (root, cls, model)
  return out


@pytest.mark.parametrize("name", ["qwen2.5", "qwen3", "llama3", "qwen2_moe", "qwen3_moe"])
def test_architecture_imports_exports_and_round_trips(arch_dirs, name):
  root, cls, model = arch_dirs[name]
  c, spec, params = _imported(root / "ours")
  ours = _ours(spec, params)
  ref = _hf_logits(model)
  assert np.abs(ref).max() > 1.0
  assert np.abs(ours - ref).max() <= TOL, name
  # The export is the same architecture, loaded with no custom code, computing our logits.
  cfg = json.load(open(root / "exp" / "config.json"))
  assert cfg["model_type"] == model.config.model_type
  exported = transformers.AutoModelForCausalLM.from_pretrained(str(root / "exp"),
                                                               dtype=torch.float32).eval()
  assert type(exported) is cls
  assert np.abs(_hf_logits(exported) - ours).max() <= TOL, name
  # import -> export -> import is exact.
  _, spec2, p2 = _imported(root / "again")
  assert spec2 == spec
  jax.tree.map(np.testing.assert_array_equal, p2, params)


@functools.partial(jax.jit, static_argnums=0)
def _decoded(spec, params, tokens):
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0))))
  b, s = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
  return decode_in_steps(nnx.merge(graphdef, params), tokens, jnp.ones((b, s), jnp.int32),
                         positions, -jnp.ones((b, s), jnp.int32), prefix=5)


@pytest.mark.parametrize("name", ["llama3", "qwen2_moe"])
def test_kv_cache_decoding_gives_transformers_logits(arch_dirs, name):
  """Evaluation's path (a prefill, then one token a step through the KV cache) on an imported
  model gives HF's logits: Llama 3's scaled RoPE at every decoded position, Qwen2-MoE's experts
  and gated shared expert on one-token steps."""
  root, _, model = arch_dirs[name]
  _, spec, params = _imported(root / "ours")
  ours = np.asarray(_decoded(spec, jax.tree.map(jnp.asarray, params), jnp.asarray(TOKENS)))
  assert np.abs(ours - _hf_logits(model)).max() <= TOL, name


def test_qwen2_moe_fused_expert_tensors_import(arch_dirs, tmp_path):
  """Qwen2-MoE as transformers holds it in memory (experts.gate_up_proj [E, 2F, D] fused,
  experts.down_proj [E, D, F]), written as a state dict, imports to the parameters of the
  per-expert checkpoint and gives HF's logits."""
  from safetensors.torch import save_file
  root, _, model = arch_dirs["qwen2_moe"]
  d = tmp_path / "fused"
  d.mkdir()
  (d / "config.json").write_text((root / "hf" / "config.json").read_text())
  state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
  assert "model.layers.1.mlp.experts.gate_up_proj" in state
  assert not any(".experts.0." in k for k in state)
  save_file(state, str(d / "model.safetensors"))
  hf.import_hf(str(d), str(tmp_path / "ours"))
  _, spec, params = _imported(tmp_path / "ours")
  jax.tree.map(np.testing.assert_array_equal, params, _imported(root / "ours")[2])
  assert np.abs(_ours(spec, params) - _hf_logits(model)).max() <= TOL


def test_architecture_details_are_imported(arch_dirs):
  spec = lambda name: _imported(arch_dirs[name][0] / "ours")[1]
  q3 = spec("qwen3")
  assert q3.qk_norm and not q3.qkv_bias and q3.head_dim == 24 and q3.tie_embeddings
  l3 = spec("llama3")
  assert dict(l3.rope_scaling) == LLAMA3_ROPE and l3.rope_theta == 500000.0
  q2m = spec("qwen2_moe")
  assert q2m.segments == (("dense", 1), ("moe", 2))
  assert (q2m.moe.shared_d_ff, q2m.moe.shared_gate, q2m.moe.norm_topk) == (56, True, False)
  q3m = spec("qwen3_moe")
  # decoder_sparse_step=2 -> layers 1, 3 sparse; mlp_only_layers=[3] -> only layer 1.
  assert q3m.segments == (("dense", 1), ("moe", 1), ("dense", 2)) and q3m.moe.norm_topk
  assert q3m.moe.d_ff == 40 and q3m.d_ff == 96 and q3m.moe.shared_d_ff == 0


# ------------------------------------------------------------------------------------ bad input

def _bad_dir(tmp_path, cfg_over=None, weights=True):
  """A tiny valid Qwen2 directory, then broken as the test says."""
  d = tmp_path / "hf"
  cfg = transformers.Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=24,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
  transformers.Qwen2ForCausalLM(cfg).save_pretrained(str(d), max_shard_size="8KB")
  if cfg_over:
    j = json.load(open(d / "config.json"))
    j.update(cfg_over)
    (d / "config.json").write_text(json.dumps(j))
  return d


def _one_line_error(d, tmp_path, capsys):
  capsys.readouterr()  # drop save_pretrained's progress bars
  assert hf.main(["import", "--hf_dir", str(d), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err
  assert not (tmp_path / "out").exists()
  return err


def test_bad_input_is_one_line_naming_file_and_key(tmp_path, capsys):
  d = _bad_dir(tmp_path, {"model_type": "gpt2"})
  err = _one_line_error(d, tmp_path, capsys)
  assert f"{d}/config.json: model_type='gpt2' is not supported" in err
  d.joinpath("config.json").write_text(json.dumps({
      **json.load(open(d / "config.json")), "model_type": "llama",
      "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}))
  err = _one_line_error(d, tmp_path, capsys)
  assert f"{d}/config.json: rope_parameters.rope_type='yarn' is not implemented" in err
  # A shard the index names is gone: the index, the tensor and the file are named.
  d = _bad_dir(tmp_path / "b")
  index = json.load(open(d / "model.safetensors.index.json"))
  key, shard = sorted(index["weight_map"].items())[0]
  (d / shard).unlink()
  err = _one_line_error(d, tmp_path, capsys)
  assert f"{d}/model.safetensors.index.json: {key} is in {shard}, which is missing" in err
  # A tensor the config implies but no file holds.
  d = _bad_dir(tmp_path / "c", {"num_hidden_layers": 3})
  err = _one_line_error(d, tmp_path, capsys)
  assert "tensor model.layers.2." in err and "missing from the safetensors files" in err
  # A .bin checkpoint is never unpickled.
  d = tmp_path / "bin"
  d.mkdir()
  (d / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
  (d / "pytorch_model.bin").write_bytes(b"never opened")
  err = _one_line_error(d, tmp_path, capsys)
  assert f"refusing to load {d}/pytorch_model.bin" in err


# ------------------------------------- Qwen3 -> Post-MoE (upcycled) -> Qwen3-MoE, as a user would

@pytest.mark.e2e
def test_upcycled_qwen3_exports_as_qwen3_moe_with_tokenizer_and_same_generation(tmp_path):
  """A random Qwen3 base on the sample tokenizer's vocabulary, imported, upcycled to Post-MoE
  (Apollo: last layer's FFN copied into 4 experts, hybrid-k routing), saved as a run, exported:
  the directory loads as Qwen3-MoE with AutoModelForCausalLM and AutoTokenizer (no custom
  code), gives our logits, greedy-generates our tokens and text, and imports back exactly."""
  from medmoe_jax import generate as gen
  from medmoe_jax import upcycle
  from medmoe_jax.data.tokenizer import load_tokenizer
  sample = load_tokenizer("sample")
  cfg = transformers.Qwen3Config(**{**SMALL, "vocab_size": sample.vocab_size}, head_dim=16,
                                 tie_word_embeddings=True, rope_theta=1e6)
  _save_hf(transformers.Qwen3ForCausalLM, cfg, tmp_path / "base", seed=21)
  hf.import_hf(str(tmp_path / "base"), str(tmp_path / "dense"))
  c, dense_spec, dense = _imported(tmp_path / "dense")
  c.name = "post_moe_qwen3"
  c.moe.update(dict(layers="last:1", num_experts=4, top_k=2, language_routing="hybrid",
                    backend="dense", norm_topk=False, d_ff=0))
  c.data.tokenizer, c.data.chat_template = "sample", "apollo"
  c.upcycle.method = "apollo"
  spec = cfg_lib.model_spec(c)
  params = upcycle.upcycle("apollo", dense, random_params(spec, seed=22, router_std=0.8), spec)
  run = tmp_path / "run"
  ck = Checkpointer(str(run / "checkpoints"), async_save=False)
  ck.save(5, TrainState(jnp.zeros((), jnp.int32), params, {}), {})
  ck.close()
  (run / "config.json").write_text(cfg_lib.to_json(c))

  assert hf.main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "exp")]) == 0
  out = json.load(open(tmp_path / "exp" / "config.json"))
  assert out["model_type"] == "qwen3_moe" and out["mlp_only_layers"] == [0]
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "exp"),
                                                            dtype=torch.float32).eval()
  assert type(model) is transformers.Qwen3MoeForCausalLM
  ours = _ours(spec, params)
  assert np.abs(_hf_logits(model) - ours).max() <= TOL
  hf.import_hf(str(tmp_path / "exp"), str(tmp_path / "back"))
  _, spec2, p2 = _imported(tmp_path / "back")
  assert spec2.segments == spec.segments and spec2.qk_norm
  jax.tree.map(np.testing.assert_array_equal, p2, params)

  # The tokenizer: what our pipeline encodes (BOS + text), special tokens, the chat template.
  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "exp"))
  for text in ("Hello", "Das Fieber steigt.", "发烧 39°C", "  two  spaces\n"):
    assert tok(text).input_ids == [sample.bos_id] + sample.encode(text), text
  assert (tok.eos_token_id, tok.pad_token_id) == (sample.eos_id, sample.pad_id)
  chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                 add_generation_prompt=True)
  assert chat == "<s>User:Hi\nAssistant:"

  # Greedy generation: the same tokens and text from transformers and from medmoe_jax.generate.
  prompts = ["The patient has", "User:Was hilft gegen Fieber?\nAssistant:"]
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(spec, rngs=nnx.Rngs(0))))
  mine = gen.generate(graphdef, jax.tree.map(jnp.asarray, params),
                      [[sample.bos_id] + sample.encode(p) for p in prompts], max_new_tokens=12,
                      eos_id=sample.eos_id, pad_id=sample.pad_id)
  for p, ids in zip(prompts, mine):
    enc = tok(p, return_tensors="pt")
    with torch.no_grad():
      got = model.generate(**enc, max_new_tokens=12, do_sample=False)[0, enc.input_ids.shape[1]:]
    got = [t for t in got.tolist() if t != sample.eos_id]
    assert got == ids, p
    assert tok.decode(got, skip_special_tokens=True) == sample.decode(ids)
    assert len(ids) > 0


def test_sentencepiece_tokenizer_converts_exactly(tmp_path):
  """The sample tokenizer as tokenizer.json: transformers encodes every sample document (20
  languages) to sentencepiece's ids (BOS first) and decodes them back to the same text."""
  from medmoe_jax.data import tokenizer as tok_lib
  from medmoe_jax.data import tokenizer_json
  sample = tok_lib.load_tokenizer("sample")
  tokenizer_json.write_hf_tokenizer(sample, str(tmp_path), tokenizer_json.CHAT_TEMPLATES["plain"])
  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  texts = list(tok_lib._sample_texts()) + ["", " ", "a\tb\r\n", "12345", "🙂 ٣٤ Ωμέγα"]
  assert len(texts) > 100
  for text in texts:
    ids = tok(text).input_ids
    assert ids == [sample.bos_id] + sample.encode(text), text[:60]
    assert tok.decode(ids, skip_special_tokens=True) == text
  assert tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                 tokenize=False) == "<s>a\nb"
  # Our own HF-tokenizer wrapper reads the export too (a run can train on it).
  again = tok_lib.load_tokenizer(str(tmp_path))
  assert (again.bos_id, again.eos_id, again.pad_id) == (sample.bos_id, sample.eos_id, sample.pad_id)


@pytest.mark.parametrize("params", [
    {"rope_type": "default"},
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
    {"rope_type": "llama3", **{k: v for k, v in LLAMA3_ROPE.items() if k != "rope_type"}}])
def test_rope_frequencies_equal_transformers(params):
  """Our inverse frequencies against transformers' own ROPE_INIT_FUNCTIONS (Llama 3.2's real
  scaling included), at a real head_dim."""
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  from medmoe_jax.model.layers import rope_inv_freq
  cfg = transformers.LlamaConfig(hidden_size=2048, num_attention_heads=32, head_dim=64,
                                 max_position_embeddings=131072,
                                 rope_parameters={**params, "rope_theta": 500000.0})
  if params["rope_type"] == "default":
    want = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float) / 64))
  else:
    want, scale = ROPE_INIT_FUNCTIONS[params["rope_type"]](cfg, "cpu")
    assert scale == 1.0
  over = hf.model_overrides({**SMALL, "model_type": "llama", "max_position_embeddings": 131072,
                             "rope_parameters": {**params, "rope_theta": 500000.0}})
  scaling = cfg_lib.rope_scaling_spec(ml_collections.ConfigDict({"rope_scaling": over["model"]["rope_scaling"]}))
  np.testing.assert_allclose(rope_inv_freq(64, 500000.0, scaling), want.numpy(), rtol=1e-6)


@pytest.mark.e2e
def test_upcycled_llama3_exports_as_qwen2_moe_without_bias_with_its_rope(arch_dirs, tmp_path):
  """transformers has no Llama layout with dense and sparse layers: a Post-MoE model on a Llama
  3 base exports as Qwen2-MoE with qkv_bias=false and the llama3 RoPE scaling, and computes our
  logits."""
  from medmoe_jax import upcycle
  c, _, dense = _imported(arch_dirs["llama3"][0] / "ours")
  c.moe.update(dict(layers="last:1", num_experts=4, top_k=2, language_routing="hybrid",
                    norm_topk=True, d_ff=0))
  c.upcycle.method = "apollo"
  spec = cfg_lib.model_spec(c)
  params = upcycle.upcycle("apollo", dense, random_params(spec, seed=31, router_std=0.8), spec)
  ck = Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False)
  ck.save(1, TrainState(jnp.zeros((), jnp.int32), params, {}), {})
  ck.close()
  (tmp_path / "run" / "config.json").write_text(cfg_lib.to_json(c))
  hf.export_hf(str(tmp_path / "run"), str(tmp_path / "exp"))
  out = json.load(open(tmp_path / "exp" / "config.json"))
  assert out["model_type"] == "qwen2_moe" and out["qkv_bias"] is False
  assert out["rope_parameters"]["rope_type"] == "llama3"
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "exp"),
                                                            dtype=torch.float32).eval()
  assert np.abs(_hf_logits(model) - _ours(spec, params)).max() <= TOL
