"""Numba kernels of :mod:`sxlab.peaks`.

Every kernel works on plain, C-contiguous arrays. A frame is handled as a flat 1-D array
of ``rows * cols`` pixels: a 2-D ``(ss, fs)`` frame has ``rows = ss``; a stacked
``(module, ss, fs)`` frame is viewed as ``(module * ss, fs)``. Pixel ``i`` sits at row
``i // cols`` and column ``i % cols``.

Static pixel information is folded into one array ``ann`` (int16 or int32): the annulus of
each usable pixel, or ``sentinel`` (the number of annuli) for a pixel that is never used
(masked, outside the resolution limits or on no panel). Per-frame bad pixels come as a
boolean array ``bad`` (True = bad) with a flag ``has_bad``; when the flag is False the array
is a placeholder and never read. Non-finite values of float images count as bad pixels.

Summation order is fixed, so results are reproducible bit for bit on one machine.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    "CHUNK",
    "annulus_extent",
    "annulus_order",
    "chunk_annulus_ranges",
    "chunk_levels",
    "chunk_thresholds",
    "clip_stats",
    "dispersion_candidates",
    "exact_annulus_stats",
    "fallback_candidates",
    "fill_annuli",
    "high_candidates",
    "hist_and_high_pass",
    "hist_annulus_stats",
    "measure_peaks",
    "sample_members",
    "sample_annulus_stats",
    "stats_and_high_pass",
    "threshold_candidates",
]

#: Pixels per block in the streaming passes: the statistics pass checks a block at once
#: for bad pixels, the threshold pass for any pixel above the block's lowest threshold.
CHUNK = 64


# ---------------------------------------------------------------------------- set-up
@njit(cache=True, nogil=True)
def annulus_extent(r, good):
    """Number of annuli: ``floor(r) + 1`` of the largest good ``r`` (0 without one).

    ``r`` (n,) is each pixel's radius in pixels, ``good`` (n,) bool.
    """
    top = -1.0
    for i in range(r.size):
        if good[i] and r[i] > top:
            top = r[i]
    return int(math.floor(top)) + 1 if top >= 0 else 0


@njit(cache=True, nogil=True)
def fill_annuli(r, good, sentinel, ann, counts):
    """``ann[i] = floor(r[i])`` for good pixels, ``sentinel`` for the others.

    ``counts`` (``sentinel + 1``, zero on entry) receives the pixels of each annulus and,
    last, the unused ones.
    """
    for i in range(r.size):
        a = int(math.floor(r[i])) if good[i] else sentinel
        ann[i] = a
        counts[a] += 1


@njit(cache=True, nogil=True)
def sample_members(ann, n_ann, ranks, r_off, out):
    """The pixels of given ranks within their annuli, in one pass over the frame.

    For annulus ``a`` and ``r_off[a] <= j < r_off[a + 1]``, ``out[j]`` is the index of the
    ``ranks[j]``-th pixel of annulus ``a`` (counted from 0 in increasing index order);
    ``ranks`` increase within each annulus.
    """
    seen = np.zeros(n_ann, np.int64)
    nxt = r_off[:-1].copy()
    for i in range(ann.size):
        a = ann[i]
        if a >= 0 and a < n_ann:
            j = nxt[a]
            if j < r_off[a + 1] and ranks[j] == seen[a]:
                out[j] = i
                nxt[a] = j + 1
            seen[a] += 1


@njit(cache=True, nogil=True)
def annulus_order(ann, n_ann, order):
    """Pixel indices grouped by annulus, in increasing index within each annulus.

    Parameters
    ----------
    ann : int array (n,)
        Annulus per pixel, ``n_ann`` (or more) for unused pixels.
    n_ann : int
        Number of annuli.
    order : int array (n_used,)
        Output: indices of the used pixels, annulus by annulus.

    Returns
    -------
    offsets : int64 array (n_ann + 1,)
        ``order[offsets[a]:offsets[a + 1]]`` are the pixels of annulus ``a``.
    """
    offsets = np.zeros(n_ann + 1, np.int64)
    for i in range(ann.size):
        a = ann[i]
        if a >= 0 and a < n_ann:
            offsets[a + 1] += 1
    for a in range(n_ann):
        offsets[a + 1] += offsets[a]
    pos = offsets[:n_ann].copy()
    for i in range(ann.size):
        a = ann[i]
        if a >= 0 and a < n_ann:
            order[pos[a]] = i
            pos[a] += 1
    return offsets


@njit(cache=True, nogil=True)
def chunk_annulus_ranges(ann, sentinel, chunk):
    """Smallest and largest annulus of the used pixels of every block of ``chunk`` pixels.

    Blocks without a used pixel get ``lo = sentinel`` and ``hi = -1``.
    """
    n = ann.size
    nb = (n + chunk - 1) // chunk
    lo = np.full(nb, sentinel, np.int32)
    hi = np.full(nb, -1, np.int32)
    for b in range(nb):
        i1 = min((b + 1) * chunk, n)
        for i in range(b * chunk, i1):
            a = ann[i]
            if a != sentinel:
                if a < lo[b]:
                    lo[b] = a
                if a > hi[b]:
                    hi[b] = a
    return lo, hi


# ------------------------------------------------------------------------ statistics
@njit(cache=True, nogil=True, inline="always")
def _mean_sigma(s, s2, n):
    mean = s / n
    var = s2 / n - mean * mean
    return mean, (math.sqrt(var) if var > 0.0 else 0.0)


@njit(cache=True, nogil=True, inline="always")
def _sums_below(vals, j0, j1, thr):
    """Count, sum and sum of squares of ``vals[j0:j1]`` below ``thr`` (4 partial sums)."""
    s0 = s1 = s2 = s3 = 0.0
    q0 = q1 = q2 = q3 = 0.0
    c = 0
    j4 = j0 + (j1 - j0) // 4 * 4
    for j in range(j0, j4, 4):
        v0 = vals[j]
        v1 = vals[j + 1]
        v2 = vals[j + 2]
        v3 = vals[j + 3]
        k0 = v0 < thr
        k1 = v1 < thr
        k2 = v2 < thr
        k3 = v3 < thr
        v0 = v0 if k0 else 0.0
        v1 = v1 if k1 else 0.0
        v2 = v2 if k2 else 0.0
        v3 = v3 if k3 else 0.0
        s0 += v0
        s1 += v1
        s2 += v2
        s3 += v3
        q0 += v0 * v0
        q1 += v1 * v1
        q2 += v2 * v2
        q3 += v3 * v3
        c += int(k0) + int(k1) + int(k2) + int(k3)
    for j in range(j4, j1):
        v = vals[j]
        if v < thr:
            s0 += v
            q0 += v * v
            c += 1
    return c, (s0 + s1) + (s2 + s3), (q0 + q1) + (q2 + q3)


@njit(cache=True, nogil=True)
def clip_stats(vals, m, min_snr, n_iter):
    """Sigma-clipped mean and standard deviation of ``vals[:m]`` (NaN values are skipped).

    Iteration ``k`` takes the values below ``mean + min_snr * sigma`` of iteration
    ``k - 1`` (all values in the first); ``n_iter`` iterations. An iteration that would
    keep no value, or the same values as the one before, ends the loop.

    Returns
    -------
    mean, sigma : float
    n : int
        Number of values of the last statistics (0: none).
    """
    thr = np.inf
    mean = 0.0
    sigma = 0.0
    n = 0
    for _ in range(n_iter):
        c, s, s2 = _sums_below(vals, 0, m, thr)
        if c == 0 or c == n:
            break
        mean, sigma = _mean_sigma(s, s2, c)
        n = c
        thr = mean + min_snr * sigma
    return mean, sigma, n


@njit(cache=True, nogil=True, inline="always")
def _usable(img, bad, has_bad, i):
    v = img[i]
    if has_bad and bad[i]:
        return False
    return abs(v) < np.inf


@njit(cache=True, nogil=True)
def sample_annulus_stats(img, bad, has_bad, g_idx, g_pos, s_off, min_snr, n_iter, vals,
                         mean, sigma, count, integral):
    """Clipped statistics of every annulus from its fixed pixel sample.

    The sample is read in increasing pixel order, ``g_idx``, and pixel ``g_idx[j]`` is
    stored at ``vals[g_pos[j]]`` (NaN if bad or non-finite), so that
    ``vals[s_off[a]:s_off[a + 1]]`` are the sampled values of annulus ``a``. Fills
    ``mean``, ``sigma``, ``count`` (number of values of the final statistics) and
    ``integral`` (every usable sampled value is a whole number).
    """
    for j in range(g_idx.size):
        i = g_idx[j]
        v = np.float64(img[i])
        if (has_bad and bad[i]) or not abs(v) < np.inf:
            v = np.nan
        vals[g_pos[j]] = v
    for a in range(s_off.size - 1):
        j0 = s_off[a]
        j1 = s_off[a + 1]
        whole = True
        for j in range(j0, j1):
            v = vals[j]
            whole &= (v == np.floor(v)) | (v != v)
        mu, sd, c = clip_stats(vals[j0:j1], j1 - j0, min_snr, n_iter)
        mean[a] = mu
        sigma[a] = sd
        count[a] = c
        integral[a] = whole


@njit(cache=True, nogil=True)
def stats_and_high_pass(img, bad, bad_words, has_bad, ann, sentinel, bound, bin0, bound_hi,
                        one, lowest, acc, hist, n_bad, hi_idx, hi_val, hi_ann):
    """One pass over the frame: sums of the low pixels, counts of whole values, high list.

    A used, good pixel of annulus ``a`` is *low* if its value is below ``bound[a]``: its
    value and squared value are added to ``acc[a, i % 4, 0]`` and ``acc[a, i % 4, 1]``
    (four interleaved partial sums per annulus, accumulated in the type of ``one``) and
    ``acc[a, i % 4, 2]`` keeps the largest low value (it starts at ``lowest``). A
    whole-number value ``v`` below ``bound_hi[a]`` (but not low) is counted in
    ``hist[a, v - bin0[a]]`` (``bin0[a]`` is the first whole number at or above
    ``bound[a]``). Otherwise the pixel is *high*: its index, value and annulus are
    appended to ``hi_idx``, ``hi_val`` and ``hi_ann`` in increasing index order. Bad
    pixels, NaN and +inf are counted per annulus in ``n_bad``; a -inf makes the annulus'
    sums non-finite (the caller recomputes such annuli). ``bound[sentinel]`` must exceed
    every value; ``acc`` and ``n_bad`` have a row for the sentinel, which receives the
    unused and bad pixels.

    Returns
    -------
    int
        Number of high pixels; when larger than ``hi_idx.size`` the lists are incomplete
        and the pass must be repeated with larger buffers.
    """
    n = img.size
    cap = hi_idx.size
    acc[:, :, :2] = 0
    acc[:, :, 2] = lowest
    hist[:] = 0
    n_bad[:] = 0
    m = 0
    n_full = n - n % CHUNK
    # The loop body is written out three times (blocks with bad pixels, clean blocks, the
    # partial last block): a shared helper function defeats the compiler's optimisation
    # of this, the hottest loop of the package.
    for c0 in range(0, n_full, CHUNK):
        any_bad = False
        if has_bad:
            w = np.uint64(0)
            for j in range(c0 // 8, c0 // 8 + CHUNK // 8):
                w |= bad_words[j]
            any_bad = w != 0
        if any_bad:
            for i0 in range(c0, c0 + CHUNK, 4):
                for k in range(4):
                    i = i0 + k
                    a = ann[i]
                    if bad[i]:
                        n_bad[a] += 1
                        a = sentinel
                    v = img[i]
                    if v < bound[a]:
                        w = v * one
                        acc[a, k, 0] += w
                        acc[a, k, 1] += w * w
                        acc[a, k, 2] = max(acc[a, k, 2], w)
                    elif a != sentinel:
                        if not abs(v) < np.inf:
                            n_bad[a] += 1
                        elif v < bound_hi[a] and v == math.floor(v):
                            hist[a, int(v - bin0[a])] += 1
                        else:
                            if m < cap:
                                hi_idx[m] = i
                                hi_val[m] = v
                                hi_ann[m] = a
                            m += 1
        else:
            for i0 in range(c0, c0 + CHUNK, 4):
                for k in range(4):
                    i = i0 + k
                    a = ann[i]
                    v = img[i]
                    if v < bound[a]:
                        w = v * one
                        acc[a, k, 0] += w
                        acc[a, k, 1] += w * w
                        acc[a, k, 2] = max(acc[a, k, 2], w)
                    elif a != sentinel:
                        if not abs(v) < np.inf:
                            n_bad[a] += 1
                        elif v < bound_hi[a] and v == math.floor(v):
                            hist[a, int(v - bin0[a])] += 1
                        else:
                            if m < cap:
                                hi_idx[m] = i
                                hi_val[m] = v
                                hi_ann[m] = a
                            m += 1
    for i in range(n_full, n):
        a = ann[i]
        if has_bad and bad[i]:
            n_bad[a] += 1
            a = sentinel
        v = img[i]
        if v < bound[a]:
            w = v * one
            k = i & 3
            acc[a, k, 0] += w
            acc[a, k, 1] += w * w
            acc[a, k, 2] = max(acc[a, k, 2], w)
        elif a != sentinel:
            if not abs(v) < np.inf:
                n_bad[a] += 1
            elif v < bound_hi[a] and v == math.floor(v):
                hist[a, int(v - bin0[a])] += 1
            else:
                if m < cap:
                    hi_idx[m] = i
                    hi_val[m] = v
                    hi_ann[m] = a
                m += 1
    return m


@njit(cache=True, nogil=True)
def hist_and_high_pass(img, bad, bad_words, has_bad, ann, sentinel, n_bins, hist, n_bad,
                       hi_idx, hi_val, hi_ann):
    """One pass over an integer frame: counts of the small values, list of the others.

    A used, good pixel of annulus ``a`` whose value ``v`` is a whole number in
    ``[0, n_bins)`` is counted in ``hist[a * n_bins + v]``; any other value is *high*:
    its index, value and annulus are appended to ``hi_idx``, ``hi_val`` and ``hi_ann`` in
    increasing index order. Bad pixels are counted per annulus in ``n_bad``. ``hist`` and
    ``n_bad`` have a row for the sentinel, which receives the unused and bad pixels.
    One counter per pixel (instead of sums, squares and maxima) is what makes this pass
    faster than :func:`stats_and_high_pass`; the statistics follow exactly from the counts
    (:func:`hist_annulus_stats`).

    Returns
    -------
    int
        Number of high pixels; when larger than ``hi_idx.size`` the lists are incomplete
        and the pass must be repeated with larger buffers.
    """
    n = img.size
    cap = hi_idx.size
    hist[:] = 0
    n_bad[:] = 0
    m = 0
    n_full = n - n % CHUNK
    # Written out three times as in stats_and_high_pass: one loop testing a per-block
    # flag for bad pixels measured 40 % slower.
    for c0 in range(0, n_full, CHUNK):
        any_bad = False
        if has_bad:
            w = np.uint64(0)
            for j in range(c0 // 8, c0 // 8 + CHUNK // 8):
                w |= bad_words[j]
            any_bad = w != 0
        if any_bad:
            for i in range(c0, c0 + CHUNK):
                a = ann[i]
                if bad[i]:
                    n_bad[a] += 1
                    a = sentinel
                v = img[i]
                if v >= 0 and v < n_bins:
                    hist[a * n_bins + v] += 1
                elif a != sentinel:
                    if m < cap:
                        hi_idx[m] = i
                        hi_val[m] = v
                        hi_ann[m] = a
                    m += 1
        else:
            for i in range(c0, c0 + CHUNK):
                a = ann[i]
                v = img[i]
                if v >= 0 and v < n_bins:
                    hist[a * n_bins + v] += 1
                elif a != sentinel:
                    if m < cap:
                        hi_idx[m] = i
                        hi_val[m] = v
                        hi_ann[m] = a
                    m += 1
    for i in range(n_full, n):
        a = ann[i]
        if has_bad and bad[i]:
            n_bad[a] += 1
            a = sentinel
        v = img[i]
        if v >= 0 and v < n_bins:
            hist[a * n_bins + v] += 1
        elif a != sentinel:
            if m < cap:
                hi_idx[m] = i
                hi_val[m] = v
                hi_ann[m] = a
            m += 1
    return m


@njit(cache=True, nogil=True)
def hist_annulus_stats(hist, n_bins, hi_val, hi_ann, m, min_snr, n_iter, mean, sigma, count):
    """Clipped statistics of every annulus from :func:`hist_and_high_pass`, exactly.

    Iteration ``k`` takes the values below the threshold of iteration ``k - 1`` (all in
    the first), as :func:`clip_stats` does over all of an annulus' pixels: the counted
    values ``v < t`` from ``hist`` and the high values below ``t`` one by one. Fills
    ``mean``, ``sigma`` and ``count``.
    """
    n_ann = mean.size
    vals, h_off = _group_by_annulus(hi_val, hi_ann, m, n_ann)
    for a in range(n_ann):
        h0 = h_off[a]
        h1 = h_off[a + 1]
        row = a * n_bins
        top = 0  # one past the largest counted value
        for v in range(n_bins):
            if hist[row + v]:
                top = v + 1
        thr = np.inf
        mu = 0.0
        sd = 0.0
        c_prev = 0
        for _ in range(n_iter):
            c, s, s2 = _sums_below(vals, h0, h1, thr)
            n_hist = 0
            s_hist = 0
            s2_hist = 0
            for v in range(top):
                if not v < thr:
                    break
                k = np.int64(hist[row + v])
                n_hist += k
                s_hist += v * k
                s2_hist += v * v * k
            c += n_hist
            s += s_hist
            s2 += s2_hist
            if c == 0 or c == c_prev:
                break
            mu, sd = _mean_sigma(s, s2, c)
            c_prev = c
            thr = mu + min_snr * sd
        mean[a] = mu
        sigma[a] = sd
        count[a] = c_prev


@njit(cache=True, nogil=True)
def _group_by_annulus(hi_val, hi_ann, m, n_ann):
    """High values grouped by annulus (stable) and the offsets of the groups."""
    h_off = np.zeros(n_ann + 1, np.int64)
    for j in range(m):
        h_off[hi_ann[j] + 1] += 1
    for a in range(n_ann):
        h_off[a + 1] += h_off[a]
    pos = h_off[:n_ann].copy()
    hv = np.empty(m, np.float64)
    for j in range(m):
        a = hi_ann[j]
        hv[pos[a]] = hi_val[j]
        pos[a] += 1
    return hv, h_off


@njit(cache=True, nogil=True)
def exact_annulus_stats(img, bad, has_bad, acc, bin0, hist, n_good, hi_val, hi_ann, m, a_off,
                        order, min_snr, n_iter, adc_threshold, vals, mean, sigma, count,
                        fallback):
    """Clipped statistics of every annulus from the low sums, counts and high pixels.

    The statistics of iteration ``k`` use the pixels below the threshold ``t`` of
    iteration ``k - 1``: the low sums, the counted whole values below ``t`` and the high
    pixels below ``t`` one by one. This is exact as long as the largest low value
    (``acc[a, :, 2]``) is below every ``t`` and at most the candidate threshold
    ``max(adc_threshold, threshold)`` (counted values never exceed ``adc_threshold``, see
    :func:`stats_and_high_pass`). Annuli where this fails are recomputed from all their
    pixels (through ``order``) and flagged in ``fallback``. ``n_good[a]`` is the number
    of good pixels of annulus ``a`` in this frame. Fills ``mean``, ``sigma``, ``count``
    and ``fallback``.
    """
    n_ann = n_good.size
    # High pixels grouped by annulus (stable: increasing index within an annulus).
    hv, h_off = _group_by_annulus(hi_val, hi_ann, m, n_ann)
    for a in range(n_ann):
        h0 = h_off[a]
        h1 = h_off[a + 1]
        s_low = 0.0
        s2_low = 0.0
        low_max = -np.inf
        for k in range(4):
            s_low += acc[a, k, 0]
            s2_low += acc[a, k, 1]
            low_max = max(low_max, np.float64(acc[a, k, 2]))
        n_hist = 0
        for j in range(hist.shape[1]):
            n_hist += hist[a, j]
        n_low = n_good[a] - (h1 - h0) - n_hist
        # A -inf among the low pixels: recompute from all pixels (they skip it).
        failed = not abs(s_low) < np.inf
        thr = np.inf
        mu = 0.0
        sd = 0.0
        c_prev = 0
        for it in range(n_iter if not failed else 0):
            c, s, s2 = _sums_below(hv, h0, h1, thr)
            c += n_low
            s += s_low
            s2 += s2_low
            if n_hist:
                for j in range(hist.shape[1]):
                    v = bin0[a] + j
                    if hist[a, j] and v < thr:
                        c += hist[a, j]
                        s += v * hist[a, j]
                        s2 += v * v * hist[a, j]
            if c == 0 or c == c_prev:
                break
            mu, sd = _mean_sigma(s, s2, c)
            c_prev = c
            thr = mu + min_snr * sd
            # The next iteration clips at thr; with sd == 0 it would keep nothing.
            if it + 1 < n_iter and sd > 0.0 and not low_max < thr:
                failed = True
                break
        if c_prev > 0 and not failed:
            failed = not low_max <= max(adc_threshold, thr)
        fallback[a] = failed
        if failed:
            mv = 0
            for j in range(a_off[a], a_off[a + 1]):
                i = order[j]
                if _usable(img, bad, has_bad, i):
                    vals[mv] = img[i]
                    mv += 1
            mu, sd, c_prev = clip_stats(vals, mv, min_snr, n_iter)
        mean[a] = mu
        sigma[a] = sd
        count[a] = c_prev


@njit(cache=True, nogil=True)
def high_candidates(hi_idx, hi_val, hi_ann, m, cthr, fallback):
    """High pixels above their annulus' candidate threshold, outside fallback annuli."""
    n_c = 0
    for j in range(m):
        a = hi_ann[j]
        if not fallback[a] and hi_val[j] > cthr[a]:
            n_c += 1
    idx = np.empty(n_c, np.int64)
    val = np.empty(n_c, np.float64)
    n_c = 0
    for j in range(m):
        a = hi_ann[j]
        if not fallback[a] and hi_val[j] > cthr[a]:
            idx[n_c] = hi_idx[j]
            val[n_c] = hi_val[j]
            n_c += 1
    return idx, val


