"""Pixel masks: which detector pixels are usable.

A :class:`Mask` holds one boolean array of a frame's data shape (``True`` = good, usable)
and a record of how it was built. Masks combine with ``&`` (good in both), ``|`` (good in
either) and ``~`` (swap good and bad), so a mask for a run is typically written as

>>> from sxlab.geometry import builtin_geometry
>>> det = builtin_geometry("eiger4m")
>>> mask = (mask_from_geometry(det) & mask_beamstop(det, 40, rod_width_px=10)
...         & mask_resolution(det, d_min=2.5))
>>> round(mask.fraction_bad, 3)
0.19

Constructors
------------
Every constructor is a module function returning a :class:`Mask` and judges one criterion
only; pixels it does not judge stay good (pixels that belong to no panel are marked bad by
:func:`mask_from_geometry`):

* :func:`mask_from_values` — flag values, thresholds, non-finite values, the panels'
  ``flag_*`` and ``max_adu`` settings;
* :func:`mask_pixel_ranges` — inclusive rectangles in data-array pixel coordinates;
* :func:`mask_lab_region` — rectangles in lab coordinates (CrystFEL's ``min_x`` ... rule);
* :func:`mask_beamstop` — a disc around the beam plus an optional holding rod;
* :func:`mask_lab_shape` — a painted rectangle, circle, polygon or brush stroke in the
  lab plane (what :class:`sxlab.widgets.MaskPainter` records);
* :func:`mask_resolution` — resolution limits in Å;
* :func:`mask_panel_edges`, :func:`mask_no_index`, :func:`mask_from_geometry`;
* :func:`mask_from_hdf5`, :func:`mask_from_panel_masks` — bit masks stored in HDF5 files
  (CrystFEL rule: bad if ``(v & goodbits) != goodbits`` or ``(v & badbits) != 0``).

Lab-frame shapes are intersected with each panel's pixel grid over the shape's extent only,
so their cost grows with the size of the shape, not of the detector.

Masks are saved to and loaded from HDF5 (:meth:`Mask.save`, :meth:`Mask.load`) and can be
written into a CrystFEL geometry as bad regions (:meth:`Mask.to_crystfel_bad_regions`,
:func:`mask_to_geom_lines`).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from ._frozen import FrozenParams
from .geometry import BadRegion, Detector, Panel, mark_lab_region

__all__ = [
    "Mask",
    "MaskParams",
    "build_mask",
    "bad_pixels",
    "check_shape",
    "good_pixels",
    "mask_beamstop",
    "mask_from_geometry",
    "mask_from_hdf5",
    "mask_from_panel_masks",
    "mask_from_values",
    "mask_lab_region",
    "mask_lab_shape",
    "mask_no_index",
    "mask_panel_edges",
    "mask_pixel_ranges",
    "mask_resolution",
    "mask_to_geom_lines",
]

#: Value of the ``convention`` attribute of masks saved by :meth:`Mask.save`.
SAVED_CONVENTION = "1 = bad, 0 = good"


# ============================================================================= Mask
class Mask:
    """A boolean pixel mask of one frame's data shape: ``good`` is True where usable.

    Parameters
    ----------
    good : array_like of bool
        True for usable pixels; shape ``(ss, fs)`` or ``(module, ss, fs)``. The array is
        copied.
    provenance : iterable of str, optional
        How the mask was made, one entry per step.

    Attributes
    ----------
    good : numpy.ndarray of bool
        Read-only; True = usable.
    provenance : tuple of str
        The steps that built the mask. ``a & b`` concatenates the steps of both (each one
        removes pixels); ``a | b`` and ``~a`` record one combined entry.

    Notes
    -----
    A mask is immutable: operators and constructors return new masks. It is not an array
    subclass on purpose, because "True" means *good* here and *bad* in the readers'
    ``bad`` arrays; use :attr:`good` or :attr:`bad` to get the array with the meaning you
    want, and :meth:`from_bad` to wrap a ``bad`` array (e.g. from :meth:`Run.read
    <sxlab.io.hdf5.Run.read>`).

    Examples
    --------
    >>> import numpy as np
    >>> m = Mask.from_bad(np.array([[True, False], [False, False]]))
    >>> m.fraction_bad
    0.25
    >>> (m & ~m).fraction_bad, (m | ~m).fraction_bad
    (1.0, 0.0)
    """

    __slots__ = ("_good", "provenance")
    __hash__ = None  # mutable-looking container semantics: equal masks need not hash equal

    def __init__(self, good, provenance: Iterable[str] = ()):
        arr = np.asarray(good)
        if arr.dtype != bool:
            raise TypeError(
                f"a Mask needs a boolean array (True = good), got dtype {arr.dtype}; "
                "use Mask.from_bad() for arrays where True means bad"
            )
        self._set(np.array(arr, dtype=bool, order="C", copy=True), provenance)

    def _set(self, good: np.ndarray, provenance: Iterable[str]) -> None:
        if good.ndim not in (2, 3):
            raise ValueError(f"a mask has 2 or 3 dims (ss, fs) or (module, ss, fs), "
                             f"got shape {good.shape}")
        good.flags.writeable = False
        self._good = good
        self.provenance = tuple(str(p) for p in provenance)

    @classmethod
    def _wrap(cls, good: np.ndarray, provenance: Iterable[str]) -> Mask:
        """Take ownership of ``good`` (a fresh C-contiguous bool array) without copying."""
        obj = cls.__new__(cls)
        obj._set(np.ascontiguousarray(good, dtype=bool), provenance)
        return obj

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_bad(cls, bad, provenance: Iterable[str] | str = ("from bad-pixel array",)) -> Mask:
        """Mask from a boolean array where True means *bad* (e.g. ``Run.read(i)[1]``).

        Parameters
        ----------
        bad : array_like of bool or xarray.DataArray
        provenance : str or iterable of str

        Returns
        -------
        Mask

        Examples
        --------
        >>> import numpy as np
        >>> Mask.from_bad(np.zeros((3, 4), bool)).fraction_bad
        0.0
        """
        arr = np.asarray(bad)
        if arr.dtype != bool:
            raise TypeError(f"bad must be a boolean array, got dtype {arr.dtype}")
        if isinstance(provenance, str):
            provenance = (provenance,)
        return cls._wrap(~arr, provenance)

    @classmethod
    def all_good(cls, geometry_or_shape) -> Mask:
        """A mask with every pixel good.

        Parameters
        ----------
        geometry_or_shape : Detector or tuple of int
            Detector (its ``data_shape`` is used) or a shape.

        Returns
        -------
        Mask

        Examples
        --------
        >>> Mask.all_good((2, 3)).shape
        (2, 3)
        """
        shape = _shape_of(geometry_or_shape)
        return cls._wrap(np.ones(shape, dtype=bool), ("all good",))

    # -------------------------------------------------------------- properties
    @property
    def good(self) -> np.ndarray:
        return self._good

    @property
    def bad(self) -> np.ndarray:
        """Read-only boolean array, True = bad (made on each use, not kept with the mask)."""
        bad = ~self._good
        bad.flags.writeable = False
        return bad

    @property
    def shape(self) -> tuple[int, ...]:
        return self._good.shape

    @property
    def n_bad(self) -> int:
        """Number of bad pixels."""
        return int(self._good.size - np.count_nonzero(self._good))

    @property
    def fraction_bad(self) -> float:
        """Fraction of bad pixels (0 for an empty mask)."""
        return self.n_bad / self._good.size if self._good.size else 0.0

    # --------------------------------------------------------------- operators
    def _other(self, other) -> Mask:
        if not isinstance(other, Mask):
            return NotImplemented
        if other.shape != self.shape:
            raise ValueError(f"cannot combine masks of shapes {self.shape} and {other.shape}")
        return other

    def __and__(self, other) -> Mask:
        other = self._other(other)
        if other is NotImplemented:
            return NotImplemented
        return Mask._wrap(self._good & other._good, self.provenance + other.provenance)

    def __or__(self, other) -> Mask:
        other = self._other(other)
        if other is NotImplemented:
            return NotImplemented
        text = f"either of [{_join(self.provenance)}] or [{_join(other.provenance)}]"
        return Mask._wrap(self._good | other._good, (text,))

    def __invert__(self) -> Mask:
        return Mask._wrap(~self._good, (f"not [{_join(self.provenance)}]",))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Mask):
            return NotImplemented
        return self.shape == other.shape and bool(np.array_equal(self._good, other._good))

    def __getstate__(self):
        return {"good": self._good, "provenance": self.provenance}

    def __setstate__(self, state):
        self._set(np.array(state["good"], dtype=bool), state["provenance"])

    # ------------------------------------------------------------------ export
    def to_dataarray(self, geometry: Detector | None = None):
        """The good-pixel array as an ``xarray.DataArray`` (dims from the geometry).

        Returns
        -------
        xarray.DataArray
            bool, dims ``("ss", "fs")`` or ``("module", "ss", "fs")``, name ``"good"``.
        """
        import xarray as xr

        dims = ("module", "ss", "fs") if self._good.ndim == 3 else ("ss", "fs")
        if geometry is not None:
            check_shape(self.shape, geometry.data_shape, "mask")
            dims = geometry.dims
        attrs = {"long_name": "usable pixel", "provenance": list(self.provenance)}
        return xr.DataArray(self._good, dims=dims, name="good", attrs=attrs)

    def save(self, path: str | os.PathLike, *, dataset: str = "mask",
             overwrite: bool = False) -> None:
        """Save as an HDF5 dataset of uint8, 1 = bad, 0 = good (gzip-compressed).

        The dataset's attributes record the convention (``convention = "1 = bad, 0 =
        good"``), the provenance (JSON list of strings) and the bad fraction. The file is
        opened in append mode, so a mask can be added to an existing file. Because bad
        pixels are 1, the dataset can be named in a CrystFEL geometry directly:
        ``mask0_file = <path>``, ``mask0_data = /<dataset>``, ``mask0_goodbits = 0x0``,
        ``mask0_badbits = 0x1``.

        Parameters
        ----------
        path : str or path-like
        dataset : str
            Dataset name inside the file.
        overwrite : bool
            Replace an existing dataset of that name (else raise ``ValueError``).

        Examples
        --------
        >>> import numpy as np, tempfile, os
        >>> m = Mask.from_bad(np.eye(3, dtype=bool))
        >>> p = os.path.join(tempfile.mkdtemp(), "mask.h5")
        >>> m.save(p)
        >>> Mask.load(p) == m
        True
        """
        import h5py

        with h5py.File(path, "a") as f:
            if dataset in f:
                if not overwrite:
                    raise ValueError(f"{path} already has a dataset {dataset!r}; "
                                     "pass overwrite=True to replace it")
                del f[dataset]
            ds = f.create_dataset(dataset, data=self.bad.view(np.uint8), compression="gzip",
                                  compression_opts=4, shuffle=True)
            ds.attrs["convention"] = SAVED_CONVENTION
            ds.attrs["provenance"] = json.dumps(list(self.provenance))
            ds.attrs["fraction_bad"] = self.fraction_bad
            ds.attrs["sxlab_mask_version"] = 1

    @classmethod
    def load(cls, path: str | os.PathLike, *, dataset: str = "mask") -> Mask:
        """Load a mask saved by :meth:`save`.

        Datasets without sxlab's ``convention`` attribute are read with the NXmx
        ``pixel_mask`` meaning: non-zero = bad.

        Parameters
        ----------
        path : str or path-like
        dataset : str

        Returns
        -------
        Mask
        """
        import h5py

        with h5py.File(path, "r") as f:
            ds = f[dataset]
            raw = ds[()]
            conv = ds.attrs.get("convention")
            prov = ds.attrs.get("provenance")
        if isinstance(conv, bytes):
            conv = conv.decode()
        if conv is not None and conv != SAVED_CONVENTION:
            raise ValueError(f"{path}:{dataset} has unknown mask convention {conv!r}")
        steps = json.loads(prov) if prov is not None else []
        steps.append(f"loaded from {os.fspath(path)}:{dataset}")
        return cls._wrap(np.asarray(raw) == 0, steps)

    def to_crystfel_bad_regions(self, geometry: Detector, *, prefix: str = "sxmask",
                                exclude_geometry: bool = False) -> list[BadRegion]:
        """Describe the bad pixels as CrystFEL bad regions (inclusive pixel rectangles).

        Each panel's bad pixels are cut into runs along fs, row by row, and runs with the
        same fs extent on consecutive rows are merged into one rectangle (a greedy
        run-length merge). The decomposition is **exact**: the union of the rectangles is
        precisely the set of bad pixels on the panels, and no rectangle covers a good
        pixel. It is not the smallest possible set of rectangles. Pixels on no panel cannot
        be expressed as bad regions and are skipped.

        Parameters
        ----------
        geometry : Detector
        prefix : str
            Regions are named ``<prefix><n>`` (written as ``bad_<prefix><n>/...``).
        exclude_geometry : bool
            Leave out pixels the geometry already declares bad
            (:meth:`Detector.bad_pixel_mask`).

        Returns
        -------
        list of BadRegion
            Data-array coordinates, one panel each.

        Examples
        --------
        >>> from sxlab.geometry import builtin_geometry
        >>> det = builtin_geometry("eiger1m")
        >>> regions = mask_pixel_ranges(det, [("p0", 10, 19, 5, 6)]).to_crystfel_bad_regions(det)
        >>> [(r.min_fs, r.max_fs, r.min_ss, r.max_ss, r.panel) for r in regions]
        [(10, 19, 5, 6, 'p0')]
        """
        check_shape(self.shape, geometry.data_shape, "mask")
        bad = self.bad
        if exclude_geometry:
            bad = bad & ~geometry.bad_pixel_mask()
        regions = []
        for i, p in enumerate(geometry.panels):
            for s0, s1, f0, f1 in _rectangles(bad[geometry.panel_slice(i)]):
                regions.append(BadRegion(
                    f"{prefix}{len(regions)}", min_fs=p.min_fs + f0, max_fs=p.min_fs + f1,
                    min_ss=p.min_ss + s0, max_ss=p.min_ss + s1, panel=p.name))
        return regions

    # ----------------------------------------------------------------- display
    def __repr__(self) -> str:
        steps = _join(self.provenance) or "no provenance"
        if len(steps) > 200:
            steps = steps[:197] + "..."
        return (f"<Mask {self.shape}: {self.n_bad} bad pixels ({100 * self.fraction_bad:.3f} %)"
                f"; {steps}>")

    def _repr_html_(self) -> str:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in self.provenance[:20])
        if len(self.provenance) > 20:
            items += f"<li>… {len(self.provenance) - 20} more</li>"
        return (
            f"<div><b>Mask</b> shape {self.shape}: {self.n_bad:,} bad of "
            f"{self._good.size:,} pixels ({100 * self.fraction_bad:.3f} %)"
            f"<ol style='margin:0'>{items}</ol></div>"
        )


def _join(steps: Sequence[str]) -> str:
    return " & ".join(steps)


def _shape_of(geometry_or_shape) -> tuple[int, ...]:
    if isinstance(geometry_or_shape, Detector):
        return tuple(geometry_or_shape.data_shape)
    shape = tuple(int(n) for n in geometry_or_shape)
    if len(shape) not in (2, 3) or min(shape) < 0:
        raise ValueError(f"expected a detector or a 2-D/3-D shape, got {geometry_or_shape!r}")
    return shape


def check_shape(shape, expected, what: str) -> None:
    """Raise ValueError naming ``what`` unless ``shape`` is the geometry's data shape.

    Examples
    --------
    >>> check_shape((4, 5), (4, 6), "image")
    Traceback (most recent call last):
    ...
    ValueError: image has shape (4, 5), the geometry's data shape is (4, 6)
    """
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{what} has shape {tuple(shape)}, the geometry's data shape is "
                         f"{tuple(expected)}")


def _detector(geometry) -> Detector:
    if not isinstance(geometry, Detector):
        raise TypeError(f"expected a Detector, got {type(geometry).__name__}")
    return geometry


def _label(geometry: Detector) -> str:
    return f" on {geometry.name!r}" if geometry.name else ""


def _fmt(v) -> str:
    return "None" if v is None else f"{v:g}" if isinstance(v, float) else repr(v)


def _rectangles(bad: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Exact cover of a 2-D boolean array by inclusive rectangles (s0, s1, f0, f1).

    Runs of True along the last axis are found per row; runs with identical (f0, f1) on
    consecutive rows are merged. Vectorised; cost O(pixels).
    """
    if not bad.any():
        return []
    h, w = bad.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = bad
    step = np.diff(padded, axis=1)
    rs, fs0 = np.nonzero(step == 1)  # row-major order: sorted by row, then fs
    _, fs1 = np.nonzero(step == -1)
    fs1 = fs1 - 1
    order = np.lexsort((rs, fs1, fs0))  # group identical (f0, f1), rows ascending
    rs, fs0, fs1 = rs[order], fs0[order], fs1[order]
    new = np.ones(rs.size, dtype=bool)
    new[1:] = (fs0[1:] != fs0[:-1]) | (fs1[1:] != fs1[:-1]) | (rs[1:] != rs[:-1] + 1)
    start = np.flatnonzero(new)
    end = np.append(start[1:], rs.size) - 1
    out = np.stack([rs[start], rs[end], fs0[start], fs1[start]], axis=1)
    out = out[np.lexsort((out[:, 2], out[:, 0]))]  # by first row, then fs
    return [tuple(int(v) for v in row) for row in out]


