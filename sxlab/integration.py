"""Prediction of Bragg reflections, three-ring integration and per-frame resolution.

* :func:`predict` — the reflections of each crystal (one row of a crystals table) that are
  close enough to the Ewald sphere, with their detector position and a partiality.
* :func:`integrate` / :class:`Integrator` — summation integration in three rings around
  every predicted position (CrystFEL's ``--integration=rings``); the prepared object keeps
  the pixel offsets of the rings, the usable-pixel map and its buffers between frames.
* :func:`resolution_estimate`, :func:`resolution_per_frame` — the highest-resolution shell
  whose mean I/σ(I) reaches 1 (cctbx.xfel's per-image resolution).

Everything a crystal's prediction needs is in its row of the crystals table: the
reciprocal basis, the lattice centering, and the profile radius and apparent resolution
the indexer estimated from the peaks it assigned; the peaks themselves are not needed.

Conventions and reciprocal-space maths are those of :mod:`sxlab.reciprocal`: ``q = k_out -
k_in`` in 1/Å without 2π, ``k_in = k0 ẑ`` with ``k0 = 1/λ``; a crystal's reciprocal basis
has rows a*, b*, c* in the lab frame (1/Å) and ``q = hkl @ A``; the **excitation error**
``s = k0 - |q + k0 ẑ|`` (1/Å) is positive when the lattice point lies inside the Ewald
sphere. Pixel coordinates are data-array ``fs``/``ss`` with the corner of the first
pixel at 0 (pixel centres at +0.5); for stacked detectors ``ss`` counts rows within the
module. Intensities are in ADU as read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import _integration_kernels as _k
from . import tables
from ._frames import frame_arrays
from ._frozen import FrozenParams
from ._prepared import PreparedCache
from .geometry import Detector
from .masks import good_pixels
from .reciprocal import (
    ewald_slope,
    excitation_error,
    partiality_gaussian,
    partiality_xsphere,
    spot_wavenumber,
)

__all__ = [
    "DEFAULT_PROFILE_RADIUS_INVA",
    "PARTIALITY_MODELS",
    "IntegrationParams",
    "Integrator",
    "integrate",
    "predict",
    "resolution_estimate",
    "resolution_per_frame",
    "resolution_shells",
]

#: Profile radius (1/Å) used when neither the crystal nor the caller gives one (CrystFEL's
#: starting value, 0.02 nm⁻¹).
DEFAULT_PROFILE_RADIUS_INVA = 0.002

#: Names accepted as ``partiality_model``.
PARTIALITY_MODELS = ("xsphere", "gaussian")

_BASIS_COLUMNS = tuple(f"{v}star_{x}" for v in "abc" for x in "xyz")
# A top-hat spectrum of half width sqrt(3)·σ has the variance of a Gaussian of width σ.
_TOPHAT_HALF_WIDTH = math.sqrt(3.0)
# Variance of a uniform ball of radius R along any axis is R²/5.
_BALL_VARIANCE = 0.2
_CENTERINGS = "PABCIFRH"


# ========================================================================= parameters
@dataclass(frozen=True)
class IntegrationParams(FrozenParams):
    """Parameters of prediction and integration (frozen, serialisable).

    Parameters
    ----------
    radii : tuple of 3 floats
        Ring radii ``(r1, r2, r3)`` in pixels: the peak region is the pixels whose centre
        is within ``r1`` of the centre of the pixel holding the predicted position, the
        background region those between ``r2`` (exclusive) and ``r3`` (inclusive).
        Default (4, 5, 7), CrystFEL's ``--int-radius``.
    d_min_A : float or None
        Highest resolution predicted (Å); None: the detector's corner. Default None.
    push_res_invA : float
        Predict at most this far (1/Å) beyond each crystal's apparent resolution limit
        (column ``resolution_limit_A``: the highest-resolution peak it indexes);
        negative values stop short of it; ``inf`` applies no such cut, nor does a crystal
        without a limit. Default ``inf``, CrystFEL's default (``--push-res`` is given in
        nm⁻¹ there: 1 nm⁻¹ = 0.1 Å⁻¹).
    profile_radius_invA : float or None
        Profile radius (1/Å) for crystals whose table gives none (column
        ``profile_radius_invA`` missing or NaN); None uses
        :data:`DEFAULT_PROFILE_RADIUS_INVA`. Default None.
    partiality_model : {"xsphere", "gaussian"}
        Model of the reciprocal-lattice point (see :func:`predict`). Default "xsphere".
    saturation : float or None
        Pixel value (ADU) at or above which a pixel counts as saturated; None takes each
        panel's ``max_adu`` (infinite: never). Default None.

    Examples
    --------
    >>> p = IntegrationParams(radii=(3, 4, 7))
    >>> p.radii
    (3.0, 4.0, 7.0)
    >>> IntegrationParams.from_dict(p.to_dict()) == p
    True
    """

    radii: tuple[float, float, float] = (4.0, 5.0, 7.0)
    d_min_A: float | None = None
    push_res_invA: float = math.inf
    profile_radius_invA: float | None = None
    partiality_model: str = "xsphere"
    saturation: float | None = None

    _LIMITS = {"push_res_invA": "(-inf, inf]", "saturation": "(0, inf]"}

    def __post_init__(self):
        radii = tuple(float(r) for r in self.radii)
        if len(radii) != 3 or not all(math.isfinite(r) for r in radii):
            raise ValueError(f"radii must be three finite numbers, got {self.radii!r}")
        r1, r2, r3 = radii
        if not 0 < r1 <= r2 < r3:
            raise ValueError(f"radii must satisfy 0 < r1 <= r2 < r3, got {radii}")
        object.__setattr__(self, "radii", radii)
        if self.d_min_A is not None:
            if not float(self.d_min_A) > 0:
                raise ValueError(f"d_min_A must be positive or None, got {self.d_min_A}")
            object.__setattr__(self, "d_min_A", float(self.d_min_A))
        push = float(self.push_res_invA)
        if math.isnan(push) or push == -math.inf:
            raise ValueError(f"push_res_invA must be a number or inf, got {self.push_res_invA}")
        object.__setattr__(self, "push_res_invA", push)
        if self.profile_radius_invA is not None:
            r = float(self.profile_radius_invA)
            if not (math.isfinite(r) and r > 0):
                raise ValueError(f"profile_radius_invA must be positive or None, got {r}")
            object.__setattr__(self, "profile_radius_invA", r)
        if self.partiality_model not in PARTIALITY_MODELS:
            raise ValueError(f"partiality_model must be one of {PARTIALITY_MODELS}, "
                             f"got {self.partiality_model!r}")
        if self.saturation is not None:
            sat = float(self.saturation)
            if math.isnan(sat):
                raise ValueError("saturation must be a number or None")
            object.__setattr__(self, "saturation", sat)


# ============================================================================ helpers
def _check_basis(amat: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(amat)) or abs(np.linalg.det(amat)) == 0:
        raise ValueError("the reciprocal basis of a crystal must be finite and invertible")
    return amat


def _basis(crystal) -> np.ndarray:
    """Reciprocal basis (rows a*, b*, c*, 1/Å) of one crystal row (Series or mapping)."""
    try:
        vals = [float(crystal[c]) for c in _BASIS_COLUMNS]
    except KeyError as err:
        raise KeyError(f"a crystal needs the columns {_BASIS_COLUMNS}; missing {err}") from None
    return _check_basis(np.array(vals).reshape(3, 3))


def _corner_q_max(geometry: Detector) -> float:
    """Largest |q| (1/Å) on the detector: at a panel corner (2θ is quasi-convex on a plane)."""
    fs, ss, pn = [], [], []
    for i, p in enumerate(geometry.panels):
        for f in (p.min_fs, p.max_fs + 1):
            for s in (p.min_ss, p.max_ss + 1):
                fs.append(f)
                ss.append(s)
                pn.append(i)
    q = geometry.pixel_to_q(np.array(fs, float), np.array(ss, float), np.array(pn))
    return float(np.max(np.linalg.norm(q, axis=1)))


def _centering_allowed(hkl: np.ndarray, centering: str, lattice: str) -> np.ndarray:
    """Reflections not absent because of lattice centering."""
    h, k, l = (hkl[:, i].astype(np.int64) for i in range(3))
    if centering == "I":
        return (h + k + l) % 2 == 0
    if centering == "F":
        return ((h + k) % 2 == 0) & ((k + l) % 2 == 0)
    if centering == "A":
        return (k + l) % 2 == 0
    if centering == "B":
        return (h + l) % 2 == 0
    if centering == "C":
        return (h + k) % 2 == 0
    if centering == "R" and lattice != "rhombohedral":
        return (-h + k + l) % 3 == 0
    if centering == "H":
        return (h - k) % 3 == 0
    return np.ones(len(hkl), dtype=bool)


def _text(value, default: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return str(value)


# ========================================================================= prediction
class _Predictor:
    """Geometry-dependent constants of prediction, computed once."""

    def __init__(self, geometry: Detector, params: IntegrationParams):
        if not isinstance(geometry, Detector):
            raise TypeError(f"geometry must be a Detector, got {type(geometry).__name__}")
        lam = geometry.beam.wavelength_A
        if not (np.isfinite(lam) and lam > 0):
            raise ValueError("the geometry's beam needs a finite wavelength")
        self.geometry = geometry
        self.params = params
        self.k0 = 1.0 / lam
        self.sigma_k = float(geometry.beam.bandwidth) * self.k0
        self.half_band = _TOPHAT_HALF_WIDTH * self.sigma_k
        q_corner = _corner_q_max(geometry)
        self.q_max = q_corner if params.d_min_A is None else min(q_corner, 1.0 / params.d_min_A)
        self._buf = np.empty((4096, 3), dtype=np.int32)

    def _radius(self, column_value: float) -> float:
        if math.isfinite(column_value) and column_value > 0:
            return column_value
        if self.params.profile_radius_invA is not None:
            return self.params.profile_radius_invA
        return DEFAULT_PROFILE_RADIUS_INVA

    def _q_limit(self, d_app: float) -> float:
        push = self.params.push_res_invA
        if push == math.inf or not (math.isfinite(d_app) and d_app > 0):
            return self.q_max
        return min(self.q_max, 1.0 / d_app + push)

    def _candidates(self, amat, q_max, r_max) -> np.ndarray:
        direct = np.linalg.inv(amat).T
        lengths = np.linalg.norm(direct, axis=1)
        j = int(np.argmax(lengths))
        i0, i1 = (i for i in range(3) if i != j)
        m_max = int(math.floor(lengths[i0] * q_max))
        n_max = int(math.floor(lengths[i1] * q_max))
        amat = np.ascontiguousarray(amat, dtype=np.float64)
        while True:
            n = _k.lattice_candidates(amat, i0, i1, j, m_max, n_max, self.k0, r_max,
                                      q_max * q_max, self._buf)
            if n <= len(self._buf):
                return self._buf[:n].copy()
            self._buf = np.empty((int(n * 1.25) + 1, 3), dtype=np.int32)

    def arrays(self, crystals: pd.DataFrame) -> dict:
        """Predicted reflections of every crystal row, as arrays (the PREDICTIONS columns)."""
        columns = set(crystals.columns.tolist())
        missing = {"frame", "crystal", *_BASIS_COLUMNS} - columns
        if missing:
            raise KeyError(f"crystals need the columns frame, crystal and {_BASIS_COLUMNS}; "
                           f"missing {sorted(missing)}")
        n = len(crystals)
        bases = np.stack([crystals[c].to_numpy(np.float64) for c in _BASIS_COLUMNS],
                         axis=1).reshape(n, 3, 3)
        frames = crystals["frame"].to_numpy()
        labels = crystals["crystal"].to_numpy()
        radii, limits = (pd.to_numeric(crystals[c], errors="coerce")
                         .to_numpy(np.float64, na_value=np.nan)
                         if c in columns else np.full(n, np.nan)
                         for c in ("profile_radius_invA", "resolution_limit_A"))
        centerings = ([_text(v, "P") for v in crystals["centering"].tolist()]
                      if "centering" in columns else ["P"] * n)
        lattices = ([_text(v, "") for v in crystals["lattice"].tolist()]
                    if "lattice" in columns else [""] * n)
        k0 = self.k0
        model = self.params.partiality_model
        parts = []
        for row in range(n):
            amat = _check_basis(bases[row])
            radius = self._radius(radii[row])
            q_max = self._q_limit(limits[row])
            if not q_max > 0:
                continue
            g_max = ewald_slope(q_max * q_max, k0)
            hkl = self._candidates(amat, q_max, radius + g_max * self.half_band)
            if centerings[row] not in _CENTERINGS:
                raise ValueError(f"unknown centering {centerings[row]!r}")
            hkl = hkl[_centering_allowed(hkl, centerings[row], lattices[row])]
            q = hkl @ amat
            q2 = np.sum(q * q, axis=1)
            s = excitation_error(q, k0)
            g = ewald_slope(q2, k0)
            keep = np.abs(s) <= radius + g * self.half_band
            hkl, q, q2, s, g = hkl[keep], q[keep], q2[keep], s[keep], g[keep]
            if model == "xsphere":
                part = partiality_xsphere(s, radius, g * self.half_band)
            else:
                part = partiality_gaussian(s, _BALL_VARIANCE * radius * radius, g,
                                           self.sigma_k)
            parts.append({
                "row": np.full(len(hkl), row), "frame": np.full(len(hkl), frames[row]),
                "crystal": np.full(len(hkl), labels[row]), "hkl": hkl, "q": q,
                "q2": q2, "s": s, "part": part,
                "wr": np.full(len(hkl), _BALL_VARIANCE * radius * radius),
            })
        if not parts:
            return {c: np.zeros(0, dtype=dt) for c, dt in tables.PREDICTIONS.dtypes.items()}
        cat = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        kstar = spot_wavenumber(cat["q"], k0, cat["wr"], self.sigma_k, q2=cat["q2"])
        panel, fs, ss = self.geometry.q_to_pixel(cat["q"], wavelength_A=1.0 / kstar)
        hkl = cat["hkl"]
        on = panel >= 0
        order = np.lexsort((hkl[on, 2], hkl[on, 1], hkl[on, 0], cat["row"][on]))
        idx = np.flatnonzero(on)[order]
        return {
            "frame": cat["frame"][idx], "crystal": cat["crystal"][idx],
            "h": hkl[idx, 0], "k": hkl[idx, 1], "l": hkl[idx, 2],
            "fs": fs[idx], "ss": ss[idx], "panel": panel[idx],
            "d_A": 1.0 / np.sqrt(cat["q2"][idx]), "partiality": cat["part"][idx],
            "excitation_error_invA": cat["s"][idx],
        }


@tables.documented
def predict(crystals: pd.DataFrame, geometry: Detector, *, d_min_A: float | None = None,
            profile_radius_invA: float | None = None, partiality_model: str = "xsphere",
            push_res_invA: float = math.inf) -> pd.DataFrame:
    """Reflections of each crystal that are excited and reach a panel.

    For every row of ``crystals`` (one lattice), every ``hkl`` with ``d >= d_min_A`` that
    is not absent by lattice centering (column ``centering``, P if missing) and whose
    excitation error ``s = k0 - |q + k0 ẑ|`` satisfies ``|s| <= R + g·Δk`` is predicted,
    where ``R`` is the crystal's profile radius, ``g = |q|²/(2 k0²) = 2 sin²θ`` the slope
    ``ds/dk`` and ``Δk = √3 · bandwidth · k0`` the half width of the band of wavenumbers
    (the limiting spheres ``k0 ± Δk``; a top-hat spectrum of that half width has the
    variance of the Gaussian spectrum of :attr:`sxlab.geometry.Beam.bandwidth`). The
    reflections whose diffracted ray hits a panel are returned.

    Parameters
    ----------
    crystals : DataFrame
        Crystals table (columns ``frame``, ``crystal``, ``astar_x`` ... ``cstar_z`` in
        1/Å; optional ``centering``, ``lattice``, ``profile_radius_invA`` and
        ``resolution_limit_A``, as :func:`sxlab.indexing.index` gives them).
    geometry : Detector
    d_min_A : float, optional
        Highest resolution (Å); default the detector's corner.
    profile_radius_invA : float, optional
        Profile radius R (1/Å) for crystals without a finite ``profile_radius_invA``
        column; if None, :data:`DEFAULT_PROFILE_RADIUS_INVA`.
    partiality_model : {"xsphere", "gaussian"}
        See Notes.
    push_res_invA : float
        Predict up to each crystal's apparent resolution (column ``resolution_limit_A``)
        plus this many 1/Å; ``inf`` (default) applies no such limit. A crystal without an
        apparent resolution keeps the ``d_min_A`` limit.

    Returns
    -------
    DataFrame
        One row per predicted reflection (:data:`sxlab.tables.PREDICTIONS`), sorted by
        crystal row, then h, k, l:

        [columns: predictions]

    Notes
    -----
    **xsphere** (after CrystFEL's ``xsphere`` model, normalised): the reciprocal-lattice
    point is a uniformly filled ball of radius R. Between the limiting spheres the Ewald
    sphere sweeps the slab of the ball between the planes at signed distances
    ``u1 = s - g·Δk`` and ``u2 = s + g·Δk`` from its centre (clipped to ``[-R, R]``).
    The fraction of the ball's volume below a plane at ``u`` is ``F(x) = x²(3 - 2x)``,
    ``x = (u + R)/(2R)``, so the swept fraction is ``F(x2) - F(x1) = (x2 - x1)(3(x1 +
    x2) - 2(x1² + x1 x2 + x2²))``. The partiality is that fraction divided by its value
    for ``s = 0``, so that a reflection centred on the Ewald sphere is fully recorded, as
    in the simulator (the plain fraction would vanish for a monochromatic beam and stays
    far below 1 whenever ``g·Δk << R``); for a monochromatic beam (Δk = 0) the ratio
    tends to ``1 - (s/R)²``, the area of the ball's cross-section at ``s`` relative to
    its largest.

    **gaussian**: ``p = exp(-s² / (2 σ_eff²))`` with ``σ_eff² = R²/5 + (g · bandwidth ·
    k0)²`` (R²/5 is the variance of the xsphere ball along one axis), the simulator's
    model.

    **Spot position**: the diffracted ray is ``q + k* ẑ`` with ``k* = (k0 σ_r² + k_B
    g_B² σ_k²) / (σ_r² + g_B² σ_k²)``, the wavenumber maximising spectrum × profile for
    Gaussians of widths ``σ_r = R/√5`` and ``σ_k = bandwidth · k0``, where ``k_B = -|q|² /
    (2 q_z)`` puts the point on the Ewald sphere and ``g_B = |q|²/(2 k_B²)``; ``k* = k0``
    for a monochromatic beam.

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> from sxlab.cell import UnitCell
    >>> from sxlab.simulate import Simulator
    >>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    >>> sim = Simulator(builtin_geometry("eiger4m"), cell, seed=7, hit_fraction=1.0)
    >>> truth = sim.frame_truth(0)
    >>> pred = predict(truth.crystals, sim.detector)
    >>> list(pred.columns[:5])
    ['frame', 'crystal', 'h', 'k', 'l']
    >>> bool(pred.partiality.between(0, 1).all())
    True
    """
    params = IntegrationParams(d_min_A=d_min_A, profile_radius_invA=profile_radius_invA,
                               partiality_model=partiality_model, push_res_invA=push_res_invA)
    return tables.PREDICTIONS.make(_Predictor(geometry, params).arrays(crystals))


# ======================================================================== integration
def _ring_classes(radii) -> np.ndarray:
    """Role of each integer offset in the square of half side ceil(r3): 1 peak, 2 background."""
    r1, r2, r3 = radii
    n = int(math.ceil(r3))
    dr, dc = np.mgrid[-n:n + 1, -n:n + 1]
    d2 = dr * dr + dc * dc
    classes = np.zeros(d2.shape, dtype=np.int8)
    classes[d2 <= r1 * r1] = 1
    classes[(d2 > r2 * r2) & (d2 <= r3 * r3)] = 2
    return classes


class Integrator:
    """Prediction and three-ring integration prepared for one geometry, mask and parameters.

    Parameters
    ----------
    geometry : Detector
        Detector geometry and beam; frames must have its ``data_shape``.
    mask : Mask, ndarray of bool or None
        Usable pixels (**True = good**), as for :class:`sxlab.peaks.PeakFinder`; the
        geometry's bad pixels and pixels on no panel are excluded in every case.
    params : IntegrationParams, optional
        Parameters; keyword arguments override single fields
        (``Integrator(det, mask, radii=(3, 4, 7))``).

    Attributes
    ----------
    geometry : Detector
    params : IntegrationParams
    good : ndarray of bool
        Usable pixels (data shape).
    n_peak_offsets, n_background_offsets : int
        Pixels of a full peak disc and background annulus.
    q_max_invA : float
        Resolution limit of prediction (1/Å).

    Notes
    -----
    **Regions.** The ring centre is the pixel holding the predicted position
    (``floor(fs)``, ``floor(ss)``). A pixel at integer offset ``o`` from it belongs to the
    peak region if ``|o| <= r1`` and to the background region if ``r2 < |o| <= r3``
    (CrystFEL's rule); both are fixed offset lists computed here. Only pixels of the
    reflection's own panel are used. Background pixels that lie in the peak region of
    any predicted reflection of the frame (of any crystal) are left out of every
    background.

    **Intensity.** With ``S`` the sum of the ``n_peak`` usable peak pixels, ``bg`` the
    mean and ``var`` the unbiased variance of the ``n_bg`` usable background pixels and
    ``g`` the panel's gain in ADU per photon (``adu_per_photon``, or ``adu_per_eV`` times
    the photon energy):

    * ``I = S - n_peak · bg``
    * ``σ²(I) = max(g · max(I, 0) + n_peak · var + n_peak² · var / n_bg, g²)``

    i.e. Poisson counting of the signal above background (in ADU, a count of N photons has
    variance ``g²N = g·value``), the background variance of each peak pixel, and the
    uncertainty of the background mean. On a photon-counting detector ``n_peak · var``
    estimates the Poisson variance of the background photons in the peak
    (``g · n_peak · bg``), so ``σ²`` is the Poisson variance of ``S`` plus that of the
    subtracted mean; on integrating detectors it also carries read noise. The floor of
    one photon (``σ >= g``) keeps regions without any counts (all pixels 0, as in
    low-background high-resolution shells of counting detectors) from getting
    ``σ = 0``. ``I``, ``sigma`` and ``bg`` are NaN when no peak pixel or fewer than two
    background pixels are usable.

    **Flags.** ``flag_masked``: a peak pixel is masked, bad in this frame or non-finite
    (it is left out of ``S``); ``flag_saturated``: a peak pixel is at or above the
    saturation level; ``flag_edge``: part of the peak or background region lies outside
    the panel; ``flag_overlap``: a peak pixel also lies in another predicted reflection's
    peak region.

    **Resolution.** Reflections are predicted to ``params.d_min_A`` (default the
    detector's corner) and, with a finite ``push_res_invA``, to each crystal's apparent
    resolution plus ``push_res_invA`` (see :class:`IntegrationParams`).

    An Integrator reuses its buffers between frames: it is not thread-safe; give each
    worker its own.

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> from sxlab.cell import UnitCell
    >>> from sxlab.simulate import Simulator
    >>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    >>> sim = Simulator(builtin_geometry("eiger4m"), cell, seed=7, hit_fraction=1.0)
    >>> integrator = Integrator(sim.detector, sim.pixel_mask == 0, radii=(3, 4, 7))
    >>> data, truth = sim.frame(0)
    >>> refl = integrator(data, truth.crystals)
    >>> list(refl.columns[:8])
    ['frame', 'crystal', 'h', 'k', 'l', 'I', 'sigma', 'bg']
    """

    def __init__(self, geometry: Detector, mask=None, params: IntegrationParams | None = None,
                 **overrides):
        if not isinstance(geometry, Detector):
            raise TypeError(f"geometry must be a Detector, got {type(geometry).__name__}")
        if params is not None and not isinstance(params, IntegrationParams):
            raise TypeError("params must be an IntegrationParams; give radii as radii=...")
        self.geometry = geometry
        self.params = (params or IntegrationParams()).replace(**overrides)
        p = self.params
        self._predictor = _Predictor(geometry, p)
        self.q_max_invA = self._predictor.q_max
        shape = tuple(geometry.data_shape)
        self.shape = shape
        rows = int(np.prod(shape[:-1]))
        cols = int(shape[-1])
        self._shape2d = (rows, cols)
        good = good_pixels(mask, shape) & ~geometry.bad_pixel_mask() & (geometry.maps.panel >= 0)
        self.good = good
        self._good = good.reshape(self._shape2d).view(np.uint8)  # the kernels' 0/1 bytes
        self._no_bad = np.zeros((1, 1), dtype=np.bool_)

        self._classes = _ring_classes(p.radii)
        h = self._classes.shape[0] // 2
        pk_dr, pk_dc = np.nonzero(self._classes == 1)
        self._pk_dr = (pk_dr - h).astype(np.int64)
        self._pk_dc = (pk_dc - h).astype(np.int64)
        self.n_peak_offsets = len(self._pk_dr)
        self.n_background_offsets = int(np.count_nonzero(self._classes == 2))
        if self.n_background_offsets < 2:
            raise ValueError(f"radii {p.radii} leave fewer than 2 background pixels")

        ny = shape[-2]
        n = geometry.n_panels
        self._row0 = np.zeros(n, dtype=np.int64)
        self._bounds = np.zeros((n, 4), dtype=np.int64)
        self._gain = np.ones(n)
        self._saturation = np.full(n, np.inf)
        energy = geometry.beam.photon_energy_eV
        for i, pn in enumerate(geometry.panels):
            r0 = pn.slab * ny if geometry.is_stacked else 0
            self._row0[i] = r0
            self._bounds[i] = (r0 + pn.min_ss, r0 + pn.max_ss, pn.min_fs, pn.max_fs)
            if pn.adu_per_photon is not None:
                self._gain[i] = pn.adu_per_photon
            elif pn.adu_per_eV is not None:
                self._gain[i] = pn.adu_per_eV * energy
            self._saturation[i] = pn.max_adu if p.saturation is None else p.saturation

    # ------------------------------------------------------------------- frames
    @tables.documented
    def predict(self, crystals: pd.DataFrame) -> pd.DataFrame:
        """Predicted reflections of ``crystals`` (see :func:`predict`) with these params.

        Returns
        -------
        DataFrame
            One row per predicted reflection (:data:`sxlab.tables.PREDICTIONS`):

            [columns: predictions]
        """
        return tables.PREDICTIONS.make(self._predictor.arrays(crystals))

    def _frame_arrays(self, image, bad):
        return frame_arrays(image, bad, self.shape, self._shape2d, self._no_bad)

    @tables.documented
    def __call__(self, image, crystals: pd.DataFrame | None = None, bad=None, *,
                 predictions: pd.DataFrame | None = None) -> pd.DataFrame:
        """Predict and integrate the reflections of one frame's crystals.

        Parameters
        ----------
        image : xarray.DataArray or ndarray
            The frame, of the geometry's ``data_shape`` (float32 images from
            :meth:`sxlab.io.Run.read`, or raw float64, uint16, uint32 or int32 frames;
            other numeric types are converted to float). Raw frames keep their flag
            values: pass them in ``bad`` or the mask.
        crystals : DataFrame
            This frame's crystals (see :func:`predict`); not needed with
            ``predictions``.
        bad : ndarray of bool, optional
            Per-frame bad pixels, **True = bad**.
        predictions : DataFrame, optional
            Reflections to integrate (columns of :data:`sxlab.tables.PREDICTIONS`, e.g. from
            :meth:`predict`) instead of predicting from ``crystals``.

        Returns
        -------
        DataFrame
            One row per predicted reflection (:data:`sxlab.tables.REFLECTIONS`), in the
            order of the predictions; ``sigma`` as in the Notes of the class:

            [columns: reflections]
        """
        img, bad2d, has_bad = self._frame_arrays(image, bad)
        if predictions is not None:
            missing = set(tables.PREDICTIONS.names) - set(predictions.columns.tolist())
            if missing:
                raise KeyError(f"predictions lack the columns {sorted(missing)}")
            ok = ((predictions["panel"].to_numpy() >= 0)
                  & np.isfinite(predictions["fs"].to_numpy(np.float64))
                  & np.isfinite(predictions["ss"].to_numpy(np.float64)))
            pred = {c: predictions[c].to_numpy()[ok] for c in tables.PREDICTIONS.names}
        elif crystals is None:
            raise ValueError("pass the frame's crystals or predictions")
        else:
            if len(crystals) and crystals["frame"].nunique() > 1:
                raise ValueError("crystals of several frames: pass one frame's crystals")
            pred = self._predictor.arrays(crystals)
        panel = np.asarray(pred["panel"], dtype=np.int64)
        if len(panel) and (panel.max() >= self.geometry.n_panels):
            raise ValueError("a prediction refers to a panel the geometry does not have")
        rows = self._row0[panel] + np.floor(np.asarray(pred["ss"], np.float64)).astype(np.int64)
        cols = np.floor(np.asarray(pred["fs"], np.float64)).astype(np.int64)
        inten, sigma, bg, peak, n_pk, n_bg, flags = _k.ring_integrate(
            img, self._good, bad2d, has_bad, rows, cols, panel, self._bounds, self._classes,
            self._pk_dr, self._pk_dc, self._gain, self._saturation)
        out = dict(pred)
        out.update({
            "I": inten, "sigma": sigma, "bg": bg, "peak": peak, "n_peak_px": n_pk,
            "n_bg_px": n_bg, "flag_masked": (flags & _k.FLAG_MASKED) != 0,
            "flag_saturated": (flags & _k.FLAG_SATURATED) != 0,
            "flag_edge": (flags & _k.FLAG_EDGE) != 0,
            "flag_overlap": (flags & _k.FLAG_OVERLAP) != 0,
        })
        return tables.REFLECTIONS.make(out)

    def __repr__(self) -> str:
        p = self.params
        return (f"<Integrator rings {p.radii} on {self.geometry.name or 'detector'} "
                f"{self.shape}, d_min {1.0 / self.q_max_invA:.2f} Å, {p.partiality_model}, "
                f"params {p.digest()}>")


@tables.documented
def integrate(image, geometry: Detector, crystals: pd.DataFrame | None = None, *, mask=None,
              bad=None, predictions: pd.DataFrame | None = None,
              params: IntegrationParams | None = None, **overrides) -> pd.DataFrame:
    """Predict and integrate one frame's reflections with an :class:`Integrator`.

    The integrator is prepared (ring offsets, usable pixels, buffers) on the first call
    and reused by later calls with the same geometry, mask and parameters (the last two
    prepared per thread are kept), so a loop over frames costs what a prepared
    :class:`Integrator` does.

    Parameters
    ----------
    image : xarray.DataArray or ndarray
        The frame (see :meth:`Integrator.__call__`).
    geometry : Detector
    crystals : DataFrame
        This frame's crystals (see :func:`predict`).
    mask : Mask, ndarray of bool or None
        Usable pixels, True = good.
    bad : ndarray of bool, optional
        Per-frame bad pixels, True = bad.
    predictions : DataFrame, optional
        Reflections to integrate instead of predicting them.
    params : IntegrationParams, optional
    **overrides
        Single parameters: ``radii=(3, 4, 7)``, ``d_min_A``, ``push_res_invA``,
        ``profile_radius_invA``, ``partiality_model``, ``saturation``.

    Returns
    -------
    DataFrame
        One row per reflection (:data:`sxlab.tables.REFLECTIONS`), as
        :meth:`Integrator.__call__` returns it:

        [columns: reflections]

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> from sxlab.cell import UnitCell
    >>> from sxlab.simulate import Simulator
    >>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    >>> sim = Simulator(builtin_geometry("eiger4m"), cell, seed=7, hit_fraction=1.0)
    >>> data, truth = sim.frame(0)
    >>> refl = integrate(data, sim.detector, truth.crystals, mask=sim.pixel_mask == 0)
    >>> bool((refl.I / refl.sigma).max() > 10)
    True
    """
    if params is not None and not isinstance(params, IntegrationParams):
        raise TypeError("params must be an IntegrationParams; give radii as radii=...")
    p = (params or IntegrationParams()).replace(**overrides)
    return _INTEGRATORS.get(geometry, mask, p)(image, crystals, bad, predictions=predictions)


#: The prepared integrators of :func:`integrate`.
_INTEGRATORS = PreparedCache(lambda geometry, mask, params: Integrator(geometry, mask, params))


# ========================================================================= resolution
def resolution_estimate(reflections: pd.DataFrame, *, n_bins: int = 10,
                        min_i_over_sigma: float = 1.0, min_per_bin: int = 1) -> float:
    """Resolution of one frame: the highest-resolution shell with mean I/σ(I) >= 1.

    The reflections with finite ``I``, ``sigma > 0`` and ``d_A > 0`` are sorted into
    ``n_bins`` shells of equal reciprocal volume (equal steps of ``1/d³``) between their
    lowest and highest resolution (:func:`resolution_shells`). The result is the
    high-resolution edge of the highest-resolution shell holding at least
    ``min_per_bin`` reflections whose mean ``I/sigma`` is at least ``min_i_over_sigma``
    (cctbx.xfel's per-image resolution rule), whether or not lower shells reach it.

    Parameters
    ----------
    reflections : DataFrame
        Integrated reflections (``I``, ``sigma``, ``d_A``) of one frame; filter flags
        before if wanted.
    n_bins : int
        Number of shells. Default 10.
    min_i_over_sigma : float
        Threshold on the shell's mean I/σ(I). Default 1.0.
    min_per_bin : int
        Fewest reflections for a shell to count. Default 1.

    Returns
    -------
    float
        d in Å; NaN when no shell reaches the threshold.

    Examples
    --------
    >>> d = np.array([4.0, 3.0, 2.5, 2.0, 1.8])
    >>> refl = pd.DataFrame({"d_A": d, "I": [50.0, 20.0, 5.0, 0.5, 0.2], "sigma": 1.0})
    >>> round(resolution_estimate(refl, n_bins=4), 3)
    2.203
    """
    shells = resolution_shells(reflections.assign(frame=0), n_bins=n_bins)
    res = _shell_resolution(shells, min_i_over_sigma, min_per_bin)
    return float(res.iloc[0]) if len(res) else math.nan


def _shell_resolution(shells: pd.DataFrame, min_i_over_sigma: float,
                      min_per_bin: int) -> pd.Series:
    ok = ((shells["n"].to_numpy() >= max(int(min_per_bin), 1))
          & (shells["mean_i_sigma"].to_numpy() >= min_i_over_sigma))
    return shells["d_min_A"].where(ok).groupby(shells["frame"], sort=True).min()


@tables.documented
def resolution_shells(reflections: pd.DataFrame, *, n_bins: int = 10) -> pd.DataFrame:
    """Per-frame resolution shells and their mean I/σ(I) (the input of per-image resolution).

    For every frame, the reflections with finite ``I``, ``sigma > 0`` and ``d_A > 0`` are
    sorted into ``n_bins`` shells of equal reciprocal volume (equal steps of ``1/d³``)
    between the frame's lowest and highest resolution. The per-image resolution at any
    I/σ cutoff follows from this table (:func:`sxlab.runstats.frame_resolution`);
    :func:`resolution_estimate` is its value at I/σ ≥ 1.

    Parameters
    ----------
    reflections : DataFrame
        Integrated reflections with ``frame``, ``I``, ``sigma`` and ``d_A``.
    n_bins : int
        Shells per frame. Default 10.

    Returns
    -------
    DataFrame
        One row per non-empty shell, by frame and shell
        (:data:`sxlab.tables.RESOLUTION_SHELLS`):

        [columns: resolution_shells]

    Examples
    --------
    >>> refl = pd.DataFrame({"frame": [0, 0, 0], "d_A": [4.0, 3.0, 2.0],
    ...                      "I": [9.0, 3.0, 0.5], "sigma": 1.0})
    >>> resolution_shells(refl, n_bins=2)[["shell", "n", "mean_i_sigma"]].values.tolist()
    [[0.0, 2.0, 6.0], [1.0, 1.0, 0.5]]
    """
    nb = int(n_bins)
    if nb < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    d = reflections["d_A"].to_numpy(np.float64)
    i = reflections["I"].to_numpy(np.float64)
    sig = reflections["sigma"].to_numpy(np.float64)
    ok = np.isfinite(d) & (d > 0) & np.isfinite(i) & np.isfinite(sig) & (sig > 0)
    frames, code = np.unique(reflections["frame"].to_numpy(np.int64)[ok], return_inverse=True)
    if not len(frames):
        return tables.RESOLUTION_SHELLS.empty()
    x = d[ok] ** -3.0
    ios = i[ok] / sig[ok]
    lo = np.full(len(frames), np.inf)
    hi = np.full(len(frames), -np.inf)
    np.minimum.at(lo, code, x)
    np.maximum.at(hi, code, x)
    edges = np.linspace(lo, hi, nb + 1, axis=1)
    b = np.clip((edges[code] <= x[:, None]).sum(axis=1) - 1, 0, nb - 1)
    key = code * nb + b
    count = np.bincount(key, minlength=len(frames) * nb)
    total = np.bincount(key, weights=ios, minlength=len(frames) * nb)
    keep = np.flatnonzero(count)
    fk, sk = np.divmod(keep, nb)
    return tables.RESOLUTION_SHELLS.make({
        "frame": frames[fk],
        "shell": sk,
        "d_max_A": edges[fk, sk] ** (-1.0 / 3.0),
        "d_min_A": edges[fk, sk + 1] ** (-1.0 / 3.0),
        "n": count[keep].astype(np.int64),
        "mean_i_sigma": total[keep] / count[keep],
    })


def resolution_per_frame(reflections: pd.DataFrame, *, n_bins: int = 10,
                         min_i_over_sigma: float = 1.0, min_per_bin: int = 1) -> pd.Series:
    """:func:`resolution_estimate` of every frame of a multi-frame reflection table.

    Parameters
    ----------
    reflections : DataFrame
        Integrated reflections with a ``frame`` column.
    n_bins, min_i_over_sigma, min_per_bin
        As for :func:`resolution_estimate`.

    Returns
    -------
    Series
        float64 d in Å (NaN where no shell reaches the threshold), indexed by ``frame``,
        named ``resolution_A``.

    Examples
    --------
    >>> refl = pd.DataFrame({"frame": [0, 0, 1, 1], "d_A": [3.0, 2.0, 3.0, 2.0],
    ...                      "I": [5.0, 2.0, 5.0, 0.1], "sigma": 1.0})
    >>> resolution_per_frame(refl, n_bins=2).round(2).tolist()
    [2.0, 2.31]
    """
    frames = pd.Index(np.unique(reflections["frame"].to_numpy(np.int64)), name="frame")
    shells = resolution_shells(reflections, n_bins=n_bins)
    res = _shell_resolution(shells, min_i_over_sigma, min_per_bin)
    return res.reindex(frames).astype(np.float64).rename("resolution_A")

