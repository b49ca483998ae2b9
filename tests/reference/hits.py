"""Plain-NumPy references for :mod:`sxlab._hits_kernels`."""

from __future__ import annotations

import numpy as np


def radial_sums(image, bins, bad, n_bins):
    """Per-bin sum and count of the good, finite pixels with ``np.bincount``."""
    image = np.asarray(image, dtype=np.float64).ravel()
    bins = np.asarray(bins).ravel()
    keep = (bins >= 0) & np.isfinite(image)
    if bad is not None:
        keep &= ~np.asarray(bad).ravel()
    sums = np.bincount(bins[keep], weights=image[keep], minlength=n_bins)
    counts = np.bincount(bins[keep], minlength=n_bins)
    return sums, counts


def stats(stack, bad, static_bad):
    """Per-pixel count, mean, population std, max and bad count with masked arrays.

    ``stack`` is ``(frames, pixels)``; statically bad pixels get count 0, NaN statistics
    and bad count 0; values flagged in ``bad`` or not finite are left out and counted.
    """
    stack = np.asarray(stack, dtype=np.float64)
    flagged = ~np.isfinite(stack)
    if bad is not None:
        flagged |= bad
    flagged_static = flagged | static_bad[None, :]
    data = np.ma.masked_array(stack, mask=flagged_static)
    count = (~flagged_static).sum(axis=0)
    mean = np.ma.filled(data.mean(axis=0), np.nan)
    std = np.ma.filled(data.std(axis=0), np.nan)
    vmax = np.ma.filled(data.max(axis=0), np.nan)
    nbad = np.where(static_bad, 0, flagged.sum(axis=0))
    return count, mean, std, vmax, nbad
