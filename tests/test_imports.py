"""The import graph of src/rnnkit, read from the source (ast): no cycles, and every import points
down the layers cli -> runs/serve/export/ensembles -> tasks -> training -> artifacts -> models ->
layers and data. Function-local imports count like any other."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Lower rank = lower layer; a module may import its own layer or lower ones only. The first
# matching prefix decides (the package itself, `rnnkit`, is the public API on top).
LAYERS = [
    ("rnnkit.cli", 6), ("rnnkit.__main__", 6),
    ("rnnkit.runs", 5), ("rnnkit.serve", 5), ("rnnkit.serve_jobs", 5), ("rnnkit.export", 5), ("rnnkit.ensembles", 5), ("rnnkit.tuning", 5),
    ("rnnkit.tasks", 4),
    ("rnnkit.training", 3), ("rnnkit.rundir", 3),
    ("rnnkit.artifacts", 2),
    ("rnnkit.models", 1), ("rnnkit.plots", 1), ("rnnkit.metrics", 1),
    ("rnnkit.", 0),  # layers (cells, recurrent, bptt, native, fused, scan, layout, dispatch), data, errors, runtime, version
    ("rnnkit", 7),
]


def rank(module: str) -> int:
    return next(r for prefix, r in LAYERS if module == prefix or module.startswith(prefix + ".")
                or prefix.endswith(".") and module.startswith(prefix))


def modules() -> dict:
    found = {}
    for path in (SRC / "rnnkit").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _target(name: str, known: dict) -> str:
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in known else ""


def imports_of(module: str, path: Path, known: dict) -> set:
    """The rnnkit modules ``module`` imports anywhere in its source (`import_module("...")` too)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args \
                and isinstance(node.args[0], ast.Constant):
            names = [node.args[0].value]
        found |= {_target(n, known) for n in names if n.startswith("rnnkit")}
    return found - {"", module}


def graph() -> dict:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def cycles(edges: dict) -> list:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while not component or v not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert rank("rnnkit.training.trainer") > rank("rnnkit.artifacts") > rank("rnnkit.models") > rank("rnnkit.cells")
    assert rank("rnnkit.cli.main") > rank("rnnkit.runs") > rank("rnnkit.tasks.textgen") > rank("rnnkit.training.runner")
    known = modules()
    assert "rnnkit.artifacts" in imports_of("rnnkit.training.trainer", known["rnnkit.training.trainer"], known)


def test_no_import_cycle_among_rnnkit_modules():
    assert cycles(graph()) == []


def test_every_import_points_down_the_layers():
    upward = [f"{m} (layer {rank(m)}) imports {t} (layer {rank(t)})"
              for m, targets in graph().items() for t in sorted(targets) if rank(t) > rank(m)]
    assert upward == []
