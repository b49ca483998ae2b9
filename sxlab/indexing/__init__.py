"""Indexing: the asdf lattice search, refinement, cell check and multi-lattice indexing.

:func:`index` (``sx.index`` in a notebook) indexes a peak table; :class:`Indexer` is the
same prepared once for a geometry, reference cell and parameter set, for the per-frame
pipeline; both return the crystals table (:data:`sxlab.tables.CRYSTALS`), and
:meth:`Indexer.index` also the peaks with the lattice and indices each was assigned.

Examples
--------
>>> import sxlab as sx
>>> sx.index is sx.indexing.index is sx.indexing.indexer.index
True
"""

from .asdf import AsdfSearch, AsdfStats
from .indexer import METHODS, Indexer, Indexing, IndexParams, index
from .refine import REFINE_MODES, RefineResult, refine_basis
from .scoring import lattice_rotations, misorientation_deg, score_indexing
from .sweep import SweepSearch, SweepStats

__all__ = [
    "METHODS",
    "REFINE_MODES",
    "AsdfSearch",
    "AsdfStats",
    "IndexParams",
    "Indexer",
    "Indexing",
    "RefineResult",
    "SweepSearch",
    "SweepStats",
    "index",
    "lattice_rotations",
    "misorientation_deg",
    "refine_basis",
    "score_indexing",
]
