"""Numba kernels of :mod:`sxlab.binning` (plain arrays in, plain arrays out).

Layout rows (int64, one per panel): ``slab, ss0, fs0, ssb0, fsb0, hb, wb`` — the panel's
first unbinned pixel (slab, ss0, fs0), its first binned pixel (slab, ssb0, fsb0) and its
binned size. Images are 3-D ``(slab, ss, fs)``; 2-D frames are passed with a leading axis
of length 1. Plain-NumPy references: ``tests/reference/binning.py``.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def bin_sum(image, bad1, has_bad1, bad2, has_bad2, layout, factor, max_bad, rescale,
            out, out_bad):
    """Sum ``factor`` × ``factor`` blocks of good pixels of every panel.

    A pixel is bad if ``bad1`` or ``bad2`` (when given) is True there or its value is not
    finite; bad pixels contribute nothing. A binned pixel is bad when more than
    ``max_bad`` of its pixels are bad: it gets value 0 and ``out_bad`` True. Otherwise
    its value is the sum of the good pixels, times ``factor² / n_good`` when ``rescale``
    (so a partly masked block estimates the full block's sum).

    Works row by row: the good values and bad flags of one unbinned row are gathered in
    contiguous buffers, then folded into the binned row with the factor as the outer loop
    (which lets the compiler vectorise both steps).
    """
    f2 = factor * factor
    wmax = 1
    for k in range(layout.shape[0]):
        wmax = max(wmax, layout[k, 6])
    val = np.empty(wmax * factor, np.float64)
    flag = np.empty(wmax * factor, np.uint8)
    acc = np.empty(wmax, np.float64)
    nbad = np.empty(wmax, np.int64)
    for k in range(layout.shape[0]):
        slab = layout[k, 0]
        ss0 = layout[k, 1]
        fs0 = layout[k, 2]
        ssb0 = layout[k, 3]
        fsb0 = layout[k, 4]
        hb = layout[k, 5]
        wb = layout[k, 6]
        w = wb * factor
        for bs in range(hb):
            acc[:wb] = 0.0
            nbad[:wb] = 0
            for i in range(factor):
                row = ss0 + bs * factor + i
                img = image[slab, row, fs0 : fs0 + w]
                for c in range(w):
                    v = np.float64(img[c])
                    flag[c] = not np.isfinite(v)
                if has_bad1:
                    b1 = bad1[slab, row, fs0 : fs0 + w]
                    for c in range(w):
                        flag[c] |= b1[c]
                if has_bad2:
                    b2 = bad2[slab, row, fs0 : fs0 + w]
                    for c in range(w):
                        flag[c] |= b2[c]
                for c in range(w):
                    val[c] = 0.0 if flag[c] else np.float64(img[c])
                for j in range(factor):
                    for bf in range(wb):
                        acc[bf] += val[bf * factor + j]
                        nbad[bf] += flag[bf * factor + j]
            orow = out[slab, ssb0 + bs]
            brow = out_bad[slab, ssb0 + bs]
            for bf in range(wb):
                n = nbad[bf]
                if n > max_bad:
                    orow[fsb0 + bf] = 0.0
                    brow[fsb0 + bf] = True
                else:
                    t = acc[bf]
                    if rescale and 0 < n < f2:
                        t *= f2 / (f2 - n)
                    orow[fsb0 + bf] = t
                    brow[fsb0 + bf] = False


@numba.njit(cache=True, nogil=True)
def count_bad(bad, layout, factor, out):
    """Number of bad pixels in every ``factor`` × ``factor`` block of every panel."""
    for k in range(layout.shape[0]):
        slab = layout[k, 0]
        ss0 = layout[k, 1]
        fs0 = layout[k, 2]
        ssb0 = layout[k, 3]
        fsb0 = layout[k, 4]
        for bs in range(layout[k, 5]):
            for bf in range(layout[k, 6]):
                n = 0
                for i in range(factor):
                    row = ss0 + bs * factor + i
                    col = fs0 + bf * factor
                    for j in range(factor):
                        if bad[slab, row, col + j]:
                            n += 1
                out[slab, ssb0 + bs, fsb0 + bf] = n



@numba.njit(cache=True, nogil=True, inline="always")
def _finish_pixel(total, n, f2, max_bad, rescale, orow, brow, b):
    if n > max_bad:
        orow[b] = 0.0
        brow[b] = True
    else:
        t = np.float64(total)
        if rescale and 0 < n < f2:
            t *= f2 / (f2 - n)
        orow[b] = t
        brow[b] = False


@numba.njit(cache=True, nogil=True)
def _bin_raw_rows2(r0, r1, m0, m1, threshold, wb, max_bad, rescale, orow, brow):
    """One binned row of a 2 × 2 binning (the common case, unrolled)."""
    zero = np.int64(0)
    for b in range(wb):
        c = 2 * b
        p, q, u, v = r0[c], r0[c + 1], r1[c], r1[c + 1]
        fp = (p >= threshold) | m0[c]
        fq = (q >= threshold) | m0[c + 1]
        fu = (u >= threshold) | m1[c]
        fv = (v >= threshold) | m1[c + 1]
        total = ((zero if fp else np.int64(p)) + (zero if fq else np.int64(q))
                 + (zero if fu else np.int64(u)) + (zero if fv else np.int64(v)))
        n = np.int64(fp) + np.int64(fq) + np.int64(fu) + np.int64(fv)
        _finish_pixel(total, n, 4, max_bad, rescale, orow, brow, b)


@numba.njit(cache=True, nogil=True)
def _bin_raw_columns(raw, static, slab, row, c0, w, factor, threshold, total, count):
    """Good-pixel sums and bad-pixel counts of ``factor`` rows, column by column."""
    total[:w] = 0
    count[:w] = 0
    for i in range(factor):
        r = raw[slab, row + i, c0:c0 + w]
        m = static[slab, row + i, c0:c0 + w]
        for c in range(w):
            v = r[c]
            f = (v >= threshold) | m[c]
            total[c] += 0 if f else np.int64(v)
            count[c] += f


@numba.njit(cache=True, nogil=True)
def bin_raw(raw, threshold, static, layout, factor, max_bad, rescale, out, out_bad):
    """:func:`bin_sum` of a stored unsigned frame, its value flags found on the way.

    A pixel is bad when ``raw >= threshold`` (the detector's flag values) or ``static``
    (uint8, 1 = bad; same shape as ``raw``) is set there; otherwise as :func:`bin_sum`,
    whose result this equals for ``bin_sum(raw, static, value_flags(raw))``. Sums are
    accumulated in integers (exact) and each binned pixel is written once, so one pass
    over the stored frame replaces conversion, flagging and binning. 2 × 2 is unrolled;
    other factors sum each block's rows column by column first (contiguous loops), then
    fold the columns.
    """
    f2 = factor * factor
    wmax = 1
    for k in range(layout.shape[0]):
        wmax = max(wmax, layout[k, 6])
    total = np.empty(wmax * factor, np.int64)
    count = np.empty(wmax * factor, np.int64)
    for k in range(layout.shape[0]):
        slab, ss0, fs0, ssb0, fsb0, hb, wb = layout[k]
        w = wb * factor
        for bs in range(hb):
            row = ss0 + bs * factor
            orow = out[slab, ssb0 + bs, fsb0:fsb0 + wb]
            brow = out_bad[slab, ssb0 + bs, fsb0:fsb0 + wb]
            if factor == 2:
                _bin_raw_rows2(raw[slab, row, fs0:fs0 + w], raw[slab, row + 1, fs0:fs0 + w],
                               static[slab, row, fs0:fs0 + w],
                               static[slab, row + 1, fs0:fs0 + w], threshold, wb, max_bad,
                               rescale, orow, brow)
                continue
            _bin_raw_columns(raw, static, slab, row, fs0, w, factor, threshold, total, count)
            for b in range(wb):
                t = np.int64(0)
                n = np.int64(0)
                for j in range(b * factor, (b + 1) * factor):
                    t += total[j]
                    n += count[j]
                _finish_pixel(t, n, f2, max_bad, rescale, orow, brow, b)
