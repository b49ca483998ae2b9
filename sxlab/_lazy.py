"""Public names of a package imported from its modules on first use (PEP 562)."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str], namespace: dict):
    """The ``__getattr__`` and ``__dir__`` of a package whose public names live in modules.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    exports : dict of str to str
        Public name -> module of the package that defines it.
    namespace : dict
        The package's ``globals()``; a name is stored there once imported.

    Examples
    --------
    >>> __getattr__, __dir__ = lazy_exports("sxlab.io", {"read_geom": "crystfel_geom"}, {})
    >>> __getattr__("read_geom").__name__
    'read_geom'
    """

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
