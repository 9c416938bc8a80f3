"""House rules of the import graph (docs/DESIGN.md, "Rooms and arrows"), checked on the source.

Every import counts: module level, inside functions (lazy), and ``importlib.import_module("...")``
with a literal name. Rules:

* ``core`` imports no room and nothing heavy; ``firmware_sim`` imports only ``core``;
* ``edge`` imports only ``core`` and ``firmware_sim``: never torch, TensorFlow or the training package;
* ``pixelrnn`` and ``export`` import nothing of ``edge`` or ``calib``;
* no cycles between packages, and none between the modules of one package.

Larq Compute Engine imports TensorFlow, so it may be imported only lazily (inside a function) by
the runtime registry that loads it when asked for.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.device

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("core", "firmware_sim", "edge", "pixelrnn", "export", "calib")
HEAVY = ("torch", "tensorflow", "tf_keras", "keras", "larq", "larq_compute_engine", "onnx", "onnxscript")
FORBIDDEN = {
    "core": set(ROOMS) - {"core"} | set(HEAVY),
    "firmware_sim": set(ROOMS) - {"core", "firmware_sim"} | set(HEAVY),
    "edge": {"pixelrnn", "export", "calib"} | set(HEAVY),
    "pixelrnn": {"edge", "calib", "export"},
    "export": {"edge", "calib"},
    "calib": {"edge"},
}
# (module, imported top-level name) pairs allowed only inside a function body
LAZY_ONLY = {("core.runtimes", "larq_compute_engine")}


@dataclass(frozen=True)
class Import:
    module: str        # the importing module
    target: str        # the imported module, absolute
    line: int
    lazy: bool         # inside a function


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, *, is_package: bool = False) -> list[Import]:
    """Every import in ``source`` (the text of ``module``), lazy ones and import_module("x") included."""
    tree = ast.parse(source)
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".")
                    base = base if is_package else base[:-1]
                    base = base[:len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                    if not child.module:      # from . import x, y: each is a module of the package
                        found.extend(Import(module, f"{target}.{a.name}", child.lineno, lazy) for a in child.names)
                        continue
                else:
                    target = child.module or ""
                found.append(Import(module, target, child.lineno, lazy))
            elif (isinstance(child, ast.Call) and isinstance(child.func, (ast.Attribute, ast.Name))
                  and (getattr(child.func, "attr", None) or getattr(child.func, "id", None)) == "import_module"
                  and child.args and isinstance(child.args[0], ast.Constant) and isinstance(child.args[0].value, str)):
                found.append(Import(module, child.args[0].value, child.lineno, lazy))
            visit(child, inner)

    visit(tree, False)
    return found


def all_imports(root: Path = ROOT) -> list[Import]:
    out = []
    for room in ROOMS:
        for path in sorted((root / room).rglob("*.py")):
            out.extend(imports_of(path.read_text(encoding="utf-8"), module_name(path, root),
                                  is_package=path.name == "__init__.py"))
    return out


def violations(imports: list[Import]) -> list[str]:
    bad = []
    for imp in imports:
        room, top = imp.module.split(".")[0], imp.target.split(".")[0]
        if (imp.module, top) in LAZY_ONLY:
            if not imp.lazy:
                bad.append(f"{imp.module}:{imp.line} imports {imp.target} at module level (lazy only)")
            continue
        if top in FORBIDDEN.get(room, ()):
            bad.append(f"{imp.module}:{imp.line} imports {imp.target}{' (lazily)' if imp.lazy else ''}")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            strong(v)
    return out


def test_rooms_import_only_downstream():
    assert violations(all_imports()) == []


def test_no_cycles_between_packages_or_modules():
    imports = all_imports()
    modules = {i.module for i in imports}
    pkg_edges: dict[str, set[str]] = {}
    mod_edges: dict[str, set[str]] = {}
    for imp in imports:
        a, b = imp.module.split(".")[0], imp.target.split(".")[0]
        if b in ROOMS and a != b:
            pkg_edges.setdefault(a, set()).add(b)
        target = imp.target
        while target and target not in modules:       # "from pkg.mod import name" -> pkg.mod
            target = target.rpartition(".")[0]
        if target and target != imp.module and not imp.module.startswith(target + "."):   # not its own package
            mod_edges.setdefault(imp.module, set()).add(target)
    assert cycles(pkg_edges) == []
    assert cycles(mod_edges) == []


def test_checker_catches_a_deliberately_wrong_import(tmp_path):
    """The rules are live: an edge module that imports torch lazily, or export importing calib, fails."""
    wrong_edge = textwrap.dedent('''
        import numpy as np

        def decode(x):
            import torch            # deliberately wrong: edge/ must never import torch
            return torch.as_tensor(x)
    ''')
    wrong_export = "from calib.int8 import quantize_bundle\n"
    wrong_lce = "import larq_compute_engine\n"
    found = (imports_of(wrong_edge, "edge.bad") + imports_of(wrong_export, "export.bad")
             + imports_of(wrong_lce, "core.runtimes"))
    bad = violations(found)
    assert bad == ["edge.bad:5 imports torch (lazily)", "export.bad:1 imports calib.int8",
                   "core.runtimes:1 imports larq_compute_engine at module level (lazy only)"]
    assert cycles({"pixelrnn": {"calib"}, "calib": {"pixelrnn"}}) == [["calib", "pixelrnn"]]
    literal = "import importlib\nm = importlib.import_module('pixelrnn.model')\n"
    assert violations(imports_of(literal, "firmware_sim.bad")) == ["firmware_sim.bad:2 imports pixelrnn.model"]


def test_device_rooms_load_nothing_heavy_at_run_time():
    """Importing every module of core, firmware_sim and edge loads no torch, TensorFlow or training room."""
    names = [module_name(p, ROOT) for room in ("core", "firmware_sim", "edge")
             for p in sorted((ROOT / room).rglob("*.py"))]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{list(HEAVY) + ['pixelrnn', 'export', 'calib']!r})\n"
            "print(' '.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""