@njit(cache=True, nogil=True)
def fallback_candidates(img, bad, has_bad, annuli, a_off, order, cthr, idx0, val0):
    """Candidates of the listed annuli (all their pixels) merged with ``idx0``/``val0``.

    Returns the merged candidates sorted by pixel index.
    """
    n_c = idx0.size
    for a in annuli:
        for j in range(a_off[a], a_off[a + 1]):
            i = order[j]
            if _usable(img, bad, has_bad, i) and img[i] > cthr[a]:
                n_c += 1
    idx = np.empty(n_c, np.int64)
    val = np.empty(n_c, np.float64)
    idx[: idx0.size] = idx0
    val[: idx0.size] = val0
    n_c = idx0.size
    for a in annuli:
        for j in range(a_off[a], a_off[a + 1]):
            i = order[j]
            if _usable(img, bad, has_bad, i) and img[i] > cthr[a]:
                idx[n_c] = i
                val[n_c] = img[i]
                n_c += 1
    perm = np.argsort(idx, kind="mergesort")
    return idx[perm], val[perm]


# ------------------------------------------------------------------------ candidates
@njit(cache=True, nogil=True)
def chunk_levels(chunk_lo, chunk_hi):
    """Level of the range-minimum query of every block: ``floor(log2(hi - lo + 1))``."""
    out = np.zeros(chunk_lo.size, np.int8)
    for b in range(chunk_lo.size):
        width = chunk_hi[b] - chunk_lo[b] + 1
        k = 0
        while (2 << k) <= width:
            k += 1
        out[b] = k
    return out