# ===================================================================== constructors
def mask_from_values(image_or_raw, geometry: Detector | None = None, *,
                     flag_values="auto", equal=None, above=None, below=None,
                     nonfinite: bool = True, use_geometry_flags: bool = True) -> Mask:
    """Mask pixels by their value in one frame.

    Parameters
    ----------
    image_or_raw : array_like or xarray.DataArray
        One frame, raw (as stored) or converted, of the geometry's data shape.
    geometry : Detector, optional
        Needed for ``use_geometry_flags`` and to check the shape.
    flag_values : "auto" or sequence of numbers
        Values that mark bad pixels. ``"auto"``: the largest value of an unsigned integer
        dtype (65535 for uint16, 2**32 - 1 for uint32), none for other dtypes (float
        images from :meth:`Run.read <sxlab.io.hdf5.Run.read>` have no flag values left;
        combine with ``Mask.from_bad(bad)`` instead). Raw EIGER data also flag
        ``2**bits - 2``: pass ``flag_values=(65534, 65535)`` for them.
    equal : number or sequence of numbers, optional
        More values marking bad pixels.
    above, below : float, optional
        Pixels with value strictly above / below are bad (e.g. ``above=max_adu``).
    nonfinite : bool
        NaN and ±inf are bad.
    use_geometry_flags : bool
        Apply each panel's ``flag_lessthan``, ``flag_morethan``, ``flag_equal`` (strict
        comparisons, as CrystFEL) and ``max_adu`` (value > max_adu is bad); needs
        ``geometry``.

    Returns
    -------
    Mask

    Examples
    --------
    >>> import numpy as np
    >>> raw = np.array([[0, 65535], [7, 100]], dtype=np.uint16)
    >>> mask_from_values(raw, above=50).bad.tolist()
    [[False, True], [False, True]]
    """
    arr = np.asarray(image_or_raw)
    if geometry is not None:
        check_shape(arr.shape, _detector(geometry).data_shape, "image")
    elif arr.ndim not in (2, 3):
        raise ValueError(f"expected one frame (2-D or 3-D), got shape {arr.shape}")
    if isinstance(flag_values, str):
        if flag_values != "auto":
            raise ValueError(f"flag_values must be 'auto' or a sequence, got {flag_values!r}")
        flag_values = (np.iinfo(arr.dtype).max,) if arr.dtype.kind == "u" else ()
    values = list(np.atleast_1d(flag_values)) if flag_values is not None else []
    if equal is not None:
        values += list(np.atleast_1d(equal))
    bad = np.zeros(arr.shape, dtype=bool)
    steps = []
    for v in values:
        bad |= arr == v
    if values:
        steps.append(f"value in {sorted({float(v) for v in values})}")
    if above is not None:
        bad |= arr > above
        steps.append(f"value > {above:g}")
    if below is not None:
        bad |= arr < below
        steps.append(f"value < {below:g}")
    if nonfinite and arr.dtype.kind in "fc":
        bad |= ~np.isfinite(arr)
        steps.append("non-finite value")
    if use_geometry_flags and geometry is not None:
        used = set()
        for i, p in enumerate(geometry.panels):
            sl = geometry.panel_slice(i)
            v = arr[sl]
            view = bad[sl]
            for key, op in (("flag_lessthan", np.less), ("flag_morethan", np.greater),
                            ("flag_equal", np.equal), ("max_adu", np.greater)):
                limit = getattr(p, key)
                if limit is None or (key == "max_adu" and not np.isfinite(limit)):
                    continue
                view |= op(v, limit)
                used.add(key)
        if used:
            steps.append(f"panel {', '.join(sorted(used))}")
    text = "mask_from_values: " + ("; ".join(steps) if steps else "no rule")
    return Mask._wrap(np.logical_not(bad, out=bad), (text,))


