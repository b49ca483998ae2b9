"""Synthetic serial-crystallography still images with complete ground truth.

The simulator is the reference every later stage is checked against (peak finding,
indexing, integration, merging), so each modelling choice is stated here.

Physics
-------
* **Reciprocal space** as in :mod:`sxlab.geometry`: ``q = k_out - k_in``, ``|k| = 1/λ``
  (no 2π), +z along the beam, so ``k_in = k ẑ``. A crystal's reciprocal basis in the lab
  frame is ``A = B Uᵀ`` (rows a*, b*, c* in 1/Å), where ``B`` is
  :attr:`~sxlab.cell.UnitCell.reciprocal_basis` and ``U`` a rotation drawn uniformly on
  SO(3); reflection ``hkl`` sits at ``q = hkl @ A``.
* **Excitation error** at wavenumber ``k``: ``s(k) = k - |q + k ẑ|`` (1/Å), **positive
  when the reciprocal-lattice point lies inside the Ewald sphere**. Differentiating,
  ``ds/dk = 1 - (q_z + k)/|q + k ẑ|``, which on the sphere equals ``1 - cos 2θ =
  2 sin²θ`` (with the opposite sign convention it would be ``-2 sin²θ``). The **Bragg
  wavenumber**, where ``s = 0``, is ``k_B = -|q|² / (2 q_z)`` (only for ``q_z < 0``).
* **Partiality**: the reciprocal-lattice point has a Gaussian profile of width
  ``σ_r = sqrt((1/L)² + (η |q|)²)`` (crystal size ``L`` in Å, mosaic spread ``η`` in
  rad) and the spectrum is Gaussian in ``k`` with ``σ_k = bandwidth · k0``. Near the
  sphere ``s(k) ≈ s0 + 2 sin²θ (k - k0)``, so integrating the product over ``k`` gives a
  Gaussian in ``s0`` of width ``σ_eff = sqrt(σ_r² + (2 sin²θ σ_k)²)``, and the partiality
  is ``p = exp(-s0² / (2 σ_eff²))`` with ``s0 = s(k0)`` (1 on the sphere).
* **Spot wavenumber**: with ``s(k) ≈ g (k - k_B)`` near the Bragg wavenumber
  (``g = 2 sin²θ_B = |q|²/(2 k_B²)``), the product ``exp(-(k - k0)²/(2σ_k²)) ·
  exp(-s(k)²/(2σ_r²))`` has zero derivative at
  ``k* = (k0 σ_r² + k_B g² σ_k²) / (σ_r² + g² σ_k²)``, the mean of ``k0`` and ``k_B``
  weighted by ``1/σ_k²`` and ``g²/σ_r²``; the spot is drawn where ``k_out = q + k* ẑ``
  meets the detector. A monochromatic beam gives ``k* = k0``.
* **Structure-factor intensities** are drawn once per data set for the unique
  reflections to ``d_min`` from the Wilson distribution with mean ``ε exp(-2 B s²)``,
  ``s = 1/(2d)`` (acentric: exponential; centric: ``|F|²`` with ``F`` Gaussian); every
  symmetry equivalent and Friedel mate shares its unique reflection's value, and
  systematically absent reflections never occur.
* **Photons** of a spot: ``fluence · scale · I(hkl) · exp(-2 ΔB s²) · p · P`` with the
  crystal's scale and relative B factor and the polarization factor ``P``; the spot is a
  2-D Gaussian (``spot_sigma_px``) integrated over the pixels of its panel.
* **Background** (photons per µsr, times each pixel's solid angle and polarization):
  a constant, a diffuse term ``exp(-|q| / q_d)`` and, in frames with solvent, a water
  ring, a Gaussian in ``|q|`` around ``1/3.2`` Å⁻¹; scaled per frame by a log-normal
  factor.
* **Detector**: beam-stop shadow (disc plus rod, fixed transmission; not flagged),
  Poisson noise, gain (``adu_per_photon`` or ``adu_per_eV`` × photon energy), rounding,
  saturation at the panel's ``max_adu`` or the dtype maximum − 1, and bad pixels (geometry
  bad pixels and a random fraction of dead/hot pixels) set to the flag value
  (``2**bits - 1``); optionally hot pixels that nothing flags (``unflagged_hot_fraction``),
  bright in every frame.

Not modelled: beam divergence, variation of the cell between crystals, absorption,
sensor parallax, charge sharing and point spread (the spot width does not follow the
reflection's profile), and the bandwidth-dependent normalisation ``σ_r/σ_eff`` of the
integral above: partiality is 1 for a reflection on the sphere whatever the widths.

Reproducibility: everything random derives from ``(seed, frame index)`` through
:class:`numpy.random.SeedSequence`, so any frame can be regenerated alone, bit for bit,
in any order and by any number of workers.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import _simulate_kernels as _k
from . import tables
from ._frozen import FrozenParams
from .cell import UnitCell
from .geometry import Detector
from .reciprocal import (
    effective_variance,
    ewald_slope,
    partiality_gaussian,
    spot_wavenumber,
)
from .symmetry import point_group_rotations

__all__ = [
    "powder_ring_intensities",
    "write_powder",
    "simulate_powder",
    "FrameTruth",
    "SimulationParams",
    "code_digest",
    "Simulator",
    "Truth",
    "simulate_frame",
    "truth_paths",
]

# Independent random streams derived from the data-set seed.
_STREAM_INTENSITIES = 1
_STREAM_BAD_PIXELS = 2
_STREAM_FRAME = 3
_STREAM_NOISE = 4
_STREAM_HOT = 5

_SPOT_WINDOW_SIGMA = 4.0
#: Start time written into simulated NXmx files, fixed so that the same seed gives
#: byte-identical files.
SIMULATED_START_TIME = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)

_FLAG_VALUES = {"uint16": 2**16 - 1, "uint32": 2**32 - 1}
# NXmx pixel_mask bits.
_MASK_GAP = 1
_MASK_DEAD = 2
_MASK_HOT = 8


#: The truth tables by attribute of :class:`Truth`.
_TRUTH_TABLES = {"frames": tables.TRUTH_FRAMES, "crystals": tables.TRUTH_CRYSTALS,
                 "reflections": tables.TRUTH_REFLECTIONS,
                 "intensities": tables.TRUTH_INTENSITIES}


# ========================================================================= parameters
@dataclass(frozen=True)
class SimulationParams(FrozenParams):
    """Parameters of a simulated data set (frozen, serialisable).

    Parameters
    ----------
    fluence : float
        Expected photons of a full reflection of true intensity 1 from a crystal of
        scale 1 (the Wilson mean at ``s = 0`` is ``ε``). Default 1500.
    crystal_size_um : float
        Crystal size ``L`` in µm; the reciprocal-lattice point width has ``1/L``.
        Default 5.
    mosaicity_deg : float
        Mosaic spread ``η`` (standard deviation, degrees). Default 0.05.
    bandwidth : float or None
        Spectral bandwidth (standard deviation / photon energy); None takes
        ``detector.beam.bandwidth``. Default None.
    wilson_b_A2 : float
        Overall B factor of the true intensities (Å²). Default 20.
    d_min_A : float or None
        Highest resolution simulated (Å); None: the detector's corner. Default None.
    spot_sigma_px : float
        Standard deviation of the Gaussian spot profile (pixels). Default 0.8.
    partiality_min : float
        Reflections of lower partiality are left out. Default 1e-3.
    constant_background : float
        Constant background (photons per µsr). Default 1.
    diffuse_background : float
        Diffuse background at ``q = 0`` (photons per µsr), falling as
        ``exp(-|q| / diffuse_decay_invA)``. Default 10.
    diffuse_decay_invA : float
        Decay length of the diffuse term (1/Å). Default 0.1.
    water_ring : float
        Water-ring peak height (photons per µsr) in frames with solvent. Default 8.
    water_ring_d_A : float
        Position of the water ring (Å). Default 3.2.
    water_ring_width_invA : float
        Standard deviation of the water ring in ``|q| = 1/d`` (1/Å). Default 0.04.
    solvent_probability : float
        Probability that a frame shows the water ring. Default 0.9.
    background_scale_sigma : float
        σ of the per-frame log-normal background scale (median 1). Default 0.1.
    polarization_fraction : float or None
        Fraction of the beam polarized along lab x (0.5: unpolarized); None: no
        polarization factor. Default 0.99.
    poisson : bool
        Draw Poisson counts; False writes the rounded expected value. Default True.
    dtype : {"uint16", "uint32"}
        Pixel type of the frames. Default "uint16".
    bad_pixel_fraction : float
        Fraction of the good pixels made dead or hot (flagged). Default 1e-4.
    unflagged_hot_fraction : float
        Fraction of the good pixels that seed a hot spot without being flagged or in the
        pixel mask (a detector whose bad-pixel map is out of date): a block of 1 × 1,
        1 × 2, 2 × 1 or 2 × 2 pixels (equally likely) that adds the same expected photons
        to each of its pixels in every frame, drawn once log-uniformly in
        ``hot_pixel_photons``. Default 0.
    hot_pixel_photons : tuple of 2 floats
        Range of the expected photons of an unflagged hot pixel. Default (20, 2000).
    beamstop_radius_px : float
        Radius of the beam-stop disc around the beam (pixels); 0: no beam stop.
        Default 30.
    beamstop_rod_width_px : float
        Width of the rod holding the beam stop (pixels); 0: no rod. Default 12.
    beamstop_rod_angle_deg : float
        Direction of the rod from the beam to the detector edge, in degrees from lab +x
        towards +y. Default 30 (clear of the module gaps of the EIGER geometries).
    beamstop_transmission : float
        Fraction of photons passing the beam stop and rod. Default 1e-3.
    hit_fraction : float
        Probability that a frame holds a crystal. Default 0.5.
    multi_lattice_probability : float
        Probability that a hit holds a second crystal. Default 0.1.
    crystal_scale_sigma : float
        σ of the log-normal per-crystal scale (median 1). Default 0.3.
    b_factor_sigma_A2 : float
        Standard deviation of the per-crystal relative B factor (Å²). Default 3.

    Examples
    --------
    >>> p = SimulationParams(hit_fraction=1.0)
    >>> p.replace(poisson=False).poisson
    False
    >>> SimulationParams.from_dict(p.to_dict()) == p
    True
    """

    fluence: float = 1500.0
    crystal_size_um: float = 5.0
    mosaicity_deg: float = 0.05
    bandwidth: float | None = None
    wilson_b_A2: float = 20.0
    d_min_A: float | None = None
    spot_sigma_px: float = 0.8
    partiality_min: float = 1e-3
    constant_background: float = 1.0
    diffuse_background: float = 10.0
    diffuse_decay_invA: float = 0.1
    water_ring: float = 8.0
    water_ring_d_A: float = 3.2
    water_ring_width_invA: float = 0.04
    solvent_probability: float = 0.9
    background_scale_sigma: float = 0.1
    polarization_fraction: float | None = 0.99
    poisson: bool = True
    dtype: str = "uint16"
    bad_pixel_fraction: float = 1e-4
    unflagged_hot_fraction: float = 0.0
    hot_pixel_photons: tuple = (20.0, 2000.0)
    beamstop_radius_px: float = 30.0
    beamstop_rod_width_px: float = 12.0
    beamstop_rod_angle_deg: float = 30.0
    beamstop_transmission: float = 1e-3
    hit_fraction: float = 0.5
    multi_lattice_probability: float = 0.1
    crystal_scale_sigma: float = 0.3
    b_factor_sigma_A2: float = 3.0

    def __post_init__(self):
        if str(self.dtype) not in _FLAG_VALUES:
            raise ValueError(f"dtype must be one of {sorted(_FLAG_VALUES)}, got {self.dtype!r}")
        object.__setattr__(self, "dtype", str(self.dtype))
        positive = ("fluence", "crystal_size_um", "spot_sigma_px", "diffuse_decay_invA",
                    "water_ring_d_A", "water_ring_width_invA")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        non_negative = ("mosaicity_deg", "wilson_b_A2", "constant_background",
                        "diffuse_background", "water_ring", "background_scale_sigma",
                        "beamstop_radius_px", "beamstop_rod_width_px",
                        "crystal_scale_sigma", "b_factor_sigma_A2")
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        fractions = ("partiality_min", "solvent_probability", "bad_pixel_fraction",
                     "unflagged_hot_fraction",
                     "beamstop_transmission", "hit_fraction", "multi_lattice_probability")
        for name in fractions:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        lo, hi = (float(v) for v in self.hot_pixel_photons)
        if not 0 < lo <= hi:
            raise ValueError(f"hot_pixel_photons must be (low, high) with 0 < low <= high, "
                             f"got {self.hot_pixel_photons}")
        object.__setattr__(self, "hot_pixel_photons", (lo, hi))
        if self.bandwidth is not None and not self.bandwidth >= 0:
            raise ValueError(f"bandwidth must be >= 0, got {self.bandwidth}")
        if self.d_min_A is not None and not self.d_min_A > 0:
            raise ValueError(f"d_min_A must be positive, got {self.d_min_A}")
        if self.polarization_fraction is not None and not 0 <= self.polarization_fraction <= 1:
            raise ValueError("polarization_fraction must be within [0, 1] or None")


def code_digest() -> str:
    """SHA-256 (hex) of the simulator's code: this module and its kernels.

    Generated data sets depend on it (:mod:`sxlab.datasets` regenerates cached files when
    it changes).

    Examples
    --------
    >>> len(code_digest())
    64
    """
    import hashlib

    h = hashlib.sha256()
    for mod in (sys.modules[__name__], _k):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` rotation matrices uniform on SO(3) (from normalised Gaussian quaternions)."""
    quat = rng.standard_normal((n, 4))
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    w, x, y, z = quat.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


