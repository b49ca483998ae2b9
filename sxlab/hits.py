"""Hit finding, radial profiles, the solvent-ring ratio and run-wide image statistics.

* :func:`hit_rule`, :func:`is_hit`, :func:`hit_table` — a frame is a hit when its number
  of peaks is within ``[min_peaks, max_peaks]`` (:class:`HitParams`, the pipeline's
  ``[hits]`` section).
* :func:`radial_profile` / :class:`RadialProfiler` — mean intensity of the good pixels in
  bins of ``|q|``, 2θ or d; the prepared object assigns every pixel to its bin once and
  then costs one pass over the frame.
* :func:`solvent_ratio`, :func:`has_solvent` / :class:`SolventRatio` — ratio of the mean
  intensity at the water ring (d = 3.2 Å) to that at d = 6 Å (cctbx.xfel's rule, whose
  2θ = 22.8° and 12.5° are these spacings at λ ≈ 1.3 Å; angles are accepted too).
* :func:`run_statistics` / :class:`RunStatistics` — per-pixel mean, maximum and standard
  deviation over a run, in constant memory, in parallel over blocks of frames on the
  executors of :mod:`sxlab.executors`.
* :func:`virtual_powder` — peaks summed into a detector image and a resolution histogram.

Conventions: ``q`` is ``|q| = 2 sin θ / λ = 1/d`` in 1/Å, without a factor 2π; 2θ is in
degrees; d in Å. Intensities are in ADU as read.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import _hits_kernels as _k

if TYPE_CHECKING:
    import xarray as xr
from . import tables
from ._frozen import FrozenParams
from .executors import map_unordered
from .geometry import Detector
from .masks import Mask, bad_pixels, check_shape

__all__ = [
    "DEFAULT_MIN_PEAKS",
    "SOLVENT_BACKGROUND_D_A",
    "WATER_RING_D_A",
    "HitParams",
    "RadialProfiler",
    "RunStatistics",
    "SolventRatio",
    "has_solvent",
    "hit_rule",
    "hit_table",
    "is_hit",
    "radial_profile",
    "run_statistics",
    "solvent_ratio",
    "virtual_powder",
]

#: Default ``min_peaks``: the cctbx.xfel strong-spot cutoff and DIALS' stills default
#: (CrystFEL's ``--min-peaks`` defaults to 0, xia2.ssx uses 10).
DEFAULT_MIN_PEAKS = 16
#: d-spacing (Å) of the water-ring band of the solvent ratio.
WATER_RING_D_A = 3.2
#: d-spacing (Å) of its low-angle background band.
SOLVENT_BACKGROUND_D_A = 6.0


# ============================================================================ hits
def _check_limits(min_peaks, max_peaks) -> None:
    if isinstance(min_peaks, bool) or int(min_peaks) != min_peaks or min_peaks < 0:
        raise ValueError(f"min_peaks must be an integer >= 0, got {min_peaks!r}")
    if max_peaks is not None:
        if isinstance(max_peaks, bool) or int(max_peaks) != max_peaks:
            raise ValueError(f"max_peaks must be an integer or None, got {max_peaks!r}")
        if max_peaks < min_peaks:
            raise ValueError(f"max_peaks {max_peaks} is smaller than min_peaks {min_peaks} "
                             "(leave max_peaks out, or None, for no maximum)")


def hit_rule(n_peaks, min_peaks: int = DEFAULT_MIN_PEAKS, max_peaks: int | None = None):
    """The hit decision for peak counts: ``min_peaks <= n_peaks <= max_peaks``.

    The one rule behind :func:`is_hit`, :func:`hit_table` and the pipeline.

    Parameters
    ----------
    n_peaks : int or array_like of int
    min_peaks : int
        Fewest peaks of a hit. Default 16.
    max_peaks : int or None
        Most peaks of a hit; None: no maximum.

    Returns
    -------
    bool or ndarray of bool

    Examples
    --------
    >>> hit_rule(16), hit_rule([3, 20, 90], 10, 50).tolist()
    (True, [False, True, False])
    """
    _check_limits(min_peaks, max_peaks)
    n = np.asarray(n_peaks)
    ok = n >= min_peaks
    if max_peaks is not None:
        ok &= n <= max_peaks
    return bool(ok) if ok.ndim == 0 else ok


@dataclass(frozen=True)
class HitParams(FrozenParams):
    """Hit decision and solvent ratio of the pipeline (the ``[hits]`` section of a trial).

    Parameters
    ----------
    min_peaks : int
        Fewest peaks of a hit (:func:`hit_rule`). Default 16.
    max_peaks : int or None
        Most peaks of a hit; None (the key left out of the TOML file): no maximum.
    solvent_d_high_A, solvent_d_low_A : float
        d-spacings (Å) of the water-ring and background bands of the solvent ratio
        (:class:`SolventRatio`). Defaults 3.2 and 6.

    Examples
    --------
    >>> HitParams(min_peaks=20).replace(max_peaks=400).max_peaks
    400
    """

    min_peaks: int = DEFAULT_MIN_PEAKS
    max_peaks: int | None = None
    solvent_d_high_A: float = WATER_RING_D_A
    solvent_d_low_A: float = SOLVENT_BACKGROUND_D_A

    def __post_init__(self):
        _check_limits(self.min_peaks, self.max_peaks)
        object.__setattr__(self, "min_peaks", int(self.min_peaks))
        if self.max_peaks is not None:
            object.__setattr__(self, "max_peaks", int(self.max_peaks))
        for name in ("solvent_d_high_A", "solvent_d_low_A"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of Å, got {value}")
            object.__setattr__(self, name, value)


def is_hit(peaks, min_peaks: int = DEFAULT_MIN_PEAKS, max_peaks: int | None = None, *,
           by_frame: bool | None = None):
    """Whether a frame is a hit: ``min_peaks <= number of peaks <= max_peaks``.

    Parameters
    ----------
    peaks : pandas.DataFrame, pandas.Series or int
        A peak table (one row per peak, a ``frame`` column when it spans several frames),
        a Series of peak counts indexed by frame, or a number of peaks.
    min_peaks : int
        Default 16 (cctbx.xfel strong-spot cutoff, DIALS stills; CrystFEL's default is 0).
    max_peaks : int, optional
        Upper limit (e.g. to reject ice or detector artefacts).
    by_frame : bool, optional
        For a peak table: True gives a Series per frame, False one decision for the whole
        table; default: per frame when the ``frame`` column holds more than one frame.

    Returns
    -------
    bool or pandas.Series
        One decision, or a boolean Series named ``hit`` indexed by ``frame``. Frames
        without any peak are not in a peak table, hence not in the Series: use
        :func:`hit_table` to include them.

    Examples
    --------
    >>> import pandas as pd
    >>> is_hit(20), is_hit(3, min_peaks=2, max_peaks=2)
    (True, False)
    >>> peaks = pd.DataFrame({"frame": [0, 0, 0, 1], "fs": [1.5, 2.5, 3.5, 4.5]})
    >>> is_hit(peaks, min_peaks=2).to_dict()
    {0: True, 1: False}
    """
    _check_limits(min_peaks, max_peaks)
    if isinstance(peaks, pd.DataFrame):
        if by_frame is None:
            by_frame = "frame" in peaks.columns and peaks["frame"].nunique() > 1
        if not by_frame:
            return hit_rule(len(peaks), min_peaks, max_peaks)
        if "frame" not in peaks.columns:
            raise ValueError("by_frame=True needs a 'frame' column")
        counts = peaks.groupby("frame").size()
        return pd.Series(hit_rule(counts.to_numpy(), min_peaks, max_peaks),
                         index=counts.index, name="hit")
    if isinstance(peaks, pd.Series):
        return pd.Series(hit_rule(peaks.to_numpy(), min_peaks, max_peaks),
                         index=peaks.index, name="hit")
    if isinstance(peaks, (int, np.integer)) and not isinstance(peaks, bool):
        return hit_rule(int(peaks), min_peaks, max_peaks)
    raise TypeError(f"expected a peak table, a Series of counts or an int, got "
                    f"{type(peaks).__name__}")


@tables.documented
def hit_table(peaks: pd.DataFrame, frames, *, min_peaks: int = DEFAULT_MIN_PEAKS,
              max_peaks: int | None = None) -> pd.DataFrame:
    """Peak count and hit decision for every frame, including frames without peaks.

    Parameters
    ----------
    peaks : pandas.DataFrame
        Peak table with a ``frame`` column.
    frames : int or iterable of int
        Number of frames (frames ``0 .. n-1``) or the frame numbers.
    min_peaks, max_peaks : int
        See :func:`is_hit`.

    Returns
    -------
    pandas.DataFrame
        One row per frame, in the order given (:data:`sxlab.tables.HITS`):

        [columns: hits]

    Raises
    ------
    ValueError
        The table has peaks of frames not in ``frames``.

    Examples
    --------
    >>> import pandas as pd
    >>> peaks = pd.DataFrame({"frame": [0, 0, 2]})
    >>> hit_table(peaks, 3, min_peaks=2)
       frame  n_peaks    hit
    0      0        2   True
    1      1        0  False
    2      2        1  False
    """
    _check_limits(min_peaks, max_peaks)
    if isinstance(frames, (int, np.integer)):
        frame_ids = np.arange(int(frames), dtype=np.int64)
    else:
        frame_ids = np.asarray(list(frames) if not isinstance(frames, np.ndarray) else frames,
                               dtype=np.int64)
    if "frame" not in peaks.columns:
        raise ValueError("the peak table needs a 'frame' column")
    counts = peaks.groupby("frame").size()
    unknown = counts.index.difference(pd.Index(frame_ids))
    if len(unknown):
        raise ValueError(f"peaks of frames not in `frames`: {list(unknown[:5])}"
                         f"{' ...' if len(unknown) > 5 else ''}")
    n = counts.reindex(frame_ids, fill_value=0).to_numpy(dtype=np.int64)
    return tables.HITS.make({"frame": frame_ids, "n_peaks": n,
                             "hit": hit_rule(n, min_peaks, max_peaks)})


# ================================================================== radial binning
class _Axis:
    """A radial axis: its name, units and how pixels map to the binning variable.

    Pixels are binned in ``q`` for the ``q`` and ``d`` axes (so d bins are uniform in
    1/d) and in degrees for ``two_theta``.
    """

    _SPECS = {
        "q": ("1/Å", "scattering vector |q| = 1/d (no 2π)"),
        "two_theta": ("deg", "scattering angle 2θ"),
        "d": ("Å", "resolution d"),
    }

    def __init__(self, name: str):
        if name not in self._SPECS:
            raise ValueError(f"axis must be one of {sorted(self._SPECS)}, got {name!r}")
        self.name = name
        self.units, self.long_name = self._SPECS[name]

    def pixel_values(self, geometry: Detector) -> np.ndarray:
        maps = geometry.maps
        if self.name == "two_theta":
            return np.rad2deg(maps.two_theta_rad, dtype=np.float64)
        return maps.q_A.astype(np.float64)

    def values_from_user(self, values) -> np.ndarray:
        """Convert values in axis units to the binning variable."""
        v = np.asarray(values, dtype=np.float64)
        if self.name != "d":
            return v
        if np.any(v <= 0):
            raise ValueError("d values must be positive")
        with np.errstate(divide="ignore"):
            return 1.0 / v

    def values_to_user(self, v: np.ndarray) -> np.ndarray:
        if self.name != "d":
            return v
        with np.errstate(divide="ignore"):
            return 1.0 / v

    def attrs(self) -> dict:
        return {"units": self.units, "long_name": self.long_name}

    def coords(self, edges: np.ndarray) -> dict:
        """Bin centre, ``<name>_lo`` and ``<name>_hi`` (smaller and larger edge value in the
        axis' units; for d the centre is 1/q of the bin's centre in q)."""
        a = self.values_to_user(edges[:-1])
        b = self.values_to_user(edges[1:])
        centre = self.values_to_user(0.5 * (edges[:-1] + edges[1:]))
        n = self.name
        return {
            n: (n, centre, self.attrs()),
            f"{n}_lo": (n, np.minimum(a, b), {"long_name": "lower bin edge", "units": self.units}),
            f"{n}_hi": (n, np.maximum(a, b), {"long_name": "upper bin edge", "units": self.units}),
        }


def _bin_index(v: np.ndarray, edges: np.ndarray, uniform: bool) -> np.ndarray:
    """Bin of each value as np.histogram assigns it (last edge inclusive); -1 outside."""
    n = edges.size - 1
    out = np.full(v.shape, -1, dtype=np.int32)
    keep = np.isfinite(v) & (v >= edges[0]) & (v <= edges[-1])
    a = v[keep]
    if uniform:
        # np.histogram's algorithm for equal bins, including its edge corrections.
        norm = n / (edges[-1] - edges[0])
        idx = ((a - edges[0]) * norm).astype(np.intp)
        idx[idx == n] -= 1
        idx[a < edges[idx]] -= 1
        inc = (a >= edges[np.minimum(idx + 1, n)]) & (idx != n - 1)
        idx[inc] += 1
    else:
        idx = np.searchsorted(edges, a, side="right") - 1
        idx[idx == n] = n - 1
    out[keep] = idx
    return out


class RadialProfiler:
    """Prepared radial averaging for one geometry and mask.

    Every pixel's bin is computed once; each frame then costs a single pass (a numba
    kernel; the plain ``np.bincount`` formulation is the test reference).

    Parameters
    ----------
    geometry : Detector
    mask : Mask, optional
        Static mask; its bad pixels are never used.
    axis : {"q", "two_theta", "d"}
        ``q``: ``|q| = 1/d`` in 1/Å (no 2π); ``two_theta``: degrees; ``d``: Å (binned
        uniformly in 1/d; bin centres are ``1/q_centre``).
    bins : int or array_like, optional
        Number of equal bins over the range covered by the usable pixels, or bin edges in
        the axis' units (any order for ``d``). Default: one bin per pixel of radius
        (the largest minus the smallest distance of a usable pixel from the beam).

    Attributes
    ----------
    edges : numpy.ndarray
        Bin edges of the binning variable (q in 1/Å for ``q`` and ``d``, degrees for
        ``two_theta``), ascending.
    n_pixels : numpy.ndarray
        Usable pixels per bin (before per-frame bad pixels).

    Examples
    --------
    >>> import numpy as np
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m")
    >>> prof = RadialProfiler(det, axis="two_theta", bins=50)
    >>> p = prof(np.ones(det.data_shape, np.float32))
    >>> p.dims, float(p.max()), p["two_theta"].attrs["units"]
    (('two_theta',), 1.0, 'deg')
    """

    def __init__(self, geometry: Detector, mask: Mask | None = None, *, axis: str = "q",
                 bins=None):
        self.geometry = geometry
        self.axis = _Axis(axis)
        shape = tuple(geometry.data_shape)
        static_bad = bad_pixels(mask, None, shape)
        v = self.axis.pixel_values(geometry).reshape(-1)
        usable = np.isfinite(v) & (geometry.maps.panel.reshape(-1) >= 0)
        if static_bad is not None:
            usable &= ~static_bad.reshape(-1)
        self.edges, uniform = self._edges(bins, v[usable], geometry, usable)
        v[~usable] = np.nan
        self._bins = _bin_index(v, self.edges, uniform)
        self.n_bins = self.edges.size - 1
        self.n_pixels = np.bincount(self._bins[self._bins >= 0], minlength=self.n_bins)
        self._shape = shape
        self.mask_provenance = () if mask is None else mask.provenance

    def _edges(self, bins, values: np.ndarray, geometry: Detector, usable: np.ndarray):
        if bins is None or isinstance(bins, (int, np.integer)):
            if values.size == 0:
                raise ValueError("no usable pixels to bin")
            lo, hi = float(values.min()), float(values.max())
            if bins is None:
                r = geometry.maps.r_px.reshape(-1)[usable]
                bins = max(1, math.ceil(float(r.max()) - float(r.min())))
            if bins < 1:
                raise ValueError(f"bins must be >= 1, got {bins}")
            if hi <= lo:
                hi = lo + 1e-6 * max(abs(lo), 1.0)
            return np.linspace(lo, hi, int(bins) + 1), True
        edges = np.sort(self.axis.values_from_user(bins))
        if edges.ndim != 1 or edges.size < 2 or not np.all(np.isfinite(edges)):
            raise ValueError("bin edges must be a 1-D array of at least 2 finite values")
        if np.any(np.diff(edges) <= 0):
            raise ValueError("bin edges must be distinct")
        return edges, False

    def sums(self, image, bad=None) -> tuple[np.ndarray, np.ndarray]:
        """Sum and number of good pixels per bin (float64, int64)."""
        arr = np.asarray(image)
        check_shape(arr.shape, self._shape, "image")
        b = None
        if bad is not None:
            b = np.asarray(bad)
            if b.dtype != bool:
                raise TypeError(f"bad must be a boolean array, got dtype {b.dtype}")
            check_shape(b.shape, self._shape, "bad")
        sums = np.empty(self.n_bins, dtype=np.float64)
        counts = np.empty(self.n_bins, dtype=np.int64)
        flat = np.ascontiguousarray(arr).reshape(-1)
        bflat = np.zeros(1, dtype=bool) if b is None else np.ascontiguousarray(b).reshape(-1)
        _k.radial_sums(flat, self._bins, bflat, b is not None, sums, counts)
        return sums, counts

    def __call__(self, image, bad=None) -> xr.DataArray:
        """Radial profile of one frame.

        Parameters
        ----------
        image : array_like or xarray.DataArray
        bad : array_like of bool, optional
            Per-frame bad pixels (True = bad), e.g. from ``Run.read``.

        Returns
        -------
        xarray.DataArray
            See :func:`radial_profile`.
        """
        sums, counts = self.sums(image, bad)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums / counts
        name = self.axis.name
        attrs = {k: v for k, v in getattr(image, "attrs", {}).items()
                 if k in ("frame", "run", "event")}
        attrs.update(long_name="mean intensity", units="ADU")
        coords = self.axis.coords(self.edges)
        coords["count"] = (name, counts, {"long_name": "good pixels", "units": "pixels"})
        import xarray as xr

        return xr.DataArray(mean, dims=(name,), coords=coords, name="radial_profile",
                            attrs=attrs)

    def __repr__(self) -> str:
        return (f"<RadialProfiler {self.axis.name}: {self.n_bins} bins, "
                f"{int(self.n_pixels.sum())} pixels>")


def radial_profile(image, geometry: Detector, mask: Mask | None = None, *, axis: str = "q",
                   bins=None, bad=None) -> xr.DataArray:
    """Mean intensity of the good pixels in radial bins.

    For many frames, make a :class:`RadialProfiler` once and call it per frame.

    Parameters
    ----------
    image : array_like or xarray.DataArray
        One frame of the geometry's data shape.
    geometry : Detector
    mask : Mask, optional
        Static mask.
    axis : {"q", "two_theta", "d"}
        ``q`` in 1/Å (``|q| = 1/d``, no 2π), ``two_theta`` in degrees, ``d`` in Å.
    bins : int or array_like, optional
        Number of bins or edges in the axis' units; see :class:`RadialProfiler`.
    bad : array_like of bool, optional
        Per-frame bad pixels (True = bad). Non-finite values are skipped too.

    Returns
    -------
    xarray.DataArray
        Named ``radial_profile``, dim = ``axis``; NaN in bins without good pixels.
        Coords: the bin centre (``units`` and ``long_name`` attrs), ``count`` (good
        pixels in the bin), ``<axis>_lo`` and ``<axis>_hi`` (the bin's smaller and
        larger edge in the axis' units; for ``d`` the bins run from low to high q, so d
        decreases along the dim). Attrs:
        ``long_name``, ``units`` (ADU) and the image's ``frame``/``run``/``event``.

    Examples
    --------
    >>> import numpy as np
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m")
    >>> p = radial_profile(np.full(det.data_shape, 2.0, np.float32), det, axis="d",
    ...                    bins=[2.0, 3.0, 5.0, 10.0])
    >>> p.values.tolist(), p["d"].attrs["units"]
    ([2.0, 2.0, 2.0], 'Å')
    """
    return RadialProfiler(geometry, mask, axis=axis, bins=bins)(image, bad)


# ========================================================================= solvent
#: Pixels per block of the solvent-band search (bounds its temporaries).
_BAND_BLOCK = 1 << 20
_NO_BAD = np.zeros(1, dtype=bool)  # placeholder when a frame has no bad pixels


class SolventRatio:
    """Prepared solvent-ring test: mean intensity at the water ring over that at low angle.

    The ratio is ``I_high / I_low``, each the mean of the usable pixels whose scattering
    angle is within ``width_deg / 2`` of the band's: the water ring at ``d_high_A`` (3.2 Å)
    and a background band at ``d_low_A`` (6 Å); a frame has solvent when the ratio is at
    least 1 (cctbx.xfel's rule). The bands are stated as d-spacings, so the same
    parameters fit every wavelength; cctbx.xfel's 2θ = 22.8° and 12.5° are these
    spacings at λ ≈ 1.3 Å. Angles may be given instead (``two_theta_high_deg``,
    ``two_theta_low_deg``): they are taken as such, at the geometry's wavelength.

    Parameters
    ----------
    geometry : Detector
    mask : Mask, optional
    d_high_A, d_low_A : float
        d-spacings (Å) of the water-ring band and of the background band. Defaults 3.2
        and 6.
    two_theta_high_deg, two_theta_low_deg : float, optional
        The same bands as scattering angles (degrees); each replaces its d-spacing.
    width_deg : float
        Full width of each band in 2θ, degrees. Default 0.5.

    Attributes
    ----------
    two_theta_high_deg, two_theta_low_deg : float
        Centres of the bands for the geometry's wavelength.
    n_high, n_low : int
        Usable pixels in each band.

    Examples
    --------
    >>> import numpy as np
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m", clen=0.08, wavelength_A=1.3)
    >>> ratio = SolventRatio(det)
    >>> ratio(np.ones(det.data_shape, np.float32))
    1.0
    >>> round(ratio.two_theta_high_deg, 2), round(ratio.two_theta_low_deg, 2)
    (23.44, 12.45)
    """

    def __init__(self, geometry: Detector, mask: Mask | None = None, *,
                 d_high_A: float = WATER_RING_D_A, d_low_A: float = SOLVENT_BACKGROUND_D_A,
                 two_theta_high_deg: float | None = None,
                 two_theta_low_deg: float | None = None, width_deg: float = 0.5):
        if not width_deg > 0:
            raise ValueError(f"width_deg must be positive, got {width_deg}")
        lam = geometry.beam.wavelength_A
        self.two_theta_high_deg = (_band_angle(d_high_A, lam, "d_high_A")
                                   if two_theta_high_deg is None else float(two_theta_high_deg))
        self.two_theta_low_deg = (_band_angle(d_low_A, lam, "d_low_A")
                                  if two_theta_low_deg is None else float(two_theta_low_deg))
        self.width_deg = float(width_deg)
        shape = tuple(geometry.data_shape)
        static_bad = bad_pixels(mask, None, shape)
        two_theta = geometry.maps.two_theta_rad.reshape(-1)
        bad_flat = None if static_bad is None else static_bad.reshape(-1)
        half = 0.5 * self.width_deg
        high, low = [], []
        for start in range(0, two_theta.size, _BAND_BLOCK):  # small temporaries
            stop = min(start + _BAND_BLOCK, two_theta.size)
            tt = np.rad2deg(two_theta[start:stop])
            ok = np.isfinite(tt)
            if bad_flat is not None:
                ok &= ~bad_flat[start:stop]
            for angle, found in ((self.two_theta_high_deg, high),
                                 (self.two_theta_low_deg, low)):
                found.append(start + np.flatnonzero(ok & (np.abs(tt - angle) <= half)))
        self._high = np.concatenate(high) if high else np.zeros(0, np.intp)
        self._low = np.concatenate(low) if low else np.zeros(0, np.intp)
        self.n_high, self.n_low = int(self._high.size), int(self._low.size)
        self._shape = shape

    def means(self, image, bad=None) -> tuple[float, float]:
        """Mean intensity of the good pixels in the high and the low band (NaN if none)."""
        arr = np.asarray(image)
        check_shape(arr.shape, self._shape, "image")
        flat = arr.reshape(-1)
        bflat = None
        if bad is not None:
            b = np.asarray(bad)
            if b.dtype != bool:
                raise TypeError(f"bad must be a boolean array, got dtype {b.dtype}")
            check_shape(b.shape, self._shape, "bad")
            bflat = b.reshape(-1)
        has_bad = bflat is not None
        bflat = bflat if has_bad else _NO_BAD
        return (float(_k.band_mean(flat, self._high, bflat, has_bad)),
                float(_k.band_mean(flat, self._low, bflat, has_bad)))

    def __call__(self, image, bad=None) -> float:
        """``I_high / I_low``; NaN when a band has no good pixel or I_low is 0."""
        high, low = self.means(image, bad)
        if not (math.isfinite(high) and math.isfinite(low)) or low == 0:
            return math.nan
        return high / low

    def has_solvent(self, image, bad=None, cutoff: float = 1.0) -> bool:
        """``ratio >= cutoff`` (False when the ratio is NaN)."""
        return bool(self(image, bad) >= cutoff)

    def __repr__(self) -> str:
        return (f"<SolventRatio 2θ {self.two_theta_high_deg:g}° / {self.two_theta_low_deg:g}°"
                f" ± {self.width_deg / 2:g}°: {self.n_high} / {self.n_low} pixels>")


def _band_angle(d_A: float, wavelength_A: float, name: str) -> float:
    """Scattering angle (degrees) of spacing ``d_A`` at ``wavelength_A`` (180° beyond reach)."""
    d_A = float(d_A)
    if not (math.isfinite(d_A) and d_A > 0):
        raise ValueError(f"{name} must be a positive number of Å, got {d_A}")
    return float(np.degrees(2 * np.arcsin(min(wavelength_A / (2 * d_A), 1.0))))


def solvent_ratio(image, geometry: Detector, mask: Mask | None = None, *,
                  d_high_A: float = WATER_RING_D_A, d_low_A: float = SOLVENT_BACKGROUND_D_A,
                  two_theta_high_deg: float | None = None,
                  two_theta_low_deg: float | None = None, width_deg: float = 0.5,
                  bad=None) -> float:
    """Ratio of the mean intensity at the water ring to that at a lower angle.

    See :class:`SolventRatio` (prepare it once for many frames): bands at d = 3.2 Å and
    6 Å by default, or at the angles given.

    Returns
    -------
    float
        ``I_high / I_low``; NaN when a band has no good pixel.

    Examples
    --------
    >>> import numpy as np
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m", clen=0.08, wavelength_A=1.3)
    >>> tt = np.rad2deg(det.maps.two_theta_rad)
    >>> img = 1 + np.exp(-0.5 * ((tt - 22.8) / 1.5) ** 2)   # a water ring
    >>> round(solvent_ratio(img, det, two_theta_high_deg=22.8, two_theta_low_deg=12.5), 2)
    2.0
    """
    return SolventRatio(geometry, mask, d_high_A=d_high_A, d_low_A=d_low_A,
                        two_theta_high_deg=two_theta_high_deg,
                        two_theta_low_deg=two_theta_low_deg, width_deg=width_deg)(image, bad)


def has_solvent(image, geometry: Detector, mask: Mask | None = None, *,
                cutoff: float = 1.0, d_high_A: float = WATER_RING_D_A,
                d_low_A: float = SOLVENT_BACKGROUND_D_A,
                two_theta_high_deg: float | None = None,
                two_theta_low_deg: float | None = None, width_deg: float = 0.5,
                bad=None) -> bool:
    """Whether :func:`solvent_ratio` is at least ``cutoff`` (default 1.0, cctbx.xfel).

    Returns
    -------
    bool
        False when the ratio is NaN (a band outside the detector or fully masked).

    Examples
    --------
    >>> import numpy as np
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m", clen=0.08, wavelength_A=1.3)
    >>> has_solvent(np.ones(det.data_shape), det), has_solvent(np.ones(det.data_shape), det,
    ...                                                         cutoff=1.1)
    (True, False)
    """
    return SolventRatio(geometry, mask, d_high_A=d_high_A, d_low_A=d_low_A,
                        two_theta_high_deg=two_theta_high_deg,
                        two_theta_low_deg=two_theta_low_deg,
                        width_deg=width_deg).has_solvent(image, bad, cutoff)


# ================================================================= run statistics
class RunStatistics:
    """Per-pixel running statistics of frames: count, mean, M2, maximum, bad count.

    Frames are added in chunks with :meth:`add`: each chunk's per-pixel count, mean and
    sum of squared deviations (two passes, float64) are merged into the accumulators
    with Chan et al.'s formula, the parallel form of Welford's algorithm; partial results
    of other workers are combined the same way with :meth:`merge`. Memory is constant:
    about 32 bytes per pixel.

    Parameters
    ----------
    frame_shape : tuple of int
        Shape of one frame.
    mask : Mask, optional
        Statically bad pixels are left out entirely (NaN statistics, count 0).

    Attributes
    ----------
    n_frames : int
        Frames added so far.
    count : int32 array
        Per pixel, frames in which it was good.
    n_bad : int32 array
        Per pixel, frames in which it was flagged bad (or not finite).

    Examples
    --------
    >>> import numpy as np
    >>> acc = RunStatistics((2, 3))
    >>> acc.add(np.stack([np.zeros((2, 3)), np.full((2, 3), 2.0)]))
    >>> ds = acc.to_dataset()
    >>> float(ds["mean"][0, 0]), float(ds["std"][0, 0]), float(ds["max"][0, 0])
    (1.0, 1.0, 2.0)
    """

    def __init__(self, frame_shape: Sequence[int], mask: Mask | None = None):
        self.frame_shape = tuple(int(n) for n in frame_shape)
        n = int(np.prod(self.frame_shape))
        static = bad_pixels(mask, None, self.frame_shape)
        self._static_bad = (np.zeros(n, dtype=bool) if static is None
                            else np.ascontiguousarray(static).reshape(-1))
        self.count = np.zeros(n, dtype=np.int32)
        self.mean = np.zeros(n, dtype=np.float64)
        self.m2 = np.zeros(n, dtype=np.float64)
        self.max = np.full(n, -np.inf, dtype=np.float32)
        self.n_bad = np.zeros(n, dtype=np.int32)
        self.n_frames = 0
        self.frames: list[int] = []
        self.failed: list[int] = []

    def add(self, images, bad=None, *, frames: Iterable[int] | None = None) -> None:
        """Add one frame or a stack ``(n, *frame_shape)`` (with its per-frame bad pixels)."""
        arr = np.asarray(images)
        if arr.shape == self.frame_shape:
            arr = arr[None]
            if bad is not None:
                bad = np.asarray(bad)[None]
        if arr.shape[1:] != self.frame_shape:
            raise ValueError(f"frames of shape {arr.shape[1:]} do not match {self.frame_shape}")
        stack = np.ascontiguousarray(arr).reshape(arr.shape[0], -1)
        if bad is not None:
            b = np.asarray(bad)
            if b.dtype != bool or b.shape != arr.shape:
                raise ValueError(f"bad must be a boolean array of shape {arr.shape}")
            b2 = np.ascontiguousarray(b).reshape(arr.shape[0], -1)
        else:
            b2 = np.zeros((1, 1), dtype=bool)
        _k.accumulate_stats(stack, b2, bad is not None, self._static_bad, self.count,
                            self.mean, self.m2, self.max, self.n_bad)
        self.n_frames += arr.shape[0]
        if frames is not None:
            self.frames.extend(int(f) for f in frames)

    def merge(self, other: RunStatistics) -> RunStatistics:
        """Combine another partial result into this one (in place; returns self)."""
        if other.frame_shape != self.frame_shape:
            raise ValueError("cannot merge statistics of different frame shapes")
        na = self.count.astype(np.float64)
        nb = other.count.astype(np.float64)
        n = na + nb
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = other.mean - self.mean
            wb = np.where(n > 0, nb / n, 0.0)
            self.mean += delta * wb
            self.m2 += other.m2 + delta * delta * na * wb
        np.maximum(self.max, other.max, out=self.max)
        self.count += other.count
        self.n_bad += other.n_bad
        self.n_frames += other.n_frames
        self.frames.extend(other.frames)
        self.failed.extend(other.failed)
        return self

    def to_dataset(self, dims: Sequence[str] | None = None, attrs: dict | None = None
                   ) -> xr.Dataset:
        """The statistics as a Dataset (see :func:`run_statistics`)."""
        if dims is None:
            dims = ("module", "ss", "fs") if len(self.frame_shape) == 3 else ("ss", "fs")
        shape = self.frame_shape
        empty = self.count == 0
        mean = np.where(empty, np.nan, self.mean)
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(np.maximum(self.m2, 0.0) / self.count)
        std[empty] = np.nan
        vmax = np.where(empty, np.float32(np.nan), self.max).astype(np.float32)
        import xarray as xr

        ds = xr.Dataset(
            {
                "mean": (dims, mean.reshape(shape), {"long_name": "mean", "units": "ADU"}),
                "std": (dims, std.reshape(shape),
                        {"long_name": "standard deviation (ddof=0)", "units": "ADU"}),
                "max": (dims, vmax.reshape(shape), {"long_name": "maximum", "units": "ADU"}),
                "count": (dims, self.count.reshape(shape),
                          {"long_name": "frames where the pixel was good", "units": "frames"}),
                "n_bad": (dims, self.n_bad.reshape(shape),
                          {"long_name": "frames where the pixel was flagged bad",
                           "units": "frames"}),
            },
            attrs={"n_frames": self.n_frames, "failed_frames": list(self.failed),
                   **(attrs or {})},
        )
        return ds


def _chunks(indices: np.ndarray, size: int):
    for a in range(0, indices.size, size):
        yield indices[a : a + size]


def _statistics_block(run, indices, chunk_size: int, mask, progress) -> RunStatistics:
    """Statistics of frames ``indices`` of ``run`` (one worker's share)."""
    from .io.hdf5 import FrameReadError

    acc = RunStatistics(run.frame_shape, mask)
    for chunk in _chunks(np.asarray(indices, dtype=np.int64), chunk_size):
        sub = run[chunk]
        try:
            images, bad = next(sub.iter_chunks(len(chunk), with_mask=True))
            acc.add(images.values, bad.values, frames=images["frame"].values)
        except FrameReadError:
            for i in range(len(chunk)):  # read what can be read, one frame at a time
                try:
                    image, bad = sub.read(i)
                except FrameReadError:
                    acc.failed.append(int(chunk[i]))
                    continue
                acc.add(image.values, bad.values, frames=[image.attrs["frame"]])
        if progress is not None:
            progress(len(chunk))
    return acc


def _statistics_setup(run_bytes: bytes, worker: int):
    """A worker's own copy of the run (its own file handles: h5py serialises per handle)."""
    return pickle.loads(run_bytes)


def _statistics_task(run, task, report) -> RunStatistics:
    indices, chunk_size, mask = task
    return _statistics_block(run, indices, chunk_size, mask, report)


def run_statistics(run, *, mask: Mask | None = None, chunk_size: int = 16,
                   n_workers: int | None = None, executor="local",
                   progress: bool = True) -> xr.Dataset:
    """Per-pixel mean, maximum and standard deviation over the frames of a run.

    Frames are read in chunks of ``chunk_size`` with their bad-pixel masks; the frames are
    split into ``n_workers`` contiguous blocks, each accumulated by one worker chunk by
    chunk (float64, Chan et al.'s parallel form of Welford's algorithm, see
    :class:`RunStatistics`), and the workers' partial results are merged the same way, in
    block order. Memory does not grow with the number of frames (per worker: one chunk
    of frames plus ~32 bytes per pixel).

    Parameters
    ----------
    run : sxlab.io.hdf5.Run
        E.g. from :func:`sxlab.io.open_run` (a sub-run such as ``run[:1000]`` works).
    mask : Mask, optional
        Statically bad pixels are left out (NaN statistics).
    chunk_size : int
        Frames read at a time.
    n_workers : int, optional
        Blocks of frames, one per worker (default: every CPU; at most one per chunk).
    executor : {"local", "serial", "threads"} or dask.distributed.Client
        Where the blocks are accumulated, as for :func:`sxlab.process_run` (see
        :mod:`sxlab.executors`). h5py serialises all HDF5 calls of a process (reading
        and decompressing included), so only processes (``local``, or Dask workers)
        read in parallel; threads still overlap the accumulation (which releases the
        GIL) with reading. Each worker reopens the run's files.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    xarray.Dataset
        Dims of one frame; float64 ``mean`` and ``std`` (population, ddof = 0), float32
        ``max``, int32 ``count`` (frames in which the pixel was good) and ``n_bad``
        (frames in which it was flagged bad by value or pixel mask, or was not finite);
        statistics are NaN where ``count`` is 0. Attrs: ``run``, ``n_frames`` (frames
        read), ``failed_frames`` (frames that could not be read), ``chunk_size``,
        ``n_workers``. Results are identical for equal ``chunk_size`` and ``n_workers``;
        other choices group the frames differently and agree to rounding (~1e-15
        relative; counts and maxima exactly).

    Examples
    --------
    >>> from sxlab.io import open_run                       # doctest: +SKIP
    >>> stats = run_statistics(open_run("run7_master.h5"))  # doctest: +SKIP
    >>> stats["max"].plot(robust=True)                      # doctest: +SKIP
    """
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if n_workers is not None and int(n_workers) < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    if mask is not None:
        check_shape(mask.shape, run.frame_shape, "mask")
    n = len(run)
    n_workers = int(n_workers or os.cpu_count() or 1)
    n_workers = max(1, min(n_workers, -(-n // int(chunk_size)) if n else 1))
    blocks = [b for b in np.array_split(np.arange(n, dtype=np.int64), n_workers)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"statistics {run.name}", unit="frame")
    tasks = [(b, int(chunk_size), mask) for b in blocks]
    setup = functools.partial(_statistics_setup, pickle.dumps(run))
    try:
        found = dict(map_unordered(_statistics_task, tasks, setup=setup, executor=executor,
                                   n_workers=n_workers,
                                   progress=bar.update if bar is not None else None))
    finally:
        if bar is not None:
            bar.close()
    parts = [found[i] for i in range(len(tasks))]
    total = parts[0]
    for p in parts[1:]:
        total.merge(p)
    return total.to_dataset(
        dims=run.dims,
        attrs={"run": run.name, "chunk_size": int(chunk_size), "n_workers": n_workers},
    )


# ================================================================== virtual powder
def virtual_powder(peaks: pd.DataFrame, geometry: Detector, *, weight: str | None = "intensity",
                   axis: str = "d", bins=200) -> xr.Dataset:
    """Peaks of many frames summed into one detector image and a radial histogram.

    Parameters
    ----------
    peaks : pandas.DataFrame
        Peak table with ``fs``, ``ss`` (data-array coordinates, pixel centres at +0.5),
        ``panel`` (index; needed for stacked detectors, else looked up) and, for
        ``weight``, that column. ``d_A`` (or ``two_theta_deg``) is used when present,
        else computed from the geometry.
    geometry : Detector
    weight : str or None
        Column to weight the image by (default ``intensity``); None counts peaks.
    axis : {"d", "q", "two_theta"}
        Axis of the histogram (``d`` and ``q`` binned uniformly in ``|q| = 1/d``).
    bins : int or array_like
        Number of equal bins over the detector's range, or edges in the axis' units.

    Returns
    -------
    xarray.Dataset
        ``powder``: float64 image with the geometry's dims, the sum of ``weight`` of the
        peaks in each pixel; ``histogram``: int64 number of peaks per bin along
        ``axis`` (coords as :func:`radial_profile`). Attrs ``n_peaks``, ``n_frames``.

    Examples
    --------
    >>> import pandas as pd
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m")
    >>> peaks = pd.DataFrame({"frame": [0, 1, 1], "fs": [10.5, 10.5, 900.2],
    ...                       "ss": [20.5, 20.5, 33.0], "intensity": [5.0, 7.0, 1.0]})
    >>> vp = virtual_powder(peaks, det, bins=20)
    >>> float(vp["powder"][20, 10]), int(vp["histogram"].sum())
    (12.0, 3)
    """
    ax = _Axis(axis)
    shape = tuple(geometry.data_shape)
    fs = peaks["fs"].to_numpy(dtype=np.float64)
    ss = peaks["ss"].to_numpy(dtype=np.float64)
    if "panel" in peaks.columns:
        pid = peaks["panel"].to_numpy()
        if pid.dtype.kind not in "iu":
            raise TypeError("the panel column must hold panel indices (integers)")
    elif geometry.is_stacked:
        raise ValueError("a stacked detector needs a 'panel' column")
    else:
        pid = geometry.panel_of_pixel(fs, ss)
    pid = np.asarray(pid, dtype=np.int64)
    w = (np.ones(fs.size) if weight is None
         else peaks[weight].to_numpy(dtype=np.float64))
    fi = np.floor(fs).astype(np.int64)
    si = np.floor(ss).astype(np.int64)
    ok = np.isfinite(fs) & np.isfinite(ss) & (pid >= 0) & (pid < geometry.n_panels)
    ok &= (fi >= 0) & (si >= 0) & (si < shape[-2]) & (fi < shape[-1])
    powder = np.zeros(shape, dtype=np.float64)
    if geometry.is_stacked:
        slabs = np.array([p.slab for p in geometry.panels], dtype=np.int64)
        np.add.at(powder, (slabs[pid[ok]], si[ok], fi[ok]), w[ok])
    else:
        np.add.at(powder, (si[ok], fi[ok]), w[ok])

    # Position of every peak on the histogram's binning variable (q in 1/Å or 2θ in deg).
    if ax.name == "two_theta" and "two_theta_deg" in peaks.columns:
        v = peaks["two_theta_deg"].to_numpy(dtype=np.float64)
    elif ax.name != "two_theta" and "d_A" in peaks.columns:
        with np.errstate(divide="ignore"):
            v = 1.0 / peaks["d_A"].to_numpy(dtype=np.float64)
    else:
        v = np.full(fs.size, np.nan)
        if ok.any():
            good = np.flatnonzero(ok)
            if ax.name == "two_theta":
                v[good] = np.rad2deg(geometry.two_theta_rad(fs[good], ss[good], pid[good]))
            else:
                with np.errstate(divide="ignore"):
                    v[good] = 1.0 / geometry.resolution_A(fs[good], ss[good], pid[good])
    if isinstance(bins, (int, np.integer)):
        pix = ax.pixel_values(geometry)
        pix = pix[np.isfinite(pix)]
        edges = np.linspace(float(pix.min()), float(pix.max()), int(bins) + 1)
    else:
        edges = np.sort(ax.values_from_user(bins))
    hist, _ = np.histogram(v[np.isfinite(v)], bins=edges)
    frames = int(peaks["frame"].nunique()) if "frame" in peaks.columns else 1
    import xarray as xr

    return xr.Dataset(
        {
            "powder": (geometry.dims, powder,
                       {"long_name": f"sum of peak {weight}" if weight else "peaks",
                        "units": "ADU" if weight == "intensity" else ""}),
            "histogram": ((ax.name,), hist.astype(np.int64),
                          {"long_name": "peaks", "units": "peaks"}),
        },
        coords=ax.coords(edges),
        attrs={"n_peaks": int(len(peaks)), "n_frames": frames},
    )