def _panel_indices(geometry: Detector, panel) -> list[int]:
    if panel is None:
        return list(range(geometry.n_panels))
    if isinstance(panel, str):
        return [geometry.panel_index(panel)]
    if isinstance(panel, Integral):
        if not 0 <= int(panel) < geometry.n_panels:
            raise IndexError(f"panel index {panel} out of range for {geometry.n_panels} panels")
        return [int(panel)]
    raise TypeError(f"panel must be a name, an index or None, got {panel!r}")


def mask_pixel_ranges(geometry: Detector, ranges) -> Mask:
    """Mask inclusive rectangles given in data-array pixel coordinates.

    Parameters
    ----------
    geometry : Detector
    ranges : iterable of (panel, min_fs, max_fs, min_ss, max_ss)
        ``panel`` is a name, an index, or None for every panel; the limits are inclusive
        data-array coordinates (as CrystFEL's ``bad`` regions with ``min_fs`` ...) and
        are clipped to the panel.

    Returns
    -------
    Mask

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m")
    >>> mask_pixel_ranges(det, [("p0", 0, 9, 0, 0), (None, 0, 0, 0, 9)]).n_bad
    19
    """
    geometry = _detector(geometry)
    good = np.ones(geometry.data_shape, dtype=bool)
    n = 0
    for item in ranges:
        try:
            panel, f0, f1, s0, s1 = item
        except (TypeError, ValueError):
            raise ValueError(
                f"each range is (panel, min_fs, max_fs, min_ss, max_ss), got {item!r}"
            ) from None
        if f0 > f1 or s0 > s1:
            raise ValueError(f"range {item!r} has min > max")
        for i in _panel_indices(geometry, panel):
            p = geometry.panels[i]
            a0, a1 = max(int(f0), p.min_fs) - p.min_fs, min(int(f1), p.max_fs) - p.min_fs
            b0, b1 = max(int(s0), p.min_ss) - p.min_ss, min(int(s1), p.max_ss) - p.min_ss
            if a0 <= a1 and b0 <= b1:
                good[geometry.panel_slice(i)][b0 : b1 + 1, a0 : a1 + 1] = False
        n += 1
    return Mask._wrap(good, (f"mask_pixel_ranges: {n} range(s){_label(geometry)}",))


