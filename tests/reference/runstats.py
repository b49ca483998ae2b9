"""Shot-by-shot loop versions of the cctbx.xfel run statistics, for comparison in tests."""

from __future__ import annotations

import math

import numpy as np


def windowed_rates(indexed, solvent, multi, hq, half, hq_half):
    """Indexing, solvent, multi-lattice and high-quality rates, one shot at a time."""
    n = len(indexed)
    idx_rate, solv_rate, multi_rate, hq_rate = [], [], [], []
    for i in range(n):
        lo, hi = max(0, i - half), min(i + half, n)
        span = hi - lo
        idx_rate.append(sum(indexed[lo:hi]) / span)
        solv_rate.append(sum(solvent[lo:hi]) / span)
        multi_rate.append(sum(multi[lo:hi]) / span)
        lo, hi = max(0, i - hq_half), min(i + hq_half, n)
        n_idx = sum(indexed[lo:hi])
        n_hq = sum(1 for k in range(lo, hi) if indexed[k] and hq[k])
        hq_rate.append(n_hq / n_idx if n_idx else 0.0)
    return (np.array(idx_rate), np.array(solv_rate), np.array(multi_rate),
            np.array(hq_rate))


def resolution(shells_of_frame, cutoff):
    """Smallest d_min of the shells (d_min, n, mean) passing the cutoff, NaN if none."""
    best = math.nan
    for d_min, n, mean in shells_of_frame:
        if n > 0 and mean >= cutoff and not d_min >= best:
            best = d_min
    return best
