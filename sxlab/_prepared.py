"""Prepared objects reused by the one-call functions (``find_peaks``, ``index``, ...).

A one-call function such as :func:`sxlab.find_peaks` prepares a :class:`~sxlab.peaks.
PeakFinder` (annuli, samples, buffers) before searching the frame; called in a loop over
frames with the same geometry, mask and parameters it would repeat that set-up every
time. :class:`PreparedCache` keeps the last few prepared objects of each thread (they
reuse buffers and are not thread-safe) and hands one back when the geometry, the mask
and the parameters are the same as those it was built with:

* the geometry: the same object, or an equal one;
* the mask: both None, the same read-only array (a :class:`sxlab.masks.Mask` is
  immutable), or equal contents (a writable array changed in place since is not reused);
* the parameters (and any further keys): equal.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

__all__ = ["PreparedCache"]


class PreparedCache:
    """A small per-thread cache of prepared objects keyed by geometry, mask and parameters.

    Parameters
    ----------
    build : callable
        ``build(geometry, mask, *key) -> prepared object``.
    size : int
        Prepared objects kept per thread, the most recently used.

    Examples
    --------
    >>> made = []
    >>> cache = PreparedCache(lambda g, m, p: made.append(p) or len(made), size=2)
    >>> cache.get("geometry", None, 1), cache.get("geometry", None, 1), len(made)
    (1, 1, 1)
    """

    def __init__(self, build: Callable, size: int = 2):
        self._build = build
        self._size = int(size)
        self._local = threading.local()

    def _entries(self) -> list:
        entries = getattr(self._local, "entries", None)
        if entries is None:
            entries = self._local.entries = []
        return entries

    def get(self, geometry, mask, *key):
        """The prepared object for ``geometry``, ``mask`` and ``key``, built if needed."""
        entries = self._entries()
        good = None if mask is None else np.asarray(getattr(mask, "good", mask))
        for i, (e_geom, e_mask, e_good, e_key, obj) in enumerate(entries):
            if e_key != key or not (e_geom is geometry or e_geom == geometry):
                continue
            if good is None:
                if e_good is not None:
                    continue
            elif e_good is None or not (
                    (e_mask is mask and not good.flags.writeable)
                    or (e_good.shape == good.shape and np.array_equal(e_good, good))):
                continue
            if i:
                entries.insert(0, entries.pop(i))
            return obj
        obj = self._build(geometry, mask, *key)
        kept = None if good is None else (good if not good.flags.writeable else good.copy())
        entries.insert(0, (geometry, mask, kept, key, obj))
        del entries[self._size:]
        return obj

    def clear(self) -> None:
        """Forget this thread's prepared objects."""
        self._entries().clear()
