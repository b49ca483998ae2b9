"""Modules that can be called like their main function.

``sx.integrate(image, geometry, crystals)`` and ``sx.index(peaks, geometry)`` are the
notebook API, while ``sxlab/integrate.py`` and ``sxlab/index/`` are also the modules that
hold the prepared classes (``sx.integrate.Integrator``). Python sets a package attribute
to the submodule whenever the submodule is imported, so a re-exported function of the
same name would be replaced by the module; making the module itself callable keeps both
spellings working whatever was imported first.
"""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, function_name: str) -> None:
    """Let module ``module_name`` be called as its attribute ``function_name``."""
    module = sys.modules[module_name]

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function_name)(*args, **kwargs)

    _CallableModule.__name__ = f"CallableModule[{module_name}]"
    module.__class__ = _CallableModule
