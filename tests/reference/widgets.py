"""Plain NumPy references for :mod:`sxlab.widgets._kernels` and the painted shapes."""

from __future__ import annotations

import numpy as np


def lut(geometry, x_min: float, y_max: float, width: int, height: int) -> np.ndarray:
    """Flat data index shown in each grid cell: the pixel whose area holds the cell centre.

    Cell (row, col) has its centre at lab (x_min + col + 0.5, y_max - row - 0.5) in pixels
    of the first panel; for every panel, the centre is mapped to panel-relative
    (fs, ss) by solving corner + fs * fs_vec + ss * ss_vec = (x, y).
    """
    res0 = geometry.panels[0].res
    out = np.full((height, width), -1, np.int64)
    col, row = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x = x_min + col
    y = y_max - row
    shape = geometry.data_shape
    for p in geometry.panels:
        k = res0 / p.res
        a = np.array([[p.fs[0], p.ss[0]], [p.fs[1], p.ss[1]]]) * k
        rel = np.linalg.solve(a, np.stack([x.ravel() - p.corner_x * k,
                                           y.ravel() - p.corner_y * k]))
        f, s = rel[0].reshape(x.shape), rel[1].reshape(x.shape)
        inside = (f >= 0) & (f < p.width) & (s >= 0) & (s < p.height)
        fi = np.floor(f[inside]).astype(np.int64) + p.min_fs
        si = np.floor(s[inside]).astype(np.int64) + p.min_ss
        if geometry.is_stacked:
            out[inside] = np.ravel_multi_index((np.full(fi.shape, p.slab), si, fi), shape)
        else:
            out[inside] = np.ravel_multi_index((si, fi), shape)
    return out


def render(data, bad, lut_, row0, col0, step, out_h, out_w, use_max):
    """Block reduction of the lookup table region, one block at a time."""
    values = np.full((out_h, out_w), np.nan, np.float32)
    flags = np.zeros((out_h, out_w), np.uint8)
    for oy in range(out_h):
        for ox in range(out_w):
            idx = lut_[row0 + oy * step:row0 + (oy + 1) * step,
                       col0 + ox * step:col0 + (ox + 1) * step].ravel()
            idx = idx[idx >= 0]
            if bad is not None and bad[idx].any():
                flags[oy, ox] = 1
            v = data[idx]
            v = v[np.isfinite(v)]
            if v.size:
                values[oy, ox] = v.max() if use_max else v.astype(np.float64).mean()
    return values, flags


def codes(values, vmin, vmax, log):
    """Colour codes: 0 for non-finite, else 1 + round(254 t), t the clipped scale position."""
    v = np.asarray(values, np.float64)
    span = vmax - vmin if vmax > vmin else 1.0
    x = np.clip(v - vmin, 0, None)
    t = np.log1p(x) / np.log1p(span) if log else x / span
    out = 1 + np.floor(254 * np.clip(t, 0, 1) + 0.5)
    return np.where(np.isfinite(v), out, 0).astype(np.uint8)


def shape_pixels(geometry, kind, points, radius=0.0):
    """Bad array of a lab-plane shape, testing every pixel centre of the detector."""
    bad = np.zeros(geometry.data_shape, bool)
    pts = np.asarray(points, float)
    for i, p in enumerate(geometry.panels):
        f, s = np.meshgrid(np.arange(p.width) + 0.5, np.arange(p.height) + 0.5)
        x = p.corner_x + f * p.fs[0] + s * p.ss[0]
        y = p.corner_y + f * p.fs[1] + s * p.ss[1]
        if kind == "rectangle":
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            inside = (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1])
        elif kind == "circle":
            inside = np.hypot(x - pts[0, 0], y - pts[0, 1]) <= radius
        elif kind == "polygon":
            from matplotlib.path import Path

            inside = Path(pts).contains_points(np.column_stack([x.ravel(), y.ravel()]))
            inside = inside.reshape(x.shape)
        else:  # brush: distance to the polyline
            d = np.full(x.shape, np.inf)
            segs = list(zip(pts[:-1], pts[1:], strict=True)) or [(pts[0], pts[0])]
            for a, b in segs:
                ab = b - a
                ll = ab @ ab
                t = np.zeros_like(x) if ll == 0 else np.clip(
                    ((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / ll, 0, 1)
                d = np.minimum(d, np.hypot(x - a[0] - t * ab[0], y - a[1] - t * ab[1]))
            inside = d <= radius
        bad[geometry.panel_slice(i)] |= inside
    return bad
