"""Front-end files of the widgets: ES modules and CSS from the top-level ``widgets/`` folder.

In a wheel the files are installed as ``sxlab/widgets/static/`` (see ``setup.py``); in a
source tree or an editable install they are read from the repository's ``widgets/``
folder. Each widget's module is ``core.js`` (shared helpers, no exports) followed by the
widget's own module, which ends with ``export default``: the browser receives one ES
module per widget and no bundler is involved.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_INSTALLED = Path(__file__).resolve().parent / "static"
_SOURCE = Path(__file__).resolve().parents[2] / "widgets"


@cache
def asset_dir() -> Path:
    """The folder holding the front-end files (installed copy first, then the source)."""
    for folder in (_INSTALLED, _SOURCE):
        if (folder / "core.js").is_file():
            return folder
    raise FileNotFoundError(
        f"sxlab's widget front-end files are missing: looked for core.js in {_INSTALLED} "
        f"and {_SOURCE}; reinstall sxlab")


def esm(name: str) -> str:
    """The ES module of one widget: ``core.js`` + ``name``."""
    folder = asset_dir()
    return (folder / "core.js").read_text(encoding="utf-8") + "\n" + (
        folder / name).read_text(encoding="utf-8")


def css() -> str:
    """The style sheet shared by every widget."""
    return (asset_dir() / "sxlab.css").read_text(encoding="utf-8")