def _units_scale(units: str, p: Panel) -> float:
    """Factor converting a length in ``units`` to pixels of panel ``p``."""
    if units == "px":
        return 1.0
    if units == "m":
        return p.res
    raise ValueError(f"units must be 'px' or 'm', got {units!r}")


def _panel_lab_extent(p: Panel) -> tuple[float, float, float, float]:
    """Lab x and y range (pixels) of the panel's pixel corners."""
    f = np.array([0.0, p.width, 0.0, p.width])
    s = np.array([0.0, 0.0, p.height, p.height])
    x = p.corner_x + f * p.fs[0] + s * p.ss[0]
    y = p.corner_y + f * p.fs[1] + s * p.ss[1]
    return x.min(), x.max(), y.min(), y.max()


def mask_lab_region(geometry: Detector, min_x: float, max_x: float, min_y: float,
                    max_y: float, *, units: str = "px", panel=None) -> Mask:
    """Mask a rectangle given in lab coordinates (CrystFEL lab-frame bad region).

    A pixel is bad when its **corner** (``x = corner_x + fs·fs_x + ss·ss_x`` with
    panel-relative integer ``fs``, ``ss``, likewise ``y``) lies strictly inside the
    rectangle, as for a CrystFEL ``bad<name>/min_x`` ... region and
    :meth:`Detector.bad_pixel_mask`. Each panel is intersected over the rectangle's
    bounding box in its pixel grid only, so the cost grows with the region, not with the
    detector.

    Parameters
    ----------
    geometry : Detector
    min_x, max_x, min_y, max_y : float
        Limits; may be infinite.
    units : {"px", "m"}
        ``"px"``: pixels of each panel (CrystFEL's unit; panels with different pixel
        sizes read the same number differently); ``"m"``: metres.
    panel : str or int, optional
        Restrict the region to one panel.

    Returns
    -------
    Mask

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger4m")
    >>> mask_lab_region(det, -10, 10, -5, 5).n_bad   # 20 x 10 pixel corners inside
    200
    """
    geometry = _detector(geometry)
    limits = np.array([min_x, max_x, min_y, max_y], dtype=float)
    if np.isnan(limits).any():
        raise ValueError("lab region limits must not be NaN")
    if limits[0] > limits[1] or limits[2] > limits[3]:
        raise ValueError(f"lab region has min > max: x {min_x}..{max_x}, y {min_y}..{max_y}")
    # np.zeros maps untouched pages lazily: only the region's rows are written, and one
    # pass at the end turns the bad array into the good one.
    bad = np.zeros(geometry.data_shape, dtype=bool)
    for i in _panel_indices(geometry, panel):
        p = geometry.panels[i]
        lim = limits * _units_scale(units, p)
        # Clip infinite or far-away limits just outside the panel's extent: the strict
        # comparisons give the same result for every pixel corner of the panel.
        x0, x1, y0, y1 = _panel_lab_extent(p)
        lim[:2] = np.clip(lim[:2], x0 - 1.0, x1 + 1.0)
        lim[2:] = np.clip(lim[2:], y0 - 1.0, y1 + 1.0)
        region = BadRegion("lab", min_x=lim[0], max_x=lim[1], min_y=lim[2], max_y=lim[3])
        mark_lab_region(p, region, bad[geometry.panel_slice(i)])
    text = (f"mask_lab_region: x {_fmt(float(min_x))}..{_fmt(float(max_x))}, y "
            f"{_fmt(float(min_y))}..{_fmt(float(max_y))} {units}{_label(geometry)}")
    return Mask._wrap(np.logical_not(bad, out=bad), (text,))


def _row_interval_linear(c0, c1, lo, hi):
    """Intersect per-row intervals [lo, hi] with {f : c0 + c1·f >= 0}; c0 per row, c1 scalar."""
    if abs(c1) < 1e-12:
        empty = c0 < 0
        return np.where(empty, np.inf, lo), np.where(empty, -np.inf, hi)
    t = -c0 / c1
    if c1 > 0:
        return np.maximum(lo, t), hi
    return lo, np.minimum(hi, t)