@njit(cache=True, nogil=True)
def chunk_thresholds(cthr, chunk_lo, chunk_hi, chunk_level, out):
    """Smallest candidate threshold of the annuli of every block (inf: no used pixel)."""
    n = cthr.size
    levels = 1
    while (1 << levels) <= n:
        levels += 1
    table = np.empty((levels, n), np.float64)
    table[0] = cthr
    for k in range(1, levels):
        w = 1 << (k - 1)
        for i in range(n - (1 << k) + 1):
            table[k, i] = min(table[k - 1, i], table[k - 1, i + w])
    for b in range(chunk_lo.size):
        lo = chunk_lo[b]
        hi = chunk_hi[b]
        if hi < lo:
            out[b] = np.inf
        else:
            k = chunk_level[b]
            out[b] = min(table[k, lo], table[k, hi - (1 << k) + 1])


@njit(cache=True, nogil=True)
def threshold_candidates(img, bad, has_bad, ann, sentinel, cthr, chunk_thr, out_idx, out_val):
    """Pixels above their annulus' threshold ``cthr`` (strictly), in index order.

    Each block of ``CHUNK`` pixels is first compared, all at once, with the smallest
    threshold of the annuli it touches (``chunk_thr``, see :func:`chunk_thresholds`);
    only blocks with a pixel above it (or a NaN) are examined pixel by pixel.

    Returns
    -------
    int
        Number of candidates; when larger than ``out_idx.size`` the lists are incomplete
        and the pass must be repeated with larger buffers.
    """
    n = img.size
    cap = out_idx.size
    m = 0
    n_full = n // CHUNK
    for b in range(chunk_thr.size):
        t = chunk_thr[b]
        c0 = b * CHUNK
        c1 = min(c0 + CHUNK, n)
        if b < n_full:
            above = 0
            for j in range(CHUNK):
                above += not img[c0 + j] <= t
            if above == 0:
                continue
        for i in range(c0, c1):
            a = ann[i]
            if a == sentinel:
                continue
            v = img[i]
            if v > cthr[a] and _usable(img, bad, has_bad, i):
                if m < cap:
                    out_idx[m] = i
                    out_val[m] = v
                m += 1
    return m


