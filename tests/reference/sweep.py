"""Plain-NumPy references for :mod:`sxlab.indexing._sweep_kernels`."""

from __future__ import annotations

import numpy as np


def direction_scores(q, weights, directions, lengths):
    """``Σ_i w[l, i] cos(2π L_l q_i · d_m)`` for every direction and length, (m, n_l)."""
    x = directions @ q.T                                      # (m, n)
    return np.stack([(weights[li] * np.cos(2 * np.pi * length * x)).sum(axis=1)
                     for li, length in enumerate(lengths)], axis=1)


def pick_separated(directions, order, cos_sep, k):
    """Positions in ``order`` of the greedily chosen, pairwise separated directions."""
    chosen = []
    for a, m in enumerate(order):
        if all(abs(directions[m] @ directions[order[b]]) < cos_sep for b in chosen):
            chosen.append(a)
            if len(chosen) == k:
                break
    return np.array(chosen, dtype=np.int64)


def refine_vectors(q, t, sigmas, tol):
    """Iteratively reweighted least squares of ``q_i · t = round(q_i · t)``; counts."""
    out_t = np.array(t, dtype=float)
    out_n = np.zeros(len(t), dtype=np.int64)
    for j in range(len(t)):
        v = out_t[j].copy()
        for s in sigmas:
            x = q @ v
            m = np.floor(x + 0.5)
            w = np.exp(-(x - m) ** 2 / (2 * s * s))
            a = (q * w[:, None]).T @ q
            b = (q * w[:, None]).T @ m
            if not abs(np.linalg.det(a)) > 1e-30:
                break
            v = np.linalg.solve(a, b)
        out_t[j] = v
        x = q @ v
        out_n[j] = int(np.sum(np.abs(x - np.floor(x + 0.5)) < tol))
    return out_t, out_n


def count_indexed(q, bases, tol):
    """Points with all three indices ``q · a``, ``q · b``, ``q · c`` within ``tol``."""
    out = []
    for basis in bases:
        x = q @ basis.T
        out.append(int(np.sum(np.all(np.abs(x - np.floor(x + 0.5)) < tol, axis=1))))
    return np.array(out, dtype=np.int64)
