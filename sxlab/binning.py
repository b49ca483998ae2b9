"""Pixel binning: frames, masks and geometries at 2×2, 3×3, 4×4 ... pixels per pixel.

Binning adds up ``factor`` × ``factor`` blocks of pixels, as CrystFEL and the ASAP::O
binning worker do: a binned pixel holds the **sum** of its pixels (counts stay counts, so
Poisson statistics and ``adu_per_photon`` keep their meaning), not their mean.

Layout
------
Each panel is binned on its own, starting at its first pixel. When a panel's width or
height is not a multiple of the factor, the remaining last columns / rows are dropped.
A binned panel starts at data-array position ``ceil(min_fs / factor)``,
``ceil(min_ss / factor)``; this equals the plain ``min_fs / factor`` for panels aligned to
the factor and never makes binned panels overlap. For a single-panel EIGER2 X 16M
(4148 × 4362 px) that gives 2074 × 2181, 1382 × 1454 and 1037 × 1090 px for factors 2, 3
and 4, the same as binning the whole array.

Coordinates
-----------
With pixel corners at integer coordinates, binned position ``b`` of a panel maps to
unbinned position ``factor · b`` (relative to the panel's first pixel), so binned pixel
centre ``b + 0.5`` is unbinned ``factor · (b + 0.5)``: the centre of its block.

>>> import numpy as np
>>> bin_frame(np.arange(16, dtype=np.float32).reshape(4, 4), 2)
array([[10., 18.],
       [42., 50.]], dtype=float32)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import _binning_kernels as _k
from .geometry import BadRegion, Detector
from .masks import Mask, bad_pixels, check_shape

__all__ = ["Binner", "bin_frame", "bin_geometry", "bin_mask", "unbin_peaks"]


def _check_factor(factor) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"the binning factor must be a positive integer, got {factor!r}")
    return int(factor)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class _Layout:
    """Where every panel's binned block sits, as the kernels want it."""

    def __init__(self, geometry_or_shape, factor: int):
        f = factor
        rows = []
        if isinstance(geometry_or_shape, Detector):
            det = geometry_or_shape
            self.shape = tuple(det.data_shape)
            self.stacked = det.is_stacked
            for p in det.panels:
                hb, wb = p.height // f, p.width // f
                if hb == 0 or wb == 0:
                    raise ValueError(f"panel {p.name!r} ({p.width} × {p.height} px) is smaller "
                                     f"than the binning factor {f}")
                rows.append((p.slab or 0, p.min_ss, p.min_fs, _ceil_div(p.min_ss, f),
                             _ceil_div(p.min_fs, f), hb, wb))
        else:
            self.shape = tuple(int(n) for n in geometry_or_shape)
            if len(self.shape) not in (2, 3):
                raise ValueError(f"expected a 2-D or 3-D frame, got shape {self.shape}")
            self.stacked = len(self.shape) == 3
            h, w = self.shape[-2:]
            if h < f or w < f:
                raise ValueError(f"a frame of shape {self.shape} is smaller than the binning "
                                 f"factor {f}")
            n_slabs = self.shape[0] if self.stacked else 1
            rows = [(s, 0, 0, 0, 0, h // f, w // f) for s in range(n_slabs)]
        self.table = np.array(rows, dtype=np.int64).reshape(-1, 7)
        t = self.table
        n_slabs = self.shape[0] if self.stacked else 1
        hb = int((t[:, 3] + t[:, 5]).max())
        wb = int((t[:, 4] + t[:, 6]).max())
        self.shape3 = (n_slabs, *self.shape[-2:])
        self.binned_shape3 = (n_slabs, hb, wb)
        self.binned_shape = self.binned_shape3 if self.stacked else (hb, wb)
        covered = np.zeros(self.binned_shape3, dtype=bool)
        for slab, _, _, s0, f0, h, w in t:
            covered[slab, s0 : s0 + h, f0 : f0 + w] = True
        self.outside = np.flatnonzero(~covered)  # binned pixels on no panel

    def as3(self, arr: np.ndarray) -> np.ndarray:
        return arr.reshape(self.shape3)

    def finish(self, out3: np.ndarray, bad3: np.ndarray | None) -> None:
        if self.outside.size:
            out3.reshape(-1)[self.outside] = 0
            if bad3 is not None:
                bad3.reshape(-1)[self.outside] = True


def _max_bad(bad_fraction: float, factor: int) -> int:
    if not 0.0 <= bad_fraction < 1.0:
        raise ValueError(f"bad_fraction must be in [0, 1), got {bad_fraction}")
    f2 = factor * factor
    return min(int(math.floor(bad_fraction * f2 + 1e-9)), f2 - 1)


_NO_BAD = np.zeros((1, 1, 1), dtype=bool)


def _wrap_like(image, values: np.ndarray, factor: int):
    """Return ``values`` as a DataArray when ``image`` is one (same dims and attrs)."""
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is a dependency
        return values
    if isinstance(image, xr.DataArray):
        attrs = dict(image.attrs)
        attrs["binning"] = factor
        return xr.DataArray(values, dims=image.dims, attrs=attrs, name=image.name)
    return values


def bin_frame(image, factor: int, *, geometry: Detector | None = None, bad=None,
              mask: Mask | None = None, rescale: bool = False):
    """Bin one frame: the sum of the good pixels of each ``factor`` × ``factor`` block.

    Parameters
    ----------
    image : array_like or xarray.DataArray
        One frame, ``(ss, fs)`` or ``(module, ss, fs)``, any numeric dtype.
    factor : int
        Pixels per binned pixel along each axis.
    geometry : Detector, optional
        Bin each panel on its own (see the module notes); without it the whole array (each
        module of a 3-D array) is binned as one panel.
    bad : array_like of bool, optional
        True for bad pixels (e.g. from :meth:`Run.read <sxlab.io.hdf5.Run.read>`).
    mask : Mask, optional
        Static mask; its bad pixels are left out too.
    rescale : bool
        Multiply each sum by ``factor² / n_good`` (an estimate of the full block's sum when
        some of its pixels are bad). Blocks without good pixels are 0 either way.

    Returns
    -------
    numpy.ndarray or xarray.DataArray
        float32 of the binned shape (a DataArray, with the input's dims and attrs plus
        ``binning``, when ``image`` is one). Non-finite pixels count as bad.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.ones((5, 7), np.float32)
    >>> bin_frame(img, 2).shape          # last row and column dropped
    (2, 3)
    >>> bad = np.zeros((5, 7), bool); bad[0, 0] = True
    >>> float(bin_frame(img, 2, bad=bad)[0, 0])
    3.0
    >>> float(bin_frame(img, 2, bad=bad, rescale=True)[0, 0])
    4.0
    """
    f = _check_factor(factor)
    arr = np.asarray(image)
    layout = _Layout(geometry if geometry is not None else arr.shape, f)
    check_shape(arr.shape, layout.shape, "image")
    b = bad_pixels(mask, bad, layout.shape)
    out = np.empty(layout.binned_shape3, dtype=np.float32)
    out_bad = np.empty(layout.binned_shape3, dtype=bool)
    _k.bin_sum(layout.as3(arr), _NO_BAD if b is None else layout.as3(b), b is not None,
               _NO_BAD, False, layout.table, f, f * f, bool(rescale), out, out_bad)
    layout.finish(out, None)
    return _wrap_like(image, out.reshape(layout.binned_shape), f)


def bin_mask(mask: Mask, factor: int, *, geometry: Detector | None = None,
             bad_fraction: float = 0.0) -> Mask:
    """Bin a mask: a binned pixel is bad when more than ``bad_fraction`` of its pixels are.

    Parameters
    ----------
    mask : Mask
    factor : int
    geometry : Detector, optional
        Panel layout (see :func:`bin_frame`).
    bad_fraction : float in [0, 1)
        0 (default): any bad pixel makes the binned pixel bad. A block whose pixels are
        all bad is always bad.

    Returns
    -------
    Mask
        Binned pixels on no panel are bad.

    Examples
    --------
    >>> import numpy as np
    >>> m = Mask.from_bad(np.eye(4, dtype=bool))
    >>> bin_mask(m, 2).bad.tolist()
    [[True, False], [False, True]]
    >>> bin_mask(m, 2, bad_fraction=0.5).bad.tolist()
    [[False, False], [False, False]]
    """
    if not isinstance(mask, Mask):
        raise TypeError(f"expected a Mask, got {type(mask).__name__}")
    f = _check_factor(factor)
    layout = _Layout(geometry if geometry is not None else mask.shape, f)
    check_shape(mask.shape, layout.shape, "mask")
    counts = np.zeros(layout.binned_shape3, dtype=np.int32)
    _k.count_bad(layout.as3(mask.bad), layout.table, f, counts)
    bad = counts > _max_bad(bad_fraction, f)
    layout.finish(counts, bad)
    step = f"bin_mask: factor {f}, bad_fraction {bad_fraction:g}"
    return Mask._wrap(np.logical_not(bad, out=bad).reshape(layout.binned_shape),
                      (*mask.provenance, step))


def bin_geometry(geometry: Detector, factor: int) -> Detector:
    """The geometry of binned frames.

    Every panel keeps its position and orientation; its pixels become ``factor`` times
    larger (``res / factor``), its pixel ranges follow the layout of the module notes
    (remainder rows/columns dropped) and ``corner_x``/``corner_y`` are expressed in binned
    pixels (the first pixel's corner stays where it was). Consequently the lab position of
    a binned pixel's centre is the mean lab position of the pixels it sums.

    Other panel settings: ``max_adu`` is multiplied by ``factor²`` (a binned pixel above
    it is certainly saturated, one below may still contain a saturated pixel);
    ``mask_edge_pixels`` becomes ``ceil(n / factor)`` (conservative); value flags
    (``flag_*``), mask datasets and saturation maps refer to unbinned data and are
    removed — apply them before binning (:class:`Binner` takes a :class:`Mask`).

    Bad regions in pixel coordinates cover every binned pixel that contains one of their
    pixels. Lab-coordinate regions keep their lab extent (limits divided by the factor,
    since they are in pixel units) and are tested at binned pixel corners, which is only
    approximately the binned version of the unbinned region: for exact binned bad pixels
    use ``bin_mask(mask_from_geometry(geometry), factor, geometry=geometry)``.

    Parameters
    ----------
    geometry : Detector
    factor : int

    Returns
    -------
    Detector

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger16m")
    >>> [bin_geometry(det, f).data_shape for f in (2, 3, 4)]
    [(2181, 2074), (1454, 1382), (1090, 1037)]
    """
    f = _check_factor(factor)
    if f == 1:
        return geometry
    layout = _Layout(geometry, f)
    panels = []
    for p, (_, _, _, ssb0, fsb0, hb, wb) in zip(geometry.panels, layout.table, strict=True):
        panels.append(p.replace(
            min_fs=int(fsb0), max_fs=int(fsb0 + wb - 1), min_ss=int(ssb0),
            max_ss=int(ssb0 + hb - 1), corner_x=p.corner_x / f, corner_y=p.corner_y / f,
            res=p.res / f, max_adu=p.max_adu * f * f, flag_lessthan=None,
            flag_morethan=None, flag_equal=None,
            mask_edge_pixels=_ceil_div(p.mask_edge_pixels, f), masks=(),
            saturation_map=None, saturation_map_file=None,
        ))
    regions = []
    for b in geometry.bad_regions:
        if b.is_lab:
            regions.append(BadRegion(b.name, min_x=b.min_x / f, max_x=b.max_x / f,
                                     min_y=b.min_y / f, max_y=b.max_y / f, panel=b.panel))
            continue
        for i, p in enumerate(geometry.panels):
            if b.panel is not None and b.panel != p.name:
                continue
            _, _, _, ssb0, fsb0, hb, wb = (int(v) for v in layout.table[i])
            f0 = max(b.min_fs, p.min_fs) - p.min_fs
            f1 = min(b.max_fs, p.max_fs) - p.min_fs
            s0 = max(b.min_ss, p.min_ss) - p.min_ss
            s1 = min(b.max_ss, p.max_ss) - p.min_ss
            if f0 > f1 or s0 > s1 or f0 // f >= wb or s0 // f >= hb:
                continue
            name = b.name if b.panel is not None else f"{b.name}_{p.name}"
            regions.append(BadRegion(
                name, min_fs=fsb0 + f0 // f, max_fs=fsb0 + min(f1 // f, wb - 1),
                min_ss=ssb0 + s0 // f, max_ss=ssb0 + min(s1 // f, hb - 1), panel=p.name))
    name = f"{geometry.name} binned {f}x{f}" if geometry.name else f"binned {f}x{f}"
    return geometry.replace(panels=tuple(panels), bad_regions=tuple(regions), name=name)


def unbin_peaks(peaks: pd.DataFrame, factor: int, *, geometry: Detector | None = None
                ) -> pd.DataFrame:
    """Map peak positions found on binned frames back to unbinned data coordinates.

    Binned coordinate ``c`` (pixel corners at integers, centres at ``+0.5``) becomes
    ``factor · c`` relative to the panel's first pixel; so binned pixel centre ``b + 0.5``
    maps to ``factor · (b + 0.5)``, the centre of the block. Only ``fs`` and ``ss`` change
    (intensities are sums either way; ``npix`` still counts binned pixels).

    Parameters
    ----------
    peaks : pandas.DataFrame
        With columns ``fs`` and ``ss`` (and ``panel``, the panel index, when
        ``geometry`` is given).
    factor : int
    geometry : Detector, optional
        The **unbinned** geometry; needed when panels do not start at multiples of the
        factor (see the module notes). Without it ``fs`` and ``ss`` are multiplied by the
        factor.

    Returns
    -------
    pandas.DataFrame
        A copy with ``fs`` and ``ss`` replaced.

    Examples
    --------
    >>> import pandas as pd
    >>> unbin_peaks(pd.DataFrame({"fs": [0.5, 10.25], "ss": [3.5, 0.0]}), 2)
         fs   ss
    0   1.0  7.0
    1  20.5  0.0
    """
    f = _check_factor(factor)
    out = peaks.copy()
    fs = peaks["fs"].to_numpy(dtype=float)
    ss = peaks["ss"].to_numpy(dtype=float)
    if geometry is None:
        out["fs"] = fs * f
        out["ss"] = ss * f
        return out
    t = _Layout(geometry, f).table
    pid = peaks["panel"].to_numpy()
    if pid.dtype.kind not in "iu":
        raise TypeError("the panel column must hold panel indices (integers)")
    if pid.size and (pid.min() < 0 or pid.max() >= len(t)):
        raise ValueError("panel index out of range for the geometry")
    out["fs"] = t[pid, 2] + (fs - t[pid, 4]) * f
    out["ss"] = t[pid, 1] + (ss - t[pid, 3]) * f
    return out


class Binner:
    """Prepared binning of frames, masks and peak positions for one geometry.

    Parameters
    ----------
    geometry : Detector
        Unbinned geometry.
    mask : Mask, optional
        Static mask of unbinned pixels.
    factor : int
    bad_fraction : float in [0, 1)
        A binned pixel is bad when more than this fraction of its pixels is bad (0: any);
        otherwise it holds the sum of its good pixels times ``factor² / n_good``.

    Attributes
    ----------
    geometry : Detector
        Binned geometry (:func:`bin_geometry`).
    source_geometry : Detector
    mask : Mask
        Binned static mask (:func:`bin_mask`).
    factor : int

    Examples
    --------
    >>> import numpy as np
    >>> from sxlab.geometry import builtin_geometry
    >>> from sxlab.masks import mask_from_geometry
    >>> det = builtin_geometry("eiger4m")
    >>> binner = Binner(det, mask_from_geometry(det), 2)
    >>> img, bad = binner(np.ones(det.data_shape, np.float32))
    >>> img.shape, binner.geometry.data_shape
    ((1083, 1035), (1083, 1035))
    """

    def __init__(self, geometry: Detector, mask: Mask | None = None, factor: int = 2, *,
                 bad_fraction: float = 0.0):
        self.factor = _check_factor(factor)
        self.source_geometry = geometry
        self.bad_fraction = float(bad_fraction)
        self._layout = _Layout(geometry, self.factor)
        self._max_bad = _max_bad(self.bad_fraction, self.factor)
        self.geometry = bin_geometry(geometry, self.factor)
        if mask is None:
            mask = Mask.all_good(geometry)
        check_shape(mask.shape, geometry.data_shape, "mask")
        self._static_bad = self._layout.as3(mask.bad)
        self._has_static = mask.n_bad > 0
        self.mask = bin_mask(mask, self.factor, geometry=geometry,
                             bad_fraction=self.bad_fraction)

    def __call__(self, image, bad=None):
        """Bin one frame.

        Parameters
        ----------
        image : array_like or xarray.DataArray
            Unbinned frame (any numeric dtype; pass converted images, or raw ones with
            their flag values marked in ``bad``).
        bad : array_like of bool, optional
            Per-frame bad pixels (True = bad), combined with the static mask.

        Returns
        -------
        image : xarray.DataArray
            float32, dims of the binned geometry; bad binned pixels are 0. Attrs of the
            input plus ``binning``.
        bad : xarray.DataArray
            bool, True for bad binned pixels.
        """
        import xarray as xr

        lay = self._layout
        arr = np.asarray(image)
        check_shape(arr.shape, lay.shape, "image")
        if bad is not None:
            bad = np.asarray(bad)
            if bad.dtype != bool:
                raise TypeError(f"bad must be a boolean array, got dtype {bad.dtype}")
            check_shape(bad.shape, lay.shape, "bad")
        out = np.empty(lay.binned_shape3, dtype=np.float32)
        out_bad = np.empty(lay.binned_shape3, dtype=bool)
        _k.bin_sum(lay.as3(arr), self._static_bad, self._has_static,
                   _NO_BAD if bad is None else lay.as3(bad), bad is not None,
                   lay.table, self.factor, self._max_bad, True, out, out_bad)
        lay.finish(out, out_bad)
        attrs = dict(getattr(image, "attrs", {}))
        attrs["binning"] = self.factor
        dims = self.geometry.dims
        return (xr.DataArray(out.reshape(lay.binned_shape), dims=dims, attrs=attrs),
                xr.DataArray(out_bad.reshape(lay.binned_shape), dims=dims, attrs=dict(attrs)))

    def bin_stored_into(self, raw: np.ndarray, out: np.ndarray, bad: np.ndarray, *,
                        eiger: bool = True) -> None:
        """Bin a frame as stored (flag values untouched) into existing arrays.

        The same result as ``self(image, bad)`` for the image and bad mask that
        :meth:`Run.read <sxlab.io.hdf5.Run.read>` makes of ``raw``
        (:func:`~sxlab.io.hdf5.value_flags`), in one pass over the stored frame for
        unsigned types: no float32 frame of the unbinned size is made.

        Parameters
        ----------
        raw : ndarray
            The frame of the unbinned geometry's shape, any numeric dtype.
        out : ndarray of float32
            Of the binned shape; bad binned pixels get 0.
        bad : ndarray of bool
            Of the binned shape.
        eiger : bool
            EIGER/NXmx value flags (see :func:`~sxlab.io.hdf5.value_flags`).

        Examples
        --------
        >>> import numpy as np
        >>> from sxlab.geometry import builtin_geometry
        >>> det = builtin_geometry("eiger4m")
        >>> binner = Binner(det, factor=2)
        >>> raw = np.ones(det.data_shape, np.uint16)
        >>> raw[0, 0] = 65535                       # a flagged pixel
        >>> out = np.empty(binner.geometry.data_shape, np.float32)
        >>> bad = np.empty(out.shape, bool)
        >>> binner.bin_stored_into(raw, out, bad)
        >>> float(out[0, 0]), bool(bad[0, 0]), float(out[0, 1])
        (0.0, True, 4.0)
        """
        from sxlab.io.hdf5 import value_flags

        lay = self._layout
        raw = np.asarray(raw)
        check_shape(raw.shape, lay.shape, "frame")
        for name, arr, dtype in (("out", out, np.float32), ("bad", bad, np.bool_)):
            if arr.shape != lay.binned_shape or arr.dtype != dtype:
                raise ValueError(f"{name} must be {np.dtype(dtype).name} of shape "
                                 f"{lay.binned_shape}, got {arr.dtype} {arr.shape}")
        out3, bad3 = out.reshape(lay.binned_shape3), bad.reshape(lay.binned_shape3)
        if raw.dtype.kind == "u":
            top = np.iinfo(raw.dtype).max
            threshold = raw.dtype.type(top - 1 if eiger else top)
            _k.bin_raw(lay.as3(raw), threshold, self._static_bad.view(np.uint8),
                       lay.table, self.factor, self._max_bad, True, out3, bad3)
        else:
            _k.bin_sum(lay.as3(raw), self._static_bad, self._has_static,
                       lay.as3(value_flags(raw, eiger)), True, lay.table, self.factor,
                       self._max_bad, True, out3, bad3)
        lay.finish(out3, bad3)

    def unbin_peaks(self, peaks: pd.DataFrame) -> pd.DataFrame:
        """Peak positions of binned frames in unbinned data coordinates (:func:`unbin_peaks`)."""
        if "panel" in peaks.columns:
            return unbin_peaks(peaks, self.factor, geometry=self.source_geometry)
        t = self._layout.table
        if np.any(t[:, 1:3] != t[:, 3:5] * self.factor):
            raise ValueError("peaks need a panel column: panels of this geometry do not all "
                             "start at multiples of the binning factor")
        return unbin_peaks(peaks, self.factor)

    def __repr__(self) -> str:
        return (f"<Binner {self.factor}x{self.factor}: {self._layout.shape} -> "
                f"{self._layout.binned_shape}, bad_fraction {self.bad_fraction:g}>")
