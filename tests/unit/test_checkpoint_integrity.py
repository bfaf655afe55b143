"""The checkpoint manifest by itself: what it detects, what it lets through (files Orbax rewrites
or adds at commit), and that moving a step aside never overwrites an earlier one."""
from medmoe_jax import checkpoint_integrity as integrity


def test_manifest_detects_each_damage_and_move_aside_never_overwrites(tmp_path):
  d = tmp_path / "7"
  (d / "state").mkdir(parents=True)
  (d / "state" / "a").write_bytes(b"x" * 100)
  (d / "_CHECKPOINT_METADATA").write_text('{"t": 1}')
  integrity.write_manifest(d)
  assert integrity.verify(d) is None
  (d / "_CHECKPOINT_METADATA").write_text('{"t": 2, "commit": 3}')  # Orbax rewrites it; fine
  assert integrity.verify(d) is None
  (d / "extra").write_text("added after the manifest (a commit marker)")
  assert integrity.verify(d) is None
  (d / "state" / "a").write_bytes(b"x" * 101)
  assert integrity.verify(d) == integrity.Damage("state/a", "has 101 bytes, 100 were written")
  (d / "state" / "a").write_bytes(b"y" * 100)
  assert integrity.verify(d).reason.startswith("has changed contents")
  (tmp_path / "7.damaged").mkdir()
  assert integrity.move_aside(d) == tmp_path / "7.damaged.1"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["7.damaged", "7.damaged.1"]
