"""Numba kernels for :mod:`sxlab.geometry`."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def ray_to_pixel(d, corner, fs_m, ss_m, normal, ginv, width, height, min_fs, min_ss,
                 panel, fs, ss):
    """Intersect rays from the origin with the panels; first panel hit wins.

    ``d`` (n, 3) ray directions; per panel ``corner``, ``fs_m``, ``ss_m``, ``normal``
    (p, 3), ``ginv`` (p, 2, 2) the inverse Gram matrix of (fs_m, ss_m), sizes and offsets.
    Writes ``panel`` (-1: none), ``fs``, ``ss`` (NaN: none) in data-array coordinates.
    """
    n = d.shape[0]
    for i in range(n):
        panel[i] = -1
        fs[i] = np.nan
        ss[i] = np.nan
        dx, dy, dz = d[i, 0], d[i, 1], d[i, 2]
        for p in range(corner.shape[0]):
            den = dx * normal[p, 0] + dy * normal[p, 1] + dz * normal[p, 2]
            if den == 0.0:
                continue
            t = (corner[p, 0] * normal[p, 0] + corner[p, 1] * normal[p, 1]
                 + corner[p, 2] * normal[p, 2]) / den
            if not t > 0.0:
                continue
            rx = t * dx - corner[p, 0]
            ry = t * dy - corner[p, 1]
            rz = t * dz - corner[p, 2]
            ra = rx * fs_m[p, 0] + ry * fs_m[p, 1] + rz * fs_m[p, 2]
            rb = rx * ss_m[p, 0] + ry * ss_m[p, 1] + rz * ss_m[p, 2]
            u = ginv[p, 0, 0] * ra + ginv[p, 0, 1] * rb
            v = ginv[p, 1, 0] * ra + ginv[p, 1, 1] * rb
            if u >= 0.0 and u < width[p] and v >= 0.0 and v < height[p]:
                panel[i] = p
                fs[i] = u + min_fs[p]
                ss[i] = v + min_ss[p]
                break


@numba.njit(cache=True)
def panel_map(out, kind, corner, fs_m, ss_m, res, k):
    """Fill ``out`` (height, width) with one per-pixel quantity of a panel.

    Pixel centres are at +0.5. ``kind``: 0-2 lab x/y/z (m), 3 radius from the beam in
    pixels (``res`` pixels per metre), 4 2θ (rad), 5 azimuth (rad), 6-8 q_x/q_y/q_z and
    9 |q| in 1/Å for wavenumber ``k`` (1/Å). The angles (4, 5) are faster through
    :func:`panel_atan2_args` and NumPy's vectorised ``arctan2``.
    """
    h, w = out.shape
    for s in range(h):
        for f in range(w):
            a = f + 0.5
            b = s + 0.5
            x = corner[0] + a * fs_m[0] + b * ss_m[0]
            y = corner[1] + a * fs_m[1] + b * ss_m[1]
            z = corner[2] + a * fs_m[2] + b * ss_m[2]
            if kind == 0:
                v = x
            elif kind == 1:
                v = y
            elif kind == 2:
                v = z
            elif kind == 3:
                v = np.sqrt(x * x + y * y) * res
            elif kind == 4:
                v = np.arctan2(np.sqrt(x * x + y * y), z)
            elif kind == 5:
                v = np.arctan2(y, x)
            else:
                r = np.sqrt(x * x + y * y + z * z)
                if kind == 6:
                    v = k * x / r
                elif kind == 7:
                    v = k * y / r
                elif kind == 8:
                    v = k * (z / r - 1.0)
                else:
                    v = k * np.sqrt(max(2.0 * (1.0 - z / r), 0.0))
            out[s, f] = v


@numba.njit(cache=True)
def panel_atan2_args(num, den, s0, kind, corner, fs_m, ss_m):
    """The two arguments of ``arctan2`` for the angle maps, rows ``s0 ..`` of a panel.

    Fills ``num`` and ``den`` (rows, width), float64, for panel rows ``s0`` to
    ``s0 + rows``: ``kind`` 4 (2θ) ``sqrt(x² + y²)`` and ``z``, 5 (azimuth) ``y`` and
    ``x``, with pixel centres at +0.5 as in :func:`panel_map`.
    """
    h, w = num.shape
    for s in range(h):
        b = s0 + s + 0.5
        for f in range(w):
            a = f + 0.5
            x = corner[0] + a * fs_m[0] + b * ss_m[0]
            y = corner[1] + a * fs_m[1] + b * ss_m[1]
            if kind == 4:
                z = corner[2] + a * fs_m[2] + b * ss_m[2]
                num[s, f] = np.sqrt(x * x + y * y)
                den[s, f] = z
            else:
                num[s, f] = y
                den[s, f] = x
