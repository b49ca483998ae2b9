"""Indexing: the asdf lattice search, refinement, cell check and multi-lattice indexing.

:func:`index` indexes a peak table; :class:`Indexer` is the same prepared once for a
geometry, reference cell and parameter set, for the per-frame pipeline. Both return the
crystals table (:data:`CRYSTAL_SCHEMA`).

The package itself is callable, so ``sxlab.index(peaks, geometry, cell)`` works as
:func:`index` whether ``sxlab.index`` resolves to the function or to this package.

Examples
--------
>>> import sxlab.index
>>> sxlab.index.index is sxlab.index.indexer.index
True
"""

import sys as _sys
import types as _types

from .asdf import AsdfSearch, AsdfStats
from .indexer import CRYSTAL_SCHEMA, Indexer, IndexParams, crystals_table, index
from .refine import REFINE_MODES, RefineResult, refine_basis

__all__ = [
    "CRYSTAL_SCHEMA",
    "REFINE_MODES",
    "AsdfSearch",
    "AsdfStats",
    "IndexParams",
    "Indexer",
    "RefineResult",
    "crystals_table",
    "index",
    "refine_basis",
]


class _CallableModule(_types.ModuleType):
    """Module type whose instances call :func:`index`."""

    def __call__(self, *args, **kwargs):
        return index(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
