"""data_shard: which rows of each global batch a process reads, for process layouts over the
mesh (laid out over this host's 8 devices as 2 or 4 pretend processes)."""
import jax
import pytest

from conftest import load_config
from medmoe_jax import distributed, sharding


def _mesh(**shape):
  c = load_config("post_moe")
  c.mesh.update(dict(data=1, fsdp=1, expert=1, tensor=1))
  c.mesh.update(shape)
  return sharding.make_mesh(c, jax.devices()[:8])


def _shards(mesh, processes, batch=8):
  per = 8 // processes
  return [distributed.data_shard(mesh, batch, process_of=lambda d: d.id // per, process=p)
          for p in range(processes)]


@pytest.mark.parametrize("shape, processes, want", [
    (dict(data=8), 2, [(0, 2), (1, 2)]),
    (dict(fsdp=8), 2, [(0, 2), (1, 2)]),
    (dict(data=2, expert=4), 4, [(0, 4), (1, 4), (2, 4), (3, 4)]),
    (dict(data=2, tensor=4), 2, [(0, 2), (1, 2)]),
    # A tensor axis spanning processes: processes whose devices hold the same rows share a shard.
    (dict(data=2, tensor=4), 4, [(0, 2), (0, 2), (1, 2), (1, 2)]),
    (dict(tensor=8), 2, [(0, 1), (0, 1)]),
    (dict(data=4, tensor=2), 4, [(0, 4), (1, 4), (2, 4), (3, 4)]),
    (dict(data=2, fsdp=2, tensor=2), 2, [(0, 2), (1, 2)]),
])
def test_data_shard_layouts(shape, processes, want):
  assert _shards(_mesh(**shape), processes) == want


def test_one_process_reads_every_row():
  assert distributed.data_shard(_mesh(data=2, fsdp=4), 8) == (0, 1)


def test_rows_split_across_processes_are_an_error():
  # Devices alternate between two processes: each holds every other row.
  with pytest.raises(distributed.DistributedError, match="non-contiguous batch rows"):
    distributed.data_shard(_mesh(data=8), 8, process_of=lambda d: d.id % 2, process=0)
