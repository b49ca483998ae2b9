"""Numba kernels of the widgets: detector layout lookup table and screen-sized renders.

Fed plain arrays by :mod:`sxlab.widgets._layout`; each one has a plain-NumPy twin in
``tests/reference/widgets.py`` that the tests compare it with.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True)
def build_lut(lut, panel_affine, panel_inverse, panel_box, panel_offset, cols, x_min, y_max):
    """Fill ``lut`` (grid rows × grid columns, -1 initialised) with data-array flat indices.

    Grid cell ``(row, col)`` has its centre at lab ``X = x_min + col + 0.5``,
    ``Y = y_max - row - 0.5`` (pixels of the first panel). For each panel ``p``,
    ``panel_inverse[p]`` (2 × 2) maps ``(X, Y) - panel_affine[p, :, 2]`` to panel-relative
    ``(fs, ss)``; the cell takes the pixel ``floor(fs), floor(ss)`` if it lies inside the
    panel's ``panel_box[p] = (width, height, min_fs, min_ss)``. ``panel_offset[p]`` is
    the flat index of the panel's module (0 when not stacked). Later panels win where
    panels overlap.
    """
    n_rows, n_cols = lut.shape
    for p in range(panel_affine.shape[0]):
        w = panel_box[p, 0]
        h = panel_box[p, 1]
        # Grid bounding box of the panel's four corners.
        gx_lo = 1e300
        gx_hi = -1e300
        gy_lo = 1e300
        gy_hi = -1e300
        for cf in range(2):
            for cs in range(2):
                f = cf * w
                s = cs * h
                x = panel_affine[p, 0, 0] * f + panel_affine[p, 0, 1] * s + panel_affine[p, 0, 2]
                y = panel_affine[p, 1, 0] * f + panel_affine[p, 1, 1] * s + panel_affine[p, 1, 2]
                gx = x - x_min
                gy = y_max - y
                gx_lo = min(gx_lo, gx)
                gx_hi = max(gx_hi, gx)
                gy_lo = min(gy_lo, gy)
                gy_hi = max(gy_hi, gy)
        c0 = max(0, int(math.floor(gx_lo)) - 1)
        c1 = min(n_cols, int(math.ceil(gx_hi)) + 1)
        r0 = max(0, int(math.floor(gy_lo)) - 1)
        r1 = min(n_rows, int(math.ceil(gy_hi)) + 1)
        a00 = panel_inverse[p, 0, 0]
        a01 = panel_inverse[p, 0, 1]
        a10 = panel_inverse[p, 1, 0]
        a11 = panel_inverse[p, 1, 1]
        tx = panel_affine[p, 0, 2]
        ty = panel_affine[p, 1, 2]
        for row in range(r0, r1):
            dy = y_max - row - 0.5 - ty
            for col in range(c0, c1):
                dx = x_min + col + 0.5 - tx
                f = a00 * dx + a01 * dy
                s = a10 * dx + a11 * dy
                if f >= 0.0 and f < w and s >= 0.0 and s < h:
                    fi = int(f) + panel_box[p, 2]
                    si = int(s) + panel_box[p, 3]
                    lut[row, col] = panel_offset[p] + si * cols + fi


@numba.njit(cache=True)
def render(data, bad, has_bad, lut, row0, col0, step, use_max, out, out_bad):
    """Reduce ``step × step`` blocks of the grid, starting at ``(row0, col0)``, into ``out``.

    ``data`` and ``bad`` are flat frame arrays; a block's value is the maximum (``use_max``)
    or the mean of the finite values of the data pixels it covers, NaN when it covers
    none; ``out_bad`` is 1 where any covered pixel is bad (when ``has_bad``), else 0.
    """
    n_rows, n_cols = lut.shape
    out_h, out_w = out.shape
    for oy in range(out_h):
        ra = row0 + oy * step
        rb = min(ra + step, n_rows)
        for ox in range(out_w):
            ca = col0 + ox * step
            cb = min(ca + step, n_cols)
            acc = -np.inf if use_max else 0.0
            n = 0
            any_bad = 0
            for r in range(ra, rb):
                for c in range(ca, cb):
                    i = lut[r, c]
                    if i < 0:
                        continue
                    if has_bad and bad[i]:
                        any_bad = 1
                    v = data[i]
                    if not math.isfinite(v):
                        continue
                    if use_max:
                        if v > acc:
                            acc = v
                    else:
                        acc += v
                    n += 1
            if n == 0:
                out[oy, ox] = np.nan
            elif use_max:
                out[oy, ox] = acc
            else:
                out[oy, ox] = acc / n
            out_bad[oy, ox] = any_bad


@numba.njit(cache=True)
def to_codes(values, vmin, vmax, log, out):
    """Colour codes of the 1-D ``values`` into ``out``: 0 for NaN (no data), 1..255 from
    ``vmin`` to ``vmax``.

    Linear: ``t = (v - vmin) / (vmax - vmin)``; log: ``t = log1p(v - vmin) /
    log1p(vmax - vmin)`` (values below ``vmin`` count as ``vmin``); ``t`` is clipped to
    [0, 1] and the code is ``1 + round(254 t)``.
    """
    span = vmax - vmin
    if not span > 0:
        span = 1.0
    lspan = math.log1p(span)
    for i in range(values.size):
        v = values[i]
        if not math.isfinite(v):
            out[i] = 0
            continue
        x = v - vmin
        if x < 0.0:
            x = 0.0
        t = math.log1p(x) / lspan if log else x / span
        if t > 1.0:
            t = 1.0
        out[i] = 1 + int(254.0 * t + 0.5)
