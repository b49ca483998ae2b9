"""The package's import structure.

The layers, the ban on GUI libraries in the core and the privacy of private modules are
import-linter contracts in ``pyproject.toml``, checked by ``lint-imports`` in
``make test``. Here: that those contracts catch what they should (run on a copy of the
package's layout with violations planted), that every public module has its place in
the layers, and what no tool checks: that no module imports another module's private
names (``from .masks import _helper``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "sxlab"
REPO_ROOT = PACKAGE_DIR.parent
CONFIG = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _layer_names() -> tuple[set[str], set[str]]:
    """Modules named in the layers contract: (all, optional ones)."""
    layers = next(c for c in CONFIG["contracts"] if c["type"] == "layers")["layers"]
    names, optional = set(), set()
    for layer in layers:
        for part in layer.replace(":", "|").split("|"):
            name = part.strip()
            if name.startswith("("):
                name = name.strip("()")
                optional.add(name)
            names.add(name)
    return names, optional


def _top_level_modules(package: Path) -> set[str]:
    return ({p.stem for p in package.glob("*.py") if p.stem != "__init__"}
            | {p.name for p in package.iterdir() if (p / "__init__.py").is_file()})


def test_every_public_module_has_its_place_in_the_layers():
    names, _ = _layer_names()
    public = {m for m in _top_level_modules(PACKAGE_DIR) if not m.startswith("_")}
    unplaced = sorted(public - names - {"__main__"})
    assert not unplaced, (f"modules not in the layers contract of pyproject.toml: "
                          f"{unplaced}; give each its layer")


def _fake_package(root: Path) -> Path:
    """A package named sxlab with every layer module, importing only downwards."""
    pkg = root / "sxlab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    names, optional = _layer_names()
    for name in sorted(names - optional):
        (pkg / f"{name}.py").write_text("")
    (pkg / "plots.py").write_text("import matplotlib\nfrom . import merging\n")
    (pkg / "pipeline.py").write_text("from . import peaks, results\n")
    (pkg / "indexing.py").unlink()  # a package, with a private module
    (pkg / "indexing").mkdir()
    (pkg / "indexing" / "__init__.py").write_text("from . import _kernels\n")
    (pkg / "indexing" / "_kernels.py").write_text("")
    for lib in ("matplotlib", "ipywidgets", "anywidget"):
        (root / lib).mkdir()
        (root / lib / "__init__.py").write_text("")
    return pkg


def _lint(root: Path) -> subprocess.CompletedProcess:
    config = root / "contracts.toml"
    text = (REPO_ROOT / "pyproject.toml").read_text()
    config.write_text(text[text.index("[tool.importlinter]"):])
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache", str(config)], cwd=root,
                          capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_contracts_catch_violations(tmp_path):
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.exists(), f"{exe} missing: import-linter is in the project's test extra"
    pkg = _fake_package(tmp_path)
    clean = _lint(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "3 kept, 0 broken" in clean.stdout
    # An upward import, a GUI library in the core, another package's private module.
    (pkg / "geometry.py").write_text("from . import pipeline\n")
    (pkg / "masks.py").write_text("def f():\n    import ipywidgets\n")
    (pkg / "peaks.py").write_text("from .indexing import _kernels\n")
    broken = _lint(tmp_path)
    assert broken.returncode != 0
    out = broken.stdout
    assert "0 kept, 3 broken" in out, out
    assert "sxlab.geometry -> sxlab.pipeline" in out
    assert "sxlab.masks -> ipywidgets" in out
    assert "sxlab.peaks -> sxlab.indexing._kernels" in out


# ------------------------------------------------------------------- private names
def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _private_name_imports(path: Path, root: Path) -> list[str]:
    """``from <other module> import _name`` statements of a module. A package's private
    modules are its own: importing them (e.g. kernels) or names from them is allowed."""
    module = _module_name(path, root.parent)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != root.name:
            continue
        parent, _, last = target.rpartition(".")
        if last.startswith("_") and parent == package:
            continue  # names of a private module of one's own package
        for alias in node.names:
            name = alias.name
            if not name.startswith("_") or name.startswith("__"):
                continue
            is_module = (root.parent / Path(*target.split("."), name)).with_suffix(
                ".py").is_file() or (root.parent / Path(*target.split("."), name)).is_dir()
            if is_module and target == package:
                continue  # a private module of one's own package
            found.append((node.lineno, f"{path.relative_to(root.parent)}:{node.lineno}: "
                                       f"from {target} import {name}"))
    return [text for _, text in sorted(found)]


def test_no_module_imports_another_modules_private_names():
    found = [v for p in sorted(PACKAGE_DIR.rglob("*.py"))
             for v in _private_name_imports(p, PACKAGE_DIR)]
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_private_name_check_catches_violations(tmp_path):
    pkg = tmp_path / "sxlab"
    (pkg / "io").mkdir(parents=True)
    for f in ("__init__.py", "masks.py", "_kernels.py", "io/__init__.py", "io/_errors.py"):
        (pkg / f).write_text("")
    (pkg / "hits.py").write_text(
        "from .masks import _as_bad_array, check_shape\n"
        "from . import _kernels\n"
        "def f():\n    from sxlab.masks import _helper\n")
    (pkg / "io" / "mtz.py").write_text("from ._errors import SourceError\n"
                                       "from . import _errors\n"
                                       "from ..merging import _AsuTable\n")
    found = _private_name_imports(pkg / "hits.py", pkg)
    assert [v.split(": ", 1)[1] for v in found] == [
        "from sxlab.masks import _as_bad_array", "from sxlab.masks import _helper"]
    found = _private_name_imports(pkg / "io" / "mtz.py", pkg)
    assert [v.split(": ", 1)[1] for v in found] == ["from sxlab.merging import _AsuTable"]
