"""The core never imports the view layer (plots, widgets) or GUI libraries at import time.

Rules, checked on the source of every module under ``sxlab/`` except the view modules
(``sxlab/plots*``, ``sxlab/widgets*``) and the command line (``sxlab/cli.py``), which
sits on top of both layers:

* no module-level import of matplotlib, ipywidgets or anywidget (imports inside functions
  are fine, and so are those under ``if TYPE_CHECKING:``);
* no import of ``sxlab.plots`` or ``sxlab.widgets`` anywhere, in absolute or relative form.

And at run time: importing ``sxlab`` and every core module leaves those libraries unloaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "sxlab"
REPO_ROOT = PACKAGE_DIR.parent
GUI_LIBRARIES = ("matplotlib", "ipywidgets", "anywidget")
VIEW_MODULES = ("sxlab.plots", "sxlab.widgets")


def _is_view_path(path: Path) -> bool:
    first = path.relative_to(PACKAGE_DIR).parts[0]
    return first.startswith(("plots", "widgets")) or first == "cli.py"


def _core_files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if not _is_view_path(p))


def _module_name(path: Path, root: Path = REPO_ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(path: Path, root: Path) -> str:
    name = _module_name(path, root)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _resolve_from(node: ast.ImportFrom, path: Path, root: Path) -> str:
    if not node.level:
        return node.module or ""
    base = _package_of(path, root).split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported_modules(node: ast.Import | ast.ImportFrom, path: Path, root: Path) -> list[str]:
    """Every module a statement may import: ``from a import b`` yields ``a`` and ``a.b``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = _resolve_from(node, path, root)
    return [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]


def _matches(module: str, targets: tuple[str, ...]) -> bool:
    return any(module == t or module.startswith(t + ".") for t in targets)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_imports(node: ast.AST, at_import_time: bool = True):
    """Yield ``(import_node, runs_at_import_time)`` for every import below `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, at_import_time
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk_imports(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk_imports(ast.Module(body=[stmt], type_ignores=[]), False)
            for stmt in child.orelse:
                yield from _walk_imports(ast.Module(body=[stmt], type_ignores=[]), at_import_time)
        else:
            yield from _walk_imports(child, at_import_time)


def _violations(path: Path, root: Path = REPO_ROOT) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.relative_to(root)
    found = []
    for node, at_import_time in _walk_imports(tree):
        modules = _imported_modules(node, path, root)
        view = [m for m in modules if _matches(m, VIEW_MODULES)]
        gui = [m for m in modules if _matches(m, GUI_LIBRARIES)]
        if view:
            found.append(f"{where}:{node.lineno}: imports the view layer {view[0]!r}")
        elif gui and at_import_time:
            found.append(
                f"{where}:{node.lineno}: imports {gui[0]!r} at module level; "
                "import it inside the function that needs it"
            )
    return found


def test_core_files_found():
    names = {p.name for p in _core_files()}
    assert "__init__.py" in names
    assert "geometry.py" in names and "pipeline.py" in names


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_core_module_imports(path):
    found = _violations(path)
    assert not found, "layering violations:\n" + "\n".join(found)


def test_checker_catches_violations(tmp_path):
    pkg = tmp_path / "sxlab"
    (pkg / "io").mkdir(parents=True)
    source = (
        "import matplotlib.pyplot as plt\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import ipywidgets\n"
        "def f():\n"
        "    import anywidget\n"
        "    from .. import widgets\n"
        "class C:\n"
        "    from ipywidgets import Output\n"
        "from ..plots import run_stats\n"
        "import sxlab.widgets.viewer\n"
    )
    target = pkg / "io" / "bad.py"
    target.write_text(source)
    lines = [int(v.split(":")[1]) for v in _violations(target, tmp_path)]
    assert lines == [1, 7, 9, 10, 11]

    init = pkg / "__init__.py"
    init.write_text("from . import plots\nfrom .geometry import Detector\n")
    assert [int(v.split(":")[1]) for v in _violations(init, tmp_path)] == [1]


def test_import_does_not_load_gui_libraries():
    modules = ["sxlab"] + sorted(_module_name(p) for p in _core_files() if p.name != "__main__.py")
    script = (
        "import importlib, json, sys\n"
        f"watched = {GUI_LIBRARIES + VIEW_MODULES!r}\n"
        "culprits = {}\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    for m in watched:\n"
        "        if m in sys.modules and m not in culprits:\n"
        "            culprits[m] = name\n"
        "print(json.dumps(culprits))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert proc.returncode == 0, proc.stderr
    culprits = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not culprits, "importing the core loaded: " + ", ".join(
        f"{lib} (first loaded by 'import {name}')" for lib, name in culprits.items()
    )
