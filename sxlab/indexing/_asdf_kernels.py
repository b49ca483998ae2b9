"""Numba kernels of the asdf indexer (see :mod:`sxlab.indexing.asdf`).

Every kernel works on plain arrays and has a plain-NumPy counterpart in
``tests/reference/asdf.py``. Reciprocal-space points ``q`` are rows ``(x, y, z)`` in 1/Å;
a direct-lattice vector ``t`` (Å) fits a point when ``q · t`` is within ``tol`` of an
integer.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def triplet_histograms(q, trip, n_bins, hist, normals, widths, proj):
    """Histogram of the projections of all points on the normal of each triplet's plane.

    Parameters
    ----------
    q : float64 array (n, 3)
        Reciprocal-space points.
    trip : int64 array (m, 3)
        Indices of the three points of each triplet.
    n_bins : int
        Bins per histogram.
    hist : float array (>= m, n_bins)
        Output: row ``b`` holds the counts of the projections ``q · normal_b`` in
        ``n_bins`` equal bins spanning their minimum to maximum (the maximum falls in the
        last bin). All zero for a degenerate triplet.
    normals : float64 array (>= m, 3)
        Output: unit normal ``(q_j - q_i) × (q_k - q_i)`` normalised.
    widths : float64 array (>= m)
        Output: maximum minus minimum projection; 0 for a degenerate triplet (collinear
        points) or when all projections coincide.
    proj : float64 array (>= n)
        Work buffer.
    """
    n = q.shape[0]
    for b in range(trip.shape[0]):
        for m in range(n_bins):
            hist[b, m] = 0.0
        widths[b] = 0.0
        i = trip[b, 0]
        j = trip[b, 1]
        k = trip[b, 2]
        ax = q[j, 0] - q[i, 0]
        ay = q[j, 1] - q[i, 1]
        az = q[j, 2] - q[i, 2]
        bx = q[k, 0] - q[i, 0]
        by = q[k, 1] - q[i, 1]
        bz = q[k, 2] - q[i, 2]
        nx = ay * bz - az * by
        ny = az * bx - ax * bz
        nz = ax * by - ay * bx
        norm = np.sqrt(nx * nx + ny * ny + nz * nz)
        if not norm > 0.0:
            normals[b, 0] = 0.0
            normals[b, 1] = 0.0
            normals[b, 2] = 0.0
            continue
        nx /= norm
        ny /= norm
        nz /= norm
        normals[b, 0] = nx
        normals[b, 1] = ny
        normals[b, 2] = nz
        lo = np.inf
        hi = -np.inf
        for p in range(n):
            v = q[p, 0] * nx + q[p, 1] * ny + q[p, 2] * nz
            proj[p] = v
            if v < lo:
                lo = v
            if v > hi:
                hi = v
        width = hi - lo
        if not width > 0.0:
            continue
        widths[b] = width
        scale = n_bins / width
        for p in range(n):
            m = int((proj[p] - lo) * scale)
            if m >= n_bins:
                m = n_bins - 1
            hist[b, m] += 1.0


@numba.njit(cache=True)
def strongest_frequencies(spec, widths, min_len, max_len, freqs):
    """Strongest Fourier component in the allowed window of each row, to a fraction of a bin.

    Frequency ``f`` of a histogram spanning ``width`` (1/Å) is a repeat of ``width / f``
    along the normal, i.e. a direct-lattice vector of length ``f / width`` (Å). The window
    of integer indices is ``max(2, ceil(width · min_len))`` to
    ``min(n_freq - 1, floor(width · max_len))``; the index of largest ``|F|²`` (the lowest
    on ties) is refined by the vertex of the parabola through the magnitudes ``|F|`` at it
    and its two neighbours (when both exist; the shift is clipped to ±0.5).

    Parameters
    ----------
    spec : complex array (m, n_freq)
        Real FFTs of the histograms.
    widths : float64 array (>= m)
        Histogram spans; rows with width 0 are skipped.
    min_len, max_len : float
        Shortest and longest vector sought (Å).
    freqs : float64 array (>= m)
        Output: the refined frequency, or -1.0 when the window is empty or the row was
        skipped.
    """
    n_freq = spec.shape[1]
    for b in range(spec.shape[0]):
        freqs[b] = -1.0
        width = widths[b]
        if not width > 0.0:
            continue
        lo = int(np.ceil(width * min_len))
        if lo < 2:
            lo = 2
        hi = int(np.floor(width * max_len))
        if hi > n_freq - 1:
            hi = n_freq - 1
        best = -1.0
        best_f = -1
        for f in range(lo, hi + 1):
            re = spec[b, f].real
            im = spec[b, f].imag
            power = re * re + im * im
            if power > best:
                best = power
                best_f = f
        if best_f < 0:
            continue
        shift = 0.0
        if best_f + 1 < n_freq:
            m0 = np.sqrt(spec[b, best_f - 1].real ** 2 + spec[b, best_f - 1].imag ** 2)
            m1 = np.sqrt(best)
            m2 = np.sqrt(spec[b, best_f + 1].real ** 2 + spec[b, best_f + 1].imag ** 2)
            den = m0 - 2.0 * m1 + m2
            if den < 0.0:
                shift = 0.5 * (m0 - m2) / den
                if shift > 0.5:
                    shift = 0.5
                elif shift < -0.5:
                    shift = -0.5
        freqs[b] = best_f + shift


@numba.njit(cache=True)
def count_fits(q, t0, t1, t2, tol):
    """Number of points with ``|q · t - round(q · t)| < tol``."""
    count = 0
    for p in range(q.shape[0]):
        x = q[p, 0] * t0 + q[p, 1] * t1 + q[p, 2] * t2
        if abs(x - np.round(x)) < tol:
            count += 1
    return count


@numba.njit(cache=True)
def fit_vector(q, t, tol, n_iter):
    """Least-squares refinement of a direct-lattice vector against the points it fits.

    Each iteration takes the points with ``|q · t - m| < tol``, ``m = round(q · t)``, and
    replaces ``t`` (in place) by the solution of ``min Σ (q · t - m)²`` over them. It
    stops early when fewer than 3 points fit or the normal matrix is singular.

    Returns
    -------
    int
        Number of points the final ``t`` fits.
    """
    n = q.shape[0]
    for _ in range(n_iter):
        s00 = 0.0
        s01 = 0.0
        s02 = 0.0
        s11 = 0.0
        s12 = 0.0
        s22 = 0.0
        r0 = 0.0
        r1 = 0.0
        r2 = 0.0
        used = 0
        for p in range(n):
            qx = q[p, 0]
            qy = q[p, 1]
            qz = q[p, 2]
            x = qx * t[0] + qy * t[1] + qz * t[2]
            m = np.round(x)
            if abs(x - m) < tol:
                used += 1
                s00 += qx * qx
                s01 += qx * qy
                s02 += qx * qz
                s11 += qy * qy
                s12 += qy * qz
                s22 += qz * qz
                r0 += qx * m
                r1 += qy * m
                r2 += qz * m
        if used < 3:
            break
        c00 = s11 * s22 - s12 * s12
        c01 = s02 * s12 - s01 * s22
        c02 = s01 * s12 - s02 * s11
        det = s00 * c00 + s01 * c01 + s02 * c02
        scale = s00 * s11 * s22
        if not abs(det) > 1e-12 * scale:
            break
        c11 = s00 * s22 - s02 * s02
        c12 = s02 * s01 - s00 * s12
        c22 = s00 * s11 - s01 * s01
        t[0] = (c00 * r0 + c01 * r1 + c02 * r2) / det
        t[1] = (c01 * r0 + c11 * r1 + c12 * r2) / det
        t[2] = (c02 * r0 + c12 * r1 + c22 * r2) / det
    return count_fits(q, t[0], t[1], t[2], tol)


@numba.njit(cache=True)
def _scaled_fits(q, t, factor, tol):
    return count_fits(q, t[0] * factor, t[1] * factor, t[2] * factor, tol)


@numba.njit(cache=True)
def candidate_vectors(q, normals, widths, freqs, tol, n_iter, min_fit, pre_fit, min_len,
                      max_len, out_t, out_n):
    """Direct-lattice vectors from the strongest frequencies of the triplet histograms.

    For each row with ``freqs[b] >= 0``, the raw candidate ``t = normal · f / width`` is
    dropped if it fits fewer than ``pre_fit`` points as it is, else refined with
    :func:`fit_vector`; it is dropped if its length changed by more than a factor 2 in
    the fit or it fits fewer than ``0.6 * min_fit`` points. Harmonics are then
    corrected: if ``m · t`` (m = 2, 3) fits at least 1.5 times as many points, ``t`` was
    a fraction of a lattice vector and becomes ``m · t``; if ``t / m`` (m = 3, 2) fits at
    least 0.8 times as many points, ``t`` was a multiple and becomes ``t / m`` (each
    refitted). The vector is kept if it fits at least ``min_fit`` points and its length
    is within ``[min_len, max_len]``, with the sign that makes its largest component
    positive.

    Returns
    -------
    int
        Number of vectors written to ``out_t`` (rows) and their fit counts to ``out_n``.
    """
    n_out = 0
    t = np.empty(3)
    for b in range(freqs.shape[0]):
        f = freqs[b]
        if f < 0.0:
            continue
        length0 = f / widths[b]
        for c in range(3):
            t[c] = normals[b, c] * length0
        if count_fits(q, t[0], t[1], t[2], tol) < pre_fit:
            continue
        n_fit = fit_vector(q, t, tol, n_iter)
        length = np.sqrt(t[0] * t[0] + t[1] * t[1] + t[2] * t[2])
        if not (length >= 0.5 * length0 and length <= 2.0 * length0):
            continue
        if n_fit < 0.6 * min_fit:
            continue
        for m in (2, 3):
            if _scaled_fits(q, t, float(m), tol) >= 1.5 * n_fit:
                for c in range(3):
                    t[c] *= m
                n_fit = fit_vector(q, t, tol, n_iter)
                break
        for m in (3, 2):
            if _scaled_fits(q, t, 1.0 / m, tol) >= 0.8 * n_fit:
                for c in range(3):
                    t[c] /= m
                n_fit = fit_vector(q, t, tol, n_iter)
                break
        length = np.sqrt(t[0] * t[0] + t[1] * t[1] + t[2] * t[2])
        if n_fit < min_fit or not (length >= min_len and length <= max_len):
            continue
        big = 0
        for c in range(1, 3):
            if abs(t[c]) > abs(t[big]):
                big = c
        sign = 1.0 if t[big] >= 0.0 else -1.0
        for c in range(3):
            out_t[n_out, c] = sign * t[c]
        out_n[n_out] = n_fit
        n_out += 1
    return n_out


@numba.njit(cache=True)
def merge_vectors(store, store_n, n_store, new_t, new_n, n_new, cos_min, rel_len):
    """Add vectors to a store, merging parallel or antiparallel ones of similar length.

    A new vector duplicates a stored one when ``|cos angle| >= cos_min`` and their lengths
    differ by at most ``rel_len`` times the stored length; the one fitting more points
    (the stored one on ties) is kept, with the stored vector's sign. Vectors beyond the
    store's capacity are dropped.

    Returns
    -------
    n_store : int
        Number of stored vectors afterwards.
    n_added : int
        Number of new entries (replacements of duplicates not counted).
    """
    capacity = store.shape[0]
    n_added = 0
    for i in range(n_new):
        tx = new_t[i, 0]
        ty = new_t[i, 1]
        tz = new_t[i, 2]
        length = np.sqrt(tx * tx + ty * ty + tz * tz)
        dup = -1
        for j in range(n_store):
            wx = store[j, 0]
            wy = store[j, 1]
            wz = store[j, 2]
            lw = np.sqrt(wx * wx + wy * wy + wz * wz)
            dot = tx * wx + ty * wy + tz * wz
            if abs(dot) >= cos_min * length * lw and abs(length - lw) <= rel_len * lw:
                dup = j
                break
        if dup >= 0:
            if new_n[i] > store_n[dup]:
                dot = tx * store[dup, 0] + ty * store[dup, 1] + tz * store[dup, 2]
                sign = 1.0 if dot >= 0.0 else -1.0
                store[dup, 0] = sign * tx
                store[dup, 1] = sign * ty
                store[dup, 2] = sign * tz
                store_n[dup] = new_n[i]
        elif n_store < capacity:
            store[n_store, 0] = tx
            store[n_store, 1] = ty
            store[n_store, 2] = tz
            store_n[n_store] = new_n[i]
            n_store += 1
            n_added += 1
    return n_store, n_added


@numba.njit(cache=True)
def count_explained(q, basis, tol):
    """Number of points whose three indices ``q · a``, ``q · b``, ``q · c`` are all within
    ``tol`` of integers (``basis`` rows a, b, c in Å)."""
    count = 0
    for p in range(q.shape[0]):
        ok = True
        for r in range(3):
            x = q[p, 0] * basis[r, 0] + q[p, 1] * basis[r, 1] + q[p, 2] * basis[r, 2]
            if not abs(x - np.round(x)) < tol:
                ok = False
                break
        if ok:
            count += 1
    return count