def _mark_candidates(view, lo, hi, predicate) -> None:
    """Mark pixels of ``view`` with fs in [floor(lo) - 1, ceil(hi) + 1] per row where
    ``predicate(ss, fs)`` holds. Cost: rows + candidate pixels."""
    h, w = view.shape
    ok = np.isfinite(lo) & np.isfinite(hi) & (lo <= hi)
    if not ok.any():
        return
    rows = np.flatnonzero(ok)
    a = np.clip(np.floor(lo[rows]) - 1, 0, w - 1).astype(np.int64)
    b = np.clip(np.ceil(hi[rows]) + 1, 0, w - 1).astype(np.int64)
    keep = (hi[rows] >= -1) & (lo[rows] <= w)
    rows, a, b = rows[keep], a[keep], b[keep]
    counts = b - a + 1
    if counts.size == 0:
        return
    total = int(counts.sum())
    ss = np.repeat(rows, counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    fs = np.repeat(a, counts) + (np.arange(total) - starts)
    inside = predicate(ss, fs)
    view[ss[inside], fs[inside]] = True


def _beamstop_shadow(p: Panel, fs, ss, x0: float, y0: float, radius: float,
                    rod_width: float | None, rod_angle_deg: float) -> np.ndarray:
    """The per-pixel beam-stop rule (all lengths in pixels of panel ``p``).

    True where the lab (x, y) of the pixel **centre** — panel-relative integer ``fs``,
    ``ss``; ``x = corner_x + (fs + 0.5)·fs_x + (ss + 0.5)·ss_x`` — lies within ``radius``
    of (x0, y0), or on the rod: ``along >= 0`` and ``|across| <= rod_width / 2`` with
    ``along``/``across`` the coordinates along/across direction ``rod_angle_deg``
    (counter-clockwise from lab +x) from (x0, y0).
    """
    fc = np.asarray(fs, dtype=float) + 0.5
    sc = np.asarray(ss, dtype=float) + 0.5
    x = p.corner_x + fc * p.fs[0] + sc * p.ss[0] - x0
    y = p.corner_y + fc * p.fs[1] + sc * p.ss[1] - y0
    out = np.hypot(x, y) <= radius
    if rod_width is not None and rod_width > 0:
        a = np.deg2rad(rod_angle_deg)
        along = x * np.cos(a) + y * np.sin(a)
        across = -x * np.sin(a) + y * np.cos(a)
        out |= (along >= 0) & (np.abs(across) <= 0.5 * rod_width)
    return out


def mask_beamstop(geometry: Detector, radius_px: float, *, rod_width_px: float | None = None,
                  rod_angle_deg: float = 0.0, center=(0.0, 0.0), units: str = "px") -> Mask:
    """Mask the shadow of a round beam stop and of the rod holding it.

    A pixel is bad when the lab (x, y) of its centre lies within ``radius_px`` of
    ``center`` (by default the beam axis), or on the rod: a strip of width
    ``rod_width_px`` from ``center`` to infinity in direction ``rod_angle_deg``. Each
    panel row is intersected analytically with the disc and the strip, and only the
    pixels near the intersection are tested, so the cost grows with the shadow's size
    (plus one step per panel row), never with the detector's pixel count.

    Parameters
    ----------
    geometry : Detector
    radius_px : float
        Disc radius.
    rod_width_px : float, optional
        Full width of the rod; None or 0: no rod.
    rod_angle_deg : float
        Direction of the rod from the centre, degrees counter-clockwise from lab +x
        (towards +y), as :class:`sxlab.simulate.SimulationParams` ``beamstop_rod_angle_deg``.
    center : (float, float)
        Lab (x, y) of the disc centre.
    units : {"px", "m"}
        Unit of ``radius_px``, ``rod_width_px`` and ``center``: pixels of each panel, or
        metres.

    Returns
    -------
    Mask

    Notes
    -----
    The test uses the lab x and y of the pixel centre (the projection along z); for
    panels tilted out of the detector plane this is an approximation of the true shadow.

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger16m")
    >>> mask_beamstop(det, 50).n_bad            # about pi * 50**2
    7859
    >>> mask_beamstop(det, 50, rod_width_px=12, rod_angle_deg=30).n_bad
    36168
    """
    geometry = _detector(geometry)
    if not radius_px >= 0:
        raise ValueError(f"radius must be >= 0, got {radius_px}")
    if rod_width_px is not None and not rod_width_px >= 0:
        raise ValueError(f"rod width must be >= 0, got {rod_width_px}")
    bad = np.zeros(geometry.data_shape, dtype=bool)  # pages are mapped lazily
    a = np.deg2rad(rod_angle_deg)
    ca, sa = np.cos(a), np.sin(a)
    for i, p in enumerate(geometry.panels):
        k = _units_scale(units, p)
        r, x0, y0 = radius_px * k, center[0] * k, center[1] * k
        w = None if rod_width_px is None else rod_width_px * k
        # Along a panel row, the centre position is linear in fs: (A + f·a, B + f·b).
        s = np.arange(p.height, dtype=float) + 0.5
        A = p.corner_x + 0.5 * p.fs[0] + s * p.ss[0] - x0
        B = p.corner_y + 0.5 * p.fs[1] + s * p.ss[1] - y0
        fa, fb = p.fs[0], p.fs[1]
        view = bad[geometry.panel_slice(i)]

        def pred(ss, fs, p=p, x0=x0, y0=y0, r=r, w=w):
            return _beamstop_shadow(p, fs, ss, x0, y0, r, w, rod_angle_deg)

        full_lo = np.zeros(p.height)
        full_hi = np.full(p.height, p.width - 1.0)
        # Disc: (a²+b²) f² + 2 (A a + B b) f + (A² + B² - r²) <= 0.
        qa = fa * fa + fb * fb
        qb = A * fa + B * fb
        qc = A * A + B * B - r * r
        if qa < 1e-12:
            lo, hi = _row_interval_linear(-qc, 0.0, full_lo, full_hi)
        else:
            disc = qb * qb - qa * qc
            root = np.sqrt(np.where(disc >= 0, disc, np.nan))
            lo, hi = (-qb - root) / qa, (-qb + root) / qa
        _mark_candidates(view, lo, hi, pred)
        if w is not None and w > 0:
            lo, hi = full_lo, full_hi
            # along >= 0
            lo, hi = _row_interval_linear(A * ca + B * sa, fa * ca + fb * sa, lo, hi)
            # -w/2 <= across <= w/2, across = -x sin + y cos
            c0 = -A * sa + B * ca
            c1 = -fa * sa + fb * ca
            lo, hi = _row_interval_linear(c0 + 0.5 * w, c1, lo, hi)
            lo, hi = _row_interval_linear(0.5 * w - c0, -c1, lo, hi)
            _mark_candidates(view, lo, hi, pred)
    rod = (f", rod {rod_width_px:g} wide at {rod_angle_deg:g}°" if rod_width_px else "")
    text = (f"mask_beamstop: radius {radius_px:g}{rod}, centre ({center[0]:g}, "
            f"{center[1]:g}) {units}{_label(geometry)}")
    return Mask._wrap(np.logical_not(bad, out=bad), (text,))


SHAPES = ("rectangle", "circle", "polygon", "brush")


def _inside_polygon(x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray) -> np.ndarray:
    """Even-odd rule: True where (x, y) is inside the closed polygon (vx, vy)."""
    inside = np.zeros(x.shape, dtype=bool)
    n = vx.size
    for i in range(n):
        x0, y0, x1, y1 = vx[i], vy[i], vx[(i + 1) % n], vy[(i + 1) % n]
        if y0 == y1:
            continue
        crosses = (y0 > y) != (y1 > y)
        xc = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < xc)
    return inside


def _shape_parts(kind: str, pts: np.ndarray, radius: float):
    """(bounding box, predicate(x, y)) pieces whose union is the shape (lab pixels)."""
    if kind == "rectangle":
        (xa, ya), (xb, yb) = pts.min(axis=0), pts.max(axis=0)
        return [((xa, xb, ya, yb), lambda x, y: (x >= xa) & (x <= xb) & (y >= ya) & (y <= yb))]
    if kind == "circle":
        cx, cy = pts[0]
        return [((cx - radius, cx + radius, cy - radius, cy + radius),
                 lambda x, y: np.hypot(x - cx, y - cy) <= radius)]
    if kind == "polygon":
        vx, vy = pts[:, 0].copy(), pts[:, 1].copy()
        box = (vx.min(), vx.max(), vy.min(), vy.max())
        return [(box, lambda x, y: _inside_polygon(x, y, vx, vy))]
    parts = []  # brush: capsules around each segment (a dot for a single point)
    segs = np.stack([pts[:-1], pts[1:]], axis=1) if len(pts) > 1 else pts[None, [0, 0]]
    for (ax, ay), (bx, by) in segs:
        def inside(x, y, ax=ax, ay=ay, bx=bx, by=by):
            dx, dy = bx - ax, by - ay
            ll = dx * dx + dy * dy
            t = np.zeros_like(x) if ll == 0 else np.clip(((x - ax) * dx + (y - ay) * dy) / ll,
                                                         0.0, 1.0)
            return np.hypot(x - ax - t * dx, y - ay - t * dy) <= radius
        box = (min(ax, bx) - radius, max(ax, bx) + radius, min(ay, by) - radius,
               max(ay, by) + radius)
        parts.append((box, inside))
    return parts


