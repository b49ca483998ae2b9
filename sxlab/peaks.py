"""Bragg peak search on single frames: peakfinder8 (full and fast) and dispersion.

:class:`PeakFinder` prepares, once per geometry, mask and parameters, everything that does
not change from frame to frame (annulus of every pixel, resolution limits folded into the
mask, the fixed pixel sample of the fast mode, work buffers); calling it on a frame returns
one row per peak. :func:`find_peaks` does both in one call.

Coordinates are data-array coordinates as in :mod:`sxlab.geometry` and CrystFEL streams:
``(0, 0)`` is the corner of the first pixel, the centre of pixel ``[ss, fs]`` is at
``(fs + 0.5, ss + 0.5)``; for stacked detectors ``ss`` counts rows within the module.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import _peaks_kernels as _k
from . import tables
from ._frames import frame_arrays
from ._frozen import FrozenParams
from ._prepared import PreparedCache
from .geometry import Detector
from .masks import good_pixels
from .profiling import DISPERSION_SEARCH, PF8_RSTATS, PF8_SEARCH, section

__all__ = [
    "PeakFinder",
    "PeakFinderParams",
    "find_peaks",
]

_METHODS = ("peakfinder8", "dispersion")
# Full peakfinder8 mode: pixels at or above mean + _BOUND_FRACTION * min_snr * sigma of the
# fast-mode sample are kept aside in the statistics pass (see PeakFinder Notes).
_BOUND_FRACTION = 0.75
# Whole-number values counted per annulus in the full statistics pass (see _exact_stats).
_N_BINS = 8
# Integer frames: values 0 .. n - 1 counted per annulus (n = floor(adc_threshold) + 1, at
# most this), the others listed, when at most this fraction of the sample is listed.
_MAX_COUNT_BINS = 64
_MAX_LISTED_FRACTION = 1 / 16
_INT_ACC_DTYPES = ("uint16",)
# Parameters the preparation depends on; the others are read per frame.
_PREPARED_FIELDS = ("method", "min_res", "max_res", "d_min_A", "d_max_A", "fast",
                    "fast_n_pixels", "seed")


# ========================================================================= parameters
@dataclass(frozen=True)
class PeakFinderParams(FrozenParams):
    """Parameters of the peak search (frozen, serialisable).

    Parameters
    ----------
    method : {"peakfinder8", "dispersion"}
        Pixel classification: peakfinder8's per-annulus statistics, or DIALS-style
        dispersion in a box around each pixel. Default "peakfinder8".
    adc_threshold : float
        Candidate pixels must exceed this value (ADU) as well as the annulus threshold.
        Default 0. CrystFEL's default of 800 is an ADU level for CSPAD-era integrating
        detectors; photon-counting data in photons want a few photons, or 0.
    min_snr : float
        Annulus threshold ``mean + min_snr * sigma`` and smallest accepted peak
        signal-to-noise ratio. Default 5.
    min_pix_count, max_pix_count : int
        Accepted number of pixels of a peak, inclusive. Defaults 2 and 200.
    local_bg_radius : int
        Distance (pixels) of the local background ring from the peak (see
        :class:`PeakFinder` Notes). Default 3.
    min_res, max_res : float
        Pixels closer to / farther from the beam than this many pixels are not used;
        0 means no limit. Defaults 0.
    d_min_A, d_max_A : float or None
        Pixels of resolution finer than ``d_min_A`` or coarser than ``d_max_A`` (Å) are
        not used; None means no limit. Defaults None.
    max_peaks_per_panel : int
        At most this many peaks per panel, the strongest (by intensity) kept; 0 means no
        limit. Default 2048.
    n_sigma_iterations : int
        Number of sigma-clipping iterations of the annulus statistics. Default 5.
    fast : bool
        Annulus statistics from a fixed sample of pixels only. Default False.
    fast_n_pixels : int
        At most this many pixels per annulus in the sample. Default 100.
    seed : int
        Seed of the sample. Default 0.
    kernel_size : int
        Dispersion: half width ``k`` of the ``(2k + 1)²`` box. Default 3 (7 × 7).
    sigma_background : float
        Dispersion: a pixel is in a non-background region if the box's
        variance / (gain · mean) exceeds ``1 + sigma_background * sqrt(2 / (n - 1))``.
        Default 6.
    sigma_strong : float
        Dispersion: a signal pixel exceeds ``mean + sigma_strong * sqrt(gain * mean)``.
        Default 3.
    global_threshold : float
        Dispersion: a signal pixel exceeds this value (ADU). Default 0.
    min_local : int
        Dispersion: fewest good pixels in the box; 0 or less requires the full box.
        Default 2.
    gain : float
        Dispersion: ADU per photon. Default 1.

    Examples
    --------
    >>> p = PeakFinderParams(min_snr=6)
    >>> p.replace(fast=True).fast
    True
    >>> PeakFinderParams.from_dict(p.to_dict()) == p
    True
    """

    method: str = "peakfinder8"
    adc_threshold: float = 0.0
    min_snr: float = 5.0
    min_pix_count: int = 2
    max_pix_count: int = 200
    local_bg_radius: int = 3
    min_res: float = 0.0
    max_res: float = 0.0
    d_min_A: float | None = None
    d_max_A: float | None = None
    max_peaks_per_panel: int = 2048
    n_sigma_iterations: int = 5
    fast: bool = False
    fast_n_pixels: int = 100
    seed: int = 0
    kernel_size: int = 3
    sigma_background: float = 6.0
    sigma_strong: float = 3.0
    global_threshold: float = 0.0
    min_local: int = 2
    gain: float = 1.0

    _LIMITS = {"min_snr": "[0, inf)", "d_min_A": "(0, inf)", "d_max_A": "(0, inf]",
               "sigma_background": "(0, inf)", "sigma_strong": "(0, inf)",
               "global_threshold": "[0, inf)", "min_local": "[0, inf)"}

    def __post_init__(self):
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")
        for name in ("min_pix_count", "max_pix_count", "local_bg_radius", "n_sigma_iterations",
                     "fast_n_pixels", "kernel_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("max_peaks_per_panel", "seed", "min_local"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.max_peaks_per_panel < 0 or self.seed < 0:
            raise ValueError("max_peaks_per_panel and seed must be >= 0")
        if self.max_pix_count < self.min_pix_count:
            raise ValueError(f"max_pix_count ({self.max_pix_count}) < min_pix_count "
                             f"({self.min_pix_count})")
        for name in ("adc_threshold", "min_snr", "min_res", "max_res", "sigma_background",
                     "sigma_strong", "global_threshold", "gain"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
            object.__setattr__(self, name, value)
        if self.min_res < 0 or self.max_res < 0:
            raise ValueError("min_res and max_res must be >= 0 (0: no limit)")
        if self.gain <= 0:
            raise ValueError(f"gain must be positive, got {self.gain}")
        for name in ("d_min_A", "d_max_A"):
            value = getattr(self, name)
            if value is not None:
                if not float(value) > 0:
                    raise ValueError(f"{name} must be positive or None, got {value}")
                object.__setattr__(self, name, float(value))
        object.__setattr__(self, "fast", bool(self.fast))


# ============================================================================== finder
def _bad_words(bad: np.ndarray, has_bad: bool) -> np.ndarray:
    """The whole 8-pixel words of a flat bool ``bad`` as uint64 (none without bad pixels)."""
    return bad[:8 * (bad.size // 8 if has_bad else 0)].view(np.uint64)


class PeakFinder:
    """A peak search prepared for one detector geometry, mask and parameter set.

    Parameters
    ----------
    geometry : Detector
        Detector geometry; frames must have its ``data_shape``.
    mask : Mask, ndarray of bool or None
        Usable pixels. Anything with a ``.good`` attribute (a :class:`sxlab.masks.Mask`)
        or a boolean array of ``geometry.data_shape`` in which **True marks a good
        pixel**; None uses every pixel. The geometry's own bad pixels
        (:meth:`~sxlab.geometry.Detector.bad_pixel_mask`) and pixels outside the
        resolution limits of the parameters are excluded in every case.
    params : PeakFinderParams, optional
        Parameters; keyword arguments override single fields
        (``PeakFinder(det, min_snr=6, fast=True)``).

    Attributes
    ----------
    geometry : Detector
    params : PeakFinderParams
    good : ndarray of bool
        The pixels used (data shape): the mask, the geometry's bad pixels and the
        resolution limits combined.
    n_annuli : int
        Number of annuli (one per pixel of radius from the beam).
    stats_pass : str or None
        How the last frame's annulus statistics were made (peakfinder8): ``"sample"``
        (fast mode), ``"counted"`` or ``"general"`` (see the notes).

    Notes
    -----
    **peakfinder8.** Pixels are grouped in annuli of one pixel of radius,
    ``floor(r_px)`` with ``r_px`` the distance of the pixel centre from the beam
    (:attr:`~sxlab.geometry.DetectorMaps.r_px`). Per annulus, the mean and standard
    deviation (population, ``sqrt(<v²> - <v>²)``) of the good pixels are sigma-clipped:
    iteration ``k`` of ``n_sigma_iterations`` uses the pixels below
    ``mean + min_snr * sigma`` of iteration ``k - 1`` (all pixels in the first); an
    iteration that would keep no pixel, or the same pixels as before, ends the loop. In
    fast mode the statistics come from a sample of at most ``fast_n_pixels`` pixels per
    annulus, drawn once with ``numpy.random.default_rng(seed)``. A good pixel is a
    candidate if its value is above ``max(adc_threshold, mean + min_snr * sigma)`` of its
    annulus (an annulus without statistics has no candidates).

    Outside fast mode the statistics are exact, from one pass over the frame. Integer
    frames whose pixels lie mostly at or below ``adc_threshold`` (values that can never
    be candidates) take a counting pass: each such value is counted per annulus, the
    others are listed, and every clipping iteration follows from the counts and the list
    (:attr:`stats_pass` ``"counted"``). Other frames take the general pass, which sums the
    pixels below a bound from the sample and lists the rest (``"general"``).

    **dispersion.** A good pixel is a candidate ("signal") if, over the good pixels of its
    panel in the ``(2 kernel_size + 1)²`` box around it (itself included), with ``n``
    pixels, mean ``m`` and unbiased variance ``var``: ``n >= min_local`` (the full box if
    ``min_local <= 0``), ``n > 1``, ``m > 0``,
    ``var / (gain * m) > 1 + sigma_background * sqrt(2 / (n - 1))``,
    ``value > m + sigma_strong * sqrt(gain * m)`` and ``value > global_threshold``. Box
    sums are running sums along rows and columns (the summed-area-table differences).

    **Peaks** (both methods). Candidates are grouped into 8-connected components within
    one panel (never across panel edges); components of ``min_pix_count`` to
    ``max_pix_count`` pixels are measured. The local background ring of a component is
    every pixel at Chebyshev distance ``local_bg_radius`` or ``local_bg_radius + 1`` from
    the component's bounding box that lies in the same panel, is good and is not a
    candidate (of any component). Its mean is the ``background`` and its population
    standard deviation the local noise ``sigma``. ``intensity = sum(value -
    background)`` over the component, ``snr = intensity / (sigma * sqrt(npix))`` (inf when
    ``sigma`` is 0); the centroid is weighted by ``value - background``. Components
    without ring pixels or with ``intensity <= 0`` are dropped, and peakfinder8 keeps
    only ``snr >= min_snr`` (dispersion keeps every measured component: its selection is
    the pixel test). At most ``max_peaks_per_panel`` peaks per panel are kept, the
    highest intensities first.

    **Speed.** The full peakfinder8 statistics take one pass over the frame: pixels
    below a bound per annulus (the fast-mode sample's ``mean + 0.75 * min_snr * sigma``)
    enter running sums, whole-number values from the bound up to ``adc_threshold`` are
    counted per value, and the few pixels above are listed; clipping and candidate
    selection then work on the sums, counts and list alone. The largest summed value of
    each annulus is kept, so that an annulus whose clipping threshold falls among the
    summed values is recognised and recomputed from all its pixels: the result is exact
    in every case. Fast mode reads only the sample for statistics and finds candidates
    in one pass that compares blocks of 64 pixels at once with the lowest threshold they
    touch. Results do not depend on earlier frames.

    Inside an open frame of a :class:`~sxlab.profiling.Profiler` a search records its
    two phases, ``pf8-rstats`` (annulus statistics) and ``pf8-search`` (candidates and
    peaks; ``dispersion-search`` for the dispersion method).

    Per-frame bad pixels (``bad``) and non-finite values of float frames are excluded
    like masked pixels. A PeakFinder reuses its buffers between frames: it is not
    thread-safe; give each worker its own.

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m")
    >>> finder = PeakFinder(det, min_snr=6, adc_threshold=3)
    >>> image = np.zeros(det.data_shape, np.float32)
    >>> image[500:502, 600:602] = 50.0
    >>> peaks = finder(image, frame=7)
    >>> peaks[["frame", "fs", "ss", "npix"]]
       frame     fs     ss  npix
    0      7  601.0  501.0     4
    """

    def __init__(self, geometry: Detector, mask=None, params: PeakFinderParams | None = None,
                 **overrides):
        if not isinstance(geometry, Detector):
            raise TypeError(f"geometry must be a Detector, got {type(geometry).__name__}")
        self.geometry = geometry
        self._mask = mask
        self.params = (params or PeakFinderParams()).replace(**overrides)
        p = self.params
        shape = tuple(geometry.data_shape)
        self.shape = shape
        self._cols = int(shape[-1])
        self._rows_per_module = int(shape[-2])
        self._n = int(np.prod(shape))
        maps = geometry.maps

        good = good_pixels(mask, shape)
        good &= ~geometry.bad_pixel_mask()
        good &= maps.panel >= 0
        r = maps.r_px
        good &= np.isfinite(r)
        if p.min_res > 0:
            good &= r >= p.min_res
        if p.max_res > 0:
            good &= r <= p.max_res
        if p.d_min_A is not None or p.d_max_A is not None:
            d = maps.d_A
            if p.d_min_A is not None:
                good &= d >= p.d_min_A
            if p.d_max_A is not None:
                good &= d <= p.d_max_A
        flat_r, flat_good = r.reshape(-1), good.reshape(-1)
        n_ann = _k.annulus_extent(flat_r, flat_good)
        self.n_annuli = n_ann
        self._sentinel = n_ann
        ann_dtype = np.int16 if n_ann < np.iinfo(np.int16).max else np.int32
        ann = np.empty(self._n, dtype=ann_dtype)
        counts = np.zeros(n_ann + 1, np.int64)
        _k.fill_annuli(flat_r, flat_good, n_ann, ann, counts)
        self._ann = ann
        self._static_count = counts[:n_ann]  # pixels per annulus
        small = geometry.n_panels <= np.iinfo(np.int8).max  # one byte per pixel will do
        self._panel = maps.panel.reshape(-1).astype(np.int8 if small else np.int16)
        self._flag = np.zeros(self._n, dtype=np.uint8)
        self._no_bad = np.zeros(1, dtype=np.bool_)
        self.stats_pass = None

        cap = max(1 << 16, self._n // 256)
        self._cand_idx = np.empty(cap, np.int64)
        self._cand_val = np.empty(cap, np.float64)
        if p.method == "peakfinder8":
            self._prepare_annuli(n_ann)
        else:
            self._rects = self._panel_rects()

    @property
    def good(self) -> np.ndarray:
        """Usable pixels, bool of the data shape (from the annulus map; made on each use)."""
        return (self._ann != self._sentinel).reshape(self.shape)

    # ----------------------------------------------------------------- set-up
    def _index_dtype(self):
        """The smallest integer type that holds a pixel index of this detector."""
        return np.int32 if self._n < np.iinfo(np.int32).max else np.int64

    def _prepare_annuli(self, n_ann: int) -> None:
        p = self.params
        counts = self._static_count
        offsets = np.zeros(n_ann + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        # The sample: every pixel of an annulus of at most fast_n_pixels, otherwise
        # fast_n_pixels of its pixels (ranks in index order) drawn without replacement.
        rng = np.random.default_rng(p.seed)
        take = np.minimum(counts, p.fast_n_pixels)
        s_off = np.zeros(n_ann + 1, np.int64)
        np.cumsum(take, out=s_off[1:])
        ranks = np.arange(int(s_off[-1])) - np.repeat(s_off[:-1], take)
        for a in np.flatnonzero(counts > p.fast_n_pixels):
            ranks[s_off[a]:s_off[a + 1]] = np.sort(rng.choice(counts[a], p.fast_n_pixels,
                                                              replace=False))
        s_idx = np.empty(ranks.size, dtype=self._index_dtype())
        _k.sample_members(self._ann, n_ann, ranks, s_off, s_idx)
        self._s_off, self._s_idx = s_off, s_idx
        self._s_ann = np.repeat(np.arange(n_ann), take)
        # The sample is read in pixel order (fewer cache misses) into per-annulus slots.
        self._g_pos = np.argsort(s_idx, kind="stable")
        self._g_idx = s_idx[self._g_pos]
        self._s_vals = np.empty(s_idx.size)
        self._mean = np.zeros(n_ann)
        self._sigma = np.zeros(n_ann)
        self._count = np.zeros(n_ann, np.int64)
        self._cthr = np.full(n_ann, np.inf)
        self._integral = np.zeros(n_ann, np.bool_)
        if p.fast:
            self._chunk_lo, self._chunk_hi = _k.chunk_annulus_ranges(
                self._ann, self._sentinel, _k.CHUNK)
            self._chunk_level = _k.chunk_levels(self._chunk_lo, self._chunk_hi)
            self._chunk_thr = np.empty(self._chunk_lo.size)
        else:
            # pixels by annulus: only the general pass needs them (made again there)
            self._order, self._a_off = None, offsets
            self._vals = np.empty(max(int(counts.max()) if n_ann else 1, 1))
            self._fallback = np.zeros(n_ann, np.bool_)
            self._n_bad = np.zeros(n_ann + 1, np.int64)
            self._hist = np.zeros((n_ann + 1, _N_BINS), np.int64)
            self._counts = np.zeros(0, np.int32)
            self._counting_pays = False
            # the counting pass pays while it lists at most this many pixels
            self._max_listed = _MAX_LISTED_FRACTION * int(counts.sum())
            self._acc = {"float": np.zeros((n_ann + 1, 4, 3)),
                         "int": np.zeros((n_ann + 1, 4, 3), np.int64)}
            cap = max(1 << 16, self._n // 256)
            self._hi_idx = np.empty(cap, np.int64)
            self._hi_val = np.empty(cap, np.float64)
            self._hi_ann = np.empty(cap, np.int32)

    def _panel_rects(self) -> np.ndarray:
        det = self.geometry
        rects = np.empty((det.n_panels, 4), np.int64)
        for i, pn in enumerate(det.panels):
            row0 = (pn.slab or 0) * self._rows_per_module if det.is_stacked else 0
            rects[i] = (row0 + pn.min_ss, row0 + pn.max_ss, pn.min_fs, pn.max_fs)
        return rects

    def with_params(self, params: PeakFinderParams | None = None, **overrides) -> PeakFinder:
        """A finder with other parameters, reusing this one's preparation when possible.

        When only per-frame parameters change (thresholds, pixel counts, background
        radius, clipping iterations, dispersion settings, ``max_peaks_per_panel``), the
        new finder shares this one's annuli, sample and work buffers and costs nothing to
        make: call one of the two at a time. Changing ``method``, the resolution limits
        or the fast-mode sample prepares a new finder for the same geometry and mask.

        Examples
        --------
        >>> from sxlab.geometry import builtin_geometry
        >>> finder = PeakFinder(builtin_geometry("eiger1m"), min_snr=6)
        >>> finder.with_params(min_snr=4).params.min_snr
        4.0
        """
        new = (params or self.params).replace(**overrides)
        if any(getattr(new, f) != getattr(self.params, f) for f in _PREPARED_FIELDS):
            return PeakFinder(self.geometry, self._mask, new)
        out = copy.copy(self)
        out.params = new
        return out

    # -------------------------------------------------------------- per frame
    def _frame_arrays(self, image, bad):
        return frame_arrays(image, bad, self.shape, -1, self._no_bad)

    def _peakfinder8_stats(self, img, bad, has_bad) -> None:
        """Fill the annulus statistics and candidate thresholds for one frame.

        Fast mode: from the fixed sample. Otherwise exact, by the counting pass of integer
        frames where it pays (known from the previous frame, or else from this frame's
        sample) or the general pass (bounded by the sample's statistics).
        """
        p = self.params
        n_bins = 0 if p.fast else self._count_bins(img)
        if n_bins and self._counting_pays:
            self._counted_stats(img, bad, has_bad, n_bins)
        else:
            _k.sample_annulus_stats(img, bad, has_bad, self._g_idx, self._g_pos,
                                    self._s_off, p.min_snr, p.n_sigma_iterations,
                                    self._s_vals, self._mean, self._sigma, self._count,
                                    self._integral)
            self.stats_pass = "sample"
            if n_bins and self._sample_listed(n_bins) <= _MAX_LISTED_FRACTION:
                self._counted_stats(img, bad, has_bad, n_bins)
            elif not p.fast:
                self._exact_stats(img, bad, has_bad)
        has = self._count > 0
        self._cthr[:] = np.inf
        self._cthr[has] = np.maximum(p.adc_threshold,
                                     self._mean[has] + p.min_snr * self._sigma[has])

    def _annulus_pixels(self) -> np.ndarray:
        """Used pixel indices grouped by annulus (``self._a_off``), made on first use."""
        if self._order is None:
            self._order = np.empty(int(self._a_off[-1]), dtype=self._index_dtype())
            _k.annulus_order(self._ann, self.n_annuli, self._order)
        return self._order

    def _count_bins(self, img) -> int:
        """Values the counting pass would count per annulus (0: integer frames only).

        Values up to ``adc_threshold`` are never candidates, so counting them instead of
        listing them loses nothing.
        """
        threshold = self.params.adc_threshold
        if img.dtype.kind not in "ui" or not threshold >= 0:
            return 0
        return int(min(math.floor(threshold) + 1, _MAX_COUNT_BINS))

    def _sample_listed(self, n_bins: int) -> float:
        """Fraction of this frame's sample that the counting pass would list."""
        v = self._s_vals  # NaN for bad pixels
        return np.count_nonzero((v >= n_bins) | (v < 0)) / max(v.size, 1)

    def _counted_stats(self, img, bad, has_bad, n_bins: int) -> None:
        """Exact clipped statistics of an integer frame from per-annulus value counts."""
        p = self.params
        size = (self.n_annuli + 1) * n_bins
        if self._counts.size != size:
            self._counts = np.zeros(size, np.int32)
        while True:
            m = _k.hist_and_high_pass(img, bad, _bad_words(bad, has_bad), has_bad,
                                      self._ann, self._sentinel, n_bins, self._counts,
                                      self._n_bad, self._hi_idx, self._hi_val, self._hi_ann)
            if m <= self._hi_idx.size:
                break
            self._grow_high(m)
        self._n_high = m
        _k.hist_annulus_stats(self._counts, n_bins, self._hi_val, self._hi_ann, m,
                              p.min_snr, p.n_sigma_iterations, self._mean, self._sigma,
                              self._count)
        self._fallback[:] = False
        self._n_good = self._static_count - self._n_bad[:-1]
        # the next frame skips the sample while this pass keeps listing few pixels
        self._counting_pays = m <= self._max_listed
        self.stats_pass = "counted"

    def _grow_high(self, m: int) -> None:
        self._hi_idx = np.empty(int(m * 1.25) + 1, np.int64)
        self._hi_val = np.empty(self._hi_idx.size, np.float64)
        self._hi_ann = np.empty(self._hi_idx.size, np.int32)

    def _exact_stats(self, img, bad, has_bad) -> None:
        p = self.params
        self.stats_pass = "general"
        has = self._count > 0
        mean = self._mean[has]
        low = np.maximum(mean + _BOUND_FRACTION * p.min_snr * self._sigma[has],
                         np.nextafter(mean, np.inf))
        bound = np.full(self.n_annuli + 1, np.inf)
        if img.dtype.kind in "ui":
            low = np.maximum(np.ceil(low), np.floor(mean) + 1.0)
            whole = np.ones(low.size, bool)
        else:
            whole = self._integral[has]
        bound[:-1][has] = low
        # Whole-number frames: values from ceil(low) up to adc_threshold (never
        # candidates) are counted per value instead of listed (at most _N_BINS values).
        bin0 = np.full(self.n_annuli + 1, np.inf)
        bin0[:-1][has] = np.ceil(low)
        top = np.minimum(bin0[:-1][has] + _N_BINS, np.floor(p.adc_threshold) + 1.0)
        bound_hi = np.full(self.n_annuli + 1, -np.inf)
        bound_hi[:-1][has] = np.where(whole, top, -np.inf)
        if img.dtype.kind in "ui":
            bound = np.minimum(bound, 2.0**62).astype(np.int64)
            acc = self._acc["int"] if img.dtype.name in _INT_ACC_DTYPES else self._acc["float"]
        else:
            acc = self._acc["float"]
        one = acc.dtype.type(1)
        lowest = acc.dtype.type(-(2**62) if acc.dtype.kind == "i" else -np.inf)
        bad_words = _bad_words(bad, has_bad)
        while True:
            m = _k.stats_and_high_pass(img, bad, bad_words, has_bad, self._ann,
                                       self._sentinel, bound, bin0, bound_hi, one, lowest,
                                       acc, self._hist, self._n_bad, self._hi_idx,
                                       self._hi_val, self._hi_ann)
            if m <= self._hi_idx.size:
                break
            self._grow_high(m)
        self._n_high = m
        n_good = self._static_count - self._n_bad[:-1]
        _k.exact_annulus_stats(img, bad, has_bad, acc, bin0, self._hist, n_good, self._hi_val,
                               self._hi_ann, m, self._a_off, self._annulus_pixels(),
                               p.min_snr,
                               p.n_sigma_iterations, p.adc_threshold, self._vals, self._mean,
                               self._sigma, self._count, self._fallback)
        self._n_good = n_good

    def _candidates(self, img, bad, has_bad):
        """Candidate pixels (the annulus statistics already computed for peakfinder8)."""
        p = self.params
        if p.method == "dispersion":
            return self._grow(lambda idx, val: _k.dispersion_candidates(
                img, bad, has_bad, self._ann, self._sentinel, self._rects, self._cols,
                p.kernel_size, p.gain, p.sigma_background, p.sigma_strong,
                p.global_threshold, p.min_local, idx, val))
        if p.fast:
            _k.chunk_thresholds(self._cthr, self._chunk_lo, self._chunk_hi, self._chunk_level,
                                self._chunk_thr)
            return self._grow(lambda idx, val: _k.threshold_candidates(
                img, bad, has_bad, self._ann, self._sentinel, self._cthr, self._chunk_thr,
                idx, val))
        idx, val = _k.high_candidates(self._hi_idx, self._hi_val, self._hi_ann, self._n_high,
                                      self._cthr, self._fallback)
        fallback = np.flatnonzero(self._fallback)
        if fallback.size:
            idx, val = _k.fallback_candidates(img, bad, has_bad, fallback, self._a_off,
                                              self._annulus_pixels(), self._cthr, idx, val)
        return idx, val

    def _grow(self, kernel):
        while True:
            m = kernel(self._cand_idx, self._cand_val)
            if m <= self._cand_idx.size:
                return self._cand_idx[:m], self._cand_val[:m]
            self._cand_idx = np.empty(int(m * 1.25) + 1, np.int64)
            self._cand_val = np.empty(self._cand_idx.size, np.float64)

    @tables.documented
    def __call__(self, image, bad=None, *, frame: int | None = None) -> pd.DataFrame:
        """Find the peaks of one frame.

        Parameters
        ----------
        image : xarray.DataArray or ndarray
            The frame, of the geometry's ``data_shape``: float32 images from
            :meth:`sxlab.io.Run.read`, or raw float64, uint16, uint32 or int32 frames
            (used without conversion; other numeric types are converted to float).
            Raw frames keep their flag values: pass them in ``bad`` or the mask.
        bad : ndarray of bool, optional
            Per-frame bad pixels, **True = bad** (as returned by
            :meth:`sxlab.io.Run.read`).
        frame : int, optional
            Frame index for the ``frame`` column; default ``image.attrs["frame"]`` if
            present, else -1.

        Returns
        -------
        DataFrame
            One row per peak (:data:`sxlab.tables.PEAKS`), sorted by ``panel``, then
            ``intensity`` (descending), then the index of the peak's first pixel; not
            indexed yet (``crystal`` -1):

            [columns: peaks]
        """
        if frame is None:
            frame = getattr(image, "attrs", {}).get("frame", -1)
        img, bad_flat, has_bad = self._frame_arrays(image, bad)
        p = self.params
        if p.method == "peakfinder8":
            with section(PF8_RSTATS):
                self._peakfinder8_stats(img, bad_flat, has_bad)
        with section(PF8_SEARCH if p.method == "peakfinder8" else DISPERSION_SEARCH):
            idx, val = self._candidates(img, bad_flat, has_bad)
            min_snr = p.min_snr if p.method == "peakfinder8" else -np.inf
            out = _k.measure_peaks(img, bad_flat, has_bad, self._ann, self._sentinel,
                                   self._panel, self._flag, idx, val, self._cols,
                                   self._rows_per_module, p.min_pix_count, p.max_pix_count,
                                   p.local_bg_radius, min_snr)
        return self._table(int(frame), *out)

    def _table(self, frame, panel, fs, ss, inten, snr, npix, bg, vmax, first) -> pd.DataFrame:
        order = np.lexsort((first, -inten, panel))
        if self.params.max_peaks_per_panel > 0 and order.size:
            ps = panel[order]
            rank = np.arange(ps.size) - np.searchsorted(ps, ps, side="left")
            order = order[rank < self.params.max_peaks_per_panel]
        fs, ss, panel = fs[order], ss[order], panel[order]
        if order.size:
            xyz = self.geometry.pixel_to_lab(fs, ss, panel.astype(np.int64))
            q = self.geometry.lab_to_q(xyz)
            with np.errstate(divide="ignore"):
                d = 1.0 / np.linalg.norm(q, axis=1)
            tth = np.degrees(np.arctan2(np.hypot(xyz[:, 0], xyz[:, 1]), xyz[:, 2]))
        else:
            d = tth = np.zeros(0)
        return tables.PEAKS.make({
            "frame": np.full(order.size, frame), "panel": panel, "fs": fs, "ss": ss,
            "intensity": inten[order], "snr": snr[order], "npix": npix[order],
            "background": bg[order], "max_value": vmax[order], "d_A": d, "two_theta_deg": tth,
        }, fill_missing=True)

    # ------------------------------------------------------------------ extras
    @tables.documented
    def annulus_stats(self, image, bad=None) -> pd.DataFrame:
        """peakfinder8's clipped statistics of every annulus for one frame.

        Parameters
        ----------
        image, bad
            As for :meth:`__call__`.

        Returns
        -------
        DataFrame
            One row per annulus (:data:`sxlab.tables.ANNULI`):

            [columns: annuli]
        """
        if self.params.method != "peakfinder8":
            raise ValueError("annulus statistics belong to method='peakfinder8'")
        img, bad_flat, has_bad = self._frame_arrays(image, bad)
        self._peakfinder8_stats(img, bad_flat, has_bad)
        if self.params.fast:
            usable = np.isfinite(img[self._s_idx])
            if has_bad:
                usable &= ~bad_flat[self._s_idx]
            n_pix = np.bincount(self._s_ann[usable], minlength=self.n_annuli)
        else:
            n_pix = self._n_good
        a = np.arange(self.n_annuli)
        return tables.ANNULI.make({
            "annulus": a, "r_px": a, "n_pixels": n_pix, "n_used": self._count.copy(),
            "mean": self._mean.copy(), "sigma": self._sigma.copy(),
            "threshold": self._cthr.copy(),
        })

    def __repr__(self) -> str:
        p = self.params
        mode = p.method + (" fast" if p.method == "peakfinder8" and p.fast else "")
        return (f"<PeakFinder {mode} on {self.geometry.name or 'detector'} {self.shape}, "
                f"{int(self.good.sum())} good pixels, {self.n_annuli} annuli, "
                f"params {p.digest()}>")


@tables.documented
def find_peaks(image, geometry: Detector, mask=None, *, bad=None, frame: int | None = None,
               params: PeakFinderParams | None = None, **overrides) -> pd.DataFrame:
    """Find the peaks of one frame with a :class:`PeakFinder`.

    The finder is prepared (annuli, sample, buffers) on the first call and reused by
    later calls with the same geometry, mask and parameters (the last two prepared per
    thread are kept), so a loop over frames costs what a prepared :class:`PeakFinder`
    does; a mask is recognised by content unless it is the same read-only array (a
    :class:`~sxlab.masks.Mask`).

    Parameters
    ----------
    image : xarray.DataArray or ndarray
        The frame (see :meth:`PeakFinder.__call__`).
    geometry : Detector
    mask : Mask, ndarray of bool or None
        Usable pixels, True = good (see :class:`PeakFinder`).
    bad : ndarray of bool, optional
        Per-frame bad pixels, True = bad.
    frame : int, optional
        Value of the ``frame`` column.
    params : PeakFinderParams, optional
    **overrides
        Single parameters (``min_snr=6``, ``fast=True``, ``method="dispersion"`` ...).

    Returns
    -------
    DataFrame
        One row per peak (:data:`sxlab.tables.PEAKS`), ordered as by
        :meth:`PeakFinder.__call__`:

        [columns: peaks]

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> det = builtin_geometry("eiger1m")
    >>> image = np.zeros(det.data_shape, np.float32)
    >>> image[100:103, 200:202] = 20.0
    >>> find_peaks(image, det)[["fs", "ss", "npix", "intensity"]]
          fs     ss  npix  intensity
    0  201.0  101.5     6      120.0
    """
    p = (params or PeakFinderParams()).replace(**overrides)
    return _FINDERS.get(geometry, mask, p)(image, bad, frame=frame)


#: The prepared finders of :func:`find_peaks`.
_FINDERS = PreparedCache(lambda geometry, mask, params: PeakFinder(geometry, mask, params))