@njit(cache=True, nogil=True)
def dispersion_candidates(img, bad, has_bad, ann, sentinel, rects, cols, half, gain,
                          sigma_background, sigma_strong, global_threshold, min_local,
                          out_idx, out_val):
    """Signal pixels of the dispersion test, panel by panel, in index order per panel.

    Box sums (count ``n``, sum ``S`` and sum of squares ``Q`` of the good pixels of the
    panel in the ``(2 half + 1)²`` box around each pixel, the pixel included) are kept as
    running column sums over the rows of the box and summed along each row. A good pixel
    of value ``v`` is signal if ``n >= min_local`` (``min_local <= 0``: the full box),
    ``n > 1``, ``S > 0``, ``v > global_threshold`` and::

        n Q - S² > S gain ((n - 1) + sigma_background sqrt(2 (n - 1)))
        n v - S > sigma_strong sqrt(gain S n)

    which are ``variance / (gain mean) > 1 + sigma_background sqrt(2 / (n - 1))`` and
    ``v > mean + sigma_strong sqrt(gain mean)`` (mean ``S / n``, unbiased variance
    ``(Q - S² / n) / (n - 1)``) multiplied out, without divisions.

    ``rects[p] = (row0, row1, col0, col1)`` (inclusive) is panel ``p``'s rectangle in
    the flat ``(rows, cols)`` frame.

    Returns
    -------
    int
        Number of signal pixels (see :func:`threshold_candidates` for a full buffer).
    """
    cap = out_idx.size
    box = 2 * half + 1
    n_min = np.float64(box * box if min_local <= 0 else max(min_local, 2))
    strong2 = sigma_strong * sigma_strong * gain
    n_ring = box + 1
    m = 0
    for p in range(rects.shape[0]):
        r0 = rects[p, 0]
        r1 = rects[p, 1]
        c0 = rects[p, 2]
        w = rects[p, 3] - c0 + 1
        # Column sums over the rows of the box, padded by ``half`` zeros on each side.
        cn = np.zeros(w + 2 * half)
        cs = np.zeros(w + 2 * half)
        cq = np.zeros(w + 2 * half)
        # Ring buffer of the rows inside the box: good flags and values (0 where bad).
        rg = np.zeros((n_ring, w))
        rv = np.zeros((n_ring, w))
        bn = np.empty(w)
        bs = np.empty(w)
        bq = np.empty(w)
        flag = np.empty(w, np.uint8)
        for r in range(r0 - half, r1 + 1):
            # Column sums move from rows r - half - 1 .. r + half - 1 to r - half .. r + half.
            ra = r + half
            rs = r - half - 1
            if ra <= r1:
                base = ra * cols + c0
                gm = rg[(ra - r0) % n_ring]
                gv = rv[(ra - r0) % n_ring]
                _row_values(img[base:base + w], ann[base:base + w], bad[base:base + w]
                            if has_bad else bad[:0], sentinel, gm, gv)
                if rs >= r0:
                    _swap_row(cn[half:half + w], cs[half:half + w], cq[half:half + w], gm, gv,
                              rg[(rs - r0) % n_ring], rv[(rs - r0) % n_ring])
                else:
                    _add_row(cn[half:half + w], cs[half:half + w], cq[half:half + w], gm, gv,
                             1.0)
            elif rs >= r0:
                _add_row(cn[half:half + w], cs[half:half + w], cq[half:half + w],
                         rg[(rs - r0) % n_ring], rv[(rs - r0) % n_ring], -1.0)
            if r < r0:
                continue
            bn[:] = cn[:w]
            bs[:] = cs[:w]
            bq[:] = cq[:w]
            for j in range(1, box):
                _add_to(bn, cn[j:j + w])
                _add_to(bs, cs[j:j + w])
                _add_to(bq, cq[j:j + w])
            gm = rg[(r - r0) % n_ring]
            gv = rv[(r - r0) % n_ring]
            n_sig = 0
            for x in range(w):
                nn = bn[x]
                sv = bs[x]
                v = gv[x]
                n1 = max(nn - 1.0, 1.0)
                limit = gain * (n1 + sigma_background * math.sqrt(2.0 * n1))
                d = nn * v - sv
                ok = ((gm[x] > 0.0) & (nn >= n_min) & (sv > 0.0) & (v > global_threshold)
                      & (nn * bq[x] - sv * sv > sv * limit)
                      & (d > 0.0) & (d * d > strong2 * sv * nn))
                flag[x] = ok
                n_sig += ok
            if n_sig:
                base = r * cols + c0
                for x in range(w):
                    if flag[x]:
                        if m < cap:
                            out_idx[m] = base + x
                            out_val[m] = gv[x]
                        m += 1
    return m


