"""Numba kernels of the direction sweep (see :mod:`sxlab.indexing.sweep`).

Every kernel works on plain arrays and has a plain-NumPy counterpart in
``tests/reference/sweep.py``. Reciprocal-space points ``q`` are rows ``(x, y, z)`` in 1/Å;
a direct-lattice vector ``t`` (Å) fits a point when ``q · t`` is close to an integer.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, fastmath=True, inline="always")
def _cos2pi(f):
    """``cos(2π f)`` for ``|f| <= 0.5`` (even Taylor polynomial to degree 12)."""
    z = (2.0 * math.pi * f) ** 2
    return 1.0 + z * (-1.0 / 2 + z * (1.0 / 24 + z * (-1.0 / 720 + z * (
        1.0 / 40320 + z * (-1.0 / 3628800 + z * (1.0 / 479001600))))))


@numba.njit(cache=True, fastmath=True)
def direction_scores(qt, weights, directions, lengths, out):
    """Lattice score of every direction for every vector length.

    ``out[m, l] = Σ_i weights[l, i] cos(2π lengths[l] (q_i · directions[m]))``, the
    Fourier component of the projections at the period of a lattice vector of that
    length: ``Σ_i weights[l, i]`` when every projection is a multiple of
    ``1 / lengths[l]``, 0 on average for points at random. The cosine is a polynomial
    in ``f = y - round(y)`` (Taylor to ``(2πf)¹²``, error below 3e-5), which vectorises.

    Parameters
    ----------
    qt : float64 array (3, n)
        The points, transposed (rows x, y, z).
    weights : float64 array (n_lengths, n)
    directions : float64 array (m, 3)
        Unit vectors.
    lengths : float64 array (n_lengths,)
        Vector lengths (Å).
    out : float64 array (m, n_lengths)
        Output.
    """
    n = qt.shape[1]
    x = np.empty(n)
    for m in range(directions.shape[0]):
        dx, dy, dz = directions[m, 0], directions[m, 1], directions[m, 2]
        for i in range(n):
            x[i] = qt[0, i] * dx + qt[1, i] * dy + qt[2, i] * dz
        for li in range(lengths.shape[0]):
            length = lengths[li]
            acc = 0.0
            for i in range(n):
                y = length * x[i]
                f = y - math.floor(y + 0.5)
                acc += weights[li, i] * _cos2pi(f)
            out[m, li] = acc


@numba.njit(cache=True)
def pick_separated(directions, order, cos_sep, k, out):
    """Greedy choice of up to ``k`` directions, in ``order``, pairwise apart.

    A direction is taken when ``|d · e| < cos_sep`` for every direction ``e`` taken
    before it (``d`` and ``-d`` count as the same). Writes the chosen positions of
    ``order`` into ``out`` and returns how many.
    """
    n_out = 0
    for a in range(order.shape[0]):
        m = order[a]
        ok = True
        for b in range(n_out):
            e = order[out[b]]
            c = (directions[m, 0] * directions[e, 0] + directions[m, 1] * directions[e, 1]
                 + directions[m, 2] * directions[e, 2])
            if abs(c) >= cos_sep:
                ok = False
                break
        if ok:
            out[n_out] = a
            n_out += 1
            if n_out == k:
                break
    return n_out


@numba.njit(cache=True)
def refine_vectors(q, t, sigmas, out_t, out_n, tol):
    """Least-squares refinement of direct-lattice vectors against the points.

    For each starting vector ``t[j]`` and each width ``s`` of ``sigmas`` in turn: every
    point gets the integer ``m_i = round(q_i · t)`` and the weight
    ``exp(-(q_i · t - m_i)² / (2 s²))``, and ``t`` becomes the weighted least-squares
    solution of ``q_i · t = m_i`` (a 3 × 3 system; kept unchanged when singular). Then
    ``out_n[j]`` counts the points with ``|q_i · t - m_i| < tol``.

    Parameters
    ----------
    q : float64 array (n, 3)
    t : float64 array (k, 3)
        Starting vectors.
    sigmas : float64 array (r,)
        Widths of the weights, one per pass (wide first).
    out_t : float64 array (k, 3)
        Output: refined vectors.
    out_n : int64 array (k,)
        Output: points within ``tol`` of an integer.
    tol : float
    """
    n = q.shape[0]
    for j in range(t.shape[0]):
        tx, ty, tz = t[j, 0], t[j, 1], t[j, 2]
        for r in range(sigmas.shape[0]):
            inv2s2 = 1.0 / (2.0 * sigmas[r] * sigmas[r])
            a00 = a01 = a02 = a11 = a12 = a22 = 0.0
            b0 = b1 = b2 = 0.0
            for i in range(n):
                x = q[i, 0] * tx + q[i, 1] * ty + q[i, 2] * tz
                mi = math.floor(x + 0.5)
                d = x - mi
                w = math.exp(-d * d * inv2s2)
                qx, qy, qz = q[i, 0], q[i, 1], q[i, 2]
                a00 += w * qx * qx
                a01 += w * qx * qy
                a02 += w * qx * qz
                a11 += w * qy * qy
                a12 += w * qy * qz
                a22 += w * qz * qz
                b0 += w * qx * mi
                b1 += w * qy * mi
                b2 += w * qz * mi
            c00 = a11 * a22 - a12 * a12
            c01 = a02 * a12 - a01 * a22
            c02 = a01 * a12 - a02 * a11
            det = a00 * c00 + a01 * c01 + a02 * c02
            if not abs(det) > 1e-30:
                break
            c11 = a00 * a22 - a02 * a02
            c12 = a01 * a02 - a00 * a12
            c22 = a00 * a11 - a01 * a01
            tx = (c00 * b0 + c01 * b1 + c02 * b2) / det
            ty = (c01 * b0 + c11 * b1 + c12 * b2) / det
            tz = (c02 * b0 + c12 * b1 + c22 * b2) / det
        out_t[j, 0], out_t[j, 1], out_t[j, 2] = tx, ty, tz
        count = 0
        for i in range(n):
            x = q[i, 0] * tx + q[i, 1] * ty + q[i, 2] * tz
            if abs(x - math.floor(x + 0.5)) < tol:
                count += 1
        out_n[j] = count


@numba.njit(cache=True)
def count_indexed(q, bases, tol, out):
    """Points whose three indices are all within ``tol`` of integers, per basis.

    ``bases`` (k, 3, 3) holds direct bases (rows a, b, c, Å); the indices of point ``q_i``
    are ``q_i · a``, ``q_i · b``, ``q_i · c``. ``out`` (k,) int64.
    """
    n = q.shape[0]
    for j in range(bases.shape[0]):
        count = 0
        for i in range(n):
            ok = True
            for r in range(3):
                x = q[i, 0] * bases[j, r, 0] + q[i, 1] * bases[j, r, 1] + \
                    q[i, 2] * bases[j, r, 2]
                if abs(x - math.floor(x + 0.5)) >= tol:
                    ok = False
                    break
            if ok:
                count += 1
        out[j] = count