# ============================================================================== truth
@dataclass
class FrameTruth:
    """Ground truth of one frame.

    Attributes
    ----------
    frame : int
        Frame index.
    hit : bool
        At least one crystal in the beam.
    solvent : bool
        Water ring present.
    background_scale : float
        Factor applied to the background of this frame.
    crystals : DataFrame
        One row per lattice (:data:`sxlab.tables.TRUTH_CRYSTALS`).
    reflections : DataFrame
        One row per reflection on the detector (:data:`sxlab.tables.TRUTH_REFLECTIONS`).
    """

    frame: int
    hit: bool
    solvent: bool
    background_scale: float
    crystals: pd.DataFrame
    reflections: pd.DataFrame

    @property
    def n_crystals(self) -> int:
        return len(self.crystals)

    @property
    def n_reflections(self) -> int:
        return len(self.reflections)

    def as_row(self) -> dict:
        """This frame's row of :attr:`Truth.frames`."""
        return {
            "frame": self.frame,
            "hit": self.hit,
            "n_crystals": self.n_crystals,
            "n_reflections": self.n_reflections,
            "solvent": self.solvent,
            "background_scale": self.background_scale,
        }


def truth_paths(master_path: str | os.PathLike) -> dict[str, Path]:
    """Files holding the truth of a written data set, keyed by table (and ``"metadata"``).

    ``run_master.h5`` -> ``run_truth_frames.parquet``, ``run_truth_crystals.parquet``,
    ``run_truth_reflections.parquet``, ``run_truth_intensities.parquet`` and
    ``run_truth.json``.

    Examples
    --------
    >>> truth_paths("/data/run3_master.h5")["frames"].name
    'run3_truth_frames.parquet'
    """
    master = Path(master_path)
    stem = master.name
    for suffix in ("_master.h5", ".h5", ".nxs"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    paths = {name: master.with_name(f"{stem}_truth_{name}.parquet") for name in _TRUTH_TABLES}
    paths["metadata"] = master.with_name(f"{stem}_truth.json")
    return paths


@tables.documented
@dataclass
class Truth:
    """Ground truth of a simulated data set: four tidy tables and metadata.

    Attributes
    ----------
    frames : DataFrame
        One row per frame (:data:`sxlab.tables.TRUTH_FRAMES`):

        [columns: truth_frames]
    crystals : DataFrame
        One row per lattice (:data:`sxlab.tables.TRUTH_CRYSTALS`); ``u_11`` ... ``u_33``
        is the orientation U (crystal → lab), A = B Uᵀ:

        [columns: truth_crystals]
    reflections : DataFrame
        One row per reflection that reaches a panel with partiality above
        ``partiality_min`` (:data:`sxlab.tables.TRUTH_REFLECTIONS`); h, k, l as
        diffracted, not reduced; ``photons`` before beam-stop shadow and panel-edge
        clipping; ``polarization`` 1 when disabled:

        [columns: truth_reflections]
    intensities : DataFrame
        One row per unique reflection of gemmi's reciprocal asymmetric unit to ``d_min``
        (:data:`sxlab.tables.TRUTH_INTENSITIES`):

        [columns: truth_intensities]
    metadata : dict
        Parameters, seed, cell, space group, detector and beam-stop description.

    Notes
    -----
    Empty tables keep every column.

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    >>> sim = Simulator(builtin_geometry("eiger4m"), cell, seed=1, d_min_A=3.0)
    >>> truth = sim.truth(4)
    >>> list(truth.frames.columns)[:3]
    ['frame', 'hit', 'n_crystals']
    """

    frames: pd.DataFrame
    crystals: pd.DataFrame
    reflections: pd.DataFrame
    intensities: pd.DataFrame
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_frames(cls, frames: list[FrameTruth], intensities: pd.DataFrame,
                    metadata: dict | None = None) -> Truth:
        """Collect per-frame truths into tables."""
        rows = [ft.as_row() for ft in frames]
        frame_table = tables.TRUTH_FRAMES.make(
            {c: [r[c] for r in rows] for c in tables.TRUTH_FRAMES.names} if rows else None)
        return cls(
            frames=frame_table,
            crystals=tables.TRUTH_CRYSTALS.concat(ft.crystals for ft in frames),
            reflections=tables.TRUTH_REFLECTIONS.concat(ft.reflections for ft in frames),
            intensities=intensities,
            metadata=dict(metadata or {}),
        )

    def save(self, master_path: str | os.PathLike) -> dict[str, Path]:
        """Write the tables as Parquet and the metadata as JSON next to ``master_path``.

        Returns the paths (see :func:`truth_paths`).
        """
        paths = truth_paths(master_path)
        for name in _TRUTH_TABLES:
            getattr(self, name).to_parquet(paths[name], index=False)
        paths["metadata"].write_text(json.dumps(self.metadata, indent=1, sort_keys=True))
        return paths

    @classmethod
    def load(cls, master_path: str | os.PathLike) -> Truth:
        """Read the truth written by :meth:`Simulator.write` for ``master_path``."""
        paths = truth_paths(master_path)
        found = {name: schema.make(pd.read_parquet(paths[name]))
                 for name, schema in _TRUTH_TABLES.items()}
        meta = json.loads(paths["metadata"].read_text()) if paths["metadata"].exists() else {}
        return cls(**found, metadata=meta)

    def __repr__(self) -> str:
        n = len(self.frames)
        hits = int(self.frames["hit"].sum()) if n else 0
        return (
            f"<Truth {n} frame(s), {hits} hit(s), {len(self.crystals)} crystal(s), "
            f"{len(self.reflections)} reflection(s), {len(self.intensities)} unique hkl>"
        )


# ========================================================================== simulator
class Simulator:
    """A prepared simulation of still diffraction frames for one detector and cell.

    Everything that depends only on geometry and parameters (structure-factor
    intensities, the list of reflections to ``d_min``, background maps, beam-stop
    shadow, bad pixels) is computed once here; each frame then only draws its crystals,
    predicts their reflections, draws spots and adds noise.

    Parameters
    ----------
    detector : Detector
        Geometry and beam (wavelength, bandwidth).
    cell : UnitCell
        Unit cell with ``space_group`` set.
    seed : int
        Data-set seed (non-negative); with it and the frame index every frame is
        reproducible.
    params : SimulationParams, optional
        Parameters; keyword arguments override single fields
        (``Simulator(det, cell, hit_fraction=1.0)``).

    Attributes
    ----------
    intensities : DataFrame
        True intensities of the unique reflections (see :class:`Truth`).
    d_min_A : float
        Resolution limit used.
    flag_value : int
        Value of flagged (bad) pixels.
    bad_pixels : ndarray of bool
        Pixels set to ``flag_value`` in every frame (geometry and random defects).
    pixel_mask : ndarray of uint32
        NXmx pixel mask: 1 geometry (gaps, no panel), 2 dead, 8 hot.
    transmission : ndarray of float32
        Beam-stop transmission per pixel (data shape).
    saturation_adu : ndarray
        Saturation level (ADU) of each panel.

    Notes
    -----
    A Simulator reuses internal buffers and is not thread-safe; give each worker its own.
    Frames do not depend on which worker made them.

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    >>> sim = Simulator(builtin_geometry("eiger4m"), cell, seed=7, hit_fraction=1.0)
    >>> data, truth = sim.frame(0)
    >>> data.shape, data.dtype.name, truth.hit
    ((2167, 2070), 'uint16', True)
    """

    def __init__(self, detector: Detector, cell: UnitCell, *, seed: int = 0,
                 params: SimulationParams | None = None, **overrides):
        if cell.space_group is None:
            raise ValueError("the cell needs a space group (e.g. space_group='P 1')")
        seed = int(seed)
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if not np.isfinite(detector.beam.wavelength_A) or detector.beam.wavelength_A <= 0:
            raise ValueError("the detector's beam needs a finite wavelength")
        self.detector = detector
        self.cell = cell
        self.seed = seed
        self.params = (params or SimulationParams()).replace(**overrides)
        p = self.params
        self.k0 = 1.0 / detector.beam.wavelength_A
        self.bandwidth = detector.beam.bandwidth if p.bandwidth is None else p.bandwidth
        self.sigma_k = self.bandwidth * self.k0
        self.dtype = np.dtype(p.dtype)
        self.flag_value = _FLAG_VALUES[p.dtype]

        shape = detector.data_shape
        self._shape2d = (int(np.prod(shape[:-1])), int(shape[-1]))
        self._panel_layout()
        maps = detector.maps
        valid = maps.panel >= 0
        if p.d_min_A is None:
            self.d_min_A = float(np.min(maps.d_A[valid]))
        else:
            self.d_min_A = float(p.d_min_A)
        self._prepare_reflections()
        self._prepare_pixels()
        self._lam = np.empty(self._shape2d, dtype=np.float32)

    # ------------------------------------------------------------------ set-up
    def _panel_layout(self) -> None:
        det = self.detector
        ny = det.data_shape[-2]
        n = det.n_panels
        rect = np.zeros((n, 4), dtype=np.int64)
        self._row0 = np.zeros(n, dtype=np.int64)
        gain = np.ones(n)
        sat = np.zeros(n)
        top = float(np.iinfo(self.dtype).max - 1)
        energy = det.beam.photon_energy_eV
        for i, pn in enumerate(det.panels):
            r0 = (pn.slab or 0) * ny if det.is_stacked else 0
            self._row0[i] = r0
            rect[i] = (r0 + pn.min_ss, r0 + pn.max_ss + 1, pn.min_fs, pn.max_fs + 1)
            if pn.adu_per_photon is not None:
                gain[i] = pn.adu_per_photon
            elif pn.adu_per_eV is not None:
                gain[i] = pn.adu_per_eV * energy
            sat[i] = min(float(pn.max_adu), top) if np.isfinite(pn.max_adu) else top
        self._rect = rect
        self._gain = gain
        self.saturation_adu = np.floor(sat)
        self._unit_gain = bool(np.all(gain == 1.0)
                               and np.all(self.saturation_adu > _k.POISSON_VECTOR_TERMS))
        self._bounds = np.array(
            [[pn.min_fs, pn.max_fs, pn.min_ss, pn.max_ss] for pn in det.panels], dtype=np.int64
        )

    def _prepare_reflections(self) -> None:
        import gemmi

        p = self.params
        sg = self.cell.gemmi_space_group()
        ops = sg.operations()
        gcell = self.cell.to_gemmi()
        asu = np.asarray(gemmi.make_miller_array(gcell, sg, self.d_min_A), dtype=np.int32)
        d = gcell.calculate_d_array(asu) if len(asu) else np.zeros(0)
        centric = ops.centric_flag_array(asu) if len(asu) else np.zeros(0, bool)
        eps = (ops.epsilon_factor_without_centering_array(asu) if len(asu)
               else np.zeros(0, np.int32))
        rng = np.random.default_rng([self.seed, _STREAM_INTENSITIES])
        mean = eps * np.exp(-2.0 * p.wilson_b_A2 / (4.0 * d * d))
        z = rng.standard_normal(len(asu))
        e = rng.standard_exponential(len(asu))
        intensity = np.where(centric, z * z, e) * mean
        self.intensities = tables.TRUTH_INTENSITIES.make({
            "h": asu[:, 0], "k": asu[:, 1], "l": asu[:, 2], "I": intensity, "d_A": d,
            "centric": centric, "epsilon": eps,
        })

        # Every symmetry equivalent and Friedel mate of the unique reflections.
        rots = point_group_rotations(sg)
        eq = np.concatenate([asu.astype(np.int64) @ r for r in rots])
        eq = np.concatenate([eq, -eq])
        src = np.tile(np.arange(len(asu)), 2 * len(rots))
        key = _hkl_key(eq)
        key, first = np.unique(key, return_index=True)
        self._hkl_keys = key
        self._hkl = eq[first].astype(np.int32)
        self._hkl_asu = src[first]
        self._hkl_I = intensity[self._hkl_asu]
        self._hkl_q2 = 1.0 / d[self._hkl_asu] ** 2
        q_len = np.sqrt(self._hkl_q2)
        size_A = p.crystal_size_um * 1e4
        sigma_r2 = (1.0 / size_A) ** 2 + (np.deg2rad(p.mosaicity_deg) * q_len) ** 2
        self._hkl_g = ewald_slope(self._hkl_q2, self.k0)
        self._hkl_sigma_r2 = sigma_r2
        # p > partiality_min  <=>  s0² < 2 ln(1/partiality_min) σ_eff².
        limit = 2.0 * math.log(1.0 / p.partiality_min) if p.partiality_min > 0 else np.inf
        self._hkl_limit2 = limit * effective_variance(sigma_r2, self._hkl_g, self.sigma_k)

    def true_intensity(self, hkl) -> np.ndarray:
        """True intensity ``I`` (scale of :attr:`intensities`) of reflections ``hkl``.

        Parameters
        ----------
        hkl : array_like of int, shape (n, 3) or (3,)

        Returns
        -------
        ndarray of float64, shape (n,)
            The value of the unique reflection each ``hkl`` is equivalent to (by symmetry
            or Friedel's law); NaN for systematic absences, 0 0 0 and beyond ``d_min``.

        Examples
        --------
        >>> from sxlab.geometry import builtin_geometry
        >>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
        >>> sim = Simulator(builtin_geometry("eiger4m"), cell, seed=7, d_min_A=3.0)
        >>> i1, i2, absent = sim.true_intensity([[1, 2, 3], [-2, -1, 3], [0, 0, 1]])
        >>> bool(i1 == i2), bool(np.isnan(absent))
        (True, True)
        """
        key = _hkl_key(np.atleast_2d(np.asarray(hkl, dtype=np.int64)))
        out = np.full(key.shape, np.nan)
        if len(self._hkl_keys):
            pos = np.minimum(np.searchsorted(self._hkl_keys, key), len(self._hkl_keys) - 1)
            found = self._hkl_keys[pos] == key
            out[found] = self._hkl_I[pos[found]]
        return out

    def _prepare_pixels(self) -> None:
        det = self.detector
        p = self.params
        maps = det.maps
        shape = det.data_shape
        # Per pixel: solid angle (µsr) = area · |n · r̂| / r², times polarization; and the
        # beam-stop transmission. Computed in blocks of rows to bound temporary memory.
        factor = np.zeros(shape, dtype=np.float32)
        trans = np.ones(shape, dtype=np.float32)
        for i, pn in enumerate(det.panels):
            nrm = np.cross(pn.fs_m(), pn.ss_m())
            area = np.linalg.norm(nrm)
            nrm = nrm / area
            for sl in _row_blocks(det.panel_slice(i), 256):
                x = maps.x_m[sl].astype(np.float64)
                y = maps.y_m[sl].astype(np.float64)
                z = maps.z_m[sl].astype(np.float64)
                r2 = x * x + y * y + z * z
                r = np.sqrt(r2)
                cos = np.abs(x * nrm[0] + y * nrm[1] + z * nrm[2]) / r
                factor[sl] = area * cos / r2 * 1e6 * self._polarization(x / r, y / r)
                trans[sl] = self._beamstop(x * pn.res, y * pn.res)
        self.transmission = trans

        rng = np.random.default_rng([self.seed, _STREAM_BAD_PIXELS])
        geom_bad = det.bad_pixel_mask()
        good_idx = np.flatnonzero(~geom_bad)
        n_bad = int(round(p.bad_pixel_fraction * good_idx.size))
        pick = np.sort(good_idx[rng.choice(good_idx.size, size=n_bad, replace=False)])
        hot = rng.random(n_bad) < 0.5
        mask = np.where(geom_bad, _MASK_GAP, 0).astype(np.uint32)
        mask.reshape(-1)[pick] = np.where(hot, _MASK_HOT, _MASK_DEAD)
        self.pixel_mask = mask
        self.bad_pixels = mask != 0
        self._bad_flat = np.flatnonzero(self.bad_pixels.reshape(-1))
        hot_rng = np.random.default_rng([self.seed, _STREAM_HOT])
        free = np.flatnonzero(~self.bad_pixels.reshape(-1))
        n_hot = int(round(p.unflagged_hot_fraction * free.size))
        self.unflagged_hot = np.sort(free[hot_rng.choice(free.size, size=n_hot,
                                                         replace=False)])
        lo, hi = np.log(p.hot_pixel_photons)
        level = np.exp(hot_rng.uniform(lo, hi, n_hot)).astype(np.float32)
        # blocks of 1x1, 1x2, 2x1 or 2x2 pixels from each seed (kept inside the array)
        shape = int(np.prod(self._shape2d[:-1])), self._shape2d[-1]
        row, col = np.divmod(self.unflagged_hot, shape[1])
        kind = hot_rng.integers(0, 4, n_hot)
        dr = np.stack([np.zeros(n_hot), np.zeros(n_hot), kind >= 2, kind >= 2], axis=1)
        dc = np.stack([np.zeros(n_hot), kind % 2 == 1, np.zeros(n_hot), kind % 2 == 1],
                      axis=1)
        rr = np.minimum(row[:, None] + dr.astype(np.int64), shape[0] - 1)
        cc = np.minimum(col[:, None] + dc.astype(np.int64), shape[1] - 1)
        flat, first = np.unique((rr * shape[1] + cc).ravel(), return_index=True)
        keep = ~self.bad_pixels.reshape(-1)[flat]
        self.unflagged_hot = flat[keep]
        self._hot_photons = np.repeat(level, 4)[first][keep]

        base = factor * trans
        base[self.bad_pixels] = 0.0
        q = np.where(maps.panel >= 0, maps.q_A, np.float32(0.0))
        dq = (q - np.float32(1.0 / p.water_ring_d_A)) / np.float32(p.water_ring_width_invA)
        self._bg_const = base.reshape(self._shape2d)
        self._bg_diffuse = (base * np.exp(-q / np.float32(p.diffuse_decay_invA))).reshape(
            self._shape2d)
        self._bg_water = (base * np.exp(np.float32(-0.5) * dq * dq)).reshape(self._shape2d)
        self._trans2d = self.transmission.reshape(self._shape2d)

    def _beamstop(self, x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
        p = self.params
        if p.beamstop_radius_px <= 0:
            return np.ones_like(x_px)
        shadow = np.hypot(x_px, y_px) <= p.beamstop_radius_px
        if p.beamstop_rod_width_px > 0:
            a = np.deg2rad(p.beamstop_rod_angle_deg)
            along = x_px * np.cos(a) + y_px * np.sin(a)
            across = -x_px * np.sin(a) + y_px * np.cos(a)
            shadow |= (along >= 0) & (np.abs(across) <= 0.5 * p.beamstop_rod_width_px)
        return np.where(shadow, p.beamstop_transmission, 1.0)

    def _polarization(self, ux, uy):
        f = self.params.polarization_fraction
        if f is None:
            return np.ones_like(ux)
        return f * (1.0 - ux * ux) + (1.0 - f) * (1.0 - uy * uy)

    @property
    def beamstop(self) -> dict:
        """Beam-stop description (pixels of each panel, angles in degrees)."""
        p = self.params
        fs, ss = self.detector.beam_center_px(0)
        return {
            "radius_px": p.beamstop_radius_px,
            "rod_width_px": p.beamstop_rod_width_px if p.beamstop_radius_px > 0 else 0.0,
            "rod_angle_deg": p.beamstop_rod_angle_deg,
            "transmission": p.beamstop_transmission,
            "beam_center_fs_ss_panel0": [fs, ss],
            "shadowed_pixels": int(np.count_nonzero(self.transmission < 1)),
            "unflagged_hot_pixels": int(self.unflagged_hot.size),
        }

    # ------------------------------------------------------------------- truth
    def frame_truth(self, frame: int) -> FrameTruth:
        """The ground truth of frame ``frame`` without rendering the image.

        Examples
        --------
        >>> from sxlab.geometry import builtin_geometry
        >>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
        >>> sim = Simulator(builtin_geometry("eiger4m"), cell, seed=7, hit_fraction=1.0)
        >>> sim.frame_truth(3).n_crystals >= 1
        True
        """
        p = self.params
        frame = int(frame)
        if frame < 0:
            raise ValueError(f"frame index must be non-negative, got {frame}")
        rng = np.random.default_rng([self.seed, _STREAM_FRAME, frame])
        u = rng.random(3)
        hit = bool(u[0] < p.hit_fraction)
        solvent = bool(u[1] < p.solvent_probability)
        n_cryst = (2 if u[2] < p.multi_lattice_probability else 1) if hit else 0
        bg_scale = float(np.exp(p.background_scale_sigma * rng.standard_normal()))
        rots = _random_rotations(rng, n_cryst)
        scales = np.exp(p.crystal_scale_sigma * rng.standard_normal(n_cryst))
        dbs = p.b_factor_sigma_A2 * rng.standard_normal(n_cryst)

        bmat = self.cell.reciprocal_basis
        crystals, refls = [], []
        for c in range(n_cryst):
            amat = bmat @ rots[c].T
            refl = self._predict(amat, scales[c], dbs[c])
            refl["frame"] = frame
            refl["crystal"] = c
            refls.append(refl)
            row = {"frame": frame, "crystal": c, "a": self.cell.a, "b": self.cell.b,
                   "c": self.cell.c, "alpha": self.cell.alpha, "beta": self.cell.beta,
                   "gamma": self.cell.gamma, "scale": scales[c], "b_factor_delta_A2": dbs[c],
                   "n_reflections": len(refl["h"])}
            for vi, v in enumerate("abc"):
                for xi, xn in enumerate("xyz"):
                    row[f"{v}star_{xn}"] = amat[vi, xi]
            for i in range(3):
                for j in range(3):
                    row[f"u_{i + 1}{j + 1}"] = rots[c][i, j]
            crystals.append(row)
        ctab = tables.TRUTH_CRYSTALS.make(
            {k: [r[k] for r in crystals] for k in crystals[0]} if crystals else None)
        if refls:
            cols = {k: np.concatenate([np.broadcast_to(r[k], r["h"].shape) for r in refls])
                    for k in refls[0]}
            names = np.array(self.detector.panel_names, dtype=object)
            cols["panel_name"] = names[cols["panel"]].astype(str)
            rtab = tables.TRUTH_REFLECTIONS.make(cols)
        else:
            rtab = tables.TRUTH_REFLECTIONS.empty()
        return FrameTruth(frame=frame, hit=hit, solvent=solvent, background_scale=bg_scale,
                          crystals=ctab, reflections=rtab)

    def _predict(self, amat: np.ndarray, scale: float, db: float) -> dict:
        """Reflections of one crystal with reciprocal basis ``amat`` that reach the detector."""
        k0 = self.k0
        sel, s0 = _k.excitation_candidates(self._hkl, np.ascontiguousarray(amat), k0,
                                           self._hkl_limit2)
        q = self._hkl[sel] @ amat
        part = partiality_gaussian(s0, self._hkl_sigma_r2[sel], self._hkl_g[sel], self.sigma_k)
        keep = part > self.params.partiality_min
        sel, q, s0, part = sel[keep], q[keep], s0[keep], part[keep]
        kstar = spot_wavenumber(q, k0, self._hkl_sigma_r2[sel], self.sigma_k,
                                q2=self._hkl_q2[sel])
        panel, fs, ss = self.detector.q_to_pixel(q, wavelength_A=1.0 / kstar)
        on = panel >= 0
        sel, q, s0, part, kstar = sel[on], q[on], s0[on], part[on], kstar[on]
        panel, fs, ss = panel[on], fs[on], ss[on]

        kout = q.copy()
        kout[:, 2] += kstar
        kout /= np.linalg.norm(kout, axis=1, keepdims=True)
        pol = self._polarization(kout[:, 0], kout[:, 1])
        q2 = self._hkl_q2[sel]
        i_true = self.params.fluence * scale * self._hkl_I[sel] * np.exp(-2.0 * db * q2 / 4.0)
        rows = self._row0[panel] + np.floor(ss).astype(np.int64)
        cols = np.floor(fs).astype(np.int64)
        trans = self._trans2d[rows, cols].astype(np.float64)
        hkl = self._hkl[sel]
        return {
            "h": hkl[:, 0], "k": hkl[:, 1], "l": hkl[:, 2],
            "d_A": 1.0 / np.sqrt(q2),
            "I_true": i_true,
            "partiality": part,
            "excitation_error_invA": s0,
            "wavelength_A": 1.0 / kstar,
            "polarization": pol,
            "photons": i_true * part * pol,
            "transmission": trans,
            "fs": fs, "ss": ss, "panel": panel,
        }

    def truth(self, n_frames: int, *, start: int = 0) -> Truth:
        """Ground truth of frames ``start .. start + n_frames - 1`` without images."""
        fts = [self.frame_truth(i) for i in range(start, start + int(n_frames))]
        return Truth.from_frames(fts, self.intensities, self.metadata(n_frames, start))

    # --------------------------------------------------------------- rendering
    def _background_factors(self, ft: FrameTruth) -> tuple[float, float, float]:
        p = self.params
        s = ft.background_scale
        water = p.water_ring if ft.solvent else 0.0
        return s * p.constant_background, s * p.diffuse_background, s * water

    def _render_expected(self, ft: FrameTruth) -> np.ndarray:
        a, b, c = self._background_factors(ft)
        lam = self._lam
        _k.compose_background(lam, self._bg_const, self._bg_diffuse, self._bg_water, a, b, c)
        r = ft.reflections
        if len(r):
            panel = r["panel"].to_numpy(np.int64)
            bnd = self._bounds[panel]
            _k.add_spots(
                lam, self._trans2d,
                r["fs"].to_numpy(np.float64), r["ss"].to_numpy(np.float64),
                self._row0[panel], bnd[:, 0].copy(), bnd[:, 1].copy(), bnd[:, 2].copy(),
                bnd[:, 3].copy(), r["photons"].to_numpy(np.float64),
                float(self.params.spot_sigma_px), _SPOT_WINDOW_SIGMA,
            )
        if self.unflagged_hot.size:
            lam.reshape(-1)[self.unflagged_hot] += self._hot_photons
        return lam

    def expected_photons(self, frame: int) -> tuple[np.ndarray, FrameTruth]:
        """Mean photons per pixel of a frame (float32, data shape) and its truth.

        Background and spots after the beam-stop shadow, before noise, gain, saturation
        and flagging (bad pixels carry no background but may receive spot photons).
        """
        ft = self.frame_truth(frame)
        lam = self._render_expected(ft)
        return lam.reshape(self.detector.data_shape).copy(), ft

    def noise_seed(self, frame: int) -> int:
        """Seed of the pixel-noise stream of ``frame``."""
        ss = np.random.SeedSequence([self.seed, _STREAM_NOISE, int(frame)])
        return int(ss.generate_state(1, np.uint64)[0])

    def frame(self, frame: int) -> tuple[np.ndarray, FrameTruth]:
        """Frame ``frame``: detector data (``params.dtype``, data shape) and its truth.

        Examples
        --------
        >>> from sxlab.geometry import builtin_geometry
        >>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
        >>> sim = Simulator(builtin_geometry("eiger4m"), cell, seed=7)
        >>> a, _ = sim.frame(5)
        >>> b, _ = sim.frame(5)
        >>> bool((a == b).all())
        True
        """
        ft = self.frame_truth(frame)
        return self._render(ft), ft

    def _render(self, ft: FrameTruth) -> np.ndarray:
        lam = self._render_expected(ft)
        out = np.empty(self._shape2d, dtype=self.dtype)
        _k.photons_to_adu(out, lam, self._rect, self._gain, self.saturation_adu,
                          self.noise_seed(ft.frame), self.flag_value,
                          noise=self.params.poisson, skip_gain=self._unit_gain)
        out.reshape(-1)[self._bad_flat] = self.flag_value
        return out.reshape(self.detector.data_shape)

    def frames(self, n_frames: int, *, start: int = 0) -> Iterator[tuple[np.ndarray, FrameTruth]]:
        """Iterate over ``(data, FrameTruth)`` of frames ``start .. start + n_frames - 1``."""
        for i in range(start, start + int(n_frames)):
            yield self.frame(i)

    # ------------------------------------------------------------------ output
    def metadata(self, n_frames: int | None = None, start: int = 0) -> dict:
        """JSON-serialisable description of the data set."""
        from . import __version__

        meta = {
            "sxlab_version": __version__,
            "seed": self.seed,
            "params": self.params.to_dict(),
            "params_digest": self.params.digest(),
            "cell": dict(zip(("a", "b", "c", "alpha", "beta", "gamma"),
                             self.cell.parameters, strict=True)),
            "space_group": self.cell.space_group,
            "detector": self.detector.name,
            "data_shape": list(self.detector.data_shape),
            "wavelength_A": self.detector.beam.wavelength_A,
            "bandwidth": self.bandwidth,
            "d_min_A": self.d_min_A,
            "flag_value": self.flag_value,
            "saturation_adu": [float(v) for v in self.saturation_adu],
            "beamstop": self.beamstop,
            "n_unique_reflections": len(self.intensities),
            "first_frame": int(start),
            "n_frames": None if n_frames is None else int(n_frames),
            "excitation_error_sign": "s0 = k0 - |q + k0 z|, positive inside the Ewald sphere",
            "pixel_convention": "data-array fs/ss, corner of the first pixel at 0",
        }
        try:
            from .io.crystfel_geom import write_geom

            meta["geometry"] = write_geom(self.detector)
        except (ImportError, ValueError):
            meta["geometry"] = None
        return meta

    def write(self, master_path: str | os.PathLike, n_frames: int, *, start: int = 0,
              frames_per_file: int = 1000, progress: bool = True) -> Truth:
        """Write frames as an NXmx data set (bitshuffle-LZ4) plus the truth next to it.

        Parameters
        ----------
        master_path : str or path-like
            Master file, e.g. ``run1_master.h5``; data files and the truth files
            (:func:`truth_paths`) are written next to it.
        n_frames : int
            Number of frames.
        start : int
            Index of the first frame.
        frames_per_file : int
            Frames per data file.
        progress : bool
            Show a progress bar (``tqdm.auto``).

        Returns
        -------
        Truth
            The ground truth, also saved as Parquet and JSON.

        Examples
        --------
        >>> sim.write("run1_master.h5", 100)  # doctest: +SKIP
        <Truth 100 frame(s), ...>
        """
        from .io.nxmx import NXmxWriter

        n_frames = int(n_frames)
        sat = int(self.saturation_adu.min()) if len(self.saturation_adu) else None
        fts = []
        with NXmxWriter(master_path, self.detector, n_frames=n_frames,
                        frames_per_file=frames_per_file, dtype=self.params.dtype,
                        compression="bslz4", pixel_mask=self.pixel_mask,
                        saturation_value=sat, start_time=SIMULATED_START_TIME) as writer:
            indices = range(start, start + n_frames)
            if progress:
                from tqdm.auto import tqdm

                indices = tqdm(indices, desc="simulate", unit="frame")
            for i in indices:
                data, ft = self.frame(i)
                writer.write(data)
                fts.append(ft)
        truth = Truth.from_frames(fts, self.intensities, self.metadata(n_frames, start))
        truth.save(master_path)
        return truth

    def __repr__(self) -> str:
        return (
            f"<Simulator {self.detector.name or 'detector'} {self.cell!r} seed={self.seed} "
            f"d_min={self.d_min_A:.2f} Å, {len(self.intensities)} unique hkl, "
            f"params {self.params.digest()}>"
        )


def _row_blocks(sl: tuple, n: int):
    """Split a panel's index expression (``panel_slice``) into blocks of ``n`` rows."""
    rows = sl[-2]
    for start in range(rows.start, rows.stop, n):
        yield (*sl[:-2], slice(start, min(start + n, rows.stop)), sl[-1])


def _hkl_key(hkl: np.ndarray) -> np.ndarray:
    """Unique int64 key of integer Miller indices (|h|, |k|, |l| < 2**20)."""
    h = np.asarray(hkl, dtype=np.int64) + (1 << 20)
    return (h[:, 0] << 42) | (h[:, 1] << 21) | h[:, 2]


def simulate_frame(detector: Detector, cell: UnitCell, *, seed: int = 0, frame: int = 0,
                   **params) -> tuple[np.ndarray, FrameTruth]:
    """One simulated frame and its truth, for notebooks.

    Builds a :class:`Simulator` (keyword arguments are :class:`SimulationParams` fields)
    and returns ``sim.frame(frame)``. Reuse a Simulator for many frames.

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> cell = UnitCell(79.1, 79.1, 37.9, 90, 90, 90, space_group="P 43 21 2")
    >>> data, truth = simulate_frame(builtin_geometry("eiger4m"), cell, seed=3,
    ...                              hit_fraction=1.0)
    >>> len(truth.reflections) > 0
    True
    """
    return Simulator(detector, cell, seed=seed, **params).frame(frame)


def powder_ring_intensities(n_orders: int, decay: float = 0.35) -> np.ndarray:
    """Relative intensities of the orders 1..n of a lamellar powder (falling as exp(-decay·n))."""
    n = np.arange(1, n_orders + 1, dtype=float)
    return np.exp(-decay * (n - 1.0))


def _powder_simulator(detector: Detector, d_spacing_A: float, seed: int, n_orders: int,
                      ring_photons: float, ring_width_invA: float,
                      params: SimulationParams | None):
    """A Simulator whose frames show the rings of a lamellar powder, and the ring table."""
    p = (params or SimulationParams()).replace(hit_fraction=0.0, solvent_probability=1.0,
                                               water_ring=float(ring_photons))
    sim = Simulator(detector, UnitCell(10, 10, 10, space_group="P 1"), seed=seed, params=p)
    maps = detector.maps
    q = np.where(maps.panel >= 0, maps.q_A, np.float32(0.0)).astype(np.float64)
    weights = powder_ring_intensities(n_orders)
    lam = detector.beam.wavelength_A
    rings = np.zeros(q.shape)
    table = []
    q_max = float(np.nanmax(maps.q_A))
    for n, w in enumerate(weights, start=1):
        qn = n / float(d_spacing_A)
        if qn > q_max or qn * lam / 2 >= 1:
            break
        rings += w * np.exp(-0.5 * ((q - qn) / ring_width_invA) ** 2)
        table.append({"order": n, "d_A": d_spacing_A / n, "q_invA": qn,
                      "two_theta_deg": float(np.degrees(2 * np.arcsin(qn * lam / 2)))})
    # The water-ring slot of the background carries the rings instead.
    base = sim._bg_const
    sim._bg_water = (base * rings.reshape(base.shape)).astype(np.float32)
    return sim, table


def simulate_powder(detector: Detector, *, d_spacing_A: float, frame: int = 0, seed: int = 0,
                    n_orders: int = 12, ring_photons: float = 400.0,
                    ring_width_invA: float = 2e-4,
                    params: SimulationParams | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """One frame of powder rings of a lamellar calibrant, and its rings.

    The frame of :func:`write_powder` (same model, same numbers for the same ``seed`` and
    ``frame``), in memory: detector data (``params.dtype``, data shape, flagged pixels at
    the flag value) and a table with one row per ring on the detector (``order``,
    ``d_A``, ``q_invA``, ``two_theta_deg``).

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> data, rings = simulate_powder(builtin_geometry("eiger1m", clen=0.2),
    ...                               d_spacing_A=58.38, n_orders=3)
    >>> data.shape, rings.order.tolist()
    ((1065, 1030), [1, 2, 3])
    """
    sim, table = _powder_simulator(detector, d_spacing_A, seed, n_orders, ring_photons,
                                   ring_width_invA, params)
    data, _ = sim.frame(frame)
    return data, pd.DataFrame(table, columns=["order", "d_A", "q_invA", "two_theta_deg"])


def write_powder(master_path: str | os.PathLike, detector: Detector, *, d_spacing_A: float,
                 n_frames: int, seed: int = 0, n_orders: int = 12,
                 ring_photons: float = 400.0, ring_width_invA: float = 2e-4,
                 frames_per_file: int = 1000, progress: bool = False,
                 params: SimulationParams | None = None) -> Truth:
    """Write powder-ring frames of a lamellar calibrant (e.g. silver behenate, d = 58.38 Å).

    The rings sit at ``|q| = n / d`` for the orders ``n = 1 .. n_orders`` (those that fall on
    the detector), each a Gaussian in ``|q|`` of width ``ring_width_invA`` with peak
    ``ring_photons · powder_ring_intensities(n)`` photons per µsr, on the simulator's usual
    background, beam stop, noise, gain, saturation and bad pixels (no crystals, no water
    ring). The truth metadata lists the rings (``powder_rings``: order, d_A, q_invA,
    two_theta_deg).

    Examples
    --------
    >>> from sxlab.geometry import builtin_geometry
    >>> truth = write_powder("agbeh_master.h5", builtin_geometry("eiger4m", clen=0.3),
    ...                      d_spacing_A=58.38, n_frames=2)  # doctest: +SKIP
    """
    sim, table = _powder_simulator(detector, d_spacing_A, seed, n_orders, ring_photons,
                                   ring_width_invA, params)
    truth = sim.write(master_path, n_frames, frames_per_file=frames_per_file,
                      progress=progress)
    truth.metadata.update({"powder_d_A": float(d_spacing_A), "powder_rings": table})
    truth.save(master_path)
    return truth