@njit(cache=True, nogil=True)
def _row_values(im, an, bd, sentinel, gm, gv):
    """Good flags (1.0/0.0) and values (0 where not good) of one row of a panel."""
    if bd.size:
        for x in range(im.size):
            v = np.float64(im[x])
            g = (an[x] != sentinel) & (abs(v) < np.inf) & (not bd[x])
            gm[x] = 1.0 if g else 0.0
            gv[x] = v if g else 0.0
    else:
        for x in range(im.size):
            v = np.float64(im[x])
            g = (an[x] != sentinel) & (abs(v) < np.inf)
            gm[x] = 1.0 if g else 0.0
            gv[x] = v if g else 0.0


@njit(cache=True, nogil=True)
def _add_row(cn, cs, cq, gm, gv, sign):
    """Add (``sign`` 1) or remove (-1) one row's flags, values and squares."""
    for x in range(gm.size):
        g = gv[x]
        cn[x] += sign * gm[x]
        cs[x] += sign * g
        cq[x] += sign * (g * g)


@njit(cache=True, nogil=True)
def _swap_row(cn, cs, cq, gm, gv, gm_old, gv_old):
    """Add one row's flags, values and squares and remove another's."""
    for x in range(gm.size):
        g = gv[x]
        h = gv_old[x]
        cn[x] += gm[x] - gm_old[x]
        cs[x] += g - h
        cq[x] += g * g - h * h