def mask_lab_shape(geometry: Detector, kind: str, points, *, radius: float = 0.0,
                   units: str = "px") -> Mask:
    """Mask the pixels under a shape drawn in the lab plane (a painted mask stroke).

    A pixel is bad when the lab (x, y) of its **centre** lies inside the shape (edges
    included), the rule by which :class:`sxlab.widgets.MaskPainter` turns what is drawn
    on the assembled detector into data-array pixels of every panel the shape covers.
    Each panel is tested over the shape's bounding box in its own pixel grid only, so the
    cost grows with the shape, not with the detector.

    Parameters
    ----------
    geometry : Detector
    kind : {"rectangle", "circle", "polygon", "brush"}
        ``rectangle``: two opposite corners; ``circle``: the centre, with ``radius``;
        ``polygon``: three or more vertices (even-odd rule); ``brush``: a stroke through
        one or more points, ``radius`` wide on each side (round ends).
    points : array_like, shape (n, 2)
        Lab (x, y): x horizontal, y up, origin on the beam axis.
    radius : float
        Circle or brush radius.
    units : {"px", "m"}
        Unit of ``points`` and ``radius``: pixels of each panel, or metres.

    Returns
    -------
    Mask

    Notes
    -----
    Like :func:`mask_beamstop`, the test uses the lab x and y of the pixel centre (the
    projection along z).

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m")
    >>> mask_lab_shape(det, "rectangle", [(10, 20), (19.9, 24.9)]).n_bad   # 10 x 5 centres
    50
    >>> mask_lab_shape(det, "circle", [(100, 100)], radius=10).n_bad      # about pi * 100
    316
    """
    geometry = _detector(geometry)
    if kind not in SHAPES:
        raise ValueError(f"unknown shape {kind!r}; shapes are {SHAPES}")
    pts = np.atleast_2d(np.asarray(points, dtype=float))
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise ValueError(f"{kind}: points must be finite (x, y) pairs, got {points!r}")
    need = {"rectangle": 2, "circle": 1, "polygon": 3, "brush": 1}[kind]
    if len(pts) < need or (kind == "rectangle" and len(pts) != 2):
        raise ValueError(f"a {kind} needs {'exactly' if kind == 'rectangle' else 'at least'} "
                         f"{need} point(s), got {len(pts)}")
    if kind in ("circle", "brush") and not radius > 0:
        raise ValueError(f"a {kind} needs a positive radius, got {radius}")
    bad = np.zeros(geometry.data_shape, dtype=bool)
    for i, p in enumerate(geometry.panels):
        k = _units_scale(units, p)
        view = bad[geometry.panel_slice(i)]
        a = np.array([[p.fs[0], p.ss[0]], [p.fs[1], p.ss[1]]])
        if abs(np.linalg.det(a)) < 1e-12:
            continue  # edge-on in the lab x-y plane: no pixel centre is inside any shape
        inv = np.linalg.inv(a)
        for (x0, x1, y0, y1), inside in _shape_parts(kind, pts * k, radius * k):
            corners = np.array([[x0, x1, x0, x1], [y0, y0, y1, y1]])
            rel = inv @ (corners - np.array([[p.corner_x], [p.corner_y]]))
            f0, f1 = (np.clip([np.floor(rel[0].min()) - 1, np.ceil(rel[0].max()) + 1],
                              0, p.width).astype(int))
            s0, s1 = (np.clip([np.floor(rel[1].min()) - 1, np.ceil(rel[1].max()) + 1],
                              0, p.height).astype(int))
            if f0 >= f1 or s0 >= s1:
                continue
            fc = np.arange(f0, f1, dtype=float)[None, :] + 0.5
            sc = np.arange(s0, s1, dtype=float)[:, None] + 0.5
            x = p.corner_x + fc * p.fs[0] + sc * p.ss[0]
            y = p.corner_y + fc * p.fs[1] + sc * p.ss[1]
            view[s0:s1, f0:f1] |= inside(x, y)
    where = ", ".join(f"({_fmt(float(x))}, {_fmt(float(y))})" for x, y in pts[:8])
    if len(pts) > 8:
        where += f", ... ({len(pts)} points)"
    extra = f", radius {radius:g}" if kind in ("circle", "brush") else ""
    text = f"mask_lab_shape: {kind} {where}{extra} {units}{_label(geometry)}"
    return Mask._wrap(np.logical_not(bad, out=bad), (text,))


def mask_resolution(geometry: Detector, d_min: float | None = None,
                    d_max: float | None = None) -> Mask:
    """Mask pixels outside a resolution range.

    Parameters
    ----------
    geometry : Detector
        Its cached resolution map (``geometry.maps.d_A``, pixel centres, nominal
        wavelength) is used.
    d_min : float, optional
        High-resolution limit in Å: pixels with ``d < d_min`` are bad.
    d_max : float, optional
        Low-resolution limit in Å: pixels with ``d > d_max`` are bad (the direct beam has
        d = inf).

    Returns
    -------
    Mask
        Pixels on no panel (NaN resolution) are left good.

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m", clen=0.1, wavelength_A=1.0)
    >>> m = mask_resolution(det, d_min=3.0, d_max=30.0)
    >>> bool(m.good[det.data_shape[0] // 2, 0])   # edge of the panel: 2.79 Å
    False
    """
    geometry = _detector(geometry)
    if d_min is not None and d_max is not None and d_min > d_max:
        raise ValueError(f"d_min {d_min} is larger than d_max {d_max}")
    d = geometry.maps.d_A
    bad = np.zeros(d.shape, dtype=bool)
    if d_min is not None:
        np.less(d, d_min, out=bad)
    if d_max is not None:
        bad |= d > d_max
    text = f"mask_resolution: d_min={_fmt(d_min)} Å, d_max={_fmt(d_max)} Å{_label(geometry)}"
    return Mask._wrap(np.logical_not(bad, out=bad), (text,))


def mask_panel_edges(geometry: Detector, n: int) -> Mask:
    """Mask the ``n`` outermost rows and columns of every panel.

    Returns
    -------
    Mask

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m")
    >>> mask_panel_edges(det, 1).n_bad == 2 * (1030 + 1065) - 4
    True
    """
    geometry = _detector(geometry)
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    good = np.ones(geometry.data_shape, dtype=bool)
    if n:
        for i in range(geometry.n_panels):
            view = good[geometry.panel_slice(i)]
            view[:n, :] = False
            view[-n:, :] = False
            view[:, :n] = False
            view[:, -n:] = False
    return Mask._wrap(good, (f"mask_panel_edges: {n} px{_label(geometry)}",))


