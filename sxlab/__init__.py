"""sxlab: serial crystallography in the notebook.

Every processing stage is a plain function that works on one frame and returns a tidy
table (`pandas.DataFrame`) or a labelled array (`xarray.DataArray`); the batch and live
pipelines are compositions of the same functions.

>>> import sxlab as sx
>>> sx.__version__  # doctest: +SKIP
'0.1.0'

Submodules are imported on first attribute access, so ``import sxlab`` stays light and
never pulls in matplotlib or ipywidgets: ``sx.plots`` and ``sx.widgets`` load only when
used.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sxlab")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0"

# Public notebook API: re-export names from core modules below, one line per module, e.g.
#   from .geometry import Detector, Panel
# Never import .plots or .widgets here; they are reached lazily through __getattr__.


def __getattr__(name: str):
    """Import ``sxlab.<name>`` on first access (PEP 562)."""
    if name.isidentifier() and not name.startswith("_"):
        fullname = f"{__name__}.{name}"
        if importlib.util.find_spec(fullname) is not None:
            return importlib.import_module(fullname)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    submodules = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return sorted(set(globals()) | submodules)
