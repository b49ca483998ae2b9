"""Numba kernels of :mod:`sxlab.merging`: per-crystal scale refinement and the indexing
ambiguity resolver.

Observations are sorted by crystal; crystal ``c`` owns rows ``start[c]:stop[c]``.
Plain-NumPy references: ``tests/reference/merge.py``.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _scale_cost(i_obs, w, s2, y, use, lo, hi, g, b):
    cost = 0.0
    for i in range(lo, hi):
        if use[i]:
            r = i_obs[i] - g * np.exp(-2.0 * b * s2[i]) * y[i]
            cost += w[i] * r * r
    return cost


@numba.njit(cache=True, nogil=True)
def refine_scales(start, stop, i_obs, w, s2, y, use, g, b, n_used, max_iter):
    """Weighted least-squares scale ``G`` and relative B of every crystal, in place.

    Per crystal, minimises ``Σ w (I - G exp(-2 B s²) y)²`` over its rows with ``use``
    set, ``y`` being the reference (merged) intensity of each row's unique reflection.
    Starts from the closed-form ``G`` at the given ``B`` and runs up to ``max_iter``
    Gauss-Newton steps in ``(G, B)``, halving a step (up to 30 times) while it does not
    lower the cost. ``g`` and ``b`` (float64) hold the starting values and receive the
    result; ``n_used`` (int64) receives the rows used. A crystal with fewer than two rows,
    or whose normal equations are singular, gets NaN.
    """
    for c in range(start.size):
        lo = start[c]
        hi = stop[c]
        n = 0
        for i in range(lo, hi):
            if use[i]:
                n += 1
        n_used[c] = n
        bc = b[c] if np.isfinite(b[c]) else 0.0
        if n < 2:
            g[c] = np.nan
            b[c] = np.nan
            continue
        num = 0.0
        den = 0.0
        for i in range(lo, hi):
            if use[i]:
                m = np.exp(-2.0 * bc * s2[i]) * y[i]
                num += w[i] * i_obs[i] * m
                den += w[i] * m * m
        if not den > 0.0:
            g[c] = np.nan
            b[c] = np.nan
            continue
        gc = num / den
        cost = _scale_cost(i_obs, w, s2, y, use, lo, hi, gc, bc)
        gn = gc
        bn = bc
        cn = cost
        ok = True
        for _ in range(max_iter):
            a11 = 0.0
            a12 = 0.0
            a22 = 0.0
            r1 = 0.0
            r2 = 0.0
            for i in range(lo, hi):
                if use[i]:
                    f = np.exp(-2.0 * bc * s2[i]) * y[i]
                    model = gc * f
                    r = i_obs[i] - model
                    jb = -2.0 * s2[i] * model
                    a11 += w[i] * f * f
                    a12 += w[i] * f * jb
                    a22 += w[i] * jb * jb
                    r1 += w[i] * f * r
                    r2 += w[i] * jb * r
            det = a11 * a22 - a12 * a12
            if not det > 1e-12 * a11 * a22:
                ok = False
                break
            dg = (a22 * r1 - a12 * r2) / det
            db = (a11 * r2 - a12 * r1) / det
            step = 1.0
            improved = False
            for _ in range(30):
                gn = gc + step * dg
                bn = bc + step * db
                cn = _scale_cost(i_obs, w, s2, y, use, lo, hi, gn, bn)
                if cn <= cost:
                    improved = True
                    break
                step *= 0.5
            if not improved:
                break
            converged = abs(step * dg) <= 1e-9 * abs(gc) and abs(step * db) <= 1e-7
            gc = gn
            bc = bn
            cost = cn
            if converged:
                break
        if ok:
            g[c] = gc
            b[c] = bc
        else:
            g[c] = np.nan
            b[c] = np.nan


@numba.njit(cache=True, nogil=True)
def _crystal_cc(start, stop, x, u_op, sums, counts, c, min_overlap):
    """Pearson CC of crystal ``c``'s values with the reference means at ``u_op``."""
    n = 0
    sx = 0.0
    sy = 0.0
    sxx = 0.0
    syy = 0.0
    sxy = 0.0
    for i in range(start[c], stop[c]):
        u = u_op[i]
        if u < 0 or counts[u] == 0:
            continue
        yv = sums[u] / counts[u]
        xv = x[i]
        n += 1
        sx += xv
        sy += yv
        sxx += xv * xv
        syy += yv * yv
        sxy += xv * yv
    if n < min_overlap:
        return np.nan
    vx = sxx - sx * sx / n
    vy = syy - sy * sy / n
    if not (vx > 0.0 and vy > 0.0):
        return np.nan
    return (sxy - sx * sy / n) / np.sqrt(vx * vy)


@numba.njit(cache=True, nogil=True)
def _add_crystal(start, stop, x, u_op, sums, counts, c, sign):
    for i in range(start[c], stop[c]):
        u = u_op[i]
        if u >= 0:
            sums[u] += sign * x[i]
            counts[u] += sign


@numba.njit(cache=True, nogil=True)
def resolve_ambiguity(start, stop, order, u_alt, x, n_unique, n_passes, min_overlap):
    """Choose, per crystal, the reindexing operator that agrees best with the others.

    ``u_alt[o, i]`` is the unique-reflection index (-1: none) of row ``i`` after operator
    ``o`` (0: identity); ``x`` the rows' normalised intensities. The first pass visits
    the crystals in ``order`` and compares each with the merged set of the crystals
    visited before it (a growing reference; the first crystal keeps operator 0); every
    later pass takes each crystal out of the merged set of all crystals, compares and
    puts it back with the operator of the highest CC. A crystal overlapping the reference
    in fewer than ``min_overlap`` reflections under every operator keeps its operator.
    Stops after ``n_passes`` later passes or one without a change.

    Returns ``(assign, best_cc, changes)``: the operator per crystal (int64), the CC it
    reached (NaN: undecided) and the number of changed crystals per later pass (-1 for
    passes not run).
    """
    n_ops = u_alt.shape[0]
    n_cryst = start.size
    sums = np.zeros(n_unique, np.float64)
    counts = np.zeros(n_unique, np.int64)
    assign = np.zeros(n_cryst, np.int64)
    best_cc = np.full(n_cryst, np.nan)
    changes = np.full(max(n_passes, 0), -1, np.int64)
    for j in range(n_cryst):
        c = order[j]
        best = 0
        top = np.nan
        for o in range(n_ops):
            cc = _crystal_cc(start, stop, x, u_alt[o], sums, counts, c, min_overlap)
            if np.isfinite(cc) and (not np.isfinite(top) or cc > top):
                top = cc
                best = o
        assign[c] = best
        best_cc[c] = top
        _add_crystal(start, stop, x, u_alt[best], sums, counts, c, 1)
    for p in range(n_passes):
        changed = 0
        for j in range(n_cryst):
            c = order[j]
            cur = assign[c]
            _add_crystal(start, stop, x, u_alt[cur], sums, counts, c, -1)
            best = cur
            top = _crystal_cc(start, stop, x, u_alt[cur], sums, counts, c, min_overlap)
            for o in range(n_ops):
                if o == cur:
                    continue
                cc = _crystal_cc(start, stop, x, u_alt[o], sums, counts, c, min_overlap)
                if np.isfinite(cc) and (not np.isfinite(top) or cc > top):
                    top = cc
                    best = o
            if best != cur:
                changed += 1
            assign[c] = best
            best_cc[c] = top
            _add_crystal(start, stop, x, u_alt[best], sums, counts, c, 1)
        changes[p] = changed
        if changed == 0:
            break
    return assign, best_cc, changes
