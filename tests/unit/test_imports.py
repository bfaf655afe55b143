"""The package's import graph has no cycles (module-level and function-level imports alike)."""
import ast
import pathlib

from conftest import REPO


def _graph():
  root = REPO / "medmoe_jax"
  mods = {}
  for p in root.rglob("*.py"):
    name = ".".join(p.relative_to(REPO).with_suffix("").parts)
    mods[name.removesuffix(".__init__")] = p
  graph = {m: set() for m in mods}
  for m, p in mods.items():
    for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      else:
        continue
      graph[m].update(n for n in names if n in mods and n != m and not m.startswith(n + "."))
  return graph


def _cycle(graph):
  """One import cycle as a list of modules, or None."""
  state, stack = {}, []

  def visit(v):
    state[v] = 1
    stack.append(v)
    for w in sorted(graph[v]):
      if state.get(w) == 1:
        return stack[stack.index(w):] + [w]
      if w not in state:
        found = visit(w)
        if found:
          return found
    stack.pop()
    state[v] = 2
    return None

  for v in sorted(graph):
    if v not in state:
      found = visit(v)
      if found:
        return found
  return None


def test_no_import_cycles():
  assert _cycle(_graph()) is None


def test_the_check_finds_a_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None
