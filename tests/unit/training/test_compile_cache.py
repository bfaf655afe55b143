"""Where `python -m medmoe_jax.train` keeps XLA's persistent compilation cache."""
from medmoe_jax.training.compile_cache import compilation_cache_dir


def test_cache_directory_choice():
  assert compilation_cache_dir(None, "/w/run") == "/w/run/compilation_cache"
  assert compilation_cache_dir(None, "gs://b/run/") == "gs://b/run/compilation_cache"
  assert compilation_cache_dir(None, "/w/run", "/env/cache") == "/env/cache"  # the user's env
  assert compilation_cache_dir("gs://b/cache", "/w/run", "/env/cache") == "gs://b/cache"
  assert compilation_cache_dir("none", "/w/run", "/env/cache") is None
  assert compilation_cache_dir("", "/w/run") is None