@njit(cache=True, nogil=True)
def _add_to(out, x):
    """``out += x`` elementwise."""
    for i in range(out.size):
        out[i] += x[i]


# ----------------------------------------------------------------------- measurement
@njit(cache=True, nogil=True, inline="always")
def _find(parent, j):
    while parent[j] != j:
        parent[j] = parent[parent[j]]
        j = parent[j]
    return j


@njit(cache=True, nogil=True, inline="always")
def _union(parent, a, b):
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@njit(cache=True, nogil=True)
def measure_peaks(img, bad, has_bad, ann, sentinel, panel, flag, c_idx, c_val, cols,
                  rows_per_module, min_pix, max_pix, bg_radius, min_snr):
    """Group candidates into 8-connected components within a panel and measure them.

    Parameters
    ----------
    c_idx, c_val : arrays (n,)
        Candidate pixel indices (strictly increasing) and values.
    flag : uint8 array (pixels,)
        All zero on entry; used as the candidate map and left all zero on return.
    panel : int8 or int16 array (pixels,)
        Panel index per pixel.
    min_pix, max_pix : int
        Accepted component sizes (pixels), inclusive.
    bg_radius : int
        The local background comes from the pixels at Chebyshev distance ``bg_radius``
        or ``bg_radius + 1`` from the component's bounding box that are in the same
        panel, used, good and not candidates.
    min_snr : float
        Smallest accepted ``intensity / (sigma_local * sqrt(npix))``.

    Returns
    -------
    panel, fs, ss, intensity, snr, npix, background, max_value, first : arrays (peaks,)
        ``fs``/``ss`` are the centroid (weights ``value - background``) in data-array
        coordinates with pixel centres at +0.5; ``first`` is the smallest pixel index of
        the component. Components with ``intensity <= 0``, no background pixel or a
        signal-to-noise ratio below ``min_snr`` are left out.
    """
    nc = c_idx.size
    for j in range(nc):
        flag[c_idx[j]] = 1
    parent = np.arange(nc)
    for j in range(nc):
        i = c_idx[j]
        col = i % cols
        p = panel[i]
        if col > 0 and flag[i - 1] and panel[i - 1] == p:
            _union(parent, j, j - 1)
        if i >= cols:
            up = i - cols
            k = -1
            for dc in range(-1, 2):
                cc = col + dc
                q = up + dc
                if cc < 0 or cc >= cols or not flag[q] or panel[q] != p:
                    continue
                if k < 0:
                    k = np.searchsorted(c_idx, q)
                else:
                    while c_idx[k] < q:
                        k += 1
                _union(parent, j, k)
    # Compact labels in order of each component's first pixel.
    label = np.empty(nc, np.int64)
    n_comp = 0
    for j in range(nc):
        r = _find(parent, j)
        if r == j:
            label[j] = n_comp
            n_comp += 1
        else:
            label[j] = label[r]
    npix = np.zeros(n_comp, np.int64)
    r_lo = np.full(n_comp, np.iinfo(np.int64).max)
    r_hi = np.full(n_comp, -1)
    f_lo = np.full(n_comp, np.iinfo(np.int64).max)
    f_hi = np.full(n_comp, -1)
    first = np.full(n_comp, -1)
    for j in range(nc):
        c = label[j]
        i = c_idx[j]
        row = i // cols
        col = i % cols
        npix[c] += 1
        if first[c] < 0:
            first[c] = i
        r_lo[c] = min(r_lo[c], row)
        r_hi[c] = max(r_hi[c], row)
        f_lo[c] = min(f_lo[c], col)
        f_hi[c] = max(f_hi[c], col)
    rows = img.size // cols
    bg = np.zeros(n_comp)
    noise = np.zeros(n_comp)
    keep = np.zeros(n_comp, np.bool_)
    rad = bg_radius
    for c in range(n_comp):
        if npix[c] < min_pix or npix[c] > max_pix:
            continue
        p = panel[first[c]]
        s = 0.0
        s2 = 0.0
        nb = 0
        for row in range(max(r_lo[c] - rad - 1, 0), min(r_hi[c] + rad + 2, rows)):
            dr = max(r_lo[c] - row, row - r_hi[c], 0)
            for col in range(max(f_lo[c] - rad - 1, 0), min(f_hi[c] + rad + 2, cols)):
                dc = max(f_lo[c] - col, col - f_hi[c], 0)
                if max(dr, dc) < rad:
                    continue
                q = row * cols + col
                if panel[q] != p or ann[q] == sentinel or flag[q]:
                    continue
                if not _usable(img, bad, has_bad, q):
                    continue
                v = np.float64(img[q])
                s += v
                s2 += v * v
                nb += 1
        if nb > 0:
            bg[c], noise[c] = _mean_sigma(s, s2, nb)
            keep[c] = True
    inten = np.zeros(n_comp)
    sf = np.zeros(n_comp)
    sr = np.zeros(n_comp)
    vmax = np.full(n_comp, -np.inf)
    for j in range(nc):
        c = label[j]
        if not keep[c]:
            continue
        i = c_idx[j]
        wgt = c_val[j] - bg[c]
        inten[c] += wgt
        sf[c] += wgt * (i % cols + 0.5)
        sr[c] += wgt * ((i // cols) % rows_per_module + 0.5)
        vmax[c] = max(vmax[c], c_val[j])
    snr = np.zeros(n_comp)
    n_out = 0
    for c in range(n_comp):
        if not keep[c]:
            continue
        if not inten[c] > 0.0:
            keep[c] = False
            continue
        den = noise[c] * math.sqrt(npix[c])
        snr[c] = inten[c] / den if den > 0.0 else np.inf
        if snr[c] >= min_snr:
            n_out += 1
        else:
            keep[c] = False
    o_panel = np.empty(n_out, np.int16)
    o_fs = np.empty(n_out)
    o_ss = np.empty(n_out)
    o_int = np.empty(n_out)
    o_snr = np.empty(n_out)
    o_npix = np.empty(n_out, np.int32)
    o_bg = np.empty(n_out)
    o_max = np.empty(n_out)
    o_first = np.empty(n_out, np.int64)
    k = 0
    for c in range(n_comp):
        if keep[c]:
            o_panel[k] = panel[first[c]]
            o_fs[k] = sf[c] / inten[c]
            o_ss[k] = sr[c] / inten[c]
            o_int[k] = inten[c]
            o_snr[k] = snr[c]
            o_npix[k] = npix[c]
            o_bg[k] = bg[c]
            o_max[k] = vmax[c]
            o_first[k] = first[c]
            k += 1
    for j in range(nc):
        flag[c_idx[j]] = 0
    return o_panel, o_fs, o_ss, o_int, o_snr, o_npix, o_bg, o_max, o_first
