"""The package's layering: no import cycle among recallkit modules (module-level or deferred), the
mixers below inference, and reading results without loading the training loop; and every kernel
with a fast form has its test file."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import recallkit

ROOT = Path(recallkit.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every recallkit module -> the recallkit modules it imports anywhere (module level or inside a
    function; ``TYPE_CHECKING`` blocks excluded). Importing ``a.b.c`` also runs the packages ``a.b``
    (unless the importer lives inside them); the root package is left out (every import runs it)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            targets |= {r for n in names if n.startswith("recallkit.") and (r := resolve(n))}
        for target in list(targets):
            parts = target.split(".")
            targets |= {".".join(parts[:i]) for i in range(2, len(parts))
                        if not module.startswith(".".join(parts[:i]) + ".")}
        graph[module] = {t for t in targets if t not in (module, "recallkit")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    colour: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in colour and (cycle := visit(nxt)):
                return cycle
        colour[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in colour and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    assert "recallkit.config" in graph["recallkit.model"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle(graph | {"recallkit.base_config": {"recallkit.model"}}) is not None


def test_no_import_cycle_among_recallkit_modules():
    assert find_cycle(import_graph()) is None


def test_lower_layers_never_import_higher_ones():
    lower = ("recallkit.ops", "recallkit.kv", "recallkit.mixers", "recallkit.tasks", "recallkit.base_config")
    higher = ("recallkit.inference", "recallkit.training", "recallkit.sweep", "recallkit.report",
              "recallkit.config",
              "recallkit.model", "recallkit.cli", "recallkit.launch", "recallkit.hf")
    for module, targets in import_graph().items():
        if module.startswith(lower):
            assert not {t for t in targets if t.startswith(higher)}, module


def test_reports_read_results_only():
    """A report draws from stored results: it never rebuilds tasks or configs, nor loads training."""
    forbidden = ("recallkit.tasks", "recallkit.text_tasks", "recallkit.config", "recallkit.base_config",
                 "recallkit.training")
    for module, targets in import_graph().items():
        if module.startswith("recallkit.report"):
            assert not {t for t in targets if t.startswith(forbidden)}, module


def test_reading_results_does_not_load_the_training_loop():
    code = ("import sys, recallkit.report, recallkit.sweep.doctor; "
            "print(sorted(m for m in sys.modules if m in ('recallkit.training', 'recallkit.sweep.runner')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert callable(recallkit.train) and recallkit.train is recallkit.train  # lazily, the function


def test_the_package_names_resolve_on_first_use_and_stay_bound():
    """``import recallkit`` loads no torch; each exported name is its module's object, before and
    after that module is imported (a submodule named like its function must not hide it)."""
    code = ("import sys, importlib, recallkit as rk; assert 'torch' not in sys.modules; "
            "rk.train; import recallkit.evaluate, recallkit.model; "
            "home = lambda n: getattr(importlib.import_module(rk._LAZY[n]), n) if n in rk._LAZY "
            "else importlib.import_module('recallkit.' + n); "
            "wrong = [n for n in rk.__all__ if getattr(rk, n) is not home(n)]; "
            "assert not wrong and rk.evaluate.__name__ == 'evaluate', wrong")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_every_kernel_with_a_loop_and_a_chunked_form_has_its_test_file():
    """A kernel's fast form is tested against its token loop in ``tests/test_ops_<module>.py``
    (docs/adding.md); nothing failed when a new kernel came without one."""
    for path in sorted((ROOT / "ops").glob("*.py")):
        source = path.read_text()
        forms = set(re.findall(r"^def (\w+_(?:recurrent|chunked))\(", source, flags=re.MULTILINE))
        if not any(f.endswith("_recurrent") for f in forms) or not any(f.endswith("_chunked") for f in forms):
            continue
        test = ROOT.parent / "tests" / f"test_ops_{path.stem}.py"
        assert test.is_file(), f"{path.name} has a loop and a chunked form but no {test.name}"
        tested = test.read_text() + (ROOT.parent / "tests" / "kernel_checks.py").read_text()
        chunked = [f for f in forms if f.endswith("_chunked")]
        assert any(f in tested for f in chunked), f"{test.name} does not call {chunked}"
