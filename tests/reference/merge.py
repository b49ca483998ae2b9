"""Plain references for :mod:`sxlab._merging_kernels` and the ASU mapping of :mod:`sxlab.merging`
(slow and obvious).

Scale refinement uses SciPy's general least-squares solver per crystal; the ambiguity
resolver keeps its reference as Python dictionaries; the ASU mapping asks gemmi, one
reflection at a time.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares


def refine_scales(start, stop, i_obs, w, s2, y, use, g0, b0):
    """Per crystal, the (G, B) minimising Σ w (I - G exp(-2 B s²) y)² over rows with ``use``.

    Returns ``(g, b, n_used)``; NaN for crystals with fewer than two rows.
    """
    n = len(start)
    g = np.full(n, np.nan)
    b = np.full(n, np.nan)
    n_used = np.zeros(n, dtype=np.int64)
    for c in range(n):
        rows = [i for i in range(start[c], stop[c]) if use[i]]
        n_used[c] = len(rows)
        if len(rows) < 2:
            continue
        rows = np.array(rows)
        sw = np.sqrt(w[rows])

        def residual(p, rows=rows, sw=sw):
            return sw * (i_obs[rows] - p[0] * np.exp(-2.0 * p[1] * s2[rows]) * y[rows])

        start_b = b0[c] if np.isfinite(b0[c]) else 0.0
        m = np.exp(-2.0 * start_b * s2[rows]) * y[rows]
        start_g = np.sum(w[rows] * i_obs[rows] * m) / np.sum(w[rows] * m * m)
        fit = least_squares(residual, [start_g, start_b], method="lm", xtol=1e-15,
                            ftol=1e-15, gtol=1e-15, max_nfev=10000)
        g[c], b[c] = fit.x
    return g, b, n_used


def _cc(x, y, min_overlap):
    if len(x) < min_overlap:
        return np.nan
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    vx = np.sum(x * x) - np.sum(x) ** 2 / len(x)
    vy = np.sum(y * y) - np.sum(y) ** 2 / len(y)
    if not (vx > 0 and vy > 0):
        return np.nan
    return (np.sum(x * y) - np.sum(x) * np.sum(y) / len(x)) / np.sqrt(vx * vy)


def resolve_ambiguity(start, stop, order, u_alt, x, n_passes, min_overlap):
    """Sequential resolver with dictionaries (see the kernel's docstring for the rules)."""
    n_ops = len(u_alt)
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    assign = {}
    best_cc = {}

    def rows(c):
        return range(start[c], stop[c])

    def cc_of(c, o):
        xs, ys = [], []
        for i in rows(c):
            u = int(u_alt[o][i])
            if u < 0 or counts.get(u, 0) == 0:
                continue
            xs.append(x[i])
            ys.append(sums[u] / counts[u])
        return _cc(xs, ys, min_overlap)

    def add(c, o, sign):
        for i in rows(c):
            u = int(u_alt[o][i])
            if u >= 0:
                sums[u] = sums.get(u, 0.0) + sign * x[i]
                counts[u] = counts.get(u, 0) + sign

    for c in order:
        ccs = [cc_of(c, o) for o in range(n_ops)]
        finite = [o for o in range(n_ops) if np.isfinite(ccs[o])]
        best = max(finite, key=lambda o: (ccs[o], -o)) if finite else 0
        assign[c] = best
        best_cc[c] = ccs[best] if finite else np.nan
        add(c, best, 1)
    changes = []
    for _ in range(n_passes):
        changed = 0
        for c in order:
            cur = assign[c]
            add(c, cur, -1)
            ccs = [cc_of(c, o) for o in range(n_ops)]
            best, top = cur, ccs[cur]
            for o in range(n_ops):
                if o != cur and np.isfinite(ccs[o]) and (not np.isfinite(top) or ccs[o] > top):
                    best, top = o, ccs[o]
            changed += best != cur
            assign[c] = best
            best_cc[c] = top
            add(c, best, 1)
        changes.append(changed)
        if changed == 0:
            break
    n = len(start)
    return (np.array([assign[c] for c in range(n)]), np.array([best_cc[c] for c in range(n)]),
            changes)


def to_asu(hkl, space_group):
    """gemmi's ASU indices and Friedel flag of each row, one ``ReciprocalAsu.to_asu`` each."""
    import gemmi

    sg = gemmi.SpaceGroup(space_group) if isinstance(space_group, str) else space_group
    asu = gemmi.ReciprocalAsu(sg)
    ops = sg.operations()
    out = np.zeros((len(hkl), 3), dtype=np.int64)
    friedel = np.zeros(len(hkl), dtype=bool)
    for j, row in enumerate(hkl):
        mapped, isym = asu.to_asu([int(v) for v in row], ops)
        out[j] = mapped
        friedel[j] = isym % 2 == 0
    return out, friedel
