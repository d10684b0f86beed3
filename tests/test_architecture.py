"""The import rules of docs/ARCHITECTURE.md, checked on the source with `ast`.

- no import cycle among the modules of `mnist_lab/`;
- no module imports another module's underscore names (`from m import _x`, `m._x`), in
  `mnist_lab/`, `hydra_plugins/`, `experiments/` and `benchmarks/`;
- `mnist_lab/` never imports `hydra_plugins/`.
Imports inside functions count as much as those at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mnist_lab.config.schema import REPO_ROOT

CHECKED = ("mnist_lab", "hydra_plugins", "experiments", "benchmarks")


def sources() -> dict[str, ast.Module]:
    files = sorted(p for folder in CHECKED for p in (REPO_ROOT / folder).rglob("*.py"))
    return {p.relative_to(REPO_ROOT).as_posix(): ast.parse(p.read_text(), str(p)) for p in files}


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module as written, relative ones with their dots; names imported from it) per import."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.append((module, [alias.name for alias in node.names]))
    return found


def imported_modules(tree: ast.Module) -> dict[str, str]:
    """Local name -> module, for every `import a.b [as x]` and `from a import b` of a module."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def violations() -> set[tuple[str, str]]:
    """(file, what it imports) for every private-name import and every core -> plugin import."""
    found = set()
    for path, tree in sources().items():
        for module, names in imports(tree):
            parts = module.lstrip(".").split(".")
            if path.startswith("mnist_lab/") and parts[0] == "hydra_plugins":
                found.update((path, f"{module}.{n}") for n in names or [""])
            found.update((path, f"{module}.{n}") for n in names if private(n))
        modules = imported_modules(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and private(node.attr)
            ):
                found.add((path, f"{modules[node.value.id]}.{node.attr}"))
    return found


def core_graph() -> dict[str, set[str]]:
    """mnist_lab module (dotted below the package, e.g. `job.task`; a package by its own name,
    `job`, for its `__init__`) -> the mnist_lab modules it imports. `from mnist_lab.job import
    task` counts as `job.task` and as `job`: it runs the package's `__init__` to find `task`."""

    def dotted(path: str) -> str:
        return ".".join(Path(path).with_suffix("").parts[1:]).removesuffix(".__init__")

    graph = {}
    core = [path for path in sources() if path.startswith("mnist_lab/")]
    known = {dotted(path) for path in core}
    for path, tree in sources().items():
        if path not in core:
            continue
        edges = set()
        for module, names in imports(tree):
            if module != "mnist_lab" and not module.startswith("mnist_lab."):
                continue
            base = module.removeprefix("mnist_lab").lstrip(".")
            edges.add(base)
            edges.update(f"{base}.{n}".lstrip(".") for n in names)
        graph[dotted(path)] = {e for e in edges if e in known} - {dotted(path)}
    return graph


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The cycles a depth-first walk finds, each as a tuple starting at its smallest module."""
    found, done = set(), set()

    def walk(node: str, path: list[str]) -> None:
        if node in path:
            loop = path[path.index(node) :]
            first = loop.index(min(loop))
            found.add(tuple(loop[first:] + loop[:first]))
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            walk(nxt, [*path, node])
        done.add(node)

    for start in sorted(graph):
        walk(start, [])
    return found


def test_the_checks_see_the_code():
    graph = core_graph()
    assert {"job.task", "train.loop", "records.run_record", "models.mlp"} <= set(graph)
    assert "records.run_record" in graph["job.task"] and "train.epoch" in graph["train.cuda_graph"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == {("a", "b", "c")}
    assert cycles({"a": {"b"}, "b": set()}) == set()
    tree = ast.parse("import x.y as m\nfrom p import _q, r\nm._z()\nr.__name__\n")
    assert imports(tree) == [("x.y", []), ("p", ["_q", "r"])]
    assert imported_modules(tree) == {"m": "x.y", "_q": "p._q", "r": "p.r"}


def test_no_import_cycle_in_mnist_lab():
    assert cycles(core_graph()) == set()


def test_no_private_names_across_modules_and_no_core_to_plugin_imports():
    found = violations()
    assert not found, "\n".join(f"{path} imports {what}" for path, what in sorted(found))


# Rooms of mnist_lab (docs/ARCHITECTURE.md) and what each must never import: dependencies run one
# way, so the results layer starts without torch and the training code knows no job or Hydra.
NEVER = {
    "records": {"config", "data", "models", "train", "job", "results", "saved", "app", "torch"},
    "config": {"data", "models", "train", "job", "results", "saved", "app", "torch"},
    "results": {"data", "models", "train", "job", "saved", "app", "torch"},
    "data": {"models", "train", "job", "results", "saved", "app"},
    "models": {"data", "train", "job", "results", "saved", "app"},
    "train": {"job", "results", "saved", "app", "hydra"},
    "job": {"results", "saved", "app"},
    "saved": {"results", "app"},
}


def room_imports() -> dict[str, set[str]]:
    """room -> what its modules import: mnist_lab rooms by name, other packages by top name."""
    found: dict[str, set[str]] = {}
    for path, tree in sources().items():
        parts = Path(path).parts
        if parts[0] != "mnist_lab" or len(parts) < 3:
            continue
        seen = found.setdefault(parts[1], set())
        for module, names in imports(tree):
            if module.startswith("."):
                continue
            if module == "mnist_lab":
                seen.update(names)
            elif module.startswith("mnist_lab."):
                seen.add(module.split(".")[1])
            else:
                seen.add(module.split(".")[0])
    return found


def test_rooms_import_one_way():
    found = room_imports()
    assert set(NEVER) <= set(found), "a room of docs/ARCHITECTURE.md is missing"
    broken = {room: sorted(found[room] & never) for room, never in NEVER.items()}
    assert not any(broken.values()), broken


def test_plugins_use_only_the_job_layers_public_names():
    import mnist_lab.job

    public = set(mnist_lab.job.__all__)
    assert all(hasattr(mnist_lab.job, name) for name in public)
    for path, tree in sources().items():
        if not path.startswith("hydra_plugins/"):
            continue
        for module, names in imports(tree):
            if module.split(".")[0] != "mnist_lab":
                continue
            assert module == "mnist_lab.job", f"{path} imports {module}"
            assert set(names) <= public, f"{path} imports {set(names) - public} of mnist_lab.job"
