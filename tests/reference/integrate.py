"""Plain-NumPy references for :mod:`sxlab._integration_kernels` (slow and obvious).

Ring integration loops over the reflections and, for each, classifies every pixel of its
panel by its integer distance from the centre pixel; prediction tests every ``hkl`` of the
bounding box.
"""

from __future__ import annotations

import numpy as np


def lattice_candidates(amat, k0, r_max, q_max):
    """Every hkl (int, sorted rows) with 0 < |q| <= q_max and |k0 - |q + k0 z|| <= r_max."""
    amat = np.asarray(amat, dtype=np.float64)
    lengths = np.linalg.norm(np.linalg.inv(amat).T, axis=1)
    hmax = np.floor(lengths * q_max).astype(int)
    h, k, l = np.meshgrid(*(np.arange(-m, m + 1) for m in hmax), indexing="ij")
    hkl = np.stack([h.ravel(), k.ravel(), l.ravel()], axis=1)
    q = hkl @ amat
    q2 = np.sum(q * q, axis=1)
    s = k0 - np.sqrt(q[:, 0] ** 2 + q[:, 1] ** 2 + (q[:, 2] + k0) ** 2)
    keep = (q2 <= q_max * q_max) & (np.abs(s) <= r_max) & np.any(hkl != 0, axis=1)
    out = hkl[keep]
    return out[np.lexsort((out[:, 2], out[:, 1], out[:, 0]))]


def ring_integrate(image, good, bad, geometry, fs, ss, panel, radii, gain, saturation):
    """Three-ring integration of reflections at data-array positions ``fs``, ``ss``.

    ``image``, ``good`` (True = usable) and ``bad`` (True = bad, or None) have the
    geometry's data shape; ``gain`` and ``saturation`` are per panel. Returns a dict of
    arrays: I, sigma, bg, peak, n_peak, n_bg, masked, saturated, edge, overlap.
    """
    r1, r2, r3 = radii
    image = np.asarray(image, dtype=np.float64)
    usable_all = good & np.isfinite(image)
    if bad is not None:
        usable_all = usable_all & ~bad
    n = len(fs)
    ci = np.floor(fs).astype(int)
    cj = np.floor(ss).astype(int)

    # Offsets of the full rings, to detect regions cut by a panel edge.
    m = int(np.ceil(r3))
    dr, dc = np.mgrid[-m:m + 1, -m:m + 1]
    d2 = dr * dr + dc * dc
    n_ring_full = int(np.count_nonzero((d2 <= r1 * r1) | ((d2 > r2 * r2) & (d2 <= r3 * r3))))

    def panel_grid(i):
        p = geometry.panels[panel[i]]
        sl = geometry.panel_slice(panel[i])
        rows, cols = np.mgrid[p.min_ss:p.max_ss + 1, p.min_fs:p.max_fs + 1]
        dist2 = (rows - cj[i]) ** 2 + (cols - ci[i]) ** 2
        return sl, dist2

    peak_regions = []
    for i in range(n):
        _, dist2 = panel_grid(i)
        peak_regions.append(dist2 <= r1 * r1)

    out = {key: np.full(n, np.nan) for key in ("I", "sigma", "bg", "peak")}
    for key in ("n_peak", "n_bg"):
        out[key] = np.zeros(n, dtype=int)
    for key in ("masked", "saturated", "edge", "overlap"):
        out[key] = np.zeros(n, dtype=bool)
    for i in range(n):
        sl, dist2 = panel_grid(i)
        values = image[sl]
        usable = usable_all[sl]
        pk = dist2 <= r1 * r1
        bgr = (dist2 > r2 * r2) & (dist2 <= r3 * r3)
        others = np.zeros_like(pk)
        for j in range(n):
            if j != i and panel[j] == panel[i]:
                others |= peak_regions[j]
        out["edge"][i] = np.count_nonzero(pk | bgr) < n_ring_full
        out["masked"][i] = np.any(pk & ~usable)
        use_pk = pk & usable
        out["overlap"][i] = np.any(use_pk & others)
        use_bg = bgr & usable & ~others
        pv = values[use_pk]
        bv = values[use_bg]
        out["n_peak"][i] = pv.size
        out["n_bg"][i] = bv.size
        sat = saturation[panel[i]]
        out["saturated"][i] = np.any(pv >= sat)
        if pv.size:
            out["peak"][i] = pv.max()
        if pv.size and bv.size >= 2:
            mean = bv.mean()
            var = bv.var(ddof=1)
            inten = pv.sum() - pv.size * mean
            g = gain[panel[i]]
            var_i = max(g * max(inten, 0.0) + pv.size * var + pv.size ** 2 * var / bv.size,
                        g * g)
            out["I"][i] = inten
            out["sigma"][i] = np.sqrt(var_i)
            out["bg"][i] = mean
    return out
