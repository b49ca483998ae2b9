"""Indexing: the asdf lattice search, refinement, cell check and multi-lattice indexing.

:func:`index` indexes a peak table; :class:`Indexer` is the same prepared once for a
geometry, reference cell and parameter set, for the per-frame pipeline. Both return the
crystals table (:data:`sxlab.tables.CRYSTALS`).

The package itself is callable, so ``sxlab.index(peaks, geometry, cell)`` works as
:func:`index` whether ``sxlab.index`` resolves to the function or to this package.

Examples
--------
>>> import sxlab.index
>>> sxlab.index.index is sxlab.index.indexer.index
True
"""

from .. import _callable
from .asdf import AsdfSearch, AsdfStats
from .indexer import Indexer, IndexParams, index
from .refine import REFINE_MODES, RefineResult, refine_basis

__all__ = [
    "REFINE_MODES",
    "AsdfSearch",
    "AsdfStats",
    "IndexParams",
    "Indexer",
    "RefineResult",
    "index",
    "refine_basis",
]


_callable.make_callable(__name__, "index")