def mask_no_index(geometry: Detector) -> Mask:
    """Mask the panels marked ``no_index`` in the geometry.

    Returns
    -------
    Mask

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> mask_no_index(builtin_geometry("eiger1m")).n_bad
    0
    """
    geometry = _detector(geometry)
    good = np.ones(geometry.data_shape, dtype=bool)
    names = []
    for i, p in enumerate(geometry.panels):
        if p.no_index:
            good[geometry.panel_slice(i)] = False
            names.append(p.name)
    return Mask._wrap(good, (f"mask_no_index: {len(names)} panel(s){_label(geometry)}",))


def mask_from_geometry(geometry: Detector) -> Mask:
    """Mask what the geometry declares bad (:meth:`Detector.bad_pixel_mask`).

    Bad regions (pixel ranges and lab rectangles), ``mask_edge_pixels``, ``no_index``
    panels and pixels that belong to no panel. Value flags and mask files need data:
    see :func:`mask_from_values` and :func:`mask_from_panel_masks`.

    Returns
    -------
    Mask

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> mask_from_geometry(builtin_geometry("eiger4m")).n_bad   # module gaps
    250330
    """
    geometry = _detector(geometry)
    bad = geometry.bad_pixel_mask()
    return Mask._wrap(np.logical_not(bad, out=bad),
                      (f"mask_from_geometry: {len(geometry.bad_regions)} bad region(s), "
                       f"edges, no_index, gaps{_label(geometry)}",))


def _bits_bad(v: np.ndarray, goodbits: int, badbits: int) -> np.ndarray:
    """CrystFEL's rule: bad if (v & goodbits) != goodbits or (v & badbits) != 0."""
    v = np.asarray(v)
    if v.dtype.kind == "b":
        v = v.astype(np.uint8)
    elif v.dtype.kind == "f":
        if not np.all(np.isfinite(v) & (v == np.round(v))):
            raise ValueError("mask values must be integers")
        v = v.astype(np.int64)
    elif v.dtype.kind not in "iu":
        raise TypeError(f"mask values must be integers, got dtype {v.dtype}")
    v = v.astype(np.int64, copy=False).view(np.uint64) if v.dtype.kind == "i" \
        else v.astype(np.uint64, copy=False)
    good = np.uint64(int(goodbits))
    badb = np.uint64(int(badbits))
    out = np.zeros(v.shape, dtype=bool)
    if goodbits:
        out |= (v & good) != good
    if badbits:
        out |= (v & badb) != 0
    return out


def _read_mask_dataset(path, dataset: str, shape: tuple) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        try:
            ds = f[dataset]
        except KeyError:
            raise KeyError(f"{os.fspath(path)} has no dataset {dataset!r}") from None
        if ds.shape == shape:
            return ds[()]
        if ds.shape == (1, *shape):
            return ds[0]
        raise ValueError(f"mask dataset {os.fspath(path)}:{dataset} has shape {ds.shape}; "
                         f"expected {shape}")


def _check_bits(goodbits, badbits) -> None:
    for name, v in (("goodbits", goodbits), ("badbits", badbits)):
        if not isinstance(v, Integral) or v < 0 or v >= 2**64:
            raise ValueError(f"{name} must be an integer in [0, 2**64), got {v!r}")


def mask_from_hdf5(geometry_or_shape, path: str | os.PathLike, dataset: str, *,
                   goodbits: int = 0, badbits: int = 0) -> Mask:
    """Mask from a bit-mask dataset in an HDF5 file, with CrystFEL's rule.

    A pixel is bad if ``(value & goodbits) != goodbits`` or ``(value & badbits) != 0``.
    With both zero no pixel is bad; for an NXmx ``pixel_mask`` (non-zero = bad) use
    ``badbits=0xFFFFFFFF``.

    Parameters
    ----------
    geometry_or_shape : Detector or tuple of int
        The dataset must have this data shape (a leading axis of length 1 is allowed).
    path : str or path-like
    dataset : str
    goodbits, badbits : int

    Returns
    -------
    Mask

    Examples
    --------
    >>> import h5py, numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.h5")
    >>> with h5py.File(p, "w") as f:
    ...     _ = f.create_dataset("pixel_mask", data=np.array([[0, 1], [4, 0]], np.uint32))
    >>> mask_from_hdf5((2, 2), p, "pixel_mask", badbits=0x1).bad.tolist()
    [[False, True], [False, False]]
    """
    _check_bits(goodbits, badbits)
    shape = _shape_of(geometry_or_shape)
    raw = _read_mask_dataset(path, dataset, shape)
    bad = _bits_bad(raw, goodbits, badbits)
    text = (f"mask_from_hdf5: {os.fspath(path)}:{dataset} goodbits=0x{int(goodbits):x} "
            f"badbits=0x{int(badbits):x}")
    return Mask._wrap(np.logical_not(bad, out=bad), (text,))


def mask_from_panel_masks(geometry: Detector, base_dir: str | os.PathLike | None = None, *,
                          data_file: str | os.PathLike | None = None) -> Mask:
    """Mask from the mask datasets the geometry's panels name (CrystFEL ``mask0_data`` ...).

    Every panel's :class:`~sxlab.geometry.PanelMask` entries are applied to the panel's
    pixels with CrystFEL's rule (bad if ``(v & goodbits) != goodbits`` or
    ``(v & badbits) != 0``). A mask dataset has the layout of one frame's data array (a
    leading axis of length 1 is allowed); each dataset is read once.

    Parameters
    ----------
    geometry : Detector
    base_dir : str or path-like, optional
        Directory that relative ``mask_file`` names are relative to (default: the current
        directory).
    data_file : str or path-like, optional
        File to read masks without a ``mask_file`` from (CrystFEL reads them from the
        frame's own data file).

    Returns
    -------
    Mask
        All good when no panel names a mask.

    Raises
    ------
    ValueError
        A panel's mask has no ``mask_file`` and no ``data_file`` is given.
    """
    geometry = _detector(geometry)
    shape = tuple(geometry.data_shape)
    good = np.ones(shape, dtype=bool)
    cache: dict[tuple[str, str], np.ndarray] = {}
    used = []
    for i, p in enumerate(geometry.panels):
        for m in p.masks:
            if m.file is None:
                if data_file is None:
                    raise ValueError(f"panel {p.name!r}: mask {m.data!r} has no mask_file; "
                                     "pass data_file (the frame's data file)")
                path = os.fspath(data_file)
            else:
                path = m.file
                if base_dir is not None and not os.path.isabs(path):
                    path = os.path.join(os.fspath(base_dir), path)
            key = (path, m.data)
            if key not in cache:
                cache[key] = _read_mask_dataset(path, m.data, shape)
                used.append(f"{path}:{m.data}")
            sl = geometry.panel_slice(i)
            good[sl] &= ~_bits_bad(cache[key][sl], m.goodbits, m.badbits)
    text = f"mask_from_panel_masks: {', '.join(used) if used else 'no mask datasets'}"
    return Mask._wrap(good, (text,))


