"""Where each data pixel appears on screen: the assembled detector in lab coordinates.

The display plane is a grid of square cells the size of the first panel's pixels, lab
``x`` to the right and lab ``y`` up (the beam axis is at lab (0, 0)). Grid coordinates
``(gx, gy)`` are measured from the top-left corner of the grid, in cells; a data pixel is
shown in the cell that contains its centre's lab ``(x, y)`` (panels tilted out of the
detector plane are shown by their projection along z). Without a geometry the grid is
the data array itself (``gx = fs``, ``gy = ss``).
"""

from __future__ import annotations

import numpy as np

from . import _kernels as _k


class Layout:
    """Grid of the assembled detector and the maps between grid, data and lab coordinates.

    Parameters
    ----------
    geometry : Detector or None
    shape : tuple
        Data shape of one frame (``geometry.data_shape`` when a geometry is given).

    Attributes
    ----------
    width, height : int
        Grid size in cells.
    lut : ndarray of int32 or int64, shape (height, width)
        Flat data index shown in each cell, -1 where no pixel is.
    x_min, y_max : float
        Lab position (pixels of the first panel) of the grid's top-left corner.
    """

    def __init__(self, geometry, shape: tuple):
        self.geometry = geometry
        self.shape = tuple(int(n) for n in shape)
        n = int(np.prod(self.shape))
        idx_dtype = np.int32 if n < np.iinfo(np.int32).max else np.int64
        if geometry is None:
            if len(self.shape) != 2:
                raise ValueError(f"an image of shape {self.shape} needs a geometry "
                                 "(only 2-D images can be shown without one)")
            self.height, self.width = self.shape
            self.x_min = self.y_max = 0.0
            self.res = 1.0
            self.lut = np.arange(n, dtype=idx_dtype).reshape(self.shape)
            return
        if tuple(geometry.data_shape) != self.shape:
            raise ValueError(f"frame shape {self.shape} does not match the geometry's data "
                             f"shape {tuple(geometry.data_shape)}")
        self.res = float(geometry.panels[0].res)
        n_p = geometry.n_panels
        affine = np.empty((n_p, 2, 3))
        inverse = np.empty((n_p, 2, 2))
        box = np.empty((n_p, 4), np.int64)
        offset = np.zeros(n_p, np.int64)
        rows_cols = self.shape[-2] * self.shape[-1]
        for i, p in enumerate(geometry.panels):
            k = self.res / p.res
            a = np.array([[p.fs[0], p.ss[0]], [p.fs[1], p.ss[1]]]) * k
            if abs(np.linalg.det(a)) < 1e-9:
                raise ValueError(f"panel {p.name!r} is edge-on in the lab x-y plane and "
                                 "cannot be displayed")
            affine[i, :, :2] = a
            affine[i, :, 2] = (p.corner_x * k, p.corner_y * k)
            inverse[i] = np.linalg.inv(a)
            box[i] = (p.width, p.height, p.min_fs, p.min_ss)
            if geometry.is_stacked:
                offset[i] = p.slab * rows_cols
        corners = np.array([[f, s] for f in (0, 1) for s in (0, 1)], float)
        xy = np.concatenate([
            affine[i, :, :2] @ (corners * box[i, :2]).T + affine[i, :, 2:] for i in range(n_p)
        ], axis=1)
        self.x_min = float(np.floor(xy[0].min() * 1e6) / 1e6)
        self.y_max = float(np.ceil(xy[1].max() * 1e6) / 1e6)
        self.width = int(np.ceil(xy[0].max() - self.x_min - 1e-9))
        self.height = int(np.ceil(self.y_max - xy[1].min() - 1e-9))
        self._affine, self._box = affine, box
        self.lut = np.full((self.height, self.width), -1, dtype=idx_dtype)
        _k.build_lut(self.lut, affine, inverse, box, offset, self.shape[-1], self.x_min,
                     self.y_max)

    # ------------------------------------------------------------ conversions
    def data_to_grid(self, fs, ss, panel=None) -> tuple[np.ndarray, np.ndarray]:
        """Grid coordinates of data-array coordinates (``panel`` index per point)."""
        fs = np.asarray(fs, dtype=float)
        ss = np.asarray(ss, dtype=float)
        if self.geometry is None:
            return fs.copy(), ss.copy()
        if panel is None:
            if self.geometry.is_stacked:
                raise ValueError("panel is required for a stacked detector")
            panel = self.geometry.panel_of_pixel(fs, ss)
        pid = np.broadcast_to(np.asarray(panel, dtype=np.int64), fs.shape)
        gx = np.full(fs.shape, np.nan)
        gy = np.full(fs.shape, np.nan)
        for i in np.unique(pid):
            if i < 0:
                continue
            sel = pid == i
            f = fs[sel] - self._box[i, 2]
            s = ss[sel] - self._box[i, 3]
            a = self._affine[i]
            gx[sel] = a[0, 0] * f + a[0, 1] * s + a[0, 2] - self.x_min
            gy[sel] = self.y_max - (a[1, 0] * f + a[1, 1] * s + a[1, 2])
        return gx, gy

    def grid_to_lab_px(self, gx, gy) -> tuple[np.ndarray, np.ndarray]:
        """Lab (x, y) in pixels of the first panel of grid coordinates."""
        return np.asarray(gx, float) + self.x_min, self.y_max - np.asarray(gy, float)

    def lab_px_to_grid(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Grid coordinates of lab (x, y) in pixels of the first panel."""
        return np.asarray(x, float) - self.x_min, self.y_max - np.asarray(y, float)

    def pixel_at(self, gx: float, gy: float) -> int:
        """Flat data index shown at grid point ``(gx, gy)``, -1 where no pixel is."""
        c, r = int(np.floor(gx)), int(np.floor(gy))
        if 0 <= r < self.height and 0 <= c < self.width:
            return int(self.lut[r, c])
        return -1

    def unravel(self, flat: int) -> tuple[int, int, int]:
        """(module, ss, fs) of a flat data index (module 0 when not stacked)."""
        idx = np.unravel_index(int(flat), self.shape)
        if len(self.shape) == 3:
            return int(idx[0]), int(idx[1]), int(idx[2])
        return 0, int(idx[0]), int(idx[1])

    def beam_grid(self) -> tuple[float, float] | None:
        """Grid position of the beam axis (lab (0, 0)); None without a geometry."""
        if self.geometry is None:
            return None
        gx, gy = self.lab_px_to_grid(0.0, 0.0)
        return float(gx), float(gy)

    # --------------------------------------------------------------- rendering
    def render(self, data_flat: np.ndarray, bad_flat: np.ndarray | None, x0: float, y0: float,
               x1: float, y1: float, width: int, height: int, *, reduce: str = "max"):
        """A screen-sized view of grid region ``[x0, x1) × [y0, y1)``.

        The region is clipped to the grid and cut into blocks of ``step × step`` cells,
        with ``step`` the smallest integer that fits the region into ``width × height``
        screen pixels; each block is reduced to one value (``reduce``: "max" keeps spots
        visible, "mean" averages).

        Returns
        -------
        values : ndarray of float32, shape (h, w)
            NaN where a block covers no pixel.
        bad : ndarray of uint8, shape (h, w)
            1 where a block covers a bad pixel.
        meta : dict
            ``col0``, ``row0`` (grid cell of the first block), ``step``, ``w``, ``h``.
        """
        if reduce not in ("max", "mean"):
            raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
        width, height = max(int(width), 1), max(int(height), 1)
        c0 = min(max(int(np.floor(x0)), 0), self.width - 1)
        r0 = min(max(int(np.floor(y0)), 0), self.height - 1)
        c1 = min(max(int(np.ceil(x1)), c0 + 1), self.width)
        r1 = min(max(int(np.ceil(y1)), r0 + 1), self.height)
        span_x = max(float(x1) - float(x0), 1e-9)
        span_y = max(float(y1) - float(y0), 1e-9)
        step = max(1, int(np.ceil(max(span_x / width, span_y / height) - 1e-9)))
        # Blocks are aligned on multiples of step so that a pan does not shift them.
        c0 -= c0 % step
        r0 -= r0 % step
        w = -(-(c1 - c0) // step)
        h = -(-(r1 - r0) // step)
        values = np.empty((h, w), np.float32)
        out_bad = np.empty((h, w), np.uint8)
        has_bad = bad_flat is not None
        bad_arg = bad_flat if has_bad else np.zeros(1, np.bool_)
        _k.render(data_flat, bad_arg, has_bad, self.lut, r0, c0, step, reduce == "max",
                  values, out_bad)
        return values, out_bad, {"col0": c0, "row0": r0, "step": step, "w": w, "h": h}


def codes(values: np.ndarray, vmin: float, vmax: float, *, log: bool = False) -> np.ndarray:
    """uint8 colour codes of ``values`` (see :func:`sxlab.widgets._kernels.to_codes`)."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    out = np.empty(flat.size, np.uint8)
    _k.to_codes(flat, float(vmin), float(vmax), bool(log), out)
    return out.reshape(np.shape(values))
