"""Numba kernels of :mod:`sxlab.integration`.

Every kernel works on plain, C-contiguous arrays. A frame is a 2-D array of shape
``(rows, cols)``: a 2-D ``(ss, fs)`` frame has ``rows = ss``; a stacked ``(module, ss, fs)``
frame is viewed as ``(module * ss, fs)``, and a panel of module ``m`` starts at row
``m * ss``.

Static pixel information is one ``uint8`` array ``good`` (1 = usable: not masked, not a
geometry bad pixel, on a panel). Per-frame bad pixels come as a boolean array ``bad``
(True = bad) with a flag ``has_bad``; when the flag is False the array is a placeholder and
never read. Non-finite values of float images count as bad pixels.

Summation order is fixed, so results are reproducible bit for bit on one machine.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    "FLAG_EDGE",
    "FLAG_MASKED",
    "FLAG_OVERLAP",
    "FLAG_SATURATED",
    "lattice_candidates",
    "neighbours",
    "ring_integrate",
]

#: Bits of the ``flags`` array returned by :func:`ring_integrate`.
FLAG_MASKED = 1
FLAG_SATURATED = 2
FLAG_EDGE = 4
FLAG_OVERLAP = 8

_L_SLACK = 1e-6


# ------------------------------------------------------------------------- prediction
@njit(cache=True, nogil=True)
def _append(out, n, i0, i1, j, m, k, l):
    if n < out.shape[0]:
        out[n, i0] = m
        out[n, i1] = k
        out[n, j] = l
    return n + 1


@njit(cache=True, nogil=True)
def _scan_l(amat, i0, i1, j, m, n, lo, hi, k0, r_max, q_max2, out, count):
    """Append the indices with ``lo <= l <= hi`` that pass the exact tests."""
    l_first = int(math.ceil(lo - _L_SLACK))
    l_last = int(math.floor(hi + _L_SLACK))
    for l in range(l_first, l_last + 1):
        if m == 0 and n == 0 and l == 0:
            continue
        qx = m * amat[i0, 0] + n * amat[i1, 0] + l * amat[j, 0]
        qy = m * amat[i0, 1] + n * amat[i1, 1] + l * amat[j, 1]
        qz = m * amat[i0, 2] + n * amat[i1, 2] + l * amat[j, 2]
        q2 = qx * qx + qy * qy + qz * qz
        if q2 > q_max2:
            continue
        pz = qz + k0
        s = k0 - math.sqrt(qx * qx + qy * qy + pz * pz)
        if abs(s) > r_max:
            continue
        count = _append(out, count, i0, i1, j, m, n, l)
    return count


@njit(cache=True, nogil=True)
def lattice_candidates(amat, i0, i1, j, m_max, n_max, k0, r_max, q_max2, out):
    """Reciprocal-lattice points near the Ewald sphere and inside a resolution sphere.

    Lists every integer ``hkl`` other than 0 0 0 with ``|q| <= sqrt(q_max2)`` and
    ``|k0 - |q + k0 ẑ|| <= r_max``, where ``q = hkl @ amat``. Indices ``i0`` and ``i1``
    run over ``-m_max..m_max`` and ``-n_max..n_max``; for each pair the range of the third
    index ``j`` is found by solving the quadratics ``|q + k0 ẑ|² = (k0 ± r_max)²`` and
    ``|q|² = q_max2`` in it, so the cost grows with the number of pairs, not of points.

    Parameters
    ----------
    amat : float64 array (3, 3)
        Reciprocal basis, rows a*, b*, c* (1/Å).
    i0, i1, j : int
        A permutation of 0, 1, 2: the two enumerated indices and the solved one.
    m_max, n_max : int
        Bounds of indices ``i0`` and ``i1`` (``|h_i| <= |direct vector i| · q_max``).
    k0 : float
        Wavenumber (1/Å).
    r_max : float
        Largest accepted ``|s|`` (1/Å).
    q_max2 : float
        Largest accepted ``|q|²`` (1/Å²).
    out : int32 array (cap, 3)
        Receives the indices (rows beyond its length are counted, not written).

    Returns
    -------
    int
        Number of points found (may exceed ``cap``: call again with a larger ``out``).
    """
    cx = amat[j, 0]
    cy = amat[j, 1]
    cz = amat[j, 2]
    cc = cx * cx + cy * cy + cz * cz
    r_out2 = (k0 + r_max) ** 2
    r_in2 = (k0 - r_max) ** 2
    count = 0
    for m in range(-m_max, m_max + 1):
        for n in range(-n_max, n_max + 1):
            q0x = m * amat[i0, 0] + n * amat[i1, 0]
            q0y = m * amat[i0, 1] + n * amat[i1, 1]
            q0z = m * amat[i0, 2] + n * amat[i1, 2]
            # Resolution sphere |q0 + l c|² <= q_max2.
            qb = q0x * cx + q0y * cy + q0z * cz
            q0q0 = q0x * q0x + q0y * q0y + q0z * q0z
            disc = qb * qb - cc * (q0q0 - q_max2)
            if disc < 0.0:
                continue
            root = math.sqrt(disc)
            w1 = (-qb - root) / cc
            w2 = (-qb + root) / cc
            # Outer limiting sphere |p0 + l c|² <= (k0 + r_max)², p0 = q0 + k0 ẑ.
            p0z = q0z + k0
            pb = q0x * cx + q0y * cy + p0z * cz
            p0p0 = q0x * q0x + q0y * q0y + p0z * p0z
            disc = pb * pb - cc * (p0p0 - r_out2)
            if disc < 0.0:
                continue
            root = math.sqrt(disc)
            u1 = max((-pb - root) / cc, w1)
            u2 = min((-pb + root) / cc, w2)
            if u1 > u2 + _L_SLACK:
                continue
            # Inner limiting sphere: points strictly inside it are too far from the sphere.
            disc = pb * pb - cc * (p0p0 - r_in2)
            if r_max < k0 and disc > 0.0:
                root = math.sqrt(disc)
                v1 = (-pb - root) / cc
                v2 = (-pb + root) / cc
                count = _scan_l(amat, i0, i1, j, m, n, u1, min(v1, u2), k0, r_max,
                                q_max2, out, count)
                count = _scan_l(amat, i0, i1, j, m, n, max(v2, u1), u2, k0, r_max,
                                q_max2, out, count)
            else:
                count = _scan_l(amat, i0, i1, j, m, n, u1, u2, k0, r_max, q_max2, out,
                                count)
    return count


# ------------------------------------------------------------------------ integration
#: Values of the gathered usability box.
_UNUSABLE = 0
_USABLE = 1
_OUTSIDE = 2


@njit(cache=True, nogil=True)
def neighbours(rows, cols, panel, reach):
    """Pairs of reflections on the same panel whose centres differ by at most ``reach``
    pixels along both axes.

    Returns ``(start, index)`` in compressed form: the neighbours of reflection ``i`` are
    ``index[start[i]:start[i + 1]]``, in increasing order of their row (ties by index).
    """
    n = rows.shape[0]
    order = np.argsort(rows, kind="mergesort")
    count = np.zeros(n + 1, dtype=np.int64)
    for a in range(n):
        i = order[a]
        for b in range(a + 1, n):
            j = order[b]
            if rows[j] - rows[i] > reach:
                break
            if panel[j] == panel[i] and abs(cols[j] - cols[i]) <= reach:
                count[i + 1] += 1
                count[j + 1] += 1
    start = np.cumsum(count)
    index = np.empty(start[n], dtype=np.int64)
    fill = start[:n].copy()
    for a in range(n):
        i = order[a]
        for b in range(a + 1, n):
            j = order[b]
            if rows[j] - rows[i] > reach:
                break
            if panel[j] == panel[i] and abs(cols[j] - cols[i]) <= reach:
                index[fill[i]] = j
                fill[i] += 1
                index[fill[j]] = i
                fill[j] += 1
    return start, index


@njit(cache=True, nogil=True)
def ring_integrate(image, good, bad, has_bad, rows, cols, panel, bounds, classes, pk_dr, pk_dc,
                   gain, saturation):
    """Three-ring summation integration of many reflections in one frame.

    Reflection ``i`` is centred on pixel ``(rows[i], cols[i])`` of panel ``panel[i]``. The
    square ``classes`` (side ``2h + 1``) gives the role of each pixel offset from the
    centre: 1 peak, 2 background, 0 unused; ``(pk_dr, pk_dc)`` lists the peak offsets.
    Only pixels inside the panel's ``bounds`` are used. Each reflection is measured:

    * usable peak pixels (good, not bad, finite) are summed (``n_peak`` pixels, sum
      ``S``, largest value ``peak``); an unusable one sets :data:`FLAG_MASKED`, one at or
      above the panel's ``saturation`` :data:`FLAG_SATURATED`, one that also lies in the
      peak region of another reflection of the same panel :data:`FLAG_OVERLAP`;
    * usable background pixels in no other reflection's peak region give the mean ``bg``
      and unbiased variance ``var`` (``n_bg`` pixels, at least 2 needed);
    * a peak or background offset outside the panel sets :data:`FLAG_EDGE`;
    * ``I = S - n_peak · bg`` and
      ``sigma² = max(gain · max(I, 0) + n_peak · var · (1 + n_peak / n_bg), gain²)``.

    Parameters
    ----------
    image : 2-D array (rows, cols), any real dtype
    good : uint8 array (rows, cols)
        1 for usable pixels.
    bad : bool array (rows, cols)
        Per-frame bad pixels (read only if ``has_bad``).
    has_bad : bool
    rows, cols, panel : int64 arrays (n,)
        Centre pixel (2-D array coordinates) and panel of each reflection.
    bounds : int64 array (n_panels, 4)
        Inclusive first row, last row, first column, last column of each panel.
    classes : int8 array (2h + 1, 2h + 1)
        Role of each offset ``(dr, dc)`` at ``[dr + h, dc + h]``.
    pk_dr, pk_dc : int64 arrays
        Peak offsets (those with class 1).
    gain, saturation : float64 arrays (n_panels,)
        ADU per photon and saturation level (ADU) of each panel.

    Returns
    -------
    intensity, sigma, bg, peak : float64 arrays (n,)
        NaN where ``n_peak`` is 0 or ``n_bg`` below 2 (``peak`` only where ``n_peak`` is
        0).
    n_peak, n_bg : int32 arrays (n,)
    flags : uint8 arrays (n,)
        Bit set of :data:`FLAG_MASKED`, :data:`FLAG_SATURATED`, :data:`FLAG_EDGE`,
        :data:`FLAG_OVERLAP`.
    """
    n = rows.shape[0]
    side = classes.shape[0]
    h = side // 2
    n_pk = pk_dr.shape[0]
    reach_pk = 0
    for t in range(n_pk):
        reach_pk = max(reach_pk, abs(pk_dr[t]), abs(pk_dc[t]))
    start, nbr = neighbours(rows, cols, panel, h + reach_pk)

    out_i = np.full(n, np.nan)
    out_sig = np.full(n, np.nan)
    out_bg = np.full(n, np.nan)
    out_peak = np.full(n, np.nan)
    out_np = np.zeros(n, dtype=np.int32)
    out_nb = np.zeros(n, dtype=np.int32)
    flags = np.zeros(n, dtype=np.uint8)
    vals = np.empty((side, side), dtype=np.float64)
    use = np.empty((side, side), dtype=np.uint8)
    other = np.zeros((side, side), dtype=np.uint8)

    for i in range(n):
        p = panel[i]
        r_lo = bounds[p, 0]
        r_hi = bounds[p, 1]
        c_lo = bounds[p, 2]
        c_hi = bounds[p, 3]
        r0 = rows[i] - h
        c0 = cols[i] - h
        for a in range(side):
            r = r0 + a
            row_in = r_lo <= r <= r_hi
            for b in range(side):
                c = c0 + b
                if row_in and c_lo <= c <= c_hi:
                    vals[a, b] = image[r, c]
                    ok = good[r, c] != 0
                    if has_bad:
                        ok = ok and not bad[r, c]
                    use[a, b] = _USABLE if ok else _UNUSABLE
                else:
                    use[a, b] = _OUTSIDE
        other[:, :] = 0
        for e in range(start[i], start[i + 1]):
            j = nbr[e]
            dr = rows[j] - rows[i] + h
            dc = cols[j] - cols[i] + h
            for t in range(n_pk):
                a = dr + pk_dr[t]
                b = dc + pk_dc[t]
                if 0 <= a < side and 0 <= b < side:
                    other[a, b] = 1

        sat = saturation[p]
        f = 0
        total = 0.0
        n_peak = 0
        vmax = -np.inf
        shift = 0.0
        s1 = 0.0
        s2 = 0.0
        n_bg = 0
        for a in range(side):
            for b in range(side):
                role = classes[a, b]
                if role == 0:
                    continue
                u = use[a, b]
                if u == _OUTSIDE:
                    f |= FLAG_EDGE
                    continue
                v = vals[a, b]
                usable = u == _USABLE and math.isfinite(v)
                if role == 1:
                    if not usable:
                        f |= FLAG_MASKED
                        continue
                    if other[a, b]:
                        f |= FLAG_OVERLAP
                    if v >= sat:
                        f |= FLAG_SATURATED
                    total += v
                    n_peak += 1
                    if v > vmax:
                        vmax = v
                elif usable and not other[a, b]:
                    if n_bg == 0:
                        shift = v
                    d = v - shift
                    s1 += d
                    s2 += d * d
                    n_bg += 1
        flags[i] = f
        out_np[i] = n_peak
        out_nb[i] = n_bg
        if n_peak > 0:
            out_peak[i] = vmax
        if n_peak > 0 and n_bg >= 2:
            mean = shift + s1 / n_bg
            var = max((s2 - s1 * s1 / n_bg) / (n_bg - 1), 0.0)
            inten = total - n_peak * mean
            var_i = gain[p] * max(inten, 0.0) + n_peak * var * (1.0 + n_peak / n_bg)
            var_i = max(var_i, gain[p] * gain[p])
            out_i[i] = inten
            out_sig[i] = math.sqrt(var_i)
            out_bg[i] = mean
    return out_i, out_sig, out_bg, out_peak, out_np, out_nb, flags