def mask_to_geom_lines(mask: Mask, geometry: Detector, *, prefix: str = "sxmask",
                       exclude_geometry: bool = False) -> str:
    """CrystFEL geometry-file lines describing the mask's bad pixels as bad regions.

    The rectangles are those of :meth:`Mask.to_crystfel_bad_regions` (exact), written as
    ``bad_<prefix><n>/min_fs = ...`` lines with the panel named; append them to a geometry
    file written by :func:`sxlab.io.write_geom`. Reading the result back gives a detector
    whose :meth:`~sxlab.geometry.Detector.bad_pixel_mask` contains exactly these pixels.

    Parameters
    ----------
    mask : Mask
    geometry : Detector
    prefix : str
    exclude_geometry : bool
        Leave out pixels the geometry already declares bad.

    Returns
    -------
    str
        Lines separated by newlines, ending with one (empty when nothing is bad).

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m")
    >>> print(mask_to_geom_lines(mask_pixel_ranges(det, [(0, 3, 4, 7, 7)]), det), end="")
    bad_sxmask0/min_fs = 3
    bad_sxmask0/max_fs = 4
    bad_sxmask0/min_ss = 7
    bad_sxmask0/max_ss = 7
    bad_sxmask0/panel = p0
    """
    if not isinstance(mask, Mask):
        raise TypeError(f"expected a Mask, got {type(mask).__name__}")
    if not prefix or any(c in prefix for c in " \t/=;,"):
        raise ValueError(f"prefix {prefix!r} cannot be used in a geometry file")
    lines = []
    for r in mask.to_crystfel_bad_regions(geometry, prefix=prefix,
                                          exclude_geometry=exclude_geometry):
        name = f"bad_{r.name}"
        lines += [f"{name}/min_fs = {r.min_fs}", f"{name}/max_fs = {r.max_fs}",
                  f"{name}/min_ss = {r.min_ss}", f"{name}/max_ss = {r.max_ss}",
                  f"{name}/panel = {r.panel}"]
    return "".join(line + "\n" for line in lines)


# ================================================================ trial masks
@dataclass(frozen=True)
class MaskParams(FrozenParams):
    """The static mask of a processing trial (the ``[mask]`` section; :func:`build_mask`).

    Attributes
    ----------
    beamstop_radius_px, beamstop_rod_width_px, beamstop_rod_angle_deg : float
        Beam-stop shadow (disc around the beam plus a rod); radius 0 disables it.
    d_min_A, d_max_A : float or None
        Resolution limits in Å.
    edge_pixels : int
        Pixels masked at every panel edge.
    mask_file, mask_dataset : str or None
        An HDF5 mask dataset (bad where ``value & badbits``) to add.
    mask_badbits : int
    """

    beamstop_radius_px: float = 0.0
    beamstop_rod_width_px: float = 0.0
    beamstop_rod_angle_deg: float = 0.0
    d_min_A: float | None = None
    d_max_A: float | None = None
    edge_pixels: int = 0
    mask_file: str | None = None
    mask_dataset: str | None = None
    mask_badbits: int = 1

    _LIMITS = {"beamstop_radius_px": "[0, inf)", "beamstop_rod_width_px": "[0, inf)",
               "beamstop_rod_angle_deg": "[-360, 360]", "d_min_A": "(0, inf)",
               "d_max_A": "(0, inf]", "edge_pixels": "[0, inf)", "mask_badbits": "[0, inf)"}


def build_mask(geometry: Detector, params: MaskParams | None = None) -> Mask:
    """The static mask of a trial: the geometry's bad pixels and those of ``params``.

    Beam-stop shadow (disc and rod), resolution limits, panel edges and an HDF5 mask
    file, combined with :func:`mask_from_geometry`. Built once per worker by the pipeline.

    Parameters
    ----------
    geometry : Detector
    params : MaskParams, optional
        Default: nothing beyond the geometry's bad pixels.

    Returns
    -------
    Mask

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m")
    >>> m = build_mask(det, MaskParams(beamstop_radius_px=30, d_min_A=2.0))
    >>> m.n_bad > mask_from_geometry(det).n_bad
    True
    """
    mp = params or MaskParams()
    mask = mask_from_geometry(geometry)
    if mp.beamstop_radius_px > 0:
        mask &= mask_beamstop(geometry, mp.beamstop_radius_px,
                              rod_width_px=mp.beamstop_rod_width_px or None,
                              rod_angle_deg=mp.beamstop_rod_angle_deg)
    if mp.d_min_A is not None or mp.d_max_A is not None:
        mask &= mask_resolution(geometry, d_min=mp.d_min_A, d_max=mp.d_max_A)
    if mp.edge_pixels > 0:
        mask &= mask_panel_edges(geometry, mp.edge_pixels)
    if mp.mask_file is not None:
        mask &= mask_from_hdf5(geometry, mp.mask_file, mp.mask_dataset or "/data/data",
                               badbits=mp.mask_badbits)
    return mask


# ==================================================================== helpers
def bad_pixels(mask: Mask | None, bad, shape: tuple) -> np.ndarray | None:
    """Combine a static ``mask`` and a per-frame ``bad`` array into one bad array or None.

    Parameters
    ----------
    mask : Mask or None
        Static mask (True = good). Boolean arrays are refused here, so that their sense
        cannot be mistaken: pass them as ``bad`` (True = bad).
    bad : array_like of bool or None
        Per-frame bad pixels (True = bad).
    shape : tuple of int
        The data shape both must have.

    Returns
    -------
    ndarray of bool or None
        True = bad; None when neither was given.

    Examples
    --------
    >>> bad_pixels(Mask(np.array([[True, False]])), np.array([[True, False]]), (1, 2)).tolist()
    [[True, True]]
    """
    out = None
    if mask is not None:
        if not isinstance(mask, Mask):
            raise TypeError(f"mask must be a Mask (True = good), got {type(mask).__name__}; "
                            "pass boolean arrays with True = bad as bad=")
        check_shape(mask.shape, shape, "mask")
        out = mask.bad
    if bad is not None:
        if isinstance(bad, Mask):
            raise TypeError("bad= takes a boolean array (True = bad); pass a Mask as mask=")
        b = np.asarray(bad)
        if b.dtype != bool:
            raise TypeError(f"bad must be a boolean array, got dtype {b.dtype}")
        check_shape(b.shape, shape, "bad")
        out = b if out is None else (out | b)
    return out


def good_pixels(mask, shape: tuple) -> np.ndarray:
    """A fresh boolean array of good pixels from a Mask, a boolean array or None.

    Parameters
    ----------
    mask : Mask, ndarray of bool or None
        Anything with a ``.good`` attribute (a :class:`Mask`) or a boolean array in which
        **True marks a good pixel**; None: every pixel is good.
    shape : tuple of int
        The geometry's data shape.

    Examples
    --------
    >>> good_pixels(None, (1, 2)).tolist()
    [[True, True]]
    >>> good_pixels(np.zeros((1, 2), np.uint8), (1, 2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: mask must be a Mask or a boolean array (True = good pixel), got dtype uint8; ...
    """
    if mask is None:
        return np.ones(shape, dtype=bool)
    good = getattr(mask, "good", None)
    if good is None:
        good = mask
    good = np.asarray(good)
    if good.dtype != np.bool_:
        raise TypeError(
            f"mask must be a Mask or a boolean array (True = good pixel), got dtype "
            f"{good.dtype}; for a bad-pixel array b pass ~b, for an NXmx pixel_mask pass "
            "pixel_mask == 0"
        )
    check_shape(good.shape, shape, "mask")
    return good.copy()
