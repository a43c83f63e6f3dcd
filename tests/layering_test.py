"""Import layering of srlm/, read from the source with ast: the maths modules import no driver
or I/O module, methods import no driver and no runtime (devices, data), and no module imports
itself through others."""

import ast

from helpers import REPO

SRLM = REPO / "srlm"
# The maths core: pure functions of arrays. It may import only itself and the vocabulary's ids.
MATHS = {"srlm.models", "srlm.objectives", "srlm.langevin", "srlm.sampling",
         "srlm.ais"}
MATHS_MAY_IMPORT = MATHS | {"srlm.data.vocab"}
# What drives runs and touches files; methods (srlm.methods.*) sit below these.
DRIVERS = {"srlm.main", "srlm.cli", "srlm.train", "srlm.evaluate", "srlm.analysis", "srlm.runs",
           "srlm.runtime",
           "srlm.checkpointing", "srlm.plots", "srlm.fit"}


def _module_name(path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
  """srlm module -> the srlm modules it imports (anywhere in the file, functions included)."""
  modules = {_module_name(p): p for p in SRLM.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        deps.update(a.name for a in node.names if a.name in modules)
      elif isinstance(node, ast.ImportFrom) and node.module and node.module in modules:
        for alias in node.names:  # `from srlm import x` names module srlm.x if there is one
          sub = f"{node.module}.{alias.name}"
          deps.add(sub if sub in modules else node.module)
    graph[name] = deps - {name}
  return graph


def test_the_graph_sees_the_package():
  graph = _graph()
  assert {"srlm.train", "srlm.methods.sri", "srlm.models"} <= set(graph)
  assert "srlm.methods.base" in graph["srlm.methods.sri"]
  assert "srlm.methods" in graph["srlm.train"]


def test_maths_modules_import_no_driver_or_io_module():
  graph = _graph()
  bad = {m: sorted(graph[m] - MATHS_MAY_IMPORT) for m in MATHS if graph[m] - MATHS_MAY_IMPORT}
  assert not bad, bad


def test_methods_import_no_driver():
  graph = _graph()
  bad = {m: sorted(deps & DRIVERS) for m, deps in graph.items()
         if m.startswith("srlm.methods") and deps & DRIVERS}
  assert not bad, bad


# What runs a method: the devices and the data pipeline. A method's host-level schedule gets
# what it needs from the loop as functions (base.LoopContext).
RUNTIME = {"srlm.parallel", "srlm.reporting", "srlm.workdir"}


def test_methods_import_no_runtime():
  graph = _graph()
  bad = {m: sorted(d for d in deps if d in RUNTIME or d.startswith("srlm.data"))
         for m, deps in graph.items() if m.startswith("srlm.methods")}
  assert not {m: deps for m, deps in bad.items() if deps}, bad


def test_no_import_cycle():
  graph = _graph()
  done, on_path = set(), []

  def visit(module):
    if module in on_path:
      raise AssertionError("import cycle: " + " -> ".join(
          on_path[on_path.index(module):] + [module]))
    if module in done:
      return
    on_path.append(module)
    for dep in sorted(graph[module]):
      visit(dep)
    on_path.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)
