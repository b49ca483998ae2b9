"""Numba kernels of :mod:`sxlab.hits`: radial sums and per-pixel run statistics.

Plain-NumPy references: ``tests/reference/hits.py``.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def radial_sums(image, bins, bad, has_bad, sums, counts):
    """Add every pixel's value to its bin.

    ``image``, ``bins`` (int32, -1 = not binned) and ``bad`` are flat arrays of equal
    length; pixels that are bad (when ``has_bad``) or not finite are skipped. ``sums``
    (float64) and ``counts`` (int64) are overwritten. Neighbouring pixels usually fall
    in the same bin, so four interleaved partial sums are kept (pixel ``i`` adds to copy
    ``i % 4``) to avoid waiting on the previous addition; they are added at the end.
    """
    n_bins = sums.size
    part = np.zeros((4, n_bins), dtype=np.float64)
    npart = np.zeros((4, n_bins), dtype=np.int64)
    for i in range(image.size):
        b = bins[i]
        if b < 0:
            continue
        if has_bad and bad[i]:
            continue
        v = np.float64(image[i])
        if not np.isfinite(v):
            continue
        k = i & 3
        part[k, b] += v
        npart[k, b] += 1
    for b in range(n_bins):
        sums[b] = (part[0, b] + part[1, b]) + (part[2, b] + part[3, b])
        counts[b] = npart[0, b] + npart[1, b] + npart[2, b] + npart[3, b]


@numba.njit(cache=True, nogil=True)
def accumulate_stats(stack, bad, has_bad, static_bad, count, mean, m2, vmax, nbad):
    """Add a stack of frames to per-pixel statistics (count, mean, M2, max, bad count).

    ``stack`` is ``(frames, pixels)``; ``bad`` the same shape (when ``has_bad``),
    ``static_bad`` ``(pixels,)``. Statically bad pixels are skipped entirely; values
    flagged bad or not finite increase ``nbad`` and are left out. Per pixel, the stack's
    own count, mean and M2 are computed in two passes (sum, then squared deviations from
    the stack mean) and merged into the accumulators with Chan et al.'s formula:
    ``n = na + nb``, ``delta = mean_b - mean_a``, ``mean = mean_a + delta·nb/n``,
    ``M2 = M2_a + M2_b + delta²·na·nb/n``. That costs two divisions per pixel and stack
    instead of one per value (Welford's update). Pixels are processed in blocks of 2048,
    each frame's part of the block read contiguously.
    """
    n_frames, n_pix = stack.shape
    block = 2048
    nb = np.empty(block, np.float64)
    total = np.empty(block, np.float64)
    mx = np.empty(block, np.float64)
    dev = np.empty(block, np.float64)
    for start in range(0, n_pix, block):
        size = min(block, n_pix - start)
        nb[:size] = 0.0
        total[:size] = 0.0
        mx[:size] = -np.inf
        sbad = static_bad[start : start + size]
        # pass 1: count, sum and maximum of the usable values (branch-free selects)
        for j in range(n_frames):
            row = stack[j, start : start + size]
            brow = bad[j, start : start + size] if has_bad else bad[0, :0]
            for k in range(size):
                x = np.float64(row[k])
                ok = np.isfinite(x) and not sbad[k]
                if has_bad:
                    ok = ok and not brow[k]
                nb[k] += 1.0 if ok else 0.0
                total[k] += x if ok else 0.0
                mx[k] = max(mx[k], x) if ok else mx[k]
        for k in range(size):
            total[k] = total[k] / nb[k] if nb[k] > 0 else 0.0  # now the stack's mean
            dev[k] = 0.0
        # pass 2: squared deviations from the stack's mean
        for j in range(n_frames):
            row = stack[j, start : start + size]
            brow = bad[j, start : start + size] if has_bad else bad[0, :0]
            for k in range(size):
                x = np.float64(row[k])
                ok = np.isfinite(x) and not sbad[k]
                if has_bad:
                    ok = ok and not brow[k]
                d = x - total[k]
                dev[k] += d * d if ok else 0.0
        # merge into the accumulators
        for k in range(size):
            if sbad[k]:
                continue
            i = start + k
            n_b = int(nb[k])
            nbad[i] += n_frames - n_b
            if n_b == 0:
                continue
            n_a = count[i]
            n = n_a + n_b
            delta = total[k] - mean[i]
            w = n_b / n
            mean[i] += delta * w
            m2[i] += dev[k] + delta * delta * n_a * w
            count[i] = n
            if n_a == 0 or mx[k] > vmax[i]:
                vmax[i] = mx[k]


@numba.njit(cache=True, nogil=True)
def band_mean(flat, idx, bad, has_bad):
    """Mean (float64) of ``flat[idx]`` over finite values not flagged in ``bad``; NaN if none.

    ``bad`` (bool, like ``flat``) is read only when ``has_bad``.
    """
    s = 0.0
    n = 0
    for j in range(idx.size):
        i = idx[j]
        v = np.float64(flat[i])
        if abs(v) < np.inf and not (has_bad and bad[i]):
            s += v
            n += 1
    return s / n if n else np.nan
